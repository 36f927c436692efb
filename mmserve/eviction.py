"""The eviction decision: a pure function of memory needs and the loaded models."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """A loaded model as the policy sees it."""

    name: str
    bytes: int
    last_used: float
    in_use: bool  # ref count > 0: never a victim


@dataclass(frozen=True)
class EvictionPlan:
    victims: tuple[str, ...]
    fits: bool  # True when free memory after evicting the victims covers the need


def choose_victims(need: int, free: int, loaded: list[Candidate]) -> EvictionPlan:
    """Least-recently-used idle models to evict so that `need` bytes fit in `free`.

    Models in use are never chosen. If evicting every idle model would still not
    make room, nothing is evicted and `fits` is False: dropping models that cannot
    help would only cost the next request a reload.
    """
    if need <= free:
        return EvictionPlan((), True)
    idle = sorted((c for c in loaded if not c.in_use), key=lambda c: (c.last_used, c.name))
    victims: list[str] = []
    gained = 0
    for cand in idle:
        victims.append(cand.name)
        gained += cand.bytes
        if free + gained >= need:
            return EvictionPlan(tuple(victims), True)
    return EvictionPlan((), False)

"""(g)'s orchestration: both servers up at once, measured in alternation so drift hits both alike.

Closed loops run in rounds (the order flipped each round), the capacity probe walks step in
turn, and the open loops run back to back with the same arrivals. The servers' own measures
(streams, probes' arrivals, open loop) live in bench/openloop.py.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from bench import load, openloop


@dataclass
class Target:
    """One server under test: how to call it and the process whose memory is sampled."""

    api: Any  # load.Api
    pid: int | None = None


def split(total: int, rounds: int) -> list[int]:
    """`total` requests per client over at most `rounds` rounds (each >= 1, summing to total)."""
    k = max(1, min(rounds, total))
    base, extra = divmod(total, k)
    return [base + (1 if i < extra else 0) for i in range(k)]


def order(names: list[str], i: int) -> list[str]:
    """Round `i`'s order: as given in even rounds, reversed in odd ones (ABBA...)."""
    return names if i % 2 == 0 else names[::-1]


def summed(runs: list[dict]) -> dict:
    """One closed-loop figure from its rounds: tokens and seconds summed, then divided."""
    tokens, seconds = sum(x["tokens"] for x in runs), sum(x["seconds"] for x in runs)
    return {"clients": runs[0]["clients"], "requests": sum(x["requests"] for x in runs),
            "tokens": tokens, "seconds": seconds, "tok_s": tokens / seconds,
            "rounds": len(runs)}  # fmt: skip


class ProbeWalk:
    """One server's capacity walk, a probe at a time: from `start` up by 20 % per probe until
    the server falls behind, or down by 20 % until it keeps up; then, when that took fewer
    than `steps` probes, one more at the geometric mean of the last rate kept up with and the
    first it fell behind at (halving the 20 % step). At most `steps` probes.
    `best` (requests/s) is the capacity: 0 when no probe kept up."""

    def __init__(self, start: float, steps: int):
        self.steps = steps
        self.rate = start  # the next probe's rate
        self.best = 0.0
        self.behind: float | None = None  # the lowest rate that fell behind
        self.bisecting = False
        self.done = False
        self.probes: list[dict] = []

    def next_rate(self) -> float | None:
        """The next probe's rate, or None when the walk is over."""
        return None if self.done or len(self.probes) >= self.steps else self.rate

    def record(self, got: dict) -> None:
        """Take the probe at `next_rate()`'s answer (an open_loop result)."""
        rate, kept = self.rate, got["kept_up"]
        self.probes.append({"rate": rate, "kept_up": kept, "tok_s": got["tok_s"]})
        if self.bisecting:
            self.best = rate if kept else self.best
            self.done = True
            return
        if kept:
            self.best = max(self.best, rate)
            if self.behind is None:
                self.rate = rate * 1.2
        else:
            self.behind = rate if self.behind is None else min(self.behind, rate)
            if not self.best:
                self.rate = rate / 1.2
        if self.best and self.behind is not None:
            self.rate, self.bisecting = (self.best * self.behind) ** 0.5, True


def closed_loops(targets: dict[str, Target], prompts, n: dict, count) -> dict:
    """Closed loops of 1, 8 and 16 clients (32 tokens) per server, in `n["cb_rounds"]` rounds
    that split each client's request count; {name: {clients: summed figure}}."""
    names = list(targets)
    out: dict = {name: {} for name in names}
    for clients in (1, 8, 16):
        per = n["cb_single"] if clients == 1 else n["cb_each"]
        runs: dict = {name: [] for name in names}
        for i, k in enumerate(split(per, n["cb_rounds"])):
            for name in order(names, i):
                api = targets[name].api
                runs[name].append(load.throughput(api, prompts, clients, k, 32, count))
        for name in names:
            out[name][clients] = summed(runs[name])
    return out


def probe_walks(targets: dict[str, Target], prompts, start: float, drains: dict, n: dict,
                count) -> dict[str, ProbeWalk]:  # fmt: skip
    """Each server's capacity walk from `start` req/s, one probe of each in turn (the order
    flipped each turn), each walk independent; every probe sends the same seeded requests."""
    names = list(targets)
    walks = {name: ProbeWalk(start, n["probe_steps"]) for name in names}
    turn = 0
    while any(w.next_rate() is not None for w in walks.values()):
        for name in order(names, turn):
            rate = walks[name].next_rate()
            if rate is None:
                continue
            # One seed for every probe: the same requests, compressed in time as the rate
            # grows, so a higher rate never draws fewer arrivals than a lower one.
            plan = openloop.arrivals(rate, n["probe_seconds"], prompts, seed=100)
            t = targets[name]
            got = openloop.open_loop(t.api, plan, n["probe_seconds"], drains[name], count, t.pid)
            walks[name].record(got)
        turn += 1
    return walks


def measure_servers(targets: dict[str, Target], prompts, n: dict, count, log=None) -> dict:
    """Every (g) measure for each server in `targets` (the first is mmserve, which sets the
    rates): closed loops, capacity probes, the open loop, with the 8-token latency alone
    measured right before and right after each server's open loop (drift hits both alike).

    The probes start at 70 % of the rate the first server's 16-client closed loop would
    sustain at the mix's mean length (the same start for all). The open loop runs at 70 % of
    the first server's measured capacity; when none of its probes kept up, 70 % of its lowest
    rate probed / 1.2 (its `rate_from` says which; the others' is None: given). Every server
    gets the same seeded arrivals, one right after the other. Returns {name: measures}."""
    names = list(targets)
    first = names[0]
    closed = closed_loops(targets, prompts, n, count)
    out: dict = {name: {"closed": closed[name]} for name in names}
    start = 0.7 * closed[first][16]["tok_s"] / statistics.mean(openloop.LENGTHS)
    for name in names:
        # The longest answer alone (capped: a noisy single-client figure must not hide a
        # backlog).
        drain = min(max(openloop.LENGTHS) / closed[name][1]["tok_s"], n["open_seconds"] / 4)
        out[name].update(probe_start=start, drain=drain, rate_from=None)
    walks = probe_walks(targets, prompts, start, {k: v["drain"] for k, v in out.items()}, n, count)
    for name in names:
        out[name]["capacity"], out[name]["probes"] = walks[name].best, walks[name].probes
    ours = out[first]
    measured = ours["capacity"] > 0
    basis = ours["capacity"] if measured else min(p["rate"] for p in ours["probes"]) / 1.2
    ours["rate_from"] = {"rate": basis, "measured": measured}
    plan_rate = 0.7 * basis
    if log:
        log(f"(g) capacity {ours['capacity']:.2f} req/s; open loop at {plan_rate:.2f} req/s, "
            f"{openloop.rate_source(ours)}")  # fmt: skip
    plan = openloop.arrivals(plan_rate, n["open_seconds"], prompts, seed=1)
    shortest = min(openloop.LENGTHS)
    for name in names:
        t = targets[name]
        out[name]["plan_rate"] = plan_rate
        # The shortest answer alone right before and right after this server's open loop,
        # so that the loaded/alone ratio compares minutes that drift alike.
        alone = load.latencies(t.api, prompts[0], shortest, n["lat"], warmup=1)
        out[name]["open"] = openloop.open_loop(
            t.api, plan, n["open_seconds"], out[name]["drain"], count, t.pid
        )
        alone += load.latencies(t.api, prompts[0], shortest, n["lat"], warmup=0)
        out[name]["short_alone"] = alone
    return out

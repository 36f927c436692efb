"""Live progress of each model's slow work (materialise, download, load): stage, progress, time."""

from __future__ import annotations

import contextlib
import threading
import time

# The stages a model goes through on its way to answering, in order (issue 15, item 3).
STAGES = ("materialising", "downloading", "loading_weights", "quantizing", "warming_up")


class StageBoard:
    """What each model is doing now, readable from any thread.

    A model's work nests (a load that first downloads): `stage()` pushes a stage and pops it
    on exit; the board reports the innermost one, its `progress` (0-1 where known, else None)
    and the seconds since the outermost began.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._stacks: dict[str, list[dict]] = {}

    @contextlib.contextmanager
    def stage(self, model: str, stage: str):
        """Mark `model` as being in `stage` for the duration of the block."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        entry = {"stage": stage, "progress": None, "since": time.monotonic()}
        with self._lock:
            self._stacks.setdefault(model, []).append(entry)
        try:
            yield entry
        finally:
            with self._lock:
                stack = self._stacks.get(model, [])
                if entry in stack:
                    stack.remove(entry)
                if not stack:
                    self._stacks.pop(model, None)

    def set_progress(self, model: str, fraction: float | None) -> None:
        """Progress of the model's innermost stage, 0-1."""
        with self._lock:
            stack = self._stacks.get(model)
            if stack:
                stack[-1]["progress"] = None if fraction is None else max(0.0, min(1.0, fraction))

    def get(self, model: str) -> dict:
        """{"stage", "progress", "stage_seconds", "seconds"}; all None when the model is idle."""
        now = time.monotonic()
        with self._lock:
            stack = self._stacks.get(model)
            if not stack:
                return {"stage": None, "progress": None, "stage_seconds": None, "seconds": None}
            top = stack[-1]
            return {
                "stage": top["stage"],
                "progress": None if top["progress"] is None else round(top["progress"], 4),
                "stage_seconds": round(now - top["since"], 3),
                "seconds": round(now - stack[0]["since"], 3),
            }

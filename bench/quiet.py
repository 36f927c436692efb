"""Other work on the machine: wait for a quiet CPU, and measure foreign CPU use during the run.

On a 2-core machine one busy neighbour process slows a 2-thread forward pass several times
over, so the benchmark waits for quiet before it starts and reports what others used.
"""

from __future__ import annotations

import threading
import time

import psutil


def _busy_seconds() -> float:
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


_seen: dict[int, float] = {}  # pid -> last CPU seconds read, kept after the process exits


def _own_seconds() -> float:
    """CPU seconds of this process and every child seen so far (the servers, their workers).

    A child's last reading is kept after it exits, so stopping a server does not make its
    CPU time look like someone else's.
    """
    me = psutil.Process()
    for p in [me, *me.children(recursive=True)]:
        try:
            c = p.cpu_times()
            _seen[p.pid] = max(_seen.get(p.pid, 0.0), c.user + c.system)
        except psutil.Error:
            pass
    return sum(_seen.values())


def busy_cores(seconds: float = 2.0) -> float:
    """Average cores in use by everyone over the next `seconds`."""
    return psutil.cpu_percent(interval=seconds) / 100.0 * (psutil.cpu_count() or 1)


def wait_quiet(limit: float, log, threshold: float = 0.25) -> float:
    """Wait (up to `limit` seconds) until under `threshold` cores are busy; the last reading."""
    deadline = time.monotonic() + limit
    busy = busy_cores()
    while busy > threshold and time.monotonic() < deadline:
        log(f"the machine is busy ({busy:.2f} cores in use by other work); waiting")
        time.sleep(5)
        busy = busy_cores()
    return busy


class ForeignLoad:
    """Samples, once a second, the cores used by processes that are not ours."""

    def __init__(self, every: float = 1.0):
        self.every = every
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="foreign-load", daemon=True)

    def __enter__(self) -> ForeignLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        busy, own, t = _busy_seconds(), _own_seconds(), time.monotonic()
        while not self._stop.wait(self.every):
            busy2, own2, t2 = _busy_seconds(), _own_seconds(), time.monotonic()
            self.samples.append(max(0.0, (busy2 - busy) - (own2 - own)) / (t2 - t))
            busy, own, t = busy2, own2, t2

    def summary(self) -> dict:
        s = self.samples or [0.0]
        return {"mean": sum(s) / len(s), "max": max(s), "busy_share": _share(s)}


def _share(samples: list[float]) -> float:
    """Fraction of the run during which others used more than a quarter of a core."""
    return sum(1 for x in samples if x > 0.25) / max(len(samples), 1)

"""Continuous-batching measures (g): closed loop at 8 and 16 clients, open-loop Poisson arrivals
of mixed lengths, capacity and memory, for mmserve and `transformers serve --continuous-batching`.

Both servers get the same arrival lists (seeded); bench/interleave.py runs them in alternation.
"""

from __future__ import annotations

import json
import random
import statistics
import threading
import time
from dataclasses import dataclass

import psutil

from bench import load

LENGTHS = (8, 32, 128, 256)  # max_tokens of the open-loop requests, drawn uniformly


@dataclass
class Arrival:
    at: float  # seconds after the start
    prompt: str
    max_tokens: int


def arrivals(rate: float, seconds: float, prompts: list[str], seed: int = 0) -> list[Arrival]:
    """Poisson arrivals at `rate` requests/s for `seconds`, each with a prompt and a length."""
    rng = random.Random(seed)
    out, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= seconds:
            return out
        out.append(Arrival(t, rng.choice(prompts), rng.choice(LENGTHS)))


def _piece(line: bytes, kind: str) -> str:
    line = line.strip()
    if not line:
        return ""
    if kind == "native":
        return json.loads(line).get("response") or ""
    if not line.startswith(b"data:") or line.endswith(b"[DONE]"):
        return ""
    choices = json.loads(line[5:]).get("choices") or [{}]
    return (choices[0].get("delta") or {}).get("content") or ""


def streamed(api: load.Api, prompt: str, max_tokens: int, count) -> dict:
    """One streamed request on its own connection: first-token time, latency, tokens."""
    client = load.Client(api)
    try:
        path, body = api.request(prompt, max_tokens, stream=True)
        t0 = time.perf_counter()
        resp = client.post(path, body)
        first, text = None, []
        while True:
            line = resp.readline()
            if not line:
                break
            piece = _piece(line, api.kind)
            if piece:
                first = first if first is not None else time.perf_counter() - t0
                text.append(piece)
        latency = time.perf_counter() - t0
        if resp.status != 200:
            raise RuntimeError(f"{path} answered {resp.status}")
        return {"ttft": first, "latency": latency, "tokens": count("".join(text))}
    finally:
        client.close()


class MemorySampler:
    """Peak resident memory of a process and its children, sampled every `every` s."""

    def __init__(self, pid: int | None, every: float = 0.5):
        self.pid = pid
        self.every = every
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        try:
            proc = psutil.Process(self.pid)
            return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
        except psutil.Error:
            return 0

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> MemorySampler:
        if self.pid is not None:
            self.peak = self._rss()
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()


def open_loop(
    api: load.Api, plan: list[Arrival], seconds: float, drain: float, count, pid=None
) -> dict:
    """Send `plan` on schedule (each request on its own thread); what each request saw.

    Delivered tokens/s divide by the time to the last answer less `drain` (the time the
    longest request takes alone: even a server that keeps up answers the last arrival
    that much after the window), and never by less than the window."""
    results: list = [None] * len(plan)
    errors: list[BaseException] = []

    def run(i: int, a: Arrival) -> None:
        try:
            results[i] = dict(streamed(api, a.prompt, a.max_tokens, count), max_tokens=a.max_tokens)
        except BaseException as exc:  # noqa: BLE001 - reported after the run
            errors.append(exc)

    threads = []
    with MemorySampler(pid) as memory:
        start = time.perf_counter()
        for i, a in enumerate(plan):
            delay = start + a.at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            t = threading.Thread(target=run, args=(i, a), daemon=True)
            t.start()
            threads.append(t)
        for t in threads:
            t.join(600)
        wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} open-loop request(s) failed: {errors[0]}")
    tokens = sum(r["tokens"] for r in results)
    short = [r["latency"] for r in results if r["max_tokens"] == min(LENGTHS)]
    ttfts = [r["ttft"] for r in results if r["ttft"] is not None]
    return {
        "requests": len(plan),
        "rate": len(plan) / seconds,
        "seconds": seconds,
        "wall": wall,
        "tokens": tokens,
        "offered_tok_s": tokens / seconds,  # what the arrivals asked for, per second
        "tok_s": tokens / max(seconds, wall - drain),  # what the server delivered
        # No arrival in the window measures nothing: not counted as keeping up.
        "kept_up": tokens > 0 and tokens / max(seconds, wall - drain) >= 0.9 * tokens / seconds,
        "short_p50": statistics.median(short) if short else None,
        "ttft_p50": load.pct(ttfts, 50) if ttfts else None,
        "ttft_p99": load.pct(ttfts, 99) if ttfts else None,
        "peak_rss_gb": memory.peak / 1024**3,
    }


def rate_source(x: dict) -> str:
    """Where the open-loop rate of one server's measures `x` (from measure_servers) came from."""
    basis = x["rate_from"]
    if basis is None:
        return "mmserve's rate and seeded arrivals"
    if basis["measured"]:
        return f"70 % of the measured capacity, {basis['rate']:.2f} req/s"
    return (f"70 % of {basis['rate']:.2f} req/s, the lowest rate probed / 1.2: no capacity "
            "probe kept up")  # fmt: skip

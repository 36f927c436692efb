"""HTTP load for the benchmark: timed single requests, closed-loop clients, time to first token.

Every client keeps one keep-alive connection (http.client, standard library only) to a
loopback server and sends a bounded number of requests.
"""

from __future__ import annotations

import http.client
import json
import statistics
import threading
import time
from dataclasses import dataclass


@dataclass
class Api:
    """How to ask one server for a completion: OpenAI chat route or the native route."""

    port: int
    kind: str  # "openai" | "native"
    model: str

    def request(self, prompt: str, max_tokens: int, stream: bool = False) -> tuple[str, dict]:
        if self.kind == "openai":
            body = {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": max_tokens, "temperature": 0, "stream": stream}  # fmt: skip
            return "/v1/chat/completions", body
        body = {"prompt": prompt, "max_new_tokens": max_tokens, "temperature": 0, "stream": stream}
        return f"/generate/{self.model}", body

    def tokens(self, reply: dict, count) -> int:
        """Completion tokens from the reply's usage, else counted with the tokenizer."""
        usage = reply.get("usage") or {}
        if usage.get("completion_tokens") is not None:
            return int(usage["completion_tokens"])
        text = (
            reply["response"]
            if self.kind == "native"
            else reply["choices"][0]["message"]["content"]
        )
        return count(text)


class Client:
    """One keep-alive connection."""

    def __init__(self, api: Api):
        self.api = api
        self.conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=600)

    def post(self, path: str, body: dict | None = None):
        data = json.dumps(body or {}).encode()
        self.conn.request("POST", path, data, {"Content-Type": "application/json"})
        return self.conn.getresponse()

    def complete(self, prompt: str, max_tokens: int) -> dict:
        path, body = self.api.request(prompt, max_tokens)
        resp = self.post(path, body)
        raw = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{path} answered {resp.status}: {raw[:300]!r}")
        return json.loads(raw)

    def first_token(self, prompt: str, max_tokens: int) -> float:
        """Seconds from sending a streamed request to its first non-empty text piece."""
        path, body = self.api.request(prompt, max_tokens, stream=True)
        t0 = time.perf_counter()
        resp = self.post(path, body)
        first = None
        while True:
            line = resp.readline()
            if not line:
                break
            if first is None and _has_text(line, self.api.kind):
                first = time.perf_counter() - t0
        resp.read()
        if first is None:
            raise RuntimeError(f"{path}: the stream held no text")
        return first

    def close(self) -> None:
        self.conn.close()


def _has_text(line: bytes, kind: str) -> bool:
    line = line.strip()
    if kind == "native":
        return bool(line) and bool(json.loads(line).get("response"))
    if not line.startswith(b"data:") or line.endswith(b"[DONE]"):
        return False
    choices = json.loads(line[5:]).get("choices") or [{}]
    return bool((choices[0].get("delta") or {}).get("content"))


def latencies(api: Api, prompt: str, max_tokens: int, n: int, warmup: int = 2) -> list[float]:
    """Seconds per request, one request at a time."""
    client = Client(api)
    try:
        for _ in range(warmup):
            client.complete(prompt, max_tokens)
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            client.complete(prompt, max_tokens)
            out.append(time.perf_counter() - t0)
        return out
    finally:
        client.close()


def ttfts(api: Api, prompt: str, max_tokens: int, n: int, warmup: int = 1) -> list[float]:
    client = Client(api)
    try:
        for _ in range(warmup):
            client.first_token(prompt, max_tokens)
        return [client.first_token(prompt, max_tokens) for _ in range(n)]
    finally:
        client.close()


def closed_loop(clients: int, work) -> tuple[int, float]:
    """`clients` threads start together; thread i runs `work(i, ready)`, which opens what it
    needs, calls `ready()` and then sends its requests, returning the tokens it got.
    Returns (tokens, wall seconds from the common start); a failed client raises afterwards."""
    tokens = [0] * clients
    errors: list[BaseException] = []
    gate = threading.Barrier(clients + 1)

    def run(i: int) -> None:
        try:
            tokens[i] = work(i, gate.wait)
        except BaseException as exc:  # noqa: BLE001 - reported after the run
            errors.append(exc)
            gate.abort()  # a client that failed before the start must not hang the others

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    try:
        gate.wait()
    except threading.BrokenBarrierError:
        pass
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed: {errors[0]}")
    return sum(tokens), wall


def throughput(api: Api, prompts: list[str], clients: int, per_client: int, max_tokens: int,
               count) -> dict:  # fmt: skip
    """Closed loop: `clients` threads each send `per_client` requests back to back."""

    def work(i: int, ready) -> int:
        client = Client(api)
        try:
            ready()
            got = 0
            for k in range(per_client):
                reply = client.complete(prompts[(i + k) % len(prompts)], max_tokens)
                got += api.tokens(reply, count)
            return got
        finally:
            client.close()

    tokens, wall = closed_loop(clients, work)
    return {"clients": clients, "requests": clients * per_client, "tokens": tokens,
            "seconds": wall, "tok_s": tokens / wall}  # fmt: skip


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), interpolated."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]

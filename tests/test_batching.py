"""Continuous batching of text requests: same greedy output as alone, rows that join and leave
a running batch, per-row sampling, stops, limits, seeds, cancellation and the KV budget."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch

from mmserve.engine import TextEngine
from mmserve.sampling import row_sampling
from mmserve.types import GenerationRequest, Message, Part, SamplingParams
from tests.conftest import tiny_entry

PROMPTS = [
    "Hello, how are you today?",
    "What is in this picture? There is a cat",
    "One, two, three, four, five, six, seven",
    "The weather is sunny",
    "def add(a, b):",
    "Write a short poem about the sea and the moon and the stars.",
]
MAX_TOKENS = [3, 14, 7, 11, 5, 9]
MODEL = "tiny_text"


@pytest.fixture
def apps(make_app):
    """(alone, batched): the same tiny text model with one row at a time and with 8, loaded."""
    models = [tiny_entry(MODEL)]
    alone = make_app(models, batch_max_size=1)
    batched = make_app(models, batch_max_size=8)
    for app in (alone, batched):
        app.extensions["mmserve"].manager.load(MODEL)
    return alone, batched


def engine_of(app) -> TextEngine:
    return app.extensions["mmserve"].manager._slots[MODEL].loaded.engine


def post(app, body: dict) -> dict:
    r = app.test_client().post(f"/generate/{MODEL}", json=body)
    assert r.status_code == 200, r.get_data(as_text=True)
    if body.get("stream"):
        lines = [json.loads(x) for x in r.get_data(as_text=True).splitlines() if x]
        last = lines[-1]
        assert last["done"] is True and "error" not in last, last
        return {**last, "response": "".join(x["response"] for x in lines), "pieces": len(lines)}
    return r.get_json()


def gather(engine: TextEngine, n: int, give_up: float = 30.0) -> None:
    """Make the engine admit nothing until `n` requests wait, so that they start as one
    group however slowly a loaded machine schedules their threads (then it is normal)."""
    admit = engine._admit
    deadline = time.monotonic() + give_up

    def gated():
        if len(engine.waiting) < n and time.monotonic() < deadline:
            return []
        engine._admit = admit
        return admit()

    engine._admit = gated


def together(app, bodies: list[dict]) -> tuple[list[dict], list[float]]:
    """Send the bodies at once from threads; the answers and when each one returned."""
    engine = engine_of(app)
    gather(engine, min(len(bodies), engine.max_rows))  # the manager admits max_rows at once
    results: list = [None] * len(bodies)
    done_at = [0.0] * len(bodies)

    def one(i):
        results[i] = post(app, bodies[i])
        done_at[i] = time.monotonic()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(r is not None for r in results)
    return results, done_at


def same(a: dict, b: dict) -> None:
    assert a["response"] == b["response"]
    assert a["finish_reason"] == b["finish_reason"]
    assert a["usage"] == b["usage"]


def test_greedy_batch_equals_each_request_alone(apps):
    alone, batched = apps
    bodies = [{"prompt": p, "max_new_tokens": n} for p, n in zip(PROMPTS, MAX_TOKENS, strict=True)]
    expected = [post(alone, b) for b in bodies]
    got, _ = together(batched, bodies)
    for e, g, n in zip(expected, got, MAX_TOKENS, strict=True):
        same(e, g)
        assert g["usage"]["completion_tokens"] <= n
    assert len({e["response"] for e in expected}) == len(bodies)  # the prompts really differ
    assert max(engine_of(batched).sizes) == len(bodies)  # they decoded as one batch
    assert max(engine_of(alone).sizes) == 1  # batch_max_size=1: one row at a time


def test_streamed_text_equals_non_streamed_inside_a_batch(apps):
    alone, batched = apps
    bodies = [{"prompt": p, "max_new_tokens": 12} for p in PROMPTS[:3]]
    expected = [post(alone, b) for b in bodies]
    got, _ = together(batched, bodies + [dict(b, stream=True) for b in bodies])
    for i, e in enumerate(expected):
        same(e, got[i])
        same(e, got[i + 3])
    assert max(g["pieces"] for g in got[3:]) > 2  # the text came in pieces
    assert max(engine_of(batched).sizes) == 6


def ascii_pair(text: str) -> str | None:
    """The first two-letter piece of plain text (the tiny model also writes stray bytes)."""
    for i in range(len(text) - 1):
        if text[i : i + 2].isascii() and text[i : i + 2].isalpha():
            return text[i : i + 2]
    return None


def test_rows_with_their_own_temperature_stops_and_max_tokens_share_one_batch(apps):
    alone, batched = apps
    full = [post(alone, {"prompt": p, "max_new_tokens": 16}) for p in PROMPTS[:2]]
    bodies = [
        {"prompt": PROMPTS[0], "max_new_tokens": 16},
        {"prompt": PROMPTS[1], "max_new_tokens": 16},
        {"prompt": PROMPTS[2], "max_new_tokens": 9, "temperature": 0.8, "seed": 1},
        {"prompt": PROMPTS[3], "max_new_tokens": 7, "temperature": 1.5, "top_k": 5, "seed": 2},
        {"prompt": PROMPTS[4], "max_new_tokens": 3, "temperature": 0.7, "top_p": 0.9, "seed": 3},
    ]
    stops = [ascii_pair(f["response"][2:]) for f in full]  # not at the start: text comes first
    assert all(stops)
    for body, stop in zip(bodies, stops, strict=False):
        body["stop"] = [stop]
    expected = [post(alone, b) for b in bodies]
    got, _ = together(batched, bodies + [dict(b, stream=True) for b in bodies])
    for i, (e, b) in enumerate(zip(expected, bodies, strict=True)):
        same(e, got[i])  # seeded sampling too: the same text alone and in a batch
        assert got[i + 5]["response"] == e["response"]
        assert e["usage"]["completion_tokens"] <= b["max_new_tokens"]
    for i, stop in enumerate(stops):
        assert expected[i]["finish_reason"] == "stop" and stop not in expected[i]["response"]
        assert expected[i]["response"] == full[i]["response"].split(stop)[0]
    assert max(engine_of(batched).sizes) == 8  # full up to batch_max_size; the rest join later


def test_a_short_request_arriving_during_a_long_one_finishes_long_before_it(apps):
    """Padded batching made the short request wait for the whole long batch to end."""
    _, batched = apps
    engine = engine_of(batched)
    done_at = {}

    def long_one():
        done_at["long_body"] = post(batched, {"prompt": PROMPTS[1], "max_new_tokens": 1500})
        done_at["long"] = time.monotonic()

    t = threading.Thread(target=long_one)
    t.start()
    give_up = time.monotonic() + 30
    while engine.steps < 20:  # the long one is decoding
        assert time.monotonic() < give_up and t.is_alive()
        time.sleep(0.001)
    t0 = time.monotonic()
    short = post(batched, {"prompt": PROMPTS[0], "max_new_tokens": 4})
    done_at["short"] = time.monotonic()
    t.join(120)
    assert short["usage"]["completion_tokens"] <= 4
    assert done_at["long_body"]["usage"]["completion_tokens"] > 1000  # it really ran long
    assert done_at["long"] - done_at["short"] > 3 * (done_at["short"] - t0)
    # (tests/test_lanes.py: it decoded in the short lane; with that lane off, in the batch)


def test_a_seed_gives_the_same_text_alone_or_batched_and_touches_no_global_rng(apps):
    alone, batched = apps
    seeded = {"prompt": PROMPTS[0], "max_new_tokens": 12, "temperature": 1.0, "seed": 42}
    state = torch.get_rng_state()
    first = post(alone, seeded)
    assert torch.equal(torch.get_rng_state(), state)  # the process-wide RNG is untouched
    others = [{"prompt": PROMPTS[0], "max_new_tokens": 12, "temperature": 1.0}] * 3
    got, _ = together(batched, [seeded, *others])
    assert got[0]["response"] == first["response"]
    # Unseeded requests right after a seeded one draw their own numbers (a global
    # torch.manual_seed made the next unseeded request repeat the seeded text).
    after = [post(alone, others[0])["response"] for _ in range(3)]
    assert any(text != first["response"] for text in after)
    assert len({g["response"] for g in got[1:]} | set(after)) > 1


def make_request(text: str, max_new: int, **params) -> GenerationRequest:
    params = SamplingParams(max_new_tokens=max_new, temperature=0.0, **params)
    return GenerationRequest(MODEL, [Message("user", [Part("text", text=text)])], params)


def submit(lm, engine, text: str, max_new: int):
    req = make_request(text, max_new)
    cancel = threading.Event()
    sampling = row_sampling({}, req.params, 4096)
    return engine.submit(lm.handler.prepare(lm, req), sampling, cancel), cancel


def test_a_cancelled_row_leaves_the_batch_within_a_few_tokens_and_the_others_go_on(apps):
    alone, batched = apps
    n = 300
    lease = batched.extensions["mmserve"].manager.acquire(MODEL)
    try:
        lm = lease.model
        engine = lm.engine
        gather(engine, 2)
        (row, cancel), (other_row, _) = [submit(lm, engine, t, n) for t in PROMPTS[:2]]
        pieces = []
        for piece in row.deltas():
            pieces.append(piece)
            if len(pieces) == 3:
                seen = len(row.completion_ids)
                cancel.set()
        assert row.finish_reason == "cancelled"
        assert len(row.completion_ids) <= seen + 4
        assert not other_row.done.is_set()  # the other row is still generating
        other = "".join(other_row.deltas())
    finally:
        lease.release()
    assert 2 in engine.sizes
    expected = post(alone, {"prompt": PROMPTS[1], "max_new_tokens": n})
    assert other == expected["response"]
    assert len(other_row.completion_ids) == expected["usage"]["completion_tokens"]


def test_closing_a_stream_cancels_its_row_and_the_engine_closes_on_unload(apps):
    _, batched = apps
    rt = batched.extensions["mmserve"]
    engine = engine_of(batched)
    events = rt.service.stream(make_request(PROMPTS[0], 1000))
    first = next(events)
    assert isinstance(first, str)
    t0 = time.monotonic()
    events.close()  # the client went away
    assert time.monotonic() - t0 < 2.0
    give_up = time.monotonic() + 2
    while engine.running and time.monotonic() < give_up:  # it leaves at the engine's next step
        time.sleep(0.001)
    # evicted, its cache freed (stored prompts for prefix caching are all that is left)
    assert not engine.running and engine.cache_bytes() == engine.prefix.bytes
    assert rt.manager.unload(MODEL)["unloaded"] is True
    assert engine.closed and not engine._thread.is_alive()


def test_a_failed_step_raises_in_every_request_of_the_batch(apps, monkeypatch):
    _, batched = apps
    lease = batched.extensions["mmserve"].manager.acquire(MODEL)
    try:
        lm = lease.model
        engine = lm.engine

        def boom(*args, **kwargs):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        monkeypatch.setattr(engine, "_forward", boom)
        gather(engine, 2)
        rows = [submit(lm, engine, t, 4)[0] for t in PROMPTS[:2]]
        for row in rows:
            with pytest.raises(torch.cuda.OutOfMemoryError):
                "".join(row.deltas())
        monkeypatch.undo()
        assert "".join(submit(lm, engine, PROMPTS[0], 3)[0].deltas())  # it still serves
    finally:
        lease.release()


def test_kv_budget_exhaustion_queues_then_answers_503_and_never_crashes(make_app, monkeypatch):
    per_token = 2 * 2 * 2 * 16 * 4  # (k, v) x layers x kv heads x head_dim x float32 bytes
    budget = 600 * per_token
    app = make_app([tiny_entry(MODEL)], kv_cache_gb=budget / 1024**3, queue_timeout=0.5)
    rt = app.extensions["mmserve"]
    rt.manager.load(MODEL)
    engine = engine_of(app)
    assert engine.per_token == per_token and engine.kv_budget == budget
    client = app.test_client()
    # Over the whole budget alone: refused at once, naming the field.
    r = client.post(f"/generate/{MODEL}", json={"prompt": PROMPTS[0], "max_new_tokens": 600})
    assert r.status_code == 400 and r.get_json()["param"] == "max_tokens"
    forward = engine._forward

    def slow_forward(*args):  # the long request holds its cache room for > 2 s
        time.sleep(0.005)
        return forward(*args)

    monkeypatch.setattr(engine, "_forward", slow_forward)
    got = {}
    long_body = {"prompt": PROMPTS[0], "max_new_tokens": 450}
    t = threading.Thread(target=lambda: got.setdefault("long", post(app, long_body)))
    t.start()
    give_up = time.monotonic() + 30
    while engine.steps < 5:
        assert time.monotonic() < give_up and t.is_alive()
        time.sleep(0.001)
    status = client.get("/admin/model_status").get_json()["models"][MODEL]
    assert status["kv_cache_bytes"] > 0 and status["bytes"] > status["kv_cache_bytes"]
    r = client.post(f"/generate/{MODEL}", json={"prompt": PROMPTS[1], "max_new_tokens": 100})
    assert r.status_code == 503, r.get_data(as_text=True)
    assert r.headers["Retry-After"] and r.get_json()["code"] == "queue_timeout"
    t.join(60)
    assert got["long"]["usage"]["completion_tokens"] == 450  # unharmed
    monkeypatch.undo()
    assert post(app, {"prompt": PROMPTS[1], "max_new_tokens": 100})["response"]
    give_up = time.monotonic() + 10
    while engine.running and time.monotonic() < give_up:  # evicted at the engine's next step
        time.sleep(0.001)
    assert engine._thread.is_alive() and engine.cache_bytes() == engine.prefix.bytes

"""Requests do not reach into each other: no global RNG, seeds per request on every family,
a chunked prefill answers as a whole one, and a slow multimodal model never holds up text
requests of another model."""

from __future__ import annotations

import threading
import time

import torch

from tests.conftest import tiny_entry
from tests.factories.media import make_image
from tests.test_families import b64, ok

SAMPLED = {"max_new_tokens": 10, "temperature": 1.0}


def test_seeded_requests_on_a_generate_family_repeat_and_leave_the_global_rng_alone(make_app):
    client = make_app([tiny_entry("tiny_vl")]).test_client()
    body = dict(SAMPLED, prompt="What is this?", image=b64(make_image("PNG")))
    torch.manual_seed(0)
    state = torch.get_rng_state()
    first = ok(client, "tiny_vl", **body, seed=42)["response"]
    assert torch.equal(torch.get_rng_state(), state)  # a seed never touches torch's RNG
    assert ok(client, "tiny_vl", **body, seed=42)["response"] == first
    # Before, `seed` called torch.manual_seed: an unseeded request right after repeated it.
    after = [ok(client, "tiny_vl", **body)["response"] for _ in range(3)]
    assert any(text != first for text in after)


def test_a_chunked_prefill_answers_like_a_whole_one(make_app):
    prompt = " ".join(f"word{i}" for i in range(120))
    answers = []
    for chunk in (512, 16):
        app = make_app([tiny_entry("tiny_text")], prefill_chunk_tokens=chunk)
        body = {"prompt": prompt, "max_new_tokens": 12}
        answers.append(ok(app.test_client(), "tiny_text", **body))
    assert answers[0]["usage"]["prompt_tokens"] > 100  # several chunks of 16
    assert answers[0]["response"] == answers[1]["response"]


def test_a_slow_multimodal_model_does_not_hold_up_text_requests(make_app, monkeypatch):
    app = make_app([tiny_entry("tiny_text"), tiny_entry("tiny_vl")])
    client = app.test_client()
    manager = app.extensions["mmserve"].manager
    manager.load("tiny_text")
    manager.load("tiny_vl")
    vl = manager._slots["tiny_vl"].loaded
    handler = type(vl.handler)()  # a private instance to slow down
    real = handler.generate

    def slow(*args, **kwargs):
        time.sleep(3.0)
        return real(*args, **kwargs)

    handler.generate = slow
    monkeypatch.setattr(vl, "handler", handler)
    done = {}
    image = {"prompt": "What is this?", "image": b64(make_image("PNG")), "max_new_tokens": 2}
    t = threading.Thread(target=lambda: done.setdefault("vl", ok(client, "tiny_vl", **image)))
    t.start()
    time.sleep(0.2)  # the image request is inside its generate
    t0 = time.monotonic()
    text = ok(client, "tiny_text", prompt="Hello", max_new_tokens=4)
    took = time.monotonic() - t0
    assert t.is_alive() and took < 2.0, took
    t.join(30)
    assert done["vl"]["usage"]["completion_tokens"] >= 1 and text["response"] is not None

"""Hardening: overload, out-of-memory faults in forward() and the loader, sanitised errors."""

from __future__ import annotations

import threading
import time

import pytest
import torch

import mmserve.manager as manager_mod
from tests.conftest import tiny_entry


def rt_of(app):
    return app.extensions["mmserve"]


def test_queue_bound_gives_429_with_retry_after_and_wait_timeout_503(make_app):
    app = make_app([tiny_entry("tiny_text")], max_queue=1, queue_timeout=1.0, batch_max_size=1)
    client, rt = app.test_client(), rt_of(app)
    holder = rt.manager.acquire("tiny_text")  # the one generation slot is busy
    waiter_result = {}

    def waiter():
        r = client.post("/generate/tiny_text", json={"prompt": "x", "max_new_tokens": 2})
        waiter_result["status"] = r.status_code
        waiter_result["body"] = r.get_json()

    t = threading.Thread(target=waiter)
    t.start()
    deadline = time.time() + 5
    while rt.manager.status_of("tiny_text")["waiting"] < 1 and time.time() < deadline:
        time.sleep(0.01)
    assert client.get("/admin/model_status").get_json()["queue_depth"] == 1
    r = client.post("/generate/tiny_text", json={"prompt": "x"})
    assert r.status_code == 429 and r.headers["Retry-After"]
    t.join(10)
    assert waiter_result["status"] == 503 and waiter_result["body"]["code"] == "queue_timeout"
    holder.release()
    ok = client.post("/generate/tiny_text", json={"prompt": "x", "max_new_tokens": 2})
    assert ok.status_code == 200


@pytest.fixture
def oom_forward(monkeypatch):
    """Make the next N forward() calls of any LlamaForCausalLM raise CUDA out-of-memory."""
    from transformers import LlamaForCausalLM

    state = {"left": 0, "raised": 0}
    real = LlamaForCausalLM.forward

    def faulty(self, *args, **kwargs):
        if state["left"] > 0:
            state["left"] -= 1
            state["raised"] += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, "forward", faulty)
    return state


def test_oom_in_forward_frees_idle_models_and_retries_once(make_app, oom_forward):
    app = make_app([tiny_entry("tiny_text"), tiny_entry("tiny_qwen")])
    client, rt = app.test_client(), rt_of(app)
    client.post("/admin/load/tiny_qwen")
    oom_forward["left"] = 1
    r = client.post("/generate/tiny_text", json={"prompt": "x", "max_new_tokens": 3})
    assert r.status_code == 200
    assert oom_forward["raised"] == 1
    assert rt.manager.status_of("tiny_qwen")["state"] == "unloaded"  # freed for the retry


def test_persistent_oom_in_forward_is_503_and_the_server_recovers(make_app, oom_forward):
    client = make_app([tiny_entry("tiny_text")]).test_client()
    oom_forward["left"] = 2
    r = client.post("/generate/tiny_text", json={"prompt": "x", "max_new_tokens": 3})
    assert r.status_code == 503 and r.get_json()["code"] == "out_of_memory"
    assert "CUDA" not in r.get_data(as_text=True)
    r = client.post("/generate/tiny_text", json={"prompt": "x", "max_new_tokens": 3})
    assert r.status_code == 200


def test_memory_error_in_the_loader_retries_then_503(make_app, monkeypatch):
    real = manager_mod.load_model
    faults = {"left": 1}

    def faulty(*args, **kwargs):
        if faults["left"] > 0:
            faults["left"] -= 1
            raise MemoryError()
        return real(*args, **kwargs)

    monkeypatch.setattr(manager_mod, "load_model", faulty)
    app = make_app([tiny_entry("tiny_text")])
    client = app.test_client()
    assert (
        client.post("/generate/tiny_text", json={"prompt": "x", "max_new_tokens": 2}).status_code
        == 200
    )
    client.post("/admin/unload/tiny_text")
    faults["left"] = 2
    r = client.post("/generate/tiny_text", json={"prompt": "x", "max_new_tokens": 2})
    assert r.status_code == 503 and r.get_json()["code"] == "out_of_memory"
    assert rt_of(app).manager.status_of("tiny_text")["state"] == "unloaded"
    assert (
        client.post("/generate/tiny_text", json={"prompt": "x", "max_new_tokens": 2}).status_code
        == 200
    )


def test_oom_in_a_stream_retries_once_then_reports_in_band(make_app, oom_forward):
    import json

    client = make_app([tiny_entry("tiny_text")]).test_client()
    body = {"prompt": "x", "stream": True, "max_new_tokens": 3}
    oom_forward["left"] = 1
    r = client.post("/generate/tiny_text", json=body)
    last = json.loads(r.get_data(as_text=True).splitlines()[-1])
    assert last["done"] is True and "usage" in last, last
    oom_forward["left"] = 2
    r = client.post("/generate/tiny_text", json=body)
    last = json.loads(r.get_data(as_text=True).splitlines()[-1])
    assert last["done"] is True and last["code"] == "out_of_memory"
    ok = client.post("/generate/tiny_text", json={"prompt": "x", "max_new_tokens": 2})
    assert ok.status_code == 200

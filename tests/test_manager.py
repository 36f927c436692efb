"""The model manager with tiny real models: one load under concurrency, ref counts, eviction."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import pytest

import mmserve.manager as manager_mod
from mmserve.errors import ModelLoadFailed, ModelNotDownloaded, OutOfMemory
from mmserve.memory import estimate_model_bytes
from mmserve.types import GenerationRequest, Message, Part, SamplingParams
from tests.conftest import tiny_entry


def ask(model: str, text: str = "hello", **kw) -> GenerationRequest:
    return GenerationRequest(
        model, [Message("user", [Part("text", text=text)])], SamplingParams(max_new_tokens=4), **kw
    )


def runtime_of(app):
    return app.extensions["mmserve"]


@pytest.fixture
def count_loads(monkeypatch):
    calls = []
    real = manager_mod.load_model

    def counting(spec, path, plan, handler, **kwargs):
        calls.append(spec.name)
        time.sleep(0.2)  # widen the race window
        return real(spec, path, plan, handler, **kwargs)

    monkeypatch.setattr(manager_mod, "load_model", counting)
    return calls


def test_sixteen_concurrent_first_requests_cause_one_load(make_app, count_loads):
    rt = runtime_of(make_app([tiny_entry("tiny_text")]))
    results, errors = [], []
    barrier = threading.Barrier(16)

    def worker():
        barrier.wait()
        try:
            results.append(rt.service.generate(ask("tiny_text")))
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(results) == 16 and all(r.completion_tokens > 0 for r in results)
    assert count_loads == ["tiny_text"]
    assert rt.manager.status_of("tiny_text")["ref_count"] == 0


def one_model_budget(tiny_models_dir) -> float:
    need = max(
        estimate_model_bytes(tiny_models_dir / n, "float32", None)
        for n in ("tiny_text", "tiny_qwen")
    )
    return need * 1.5 / 1024**3


def test_no_eviction_while_in_use_then_lru_eviction(make_app, tiny_models_dir):
    app = make_app(
        [tiny_entry("tiny_text"), tiny_entry("tiny_qwen")],
        ram_budget_gb=one_model_budget(tiny_models_dir),
    )
    rt = runtime_of(app)
    lease = rt.manager.acquire("tiny_text")
    ref = weakref.ref(lease.model.model)
    with pytest.raises(OutOfMemory):
        rt.manager.acquire("tiny_qwen")  # tiny_text is in use: it must not be evicted
    assert rt.manager.status_of("tiny_text")["state"] == "loaded"
    assert rt.manager.status_of("tiny_qwen")["state"] == "unloaded"
    lease.release()
    result = rt.service.generate(ask("tiny_qwen"))
    assert result.completion_tokens > 0
    assert rt.manager.status_of("tiny_text")["state"] == "unloaded"
    assert rt.manager.evictions == 1
    gc.collect()
    assert ref() is None, "the evicted model is still referenced somewhere"


def test_idle_timer_unloads_and_is_armed_only_at_zero_refs(make_app):
    rt = runtime_of(make_app([tiny_entry("tiny_text", keep_alive=0.3)]))
    lease = rt.manager.acquire("tiny_text")
    ref = weakref.ref(lease.model.model)
    assert rt.manager.status_of("tiny_text")["expires_at"] is None  # in use: no timer
    time.sleep(0.5)
    assert rt.manager.status_of("tiny_text")["state"] == "loaded"
    lease.release()
    assert rt.manager.status_of("tiny_text")["expires_at"] is not None
    deadline = time.time() + 5
    while rt.manager.status_of("tiny_text")["state"] != "unloaded" and time.time() < deadline:
        time.sleep(0.05)
    assert rt.manager.status_of("tiny_text")["state"] == "unloaded"
    gc.collect()
    assert ref() is None


def test_keep_alive_zero_and_forever_per_request(make_app):
    rt = runtime_of(make_app([tiny_entry("tiny_text", keep_alive="5m")]))
    rt.service.generate(ask("tiny_text", keep_alive=0))
    assert rt.manager.status_of("tiny_text")["state"] == "unloaded"
    rt.service.generate(ask("tiny_text", keep_alive=-1))
    status = rt.manager.status_of("tiny_text")
    assert status["state"] == "loaded" and status["expires_at"] is None
    rt.service.generate(ask("tiny_text"))  # the entry default (5 min) applies again
    assert rt.manager.status_of("tiny_text")["expires_at"] > time.time() + 200


def test_four_bit_load_through_bitsandbytes_on_cpu(make_app):
    import bitsandbytes as bnb

    rt = runtime_of(make_app([tiny_entry("tiny_text", quantization=4)]))
    with rt.manager.lease("tiny_text") as lease:
        modules = list(lease.model.model.modules())
        assert any(isinstance(m, bnb.nn.Linear4bit) for m in modules)
    assert rt.service.generate(ask("tiny_text")).completion_tokens > 0


def test_offline_model_not_on_disk_is_404_with_the_command(make_app):
    entry = tiny_entry("tiny_text", name="missing", local_dir="not-there")
    rt = runtime_of(make_app([entry]))
    with pytest.raises(ModelNotDownloaded) as info:
        rt.service.generate(ask("missing"))
    assert info.value.status == 404 and info.value.code == "model_not_downloaded"
    assert "main.py --models-dir" in info.value.message
    assert info.value.message.endswith("--download missing")


def test_failed_load_is_500_and_the_next_good_request_works(make_app, tiny_models_dir, tmp_path):
    import shutil

    broken = tiny_models_dir / "broken"
    if not broken.exists():
        shutil.copytree(tiny_models_dir / "tiny_text", broken)
        for f in broken.glob("*.safetensors"):
            f.write_bytes(f.read_bytes()[:-64])  # truncated weights, but present
        (broken / "config.json").write_text('{"model_type": "llama", "hidden_size": "x"}')
        for f in broken.glob("*.safetensors"):
            f.unlink()
        (broken / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    rt = runtime_of(
        make_app(
            [tiny_entry("tiny_text", name="broken", local_dir="broken"), tiny_entry("tiny_text")]
        )
    )
    with pytest.raises((ModelLoadFailed, ModelNotDownloaded)):
        rt.service.generate(ask("broken"))
    assert rt.manager.status_of("broken")["state"] == "unloaded"
    assert rt.service.generate(ask("tiny_text")).completion_tokens > 0


def test_auto_quantization_that_fits_nowhere_is_503_with_the_plans(make_app):
    entry = tiny_entry("tiny_text", quantization="auto")
    client = make_app([entry], ram_budget_gb=100_000 / 1024**3).test_client()
    r = client.post("/generate/tiny_text", json={"prompt": "x"})
    assert r.status_code == 503 and r.get_json()["code"] == "out_of_memory"
    assert r.headers["Retry-After"]
    plans = r.get_json()["details"]["plans"]
    assert [p["quant_bits"] for p in plans] == [None, 8, 4]
    assert not any(p["fits"] for p in plans) and all(p["still_short_bytes"] > 0 for p in plans)

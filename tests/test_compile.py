"""Static KV cache + torch.compile for the text family (settings text_compile*), on the CPU.

A compiled model does not run on the continuous-batching engine (its static cache has one
batch shape per call, and CUDA graphs belong to the thread that recorded them): it runs one
request at a time through generate on its own thread (mmserve.serial.SerialEngine)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from torch._dynamo.utils import counters

from mmserve.families.text import is_compiled, static_cache_len
from mmserve.loader import plan_for
from mmserve.models_config import validate_entry
from mmserve.serial import SerialEngine
from mmserve.settings import Settings
from tests.conftest import tiny_entry
from tests.test_batching import PROMPTS, engine_of, post, same

MODEL = "tiny_text"


def test_static_cache_length_rounds_up_to_a_power_of_two_within_the_context():
    assert static_cache_len(1024, 10, 2048) == 1024  # the floor
    assert static_cache_len(16, 100, None) == 128
    assert static_cache_len(16, 128, None) == 128
    assert static_cache_len(16, 3000, 4096) == 4096
    assert static_cache_len(16, 3000, 2500) == 3000  # never less than needed
    assert static_cache_len(1024, 10, 512) == 1024  # a floor above the context still holds


def test_compile_settings_are_checked_and_planned_for_text_models_only():
    with pytest.raises(ValueError, match="text_compile.*off, cuda, all"):
        Settings.load({"text_compile": "yes"})
    with pytest.raises(ValueError, match="text_compile_mode"):
        Settings.load({"text_compile_mode": "fast"})
    with pytest.raises(ValueError, match="text_cache_len"):
        Settings.load(env={"MMSERVE_TEXT_CACHE_LEN": "0"})
    assert Settings.load(env={"MMSERVE_TEXT_COMPILE": "ALL"}).text_compile == "all"
    text = validate_entry(tiny_entry("tiny_text"))
    vqa = validate_entry(tiny_entry("tiny_vqa"))
    on_gpu = Settings.load({"text_compile": "cuda"})
    everywhere = Settings.load({"text_compile": "all", "text_cache_len": 64})
    assert plan_for(text, "cpu", on_gpu).compile_mode is None  # "cuda" means on a GPU only
    plan = plan_for(text, "cpu", everywhere)
    assert (plan.compile_mode, plan.cache_len) == ("reduce-overhead", 64)
    assert plan_for(vqa, "cpu", everywhere).compile_mode is None
    assert plan_for(text, "cpu").compile_mode is None  # off by default


@pytest.fixture(scope="module")
def compiled_pair(tiny_models_dir, tmp_path_factory):
    """(eager, compiled): the tiny text model on the engine, and compiled."""
    from app import create_app

    apps = []
    on = {"text_compile": "all", "text_compile_mode": "default", "text_cache_len": 128}
    for extra in ({}, on):
        tmp = tmp_path_factory.mktemp("compile")
        config = {
            "models_dir": tiny_models_dir,
            "models": [tiny_entry(MODEL)],
            "replace_models": True,
            "offline": True,
            "log_to_file": False,
            "tmp_dir": tmp / "tmp",
            "log_dir": tmp / "logs",
            "default_keep_alive": -1,
            "batch_max_size": 8,
            **extra,
        }
        apps.append(create_app(config))
    graphs = counters["stats"]["unique_graphs"]
    apps[1].extensions["mmserve"].manager.load(MODEL)  # warm-up compiles here
    yield apps[0], apps[1], counters["stats"]["unique_graphs"] - graphs
    for app in apps:
        app.extensions["mmserve"].manager.close()


def test_a_compiled_model_answers_like_the_eager_one_alone_batched_and_streamed(compiled_pair):
    eager, compiled, warm_graphs = compiled_pair
    lm = compiled.extensions["mmserve"].manager._slots[MODEL].loaded
    assert is_compiled(lm) and lm.model.generation_config.cache_implementation == "static"
    assert warm_graphs >= 1  # load compiled the decode step
    bodies = [
        {"prompt": p, "max_new_tokens": n} for p, n in zip(PROMPTS[:4], (5, 40, 9, 12), strict=True)
    ]
    expected = [post(eager, b) for b in bodies]
    assert len({e["response"] for e in expected}) == len(bodies)
    graphs = counters["stats"]["unique_graphs"]
    for b, e in zip(bodies, expected, strict=True):
        same(e, post(compiled, b))
        same(e, post(compiled, dict(b, stream=True)))
    engine = engine_of(compiled)
    calls = engine.calls
    with ThreadPoolExecutor(8) as pool:  # concurrent requests queue on the one thread
        got = list(
            pool.map(lambda b: post(compiled, b), bodies + [dict(b, stream=True) for b in bodies])
        )
    for i, e in enumerate(expected):
        same(e, got[i])
        same(e, got[i + 4])
    assert isinstance(engine, SerialEngine) and engine.calls == calls + 8
    # Every shape the requests needed was covered by the warm-up.
    assert counters["stats"]["unique_graphs"] == graphs
    # A request longer than text_cache_len gets a longer cache, without compiling again;
    # the next short one is back to the smallest cache.
    long = {"prompt": PROMPTS[2], "max_new_tokens": 150}
    same(post(eager, long), post(compiled, long))
    assert lm.model._previous_max_cache_length == 256
    same(expected[0], post(compiled, bodies[0]))
    assert lm.model._previous_max_cache_length == 128
    assert counters["stats"]["unique_graphs"] == graphs


def test_a_compiled_model_runs_on_its_own_thread(compiled_pair, make_app):
    app = make_app([tiny_entry(MODEL)], batch_max_size=1, text_compile="all",
                   text_compile_mode="default", text_cache_len=64)  # fmt: skip
    app.extensions["mmserve"].manager.load(MODEL)
    seen = []

    def spy(*args, **kwargs):
        seen.append(threading.current_thread().name)
        return real(*args, **kwargs)

    lm = app.extensions["mmserve"].manager._slots[MODEL].loaded
    real = lm.handler.generate
    lm.handler = type(lm.handler)()  # a private instance to patch
    lm.handler.generate = spy
    post(app, {"prompt": PROMPTS[0], "max_new_tokens": 3})
    post(app, {"prompt": PROMPTS[1], "max_new_tokens": 3, "stream": True})
    assert isinstance(engine_of(app), SerialEngine)
    assert seen == [f"engine-{MODEL}"] * 2

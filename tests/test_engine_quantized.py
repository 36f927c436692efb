"""The continuous-batching engine on a 4-bit (bitsandbytes nf4) text model, on the CPU."""

from __future__ import annotations

from mmserve.engine import TextEngine
from tests.conftest import tiny_entry
from tests.test_batching import PROMPTS, together


def test_a_4bit_model_batches_on_the_engine(make_app):
    app = make_app([tiny_entry("tiny_text", quantization=4)])
    rt = app.extensions["mmserve"]
    rt.manager.load("tiny_text")
    engine = rt.manager._slots["tiny_text"].loaded.engine
    assert isinstance(engine, TextEngine)
    bodies = [{"prompt": p, "max_new_tokens": 6} for p in PROMPTS[:3]]
    alone = [app.test_client().post("/generate/tiny_text", json=b).get_json() for b in bodies]
    got, _ = together(app, bodies)
    assert [g["response"] for g in got] == [a["response"] for a in alone]
    assert max(engine.sizes) == 3

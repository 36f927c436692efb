"""Packed linear weights for float32 text models on the CPU (`mmserve.cpu_linear`): the same
outputs to float tolerance for 4-16 rows and exactly `F.linear` outside, copies made on
first use, counted and released, weights and tying untouched, nothing changed for other
dtypes, layer types, too little memory or with the setting off."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile

from mmserve.cpu_linear import (
    MAX_ROWS,
    MIN_ROWS,
    packed_linear_available,
    use_packed_linears,
    weight_bytes,
)
from tests.conftest import tiny_entry
from tests.test_batching import MODEL, PROMPTS, engine_of, together


class _Tiny(nn.Module):
    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.embed = nn.Embedding(300, 48).to(dtype)
        self.up = nn.Linear(48, 96).to(dtype)  # with a bias
        self.down = nn.Linear(96, 48, bias=False).to(dtype)
        self.head = nn.Linear(48, 300, bias=False).to(dtype)
        self.head.weight = self.embed.weight  # tied, as in SmolLM2

    def forward(self, x):
        return self.head(self.down(self.up(x)))


def _plain(model: _Tiny, x: torch.Tensor) -> torch.Tensor:
    """The model's output with `F.linear` on the original weights."""
    hidden = F.linear(F.linear(x, model.up.weight, model.up.bias), model.down.weight)
    return F.linear(hidden, model.embed.weight)


def _ops(fn) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


def test_batches_of_4_to_16_rows_take_packed_weights_with_the_same_outputs():
    assert packed_linear_available()  # the torch build this project pins has MKL
    model = _Tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    packer = use_packed_linears(model, 1 << 30)
    assert packer is not None and packer.bytes == 0  # nothing copied before a batch
    assert packer.usable is None  # not even checked: that runs on the engine's thread
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for rows in (1, 2, 3, 4, 5, 8, 13, 16, 17, 40):
            x = torch.randn(rows, 1, 48, generator=gen)
            got = model(x)
            want = _plain(model, x)
            if MIN_ROWS <= rows <= MAX_ROWS:
                assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
            else:
                assert torch.equal(got, want)  # exactly what generate() computes alone
        assert packer.bytes == weight_bytes(model) == (96 * 48 + 48 * 96 + 300 * 48) * 4
        assert packer.usable is True
        batch = torch.randn(8, 48, generator=gen)
        assert any("_mkl_linear" in k for k in _ops(lambda: model(batch)))
        assert not any("_mkl_linear" in k for k in _ops(lambda: model(batch[:1])))
        assert not any("_mkl_linear" in k for k in _ops(lambda: model(torch.randn(17, 48))))
    assert model.head.weight is model.embed.weight  # still tied
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    packer.release()
    assert packer.bytes == 0
    with torch.inference_mode():
        assert not any("_mkl_linear" in k for k in _ops(lambda: model(batch)))
        assert torch.equal(model(batch), _plain(model, batch))


def test_a_replaced_weight_is_packed_again():
    model = _Tiny()
    packer = use_packed_linears(model, 1 << 30)
    x = torch.randn(6, 48)
    with torch.inference_mode():
        model(x)
        held = packer.bytes
        model.up.weight = nn.Parameter(torch.randn(96, 48))  # new storage
        want = F.linear(x, model.up.weight, model.up.bias)
        assert torch.allclose(model.up(x), want, rtol=1e-5, atol=1e-5)
    assert packer.bytes == held  # the old copy was dropped, not kept beside the new one


def test_other_dtypes_layer_types_and_too_little_memory_are_left_alone():
    half = _Tiny(torch.bfloat16)
    assert use_packed_linears(half, 1 << 30) is None
    assert "forward" not in vars(half.up)

    class Sub(nn.Linear):  # e.g. bitsandbytes' Linear4bit
        pass

    sub = nn.Sequential(Sub(8, 8))
    assert use_packed_linears(sub, 1 << 30) is None
    small = _Tiny()
    assert use_packed_linears(small, weight_bytes(small) - 1) is None
    assert "forward" not in vars(small.up)
    assert use_packed_linears(nn.Module(), 1 << 30) is None  # no linear layers at all


def test_the_engine_packs_on_the_first_batch_counts_the_copies_and_frees_them(make_app):
    on = make_app([tiny_entry(MODEL)], batch_max_size=8)
    off = make_app([tiny_entry(MODEL)], cpu_packed_weights=False)
    for app in (on, off):
        app.extensions["mmserve"].manager.load(MODEL)
    assert engine_of(off).packer is None
    engine = engine_of(on)
    packer = engine.packer
    assert packer is not None and packer.bytes == 0

    def status(app) -> dict:
        r = app.test_client().get("/admin/model_status")
        return r.get_json()["models"][MODEL]

    before = status(on)
    assert before["packed_weights_bytes"] == 0
    together(on, [{"prompt": p, "max_new_tokens": 4} for p in PROMPTS[:4]])
    assert max(engine.sizes) >= MIN_ROWS
    after = status(on)
    assert after["packed_weights_bytes"] == packer.bytes == weight_bytes(engine.model) > 0
    kv_grew = after["kv_cache_bytes"] - before["kv_cache_bytes"]
    assert after["bytes"] == before["bytes"] + packer.bytes + kv_grew
    on.extensions["mmserve"].manager.unload(MODEL)
    assert packer.bytes == 0 and packer.closed


@pytest.mark.parametrize("value, want", [("0", False), ("on", True)])
def test_the_setting_reads_on_and_off(value, want):
    from mmserve.settings import Settings

    assert Settings.load(env={"MMSERVE_CPU_PACKED_WEIGHTS": value}).cpu_packed_weights is want

"""The lm_head of float32 text models on the CPU runs batches of >= 4 rows through oneDNN
(`mmserve.cpu_head`): same logits to float tolerance, F.linear below 4 rows, weights and
tying untouched, nothing changed for other dtypes or with the setting off."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile

from mmserve.cpu_head import MIN_ROWS, onednn_linear_available, use_onednn_head
from tests.conftest import tiny_entry
from tests.test_batching import MODEL, engine_of


class _Tiny(nn.Module):
    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.embed = nn.Embedding(300, 48).to(dtype)
        self.head = nn.Linear(48, 300, bias=False).to(dtype)
        self.head.weight = self.embed.weight  # tied, as in SmolLM2

    def get_output_embeddings(self):
        return self.head


def _ops(fn) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


def test_batches_of_four_rows_or_more_go_through_onednn_with_the_same_logits():
    assert onednn_linear_available()  # the torch build this project pins has it
    model = _Tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert use_onednn_head(model)
    head = model.head
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for rows in (1, 2, 3, 4, 8, 16):
            x = torch.randn(rows, 1, 48, generator=gen)
            got, want = head(x), F.linear(x, head.weight)
            if rows < MIN_ROWS:
                assert torch.equal(got, want)  # exactly what generate() computes alone
            else:
                assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
        batch = torch.randn(8, 48, generator=gen)
        assert any("mkldnn::_linear_pointwise" in k for k in _ops(lambda: head(batch)))
        assert not any("mkldnn" in k for k in _ops(lambda: head(batch[:1])))
    assert head.weight is model.embed.weight  # still tied
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_other_dtypes_and_heads_are_left_alone():
    half = _Tiny(torch.bfloat16)
    assert not use_onednn_head(half)
    assert "forward" not in vars(half.head)
    assert not use_onednn_head(nn.Module())  # no output embeddings at all


def test_the_engine_uses_it_unless_the_setting_is_off(make_app):
    on = make_app([tiny_entry(MODEL)])
    off = make_app([tiny_entry(MODEL)], cpu_onednn_head=False)
    for app in (on, off):
        app.extensions["mmserve"].manager.load(MODEL)
    head_on = engine_of(on).model.get_output_embeddings()
    head_off = engine_of(off).model.get_output_embeddings()
    assert "forward" in vars(head_on) and "forward" not in vars(head_off)

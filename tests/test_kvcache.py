"""The engine's KV cache layer: appends in place into spare columns, within its bound."""

from __future__ import annotations

import torch

from mmserve.kvcache import Bound, GrowingLayer


def _cols(n: int, seed: int) -> torch.Tensor:
    return torch.randn(2, 3, n, 4, generator=torch.Generator().manual_seed(seed))


def test_growing_layer_appends_in_place_and_stays_within_its_bound():
    bound = Bound(100)
    layer = GrowingLayer(bound)
    ref_k = _cols(10, 0)
    k, _ = layer.update(ref_k, ref_k + 1)
    buffer, per_column = layer._k.data_ptr(), 2 * 2 * 3 * 4 * 4  # k+v x rows x heads x dim x f32
    assert k.shape == (2, 3, 10, 4) and layer.held_bytes() == 64 * per_column  # a 64-column step
    for i in range(54):  # up to 64 columns: the same buffer, no copy
        col = _cols(1, i + 1)
        ref_k = torch.cat([ref_k, col], dim=-2)
        k, v = layer.update(col, col + 1)
        assert layer._k.data_ptr() == buffer
    assert torch.equal(k, ref_k) and torch.equal(v, ref_k + 1)
    layer.update(_cols(1, 99), _cols(1, 99))  # column 65: a new buffer, capped by the bound
    assert layer._k.data_ptr() != buffer and layer.held_bytes() == 100 * per_column
    assert torch.equal(layer.keys[:, :, :64], ref_k)
    layer.update(_cols(36, 7), _cols(36, 7))  # past the bound: exactly what is needed
    assert layer.keys.shape[2] == 101 and layer.held_bytes() == 101 * per_column


def test_a_replaced_cache_starts_a_new_buffer_with_the_same_contents():
    layer = GrowingLayer(Bound(64))
    layer.update(_cols(5, 0), _cols(5, 0))
    kept = layer.keys[[1]].clone()  # what row selection (batch_select_indices) leaves
    layer.keys, layer.values = layer.keys[[1]], layer.values[[1]]
    col = _cols(1, 3)[:1]
    k, _ = layer.update(col, col)
    assert torch.equal(k, torch.cat([kept, col], dim=-2)) and k.data_ptr() == layer._k.data_ptr()

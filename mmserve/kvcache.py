"""The engine's batched KV cache: left-padded rows in one DynamicCache, merged and evicted.

Layout: every layer holds keys/values of shape (rows, kv_heads, width, head_dim); each
row's real tokens are right-aligned, the columns before them are padding that the
attention mask (rows, width) hides. A row's positions count its real tokens only, so
padding never shifts its rotary positions.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


def per_token_bytes(config, dtype: torch.dtype) -> int:
    """Bytes of keys + values one token takes in every layer (the config's own sizes)."""
    cfg = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    layers = int(cfg.num_hidden_layers)
    heads = int(getattr(cfg, "num_attention_heads", 1))
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    size = torch.empty((), dtype=dtype).element_size()
    return 2 * layers * kv_heads * int(head_dim) * size


def new_cache(config) -> DynamicCache | None:
    """An empty cache for the model, or None when a layer is not a plain full-attention
    layer (sliding windows, linear attention): those cannot be merged by left-padding."""
    cache = DynamicCache(config=config)
    if all(type(layer) is DynamicLayer for layer in cache.layers):
        return cache
    return None


def cache_bytes(cache: DynamicCache | None) -> int:
    if cache is None:
        return 0
    total = 0
    for layer in cache.layers:
        if getattr(layer, "is_initialized", False) and layer.keys is not None:
            total += layer.keys.nbytes + layer.values.nbytes
    return total


def width(cache: DynamicCache | None) -> int:
    return 0 if cache is None else cache.get_seq_length()


def _pad_left(t: torch.Tensor, columns: int) -> torch.Tensor:
    if columns <= 0:
        return t
    shape = list(t.shape)
    shape[-2] = columns
    return torch.cat([t.new_zeros(shape), t], dim=-2)


def merge(a: DynamicCache | None, mask_a, b: DynamicCache, mask_b):
    """Rows of `b` appended after those of `a`; the narrower side is left-padded.

    Returns the merged (cache, mask); `a` may be None (no rows yet). Zero keys/values fill
    the padding: the mask hides them.
    """
    if a is None or mask_a is None or mask_a.shape[0] == 0:
        return b, mask_b
    wa, wb = mask_a.shape[1], mask_b.shape[1]
    w = max(wa, wb)
    for la, lb in zip(a.layers, b.layers, strict=True):
        la.keys = torch.cat([_pad_left(la.keys, w - wa), _pad_left(lb.keys, w - wb)], dim=0)
        la.values = torch.cat([_pad_left(la.values, w - wa), _pad_left(lb.values, w - wb)], dim=0)
    pad_a = mask_a.new_zeros((mask_a.shape[0], w - wa))
    pad_b = mask_b.new_zeros((mask_b.shape[0], w - wb))
    mask = torch.cat([torch.cat([pad_a, mask_a], 1), torch.cat([pad_b, mask_b], 1)], 0)
    return a, mask


def keep_rows(cache: DynamicCache, mask: torch.Tensor, keep: list[int]):
    """Only the rows `keep` (in that order; a row named twice is copied); columns that are padding in every row left
    go too, so the cache is as wide as its longest row. Returns (cache, mask), or
    (None, None) when no row is left (the tensors are freed)."""
    if not keep:
        return None, None
    if keep != list(range(mask.shape[0])):
        index = torch.tensor(keep, device=mask.device)
        cache.batch_select_indices(index)
        mask = mask[index]
    real = mask.any(dim=0).nonzero()
    first = int(real[0]) if real.numel() else 0
    if first > 0:
        for layer in cache.layers:
            layer.keys = layer.keys[:, :, first:, :].contiguous()
            layer.values = layer.values[:, :, first:, :].contiguous()
        mask = mask[:, first:]
    return cache, mask

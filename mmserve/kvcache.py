"""The engine's batched KV cache: left-padded rows in one DynamicCache, merged and evicted.

Layout: every layer holds keys/values of shape (rows, kv_heads, width, head_dim); each
row's real tokens are right-aligned, the columns before them are padding that the
attention mask (rows, width) hides. A row's positions count its real tokens only, so
padding never shifts its rotary positions.

Each layer is a `GrowingLayer`: a decode step writes its column into spare room of a
preallocated buffer instead of concatenating (DynamicLayer copies the whole cache every
step: 15-20 % of an 8-row step of SmolLM2 on the CPU). The spare room never goes past
the cache's `Bound` (the widest its rows may become), so the bytes held stay within what
the engine reserved.
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


class Bound:
    """The widest (columns) a cache's rows may grow to; the engine keeps it current."""

    __slots__ = ("columns",)

    def __init__(self, columns: int = 0):
        self.columns = int(columns)


class GrowingLayer(DynamicLayer):
    """A full-attention layer whose keys/values are the first `width` columns of a buffer
    with spare columns: `update` writes the new columns in place (no copy of the cache).

    Spare room comes in steps of `STEP` columns, never past `bound.columns` unless the
    update itself needs more. Code that replaces `keys`/`values` (row selection, merges,
    trimming) simply makes the next update start a new buffer.
    """

    STEP = 64

    def __init__(self, bound: Bound):
        super().__init__()
        self.bound = bound
        self._k = self._v = None

    def _fits(self, k: torch.Tensor, need: int) -> bool:
        buf, keys = self._k, self.keys
        return (
            buf is not None
            and keys.dim() == 4
            and keys.data_ptr() == buf.data_ptr()
            and self.values.data_ptr() == self._v.data_ptr()
            and keys.stride() == buf.stride()
            and buf.shape[:2] == k.shape[:2]
            and need <= buf.shape[2]
        )

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        w = self.keys.shape[-2] if self.keys.dim() == 4 else 0
        need = w + key_states.shape[-2]
        if not self._fits(key_states, need):
            step = self.STEP
            columns = max(need, min(-(-need // step) * step, self.bound.columns))
            shape = (*key_states.shape[:2], columns, key_states.shape[3])
            k, v = key_states.new_empty(shape), value_states.new_empty(shape)
            if w:
                k[:, :, :w], v[:, :, :w] = self.keys, self.values
            self._k, self._v = k, v
        self._k[:, :, w:need] = key_states
        self._v[:, :, w:need] = value_states
        self.keys, self.values = self._k[:, :, :need], self._v[:, :, :need]
        return self.keys, self.values

    def held_bytes(self) -> int:
        """Bytes this layer keeps alive, spare columns included."""
        if not self.is_initialized or self.keys is None:
            return 0
        if self._k is not None and self._fits(self.keys, self.keys.shape[-2]):
            return self._k.nbytes + self._v.nbytes
        return self.keys.nbytes + self.values.nbytes


def new_cache(config, columns: int = 0) -> DynamicCache | None:
    """An empty cache for the model whose rows grow to at most `columns` (its `bound`), or
    None when a layer is not a plain full-attention layer (sliding windows, linear
    attention): those cannot be merged by left-padding."""
    cache = DynamicCache(config=config)
    if not all(type(layer) is DynamicLayer for layer in cache.layers):
        return None
    cache.bound = Bound(columns)
    cache.layers = [GrowingLayer(cache.bound) for _ in cache.layers]
    return cache


def cache_bytes(cache: DynamicCache | None) -> int:
    """Bytes the cache keeps alive (keys and values of every layer, spare room included)."""
    if cache is None:
        return 0
    total = 0
    for layer in cache.layers:
        if isinstance(layer, GrowingLayer):
            total += layer.held_bytes()
        elif getattr(layer, "is_initialized", False) and layer.keys is not None:
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


def take_rows(cache: DynamicCache, mask: torch.Tensor, keep: list[int], config):
    """Like `keep_rows`, into a new cache of `config`'s layers; `cache` is left as it was
    (the rows of one prefill that go to different lanes)."""
    index = torch.tensor(keep, device=mask.device)
    out = new_cache(config)
    for new, old in zip(out.layers, cache.layers, strict=True):
        new.lazy_initialization(old.keys, old.values)
        new.keys, new.values = old.keys[index], old.values[index]
    return keep_rows(out, mask[index], list(range(len(keep))))


def prefilled(config, bound: int, keys: list[torch.Tensor], values: list[torch.Tensor]):
    """A new cache of `config`'s layers holding `keys`/`values` (rows, kv_heads, width,
    head_dim per layer), growing to at most `bound` columns (a prefix cache's hit)."""
    cache = new_cache(config, bound)
    for layer, k, v in zip(cache.layers, keys, values, strict=True):
        layer.lazy_initialization(k, v)
        layer.keys, layer.values = k, v
    return cache


def kv_budget(lm, settings) -> int:
    """Bytes of KV cache the model's engine may hold: `kv_cache_gb`, or by default a quarter
    of the memory free at load (at least one row of min(context, 4096) tokens)."""
    if settings.kv_cache_gb is not None:
        return int(settings.kv_cache_gb * 1024**3)
    if lm.model.device.type == "cuda":
        free = torch.cuda.mem_get_info(lm.model.device)[0]
    else:
        import psutil

        free = psutil.virtual_memory().available
    per_token = per_token_bytes(lm.model.config, lm.model.dtype)
    one_row = min(lm.context or 4096, 4096) * per_token
    return int(max(free // 4, one_row))

"""Automatic prefix caching: the keys/values of recent prompts, reused by later prompts that
begin with the same tokens (a shared system prompt, a chat resent with one more turn, the
same prompt again).

The same idea as vLLM's automatic prefix caching and the block sharing of transformers'
continuous batching (`ContinuousBatchingConfig.allow_block_sharing`), at token rather than
block granularity: the KV of token j depends only on tokens 0..j, so the first n columns of
a stored prompt's KV serve any prompt whose first n tokens are the same.

Entries hold each layer's keys and values for one prompt, (kv_heads, tokens, head_dim), in
least-recently-used order; the oldest go first when the cache is over `max_bytes` or when
the engine needs the room for running rows.
"""

from __future__ import annotations

from collections import OrderedDict

import torch


class Entry:
    """One prompt's ids (tokens,) on the CPU, where lookups compare them without a device
    sync, and its keys/values per layer, (kv_heads, tokens, head_dim), on the model's
    device."""

    __slots__ = ("ids", "keys", "values", "nbytes")

    def __init__(self, ids: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor]):
        self.ids, self.keys, self.values = ids, keys, values
        self.nbytes = sum(k.nbytes + v.nbytes for k, v in zip(keys, values, strict=True))


def common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many leading tokens the 1-D id tensors `a` and `b` share."""
    n = min(int(a.shape[0]), int(b.shape[0]))
    if n == 0:
        return 0
    differ = (a[:n] != b[:n]).nonzero()
    return int(differ[0]) if differ.numel() else n


class PrefixCache:
    """Stored prompts' KV, looked up by longest common prefix; `max_bytes` 0 turns it off."""

    def __init__(self, max_bytes: int, max_entries: int = 256):
        self.max_bytes = max(0, int(max_bytes))
        self.max_entries = max_entries
        self.entries: OrderedDict[int, Entry] = OrderedDict()
        self.bytes = 0
        self.hits = 0  # lookups that reused at least one token
        self.tokens_reused = 0
        self._next = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def lookup(self, prompt: torch.Tensor) -> tuple[Entry | None, int]:
        """The entry sharing the longest prefix with `prompt` (tokens,) and that length, at
        most len(prompt) - 1 (the last prompt token is always run, for its logits); (None, 0)
        when nothing is shared. Marks the entry as recently used."""
        best, n = None, 0
        limit = int(prompt.shape[0]) - 1
        prompt = prompt.cpu()
        for key, entry in self.entries.items():
            m = min(common_prefix(entry.ids, prompt), limit)
            if m > n:
                best, n = key, m
        if best is None:
            return None, 0
        self.entries.move_to_end(best)
        return self.entries[best], n

    def count(self, n: int) -> None:
        """Record a reuse of `n` tokens (for /admin/model_status)."""
        if n > 0:
            self.hits += 1
            self.tokens_reused += n

    def store(self, prompt: torch.Tensor, cache, row: int, first: int) -> None:
        """Keep the KV of `prompt` (tokens,), which `cache` holds in row `row` from column
        `first` on; replaces entries it extends, skips prompts an entry already covers."""
        if not self.enabled:
            return
        length = int(prompt.shape[0])
        prompt = prompt.cpu()
        extended = []
        for key, entry in self.entries.items():
            shared = common_prefix(entry.ids, prompt)
            if shared == length:  # an entry already holds this prompt (or a longer one)
                self.entries.move_to_end(key)
                return
            if shared == int(entry.ids.shape[0]):  # this prompt extends the entry
                extended.append(key)
        nbytes = sum(layer.keys[row, :, :length].nbytes * 2 for layer in cache.layers)
        if nbytes > self.max_bytes:
            return  # never fits: the entries it would replace stay
        for key in extended:
            self._drop(key)
        keys = [layer.keys[row, :, first : first + length].clone() for layer in cache.layers]
        values = [layer.values[row, :, first : first + length].clone() for layer in cache.layers]
        entry = Entry(prompt.clone(), keys, values)
        self.entries[self._next] = entry
        self._next += 1
        self.bytes += entry.nbytes
        self.shrink(self.max_bytes)

    def shrink(self, limit: int) -> None:
        """Drop the least recently used entries until at most `limit` bytes are held."""
        while self.entries and (self.bytes > limit or len(self.entries) > self.max_entries):
            self._drop(next(iter(self.entries)))

    def clear(self) -> None:
        self.entries.clear()
        self.bytes = 0

    def _drop(self, key: int) -> None:
        self.bytes -= self.entries.pop(key).nbytes

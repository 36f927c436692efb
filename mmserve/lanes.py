"""The engine's running rows, in lanes: each lane is one left-padded batch with its own KV
cache, decoded by its own forward pass.

Two lanes per engine: `short` holds requests with few tokens to make (`max_tokens` at most
the `short_max_tokens` setting), `main` every other one. While the short lane has rows the
engine decodes it first, and the main lane at least every `main_every` steps, so a short
request is not slowed by a long batch: on a CPU a decode step of 8 rows costs about twice
one of 1 or 2 rows, and a short request's latency is about its steps times that cost.
Long requests lose at most the steps short ones take (their tokens are not lost, their
cache stays). Shortest-job-first scheduling is the textbook way to cut mean latency
(Schrage, 1968); vLLM and SGLang use request priorities for the same end.
"""

from __future__ import annotations

from .kvcache import cache_bytes, keep_rows, merge
from .prefill import Seq


class Lane:
    """Rows decoded together: their Seqs and their cache (rows, kv_heads, width, head_dim)
    with its attention mask (rows, width); `skipped` counts decode steps it sat out."""

    def __init__(self, name: str):
        self.name = name
        self.seqs: list[Seq] = []
        self.cache = self.mask = None
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.seqs)

    def add(self, seqs: list[Seq], cache, mask) -> None:
        """Append rows whose cache rows are `cache` (same order as `seqs`)."""
        self.cache, self.mask = merge(self.cache, self.mask, cache, mask)
        self.seqs.extend(seqs)
        self.cache.bound.columns = max(s.reserve for s in self.seqs)

    def drop_done(self) -> None:
        """Evict rows that finished, failed or were cancelled (a cancelled row ends here)."""
        keep = []
        for i, s in enumerate(self.seqs):
            if not s.row.done.is_set() and s.row.cancel_event.is_set():
                s.row.finish("cancelled")
            if not s.row.done.is_set():
                keep.append(i)
        if len(keep) < len(self.seqs):
            self.cache, self.mask = keep_rows(self.cache, self.mask, keep)
            self.seqs = [self.seqs[i] for i in keep]
            if self.seqs:
                self.cache.bound.columns = max(s.reserve for s in self.seqs)

    def clear(self) -> list[Seq]:
        """Forget every row (their cache is freed); the rows that were in it."""
        seqs, self.seqs, self.cache, self.mask, self.skipped = self.seqs, [], None, None, 0
        return seqs

    def bytes(self) -> int:
        return cache_bytes(self.cache)


def pick(short: Lane, main: Lane, main_every: int) -> Lane | None:
    """The lane to decode this step: the short one while it has rows, unless the main lane
    has sat out `main_every` steps in a row; None when both are empty."""
    if short.seqs and not (main.seqs and main.skipped >= main_every):
        if main.seqs:
            main.skipped += 1
        return short
    if main.seqs:
        main.skipped = 0
        return main
    return None

"""A request's rows inside the engine (`Seq`) and a group of them being prefilled together
(`Prefill`): left-padded prompts, siblings of one request sharing one prefill row, and the
prompt's logprobs read from the prefill's logits."""

from __future__ import annotations

import torch

from .generation import left_pad
from .kvcache import new_cache, prefilled
from .logprobs import capture, first_prompt_entry
from .rows import Row
from .sampling import Sampler


class Seq:
    """A request inside the engine: its row, its sampler and its place in the cache."""

    __slots__ = ("row", "sampler", "prompt", "reserve", "deadline", "length", "last", "group")

    def __init__(self, row: Row, sampler: Sampler, prompt: torch.Tensor, reserve: int, deadline):
        self.row = row
        self.group: list[Seq] = [self]  # the n siblings sharing this prompt, admitted together
        self.sampler = sampler
        self.prompt = prompt  # (prompt_tokens,) ids on the model's device
        self.reserve = reserve  # tokens it may hold at most: prompt + max new tokens
        self.deadline = deadline
        self.length = 0  # its real tokens in the cache
        self.last: int | None = None  # its latest token, not in the cache yet

    def history(self) -> torch.Tensor:
        """(1, L): prompt and generated ids, what processors such as penalties read."""
        done = torch.tensor(self.row.completion_ids, dtype=torch.long, device=self.prompt.device)
        return torch.cat([self.prompt, done])[None]


class Prefill:
    """A group of admitted requests prefilled together, chunk by chunk, in its own cache.

    Siblings (the n choices of one request) share one prefill row: `source[i]` is the row
    of the prefill that seq i reads; the cache is expanded to one row per seq at the end.
    """

    def __init__(self, seqs: list[Seq], pad_id: int, config):
        self.seqs = seqs
        heads: dict[int, int] = {}
        self.source = [heads.setdefault(id(s.group[0]), len(heads)) for s in seqs]
        firsts = list({id(s.group[0]): s for s in seqs}.values())
        self.ids, self.mask = left_pad([s.prompt for s in firsts], pad_id, seqs[0].prompt.device)
        self.firsts = firsts
        self.scored = any(s.sampler.prompt_logprobs is not None for s in firsts)
        self.pos = self.mask.cumsum(-1) - 1
        self.pos.masked_fill_(self.mask == 0, 1)  # as generate does for left padding
        self.cache = new_cache(config, max(s.reserve for s in seqs))
        self.offset = 0

    def reuse(self, prefix, config, looked: dict | None = None) -> int:
        """Start after the longest prefix all rows find in `prefix` (a `PrefixCache`): the
        first L columns of the cache are filled from stored prompts, and the prefill runs
        from column L. A row left-padded by p columns whose stored prefix is n tokens long
        fills its columns p..L-1, so L = min over rows of (n + p), at most width - 1.
        `looked` holds lookups already made, {id(seq.group[0]): (entry, n)}.
        Returns L (0: nothing reused; always 0 when a row asked for prompt logprobs)."""
        if self.scored or not prefix.enabled or not prefix.entries:
            return 0
        width = int(self.ids.shape[1])
        looked = looked or {}
        found = []
        for s in self.firsts:
            known = looked.get(id(s.group[0]))
            entry, n = known if known is not None else prefix.lookup(s.prompt)
            found.append((entry, n, width - int(s.prompt.shape[0])))
        start = min(width - 1, min(n + pad for _, n, pad in found))
        if not any(start > pad for _, _, pad in found):
            return 0
        some = next(e for e, _, pad in found if start > pad)
        keys, values = [], []
        for i, (k0, v0) in enumerate(zip(some.keys, some.values, strict=True)):
            shape = (len(found), k0.shape[0], start, k0.shape[2])
            k, v = k0.new_zeros(shape), v0.new_zeros(shape)
            for r, (entry, _, pad) in enumerate(found):
                if start > pad:
                    k[r, :, pad:] = entry.keys[i][:, : start - pad]
                    v[r, :, pad:] = entry.values[i][:, : start - pad]
            keys.append(k), values.append(v)
        self.cache = prefilled(config, self.cache.bound.columns, keys, values)
        self.offset = start
        for _, _, pad in found:
            prefix.count(max(0, start - pad))
        return start

    def score(self, tok, logits: torch.Tensor) -> None:
        """Prompt logprobs from the logits of the chunk at `offset` (rows, chunk, vocab), for
        the rows that asked: the logits at padded column j score the token at column j + 1;
        the first real token gets null."""
        job, offset, width = self, self.offset, self.ids.shape[1]
        for r, s in enumerate(job.firsts):
            top = s.sampler.prompt_logprobs
            if top is None:
                continue
            start = width - int(s.prompt.shape[0])
            if s.row.prompt_logprobs is None:
                s.row.prompt_logprobs = [first_prompt_entry(tok, int(job.ids[r, start]))]
            for j in range(max(offset, start), min(offset + logits.shape[1], width - 1)):
                token = int(job.ids[r, j + 1])
                s.row.prompt_logprobs.append(capture(tok, logits[r, j - offset], token, top))

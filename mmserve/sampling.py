"""Per-request sampling: the request's settings, its logits processors and its own RNG.

Every request samples with its own `torch.Generator` (seeded from `seed`, else from the
OS), so no request reads or changes the process-wide RNG that other requests use, and a
seeded request draws the same numbers alone or inside any batch. The processors are a
plain list per row (transformers' `LogitsProcessor` interface: `(input_ids, scores) ->
scores`), so penalties, `logit_bias` and logprobs hooks plug in per row. A row's grammar
(`RowSampling.constraint`, `mmserve.grammar`) masks its logits before the processors and
hears the token picked, so rows with different grammars and free rows share one batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from .types import SamplingParams


@dataclass
class RowSampling:
    """What one request asked for, defaults applied; temperature 0 means greedy."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # mmserve.grammar.Constraint: each Sampler made from this gets a fresh matcher of it.
    constraint: object | None = None


def row_sampling(defaults: dict, params: SamplingParams, limit: int) -> RowSampling:
    """The request's sampling from the table entry's `generation` defaults and its params.

    `max_new_tokens` is capped by `limit` (the server's `max_new_tokens_limit`); the caller
    caps it further by the model's context.
    """
    max_new = params.max_new_tokens or defaults.get("max_new_tokens") or 256
    temperature = params.temperature
    if temperature is None:
        temperature = defaults.get("temperature", 0.0)
    out = RowSampling(max_new_tokens=min(int(max_new), limit), seed=params.seed)
    out.stop = tuple(s for s in params.stop or () if s)
    if temperature and temperature > 0:
        out.temperature = float(temperature)
        top_p = params.top_p if params.top_p is not None else defaults.get("top_p")
        out.top_p = float(top_p) if top_p is not None else None
        top_k = params.top_k if params.top_k is not None else defaults.get("top_k")
        out.top_k = int(top_k) if top_k is not None else None
    rep = params.repetition_penalty or defaults.get("repetition_penalty")
    out.repetition_penalty = float(rep) if rep else None
    return out


class Sampler:
    """Picks one row's next token: its processors, then argmax or a draw from its generator."""

    def __init__(self, sampling: RowSampling, device="cpu"):
        self.greedy = not sampling.temperature
        self.processors = LogitsProcessorList()
        if sampling.repetition_penalty and sampling.repetition_penalty != 1.0:
            self.processors.append(RepetitionPenaltyLogitsProcessor(sampling.repetition_penalty))
        if not self.greedy:
            if sampling.temperature != 1.0:
                self.processors.append(TemperatureLogitsWarper(sampling.temperature))
            if sampling.top_k:
                self.processors.append(TopKLogitsWarper(sampling.top_k))
            if sampling.top_p is not None and sampling.top_p < 1.0:
                self.processors.append(TopPLogitsWarper(sampling.top_p))
        self.grammar = sampling.constraint.matcher() if sampling.constraint is not None else None
        self.generator = torch.Generator(device=torch.device(device))
        if sampling.seed is not None:
            self.generator.manual_seed(int(sampling.seed))
        else:
            self.generator.seed()  # from the OS: touches no other generator

    @property
    def plain_greedy(self) -> bool:
        """Argmax of the raw logits: rows like this are picked together, in one op."""
        return self.greedy and not self.processors and self.grammar is None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> int:
        """The next token for one row: `input_ids` (1, L) so far, `scores` (1, vocab)."""
        if self.grammar is not None:
            scores = self.grammar.mask(scores)
        if self.processors:
            scores = self.processors(input_ids, scores)
        if self.greedy:
            token = int(scores[0].argmax())
        else:
            probs = torch.softmax(scores[0].float(), dim=-1)
            token = int(torch.multinomial(probs, 1, generator=self.generator))
        if self.grammar is not None:
            self.grammar.accept(token)
        return token


class SampleInGenerate(LogitsProcessor):
    """The same `Sampler` inside `model.generate` (families that do not run on the engine).

    generate runs greedy (`do_sample=False`) and this last processor leaves only the token
    the request's sampler picked, so generate's own (global) RNG is never used.
    """

    def __init__(self, sampler: Sampler):
        self.sampler = sampler

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        out = torch.full_like(scores, float("-inf"))
        for i in range(scores.shape[0]):
            token = self.sampler(input_ids[i : i + 1], scores[i : i + 1])
            out[i, token] = 0.0
        return out

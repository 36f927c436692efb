"""Per-request sampling: the request's settings, its logits processors and its own RNG.

Every request samples with its own `torch.Generator` (seeded from `seed`, else from the
OS), so no request reads or changes the process-wide RNG that other requests use, and a
seeded request draws the same numbers alone or inside any batch. The processors are a
plain list per row (transformers' `LogitsProcessor` interface: `(input_ids, scores) ->
scores`), in this order: `logit_bias`, presence/frequency penalties, repetition penalty,
temperature, top-k, top-p. Logprobs are read before all of them (`mmserve.logprobs`). A
row's grammar (`RowSampling.constraint`, `mmserve.grammar`) masks its logits before the
processors and hears the token picked, so rows with different grammars and free rows share
one batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: int | None = None  # capture the chosen token's logprob and this many top ones
    prompt_logprobs: int | None = None  # the same for the prompt's tokens (echo)
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
    out.presence_penalty = float(params.presence_penalty or 0.0)
    out.frequency_penalty = float(params.frequency_penalty or 0.0)
    out.logit_bias = dict(params.logit_bias or {})
    out.logprobs, out.prompt_logprobs = params.logprobs, params.prompt_logprobs
    return out


class OpenAIPenalties(LogitsProcessor):
    """OpenAI's presence and frequency penalties over the tokens generated so far (not the
    prompt): logit[j] -= frequency * count[j] + presence * (count[j] > 0).

    `input_ids` is (1, L) prompt + generated; the first `prompt_len` columns are skipped.
    """

    def __init__(self, presence: float, frequency: float, prompt_len: int):
        self.presence, self.frequency, self.prompt_len = presence, frequency, prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        done = input_ids[:, self.prompt_len :]
        if done.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(
            1, done, torch.ones_like(done, dtype=scores.dtype)
        )
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


class LogitBias(LogitsProcessor):
    """OpenAI's `logit_bias`: a fixed value added to the logits of some token ids."""

    def __init__(self, bias: dict[int, float]):
        self.ids = list(bias)
        self.values = list(bias.values())
        self._tensors = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self._tensors is None or self._tensors[0].device != scores.device:
            ids = torch.tensor(self.ids, dtype=torch.long, device=scores.device)
            self._tensors = ids, torch.tensor(self.values, dtype=scores.dtype, device=scores.device)
        ids, values = self._tensors
        scores = scores.clone()
        scores[:, ids] += values
        return scores


class Sampler:
    """Picks one row's next token: its processors, then argmax or a draw from its generator."""

    def __init__(self, sampling: RowSampling, device="cpu", prompt_len: int = 0):
        self.greedy = not sampling.temperature
        self.logprobs = sampling.logprobs
        self.prompt_logprobs = sampling.prompt_logprobs
        self.processors = LogitsProcessorList()
        if sampling.logit_bias:
            self.processors.append(LogitBias(sampling.logit_bias))
        if sampling.presence_penalty or sampling.frequency_penalty:
            self.processors.append(
                OpenAIPenalties(sampling.presence_penalty, sampling.frequency_penalty, prompt_len)
            )
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

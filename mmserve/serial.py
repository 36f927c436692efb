"""One `model.generate` at a time on a model's own thread, for models the text engine cannot
batch: the multimodal families, compiled text models (CUDA graphs belong to the thread that
recorded them) and a request's CPU fallback copy.

It takes the same requests and returns the same `Row` as `TextEngine`, so the service has
one generation path. Sampling uses the request's own generator (`SampleInGenerate`); the
row stops generate through a stopping criterion at the step after it finished or was
cancelled.
"""

from __future__ import annotations

import logging
import queue
import threading

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer

from .errors import BadRequest, Unavailable
from .generation import eos_ids
from .logprobs import capture
from .rows import Row, Rows
from .sampling import RowSampling, SampleInGenerate, Sampler

log = logging.getLogger("mmserve.serial")
_STOP = object()


class KeepScores(LogitsProcessor):
    """Keeps the raw logits of the latest step (first in the list) for the row's logprobs."""

    def __init__(self):
        self.last = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.last = scores[0].clone()
        return scores


class IdStreamer(BaseStreamer):
    """Hands each new token id to the row; the first `put` (the prompt) is skipped. With
    `scores` (KeepScores) and `top` it also hands over each token's logprobs."""

    def __init__(self, row: Row, skip_first: bool, scores: KeepScores | None = None, top=None):
        self.row = row
        self.skip = skip_first
        self.scores, self.top = scores, top

    def put(self, value) -> None:
        if self.skip:
            self.skip = False
            return
        for token in value.reshape(-1).tolist():  # a batch of one
            entry = None
            if self.scores is not None and self.scores.last is not None:
                entry = capture(self.row.tokenizer, self.scores.last, token, self.top)
            self.row.push(token, entry)

    def end(self) -> None:
        pass


class RowEnded(StoppingCriteria):
    """Stops generate once the row finished (EOS, stop string, limit), failed or was cancelled."""

    def __init__(self, row: Row):
        self.row = row

    def __call__(self, input_ids, scores, **kwargs):
        ended = self.row.done.is_set() or self.row.cancel_event.is_set()
        return torch.full((input_ids.shape[0],), ended, dtype=torch.bool, device=input_ids.device)


class SerialEngine:
    """Runs the requests of one model one after the other, each as one generate call."""

    def __init__(self, lm):
        self.lm = lm
        self.name = lm.spec.name
        self.eos = eos_ids(lm)
        self.closed = False
        self.calls = 0  # generate calls run
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._open: set[Row] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=f"engine-{self.name}", daemon=True)
        self._thread.start()

    def submit(self, prepared, sampling: RowSampling, cancel: threading.Event) -> Row:
        return self.submit_group(prepared, [sampling], cancel).rows[0]

    def submit_group(self, prepared, samplings: list[RowSampling], cancel) -> Rows:
        """One row per sampling (the request's n choices), generated one after the other."""
        if samplings[0].prompt_logprobs is not None or samplings[0].max_new_tokens == 0:
            raise BadRequest(
                f"model '{self.name}' does not run on the batching engine, which scores "
                "prompts: echo with logprobs or max_tokens 0 is not available for it",
                param="echo",
            )
        sink, rows = Rows.sink(), []
        for i, sampling in enumerate(samplings):
            tok = self.lm.tokenizer
            row = Row(tok, self.eos, sampling.max_new_tokens, sampling.stop, cancel, sink, i)
            row.hold_end = True  # generate may still produce extras (speech) after the text
            rows.append(row)
        with self._lock:
            if self.closed:
                raise Unavailable(f"model '{self.name}' is unloading; try again")
            self._open.update(rows)
        for sampling, row in zip(samplings, rows, strict=True):
            self._jobs.put((prepared, sampling, row))
        return Rows(rows, sink)

    def cache_bytes(self) -> int:
        return 0  # generate's own cache lives inside the call

    def reserved_bytes(self) -> int:
        return 0

    def abort(self, error: BaseException) -> None:
        with self._lock:
            rows = list(self._open)
        for row in rows:
            row.fail(error)

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            self.closed = True
        self._jobs.put(_STOP)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        self.abort(Unavailable(f"model '{self.name}' was unloaded; try again"))

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            prepared, sampling, row = job
            try:
                if not row.done.is_set():
                    self._run(prepared, sampling, row)
            except BaseException as exc:  # noqa: BLE001 - raised in the request's thread
                log.warning("generate on %s failed: %s", self.name, type(exc).__name__)
                row.fail(exc)
            finally:
                row.release()
                with self._lock:
                    self._open.discard(row)

    def _run(self, prepared, sampling: RowSampling, row: Row) -> None:
        lm = self.lm
        sampler = Sampler(sampling, lm.model.device, prepared.prompt_tokens)
        keep = KeepScores() if sampling.logprobs is not None else None
        streamer = IdStreamer(row, lm.handler.strips_prompt_in_stream(), keep, sampling.logprobs)
        kwargs = {
            "max_new_tokens": sampling.max_new_tokens,
            "do_sample": False,  # the row's sampler draws; generate takes its pick
            "temperature": None,
            "top_p": None,
            "top_k": None,
            "stopping_criteria": StoppingCriteriaList([RowEnded(row)]),
            "streamer": streamer,
        }
        processors = [keep] if keep is not None else []
        if not sampler.plain_greedy:
            processors.append(SampleInGenerate(sampler))
        if processors:
            kwargs["logits_processor"] = LogitsProcessorList(processors)
        self.calls += 1
        lm.handler.generate(lm, prepared, kwargs)
        if not row.done.is_set():
            full = len(row.completion_ids) >= sampling.max_new_tokens
            row.finish("cancelled" if row.cancel_event.is_set() else "length" if full else "stop")

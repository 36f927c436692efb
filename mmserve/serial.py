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
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from .errors import Unavailable
from .generation import eos_ids
from .rows import Row
from .sampling import RowSampling, SampleInGenerate, Sampler

log = logging.getLogger("mmserve.serial")
_STOP = object()


class IdStreamer(BaseStreamer):
    """Hands each new token id to the row; the first `put` (the prompt) is skipped."""

    def __init__(self, row: Row, skip_first: bool):
        self.row = row
        self.skip = skip_first

    def put(self, value) -> None:
        if self.skip:
            self.skip = False
            return
        for token in value.reshape(-1).tolist():  # a batch of one
            self.row.push(token)

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
        row = Row(self.lm.tokenizer, self.eos, sampling.max_new_tokens, sampling.stop, cancel)
        row.hold_end = True  # generate may still produce extras (speech) after the text
        with self._lock:
            if self.closed:
                raise Unavailable(f"model '{self.name}' is unloading; try again")
            self._open.add(row)
        self._jobs.put((prepared, sampling, row))
        return row

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
        sampler = Sampler(sampling, lm.model.device)
        kwargs = {
            "max_new_tokens": sampling.max_new_tokens,
            "do_sample": False,  # the row's sampler draws; generate takes its pick
            "temperature": None,
            "top_p": None,
            "top_k": None,
            "stopping_criteria": StoppingCriteriaList([RowEnded(row)]),
            "streamer": IdStreamer(row, lm.handler.strips_prompt_in_stream()),
        }
        if not sampler.plain_greedy:
            kwargs["logits_processor"] = LogitsProcessorList([SampleInGenerate(sampler)])
        self.calls += 1
        lm.handler.generate(lm, prepared, kwargs)
        if not row.done.is_set():
            full = len(row.completion_ids) >= sampling.max_new_tokens
            row.finish("cancelled" if row.cancel_event.is_set() else "length" if full else "stop")

"""Running generate for one request: sampling kwargs, stop strings, streaming and cancellation."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch
from transformers import StoppingCriteria, TextIteratorStreamer

from .types import SamplingParams


class CancelOnEvent(StoppingCriteria):
    """Stops generation at the next step once the event is set (client gone, shutdown)."""

    def __init__(self, event: threading.Event):
        self.event = event
        self.steps = 0

    def __call__(self, input_ids, scores, **kwargs):
        self.steps += 1
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool)


class StopText:
    """Cuts text at the first stop string, holding back a tail that might start one."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.buffer = ""
        self.emitted = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Text safe to emit now."""
        if self.stopped:
            return ""
        self.buffer += text
        cut = min((i for i in (self.buffer.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.buffer, self.stopped = self.buffer[:cut], "", True
        elif self.hold and len(self.buffer) > self.hold:
            out, self.buffer = self.buffer[: -self.hold], self.buffer[-self.hold :]
        elif not self.hold:
            out, self.buffer = self.buffer, ""
        else:
            out = ""
        self.emitted += out
        return out

    def flush(self) -> str:
        out = "" if self.stopped else self.buffer
        self.buffer = ""
        self.emitted += out
        return out


def sampling_kwargs(defaults: dict, params: SamplingParams, limit: int) -> dict:
    """generate() kwargs from the entry's defaults and the request; greedy when temperature is 0."""
    max_new = params.max_new_tokens or defaults.get("max_new_tokens") or 256
    max_new = min(int(max_new), limit)
    temperature = params.temperature
    if temperature is None:
        temperature = defaults.get("temperature", 0.0)
    kwargs = {"max_new_tokens": max_new}
    if temperature and temperature > 0:
        kwargs.update(do_sample=True, temperature=float(temperature))
        top_p = params.top_p if params.top_p is not None else defaults.get("top_p")
        if top_p is not None:
            kwargs["top_p"] = float(top_p)
        top_k = params.top_k if params.top_k is not None else defaults.get("top_k")
        if top_k is not None:
            kwargs["top_k"] = int(top_k)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    rep = params.repetition_penalty or defaults.get("repetition_penalty")
    if rep:
        kwargs["repetition_penalty"] = float(rep)
    return kwargs


def left_pad(rows: list[torch.Tensor], pad_id: int, device=None):
    """Token rows as one left-padded batch: (input_ids, attention_mask)."""
    width = max(r.shape[0] for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        input_ids[i, width - r.shape[0] :] = r
        mask[i, width - r.shape[0] :] = 1
    return input_ids, mask


def eos_ids(lm) -> set[int]:
    ids = lm.model.generation_config.eos_token_id
    if ids is None:
        ids = getattr(lm.tokenizer, "eos_token_id", None)
    if ids is None:
        return set()
    return set(ids if isinstance(ids, (list, tuple)) else [ids])


@dataclass
class Completion:
    ids: list[int]
    finish_reason: str


def trim_completion(lm, ids: list[int], max_new: int, cancelled: bool) -> Completion:
    """Generated ids up to and including the first EOS; why generation ended."""
    eos = eos_ids(lm)
    for i, tok in enumerate(ids):
        if tok in eos:
            return Completion(ids[: i + 1], "stop")
    if cancelled:
        return Completion(ids, "cancelled")
    return Completion(ids, "length" if len(ids) >= max_new else "stop")


class StreamRun:
    """generate() on a worker thread feeding a TextIteratorStreamer.

    The consumer iterates `deltas()`; `cancel()` (called when the response is
    closed) stops the model at its next step through the CancelOnEvent criterion.
    """

    def __init__(self, lm, prepared, gen_kwargs: dict, cancel: threading.Event):
        self.lm = lm
        self.prepared = prepared
        self.cancel_event = cancel
        self.streamer = TextIteratorStreamer(
            lm.tokenizer,
            skip_prompt=lm.handler.strips_prompt_in_stream(),
            skip_special_tokens=True,
            timeout=1.0,
        )
        self.kwargs = dict(gen_kwargs, streamer=self.streamer)
        self.sequences = None
        self.error: BaseException | None = None
        self.first_token_at: float | None = None
        self.thread = threading.Thread(target=self._run, name="generate", daemon=True)

    def _run(self) -> None:
        try:
            self.sequences = self.lm.handler.generate(self.lm, self.prepared, self.kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the consumer thread
            self.error = exc
            self.streamer.end()

    def start(self) -> None:
        self.thread.start()

    def deltas(self):
        """Text pieces as they are produced."""
        import queue

        while True:
            try:
                piece = next(self.streamer)
            except StopIteration:
                break
            except queue.Empty:
                if not self.thread.is_alive() and self.streamer.text_queue.empty():
                    break
                continue
            if piece:
                if self.first_token_at is None:
                    self.first_token_at = time.monotonic()
                yield piece
        self.thread.join()
        if self.error is not None:
            raise self.error

    def cancel(self) -> None:
        self.cancel_event.set()

    def wait(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)

"""Dynamic batching for one loaded text model: concurrent requests run as one padded generate.

Locking rules:
- `Batcher._cond` guards the queue of submissions and `closed`. It is never held while
  the model runs.
- Only the batcher's worker thread calls generate on its model; a `BatchHandle` is
  filled by that thread and read by the request's thread through a queue.
- A row's response completes as soon as that row finishes (its max tokens, EOS, a stop
  string, a stopping criterion or its cancel event), while the batch runs on for the rest.
- `holders` (the model's leases or the server's POSTs in progress) is read without a
  lock: a stale count only makes a lone request wait the gap, or a latecomer miss a batch.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable

import torch
from transformers import StoppingCriteriaList

from .errors import Unavailable
from .families.base import Prepared
from .families.text import is_compiled
from .generation import eos_ids, left_pad

log = logging.getLogger("mmserve.batching")

# generate() kwargs that are per request; every other kwarg must be equal to share a batch.
PER_ROW = ("max_new_tokens", "stop_strings", "tokenizer", "stopping_criteria", "streamer")
_END = object()


class BatchHandle:
    """One submission: its text deltas as they come, then its completion ids and finish reason."""

    def __init__(self, prepared: Prepared, gen_kwargs: dict, cancel: threading.Event, seed=None):
        self.prepared = prepared
        self.ids = prepared.inputs["input_ids"][0]
        self.max_new_tokens = int(gen_kwargs["max_new_tokens"])
        self.stops = [s for s in gen_kwargs.get("stop_strings") or () if s]
        self.criteria = list(gen_kwargs.get("stopping_criteria") or ())
        self.cancel_event = cancel
        self.seed = seed
        shared = {k: v for k, v in gen_kwargs.items() if k not in PER_ROW}
        # A seeded request runs alone so that its seed gives the same output as unbatched.
        self.key = (repr(sorted(shared.items())), id(self) if seed is not None else None)
        self.shared = shared
        self.submitted_at = time.monotonic()
        self.completion_ids: list[int] = []
        self.finish_reason: str | None = None
        self.first_token_at: float | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._sent = ""

    def deltas(self):
        """Text pieces as the row produces them; raises the batch's error if generate failed."""
        while True:
            item = self._queue.get()
            if item is _END:
                break
            yield item
        if self.error is not None:
            raise self.error

    def result(self) -> list[int]:
        """Wait for the row to finish; its generated ids (EOS included when there is one)."""
        for _ in self.deltas():
            pass
        return self.completion_ids

    def wait(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)

    # --- called on the worker thread --------------------------------------
    def _emit(self, text: str, final: bool = False) -> None:
        """Send the new suffix of the row's text; hold back an incomplete UTF-8 character."""
        if (text.endswith("\ufffd") and not final) or not text.startswith(self._sent):
            return  # wait for more tokens (a decoder may rewrite a tail it has not settled)
        piece, self._sent = text[len(self._sent) :], text
        if piece:
            if self.first_token_at is None:
                self.first_token_at = time.monotonic()
            self._queue.put(piece)

    def _finish(self, reason: str | None, error: BaseException | None = None) -> None:
        if self.done.is_set():
            return
        self.finish_reason = reason
        self.error = error
        self.done.set()
        self._queue.put(_END)


class RowTracker:
    """A per-row stopping criterion that also streams: called by generate after every step.

    It reads each row's new token from `input_ids` rather than from a streamer's `put`,
    because generate calls the criteria before `put` (transformers 5.23): deciding here
    stops a finished row on the step that finished it, not one step later.
    """

    def __init__(self, handles: list[BatchHandle], prompt_len: int, tokenizer, eos: set[int]):
        self.handles = handles
        self.prompt_len = prompt_len
        self.tokenizer = tokenizer
        self.eos = eos
        self.finished = [h.done.is_set() for h in handles]

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        last = input_ids[:, -1].tolist()
        for i, h in enumerate(self.handles):
            if not self.finished[i]:
                self._step(i, h, last[i], input_ids)
        return torch.tensor(self.finished, dtype=torch.bool, device=input_ids.device)

    def _step(self, i: int, h: BatchHandle, token: int, input_ids) -> None:
        h.completion_ids.append(token)
        text = self.tokenizer.decode(h.completion_ids, skip_special_tokens=True)
        h._emit(text)
        # The request's own criteria see its row without padding; they run every step.
        row = input_ids[i : i + 1, self.prompt_len - h.ids.shape[0] :]
        fired = [bool(c(row, None).any()) for c in h.criteria]
        reason = None
        if token in self.eos or any(s in text for s in h.stops):
            reason = "stop"
        elif h.cancel_event.is_set():
            reason = "cancelled"
        elif len(h.completion_ids) >= h.max_new_tokens:
            reason = "length"
        elif any(fired):
            reason = "stop"
        if reason is not None:
            self.close_row(i, reason)

    def close_row(self, i: int, reason: str) -> None:
        h = self.handles[i]
        self.finished[i] = True
        h._emit(self.tokenizer.decode(h.completion_ids, skip_special_tokens=True), final=True)
        h._finish(reason)

    def close_all(self, error: BaseException | None = None) -> None:
        """After generate: end every row still open (with the batch's error, if any)."""
        for i, h in enumerate(self.handles):
            if self.finished[i]:
                continue
            if error is not None:
                self.finished[i] = True
                h._finish(None, error)
            else:
                full = len(h.completion_ids) >= h.max_new_tokens
                self.close_row(i, "length" if full else "stop")


class Batcher:
    """Collects submissions to one model for a short window and runs them as padded batches."""

    def __init__(
        self,
        lm,
        max_size: int,
        max_wait: float,
        max_gap: float | None = None,
        holders: Callable[[], int] | None = None,
    ):
        """A batch closes `max_wait` s after its first request, or `max_gap` s after its last.

        `holders` counts the requests that hold the model now (submitted here or on their
        way: parsing, tokenizing). With it, a lone request starts at once instead of waiting
        the gap for company that is not coming (see `_alone`).
        """
        if max_size < 1 or max_wait < 0 or (max_gap is not None and max_gap < 0):
            raise ValueError("batch_max_size must be >= 1, batch_max_wait/gap_ms >= 0")
        self.lm = lm
        self.max_size = max_size
        self.max_wait = max_wait
        self.max_gap = max_wait if max_gap is None else min(max_gap, max_wait)
        self.holders = holders
        self._last_size = 1  # rows in the latest batch
        self._free_since = 0.0  # monotonic time the latest batch ended
        self.batches: deque[int] = deque(maxlen=1000)  # sizes of recent generate calls
        self.closed = False
        self._pending: deque[BatchHandle] = deque()
        self._cond = threading.Condition()
        tok = lm.tokenizer
        self._pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self._eos = eos_ids(lm)
        self._context = getattr(lm.model.config, "max_position_embeddings", None)
        self._thread = threading.Thread(
            target=self._loop, name=f"batcher-{lm.spec.name}", daemon=True
        )
        self._thread.start()

    def submit(self, prepared: Prepared, gen_kwargs: dict, cancel: threading.Event, seed=None):
        """Queue one request for the next batch; returns its BatchHandle at once."""
        handle = BatchHandle(prepared, gen_kwargs, cancel, seed)
        with self._cond:
            if self.closed:
                raise Unavailable(f"model '{self.lm.spec.name}' is unloading; try again")
            self._pending.append(handle)
            self._cond.notify()
        return handle

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker; submissions not started yet fail with 503."""
        with self._cond:
            self.closed = True
            left, self._pending = list(self._pending), deque()
            self._cond.notify_all()
        for h in left:
            h._finish(None, Unavailable(f"model '{self.lm.spec.name}' was unloaded; try again"))
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # --- the worker thread ------------------------------------------------
    def _loop(self) -> None:
        while True:
            group = self._next_group()
            if group is None:
                return
            try:
                self._run(group)
            except BaseException as exc:  # noqa: BLE001 - never leave a request waiting
                for h in group:
                    h._finish(None, exc)  # a no-op for rows that had finished
            finally:
                self._free_since = time.monotonic()

    def _next_group(self) -> list[BatchHandle] | None:
        """Wait for a first submission, then for more; pick one compatible group.

        The batch closes when it is full, `max_wait` after its first request, or `max_gap`
        after its latest one. The requests of a burst reach the model a few ms apart (each
        is parsed and tokenized under the GIL), 10-25 ms for 8 on 2 cores: the gap keeps
        them together. A lone request starts at once (`_alone`).

        Requests that queued while the previous batch ran count from the end of that run,
        not from their arrival: the clients whose rows ended last send their next requests
        a few ms later, and waiting the gap for them keeps a closed loop of clients in full
        batches instead of settling into a short batch and a long one taking turns.
        """
        with self._cond:
            while not self._pending and not self.closed:
                self._cond.wait()
            if self.closed:
                return None
            closes = max(self._pending[0].submitted_at, self._free_since) + self.max_wait
            while len(self._pending) < self.max_size and not self.closed:
                if self._alone():
                    break
                latest = max(self._pending[-1].submitted_at, self._free_since)
                deadline = min(closes, latest + self.max_gap)
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            if self.closed:
                return None
            group, rest = self._split(list(self._pending))
            self._pending = deque(rest)  # the others lead the next batch, in arrival order
        return group

    def _alone(self) -> bool:
        """Whether the one pending request may start without waiting the gap.

        Only when the model serves one request at a time (its latest batch had one row and
        ended before this request came) and no other request holds it or is on its way
        (being parsed or tokenized). A request that has not reached the server yet is not
        counted: under concurrent load batches have several rows, and the gap applies.
        """
        if self.holders is None or len(self._pending) != 1 or self._last_size != 1:
            return False
        if self._pending[0].submitted_at < self._free_since:
            return False  # it queued behind a running batch: others are active
        return self.holders() <= 1

    def _split(self, pending: list[BatchHandle]):
        """The oldest submission's group (same sampling key, fits the context) and the rest."""
        group: list[BatchHandle] = []
        rest: list[BatchHandle] = []
        prompt = longest = 0
        for h in pending:
            if h.cancel_event.is_set():
                h._finish("cancelled")
                continue
            fits = self._context is None or (
                max(prompt, h.ids.shape[0]) + max(longest, h.max_new_tokens) <= self._context
            )
            if len(group) < self.max_size and (not group or (h.key == group[0].key and fits)):
                group.append(h)
                prompt, longest = max(prompt, h.ids.shape[0]), max(longest, h.max_new_tokens)
            else:
                rest.append(h)
        return group, rest

    def _run(self, group: list[BatchHandle]) -> None:
        """One left-padded generate for the group; every row ends on its own."""
        if not group:
            return
        lm = self.lm
        input_ids, mask = left_pad([h.ids for h in group], self._pad_id, group[0].ids.device)
        width = input_ids.shape[1]
        tracker = RowTracker(group, width, lm.tokenizer, self._eos)
        kwargs = dict(group[0].shared)
        kwargs.update(
            max_new_tokens=max(h.max_new_tokens for h in group),
            stopping_criteria=StoppingCriteriaList([tracker]),
            pad_token_id=self._pad_id,
        )
        self.batches.append(len(group))
        self._last_size = len(group)
        log.debug("batch of %d on %s, width %d", len(group), lm.spec.name, width)
        try:
            if group[0].seed is not None:
                torch.manual_seed(int(group[0].seed))
            inputs = {"input_ids": input_ids, "attention_mask": mask}
            lm.handler.generate(lm, Prepared(inputs, width), kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to every open row's request
            log.warning(
                "batch of %d on %s failed: %s", len(group), lm.spec.name, type(exc).__name__
            )
            tracker.close_all(exc)
            return
        tracker.close_all()


class BatchedRun:
    """`StreamRun`'s interface over a batcher submission, so the service streams either one."""

    sequences = None

    def __init__(self, batcher: Batcher, prepared: Prepared, gen_kwargs: dict, cancel, seed=None):
        self.batcher = batcher
        self.prepared = prepared
        self.kwargs = gen_kwargs
        self.cancel_event = cancel
        self.seed = seed
        self.handle: BatchHandle | None = None

    def start(self) -> None:
        self.handle = self.batcher.submit(self.prepared, self.kwargs, self.cancel_event, self.seed)

    def deltas(self):
        yield from self.handle.deltas()

    def cancel(self) -> None:
        self.cancel_event.set()

    def wait(self, timeout: float | None = None) -> None:
        if self.handle is not None:
            self.handle.wait(timeout)

    @property
    def first_token_at(self) -> float | None:
        return self.handle.first_token_at if self.handle else None

    @property
    def completion_ids(self) -> list[int]:
        return self.handle.completion_ids if self.handle else []


def batcher_for(
    lm, settings, lock: threading.Lock, holders: Callable[[], int] | None = None
) -> Batcher | None:
    """The model's batcher, made on first use; None where its family does not batch.

    A compiled model always gets one, even with batching off (a batch of one): its
    generate calls then all run on the batcher's one thread, and CUDA graphs recorded by
    torch.compile (mode reduce-overhead) belong to the thread that recorded them.
    """
    if not getattr(lm.handler, "batchable", False):
        return None
    if settings.batch_max_size <= 1 and not is_compiled(lm):
        return None
    with lock:
        if getattr(lm, "batcher", None) is None:
            wait = settings.batch_max_wait_ms / 1000.0
            gap = settings.batch_max_gap_ms / 1000.0
            lm.batcher = Batcher(lm, max(1, settings.batch_max_size), wait, gap, holders)
        return lm.batcher

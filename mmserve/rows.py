"""One request's output while it generates: token ids in, text deltas out, and why it ended.

A `Row` is fed by the thread that runs the model (an engine) and read by the request's
thread. It owns everything that is per request on the output side, identical in every
engine: incremental detokenization that never emits an incomplete UTF-8 character, stop
strings, EOS, `max_tokens`, cancellation, and the finish reason.

Locking rule: `push` is called by one producer thread; `finish`/`fail` may be called by
any thread (an engine, a shutdown, an unload); the first call wins, under `_lock`.
"""

from __future__ import annotations

import queue
import threading
import time

REPLACEMENT = "\ufffd"  # what a decoder writes for bytes that are not (yet) a whole character


class Delta(str):
    """A piece of one row's text (a str, so text-only readers need nothing else), with the
    row's index among the request's n choices (`choice`) and the `logprobs` of the tokens whose
    text it completes (None when the request did not ask for them)."""

    choice: int = 0
    logprobs: list | None = None

    @classmethod
    def of(cls, text: str, choice: int, logprobs: list | None) -> Delta:
        out = cls(text)
        out.choice, out.logprobs = choice, logprobs
        return out


def choice_of(piece: str) -> tuple[int, list | None]:
    """(choice index, logprobs) of a text piece; a plain str is choice 0 without logprobs."""
    if isinstance(piece, Delta):
        return piece.choice, piece.logprobs
    return 0, None


class _End:
    """The last item a row puts in its queue."""

    def __init__(self, index: int):
        self.index = index


class StopText:
    """Cuts text at the first stop string, holding back a tail that might start one."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.buffer = ""
        self.emitted = ""
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the text

    def feed(self, text: str) -> str:
        """Text safe to emit now."""
        if self.stopped:
            return ""
        self.buffer += text
        cut = min((i for i in (self.buffer.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.matched = next(s for s in self.stops if self.buffer.find(s) == cut)
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


class Detokenizer:
    """Incremental decoding of generated ids (the prefix/read offsets of TGI and vLLM).

    Each `add` decodes only a short window, so a step costs the same at token 5 and 500.
    Text whose decoding ends in U+FFFD is held back: the bytes of a multi-byte character
    may still be coming. `flush` drops such an incomplete tail for good, so no response
    ever ends in half a character (a model that really writes U+FFFD last loses it).
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # start of the window decoded for context
        self.read = 0  # ids before this one are already emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, token: int) -> str:
        """The new text that `token` completes ("" while a character is incomplete)."""
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) > len(before) and not after.endswith(REPLACEMENT):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """The text still held back, without an incomplete character at its end."""
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return after[len(before) :].rstrip(REPLACEMENT) if len(after) > len(before) else ""


class Row:
    """The output of one request: feed token ids with `push`; read text with `deltas`."""

    def __init__(
        self, tokenizer, eos: set[int], max_new_tokens: int, stops, cancel, sink=None, index=0
    ):
        self.tokenizer = tokenizer
        self.index = index
        self.detok = Detokenizer(tokenizer)
        self.cut = StopText(list(stops or ()))
        self.eos = eos
        self.max_new_tokens = int(max_new_tokens)
        self.cancel_event: threading.Event = cancel
        self.completion_ids: list[int] = []
        self.finish_reason: str | None = None
        self.error: BaseException | None = None
        self.first_token_at: float | None = None
        self.done = threading.Event()
        # True: a normal end reaches the reader only at `release` (an engine whose call
        # still produces outputs after the text, such as speech, sets it).
        self.hold_end = False
        self._ended = False
        self._lock = threading.Lock()
        # Siblings (the n choices of one request) share one queue, the `sink`.
        self._queue: queue.SimpleQueue = sink if sink is not None else queue.SimpleQueue()
        self.logprobs: list | None = None  # TokenLogprob of each token whose text was sent
        self._pending: list = []  # ... of tokens whose text is still held back
        self.prompt_logprobs: list | None = None  # set by the engine when asked for

    # --- producer side ------------------------------------------------------
    def push(self, token: int, logprob=None) -> bool:
        """Add one generated token (and its TokenLogprob when asked for); True once the row
        has finished (now or before)."""
        if self.done.is_set():
            return True
        self.completion_ids.append(int(token))
        reason = None
        if token in self.eos:
            reason = "stop"
        else:
            if logprob is not None:
                self._pending.append(logprob)
            self._emit(self.cut.feed(self.detok.add(int(token))))
            if self.cut.stopped:
                reason = "stop"
        if reason is None and len(self.completion_ids) >= self.max_new_tokens:
            reason = "length"
        if reason is None and self.cancel_event.is_set():
            reason = "cancelled"
        if reason is not None:
            self.finish(reason)
        return self.done.is_set()

    def finish(self, reason: str) -> None:
        """End the row normally: emit the held-back text (never half a character)."""
        with self._lock:
            if self.done.is_set():
                return
            if not self.cut.stopped:
                self._emit(self.cut.feed(self.detok.flush()))
                self._emit(self.cut.flush())
                if self._pending:  # tokens that added no text (a dropped half character)
                    self._emit("", force=True)
            self.finish_reason = "stop" if self.cut.stopped else reason
            self._close()

    def fail(self, error: BaseException) -> None:
        """End the row with an error, raised in the reader after the text sent so far."""
        with self._lock:
            if self.done.is_set():
                return
            self.error = error
            self._close()

    def _emit(self, piece: str, force: bool = False) -> None:
        if piece or force:
            if self.first_token_at is None:
                self.first_token_at = time.monotonic()
            entries = None
            if self._pending:
                entries, self._pending = self._pending, []
                self.logprobs = (self.logprobs or []) + entries
            self._queue.put(Delta.of(piece, self.index, entries))

    def _close(self) -> None:
        self.done.set()
        if self.error is not None or not self.hold_end:
            self._end()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._queue.put(_End(self.index))

    def release(self) -> None:
        """Let the reader see the end of a row held by `hold_end` (ends it if still open)."""
        self.finish("stop")
        with self._lock:
            self._end()

    # --- consumer side ------------------------------------------------------
    @property
    def text(self) -> str:
        """Everything emitted so far."""
        return self.cut.emitted

    def deltas(self):
        """Text pieces as they come; raises the row's error at the end if it failed."""
        while True:
            item = self._queue.get()
            if isinstance(item, _End):
                break
            yield item
        if self.error is not None:
            raise self.error

    def wait(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)


class Rows:
    """The n rows of one request, read as one: deltas of every row from their shared queue
    (each a `Delta` naming its row's index), in the order the engine produced them."""

    def __init__(self, rows: list[Row], sink: queue.SimpleQueue):
        self.rows = rows
        self._queue = sink
        self.cancel_event: threading.Event = rows[0].cancel_event

    @staticmethod
    def sink() -> queue.SimpleQueue:
        return queue.SimpleQueue()

    def deltas(self):
        """Every row's pieces; raises the first error at the end if a row failed."""
        open_rows = len(self.rows)
        while open_rows:
            item = self._queue.get()
            if isinstance(item, _End):
                open_rows -= 1
            else:
                yield item
        for row in self.rows:
            if row.error is not None:
                raise row.error

    def all_done(self) -> bool:
        return all(r.done.is_set() for r in self.rows)

    def wait(self, timeout: float | None = None) -> bool:
        return all(r.wait(timeout) for r in self.rows)

    def fail(self, error: BaseException) -> None:
        for row in self.rows:
            row.fail(error)

    @property
    def text(self) -> str:
        """Text emitted by any row so far ('' when none has sent any)."""
        return "".join(r.text for r in self.rows)

    @property
    def completion_tokens(self) -> int:
        return sum(len(r.completion_ids) for r in self.rows)

    @property
    def first_token_at(self) -> float | None:
        times = [r.first_token_at for r in self.rows if r.first_token_at is not None]
        return min(times) if times else None

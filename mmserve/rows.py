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

_END = object()
REPLACEMENT = "\ufffd"  # what a decoder writes for bytes that are not (yet) a whole character


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

    def __init__(self, tokenizer, eos: set[int], max_new_tokens: int, stops, cancel):
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
        self._queue: queue.SimpleQueue = queue.SimpleQueue()

    # --- producer side ------------------------------------------------------
    def push(self, token: int) -> bool:
        """Add one generated token; True once the row has finished (now or before)."""
        if self.done.is_set():
            return True
        self.completion_ids.append(int(token))
        reason = None
        if token in self.eos:
            reason = "stop"
        else:
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
            self.finish_reason = "stop" if self.cut.stopped else reason
            self._close()

    def fail(self, error: BaseException) -> None:
        """End the row with an error, raised in the reader after the text sent so far."""
        with self._lock:
            if self.done.is_set():
                return
            self.error = error
            self._close()

    def _emit(self, piece: str) -> None:
        if piece:
            if self.first_token_at is None:
                self.first_token_at = time.monotonic()
            self._queue.put(piece)

    def _close(self) -> None:
        self.done.set()
        if self.error is not None or not self.hold_end:
            self._end()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._queue.put(_END)

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
            if item is _END:
                break
            yield item
        if self.error is not None:
            raise self.error

    def wait(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)

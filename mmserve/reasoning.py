"""R1-style reasoning: splits `<think>...</think>` out of generated text, incrementally."""

from __future__ import annotations

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"
REASONING, CONTENT = "reasoning", "content"


def _partial_tag_len(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is the start of `tag` (a tag split by a chunk)."""
    for n in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


class ReasoningSplitter:
    """Pure incremental parser: feed text deltas, get (kind, text) pieces safe to emit now.

    Invariants: text outside tags is content, text inside is reasoning; the tags and the
    whitespace right around a tag are dropped; a tail that may be the start of a tag is
    held back until the next feed or flush. Text without tags comes out unchanged.
    `start_in_reasoning` is for models whose template opens the think block in the prompt
    (R1 distills): the output is reasoning until `</think>`; a leading `<think>` is dropped.
    """

    def __init__(self, start_in_reasoning: bool = False):
        self.inside = start_in_reasoning
        self.expect_open = start_in_reasoning  # a redundant leading <think> may still come
        self.at_tag = start_in_reasoning  # just past a tag: leading whitespace is dropped
        self.buffer = ""
        self.pending_ws = ""  # trailing whitespace of the segment, emitted unless a tag follows

    @property
    def kind(self) -> str:
        return REASONING if self.inside else CONTENT

    def feed(self, text: str) -> list[tuple[str, str]]:
        """Pieces of reasoning and content that can be emitted after `text`."""
        self.buffer += text
        out: list[tuple[str, str]] = []
        if self.expect_open:
            stripped = self.buffer.lstrip()
            if stripped.startswith(OPEN_TAG):
                self.buffer, self.expect_open = stripped[len(OPEN_TAG) :], False
            elif OPEN_TAG.startswith(stripped):
                return out  # only whitespace or part of "<think>" so far
            else:
                self.expect_open = False
        while True:
            tag = CLOSE_TAG if self.inside else OPEN_TAG
            at = self.buffer.find(tag)
            if at < 0:
                keep = _partial_tag_len(self.buffer, tag)
                safe = self.buffer[: len(self.buffer) - keep]
                self.buffer = self.buffer[len(self.buffer) - keep :]
                self._emit(safe, out)
                return out
            self._emit(self.buffer[:at], out)
            self.pending_ws = ""  # whitespace before a tag is dropped
            self.buffer = self.buffer[at + len(tag) :]
            self.inside = not self.inside
            self.at_tag = True

    def flush(self) -> list[tuple[str, str]]:
        """The rest, at the end of the output (a held-back partial tag is text after all)."""
        out: list[tuple[str, str]] = []
        self.expect_open = False
        rest, self.buffer = self.buffer, ""
        self._emit(rest, out)
        if self.pending_ws:
            out.append((self.kind, self.pending_ws))
            self.pending_ws = ""
        return out

    def _emit(self, text: str, out: list[tuple[str, str]]) -> None:
        if self.at_tag:
            text = text.lstrip()
            if not text:
                return
            self.at_tag = False
        body = text.rstrip()
        if body:
            out.append((self.kind, self.pending_ws + body))
            self.pending_ws = ""
        self.pending_ws += text[len(body) :]


def starts_inside(text: str) -> bool:
    """Whether a whole output began inside a think block: `</think>` comes before any `<think>`."""
    close = text.find(CLOSE_TAG)
    if close < 0:
        return False
    opened = text.find(OPEN_TAG)
    return opened < 0 or close < opened


def split_reasoning(text: str, start_in_reasoning: bool | None = None) -> tuple[str | None, str]:
    """(reasoning or None, content) of a whole output; None detects a template-opened block."""
    if start_in_reasoning is None:
        start_in_reasoning = starts_inside(text)
    splitter = ReasoningSplitter(start_in_reasoning)
    pieces = splitter.feed(text) + splitter.flush()
    reasoning = "".join(t for k, t in pieces if k == REASONING)
    content = "".join(t for k, t in pieces if k == CONTENT)
    return (reasoning or None), content


EFFORTS = ("none", "minimal", "low", "medium", "high")


def thinking_switch(enabled: bool | None) -> dict:
    """Chat-template kwargs that turn a model's thinking on or off (`enable_thinking`, read
    by Qwen3-style templates; templates without it never see it). None: the template's own
    default."""
    return {} if enabled is None else {"enable_thinking": bool(enabled)}


def effort_switch(effort: str | None) -> dict:
    """`reasoning_effort` as a thinking switch: none/minimal turn thinking off, low/medium/
    high on. The level itself has no equivalent in open models' templates and is ignored."""
    return thinking_switch(None if effort is None else effort not in ("none", "minimal"))

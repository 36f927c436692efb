"""The Anthropic Messages API (POST /v1/messages): a translator in front of the one
InferenceService, with Anthropic's streaming events and error envelope."""

from __future__ import annotations

import json

from flask import Blueprint, g, jsonify

from ..body import json_fields, reads_body
from ..errors import to_server_error
from ..reasoning import REASONING, ReasoningSplitter
from ..runtime import get_runtime
from ..schemas import anthropic as schema
from ..tools import ToolStream, active
from .docs import documented
from .openai import _streamed, open_stream

bp = Blueprint("anthropic", __name__, url_prefix="/v1")


def event(name: str, data: dict) -> str:
    """One server-sent event with Anthropic's `event:` line."""
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@bp.post("/messages")
@reads_body
@documented(schema.MessagesRequest, tags=["anthropic"], errors=())
def messages():
    """Anthropic's Messages API on any generating model; `<think>` becomes thinking blocks."""
    rt = get_runtime()
    with json_fields() as body, rt.tmp.scope() as tmp_dir:
        call = schema.parse_messages(body, rt.settings, tmp_dir, rt.manager.spec)
    req = call.request
    g.model = req.model
    opened = rt.manager.spec(req.model).reasoning
    if not call.stream:
        result = rt.service.generate(req)
        g.tokens = result.completion_tokens
        return jsonify(schema.message(result, req.model, opened))
    events, source, prefix = open_stream(rt, req)
    return _streamed(_events(req, events, opened, active(req)), source, prefix)


class _Blocks:
    """Content blocks of a streamed message: a new block starts when the kind changes."""

    def __init__(self):
        self.index = -1
        self.kind: str | None = None

    def piece(self, kind: str, text: str):
        if kind != self.kind:
            yield from self.close()
            self.index += 1
            self.kind = kind
            block = {"type": "thinking", "thinking": ""} if kind == REASONING else {
                "type": "text", "text": ""}  # fmt: skip
            yield event("content_block_start",
                        {"type": "content_block_start", "index": self.index,
                         "content_block": block})  # fmt: skip
        delta = {"type": "thinking_delta", "thinking": text} if kind == REASONING else {
            "type": "text_delta", "text": text}  # fmt: skip
        yield event("content_block_delta",
                    {"type": "content_block_delta", "index": self.index, "delta": delta})  # fmt: skip

    def tool_use(self, call: dict):
        """A whole tool_use block: its start, its input as one input_json_delta, its stop."""
        yield from self.close()
        self.index += 1
        block = {**schema.tool_use(call), "input": {}}
        yield event("content_block_start",
                    {"type": "content_block_start", "index": self.index, "content_block": block})  # fmt: skip
        delta = {"type": "input_json_delta", "partial_json": call["function"]["arguments"]}
        yield event("content_block_delta",
                    {"type": "content_block_delta", "index": self.index, "delta": delta})  # fmt: skip
        yield event("content_block_stop", {"type": "content_block_stop", "index": self.index})

    def close(self):
        if self.kind is None:
            return
        if self.kind == REASONING:
            delta = {"type": "signature_delta", "signature": ""}
            yield event("content_block_delta",
                        {"type": "content_block_delta", "index": self.index, "delta": delta})  # fmt: skip
        yield event("content_block_stop", {"type": "content_block_stop", "index": self.index})
        self.kind = None


def _events(req, events, opened: bool, tools_on: bool):
    """message_start, content blocks (thinking, text, tool_use), message_delta, message_stop;
    call text is held back (ToolStream) and sent as tool_use blocks; a failure after the
    start is an `error` event in Anthropic's envelope."""
    mid = schema.new_id()
    splitter = ReasoningSplitter(opened)
    calls = ToolStream() if tools_on else None
    blocks = _Blocks()
    start = {"id": mid, "type": "message", "role": "assistant", "model": req.model,
             "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {"input_tokens": 0, "output_tokens": 0}}  # fmt: skip
    try:
        result = None
        first = True
        for item in events:
            if first:  # the prompt's size is known once the model has taken the request
                first = False
                yield event("message_start", {"type": "message_start", "message": start})
            if not isinstance(item, str):
                result = item
                continue
            text = calls.feed(item) if calls is not None else item
            for kind, piece in splitter.feed(text) if text else []:
                yield from blocks.piece(kind, piece)
        choice = result.choices[0]
        rest = calls.rest(choice.text, choice.tool_calls) if calls is not None else ""
        for kind, piece in (splitter.feed(rest) if rest else []) + splitter.flush():
            yield from blocks.piece(kind, piece)
        if blocks.index < 0 and not choice.tool_calls:
            yield from blocks.piece("content", "")
        for call in choice.tool_calls or []:
            yield from blocks.tool_use(call)
        yield from blocks.close()
        reason, sequence = schema.stop_reason(result.choices[0])
        yield event("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": {"input_tokens": result.prompt_tokens,
                      "output_tokens": result.completion_tokens},
        })  # fmt: skip
        yield event("message_stop", {"type": "message_stop"})
    except Exception as exc:  # noqa: BLE001 - reported in-band: headers are already sent
        yield event("error", to_server_error(exc).anthropic_body())

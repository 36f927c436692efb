"""The OpenAI Responses API (POST /v1/responses), stateless: a translator in front of the one
InferenceService, with the typed streaming events of the openai SDK's `responses.stream`."""

from __future__ import annotations

import json

from flask import Blueprint, g, jsonify

from ..body import json_fields, reads_body
from ..errors import to_server_error
from ..reasoning import REASONING, ReasoningSplitter
from ..runtime import get_runtime
from ..schemas import responses as schema
from ..tools import ToolStream, active
from .docs import documented
from .openai import _streamed, open_stream

bp = Blueprint("responses", __name__, url_prefix="/v1")


@bp.post("/responses")
@reads_body
@documented(schema.ResponsesRequest, tags=["responses"])
def create_response():
    """One model turn: output items (reasoning from `<think>`, the message); nothing stored."""
    rt = get_runtime()
    with json_fields() as body, rt.tmp.scope() as tmp_dir:
        call = schema.parse_responses(body, rt.settings, tmp_dir, rt.manager.spec)
    req = call.request
    g.model = req.model
    opened = rt.manager.spec(req.model).reasoning
    if not call.stream:
        result = rt.service.generate(req)
        g.tokens = result.completion_tokens
        output = schema.output_items(result.text, opened, result.tool_calls)
        return jsonify(schema.response(call, schema.new_id("resp"), schema.now(), output, result))
    events, source, prefix = open_stream(rt, req)
    return _streamed(_Events(call, opened, active(req)).run(events), source, prefix)


class _Events:
    """The typed events of one streamed response, each with its sequence_number."""

    def __init__(self, call, opened: bool, tools_on: bool = False):
        self.call = call
        self.calls = ToolStream() if tools_on else None
        self.rid, self.created = schema.new_id("resp"), schema.now()
        self.splitter = ReasoningSplitter(opened)
        self.seq = 0
        self.done: list[dict] = []  # finished output items
        self.item: dict | None = None  # the open one
        self.text = ""

    def send(self, kind: str, **fields) -> str:
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"

    def _open(self, kind: str):
        yield from self._close()
        index, self.text = len(self.done), ""
        if kind == REASONING:
            self.item = schema.reasoning_item(schema.new_id("rs"), "")
            self.item["content"] = []
            yield self.send("response.output_item.added", output_index=index, item=self.item)
        else:
            self.item = schema.message_item(schema.new_id("msg"), "", "in_progress")
            yield self.send("response.output_item.added", output_index=index, item=self.item)
            yield self.send("response.content_part.added", item_id=self.item["id"],
                            output_index=index, content_index=0, part=schema.text_part(""))  # fmt: skip

    def _close(self):
        item = self.item
        if item is None:
            return
        index, ids = len(self.done), {"item_id": item["id"], "output_index": len(self.done)}
        if item["type"] == "reasoning":
            yield self.send("response.reasoning_text.done", **ids, content_index=0, text=self.text)
            final = schema.reasoning_item(item["id"], self.text)
        else:
            yield self.send("response.output_text.done", **ids, content_index=0, text=self.text,
                            logprobs=[])  # fmt: skip
            yield self.send("response.content_part.done", **ids, content_index=0,
                            part=schema.text_part(self.text))  # fmt: skip
            final = schema.message_item(item["id"], self.text)
        yield self.send("response.output_item.done", output_index=index, item=final)
        self.done.append(final)
        self.item = None

    def _function_call(self, call: dict):
        """One function_call item: added, its arguments as one delta, done."""
        index, item = len(self.done), schema.function_call_item(call, "in_progress")
        yield self.send("response.output_item.added", output_index=index,
                        item={**item, "arguments": ""})  # fmt: skip
        ids = {"item_id": item["id"], "output_index": index}
        yield self.send("response.function_call_arguments.delta", **ids, delta=item["arguments"])
        yield self.send("response.function_call_arguments.done", **ids,
                        arguments=item["arguments"])  # fmt: skip
        final = schema.function_call_item(call)
        yield self.send("response.output_item.done", output_index=index, item=final)
        self.done.append(final)

    def _piece(self, kind: str, text: str):
        if self.item is None or (self.item["type"] == "reasoning") != (kind == REASONING):
            yield from self._open(kind)
        self.text += text
        ids = {"item_id": self.item["id"], "output_index": len(self.done), "content_index": 0}
        if kind == REASONING:
            yield self.send("response.reasoning_text.delta", **ids, delta=text)
        else:
            yield self.send("response.output_text.delta", **ids, delta=text, logprobs=[])

    def run(self, events):
        call, rid, created = self.call, self.rid, self.created
        started = False
        try:
            result = None
            for item in events:
                if not started:
                    started = True
                    body = schema.response(call, rid, created, [])
                    yield self.send("response.created", response=body)
                    yield self.send("response.in_progress", response=body)
                if not isinstance(item, str):
                    result = item
                    continue
                text = self.calls.feed(item) if self.calls is not None else item
                for kind, piece in self.splitter.feed(text) if text else []:
                    yield from self._piece(kind, piece)
            tool_calls = result.tool_calls or []
            rest = self.calls.rest(result.text, tool_calls) if self.calls is not None else ""
            for kind, piece in (self.splitter.feed(rest) if rest else []) + self.splitter.flush():
                yield from self._piece(kind, piece)
            items = self.done + ([self.item] if self.item is not None else [])
            if not tool_calls and not any(i["type"] == "message" for i in items):
                yield from self._open("content")  # a message item even when it is empty
            yield from self._close()
            for c in tool_calls:
                yield from self._function_call(c)
            final = schema.response(call, rid, created, self.done, result)
            kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
            yield self.send(kind, response=final)
        except Exception as exc:  # noqa: BLE001 - reported in-band: headers are already sent
            err = to_server_error(exc)
            yield self.send("error", code=err.code or err.type, message=err.message,
                            param=err.param)  # fmt: skip

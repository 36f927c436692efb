"""The OpenAI Responses API (POST /v1/responses), stateless: a translator in front of the one
InferenceService, with the typed streaming events of the openai SDK's `responses.stream`."""

from __future__ import annotations

import json

from flask import Blueprint, g, jsonify

from ..errors import to_server_error
from ..reasoning import REASONING, ReasoningSplitter
from ..runtime import get_runtime
from ..schemas import responses as schema
from .docs import documented
from .openai import _streamed, json_body, open_stream

bp = Blueprint("responses", __name__, url_prefix="/v1")


@bp.post("/responses")
@documented(schema.ResponsesRequest, tags=["responses"])
def create_response():
    """One model turn: output items (reasoning from `<think>`, the message); nothing stored."""
    rt = get_runtime()
    with rt.tmp.scope() as tmp_dir:
        call = schema.parse_responses(json_body(), rt.settings, tmp_dir, rt.manager.spec)
    req = call.request
    g.model = req.model
    opened = rt.manager.spec(req.model).reasoning
    if not call.stream:
        result = rt.service.generate(req)
        g.tokens = result.completion_tokens
        output = schema.output_items(result.text, opened)
        return jsonify(schema.response(call, schema.new_id("resp"), schema.now(), output, result))
    events, source, prefix = open_stream(rt, req)
    return _streamed(_Events(call, opened).run(events), source, prefix)


class _Events:
    """The typed events of one streamed response, each with its sequence_number."""

    def __init__(self, call, opened: bool):
        self.call = call
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
                for kind, text in self.splitter.feed(item):
                    yield from self._piece(kind, text)
            for kind, text in self.splitter.flush():
                yield from self._piece(kind, text)
            items = self.done + ([self.item] if self.item is not None else [])
            if not any(i["type"] == "message" for i in items):
                yield from self._open("content")  # a message item even when it is empty
            yield from self._close()
            final = schema.response(call, rid, created, self.done, result)
            kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
            yield self.send(kind, response=final)
        except Exception as exc:  # noqa: BLE001 - reported in-band: headers are already sent
            err = to_server_error(exc)
            yield self.send("error", code=err.code or err.type, message=err.message,
                            param=err.param)  # fmt: skip

"""OpenAI-compatible routes under /v1: a translator in front of the same InferenceService."""

from __future__ import annotations

import itertools
import json

from flask import Blueprint, Response, g, jsonify, request

from ..body import form_fields, json_fields, reads_body
from ..errors import BadRequest, ServerError, to_server_error
from ..logprobs import chat_content, legacy
from ..reasoning import REASONING, ReasoningSplitter
from ..rows import choice_of
from ..runtime import get_runtime
from ..schemas import openai as schema
from ..schemas import openai_objects as objects
from ..schemas.openai_requests import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
)
from ..tools import ToolStream, active
from ..waiting import first_ready, start_with_status
from .docs import documented

bp = Blueprint("openai", __name__, url_prefix="/v1")
DONE = "data: [DONE]\n\n"
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(obj) -> str:
    """One server-sent event holding a JSON object (a dict or a typed response model)."""
    if not isinstance(obj, dict):
        obj = obj.model_dump(mode="json")
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


def chunk_event(obj, include_usage: bool) -> str:
    """A stream chunk; with include_usage every chunk carries `usage` (null until the last)."""
    body = obj.model_dump(mode="json")
    if include_usage:
        body.setdefault("usage", None)
    return sse(body)


class EventStream:
    """An SSE body. Closing it (end of response, or the client went away) closes the
    service's stream, which cancels the generation and releases the model."""

    def __init__(self, events, source):
        self._events = events
        self._source = source

    def __iter__(self):
        return self._events

    def close(self) -> None:
        self._events.close()
        self._source.close()


def open_stream(rt, req, prompt_field: str | None = None):
    """start_stream, made visible while it waits: (events, source, prefix). When the model is
    ready within stream_status_seconds, prefix is None and errors raise now (own status);
    otherwise prefix yields SSE comment lines (`: {"status": "loading", ...}`, which OpenAI
    clients ignore) until the stream is ready, and events/source follow it."""
    waiting = start_with_status(
        lambda: start_stream(rt.service, req, prompt_field),
        rt.manager,
        req.model,
        rt.settings.stream_status_seconds,
    )
    ready, status = first_ready(waiting)
    if ready is not None:
        return ready[0], ready[1], None
    deferred = _Deferred(waiting, status)
    return deferred, deferred, deferred.status_lines()


class _Deferred:
    """The events and source of a stream that is still waiting for its model."""

    def __init__(self, waiting, first: dict):
        self._waiting = waiting
        self._first = first
        self._events = self._source = None

    def status_lines(self):
        """SSE comments until the stream is ready; True then, False after an error event."""
        try:
            yield f": {json.dumps(self._first)}\n\n"
            for item in self._waiting:
                if isinstance(item, tuple):
                    self._events, self._source = item[1]
                    return True
                yield f": {json.dumps(item)}\n\n"
        except Exception as exc:  # noqa: BLE001 - reported in-band: headers are already sent
            yield _failed(exc)
            yield DONE
        return False

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._events)

    def close(self) -> None:
        if self._source is not None:
            self._source.close()
        self._waiting.close()


def _prefixed(prefix, events):
    if prefix is not None and not (yield from prefix):
        return
    yield from events


def start_stream(service, req, prompt_field: str | None = None):
    """The service stream advanced to its first item: errors before the first byte get their
    own status, and the stream is started, so closing it always reaches the service's cleanup."""
    try:
        source = service.stream(req)
        first = next(source)
    except ServerError as exc:
        raise _on_prompt(exc, prompt_field) from None
    return itertools.chain([first], source), source


def _on_prompt(exc: ServerError, prompt_field: str | None) -> ServerError:
    """/v1/completions has no messages: name its prompt field instead."""
    if prompt_field and exc.param in ("messages", "prompt"):
        exc.param = prompt_field
    return exc


def _streamed(events, source, prefix=None) -> Response:
    """The text/event-stream response over `events` (after the waiting lines of `prefix`),
    tied to the service stream `source`."""
    body = EventStream(_prefixed(prefix, events), source)
    return Response(body, mimetype="text/event-stream", headers=_SSE_HEADERS)


def _failed(exc: Exception) -> str:
    """A failure after the stream started: the error as the last event (headers are sent)."""
    return sse(to_server_error(exc).openai_body())


@bp.get("/models")
@documented(resp=objects.ModelList, tags=["openai"], errors=(400,))
def list_models():
    """Every table entry, with its availability and live state; `?available=true` lists only
    those that can answer now or after a fetch (availability not `missing`)."""
    rt = get_runtime()
    only = request.args.get("available", "false").lower()
    if only not in ("true", "false", "1", "0"):
        raise BadRequest("available must be true or false", param="available")
    data = [_model_entry(rt, spec) for spec in rt.table.values()]
    if only in ("true", "1"):
        data = [m for m in data if m["availability"] != "missing"]
    return jsonify(objects.ModelList(data=data).model_dump(mode="json"))


@bp.get("/models/<path:model_id>")
@documented(resp=objects.ModelObject, tags=["openai"], errors=(404,))
def retrieve_model(model_id: str):
    """One table entry (404 model_not_found for a name not in the table)."""
    rt = get_runtime()
    return jsonify(_model_entry(rt, rt.manager.spec(model_id)))


def _model_entry(rt, spec) -> dict:
    """A /v1/models entry; `created` is the mtime of the model's folder (0 if absent)."""
    try:
        created = int(spec.path(rt.settings.models_dir).stat().st_mtime)
    except OSError:
        created = 0
    status = rt.manager.status_of(spec.name)
    life = {
        **rt.availability(spec.name),
        "state": status["state"],
        "stage": status["stage"],
        "progress": status["progress"],
        "quant_bits": status["quant_bits"],
    }
    for key in ("path_exists", "on_disk_complete"):
        life.pop(key)
    return schema.model_entry(spec, status["state"] == "loaded", created, life)


@bp.post("/chat/completions")
@reads_body
@documented(ChatCompletionRequest, objects.ChatCompletion, ["openai"])
def chat_completions():
    """Chat with any generating model; R1-style reasoning split out of the content."""
    rt = get_runtime()
    with json_fields() as body, rt.tmp.scope() as tmp_dir:
        call = schema.parse_chat(body, rt.settings, tmp_dir, rt.manager.spec)
    req = call.request
    g.model = req.model
    # Models whose template opens the think block (table field `reasoning`) start inside it.
    opened = rt.manager.spec(req.model).reasoning
    key = call.reasoning_key
    if not call.stream:
        result = rt.service.generate(req)
        g.tokens = result.completion_tokens
        return jsonify(schema.chat_completion(result, req.model, key, opened))
    events, source, prefix = open_stream(rt, req)
    return _streamed(_chat_events(call, events, opened, key, active(req)), source, prefix)


def tool_call_deltas(calls: list[dict], piece: int = 24) -> list[objects.ToolCallDelta]:
    """OpenAI's streamed form of whole calls: id, type and name first, then the arguments in
    pieces of `piece` characters; joined they are the calls again."""
    out = []
    for i, c in enumerate(calls):
        name, args = c["function"]["name"], c["function"]["arguments"]
        first = objects.FunctionDelta(name=name, arguments="")
        out.append(objects.ToolCallDelta(index=i, id=c["id"], type="function", function=first))
        for at in range(0, len(args), piece):
            part = objects.FunctionDelta(arguments=args[at : at + piece])
            out.append(objects.ToolCallDelta(index=i, function=part))
    return out


def _chat_events(call, events, opened, key, tools_on=False):
    """chat.completion.chunk events: per choice (n, interleaved by `index`) its role, deltas
    (reasoning under `key`) with their logprobs, tool-call deltas (a ToolStream per choice
    holds call text back), finish; then usage and DONE."""
    rid, model, created = objects.new_id("chatcmpl"), call.request.model, objects.now()
    n, logprobs = call.request.params.n, call.request.params.logprobs is not None
    splitters = [ReasoningSplitter(opened) if key else None for _ in range(n)]
    streams = [ToolStream() if tools_on else None for _ in range(n)]

    def chunk(index: int, delta: dict, finish=None, entries=None) -> str:
        lp = chat_content(entries) if logprobs and entries is not None else None
        choice = objects.ChunkChoice(index=index, delta=objects.ChatDelta(**delta), logprobs=lp,
                                     finish_reason=finish)  # fmt: skip
        body = objects.ChatCompletionChunk(id=rid, created=created, model=model, choices=[choice])
        return chunk_event(body, call.include_usage)

    def deltas(index, pieces, entries):
        for kind, text in pieces:
            yield chunk(index, {key if kind == REASONING else "content": text}, None, entries)
            entries = None  # a piece's logprobs go with its first chunk

    def content(index, text, entries=None):
        splitter = splitters[index]
        pieces = [("content", text)] if splitter is None else splitter.feed(text) if text else []
        pieces = [(k, t) for k, t in pieces if t]
        if not pieces and entries:
            yield chunk(index, {"content": ""}, None, entries)
        yield from deltas(index, pieces, entries)

    try:
        for i in range(n):
            yield chunk(i, {"role": "assistant", "content": ""})
        result = None
        for item in events:
            if not isinstance(item, str):
                result = item
                continue
            i, entries = choice_of(item)
            text = streams[i].feed(str(item)) if streams[i] is not None else str(item)
            yield from content(i, text, entries)
        for c in result.choices:
            i = c.index
            if streams[i] is not None:
                yield from content(i, streams[i].rest(c.text, c.tool_calls))
            if splitters[i] is not None:
                yield from deltas(i, splitters[i].flush(), None)
            for piece in tool_call_deltas(c.tool_calls or []):
                yield chunk(i, {"tool_calls": [piece]})
        for c in result.choices:
            yield chunk(c.index, {}, objects.finish_reason(c))
        if call.include_usage:
            usage = objects.usage(result.prompt_tokens, result.completion_tokens)
            last = objects.ChatCompletionChunk(
                id=rid, created=created, model=model, choices=[], usage=usage
            )
            yield sse(last)
    except Exception as exc:  # noqa: BLE001 - reported in-band: headers are already sent
        yield _failed(exc)
    yield DONE


@bp.post("/completions")
@reads_body
@documented(CompletionRequest, objects.Completion, ["openai"])
def completions():
    """Raw-prompt completions; several prompts give several choices."""
    rt = get_runtime()
    with json_fields() as body:
        call = schema.parse_completion(body, rt.settings, rt.manager.spec)
    g.model = call.requests[0].model
    if call.stream:
        req = call.requests[0]
        events, source, prefix = open_stream(rt, req, req.messages[0].parts[0].field)
        return _streamed(_completion_events(call, events), source, prefix)
    window = rt.manager.concurrency(g.model)
    results = []
    for at in range(0, len(call.requests), window):
        results += _generate_all(rt.service, call.requests[at : at + window])
    g.tokens = sum(r.completion_tokens for r in results)
    n = call.requests[0].params.n
    choices = []
    for i, r in enumerate(results):  # choice index: prompt i, row j -> i * n + j (OpenAI's)
        choices += objects.text_choices(r, call.echo, i * n)
    usage = objects.usage(sum(r.prompt_tokens for r in results), g.tokens)
    body = objects.Completion(
        id=objects.new_id("cmpl"), created=objects.now(), model=g.model, choices=choices,
        usage=usage,
    )  # fmt: skip
    return jsonify(body.model_dump(mode="json"))


def _generate_all(service, requests) -> list:
    """Every prompt's result. All are started (checked, prepared, queued) before any is
    read, so a bad prompt is a 400 before anything generates and the prompts share a batch;
    the caller passes at most as many as the model runs at once (each holds a lease until
    it is read)."""
    streams = []
    try:
        for req in requests:
            try:
                streams.append(service.stream(req))
            except ServerError as exc:
                raise _on_prompt(exc, req.messages[0].parts[0].field) from None
        results = []
        for req, stream in zip(requests, streams, strict=True):
            result = None
            try:
                for item in stream:
                    result = item
            except ServerError as exc:
                raise _on_prompt(exc, req.messages[0].parts[0].field) from None
            results.append(result)
        return results
    finally:
        for stream in streams:
            stream.close()


def _completion_events(call, events):
    """text_completion events: text deltas (n choices interleaved by `index`) with their
    legacy logprobs, finishes, optional usage, DONE."""
    rid, model, created = objects.new_id("cmpl"), call.requests[0].model, objects.now()
    offsets = [0] * call.requests[0].params.n

    def chunk(index=0, text="", finish=None, entries=None, choices=None, usage=None):
        if choices is None:
            lp = legacy(entries, offsets[index]) if entries is not None else None
            offsets[index] += len(text)
            choices = [objects.CompletionChoice(index=index, text=text, logprobs=lp,
                                                finish_reason=finish)]  # fmt: skip
        return objects.Completion(id=rid, created=created, model=model, choices=choices,
                                  usage=usage)  # fmt: skip

    try:
        result = None
        for item in events:
            if isinstance(item, str):
                i, entries = choice_of(item)
                yield chunk_event(chunk(i, str(item), None, entries), call.include_usage)
            else:
                result = item
        for c in result.choices:
            yield chunk_event(chunk(c.index, "", objects.finish_reason(c)), call.include_usage)
        if call.include_usage:
            usage = objects.usage(result.prompt_tokens, result.completion_tokens)
            yield sse(chunk(choices=[], usage=usage))
    except Exception as exc:  # noqa: BLE001 - reported in-band: headers are already sent
        yield _failed(exc)
    yield DONE


@bp.post("/embeddings")
@reads_body
@documented(EmbeddingRequest, objects.EmbeddingList, ["openai"])
def embeddings():
    """Unit vectors from an embedding-family model, as floats or base64 float32."""
    rt = get_runtime()
    with json_fields() as body:
        call = schema.parse_embeddings(body, rt.manager.spec)
    g.model = call.model
    out = rt.service.embed(call.model, call.texts, call.keep_alive, call.truncate, call.fields)
    vectors, tokens = out.vectors, out.tokens
    size = len(vectors[0]) if vectors else 0
    if call.dimensions is not None and call.dimensions != size:
        raise BadRequest(
            f"'dimensions' cannot change the size of this model's vectors ({size})",
            param="dimensions",
            code="unsupported_parameter",
        )
    data = schema.embedding_data(
        vectors, call.encoding_format, out.truncated if call.truncate else None
    )
    usage = objects.EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
    body = objects.EmbeddingList(data=data, model=call.model, usage=usage)
    return jsonify(body.model_dump(mode="json"))


@bp.post("/audio/transcriptions")
@reads_body
def transcriptions():
    """Speech to text through an audio-capable chat model (a multipart/form-data body)."""
    rt = get_runtime()
    with form_fields() as (form, files), rt.tmp.scope() as tmp_dir:
        call = schema.parse_transcription(form, files, rt.settings, tmp_dir, rt.manager.spec)
    g.model = call.request.model
    result = rt.service.generate(call.request)
    g.tokens = result.completion_tokens
    if call.response_format == "text":
        return Response(result.text, mimetype="text/plain")
    usage = {
        "type": "tokens",
        "input_tokens": result.prompt_tokens,
        "output_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }
    return jsonify({"text": result.text, "usage": usage})

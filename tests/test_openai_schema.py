"""Pure units of the OpenAI surface: request parsing with param paths, remote-media policy,
the reasoning splitter (whole and streamed), and the SSE rendering of a service stream."""

from __future__ import annotations

import base64
import http.server
import json
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from werkzeug.datastructures import FileStorage, MultiDict

from mmserve import remote_media as remote
from mmserve.errors import BadRequest, ModelNotFound, ServerError
from mmserve.reasoning import CONTENT, REASONING, ReasoningSplitter, split_reasoning
from mmserve.routes import openai as routes
from mmserve.schemas import openai as schema
from mmserve.settings import Settings
from mmserve.types import GenerationResult, SamplingParams
from tests.factories.media import make_audio, make_image, make_video


def data_uri(mime: str, raw: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


PNG = data_uri("image/png", make_image("PNG"))


@pytest.fixture
def settings():
    return Settings()


def chat(body, settings, tmp_path, **kw):
    return schema.parse_chat({"model": "m", **body}, settings, tmp_path, **kw)


def user(*parts):
    return {"messages": [{"role": "user", "content": list(parts)}]}


# --------------------------------------------------------------------------- chat parsing


def test_string_content_becomes_one_text_part(settings, tmp_path):
    call = chat({"messages": [{"role": "user", "content": "hi"}]}, settings, tmp_path)
    req = call.request
    assert (req.model, req.endpoint, req.raw_prompt) == ("m", "openai", False)
    assert [(m.role, p.type, p.text, p.field) for m in req.messages for p in m.parts] == [
        ("user", "text", "hi", "messages[0].content")
    ]
    assert (call.stream, call.include_usage, call.reasoning_format) == (
        False,
        False,
        "reasoning_content",
    )


def test_roles_and_media_parts_keep_their_order_and_paths(settings, tmp_path):
    body = {
        "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what?"},
                    {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
                    {
                        "type": "input_audio",
                        "input_audio": {
                            "data": base64.b64encode(make_audio()).decode(),
                            "format": "wav",
                        },
                    },
                    {
                        "type": "video_url",
                        "video_url": {"url": data_uri("video/mp4", make_video())},
                    },
                ],
            },
        ]
    }
    req = chat(body, settings, tmp_path).request
    assert [m.role for m in req.messages] == ["system", "assistant", "user"]
    parts = req.messages[2].parts
    assert [p.type for p in parts] == ["text", "image", "audio", "video"]
    assert [p.field for p in parts] == [f"messages[2].content[{j}]" for j in range(4)]
    assert parts[1].data.size == (64, 48)
    assert parts[2].data.dtype == np.float32 and len(parts[3].data.frames) > 0


def test_sampling_parameters_are_mapped(settings, tmp_path):
    body = {
        **user({"type": "text", "text": "x"}),
        "max_tokens": 7,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": "END",
        "seed": 3,
        "n": 1,
        "stream": True,
        "stream_options": {"include_usage": True},
        "keep_alive": "10m",
        "chat_template": "{{ evil }}",
        "reasoning_format": "reasoning",
        "user": "ignored",
    }
    call = chat(body, settings, tmp_path)
    p = call.request.params
    assert (p.max_new_tokens, p.temperature, p.top_p, p.stop, p.seed) == (7, 0.5, 0.9, ["END"], 3)
    assert call.request.keep_alive == 600.0
    assert (call.stream, call.include_usage, call.reasoning_format) == (True, True, "reasoning")
    both = chat({**body, "max_completion_tokens": 9}, settings, tmp_path).request.params
    assert both.max_new_tokens == 9


def test_trivial_values_of_unsupported_fields_are_accepted(settings, tmp_path):
    body = {
        **user({"type": "text", "text": "x"}),
        "tools": [],
        "tool_choice": "none",
        "response_format": {"type": "text"},
        "frequency_penalty": 0.0,
        "presence_penalty": 0,
        "logprobs": False,
        "modalities": ["text"],
    }
    assert chat(body, settings, tmp_path).request.messages


TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    "body, param",
    [
        ({"model": None}, "model"),
        ({"messages": None}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        (
            {"messages": [{"role": "tool", "content": "x", "tool_call_id": "call_1"}]},
            "messages[0].tool_call_id",
        ),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (
            {"messages": [{"role": "assistant", "content": "x", "tool_calls": [{"id": 1}]}]},
            "messages[0].tool_calls[0].id",
        ),
        (user({"type": "file", "file": {}}), "messages[0].content[0].type"),
        (user({"type": "text"}), "messages[0].content[0].text"),
        (
            user({"type": "text", "text": "a"}, {"type": "image_url"}),
            "messages[0].content[1].image_url",
        ),
        (
            user({"type": "image_url", "image_url": {"url": "bm90IGFuIGltYWdl"}}),
            "messages[0].content[0]",
        ),
        (
            user({"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}),
            "messages[0].content[0]",
        ),
        (
            user({"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}),
            "messages[0].content[0]",
        ),
        (user({"type": "input_audio", "input_audio": "x"}), "messages[0].content[0].input_audio"),
        (
            user({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "midi"}}),
            "messages[0].content[0].input_audio.format",
        ),
        (
            {
                "messages": [
                    {
                        "role": "system",
                        "content": [{"type": "image_url", "image_url": {"url": PNG}}],
                    }
                ]
            },
            "messages[0].content[0]",
        ),
        ({"n": 9}, "n"),
        ({"n": 0}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": 10**9}, "max_completion_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"top_p": "high"}, "top_p"),
        ({"stop": [1]}, "stop[0]"),
        ({"stop": ["a", ""]}, "stop[1]"),
        ({"seed": 1.5}, "seed"),
        ({"stream": "yes"}, "stream"),
        ({"stream_options": True}, "stream_options"),
        ({"stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
        ({"keep_alive": "soon"}, "keep_alive"),
        ({"tools": [{"type": "function"}]}, "tools[0].function"),
        ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
        ({"tools": [{"type": "function", "function": {"name": ""}}]}, "tools[0].function.name"),
        ({"tools": [TOOL, TOOL]}, "tools[1].function.name"),
        (
            {
                "tools": [
                    {"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}
                ]
            },
            "tools[0].function.parameters",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}]},
            "tools[0].function.parameters",
        ),
        ({"tools": [TOOL], "tool_choice": "maybe"}, "tool_choice"),
        (
            {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "g"}}},
            "tool_choice.function.name",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "n", "schema": {"type": "nope"}},
                }
            },
            "response_format.json_schema.schema",
        ),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"frequency_penalty": 2.5}, "frequency_penalty"),
        ({"logit_bias": {"x": 1}}, "logit_bias.x"),
        ({"logit_bias": {"5": 101}}, "logit_bias.5"),
        ({"reasoning_format": "xml"}, "reasoning_format"),
    ],
)
def test_bad_chat_bodies_name_the_param(settings, tmp_path, body, param):
    full = {"model": "m", **user({"type": "text", "text": "x"}), **body}
    with pytest.raises(BadRequest) as info:
        schema.parse_chat(full, settings, tmp_path)
    assert info.value.param == param and info.value.status == 400


def test_body_must_be_an_object(settings, tmp_path):
    with pytest.raises(BadRequest):
        schema.parse_chat([1, 2], settings, tmp_path)


def test_unknown_model_fails_before_media_is_decoded(settings, tmp_path):
    def lookup(name):
        raise ModelNotFound(name)

    body = {"model": "nope", **user({"type": "image_url", "image_url": {"url": "not base64!"}})}
    with pytest.raises(ModelNotFound) as info:
        schema.parse_chat(body, settings, tmp_path, lookup)
    assert info.value.status == 404 and info.value.code == "model_not_found"


def test_too_many_images_is_a_limit(tmp_path):
    settings = Settings(max_images=1)
    image = {"type": "image_url", "image_url": {"url": PNG}}
    with pytest.raises(BadRequest) as info:
        chat(user(image, image), settings, tmp_path)
    assert (info.value.param, info.value.code) == ("messages[0].content[1]", "limit_exceeded")


# --------------------------------------------------------------------------- remote media


@pytest.mark.parametrize(
    "address, public",
    [
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("192.168.0.1", False),
        ("172.16.5.4", False),
        ("169.254.169.254", False),
        ("0.0.0.0", False),
        ("::1", False),
        ("fe80::1%eth0", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),
        ("224.0.0.1", False),
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
    ],
)
def test_public_address_check(address, public):
    assert remote.is_public_address(address) is public


def test_allowed_host_url_goes_through_the_fetcher(tmp_path):
    settings = Settings(remote_media_hosts=["media.example.org"])
    seen = {}

    def fetch(url, field, hosts, cap):
        seen.update(url=url, field=field, hosts=hosts, cap=cap)
        return make_image("JPEG")

    image = {"type": "image_url", "image_url": {"url": "https://media.example.org/cat.jpg"}}
    req = chat(user(image), settings, tmp_path, fetch=fetch).request
    assert req.messages[0].parts[0].type == "image"
    assert seen["field"] == "messages[0].content[0]" and seen["hosts"] == ["media.example.org"]
    assert seen["cap"] == 32 * 1024 * 1024


def test_host_outside_the_allow_list_is_refused_without_a_connection():
    with pytest.raises(BadRequest) as info:
        remote.fetch_remote("http://evil.example/x.png", "f", ["media.example.org"], 100)
    assert (info.value.param, info.value.code) == ("f", "remote_media_refused")


@pytest.fixture
def local_http():
    """A loopback HTTP server: /img (20 bytes), /big (5000 bytes), /redirect (302 to /img)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "/img")
                self.end_headers()
                return
            body = b"x" * (5000 if self.path == "/big" else 20)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_loopback_is_never_fetched_even_when_allowed(local_http):
    for host in ("127.0.0.1", "localhost"):
        url = f"http://{local_http.replace('127.0.0.1', host)}/img"
        with pytest.raises(BadRequest) as info:
            remote.fetch_remote(url, "f", [host], 1000)
        assert info.value.code == "remote_media_refused"
        assert "private or loopback" in info.value.message


def test_fetch_is_size_capped_and_refuses_redirects(local_http, monkeypatch):
    monkeypatch.setattr(remote, "is_public_address", lambda address: True)
    hosts = ["127.0.0.1"]
    assert remote.fetch_remote(f"http://{local_http}/img", "f", hosts, 1000) == b"x" * 20
    with pytest.raises(BadRequest) as info:
        remote.fetch_remote(f"http://{local_http}/big", "f", hosts, 1000)
    assert info.value.code == "limit_exceeded"
    with pytest.raises(BadRequest) as info:
        remote.fetch_remote(f"http://{local_http}/redirect", "f", hosts, 1000)
    assert "302" in info.value.message


# --------------------------------------------------------------------------- completions, embeddings


def test_completion_prompts_are_raw_requests_with_indexed_fields(settings):
    call = schema.parse_completion(
        {"model": "m", "prompt": ["a", "b"], "max_tokens": 4, "stop": ["\n"]}, settings
    )
    assert [r.raw_prompt for r in call.requests] == [True, True]
    assert [r.messages[0].parts[0].field for r in call.requests] == ["prompt[0]", "prompt[1]"]
    assert [r.params.max_new_tokens for r in call.requests] == [4, 4]
    assert call.requests[0].params is not call.requests[1].params


@pytest.mark.parametrize(
    "body, param",
    [
        ({}, "prompt"),
        ({"prompt": [[1, 2], []]}, "prompt[1]"),
        ({"prompt": "a", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "a", "logprobs": 6}, "logprobs"),
        ({"prompt": "a", "echo": True, "stream": True}, "echo"),
        ({"prompt": ["a", ""]}, "prompt[1]"),
        ({"prompt": ["a", "b"], "stream": True}, "prompt"),
        ({"prompt": ["a"] * 33}, "prompt"),
        ({"prompt": "a", "best_of": 2}, "best_of"),
        ({"prompt": "a", "n": 9}, "n"),
    ],
)
def test_bad_completion_bodies(settings, body, param):
    with pytest.raises(BadRequest) as info:
        schema.parse_completion({"model": "m", **body}, settings)
    assert info.value.param == param


def test_embedding_inputs(settings):
    call = schema.parse_embeddings({"model": "e", "input": "hi", "keep_alive": 0})
    assert (call.texts, call.encoding_format, call.keep_alive) == (["hi"], "float", 0.0)
    call = schema.parse_embeddings({"model": "e", "input": ["a", "b"], "encoding_format": "base64"})
    assert (call.texts, call.encoding_format) == (["a", "b"], "base64")


@pytest.mark.parametrize(
    "body, param",
    [
        ({}, "input"),
        ({"input": []}, "input"),
        ({"input": [101, 102]}, "input"),
        ({"input": ["a", ""]}, "input[1]"),
        ({"input": "a", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "a", "dimensions": 0}, "dimensions"),
    ],
)
def test_bad_embedding_bodies(body, param):
    with pytest.raises(BadRequest) as info:
        schema.parse_embeddings({"model": "e", **body})
    assert info.value.param == param


def test_base64_embeddings_are_little_endian_float32():
    data = schema.embedding_data([[0.5, -1.0, 0.25]], "base64")
    raw = base64.b64decode(data[0]["embedding"])
    assert np.frombuffer(raw, dtype="<f4").tolist() == [0.5, -1.0, 0.25]
    assert schema.embedding_data([[0.5]], "float")[0] == {
        "object": "embedding",
        "index": 0,
        "embedding": [0.5],
    }


# --------------------------------------------------------------------------- transcriptions


def _spec(*caps):
    return lambda name: SimpleNamespace(name=name, capabilities=caps)


def _wav():
    import io

    return FileStorage(
        io.BytesIO(make_audio("wav", seconds=0.5)), "a.wav", content_type="audio/wav"
    )


def test_transcription_is_a_chat_request_with_the_audio(settings, tmp_path):
    form = MultiDict({"model": "a", "language": "en", "response_format": "text"})
    call = schema.parse_transcription(
        form, {"file": _wav()}, settings, tmp_path, _spec("text", "audio")
    )
    (msg,) = call.request.messages
    assert [p.type for p in msg.parts] == ["audio", "text"]
    assert msg.parts[1].text.startswith(schema.DEFAULT_TRANSCRIBE_PROMPT)
    assert call.response_format == "text" and call.request.endpoint == "openai"
    form = MultiDict({"model": "a", "prompt": "Write it down."})
    call = schema.parse_transcription(form, {"file": _wav()}, settings, tmp_path, _spec("audio"))
    assert call.request.messages[0].parts[1].text == "Write it down."


@pytest.mark.parametrize(
    "form, files, caps, param",
    [
        ({}, True, ("audio",), "model"),
        ({"model": "t"}, True, ("text",), "model"),
        ({"model": "a"}, False, ("audio",), "file"),
        ({"model": "a", "response_format": "srt"}, True, ("audio",), "response_format"),
        ({"model": "a", "temperature": "warm"}, True, ("audio",), "temperature"),
    ],
)
def test_bad_transcriptions(settings, tmp_path, form, files, caps, param):
    files = {"file": _wav()} if files else {}
    with pytest.raises(BadRequest) as info:
        schema.parse_transcription(MultiDict(form), files, settings, tmp_path, _spec(*caps))
    assert info.value.param == param


# --------------------------------------------------------------------------- reasoning splitter


def stream_split(text: str, size: int, start=False):
    splitter = ReasoningSplitter(start)
    pieces = []
    for i in range(0, len(text), size):
        pieces += splitter.feed(text[i : i + size])
    pieces += splitter.flush()
    reasoning = "".join(t for k, t in pieces if k == REASONING)
    return (reasoning or None), "".join(t for k, t in pieces if k == CONTENT)


CASES = [
    # text, start_in_reasoning (None: detect), (reasoning, content)
    ("Plain answer, no tags.", None, (None, "Plain answer, no tags.")),
    ("  spaced  \n", None, (None, "  spaced  \n")),
    ("<think>\nLet me see.\n</think>\n\nParis.", None, ("Let me see.", "Paris.")),
    ("Okay, so the user asks.\n</think>\n\nParis.", None, ("Okay, so the user asks.", "Paris.")),
    ("Okay.\n</think>\n\nParis.", True, ("Okay.", "Paris.")),
    ("<think>Hmm</think>Paris", True, ("Hmm", "Paris")),
    (
        "<think>still thinking when the tokens ran out",
        None,
        ("still thinking when the tokens ran out", ""),
    ),
    ("thinking, cut short", True, ("thinking, cut short", "")),
    ("a < b and c <th", None, (None, "a < b and c <th")),
    ("<think>\n\n</think>\n\nJust the answer.", None, (None, "Just the answer.")),
    ("x <thinking> y", None, (None, "x <thinking> y")),
]


@pytest.mark.parametrize("text, start, expected", CASES)
def test_split_whole_output(text, start, expected):
    assert split_reasoning(text, start) == expected


@pytest.mark.parametrize("text, start, expected", CASES)
def test_streamed_split_matches_at_every_chunk_size(text, start, expected):
    opened = start if start is not None else "</think>" in text and not text.startswith("<think>")
    for size in range(1, len(text) + 1):
        assert stream_split(text, size, opened) == expected, size


def test_tags_split_across_chunks_never_leak():
    splitter = ReasoningSplitter()
    out = []
    for piece in ["Hi <", "thi", "nk>deep", " thought</th", "ink>", " done"]:
        out += splitter.feed(piece)
    out += splitter.flush()
    assert out == [(CONTENT, "Hi"), (REASONING, "deep"), (REASONING, " thought"), (CONTENT, "done")]


def test_stream_emits_reasoning_before_the_close_tag_arrives():
    splitter = ReasoningSplitter(start_in_reasoning=True)
    assert splitter.feed("Thinking about it") == [(REASONING, "Thinking about it")]
    assert splitter.feed(" more\n</thi") == [(REASONING, " more")]
    assert splitter.feed("nk>\n\nAnswer") == [(CONTENT, "Answer")]


# --------------------------------------------------------------------------- SSE rendering


def _result(tokens=(3, 2), finish="length"):
    return GenerationResult("ab", tokens[0], tokens[1], finish, "m", "text", "cpu", False)


def _events(lines):
    return [json.loads(x[6:]) for x in "".join(lines).split("\n\n") if x and x != "data: [DONE]"]


def _chat_call(include_usage=True, fmt="reasoning_content"):
    req = SimpleNamespace(model="m", params=SamplingParams())
    return schema.ChatCall(req, True, include_usage, fmt)


def test_chat_stream_chunks_role_deltas_finish_usage_done():
    source = iter(["<think>r</think>", "a", "b", _result(finish="cancelled")])
    lines = list(routes._chat_events(_chat_call(), source, False, "reasoning_content"))
    assert lines[-1] == routes.DONE
    events = _events(lines)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [e["choices"][0]["delta"] for e in events[1:-2]]
    assert deltas == [{"reasoning_content": "r"}, {"content": "a"}, {"content": "b"}]
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["total_tokens"] == 5
    assert all(e["object"] == "chat.completion.chunk" for e in events)


def test_error_after_the_stream_started_is_the_last_event():
    def source():
        yield "partial"
        raise BadRequest("went wrong", param="x")

    lines = list(routes._chat_events(_chat_call(False), source(), None, None))
    assert lines[-1] == routes.DONE
    assert _events(lines)[-1] == {
        "error": {
            "message": "went wrong",
            "type": "invalid_request_error",
            "param": "x",
            "code": "invalid_request",
        }
    }


def test_completion_stream_chunks():
    call = schema.CompletionCall([SimpleNamespace(model="m", params=SamplingParams())], True, False)
    events = _events(routes._completion_events(call, iter(["x", _result()])))
    assert [e["choices"][0]["text"] for e in events] == ["x", ""]
    assert events[-1]["choices"][0]["finish_reason"] == "length" and "usage" not in events[-1]


class FakeService:
    def __init__(self, first_error=None):
        self.closed = False
        self.first_error = first_error

    def stream(self, req):
        def gen():
            try:
                if self.first_error:
                    raise self.first_error
                yield "one"
                yield "two"
            finally:
                self.closed = True

        return gen()


def test_closing_the_sse_body_closes_the_service_stream():
    service = FakeService()
    events, source = routes.start_stream(service, None)
    body = routes.EventStream((x for x in events), source)
    assert next(iter(body)) == "one"
    body.close()
    assert service.closed


def test_errors_before_the_first_item_raise_with_their_status_and_prompt_param():
    service = FakeService(first_error=BadRequest("too long", param="messages"))
    with pytest.raises(ServerError) as info:
        routes.start_stream(service, None, prompt_field="prompt")
    assert info.value.param == "prompt" and service.closed


@pytest.mark.parametrize(
    "fmt, opened, text, message",
    [
        (
            "reasoning_content",
            False,
            "<think>r</think>\n\nA",
            {"content": "A", "reasoning_content": "r"},
        ),
        ("reasoning", False, "<think>r</think>\n\nA", {"content": "A", "reasoning": "r"}),
        ("none", False, "<think>r</think>A", {"content": "<think>r</think>A"}),
        ("merged", True, "r</think>A", {"content": "r</think>A"}),
        ("reasoning_content", True, "r only", {"content": "", "reasoning_content": "r only"}),
        ("reasoning_content", False, "r</think>A", {"content": "A", "reasoning_content": "r"}),
        ("reasoning_content", False, "just A", {"content": "just A"}),
    ],
)
def test_chat_completion_object_splits_reasoning_by_format(fmt, opened, text, message):
    call = _chat_call(fmt=fmt)
    result = GenerationResult(text, 4, 2, "stop", "m", "text", "cpu", False)
    body = schema.chat_completion(result, "m", call.reasoning_key, opened)
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["choices"][0]["message"] == {"role": "assistant", **message}
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}

"""Structured output on tiny real models of every generating family (through the Flask test
client), bad tool and format input refused before any model loads, and the grammar units:
cache, the free think block, tool-call parsing and the streamed tool-call splitter."""

from __future__ import annotations

import json

import pytest
import torch

from mmserve.grammar import OutputSpec, build_constraint, compiler_for
from mmserve.tools import ToolStream, parse_calls
from tests.conftest import tiny_entry
from tests.factories.media import make_audio, make_image

ANSWER = {
    "type": "object",
    "properties": {"answer": {"enum": ["yes", "no"]}, "count": {"type": "integer",
                   "minimum": 0, "maximum": 9}},  # fmt: skip
    "required": ["answer", "count"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER}}


def _data_uri(mime: str, raw: bytes) -> str:
    import base64

    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


MEDIA = {
    "tiny_vl": {"type": "image_url", "image_url": {"url": _data_uri("image/png", make_image("PNG"))}},
    "tiny_audio": {"type": "input_audio", "input_audio": {"data": _data_uri("audio/wav", make_audio("wav", seconds=0.5)), "format": "wav"}},
    "tiny_omni": {"type": "image_url", "image_url": {"url": _data_uri("image/png", make_image("PNG"))}},
}  # fmt: skip


@pytest.mark.parametrize("model", ["tiny_text", "tiny_vl", "tiny_audio", "tiny_omni"])
def test_response_format_on_every_generating_family(make_app, model):
    app = make_app([tiny_entry(model)])
    content = [{"type": "text", "text": "Is it there?"}]
    if model in MEDIA:
        content.append(MEDIA[model])
    body = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "response_format": FORMAT,
        "max_tokens": 40,
        "temperature": 0.9,
        "seed": 1,
    }
    r = app.test_client().post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.get_data(as_text=True)
    choice = r.get_json()["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    import jsonschema

    jsonschema.validate(json.loads(choice["message"]["content"]), ANSWER)


def test_native_format_json_on_a_tiny_model(make_app):
    app = make_app([tiny_entry("tiny_qwen")])
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    r = app.test_client().post(
        "/generate/tiny_qwen", json={"prompt": "x", "format": schema, "max_new_tokens": 20}
    )
    assert r.status_code == 200, r.get_data(as_text=True)
    assert isinstance(json.loads(r.get_json()["response"])["ok"], bool)


TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"tools": [{"type": "function", "function": {"description": "x"}}]},
         "tools[0].function.name"),
        ({"tools": [TOOL, TOOL]}, "tools[1].function.name"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
         "tools[0].function.parameters"),
        ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "g"}}},
         "tool_choice.function.name"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": 3}}}},
         "response_format.json_schema.schema"),
        ({"messages": [{"role": "user", "content": "x"},
                       {"role": "tool", "tool_call_id": "call_9", "content": "r"}]},
         "messages[1].tool_call_id"),
    ],
)  # fmt: skip
def test_bad_tools_and_formats_are_400_and_load_nothing(make_app, extra, param):
    app = make_app([tiny_entry("tiny_text")])
    body = {"model": "tiny_text", "messages": [{"role": "user", "content": "x"}], **extra}
    r = app.test_client().post("/v1/chat/completions", json=body)
    assert r.status_code == 400 and r.get_json()["error"]["param"] == param, r.get_json()
    assert app.extensions["mmserve"].manager.loaded_models() == []


def test_native_bad_format_and_tools_name_the_field(make_app):
    client = make_app([tiny_entry("tiny_text")]).test_client()
    r = client.post("/generate/tiny_text", json={"prompt": "x", "format": "yaml"})
    assert r.status_code == 400 and r.get_json()["param"] == "format"
    r = client.post("/generate/tiny_text", json={"prompt": "x", "format": {"type": 1}})
    assert r.status_code == 400 and r.get_json()["param"] == "format"
    r = client.post("/generate/tiny_text", json={"prompt": "x", "tools": [TOOL, TOOL]})
    assert r.status_code == 400 and r.get_json()["param"] == "tools[1].function.name"


# --------------------------------------------------------------------------- units


@pytest.fixture(scope="module")
def tokenizer(tiny_models_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_models_dir / "tiny_qwen")


def test_compiled_grammars_are_cached_per_tokenizer_and_spec(tokenizer):
    spec = OutputSpec("json_schema", schema=json.dumps(ANSWER))
    size = len(tokenizer)
    a = build_constraint(spec, tokenizer, size, {0}, "no")
    b = build_constraint(spec, tokenizer, size, {0}, "no")
    assert a.compiled is b.compiled
    assert compiler_for(tokenizer, size, {0}) is a.compiler


def test_a_schema_that_cannot_compile_is_a_400_naming_the_param(tokenizer):
    from mmserve.errors import BadRequest

    spec = OutputSpec("json_schema", schema='{"type": "object", "$ref": "#/nowhere"}',
                      param="response_format.json_schema.schema")  # fmt: skip
    with pytest.raises(BadRequest) as info:
        build_constraint(spec, tokenizer, len(tokenizer), {0}, "no")
    assert info.value.param == "response_format.json_schema.schema"


def test_the_think_block_is_free_and_the_grammar_starts_after_it(tokenizer):
    spec = OutputSpec("json_schema", schema=json.dumps(ANSWER))
    mask = build_constraint(spec, tokenizer, len(tokenizer), {0}, "inside").matcher()
    scores = torch.zeros(1, len(tokenizer))
    for token in tokenizer("let me think</think>", add_special_tokens=False)["input_ids"]:
        assert torch.equal(mask.mask(scores), scores)  # nothing masked while thinking
        mask.accept(token)
    allowed = (mask.mask(scores)[0] > float("-inf")).nonzero().flatten().tolist()
    assert allowed and all(tokenizer.decode([t]).startswith("{") for t in allowed)


def test_parse_calls_in_hermes_and_llama_forms():
    tools = [TOOL]
    text = 'Sure.\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>'
    content, calls = parse_calls(text, tools, "qwen_3")
    assert content == "Sure." and json.loads(calls[0]["function"]["arguments"]) == {"a": 1}
    content, calls = parse_calls('{"name": "f", "parameters": {"b": 2}}', tools, "llama")
    assert content == "" and calls[0]["function"]["name"] == "f"
    content, calls = parse_calls('<tool_call>{"name": "zz", "arguments": {}}</tool_call>',
                                 tools, "qwen_3")  # fmt: skip
    assert calls == [] and "zz" in content  # an unknown tool stays text


def test_tool_stream_holds_back_calls_and_returns_the_rest():
    text = 'Hi there <tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'
    stream = ToolStream()
    sent = "".join(stream.feed(text[i : i + 3]) for i in range(0, len(text), 3))
    assert sent == "Hi there " and "<" not in sent
    content, calls = parse_calls(text, [TOOL], "qwen_3")
    assert calls and (sent + stream.rest(content, calls)).strip() == content
    plain = ToolStream()
    sent = "".join(plain.feed(c) for c in "a < b")
    assert sent + plain.rest("a < b", []) == "a < b"

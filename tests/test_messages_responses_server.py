"""The Anthropic Messages API and the OpenAI Responses API on the real server, driven by the
official `anthropic` client and the `openai` client's `responses` (SmolLM2 and tiny models)."""

from __future__ import annotations

import base64
import json

import anthropic
import openai
import pytest
import requests

from tests.factories.media import make_image

pytestmark = pytest.mark.server

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def claude(oa_server):
    return anthropic.Anthropic(base_url=oa_server.url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def oai(oa_server):
    return openai.OpenAI(base_url=oa_server.url + "/v1", api_key="unused", max_retries=0)


# --------------------------------------------------------------------------- Anthropic


def test_anthropic_text(claude):
    msg = claude.messages.create(
        model="smollm2", max_tokens=24, system="You are a helpful AI assistant named SmolLM, trained by Hugging Face",
        messages=[{"role": "user", "content": QUESTION}],
    )  # fmt: skip
    assert msg.type == "message" and msg.role == "assistant"
    assert "Paris" in msg.content[-1].text
    assert msg.stop_reason in ("end_turn", "max_tokens")
    assert msg.usage.input_tokens > 0 and 0 < msg.usage.output_tokens <= 24


def test_anthropic_stream_equals_the_whole_answer(claude):
    kw = {"model": "smollm2", "max_tokens": 16, "messages": [{"role": "user", "content": QUESTION}]}
    whole = claude.messages.create(**kw).content[-1].text
    with claude.messages.stream(**kw) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1 and "".join(pieces) == whole == final.content[-1].text
    assert final.usage.output_tokens > 0


def test_anthropic_stop_sequence(claude):
    msg = claude.messages.create(
        model="smollm2", max_tokens=24, stop_sequences=["Paris"],
        messages=[{"role": "user", "content": QUESTION}],
    )  # fmt: skip
    assert msg.stop_reason == "stop_sequence" and msg.stop_sequence == "Paris"
    assert "Paris" not in msg.content[-1].text


def test_anthropic_image(claude):
    png = base64.b64encode(make_image("PNG")).decode()
    msg = claude.messages.create(
        model="tiny_vl", max_tokens=4,
        messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}},
            {"type": "text", "text": "What is in the picture?"},
        ]}],
    )  # fmt: skip
    assert msg.usage.input_tokens > 10  # the image's tokens are in the prompt
    assert msg.content[-1].type == "text"


def test_anthropic_errors_use_its_envelope(claude, oa_server):
    with pytest.raises(anthropic.NotFoundError) as info:
        claude.messages.create(
            model="nope", max_tokens=4, messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.body["type"] == "error"
    assert info.value.body["error"]["type"] == "not_found_error"
    r = requests.post(oa_server.url + "/v1/messages", json={"model": "smollm2", "messages": []})
    assert r.status_code == 400
    assert r.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": r.json()["error"]["message"]},
    }
    png = base64.b64encode(make_image("PNG")).decode()
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(model="smollm2", max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}}
        ]}])  # fmt: skip
    assert "image" in info.value.body["error"]["message"]


def test_anthropic_key_in_x_api_key(tmp_path, smollm2_models_dir):
    from tests.conftest import start_server

    server = start_server(tmp_path, ["--models-dir", str(smollm2_models_dir)],
                          {"MMSERVE_API_KEY": "sekret"})  # fmt: skip
    try:
        good = anthropic.Anthropic(base_url=server.url, api_key="sekret", max_retries=0)
        bad = anthropic.Anthropic(base_url=server.url, api_key="wrong", max_retries=0)
        kw = {"model": "smollm2", "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}
        assert good.messages.create(**kw).content
        with pytest.raises(anthropic.AuthenticationError) as info:
            bad.messages.create(**kw)
        assert info.value.body["error"]["type"] == "authentication_error"
    finally:
        server.stop()


# --------------------------------------------------------------------------- Responses


def test_responses_text(oai):
    r = oai.responses.create(model="smollm2", input=QUESTION, instructions="You are a helpful AI assistant named SmolLM, trained by Hugging Face",
                             max_output_tokens=24)  # fmt: skip
    assert r.object == "response" and r.status in ("completed", "incomplete")
    assert "Paris" in r.output_text
    assert r.usage.input_tokens > 0 and 0 < r.usage.output_tokens <= 24


def test_responses_items_and_stream(oai):
    items = [{"role": "user", "content": [{"type": "input_text", "text": QUESTION}]}]
    whole = oai.responses.create(model="smollm2", input=items, max_output_tokens=16).output_text
    deltas = []
    with oai.responses.stream(model="smollm2", input=items, max_output_tokens=16) as stream:
        kinds = []
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] in ("response.completed",
                                                              "response.incomplete")  # fmt: skip
    assert len(deltas) > 1 and "".join(deltas) == whole == final.output_text


def test_responses_are_not_stored(oa_server):
    url = oa_server.url + "/v1/responses"
    for extra, param in (({"store": True}, "store"),
                         ({"previous_response_id": "resp_1"}, "previous_response_id")):  # fmt: skip
        r = requests.post(url, json={"model": "smollm2", "input": "hi", **extra}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == param


WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}


def test_anthropic_tool_use_and_tool_result(claude):
    tools = [{"name": "get_weather", "description": "The weather in a city",
              "input_schema": WEATHER}]  # fmt: skip
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    msg = claude.messages.create(model="smollm2", max_tokens=48, tools=tools,
                                 tool_choice={"type": "any", "disable_parallel_tool_use": True}, messages=ask)  # fmt: skip
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert msg.stop_reason == "tool_use" and uses and uses[0].name == "get_weather"
    assert isinstance(uses[0].input.get("city"), str)
    with claude.messages.stream(model="smollm2", max_tokens=48, tools=tools,
                                tool_choice={"type": "any", "disable_parallel_tool_use": True}, messages=ask) as stream:  # fmt: skip
        final = stream.get_final_message()
    assert [b.input for b in final.content if b.type == "tool_use"] == [u.input for u in uses]
    # the tool's answer goes back as a tool_result block
    history = ask + [
        {"role": "assistant", "content": [u.model_dump() for u in uses]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id,
                                      "content": "Sunny, 21 C"}]},
    ]  # fmt: skip
    answer = claude.messages.create(model="smollm2", max_tokens=24, tools=tools,
                                    messages=history)  # fmt: skip
    assert answer.content and answer.usage.input_tokens > msg.usage.input_tokens


def test_responses_json_schema(oai):
    schema = {"type": "object", "properties": {"capital": {"type": "string"}},
              "required": ["capital"], "additionalProperties": False}  # fmt: skip
    r = oai.responses.create(
        model="smollm2", input="What is the capital of France? Answer in JSON.",
        max_output_tokens=40,
        text={"format": {"type": "json_schema", "name": "answer", "schema": schema}},
    )  # fmt: skip
    assert isinstance(json.loads(r.output_text)["capital"], str)


def test_responses_function_tool(oai):
    tools = [{"type": "function", "name": "get_weather", "description": "The weather in a city",
              "parameters": WEATHER}]  # fmt: skip
    ask = "What is the weather in Paris?"
    r = oai.responses.create(model="smollm2", input=ask, tools=tools, tool_choice="required", parallel_tool_calls=False,
                             max_output_tokens=48)  # fmt: skip
    calls = [o for o in r.output if o.type == "function_call"]
    assert calls and calls[0].name == "get_weather"
    assert isinstance(json.loads(calls[0].arguments)["city"], str)
    with oai.responses.stream(model="smollm2", input=ask, tools=tools, tool_choice="required", parallel_tool_calls=False,
                              max_output_tokens=48) as stream:  # fmt: skip
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    streamed = [o for o in final.output if o.type == "function_call"]
    assert [c.arguments for c in streamed] == [c.arguments for c in calls]
    # the call and its output go back as input items
    history = [{"role": "user", "content": ask}, calls[0].model_dump(exclude_none=True),
               {"type": "function_call_output", "call_id": calls[0].call_id,
                "output": "Sunny, 21 C"}]  # fmt: skip
    again = oai.responses.create(model="smollm2", input=history, tools=tools,
                                 max_output_tokens=16)  # fmt: skip
    assert again.usage.input_tokens > r.usage.input_tokens

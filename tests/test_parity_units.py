"""Pure units of the parity features: penalties and logit_bias processors, logprob rendering,
the engine's shared prefill for n rows, and the Anthropic / Responses translators."""

from __future__ import annotations

import pytest
import torch

from mmserve.errors import BadRequest, Unavailable
from mmserve.logprobs import chat_content, join_legacy, legacy
from mmserve.reasoning import effort_switch, thinking_switch
from mmserve.sampling import LogitBias, OpenAIPenalties
from mmserve.schemas import anthropic, responses
from mmserve.settings import Settings
from mmserve.types import TokenLogprob


def test_openai_penalties_count_generated_tokens_only():
    scores = torch.zeros(1, 5)
    ids = torch.tensor([[1, 1, 2, 2, 2, 3]])  # prompt: 1 1 2; generated: 2 2 3
    out = OpenAIPenalties(presence=0.5, frequency=1.0, prompt_len=3)(ids, scores)
    assert out.tolist() == [[0.0, 0.0, -2.5, -1.5, 0.0]]
    assert OpenAIPenalties(0.5, 1.0, prompt_len=6)(ids, scores).tolist() == [[0.0] * 5]


def test_logit_bias_adds_to_named_tokens():
    out = LogitBias({1: 100.0, 3: -100.0})(torch.zeros(1, 2), torch.zeros(1, 4))
    assert out.tolist() == [[0.0, 100.0, 0.0, -100.0]]


def test_legacy_logprobs_offsets_and_join():
    first = TokenLogprob("The", None, list(b"The"))
    rest = [TokenLogprob(" sky", -1.0, list(b" sky"), [(" sky", -1.0, []), (" sea", -2.0, [])])]
    head = legacy([first])
    assert head == {"tokens": ["The"], "token_logprobs": [None], "top_logprobs": [None],
                    "text_offset": [0]}  # fmt: skip
    both = join_legacy(head, legacy(rest, 3))
    assert both["text_offset"] == [0, 3] and both["top_logprobs"][1] == {" sky": -1.0, " sea": -2.0}
    assert legacy(None) is None and chat_content(None) is None
    content = chat_content(rest)["content"][0]
    assert content["bytes"] == list(b" sky") and len(content["top_logprobs"]) == 2


def test_thinking_switches():
    assert thinking_switch(None) == {} and effort_switch(None) == {}
    assert effort_switch("none") == {"enable_thinking": False}
    assert effort_switch("high") == {"enable_thinking": True}


def test_engine_n_rows_share_one_prefill_and_seed_per_row(make_app):
    """n rows of one request: one prefill row, the cache copied; seeded rows repeat."""
    from mmserve.runtime import get_runtime
    from mmserve.types import GenerationRequest, Message, Part, SamplingParams

    app = make_app()
    with app.app_context():
        rt = get_runtime()
        params = SamplingParams(max_new_tokens=6, temperature=1.0, seed=3, n=3)
        req = GenerationRequest("tiny_text", [Message("user", [Part("text", "hello")])], params)
        with rt.manager.lease("tiny_text") as lease:
            engine = lease.model.engine
            seen = []
            forward = engine._forward

            def spy(ids, *args, **kwargs):
                seen.append(ids.shape[0])
                return forward(ids, *args, **kwargs)

            engine._forward = spy
            a = rt.service.generate(req)
            engine._forward = forward
        b = rt.service.generate(req)
    assert seen[0] == 1 and max(seen) == 3  # the prefill ran once, the decode on 3 rows
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert a.completion_tokens == sum(c.completion_tokens for c in a.choices)


def _settings():
    return Settings(max_new_tokens_limit=64)


@pytest.mark.parametrize(
    "body, param",
    [
        ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ({"model": "m", "max_tokens": 4, "messages": []}, "messages"),
        ({"model": "m", "max_tokens": 4, "messages": [{"role": "tool", "content": "x"}]},
         "messages[0].role"),
        ({"model": "m", "max_tokens": 4, "temperature": 1.5,
          "messages": [{"role": "user", "content": "x"}]}, "temperature"),
        ({"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": [
            {"type": "document"}]}]}, "messages[0].content[0].type"),
        ({"model": "m", "max_tokens": 4, "thinking": {"type": "x"},
          "messages": [{"role": "user", "content": "x"}]}, "thinking.type"),
    ],
)  # fmt: skip
def test_anthropic_bad_bodies_name_the_field(tmp_path, body, param):
    with pytest.raises(BadRequest) as info:
        anthropic.parse_messages(body, _settings(), tmp_path)
    assert info.value.param == param


def test_anthropic_translation(tmp_path):
    call = anthropic.parse_messages(
        {"model": "m", "max_tokens": 4, "system": [{"type": "text", "text": "S"}],
         "stop_sequences": ["END"], "thinking": {"type": "disabled"},
         "messages": [{"role": "user", "content": "hi"},
                      {"role": "assistant", "content": [{"type": "thinking", "thinking": "t"},
                                                        {"type": "text", "text": "yo"}]},
                      {"role": "user", "content": "again"}]},
        _settings(), tmp_path,
    )  # fmt: skip
    req = call.request
    assert [m.role for m in req.messages] == ["system", "user", "assistant", "user"]
    assert req.messages[2].reasoning == "t" and req.params.stop == ["END"]
    assert req.template_kwargs == {"enable_thinking": False}
    assert anthropic.content_blocks("<think>r</think>\n\nA", False) == [
        {"type": "thinking", "thinking": "r", "signature": ""},
        {"type": "text", "text": "A"},
    ]


def test_anthropic_envelope():
    body = Unavailable("busy").anthropic_body()
    assert body == {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    assert BadRequest("x").anthropic_body()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "body, param",
    [
        ({"model": "m", "input": "x", "store": True}, "store"),
        ({"model": "m", "input": "x", "previous_response_id": "r"}, "previous_response_id"),
        ({"model": "m", "input": ""}, "input"),
        ({"model": "m", "input": [{"type": "web_search_call"}]}, "input[0].type"),
        ({"model": "m", "input": [{"type": "function_call"}]}, "input[0].call_id"),
        ({"model": "m", "input": "x", "tool_choice": "required"}, "tool_choice"),
        ({"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "name": "a",
          "schema": {"type": 5}}}}, "text.format.schema"),
        ({"model": "m", "input": [{"role": "user", "content": [{"type": "x"}]}]},
         "input[0].content[0].type"),
        ({"model": "m", "input": "x", "reasoning": {"effort": "max"}}, "reasoning.effort"),
        ({"model": "m", "input": "x", "max_output_tokens": 65}, "max_output_tokens"),
    ],
)  # fmt: skip
def test_responses_bad_bodies_name_the_field(tmp_path, body, param):
    with pytest.raises(BadRequest) as info:
        responses.parse_responses(body, _settings(), tmp_path)
    assert info.value.param == param


def test_responses_translation_and_items(tmp_path):
    call = responses.parse_responses(
        {"model": "m", "instructions": "I", "reasoning": {"effort": "low"},
         "input": [{"type": "message", "role": "developer", "content": "D"},
                   {"type": "reasoning", "id": "rs_1", "summary": []},
                   {"role": "user", "content": [{"type": "input_text", "text": "Q"}]}]},
        _settings(), tmp_path,
    )  # fmt: skip
    assert [m.role for m in call.request.messages] == ["system", "system", "user"]
    assert call.request.template_kwargs == {"enable_thinking": True}
    items = responses.output_items("<think>r</think>A", False)
    assert [i["type"] for i in items] == ["reasoning", "message"]
    assert items[1]["content"][0]["text"] == "A"


def test_serial_engine_families_give_logprobs_and_n(make_app):
    """A model on the one-at-a-time engine (vision-language) reports the same shapes; prompt
    scoring (echo with logprobs) needs the batching engine and is a 400 naming echo."""
    from tests.conftest import tiny_entry

    client = make_app([tiny_entry("tiny_vl")]).test_client()
    body = {"model": "tiny_vl", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 3, "logprobs": True, "top_logprobs": 2, "n": 2, "seed": 1,
            "temperature": 1.0}  # fmt: skip
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.get_json()
    choices = r.get_json()["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    for c in choices:
        content = c["logprobs"]["content"]
        assert content and all(len(t["top_logprobs"]) == 2 for t in content)
    r = client.post("/v1/completions", json={"model": "tiny_vl", "prompt": "hi", "echo": True,
                                             "logprobs": 1, "max_tokens": 1})  # fmt: skip
    assert r.status_code == 400 and r.get_json()["error"]["param"] == "echo"


def test_tools_translate_to_the_chat_shapes(tmp_path):
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    call = anthropic.parse_messages(
        {"model": "m", "max_tokens": 4,
         "tools": [{"name": "w", "input_schema": schema}],
         "tool_choice": {"type": "tool", "name": "w", "disable_parallel_tool_use": True},
         "messages": [
             {"role": "user", "content": "hi"},
             {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "w",
                                                "input": {"city": "Paris"}}]},
             {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                           "content": "sunny"}, {"type": "text", "text": "so?"}]},
         ]},
        _settings(), tmp_path,
    )  # fmt: skip
    req = call.request
    assert req.tools[0]["function"]["parameters"] == schema
    assert req.tool_choice == {"type": "function", "function": {"name": "w"}}
    assert req.parallel_tool_calls is False
    assert [m.role for m in req.messages] == ["user", "assistant", "tool", "user"]
    assert req.messages[1].tool_calls[0]["function"]["arguments"] == '{"city": "Paris"}'
    assert req.messages[2].tool_call_id == "t1" and req.messages[2].text() == "sunny"
    with pytest.raises(BadRequest) as info:
        anthropic.parse_messages({"model": "m", "max_tokens": 4, "tool_choice": {"type": "tool",
                                  "name": "x"}, "tools": [{"name": "w", "input_schema": schema}],
                                  "messages": [{"role": "user", "content": "hi"}]},
                                 _settings(), tmp_path)  # fmt: skip
    assert info.value.param == "tool_choice.name"
    r = responses.parse_responses(
        {"model": "m", "tools": [{"type": "function", "name": "w", "parameters": schema}],
         "tool_choice": {"type": "function", "name": "w"},
         "text": {"format": {"type": "json_object"}},
         "input": [{"role": "user", "content": "hi"},
                   {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
                   {"type": "function_call_output", "call_id": "c1", "output": "ok"}]},
        _settings(), tmp_path,
    )  # fmt: skip
    assert r.request.tools == [{"type": "function", "function": {"name": "w",
                                                                  "parameters": schema}}]  # fmt: skip
    assert r.request.tool_choice == {"type": "function", "function": {"name": "w"}}
    assert r.request.response_format == {"type": "json_object"}
    assert [m.role for m in r.request.messages] == ["user", "assistant", "tool"]
    items = responses.output_items(
        "",
        False,
        [{"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{}"}}],
    )
    assert [i["type"] for i in items] == ["function_call"] and items[0]["call_id"] == "call_1"


class _Template:
    """A tokenizer stand-in that records what apply_chat_template was given."""

    def __init__(self, template: str):
        self.chat_template = template
        self.seen: dict = {}

    def apply_chat_template(self, messages, **kwargs):
        self.seen = {"messages": messages, **kwargs}
        return "prompt"


def test_reasoning_switch_and_earlier_reasoning_reach_only_templates_that_read_them():
    from mmserve.families.text import TextHandler
    from mmserve.types import GenerationRequest, Message, Part

    msgs = [Message("user", [Part("text", "q")]),
            Message("assistant", [Part("text", "a")], reasoning="because"),
            Message("user", [Part("text", "q2")])]  # fmt: skip
    req = GenerationRequest("m", msgs, template_kwargs=effort_switch("none"))
    qwen3 = _Template("{% if enable_thinking %}{{ m.reasoning_content }}{% endif %}")
    TextHandler().render_prompt(qwen3, req)
    assert qwen3.seen["enable_thinking"] is False
    assert qwen3.seen["messages"][1]["reasoning_content"] == "because"
    plain = _Template("{{ messages }}")
    TextHandler().render_prompt(plain, req)
    assert "enable_thinking" not in plain.seen
    assert "reasoning_content" not in plain.seen["messages"][1]


def test_more_prompts_than_the_batch_all_answer(make_app):
    """Prompts are started a batch at a time: more of them than the model runs at once still
    answer (their leases are never all held while a later one waits for a turn)."""
    from tests.conftest import tiny_entry

    client = make_app([tiny_entry("tiny_text")], batch_max_size=2).test_client()
    r = client.post("/v1/completions", json={"model": "tiny_text", "prompt": ["a", "b", "c", "d",
                                             "e"], "max_tokens": 2})  # fmt: skip
    assert r.status_code == 200, r.get_json()
    assert [c["index"] for c in r.get_json()["choices"]] == [0, 1, 2, 3, 4]

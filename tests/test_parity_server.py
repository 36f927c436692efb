"""OpenAI parity on the real server (main.py, gunicorn, SmolLM2-135M) with the openai client:
logprobs (chat, streamed, legacy completions), echo, n, penalties, logit_bias, token prompts."""

from __future__ import annotations

import math

import openai
import pytest
import requests

pytestmark = pytest.mark.server

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def oai(oa_server):
    return openai.OpenAI(base_url=oa_server.url + "/v1", api_key="none", max_retries=0)


def test_chat_logprobs_have_openai_shapes(oai):
    r = oai.chat.completions.create(
        model="smollm2", messages=PROMPT, max_tokens=8, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content
    assert content, "no logprobs"
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        assert bytes(t.bytes).decode("utf-8", "replace") == t.token
        # greedy: the chosen token is the most likely one of the raw distribution
        assert t.top_logprobs[0].logprob == pytest.approx(t.logprob, abs=1e-5)
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob


def test_streamed_chat_logprobs_cover_the_text(oai):
    text, tokens = "", []
    stream = oai.chat.completions.create(
        model="smollm2", messages=PROMPT, max_tokens=8, logprobs=True, top_logprobs=2, stream=True
    )
    for chunk in stream:
        for c in chunk.choices:
            text += c.delta.content or ""
            if c.logprobs and c.logprobs.content:
                tokens += c.logprobs.content
    assert tokens and "".join(t.token for t in tokens) == text
    assert all(len(t.top_logprobs) == 2 for t in tokens)


def test_top_logprobs_is_bounded_and_needs_logprobs(oa_server):
    url = oa_server.url + "/v1/chat/completions"
    body = {"model": "smollm2", "messages": PROMPT, "max_tokens": 2}
    r = requests.post(url, json={**body, "logprobs": True, "top_logprobs": 21}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs"
    r = requests.post(url, json={**body, "top_logprobs": 2}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs"


def test_completions_legacy_logprobs_and_echo_score_the_prompt(oai):
    prompt = "The capital of France is Paris"
    r = oai.completions.create(model="smollm2", prompt=prompt, max_tokens=0, echo=True, logprobs=1)
    choice = r.choices[0]
    lp = choice.logprobs
    assert choice.text == prompt and r.usage.completion_tokens == 0
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(v < 0 for v in lp.token_logprobs[1:])
    assert "".join(lp.tokens) == prompt
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    # with a completion: the prompt's tokens, then the completion's
    r = oai.completions.create(model="smollm2", prompt=prompt, max_tokens=3, echo=True, logprobs=2)
    lp = r.choices[0].logprobs
    assert r.choices[0].text.startswith(prompt)
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset)
    assert all(len(t) == 2 for t in lp.top_logprobs[1:])


def test_prompt_logprobs_equal_transformers(oa_server, smollm2_models_dir):
    """The server's loglikelihood of a continuation equals the in-process one."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mmserve.models_config import build_table

    path = smollm2_models_dir / build_table()["smollm2"].local_dir
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ids = tok("Water boils at 100 degrees Celsius.")["input_ids"]
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0]
    want = torch.log_softmax(logits.float(), -1)[range(len(ids) - 1), ids[1:]].tolist()
    r = requests.post(
        oa_server.url + "/v1/completions",
        json={"model": "smollm2", "prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 0},
        timeout=60,
    )
    got = r.json()["choices"][0]["logprobs"]["token_logprobs"]
    assert got[0] is None and got[1:] == pytest.approx(want, abs=2e-3)


def test_n_gives_n_choices_and_seeds_repeat(oai):
    kw = {"model": "smollm2", "messages": PROMPT, "max_tokens": 6, "temperature": 1.0}
    r = oai.chat.completions.create(n=4, seed=7, **kw)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    one = oai.chat.completions.create(seed=7, **kw)
    assert one.choices[0].message.content == r.choices[0].message.content  # row 0: seed 7
    assert r.usage.prompt_tokens == one.usage.prompt_tokens  # the prompt is counted once
    assert r.usage.completion_tokens > one.usage.completion_tokens  # every row is counted
    again = oai.chat.completions.create(n=4, seed=7, **kw)
    assert [c.message.content for c in again.choices] == [c.message.content for c in r.choices]
    assert len({c.message.content for c in r.choices}) > 1, "the rows sampled the same text"


def test_streamed_n_interleaves_by_index(oai):
    texts = {}
    stream = oai.completions.create(
        model="smollm2", prompt="Once upon a time", max_tokens=6, n=3, stream=True,
        temperature=1.0, seed=1,
    )  # fmt: skip
    finished = set()
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            if c.finish_reason:
                finished.add(c.index)
    assert finished == {0, 1, 2} and all(texts[i] for i in range(3))


def _repeats(text: str) -> int:
    words = [w.strip(".,!").lower() for w in text.split()]
    return max((words.count(w) for w in set(words)), default=0)


def test_frequency_penalty_reduces_repeats(oai):
    msgs = [{"role": "user", "content": "Write the word 'cat' 30 times, separated by spaces."}]
    kw = {"model": "smollm2", "messages": msgs, "max_tokens": 24}
    plain = oai.chat.completions.create(**kw).choices[0].message.content
    penalised = oai.chat.completions.create(frequency_penalty=2.0, **kw).choices[0].message.content
    assert _repeats(plain) >= 5, plain
    assert _repeats(penalised) < _repeats(plain) / 2, (plain, penalised)


def test_logit_bias_forces_and_bans_a_token(oai, oa_server, smol_tokenizer):
    plain = oai.completions.create(model="smollm2", prompt="Hello", max_tokens=1, logprobs=0)
    first = plain.choices[0].logprobs.tokens[0]
    (first_id,) = smol_tokenizer(first, add_special_tokens=False)["input_ids"]
    (a_id,) = smol_tokenizer("A", add_special_tokens=False)["input_ids"]
    forced = oai.completions.create(
        model="smollm2", prompt="Hello", max_tokens=3, logit_bias={str(a_id): 100}
    )
    assert forced.choices[0].text == "AAA"
    banned = oai.completions.create(
        model="smollm2", prompt="Hello", max_tokens=1, logit_bias={str(first_id): -100}
    )
    assert banned.choices[0].text != first
    r = requests.post(
        oa_server.url + "/v1/completions",
        json={"model": "smollm2", "prompt": "Hi", "logit_bias": {"999999": 5}},
        timeout=60,
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "logit_bias.999999"


def test_token_prompts_equal_their_text(oai, oa_server, smol_tokenizer):
    text = "The three primary colours are"
    ids = smol_tokenizer(text)["input_ids"]
    by_text = oai.completions.create(model="smollm2", prompt=text, max_tokens=8)
    by_ids = oai.completions.create(model="smollm2", prompt=ids, max_tokens=8)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_ids.usage.prompt_tokens == by_text.usage.prompt_tokens == len(ids)
    two = oai.completions.create(model="smollm2", prompt=[ids, ids], max_tokens=8)
    assert [c.text for c in two.choices] == [by_text.choices[0].text] * 2
    r = requests.post(
        oa_server.url + "/v1/completions",
        json={"model": "smollm2", "prompt": [ids, [1, 2, 10**7]], "max_tokens": 200},
        timeout=60,
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt[1][2]"
    assert r.elapsed.total_seconds() < 5  # refused before the first prompt generated


@pytest.fixture(scope="module")
def smol_tokenizer(smollm2_models_dir):
    from transformers import AutoTokenizer

    from mmserve.models_config import build_table

    return AutoTokenizer.from_pretrained(smollm2_models_dir / build_table()["smollm2"].local_dir)


def test_logprob_values_are_probabilities(oai):
    r = oai.completions.create(model="smollm2", prompt="1, 2, 3,", max_tokens=2, logprobs=5)
    for top in r.choices[0].logprobs.top_logprobs:
        assert 0 < sum(math.exp(v) for v in top.values()) <= 1.0 + 1e-4

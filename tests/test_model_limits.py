"""Token limits come from the model and are never passed in silence (issue 11): embeddings over
the limit are refused or truncated on request (item 1); every prompt overflow answers
`context_length_exceeded` in OpenAI's wording (item 8); `stop` takes up to MMSERVE_MAX_STOP
strings on every route (item 13)."""

from __future__ import annotations

import base64
import re
from types import SimpleNamespace

import numpy as np
import pytest

from mmserve.errors import ContextLengthExceeded
from mmserve.limits import check_prompt, context_length
from mmserve.settings import Settings
from tests.conftest import tiny_entry
from tests.factories.media import make_image

OVERFLOW = re.compile(
    r"This model's maximum context length is (\d+) tokens\. However, you requested (\d+) tokens "
    r"\((\d+) in the messages, (\d+) in the completion\)\. Please reduce the length of the "
    r"messages or completion\."
)
TEXT_CONTEXT = 2048  # the tiny text models' max_position_embeddings
EMBED_LIMIT = 128  # tiny_embed: max_position_embeddings and model_max_length


def overflow(err: dict, message_key: str = "message") -> tuple[int, int, int, int]:
    """(N, M, P, C) of an overflow error, after checking its code and wording."""
    assert err["code"] == "context_length_exceeded", err
    found = OVERFLOW.search(err[message_key])
    assert found, err[message_key]
    n, m, p, c = (int(x) for x in found.groups())
    assert m == p + c
    return n, m, p, c


@pytest.fixture
def client(make_app):
    return make_app().test_client()


# --------------------------------------------------------------------------- item 1: embeddings


def embed(client, **body):
    return client.post("/v1/embeddings", json={"model": "tiny_embed", **body})


def test_embedding_input_over_the_models_limit_is_refused_naming_it(client):
    r = embed(client, input=["a dog", "cat " * 300])
    assert r.status_code == 400
    err = r.get_json()["error"]
    assert err["param"] == "input[1]" and '"truncate": true' in err["message"]
    assert overflow(err)[0] == EMBED_LIMIT
    r = embed(client, input="cat " * 300)
    assert r.status_code == 400 and r.get_json()["error"]["param"] == "input"


def test_truncate_true_embeds_the_first_tokens_and_says_so(client):
    prefix = "the cat sat " * 60  # 180 words: over the limit on its own
    r = embed(client, input=[prefix + "dog", prefix + "bird", "short"], truncate=True)
    assert r.status_code == 200, r.get_json()
    out = r.get_json()
    assert [d["truncated"] for d in out["data"]] == [True, True, False]
    a, b, c = (np.array(d["embedding"]) for d in out["data"])
    assert np.allclose(a, b)  # only the kept tokens count: both are the same prefix
    used = out["usage"]["prompt_tokens"]
    alone = embed(client, input="short").get_json()["usage"]["prompt_tokens"]
    assert used == 2 * EMBED_LIMIT + alone  # what was actually used
    assert "truncated" not in embed(client, input="short").get_json()["data"][0]


def test_native_embed_route_refuses_or_truncates_the_same_way(client):
    r = client.post("/embed/tiny_embed", json={"input": ["a dog", "cat " * 300]})
    assert r.status_code == 400 and r.get_json()["param"] == "input[1]"
    assert overflow(r.get_json(), "error")[0] == EMBED_LIMIT
    r = client.post("/embed/tiny_embed", json={"input": ["a dog", "cat " * 300], "truncate": True})
    assert r.status_code == 200, r.get_json()
    out = r.get_json()
    assert out["truncated"] == [False, True] and len(out["embeddings"]) == 2
    alone = client.post("/embed/tiny_embed", json={"input": "a dog"}).get_json()
    assert np.allclose(alone["embeddings"][0], out["embeddings"][0], atol=1e-5)
    assert out["usage"]["prompt_tokens"] == alone["usage"]["prompt_tokens"] + EMBED_LIMIT
    assert "truncated" not in alone
    r = client.post("/embed/tiny_text", json={"input": "x"})
    assert r.status_code == 400 and r.get_json()["param"] == "model"


def test_minilm_limit_is_its_own_256_not_a_constant(make_app, smollm2_models_dir):
    """The issue's case: two inputs sharing a 600-token prefix got identical vectors, 200."""
    client = make_app(models=[], replace_models=False, models_dir=smollm2_models_dir).test_client()
    prefix = "word " * 600
    body = {"model": "minilm", "input": [prefix + "apples", prefix + "trains"]}
    r = client.post("/v1/embeddings", json=body)
    assert r.status_code == 400
    err = r.get_json()["error"]
    assert err["param"] == "input[0]" and overflow(err)[0] == 256
    r = client.post("/v1/embeddings", json={**body, "truncate": True})
    assert r.status_code == 200 and r.get_json()["usage"]["prompt_tokens"] == 2 * 256


def test_context_length_is_the_smallest_real_limit(tmp_path):
    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=512))
    sentinel = SimpleNamespace(model_max_length=int(1e30))  # a tokenizer without a limit
    assert context_length(model, sentinel) == 512
    assert context_length(model, SimpleNamespace(model_max_length=300)) == 300
    (tmp_path / "sentence_bert_config.json").write_text('{"max_seq_length": 256}')
    assert context_length(model, None, tmp_path) == 256
    text = SimpleNamespace(max_position_embeddings=32768)
    omni = SimpleNamespace(config=SimpleNamespace(thinker_config=SimpleNamespace(text_config=text)))
    assert context_length(omni, None) == 32768
    assert context_length(SimpleNamespace(config=SimpleNamespace()), None) is None


# --------------------------------------------------------------------------- item 8: overflow


def test_prompt_over_the_context_on_every_route_names_its_field(client):
    long = "hello " * 3000
    r = client.post("/generate/tiny_text", json={"prompt": long})
    err = r.get_json()
    assert r.status_code == 400 and err["param"] == "prompt"
    assert overflow(err, "error")[0] == TEXT_CONTEXT
    r = client.post("/generate/tiny_text", json={"prompt": long, "stream": True})
    assert r.status_code == 400 and r.get_json()["code"] == "context_length_exceeded"
    messages = [{"role": "user", "content": long}]
    for stream in (False, True):
        r = client.post(
            "/v1/chat/completions",
            json={"model": "tiny_text", "messages": messages, "stream": stream},
        )
        assert r.status_code == 400 and r.get_json()["error"]["param"] == "messages"
        overflow(r.get_json()["error"])
    r = client.post("/v1/completions", json={"model": "tiny_text", "prompt": ["hi", long]})
    assert r.status_code == 400 and r.get_json()["error"]["param"] == "prompt[1]"


def test_prompt_plus_max_tokens_over_the_context_is_refused_as_openai_does(client, tiny_models_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models_dir / "tiny_text")
    prompt = "hello " * 600
    p = len(tok(prompt)["input_ids"])
    room = TEXT_CONTEXT - p
    body = {"model": "tiny_text", "prompt": prompt}
    r = client.post("/v1/completions", json={**body, "max_tokens": room + 1})
    assert r.status_code == 400
    assert overflow(r.get_json()["error"]) == (TEXT_CONTEXT, TEXT_CONTEXT + 1, p, room + 1)
    r = client.post("/v1/completions", json={**body, "max_tokens": 2})
    assert r.status_code == 200


def test_without_max_tokens_generation_stops_at_the_context(make_app, tiny_models_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models_dir / "tiny_text")
    prompt = "hello " * 600
    while len(tok(prompt)["input_ids"]) < TEXT_CONTEXT - 3:
        prompt += "hello "
    p = len(tok(prompt)["input_ids"])
    entry = tiny_entry("tiny_text", generation={"max_new_tokens": 64, "temperature": 0.0})
    client = make_app([entry]).test_client()
    r = client.post("/v1/completions", json={"model": "tiny_text", "prompt": prompt})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["usage"]["completion_tokens"] <= TEXT_CONTEXT - p


def test_max_prompt_tokens_setting_answers_the_same_overflow(make_app):
    client = make_app([tiny_entry("tiny_text")], max_prompt_tokens=5).test_client()
    r = client.post("/generate/tiny_text", json={"prompt": "one two three four five six"})
    err = r.get_json()
    assert r.status_code == 400 and err["param"] == "prompt"
    assert overflow(err, "error")[0] == 5 and "max_prompt_tokens=5" in err["error"]


def test_multimodal_prompts_overflow_the_same_way(client):
    image = base64.b64encode(make_image()).decode()
    r = client.post(
        "/generate/tiny_vqa", json={"prompt": "what " * 100, "image": image, "max_new_tokens": 2}
    )
    err = r.get_json()
    assert r.status_code == 400 and err["param"] == "prompt"
    assert overflow(err, "error")[0] == 64  # BLIP's text encoder takes 64 tokens (tiny)
    r = client.post(  # the answer has its own positions: a long one does not overflow
        "/generate/tiny_vqa", json={"prompt": "what?", "image": image, "max_new_tokens": 64}
    )
    assert r.status_code == 200, r.get_json()
    url = "data:image/png;base64," + image
    content = [
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "text", "text": "a " * 3000},
    ]
    r = client.post(
        "/v1/chat/completions",
        json={"model": "tiny_vl", "messages": [{"role": "user", "content": content}]},
    )
    assert r.status_code == 400 and r.get_json()["error"]["param"] == "messages"
    overflow(r.get_json()["error"])


def test_check_prompt_rules():
    assert check_prompt(10, None, 256, 100, 10**6, "prompt") == 90  # default capped
    assert check_prompt(10, 90, 256, 100, 10**6, "prompt") == 90
    with pytest.raises(ContextLengthExceeded) as info:
        check_prompt(10, 91, 256, 100, 10**6, "messages")
    assert info.value.param == "messages" and "you requested 101 tokens" in info.value.message
    with pytest.raises(ContextLengthExceeded):
        check_prompt(100, None, 256, 100, 10**6, "prompt")  # no room for one token
    assert check_prompt(60, 80, 256, 100, 10**6, "prompt", completion_in_context=False) == 80
    assert check_prompt(10, None, 256, None, 10**6, "prompt") == 256  # unknown context


# --------------------------------------------------------------------------- item 13: stop


@pytest.mark.parametrize("count", [5, 16])
def test_up_to_max_stop_strings_on_every_route(client, count):
    stops = [f"<s{i}>" for i in range(count)]
    chat = {"model": "tiny_text", "messages": [{"role": "user", "content": "hi"}]}
    for path, body, limit in (
        ("/v1/completions", {"model": "tiny_text", "prompt": "hi"}, "max_tokens"),
        ("/v1/chat/completions", chat, "max_tokens"),
        ("/generate/tiny_text", {"prompt": "hi"}, "max_new_tokens"),
    ):
        r = client.post(path, json={**body, "stop": stops, limit: 2})
        assert r.status_code == 200, (path, r.get_json())
        r = client.post(path, json={**body, "stop": stops + [f"<x{i}>" for i in range(17 - count)]})
        err = r.get_json()
        err = err["error"] if isinstance(err["error"], dict) else err
        assert r.status_code == 400 and err["param"] == "stop", (path, err)
        assert "max_stop=16" in (err.get("message") or err["error"])


def test_max_stop_is_a_setting(make_app):
    assert Settings.load(env={"MMSERVE_MAX_STOP": "20"}).max_stop == 20
    with pytest.raises(ValueError):
        Settings.load(env={"MMSERVE_MAX_STOP": "0"})
    client = make_app([tiny_entry("tiny_text")], max_stop=20).test_client()
    stops = [f"<s{i}>" for i in range(20)]
    r = client.post("/v1/completions", json={"model": "tiny_text", "prompt": "hi", "stop": stops})
    assert r.status_code == 200, r.get_json()

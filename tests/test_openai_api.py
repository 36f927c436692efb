"""The OpenAI-compatible API on a real server (main.py -> gunicorn on 127.0.0.1), driven by the
official `openai` client: tiny models of every family plus the real embedded SmolLM2."""

from __future__ import annotations

import base64
import time

import numpy as np
import openai
import pytest
import requests

from tests.conftest import TINY
from tests.factories.media import make_audio, make_image, make_video

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="session")
def client(oa_server):
    return openai.OpenAI(
        base_url=oa_server.url + "/v1", api_key="unused", max_retries=0, timeout=120
    )


def data_uri(mime: str, raw: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


def ask(text: str, *media: dict) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text}, *media]}]


def image_part() -> dict:
    return {"type": "image_url", "image_url": {"url": data_uri("image/png", make_image("PNG"))}}


def error_of(info) -> dict:
    """The error object of an openai exception, checked for the OpenAI envelope's keys."""
    body = info.value.body
    assert set(body) == {"message", "type", "param", "code"}, body
    return body


def model_status(server, name: str) -> dict:
    return requests.get(server.url + "/admin/model_status", timeout=10).json()["models"][name]


# --------------------------------------------------------------------------- models


def test_models_list_and_retrieve(client):
    entries = {m.id: m for m in client.models.list().data}
    assert set(TINY) | {"smollm2", "minilm"} <= set(entries)
    vl = entries["tiny_vl"].model_dump()
    assert vl["object"] == "model" and vl["owned_by"] == "tests" and vl["created"] > 0
    assert vl["family"] == "vision_language" and vl["capabilities"] == ["text", "image", "video"]
    assert isinstance(vl["loaded"], bool)
    assert client.models.retrieve("tiny_embed").model_dump()["family"] == "embedding"
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("no_such_model")
    assert error_of(info)["code"] == "model_not_found" and error_of(info)["param"] == "model"


# --------------------------------------------------------------------------- chat


def test_chat_streamed_equals_non_streamed(client):
    kwargs = dict(model="tiny_text", messages=ask("Hello there"), max_tokens=8, temperature=0)
    whole = client.chat.completions.create(**kwargs, extra_body={"chat_template": "{{ oops"})
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    chunks = list(
        client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens


def test_smollm2_knows_the_capital_of_france(client):
    r = client.chat.completions.create(model="smollm2", messages=ask(QUESTION), max_tokens=24)
    assert "Paris" in r.choices[0].message.content
    assert r.choices[0].message.model_extra.get("reasoning_content") is None


def test_stop_strings_cut_the_answer_streamed_or_not(client):
    kwargs = dict(model="smollm2", messages=ask(QUESTION), max_tokens=24, stop=["Paris"])
    whole = client.chat.completions.create(**kwargs)
    assert "Paris" not in whole.choices[0].message.content
    assert whole.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content


def test_max_tokens_is_honoured(client):
    r = client.chat.completions.create(model="tiny_text", messages=ask("count"), max_tokens=3)
    assert (r.usage.completion_tokens, r.choices[0].finish_reason) == (3, "length")
    r = client.chat.completions.create(
        model="tiny_text", messages=ask("count"), max_completion_tokens=2
    )
    assert r.usage.completion_tokens == 2


def test_n_above_max_n_is_refused(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny_text", messages=ask("hi"), n=9)
    assert error_of(info)["param"] == "n"


@pytest.mark.parametrize("model", ["tiny_vl", "tiny_vqa"])
def test_image_parts(client, model):
    r = client.chat.completions.create(
        model=model, messages=ask("What is in the picture?", image_part()), max_tokens=4
    )
    assert isinstance(r.choices[0].message.content, str) and r.usage.prompt_tokens > 0


def test_audio_part(client):
    audio = base64.b64encode(make_audio("wav", seconds=1.0)).decode()
    part = {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}}
    r = client.chat.completions.create(
        model="tiny_audio", messages=ask("What do you hear?", part), max_tokens=4
    )
    assert isinstance(r.choices[0].message.content, str) and r.usage.prompt_tokens > 0


def test_video_part(client):
    part = {"type": "video_url", "video_url": {"url": data_uri("video/mp4", make_video("mp4"))}}
    r = client.chat.completions.create(
        model="tiny_vl", messages=ask("What happens?", part), max_tokens=4
    )
    assert isinstance(r.choices[0].message.content, str) and r.usage.prompt_tokens > 0


def test_image_sent_to_a_text_model_names_the_part(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny_text", messages=ask("look", image_part()))
    assert error_of(info)["param"] == "messages[0].content[1]"


@pytest.mark.parametrize(
    "url, why",
    [
        ("https://example.com/cat.png", "not accepted from this host"),
        ("http://127.0.0.1:9/cat.png", "private or loopback"),  # allowed host, loopback address
        ("http://localhost:9/cat.png", "private or loopback"),
    ],
)
def test_remote_media_urls_are_refused(client, url, why):
    part = {"type": "image_url", "image_url": {"url": url}}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny_vl", messages=ask("look", part))
    error = error_of(info)
    assert error["param"] == "messages[0].content[1]" and why in error["message"]


def test_context_length_exceeded(client):
    prompt = " ".join(str(i) for i in range(3000))  # well past tiny_text's 2048 positions
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny_text", messages=ask(prompt))
    assert error_of(info)["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="tiny_text", prompt=["fine", prompt])
    assert (error_of(info)["code"], error_of(info)["param"]) == (
        "context_length_exceeded",
        "prompt[1]",
    )
    with pytest.raises(openai.BadRequestError) as info:  # streamed: refused before the first byte
        client.completions.create(model="tiny_text", prompt=prompt, stream=True)
    assert (error_of(info)["code"], error_of(info)["param"]) == (
        "context_length_exceeded",
        "prompt",
    )


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-17", messages=ask("hi"))
    error = error_of(info)
    assert (error["code"], error["param"], error["type"]) == (
        "model_not_found",
        "model",
        "not_found_error",
    )


def test_keep_alive_from_the_body(client, oa_server):
    kwargs = dict(model="tiny_qwen", messages=ask("hi"), max_tokens=2)
    client.chat.completions.create(**kwargs, extra_body={"keep_alive": "10m"})
    status = model_status(oa_server, "tiny_qwen")
    assert status["state"] == "loaded" and 500 < status["expires_at"] - time.time() <= 600
    client.chat.completions.create(**kwargs, extra_body={"keep_alive": "0"})
    deadline = time.monotonic() + 10
    while model_status(oa_server, "tiny_qwen")["state"] == "loaded" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert model_status(oa_server, "tiny_qwen")["state"] != "loaded"


# --------------------------------------------------------------------------- completions


def test_completions_single_list_and_streamed(client):
    one = client.completions.create(model="tiny_text", prompt="abc", max_tokens=4)
    assert one.object == "text_completion" and len(one.choices) == 1
    two = client.completions.create(model="tiny_text", prompt=["abc", "xyz"], max_tokens=4)
    assert [c.index for c in two.choices] == [0, 1] and two.choices[0].text == one.choices[0].text
    assert two.usage.completion_tokens == sum(
        client.completions.create(model="tiny_text", prompt=p, max_tokens=4).usage.completion_tokens
        for p in ("abc", "xyz")
    )
    chunks = list(
        client.completions.create(
            model="smollm2",
            prompt="The capital of France is",
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "Paris" in "".join(c.choices[0].text for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens <= 6


def test_closing_a_stream_stops_the_generation(client, oa_server):
    stream = client.completions.create(
        model="smollm2", prompt="1, 2, 3, 4, 5,", max_tokens=2000, stream=True
    )
    assert next(iter(stream)).choices[0].text is not None
    stream.close()
    deadline = time.monotonic() + 15
    while model_status(oa_server, "smollm2")["ref_count"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert model_status(oa_server, "smollm2")["ref_count"] == 0
    assert "closed early" in oa_server.log()  # cancelled by the close, not run to its end


# --------------------------------------------------------------------------- embeddings


def test_embeddings_float_and_base64(client, oa_server):
    texts = ["the cat sat", "a dog ran far", "hello"]
    batch = client.embeddings.create(model="tiny_embed", input=texts, encoding_format="float")
    assert [d.index for d in batch.data] == [0, 1, 2] and batch.usage.prompt_tokens > 0
    assert batch.usage.total_tokens == batch.usage.prompt_tokens
    vectors = np.array([d.embedding for d in batch.data])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    alone = client.embeddings.create(model="tiny_embed", input="a dog ran far")
    assert np.allclose(alone.data[0].embedding, vectors[1], atol=1e-5)
    # The client asks for base64 unless told otherwise; check the raw bytes too.
    raw = requests.post(
        oa_server.url + "/v1/embeddings",
        json={"model": "tiny_embed", "input": texts, "encoding_format": "base64"},
        timeout=30,
    ).json()
    decoded = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in raw["data"]]
    assert np.allclose(decoded, vectors, atol=1e-6)


def test_embedding_errors(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="tiny_embed", input="x", dimensions=7)
    assert error_of(info)["param"] == "dimensions"
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="tiny_text", input="x")
    assert error_of(info)["param"] == "model"
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="tiny_embed", input=[[1, 2, 3]])
    assert error_of(info)["param"] == "input"


# --------------------------------------------------------------------------- transcriptions


def test_transcriptions(client, oa_server):
    wav = make_audio("wav", seconds=1.0)
    r = client.audio.transcriptions.create(model="tiny_audio", file=("a.wav", wav, "audio/wav"))
    assert isinstance(r.text, str)
    text = client.audio.transcriptions.create(
        model="tiny_audio", file=("a.wav", wav, "audio/wav"), response_format="text"
    )
    assert isinstance(text, str)
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.transcriptions.create(model="tiny_text", file=("a.wav", wav, "audio/wav"))
    assert error_of(info)["param"] == "model"
    r = requests.post(
        oa_server.url + "/v1/audio/transcriptions", data={"model": "tiny_audio"}, timeout=30
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"


# --------------------------------------------------------------------------- raw HTTP errors


@pytest.mark.parametrize(
    "method, path, kwargs, status",
    [
        ("get", "/v1/no/such/route", {}, 404),
        ("get", "/v1/chat/completions", {}, 405),
        ("delete", "/v1/models", {}, 405),
        ("post", "/v1/chat/completions", {"data": "{not json"}, 400),
        ("post", "/v1/embeddings", {"json": [1, 2]}, 400),
        ("post", "/v1/completions", {"json": {"model": "nope", "prompt": "x"}}, 404),
    ],
)
def test_every_error_uses_the_openai_envelope(oa_server, method, path, kwargs, status):
    r = getattr(requests, method)(oa_server.url + path, timeout=30, **kwargs)
    assert r.status_code == status
    assert set(r.json()) == {"error"}
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert isinstance(r.json()["error"]["message"], str) and r.json()["error"]["message"]

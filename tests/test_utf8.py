"""No response ever ends in half a UTF-8 character (the U+FFFD a decoder writes for it):
the incomplete tail is dropped on /generate, /v1/completions and /v1/chat/completions,
streamed or not, and held back in a stream until its bytes are complete."""

from __future__ import annotations

import json
import threading

import pytest
import requests

from mmserve.engine import TextEngine
from mmserve.rows import Row
from tests.conftest import tiny_entry

EMOJI = "\U0001f600"  # 😀: four UTF-8 bytes
PROMPT = "Emoji list: \U0001f600 \U0001f603 \U0001f604"


def emoji_ids(tokenizer) -> list[int]:
    ids = tokenizer.encode(EMOJI, add_special_tokens=False)
    assert len(ids) > 1  # the tiny byte-level vocabulary splits it into bytes
    return ids


def test_a_row_holds_back_and_then_drops_an_incomplete_character(make_app):
    app = make_app([tiny_entry("tiny_text")])
    app.extensions["mmserve"].manager.load("tiny_text")
    lm = app.extensions["mmserve"].manager._slots["tiny_text"].loaded
    ids = emoji_ids(lm.tokenizer)
    whole = Row(lm.tokenizer, set(), 10, (), threading.Event())
    for token in ids:
        whole.push(token)
    whole.finish("stop")
    assert list(whole.deltas()) == [EMOJI]  # nothing sent before the character was whole
    cut = Row(lm.tokenizer, set(), len(ids) - 1, (), threading.Event())
    for token in ids[:-1]:
        cut.push(token)
    assert cut.done.is_set() and cut.finish_reason == "length"
    assert list(cut.deltas()) == [] and cut.text == ""
    assert len(cut.completion_ids) == len(ids) - 1  # usage still counts every token


@pytest.fixture
def emoji_app(make_app, monkeypatch):
    """The tiny model made to write the first bytes of an emoji, whatever it is asked."""
    app = make_app([tiny_entry("tiny_text")])
    app.extensions["mmserve"].manager.load("tiny_text")
    lm = app.extensions["mmserve"].manager._slots["tiny_text"].loaded
    ids = emoji_ids(lm.tokenizer)

    def sample(self, seqs, logits):
        return [ids[min(len(s.row.completion_ids), len(ids) - 1)] for s in seqs]

    monkeypatch.setattr(TextEngine, "_sample", sample)
    return app


def sse_text(body: str, key) -> str:
    out = ""
    for line in body.splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:])["choices"]:
                out += key(choice) or ""
    return out


@pytest.mark.parametrize("max_tokens", [1, 2])
def test_every_route_drops_the_incomplete_tail(emoji_app, max_tokens):
    client = emoji_app.test_client()
    texts = []
    r = client.post("/generate/tiny_text", json={"prompt": PROMPT, "max_new_tokens": max_tokens})
    texts.append(r.get_json()["response"])
    r = client.post(
        "/generate/tiny_text",
        json={"prompt": PROMPT, "max_new_tokens": max_tokens, "stream": True},
    )
    lines = [json.loads(x) for x in r.get_data(as_text=True).splitlines() if x]
    assert lines[-1]["done"] is True and lines[-1]["finish_reason"] == "length"
    texts.append("".join(x["response"] for x in lines))
    base = {"model": "tiny_text", "max_tokens": max_tokens, "temperature": 0}
    completion = dict(base, prompt=PROMPT)
    texts.append(client.post("/v1/completions", json=completion).get_json()["choices"][0]["text"])
    body = client.post("/v1/completions", json=dict(completion, stream=True))
    texts.append(sse_text(body.get_data(as_text=True), lambda c: c.get("text")))
    chat = dict(base, messages=[{"role": "user", "content": PROMPT}])
    answer = client.post("/v1/chat/completions", json=chat).get_json()
    texts.append(answer["choices"][0]["message"]["content"] or "")
    body = client.post("/v1/chat/completions", json=dict(chat, stream=True))
    texts.append(sse_text(body.get_data(as_text=True), lambda c: c["delta"].get("content")))
    assert texts == [""] * 6, texts


def test_smollm2_stopped_inside_an_emoji_sends_no_replacement_character(live_server):
    url = live_server.url
    base = {"model": "smollm2", "max_tokens": 1, "temperature": 0}
    got = []
    r = requests.post(f"{url}/v1/completions", json=dict(base, prompt=PROMPT), timeout=120)
    got.append(r.json()["choices"][0]["text"])
    chat = dict(base, messages=[{"role": "user", "content": PROMPT}])
    r = requests.post(f"{url}/v1/chat/completions", json=chat, timeout=120)
    got.append(r.json()["choices"][0]["message"]["content"] or "")
    r = requests.post(f"{url}/v1/chat/completions", json=dict(chat, stream=True), timeout=120)
    got.append(sse_text(r.text, lambda c: c["delta"].get("content")))
    body = {"prompt": PROMPT, "max_new_tokens": 1}
    got.append(requests.post(f"{url}/generate/smollm2", json=body, timeout=120).json()["response"])
    assert not any(text.endswith("\ufffd") for text in got), got

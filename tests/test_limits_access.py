"""Body limits (Content-Length and chunked), per-request limits, keys in each envelope."""

from __future__ import annotations

import socket

import pytest
import requests

from tests.conftest import start_server, tiny_entry


@pytest.fixture(scope="module")
def small_body_server(tmp_path_factory, tiny_models_dir):
    tmp = tmp_path_factory.mktemp("limits")
    cfg = tmp / "tiny.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump({"models": [tiny_entry("tiny_text")]}))
    server = start_server(
        tmp,
        ["--models-dir", str(tiny_models_dir), "--models-config", str(cfg)],
        {"MMSERVE_MAX_BODY_MB": "0.01"},  # about 10 KB
    )
    yield server
    server.stop()


def test_content_length_over_the_limit_is_413_before_the_body_is_sent(small_body_server):
    sock = socket.create_connection(("127.0.0.1", small_body_server.port), timeout=10)
    sock.sendall(
        b"POST /generate/tiny_text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 50000000\r\n\r\n"
    )  # no body at all: the answer must come from the header alone
    head = sock.recv(4096).decode(errors="replace")
    sock.close()
    assert head.startswith("HTTP/1.1 413")


def test_chunked_upload_is_capped_as_it_is_read(small_body_server):
    def body():
        yield b'{"prompt": "'
        for _ in range(100):
            yield b"x" * 1000
        yield b'"}'

    r = requests.post(
        small_body_server.url + "/generate/tiny_text",
        data=body(),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 413
    small = requests.post(
        small_body_server.url + "/generate/tiny_text",
        data=iter([b'{"prompt": "hi", ', b'"max_new_tokens": 2}']),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert small.status_code == 200, small.text


def test_prompt_token_limit_names_the_limit(make_app):
    client = make_app([tiny_entry("tiny_text")], max_prompt_tokens=5).test_client()
    r = client.post("/generate/tiny_text", json={"prompt": "one two three four five six seven"})
    assert r.status_code == 400 and "max_prompt_tokens" in r.get_json()["error"]
    r = client.post(
        "/v1/chat/completions",
        json={"model": "tiny_text", "messages": [{"role": "user", "content": "a b c d e f g h"}]},
    )
    assert r.status_code == 400 and "max_prompt_tokens" in r.get_json()["error"]["message"]


def test_max_tokens_limit_names_the_limit(make_app):
    client = make_app([tiny_entry("tiny_text")], max_new_tokens_limit=8).test_client()
    r = client.post(
        "/v1/chat/completions",
        json={
            "model": "tiny_text",
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 9,
        },
    )
    assert r.status_code == 400 and r.get_json()["error"]["param"] == "max_tokens"


def test_keys_answer_401_in_the_envelope_of_the_route_family(make_app):
    client = make_app([tiny_entry("tiny_text")], api_key="k1", admin_key="k2").test_client()
    native = client.post("/generate/tiny_text", json={"prompt": "x"})
    assert native.status_code == 401 and isinstance(native.get_json()["error"], str)
    v1 = client.get("/v1/models", headers={"Authorization": "Bearer wrong"})
    assert v1.status_code == 401 and v1.get_json()["error"]["type"] == "authentication_error"
    assert client.get("/v1/models", headers={"Authorization": "Bearer k1"}).status_code == 200
    assert client.get("/metrics").status_code == 401
    assert client.post("/admin/unload/tiny_text", headers={"X-API-Key": "k1"}).status_code == 401
    assert client.get("/health").status_code == 200


def test_a_chat_template_in_the_request_is_ignored(make_app):
    client = make_app([tiny_entry("tiny_text")]).test_client()
    body = {"model": "tiny_text", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    plain = client.post("/v1/chat/completions", json=body).get_json()
    evil = client.post(
        "/v1/chat/completions", json={**body, "chat_template": "{{ raise_exception('x') }}"}
    ).get_json()
    assert evil["choices"][0]["message"] == plain["choices"][0]["message"]


def test_remote_code_is_never_trusted_unless_the_entry_opts_in(make_app, monkeypatch):
    import transformers

    seen = []
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    client = make_app([tiny_entry("tiny_text")]).test_client()
    assert (
        client.post("/generate/tiny_text", json={"prompt": "x", "max_new_tokens": 2}).status_code
        == 200
    )
    assert seen == [False]

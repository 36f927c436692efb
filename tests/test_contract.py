"""The API contract through the Flask test client: bodies (issue 11, item 5), the error
envelope (item 7) and family capabilities of override entries (item 12)."""

from __future__ import annotations

import base64
import io
import time

import pytest

from mmserve import errors
from tests.conftest import tiny_entry
from tests.factories.media import make_audio, make_image

NATIVE_KEYS = {"error", "type", "code", "param", "details"}


@pytest.fixture
def app(make_app):
    return make_app(
        models=[tiny_entry(n) for n in ("tiny_text", "tiny_embed", "tiny_audio")],
        default_keep_alive=300,
    )


def every_route(app):
    """(method, url) for every route of the app, with a real model name in the URL."""
    out = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint.endswith("static") or rule.rule.startswith("/docs/"):
            continue  # files (the page's, Swagger UI's), not an API route
        url = rule.rule.replace("<model>", "tiny_text").replace("<path:model_id>", "tiny_text")
        assert "<" not in url, f"a route with an unknown variable: {rule.rule}"
        out += [(m, url) for m in sorted(rule.methods - {"HEAD", "OPTIONS"})]
    return out


# --- item 5: bodies ----------------------------------------------------------------------------


def test_a_json_body_sent_as_a_form_is_read_and_its_keep_alive_applied(app):
    """curl -X POST .../admin/load/x -d '{"keep_alive":"1h"}' (curl's default: a form)."""
    client = app.test_client()
    before = time.time()
    r = client.post(
        "/admin/load/tiny_text",
        data='{"keep_alive":"1h"}',
        content_type="application/x-www-form-urlencoded",
    )
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["keep_alive"] == 3600
    assert before + 3600 <= body["expires_at"] <= time.time() + 3600
    status = client.get("/admin/model_status").get_json()["models"]["tiny_text"]
    assert (status["keep_alive"], status["expires_at"]) == (3600, body["expires_at"])


def test_the_keep_alive_of_a_generation_is_the_one_reported(app):
    client = app.test_client()
    r = client.post(
        "/generate/tiny_text", json={"prompt": "hi", "max_new_tokens": 2, "keep_alive": "2h"}
    )
    assert r.status_code == 200, r.get_json()
    status = client.get("/admin/model_status").get_json()["models"]["tiny_text"]
    assert status["keep_alive"] == 7200
    assert status["expires_at"] == pytest.approx(time.time() + 7200, abs=30)


def test_admin_load_while_in_use_reports_the_keep_alive_that_will_apply(app):
    """The latest request admitted sets the keep-alive (as Ollama): a load during another
    request's generation is not undone when that request ends."""
    client = app.test_client()
    manager = app.extensions["mmserve"].manager
    lease = manager.acquire("tiny_text")  # a request without keep_alive: the default, 300 s
    try:
        body = client.post("/admin/load/tiny_text", json={"keep_alive": "1h"}).get_json()
        assert (body["keep_alive"], body["ref_count"], body["expires_at"]) == (3600, 1, None)
    finally:
        lease.release()
    status = client.get("/admin/model_status").get_json()["models"]["tiny_text"]
    assert status["keep_alive"] == 3600
    assert status["expires_at"] == pytest.approx(time.time() + 3600, abs=30)


@pytest.mark.parametrize(
    "data, content_type",
    [
        ("keep_alive=1h", "application/x-www-form-urlencoded"),
        ("[1, 2]", "application/json"),
        ('"1h"', None),
        ("{nope", "text/plain"),
    ],
    ids=["form", "json-array", "json-string", "broken-json"],
)
def test_a_body_that_is_not_a_json_object_is_refused_on_every_route(app, data, content_type):
    client = app.test_client()
    routes = every_route(app)
    assert len(routes) >= 15
    for method, url in routes:
        r = client.open(url, method=method, data=data, content_type=content_type)
        err = r.get_json()["error"] if url.startswith("/v1") else r.get_json()
        text = err["message"] if url.startswith("/v1") else err["error"]
        if url == "/v1/audio/transcriptions":  # takes a form: a form is read, the rest is 415
            if content_type == "application/x-www-form-urlencoded":
                assert (r.status_code, err["param"]) == (400, "model"), err
            else:
                assert (r.status_code, err["code"]) == (415, "unsupported_media_type"), err
            continue
        assert r.status_code == 400, (method, url, r.status_code, err)
        if (
            url == "/v1/messages"
        ):  # Anthropic's envelope: {"type": "error", "error": {type, message}}
            assert err["type"] == "invalid_request_error", err
        else:
            assert err["code"] == "invalid_body", (url, err)
        assert (content_type or "no Content-Type") in text or "JSON object, not" in text, text


@pytest.mark.parametrize(
    "method, url, body, unknown",
    [
        ("POST", "/generate/tiny_text", {"prompt": "x", "tempurature": 0.5}, "tempurature"),
        ("POST", "/admin/load/tiny_text", {"keep_alive": "1h", "pin": True}, "pin"),
        ("POST", "/admin/unload/tiny_text", {"force": True}, "force"),
        ("POST", "/admin/cleanup_temp", {"expired": True}, "expired"),
        ("POST", "/admin/emergency_cleanup", {"dry_run": True}, "dry_run"),
        ("GET", "/admin/model_status", {"verbose": 1}, "verbose"),
        ("GET", "/health", {"deep": True}, "deep"),
    ],
)
def test_unknown_fields_on_native_and_admin_routes_are_400_naming_them(
    app, method, url, body, unknown
):
    r = app.test_client().open(url, method=method, json=body)
    assert r.status_code == 400, r.get_json()
    err = r.get_json()
    assert (err["param"], err["code"]) == (unknown, "unknown_parameter")
    assert f"'{unknown}'" in err["error"]


def test_an_empty_object_or_no_body_is_fine_where_no_field_is_needed(app):
    client = app.test_client()
    assert client.post("/admin/cleanup_temp", json={}).status_code == 200
    assert client.post("/admin/cleanup_temp").status_code == 200
    assert client.get("/health", json={}).status_code == 200


def test_a_field_of_the_wrong_type_on_cleanup_temp_is_400(app):
    r = app.test_client().post("/admin/cleanup_temp", json={"expired_only": "yes"})
    assert r.status_code == 400 and r.get_json()["param"] == "expired_only"


def test_v1_tolerates_extra_fields_but_names_them(app):
    client = app.test_client()
    r = client.post(
        "/v1/embeddings",
        json={"model": "tiny_embed", "input": "a cat", "user": "u-1", "metadata": {"a": "b"}},
    )
    assert r.status_code == 200, r.get_json()
    assert r.headers["X-Ignored-Fields"] == "user, metadata"
    r = client.post("/v1/embeddings", json={"model": "tiny_embed", "input": "a cat"})
    assert "X-Ignored-Fields" not in r.headers


def test_v1_transcriptions_names_ignored_form_fields(app):
    r = app.test_client().post(
        "/v1/audio/transcriptions",
        data={
            "model": "tiny_audio",
            "file": (io.BytesIO(make_audio("wav", seconds=0.5)), "a.wav"),
            "timestamp_granularities[]": "word",
        },
        content_type="multipart/form-data",
    )
    assert r.status_code == 200, r.get_json()
    assert r.headers["X-Ignored-Fields"] == "timestamp_granularities[]"


# --- item 7: the error envelope ------------------------------------------------------------------


def all_error_classes():
    seen, todo = [], [errors.ServerError]
    while todo:
        cls = todo.pop()
        seen.append(cls)
        todo += cls.__subclasses__()
    return seen


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda c: c.__name__)
def test_every_error_class_has_a_code_and_the_documented_keys(cls):
    err = cls("x") if cls is not errors.ModelNotFound else cls("x", ["a"])
    assert isinstance(err.code, str) and err.code
    assert set(err.native_body()) == NATIVE_KEYS
    assert err.native_body()["code"] == err.code == err.openai_body()["error"]["code"]


def test_native_errors_over_the_routes_carry_every_documented_key(make_app):
    app = make_app(
        models=[tiny_entry("tiny_text")], api_key="k", max_body_mb=0.001, default_keep_alive=300
    )
    client = app.test_client()
    auth = {"Authorization": "Bearer k"}
    cases = [
        (client.post("/generate/tiny_text", json={"prompt": 1}, headers=auth), 400),
        (client.post("/generate/tiny_text", data="{", headers=auth), 400),
        (client.post("/generate/tiny_text", json={"prompt": "x"}), 401),
        (client.get("/nowhere", headers=auth), 404),
        (client.post("/generate/nope", json={"prompt": "x"}, headers=auth), 404),
        (client.get("/generate/tiny_text", headers=auth), 405),
        (client.post("/generate/tiny_text", data="x" * 5000, headers=auth), 413),
    ]
    for r, status in cases:
        body = r.get_json()
        assert r.status_code == status, body
        assert set(body) == NATIVE_KEYS, body
        assert body["code"] and body["type"], body


def test_an_unknown_model_404_lists_the_models_in_both_envelopes(app):
    client = app.test_client()
    native = client.post("/generate/nope", json={"prompt": "x"}).get_json()
    chat = {"model": "nope", "messages": [{"role": "user", "content": "x"}]}
    v1 = client.post("/v1/chat/completions", json=chat).get_json()
    retrieve = client.get("/v1/models/nope").get_json()
    for message in (native["error"], v1["error"]["message"], retrieve["error"]["message"]):
        assert "'nope'" in message
        for name in ("tiny_text", "tiny_embed", "tiny_audio"):
            assert name in message, message
    assert native["code"] == v1["error"]["code"] == "model_not_found"


# --- item 12: capabilities of override entries --------------------------------------------------


def test_a_vision_entry_without_capabilities_takes_images(make_app):
    entry = tiny_entry("tiny_vl", generation={"max_new_tokens": 2, "temperature": 0.0})
    del entry["capabilities"]
    client = make_app(models=[entry]).test_client()
    image = base64.b64encode(make_image("PNG")).decode()
    r = client.post("/generate/tiny_vl", json={"prompt": "what is this?", "image": image})
    assert r.status_code == 200, r.get_json()
    model = client.get("/v1/models/tiny_vl").get_json()
    assert set(model["capabilities"]) == {"text", "image", "video"}


def test_fields_a_route_could_only_drop_are_refused(app):
    """Fields that are read but could not be honoured are 400s too, never dropped."""
    client = app.test_client()
    r = client.post("/generate/tiny_text", json={"prompt": "x", "return_audio": True})
    assert r.status_code == 400 and r.get_json()["param"] == "return_audio"
    r = client.post(
        "/v1/chat/completions",
        json={
            "model": "tiny_text",
            "messages": [{"role": "user", "content": "x"}],
            "stream_options": {"include_usage": True},
        },
    )
    assert r.status_code == 400 and r.get_json()["error"]["param"] == "stream_options"
    r = client.post(
        "/v1/audio/transcriptions",
        data={
            "model": "tiny_audio",
            "file": (io.BytesIO(make_audio("wav", seconds=0.5)), "a.wav"),
            "language": "x" * 40,
        },
        content_type="multipart/form-data",
    )
    assert r.status_code == 400 and r.get_json()["error"]["param"] == "language"

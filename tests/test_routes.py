"""Native and admin routes through the Flask test client, on tiny real models."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import tiny_entry


def test_health(client):
    r = client.get("/health")
    assert r.status_code == 200 and r.get_json()["status"] == "ok"
    assert r.headers["X-Request-ID"]


def test_generate_returns_text_and_the_original_fields(client):
    r = client.post("/generate/tiny_text", json={"prompt": "hi", "max_new_tokens": 5})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert isinstance(body["response"], str)
    assert body["model_type"] == "text"
    assert body["generation_method"] == "cpu"
    assert body["memory_optimized"] is False
    assert 0 < body["usage"]["completion_tokens"] <= 5
    assert body["finish_reason"] in ("stop", "length")


def test_generate_greedy_is_deterministic_and_max_tokens_is_honoured(client):
    a = client.post("/generate/tiny_text", json={"prompt": "abc", "max_new_tokens": 6}).get_json()
    b = client.post("/generate/tiny_text", json={"prompt": "abc", "max_new_tokens": 6}).get_json()
    assert a["response"] == b["response"]
    assert a["usage"]["completion_tokens"] <= 6


def test_stream_ndjson_matches_the_whole_answer(client):
    whole = client.post(
        "/generate/tiny_text", json={"prompt": "abc", "max_new_tokens": 8}
    ).get_json()
    r = client.post(
        "/generate/tiny_text", json={"prompt": "abc", "max_new_tokens": 8, "stream": True}
    )
    assert r.status_code == 200 and r.mimetype == "application/x-ndjson"
    lines = [json.loads(line) for line in r.get_data(as_text=True).splitlines() if line]
    assert lines[-1]["done"] is True
    text = "".join(x["response"] for x in lines)
    assert text == whole["response"]
    assert lines[-1]["usage"] == whole["usage"]


@pytest.mark.parametrize(
    "body, param",
    [
        ({}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x", "max_new_tokens": 0}, "max_new_tokens"),
        ({"prompt": "x", "max_new_tokens": "ten"}, "max_new_tokens"),
        ({"prompt": "x", "max_new_tokens": 10**9}, "max_new_tokens"),
        ({"prompt": "x", "temperature": -1}, "temperature"),
        ({"prompt": "x", "temperature": "hot"}, "temperature"),
        ({"prompt": "x", "top_p": 2}, "top_p"),
        ({"prompt": "x", "stream": "yes"}, "stream"),
        ({"prompt": "x", "keep_alive": "soon"}, "keep_alive"),
        ({"prompt": "x", "stop": [1]}, "stop[0]"),
        ({"prompt": "x", "images": "notalist"}, "images"),
    ],
)
def test_bad_parameters_are_400_naming_the_field(client, body, param):
    r = client.post("/generate/tiny_text", json=body)
    assert r.status_code == 400
    data = r.get_json()
    assert data["param"] == param and param in data["error"]
    assert set(data) >= {"error", "details"}


def test_invalid_json_and_non_object(client):
    r = client.post("/generate/tiny_text", data="{nope", content_type="application/json")
    assert r.status_code == 400 and "JSON" in r.get_json()["error"]
    r = client.post("/generate/tiny_text", json=[1, 2])
    assert r.status_code == 400


def test_unknown_model_is_404(client):
    r = client.post("/generate/nope", json={"prompt": "x"})
    assert r.status_code == 404 and "nope" in r.get_json()["error"]


def test_unknown_route_and_method(client):
    assert client.get("/nowhere").status_code == 404
    assert client.get("/generate/tiny_text").status_code == 405


def test_request_id_is_kept(client):
    r = client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert r.headers["X-Request-ID"] == "abc-123"


def test_body_over_the_limit_is_413(make_app):
    client = make_app(max_body_mb=0.001).test_client()
    r = client.post("/generate/tiny_text", json={"prompt": "x" * 5000})
    assert r.status_code == 413


def test_admin_memory_status(client):
    body = client.get("/admin/memory_status").get_json()
    for key in ("timestamp", "gpu_available", "gpu_total_gb", "gpu_allocated_gb", "gpu_free_gb",
                "memory_warning", "multimodal_safe", "system_ram"):  # fmt: skip
        assert key in body
    assert body["gpu_available"] is False


def test_admin_model_status_load_unload(client):
    status = client.get("/admin/model_status").get_json()
    entry = status["models"]["tiny_text"]
    for key in ("type", "path", "path_exists", "quant_bits", "state", "device", "bytes",
                "ref_count", "last_used", "expires_at", "waiting"):  # fmt: skip
        assert key in entry
    assert entry["state"] == "unloaded" and entry["path_exists"] is True
    assert entry["path"] == "models/tiny_text"
    r = client.post("/admin/load/tiny_text", json={"keep_alive": "1m"})
    assert r.status_code == 200 and r.get_json()["state"] == "loaded"
    entry = client.get("/admin/model_status").get_json()["models"]["tiny_text"]
    assert entry["state"] == "loaded" and entry["bytes"] > 0 and entry["device"] == "cpu"
    r = client.post("/admin/unload/tiny_text")
    assert r.get_json()["unloaded"] is True
    assert client.post("/admin/unload/nope").status_code == 404
    assert client.post("/admin/load/nope").status_code == 404


def test_emergency_cleanup_unloads_idle_models_and_temp_files(make_app, tmp_path):
    app = make_app()
    client = app.test_client()
    client.post("/admin/load/tiny_text")
    stray = tmp_path / "tmp" / "leftover.bin"
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes(b"x" * 100)
    assert client.get("/admin/temp_status").get_json()["file_count"] == 1
    body = client.post("/admin/emergency_cleanup").get_json()
    assert [u["model"] for u in body["unloaded"]] == ["tiny_text"]
    assert body["temp"]["removed_files"] == 1 and body["temp"]["removed_bytes"] == 100
    assert not stray.exists()
    assert client.get("/admin/temp_status").get_json()["file_count"] == 0


def test_cleanup_temp_route(make_app, tmp_path):
    client = make_app().test_client()
    (tmp_path / "tmp").mkdir(exist_ok=True)
    (tmp_path / "tmp" / "a").write_bytes(b"12345")
    assert (
        client.post("/admin/cleanup_temp", json={"expired_only": True}).get_json()["removed_files"]
        == 0
    )
    body = client.post("/admin/cleanup_temp").get_json()
    assert body["removed_files"] == 1 and body["status"]["file_count"] == 0


def test_offline_missing_model_404_names_the_command(make_app):
    """Issue 11 item 9: permanent, so 404 model_not_downloaded without Retry-After."""
    client = make_app([tiny_entry("tiny_text", name="ghost", local_dir="ghost")]).test_client()
    r = client.post("/generate/ghost", json={"prompt": "x"})
    assert r.status_code == 404 and r.get_json()["code"] == "model_not_downloaded"
    assert "Retry-After" not in r.headers
    assert r.get_json()["error"].endswith(
        "main.py --models-dir "
        + str(client.application.extensions["mmserve"].settings.models_dir.resolve())
        + " --download ghost"
    )
    r = client.post("/v1/chat/completions", json={"model": "ghost", "messages": [
        {"role": "user", "content": "x"}]})  # fmt: skip
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "model_not_downloaded"


def test_error_bodies_hold_no_paths_or_reprs(make_app, tiny_models_dir):
    client = make_app([tiny_entry("tiny_text", name="ghost", local_dir="ghost")]).test_client()
    text = client.post("/generate/ghost", json={"prompt": "x"}).get_data(as_text=True)
    # the fetch command names the models folder on purpose (it must work as printed)
    text = text.split("fetch it with:")[0]
    assert str(tiny_models_dir) not in text
    assert not re.search(r"0x[0-9a-f]{6,}|Traceback|<.*object at", text)


def test_api_keys(make_app):
    client = make_app(api_key="user-key", admin_key="admin-key").test_client()
    assert client.get("/health").status_code == 200
    r = client.post("/generate/tiny_text", json={"prompt": "x"})
    assert r.status_code == 401 and "error" in r.get_json()
    ok = {"Authorization": "Bearer user-key"}
    assert (
        client.post(
            "/generate/tiny_text", json={"prompt": "x", "max_new_tokens": 2}, headers=ok
        ).status_code
        == 200
    )
    assert client.get("/admin/model_status", headers=ok).status_code == 401
    assert client.get("/admin/model_status", headers={"X-API-Key": "admin-key"}).status_code == 200


def test_text_model_refuses_an_image_before_loading(make_app):
    import base64

    from tests.factories.media import make_image

    app = make_app([tiny_entry("tiny_text")])
    client = app.test_client()
    img = base64.b64encode(make_image("PNG")).decode()
    r = client.post("/generate/tiny_text", json={"prompt": "what?", "image": img})
    assert r.status_code == 400 and r.get_json()["param"] == "image"
    assert app.extensions["mmserve"].manager.status_of("tiny_text")["state"] == "unloaded"


def test_a_stream_closed_before_its_first_item_releases_the_model(make_app):
    from mmserve.types import GenerationRequest, Message, Part, SamplingParams

    rt = make_app([tiny_entry("tiny_text")]).extensions["mmserve"]
    req = GenerationRequest(
        "tiny_text", [Message("user", [Part("text", text="x")])], SamplingParams(max_new_tokens=3)
    )
    stream = rt.service.stream(req)
    assert rt.manager.status_of("tiny_text")["ref_count"] == 1
    stream.close()
    assert rt.manager.status_of("tiny_text")["ref_count"] == 0


def test_streams_waiting_for_a_load_send_status_lines_first(make_app, monkeypatch):
    """Issue 15 item 3: native NDJSON {"status": "loading"} lines and /v1 SSE comment lines
    (ignored by OpenAI clients) while a slow load runs, then the answer."""
    import time

    import mmserve.manager as manager_mod

    real = manager_mod.load_model

    def slow(*args, **kwargs):
        time.sleep(0.8)
        return real(*args, **kwargs)

    monkeypatch.setattr(manager_mod, "load_model", slow)
    client = make_app(stream_status_seconds=0.2).test_client()
    r = client.post("/generate/tiny_text", json={"prompt": "x", "stream": True})
    lines = [json.loads(x) for x in r.get_data(as_text=True).splitlines() if x]
    assert lines[0]["status"] == "loading" and lines[0]["model"] == "tiny_text"
    assert lines[0]["queue_position"] is None  # admitted; waiting for the load itself
    assert lines[-1]["done"] is True
    client.post("/admin/unload/tiny_text")
    body = {"model": "tiny_text", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    text = client.post("/v1/chat/completions", json=body).get_data(as_text=True)
    events = [e for e in text.split("\n\n") if e]
    assert events[0].startswith(': {"status": "loading"')
    assert events[-1] == "data: [DONE]" and any(e.startswith("data: {") for e in events)

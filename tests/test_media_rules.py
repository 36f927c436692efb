"""Media a family's processor or model would refuse, or cut, is a 400 naming the part before any
load (issue 11 item 4, and item 1's audio cut at the Whisper window); what a processor raises on
a request's own data is a 400, never a 500. Tiny real models through every route."""

from __future__ import annotations

import base64
import io

import pytest

from mmserve.errors import BadRequest
from mmserve.families import rules
from mmserve.families.vision import VisionLanguageHandler
from tests.factories.media import make_audio, make_image, make_video


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def state(app, name: str) -> str:
    return app.extensions["mmserve"].manager.status_of(name)["state"]


def chat(client, model: str, *parts):
    content = [*parts, {"type": "text", "text": "What is this?"}]
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 2}
    return client.post("/v1/chat/completions", json=body)


def audio_part(data: bytes) -> dict:
    return {"type": "input_audio", "input_audio": {"data": b64(data), "format": "wav"}}


def image_part(data: bytes) -> dict:
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(data)}}


def oa_error(r, status: int = 400) -> dict:
    assert r.status_code == status, r.get_json()
    return r.get_json()["error"]


def native_error(r, status: int = 400) -> dict:
    assert r.status_code == status, r.get_json()
    return r.get_json()


@pytest.fixture
def app(make_app):
    return make_app()


def test_audio_under_a_tenth_of_a_second_is_refused_on_every_route_before_loading(app):
    """50 ms (800 samples) crashed inside Qwen2-Audio with a 500 on all three routes."""
    client, short = app.test_client(), make_audio("wav", seconds=0.05)
    r = client.post(
        "/v1/audio/transcriptions",
        data={"model": "tiny_audio", "file": (io.BytesIO(short), "a.wav")},
        content_type="multipart/form-data",
    )
    err = oa_error(r)
    assert (err["param"], err["code"]) == ("file", "audio_too_short")
    assert "minimum audio length is 0.1 seconds" in err["message"]
    assert oa_error(chat(client, "tiny_audio", audio_part(short)))["param"] == (
        "messages[0].content[0]"
    )
    r = client.post("/generate/tiny_audio", json={"prompt": "What?", "audio": b64(short)})
    assert native_error(r)["param"] == "audio"
    assert state(app, "tiny_audio") == "unloaded"  # checked before any load
    r = client.post(
        "/v1/audio/transcriptions",
        data={"model": "tiny_audio", "file": (io.BytesIO(make_audio("wav", 0.1)), "a.wav")},
        content_type="multipart/form-data",
    )
    assert r.status_code == 200, r.get_json()


@pytest.mark.parametrize("model", ["tiny_audio", "tiny_omni"])
def test_audio_longer_than_the_feature_extractor_takes_is_refused_not_cut(app, model):
    """The Whisper feature extractor (30 s here) cut longer clips without a word: 31 s and 45 s
    gave the model the same input, status 200."""
    client = app.test_client()
    r = client.post(
        "/generate/" + model, json={"prompt": "What?", "audio": b64(make_audio("wav", 31.0))}
    )
    err = native_error(r)
    assert (err["param"], err["code"]) == ("audio", "audio_too_long")
    assert "at most 30 seconds" in err["error"]
    assert state(app, model) == "unloaded"


def test_omni_takes_very_short_audio(app):
    r = app.test_client().post(
        "/generate/tiny_omni",
        json={"prompt": "What?", "audio": b64(make_audio("wav", 0.01)), "max_new_tokens": 2},
    )
    assert r.status_code == 200, r.get_json()


@pytest.mark.parametrize("model", ["tiny_vl", "tiny_omni"])
def test_qwen_aspect_ratio_over_200_is_refused_before_loading(app, model):
    """qwen-utils' smart_resize raised ValueError inside prepare: a 500."""
    client, wide = app.test_client(), make_image("PNG", (2010, 10))
    err = oa_error(chat(client, model, image_part(make_image()), image_part(wide)))
    assert (err["param"], err["code"]) == ("messages[0].content[1]", "invalid_image")
    assert "aspect ratio" in err["message"]
    r = client.post("/generate/" + model, json={"prompt": "What?", "images": [b64(wide)]})
    assert native_error(r)["param"] == "images[0]"
    assert state(app, model) == "unloaded"


def test_image_too_narrow_for_the_checkpoints_pixel_bounds_is_refused(app):
    """199:1 passes the ratio rule, but the tiny checkpoint's max pixels shrink its short side
    under one 28-pixel patch."""
    r = app.test_client().post(
        "/generate/tiny_vl", json={"prompt": "What?", "image": b64(make_image("PNG", (1990, 10)))}
    )
    err = native_error(r)
    assert (err["param"], err["code"]) == ("image", "invalid_image") and "narrow" in err["error"]


def test_video_frames_follow_the_image_rules(app):
    r = app.test_client().post(
        "/generate/tiny_vl",
        json={"prompt": "What?", "video": b64(make_video("mp4", frames=4, size=(2010, 10)))},
    )
    err = native_error(r)
    assert (err["param"], err["code"]) == ("video", "invalid_video")


def test_every_image_the_rules_accept_runs(app):
    client = app.test_client()
    for size in ((1, 1), (400, 5), (28, 28)):
        r = client.post(
            "/generate/tiny_vl",
            json={"prompt": "What?", "image": b64(make_image("PNG", size)), "max_new_tokens": 2},
        )
        assert r.status_code == 200, (size, r.get_json())


def test_a_processor_error_on_the_requests_data_is_a_400_naming_the_part(app, monkeypatch):
    """Without the family's rule the processor itself refuses the image: 400, not 500."""
    monkeypatch.setattr(
        VisionLanguageHandler, "media_rules", lambda self, spec, path: rules.MediaRules()
    )
    client = app.test_client()
    r = client.post(
        "/generate/tiny_vl", json={"prompt": "What?", "image": b64(make_image("PNG", (2010, 10)))}
    )
    err = native_error(r)
    assert (err["param"], err["code"]) == ("image", "invalid_input")
    assert "aspect ratio" in err["error"]
    r = client.post("/generate/tiny_vl", json={"prompt": "What?", "max_new_tokens": 2})
    assert r.status_code == 200  # the model is still there and serving


class _Handler:
    def __init__(self, exc):
        self.exc = exc

    def prepare(self, lm, req):
        raise self.exc


def _lm(exc):
    from types import SimpleNamespace

    return SimpleNamespace(handler=_Handler(exc), spec=SimpleNamespace(name="m"))


def test_only_data_errors_become_400s():
    from mmserve.types import GenerationRequest, Message, Part

    req = GenerationRequest("m", [Message("user", [Part("text", text="x", field="prompt")])])
    with pytest.raises(BadRequest) as info:
        rules.prepare_inputs(_lm(ValueError("bad size")), req)
    assert info.value.param == "prompt" and "bad size" in info.value.message
    with pytest.raises(BadRequest) as info:  # a path in the message is not shown
        rules.prepare_inputs(_lm(ValueError("cannot open /srv/models/x/y.bin")), req)
    assert "/srv" not in info.value.message
    for server_fault in (KeyError("pixel_values"), AttributeError("x"), MemoryError()):
        with pytest.raises(type(server_fault)):
            rules.prepare_inputs(_lm(server_fault), req)


def test_processor_settings_are_read_from_the_checkpoint_without_loading(tiny_models_dir):
    assert rules.whisper_seconds(tiny_models_dir / "tiny_audio") == 30.0
    assert rules.whisper_seconds(None) == rules.WHISPER_SECONDS
    cfg = rules.processor_config(tiny_models_dir / "tiny_vl", "image_processor")
    assert rules.qwen_factor(cfg) == 28
    assert rules.qwen_pixel_bounds(cfg, (1, 2)) == (3136, 12544)

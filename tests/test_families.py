"""Every media family end to end through POST /generate/<model>, on tiny real models: inputs in
each format, streaming, omni speech output, bad media answered 400 before any model loads, temp
files cleaned up, and the CPU fallback after repeated GPU out-of-memory."""

from __future__ import annotations

import base64
import functools
import io
import json

import pytest
import soundfile as sf
import torch

from mmserve.families import get_handler
from mmserve.models_config import FAMILIES
from tests.conftest import tiny_entry
from tests.factories.media import make_audio, make_bomb_png, make_image, make_video

FIELDS = ("response", "model_type", "generation_method", "memory_optimized")
FULL_OMNI = "Qwen2_5OmniForConditionalGeneration"
SPEECH = {"talker_max_new_tokens": 12, "token2wav_num_steps": 2}  # keeps the tiny talker short


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def post(client, model: str, **body):
    return client.post(f"/generate/{model}", json={"prompt": "What is this?", **body})


def ok(client, model: str, **body) -> dict:
    r = post(client, model, **body)
    assert r.status_code == 200, r.get_json()
    out = r.get_json()
    assert all(key in out for key in FIELDS), out
    assert isinstance(out["response"], str) and out["usage"]["completion_tokens"] > 0
    assert out["generation_method"] == "cpu" and out["memory_optimized"] is False
    return out


def stream(client, model: str, **body) -> list[dict]:
    r = post(client, model, stream=True, **body)
    assert r.status_code == 200 and r.mimetype == "application/x-ndjson"
    lines = [json.loads(line) for line in r.get_data(as_text=True).splitlines() if line]
    assert lines[-1]["done"] is True, lines[-1]
    return lines


def state(app, name: str) -> str:
    return app.extensions["mmserve"].manager.status_of(name)["state"]


def test_every_family_of_the_table_has_a_handler():
    for family in FAMILIES:
        assert get_handler(family).family == family


# --------------------------------------------------------------------------- vision-language


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_vl_answers_about_an_image(make_app, fmt):
    out = ok(make_app().test_client(), "tiny_vl", image=b64(make_image(fmt)))
    assert out["model_type"] == "vision_language"


def test_vl_takes_several_images_at_once(make_app):
    client = make_app().test_client()
    one = ok(client, "tiny_vl", image=b64(make_image("PNG")))
    three = ok(
        client,
        "tiny_vl",
        image=b64(make_image("PNG")),
        images=[b64(make_image("JPEG", (48, 64))), b64(make_image("WEBP"))],
    )
    assert three["usage"]["prompt_tokens"] > one["usage"]["prompt_tokens"]


@pytest.mark.parametrize("fmt", ["mp4", "avi", "mov", "webm"])
def test_vl_answers_about_a_video(make_app, fmt):
    out = ok(make_app().test_client(), "tiny_vl", video=b64(make_video(fmt)))
    assert out["model_type"] == "vision_language"


def test_vl_video_is_sampled_to_max_video_frames(make_app):
    video = b64(make_video("mp4", frames=12))
    few = ok(make_app(max_video_frames=2).test_client(), "tiny_vl", video=video)
    many = ok(make_app(max_video_frames=8).test_client(), "tiny_vl", video=video)
    assert few["usage"]["prompt_tokens"] < many["usage"]["prompt_tokens"]


# --------------------------------------------------------------------------- vqa, audio, omni


def test_vqa_answers_a_question_about_one_image(make_app):
    out = ok(make_app().test_client(), "tiny_vqa", image=b64(make_image("JPEG")))
    assert out["model_type"] == "vqa"
    assert out["usage"]["completion_tokens"] <= 8  # the answer only, not the question


@pytest.mark.parametrize(
    "body, param",
    [
        ({}, "image"),
        ({"images": [b64(make_image("PNG")), b64(make_image("PNG"))]}, "images[1]"),
    ],
    ids=["no-image", "two-images"],
)
def test_vqa_needs_exactly_one_image(make_app, body, param):
    app = make_app()
    r = post(app.test_client(), "tiny_vqa", **body)
    assert r.status_code == 400 and r.get_json()["param"] == param, r.get_json()
    assert state(app, "tiny_vqa") == "unloaded"


@pytest.mark.parametrize("fmt", ["wav", "mp3", "flac", "m4a"])
def test_audio_answers_about_a_clip(make_app, fmt):
    out = ok(
        make_app().test_client(), "tiny_audio", audio=b64(make_audio(fmt)), prompt="Transcribe."
    )
    assert out["model_type"] == "audio"


def test_omni_takes_text_image_audio_and_video_in_one_request(make_app):
    client = make_app().test_client()
    text_only = ok(client, "tiny_omni")
    out = ok(
        client,
        "tiny_omni",
        image=b64(make_image("PNG")),
        audio=b64(make_audio("flac")),
        video=b64(make_video("webm")),
    )
    assert out["model_type"] == "omni" and "audio" not in out
    assert out["usage"]["prompt_tokens"] > text_only["usage"]["prompt_tokens"]


def test_omni_full_model_returns_speech_as_wav(make_app):
    entry = tiny_entry(
        "tiny_omni", loader_class=FULL_OMNI, generation={"max_new_tokens": 4, **SPEECH}
    )
    client = make_app([entry]).test_client()
    out = ok(client, "tiny_omni", image=b64(make_image("PNG")), return_audio=True)
    samples, rate = sf.read(io.BytesIO(base64.b64decode(out["audio"])))
    assert rate == 24000 and samples.ndim == 1 and samples.size > 0
    text = ok(client, "tiny_omni", image=b64(make_image("PNG")))  # text only: no talker run
    assert "audio" not in text and text["response"] == out["response"]
    lines = stream(client, "tiny_omni", video=b64(make_video("mp4")), return_audio=True)
    assert sf.read(io.BytesIO(base64.b64decode(lines[-1]["audio"])))[0].size > 0


def test_omni_thinker_only_refuses_return_audio_before_loading(make_app):
    app = make_app([tiny_entry("tiny_omni")])
    r = post(app.test_client(), "tiny_omni", return_audio=True)
    assert r.status_code == 400 and r.get_json()["param"] == "return_audio"
    assert "talker" in r.get_json()["error"]
    assert state(app, "tiny_omni") == "unloaded"


# --------------------------------------------------------------------------- streaming


@pytest.mark.parametrize(
    "model, media",
    [
        ("tiny_vl", {"image": b64(make_image("PNG"))}),
        ("tiny_vl", {"video": b64(make_video("mp4"))}),
        ("tiny_vqa", {"image": b64(make_image("PNG"))}),
        ("tiny_audio", {"audio": b64(make_audio("wav"))}),
    ],
    ids=["vl-image", "vl-video", "vqa", "audio"],
)
def test_stream_matches_the_whole_answer(make_app, model, media):
    client = make_app().test_client()
    whole = ok(client, model, **media)
    lines = stream(client, model, **media)
    assert "".join(x["response"] for x in lines) == whole["response"]
    assert lines[-1]["usage"] == whole["usage"]
    assert lines[-1]["generation_method"] == "cpu"


# --------------------------------------------------------------------------- bad media


PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


@pytest.mark.parametrize(
    "model, body, settings, param",
    [
        ("tiny_vl", {"image": "not base64 at all!"}, {}, "image"),
        ("tiny_vl", {"images": [b64(make_image()), "%%%"]}, {}, "images[1]"),
        ("tiny_vl", {"image": b64(PDF)}, {}, "image"),
        ("tiny_audio", {"audio": b64(PDF)}, {}, "audio"),
        ("tiny_vl", {"video": b64(PDF)}, {}, "video"),
        ("tiny_vl", {"video": b64(make_audio("wav"))}, {}, "video"),
        ("tiny_vl", {"image": b64(make_image())}, {"max_image_pixels": 1000}, "image"),
        ("tiny_vl", {"image": b64(make_bomb_png())}, {}, "image"),
        ("tiny_audio", {"audio": b64(make_audio("wav", 2.0))}, {"max_audio_seconds": 1}, "audio"),
        ("tiny_vl", {"video": b64(make_video("mp4"))}, {"max_video_mb": 0.001}, "video"),
        ("tiny_vl", {"video": b64(make_video("mp4"))}, {"max_video_seconds": 1}, "video"),
        ("tiny_vl", {"images": [b64(make_image())] * 3}, {"max_images": 2}, "images"),
        ("tiny_audio", {"image": b64(make_image())}, {}, "image"),
        ("tiny_vl", {"audio": b64(make_audio("wav"))}, {}, "audio"),
        ("tiny_vqa", {"image": b64(make_image()), "video": b64(make_video())}, {}, "video"),
        ("tiny_vl", {"image": b64(make_image()), "raw": True}, {}, "raw"),
    ],
    ids=[
        "bad-base64", "bad-base64-in-list", "pdf-as-image", "pdf-as-audio", "pdf-as-video",
        "audio-as-video", "image-pixels", "bomb-png", "audio-seconds", "video-mb",
        "video-seconds", "max-images", "image-to-audio-model", "audio-to-vl-model",
        "video-to-vqa-model", "raw-with-media",
    ],  # fmt: skip
)
def test_bad_media_is_400_naming_the_field_and_loads_nothing(
    make_app, model, body, settings, param
):
    app = make_app(**settings)
    r = post(app.test_client(), model, **body)
    assert r.status_code == 400, r.get_json()
    assert r.get_json()["param"] == param, r.get_json()
    assert state(app, model) == "unloaded"


# --------------------------------------------------------------------------- temp files


def test_tmp_is_empty_after_success_and_failure(make_app, tmp_path, monkeypatch):
    from transformers import Qwen2_5_VLForConditionalGeneration

    app = make_app([tiny_entry("tiny_vl")])
    client, tmp = app.test_client(), tmp_path / "tmp"
    video = make_video("mp4", frames=24)
    ok(client, "tiny_vl", video=b64(video))
    assert list(tmp.iterdir()) == []
    broken = video[:48] + bytes(len(video) - 96) + video[-48:]  # header intact, data zeroed
    r = post(client, "tiny_vl", video=b64(broken))
    assert r.status_code == 400 and r.get_json()["param"] == "video", r.get_json()
    assert list(tmp.iterdir()) == []

    @functools.wraps(Qwen2_5_VLForConditionalGeneration.forward)
    def fault(self, *args, **kwargs):
        raise RuntimeError("injected fault at /secret/path")

    monkeypatch.setattr(Qwen2_5_VLForConditionalGeneration, "forward", fault)
    r = post(client, "tiny_vl", video=b64(video))
    assert r.status_code == 500 and "secret" not in r.get_data(as_text=True)
    assert list(tmp.iterdir()) == []


# --------------------------------------------------------------------------- CPU fallback


@pytest.fixture
def vl_oom(monkeypatch):
    """Make the next N forward() calls of the tiny VL model raise CUDA out-of-memory."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    state = {"left": 0, "raised": 0}
    real = Qwen2_5_VLForConditionalGeneration.forward

    @functools.wraps(real)  # generate() validates its kwargs against forward's signature
    def faulty(self, *args, **kwargs):
        if state["left"] > 0:
            state["left"] -= 1
            state["raised"] += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Qwen2_5_VLForConditionalGeneration, "forward", faulty)
    return state


def test_second_gpu_oom_falls_back_to_the_cpu_and_says_so(make_app, vl_oom):
    app = make_app([tiny_entry("tiny_vl"), tiny_entry("tiny_text")])
    client = app.test_client()
    client.post("/admin/load/tiny_text")
    image = b64(make_image("PNG"))
    vl_oom["left"] = 2
    r = post(client, "tiny_vl", image=image)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["generation_method"] == "cpu_fallback" and vl_oom["raised"] == 2
    assert state(app, "tiny_text") == "unloaded"  # step 1 evicted the idle model first
    assert app.extensions["mmserve"].manager.status_of("tiny_vl")["ref_count"] == 0
    vl_oom["left"] = 2
    lines = stream(client, "tiny_vl", image=image)
    assert lines[-1]["generation_method"] == "cpu_fallback", lines[-1]
    assert ok(client, "tiny_vl", image=image)["generation_method"] == "cpu"


def test_no_cpu_fallback_when_the_configuration_forbids_it(make_app, vl_oom):
    client = make_app([tiny_entry("tiny_vl")], allow_cpu_fallback=False).test_client()
    vl_oom["left"] = 2
    r = post(client, "tiny_vl", image=b64(make_image("PNG")))
    assert r.status_code == 503 and r.get_json()["code"] == "out_of_memory"
    assert "CUDA" not in r.get_data(as_text=True)

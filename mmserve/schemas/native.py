"""The native JSON contract: POST /generate/<model> bodies into GenerationRequests, and
POST /embed/<model> bodies."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import BadRequest
from ..media import MediaLimits, decode_base64, load_audio, load_image, load_video
from ..types import GenerationRequest, Message, Part, SamplingParams
from .fields import (
    get_bool,
    get_float,
    get_inputs,
    get_int,
    get_keep_alive,
    get_stop,
    get_str,
    require_object,
)

MAX_EMBED_INPUTS = 2048  # texts in one embedding request


@dataclass
class EmbedCall:
    """A parsed POST /embed/<model> body (Ollama's /api/embed fields)."""

    texts: list[str]
    fields: list[str]  # `input`, or `input[i]` for a list
    truncate: bool  # cut inputs over the model's limit instead of refusing them
    keep_alive: float | None


def parse_embed(body) -> EmbedCall:
    """`input` (a string or a list), `truncate` (default false) and `keep_alive`."""
    body = require_object(body)
    texts = get_inputs(body, MAX_EMBED_INPUTS)
    return EmbedCall(
        texts=[t for _, t in texts],
        fields=[f for f, _ in texts],
        truncate=get_bool(body, "truncate"),
        keep_alive=get_keep_alive(body),
    )


def media_limits(settings) -> MediaLimits:
    """The media limits of the settings."""
    return MediaLimits(
        max_image_pixels=settings.max_image_pixels,
        max_images=settings.max_images,
        max_audio_seconds=settings.max_audio_seconds,
        max_video_bytes=int(settings.max_video_mb * 1024 * 1024),
        max_video_seconds=settings.max_video_seconds,
        max_video_frames=settings.max_video_frames,
    )


def decode_media(kind: str, data: str, field: str, limits: MediaLimits, tmp_dir: Path) -> Part:
    """Decode one base64 item into a Part of the given kind (image, audio or video)."""
    if not isinstance(data, str):
        raise BadRequest(f"'{field}' must be a base64 string", param=field)
    raw = decode_base64(data, field)
    if kind == "image":
        return Part("image", data=load_image(raw, field, limits), field=field)
    if kind == "audio":
        return Part("audio", data=load_audio(raw, field, limits, tmp_dir), field=field)
    return Part("video", data=load_video(raw, field, limits, tmp_dir), field=field)


def sampling_from(body: dict, settings) -> SamplingParams:
    """Sampling parameters of a native body, bounded by the settings."""
    limit = settings.max_new_tokens_limit
    return SamplingParams(
        max_new_tokens=get_int(body, "max_new_tokens", lo=1, hi=limit),
        temperature=get_float(body, "temperature", lo=0.0, hi=2.0),
        top_p=get_float(body, "top_p", lo=0.0, hi=1.0),
        top_k=get_int(body, "top_k", lo=0, hi=100000),
        repetition_penalty=get_float(body, "repetition_penalty", lo=0.01, hi=10.0),
        stop=get_stop(body, settings.max_stop),
        seed=get_int(body, "seed", lo=0, hi=2**63 - 1),
    )


def parse_generate(model: str, body, settings, tmp_dir: Path) -> tuple[GenerationRequest, bool]:
    """The request and whether it streams. Media is decoded and checked against the limits."""
    body = require_object(body)
    limits = media_limits(settings)
    prompt = get_str(body, "prompt", required=True, allow_empty=False)
    system = get_str(body, "system")
    stream = get_bool(body, "stream")
    parts: list[Part] = []
    images = []
    if body.get("image") is not None:
        images.append(("image", body["image"]))
    if body.get("images") is not None:
        if not isinstance(body["images"], list):
            raise BadRequest("'images' must be a list of base64 strings", param="images")
        images += [(f"images[{i}]", item) for i, item in enumerate(body["images"])]
    if len(images) > limits.max_images:
        raise BadRequest(
            f"too many images: {len(images)} > max_images={limits.max_images}",
            param="images",
            code="limit_exceeded",
        )
    for field, item in images:
        parts.append(decode_media("image", item, field, limits, tmp_dir))
    for kind in ("audio", "video"):
        if body.get(kind) is not None:
            parts.append(decode_media(kind, body[kind], kind, limits, tmp_dir))
    parts.append(Part("text", text=prompt, field="prompt"))
    messages = []
    if system:
        messages.append(Message("system", [Part("text", text=system, field="system")]))
    messages.append(Message("user", parts))
    req = GenerationRequest(
        model=model,
        messages=messages,
        params=sampling_from(body, settings),
        keep_alive=get_keep_alive(body),
        raw_prompt=get_bool(body, "raw"),
        return_audio=get_bool(body, "return_audio"),
    )
    return req, stream

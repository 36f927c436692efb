"""The native JSON contract: POST /generate/<model> bodies into GenerationRequests, and
POST /embed/<model> bodies."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from ..errors import BadRequest
from ..media import MediaLimits, decode_base64, load_audio, load_image, load_video
from ..types import GenerationRequest, Message, Part, SamplingParams
from .fields import get_inputs, get_keep_alive
from .openai_requests import Tool, ToolChoice, check_schema, check_tools
from .typed import Strict, validate

MAX_EMBED_INPUTS = 2048  # texts in one embedding request


class GenerateRequest(Strict):
    """POST /generate/<model> (Ollama's /api/generate fields where they exist)."""

    prompt: Annotated[str, Field(min_length=1)]
    system: str | None = None
    image: str | None = Field(None, description="One base64 image")
    images: list[str] | None = Field(None, description="Base64 images")
    audio: str | None = Field(None, description="Base64 audio (wav, mp3, flac, ogg)")
    video: str | None = Field(None, description="Base64 video")
    stream: bool = False
    raw: bool = Field(False, description="Feed the prompt as is, without the chat template")
    return_audio: bool = Field(False, description="omni: also answer speech (base64 WAV)")
    max_new_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=0, le=100000)] | None = None
    repetition_penalty: Annotated[float, Field(ge=0.01, le=10.0)] | None = None
    stop: str | list[str] | None = None
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] | None = None
    keep_alive: str | int | float | None = None
    format: Literal["json"] | dict | None = Field(
        None, description='Ollama\'s format: "json" (any JSON object) or a JSON Schema'
    )
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None

    @model_validator(mode="after")
    def _output_rules(self):
        if isinstance(self.format, dict):
            check_schema(self.format, "format")
        check_tools(self.tools, self.tool_choice)
        return self

    def response_format(self) -> dict | None:
        if self.format is None:
            return None
        if self.format == "json":
            return {"type": "json_object"}
        return {"type": "json_schema", "schema": self.format}


class EmbedRequest(Strict):
    """POST /embed/<model> (Ollama's /api/embed fields)."""

    input: str | list[str] | list[int] | None = None
    truncate: bool = False
    keep_alive: str | int | float | None = None


@dataclass
class EmbedCall:
    """A parsed POST /embed/<model> body (Ollama's /api/embed fields)."""

    texts: list[str]
    fields: list[str]  # `input`, or `input[i]` for a list
    truncate: bool  # cut inputs over the model's limit instead of refusing them
    keep_alive: float | None


def parse_embed(body) -> EmbedCall:
    """`input` (a string or a list), `truncate` (default false) and `keep_alive`."""
    req = validate(EmbedRequest, body)
    texts = get_inputs({"input": req.input}, MAX_EMBED_INPUTS)
    return EmbedCall(
        texts=[t for _, t in texts],
        fields=[f for f, _ in texts],
        truncate=req.truncate,
        keep_alive=get_keep_alive({"keep_alive": req.keep_alive}),
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


def sampling_from(req: GenerateRequest, settings) -> SamplingParams:
    """Sampling parameters of a validated native body, bounded by the settings."""
    from .openai import stop_list

    limit = settings.max_new_tokens_limit
    if req.max_new_tokens is not None and req.max_new_tokens > limit:
        raise BadRequest(f"'max_new_tokens' must be at most {limit}", param="max_new_tokens")
    return SamplingParams(
        max_new_tokens=req.max_new_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        repetition_penalty=req.repetition_penalty,
        stop=stop_list(req.stop, settings.max_stop),
        seed=req.seed,
    )


def parse_generate(model: str, body, settings, tmp_dir: Path) -> tuple[GenerationRequest, bool]:
    """The request and whether it streams. Media is decoded and checked against the limits."""
    req = validate(GenerateRequest, body)
    limits = media_limits(settings)
    if not req.prompt.strip():
        raise BadRequest("'prompt' must not be empty", param="prompt")
    parts: list[Part] = []
    images = []
    if req.image is not None:
        images.append(("image", req.image))
    images += [(f"images[{i}]", item) for i, item in enumerate(req.images or [])]
    if len(images) > limits.max_images:
        raise BadRequest(
            f"too many images: {len(images)} > max_images={limits.max_images}",
            param="images",
            code="limit_exceeded",
        )
    for field, item in images:
        parts.append(decode_media("image", item, field, limits, tmp_dir))
    for kind in ("audio", "video"):
        if getattr(req, kind) is not None:
            parts.append(decode_media(kind, getattr(req, kind), kind, limits, tmp_dir))
    parts.append(Part("text", text=req.prompt, field="prompt"))
    messages = []
    if req.system:
        messages.append(Message("system", [Part("text", text=req.system, field="system")]))
    messages.append(Message("user", parts))
    out = GenerationRequest(
        model=model,
        messages=messages,
        params=sampling_from(req, settings),
        keep_alive=get_keep_alive({"keep_alive": req.keep_alive}),
        raw_prompt=req.raw,
        return_audio=req.return_audio,
        response_format=req.response_format(),
        format_param="format",
        tools=[t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None,
        tool_choice=_choice(req.tool_choice),
    )
    return out, req.stream


def _choice(choice) -> str | dict:
    if choice is None:
        return "auto"
    return choice if isinstance(choice, str) else choice.model_dump()

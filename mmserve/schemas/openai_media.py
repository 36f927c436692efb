"""Media of the /v1 API: chat message parts (data URIs decoded, allowed http(s) URLs fetched
under the host allow-list, each a `Part` naming its field) and /v1/audio/transcriptions forms."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadRequest, to_server_error
from ..media import AUDIO_FORMATS, MediaError
from ..remote_media import fetch_remote
from ..types import GenerationRequest, Message, Part, SamplingParams
from .fields import get_keep_alive, get_str
from .native import decode_media, media_limits

_MEDIA_PARTS = {"image_url": "image", "video_url": "video"}
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
TRANSCRIPTION_FORMATS = ("json", "text")
DEFAULT_TRANSCRIBE_PROMPT = "Transcribe the audio."


@dataclass
class TranscriptionCall:
    """A parsed /v1/audio/transcriptions form."""

    request: GenerationRequest
    response_format: str


class MediaReader:
    """Turns the media of one request into Parts: data URIs decoded, allowed URLs fetched."""

    def __init__(self, settings, tmp_dir: Path, fetch=fetch_remote):
        self.settings = settings
        self.limits = media_limits(settings)
        self.tmp_dir = tmp_dir
        self.fetch = fetch
        self.images = 0

    def part(self, kind: str, source, field: str) -> Part:
        """One decoded Part; `source` is a data URI, base64 or an http(s) URL."""
        if kind == "image":
            self.images += 1
            if self.images > self.limits.max_images:
                raise BadRequest(
                    f"too many images: the limit is max_images={self.limits.max_images}",
                    param=field,
                    code="limit_exceeded",
                )
        if not isinstance(source, str) or not source.strip():
            raise BadRequest(f"'{field}' needs a non-empty url", param=field)
        source = source.strip()
        lowered = source[:8].lower()
        if lowered.startswith(("http://", "https://")):
            cap = self.limits.max_video_bytes if kind == "video" else self.limits.max_media_bytes
            raw = self.fetch(source, field, self.settings.remote_media_hosts, cap)
            source = base64.b64encode(raw).decode("ascii")
        elif _SCHEME.match(source) and not lowered.startswith("data:"):
            raise BadRequest(f"'{field}' must be a base64 data URI or an http(s) URL", param=field)
        try:
            return decode_media(kind, source, field, self.limits, self.tmp_dir)
        except MediaError as exc:
            raise to_server_error(exc) from None


def _url_of(part) -> str:
    """The url of an image_url/video_url part ({"url": ...}, or a bare string)."""
    value = getattr(part, part.type)
    return value if isinstance(value, str) else value.url


def content_part(item, path: str, role: str, media: MediaReader) -> Part:
    """One validated content part as a Part; media only in user messages."""
    if item.type == "text":
        return Part("text", text=item.text, field=path)
    if role != "user":
        raise BadRequest(f"'{path}': only user messages may hold media", param=path)
    if item.type in _MEDIA_PARTS:
        return media.part(_MEDIA_PARTS[item.type], _url_of(item), path)
    fmt = item.input_audio.format
    if fmt is not None and fmt.lower() not in AUDIO_FORMATS:
        raise BadRequest(
            f"'{path}.input_audio.format' must be one of {', '.join(AUDIO_FORMATS)}",
            param=f"{path}.input_audio.format",
        )
    return media.part("audio", item.input_audio.data, path)


# --------------------------------------------------------------------------- transcriptions


def parse_transcription(form, files, settings, tmp_dir: Path, lookup) -> TranscriptionCall:
    """POST /v1/audio/transcriptions (multipart): the audio as a chat request to an audio model."""
    model = get_str(form, "model", required=True, allow_empty=False)
    spec = lookup(model)
    if "audio" not in spec.capabilities:
        raise BadRequest(f"model '{model}' does not accept audio input", param="model")
    upload = files.get("file")
    if upload is None:
        raise BadRequest("'file' is required: the audio to transcribe", param="file")
    response_format = form.get("response_format") or "json"
    if response_format not in TRANSCRIPTION_FORMATS:
        raise BadRequest(
            f"'response_format' must be one of {', '.join(TRANSCRIPTION_FORMATS)}",
            param="response_format",
        )
    limits = media_limits(settings)
    data = upload.read(limits.max_media_bytes + 1)
    if not data:
        raise BadRequest("'file' is empty", param="file")
    encoded = base64.b64encode(data).decode("ascii")  # limits are checked by the decoder
    try:
        audio = decode_media("audio", encoded, "file", limits, tmp_dir)
    except MediaError as exc:
        raise to_server_error(exc) from None
    instruction = form.get("prompt") or DEFAULT_TRANSCRIBE_PROMPT
    language = form.get("language")
    if language:
        instruction += f" The speech is in the language '{language[:32]}'."
    temperature = form.get("temperature")
    try:
        temperature = float(temperature) if temperature not in (None, "") else None
    except ValueError:
        raise BadRequest("'temperature' must be a number", param="temperature") from None
    if temperature is not None and not 0.0 <= temperature <= 2.0:
        raise BadRequest("'temperature' must be between 0 and 2", param="temperature")
    params = SamplingParams(temperature=temperature)
    text = Part("text", text=instruction, field="prompt")
    request = GenerationRequest(
        model=model,
        messages=[Message("user", [audio, text])],
        params=params,
        keep_alive=get_keep_alive(form),
        endpoint="openai",
    )
    return TranscriptionCall(request, response_format)

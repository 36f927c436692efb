"""The OpenAI JSON contract: /v1 bodies into GenerationRequests (param paths on every error),
remote media fetched under a host allow-list, and the response objects of each endpoint."""

from __future__ import annotations

import base64
import dataclasses
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadRequest, to_server_error
from ..logprobs import MAX_TOP_CHAT, MAX_TOP_LEGACY, chat_content, join_legacy, legacy
from ..media import AUDIO_FORMATS, MediaError
from ..reasoning import split_reasoning
from ..remote_media import fetch_remote
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
from .native import MAX_EMBED_INPUTS, decode_media, media_limits

REASONING_FORMATS = ("reasoning_content", "reasoning", "none", "merged")
_REASONING_KEYS = {"reasoning_content": "reasoning_content", "reasoning": "reasoning"}
TRANSCRIPTION_FORMATS = ("json", "text")
DEFAULT_TRANSCRIBE_PROMPT = "Transcribe the audio."
MAX_PROMPTS = 32  # prompts in one /v1/completions request
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_MEDIA_PARTS = {"image_url": "image", "video_url": "video"}
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")

# Fields of the OpenAI API this server does not implement, with the values that mean "off".
# None is always accepted; anything else is a 400 naming the field.
_CHAT_UNSUPPORTED = {
    "response_format": ({"type": "text"},),
    "tools": ([],),
    "tool_choice": ("none", "auto"),
    "functions": ([],),
    "function_call": ("none", "auto"),
    "modalities": (["text"],),
    "audio": (),
    "prediction": (),
    "web_search_options": (),
}
_COMPLETION_UNSUPPORTED = {
    "best_of": (1,),
    "suffix": ("",),
}


@dataclass
class ChatCall:
    """A parsed /v1/chat/completions body."""

    request: GenerationRequest
    stream: bool
    include_usage: bool
    reasoning_format: str

    @property
    def reasoning_key(self) -> str | None:
        """The message field reasoning goes to; None leaves it in the content."""
        return _REASONING_KEYS.get(self.reasoning_format)


@dataclass
class CompletionCall:
    """A parsed /v1/completions body."""

    requests: list[GenerationRequest]  # one per prompt, in the order of the choices
    stream: bool
    include_usage: bool
    echo: bool = False


@dataclass
class EmbeddingCall:
    """A parsed /v1/embeddings body."""

    model: str
    texts: list[str]
    encoding_format: str
    dimensions: int | None
    keep_alive: float | None
    truncate: bool = False  # cut inputs over the model's limit instead of refusing them
    fields: list[str] = dataclasses.field(default_factory=list)  # `input`, `input[1]`, ...


@dataclass
class TranscriptionCall:
    """A parsed /v1/audio/transcriptions form."""

    request: GenerationRequest
    response_format: str


# --------------------------------------------------------------------------- common fields


def _same(value, off) -> bool:
    """Equal, with booleans never standing in for numbers (False is not 0 here)."""
    return isinstance(value, bool) == isinstance(off, bool) and value == off


def reject_unsupported(body: dict, fields: dict) -> None:
    """400 naming the first field given a value this server cannot honour."""
    for key, off in fields.items():
        value = body.get(key)
        if value is not None and not any(_same(value, o) for o in off):
            raise BadRequest(
                f"'{key}' is not supported by this server", param=key, code="unsupported_parameter"
            )


def sampling(body: dict, settings, min_tokens: int = 1) -> SamplingParams:
    """Sampling parameters; max_completion_tokens wins over the older max_tokens
    (`min_tokens` 0: /v1/completions with echo, which may only score the prompt)."""
    limit = settings.max_new_tokens_limit
    max_tokens = get_int(body, "max_tokens", lo=min_tokens, hi=limit)
    max_completion = get_int(body, "max_completion_tokens", lo=1, hi=limit)
    return SamplingParams(
        max_new_tokens=max_completion if max_completion is not None else max_tokens,
        temperature=get_float(body, "temperature", lo=0.0, hi=2.0),
        top_p=get_float(body, "top_p", lo=0.0, hi=1.0),
        top_k=get_int(body, "top_k", lo=0, hi=100000),
        repetition_penalty=get_float(body, "repetition_penalty", lo=0.01, hi=10.0),
        stop=get_stop(body, settings.max_stop),
        seed=get_int(body, "seed", lo=-(2**63), hi=2**64 - 1),
        presence_penalty=get_float(body, "presence_penalty", lo=-2.0, hi=2.0),
        frequency_penalty=get_float(body, "frequency_penalty", lo=-2.0, hi=2.0),
        logit_bias=logit_bias(body.get("logit_bias")),
        n=get_int(body, "n", 1, lo=1, hi=settings.max_n),
    )


def logit_bias(raw) -> dict[int, float]:
    """OpenAI's `logit_bias`: {"token id": bias -100..100}; ids are checked against the
    model's vocabulary once it is loaded (`InferenceService._prepare`)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadRequest("'logit_bias' must be an object of token id -> bias", param="logit_bias")
    out = {}
    for key in raw:
        param = f"logit_bias.{key}"
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise BadRequest(f"'{param}': keys must be token ids", param=param) from None
        out[token] = get_float(raw, key, lo=-100.0, hi=100.0, param=param)
    return out


def _model(body: dict, lookup=None) -> str:
    """The required model name; `lookup` (the manager's spec) makes an unknown one a 404."""
    model = get_str(body, "model", required=True, allow_empty=False)
    if lookup is not None:
        lookup(model)  # 404 model_not_found before any media is decoded or fetched
    return model


def _stream_flags(body: dict) -> tuple[bool, bool]:
    """(stream, stream_options.include_usage)."""
    stream = get_bool(body, "stream")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", param="stream_options")
    return stream, get_bool(options, "include_usage", param="stream_options.include_usage")


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


# --------------------------------------------------------------------------- chat


def _url_of(item: dict, key: str, path: str):
    """The url of an image_url/video_url part ({"url": ...}, or a bare string)."""
    value = item.get(key)
    if isinstance(value, dict):
        return value.get("url")
    if isinstance(value, str):
        return value
    raise BadRequest(f"'{path}.{key}' must be an object with a 'url'", param=f"{path}.{key}")


def _part(item, path: str, role: str, media: MediaReader) -> Part:
    """One content part; media only in user messages."""
    if not isinstance(item, dict):
        raise BadRequest(f"'{path}' must be an object", param=path)
    kind = item.get("type")
    if kind == "text":
        return Part(
            "text", text=get_str(item, "text", required=True, param=f"{path}.text"), field=path
        )
    if kind not in (*_MEDIA_PARTS, "input_audio"):
        raise BadRequest(
            f"content part type {kind!r} is not supported (text, image_url, input_audio, video_url)",
            param=f"{path}.type",
        )
    if role != "user":
        raise BadRequest(f"'{path}': only user messages may hold media", param=path)
    if kind in _MEDIA_PARTS:
        return media.part(_MEDIA_PARTS[kind], _url_of(item, kind, path), path)
    audio = item.get("input_audio")
    if not isinstance(audio, dict):
        raise BadRequest(
            f"'{path}.input_audio' must be an object with 'data' and 'format'",
            param=f"{path}.input_audio",
        )
    fmt = get_str(audio, "format", param=f"{path}.input_audio.format")
    if fmt is not None and fmt.lower() not in AUDIO_FORMATS:
        raise BadRequest(
            f"'{path}.input_audio.format' must be one of {', '.join(AUDIO_FORMATS)}",
            param=f"{path}.input_audio.format",
        )
    return media.part("audio", audio.get("data"), path)


def _message(raw, path: str, media: MediaReader) -> Message:
    """One message; developer is an alias of system; tool calls are not supported."""
    if not isinstance(raw, dict):
        raise BadRequest(f"'{path}' must be an object", param=path)
    role = raw.get("role")
    if role not in _ROLES:
        raise BadRequest(
            f"'{path}.role' must be system, user or assistant (got {role!r})", param=f"{path}.role"
        )
    for key in ("tool_calls", "function_call", "tool_call_id"):
        if raw.get(key):
            raise BadRequest(
                f"'{path}.{key}' is not supported",
                param=f"{path}.{key}",
                code="unsupported_parameter",
            )
    content = raw.get("content")
    if isinstance(content, str):
        return Message(_ROLES[role], [Part("text", text=content, field=f"{path}.content")])
    if not isinstance(content, list) or not content:
        raise BadRequest(
            f"'{path}.content' must be a string or a non-empty list of parts",
            param=f"{path}.content",
        )
    parts = [_part(item, f"{path}.content[{j}]", role, media) for j, item in enumerate(content)]
    return Message(_ROLES[role], parts)


def parse_chat(body, settings, tmp_dir: Path, lookup=None, fetch=fetch_remote) -> ChatCall:
    """POST /v1/chat/completions. `chat_template` and unknown fields are ignored."""
    body = require_object(body)
    model = _model(body, lookup)
    stream, include_usage = _stream_flags(body)
    reject_unsupported(body, _CHAT_UNSUPPORTED)
    reasoning_format = get_str(body, "reasoning_format", "reasoning_content")
    if reasoning_format not in REASONING_FORMATS:
        raise BadRequest(
            f"'reasoning_format' must be one of {', '.join(REASONING_FORMATS)}",
            param="reasoning_format",
        )
    params = sampling(body, settings)
    top = get_int(body, "top_logprobs", lo=0, hi=MAX_TOP_CHAT)
    if get_bool(body, "logprobs"):
        params.logprobs = top or 0
    elif top:
        raise BadRequest("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    keep_alive = get_keep_alive(body)
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise BadRequest("'messages' must be a non-empty list", param="messages")
    media = MediaReader(settings, tmp_dir, fetch)
    messages = [_message(m, f"messages[{i}]", media) for i, m in enumerate(raw)]
    request = GenerationRequest(
        model=model, messages=messages, params=params, keep_alive=keep_alive, endpoint="openai"
    )
    return ChatCall(request, stream, include_usage, reasoning_format)


# --------------------------------------------------------------------------- completions


def _prompts(body: dict) -> list[tuple[str, str | None, list[int] | None]]:
    """(field, text, token ids) per prompt: a string, a list of strings, a list of token
    ids, or a list of such lists."""
    prompt = body.get("prompt")

    def is_ids(value) -> bool:
        return (
            isinstance(value, list)
            and bool(value)
            and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
        )

    if isinstance(prompt, str):
        return [("prompt", prompt, None)]
    if is_ids(prompt):
        return [("prompt", None, prompt)]
    if isinstance(prompt, list) and prompt:
        out = []
        for i, p in enumerate(prompt):
            if isinstance(p, str):
                out.append((f"prompt[{i}]", p, None))
            elif is_ids(p):
                out.append((f"prompt[{i}]", None, p))
            else:
                raise BadRequest(
                    f"'prompt[{i}]' must be a string or a non-empty list of token ids",
                    param=f"prompt[{i}]",
                )
        return out
    raise BadRequest(
        "'prompt' must be a string, a list of strings, a list of token ids or a list of such "
        "lists",
        param="prompt",
    )


def parse_completion(body, settings, lookup=None) -> CompletionCall:
    """POST /v1/completions: one raw-prompt request per prompt (text or token ids).

    `logprobs` k (0-5) gives the legacy logprobs object; `echo` puts the prompt before the
    completion (with its tokens' logprobs when `logprobs` is set); with echo, `max_tokens` 0
    only scores the prompt (the loglikelihood call of eval harnesses)."""
    body = require_object(body)
    model = _model(body, lookup)
    stream, include_usage = _stream_flags(body)
    reject_unsupported(body, _COMPLETION_UNSUPPORTED)
    prompts = _prompts(body)
    if len(prompts) > MAX_PROMPTS:
        raise BadRequest(
            f"at most {MAX_PROMPTS} prompts per request", param="prompt", code="limit_exceeded"
        )
    for field, text, _ in prompts:
        if text == "":
            raise BadRequest(f"'{field}' must not be empty", param=field)
    if stream and len(prompts) > 1:
        raise BadRequest("streaming takes a single prompt", param="prompt")
    echo = get_bool(body, "echo")
    params = sampling(body, settings, min_tokens=0 if echo else 1)
    if isinstance(body.get("logprobs"), bool):
        raise BadRequest("'logprobs' must be an integer 0-5 here", param="logprobs")
    params.logprobs = get_int(body, "logprobs", lo=0, hi=MAX_TOP_LEGACY)
    if echo and params.logprobs is not None:
        params.prompt_logprobs = params.logprobs
    if echo and stream:
        raise BadRequest("'echo' cannot be streamed here", param="echo")
    keep_alive = get_keep_alive(body)
    requests = [
        GenerationRequest(
            model=model,
            messages=[Message("user", [Part("text", text=text or "", field=field)])],
            params=dataclasses.replace(
                params, stop=list(params.stop), logit_bias=dict(params.logit_bias)
            ),
            keep_alive=keep_alive,
            raw_prompt=True,
            endpoint="openai",
            prompt_ids=ids,
        )
        for field, text, ids in prompts
    ]
    return CompletionCall(requests, stream, include_usage, echo)


# --------------------------------------------------------------------------- embeddings


def parse_embeddings(body, lookup=None) -> EmbeddingCall:
    """POST /v1/embeddings: text inputs only; `truncate` (TEI's and Ollama's field) cuts an
    input longer than the model takes instead of refusing it."""
    body = require_object(body)
    model = _model(body, lookup)
    texts = get_inputs(body, MAX_EMBED_INPUTS)
    encoding = get_str(body, "encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise BadRequest("'encoding_format' must be float or base64", param="encoding_format")
    return EmbeddingCall(
        model=model,
        texts=[t for _, t in texts],
        encoding_format=encoding,
        dimensions=get_int(body, "dimensions", lo=1),
        keep_alive=get_keep_alive(body),
        truncate=get_bool(body, "truncate"),
        fields=[f for f, _ in texts],
    )


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
    params = sampling({"temperature": temperature}, settings)
    text = Part("text", text=instruction, field="prompt")
    request = GenerationRequest(
        model=model,
        messages=[Message("user", [audio, text])],
        params=params,
        keep_alive=get_keep_alive(form),
        endpoint="openai",
    )
    return TranscriptionCall(request, response_format)


# --------------------------------------------------------------------------- responses


def new_id(prefix: str) -> str:
    """A fresh response id such as chatcmpl-<hex>."""
    return f"{prefix}-{uuid.uuid4().hex}"


def finish_reason(result) -> str:
    """OpenAI knows stop and length; a cancelled generation ended on our side: stop."""
    return "length" if result.finish_reason == "length" else "stop"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    """The usage object, from the service's own token counts."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def envelope(obj: str, rid: str, model: str, choices: list, **extra) -> dict:
    """The fields every completion object and chunk shares."""
    body = {"id": rid, "object": obj, "created": int(time.time()), "model": model}
    return {**body, "choices": choices, **extra}


def chat_message(text: str, key: str | None, opened: bool) -> dict:
    """One choice's assistant message; reasoning moved to `key` when it is set."""
    message = {"role": "assistant", "content": text}
    if key:
        reasoning, message["content"] = split_reasoning(text, opened or None)
        if reasoning:
            message[key] = reasoning
    return message


def chat_completion(result, model: str, key: str | None, opened: bool) -> dict:
    """The chat.completion object: one choice per row of the request (n)."""
    choices = [
        {
            "index": c.index,
            "message": chat_message(c.text, key, opened),
            "logprobs": chat_content(c.logprobs),
            "finish_reason": finish_reason(c),
        }
        for c in result.choices
    ]
    return envelope(
        "chat.completion",
        new_id("chatcmpl"),
        model,
        choices,
        usage=usage(result.prompt_tokens, result.completion_tokens),
    )


def text_choices(result, echo: bool, first_index: int = 0) -> list[dict]:
    """/v1/completions choices of one prompt; with `echo` the prompt (and its logprobs)
    comes first."""
    prompt = result.prompt_text or "" if echo else ""
    head = legacy(result.prompt_logprobs) if echo else None
    out = []
    for c in result.choices:
        logprobs = legacy(c.logprobs, len(prompt))
        if echo and head is not None:
            logprobs = join_legacy(head, logprobs or legacy([]))
        out.append(
            {
                "index": first_index + c.index,
                "text": prompt + c.text,
                "logprobs": logprobs,
                "finish_reason": finish_reason(c),
            }
        )
    return out


def model_entry(spec, loaded: bool, created: int, life: dict | None = None) -> dict:
    """One /v1/models entry: the OpenAI fields plus family, capabilities and load state, and
    `life` (availability, state, sizes: see the README's /v1/models section)."""
    return {
        "id": spec.name,
        "object": "model",
        "created": created,
        "owned_by": spec.owned_by,
        "family": spec.family,
        "capabilities": list(spec.capabilities),
        "loaded": loaded,
        **(life or {}),
    }


def embedding_data(
    vectors: list[list[float]], encoding: str, truncated: list[bool] | None = None
) -> list[dict]:
    """The data list; base64 holds the little-endian float32 bytes of each vector.
    With `truncated` (the request sent "truncate": true) each item says whether it was cut."""
    out = []
    for i, vector in enumerate(vectors):
        if encoding == "base64":
            raw = np.asarray(vector, dtype="<f4").tobytes()
            value = base64.b64encode(raw).decode("ascii")
        else:
            value = vector
        item = {"object": "embedding", "index": i, "embedding": value}
        if truncated is not None:
            item["truncated"] = truncated[i]
        out.append(item)
    return out

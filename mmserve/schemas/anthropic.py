"""The Anthropic Messages contract (POST /v1/messages): bodies into GenerationRequests and
results into `message` objects, after https://docs.anthropic.com/en/api/messages."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BadRequest
from ..reasoning import split_reasoning, thinking_switch
from ..types import GenerationRequest, Message, Part, SamplingParams
from .fields import get_bool, get_float, get_int, get_keep_alive, get_stop, get_str, require_object
from .openai import MediaReader

STOP_REASONS = {"length": "max_tokens", "stop": "end_turn", "cancelled": "end_turn"}


@dataclass
class MessagesCall:
    """A parsed /v1/messages body."""

    request: GenerationRequest
    stream: bool
    tools: list[dict] = field(default_factory=list)


def new_id(prefix: str = "msg") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def _text_of(value, path: str) -> str:
    """A string, or a list of text blocks (system, tool_result content)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        out = []
        for j, block in enumerate(value):
            if not isinstance(block, dict) or block.get("type") != "text":
                raise BadRequest(f"'{path}[{j}]' must be a text block", param=f"{path}[{j}]")
            out.append(get_str(block, "text", required=True, param=f"{path}[{j}].text"))
        return "\n".join(out)
    raise BadRequest(f"'{path}' must be a string or a list of text blocks", param=path)


def _image(block: dict, path: str, media: MediaReader) -> Part:
    source = block.get("source")
    if not isinstance(source, dict):
        raise BadRequest(f"'{path}.source' must be an object", param=f"{path}.source")
    kind = source.get("type")
    if kind == "base64":
        media_type = get_str(source, "media_type", required=True, param=f"{path}.source.media_type")
        data = get_str(source, "data", required=True, param=f"{path}.source.data")
        return media.part("image", f"data:{media_type};base64,{data}", path)
    if kind == "url":
        return media.part("image", source.get("url"), path)
    raise BadRequest(f"'{path}.source.type' must be base64 or url", param=f"{path}.source.type")


def _blocks(content, path: str, role: str, media: MediaReader) -> tuple[list[Part], str | None]:
    """A message's content as Parts and the reasoning of its thinking blocks."""
    if isinstance(content, str):
        return [Part("text", text=content, field=path)], None
    if not isinstance(content, list) or not content:
        raise BadRequest(f"'{path}' must be a string or a non-empty list of blocks", param=path)
    parts, thinking = [], []
    for j, block in enumerate(content):
        where = f"{path}[{j}]"
        if not isinstance(block, dict):
            raise BadRequest(f"'{where}' must be an object", param=where)
        kind = block.get("type")
        if kind == "text":
            parts.append(Part("text", get_str(block, "text", required=True, param=f"{where}.text"),
                              field=where))  # fmt: skip
        elif kind == "image" and role == "user":
            parts.append(_image(block, where, media))
        elif kind in ("thinking", "redacted_thinking") and role == "assistant":
            thinking.append(block.get("thinking") or "")
        else:
            raise BadRequest(
                f"'{where}.type' {kind!r} is not supported in a {role} message (text and image "
                "in user messages; text and thinking in assistant ones)",
                param=f"{where}.type",
            )
    return parts, "".join(thinking) or None


def parse_messages(body, settings, tmp_dir: Path, lookup=None) -> MessagesCall:
    """POST /v1/messages. `max_tokens` is required (as Anthropic's API has it)."""
    body = require_object(body)
    model = get_str(body, "model", required=True, allow_empty=False)
    if lookup is not None:
        lookup(model)
    limit = settings.max_new_tokens_limit
    max_tokens = get_int(body, "max_tokens", lo=1, hi=limit)
    if max_tokens is None:
        raise BadRequest("'max_tokens' is required", param="max_tokens")
    params = SamplingParams(
        max_new_tokens=max_tokens,
        temperature=get_float(body, "temperature", lo=0.0, hi=1.0),
        top_p=get_float(body, "top_p", lo=0.0, hi=1.0),
        top_k=get_int(body, "top_k", lo=0, hi=100000),
        stop=get_stop(body, settings.max_stop, "stop_sequences"),
    )
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise BadRequest("'messages' must be a non-empty list", param="messages")
    media = MediaReader(settings, tmp_dir)
    messages = []
    if body.get("system") is not None:
        messages.append(Message("system", [Part("text", _text_of(body["system"], "system"),
                                                field="system")]))  # fmt: skip
    for i, m in enumerate(raw):
        path = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise BadRequest(f"'{path}.role' must be user or assistant", param=f"{path}.role")
        parts, reasoning = _blocks(m.get("content"), f"{path}.content", m["role"], media)
        messages.append(Message(m["role"], parts, reasoning))
    if body.get("tools"):
        raise BadRequest("'tools' is not supported by this server yet", param="tools",
                         code="unsupported_parameter")  # fmt: skip
    thinking = body.get("thinking")
    enabled = None
    if thinking is not None:
        if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "disabled"):
            raise BadRequest("'thinking.type' must be enabled or disabled", param="thinking.type")
        enabled = thinking["type"] == "enabled"
    request = GenerationRequest(
        model=model,
        messages=messages,
        params=params,
        keep_alive=get_keep_alive(body),
        endpoint="anthropic",
        template_kwargs=thinking_switch(enabled),
    )
    return MessagesCall(request, get_bool(body, "stream"))


def content_blocks(text: str, opened: bool) -> list[dict]:
    """The answer as Anthropic content: a thinking block (from `<think>`) then text."""
    reasoning, answer = split_reasoning(text, opened or None)
    blocks = []
    if reasoning:
        blocks.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    blocks.append({"type": "text", "text": answer})
    return blocks


def stop_reason(choice) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) of a finished choice."""
    if choice.stop_sequence is not None:
        return "stop_sequence", choice.stop_sequence
    return STOP_REASONS.get(choice.finish_reason, "end_turn"), None


def message(result, model: str, opened: bool, mid: str | None = None) -> dict:
    """The `message` object of a finished generation."""
    choice = result.choices[0]
    reason, sequence = stop_reason(choice)
    return {
        "id": mid or new_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content_blocks(choice.text, opened),
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": {"input_tokens": result.prompt_tokens, "output_tokens": result.completion_tokens},
    }

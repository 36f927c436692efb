"""The Anthropic Messages contract (POST /v1/messages): bodies into GenerationRequests and
results into `message` objects, after https://docs.anthropic.com/en/api/messages."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from ..errors import BadRequest
from ..reasoning import split_reasoning, thinking_switch
from ..types import GenerationRequest, Message, Part, SamplingParams
from .fields import get_keep_alive
from .openai import MediaReader, stop_list
from .typed import Strict, tagged, validate

STOP_REASONS = {"length": "max_tokens", "stop": "end_turn", "cancelled": "end_turn"}


# --------------------------------------------------------------------------- request models


class TextBlock(Strict):
    type: Literal["text"]
    text: str


class Base64Source(Strict):
    type: Literal["base64"]
    media_type: str
    data: str


class URLSource(Strict):
    type: Literal["url"]
    url: str


class ImageBlock(Strict):
    type: Literal["image"]
    source: tagged("type", {"base64": Base64Source, "url": URLSource})


class ThinkingBlock(Strict):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(Strict):
    type: Literal["redacted_thinking"]
    data: str | None = None


Block = tagged(
    "type",
    {"text": TextBlock, "image": ImageBlock, "thinking": ThinkingBlock,
     "redacted_thinking": RedactedThinkingBlock},
)  # fmt: skip


class AnthropicMessage(Strict):
    role: Literal["user", "assistant"]
    content: str | Annotated[list[Block], Field(min_length=1)]


class ThinkingConfig(Strict):
    type: Literal["enabled", "disabled"]
    budget_tokens: int | None = None


class MessagesRequest(Strict):
    """POST /v1/messages (Anthropic's Messages API); `max_tokens` is required, as there."""

    model: Annotated[str, Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)]
    messages: Annotated[list[AnthropicMessage], Field(min_length=1)]
    system: str | list[TextBlock] | None = None
    stop_sequences: list[str] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=0, le=100000)] | None = None
    stream: bool = False
    thinking: ThinkingConfig | None = None
    metadata: dict | None = None
    tools: list[dict] | None = None
    keep_alive: str | int | float | None = None


@dataclass
class MessagesCall:
    """A parsed /v1/messages body."""

    request: GenerationRequest
    stream: bool


def new_id(prefix: str = "msg") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def _system(system) -> str:
    return system if isinstance(system, str) else "\n".join(b.text for b in system)


def _blocks(content, path: str, role: str, media: MediaReader) -> tuple[list[Part], str | None]:
    """A message's content as Parts and the reasoning of its thinking blocks."""
    if isinstance(content, str):
        return [Part("text", text=content, field=path)], None
    parts, thinking = [], []
    for j, block in enumerate(content):
        where = f"{path}[{j}]"
        if block.type == "text":
            parts.append(Part("text", block.text, field=where))
        elif block.type == "image" and role == "user":
            source = block.source
            url = source.url if source.type == "url" else (
                f"data:{source.media_type};base64,{source.data}")  # fmt: skip
            parts.append(media.part("image", url, where))
        elif block.type in ("thinking", "redacted_thinking") and role == "assistant":
            thinking.append(getattr(block, "thinking", "") or "")
        else:
            raise BadRequest(
                f"'{where}.type' {block.type!r} is not supported in a {role} message (text and "
                "image in user messages; text and thinking in assistant ones)",
                param=f"{where}.type",
            )
    return parts, "".join(thinking) or None


def parse_messages(body, settings, tmp_dir: Path, lookup=None) -> MessagesCall:
    """POST /v1/messages into one GenerationRequest (limits from the settings)."""
    req = validate(MessagesRequest, body)
    if lookup is not None:
        lookup(req.model)
    if req.max_tokens > settings.max_new_tokens_limit:
        raise BadRequest(f"'max_tokens' must be at most {settings.max_new_tokens_limit}",
                         param="max_tokens")  # fmt: skip
    if req.tools:
        raise BadRequest("'tools' is not supported by this server yet", param="tools",
                         code="unsupported_parameter")  # fmt: skip
    params = SamplingParams(
        max_new_tokens=req.max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        stop=stop_list(req.stop_sequences, settings.max_stop, "stop_sequences"),
    )
    media = MediaReader(settings, tmp_dir)
    messages = []
    if req.system:
        messages.append(Message("system", [Part("text", _system(req.system), field="system")]))
    for i, m in enumerate(req.messages):
        parts, reasoning = _blocks(m.content, f"messages[{i}].content", m.role, media)
        messages.append(Message(m.role, parts, reasoning))
    enabled = None if req.thinking is None else req.thinking.type == "enabled"
    request = GenerationRequest(
        model=req.model,
        messages=messages,
        params=params,
        keep_alive=get_keep_alive({"keep_alive": req.keep_alive}),
        endpoint="anthropic",
        template_kwargs=thinking_switch(enabled),
    )
    return MessagesCall(request, req.stream)


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

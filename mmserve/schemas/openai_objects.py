"""Typed /v1 response objects and stream chunks (OpenAI's shapes), and their builders.

Every /v1 answer is one of these models dumped to JSON, so `/openapi.json` describes exactly
what the routes send. Optional message fields (`reasoning_content`, `tool_calls`) are left out
when unset; `logprobs: null`, `content: null` and a chunk's `usage: null` are sent as OpenAI
sends them.
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field, model_serializer

from ..logprobs import chat_content, join_legacy, legacy
from ..reasoning import split_reasoning


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class FunctionCallOut(BaseModel):
    name: str
    arguments: str = Field(description="The arguments as a JSON string")


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class _Sparse(BaseModel):
    """A model whose None fields listed in `_omit` are left out of its JSON."""

    _omit: tuple[str, ...] = ()

    @model_serializer(mode="wrap")
    def _drop(self, handler):
        data = handler(self)
        return {k: v for k, v in data.items() if not (k in self._omit and v is None)}


class AssistantMessage(_Sparse):
    _omit = ("reasoning_content", "reasoning", "tool_calls")
    role: Literal["assistant"] = "assistant"
    content: str | None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCallOut] | None = None


FinishReason = Literal["stop", "length", "tool_calls"]


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: dict | None = None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class FunctionDelta(_Sparse):
    _omit = ("name", "arguments")
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(_Sparse):
    """One piece of a streamed tool call: `id`, `type` and the name come in its first piece."""

    _omit = ("id", "type")
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionDelta


class ChatDelta(_Sparse):
    _omit = ("role", "content", "reasoning_content", "reasoning", "tool_calls")
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    logprobs: dict | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(_Sparse):
    _omit = ("usage",)
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: dict | None = None
    finish_reason: FinishReason | None


class Completion(_Sparse):
    """A text_completion object; also each chunk of a streamed completion."""

    _omit = ("usage",)
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class EmbeddingItem(_Sparse):
    _omit = ("truncated",)
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="Floats, or base64 of little-endian float32")
    truncated: bool | None = None


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: EmbeddingUsage


class ModelObject(BaseModel, extra="allow"):
    """A /v1/models entry: OpenAI's fields, then family, capabilities, load state and life."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    family: str
    capabilities: list[str]
    loaded: bool


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every /v1 error, also the last event of a failed stream."""

    error: ErrorBody


# --------------------------------------------------------------------------- builders


def new_id(prefix: str) -> str:
    """A fresh response id such as chatcmpl-<hex>."""
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def finish_reason(result) -> str:
    """OpenAI knows stop, length and tool_calls; a cancelled generation ended on our side: stop."""
    if getattr(result, "tool_calls", None):
        return "tool_calls"
    return "length" if result.finish_reason == "length" else "stop"


def usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    """The usage object, from the service's own token counts."""
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


def assistant_message(text: str | None, key: str | None, opened: bool, tool_calls=None):
    """The message of a chat answer; reasoning moved to `key` when it is set."""
    message = AssistantMessage(content=text, tool_calls=tool_calls or None)
    if key and text is not None:
        reasoning, message.content = split_reasoning(text, opened or None)
        if reasoning:
            setattr(message, key, reasoning)
    if tool_calls and not (message.content or "").strip():
        message.content = None
    return message


def chat_completion(result, model: str, key: str | None, opened: bool) -> dict:
    """The chat.completion object of one GenerationResult: one choice per row (n)."""
    choices = [
        ChatChoice(
            index=c.index,
            message=assistant_message(
                c.text, key, opened, [ToolCallOut.model_validate(t) for t in c.tool_calls or []]
            ),
            logprobs=chat_content(c.logprobs),
            finish_reason=finish_reason(c),
        )
        for c in result.choices
    ]
    return ChatCompletion(
        id=new_id("chatcmpl"),
        created=now(),
        model=model,
        choices=choices,
        usage=usage(result.prompt_tokens, result.completion_tokens),
    ).model_dump(mode="json")


def text_choices(result, echo: bool, first_index: int = 0) -> list[CompletionChoice]:
    """/v1/completions choices of one prompt (n rows); with `echo` the prompt (and its
    logprobs) comes first."""
    prompt = (result.prompt_text or "") if echo else ""
    head = legacy(result.prompt_logprobs) if echo else None
    out = []
    for c in result.choices:
        logprobs = legacy(c.logprobs, len(prompt))
        if head is not None:
            logprobs = join_legacy(head, logprobs or legacy([]))
        out.append(
            CompletionChoice(
                index=first_index + c.index,
                text=prompt + c.text,
                logprobs=logprobs,
                finish_reason=finish_reason(c),
            )
        )
    return out


def model_entry(spec, loaded: bool, created: int, life: dict | None = None) -> dict:
    """One /v1/models entry: the OpenAI fields plus family, capabilities and load state, and
    `life` (availability, state, sizes: see the README's /v1/models section)."""
    return ModelObject(
        id=spec.name,
        created=created,
        owned_by=spec.owned_by,
        family=spec.family,
        capabilities=list(spec.capabilities),
        loaded=loaded,
        **(life or {}),
    ).model_dump(mode="json")


def embedding_data(
    vectors: list[list[float]], encoding: str, truncated: list[bool] | None = None
) -> list[dict]:
    """The data list; base64 holds the little-endian float32 bytes of each vector.
    With `truncated` (the request sent "truncate": true) each item says whether it was cut."""
    out = []
    for i, vector in enumerate(vectors):
        if encoding == "base64":
            value = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
        else:
            value = vector
        cut = truncated[i] if truncated is not None else None
        out.append(EmbeddingItem(index=i, embedding=value, truncated=cut).model_dump(mode="json"))
    return out

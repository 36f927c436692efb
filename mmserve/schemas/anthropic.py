"""The Anthropic Messages contract (POST /v1/messages): bodies into GenerationRequests and
results into `message` objects, after https://docs.anthropic.com/en/api/messages."""

from __future__ import annotations

import json
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
from .openai_requests import check_schema
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


class ToolUseBlock(Strict):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict


class ToolResultBlock(Strict):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[TextBlock] | None = None
    is_error: bool | None = None


Block = tagged(
    "type",
    {"text": TextBlock, "image": ImageBlock, "thinking": ThinkingBlock,
     "redacted_thinking": RedactedThinkingBlock, "tool_use": ToolUseBlock,
     "tool_result": ToolResultBlock},
)  # fmt: skip


class AnthropicMessage(Strict):
    role: Literal["user", "assistant"]
    content: str | Annotated[list[Block], Field(min_length=1)]


class ThinkingConfig(Strict):
    type: Literal["enabled", "disabled"]
    budget_tokens: int | None = None


class AnthropicTool(Strict):
    name: str
    description: str | None = None
    input_schema: dict


class ToolChoice(Strict):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


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
    tools: list[AnthropicTool] | None = None
    tool_choice: ToolChoice | None = None
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


def _text(content) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "\n".join(b.text for b in content)


def _messages(m: AnthropicMessage, path: str, media: MediaReader) -> list[Message]:
    """One Anthropic message as Messages: tool_result blocks become tool messages (before the
    rest of their user turn), tool_use blocks the assistant's tool calls, thinking blocks its
    reasoning."""
    if isinstance(m.content, str):
        return [Message(m.role, [Part("text", text=m.content, field=path)])]
    parts, thinking, calls, results = [], [], [], []
    for j, block in enumerate(m.content):
        where = f"{path}[{j}]"
        if block.type == "text":
            parts.append(Part("text", block.text, field=where))
        elif block.type == "image" and m.role == "user":
            source = block.source
            url = source.url if source.type == "url" else (
                f"data:{source.media_type};base64,{source.data}")  # fmt: skip
            parts.append(media.part("image", url, where))
        elif block.type in ("thinking", "redacted_thinking") and m.role == "assistant":
            thinking.append(getattr(block, "thinking", "") or "")
        elif block.type == "tool_use" and m.role == "assistant":
            arguments = json.dumps(block.input, ensure_ascii=False)
            calls.append({"id": block.id, "type": "function",
                          "function": {"name": block.name, "arguments": arguments}})  # fmt: skip
        elif block.type == "tool_result" and m.role == "user":
            text = _text(block.content)
            results.append(Message("tool", [Part("text", text, field=where)],
                                   tool_call_id=block.tool_use_id))  # fmt: skip
        else:
            raise BadRequest(
                f"'{where}.type' {block.type!r} is not supported in a {m.role} message (text, "
                "image and tool_result in user messages; text, thinking and tool_use in "
                "assistant ones)",
                param=f"{where}.type",
            )
    out = results
    if parts or calls or not results:
        out.append(Message(m.role, parts, "".join(thinking) or None, tool_calls=calls or None))
    return out


def _tools(req: MessagesRequest) -> tuple[list[dict] | None, str | dict, bool]:
    """(tools, tool_choice, parallel) in the OpenAI shapes the engine takes."""
    if not req.tools:
        if req.tool_choice is not None and req.tool_choice.type in ("any", "tool"):
            raise BadRequest("'tool_choice' needs 'tools'", param="tool_choice")
        return None, "auto", True
    names = set()
    for i, tool in enumerate(req.tools):
        check_schema(tool.input_schema, f"tools[{i}].input_schema", object_only=True)
        if tool.name in names:
            raise BadRequest(f"'tools[{i}].name': duplicate tool name {tool.name!r}",
                             param=f"tools[{i}].name")  # fmt: skip
        names.add(tool.name)
    tools = [{"type": "function", "function": {"name": t.name, "description": t.description or "",
              "parameters": t.input_schema}} for t in req.tools]  # fmt: skip
    choice, parallel = req.tool_choice, True
    if choice is None:
        return tools, "auto", True
    parallel = not choice.disable_parallel_tool_use
    if choice.type == "tool":
        if choice.name not in names:
            raise BadRequest(f"'tool_choice.name': no tool is named {choice.name!r}",
                             param="tool_choice.name")  # fmt: skip
        return tools, {"type": "function", "function": {"name": choice.name}}, parallel
    return tools, {"auto": "auto", "any": "required", "none": "none"}[choice.type], parallel


def parse_messages(body, settings, tmp_dir: Path, lookup=None) -> MessagesCall:
    """POST /v1/messages into one GenerationRequest (limits from the settings)."""
    req = validate(MessagesRequest, body)
    if lookup is not None:
        lookup(req.model)
    if req.max_tokens > settings.max_new_tokens_limit:
        raise BadRequest(f"'max_tokens' must be at most {settings.max_new_tokens_limit}",
                         param="max_tokens")  # fmt: skip
    tools, tool_choice, parallel = _tools(req)
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
        messages += _messages(m, f"messages[{i}].content", media)
    enabled = None if req.thinking is None else req.thinking.type == "enabled"
    request = GenerationRequest(
        model=req.model,
        messages=messages,
        params=params,
        keep_alive=get_keep_alive({"keep_alive": req.keep_alive}),
        endpoint="anthropic",
        template_kwargs=thinking_switch(enabled),
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
    )
    return MessagesCall(request, req.stream)


def tool_use(call: dict) -> dict:
    """A parsed tool call as a tool_use block."""
    try:
        arguments = json.loads(call["function"]["arguments"] or "{}")
    except ValueError:
        arguments = {}
    return {"type": "tool_use", "id": call["id"], "name": call["function"]["name"],
            "input": arguments if isinstance(arguments, dict) else {"value": arguments}}  # fmt: skip


def content_blocks(text: str, opened: bool, calls=None) -> list[dict]:
    """The answer as Anthropic content: a thinking block (from `<think>`), the text, then a
    tool_use block per call."""
    reasoning, answer = split_reasoning(text, opened or None)
    blocks = []
    if reasoning:
        blocks.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    if answer.strip() or not calls:
        blocks.append({"type": "text", "text": answer})
    return blocks + [tool_use(c) for c in calls or []]


def stop_reason(choice) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) of a finished choice."""
    if choice.tool_calls:
        return "tool_use", None
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
        "content": content_blocks(choice.text, opened, choice.tool_calls),
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": {"input_tokens": result.prompt_tokens, "output_tokens": result.completion_tokens},
    }

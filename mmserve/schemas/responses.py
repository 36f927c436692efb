"""The OpenAI Responses contract (POST /v1/responses), stateless: bodies into
GenerationRequests and results into `response` objects and their output items, after
https://platform.openai.com/docs/api-reference/responses."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadRequest
from ..reasoning import EFFORTS, effort_switch, split_reasoning
from ..types import GenerationRequest, Message, Part, SamplingParams
from .fields import get_bool, get_float, get_int, get_keep_alive, get_str, require_object
from .openai import MediaReader

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_TEXT_PARTS = ("input_text", "output_text", "text")


@dataclass
class ResponsesCall:
    """A parsed /v1/responses body, with the fields the response object echoes."""

    request: GenerationRequest
    stream: bool
    echo: dict  # instructions, max_output_tokens, temperature, top_p, metadata, ...


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _part(item, path: str, role: str, media: MediaReader) -> Part:
    if not isinstance(item, dict):
        raise BadRequest(f"'{path}' must be an object", param=path)
    kind = item.get("type")
    if kind in _TEXT_PARTS:
        return Part("text", get_str(item, "text", required=True, param=f"{path}.text"), field=path)
    if role != "user":
        raise BadRequest(f"'{path}': only user messages may hold media", param=path)
    if kind == "input_image":
        url = item.get("image_url")
        if url is None and item.get("file_id"):
            raise BadRequest(
                f"'{path}.file_id': files are not stored here", param=f"{path}.file_id"
            )
        return media.part("image", url, path)
    if kind == "input_audio":
        audio = item.get("input_audio")
        data = audio.get("data") if isinstance(audio, dict) else None
        return media.part("audio", data, path)
    raise BadRequest(
        f"'{path}.type' {kind!r} is not supported (input_text, input_image, input_audio)",
        param=f"{path}.type",
    )


def _item(raw, path: str, media: MediaReader) -> Message | None:
    """One input item: a message (with or without `type: message`); reasoning items are
    accepted and not re-sent to the model."""
    if not isinstance(raw, dict):
        raise BadRequest(f"'{path}' must be an object", param=path)
    kind = raw.get("type", "message")
    if kind == "reasoning":
        return None
    if kind != "message":
        raise BadRequest(f"'{path}.type' {kind!r} is not supported here", param=f"{path}.type")
    role = raw.get("role")
    if role not in _ROLES:
        raise BadRequest(f"'{path}.role' must be user, assistant, system or developer",
                         param=f"{path}.role")  # fmt: skip
    content = raw.get("content")
    if isinstance(content, str):
        return Message(_ROLES[role], [Part("text", content, field=f"{path}.content")])
    if not isinstance(content, list) or not content:
        raise BadRequest(f"'{path}.content' must be a string or a non-empty list",
                         param=f"{path}.content")  # fmt: skip
    parts = [_part(p, f"{path}.content[{j}]", role, media) for j, p in enumerate(content)]
    return Message(_ROLES[role], parts)


def parse_responses(body, settings, tmp_dir: Path, lookup=None) -> ResponsesCall:
    """POST /v1/responses. Nothing is stored: `previous_response_id` or `store: true` is a
    400; `reasoning.effort` switches a template's thinking (`mmserve.reasoning`)."""
    body = require_object(body)
    if body.get("previous_response_id") is not None:
        raise BadRequest("responses are not stored on this server: send the whole conversation "
                         "in 'input'", param="previous_response_id")  # fmt: skip
    if get_bool(body, "store"):
        raise BadRequest("responses are not stored on this server: 'store' must be false",
                         param="store")  # fmt: skip
    model = get_str(body, "model", required=True, allow_empty=False)
    if lookup is not None:
        lookup(model)
    if body.get("tools"):
        raise BadRequest("'tools' is not supported by this server yet", param="tools",
                         code="unsupported_parameter")  # fmt: skip
    text = body.get("text")
    if text is not None and (not isinstance(text, dict) or (text.get("format") or {}).get(
            "type", "text") != "text"):  # fmt: skip
        raise BadRequest("'text.format' other than text is not supported by this server yet",
                         param="text.format", code="unsupported_parameter")  # fmt: skip
    limit = settings.max_new_tokens_limit
    params = SamplingParams(
        max_new_tokens=get_int(body, "max_output_tokens", lo=1, hi=limit),
        temperature=get_float(body, "temperature", lo=0.0, hi=2.0),
        top_p=get_float(body, "top_p", lo=0.0, hi=1.0),
    )
    media = MediaReader(settings, tmp_dir)
    messages = []
    instructions = get_str(body, "instructions")
    if instructions:
        messages.append(Message("system", [Part("text", instructions, field="instructions")]))
    raw = body.get("input")
    if isinstance(raw, str) and raw:
        messages.append(Message("user", [Part("text", raw, field="input")]))
    elif isinstance(raw, list) and raw:
        for i, item in enumerate(raw):
            msg = _item(item, f"input[{i}]", media)
            if msg is not None:
                messages.append(msg)
    else:
        raise BadRequest("'input' must be a non-empty string or list of items", param="input")
    reasoning = body.get("reasoning") or {}
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
    if effort is not None and effort not in EFFORTS:
        raise BadRequest(f"'reasoning.effort' must be one of {', '.join(EFFORTS)}",
                         param="reasoning.effort")  # fmt: skip
    request = GenerationRequest(
        model=model,
        messages=messages,
        params=params,
        keep_alive=get_keep_alive(body),
        endpoint="responses",
        template_kwargs=effort_switch(effort),
    )
    echo = {
        "instructions": instructions,
        "max_output_tokens": params.max_new_tokens,
        "temperature": params.temperature if params.temperature is not None else 1.0,
        "top_p": params.top_p if params.top_p is not None else 1.0,
        "metadata": body.get("metadata") or {},
        "reasoning": {"effort": effort, "summary": None},
    }
    return ResponsesCall(request, get_bool(body, "stream"), echo)


def reasoning_item(rid: str, text: str) -> dict:
    return {"type": "reasoning", "id": rid, "summary": [],
            "content": [{"type": "reasoning_text", "text": text}]}  # fmt: skip


def text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(mid: str, text: str, status: str = "completed") -> dict:
    content = [text_part(text)] if status == "completed" else []
    return {"type": "message", "id": mid, "status": status, "role": "assistant",
            "content": content}  # fmt: skip


def output_items(text: str, opened: bool) -> list[dict]:
    """A reasoning item (from `<think>`) when there is one, then the message."""
    reasoning, answer = split_reasoning(text, opened or None)
    items = [reasoning_item(new_id("rs"), reasoning)] if reasoning else []
    return items + [message_item(new_id("msg"), answer)]


def response(call: ResponsesCall, rid: str, created: int, output: list, result=None) -> dict:
    """The `response` object: in progress while `result` is None, then completed (or
    incomplete when max_output_tokens cut it)."""
    status, details, usage = "in_progress", None, None
    if result is not None:
        status = "completed"
        if result.finish_reason == "length":
            status, details = "incomplete", {"reason": "max_output_tokens"}
        usage = {
            "input_tokens": result.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": result.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        }
    return {
        "id": rid, "object": "response", "created_at": created, "status": status,
        "error": None, "incomplete_details": details, "model": call.request.model,
        "output": output, "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
        "text": {"format": {"type": "text"}}, "store": False, "usage": usage,
        **call.echo,
    }  # fmt: skip


def now() -> int:
    return int(time.time())

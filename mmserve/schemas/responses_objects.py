"""The Responses API's output side: output items (reasoning, message, function_call) and the
`response` object, in the shapes of https://platform.openai.com/docs/api-reference/responses."""

from __future__ import annotations

import time
import uuid

from ..reasoning import split_reasoning


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def reasoning_item(rid: str, text: str) -> dict:
    return {"type": "reasoning", "id": rid, "summary": [],
            "content": [{"type": "reasoning_text", "text": text}]}  # fmt: skip


def text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(mid: str, text: str, status: str = "completed") -> dict:
    content = [text_part(text)] if status == "completed" else []
    return {"type": "message", "id": mid, "status": status, "role": "assistant",
            "content": content}  # fmt: skip


def function_call_item(call: dict, status: str = "completed") -> dict:
    """A parsed tool call as a function_call output item."""
    return {"type": "function_call", "id": "fc_" + call["id"].removeprefix("call_"),
            "call_id": call["id"], "name": call["function"]["name"],
            "arguments": call["function"]["arguments"], "status": status}  # fmt: skip


def output_items(text: str, opened: bool, calls=None) -> list[dict]:
    """A reasoning item (from `<think>`) when there is one, the message (unless the answer is
    only tool calls), then a function_call item per call."""
    reasoning, answer = split_reasoning(text, opened or None)
    items = [reasoning_item(new_id("rs"), reasoning)] if reasoning else []
    if answer.strip() or not calls:
        items.append(message_item(new_id("msg"), answer))
    return items + [function_call_item(c) for c in calls or []]


def response(call, rid: str, created: int, output: list, result=None) -> dict:
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

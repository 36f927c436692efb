"""The OpenAI Responses contract (POST /v1/responses), stateless: bodies into
GenerationRequests and results into `response` objects and their output items, after
https://platform.openai.com/docs/api-reference/responses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import Discriminator, Field, Tag

from ..errors import BadRequest
from ..reasoning import EFFORTS, effort_switch
from ..types import GenerationRequest, Message, Part, SamplingParams
from .fields import get_keep_alive
from .openai import MediaReader
from .openai_requests import check_schema
from .responses_objects import (  # noqa: F401 - the response builders, re-exported
    function_call_item,
    message_item,
    new_id,
    now,
    output_items,
    reasoning_item,
    response,
    text_part,
)
from .typed import Strict, tagged, validate

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


# --------------------------------------------------------------------------- request models


class InputText(Strict):
    type: Literal["input_text", "output_text", "text"]
    text: str


class InputImage(Strict):
    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None
    detail: str | None = None


class InputAudioData(Strict):
    data: str
    format: str | None = None


class InputAudio(Strict):
    type: Literal["input_audio"]
    input_audio: InputAudioData


ContentPart = tagged(
    "type",
    {"input_text": InputText, "output_text": InputText, "text": InputText,
     "input_image": InputImage, "input_audio": InputAudio},
)  # fmt: skip


class MessageItem(Strict):
    type: Literal["message"] = "message"
    role: Literal["system", "developer", "user", "assistant"]
    content: str | Annotated[list[ContentPart], Field(min_length=1)]


class ReasoningItem(Strict):
    """An earlier answer's reasoning: accepted, not re-sent to the model."""

    type: Literal["reasoning"]


class FunctionCallItem(Strict):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str


class FunctionCallOutputItem(Strict):
    type: Literal["function_call_output"]
    call_id: str
    output: str


_ITEMS = {"message": MessageItem, "reasoning": ReasoningItem, "function_call": FunctionCallItem,
          "function_call_output": FunctionCallOutputItem}  # fmt: skip


def _item_kind(value):
    raw = value.get("type", "message") if isinstance(value, dict) else getattr(value, "type", None)
    return f"type={raw}" if raw in _ITEMS else None


InputItem = Annotated[
    Union[tuple(Annotated[m, Tag(f"type={k}")] for k, m in _ITEMS.items())],  # noqa: UP007
    Discriminator(_item_kind, custom_error_type="unknown_tag:type",
                  custom_error_message=f"'type' must be one of {', '.join(_ITEMS)}"),
]  # fmt: skip


class TextFormat(Strict):
    type: Literal["text"]


class JSONObjectFormat(Strict):
    type: Literal["json_object"]


class JSONSchemaFormat(Strict):
    type: Literal["json_schema"]
    name: str
    schema_: dict = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(Strict):
    format: tagged("type", {"text": TextFormat, "json_object": JSONObjectFormat,
                            "json_schema": JSONSchemaFormat}) | None = None  # fmt: skip


class FunctionTool(Strict):
    type: Literal["function"]
    name: str
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None


class NamedFunction(Strict):
    type: Literal["function"]
    name: str


class ReasoningConfig(Strict):
    effort: Literal[EFFORTS] | None = None
    summary: str | None = None


class ResponsesRequest(Strict):
    """POST /v1/responses, stateless."""

    model: Annotated[str, Field(min_length=1)]
    input: str | list[InputItem]
    instructions: str | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    stream: bool = False
    store: bool | None = None
    previous_response_id: str | None = None
    reasoning: ReasoningConfig | None = None
    text: TextConfig | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunction | None = None
    parallel_tool_calls: bool | None = None
    metadata: dict | None = None
    keep_alive: str | int | float | None = None


@dataclass
class ResponsesCall:
    """A parsed /v1/responses body, with the fields the response object echoes."""

    request: GenerationRequest
    stream: bool
    echo: dict  # instructions, max_output_tokens, temperature, top_p, metadata, ...


def _part(item, path: str, role: str, media: MediaReader) -> Part:
    if isinstance(item, InputText):
        return Part("text", item.text, field=path)
    if role != "user":
        raise BadRequest(f"'{path}': only user messages may hold media", param=path)
    if isinstance(item, InputImage):
        if item.image_url is None:
            raise BadRequest(f"'{path}.image_url' is required (files are not stored here)",
                             param=f"{path}.image_url")  # fmt: skip
        return media.part("image", item.image_url, path)
    return media.part("audio", item.input_audio.data, path)


def _message(item: MessageItem, path: str, media: MediaReader) -> Message:
    role = _ROLES[item.role]
    if isinstance(item.content, str):
        return Message(role, [Part("text", item.content, field=f"{path}.content")])
    parts = [_part(p, f"{path}.content[{j}]", item.role, media)
             for j, p in enumerate(item.content)]  # fmt: skip
    return Message(role, parts)


def _format(req: ResponsesRequest) -> dict | None:
    """`text.format` as the engine's response_format (None for text)."""
    fmt = req.text.format if req.text else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    check_schema(fmt.schema_, "text.format.schema")
    return {"type": "json_schema", "schema": fmt.schema_}


def _tools(req: ResponsesRequest) -> tuple[list[dict] | None, str | dict]:
    """(tools, tool_choice) in the chat shapes the engine takes."""
    names = set()
    for i, tool in enumerate(req.tools or []):
        if tool.parameters is not None:
            check_schema(tool.parameters, f"tools[{i}].parameters", object_only=True)
        if tool.name in names:
            raise BadRequest(f"'tools[{i}].name': duplicate tool name {tool.name!r}",
                             param=f"tools[{i}].name")  # fmt: skip
        names.add(tool.name)
    choice = req.tool_choice or "auto"
    if isinstance(choice, NamedFunction):
        if choice.name not in names:
            raise BadRequest(f"'tool_choice.name': no tool is named {choice.name!r}",
                             param="tool_choice.name")  # fmt: skip
        choice = {"type": "function", "function": {"name": choice.name}}
    elif choice == "required" and not names:
        raise BadRequest("'tool_choice' is 'required' but no tools are given", param="tool_choice")
    tools = [{"type": "function", "function": t.model_dump(exclude_none=True, exclude={"type",
              "strict"})} for t in req.tools or []]  # fmt: skip
    return tools or None, choice


def parse_responses(body, settings, tmp_dir: Path, lookup=None) -> ResponsesCall:
    """POST /v1/responses. Nothing is stored: `previous_response_id` or `store: true` is a
    400; `reasoning.effort` switches a template's thinking (`mmserve.reasoning`)."""
    req = validate(ResponsesRequest, body)
    if req.previous_response_id is not None:
        raise BadRequest("responses are not stored on this server: send the whole conversation "
                         "in 'input'", param="previous_response_id")  # fmt: skip
    if req.store:
        raise BadRequest("responses are not stored on this server: 'store' must be false",
                         param="store")  # fmt: skip
    if not req.input:
        raise BadRequest("'input' must be a non-empty string or list of items", param="input")
    if lookup is not None:
        lookup(req.model)
    tools, tool_choice = _tools(req)
    limit = settings.max_new_tokens_limit
    if req.max_output_tokens is not None and req.max_output_tokens > limit:
        raise BadRequest(f"'max_output_tokens' must be at most {limit}", param="max_output_tokens")
    params = SamplingParams(
        max_new_tokens=req.max_output_tokens, temperature=req.temperature, top_p=req.top_p
    )
    media = MediaReader(settings, tmp_dir)
    messages = []
    if req.instructions:
        messages.append(Message("system", [Part("text", req.instructions, field="instructions")]))
    if isinstance(req.input, str):
        messages.append(Message("user", [Part("text", req.input, field="input")]))
    else:
        for i, item in enumerate(req.input):
            if isinstance(item, MessageItem):
                messages.append(_message(item, f"input[{i}]", media))
            elif isinstance(item, FunctionCallItem):
                call = {"id": item.call_id, "type": "function",
                        "function": {"name": item.name, "arguments": item.arguments}}  # fmt: skip
                messages.append(Message("assistant", [], tool_calls=[call]))
            elif isinstance(item, FunctionCallOutputItem):
                part = Part("text", item.output, field=f"input[{i}].output")
                messages.append(Message("tool", [part], tool_call_id=item.call_id))
    effort = req.reasoning.effort if req.reasoning else None
    request = GenerationRequest(
        model=req.model,
        messages=messages,
        params=params,
        keep_alive=get_keep_alive({"keep_alive": req.keep_alive}),
        endpoint="responses",
        template_kwargs=effort_switch(effort),
        response_format=_format(req),
        format_param="text.format.schema",
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=req.parallel_tool_calls is not False,
    )
    echo = {
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "temperature": req.temperature if req.temperature is not None else 1.0,
        "top_p": req.top_p if req.top_p is not None else 1.0,
        "metadata": req.metadata or {},
        "reasoning": {"effort": effort, "summary": None},
        "text": {
            "format": (
                req.text.format.model_dump(by_alias=True)
                if req.text and req.text.format
                else {"type": "text"}
            )
        },
        "tools": [t.model_dump(exclude_none=True) for t in req.tools or []],
        "tool_choice": (
            req.tool_choice.model_dump()
            if isinstance(req.tool_choice, NamedFunction)
            else req.tool_choice or "auto"
        ),
        "parallel_tool_calls": req.parallel_tool_calls is not False,
    }
    return ResponsesCall(request, req.stream, echo)

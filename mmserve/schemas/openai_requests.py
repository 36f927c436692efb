"""Typed /v1 request bodies (pydantic v2, one model per endpoint): shapes, bounds, tools,
tool_choice and response_format rules, each error naming its field. Limits that depend on the
settings (max tokens, stop count, media) are checked by the translators in `schemas.openai`."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, model_validator

from ..errors import BadRequest
from ..reasoning import EFFORTS
from .typed import Strict, tagged

REASONING_FORMATS = ("reasoning_content", "reasoning", "none", "merged")
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")

Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(ge=1)]


class StreamOptions(Strict):
    include_usage: bool = False


class SamplingFields(Strict):
    """Fields every generating /v1 endpoint shares (the engine's `SamplingParams`)."""

    ignored_fields = ("user",)  # OpenAI's end-user id: accepted, not acted on

    model: Annotated[str, Field(min_length=1, description="A model name of GET /v1/models")]
    max_tokens: PositiveInt | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    top_k: Annotated[int, Field(ge=0, le=100000)] | None = None
    repetition_penalty: Annotated[float, Field(ge=0.01, le=10.0)] | None = None
    stop: str | list[str] | None = None
    seed: Annotated[int, Field(ge=-(2**63), le=2**64 - 1)] | None = None
    n: PositiveInt | None = Field(None, description="Choices, up to the max_n setting (8)")
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = Field(
        None, description="Token id (as a string) -> a bias added to its logit"
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    keep_alive: str | int | float | None = Field(
        None, description="How long the model stays loaded after this request (Ollama's field)"
    )
    user: str | None = None

    @model_validator(mode="after")
    def _sampling_rules(self):
        if not self.model.strip():
            raise BadRequest("'model' must not be empty", param="model")
        if self.stream_options is not None and not self.stream:  # as OpenAI and vLLM do
            raise BadRequest(
                "'stream_options' is only allowed when 'stream' is true", param="stream_options"
            )
        return self


# --------------------------------------------------------------------------- response_format


class TextFormat(Strict):
    type: Literal["text"]


class JSONObjectFormat(Strict):
    type: Literal["json_object"]


class JSONSchemaSpec(Strict):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: str | None = None
    schema_: dict | None = Field(None, alias="schema", description="A JSON Schema")
    strict: bool | None = None


class JSONSchemaFormat(Strict):
    type: Literal["json_schema"]
    json_schema: JSONSchemaSpec


ResponseFormat = tagged(
    "type", {"text": TextFormat, "json_object": JSONObjectFormat, "json_schema": JSONSchemaFormat}
)


def check_schema(schema, param: str, object_only: bool = False) -> None:
    """400 naming `param` unless `schema` is a JSON Schema (an object schema when `object_only`)."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    if not isinstance(schema, dict):
        raise BadRequest(f"'{param}' must be a JSON Schema object", param=param)
    if object_only and schema.get("type", "object") != "object":
        raise BadRequest(f"'{param}' must be an object schema (type: object)", param=param)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise BadRequest(
            f"'{param}' is not a valid JSON Schema: {exc.message}", param=param
        ) from None


def check_response_format(fmt, param: str = "response_format") -> None:
    """The json_schema's schema must be a JSON Schema before anything is loaded."""
    if isinstance(fmt, JSONSchemaFormat):
        schema = fmt.json_schema.schema_
        if schema is not None:
            check_schema(schema, f"{param}.json_schema.schema")


# --------------------------------------------------------------------------- tools


class FunctionDef(Strict):
    name: str
    description: str | None = None
    parameters: dict | None = Field(None, description="A JSON Schema of type object")
    strict: bool | None = None


class Tool(Strict):
    type: Literal["function"]
    function: FunctionDef


class FunctionName(Strict):
    name: str


class NamedToolChoice(Strict):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class FunctionCall(Strict):
    name: str
    arguments: str


class ToolCall(Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


def check_tools(tools: list[Tool] | None, choice, param: str = "tools") -> None:
    """Names present, valid and unique; parameters object schemas; a named choice that exists."""
    names: set[str] = set()
    for i, tool in enumerate(tools or []):
        name, path = tool.function.name, f"{param}[{i}].function"
        if not _TOOL_NAME.match(name):
            raise BadRequest(
                f"'{path}.name' must be 1-64 letters, digits, '_', '.', ':' or '-'",
                param=f"{path}.name",
            )
        if name in names:
            raise BadRequest(f"'{path}.name': duplicate tool name {name!r}", param=f"{path}.name")
        names.add(name)
        if tool.function.parameters is not None:
            check_schema(tool.function.parameters, f"{path}.parameters", object_only=True)
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        raise BadRequest(
            f"'tool_choice.function.name': no tool is named {choice.function.name!r}",
            param="tool_choice.function.name",
        )
    if choice == "required" and not names:
        raise BadRequest("'tool_choice' is 'required' but no tools are given", param="tool_choice")


# --------------------------------------------------------------------------- messages


class ImageURL(Strict):
    url: str
    detail: str | None = None


class InputAudio(Strict):
    data: str
    format: str | None = None


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ImagePart(Strict):
    type: Literal["image_url"]
    image_url: ImageURL | str


class VideoPart(Strict):
    type: Literal["video_url"]
    video_url: ImageURL | str


class AudioPart(Strict):
    type: Literal["input_audio"]
    input_audio: InputAudio


ContentPart = tagged(
    "type",
    {"text": TextPart, "image_url": ImagePart, "video_url": VideoPart, "input_audio": AudioPart},
)


class ChatMessage(Strict):
    """One message; `developer` is an alias of `system`; `tool` answers an assistant's call."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | Annotated[list[ContentPart], Field(min_length=1)] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    # An earlier answer's reasoning: accepted; only templates that read it get it.
    reasoning_content: str | None = None
    reasoning: str | None = None


def check_messages(messages: list[ChatMessage]) -> None:
    """Content where it is needed; tool messages answer a call made earlier in the history."""
    calls: set[str] = set()
    for i, m in enumerate(messages):
        path = f"messages[{i}]"
        if m.tool_calls and m.role != "assistant":
            raise BadRequest(f"'{path}.tool_calls': only assistant messages hold tool calls",
                             param=f"{path}.tool_calls")  # fmt: skip
        calls.update(c.id for c in m.tool_calls or [])
        if m.content is None and not (m.role == "assistant" and m.tool_calls):
            raise BadRequest(
                f"'{path}.content' must be a string or a non-empty list of parts",
                param=f"{path}.content",
            )
        if m.role == "tool":
            if m.tool_call_id is None:
                raise BadRequest(f"'{path}.tool_call_id' is required", param=f"{path}.tool_call_id")
            if m.tool_call_id not in calls:
                raise BadRequest(
                    f"'{path}.tool_call_id' matches no tool call of an earlier assistant message",
                    param=f"{path}.tool_call_id",
                )


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: PositiveInt | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    reasoning_format: Literal[REASONING_FORMATS] = "reasoning_content"
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    reasoning_effort: Literal[EFFORTS] | None = Field(
        None, description="Switches thinking where the template can (enable_thinking)"
    )

    @model_validator(mode="after")
    def _chat_rules(self):
        if self.top_logprobs and not self.logprobs:
            raise BadRequest("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
        check_messages(self.messages)
        check_tools(self.tools, self.tool_choice)
        check_response_format(self.response_format)
        return self


class CompletionRequest(SamplingFields):
    """POST /v1/completions: `prompt` as text, token ids, or a list of either; `echo` with
    `max_tokens` 0 scores the prompt only."""

    prompt: str | list[str] | list[int] | list[list[int]] | None = None
    response_format: ResponseFormat | None = None
    max_tokens: Annotated[int, Field(ge=0)] | None = None
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None

    @model_validator(mode="after")
    def _completion_rules(self):
        if self.max_tokens == 0 and not self.echo:
            raise BadRequest("'max_tokens' must be at least 1 (0 only with echo)",
                             param="max_tokens")  # fmt: skip
        if self.echo and self.stream:
            raise BadRequest("'echo' cannot be streamed here", param="echo")
        check_response_format(self.response_format)
        return self


class EmbeddingRequest(Strict):
    """POST /v1/embeddings; `truncate` (TEI's and Ollama's field) cuts over-long inputs."""

    ignored_fields = ("user",)  # OpenAI's end-user id: accepted, not acted on

    model: Annotated[str, Field(min_length=1)]
    input: str | list[str] | list[int] | list[list[int]] | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: PositiveInt | None = None
    keep_alive: str | int | float | None = None
    truncate: bool = False
    user: str | None = None

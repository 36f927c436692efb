"""Request and result types shared by every API surface and every family handler."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MEDIA_TYPES = ("image", "audio", "video")


@dataclass
class Part:
    """One piece of a message. `data` holds decoded media (PIL image, waveform, VideoClip)."""

    type: str  # text | image | audio | video
    text: str | None = None
    data: Any = None
    field: str = ""  # the request field it came from, for error messages


@dataclass
class Message:
    role: str  # system | user | assistant | tool
    parts: list[Part]
    reasoning: str | None = None  # an assistant turn's reasoning, for templates that take it
    # assistant: calls it made, OpenAI's shape ({"id", "type", "function": {"name", "arguments"}})
    tool_calls: list[dict] | None = None
    tool_call_id: str | None = None  # tool: the call it answers

    def text(self) -> str:
        return "".join(p.text or "" for p in self.parts if p.type == "text")


@dataclass
class SamplingParams:
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    presence_penalty: float | None = None  # OpenAI's, over the generated tokens
    frequency_penalty: float | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit
    logprobs: int | None = None  # None: none; k: the chosen token's logprob and the top k
    prompt_logprobs: int | None = None  # the same for every prompt token (echo)
    n: int = 1  # choices: rows of one batch sharing the prompt's prefill


@dataclass
class GenerationRequest:
    """What every route turns its body into; the service and the handlers take only this."""

    model: str
    messages: list[Message]
    params: SamplingParams = field(default_factory=SamplingParams)
    keep_alive: float | None = None
    raw_prompt: bool = False  # True: feed the text as is, without the chat template
    return_audio: bool = False  # omni: also return speech
    endpoint: str = "native"
    prompt_ids: list[int] | None = None  # a token-id prompt, fed as is (raw_prompt)
    # Chat-template switches (`enable_thinking`), passed only to templates that read them.
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    # Structured output: {"type": "json_object"} or {"type": "json_schema", "schema": {...}};
    # `format_param` names the request field of its errors.
    response_format: dict | None = None
    format_param: str = "response_format"
    # Tools, OpenAI's shapes: [{"type": "function", "function": {...}}]; tool_choice none,
    # auto, required or {"type": "function", "function": {"name": ...}}.
    tools: list[dict] | None = None
    tool_choice: str | dict = "auto"
    parallel_tool_calls: bool = True

    def media_parts(self):
        for msg in self.messages:
            for part in msg.parts:
                if part.type in MEDIA_TYPES:
                    yield part


@dataclass
class TokenLogprob:
    """One token with its log-probability (natural log, of the raw model distribution)
    and the `top` most likely alternatives at its position as (text, logprob) pairs."""

    token: str  # its text (a lone token may decode to U+FFFD: `bytes` are exact)
    logprob: float | None  # None for the first prompt token (nothing predicts it)
    bytes: list[int]
    top: list[tuple[str, float, list[int]]] = field(default_factory=list)
    id: int = -1


@dataclass
class Choice:
    """One of the n answers of a request."""

    index: int
    text: str
    completion_tokens: int
    finish_reason: str
    logprobs: list[TokenLogprob] | None = None
    stop_sequence: str | None = None  # the stop string that ended it, if one did
    tool_calls: list[dict] | None = None  # parsed from the output (text is then the rest)


@dataclass
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # stop | length | cancelled
    model: str
    model_type: str
    generation_method: str
    memory_optimized: bool
    audio_wav_base64: str | None = None
    seconds: float = 0.0
    first_token_seconds: float | None = None
    choices: list[Choice] = field(default_factory=list)  # all n; `text` etc. are choice 0's
    prompt_text: str | None = None  # the prompt as text (echo)
    prompt_logprobs: list[TokenLogprob] | None = None  # with `prompt_logprobs`
    tool_calls: list[dict] | None = None  # parsed from the output (text is then the rest)

    def __post_init__(self):
        if not self.choices:  # a single answer
            self.choices = [Choice(0, self.text, self.completion_tokens, self.finish_reason)]

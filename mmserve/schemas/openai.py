"""The OpenAI JSON contract: /v1 bodies into GenerationRequests (param paths on every error),
remote media fetched under a host allow-list, and the response objects of each endpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadRequest
from ..reasoning import effort_switch
from ..remote_media import fetch_remote
from ..types import GenerationRequest, Message, Part, SamplingParams
from .fields import get_inputs, get_keep_alive
from .native import MAX_EMBED_INPUTS
from .openai_media import (  # noqa: F401 - transcriptions are part of this module's API
    DEFAULT_TRANSCRIBE_PROMPT,
    TRANSCRIPTION_FORMATS,
    MediaReader,
    TranscriptionCall,
    content_part,
    parse_transcription,
)
from .openai_objects import (  # noqa: F401 - the response builders, re-exported
    chat_completion,
    embedding_data,
    finish_reason,
    model_entry,
    new_id,
    text_choices,
    usage,
)
from .openai_requests import (
    REASONING_FORMATS,  # noqa: F401 - part of this module's API
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    EmbeddingRequest,
    SamplingFields,
)
from .typed import validate

_REASONING_KEYS = {"reasoning_content": "reasoning_content", "reasoning": "reasoning"}
MAX_PROMPTS = 32  # prompts in one /v1/completions request
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}

# Fields of the OpenAI API this server does not implement, with the values that mean "off".
# None is always accepted; anything else is a 400 naming the field.
_CHAT_UNSUPPORTED = {
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


def _limit(value: int | None, param: str, limit: int) -> int | None:
    if value is not None and value > limit:
        raise BadRequest(f"'{param}' must be at most {limit}", param=param)
    return value


def stop_list(stop, max_stop: int, param: str = "stop") -> list[str]:
    """A validated `stop` (a string or a list of strings) as at most `max_stop` non-empty ones."""
    if stop is None:
        return []
    items = [stop] if isinstance(stop, str) else list(stop)
    for i, item in enumerate(items):
        if not item:
            name = param if isinstance(stop, str) else f"{param}[{i}]"
            raise BadRequest(f"'{name}' must not be empty", param=name)
    if len(items) > max_stop:
        raise BadRequest(
            f"'{param}' has {len(items)} strings; the limit is max_stop={max_stop}",
            param=param,
            code="limit_exceeded",
        )
    return items


def sampling(req: SamplingFields, settings) -> SamplingParams:
    """Sampling parameters of a validated body, bounded by the settings; max_completion_tokens
    wins over the older max_tokens."""
    limit = settings.max_new_tokens_limit
    max_tokens = _limit(req.max_tokens, "max_tokens", limit)
    max_completion = _limit(getattr(req, "max_completion_tokens", None), "max_completion_tokens",
                            limit)  # fmt: skip
    return SamplingParams(
        max_new_tokens=max_completion if max_completion is not None else max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        repetition_penalty=req.repetition_penalty,
        stop=stop_list(req.stop, settings.max_stop),
        seed=req.seed,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        logit_bias=logit_bias(req.logit_bias),
        n=_limit(req.n, "n", settings.max_n) or 1,
    )


def logit_bias(raw: dict[str, float] | None) -> dict[int, float]:
    """OpenAI's `logit_bias` with int keys; ids are checked against the model's vocabulary
    once it is loaded (`InferenceService._prepare`)."""
    out = {}
    for key, value in (raw or {}).items():
        try:
            out[int(key)] = value
        except ValueError:
            raise BadRequest(f"'logit_bias.{key}': keys must be token ids",
                             param=f"logit_bias.{key}") from None  # fmt: skip
    return out


def _keep_alive(req) -> float | None:
    return get_keep_alive({"keep_alive": req.keep_alive})


def _lookup(model: str, lookup) -> str:
    if lookup is not None:
        lookup(model)  # 404 model_not_found before any media is decoded or fetched
    return model


def _include_usage(req: SamplingFields) -> bool:
    return bool(req.stream_options and req.stream_options.include_usage)


# --------------------------------------------------------------------------- chat


def _message(m: ChatMessage, path: str, media: MediaReader) -> Message:
    """One validated message as a Message (developer is an alias of system); an assistant's
    tool calls and a tool's answer keep their ids."""
    role = _ROLES.get(m.role, m.role)
    calls = [c.model_dump() for c in m.tool_calls] if m.tool_calls else None
    reasoning = m.reasoning_content or m.reasoning  # given only to templates that read it
    if m.content is None:
        return Message(role, [], reasoning, tool_calls=calls)
    if isinstance(m.content, str):
        part = Part("text", text=m.content, field=f"{path}.content")
        return Message(role, [part], reasoning, tool_calls=calls, tool_call_id=m.tool_call_id)
    parts = [content_part(item, f"{path}.content[{j}]", m.role, media) for j, item in
             enumerate(m.content)]  # fmt: skip
    return Message(role, parts, reasoning, tool_calls=calls, tool_call_id=m.tool_call_id)


def response_format(fmt) -> dict | None:
    """A validated response_format as the engine's: None for text."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    return {"type": "json_schema", "schema": fmt.json_schema.schema_}


def _tool_choice(req) -> str | dict:
    choice = req.tool_choice
    if choice is None:
        return "auto"
    return choice if isinstance(choice, str) else choice.model_dump()


def parse_chat(body, settings, tmp_dir: Path, lookup=None, fetch=fetch_remote) -> ChatCall:
    """POST /v1/chat/completions. `chat_template` and unknown fields are ignored."""
    req = validate(ChatCompletionRequest, body)
    reject_unsupported(body, _CHAT_UNSUPPORTED)
    model = _lookup(req.model, lookup)
    params = sampling(req, settings)
    if req.logprobs:
        params.logprobs = req.top_logprobs or 0
    keep_alive = _keep_alive(req)
    media = MediaReader(settings, tmp_dir, fetch)
    messages = [_message(m, f"messages[{i}]", media) for i, m in enumerate(req.messages)]
    request = GenerationRequest(
        model=model,
        messages=messages,
        params=params,
        keep_alive=keep_alive,
        endpoint="openai",
        response_format=response_format(req.response_format),
        tools=[t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None,
        tool_choice=_tool_choice(req),
        parallel_tool_calls=req.parallel_tool_calls is not False,
        template_kwargs=effort_switch(req.reasoning_effort),
    )
    return ChatCall(request, req.stream, _include_usage(req), req.reasoning_format)


# --------------------------------------------------------------------------- completions


def _prompts(prompt) -> list[tuple[str, str | None, list[int] | None]]:
    """(field, text, token ids) per prompt: a string, a list of strings, a list of token
    ids, or a list of such lists (the typed model has checked the JSON types)."""
    if isinstance(prompt, str):
        prompts = [("prompt", prompt, None)]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
        prompts = [("prompt", None, prompt)]
    elif isinstance(prompt, list) and prompt:
        prompts = [(f"prompt[{i}]", p if isinstance(p, str) else None,
                    None if isinstance(p, str) else p) for i, p in enumerate(prompt)]  # fmt: skip
    else:
        raise BadRequest(
            "'prompt' must be a string, a list of strings, a list of token ids or a list of "
            "such lists",
            param="prompt",
        )
    if len(prompts) > MAX_PROMPTS:
        raise BadRequest(
            f"at most {MAX_PROMPTS} prompts per request", param="prompt", code="limit_exceeded"
        )
    for field, text, ids in prompts:
        if not text and not ids:
            raise BadRequest(f"'{field}' must not be empty", param=field)
    return prompts


def parse_completion(body, settings, lookup=None) -> CompletionCall:
    """POST /v1/completions: one raw-prompt request per prompt (text or token ids).

    `logprobs` k (0-5) gives the legacy logprobs object; `echo` puts the prompt before the
    completion (with its tokens' logprobs when `logprobs` is set); with echo, `max_tokens` 0
    only scores the prompt (the loglikelihood call of eval harnesses)."""
    req = validate(CompletionRequest, body)
    reject_unsupported(body, _COMPLETION_UNSUPPORTED)
    model = _lookup(req.model, lookup)
    prompts = _prompts(req.prompt)
    if req.stream and len(prompts) > 1:
        raise BadRequest("streaming takes a single prompt", param="prompt")
    params = sampling(req, settings)
    params.logprobs = req.logprobs
    if req.echo and req.logprobs is not None:
        params.prompt_logprobs = req.logprobs
    keep_alive = _keep_alive(req)
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
            response_format=response_format(req.response_format),
        )
        for field, text, ids in prompts
    ]
    return CompletionCall(requests, req.stream, _include_usage(req), req.echo)


# --------------------------------------------------------------------------- embeddings


def parse_embeddings(body, lookup=None) -> EmbeddingCall:
    """POST /v1/embeddings: text inputs only; `truncate` (TEI's and Ollama's field) cuts an
    input longer than the model takes instead of refusing it."""
    req = validate(EmbeddingRequest, body)
    model = _lookup(req.model, lookup)
    texts = get_inputs({"input": req.input}, MAX_EMBED_INPUTS)
    return EmbeddingCall(
        model=model,
        texts=[t for _, t in texts],
        encoding_format=req.encoding_format,
        dimensions=req.dimensions,
        keep_alive=_keep_alive(req),
        truncate=req.truncate,
        fields=[f for f, _ in texts],
    )

"""Token limits of a loaded model: its context length, the prompt checks, and OpenAI's wording
for a context overflow (code `context_length_exceeded`, which LangChain and LiteLLM recognise).
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import ContextLengthExceeded

# Config keys that hold a model's context length, by architecture (Llama/Qwen/BERT, GPT-2,
# a few others), and the sub-configs a multimodal model keeps its language model's in.
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
_SUB_CONFIGS = ("text_config", "thinker_config", "llm_config", "language_config")
# Tokenizers without a limit say model_max_length = int(1e30) (transformers' VERY_LARGE_INTEGER).
_SENTINEL = 10**12


def _config_context(config) -> int | None:
    """The first context-length key of `config`, else of its language sub-config."""
    if config is None:
        return None
    for key in _CONTEXT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    for sub in _SUB_CONFIGS:
        found = _config_context(getattr(config, sub, None))
        if found:
            return found
    return None


def _sentence_transformers_limit(path: Path | None) -> int | None:
    """`max_seq_length` of a sentence-transformers checkpoint (what it was trained to take)."""
    if path is None:
        return None
    try:
        data = json.loads((Path(path) / "sentence_bert_config.json").read_text())
    except (OSError, ValueError):
        return None
    value = data.get("max_seq_length") if isinstance(data, dict) else None
    return value if isinstance(value, int) and value > 0 else None


def context_length(model, tokenizer, path: Path | None = None) -> int | None:
    """Tokens the model takes at once (prompt and completion together); None when unknown.

    The smallest real value of: the config's `max_position_embeddings` (or its kin, also in a
    `text_config`), the tokenizer's `model_max_length` (its huge "no limit" sentinel is
    ignored), and a sentence-transformers `max_seq_length` found at `path`. Read once, when
    the model is loaded (LoadedModel.context).
    """
    values = [
        _config_context(getattr(model, "config", None)),
        getattr(tokenizer, "model_max_length", None),
        _sentence_transformers_limit(path),
    ]
    real = [v for v in values if isinstance(v, int) and 0 < v < _SENTINEL]
    return min(real) if real else None


def overflow_message(limit: int, prompt: int, completion: int) -> str:
    """OpenAI's wording for a request that does not fit (clients match on it)."""
    return (
        f"This model's maximum context length is {limit} tokens. However, you requested "
        f"{prompt + completion} tokens ({prompt} in the messages, {completion} in the "
        "completion). Please reduce the length of the messages or completion."
    )


def check_prompt(
    prompt_tokens: int,
    requested: int | None,
    default: int,
    context: int | None,
    max_prompt_tokens: int,
    param: str,
    completion_in_context: bool = True,
) -> int:
    """The max new tokens to generate, or ContextLengthExceeded (400) naming `param`.

    `requested` is the client's max tokens (None when not sent) and `default` the one used
    otherwise: a request that sets it and does not fit is refused, as OpenAI does; the default
    is capped at what the context leaves. `max_prompt_tokens` (a server setting) bounds the
    prompt alone. `completion_in_context` is False for encoder-decoder models (BLIP), whose
    answer has its own positions: then only the prompt must fit.
    """
    shown = requested or 0
    if prompt_tokens > max_prompt_tokens and (context is None or max_prompt_tokens < context):
        raise ContextLengthExceeded(
            overflow_message(max_prompt_tokens, prompt_tokens, shown)
            + f" (This server takes prompts of at most max_prompt_tokens={max_prompt_tokens}.)",
            param=param,
        )
    if context is None:
        return requested or default
    if not completion_in_context:
        if prompt_tokens > context:
            raise ContextLengthExceeded(overflow_message(context, prompt_tokens, 0), param=param)
        return requested or default
    if prompt_tokens + max(shown, 1) > context:
        raise ContextLengthExceeded(overflow_message(context, prompt_tokens, shown), param=param)
    return requested if requested else min(default, context - prompt_tokens)


def prompt_param(req) -> str:
    """The request field a prompt overflow names: `messages` for a chat body, else the prompt
    field the client sent (`prompt`, or `prompt[2]` among several /v1/completions prompts)."""
    for msg in req.messages:
        for part in msg.parts:
            if part.field.startswith("messages"):
                return "messages"
            if part.type == "text" and part.field.startswith("prompt"):
                return part.field
    return "prompt"

"""Log-probabilities: captured from the raw logits of a step, rendered in OpenAI's shapes.

Every route reports the same numbers: the natural log of the softmax of the model's raw
logits at that position, before `logit_bias`, penalties, temperature, top-k/top-p and
grammar masks (vLLM's default, and what eval harnesses score). A sampled token may
therefore have a logprob that its processed distribution would not give it.
"""

from __future__ import annotations

import torch

from .types import TokenLogprob

MAX_TOP_CHAT = 20  # chat `top_logprobs`
MAX_TOP_LEGACY = 5  # /v1/completions `logprobs`


def token_text(tokenizer, token: int) -> tuple[str, list[int]]:
    """(text, UTF-8 bytes) of one token; byte-level tokens that are part of a character
    decode to U+FFFD, so their bytes come from the vocabulary where it is byte-level."""
    text = tokenizer.decode([token], skip_special_tokens=False)
    raw = text.encode("utf-8")
    if "\ufffd" in text:
        piece = tokenizer.convert_ids_to_tokens(token)
        try:
            from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

            table = {c: b for b, c in bytes_to_unicode().items()}
            raw = bytes(table[c] for c in piece)
        except (KeyError, TypeError, ImportError):
            pass
    return text, list(raw)


def capture(tokenizer, logits: torch.Tensor, token: int | None, top: int) -> TokenLogprob:
    """The entry for `token` at one position: `logits` (vocab,) raw; `top` alternatives.
    `token` None gives the first prompt token's entry (logprob None, no alternatives)."""
    if token is None:
        raise ValueError("use first_prompt_entry for a position without logits")
    logp = torch.log_softmax(logits.float(), dim=-1)
    text, raw = token_text(tokenizer, token)
    entry = TokenLogprob(text, float(logp[token]), raw, id=int(token))
    if top > 0:
        values, ids = torch.topk(logp, top)
        for v, i in zip(values.tolist(), ids.tolist(), strict=True):
            t, b = token_text(tokenizer, i)
            entry.top.append((t, float(v), b))
    return entry


def first_prompt_entry(tokenizer, token: int) -> TokenLogprob:
    """The first prompt token: nothing predicts it, so its logprob is null (OpenAI's echo)."""
    text, raw = token_text(tokenizer, token)
    return TokenLogprob(text, None, raw, id=int(token))


def chat_content(entries: list[TokenLogprob] | None) -> dict | None:
    """`choices[i].logprobs` of a chat completion (or a chunk): {"content": [...]}."""
    if entries is None:
        return None
    return {
        "content": [
            {
                "token": e.token,
                "logprob": e.logprob,
                "bytes": e.bytes,
                "top_logprobs": [{"token": t, "logprob": v, "bytes": b} for t, v, b in e.top],
            }
            for e in entries
        ],
        "refusal": None,
    }


def legacy(entries: list[TokenLogprob] | None, offset: int = 0) -> dict | None:
    """The /v1/completions logprobs object (`tokens`, `token_logprobs`, `top_logprobs`,
    `text_offset`); offsets count characters from `offset` (where the text starts)."""
    if entries is None:
        return None
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for e in entries:
        out["tokens"].append(e.token)
        out["token_logprobs"].append(e.logprob)
        out["top_logprobs"].append({t: v for t, v, _ in e.top} if e.logprob is not None else None)
        out["text_offset"].append(offset)
        offset += len(e.token)
    return out


def join_legacy(a: dict | None, b: dict | None) -> dict | None:
    """Two legacy objects one after the other (echo: the prompt's, then the completion's)."""
    if a is None or b is None:
        return a or b
    return {k: a[k] + b[k] for k in a}

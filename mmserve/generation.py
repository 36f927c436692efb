"""Small facts about a loaded generating model shared by its engines: EOS ids, context, padding."""

from __future__ import annotations

import torch


def left_pad(rows: list[torch.Tensor], pad_id: int, device=None):
    """Token rows as one left-padded batch: (input_ids, attention_mask), both (rows, width)."""
    width = max(r.shape[0] for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        input_ids[i, width - r.shape[0] :] = r
        mask[i, width - r.shape[0] :] = 1
    return input_ids, mask


def eos_ids(lm) -> set[int]:
    """The ids that end a generation: the generation config's, else the tokenizer's."""
    ids = lm.model.generation_config.eos_token_id
    if ids is None:
        ids = getattr(lm.tokenizer, "eos_token_id", None)
    if ids is None:
        return set()
    return set(ids if isinstance(ids, (list, tuple)) else [ids])


def logits_size(lm) -> int:
    """Columns of the model's logits (its vocabulary, often padded past the tokenizer's)."""
    head = lm.model.get_output_embeddings() if hasattr(lm.model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if weight is not None:
        return int(weight.shape[0])
    config = lm.model.config
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    return int(getattr(text, "vocab_size", None) or len(lm.tokenizer))

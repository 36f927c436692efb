"""Embedding family: encoder models with masked mean pooling and L2 normalisation."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ContextLengthExceeded
from ..limits import overflow_message
from .base import FamilyHandler


@dataclass
class Embeddings:
    """Unit vectors (one per text, in order), the tokens the model read (special tokens
    included, after any truncation) and, per text, whether it was cut to the model's limit."""

    vectors: list[list[float]]
    tokens: int
    truncated: list[bool]


class EmbeddingHandler(FamilyHandler):
    family = "embedding"
    capabilities = ("text",)
    default_loader = "AutoModel"
    default_processor = "AutoTokenizer"
    generates = False

    def embed(
        self, lm, texts: list[str], truncate: bool = False, fields: list[str] | None = None
    ) -> Embeddings:
        """Unit vectors for `texts`: the same result alone or batched.

        A text longer than the model's limit (`lm.context`: its position embeddings, its
        tokenizer's and sentence-transformers' max length, the smallest) raises
        ContextLengthExceeded naming `fields[i]`, unless `truncate`: then its first tokens up
        to the limit are embedded and it is reported in `truncated`.
        """
        limit = lm.context
        lengths = [len(ids) for ids in lm.tokenizer(texts)["input_ids"]]
        truncated = [bool(limit) and n > limit for n in lengths]
        if not truncate:
            for i, cut in enumerate(truncated):
                if cut:
                    raise ContextLengthExceeded(
                        overflow_message(limit, lengths[i], 0)
                        + f' Or send "truncate": true to embed its first {limit} tokens.',
                        param=fields[i] if fields else "input",
                    )
        batch = lm.tokenizer(
            texts, padding=True, truncation=bool(limit), max_length=limit, return_tensors="pt"
        )
        inputs = self.to_device(lm, batch)
        with torch.inference_mode():
            hidden = lm.model(**inputs).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        vectors = torch.nn.functional.normalize(pooled.float(), p=2, dim=1)
        tokens = int(inputs["attention_mask"].sum().item())
        return Embeddings(vectors.cpu().tolist(), tokens, truncated)

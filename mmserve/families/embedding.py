"""Embedding family: encoder models with masked mean pooling and L2 normalisation."""

from __future__ import annotations

import torch

from .base import FamilyHandler


class EmbeddingHandler(FamilyHandler):
    family = "embedding"
    capabilities = ("text",)
    default_loader = "AutoModel"
    default_processor = "AutoTokenizer"
    generates = False

    def embed(self, lm, texts: list[str], max_length: int = 512) -> tuple[list[list[float]], int]:
        """Unit vectors for `texts` (same result alone or batched) and the token count."""
        batch = lm.tokenizer(
            texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        inputs = self.to_device(lm, batch)
        with torch.inference_mode():
            hidden = lm.model(**inputs).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        vectors = torch.nn.functional.normalize(pooled.float(), p=2, dim=1)
        return vectors.cpu().tolist(), int(inputs["attention_mask"].sum().item())

"""Text family: causal LMs driven through their chat template."""

from __future__ import annotations

from ..errors import BadRequest
from ..types import GenerationRequest
from .base import FamilyHandler, Prepared


class TextHandler(FamilyHandler):
    family = "text"
    default_loader = "AutoModelForCausalLM"
    default_processor = "AutoTokenizer"
    batchable = True  # concurrent requests may share one padded generate (mmserve.batching)

    def render_prompt(self, tokenizer, req: GenerationRequest) -> tuple[str, bool]:
        """The prompt string and whether the tokenizer should add its special tokens."""
        if req.raw_prompt or not getattr(tokenizer, "chat_template", None):
            return "".join(m.text() for m in req.messages), True
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # The template already holds BOS when the model wants one: do not add a second.
        return text, False

    def prepare(self, lm, req: GenerationRequest) -> Prepared:
        for part in req.media_parts():
            raise BadRequest(f"model '{lm.spec.name}' takes text only", param=part.field)
        text, special = self.render_prompt(lm.tokenizer, req)
        batch = lm.tokenizer(text, return_tensors="pt", add_special_tokens=special)
        inputs = self.to_device(lm, batch)
        return Prepared(inputs, int(inputs["input_ids"].shape[1]), {"prompt_text": text})

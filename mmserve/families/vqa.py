"""Visual question answering family (BLIP VQA): one image and a question, a short answer."""

from __future__ import annotations

from ..errors import BadRequest
from ..types import GenerationRequest
from .base import FamilyHandler, Prepared


class VQAHandler(FamilyHandler):
    """BLIP-style VQA. `generate` returns decoder ids only: the decoder start token
    ([DEC]) followed by the answer, never the question.

    A TextIteratorStreamer with skip_prompt=True skips exactly that start token (the
    decoder's own one-token prompt), so the base `strips_prompt_in_stream` holds.
    """

    family = "vqa"
    capabilities = ("text", "image")
    # AutoModelForImageTextToText would silently load BLIP's captioning head instead.
    default_loader = "AutoModelForVisualQuestionAnswering"
    default_processor = "AutoProcessor"
    cpu_fallback = True
    completion_in_context = False  # the question feeds the encoder; the answer has its own

    def load(self, spec, path, plan):
        model, processor = super().load(spec, path, plan)
        gc = model.generation_config
        if gc.eos_token_id is None:  # the decoder stops at [SEP]; eos_ids reads this
            gc.eos_token_id = getattr(model.config.text_config, "sep_token_id", None)
        return model, processor

    def check_request(self, spec, req: GenerationRequest) -> None:
        images = [p for p in req.media_parts() if p.type == "image"]
        if not images:
            raise BadRequest(
                f"model '{spec.name}' answers questions about an image; send one", param="image"
            )
        if len(images) > 1:
            raise BadRequest(
                f"model '{spec.name}' takes exactly one image, got {len(images)}",
                param=images[1].field,
            )
        for part in req.media_parts():
            if part.type != "image":
                raise BadRequest(f"model '{spec.name}' takes an image only", param=part.field)

    def prepare(self, lm, req: GenerationRequest) -> Prepared:
        self.check_request(lm.spec, req)
        image = next(p for p in req.media_parts() if p.type == "image").data
        question = " ".join(
            m.text().strip() for m in req.messages if m.role == "user" and m.text().strip()
        )
        if not question:
            raise BadRequest("the question (the user's text) is empty", param="prompt")
        batch = lm.processor(images=image, text=question, return_tensors="pt")
        inputs = self.to_device(lm, batch)
        return Prepared(inputs, int(inputs["input_ids"].shape[1]), {"prompt_text": question})

    def completion_ids(self, lm, prepared: Prepared, sequences) -> list[int]:
        """The answer ids: the decoder output without its start token."""
        ids = sequences[0].tolist()
        start = getattr(lm.model, "decoder_start_token_id", None)
        return ids[1:] if ids and ids[0] == start else ids

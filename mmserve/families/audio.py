"""Audio family (Qwen2-Audio style): transcription and questions about audio in a chat."""

from __future__ import annotations

from ..types import GenerationRequest
from .base import FamilyHandler, Prepared
from .vision import qwen_media_entry, raw_media_check, raw_text_prepared

# media.load_audio decodes every clip to float32 mono at this rate.
SAMPLE_RATE = 16000


class AudioHandler(FamilyHandler):
    family = "audio"
    capabilities = ("text", "audio")
    # Neither AutoModelForCausalLM nor AutoModelForImageTextToText loads Qwen2-Audio.
    default_loader = "Qwen2AudioForConditionalGeneration"
    default_processor = "AutoProcessor"
    cpu_fallback = True
    accepts = ("audio",)

    def check_request(self, spec, req: GenerationRequest) -> None:
        raw_media_check(req)

    def prepare(self, lm, req: GenerationRequest) -> Prepared:
        if req.raw_prompt:
            return raw_text_prepared(self, lm, req)
        processor = lm.processor
        messages = self.chat_messages(
            req, lambda part: qwen_media_entry(processor, part, self.accepts)
        )
        prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        audios = [p.data for p in req.media_parts() if p.type == "audio"]
        kwargs = {"audio": audios, "sampling_rate": SAMPLE_RATE} if audios else {}
        batch = processor(text=prompt, return_tensors="pt", padding=True, **kwargs)
        inputs = self.to_device(lm, batch)
        return Prepared(inputs, int(inputs["input_ids"].shape[1]), {"prompt_text": prompt})

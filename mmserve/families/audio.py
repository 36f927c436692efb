"""Audio family (Qwen2-Audio style): transcription and questions about audio in a chat."""

from __future__ import annotations

from ..types import GenerationRequest
from .base import FamilyHandler, Prepared
from .rules import SAMPLE_RATE, MediaRules, whisper_seconds
from .vision import qwen_media_entry, raw_media_check, raw_text_prepared

# OpenAI's minimum ("minimum audio length is 0.1 seconds"). Qwen2-Audio's encoder fails below
# 7 feature frames (0.07 s): fewer than two audio tokens.
MIN_AUDIO_SECONDS = 0.1


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

    def media_rules(self, spec, path) -> MediaRules:
        """At least 0.1 s per clip; at most what the Whisper feature extractor takes (30 s for
        Qwen2-Audio), which would cut a longer clip without a word."""
        return MediaRules(
            min_audio_seconds=MIN_AUDIO_SECONDS, max_audio_seconds=whisper_seconds(path)
        )

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

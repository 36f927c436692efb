"""Omni family (Qwen2.5-Omni): any mix of text, image, audio and video in; text, and speech on
request, out."""

from __future__ import annotations

import base64
import dataclasses
import io

import torch

from ..errors import BadRequest
from ..types import GenerationRequest
from .base import FamilyHandler, Prepared
from .rules import MediaRules, whisper_seconds
from .vision import (
    VIDEO_FRAME_MAX_PIXELS,
    pixel_bounds,
    qwen_media_entry,
    qwen_media_rules,
    raw_media_check,
    raw_text_prepared,
    video_fps,
)

# Qwen2.5-Omni produces speech only under this exact system prompt; it is the default one.
OMNI_SYSTEM_PROMPT = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of "
    "perceiving auditory and visual inputs, as well as generating text and speech."
)
SPEECH_SAMPLE_RATE = 24000  # Qwen2.5-Omni's token2wav vocoder output
# With speech output the full model hands unprefixed inputs to the talker too, which
# rejects pixels: they go to the thinker only (their *_grid_thw stay shared).
_THINKER_ONLY_INPUTS = ("pixel_values", "pixel_values_videos")
# Per-entry `generation` keys for the speech path (models_config.GENERATION_KEYS).
_SPEECH_KEYS = ("talker_max_new_tokens", "token2wav_num_steps")


def _has_talker(model) -> bool:
    return bool(getattr(model, "has_talker", False))


def _talker_eos(model) -> list[int]:
    """The codec ids that end the talker's speech: its pad and end tokens, from the config."""
    cfg = model.config.talker_config
    ids = [cfg.tts_codec_pad_token_id, cfg.tts_codec_end_token_id]
    return [int(i) for i in ids if i is not None]


def _omni_smart_resize(*args):
    from qwen_omni_utils.v2_5.vision_process import smart_resize  # imports torchvision

    return smart_resize(*args)


def wav_base64(waveform, sample_rate: int = SPEECH_SAMPLE_RATE) -> str:
    """A mono float waveform as base64 16-bit PCM WAV."""
    import numpy as np
    import soundfile as sf

    samples = np.clip(np.asarray(waveform, dtype=np.float32).reshape(-1), -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(buf, samples, sample_rate, format="WAV", subtype="PCM_16")
    return base64.b64encode(buf.getvalue()).decode("ascii")


class OmniHandler(FamilyHandler):
    """Text comes from the thinker. The default loader is the thinker alone (no speech);
    an entry with `loader_class: Qwen2_5OmniForConditionalGeneration` loads the full model
    (thinker + talker + token2wav), which also speaks when a request sets `return_audio`.
    """

    family = "omni"
    capabilities = ("text", "image", "audio", "video")
    speaks = True  # with the full model class only: check_request refuses the thinker alone
    default_loader = "Qwen2_5OmniThinkerForConditionalGeneration"
    default_processor = "AutoProcessor"
    cpu_fallback = True
    accepts = ("image", "audio", "video")

    def load(self, spec, path, plan):
        model, processor = super().load(spec, path, plan)
        if hasattr(model, "thinker"):
            # eos_ids reads the top-level generation config; text ends where the
            # thinker's does.
            model.generation_config.eos_token_id = model.thinker.generation_config.eos_token_id
        return model, processor

    def check_request(self, spec, req: GenerationRequest) -> None:
        raw_media_check(req)
        loader = spec.loader_class or self.default_loader
        if req.return_audio and loader.endswith("ThinkerForConditionalGeneration"):
            raise BadRequest(self._no_talker(spec.name), param="return_audio")

    def media_rules(self, spec, path) -> MediaRules:
        """qwen-omni-utils' image rules; audio up to what the Whisper feature extractor takes
        (it would cut a longer clip without a word). Short clips are fine (any length > 0)."""
        rules = qwen_media_rules(path, _omni_smart_resize)
        return dataclasses.replace(rules, max_audio_seconds=whisper_seconds(path))

    @staticmethod
    def _no_talker(name: str) -> str:
        return (
            f"model '{name}' cannot return audio: its checkpoint is loaded without a talker "
            "(set loader_class: Qwen2_5OmniForConditionalGeneration in its table entry)"
        )

    def prepare(self, lm, req: GenerationRequest) -> Prepared:
        if req.return_audio and not _has_talker(lm.model):
            raise BadRequest(self._no_talker(lm.spec.name), param="return_audio")
        if req.raw_prompt:
            prepared = raw_text_prepared(self, lm, req)
        else:
            prepared = self._chat_prepared(lm, req)
        prepared.extra["speech"] = bool(req.return_audio)
        return prepared

    def _chat_prepared(self, lm, req: GenerationRequest) -> Prepared:
        from qwen_omni_utils import process_mm_info

        processor = lm.processor
        messages = self.chat_messages(
            req, lambda part: qwen_media_entry(processor, part, self.accepts)
        )
        if not any(m["role"] == "system" for m in messages):
            system = {"role": "system", "content": [{"type": "text", "text": OMNI_SYSTEM_PROMPT}]}
            messages.insert(0, system)
        prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        audios, images, videos, vkw = process_mm_info(
            messages, use_audio_in_video=False, return_video_kwargs=True
        )
        kwargs = {}
        if videos:
            # The processor class carries its own video size, which wins over the checkpoint's
            # saved one unless a size is passed: pass the checkpoint's, per-frame capped.
            bounds = pixel_bounds(processor.video_processor, VIDEO_FRAME_MAX_PIXELS)
            size = {"shortest_edge": bounds["min_pixels"], "longest_edge": bounds["max_pixels"]}
            kwargs = {**video_fps(vkw), "videos_kwargs": {"size": size}}
        batch = processor(
            text=[prompt],
            audio=audios,
            images=images,
            videos=videos,
            return_tensors="pt",
            padding=True,
            load_audio_from_video=False,
            **kwargs,
        )
        inputs = self.to_device(lm, batch)
        return Prepared(inputs, int(inputs["input_ids"].shape[1]), {"prompt_text": prompt})

    def generate(self, lm, prepared: Prepared, gen_kwargs: dict):
        model = lm.model
        if not hasattr(model, "thinker"):  # the thinker alone is a plain generate()
            return super().generate(lm, prepared, gen_kwargs)
        # The full model routes thinker_* kwargs (streamer, stopping criteria, sampling) to
        # the thinker only; unprefixed ones would also reach the talker.
        kwargs = {f"thinker_{k}": v for k, v in gen_kwargs.items()}
        with torch.inference_mode():
            if not prepared.extra.get("speech"):
                return model.generate(**prepared.inputs, **kwargs, generation_mode="text")
            inputs = {
                (f"thinker_{k}" if k in _THINKER_ONLY_INPUTS else k): v
                for k, v in prepared.inputs.items()
            }
            speech = {
                k: int(lm.spec.generation[k]) for k in _SPEECH_KEYS if k in lm.spec.generation
            }
            sequences, waveform = model.generate(
                **inputs, **kwargs, **speech, talker_eos_token_id=_talker_eos(model)
            )
        prepared.extra["waveform"] = waveform.float().cpu().numpy()
        return sequences

    def extras(self, lm, prepared: Prepared, req: GenerationRequest) -> dict:
        waveform = prepared.extra.get("waveform")
        if waveform is None:
            return {}
        return {"audio_wav_base64": wav_base64(waveform)}

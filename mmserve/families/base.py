"""The interface every model family implements: load, prepare inputs, generate, decode."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import BadRequest
from ..loader import DevicePlan, model_kwargs, resolve_class
from ..models_config import ModelSpec
from ..types import GenerationRequest
from .rules import MediaRules


@dataclass
class Prepared:
    """Model inputs for one request, on the model's device."""

    inputs: dict[str, Any]
    prompt_tokens: int
    extra: dict = field(default_factory=dict)


class FamilyHandler:
    """Base handler. Subclasses set the class names and override what differs.

    Handlers are stateless: one instance serves every model of its family, and
    everything per model lives in the LoadedModel passed in.
    """

    family = ""
    # The inputs the family's models take: the default of a table entry's `capabilities`
    # (an entry may narrow it, never widen it).
    capabilities: tuple[str, ...] = ("text",)
    speaks = False  # can answer with speech too (a native request's `return_audio`)
    default_loader = "AutoModelForCausalLM"
    default_processor = "AutoTokenizer"
    generates = True  # False for embedding models
    # True: on a second CUDA out-of-memory the service may run the request on a CPU copy
    # of the model (settings.allow_cpu_fallback; never for quantized entries).
    cpu_fallback = False
    # False for encoder-decoder models (BLIP): the answer has its own positions, so only the
    # prompt must fit the context (mmserve.limits.check_prompt).
    completion_in_context = True
    # True: a /v1/completions prompt may be token ids (`GenerationRequest.prompt_ids`).
    token_prompts = False

    def load(self, spec: ModelSpec, path: Path, plan: DevicePlan):
        """from_pretrained with the entry's (or the family's) classes."""
        loader = resolve_class(spec.loader_class or self.default_loader)
        proc_cls = resolve_class(spec.processor_class or self.default_processor)
        processor = proc_cls.from_pretrained(path, trust_remote_code=spec.trust_remote_code)
        model = loader.from_pretrained(path, **model_kwargs(spec, plan))
        return model, processor

    def warm_up(self, lm) -> None:
        """Run once right after loading, on the model's device (e.g. to compile it)."""

    def make_engine(self, lm, settings):
        """What runs this model's generations; the manager makes it at load, closes it at
        unload. Default: one `generate` at a time on the model's own thread."""
        if not self.generates:
            return None
        from ..serial import SerialEngine

        return SerialEngine(lm)

    # --- inputs -----------------------------------------------------------
    def check_request(self, spec: ModelSpec, req: GenerationRequest) -> None:
        """Family rules checked before the model is loaded; raise BadRequest to refuse."""

    def media_rules(self, spec: ModelSpec, path: Path | None) -> MediaRules:
        """What this family's processor and model take of media, from the checkpoint's saved
        processor settings at `path` (read without loading). Checked before any load."""
        return MediaRules()

    def prepare(self, lm, req: GenerationRequest) -> Prepared:
        raise NotImplementedError

    @staticmethod
    def to_device(lm, batch) -> dict:
        """Move a processor output to the model's device, floats in the model's dtype."""
        device = lm.model.device
        out = {}
        for key, value in dict(batch).items():
            if isinstance(value, torch.Tensor):
                if value.is_floating_point():
                    value = value.to(device=device, dtype=lm.model.dtype)
                else:
                    value = value.to(device)
            out[key] = value
        return out

    @staticmethod
    def chat_messages(req: GenerationRequest, media_entry=None) -> list[dict]:
        """Messages in the chat-template form of transformers: content as a list of parts.
        Tools, earlier calls and tool answers in the generic text form (`mmserve.tools`)."""
        from ..tools import chat_dicts

        def content_of(msg) -> list[dict]:
            content = []
            for part in msg.parts:
                if part.type == "text":
                    content.append({"type": "text", "text": part.text or ""})
                elif media_entry is not None:
                    content.append(media_entry(part))
                else:
                    raise BadRequest(f"{part.type} input is not supported", param=part.field)
            return content

        return chat_dicts(req, None, content_of)[0]

    # --- generation -------------------------------------------------------
    def generate(self, lm, prepared: Prepared, gen_kwargs: dict):
        """Run generate and return the sequences tensor (batch of one)."""
        with torch.inference_mode():
            return lm.model.generate(**prepared.inputs, **gen_kwargs)

    def completion_ids(self, lm, prepared: Prepared, sequences) -> list[int]:
        """The generated token ids of the first sequence, prompt removed."""
        return sequences[0][prepared.prompt_tokens :].tolist()

    def strips_prompt_in_stream(self) -> bool:
        """Whether a TextIteratorStreamer must skip the first (prompt) chunk."""
        return True

    def extras(self, lm, prepared: Prepared, req: GenerationRequest) -> dict:
        """Additional outputs (e.g. speech) after the text is generated."""
        return {}

"""Text family: causal LMs driven through their chat template."""

from __future__ import annotations

import logging
import time

import torch
from transformers import CompileConfig

from ..errors import BadRequest
from ..generation import left_pad
from ..tools import chat_dicts, template_of
from ..types import GenerationRequest
from .base import FamilyHandler, Prepared

log = logging.getLogger("mmserve.families.text")


def static_cache_len(floor: int, need: int, context: int | None) -> int:
    """Tokens to give a static cache: `need` rounded up to a power of two, at least `floor`.

    Rounding keeps the number of distinct cache shapes (each one a torch.compile
    recompilation) to a handful; the model's context caps the rounding, never `need`.
    """
    size = max(floor, 1 << max(need - 1, 0).bit_length())
    if context:
        size = min(size, max(context, floor))
    return max(size, need)


def is_compiled(lm) -> bool:
    """Whether this loaded text model decodes with a static cache under torch.compile."""
    return getattr(lm.model.generation_config, "compile_config", None) is not None


class TextHandler(FamilyHandler):
    family = "text"
    capabilities = ("text",)
    default_loader = "AutoModelForCausalLM"
    default_processor = "AutoTokenizer"
    batchable = True  # concurrent requests share one continuous batch (mmserve.engine)
    token_prompts = True

    def make_engine(self, lm, settings):
        """The continuous-batching engine; compiled models (static cache, CUDA graphs bound to
        one thread) and caches that cannot be merged by padding run one request at a time."""
        from ..cpu_linear import use_packed_linears
        from ..engine import TextEngine
        from ..kvcache import kv_budget, new_cache

        if is_compiled(lm) or new_cache(lm.model.config) is None:
            return super().make_engine(lm, settings)
        packer = None
        if settings.cpu_packed_weights:
            import psutil

            packer = use_packed_linears(lm.model, psutil.virtual_memory().available // 4)
            if packer is not None:
                log.info("%s: decode batches of 4-16 rows use packed weights", lm.spec.name)
        budget = kv_budget(lm, settings)
        prefix = settings.prefix_cache_gb
        return TextEngine(
            lm,
            max(1, settings.batch_max_size),
            budget,
            settings.queue_timeout,
            settings.prefill_chunk_tokens,
            settings.short_max_tokens,
            prefix_bytes=budget // 8 if prefix is None else int(prefix * 1024**3),
            packer=packer,
        )

    def load(self, spec, path, plan):
        model, processor = super().load(spec, path, plan)
        if plan.compile_mode is not None:
            quantizer = getattr(model, "hf_quantizer", None)
            if quantizer is not None and not quantizer.is_compileable:
                log.warning("%s: %s weights cannot be compiled; decoding eagerly",
                            spec.name, spec.quantization)  # fmt: skip
            elif not getattr(model, "_can_compile_fullgraph", False):
                log.warning("%s: this architecture does not compile; decoding eagerly", spec.name)
            else:
                # Dynamic shapes: batch size and cache length vary per call without
                # recompiling (sizes of 1 are still specialised: the warm-up covers both).
                config = CompileConfig(mode=plan.compile_mode, dynamic=True)
                # transformers compiles on accelerators only unless told otherwise.
                config._compile_all_devices = plan.device != "cuda" or None
                model.generation_config.cache_implementation = "static"
                model.generation_config.compile_config = config
        return model, processor

    def warm_up(self, lm) -> None:
        """Compile the decode step now, so that no request pays for it.

        A batch of one, then a left-padded batch of two: torch.compile specialises sizes of
        1, so these are the two graphs; any later batch size or cache length reuses one.
        """
        if not is_compiled(lm):
            return
        t0 = time.monotonic()
        tok = lm.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        rows = [tok(t, return_tensors="pt")["input_ids"][0] for t in ("Hi", "Hello, how are you?")]
        kwargs = {"max_new_tokens": 3, "min_new_tokens": 3, "do_sample": False, "pad_token_id": pad}
        for batch in (rows[:1], rows):
            ids, mask = left_pad(batch, pad if pad is not None else 0)
            inputs = self.to_device(lm, {"input_ids": ids, "attention_mask": mask})
            self.generate(lm, Prepared(inputs, ids.shape[1]), kwargs)
        log.info("%s: compiled the decode step (static cache, mode %s) in %.1f s",
                 lm.spec.name, lm.plan.compile_mode, time.monotonic() - t0)  # fmt: skip

    def generate(self, lm, prepared: Prepared, gen_kwargs: dict):
        if is_compiled(lm):
            need = prepared.prompt_tokens + int(gen_kwargs.get("max_new_tokens") or 0)
            size = static_cache_len(lm.plan.cache_len, need, lm.context)
            # transformers never shrinks a static cache (it keeps the largest length asked
            # for, to spare static-shape recompiles). The decode step is compiled with
            # dynamic shapes here, so each call gets its own rounded length instead: one long
            # request does not make every later step attend over its cache.
            lm.model._previous_max_cache_length = size
            gen_kwargs = dict(gen_kwargs, max_cache_len=size)
        return super().generate(lm, prepared, gen_kwargs)

    def render_prompt(self, tokenizer, req: GenerationRequest) -> tuple[str, bool]:
        """The prompt string and whether the tokenizer should add its special tokens."""
        if req.raw_prompt or not getattr(tokenizer, "chat_template", None):
            return "".join(m.text() for m in req.messages), True
        messages, tools = chat_dicts(req, tokenizer)
        extra = {"tools": tools} if tools else {}
        template = template_of(tokenizer)
        # Switches such as enable_thinking go only to templates that read them.
        extra.update({k: v for k, v in req.template_kwargs.items() if k in template})
        text = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False, **extra
        )
        # The template already holds BOS when the model wants one: do not add a second.
        return text, False

    def prepare(self, lm, req: GenerationRequest) -> Prepared:
        for part in req.media_parts():
            raise BadRequest(f"model '{lm.spec.name}' takes text only", param=part.field)
        if req.prompt_ids is not None:
            return self._token_prompt(lm, req)
        text, special = self.render_prompt(lm.tokenizer, req)
        batch = lm.tokenizer(text, return_tensors="pt", add_special_tokens=special)
        inputs = self.to_device(lm, batch)
        return Prepared(inputs, int(inputs["input_ids"].shape[1]), {"prompt_text": text})

    def _token_prompt(self, lm, req: GenerationRequest) -> Prepared:
        """A token-id prompt fed as is; an id outside the vocabulary is a 400 naming it."""
        field = req.messages[0].parts[0].field if req.messages else "prompt"
        vocab = len(lm.tokenizer)
        for i, token in enumerate(req.prompt_ids):
            if not 0 <= token < vocab:
                raise BadRequest(
                    f"'{field}[{i}]' is token {token}, outside the vocabulary (0..{vocab - 1})",
                    param=f"{field}[{i}]",
                )
        ids = torch.tensor([req.prompt_ids], dtype=torch.long)
        inputs = self.to_device(lm, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
        text = lm.tokenizer.decode(req.prompt_ids)
        return Prepared(inputs, len(req.prompt_ids), {"prompt_text": text})

"""Turning a table entry and a folder on disk into a live model: device, dtype, quantization."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers

from .limits import context_length
from .models_config import ModelSpec

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class DevicePlan:
    device: str  # "cuda" or "cpu"
    dtype: torch.dtype
    compile_mode: str | None = None  # text family: static KV cache + torch.compile in this mode
    cache_len: int = 256  # the static cache's smallest length, when compiled

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).replace("torch.", "")


@dataclass
class LoadedModel:
    """A model in memory with everything needed to run it."""

    spec: ModelSpec
    model: Any
    processor: Any
    tokenizer: Any
    handler: Any
    plan: DevicePlan
    bytes: int  # weights; the KV cache its engine holds is counted apart (ModelManager)
    context: int | None = None  # tokens it takes at once (mmserve.limits.context_length)
    engine: Any = None  # runs its generations; made by the manager at load, closed at unload


def plan_for(spec: ModelSpec, device_setting: str = "auto", settings=None) -> DevicePlan:
    """float16/bfloat16 on CUDA, float32 on the CPU; the CPU when there is no CUDA.

    With `settings.text_compile` on ("cuda": on a GPU only; "all": anywhere) a text model
    is planned with a static KV cache and torch.compile (see TextHandler).
    """
    use_cuda = device_setting != "cpu" and torch.cuda.is_available()
    if not use_cuda:
        plan = DevicePlan("cpu", torch.float32)
    elif spec.dtype in DTYPES and spec.dtype != "float32":
        plan = DevicePlan("cuda", DTYPES[spec.dtype])
    elif spec.dtype == "float32":
        plan = DevicePlan("cuda", torch.float32)
    else:
        bf16 = torch.cuda.is_bf16_supported()
        plan = DevicePlan("cuda", torch.bfloat16 if bf16 else torch.float16)
    compile_on = getattr(settings, "text_compile", "off")
    if spec.family == "text" and (compile_on == "all" or (compile_on == "cuda" and use_cuda)):
        plan.compile_mode = settings.text_compile_mode
        plan.cache_len = settings.text_cache_len
    return plan


def resolve_class(name: str):
    """A transformers class by name; table entries name classes, never import paths."""
    cls = getattr(transformers, name, None)
    if cls is None:
        raise ValueError(f"transformers has no class '{name}'")
    return cls


def quantization_config(spec: ModelSpec, plan: DevicePlan):
    """BitsAndBytesConfig for the entry's quantization: nf4 4-bit or 8-bit."""
    if spec.quantization == 4:
        return transformers.BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=plan.dtype,
            bnb_4bit_use_double_quant=True,
        )
    if spec.quantization == 8:
        return transformers.BitsAndBytesConfig(load_in_8bit=True)
    return None


def model_kwargs(spec: ModelSpec, plan: DevicePlan) -> dict:
    """Keyword arguments for from_pretrained shared by every family."""
    kwargs: dict = {"dtype": plan.dtype, "trust_remote_code": spec.trust_remote_code}
    quant = quantization_config(spec, plan)
    if quant is not None:
        kwargs["quantization_config"] = quant
    if plan.device == "cuda":
        kwargs["device_map"] = "auto" if spec.max_memory else {"": 0}
        if spec.max_memory:
            kwargs["max_memory"] = {
                (int(k) if str(k).isdigit() else k): v for k, v in spec.max_memory.items()
            }
    elif quant is not None:
        kwargs["device_map"] = {"": "cpu"}
    return kwargs


def load_model(spec: ModelSpec, path: Path, plan: DevicePlan, handler, stages=None) -> LoadedModel:
    """Load weights and processor through the family handler, in eval mode on the planned device.

    `stages(kind)`, when given, is a context manager factory that marks the two slow parts,
    kind "weights" (from_pretrained, quantizing included) and "warm_up".
    """
    stages = stages or (lambda kind: contextlib.nullcontext())
    with stages("weights"):
        model, processor = handler.load(spec, Path(path), plan)
        model.eval()
        if (
            plan.device == "cuda"
            and not getattr(model, "hf_device_map", None)
            and spec.quantization is None
        ):
            model.to("cuda")
    tokenizer = getattr(processor, "tokenizer", processor)
    try:
        size = int(model.get_memory_footprint())
    except (AttributeError, RuntimeError):
        size = sum(p.numel() * p.element_size() for p in model.parameters())
    context = context_length(model, tokenizer, path)
    lm = LoadedModel(spec, model, processor, tokenizer, handler, plan, size, context)
    with stages("warm_up"):
        handler.warm_up(lm)
    return lm

"""The fit planner: what loading a model would need, free and evict. Pure; changes nothing."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .eviction import Candidate, choose_victims
from .memory import TARGET_BYTES

# `quantization: auto` tries these in order: full precision, then 8-bit, then 4-bit.
AUTO_CHOICES: tuple[int | None, ...] = (None, 8, 4)


@dataclass
class FitPlan:
    """The answer of GET /admin/plan/<model> and the decision a load acts on (bytes)."""

    model: str
    quant_bits: int | None
    weights_bytes: int
    kv_cache_bytes: int
    total_bytes: int
    free_bytes: int  # CUDA free memory now, or the RAM budget left on the CPU
    evict: list[dict] = field(default_factory=list)  # [{"model", "bytes"}] in eviction order
    fits: bool = False
    still_short_bytes: int = 0  # what would not fit even after evicting every idle model
    context: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def kv_cache_bytes(config_path: Path, context: int, dtype: str) -> int:
    """Bytes of the KV cache for `context` tokens of one sequence, from config.json:
    2 (K and V) x layers x KV heads x head dim x tokens x bytes per element.
    Multimodal configs keep these under `text_config`; 0 when the config lacks them."""
    if context <= 0:
        return 0
    try:
        cfg = json.loads(Path(config_path).read_text())
    except (OSError, ValueError):
        return 0
    cfg = cfg.get("text_config") or cfg.get("thinker_config", {}).get("text_config") or cfg
    layers = cfg.get("num_hidden_layers")
    heads = cfg.get("num_attention_heads")
    hidden = cfg.get("hidden_size")
    if not (layers and heads and hidden):
        return 0
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or hidden // heads
    return int(2 * layers * kv_heads * head_dim * context * TARGET_BYTES.get(dtype, 4))


def plan_fit(
    model: str,
    bits: int | None,
    weights: int,
    kv: int,
    free: int,
    loaded: list[Candidate],
    context: int = 0,
) -> FitPlan:
    """The plan for one quantization choice: the eviction policy's victims (least recently
    used idle models first; none when even all of them would not make room)."""
    need = weights + kv
    decision = choose_victims(need, free, loaded)
    sizes = {c.name: c.bytes for c in loaded}
    idle = sum(c.bytes for c in loaded if not c.in_use)
    return FitPlan(
        model=model,
        quant_bits=bits,
        weights_bytes=weights,
        kv_cache_bytes=kv,
        total_bytes=need,
        free_bytes=free,
        evict=[{"model": n, "bytes": sizes[n]} for n in decision.victims],
        fits=decision.fits,
        still_short_bytes=0 if decision.fits else need - free - idle,
        context=context,
    )


def bits_name(bits: int | None) -> str:
    return "full precision" if bits is None else f"{bits}-bit"


def quantization_setting(choices: tuple):
    """The entry's quantization as its table sets it: none, 4, 8, or the ordered choices."""
    return list(choices) if len(choices) > 1 else choices[0]


def quantization_reason(choices: tuple, chosen: FitPlan) -> str:
    """Why a load runs at `chosen.quant_bits` (shown as `quant_reason` and logged)."""
    if len(choices) == 1:
        return f"{bits_name(chosen.quant_bits)}, fixed by the table entry"
    listed = ", ".join(bits_name(b) for b in choices)
    evicted = f" after evicting {len(chosen.evict)} idle model(s)" if chosen.evict else ""
    return (
        f"auto: {bits_name(chosen.quant_bits)} is the first of [{listed}] that fits "
        f"({chosen.total_bytes} bytes needed, {chosen.free_bytes} free{evicted})"
    )

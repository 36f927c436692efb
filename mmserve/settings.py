"""Server settings: defaults, then environment (MMSERVE_*), then an explicit config dict."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .durations import parse_keep_alive

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Settings:
    """Every tunable of the server. Field names are the config keys; env vars are MMSERVE_<NAME>."""

    models_dir: Path = ROOT / "models"
    models_config: Path | None = None
    log_dir: Path = ROOT / "logs"
    tmp_dir: Path = ROOT / "tmp"
    tmp_ttl_seconds: float = 3600.0
    log_level: str = "INFO"
    log_json: bool = False
    log_to_file: bool = True
    offline: bool = False
    device: str = "auto"  # auto | cpu | cuda
    ram_budget_gb: float | None = None  # CPU memory models may use; None = 80% of RAM
    memory_warning_fraction: float = 0.9
    default_keep_alive: float = 300.0  # seconds; -1 forever, 0 unload after each request
    max_concurrency: int = 1  # generations at once per model
    batch_max_size: int = 16  # rows in a text model's continuous batch; 1: one at a time
    kv_cache_gb: float | None = None  # KV cache per text model; None = 1/4 of free memory at load
    prefill_chunk_tokens: int = 512  # prompt tokens prefilled per engine step (between decodes)
    # KV of recent prompts kept for reuse by prompts that start the same (prefix caching);
    # None = 1/8 of the KV cache budget, 0 = off. Taken out of the budget while held.
    prefix_cache_gb: float | None = None
    # A float32 text model on the CPU decodes batches of 4-16 rows with MKL-packed copies of
    # its linear weights (mmserve/cpu_linear.py), made on first use and counted in its size;
    # skipped when they would take over 1/4 of the free memory. off: F.linear for every batch
    cpu_packed_weights: bool = True
    # Requests with max_tokens up to this decode in a lane of their own, ahead of longer
    # ones (which still decode at least every 9th step); 0: every request in one batch
    short_max_tokens: int = 16
    # Static KV cache + torch.compile for the text family: off | cuda (models on a GPU) | all
    # (also on the CPU; slow to compile, useful for checks). The first load compiles (tens of s).
    text_compile: str = "off"
    text_compile_mode: str = "reduce-overhead"  # torch.compile mode; reduce-overhead = CUDA graphs
    text_cache_len: int = 256  # static cache tokens at least; longer requests round up to 2^n
    max_queue: int = 32  # requests waiting per model before 429
    queue_timeout: float = 300.0  # seconds a request may wait for its model before 503
    # A streamed request waiting for a turn or a load sends a status line this often
    # (native NDJSON {"status": "loading", ...}; /v1 an SSE comment line)
    stream_status_seconds: float = 2.0
    materialise_at_start: bool = True  # embedded models not on disk are built in the background
    allow_cpu_fallback: bool = True
    max_body_mb: float = 64.0
    max_new_tokens_limit: int = 4096
    max_prompt_tokens: int = 32768
    max_stop: int = 16  # stop strings per request
    max_n: int = 8  # choices per request (`n`), rows of one batch sharing the prompt's prefill
    max_images: int = 8
    max_image_pixels: int = 16_000_000
    max_audio_seconds: float = 600.0
    max_video_mb: float = 64.0
    max_video_seconds: float = 120.0
    max_video_frames: int = 8
    api_key: str | None = None
    admin_key: str | None = None
    preload: list[str] = field(default_factory=list)
    shutdown_timeout: float = 30.0
    remote_media_hosts: list[str] = field(default_factory=list)
    models: list[dict] = field(default_factory=list)  # extra/override table entries
    replace_models: bool = False  # use only `models`, not the built-in table

    @classmethod
    def load(cls, config: dict | None = None, env: dict | None = None) -> Settings:
        """Build settings from defaults, then env, then `config` (highest precedence)."""
        env = os.environ if env is None else env
        values: dict = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f"MMSERVE_{f.name.upper()}")
            if raw is not None and f.name not in ("models", "replace_models"):
                values[f.name] = raw
        if "offline" not in values and env.get("HF_HUB_OFFLINE", "").lower() in (
            "1",
            "true",
            "yes",
        ):
            values["offline"] = True
        for key, value in (config or {}).items():
            if key not in {f.name for f in dataclasses.fields(cls)}:
                raise ValueError(f"unknown setting '{key}'")
            values[key] = value
        settings = cls()
        for key, value in values.items():
            setattr(settings, key, _coerce(cls, key, value))
        return settings

    def ram_budget_bytes(self, total_ram: int) -> int:
        """RAM the models may use on the CPU."""
        if self.ram_budget_gb is None:
            return int(total_ram * 0.8)
        return int(self.ram_budget_gb * 1024**3)


CHOICES = {
    "device": ("auto", "cpu", "cuda"),
    "text_compile": ("off", "cuda", "all"),
    "text_compile_mode": (
        "default",
        "reduce-overhead",
        "max-autotune",
        "max-autotune-no-cudagraphs",
    ),
}


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _finite(value) -> float:
    """float(value); ValueError for nan and infinities (a size or a time must be a number)."""
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(value)
    return number


def _coerce(cls, key: str, value):
    """Convert an env string (or a config value) to the field's type, naming the key on error."""
    default = getattr(cls(), key)
    if key in CHOICES:
        choice = str(value).strip().lower()
        if choice not in CHOICES[key]:
            raise ValueError(f"setting '{key}': {value!r} is not one of {', '.join(CHOICES[key])}")
        return choice
    try:
        if key == "default_keep_alive":
            return parse_keep_alive(value)
        if key in ("models_dir", "log_dir", "tmp_dir"):
            return Path(value)
        if key == "models_config":
            return Path(value) if value else None
        if key in ("preload", "remote_media_hosts"):
            if isinstance(value, str):
                return [v for v in value.replace(",", " ").split() if v]
            return list(value)
        if key in ("api_key", "admin_key"):
            return str(value) if value else None
        if key in ("ram_budget_gb", "kv_cache_gb", "prefix_cache_gb"):
            number = _finite(value) if value not in (None, "") else None
            if key == "kv_cache_gb" and number is not None and number <= 0:
                raise ValueError(key)
            if key == "prefix_cache_gb" and number is not None and number < 0:
                raise ValueError(key)
            return number
        if isinstance(default, bool):
            if isinstance(value, str):
                word = value.strip().lower()
                if word not in _TRUE + _FALSE:
                    raise ValueError(key)  # not a silent "off" for a typo
                return word in _TRUE
            return bool(value)
        if isinstance(default, int):
            number = int(value)
            if key in (
                "text_cache_len",
                "max_stop",
                "prefill_chunk_tokens",
                "batch_max_size",
                "max_n",
            ) and (number < 1):
                raise ValueError(key)
            if key == "short_max_tokens" and number < 0:
                raise ValueError(key)
            return number
        if isinstance(default, float):
            return _finite(value)
        return value
    except (TypeError, ValueError) as exc:
        raise ValueError(f"setting '{key}': invalid value {value!r}") from exc

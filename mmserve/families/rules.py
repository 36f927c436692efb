"""What a family's processor and model take of media, checked before any load, and the one place
that turns a processor's complaint about a request's own data into a 400 naming the part."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import BadRequest, ServerError, is_oom
from ..limits import prompt_param
from ..types import GenerationRequest, Part

log = logging.getLogger("mmserve.families")

# media.load_audio decodes every clip to float32 mono at this rate.
SAMPLE_RATE = 16000
# WhisperFeatureExtractor's default window (chunk_length): what it takes when the checkpoint
# does not say; longer audio is cut there without a word.
WHISPER_SECONDS = 30.0


@dataclass(frozen=True)
class MediaRules:
    """Constraints of one model's processor and model on media. None: no constraint.

    Durations in seconds of the 16 kHz waveform; pixel bounds are the (min, max) pixels a
    Qwen-style `smart_resize(height, width, factor, min_pixels, max_pixels) -> (h, w)` keeps
    an image (`image_pixels`) or a video frame (`frame_pixels`) within; it raises ValueError
    on an aspect ratio it refuses, and a side below `factor` after it cannot be patched.
    """

    min_audio_seconds: float | None = None
    max_audio_seconds: float | None = None
    smart_resize: Callable | None = None
    factor: int = 28
    image_pixels: tuple[int, int] | None = None
    frame_pixels: tuple[int, int] | None = None


@lru_cache(maxsize=64)
def _read_json(path: str, mtime_ns: int) -> dict:
    del mtime_ns  # part of the cache key: a re-downloaded file is read again
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _json(path: Path) -> dict:
    try:
        return _read_json(str(path), path.stat().st_mtime_ns)
    except OSError:
        return {}


def processor_config(path: Path | None, section: str) -> dict:
    """One processor's saved settings in a checkpoint folder, without loading anything.

    `section` is `feature_extractor`, `image_processor` or `video_processor`: the nested entry
    of `processor_config.json` (transformers 5), else the flat `video_preprocessor_config.json`
    or `preprocessor_config.json` of older checkpoints. {} when the folder has none.
    """
    if path is None:
        return {}
    nested = _json(Path(path) / "processor_config.json").get(section)
    if isinstance(nested, dict):
        return nested
    if section == "video_processor":
        flat = _json(Path(path) / "video_preprocessor_config.json")
        if flat:
            return flat
    return _json(Path(path) / "preprocessor_config.json")


def whisper_seconds(path: Path | None) -> float:
    """Seconds of audio a Whisper feature extractor takes before it cuts (n_samples / rate)."""
    cfg = processor_config(path, "feature_extractor")
    n_samples, rate = cfg.get("n_samples"), cfg.get("sampling_rate")
    if isinstance(n_samples, int) and isinstance(rate, int) and n_samples > 0 and rate > 0:
        return n_samples / rate
    chunk = cfg.get("chunk_length")
    return float(chunk) if isinstance(chunk, (int, float)) and chunk > 0 else WHISPER_SECONDS


def qwen_pixel_bounds(cfg: dict, default: tuple[int, int], cap: int | None = None):
    """(min, max) pixels of a saved Qwen2-VL image/video processor (`size` or min/max_pixels)."""
    size = cfg.get("size") if isinstance(cfg.get("size"), dict) else {}
    lo = size.get("shortest_edge") or cfg.get("min_pixels") or default[0]
    hi = size.get("longest_edge") or cfg.get("max_pixels") or default[1]
    hi = min(int(hi), cap) if cap else int(hi)
    return min(int(lo), hi), hi


def qwen_factor(cfg: dict) -> int:
    """Pixels per merged patch side: patch_size x merge_size (28 for Qwen2/2.5-VL and Omni)."""
    return int(cfg.get("patch_size") or 14) * int(cfg.get("merge_size") or 2)


# --------------------------------------------------------------------------- checks


def check_media(req: GenerationRequest, rules: MediaRules) -> None:
    """400 naming the first part the model's processor or model would refuse (or cut)."""
    for part in req.media_parts():
        if part.type == "audio":
            _check_audio(part, rules)
        elif part.type == "image":
            _check_picture(part.field, "image", part.data.size, rules, rules.image_pixels)
        elif part.type == "video" and part.data.frames:
            size = part.data.frames[0].size
            _check_picture(part.field, "video", size, rules, rules.frame_pixels)


def _check_audio(part: Part, rules: MediaRules) -> None:
    seconds = len(part.data) / SAMPLE_RATE
    if rules.min_audio_seconds is not None and seconds < rules.min_audio_seconds:
        raise BadRequest(
            f"{part.field}: audio is {seconds:.3f} seconds long; the minimum audio length is "
            f"{rules.min_audio_seconds:g} seconds",
            param=part.field,
            code="audio_too_short",
        )
    if rules.max_audio_seconds is not None and seconds > rules.max_audio_seconds:
        raise BadRequest(
            f"{part.field}: audio is {seconds:.1f} seconds long; this model takes at most "
            f"{rules.max_audio_seconds:g} seconds of audio (send shorter clips)",
            param=part.field,
            code="audio_too_long",
        )


def _check_picture(field: str, kind: str, size, rules: MediaRules, bounds) -> None:
    """An image, or a video's frames (all of one size), through the model's resize rule."""
    if rules.smart_resize is None or bounds is None:
        return
    width, height = size
    what = (
        f"{kind} frames of {width}x{height} pixels"
        if kind == "video"
        else (f"image of {width}x{height} pixels")
    )
    try:
        new_h, new_w = rules.smart_resize(height, width, rules.factor, bounds[0], bounds[1])
    except ValueError as exc:  # the aspect ratio (over 200:1 for Qwen)
        raise BadRequest(
            f"{field}: this model cannot take {what}: {_reason(exc) or 'unsupported size'}",
            param=field,
            code=f"invalid_{kind}",
        ) from None
    if min(new_h, new_w) < rules.factor:
        raise BadRequest(
            f"{field}: this model cannot take {what}: too narrow (a side would be under "
            f"{rules.factor} pixels after its resize)",
            param=field,
            code=f"invalid_{kind}",
        )


# --------------------------------------------------------------------------- processor errors

# What a processor raises on data it cannot take. KeyError, AttributeError, ImportError and
# the like stay server faults (5xx): they mean our code or the install is wrong.
_DATA_ERRORS = (ValueError, TypeError, IndexError, RuntimeError, AssertionError, ZeroDivisionError)
_UNSAFE = re.compile(r"(/[\w.-]+){2,}|0x[0-9a-fA-F]{6,}|<[^>]* at 0x|Traceback")


def _reason(exc: BaseException) -> str:
    """The first line of an exception's message when it is safe to show a client, else ''."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return "" if _UNSAFE.search(text) else text[:200]


def _part_at_fault(req: GenerationRequest, text: str) -> str | None:
    parts = list(req.media_parts())
    if len(parts) == 1:
        return parts[0].field
    kinds = [p for p in parts if p.type in text.lower()]
    if len(kinds) == 1:
        return kinds[0].field
    return None if parts else prompt_param(req)


def prepare_inputs(lm, req: GenerationRequest):
    """`lm.handler.prepare(lm, req)`; what its processor raises on the request's data is a 400.

    Raises BadRequest (param: the media part when one can be told, else the prompt) for the
    errors in _DATA_ERRORS, except out-of-memory ones; anything else propagates unchanged.
    """
    try:
        return lm.handler.prepare(lm, req)
    except ServerError:
        raise
    except _DATA_ERRORS as exc:
        if is_oom(exc):
            raise
        log.warning("%s: the processor refused a request's input", lm.spec.name, exc_info=exc)
        reason = _reason(exc)
        raise BadRequest(
            "the model's processor could not take this input" + (f": {reason}" if reason else ""),
            param=_part_at_fault(req, reason),
            code="invalid_input",
        ) from exc

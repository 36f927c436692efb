"""Typed field readers that raise BadRequest naming the field."""

from __future__ import annotations

import math

from ..durations import parse_keep_alive
from ..errors import BadRequest

_MISSING = object()


def require_object(body, what: str = "body") -> dict:
    if not isinstance(body, dict):
        raise BadRequest(f"request {what} must be a JSON object", param=None)
    return body


def get_str(body: dict, key: str, default=None, *, required=False, allow_empty=True, param=None):
    value = body.get(key, _MISSING)
    if value is _MISSING or value is None:
        if required:
            raise BadRequest(f"'{param or key}' is required", param=param or key)
        return default
    if not isinstance(value, str):
        raise BadRequest(f"'{param or key}' must be a string", param=param or key)
    if not allow_empty and not value.strip():
        raise BadRequest(f"'{param or key}' must not be empty", param=param or key)
    return value


def get_bool(body: dict, key: str, default=False, param=None) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest(f"'{param or key}' must be true or false", param=param or key)
    return value


def get_int(body: dict, key: str, default=None, *, lo=None, hi=None, param=None):
    value = body.get(key, default)
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()))
    ):
        raise BadRequest(f"'{param or key}' must be an integer", param=param or key)
    value = int(value)
    if lo is not None and value < lo:
        raise BadRequest(f"'{param or key}' must be at least {lo}", param=param or key)
    if hi is not None and value > hi:
        raise BadRequest(f"'{param or key}' must be at most {hi}", param=param or key)
    return value


def get_float(body: dict, key: str, default=None, *, lo=None, hi=None, param=None):
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"'{param or key}' must be a number", param=param or key)
    value = float(value)
    if lo is not None and value < lo:
        raise BadRequest(f"'{param or key}' must be at least {lo}", param=param or key)
    if hi is not None and value > hi:
        raise BadRequest(f"'{param or key}' must be at most {hi}", param=param or key)
    return value


def get_keep_alive(body: dict, key: str = "keep_alive", param=None):
    value = body.get(key)
    if value is None:
        return None
    try:
        return parse_keep_alive(value)
    except ValueError as exc:
        raise BadRequest(str(exc), param=param or key) from None


def get_stop(body: dict, max_stop: int, key: str = "stop", param=None) -> list[str]:
    """A stop string or a list of at most `max_stop` (the max_stop setting) non-empty ones."""
    value = body.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    name = param or key
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
        raise BadRequest(
            f"'{name}' must be a string or a list of up to {max_stop} non-empty strings",
            param=name,
        )
    if len(value) > max_stop:
        raise BadRequest(
            f"'{name}' has {len(value)} strings; the limit is max_stop={max_stop}",
            param=name,
            code="limit_exceeded",
        )
    return value


def get_inputs(body: dict, max_items: int, key: str = "input") -> list[tuple[str, str]]:
    """(field, text) of each text to embed: `input` as a string or a non-empty list of them."""
    raw = body.get(key)
    if isinstance(raw, str):
        texts = [(key, raw)]
    elif isinstance(raw, list) and raw and all(isinstance(t, str) for t in raw):
        texts = [(f"{key}[{i}]", t) for i, t in enumerate(raw)]
    elif isinstance(raw, list) and raw and all(isinstance(t, (int, list)) for t in raw):
        raise BadRequest("token arrays are not supported; send the input as text", param=key)
    else:
        raise BadRequest(f"'{key}' must be a string or a non-empty list of strings", param=key)
    if len(texts) > max_items:
        raise BadRequest(
            f"at most {max_items} inputs per request", param=key, code="limit_exceeded"
        )
    for field, text in texts:
        if not text:
            raise BadRequest(f"'{field}' must not be empty", param=field)
    return texts

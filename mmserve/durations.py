"""Parsing of keep_alive durations ("10m", "1h30m", 300, -1, 0) into seconds."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_keep_alive(value) -> float:
    """Seconds for a keep_alive value. Negative means forever (-1); 0 means unload at once.

    Accepts numbers (seconds) and Go-style strings ("5m", "1h30m", "45s", "-1").
    Raises ValueError with a readable message otherwise.
    """
    if isinstance(value, bool):
        raise ValueError("keep_alive must be a number of seconds or a duration like '10m'")
    if isinstance(value, (int, float)):
        if value != value or value in (float("inf"),):
            raise ValueError("keep_alive must be finite")
        return -1.0 if value < 0 else float(value)
    if isinstance(value, str):
        text = value.strip().lower()
        try:
            number = float(text)
        except ValueError:
            number = None
        if number is not None:
            return parse_keep_alive(number)
        negative = text.startswith("-")
        body = text.lstrip("-")
        parts = _PART.findall(body)
        if body and parts and "".join(n + u for n, u in parts) == body:
            total = sum(float(n) * _UNITS[u] for n, u in parts)
            return -1.0 if negative else total
    raise ValueError("keep_alive must be a number of seconds or a duration like '10m'")

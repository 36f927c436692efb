"""Logging set-up: stderr and a rotating file in logs/, plain or JSON lines."""

from __future__ import annotations

import json
import logging
import logging.handlers
import time
from pathlib import Path

from flask import g, has_request_context


class RequestIdFilter(logging.Filter):
    """Adds the current request id (or '-') to every record."""

    def filter(self, record):
        if not getattr(record, "request_id", None):
            record.request_id = getattr(g, "request_id", "-") if has_request_context() else "-"
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record):
        data = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        for key in ("model", "status", "duration_ms", "tokens", "route", "method"):
            if hasattr(record, key):
                data[key] = getattr(record, key)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data)


PLAIN = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
_installed: list[logging.Handler] = []


def setup_logging(log_dir: Path, level: str = "INFO", json_lines: bool = False, to_file=True):
    """Configure the 'mmserve' logger once per process (re-configuring replaces handlers)."""
    logger = logging.getLogger("mmserve")
    for handler in _installed:
        logger.removeHandler(handler)
        handler.close()
    _installed.clear()
    fmt = JsonFormatter() if json_lines else logging.Formatter(PLAIN)
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if to_file:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        handlers.append(
            logging.handlers.RotatingFileHandler(
                Path(log_dir) / "server.log", maxBytes=10 * 1024 * 1024, backupCount=5
            )
        )
    for handler in handlers:
        handler.setFormatter(fmt)
        handler.addFilter(RequestIdFilter())
        logger.addHandler(handler)
        _installed.append(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    return logger

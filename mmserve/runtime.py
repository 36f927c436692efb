"""The composition root: builds settings, table, manager, temp files and service for one app."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from flask import current_app

from utils.download_model import DownloadError, check_model, ensure_model
from utils.tmp_manage import TempManager

from .errors import ModelNotDownloaded
from .manager import ModelManager
from .metrics import Metrics
from .models_config import ModelSpec, build_table
from .service import InferenceService
from .settings import Settings

log = logging.getLogger("mmserve.runtime")


@dataclass
class Runtime:
    settings: Settings
    table: dict[str, ModelSpec]
    manager: ModelManager
    tmp: TempManager
    service: InferenceService
    metrics: object = None
    draining: bool = False

    def disk_report(self, name: str) -> dict:
        return check_model(self.table[name], self.settings.models_dir)


def build_runtime(settings: Settings) -> Runtime:
    """Everything the routes need, built once per app (never at import time)."""
    metrics = Metrics()
    table = build_table(settings.models, settings.models_config, settings.replace_models)
    for name in settings.preload:
        if name not in table:
            raise ValueError(f"setting 'preload': unknown model '{name}'")
    download_locks: dict[str, threading.Lock] = {}

    def ensure_on_disk(spec: ModelSpec) -> Path:
        lock = download_locks.setdefault(spec.name, threading.Lock())
        with lock:
            try:
                return ensure_model(spec, settings.models_dir, offline=settings.offline)
            except DownloadError as exc:
                log.error("model %s unavailable: %s", spec.name, exc)
                raise ModelNotDownloaded(
                    f"model '{spec.name}' is not downloaded; fetch it with: "
                    f"{spec.download_command()}",
                    details="offline" if settings.offline else "download failed",
                ) from None

    manager = ModelManager(table, settings, ensure_on_disk, hooks=metrics)
    tmp = TempManager(settings.tmp_dir, settings.tmp_ttl_seconds)
    service = InferenceService(manager, settings, hooks=metrics)
    runtime = Runtime(settings, table, manager, tmp, service, metrics)
    metrics.bind(runtime)
    return runtime


def get_runtime() -> Runtime:
    """The runtime of the current app: the one accessor routes use."""
    return current_app.extensions["mmserve"]

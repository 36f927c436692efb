"""The composition root: builds settings, table, manager, temp files and service for one app."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from flask import current_app

from utils.download_model import check_model
from utils.tmp_manage import TempManager

from .availability import describe
from .errors import ModelNotDownloaded
from .manager import ModelManager
from .metrics import Metrics
from .models_config import ModelSpec, build_table
from .pull import Fetcher
from .service import InferenceService
from .settings import Settings
from .stages import StageBoard

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
    fetcher: Fetcher | None = None

    def disk_report(self, name: str) -> dict:
        return check_model(self.table[name], self.settings.models_dir)

    def availability(self, name: str) -> dict:
        """availability (on_disk | downloadable | missing), sizes on disk and in memory."""
        return describe(self.table[name], self.settings.models_dir, self.settings.offline)


def build_runtime(settings: Settings) -> Runtime:
    """Everything the routes need, built once per app (never at import time)."""
    metrics = Metrics()
    table = build_table(settings.models, settings.models_config, settings.replace_models)
    for name in settings.preload:
        if name not in table:
            raise ValueError(f"setting 'preload': unknown model '{name}'")
    stages = StageBoard()
    fetcher = Fetcher(settings, stages)

    def ensure_on_disk(spec: ModelSpec, fetch: bool = True) -> Path:
        if fetch:
            return fetcher.ensure(spec)
        if not check_model(spec, settings.models_dir)["complete"]:
            raise ModelNotDownloaded(
                f"model '{spec.name}' is not on disk yet, and its size is read from its files; "
                f"pull it first (POST /admin/pull/{spec.name}) or fetch it with: "
                f"{spec.download_command(settings.models_dir)}"
            )
        return spec.path(settings.models_dir)

    manager = ModelManager(table, settings, ensure_on_disk, hooks=metrics, stages=stages)
    tmp = TempManager(settings.tmp_dir, settings.tmp_ttl_seconds)
    service = InferenceService(manager, settings, hooks=metrics)
    runtime = Runtime(settings, table, manager, tmp, service, metrics, fetcher=fetcher)
    metrics.bind(runtime)
    return runtime


def get_runtime() -> Runtime:
    """The runtime of the current app: the one accessor routes use."""
    return current_app.extensions["mmserve"]

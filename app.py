"""Flask application factory: `create_app(config=None)`; gunicorn runs `app:create_app()`."""

from __future__ import annotations

import gc
import logging
import os
import threading

from flask import Flask

from mmserve import http
from mmserve.logs import setup_logging
from mmserve.metrics import bp as metrics_bp
from mmserve.routes import admin, anthropic, docs, native, openai, responses
from mmserve.runtime import build_runtime
from mmserve.settings import Settings
from mmserve.ui import bp as ui_bp

log = logging.getLogger("mmserve.app")


def _janitor(runtime, stop: threading.Event, every: float) -> None:
    """Sweep expired temp files until the app is closed."""
    while not stop.wait(every):
        try:
            runtime.tmp.sweep()
        except OSError:
            log.exception("temp sweep failed")


def _preload(runtime) -> None:
    for name in runtime.settings.preload:
        try:
            runtime.manager.load(name, keep_alive=-1)
        except Exception:  # noqa: BLE001 - a failed preload must not stop the server
            log.exception("preloading %s failed", name)


def _materialise_embedded(runtime) -> None:
    """Build the embedded models that are not on disk yet (the GGUF conversion of smollm2 takes
    tens of seconds) in the background; a request arriving meanwhile waits on this same work
    (the fetcher runs one fetch per model) instead of starting it again."""
    for spec in runtime.table.values():
        if spec.source.get("type", "hub") == "hub" or runtime.disk_report(spec.name)["complete"]:
            continue
        try:
            runtime.fetcher.ensure(spec)
            log.info("%s is ready on disk", spec.name)
        except Exception:  # noqa: BLE001 - the first request will report it
            log.exception("materialising %s failed", spec.name)


def _ready_line(runtime) -> str:
    """Where the server listens and what each model's availability is."""
    host, port = os.environ.get("MMSERVE_HOST"), os.environ.get("MMSERVE_PORT")
    where = f"listening on http://{host}:{port}; " if host and port else ""
    models = ", ".join(
        f"{name} ({runtime.availability(name)['availability']})" for name in runtime.table
    )
    return f"server ready: {where}device {runtime.manager.device}; models: {models}"


def create_app(config: dict | None = None) -> Flask:
    """Build the app. `config` holds Settings fields and overrides the MMSERVE_* environment."""
    settings = Settings.load(config)
    setup_logging(settings.log_dir, settings.log_level, settings.log_json, settings.log_to_file)
    runtime = build_runtime(settings)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = int(settings.max_body_mb * 1024 * 1024)
    app.json.sort_keys = False
    app.extensions["mmserve"] = runtime
    http.install(app, runtime)
    app.register_blueprint(native.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(openai.bp)
    app.register_blueprint(anthropic.bp)
    app.register_blueprint(responses.bp)
    app.register_blueprint(metrics_bp)
    app.register_blueprint(ui_bp)
    docs.install(app)

    stop = threading.Event()
    runtime.tmp.sweep()
    threading.Thread(
        target=_janitor, args=(runtime, stop, max(30.0, settings.tmp_ttl_seconds / 4)), daemon=True
    ).start()

    def close(timeout: float | None = None) -> None:
        """Stop the janitor, wait for requests in flight, unload every model."""
        stop.set()
        runtime.draining = True
        runtime.manager.close(settings.shutdown_timeout if timeout is None else timeout)

    app.extensions["mmserve_close"] = close
    if settings.materialise_at_start:
        threading.Thread(
            target=_materialise_embedded, args=(runtime,), name="materialise", daemon=True
        ).start()
    if settings.preload:
        threading.Thread(target=_preload, args=(runtime,), name="preload", daemon=True).start()
    # The import-time heap (torch, transformers: ~450k objects) never becomes garbage; freezing
    # it keeps the full collection each unload runs from rescanning it (~0.17 s per swap).
    gc.freeze()
    log.info(_ready_line(runtime))
    return app

"""Flask application factory: `create_app(config=None)`; gunicorn runs `app:create_app()`."""

from __future__ import annotations

import gc
import logging
import threading

from flask import Flask

from mmserve import http
from mmserve.logs import setup_logging
from mmserve.metrics import bp as metrics_bp
from mmserve.routes import admin, native, openai
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
    app.register_blueprint(metrics_bp)
    app.register_blueprint(ui_bp)

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
    if settings.preload:
        threading.Thread(target=_preload, args=(runtime,), name="preload", daemon=True).start()
    # The import-time heap (torch, transformers: ~450k objects) never becomes garbage; freezing
    # it keeps the full collection each unload runs from rescanning it (~0.17 s per swap).
    gc.freeze()
    log.info(
        "server ready: %d models in the table, device %s",
        len(runtime.table),
        runtime.manager.device,
    )
    return app

"""Graceful shutdown inside the gunicorn worker: drain on SIGTERM, then unload and exit.

On SIGTERM the worker keeps accepting connections but every new request gets 503;
requests in flight finish (up to MMSERVE_SHUTDOWN_TIMEOUT); then every model is unloaded
and the worker leaves its loop, so gunicorn's master exits.
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger("mmserve.lifecycle")


def install_drain_handler(worker) -> None:
    """Replace the gunicorn worker's SIGTERM handler with drain-then-exit."""
    app = worker.wsgi
    runtime = app.extensions["mmserve"]
    close = app.extensions["mmserve_close"]
    started = threading.Event()

    def drain() -> None:
        log.info("SIGTERM: draining (new requests get 503)")
        try:
            close(runtime.settings.shutdown_timeout)  # waits for requests in flight, unloads all
        finally:
            log.info("drained; worker exiting")
            worker.alive = False

    def on_term(signum, frame) -> None:
        if started.is_set():
            return
        started.set()
        runtime.draining = True
        threading.Thread(target=drain, name="drain", daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)

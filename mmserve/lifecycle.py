"""Shutdown inside the gunicorn worker: drain on SIGTERM; stop at once on SIGINT and SIGQUIT.

SIGTERM (graceful): the worker keeps accepting connections but every new request gets 503;
requests in flight finish (up to MMSERVE_SHUTDOWN_TIMEOUT); then every model is unloaded
and the worker leaves its loop, so gunicorn's master exits.

SIGINT (Ctrl-C, sent to the whole process group) and SIGQUIT (fast): every generation is
ended at its next step, each open stream gets a last error event/line `server shutting
down`, non-streamed requests get 503, the models are unloaded and the worker exits, all
within about 2 s (`FAST_EXIT_S`). gunicorn's master turns SIGINT into SIGQUIT for its
worker and exits once the worker has.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

log = logging.getLogger("mmserve.lifecycle")
FAST_EXIT_S = 2.0  # the worker is gone this long after SIGINT/SIGQUIT at the latest


def install_drain_handler(worker) -> None:
    """Replace the gunicorn worker's SIGTERM, SIGINT and SIGQUIT handlers."""
    app = worker.wsgi
    runtime = app.extensions["mmserve"]
    close = app.extensions["mmserve_close"]
    started = threading.Event()
    quitting = threading.Event()

    def drain() -> None:
        log.info("SIGTERM: draining (new requests get 503)")
        try:
            close(runtime.settings.shutdown_timeout)  # waits for requests in flight, unloads all
        finally:
            log.info("drained; worker exiting")
            worker.alive = False

    def on_term(signum, frame) -> None:
        if started.is_set() or quitting.is_set():
            return
        started.set()
        runtime.draining = True
        threading.Thread(target=drain, name="drain", daemon=True).start()

    def stop_now(signame: str) -> None:
        t0 = time.monotonic()
        log.info("%s: stopping now (generations cancelled, streams told)", signame)
        # The worker exits by this time whatever happens below (a stuck load, a lingering
        # kept-alive connection): nothing a request holds outlives the process anyway.
        backstop = threading.Timer(FAST_EXIT_S, _exit_now)
        backstop.daemon = True
        backstop.start()
        try:
            runtime.service.abort_all("server shutting down")
            # Let the request threads write their last line: streams end at the next step.
            while runtime.service.posts > 0 and time.monotonic() - t0 < FAST_EXIT_S / 2:
                time.sleep(0.01)
            close(0.1)  # unload every model no request holds any more
        finally:
            log.info("stopped in %.2f s; worker exiting", time.monotonic() - t0)
            worker.alive = False
            _exit_now()

    def on_quit(signum, frame) -> None:
        if quitting.is_set():
            return
        quitting.set()
        runtime.draining = True
        name = signal.Signals(signum).name
        threading.Thread(target=stop_now, args=(name,), name="stop-now", daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_quit)
    signal.signal(signal.SIGQUIT, on_quit)


def _exit_now() -> None:
    """Leave the worker process at once (the request pool's threads are not waited for)."""
    logging.shutdown()
    os._exit(0)

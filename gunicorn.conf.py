"""Gunicorn settings for mmserve: `gunicorn -c gunicorn.conf.py "app:create_app()"`.

Every value comes from an MMSERVE_* environment variable with a default. Invariants:
- exactly ONE worker process: each loaded model must exist once in (GPU) memory, and the
  model manager, queues and keep-alive timers live in that one process. Concurrency comes
  from the worker's threads (gthread), never from more workers.
- the host defaults to 127.0.0.1; the Docker image sets MMSERVE_HOST=0.0.0.0 on purpose.
- timeout is long because a single generation may legitimately run for minutes.
"""

import os
from pathlib import Path

_ROOT = Path(__file__).resolve().parent

host = os.environ.get("MMSERVE_HOST", "127.0.0.1")
port = int(os.environ.get("MMSERVE_PORT", "5000"))
bind = f"{host}:{port}"

workers = 1  # never more: models are loaded once per process (see above)
worker_class = "gthread"
threads = int(os.environ.get("MMSERVE_THREADS", "8"))

# Seconds a silent worker may take before it is killed and restarted (long generations).
timeout = int(os.environ.get("MMSERVE_TIMEOUT", "600"))
# Seconds to finish in-flight requests on SIGTERM; keep docker-compose's stop_grace_period
# at least this long, and above MMSERVE_SHUTDOWN_TIMEOUT (the app's own drain, 30 s).
graceful_timeout = int(os.environ.get("MMSERVE_GRACEFUL_TIMEOUT", "60"))

# Access log in the log folder (relative paths are taken from this file's folder);
# gunicorn's own errors go to stderr. The app writes its own log files itself.
_log_dir = Path(os.environ.get("MMSERVE_LOG_DIR", "logs"))
if not _log_dir.is_absolute():
    _log_dir = _ROOT / _log_dir
_log_dir.mkdir(parents=True, exist_ok=True)
accesslog = str(_log_dir / "access.log")
errorlog = "-"
capture_output = False

wsgi_app = "app:create_app()"


def post_worker_init(worker):
    """Drain on SIGTERM: 503 for new requests, finish those in flight, unload, exit."""
    from mmserve.lifecycle import install_drain_handler

    install_drain_handler(worker)

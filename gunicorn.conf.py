"""Gunicorn settings for mmserve: `gunicorn -c gunicorn.conf.py "app:create_app()"`.

Every value comes from an MMSERVE_* environment variable with a default. Invariants:
- exactly ONE worker process: each loaded model must exist once in (GPU) memory, and the
  model manager, queues and keep-alive timers live in that one process. Concurrency comes
  from the worker's threads (gthread), never from more workers.
- the host defaults to 127.0.0.1; the Docker image sets MMSERVE_HOST=0.0.0.0 on purpose.
- timeout is long because a single generation may legitimately run for minutes.
- the settings and the model table are checked here, in the master before any worker starts:
  a bad --models-config file is one line on stderr and exit status 2, not a traceback and
  "Worker failed to boot".
- no control socket unless MMSERVE_CONTROL_SOCKET names one for this instance (see below).
"""

import os
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent
if str(_ROOT) not in sys.path:  # the `gunicorn` script's sys.path[0] is its bin folder
    sys.path.insert(0, str(_ROOT))

from mmserve.preflight import check_or_exit as _check_or_exit  # noqa: E402

# This imports the family handlers (torch, transformers) in the master; the worker forked from
# it inherits them instead of importing them itself, so the start takes no longer.
_check_or_exit()


def _int_env(name: str, default: int) -> int:
    """An integer MMSERVE_* variable, or one line naming it and exit status 2."""
    raw = os.environ.get(name, str(default))
    try:
        return int(raw)
    except ValueError:
        print(f"mmserve: configuration error: {name}={raw!r} is not an integer", file=sys.stderr)
        raise SystemExit(2) from None


host = os.environ.get("MMSERVE_HOST", "127.0.0.1")
port = _int_env("MMSERVE_PORT", 5000)
bind = f"{host}:{port}"

workers = 1  # never more: models are loaded once per process (see above)
worker_class = "gthread"
threads = _int_env("MMSERVE_THREADS", 8)

# Seconds a silent worker may take before it is killed and restarted (long generations).
timeout = _int_env("MMSERVE_TIMEOUT", 600)
# Seconds to finish in-flight requests on SIGTERM; keep docker-compose's stop_grace_period
# at least this long, and above MMSERVE_SHUTDOWN_TIMEOUT (the app's own drain, 30 s).
graceful_timeout = _int_env("MMSERVE_GRACEFUL_TIMEOUT", 60)

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

# gunicorn (>= 25.1) opens a control socket for `gunicornc`, by default at ONE path per user
# ($XDG_RUNTIME_DIR/gunicorn.ctl or ~/.gunicorn/gunicorn.ctl): a second server on the machine
# takes it over, and deletes it when it stops. mmserve needs none (and gunicornc could add
# workers, which must stay one), so it is off unless MMSERVE_CONTROL_SOCKET names a path for
# this instance alone (relative paths are taken from this file's folder).
_control = os.environ.get("MMSERVE_CONTROL_SOCKET", "").strip()
control_socket_disable = not _control
if _control:
    control_socket = str(_ROOT / _control)  # an absolute _control replaces _ROOT


def post_worker_init(worker):
    """Drain on SIGTERM: 503 for new requests, finish those in flight, unload, exit."""
    from mmserve.lifecycle import install_drain_handler

    install_drain_handler(worker)

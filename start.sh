#!/usr/bin/env bash
# Container entrypoint (also usable on a host): fetch models if asked, then run gunicorn.
#   MMSERVE_DOWNLOAD="name1 name2"  fetch these models first ("all" fetches the whole table)
# Bind address, port, threads and timeouts come from gunicorn.conf.py (MMSERVE_* variables);
# inside the image the Dockerfile sets MMSERVE_HOST=0.0.0.0 on purpose.
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")"
mkdir -p models logs tmp

# On a host, use the project's virtualenv when there is one (the image puts /opt/venv on PATH).
if [[ -z "${VIRTUAL_ENV:-}" && -x .venv/bin/gunicorn ]]; then
    PATH="$PWD/.venv/bin:$PATH"
fi
PYTHON="${PYTHON:-python}"

if [[ -n "${MMSERVE_DOWNLOAD:-}" ]]; then
    if [[ "${MMSERVE_DOWNLOAD}" == "all" ]]; then
        "$PYTHON" utils/download_model.py --all
    else
        # Word splitting on purpose: a space-separated list of model names.
        # shellcheck disable=SC2086
        "$PYTHON" utils/download_model.py ${MMSERVE_DOWNLOAD}
    fi
fi

# exec: gunicorn replaces this shell, so it receives `docker stop`'s SIGTERM directly.
exec gunicorn -c gunicorn.conf.py "app:create_app()"

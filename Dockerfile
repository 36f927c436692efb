# syntax=docker/dockerfile:1
#
# mmserve GPU image. Build: docker build -t mmserve .   Run: docker compose up (docker-compose.yml)
#
# Stages:
#   pybase   CUDA runtime base + Python 3.11, shared by both stages below so that the venv built
#            in `builder` runs on the very same interpreter (/usr/bin/python3.11) in `runtime`.
#   builder  compilers + /opt/venv with requirements.txt, then requirements-nodeps.txt (--no-deps).
#   runtime  pybase + /opt/venv + the app, run as the non-root user `app` (UID 1000).
#
# CUDA version: the PyPI torch wheel pinned in requirements.txt (torch 2.14.1+cu130) ships its own
# CUDA 13.0 runtime, cuBLAS and cuDNN, so the base only has to match that major version: its
# NVIDIA_REQUIRE_CUDA=cuda>=13.0 makes the NVIDIA container toolkit refuse a host driver that is
# too old (CUDA 13 needs driver >= 580) instead of torch silently falling back to the CPU. No
# -cudnn- or -devel- variant is needed: cuDNN comes with torch and nothing is compiled with nvcc.
# Keep this tag's major version equal to torch.version.cuda's (tests/test_deploy_files.py checks).
#
# Python 3.11: Ubuntu 22.04 itself ships 3.10 (and only a 3.11.0 pre-release build in universe),
# so Python comes from the deadsnakes PPA, which packages current 3.11.x releases for 22.04.
# Ubuntu 22.04 rather than 24.04 also keeps UID 1000 free (24.04 images have a `ubuntu` user).

FROM nvidia/cuda:13.0.1-runtime-ubuntu22.04 AS pybase
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG DEBIAN_FRONTEND=noninteractive
# Apt versions are not pinned (DL3008): Ubuntu and the PPA drop superseded versions, so pins
# would break the build within weeks; the base image tag pins the release instead.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && apt-get purge -y --auto-remove software-properties-common gpg-agent \
    && rm -rf /var/lib/apt/lists/*

FROM pybase AS builder
ARG DEBIAN_FRONTEND=noninteractive
# Headers and a compiler, for any requirement that has no wheel for this platform.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential python3.11-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /build
COPY requirements.txt requirements-nodeps.txt ./
# requirements-nodeps.txt must be installed without dependencies (see that file).
RUN python3.11 -m venv /opt/venv \
    && pip install --no-cache-dir -r requirements.txt \
    && pip install --no-cache-dir --no-deps -r requirements-nodeps.txt

FROM pybase AS runtime
ARG DEBIAN_FRONTEND=noninteractive
# Runtime shared libraries only (no compilers): OpenMP for torch/numba, libsndfile for soundfile,
# GLib for OpenCV. Then the non-root user and the folders it writes (volumes, HF cache).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 libsndfile1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1000 app \
    && useradd --uid 1000 --gid 1000 --home-dir /app --no-create-home --shell /usr/sbin/nologin app \
    && mkdir -p /app/models /app/logs /app/tmp /app/.cache/huggingface \
    && chown -R app:app /app

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/app/.cache/huggingface \
    MMSERVE_HOST=0.0.0.0 \
    MMSERVE_PORT=5000

COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY --chown=app:app app.py main.py gunicorn.conf.py start.sh ./
COPY --chown=app:app requirements.txt requirements-nodeps.txt ./
COPY --chown=app:app utils/ ./utils/
COPY --chown=app:app mmserve/ ./mmserve/

# Models, logs and temp files outlive the container (named volumes in docker-compose.yml).
# MMSERVE_HOST=0.0.0.0 above is on purpose: inside the container the port must be reachable
# from the published host port; outside a container the server defaults to 127.0.0.1.
VOLUME ["/app/models", "/app/logs", "/app/tmp"]
EXPOSE 5000

# /health answers 200 while serving (503 while draining); no curl in the image, so Python.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health' % os.environ.get('MMSERVE_PORT', '5000'), timeout=8)"]

# The `app` user created above, by number (DL3066): Kubernetes' runAsNonRoot can check it.
USER 1000:1000
ENTRYPOINT ["./start.sh"]

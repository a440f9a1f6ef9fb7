# syntax=docker/dockerfile:1
# podstream images. Targets (docker build --target NAME .):
#   worker       the RunPod GPU worker: CUDA base, torch + diffusers + PyAV + runpod, the app. No weights inside:
#                they load offline from the network volume's HF cache (podstream prefetch). CMD python -m worker.
#   worker-slim  for registries/CI with image-size limits: a small Python image with the app only; on first
#                start it creates (or reuses) a venv with the heavy packages on the network volume, keyed by a
#                hash of the locked requirements (worker/volume.py).
#   relay        the relay (and the demo page), non-root, with a HEALTHCHECK: podstream relay.
# The locked requirements live in deploy/requirements/ (regenerate with deploy/update-locks.sh).
# Build arguments of the worker target:
#   CUDA_BASE           base image; its CUDA version must suit the torch build (torch-cuda.txt: CUDA 13,
#                       host driver >= 580). ubuntu:24.04 for a CPU-only image.
#   TORCH_REQUIREMENTS  deploy/requirements/torch-cuda.txt (default), torch-cpu.txt, or torch-cu128.txt for
#                       hosts with an older driver (CUDA 12.8, driver >= 570), together with
#                       CUDA_BASE=nvidia/cuda:12.8.1-base-ubuntu24.04 (docs/deploy.md, section 1).
# RUNPOD_DEBUG_LEVEL=INFO in the worker images: the runpod SDK's default, DEBUG, logs every streamed part.

ARG CUDA_BASE=nvidia/cuda:13.0.0-base-ubuntu24.04
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# ------------------------------------------------------------------------------------------------ worker
FROM ${CUDA_BASE} AS worker
ARG TORCH_REQUIREMENTS=deploy/requirements/torch-cuda.txt
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    HF_HUB_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    RUNPOD_DEBUG_LEVEL=INFO \
    PODSTREAM_VENV=off
# Ubuntu 24.04's Python is 3.12, the Python the locks are made for. Package versions follow the base image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
WORKDIR /app
# Dependencies first (their layer survives code changes): torch, then everything else, pinned.
COPY deploy/requirements/ deploy/requirements/
RUN pip install -r "${TORCH_REQUIREMENTS}" \
    && pip install -r deploy/requirements/worker.txt
COPY pyproject.toml README.md ./
COPY podstream/ podstream/
COPY worker/ worker/
RUN pip install --no-deps . \
    && python -c "import worker.volume, podstream.cli"
# worker.volume points HF_HOME/TORCH_HOME at /runpod-volume when a network volume is mounted, then execs CMD.
ENTRYPOINT ["python", "-m", "worker.volume", "run", "--"]
CMD ["python", "-m", "worker"]

# ------------------------------------------------------------------------------------------- worker-slim
FROM ${PYTHON_IMAGE} AS worker-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    HF_HUB_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    RUNPOD_DEBUG_LEVEL=INFO \
    PODSTREAM_VENV=volume \
    PODSTREAM_VENV_REQUIREMENTS=/app/deploy/requirements/torch-cuda.txt:/app/deploy/requirements/worker.txt
WORKDIR /app
# The app runs from /app (on the venv's PYTHONPATH); nothing else is installed into the image.
COPY deploy/requirements/ deploy/requirements/
COPY podstream/ podstream/
COPY worker/ worker/
RUN python -c "import worker.volume"
ENTRYPOINT ["python", "-m", "worker.volume", "run", "--"]
CMD ["python", "-m", "worker"]

# ------------------------------------------------------------------------------------------------- relay
FROM ${PYTHON_IMAGE} AS relay
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PODSTREAM_HOST=0.0.0.0 \
    PODSTREAM_PORT=8700 \
    PODSTREAM_DATA_DIR=/data
WORKDIR /app
COPY deploy/requirements/relay.txt deploy/requirements/relay.txt
RUN pip install -r deploy/requirements/relay.txt
COPY pyproject.toml README.md ./
COPY podstream/ podstream/
# relay/ carries the built demo page and client bundle (relay/static) as package data.
COPY relay/ relay/
RUN pip install --no-deps . \
    && python -c "import relay, podstream.cli" \
    && groupadd --system --gid 10001 podstream \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --shell /usr/sbin/nologin podstream \
    && mkdir -p /data \
    && chown 10001:10001 /data
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8700
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PODSTREAM_PORT', '8700'), timeout=4)"]
CMD ["podstream", "relay"]

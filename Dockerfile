# syntax=docker/dockerfile:1
#
# The deepfake scoring processor: `deepfake-processor run`, configured by DFP_* env vars (README: Settings),
# health and metrics on :8007 (/health /healthz /readyz /metrics).
#
#   GPU (default): docker build -t deepfake-processor .
#   CPU only:      docker build --build-arg VARIANT=cpu -t deepfake-processor:cpu .
#   Another CUDA:  docker build --build-arg BASE_IMAGE=nvidia/cuda:<tag>-cudnn-runtime-ubuntu24.04 .
#
# BASE_IMAGE's CUDA major must match the onnxruntime-gpu wheel pip resolves: onnxruntime-gpu 1.31 from PyPI
# links libcudart.so.13 / libcublas.so.13 (CUDA 13 + cuDNN 9, NVIDIA driver >= 580). For an older driver, use a
# CUDA 12 BASE_IMAGE together with --build-arg ORT_PIN="onnxruntime-gpu==<a CUDA 12 build>".
# TensorRT is not in this base: PROVIDERS=auto then falls back to CUDA. For TensorRT, build FROM an
# nvcr.io/nvidia/tensorrt image with the same CUDA major.

ARG VARIANT=gpu
ARG BASE_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
ARG CPU_BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS base-gpu
FROM ${CPU_BASE_IMAGE} AS base-cpu

# ---- base: the chosen image plus a Python (>= 3.11) able to create a venv ---------------------------
FROM base-${VARIANT} AS base
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# CUDA images have no Python (Ubuntu 24.04 ships 3.12); python:*-slim already has one.
RUN if ! python3 -c "import ensurepip, venv" 2>/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# ---- builder: `pip install .` into a venv that the runtime stage copies whole ----------------------
FROM base AS builder
ARG VARIANT
ARG ORT_PIN=""
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# README.md is optional for the build (pyproject names it as the long description; setuptools only warns).
COPY pyproject.toml README.md* ./
COPY processor ./processor
COPY schemas ./schemas
COPY models ./models
# onnxruntime-gpu comes from the package's dependencies; the GPU image adds the [gpu] extra (NVML metrics). The CPU variant swaps it for the same version of
# the CPU wheel: a fraction of the size, and PROVIDERS=auto then lists only what can actually run.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --upgrade pip \
    && if [ "$VARIANT" = "cpu" ]; then pip install . ${ORT_PIN:+"$ORT_PIN"}; \
       else pip install ".[gpu]" ${ORT_PIN:+"$ORT_PIN"}; fi \
    && if [ "$VARIANT" = "cpu" ]; then \
        ort_version="$(pip show onnxruntime-gpu | sed -n 's/^Version: //p')" \
        && pip uninstall -y onnxruntime-gpu \
        && pip install "onnxruntime==${ort_version}"; \
    fi \
    && deepfake-processor --help >/dev/null

# ---- runtime -----------------------------------------------------------------------------------------
FROM base AS runtime
LABEL org.opencontainers.image.title="deepfake-processor" \
      org.opencontainers.image.description="Kafka-native deepfake scoring processor (ONNX Runtime, micro-batched)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home --shell /usr/sbin/nologin app \
    && mkdir -p /models /var/cache/deepfake-processor/trt \
    && chown app:app /models \
    && chown -R app:app /var/cache/deepfake-processor
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# TensorRT engine cache (minutes to build per shape for ViT-B, seconds to load): mount a volume here so restarts
# reuse it. Owned by the app user, so a fresh named volume mounted here starts writable.
ENV DFP_TRT_CACHE_DIR=/var/cache/deepfake-processor/trt

# MODEL_DIR: FaceSocial's real model directory (config.json, preprocessor_config.json, onnx/model*.onnx;
# docs/MODELS.md) is mounted read-only at /models and selected with DFP_MODEL_DIR=/models. With DFP_MODEL_DIR unset
# the processor serves the bundled demo model, whose scores are meaningless: fine for smoke tests only.
# (No VOLUME instruction: it would create an anonymous volume on every `docker run`.)

USER 10001:10001
WORKDIR /home/app
EXPOSE 8007
# SIGTERM: stop consuming, finish in-flight batches, deliver, commit, leave the group, exit 0 within
# DFP_SHUTDOWN_TIMEOUT_S (default 30). Give the container more than that (`docker stop -t 45`,
# compose stop_grace_period, Kubernetes terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
# Healthy = /readyz answers 200 (model loaded and warm, consumer in its group). urllib raises on 503, so no
# curl is needed. The start period covers model load and warm-up (TensorRT engine builds take longer).
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('DFP_HTTP_PORT', '8007') + '/readyz', timeout=4)" || exit 1

ENTRYPOINT ["deepfake-processor"]
CMD ["run"]

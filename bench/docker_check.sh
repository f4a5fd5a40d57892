#!/usr/bin/env bash
# Build the callqa image (CPU and GPU variants) and check it runs: what was done by hand to verify the
# Dockerfile (README "Production", "The image"). Needs a Docker daemon; CI has none and does not run this.
#
#   bench/docker_check.sh                       # FROM python:3.11-slim (Docker Hub)
#   PYTHON_IMAGE=callqa-local/python:3.11-slim PIP_CERT=/etc/ssl/certs/ca-certificates.crt bench/docker_check.sh
#
# Where Docker Hub cannot be reached, a stand-in base can be made from Debian bookworm (python3 is 3.11 there;
# it has no `python`, /usr/bin/python3 instead of /usr/local/bin/python3, which the Dockerfile allows for):
#   debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,netbase,tzdata \
#       bookworm rootfs http://deb.debian.org/debian
#   # only behind a TLS-inspecting proxy: its CA into the stand-in, and PIP_CERT as above
#   cp proxy-ca.crt rootfs/usr/local/share/ca-certificates/ && chroot rootfs update-ca-certificates
#   chroot rootfs apt-get clean && rm -rf rootfs/var/lib/apt/lists/*
#   tar -C rootfs -c . | docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
#       - callqa-local/python:3.11-slim
#
# AUDIO: a short recording to transcribe inside the container, with no network (default: the JFK clip of
# the shared test audio). GPU=0 skips the GPU variant (it downloads ~670 MB of cuBLAS wheels).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON_IMAGE=${PYTHON_IMAGE:-python:3.11-slim}
AUDIO=${AUDIO:-/work/shared/audio/real/jfk_16k.wav}
GPU=${GPU:-1}
TAG=${TAG:-callqa}
# The builder reaches PyPI like this host does: host network (a daemon started with --bridge=none has no
# other), and a CA bundle for pip only if set. Build args, so nothing of it lands in the image.
args=(--network host --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
[ -n "${PIP_CERT:-}" ] && args+=(--build-arg "PIP_CERT=$PIP_CERT")
[ -n "${PIP_INDEX_URL:-}" ] && args+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")

step() { printf '\n== %s\n' "$*"; }

step "build the CPU image ($TAG:latest from $PYTHON_IMAGE)"
t0=$(date +%s)
docker build "${args[@]}" -t "$TAG:latest" .
echo "built in $(( $(date +%s) - t0 )) s"
docker image inspect "$TAG:latest" --format 'size {{.Size}} bytes, user {{.Config.User}}'

step "runs as the non-root user, the venv read-only to it"
docker run --rm --network none "$TAG:latest" sh -c \
  'id; test "$(id -u)" = 10001; ! touch /opt/callqa/x 2>/dev/null; touch /var/lib/callqa/ok && echo home writable'

step "the CLI and the models made ready at build time"
docker run --rm --network none "$TAG:latest" callqa --help | head -3
docker run --rm --network none "$TAG:latest" sh -c \
  'ls -l /opt/callqa-cache/callqa/models/whisper-base-ct2/ /opt/callqa-cache/callqa/models/voice-encoder-*.npz'

step "transcribe $AUDIO with no network and a read-only root file system"
t0=$(date +%s)
docker run --rm --network none --read-only --tmpfs /tmp -v "$(dirname "$AUDIO"):/audio:ro" "$TAG:latest" \
  callqa transcribe "/audio/$(basename "$AUDIO")" --no-progress 2>&1 | tee /tmp/callqa-docker-transcribe.txt
echo "(container run: $(( $(date +%s) - t0 )) s)"
! grep -q 'Failed to persist telemetry' /tmp/callqa-docker-transcribe.txt

if [ "$GPU" != 0 ]; then
  step "build the GPU variant ($TAG:gpu, WITH_CUDA=1)"
  t0=$(date +%s)
  docker build "${args[@]}" --build-arg WITH_CUDA=1 -t "$TAG:gpu" .
  echo "built in $(( $(date +%s) - t0 )) s"
  docker image inspect "$TAG:gpu" --format 'size {{.Size}} bytes'

  step "the CUDA 12 libraries load; CTranslate2 sees no GPU here and does not crash"
  docker run --rm -i --network none "$TAG:gpu" python - <<'EOF'
import ctypes

for lib in ("libcublas.so.12", "libcublasLt.so.12", "libnvrtc.so.12"):
    ctypes.CDLL(lib)
    print("loaded", lib)
major = ctypes.c_int()
assert ctypes.CDLL("libcublas.so.12").cublasGetProperty(0, ctypes.byref(major)) == 0 and major.value == 12
import ctranslate2

print("ctranslate2", ctranslate2.__version__, "CUDA devices:", ctranslate2.get_cuda_device_count())
EOF
  step "the CPU image has none of them"
  ! docker run --rm --network none "$TAG:latest" python -c 'import ctypes; ctypes.CDLL("libcublas.so.12")' 2>/dev/null
  echo "libcublas.so.12 absent from $TAG:latest, as it should be"
fi
step "done"
docker images "$TAG"

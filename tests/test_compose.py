"""docker-compose.yml, .env.example and the Dockerfile agree with each other and with the settings callqa reads.
(`.ci/run` also has `docker-compose config` validate the file; the image itself is not built here.)"""
from __future__ import annotations

import http.server
import re
import socket
import threading
from pathlib import Path

import pytest
import yaml

from callqa import healthcheck
from callqa.cli import build_parser
from callqa.ingest_settings import IngestSettings
from config.settings import Settings
from tests.test_lockfile import lock

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES = COMPOSE["services"]
ONE_SHOT = {"migrate", "create-admin"}
LONG_RUNNING = sorted(set(SERVICES) - ONE_SHOT)
CALLQA_SERVICES = sorted(n for n, s in SERVICES.items() if "build" in s)  # the image the Dockerfile builds
SUBST = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
SECRET_WORDS = ("PASSWORD", "SECRET", "KEY", "TOKEN", "SALT")


def env_example() -> dict[str, str]:
    out = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f".env.example: {line!r} is not NAME=value"
            out[name.strip()] = value
    return out


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${X}, ${X:-default}, ${X:?error} (enough for this file)."""
    def one(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        v = env.get(name)
        if op and op.startswith(":") and not v:
            v = None
        if v is None:
            if op and op.endswith("?"):
                raise AssertionError(f"{name} is required: {arg}")
            return arg or "" if op and op.endswith("-") else ""
        return v
    return SUBST.sub(one, value)


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def test_the_services_exist():
    assert {"kafka", "postgres", "worker", "ingest", "web", "migrate", "create-admin"} <= set(SERVICES)
    assert SERVICES["kafka"]["image"].startswith("apache/kafka:")
    assert SERVICES["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_long_running_services_have_a_healthcheck_and_restart(name):
    s = SERVICES[name]
    assert s.get("restart") == "unless-stopped", name
    test = s.get("healthcheck", {}).get("test")
    assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name}: no health check"


def test_the_kafka_health_check_asks_the_broker():
    assert "kafka-broker-api-versions.sh" in " ".join(SERVICES["kafka"]["healthcheck"]["test"])


def test_kafka_and_postgres_keep_their_data_in_volumes():
    for name, path in (("kafka", "/var/lib/kafka/data"), ("postgres", "/var/lib/postgresql/data")):
        vols = dict(v.split(":")[1::-1] for v in SERVICES[name]["volumes"])
        assert vols.get(path) in COMPOSE["volumes"], f"{name}: {path} is not on a named volume"
    # the apache/kafka image writes to /tmp unless told where its data goes
    assert SERVICES["kafka"]["environment"]["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"


def test_the_worker_scales():
    w = SERVICES["worker"]
    assert "container_name" not in w and "ports" not in w, "--scale worker=N needs no name and no host ports"


def test_dependencies_wait_for_health_and_the_migration():
    for name, s in SERVICES.items():
        deps = s.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on without conditions"
        for dep, cond in deps.items():
            want = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert cond == {"condition": want}, f"{name} -> {dep}"
    for name in ("worker", "web"):
        assert "migrate" in SERVICES[name]["depends_on"], name


def test_one_shots_and_profiles():
    assert SERVICES["migrate"]["command"] == ["callqa", "db", "upgrade"]
    assert SERVICES["migrate"].get("restart") == "no" and "profiles" not in SERVICES["migrate"]
    admin = SERVICES["create-admin"]
    assert admin["profiles"] == ["setup"]
    assert admin["command"][:3] == ["callqa", "users", "add"] and admin["command"][-2:] == ["--role", "admin"]
    gpu = SERVICES["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["command"] == ["callqa", "worker", "--agents", "transcribe"]
    assert environment(gpu)["CALLQA_ASR_DEVICE"] == "cuda"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert SERVICES["web"]["command"][:4] == ["callqa", "web", "--host", "0.0.0.0"]


@pytest.mark.parametrize("name", CALLQA_SERVICES)
def test_commands_are_callqa_commands(name):
    command = [interpolate(c, env_example()) for c in SERVICES[name]["command"]]
    assert command[0] == "callqa"
    build_parser().parse_args(command[1:])


def test_no_secret_is_written_in_the_compose_file():
    for name, s in SERVICES.items():
        for key, value in environment(s).items():
            if any(w in key for w in SECRET_WORDS):
                m = SUBST.fullmatch(value)
                assert m, f"{name}: {key} must come from .env (${{{key}}}), not be written here"
                assert not (m.group(2) or "").endswith("-") or not m.group(3), \
                    f"{name}: {key} has a default value, which is a secret written in the file"
            for cred in re.findall(r"://[^:/@\s]+:([^@\s]+)@", value):  # user:password@ in a URL
                assert SUBST.fullmatch(cred), f"{name}: {key} has a password written in it"


def test_callqa_settings_named_are_ones_callqa_reads():
    known = {e for e, _, _ in Settings.describe()} | {e for e, _, _ in IngestSettings.describe()}
    named = {k for s in SERVICES.values() for k in environment(s) if k.startswith("CALLQA_")}
    assert named and not named - known, f"not callqa settings: {sorted(named - known)}"
    in_example = {k for k in env_example() if k.startswith("CALLQA_") and k not in ("CALLQA_IMAGE", "CALLQA_GPU_IMAGE")}
    assert not in_example - known, f".env.example: not callqa settings: {sorted(in_example - known)}"
    dockerfile_env = set(re.findall(r"\b(CALLQA_[A-Z0-9_]+)=", (ROOT / "Dockerfile").read_text()))
    assert not dockerfile_env - known, f"Dockerfile: not callqa settings: {sorted(dockerfile_env - known)}"


def test_every_substituted_variable_is_in_env_example():
    used = {m.group(1) for m in SUBST.finditer(COMPOSE_TEXT)}
    missing = used - set(env_example())
    assert not missing, f"add to .env.example: {sorted(missing)}"
    # and the example's values satisfy every ${X:?...}
    for m in SUBST.finditer(COMPOSE_TEXT):
        interpolate(m.group(0), env_example())


def test_the_dockerfile():
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2, "multi-stage"
    assert "--require-hashes" in text and "requirements/base.lock" in text
    assert "callqa models prepare --engine faster-whisper" in text
    assert re.search(r"^ENV .*HF_HUB_OFFLINE=1", text, re.M | re.S)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0"), "the image runs as a non-root user"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".venv-tools", "var", ".git"} <= set(ignored)


def test_the_gpu_variant_adds_what_the_gpu_lock_holds():
    """WITH_CUDA=1 installs requirements/gpu.lock (hash-pinned) into /opt/callqa-gpu, and LD_LIBRARY_PATH names
    the lib folder of each of its nvidia-* wheels (nvidia-cuda-nvrtc-cu12 -> nvidia/cuda_nvrtc/lib), where
    CTranslate2's dlopen("libcublas.so.12") finds them; worker-gpu is built that way."""
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG WITH_CUDA\b", text, re.M)
    install = re.search(r"pip install --require-hashes --no-deps --only-binary=:all: --target /opt/callqa-gpu"
                        r" \\\n\s+-r /src/requirements/gpu.lock", text)
    assert install, "the GPU libraries come from gpu.lock, hash-pinned, into /opt/callqa-gpu"
    assert "COPY --from=builder /opt/callqa-gpu /opt/callqa-gpu" in text
    ld = re.search(r"^\s+LD_LIBRARY_PATH=(\S+)", text, re.M).group(1).split(":")
    gpu = lock.pins(lock.GPU)
    assert gpu and all(n.startswith("nvidia-") and n.endswith("-cu12") for n in gpu), gpu
    want = {f"/opt/callqa-gpu/nvidia/{n[len('nvidia-'):-len('-cu12')].replace('-', '_')}/lib" for n in gpu}
    assert set(ld) == want
    build = SERVICES["worker-gpu"]["build"]
    assert build["args"]["WITH_CUDA"] == "1" and SERVICES["worker-gpu"]["image"].startswith("${CALLQA_GPU_IMAGE")
    assert "args" not in (SERVICES["worker"]["build"] if isinstance(SERVICES["worker"]["build"], dict) else {})


def test_the_health_check_command():
    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200 if self.path == "/healthz" else 500)
            self.end_headers()

        def log_message(self, *a):
            pass
    server = http.server.HTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        assert healthcheck.main([f"http://127.0.0.1:{port}/healthz"]) == 0
        assert healthcheck.main([f"http://127.0.0.1:{port}/other"]) == 1
    finally:
        server.shutdown()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert healthcheck.main([f"http://127.0.0.1:{closed}/healthz"]) == 1
    assert healthcheck.main([]) == 2

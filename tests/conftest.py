import os
import sys
from pathlib import Path

import pytest

from tests.helpers import SHARED

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def kafka_bootstrap():
    """A real Kafka broker for the whole session (or CALLQA_TEST_KAFKA_BOOTSTRAP)."""
    existing = os.environ.get("CALLQA_TEST_KAFKA_BOOTSTRAP")
    if existing:
        yield existing
        return
    from callqa.broker import LocalBroker

    broker = LocalBroker().start(log=lambda m: print(m, file=sys.stderr))
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return SHARED


def _pg_bin() -> Path | None:
    import glob
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory):
    """A real PostgreSQL: CALLQA_TEST_POSTGRES_URL, or a throwaway server started here."""
    url = os.environ.get("CALLQA_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    import shutil
    import subprocess

    from callqa.broker import free_port
    bindir = _pg_bin()
    if bindir is None:
        pytest.fail("PostgreSQL is not installed: apt-get install postgresql, or set CALLQA_TEST_POSTGRES_URL")
    base = Path("/tmp") / f"callqa-pg-{os.getpid()}"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir()
    run_as = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(base, "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data = base / "data"
    subprocess.run(run_as + [str(bindir / "initdb"), "-D", str(data), "-U", "callqa", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    subprocess.run(run_as + [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-o",
                             f"-p {port} -k {base} -h 127.0.0.1", "start"], check=True, capture_output=True)
    try:
        subprocess.run(run_as + [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "callqa",
                                 "callqa"], check=True, capture_output=True)
        yield f"postgresql+psycopg://callqa@127.0.0.1:{port}/callqa"
    finally:
        subprocess.run(run_as + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'callqa.db'}"
    url = request.getfixturevalue("postgres_url")
    # each test gets a clean schema
    from sqlalchemy import create_engine, text
    eng = create_engine(url)
    with eng.begin() as c:
        c.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    eng.dispose()
    return url


@pytest.fixture(scope="session")
def openai_checkpoint() -> Path:
    """The openai-whisper checkpoint of the base model, made by the product from the installed CTranslate2
    weights (pipeline.asr.prepare_openai_checkpoint, as `callqa models prepare` does)."""
    import importlib.util

    missing = [m for m in ("torch", "whisper") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.fail(f"the openai-whisper engine tests need {', '.join(missing)}: pip install -e '.[openai]' "
                    "(torch first; see README)")
    from pipeline.asr import prepare_openai_checkpoint
    return prepare_openai_checkpoint("base")

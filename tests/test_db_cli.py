"""`callqa db upgrade|current` on SQLite and PostgreSQL, and the connection pool settings."""
from __future__ import annotations

from models.db import make_engine
from tests.helpers import run_cli


def test_db_upgrade_and_current(db_url, tmp_path):
    env = {"CALLQA_DATABASE_URL": db_url, "CALLQA_HOME": str(tmp_path)}
    before = run_cli("db", "current", env=env)
    assert before.returncode == 0 and "schema revision none (behind" in before.stdout, before.stderr
    up = run_cli("db", "upgrade", env=env)
    assert up.returncode == 0 and "(up to date)" in up.stdout, up.stderr
    assert "password" not in up.stdout.lower() or "***" in up.stdout
    again = run_cli("db", "upgrade", env=env)  # idempotent
    assert again.returncode == 0 and "(up to date)" in again.stdout


def test_pool_settings_reach_postgresql(postgres_url, monkeypatch):
    monkeypatch.setenv("CALLQA_DB_POOL_SIZE", "3")
    monkeypatch.setenv("CALLQA_DB_MAX_OVERFLOW", "2")
    engine = make_engine(postgres_url)
    try:
        assert engine.pool.size() == 3 and engine.pool._max_overflow == 2
    finally:
        engine.dispose()


def test_the_web_start_line_hides_the_database_password(monkeypatch, capsys):
    # found running the image: `callqa web` printed the PostgreSQL password into the container's log
    import uvicorn

    import models.db
    import web.app
    from callqa import cli
    monkeypatch.setenv("CALLQA_DATABASE_URL", "postgresql+psycopg://callqa:s3cret-pw@db:5432/callqa")
    monkeypatch.setattr(models.db, "session_factory", lambda *a, **k: None)
    monkeypatch.setattr(web.app, "create_app", lambda s: object())
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    assert cli.main(["web", "--port", "1"]) == 0
    out = capsys.readouterr().out
    assert "s3cret-pw" not in out and "callqa:***@db:5432/callqa" in out, out

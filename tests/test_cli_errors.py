"""Mistakes a new user makes get a sentence that says what is wrong and what to do, never a traceback
(the real `callqa` command in a child process, real SQLite files)."""
from __future__ import annotations

import csv
import io
import time

import pytest

from callqa.broker import free_port
from models.db import session_factory
from pipeline.store import store_tagged
from tests.helpers import run_cli
from tests.test_report import call


def no_traceback(r) -> str:
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    return r.stderr


@pytest.fixture
def db_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'calls.db'}"
    with session_factory(url).begin() as s:
        for cid, manager, team in (("a1", "anna", "north"), ("a2", "anna", "north"), ("b1", "bob", "south")):
            store_tagged(s, call(cid, manager, team=team, objections=[("price", False, 20)]))
    return url


@pytest.mark.parametrize("url, says", [
    ("postgres://u:secret@db.example/callqa", "write postgresql+psycopg://"),
    ("foo", "is not a database URL"),
    ("mysql://u:secret@db.example/callqa", "needs the Python driver"),
])
def test_bad_database_urls_are_explained(url, says, tmp_path):
    r = run_cli("report", env={"CALLQA_DATABASE_URL": url, "CALLQA_HOME": str(tmp_path)})
    err = no_traceback(r)
    assert r.returncode == 2 and says in err and "secret" not in err


def test_postgres_url_without_the_driver_says_which_extra(tmp_path):
    # a Python where psycopg is not installed: a package of that name that cannot be imported
    fake = tmp_path / "no-driver" / "psycopg"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'psycopg'\", name='psycopg')\n")
    r = run_cli("report", env={"CALLQA_DATABASE_URL": "postgresql+psycopg://u:pw@127.0.0.1:1/callqa",
                               "PYTHONPATH": str(fake.parent)})
    err = no_traceback(r)
    assert r.returncode == 2 and "psycopg" in err and "pip install -e '.[postgres]'" in err


def test_unreachable_postgres_is_explained(tmp_path):
    r = run_cli("report", env={"CALLQA_DATABASE_URL": f"postgresql+psycopg://u:pw@127.0.0.1:{free_port()}/callqa"})
    assert r.returncode == 2 and "Is the server running" in no_traceback(r)


def test_a_mistyped_sqlite_path_is_not_an_empty_database(tmp_path, db_url):
    wrong = tmp_path / "calls-typo.db"
    for args in (["report"], ["report", "flagged"], ["review", "a1", "unanswered_objection", "--agree"],
                 ["explain", "a1"], ["retag", "--dry-run"]):
        r = run_cli(*args, env={"CALLQA_DATABASE_URL": f"sqlite:///{wrong}"})
        assert r.returncode == 2 and f"no database at {wrong}" in no_traceback(r), args
    assert not wrong.exists()
    assert run_cli("report", env={"CALLQA_DATABASE_URL": db_url}).returncode == 0


def test_report_for_an_unknown_team_lists_the_teams(db_url):
    r = run_cli("report", "--team", "nosuch", env={"CALLQA_DATABASE_URL": db_url})
    assert r.returncode == 0 and "No calls for team 'nosuch'" in r.stdout and "north, south" in r.stdout
    assert "No calls stored yet" not in r.stdout
    r = run_cli("report", "coaching", "--team", "nosuch", env={"CALLQA_DATABASE_URL": db_url})
    assert "No calls for team 'nosuch'" in r.stdout
    r = run_cli("report", "--since", "2030-01-01", env={"CALLQA_DATABASE_URL": db_url})
    assert "No calls in 2030-01-01 to …. Stored calls run from 2026-11-02" in r.stdout


def test_report_manager_by_name_and_managers_show_ids(db_url):
    r = run_cli("report", "manager", "Anna", env={"CALLQA_DATABASE_URL": db_url})
    assert r.returncode == 0 and "Anna (anna), team north: 2 calls" in r.stdout
    r = run_cli("report", "managers", env={"CALLQA_DATABASE_URL": db_url})
    head, rule, *rows = r.stdout.splitlines()
    assert head.split()[:3] == ["Manager", "Id", "Team"] and rows[0].split()[:2] == ["Anna", "anna"]
    r = run_cli("report", "manager", "Nobody Known", env={"CALLQA_DATABASE_URL": db_url})
    assert r.returncode == 2 and "managers: anna (Anna), bob (Bob)" in no_traceback(r)


def test_config_and_worker_agree_on_the_kafka_bootstrap(tmp_path):
    line = next(x for x in run_cli("config").stdout.splitlines() if x.startswith("CALLQA_KAFKA_BOOTSTRAP"))
    assert "start a local broker" not in line.replace("starts its own broker", "")
    assert "worker" in line and "need" in line
    r = run_cli("worker", env={"CALLQA_HOME": str(tmp_path)})
    assert r.returncode == 2 and "CALLQA_KAFKA_BOOTSTRAP" in no_traceback(r) and "callqa broker" in r.stderr


def test_publish_to_a_dead_broker_says_so_quickly(tmp_path, shared_dir):
    t0 = time.monotonic()
    r = run_cli("publish", str(shared_dir / "audio" / "real" / "jfk_8k.wav"), "--manager", "m-1",
                env={"CALLQA_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}", "CALLQA_HOME": str(tmp_path)})
    took = time.monotonic() - t0
    err = no_traceback(r)
    assert r.returncode == 2 and "no Kafka broker answered" in err and "nothing was published" in err
    assert took < 25, took
    assert not (tmp_path / "recordings").exists() or not any((tmp_path / "recordings").iterdir())


def test_publish_a_file_that_is_not_audio(tmp_path):
    bad = tmp_path / "call.wav"
    bad.write_text("not audio")
    r = run_cli("publish", str(bad), "--manager", "m-1", env={"CALLQA_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    assert r.returncode == 2 and "not a readable audio file" in no_traceback(r)


def test_managers_csv_has_one_value_per_cell(db_url):
    r = run_cli("report", "managers", "--format", "csv", env={"CALLQA_DATABASE_URL": db_url})
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert rows and not any(v.startswith(("{", "[")) for row in rows for v in row.values())
    assert {"steps_closing_score", "objections_price_raised", "objections_price_answered"} <= set(rows[0])
    assert rows[0]["objections_price_raised"] == "2"

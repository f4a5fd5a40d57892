"""`callqa demo` end to end: its report names each demo manager's intended weak stage."""
from __future__ import annotations

import json

import pytest

from callqa.demo.run import DEMO_DIR, run_demo
from models.events import CallFlagged
from models.tables import FlagRow, Review
from pipeline.store import record_review, store_tagged
from tests.test_report import call
from tests.helpers import consume_all
from callqa.report import manager_rows
from config.settings import Settings
from models.db import session_factory

pytestmark = pytest.mark.slow


def test_demo_report_names_the_intended_weak_stages(kafka_bootstrap, tmp_path, capsys):
    s = Settings(kafka_bootstrap=kafka_bootstrap, home=str(tmp_path / "demo"), app_id="callqa-demo-test")
    # a previous demo run on which a sales head reviewed a flag: the reset keeps that review
    with session_factory(s.db_url).begin() as session:
        store_tagged(session, call("demo-ru-anna-03", "mgr-anna-petrova", objections=[("price", False, 20)],
                                   flags=["unanswered_objection"]))
        record_review(session, "demo-ru-anna-03", "unanswered_objection", "agree", "coach on price", "head")
    assert run_demo(s, timeout_s=600) == 0
    out = capsys.readouterr().out
    assert "Weak stage" in out and "Anna Petrova" in out
    assert "8 of 8 calls joined to their leads" in out and "Hot called in time" in out and "Step impact:" in out
    assert "Resetting the demo" in out and "Kept 1 review(s) from the previous demo run" in out
    # a demo admin for the web pages, its password printed once
    password = out.split("log in as admin with the password ")[1].split()[0]
    assert out.count(password) == 1
    with session_factory(s.db_url).begin() as session:
        from pipeline.accounts import login
        user = login(session, "admin", password, "127.0.0.1", max_failures=5, lock_s=60)
        assert user is not None and user.role == "admin"
    with session_factory(s.db_url)() as session:
        kept = [(r.call_id, r.flag_code, r.verdict, r.comment) for r in session.query(Review)]
    assert kept == [("demo-ru-anna-03", "unanswered_objection", "agree", "coach on price")]
    intended = {c["manager_id"]: c["intended"]["weak_stage"]
                for c in json.loads((DEMO_DIR / "calls.json").read_text())}
    with session_factory(f"sqlite:///{tmp_path / 'demo' / 'callqa.db'}")() as session:
        rows = {r["manager_id"]: r for r in manager_rows(session, s.min_calls_for_rank)}
    assert {m: rows[m]["weak_stage"] for m in intended} == intended
    assert all(rows[m]["failed_calls"] == 0 for m in intended)
    # every flagged call was announced on calls.flagged, for CRMs and chat bots
    with session_factory(f"sqlite:///{tmp_path / 'demo' / 'callqa.db'}")() as session:
        flagged = {(f.call_id, f.code) for f in session.query(FlagRow)}
    notes = [CallFlagged.model_validate_json(m.value) for m in consume_all(kafka_bootstrap, s.topic_flagged)]
    assert flagged and {(n.call_id, code) for n in notes for code in n.new_flags} == flagged

    # the funnel: every demo manager with leads, hot-lead response and conversion
    from pipeline.funnel import funnel_rows
    with session_factory(f"sqlite:///{tmp_path / 'demo' / 'callqa.db'}")() as session:
        funnel = {m["manager_id"]: m for m in funnel_rows(session)["managers"]}
    assert set(funnel) == set(intended)
    assert {m: (f["leads"], f["hot_leads"], f["hot_called_in_time"], f["hot_missed"], f["won"])
            for m, f in funnel.items()} == {"mgr-anna-petrova": (3, 2, 1, 1, 1), "mgr-mark-taylor": (3, 2, 1, 1, 2),
                                            "mgr-ivan-sokolov": (3, 2, 1, 1, 0)}

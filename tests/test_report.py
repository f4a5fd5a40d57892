"""Reports for sales heads and trainers: the flagged-call queue, reviews, coaching, KPIs, the CLI."""
from __future__ import annotations

import csv
import io
import json
import re
from datetime import datetime, timedelta, timezone

import pytest

from callqa import report as rp
from callqa.cli import main
from models.db import session_factory
from models.events import STEPS, CallTagged
from pipeline.store import record_review, store_tagged

T0 = datetime(2026, 11, 2, 10, 0, tzinfo=timezone.utc)


def call(cid: str, manager: str, *, objections=(), flags=(), day=0, lead_min=None, hot=True, team="north"):
    """objections: (kind, answered, at); the manager answers at at+3 when answered."""
    segs = [{"speaker": "manager", "start": 0, "end": 4, "text": "hello, this is Ann from Acme"}]
    for kind, answered, at in objections:
        segs.append({"speaker": "client", "start": at, "end": at + 2, "text": f"objection {kind}"})
        if answered:
            segs.append({"speaker": "manager", "start": at + 3, "end": at + 6, "text": f"answer to {kind}"})
    segs.append({"speaker": "manager", "start": 100, "end": 104, "text": "thanks, bye"})
    started = T0 + timedelta(days=day)
    return CallTagged.model_validate({
        "call_id": cid, "manager_id": manager, "manager_name": manager.title(), "team_id": team,
        "recording_url": f"file:///rec/{cid}.wav", "language": "en", "started_at": started.isoformat(),
        "lead": ({"id": f"L-{cid}", "created_at": (started - timedelta(minutes=lead_min)).isoformat(),
                  "temperature": "hot" if hot else "cold"} if lead_min is not None else None),
        "asr": {"engine": "faster-whisper", "model": "base", "compute_type": "int8", "audio_s": 105, "wall_s": 9},
        "segments": sorted(segs, key=lambda s: s["start"]),
        "steps": {s: {"present": True, "quality": "weak" if s == "objection_handling" and any(
            not a for _, a, _ in objections) else "good"} for s in STEPS if s != "objection_handling" or objections},
        "objections": [{"text": f"objection {k}", "kind": k, "answered": a, "at": at,
                        "segment": next(i for i, sg in enumerate(sorted(segs, key=lambda x: x["start"]))
                                        if sg["start"] == at)} for k, a, at in objections],
        "flags": [{"code": c, "detail": f"{c} detail", "at": 12.5} for c in flags],
    })


@pytest.fixture
def db(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    monkeypatch.setenv("CALLQA_DATABASE_URL", url)
    sessions = session_factory(url)
    with sessions.begin() as s:
        store_tagged(s, call("a1", "anna", objections=[("price", False, 20)], flags=["unanswered_objection"],
                             lead_min=5))
        store_tagged(s, call("a2", "anna", objections=[("think", False, 30), ("price", False, 50)],
                             flags=["unanswered_objection", "long_monologue"], day=1, lead_min=40))
        store_tagged(s, call("b1", "bob", objections=[("price", True, 20)], lead_min=3))
        store_tagged(s, call("b2", "bob", objections=[("supplier", True, 20)], flags=["long_monologue"], day=2))
        store_tagged(s, call("c1", "cat", objections=[("price", True, 10), ("timing", False, 40)], day=9,
                             team="south"))
    return sessions


def test_flagged_queue_and_reviews_count_per_rule(db):
    with db() as s:
        rows = rp.flagged_rows(s)
    assert len(rows) == 4 and {r["flag"] for r in rows} == {"unanswered_objection", "long_monologue"}
    assert rows[0]["link"].endswith("#t=12.5") and all(r["review"] is None for r in rows)
    with db.begin() as s:
        record_review(s, "a1", "unanswered_objection", "agree", "yes, missed", "head")
        record_review(s, "b2", "long_monologue", "disagree", "was a demo", "head")
        record_review(s, "b2", "long_monologue", "disagree", "changed my mind? no", "head")  # replaces
        with pytest.raises(LookupError, match="no flag"):
            record_review(s, "b1", "long_monologue", "agree")
        with pytest.raises(LookupError, match="its flags"):
            record_review(s, "a1", "nonsense", "agree")
    with db() as s:
        rules = {d["flag"]: d for d in rp.flag_rule_rows(s)}
        queue = rp.flagged_rows(s)
    assert rules["long_monologue"] == {"flag": "long_monologue", "flagged": 2, "reviewed": 1, "agree": 0,
                                       "disagree": 1, "disagree_share": 1.0}
    assert rules["unanswered_objection"]["agree"] == 1
    assert [r["review"] for r in queue][:2] == [None, None]  # unreviewed first


def test_coaching_ranks_by_objection_shortfall_with_moments(db):
    with db() as s:
        rows = rp.coaching_rows(s, rp.Scope(team_id="north"))
    assert [r["manager_id"] for r in rows] == ["anna", "bob"]
    anna = rows[0]
    assert anna["answer_rate"] == 0.0 and anna["team_answer_rate"] == 0.4
    assert anna["missed_kinds"] == {"price": 2, "think": 1}
    assert len(anna["moments"]) == 3
    m = anna["moments"][-1]
    assert m["call_id"] == "a2" and m["kind"] == "price" and m["objection"] == "objection price"
    assert m["manager_said"] == "thanks, bye" and m["link"].endswith("#t=50.0")
    out = list(csv.DictReader(io.StringIO(rp.coaching_csv(rows))))
    assert len(out) == 4 and out[0]["manager_id"] == "anna" and out[-1]["manager_id"] == "bob"


def test_kpis_hot_leads_and_activity(db):
    with db() as s:
        k = rp.activity(s)
    assert k["anna"]["hot_leads"] == 2 and k["anna"]["hot_leads_within_15min"] == 0.5
    assert k["anna"]["calls_per_day"] == 1.0 and k["bob"]["calls_per_day"] == 1.0
    assert k["bob"]["lead_response_median_min"] == 3.0
    assert k["cat"]["hot_leads"] == 0 and k["cat"]["hot_leads_within_15min"] is None


def test_cli_reports(db, capsys):
    assert main(["report", "managers", "--team", "north", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {m["manager_id"] for m in data["managers"]} == {"anna", "bob"}
    assert main(["report", "managers", "--since", "2026-11-05"]) == 0
    out = capsys.readouterr().out
    assert "Cat" in out and "Anna" not in out
    assert main(["report", "manager", "anna"]) == 0
    assert "objection_handling" in capsys.readouterr().out
    assert main(["report", "coaching", "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith("manager_id,manager_name")
    assert main(["review", "a2", "long_monologue", "--disagree", "--comment", "fine"]) == 0
    assert main(["report", "flags"]) == 0
    assert "long_monologue" in capsys.readouterr().out
    assert main(["report", "manager", "nobody"]) == 2
    assert "no calls stored for manager" in capsys.readouterr().err
    assert main(["report", "managers", "--since", "yesterday"]) == 2


def test_manager_report_wording(db, capsys):
    assert main(["report", "manager", "cat"]) == 0
    out = capsys.readouterr().out
    closing = next(line for line in out.splitlines() if line.startswith("closing "))
    assert closing.split()[3] == "–"          # Next step: the closing step has none (was "0%")
    assert "1 call" in out and "1 calls" not in out


def test_transcribe_progress_bar_shows_rounded_seconds():
    from callqa.cli import _progress_bar
    buf = io.StringIO()
    bar = _progress_bar(140.4, "call.wav", file=buf)
    for _ in range(787):
        bar.update(0.1)
    bar.refresh()
    bar.close()
    shown = re.findall(r"(\d+(?:\.\d+)?)/140\.4", buf.getvalue())
    assert shown and all(len(x.split(".")[-1]) <= 1 for x in shown) and "78.7/140.4" in buf.getvalue()

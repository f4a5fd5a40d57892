"""Idempotent storage and the statistics mirror, on SQLite and on a real PostgreSQL."""
from __future__ import annotations

from sqlalchemy import func, select

from models.db import session_factory
from models.events import STEPS, CallTagged, DeadLetter
from models.tables import Call, CallStep, FlagRow, ManagerStageStat, ObjectionRow, SegmentRow
from pipeline import stats
from pipeline.store import load_outcomes, mark_failed, mirror_manager_stats, mirrored_stats, store_tagged


def tagged(call_id: str, manager: str, steps: dict[str, str | None], team="t1", flags=()) -> CallTagged:
    return CallTagged.model_validate({
        "call_id": call_id, "manager_id": manager, "manager_name": manager.upper(), "team_id": team,
        "recording_url": "file:///r.wav", "language": "en", "duration_s": 30.0,
        "asr": {"engine": "faster-whisper", "model": "base", "compute_type": "int8", "audio_s": 30, "wall_s": 3},
        "segments": [{"speaker": "manager", "start": 0, "end": 2, "text": "hello"},
                     {"speaker": "client", "start": 2, "end": 4, "text": "too expensive"}],
        "utterance_tags": [{"segment": 0, "step": "greeting"}, {"segment": 1, "step": "objection_handling"}],
        "steps": {s: {"present": s in steps, "quality": steps.get(s) or ("good" if s in steps else "missing")}
                  for s in STEPS},
        "objections": [{"text": "too expensive", "kind": "price", "answered": False, "at": 2.0}],
        "flags": [{"code": c, "detail": c} for c in flags],
    })


def counts(session, call_id):
    return tuple(session.scalar(select(func.count()).select_from(t).where(t.call_id == call_id))
                 for t in (Call, SegmentRow, CallStep, ObjectionRow, FlagRow))


def test_store_twice_keeps_one_copy(db_url):
    sessions = session_factory(db_url)
    ev = tagged("c1", "m1", {"greeting": "good", "objection_handling": "weak"}, flags=["unanswered_objection"])
    for _ in range(3):
        with sessions.begin() as s:
            store_tagged(s, ev)
    with sessions() as s:
        assert counts(s, "c1") == (1, 2, 5, 1, 1)
        assert s.get(Call, "c1").status == "tagged"


def test_retag_replaces_old_children(db_url):
    sessions = session_factory(db_url)
    with sessions.begin() as s:
        store_tagged(s, tagged("c1", "m1", {"greeting": "good"}, flags=["a", "b"]))
    with sessions.begin() as s:
        store_tagged(s, tagged("c1", "m1", {"greeting": "good", "closing": "good"}, flags=[]))
    with sessions() as s:
        assert counts(s, "c1")[4] == 0
        assert {cs.step for cs in s.scalars(select(CallStep).where(CallStep.present))} == {"greeting", "closing"}


def test_stats_mirror_is_idempotent_and_names_weak_stage(db_url):
    sessions = session_factory(db_url)
    full = {"greeting": "good", "needs_discovery": "good", "presentation": "good", "closing": "good"}
    no_needs = {"greeting": "good", "presentation": "good", "closing": "good"}
    with sessions.begin() as s:
        for i in range(3):
            store_tagged(s, tagged(f"a{i}", "anna", full))
            store_tagged(s, tagged(f"m{i}", "mark", no_needs))
        store_tagged(s, tagged("x0", "newbie", full))
    for _ in range(2):
        with sessions.begin() as s:
            live = stats.aggregate(load_outcomes(s))
            for ms in live.values():
                mirror_manager_stats(s, ms)
    with sessions() as s:
        reports = stats.reports_from(mirrored_stats(s).values(), min_calls=2)
    assert reports["mark"].weak_stage == "needs_discovery"
    assert reports["anna"].weak_stage is None  # at or above the team on every step
    assert reports["newbie"].weak_stage is None and not reports["newbie"].enough_calls
    with sessions() as s:
        rows = s.scalars(select(ManagerStageStat)).all()
        assert len([r for r in rows if r.period == "all"]) == 3 * len(STEPS)
        mark = {r.step: r for r in rows if r.manager_id == "mark" and r.period == "all"}
        assert mark["needs_discovery"].calls == 3 and mark["needs_discovery"].occurred == 0
        assert mark["greeting"].share == 1.0


def test_failed_call_keeps_reason_and_does_not_hide_a_stored_call(db_url):
    sessions = session_factory(db_url)
    raw = tagged("f1", "m1", {}).model_dump_json(include={"call_id", "manager_id", "recording_url"})
    with sessions.begin() as s:
        assert mark_failed(s, DeadLetter(call_id="f1", stage="transcribe", error="broken file", original=raw))
        assert not mark_failed(s, DeadLetter(call_id=None, stage="transcribe", error="junk", original="{"))
    with sessions.begin() as s:
        store_tagged(s, tagged("ok1", "m1", {"greeting": "good"}))
    with sessions.begin() as s:
        mark_failed(s, DeadLetter(call_id="ok1", stage="tag", error="later replay failed", original="{}"))
    with sessions() as s:
        f1 = s.get(Call, "f1")
        assert (f1.status, f1.failed_stage, f1.error) == ("failed", "transcribe", "broken file")
        ok1 = s.get(Call, "ok1")
        assert ok1.status == "tagged" and ok1.error == "later replay failed"

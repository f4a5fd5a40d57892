"""Idempotent storage and the statistics mirror, on SQLite and on a real PostgreSQL."""
from __future__ import annotations

from sqlalchemy import func, select

from models.db import session_factory
from models.events import STEPS, CallTagged, DeadLetter
from models.tables import Call, CallStep, FlagRow, Manager, ManagerStageStat, ObjectionRow, SegmentRow
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


def test_outage_errors_are_told_apart_from_bad_data():
    """What the worker retries until the database is back, and what it dead-letters."""
    from sqlalchemy.exc import DataError, IntegrityError, OperationalError

    from models.db import DatabaseError
    from pipeline.store import is_transient_db_error
    down = OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))
    assert is_transient_db_error(down)
    try:
        try:
            raise down
        except OperationalError:
            raise DatabaseError("cannot open the database") from None
    except DatabaseError as e:  # a worker started while the database was down
        assert is_transient_db_error(e)
    assert not is_transient_db_error(DatabaseError("no such driver"))
    assert not is_transient_db_error(IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not is_transient_db_error(DataError("INSERT", {}, Exception("value too long")))
    assert not is_transient_db_error(ValueError("bad"))


def _at(ev: CallTagged, day: int, **update) -> CallTagged:
    from datetime import datetime, timezone
    return ev.model_copy(update={"started_at": datetime(2026, 10, day, 9, tzinfo=timezone.utc), **update})


def test_a_batch_stores_what_one_by_one_stores(db_url, tmp_path):
    from pipeline.store import store_tagged_batch
    evs = [tagged(f"b{i}", f"m{i % 3}", {"greeting": "good", "closing": "weak" if i % 2 else "good"},
                  team=f"t{i % 2}", flags=["unanswered_objection"] if i % 4 == 0 else []) for i in range(12)]
    evs = [_at(ev, 1 + i) for i, ev in enumerate(evs)]
    one = session_factory(f"sqlite:///{tmp_path / 'one.db'}")
    batch = session_factory(db_url)
    with one.begin() as s:
        expected = [store_tagged(s, ev) for ev in evs]
    with batch.begin() as s:
        got = store_tagged_batch(s, evs)
    assert [(r.stored, r.revision, r.new_flags, r.update) for r in got] == \
           [(r.stored, r.revision, r.new_flags, r.update) for r in expected]
    assert sum(len(r.outbox) for r in got) == 3  # the flag notices
    with one() as a, batch() as b:
        for cid in (ev.call_id for ev in evs):
            assert counts(a, cid) == counts(b, cid)
        managers = lambda s: {(m.manager_id, m.name, m.team_id) for m in s.scalars(select(Manager))}  # noqa: E731
        assert managers(a) == managers(b) == {("m0", "M0", "t1"), ("m1", "M1", "t0"), ("m2", "M2", "t1")}
        assert stats.aggregate(load_outcomes(a)).keys() == stats.aggregate(load_outcomes(b)).keys()
    with batch.begin() as s:  # a replay of the whole batch replaces: nothing twice, each revision + 1
        again = store_tagged_batch(s, evs)
    assert [r.revision for r in again] == [2] * len(evs) and not any(r.outbox for r in again)
    with batch() as s:
        assert s.scalar(select(func.count()).select_from(Call)) == 12
        assert s.scalar(select(func.count()).select_from(SegmentRow)) == 24


def test_a_batch_with_versions_of_one_call_keeps_the_newest(db_url):
    from datetime import datetime, timezone

    from pipeline.store import store_tagged_batch
    sessions = session_factory(db_url)
    old = tagged("v1", "m1", {"greeting": "good"}).model_copy(
        update={"tagged_at": datetime(2026, 10, 1, tzinfo=timezone.utc)})
    new = tagged("v1", "m1", {"greeting": "good", "closing": "good"}).model_copy(
        update={"tagged_at": datetime(2026, 10, 2, tzinfo=timezone.utc)})
    with sessions.begin() as s:
        got = store_tagged_batch(s, [new, old, tagged("v2", "m1", {})])
    assert [r.stored for r in got] == [True, False, True] and got[1].revision == got[0].revision == 1
    with sessions.begin() as s:  # the older one redelivered alone changes nothing either
        assert not store_tagged_batch(s, [old])[0].stored
    with sessions() as s:
        assert {cs.step for cs in s.scalars(select(CallStep).where(CallStep.call_id == "v1", CallStep.present))} \
            == {"greeting", "closing"}
        assert s.get(Call, "v1").revision == 1


def test_manager_name_and_team_follow_the_most_recent_call_across_batches(db_url):
    from pipeline.store import store_tagged_batch
    sessions = session_factory(db_url)
    ev = tagged("x", "m1", {})
    with sessions.begin() as s:
        store_tagged_batch(s, [_at(ev, 10, call_id="c10", team_id="A", manager_name="Ann"),
                               _at(ev, 5, call_id="c5", team_id="B", manager_name="Old name")])
    with sessions.begin() as s:  # a re-tag of an older call does not move her back
        store_tagged_batch(s, [_at(ev, 3, call_id="c3", team_id="C", manager_name="Older")])
    with sessions() as s:
        m = s.get(Manager, "m1")
        assert (m.name, m.team_id) == ("Ann", "A")
    with sessions.begin() as s:  # a newer call without a team renames her and keeps the team
        store_tagged_batch(s, [_at(ev, 20, call_id="c20", team_id=None, manager_name="Anna")])
    with sessions() as s:
        m = s.get(Manager, "m1")
        assert (m.name, m.team_id) == ("Anna", "A")


def test_mirror_of_several_managers_at_once_equals_one_by_one(db_url, tmp_path):
    from pipeline.store import mirror_managers_stats
    sessions, other = session_factory(db_url), session_factory(f"sqlite:///{tmp_path / 'other.db'}")
    evs = [_at(tagged(f"s{i}", f"m{i % 3}", {"greeting": "good"} if i % 2 else {"closing": "weak"}), 1 + i)
           for i in range(9)]
    for sm in (sessions, other):
        with sm.begin() as s:
            for ev in evs:
                store_tagged(s, ev)
    with sessions() as s:
        live = stats.aggregate(load_outcomes(s))
    with sessions.begin() as s:
        mirror_managers_stats(s, [(ms, None) for ms in live.values()])
        mirror_managers_stats(s, [(ms, None) for ms in live.values()])  # again: replaced
    with sessions.begin() as s:  # one period of each, as the worker mirrors what a batch touched
        parts = []
        for ms in live.values():
            part = stats.ManagerStats(ms.manager_id, ms.team_id)
            part.totals, part.objections = {"all": ms.totals["all"]}, {"all": ms.objections.get("all", {})}
            parts.append((part, ["all"]))
        mirror_managers_stats(s, parts)
    with other.begin() as s:
        for ms in live.values():
            mirror_manager_stats(s, ms)
    with sessions() as a, other() as b:
        assert {m: (x.totals, x.objections) for m, x in mirrored_stats(a).items()} == \
               {m: (x.totals, x.objections) for m, x in mirrored_stats(b).items()}

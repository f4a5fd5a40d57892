"""The figures heads act on: calls that change manager or team, UTC offsets, business time zone
periods, hot-lead response, verdicts per flag, conversion to the next step, late and stale versions.

Each test drives the real store (SQLite and PostgreSQL where time or SQL matters) and the real
statistics code; the live-table side is fed exactly the updates the worker would send.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from callqa import report as rp
from callqa.cli import main
from models.db import session_factory
from models.events import STEPS, CallTagged, StatsUpdate
from models.tables import Call, Manager, Review
from pipeline import stats
from pipeline.store import (load_outcomes, mirror_manager_stats, mirrored_stats, outbox_sent, pending_outbox,
                            record_review, store_tagged)

UTC = timezone.utc
FULL = {"greeting": "good", "needs_discovery": "good", "presentation": "good", "closing": "good"}


def tagged(cid: str, manager: str = "m1", *, team: str | None = "t1", started: str = "2026-11-02T10:00:00Z",
           steps: dict | None = None, flags: list[tuple[str, float | None]] = (), lead: dict | None = None,
           published: str | None = None, tagged_at: str | None = None, objections=()) -> CallTagged:
    steps = FULL if steps is None else steps
    return CallTagged.model_validate({
        "call_id": cid, "manager_id": manager, "manager_name": manager.title(), "team_id": team,
        "recording_url": f"file:///rec/{cid}.wav", "language": "en", "started_at": started, "duration_s": 60.0,
        "published_at": published, "tagged_at": tagged_at, "lead": lead,
        "asr": {"engine": "faster-whisper", "model": "base", "compute_type": "int8", "audio_s": 60, "wall_s": 5},
        "segments": [{"speaker": "manager", "start": 0, "end": 2, "text": "hello"},
                     {"speaker": "client", "start": 12, "end": 14, "text": "too expensive"},
                     {"speaker": "client", "start": 40, "end": 42, "text": "we have a supplier"}],
        # "unsure": present, but only through the learned tagger's unsure turns (left out of the statistics)
        "steps": {s: {"present": s in steps, "quality": {"unsure": "good"}.get(steps.get(s), steps.get(s)) or "missing",
                      "uncertain": steps.get(s) == "unsure"} for s in STEPS},
        "objections": [{"text": k, "kind": k, "answered": a, "at": at} for k, a, at in objections],
        "flags": [{"code": c, "detail": f"{c} at {at}", "at": at} for c, at in flags],
    })


class Live:
    """The worker's statistics side, fed what the store sends (calls.stored and the outbox), each update
    at the next offset of one calls.stored partition, as the agent sees them."""

    def __init__(self, sessions, kept_latest: int = stats.KEPT_LATEST):
        self.sessions = sessions
        self.table = stats.JsonTable()
        self.state = stats.StatsState(self.table, kept_latest)
        self.sent: list[StatsUpdate] = []  # every update sent on calls.stored, for redeliveries
        self.offset = 0

    def apply(self, update: StatsUpdate, offset: int | None = None) -> stats.Applied:
        self.sent.append(update)
        if offset is None:
            offset, self.offset = self.offset, self.offset + 1
        applied = self.state.apply(update, offset)
        with self.sessions.begin() as s:
            mirror_manager_stats(s, self.state.manager(update.manager_id, applied.periods), applied.periods)
        return applied

    def store(self, ev: CallTagged, tz=UTC, *, crash_before_outbox: bool = False):
        with self.sessions.begin() as s:
            result = store_tagged(s, ev, tz)
        if result.stored:
            self.apply(result.update)
            if not crash_before_outbox:
                self.drain()
        return result

    def drain(self) -> list[str]:
        """Send the outbox the way the worker does: retractions to the statistics, notices out."""
        sent = []
        with self.sessions.begin() as s:
            rows = [(o.id, o.kind, o.value) for o in pending_outbox(s)]
        for oid, kind, value in rows:
            if kind == "stats":
                self.apply(StatsUpdate.model_validate_json(value))
            sent.append(kind)
            with self.sessions.begin() as s:
                outbox_sent(s, [oid])
        return sent

    def managers(self) -> dict[str, stats.ManagerStats]:
        return self.state.managers()


def calls_of(ms: stats.ManagerStats | None) -> int:
    return int(ms.manager_totals().get("greeting", {}).get("calls", 0)) if ms else 0


# 1 ------------------------------------------------------------------------------------------------
def test_a_call_that_changes_manager_is_counted_once(db_url):
    sessions = session_factory(db_url)
    live = Live(sessions)
    live.store(tagged("c1", "mA"))
    live.store(tagged("c2", "mA"))
    live.store(tagged("c1", "mB", tagged_at="2026-11-03T00:00:00Z"))  # re-assigned to another manager
    table = live.managers()
    assert calls_of(table["mA"]) == 1 and calls_of(table["mB"]) == 1
    with sessions() as s:
        mirror = mirrored_stats(s)
        assert calls_of(mirror["mA"]) == 1 and calls_of(mirror["mB"]) == 1
        expected = stats.aggregate(load_outcomes(s))
        assert {m: v.totals for m, v in expected.items()} == {m: mirror[m].totals for m in expected}
        rows = {r["manager_id"]: r["calls"] for r in rp.manager_rows(s, 1)}
    assert rows == {"mA": 1, "mB": 1}


def test_a_late_retraction_never_removes_a_newer_contribution():
    state = stats.StatsState(stats.JsonTable())
    o = stats.CallOutcome("c1", "mA", "t1", {s: (True, "good") for s in STEPS}, revision=3)

    def apply(o):
        return state.apply(StatsUpdate(op="apply", call_id=o.call_id, manager_id=o.manager_id,
                                       revision=o.revision, outcome=o.to_compact())).changed

    def retract(revision):
        return state.apply(StatsUpdate(op="retract", call_id="c1", manager_id="mA", revision=revision)).changed

    assert apply(o)
    assert not retract(2)  # the call moved away at revision 2 and came back at 3
    assert retract(4)
    assert state.manager("mA").totals == {} and state.counted("mA") == {}
    assert not apply(o)  # the old apply redelivered after the retraction stays out
    assert apply(stats.CallOutcome("c9", "mB", "t1", {s: (True, "good") for s in STEPS}, revision=5))
    assert not apply(stats.CallOutcome("c9", "mB", "t1", {}, revision=4))  # stale redelivery


# 2 ------------------------------------------------------------------------------------------------
def test_started_at_is_stored_as_the_same_instant_on_every_database(db_url, monkeypatch):
    sessions = session_factory(db_url)
    with sessions.begin() as s:
        store_tagged(s, tagged("moscow", started="2025-03-03T10:05:00+03:00", flags=[("long_monologue", 1.0)]))
        store_tagged(s, tagged("late", started="2025-03-04T01:00:00+03:00"))  # 22:00 UTC on 3 March
        store_tagged(s, tagged("ny", started="2025-03-03T02:00:00-05:00"))  # 07:00 UTC, before moscow
    with sessions() as s:
        assert s.get(Call, "moscow").started_at == datetime(2025, 3, 3, 7, 5, tzinfo=UTC)
        order = list(s.scalars(select(Call.call_id).order_by(Call.started_at)))
        assert order == ["ny", "moscow", "late"]
        in_range = {o.call_id for o in load_outcomes(s, until=rp.until_day("2025-03-03"))}
        assert in_range == {"ny", "moscow", "late"}
        assert {o.call_id for o in load_outcomes(s, since=rp.parse_day("2025-03-04"))} == set()
        flagged = rp.flagged_rows(s)
        assert flagged[0]["started_at"] == "2025-03-03T07:05:00+00:00"
    # the CLI's filter, in a business time zone where "late" is on 4 March
    monkeypatch.setenv("CALLQA_DATABASE_URL", db_url)
    monkeypatch.setenv("CALLQA_TIMEZONE", "Europe/Moscow")
    with sessions() as s:
        tz = ZoneInfo("Europe/Moscow")
        assert {o.call_id for o in load_outcomes(s, until=rp.until_day("2025-03-03", tz))} == {"ny", "moscow"}


# 3 ------------------------------------------------------------------------------------------------
def test_hot_lead_response_time_is_not_off_by_the_offset(db_url):
    sessions = session_factory(db_url)
    with sessions.begin() as s:
        store_tagged(s, tagged("h1", started="2025-03-03T10:05:00+03:00",
                               lead={"id": "L1", "created_at": "2025-03-03T10:00:00+03:00", "temperature": "hot"}))
    with sessions() as s:
        kpi = rp.activity(s)["m1"]
    assert kpi["lead_response_median_min"] == 5.0
    assert kpi["hot_leads_within_15min"] == 1.0


# 4 ------------------------------------------------------------------------------------------------
def test_weeks_and_months_are_in_the_business_time_zone(db_url):
    a = tagged("a", started="2025-03-31T23:30:00-05:00")  # the same instant, sent with two offsets
    b = tagged("b", started="2025-04-01T04:30:00Z")
    for tz, month, week in ((UTC, "month:2025-04", "week:2025-W14"),
                            (ZoneInfo("America/Chicago"), "month:2025-03", "week:2025-W14"),
                            (ZoneInfo("Asia/Tokyo"), "month:2025-04", "week:2025-W14")):
        pa, pb = (stats.outcome_from_tagged(x, tz).periods for x in (a, b))
        assert pa == pb == ("all", week, month)
    sessions = session_factory(db_url)
    with sessions.begin() as s:
        res = store_tagged(s, a, ZoneInfo("America/Chicago"))
    assert "month:2025-03" in res.update.outcome["p"]
    with sessions() as s:
        (o,) = load_outcomes(s, tz=ZoneInfo("America/Chicago"))
    assert o.periods == ("all", "week:2025-W14", "month:2025-03")


def test_a_sunday_evening_in_moscow_is_in_that_iso_week():
    # 2025-03-09 is a Sunday; 22:30 in Moscow is 19:30 UTC: week 10 both ways, but 23:30 UTC Sunday
    # is already Monday in Moscow (week 11)
    late = datetime(2025, 3, 9, 23, 30, tzinfo=UTC)
    assert stats.period_keys(late) == ("all", "week:2025-W10", "month:2025-03")
    assert stats.period_keys(late, ZoneInfo("Europe/Moscow")) == ("all", "week:2025-W11", "month:2025-03")


def test_report_days_and_activity_use_the_business_time_zone(db_url, monkeypatch, capsys):
    sessions = session_factory(db_url)
    with sessions.begin() as s:
        store_tagged(s, tagged("x1", started="2025-03-03T22:30:00Z"))  # 4 March in Moscow
        store_tagged(s, tagged("x2", started="2025-03-04T06:00:00Z"))
    with sessions() as s:
        assert rp.activity(s, rp.Scope(tz=ZoneInfo("Europe/Moscow")))["m1"]["calls_per_day"] == 2.0
        assert rp.activity(s)["m1"]["calls_per_day"] == 1.0
    monkeypatch.setenv("CALLQA_DATABASE_URL", db_url)
    monkeypatch.setenv("CALLQA_TIMEZONE", "Europe/Moscow")
    assert main(["report", "managers", "--since", "2025-03-04", "--format", "json"]) == 0
    import json
    rows = json.loads(capsys.readouterr().out)["managers"]
    assert rows[0]["calls"] == 2
    monkeypatch.setenv("CALLQA_TIMEZONE", "Mars/Olympus")
    assert main(["report", "managers"]) != 0
    assert "CALLQA_TIMEZONE" in capsys.readouterr().err


# 5 ------------------------------------------------------------------------------------------------
def test_team_follows_the_latest_call_and_each_call_counts_in_its_own_team(db_url):
    sessions = session_factory(db_url)
    live = Live(sessions)
    live.store(tagged("old", "mover", team="north", started="2026-01-10T10:00:00Z",
                      steps={"greeting": "good"}))
    live.store(tagged("new", "mover", team="south", started="2026-02-10T10:00:00Z"))
    live.store(tagged("n1", "nina", team="north", started="2026-02-11T10:00:00Z"))
    live.store(tagged("s1", "sam", team="south", started="2026-02-11T10:00:00Z", steps={"greeting": "good"}))
    # re-tag the old call: stored last, but it is not the latest call
    live.store(tagged("old", "mover", team="north", started="2026-01-10T10:00:00Z", steps={"greeting": "good"},
                      tagged_at="2026-03-01T00:00:00Z"))
    with sessions() as s:
        assert s.get(Manager, "mover").team_id == "south"
        rows = {r["manager_id"]: r for r in rp.manager_rows(s, 1)}
        mirror = mirrored_stats(s)
    assert rows["mover"]["team_id"] == "south"
    assert live.managers()["mover"].team_id == "south"
    # the south pool: mover's south call (full) + sam's (greeting only); the north call is not in it
    team_needs = rows["mover"]["steps"]["needs_discovery"]["team_score"]
    assert team_needs == 0.5
    assert set(mirror["mover"].totals["all"]) == {"north", "south"}
    north = rp.manager_rows(session_factory(db_url)(), 1, rp.Scope(team_id="north"))
    assert {r["manager_id"]: r["calls"] for r in north} == {"mover": 1, "nina": 1}


# 6 ------------------------------------------------------------------------------------------------
def test_a_flag_notice_survives_a_crash_between_commit_and_send(db_url):
    sessions = session_factory(db_url)
    live = Live(sessions)
    ev = tagged("f1", flags=[("unanswered_objection", 12.0)])
    first = live.store(ev, crash_before_outbox=True)  # committed, then the worker died
    assert first.new_flags == ["unanswered_objection"]
    again = live.store(ev)  # the redelivery finds the flag already stored...
    assert again.new_flags == [] and again.outbox == []
    with sessions() as s:
        assert pending_outbox(s) == []  # ...and the notice of the first store was sent by drain()
    # and the notice is a complete CallFlagged
    live.store(tagged("f2", flags=[("no_next_step", None)]), crash_before_outbox=True)
    with sessions() as s:
        (row,) = pending_outbox(s)
        from models.events import CallFlagged
        note = CallFlagged.model_validate_json(row.value)
    assert row.kind == "flagged" and note.new_flags == ["no_next_step"] and note.call_id == "f2"


# 7 ------------------------------------------------------------------------------------------------
def test_a_verdict_belongs_to_one_flag(db_url, monkeypatch, capsys):
    sessions = session_factory(db_url)
    with sessions.begin() as s:
        store_tagged(s, tagged("v1", flags=[("unanswered_objection", 12.0), ("unanswered_objection", 40.0)]))
    with sessions.begin() as s:
        with pytest.raises(LookupError, match="say which one"):
            record_review(s, "v1", "unanswered_objection", "disagree")
        record_review(s, "v1", "unanswered_objection", "disagree", at=40.0)
    with sessions() as s:
        rows = rp.flagged_rows(s)
        assert [(r["at"], r["review"]) for r in rows] == [(12.0, None), (40.0, "disagree")]
        assert [r["at"] for r in rp.flagged_rows(s, include_reviewed=False)] == [12.0]
        (rule,) = rp.flag_rule_rows(s)
        assert (rule["flagged"], rule["reviewed"], rule["disagree"]) == (2, 1, 1)
    monkeypatch.setenv("CALLQA_DATABASE_URL", db_url)
    assert main(["review", "v1", "unanswered_objection", "--agree"]) != 0
    assert "say which one" in capsys.readouterr().err
    assert main(["review", "v1", "unanswered_objection", "--agree", "--at", "12"]) == 0
    with sessions() as s:
        assert [(r["at"], r["review"]) for r in rp.flagged_rows(s)] == [(12.0, "agree"), (40.0, "disagree")]


def test_reviewing_again_keeps_the_history_and_one_current_verdict(db_url):
    sessions = session_factory(db_url)
    with sessions.begin() as s:
        store_tagged(s, tagged("v2", flags=[("long_monologue", 3.0)]))
        record_review(s, "v2", "long_monologue", "agree", reviewer="ann")
    with sessions.begin() as s:
        record_review(s, "v2", "long_monologue", "disagree", reviewer="bob")
    with sessions() as s:
        history = s.scalars(select(Review).where(Review.call_id == "v2").order_by(Review.id)).all()
        assert [(r.verdict, r.reviewer, r.current) for r in history] == [("agree", "ann", False),
                                                                          ("disagree", "bob", True)]
        assert rp.flagged_rows(s)[0]["review"] == "disagree"


# 8 ------------------------------------------------------------------------------------------------
def test_a_verdict_does_not_move_to_another_moment_after_a_retag(db_url):
    sessions = session_factory(db_url)
    with sessions.begin() as s:
        store_tagged(s, tagged("r1", flags=[("unanswered_objection", 12.0)]))
        record_review(s, "r1", "unanswered_objection", "disagree", comment="he did answer")
    with sessions.begin() as s:  # re-tagged: the rule now fires at another moment
        store_tagged(s, tagged("r1", flags=[("unanswered_objection", 40.0)], tagged_at="2026-11-05T00:00:00Z"))
    with sessions() as s:
        (row,) = rp.flagged_rows(s)
        assert row["at"] == 40.0 and row["review"] is None
        assert s.scalar(select(Review).where(Review.call_id == "r1")).comment == "he did answer"  # history kept
    with sessions.begin() as s:  # a later re-tag brings the original moment back: its verdict with it
        store_tagged(s, tagged("r1", flags=[("unanswered_objection", 12.0)], tagged_at="2026-11-06T00:00:00Z"))
    with sessions() as s:
        (row,) = rp.flagged_rows(s)
        assert row["review"] == "disagree"


# 9 ------------------------------------------------------------------------------------------------
def test_conversion_goes_to_the_next_step_that_happened():
    outs = [stats.CallOutcome(f"c{i}", "m", "t", {s: (s in FULL, "good") for s in STEPS}) for i in range(5)]
    r = stats.compute(outs, 1)["m"]
    assert r.stages["presentation"].conversion == 1.0  # no objection: presentation went on to closing
    assert r.stages["closing"].conversion is None  # nothing follows closing
    assert r.stages["needs_discovery"].conversion == 1.0
    with_obj = stats.CallOutcome("o", "m", "t", {s: (s != "closing", "good") for s in STEPS})
    r = stats.compute([with_obj], 1)["m"]
    assert r.stages["presentation"].conversion == 1.0  # the client objected: objection handling is next
    assert r.stages["objection_handling"].conversion == 0.0  # ...and no closing followed it


def test_weak_step_counts_half_in_the_statistics_as_the_legend_says():
    vague = stats.CallOutcome("v", "m", "t", {**{s: (True, "good") for s in STEPS if s != "objection_handling"},
                                              "closing": (False, "weak")})
    weak = stats.CallOutcome("w", "m", "t", {**{s: (True, "good") for s in STEPS}, "objection_handling": (True, "weak")})
    r = stats.compute([vague, weak], 1)["m"]
    assert r.stages["closing"].score == 0.75  # a vague next step (weak) and a good one
    assert r.stages["objection_handling"].score == 0.5
    assert r.stages["closing"].share == 0.5  # the vague one did not count as a closing


# suspected ----------------------------------------------------------------------------------------
def test_an_older_version_finishing_last_is_not_stored_over_the_newer(db_url):
    sessions = session_factory(db_url)
    live = Live(sessions)
    newer = tagged("o1", "mNew", published="2026-11-02T10:05:00Z", tagged_at="2026-11-02T10:06:00Z")
    older = tagged("o1", "mOld", published="2026-11-02T10:00:00Z", tagged_at="2026-11-02T10:07:00Z")
    assert live.store(newer).stored
    res = live.store(older)  # its transcription finished later
    assert not res.stored
    with sessions() as s:
        assert s.get(Call, "o1").manager_id == "mNew"
    assert set(live.managers()) == {"mNew"}
    # a re-tag of the newer upload (same published_at, later tagged_at) replaces it
    assert live.store(tagged("o1", "mNew", published="2026-11-02T10:05:00Z", tagged_at="2026-11-09T00:00:00Z",
                             steps={"greeting": "good"})).stored


def test_a_weak_stage_needs_enough_calls_behind_the_step():
    def call(cid, mid, objection_answered=None):
        steps = {s: (s != "objection_handling", "good") for s in STEPS}
        if objection_answered is not None:
            steps["objection_handling"] = (True, "good" if objection_answered else "weak")
        return stats.CallOutcome(cid, mid, "t", steps)
    events = [call(f"a{i}", "anna") for i in range(5)] + [call("a5", "anna", objection_answered=False)]
    events += [call(f"b{i}", "bob", objection_answered=True) for i in range(5)]
    r = stats.compute(events, min_calls=2, min_step_calls=2)["anna"]
    assert r.enough_calls and r.weak_stage is None  # one call with an objection is not enough
    r = stats.compute(events, min_calls=2, min_step_calls=1)["anna"]
    assert r.weak_stage == "objection_handling" and r.weak_margin > 0.5  # and its interval says how unsure


def test_manager_with_only_failed_calls_shows_their_team(db_url):
    from models.events import DeadLetter
    from pipeline.store import mark_failed
    sessions = session_factory(db_url)
    rec = tagged("x", "fay", team="east").model_dump_json(include={"call_id", "manager_id", "team_id",
                                                                    "recording_url", "started_at"})
    with sessions.begin() as s:
        mark_failed(s, DeadLetter(call_id="x", stage="transcribe", error="broken audio", original=rec))
    with sessions() as s:
        (row,) = rp.manager_rows(s, 1)
    assert row["team_id"] == "east" and row["failed_calls"] == 1


def test_until_accepts_a_day_or_an_exact_time():
    tz = ZoneInfo("Europe/Moscow")
    assert rp.until_day("2026-11-30", tz) == datetime(2026, 12, 1, tzinfo=tz)
    assert rp.until_day("2026-11-30T12:00", tz) == datetime(2026, 11, 30, 12, tzinfo=tz)
    assert rp.until_day("2026-11-30T12:00:00+00:00") == datetime(2026, 11, 30, 12, tzinfo=UTC)
    assert rp.parse_day("2026-11-30", tz) == datetime(2026, 11, 30, tzinfo=tz)
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        rp.parse_day("30.11.2026")
    assert rp.until_day(" 2026-11-30 ") - rp.parse_day("2026-11-30") == timedelta(days=1)

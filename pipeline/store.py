"""Idempotent writes keyed by call_id, and the statistics mirror in SQL."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Optional

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from models.events import CallRecorded, CallTagged, DeadLetter
from models.tables import (Call, CallStep, FlagRow, Manager, ManagerObjectionStat, ManagerStageStat, ObjectionRow,
                           Review, SegmentRow, utcnow)
from pipeline import stats


def _upsert_manager(session: Session, ev: CallRecorded) -> None:
    m = session.get(Manager, ev.manager_id)
    if m is None:
        session.add(Manager(manager_id=ev.manager_id, name=ev.manager_name, team_id=ev.team_id))
    else:
        m.name = ev.manager_name or m.name
        m.team_id = ev.team_id or m.team_id


def _call_row(session: Session, ev: CallRecorded) -> Call:
    call = session.get(Call, ev.call_id)
    if call is None:
        call = Call(call_id=ev.call_id)
        session.add(call)
    call.source = ev.source
    call.manager_id = ev.manager_id
    call.team_id = ev.team_id
    call.direction = ev.direction
    call.client_number = ev.client_number
    call.started_at = ev.started_at
    call.recording_url = ev.recording_url
    call.lead = ev.lead.model_dump(mode="json") if ev.lead else None
    return call


def _insert(session: Session, table, rows: list[dict]) -> None:
    if rows:
        session.execute(insert(table.__table__), rows)


def store_tagged(session: Session, ev: CallTagged) -> list[str]:
    """Replace everything stored for ev.call_id with ev (a replay stores nothing twice).

    Returns the flag codes the call did not have before (for the calls.flagged event).
    """
    _upsert_manager(session, ev)
    before = set(session.scalars(select(FlagRow.code).where(FlagRow.call_id == ev.call_id)))
    call = _call_row(session, ev)
    call.duration_s = ev.duration_s if ev.duration_s is not None else ev.asr.audio_s
    call.language = ev.language_detected or (ev.language if ev.language != "auto" else None)
    call.status = "tagged"
    call.failed_stage = None
    call.error = None
    call.furthest_step = ev.furthest_step
    call.metrics = ev.metrics.model_dump(mode="json")
    call.asr = ev.asr.model_dump(mode="json")
    call.event = ev.model_dump(mode="json")
    # Children are rewritten, not merged: a re-tagged call must not keep stale tags.
    for table in (SegmentRow, CallStep, ObjectionRow, FlagRow):
        session.execute(delete(table).where(table.call_id == ev.call_id))
    tags = {t.segment: t for t in ev.utterance_tags}
    # Core bulk inserts (one executemany per table): the ORM unit of work per row was the larger part of
    # the store stage's cost (bench/pipeline.py).
    _insert(session, SegmentRow, [
        dict(call_id=ev.call_id, idx=i, speaker=s.speaker, start=s.start, end=s.end, text=s.text,
             avg_logprob=s.avg_logprob, step=tags[i].step if i in tags else None,
             evidence=tags[i].evidence if i in tags else None)
        for i, s in enumerate(ev.segments)])
    _insert(session, CallStep, [
        dict(call_id=ev.call_id, step=step, present=r.present, first_at=r.first_at, quality=r.quality,
             reasons=r.reasons)
        for step, r in ev.steps.items()])
    _insert(session, ObjectionRow, [
        dict(call_id=ev.call_id, idx=i, text=o.text, kind=o.kind, answered=o.answered, at=o.at, answer=o.answer)
        for i, o in enumerate(ev.objections)])
    _insert(session, FlagRow, [dict(call_id=ev.call_id, idx=i, code=f.code, detail=f.detail, at=f.at)
                               for i, f in enumerate(ev.flags)])
    return sorted({f.code for f in ev.flags} - before)


def mark_failed(session: Session, dead: DeadLetter) -> bool:
    """Record why a call failed. A call already stored keeps its data (the error is noted)."""
    if not dead.call_id:
        return False
    call = session.get(Call, dead.call_id)
    if call is None:
        try:
            ev = CallRecorded.model_validate_json(dead.original)
        except ValueError:
            return False  # no usable event: the dead letter in calls.dlq is the record
        _upsert_manager(session, ev)
        call = _call_row(session, ev)
        call.status = "failed"
    elif call.status != "tagged":
        call.status = "failed"
    call.failed_stage = dead.stage
    call.error = dead.error
    return True


def load_outcomes(session: Session, *, team_id: Optional[str] = None, since: Optional[datetime] = None,
                  until: Optional[datetime] = None) -> list[stats.CallOutcome]:
    """Every stored (tagged) call's contribution, optionally for one team and a time range."""
    q = select(Call.call_id, Call.manager_id, Call.team_id, Call.started_at).where(Call.status == "tagged")
    if team_id is not None:
        q = q.where(Call.team_id == team_id)
    if since is not None:
        q = q.where(Call.started_at >= since)
    if until is not None:
        q = q.where(Call.started_at < until)
    rows = session.execute(q).all()
    steps: dict[str, dict[str, tuple[bool, Optional[str]]]] = {r.call_id: {} for r in rows}
    objections: dict[str, list[tuple[str, bool]]] = {r.call_id: [] for r in rows}
    for cs in session.execute(select(CallStep.call_id, CallStep.step, CallStep.present, CallStep.quality)):
        if cs.call_id in steps:
            steps[cs.call_id][cs.step] = (cs.present, cs.quality)
    for ob in session.execute(select(ObjectionRow.call_id, ObjectionRow.kind, ObjectionRow.answered)
                              .order_by(ObjectionRow.call_id, ObjectionRow.idx)):
        if ob.call_id in objections:
            objections[ob.call_id].append((ob.kind, ob.answered))
    return [stats.CallOutcome(r.call_id, r.manager_id, r.team_id, steps[r.call_id], _aware(r.started_at),
                              tuple(objections[r.call_id])) for r in rows]


def _aware(dt: Optional[datetime]) -> Optional[datetime]:
    # SQLite hands back naive datetimes; everything stored is UTC
    return dt.replace(tzinfo=timezone.utc) if dt is not None and dt.tzinfo is None else dt


def mirror_manager_stats(session: Session, ms: stats.ManagerStats) -> None:
    """Write one manager's live statistics (every period) to SQL, replacing the previous copy."""
    if session.get(Manager, ms.manager_id) is None:
        session.add(Manager(manager_id=ms.manager_id, team_id=ms.team_id))
        session.flush()
    session.execute(delete(ManagerStageStat).where(ManagerStageStat.manager_id == ms.manager_id))
    session.execute(delete(ManagerObjectionStat).where(ManagerObjectionStat.manager_id == ms.manager_id))
    now = utcnow()
    rows = []
    for period, steps in ms.totals.items():
        for step, c in steps.items():
            occurred = int(c["occurred"])
            rows.append(dict(
                manager_id=ms.manager_id, step=step, period=period, calls=int(c["calls"]), occurred=occurred,
                quality_passed=int(c["quality_passed"]), reached_next=int(c["reached_next"]),
                scored=int(c["scored"]), score_sum=float(c["score_sum"]),
                share=occurred / c["calls"] if c["calls"] else 0.0,
                pass_rate=c["quality_passed"] / occurred if occurred else None,
                conversion=c["reached_next"] / occurred if occurred else None,
                score=c["score_sum"] / c["scored"] if c["scored"] else None, updated_at=now))
    _insert(session, ManagerStageStat, rows)
    _insert(session, ManagerObjectionStat, [
        dict(manager_id=ms.manager_id, kind=kind, period=period, raised=raised, answered=answered, updated_at=now)
        for period, kinds in ms.objections.items() for kind, (raised, answered) in kinds.items() if raised])


def mirrored_stats(session: Session) -> dict[str, stats.ManagerStats]:
    """Read the SQL mirror back into ManagerStats totals (contributions are not mirrored)."""
    out: dict[str, stats.ManagerStats] = {}
    teams = dict(session.execute(select(Manager.manager_id, Manager.team_id)).all())
    for r in session.scalars(select(ManagerStageStat)):
        ms = out.setdefault(r.manager_id, stats.ManagerStats(r.manager_id, teams.get(r.manager_id)))
        ms.totals.setdefault(r.period, {})[r.step] = {
            "calls": r.calls, "occurred": r.occurred, "quality_passed": r.quality_passed,
            "reached_next": r.reached_next, "scored": r.scored, "score_sum": round(r.score_sum, 6)}
    for r in session.scalars(select(ManagerObjectionStat)):
        ms = out.setdefault(r.manager_id, stats.ManagerStats(r.manager_id, teams.get(r.manager_id)))
        ms.objections.setdefault(r.period, {})[r.kind] = [r.raised, r.answered]
    return out


def record_review(session: Session, call_id: str, flag_code: str, verdict: str, comment: Optional[str] = None,
                  reviewer: Optional[str] = None) -> Review:
    """A sales head's verdict on one flag of a call; reviewing again replaces the verdict."""
    if verdict not in ("agree", "disagree"):
        raise ValueError(f"verdict must be agree or disagree, not {verdict!r}")
    codes = set(session.scalars(select(FlagRow.code).where(FlagRow.call_id == call_id)))
    if not codes:
        raise LookupError(f"call {call_id} has no flags to review (is the call id right? `callqa report flagged`)")
    if flag_code not in codes:
        raise LookupError(f"call {call_id} has no flag {flag_code!r}; its flags: {', '.join(sorted(codes))}")
    review = session.scalar(select(Review).where(Review.call_id == call_id, Review.flag_code == flag_code))
    if review is None:
        review = Review(call_id=call_id, flag_code=flag_code)
        session.add(review)
    review.verdict, review.comment, review.reviewer, review.created_at = verdict, comment, reviewer, utcnow()
    return review

"""Idempotent writes keyed by call_id, and the statistics mirror in SQL."""
from __future__ import annotations

from typing import Iterable, Optional

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from models.events import STEPS, CallRecorded, CallTagged, DeadLetter
from models.tables import (Call, CallStep, FlagRow, Manager, ManagerStageStat, ObjectionRow, SegmentRow,
                           utcnow)
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


def store_tagged(session: Session, ev: CallTagged) -> None:
    """Replace everything stored for ev.call_id with ev (a replay stores nothing twice)."""
    _upsert_manager(session, ev)
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
    session.add_all(
        SegmentRow(call_id=ev.call_id, idx=i, speaker=s.speaker, start=s.start, end=s.end, text=s.text,
                   avg_logprob=s.avg_logprob, step=tags[i].step if i in tags else None,
                   evidence=tags[i].evidence if i in tags else None)
        for i, s in enumerate(ev.segments))
    session.add_all(
        CallStep(call_id=ev.call_id, step=step, present=r.present, first_at=r.first_at, quality=r.quality,
                 reasons=r.reasons)
        for step, r in ev.steps.items())
    session.add_all(
        ObjectionRow(call_id=ev.call_id, idx=i, text=o.text, kind=o.kind, answered=o.answered, at=o.at,
                     answer=o.answer)
        for i, o in enumerate(ev.objections))
    session.add_all(FlagRow(call_id=ev.call_id, idx=i, code=f.code, detail=f.detail, at=f.at)
                    for i, f in enumerate(ev.flags))


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


def load_outcomes(session: Session, team_ids: Optional[Iterable[Optional[str]]] = None) -> list[stats.CallOutcome]:
    q = select(Call.call_id, Call.manager_id, Call.team_id).where(Call.status == "tagged")
    rows = session.execute(q).all()
    teams = set(team_ids) if team_ids is not None else None
    rows = [r for r in rows if teams is None or r.team_id in teams]
    steps: dict[str, dict[str, tuple[bool, Optional[str]]]] = {r.call_id: {} for r in rows}
    for cs in session.execute(select(CallStep.call_id, CallStep.step, CallStep.present, CallStep.quality)):
        if cs.call_id in steps:
            steps[cs.call_id][cs.step] = (cs.present, cs.quality)
    return [stats.CallOutcome(r.call_id, r.manager_id, r.team_id, steps[r.call_id]) for r in rows]


def refresh_stats(session: Session, min_calls: int) -> dict[str, stats.ManagerReport]:
    """Recompute manager_stage_stats from the stored calls (idempotent by construction)."""
    reports = stats.compute(load_outcomes(session), min_calls)
    session.execute(delete(ManagerStageStat).where(ManagerStageStat.period == "all"))
    now = utcnow()
    for r in reports.values():
        for step in STEPS:
            st = r.stages[step]
            session.add(ManagerStageStat(
                manager_id=r.manager_id, step=step, period="all", calls=st.calls, occurred=st.occurred,
                quality_passed=st.quality_passed, reached_next=st.reached_next, share=st.share,
                pass_rate=st.pass_rate, conversion=st.conversion, score=st.score, team_score=st.team_score,
                gap=st.gap, updated_at=now))
    return reports

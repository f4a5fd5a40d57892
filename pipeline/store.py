"""Idempotent writes keyed by call_id, and the statistics mirror in SQL."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from typing import Iterable, Optional

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from models.events import CallFlagged, CallRecorded, CallTagged, DeadLetter, StatsUpdate
from models.tables import (Call, CallStep, FlagRow, Manager, ManagerObjectionStat, ManagerStageStat, ObjectionRow,
                           Outbox, Review, SegmentRow, as_utc, utcnow)
from pipeline import stats
from pipeline.phones import normalize_phone

_EARLIEST = datetime.min.replace(tzinfo=timezone.utc)


def _upsert_manager(session: Session, ev: CallRecorded) -> None:
    """Name and team follow the manager's most recent call (by started_at), not the last one stored:
    re-tagging an old call must not move a manager back to their old team."""
    m = session.get(Manager, ev.manager_id)
    started = as_utc(ev.started_at)
    if m is None:
        session.add(Manager(manager_id=ev.manager_id, name=ev.manager_name, team_id=ev.team_id,
                            team_since=started if ev.team_id else None))
        session.flush()  # later statements in this transaction (the call row) refer to it
        return
    if m.team_since is None or started >= m.team_since:
        m.name = ev.manager_name or m.name
        if ev.team_id:
            m.team_id, m.team_since = ev.team_id, started
    elif m.name is None:
        m.name = ev.manager_name


def _call_row(session: Session, ev: CallRecorded, region: str = "RU") -> Call:
    call = session.get(Call, ev.call_id)
    if call is None:
        call = Call(call_id=ev.call_id)
        session.add(call)
    call.source = ev.source
    call.manager_id = ev.manager_id
    call.team_id = ev.team_id
    call.direction = ev.direction
    call.client_number = ev.client_number
    call.client_phone = normalize_phone(ev.client_number, region)
    call.started_at = ev.started_at
    call.recording_url = ev.recording_url
    call.lead = ev.lead.model_dump(mode="json") if ev.lead else None
    return call


def _insert(session: Session, table, rows: list[dict]) -> None:
    if rows:
        session.execute(insert(table.__table__), rows)


@dataclass
class StoreResult:
    stored: bool  # False: the database holds a newer version of the call, and nothing was changed
    revision: int = 0
    new_flags: list[str] = field(default_factory=list)
    update: Optional[StatsUpdate] = None  # to send on calls.stored (key: its manager_id)
    outbox: list[int] = field(default_factory=list)  # ids of the rows written for send_outbox
    client_phone: Optional[str] = None  # E.164: its calls and CRM leads are to be joined again


def _version(published_at: Optional[datetime], tagged_at: Optional[datetime]) -> tuple[datetime, datetime]:
    return as_utc(published_at) or _EARLIEST, as_utc(tagged_at) or _EARLIEST


def store_tagged(session: Session, ev: CallTagged, tz: tzinfo = timezone.utc, region: str = "RU") -> StoreResult:
    """Replace everything stored for ev.call_id with ev (a replay stores nothing twice).

    An older version than the one stored (an earlier upload whose transcription finished last, an old
    tagging redelivered) changes nothing. In the same transaction it writes to the outbox what must
    not be lost if the worker dies right after the commit: the notice of flags the call did not have
    before (calls.flagged), and, when the call changed manager, the retraction of its statistics from
    the old one. ``tz`` is the business time zone of the statistics periods; ``region`` the country of
    client numbers written without a country code (CALLQA_PHONE_REGION).
    """
    q = select(Call).where(Call.call_id == ev.call_id)
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        q = q.with_for_update()  # two workers storing one call during a rebalance take turns
    existing = session.scalar(q)
    if existing is not None and existing.status == "tagged" and \
            _version(existing.published_at, existing.tagged_at) > _version(ev.published_at, ev.tagged_at):
        return StoreResult(stored=False, revision=existing.revision)
    previous_manager = existing.manager_id if existing is not None and existing.status == "tagged" else None
    revision = (existing.revision or 0) + 1 if existing is not None else 1
    _upsert_manager(session, ev)
    before = set(session.scalars(select(FlagRow.code).where(FlagRow.call_id == ev.call_id)))
    call = _call_row(session, ev, region)
    call.published_at = ev.published_at
    call.tagged_at = ev.tagged_at
    call.revision = revision
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
             reasons=r.reasons, uncertain=r.uncertain)
        for step, r in ev.steps.items()])
    _insert(session, ObjectionRow, [
        dict(call_id=ev.call_id, idx=i, text=o.text, kind=o.kind, answered=o.answered, at=o.at, answer=o.answer)
        for i, o in enumerate(ev.objections)])
    _insert(session, FlagRow, [dict(call_id=ev.call_id, idx=i, code=f.code, detail=f.detail, at=f.at)
                               for i, f in enumerate(ev.flags)])
    result = StoreResult(stored=True, revision=revision, new_flags=sorted({f.code for f in ev.flags} - before),
                         client_phone=call.client_phone)
    result.update = StatsUpdate(op="apply", call_id=ev.call_id, manager_id=ev.manager_id, revision=revision,
                                outcome=stats.outcome_from_tagged(ev, tz, revision).to_compact())
    outbox = []
    if previous_manager is not None and previous_manager != ev.manager_id:
        retract = StatsUpdate(op="retract", call_id=ev.call_id, manager_id=previous_manager, revision=revision)
        outbox.append(Outbox(kind="stats", key=previous_manager, value=retract.model_dump_json()))
    if result.new_flags:
        note = CallFlagged(call_id=ev.call_id, manager_id=ev.manager_id, manager_name=ev.manager_name,
                           team_id=ev.team_id, started_at=ev.started_at, recording_url=ev.recording_url,
                           new_flags=result.new_flags, flags=ev.flags, furthest_step=ev.furthest_step)
        outbox.append(Outbox(kind="flagged", key=ev.call_id, value=note.model_dump_json()))
    if outbox:
        session.add_all(outbox)
        session.flush()
        result.outbox = [o.id for o in outbox]
    return result


def pending_outbox(session: Session, *, ids: Optional[list[int]] = None, older_than: Optional[datetime] = None,
                   limit: int = 500) -> list[Outbox]:
    """Outbox rows not yet sent: the given ones, or those left behind (older than ``older_than``)."""
    q = select(Outbox).where(Outbox.sent_at.is_(None)).order_by(Outbox.id).limit(limit)
    if ids is not None:
        q = q.where(Outbox.id.in_(ids))
    if older_than is not None:
        q = q.where(Outbox.created_at < older_than)
    return list(session.scalars(q))


def outbox_sent(session: Session, ids: list[int]) -> None:
    """Kafka acknowledged these: they are done."""
    if ids:
        session.execute(delete(Outbox).where(Outbox.id.in_(ids)))


def mark_failed(session: Session, dead: DeadLetter, region: str = "RU") -> bool:
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
        call = _call_row(session, ev, region)
        call.status = "failed"
    elif call.status != "tagged":
        call.status = "failed"
    call.failed_stage = dead.stage
    call.error = dead.error
    return True


def load_outcomes(session: Session, *, team_id: Optional[str] = None, since: Optional[datetime] = None,
                  until: Optional[datetime] = None, tz: tzinfo = timezone.utc,
                  teams: Optional[frozenset] = None) -> list[stats.CallOutcome]:
    """Every stored (tagged) call's contribution, optionally for one team (or a set of teams) and a time range;
    periods in ``tz``."""
    q = select(Call.call_id, Call.manager_id, Call.team_id, Call.started_at, Call.revision).where(
        Call.status == "tagged")
    if teams is not None:
        q = q.where(Call.team_id.in_(sorted(teams)))
    if team_id is not None:
        q = q.where(Call.team_id == team_id)
    if since is not None:
        q = q.where(Call.started_at >= since)
    if until is not None:
        q = q.where(Call.started_at < until)
    rows = session.execute(q).all()
    steps: dict[str, dict[str, tuple[bool, Optional[str]]]] = {r.call_id: {} for r in rows}
    unsure: dict[str, set[str]] = {r.call_id: set() for r in rows}
    objections: dict[str, list[tuple[str, bool]]] = {r.call_id: [] for r in rows}
    for cs in session.execute(select(CallStep.call_id, CallStep.step, CallStep.present, CallStep.quality,
                                     CallStep.uncertain)):
        if cs.call_id in steps:
            steps[cs.call_id][cs.step] = (cs.present, cs.quality)
            if cs.uncertain:
                unsure[cs.call_id].add(cs.step)
    for ob in session.execute(select(ObjectionRow.call_id, ObjectionRow.kind, ObjectionRow.answered)
                              .order_by(ObjectionRow.call_id, ObjectionRow.idx)):
        if ob.call_id in objections:
            objections[ob.call_id].append((ob.kind, ob.answered))
    return [stats.CallOutcome(r.call_id, r.manager_id, r.team_id, steps[r.call_id], r.started_at,
                              tuple(objections[r.call_id]), stats.period_keys(r.started_at, tz), r.revision or 0,
                              frozenset(unsure[r.call_id]))
            for r in rows]


def mirror_manager_stats(session: Session, ms: stats.ManagerStats, periods: Optional[Iterable[str]] = None) -> None:
    """Write one manager's live statistics to SQL, replacing the previous copy: of the given periods
    (those an update touched: the cost stays flat as the history grows), or of every period."""
    if session.get(Manager, ms.manager_id) is None:
        session.add(Manager(manager_id=ms.manager_id, team_id=ms.team_id))
        session.flush()
    for table in (ManagerStageStat, ManagerObjectionStat):
        q = delete(table).where(table.manager_id == ms.manager_id)
        if periods is not None:
            q = q.where(table.period.in_(list(periods)))
        session.execute(q)
    now = utcnow()
    rows = []
    for period, teams in ms.totals.items():
        for team, steps in teams.items():
            for step, c in steps.items():
                st = stats.StageStat(ms.manager_id, step, int(c["calls"]), int(c["occurred"]),
                                     int(c["quality_passed"]), int(c["reached_next"]), int(c["scored"]),
                                     float(c["score_sum"]), float(c.get("score_sq", 0.0)))
                rows.append(dict(
                    manager_id=ms.manager_id, team_id=team, step=step, period=period, calls=st.calls,
                    occurred=st.occurred, quality_passed=st.quality_passed, reached_next=st.reached_next,
                    scored=st.scored, score_sum=st.score_sum, score_sq=st.score_sq, share=st.share,
                    pass_rate=st.pass_rate, conversion=st.conversion, score=st.score, updated_at=now))
    _insert(session, ManagerStageStat, rows)
    _insert(session, ManagerObjectionStat, [
        dict(manager_id=ms.manager_id, kind=kind, period=period, raised=raised, answered=answered, updated_at=now)
        for period, kinds in ms.objections.items() for kind, (raised, answered) in kinds.items() if raised])


def mirrored_stats(session: Session) -> dict[str, stats.ManagerStats]:
    """Read the SQL mirror back into ManagerStats counts."""
    out: dict[str, stats.ManagerStats] = {}
    teams = dict(session.execute(select(Manager.manager_id, Manager.team_id)).all())
    for r in session.scalars(select(ManagerStageStat)):
        ms = out.setdefault(r.manager_id, stats.ManagerStats(r.manager_id, teams.get(r.manager_id)))
        ms.totals.setdefault(r.period, {}).setdefault(r.team_id, {})[r.step] = {
            "calls": r.calls, "occurred": r.occurred, "quality_passed": r.quality_passed,
            "reached_next": r.reached_next, "scored": r.scored, "score_sum": round(r.score_sum, 6),
            "score_sq": round(r.score_sq, 6)}
    for r in session.scalars(select(ManagerObjectionStat)):
        ms = out.setdefault(r.manager_id, stats.ManagerStats(r.manager_id, teams.get(r.manager_id)))
        ms.objections.setdefault(r.period, {})[r.kind] = [r.raised, r.answered]
    return out


def flag_moment(at: Optional[float]) -> Optional[float]:
    """A flag's moment, as verdicts are matched to it (a re-tag reproduces segment times exactly)."""
    return None if at is None else round(at, 1)


def current_reviews(session: Session, call_ids: Optional[list[str]] = None) -> dict[tuple, Review]:
    """(call_id, flag code, moment) -> the current verdict on that flag."""
    q = select(Review).where(Review.current.is_(True))
    if call_ids is not None:
        q = q.where(Review.call_id.in_(call_ids))
    return {(r.call_id, r.flag_code, flag_moment(r.flag_at)): r for r in session.scalars(q)}


def review_of(reviews: dict[tuple, Review], flag: FlagRow) -> Optional[Review]:
    return reviews.get((flag.call_id, flag.code, flag_moment(flag.at)))


def _mmss(at: Optional[float]) -> str:
    return "–" if at is None else f"{int(at // 60)}:{int(at % 60):02d}"


def record_review(session: Session, call_id: str, flag_code: str, verdict: str, comment: Optional[str] = None,
                  reviewer: Optional[str] = None, at: Optional[float] = None) -> Review:
    """A sales head's verdict on one flag of a call (its code and moment). Reviewing the same flag again
    makes a new current verdict; the earlier one stays in the history."""
    if verdict not in ("agree", "disagree"):
        raise ValueError(f"verdict must be agree or disagree, not {verdict!r}")
    flags = list(session.scalars(select(FlagRow).where(FlagRow.call_id == call_id).order_by(FlagRow.idx)))
    if not flags:
        raise LookupError(f"call {call_id} has no flags to review (is the call id right? `callqa report flagged`)")
    same = [f for f in flags if f.code == flag_code]
    if not same:
        raise LookupError(f"call {call_id} has no flag {flag_code!r}; its flags: "
                          f"{', '.join(sorted({f.code for f in flags}))}")
    if at is not None:
        same = [f for f in same if f.at is not None and abs(f.at - at) < 0.5]
        if not same:
            raise LookupError(f"call {call_id} has no flag {flag_code!r} at {at:g} s")
    elif len({flag_moment(f.at) for f in same}) > 1:
        raise LookupError(f"call {call_id} has {len(same)} {flag_code!r} flags (at "
                          f"{', '.join(_mmss(f.at) for f in same)}): say which one with its time in seconds")
    flag = same[0]
    for old in session.scalars(select(Review).where(Review.call_id == call_id, Review.flag_code == flag_code,
                                                    Review.current.is_(True))):
        if flag_moment(old.flag_at) == flag_moment(flag.at):
            old.current = False
    review = Review(call_id=call_id, flag_code=flag_code, flag_at=flag.at, current=True, verdict=verdict,
                    comment=comment, reviewer=reviewer, created_at=utcnow())
    session.add(review)
    session.flush()
    return review

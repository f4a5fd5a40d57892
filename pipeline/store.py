"""Idempotent writes keyed by call_id, and the statistics mirror in SQL."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from typing import Iterable, Optional, Sequence

from sqlalchemy import bindparam, delete, func, insert, or_, select, update
from sqlalchemy.orm import Session

from models.events import CallFlagged, CallRecorded, CallTagged, DeadLetter, StatsUpdate
from models.tables import (Call, CallStep, FlagRow, Manager, ManagerObjectionStat, ManagerStageStat, ObjectionRow,
                           Outbox, Review, SegmentRow, as_utc, utcnow)
from pipeline import stats
from pipeline.phones import normalize_phone

_EARLIEST = datetime.min.replace(tzinfo=timezone.utc)


def _insert_ignore(session: Session, table, rows: list[dict]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING: two workers may add the same new manager at once."""
    if not rows:
        return
    dialect = session.bind.dialect.name if session.bind is not None else ""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    else:  # pragma: no cover - callqa runs on these two
        for row in rows:
            if session.get(table, row[next(iter(table.__table__.primary_key)).name]) is None:
                session.execute(insert(table.__table__), [row])
        return
    session.execute(dialect_insert(table.__table__).on_conflict_do_nothing(), rows)


def _upsert_managers(session: Session, evs: Sequence[CallRecorded]) -> None:
    """Name and team follow each manager's most recent call (by started_at), not the last one stored:
    re-tagging an old call must not move a manager back to their old team. The conditions are in the
    UPDATEs, not read first: two workers storing calls of one manager at once cannot undo each other."""
    newest_team: dict[str, tuple[datetime, CallRecorded]] = {}
    newest_name: dict[str, tuple[datetime, CallRecorded]] = {}
    for ev in evs:
        started = as_utc(ev.started_at)
        if ev.team_id and (ev.manager_id not in newest_team or started >= newest_team[ev.manager_id][0]):
            newest_team[ev.manager_id] = (started, ev)
        if ev.manager_name and (ev.manager_id not in newest_name or started >= newest_name[ev.manager_id][0]):
            newest_name[ev.manager_id] = (started, ev)
    ids = sorted({ev.manager_id for ev in evs})  # one order for every writer: no lock cycles between workers
    m = Manager.__table__.c
    known = {r.manager_id: r for r in session.execute(
        select(m.manager_id, m.name, m.team_id, m.team_since).where(m.manager_id.in_(ids)))}
    now = utcnow()
    _insert_ignore(session, Manager, [dict(manager_id=i, updated_at=now) for i in ids if i not in known])
    team_rows, name_rows, fill_rows = [], [], []
    for i in ids:
        k = known.get(i)
        since = as_utc(k.team_since) if k is not None else None
        name = k.name if k is not None else None
        if i in newest_team:
            started, ev = newest_team[i]
            if since is None or started > since or (started == since and (k.team_id, name) != (
                    ev.team_id, ev.manager_name or name)):
                team_rows.append(dict(m_id=i, m_started=started, team_id=ev.team_id, team_since=started,
                                      m_name=ev.manager_name, updated_at=now))
                since, name = started, ev.manager_name or name
        if i in newest_name:
            started, ev = newest_name[i]
            if name != ev.manager_name:
                if since is None or started >= since:
                    name_rows.append(dict(m_id=i, m_started=started, name=ev.manager_name, updated_at=now))
                elif name is None:
                    fill_rows.append(dict(m_id=i, name=ev.manager_name, updated_at=now))
    t = Manager.__table__
    newer = or_(m.team_since.is_(None), m.team_since <= bindparam("m_started"))
    if team_rows:
        session.execute(update(t).where(m.manager_id == bindparam("m_id"), newer).values(
            name=func.coalesce(bindparam("m_name"), m.name)), team_rows)
    if name_rows:
        session.execute(update(t).where(m.manager_id == bindparam("m_id"), newer), name_rows)
    if fill_rows:
        session.execute(update(t).where(m.manager_id == bindparam("m_id"), m.name.is_(None)), fill_rows)


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


def _call_values(ev: CallTagged, region: str, revision: int, now: datetime) -> dict:
    return dict(
        source=ev.source, manager_id=ev.manager_id, team_id=ev.team_id, direction=ev.direction,
        client_number=ev.client_number, client_phone=normalize_phone(ev.client_number, region),
        started_at=ev.started_at, recording_url=ev.recording_url,
        lead=ev.lead.model_dump(mode="json") if ev.lead else None,
        published_at=ev.published_at, tagged_at=ev.tagged_at, revision=revision,
        duration_s=ev.duration_s if ev.duration_s is not None else ev.asr.audio_s,
        language=ev.language_detected or (ev.language if ev.language != "auto" else None),
        status="tagged", failed_stage=None, error=None, furthest_step=ev.furthest_step,
        metrics=ev.metrics.model_dump(mode="json"), asr=ev.asr.model_dump(mode="json"),
        event=ev.model_dump(mode="json"), updated_at=now)


def store_tagged(session: Session, ev: CallTagged, tz: tzinfo = timezone.utc, region: str = "RU") -> StoreResult:
    """One call: ``store_tagged_batch`` of one."""
    return store_tagged_batch(session, [ev], tz, region)[0]


def store_tagged_batch(session: Session, events: Sequence[CallTagged], tz: tzinfo = timezone.utc,
                       region: str = "RU") -> list[StoreResult]:
    """Store several calls in the caller's transaction, each replacing everything stored for its call_id
    (a replay stores nothing twice); one result per event, in order.

    An older version than the one stored (an earlier upload whose transcription finished last, an old
    tagging redelivered) changes nothing; of several versions of one call in the batch only the newest is
    written (the others get ``stored=False``), as if they had come one by one. In the same transaction it
    writes to the outbox what must not be lost if the worker dies right after the commit: the notice of
    flags a call did not have before (calls.flagged), and, when a call changed manager, the retraction of
    its statistics from the old one. ``tz`` is the business time zone of the statistics periods;
    ``region`` the country of client numbers written without a country code (CALLQA_PHONE_REGION).

    Each statement covers the whole batch (one SELECT, one executemany per table): per call, the round
    trips to PostgreSQL and SQLAlchemy's per-statement work were most of the store's cost.
    """
    results: list[Optional[StoreResult]] = [None] * len(events)
    newest: dict[str, int] = {}
    for i, ev in enumerate(events):
        j = newest.get(ev.call_id)
        # a later duplicate of the same version wins: a replay replaces, as it would one at a time
        if j is None or _version(ev.published_at, ev.tagged_at) >= _version(events[j].published_at,
                                                                             events[j].tagged_at):
            newest[ev.call_id] = i
    ids = sorted(newest)  # one lock order for every writer
    c = Call.__table__.c
    q = select(c.call_id, c.status, c.published_at, c.tagged_at, c.revision, c.manager_id) \
        .where(c.call_id.in_(ids)).order_by(c.call_id)
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        q = q.with_for_update()  # two workers storing one call during a rebalance take turns
    existing = {r.call_id: r for r in session.execute(q)}
    todo: list[tuple[int, CallTagged, int, Optional[str]]] = []  # index, event, revision, previous manager
    for cid in ids:
        i, ev = newest[cid], events[newest[cid]]
        old = existing.get(cid)
        if old is not None and old.status == "tagged" and \
                _version(old.published_at, old.tagged_at) > _version(ev.published_at, ev.tagged_at):
            results[i] = StoreResult(stored=False, revision=old.revision)
            continue
        todo.append((i, ev, (old.revision or 0) + 1 if old is not None else 1,
                     old.manager_id if old is not None and old.status == "tagged" else None))
    if todo:
        _store_many(session, todo, existing, results, tz, region)
    for i, ev in enumerate(events):  # the older copies of a call the batch stored
        if results[i] is None:
            results[i] = StoreResult(stored=False, revision=results[newest[ev.call_id]].revision)
    return results  # type: ignore[return-value]


def _store_many(session: Session, todo: list[tuple[int, CallTagged, int, Optional[str]]], existing: dict,
                results: list[Optional[StoreResult]], tz: tzinfo, region: str) -> None:
    ids = [ev.call_id for _, ev, _, _ in todo]
    _upsert_managers(session, [ev for _, ev, _, _ in todo])
    before: dict[str, set[str]] = {}
    for cid, code in session.execute(select(FlagRow.call_id, FlagRow.code).where(FlagRow.call_id.in_(ids))):
        before.setdefault(cid, set()).add(code)
    now = utcnow()
    new_calls, old_calls = [], []
    for _, ev, revision, _ in todo:
        row = _call_values(ev, region, revision, now)
        if ev.call_id in existing:
            old_calls.append({**row, "c_id": ev.call_id})
        else:
            new_calls.append({**row, "call_id": ev.call_id})
    t = Call.__table__
    if old_calls:
        session.execute(update(t).where(t.c.call_id == bindparam("c_id")), old_calls)
    _insert(session, Call, new_calls)
    # Children are rewritten, not merged: a re-tagged call must not keep stale tags.
    stale = [cid for cid in ids if cid in existing]
    for table in (SegmentRow, CallStep, ObjectionRow, FlagRow) if stale else ():
        session.execute(delete(table.__table__).where(table.__table__.c.call_id.in_(stale)))
    segments, steps, objections, flags, outbox, outbox_of = [], [], [], [], [], []
    for i, ev, revision, previous_manager in todo:
        cid = ev.call_id
        tags = {tg.segment: tg for tg in ev.utterance_tags}
        segments += [dict(call_id=cid, idx=k, speaker=sg.speaker, start=sg.start, end=sg.end, text=sg.text,
                          avg_logprob=sg.avg_logprob, step=tags[k].step if k in tags else None,
                          evidence=tags[k].evidence if k in tags else None) for k, sg in enumerate(ev.segments)]
        steps += [dict(call_id=cid, step=step, present=r.present, first_at=r.first_at, quality=r.quality,
                       reasons=r.reasons, uncertain=r.uncertain) for step, r in ev.steps.items()]
        objections += [dict(call_id=cid, idx=k, text=o.text, kind=o.kind, answered=o.answered, at=o.at,
                            answer=o.answer) for k, o in enumerate(ev.objections)]
        flags += [dict(call_id=cid, idx=k, code=f.code, detail=f.detail, at=f.at) for k, f in enumerate(ev.flags)]
        result = StoreResult(stored=True, revision=revision,
                             new_flags=sorted({f.code for f in ev.flags} - before.get(cid, set())),
                             client_phone=normalize_phone(ev.client_number, region))
        result.update = StatsUpdate(op="apply", call_id=cid, manager_id=ev.manager_id, revision=revision,
                                    outcome=stats.outcome_from_tagged(ev, tz, revision).to_compact())
        results[i] = result
        if previous_manager is not None and previous_manager != ev.manager_id:
            retract = StatsUpdate(op="retract", call_id=cid, manager_id=previous_manager, revision=revision)
            outbox.append(dict(kind="stats", key=previous_manager, value=retract.model_dump_json(), created_at=now))
            outbox_of.append(result)
        if result.new_flags:
            note = CallFlagged(call_id=cid, manager_id=ev.manager_id, manager_name=ev.manager_name,
                               team_id=ev.team_id, started_at=ev.started_at, recording_url=ev.recording_url,
                               new_flags=result.new_flags, flags=ev.flags, furthest_step=ev.furthest_step)
            outbox.append(dict(kind="flagged", key=cid, value=note.model_dump_json(), created_at=now))
            outbox_of.append(result)
    _insert(session, SegmentRow, segments)
    _insert(session, CallStep, steps)
    _insert(session, ObjectionRow, objections)
    _insert(session, FlagRow, flags)
    if outbox:
        o = Outbox.__table__
        new_ids = session.execute(insert(o).returning(o.c.id, sort_by_parameter_order=True), outbox).scalars()
        for result, oid in zip(outbox_of, new_ids):
            result.outbox.append(oid)


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
        _upsert_managers(session, [ev])
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
    mirror_managers_stats(session, [(ms, periods)])


def mirror_managers_stats(session: Session,
                          items: Sequence[tuple[stats.ManagerStats, Optional[Iterable[str]]]]) -> None:
    """``mirror_manager_stats`` for several managers in one go: one statement per table for all of them
    (the statistics agent mirrors what a batch of updates touched)."""
    if not items:
        return
    now = utcnow()
    _insert_ignore(session, Manager, [dict(manager_id=ms.manager_id, team_id=ms.team_id, updated_at=now)
                                      for ms, _ in items])
    everything = [ms.manager_id for ms, periods in items if periods is None]
    some = [dict(m_id=ms.manager_id, m_period=p) for ms, periods in items if periods is not None for p in periods]
    stage_rows, objection_rows = [], []
    for table in (ManagerStageStat, ManagerObjectionStat):
        t = table.__table__
        if everything:
            session.execute(delete(t).where(t.c.manager_id.in_(everything)))
        if some:
            session.execute(delete(t).where(t.c.manager_id == bindparam("m_id"), t.c.period == bindparam("m_period")),
                            some)
    for ms, _ in items:
        for period, teams in ms.totals.items():
            for team, steps in teams.items():
                for step, c in steps.items():
                    st = stats.StageStat(ms.manager_id, step, int(c["calls"]), int(c["occurred"]),
                                         int(c["quality_passed"]), int(c["reached_next"]), int(c["scored"]),
                                         float(c["score_sum"]), float(c.get("score_sq", 0.0)))
                    stage_rows.append(dict(
                        manager_id=ms.manager_id, team_id=team, step=step, period=period, calls=st.calls,
                        occurred=st.occurred, quality_passed=st.quality_passed, reached_next=st.reached_next,
                        scored=st.scored, score_sum=st.score_sum, score_sq=st.score_sq, share=st.share,
                        pass_rate=st.pass_rate, conversion=st.conversion, score=st.score, updated_at=now))
        objection_rows += [dict(manager_id=ms.manager_id, kind=kind, period=period, raised=raised, answered=answered,
                                updated_at=now)
                           for period, kinds in ms.objections.items() for kind, (raised, answered) in kinds.items()
                           if raised]
    _insert(session, ManagerStageStat, stage_rows)
    _insert(session, ManagerObjectionStat, objection_rows)


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


def is_transient_db_error(exc: BaseException) -> bool:
    """The database is down, restarting, busy or unreachable: the same work will succeed later, so it is
    retried, never dead-lettered. Anything else (bad content, a constraint the data breaks) is not cured
    by waiting."""
    from sqlalchemy import exc as sa

    from models.db import DatabaseError
    if isinstance(exc, DatabaseError):  # the first connection of a worker started while the database was down
        exc = exc.__context__ or exc  # (raised "from None", the driver's error is still its context)
    if isinstance(exc, (sa.OperationalError, sa.InterfaceError, sa.DisconnectionError, sa.TimeoutError)):
        return True
    if isinstance(exc, sa.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (ConnectionError, TimeoutError))

"""The evening digest for the head of sales: the day's (or the days since a date) calls and leads per manager,
hot leads not called in time, flagged calls waiting for review, and the biggest gap (the largest weak-stage
shortfall and the biggest drop between steps). Computed from what is stored, with the queries of the reports
(pipeline/queries.py, pipeline/funnel.py); ``callqa digest`` renders it as text or HTML and mails it, the web
page /digest shows the same to each user within what they may see.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from typing import Any, Optional

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.tables import Call, as_utc, utcnow
from pipeline import funnel
from pipeline import queries as qr
from pipeline.store import load_outcomes

# objection handling happens only where the client objects, so "reached" it is no step of a funnel: the
# drop is measured from presentation straight to closing
FUNNEL_STEPS = ("greeting", "needs_discovery", "presentation", "closing")


@dataclass(frozen=True)
class Window:
    since: datetime
    until: datetime
    label: str


def window(since: str = "yesterday", tz: tzinfo = timezone.utc, now: Optional[datetime] = None) -> Window:
    """``yesterday`` (the whole day before today, midnight to midnight in the company's time zone), ``today``
    (midnight to now), or a day / ISO time (from then to now)."""
    now = as_utc(now) or utcnow()
    today = now.astimezone(tz).date()
    text = (since or "yesterday").strip().lower()
    if text == "yesterday":
        day = today - timedelta(days=1)
        return Window(_midnight(day, tz), _midnight(today, tz), day.isoformat())
    if text == "today":
        return Window(_midnight(today, tz), now, today.isoformat())
    start = qr.parse_day(since, tz)
    if start >= now:
        raise ValueError(f"--since {since} is not in the past (it is {now.astimezone(tz):%Y-%m-%d %H:%M} now)")
    first = start.astimezone(tz).date()
    return Window(start, now, first.isoformat() if first == today else f"{first.isoformat()} – {today.isoformat()}")


def _midnight(day: date, tz: tzinfo) -> datetime:
    return datetime.combine(day, time(), tz)


def _calls(session: Session, scope: qr.Scope, manager_id: Optional[str]) -> dict[str, dict]:
    q = scope.calls(select(Call.manager_id, Call.team_id, Call.status))
    if manager_id is not None:
        q = q.where(Call.manager_id == manager_id)
    out: dict[str, dict] = {}
    for mid, team, status in session.execute(q):
        d = out.setdefault(mid, {"team_id": team, "calls": 0, "tagged": 0, "failed": 0})
        d["calls"] += 1
        d["tagged"] += status == "tagged"
        d["failed"] += status == "failed"
        d["team_id"] = d["team_id"] or team
    return out


def _biggest_drop(session: Session, scope: qr.Scope, manager_id: Optional[str]) -> Optional[dict]:
    outcomes = [o for o in load_outcomes(session, team_id=scope.team_id, since=scope.since, until=scope.until,
                                         tz=scope.tz, teams=scope.teams)
                if manager_id is None or o.manager_id == manager_id]
    reached = {s: sum(1 for o in outcomes if o.steps.get(s, (False, None))[0]) for s in FUNNEL_STEPS}
    drops = [{"from": a, "to": b, "from_calls": reached[a], "to_calls": reached[b],
              "lost_share": round(1 - reached[b] / reached[a], 3)}
             for a, b in zip(FUNNEL_STEPS, FUNNEL_STEPS[1:]) if reached[a]]
    worst = max(drops, key=lambda d: d["lost_share"], default=None)
    return {**worst, "calls": len(outcomes)} if worst and worst["lost_share"] > 0 else None


def _weakest(rows: list[dict]) -> Optional[dict]:
    named = [r for r in rows if r["weak_stage"] and r["weak_gap"] is not None]
    if not named:
        return None
    r = max(named, key=lambda r: (r["weak_gap"], r["weak_calls"]))
    return {"manager_id": r["manager_id"], "manager_name": r["manager_name"], "team_id": r["team_id"],
            "step": r["weak_stage"], "gap": r["weak_gap"], "margin": r["weak_margin"], "calls": r["weak_calls"]}


def build_digest(session: Session, win: Window, *, tz: tzinfo = timezone.utc, team_id: Optional[str] = None,
                 teams: Optional[frozenset] = None, manager_id: Optional[str] = None, include_flagged: bool = True,
                 hot_minutes: float = qr.HOT_LEAD_MINUTES, min_calls: int = 2, min_step_calls: Optional[int] = None,
                 now: Optional[datetime] = None, limit: int = 20) -> dict[str, Any]:
    """The digest of ``win`` over the calls of ``teams`` (None: all) and ``team_id``; only ``manager_id``'s rows
    when given (what a manager may see); the review queue only with ``include_flagged``."""
    now = as_utc(now) or utcnow()
    scope = qr.Scope(team_id, win.since, win.until, tz, teams=teams)
    names = qr._names(session)
    calls = _calls(session, scope, manager_id)
    leads = funnel.lead_facts(session, scope, manager_id)
    per_lead: dict[Optional[str], list] = {}
    for f in leads:
        per_lead.setdefault(f.manager_id, []).append(f)
    rows = []
    for mid in sorted(set(calls) | set(per_lead), key=lambda m: (names.get(m) or (m or "~")).casefold()):
        c = calls.get(mid, {"team_id": None, "calls": 0, "tagged": 0, "failed": 0})
        fig = funnel.funnel_figures(per_lead.get(mid, []), hot_minutes, now)
        fs = per_lead.get(mid) or [None]
        rows.append({"manager_id": mid, "manager_name": names.get(mid) or (fs[0].manager_name if fs[0] else None),
                     "team_id": c["team_id"] or (fs[-1].team_id if fs[-1] else None),
                     "calls": c["calls"], "tagged": c["tagged"], "failed": c["failed"], "leads": fig["leads"],
                     "hot_leads": fig["hot_leads"], "hot_called_in_time": fig["hot_called_in_time"],
                     "hot_missed": fig["hot_missed"]})
    totals = {k: sum(r[k] for r in rows) for k in ("calls", "tagged", "failed", "leads", "hot_leads",
                                                   "hot_called_in_time", "hot_missed")}
    missed = [f for f in leads if f.temperature == "hot" and (
        (f.first_call_delay_min is not None and f.first_call_delay_min > hot_minutes)
        or (f.first_call_at is None and now - f.created_at >= timedelta(minutes=hot_minutes)))]
    flagged = None
    if include_flagged:
        waiting = [r for r in qr.flagged_rows(session, scope, include_reviewed=False)
                   if manager_id is None or r["manager_id"] == manager_id]
        queue = [r for r in qr.flagged_rows(session, qr.Scope(team_id, tz=tz, teams=teams), include_reviewed=False)
                 if manager_id is None or r["manager_id"] == manager_id]
        flagged = {"in_period": len(waiting), "in_queue": len(queue), "calls": len({r["call_id"] for r in waiting}),
                   "rows": [{k: r[k] for k in ("call_id", "started_at", "manager_id", "manager_name", "team_id",
                                               "flag", "detail", "at")} for r in waiting[:limit]]}
    managers = [r for r in qr.manager_rows(session, min_calls, scope, min_step_calls)
                if manager_id is None or r["manager_id"] == manager_id]
    return {
        "period": win.label, "since": win.since.astimezone(tz).isoformat(), "until": win.until.astimezone(tz).isoformat(),
        "timezone": str(tz), "generated_at": now.astimezone(tz).isoformat(timespec="seconds"),
        "hot_lead_minutes": hot_minutes, "managers": rows, "totals": totals,
        "missed_hot_leads": [{"lead_key": f.lead_key, "crm": f.crm, "lead_id": f.lead_id, "manager_id": f.manager_id,
                              "manager_name": f.manager_name, "team_id": f.team_id, "source": f.source,
                              "created_at": f.created_at.astimezone(tz).isoformat(timespec="minutes"),
                              "first_call_delay_min": None if f.first_call_delay_min is None
                              else round(f.first_call_delay_min, 1)} for f in missed],
        "flagged": flagged,
        "gap": {"weakest": _weakest(managers), "drop": _biggest_drop(session, scope, manager_id)},
    }

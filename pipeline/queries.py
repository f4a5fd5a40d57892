"""The queries the CLI reports and the web pages share: weak stages, the flagged-call queue, coaching
lists, KPIs, computed from the stored calls (so any team and date range can be asked for).

`callqa/report.py` renders them as text for the terminal; `web/app.py` as pages and JSON.
"""
from __future__ import annotations

import csv
import io
import re
import statistics
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from typing import Any, Optional

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.events import STEPS
from models.tables import Call, FlagRow, Manager, ObjectionRow, SegmentRow, as_utc
from pipeline import stats
from pipeline.store import current_reviews, load_outcomes, review_of

SHORT = {"greeting": "Greet", "needs_discovery": "Needs", "presentation": "Pres",
         "objection_handling": "Object", "closing": "Close"}
HOT_LEAD_MINUTES = 15


@dataclass(frozen=True)
class Scope:
    """Which calls a report covers: a team and a time range; ``tz`` is the business time zone its days,
    weeks and months are counted in (CALLQA_TIMEZONE)."""

    team_id: Optional[str] = None
    since: Optional[datetime] = None
    until: Optional[datetime] = None
    tz: tzinfo = timezone.utc
    teams: Optional[frozenset] = None  # only calls made in these teams (what a head or trainer may see)

    @classmethod
    def parse(cls, team: Optional[str] = None, since: Optional[str] = None, until: Optional[str] = None,
              tz: tzinfo = timezone.utc) -> "Scope":
        """From the --since/--until (or web form) text: a day, or an exact ISO time."""
        return cls(team_id=team or None, since=parse_day(since, tz) if since else None,
                   until=until_day(until, tz) if until else None, tz=tz)

    def calls(self, q):
        if self.teams is not None:
            q = q.where(Call.team_id.in_(sorted(self.teams)))
        if self.team_id is not None:
            q = q.where(Call.team_id == self.team_id)
        if self.since is not None:
            q = q.where(Call.started_at >= self.since)
        if self.until is not None:
            q = q.where(Call.started_at < self.until)
        return q


def _r(v: Optional[float], n: int = 3) -> Optional[float]:
    return None if v is None else round(v, n)


def _names(session: Session) -> dict[str, Optional[str]]:
    return dict(session.execute(select(Manager.manager_id, Manager.name)).all())


# ---- managers and their weak stages -------------------------------------------------------------

def manager_rows(session: Session, min_calls: int, scope: Scope = Scope(),
                 min_step_calls: Optional[int] = None) -> list[dict]:
    reports = stats.compute(load_outcomes(session, team_id=scope.team_id, since=scope.since, until=scope.until,
                                          tz=scope.tz, teams=scope.teams), min_calls, min_step_calls=min_step_calls)
    names = _names(session)
    failed: dict[str, int] = {}
    failed_team: dict[str, Optional[str]] = {}
    for mid, team in session.execute(scope.calls(select(Call.manager_id, Call.team_id)
                                                 .where(Call.status == "failed").order_by(Call.started_at))):
        failed[mid] = failed.get(mid, 0) + 1
        failed_team[mid] = team or failed_team.get(mid)  # the latest failed call's team
    kpis = activity(session, scope)
    rows = []
    for mid in sorted(set(reports) | set(failed), key=lambda m: (names.get(m) or m)):
        r = reports.get(mid)
        rows.append({
            "manager_id": mid,
            "manager_name": names.get(mid),
            "team_id": r.team_id if r else failed_team.get(mid),
            "calls": r.calls if r else 0,
            "failed_calls": failed.get(mid, 0),
            "enough_calls": bool(r and r.enough_calls),
            "weak_stage": r.weak_stage if r else None,
            "weak_gap": _r(r.weak_gap) if r else None,
            "weak_margin": _r(r.weak_margin) if r else None,
            "weak_calls": r.weak_calls if r else 0,
            "steps": {step: {"share": _r(st.share), "pass_rate": _r(st.pass_rate), "conversion": _r(st.conversion),
                             "score": _r(st.score), "team_score": _r(st.team_score),
                             "team_conversion": _r(st.team_conversion), "gap": _r(st.gap),
                             "gap_margin": _r(st.gap_margin), "calls": st.scored}
                      for step, st in (r.stages.items() if r else [])},
            "objections": {k: {"raised": v[0], "answered": v[1]} for k, v in (r.objections.items() if r else [])},
            "kpi": kpis.get(mid, {}),
        })
    return rows


def activity(session: Session, scope: Scope = Scope()) -> dict[str, dict[str, Any]]:
    """Seed KPIs per manager: calls per active day, talk time, hot-lead response."""
    calls = session.execute(scope.calls(select(Call.call_id, Call.manager_id, Call.started_at, Call.lead)
                                        .where(Call.status == "tagged"))).all()
    talk: dict[str, float] = {}
    for cid, start, end in session.execute(select(SegmentRow.call_id, SegmentRow.start, SegmentRow.end)
                                           .where(SegmentRow.speaker == "manager")):
        talk[cid] = talk.get(cid, 0.0) + max(0.0, end - start)
    per: dict[str, dict[str, Any]] = {}
    for c in calls:
        d = per.setdefault(c.manager_id, {"days": set(), "talk_s": 0.0, "hot": [], "response_min": []})
        d["days"].add(c.started_at.astimezone(scope.tz).date())
        d["talk_s"] += talk.get(c.call_id, 0.0)
        lead = c.lead or {}
        if lead.get("created_at"):
            minutes = (c.started_at - as_utc(datetime.fromisoformat(lead["created_at"]))).total_seconds() / 60
            d["response_min"].append(minutes)
            if lead.get("temperature") == "hot":
                d["hot"].append(minutes)
    out = {}
    for mid, d in per.items():
        n_calls = sum(1 for c in calls if c.manager_id == mid)
        out[mid] = {
            "calls_per_day": round(n_calls / len(d["days"]), 2),
            "talk_time_min": round(d["talk_s"] / 60, 1),
            "lead_response_median_min": _r(statistics.median(d["response_min"]), 1) if d["response_min"] else None,
            "hot_leads": len(d["hot"]),
            "hot_leads_within_15min": _r(sum(m <= HOT_LEAD_MINUTES for m in d["hot"]) / len(d["hot"]))
            if d["hot"] else None,
        }
    return out


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def find_manager(rows: list[dict], key: str) -> tuple[Optional[dict], list[dict]]:
    """A manager by id, else by name (case-insensitive): (the row, []) or (None, the candidates when the
    name is ambiguous)."""
    by_id = [r for r in rows if r["manager_id"] == key]
    if by_id:
        return by_id[0], []
    folded = key.casefold().strip()
    by_name = [r for r in rows if (r["manager_name"] or "").casefold().strip() == folded]
    return (by_name[0], []) if len(by_name) == 1 else (None, by_name)


def scope_text(scope: Scope) -> str:
    parts = [f"team {scope.team_id}"] if scope.team_id is not None else []
    if scope.since is not None or scope.until is not None:
        parts.append(f"{scope.since.date() if scope.since else '…'} to "
                     f"{(scope.until - timedelta(seconds=1)).date() if scope.until else '…'}")
    return ", ".join(parts)


def has_calls(session: Session, scope: Scope) -> bool:
    return session.scalar(scope.calls(select(Call.call_id)).limit(1)) is not None


def empty_reason(session: Session, scope: Scope, what: str = "calls") -> str:
    """Why a report has no rows: nothing stored at all, or nothing in the team or dates asked for."""
    from sqlalchemy import func
    total = session.scalar(Scope(teams=scope.teams).calls(select(func.count()).select_from(Call))) or 0
    if not total:
        return ("No calls stored yet. Publish some (callqa publish) and keep a worker running (callqa worker); "
                "if calls were stored elsewhere, check CALLQA_DATABASE_URL.")
    if scope.team_id is not None:
        teams = sorted(t for t in session.scalars(select(Call.team_id).distinct())
                       if t and (scope.teams is None or t in scope.teams))
        if scope.team_id not in teams:
            return (f"No calls for team {scope.team_id!r}. Teams with calls: {', '.join(teams) or 'none'} "
                    "(--team takes a team id).")
    span = ""
    if scope.since is not None or scope.until is not None:
        first, last = session.execute(Scope(teams=scope.teams).calls(
            select(func.min(Call.started_at), func.max(Call.started_at)))).one()
        span = (f" Stored calls run from {as_utc(first).astimezone(scope.tz).date()} to "
                f"{as_utc(last).astimezone(scope.tz).date()}.")
    where = scope_text(scope)
    return f"No {what}{f' in {where}' if where else ''}.{span}"


# ---- flagged calls and reviews ------------------------------------------------------------------

def _mmss(at: Optional[float]) -> str:
    return "–" if at is None else f"{int(at // 60)}:{int(at % 60):02d}"


def flagged_rows(session: Session, scope: Scope = Scope(), include_reviewed: bool = True) -> list[dict]:
    """One row per flag (a rule firing at a moment of a call), with its current verdict if any."""
    names = _names(session)
    q = scope.calls(select(FlagRow, Call).join(Call, Call.call_id == FlagRow.call_id)).order_by(
        Call.started_at.desc(), FlagRow.call_id, FlagRow.idx)
    found = session.execute(q).all()
    reviews = current_reviews(session, sorted({f.call_id for f, _ in found})) if found else {}
    rows = []
    for f, c in found:
        rv = review_of(reviews, f)
        if rv and not include_reviewed:
            continue
        rows.append({"call_id": f.call_id, "started_at": c.started_at.astimezone(scope.tz).isoformat(),
                     "manager_id": c.manager_id, "manager_name": names.get(c.manager_id), "team_id": c.team_id,
                     "flag": f.code, "detail": f.detail, "at": f.at,
                     "link": c.recording_url + (f"#t={f.at:.1f}" if f.at is not None else ""),
                     "review": rv.verdict if rv else None, "review_comment": rv.comment if rv else None,
                     "reviewer": rv.reviewer if rv else None})
    rows.sort(key=lambda r: r["review"] is not None)  # the queue: unreviewed first, newest first
    return rows


def flag_rule_rows(session: Session, scope: Scope = Scope()) -> list[dict]:
    """Per flag rule: how often it fired and how reviewers judged it (a noisy rule shows up)."""
    out: dict[str, dict] = {}
    for r in flagged_rows(session, scope):
        d = out.setdefault(r["flag"], {"flag": r["flag"], "flagged": 0, "reviewed": 0, "agree": 0, "disagree": 0})
        d["flagged"] += 1
        if r["review"]:
            d["reviewed"] += 1
            d[r["review"]] += 1
    for d in out.values():
        d["disagree_share"] = _r(d["disagree"] / d["reviewed"]) if d["reviewed"] else None
    return sorted(out.values(), key=lambda d: -d["flagged"])


# ---- coaching -----------------------------------------------------------------------------------

def coaching_rows(session: Session, scope: Scope = Scope(), examples: int = 3) -> list[dict]:
    """Managers ranked by objection-handling shortfall, with the moments to coach on."""
    names = _names(session)
    q = scope.calls(select(ObjectionRow, Call).join(Call, Call.call_id == ObjectionRow.call_id)
                    .where(Call.status == "tagged")).order_by(Call.started_at, ObjectionRow.idx)
    per: dict[str, dict] = {}
    team: dict[Optional[str], list[int]] = {}
    for ob, c in session.execute(q).all():
        d = per.setdefault(c.manager_id, {"team_id": c.team_id, "raised": 0, "answered": 0, "missed": {},
                                          "moments": []})
        d["raised"] += 1
        d["answered"] += ob.answered
        t = team.setdefault(c.team_id, [0, 0])
        t[0] += 1
        t[1] += ob.answered
        if not ob.answered:
            d["missed"][ob.kind] = d["missed"].get(ob.kind, 0) + 1
            d["moments"].append((c, ob))
    rows = []
    for mid, d in per.items():
        t = team[d["team_id"]]
        rate, team_rate = d["answered"] / d["raised"], t[1] / t[0]
        moments = []
        for c, ob in d["moments"][-examples:]:
            # the manager's next words: a turn still running when the client objected counts too
            said = session.scalar(select(SegmentRow.text).where(
                SegmentRow.call_id == c.call_id, SegmentRow.speaker == "manager",
                SegmentRow.end > (ob.at or 0) + 0.5).order_by(SegmentRow.start).limit(1))
            moments.append({"call_id": c.call_id, "at": ob.at, "kind": ob.kind, "objection": ob.text,
                            "manager_said": said or "(nothing: the call ended)",
                            "link": c.recording_url + (f"#t={ob.at:.1f}" if ob.at is not None else "")})
        rows.append({"manager_id": mid, "manager_name": names.get(mid), "team_id": d["team_id"],
                     "objections": d["raised"], "answered": d["answered"], "answer_rate": _r(rate),
                     "team_answer_rate": _r(team_rate), "shortfall": _r(team_rate - rate),
                     "missed_kinds": dict(sorted(d["missed"].items(), key=lambda kv: -kv[1])),
                     "moments": moments})
    rows.sort(key=lambda r: (-r["shortfall"], -(r["objections"] - r["answered"])))
    return rows


def coaching_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["manager_id", "manager_name", "team_id", "objections", "answer_rate", "team_answer_rate",
                "shortfall", "call_id", "at_s", "kind", "objection", "manager_said", "link"])
    for r in rows:
        for m in r["moments"] or [None]:
            w.writerow([r["manager_id"], r["manager_name"], r["team_id"], r["objections"], r["answer_rate"],
                        r["team_answer_rate"], r["shortfall"]]
                       + ([m["call_id"], m["at"], m["kind"], m["objection"], m["manager_said"], m["link"]]
                          if m else [""] * 6))
    return buf.getvalue()


_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$|^\d{8}$")


def parse_day(text: str, tz: tzinfo = timezone.utc) -> datetime:
    """A day (YYYY-MM-DD: its midnight in the business time zone) or an exact ISO time (without an
    offset: business time)."""
    text = text.strip()
    if _DAY.match(text):
        return datetime.combine(date.fromisoformat(text), time(), tz)
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a day (YYYY-MM-DD) nor an ISO time (YYYY-MM-DDTHH:MM[+03:00])") \
            from None
    return dt if dt.tzinfo else dt.replace(tzinfo=tz)


def until_day(text: str, tz: tzinfo = timezone.utc) -> datetime:
    """The end of a range: a day includes the whole day (up to the next midnight); a time is exact."""
    dt = parse_day(text, tz)
    if _DAY.match(text.strip()):
        return datetime.combine(dt.date() + timedelta(days=1), time(), tz)
    return dt


# ---- charts: trends and funnels -----------------------------------------------------------------

def weekly_trend(session: Session, scope: Scope, manager_id: str, min_calls: int, weeks: int = 12) -> list[dict]:
    """A manager's score per step in each ISO week (business time zone) with calls, with the team's, oldest
    first (the last ``weeks`` weeks that have calls)."""
    outcomes = load_outcomes(session, team_id=scope.team_id, since=scope.since, until=scope.until, tz=scope.tz,
                             teams=scope.teams)
    keys = sorted({p for o in outcomes if o.manager_id == manager_id for p in o.periods if p.startswith("week:")})
    rows = []
    for key in keys[-weeks:]:
        r = stats.compute(outcomes, min_calls, period=key).get(manager_id)
        if r is None:
            continue
        rows.append({"week": key.removeprefix("week:"), "calls": r.calls,
                     "steps": {step: {"score": _r(st.score), "team_score": _r(st.team_score)}
                               for step, st in r.stages.items()}})
    return rows


def step_funnel(session: Session, scope: Scope) -> dict:
    """Of the tagged calls in scope: how many reached each step (the step occurred), in step order."""
    outcomes = load_outcomes(session, team_id=scope.team_id, since=scope.since, until=scope.until, tz=scope.tz,
                             teams=scope.teams)
    counts = {step: sum(1 for o in outcomes if o.steps.get(step, (False, None))[0]) for step in STEPS}
    return {"calls": len(outcomes), "steps": counts}

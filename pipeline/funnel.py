"""The lead-to-deal funnel from the CRM tables joined to the calls (pipeline/crm.py): per lead its first-call
delay, calls, proposals, furthest step and the steps done well over all its calls, and the outcome; per
manager and team the funnel figures; per step the conversion of leads whose calls did it well against
those whose calls did not (``step_impact``). The CLI (callqa/report.py) and the web pages share these.
"""
from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Optional

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.events import STEPS
from models.tables import Call, CallStep, CrmLead, CrmLeadCall, CrmLeadEvent, Manager, as_utc, utcnow
from pipeline.queries import Scope

Z90 = 1.6449  # the 90 % intervals, as the weak-stage gaps


@dataclass
class LeadFacts:
    lead_key: str
    crm: str
    lead_id: str
    manager_id: Optional[str]
    manager_name: Optional[str]
    team_id: Optional[str]
    source: Optional[str]
    temperature: Optional[str]
    created_at: datetime
    status: Optional[str] = None
    calls: int = 0
    tagged_calls: int = 0
    first_call_at: Optional[datetime] = None
    proposals: int = 0
    invoices: int = 0
    outcome: Optional[str] = None      # won | lost | None (open)
    amount: Optional[float] = None
    currency: Optional[str] = None
    loss_reason: Optional[str] = None
    closed_at: Optional[datetime] = None
    furthest_step: Optional[str] = None
    steps_good: set = field(default_factory=set)
    steps_present: set = field(default_factory=set)

    @property
    def first_call_delay_min(self) -> Optional[float]:
        if self.first_call_at is None:
            return None
        return max(0.0, (self.first_call_at - self.created_at).total_seconds() / 60)

    def to_dict(self) -> dict:
        return {"lead_key": self.lead_key, "crm": self.crm, "lead_id": self.lead_id, "manager_id": self.manager_id,
                "manager_name": self.manager_name, "team_id": self.team_id, "source": self.source,
                "temperature": self.temperature, "created_at": self.created_at.isoformat(), "status": self.status,
                "calls": self.calls, "first_call_at": self.first_call_at.isoformat() if self.first_call_at else None,
                "first_call_delay_min": _r(self.first_call_delay_min, 1), "proposals": self.proposals,
                "invoices": self.invoices, "outcome": self.outcome, "amount": self.amount, "currency": self.currency,
                "loss_reason": self.loss_reason, "furthest_step": self.furthest_step,
                "steps_done_well": [s for s in STEPS if s in self.steps_good]}


def _r(v: Optional[float], n: int = 3) -> Optional[float]:
    return None if v is None else round(v, n)


def lead_facts(session: Session, scope: Scope = Scope(), manager_id: Optional[str] = None) -> list[LeadFacts]:
    """Every lead created in ``scope`` (its days and teams: the lead's team, else its manager's); only
    ``manager_id``'s when given (what a manager may see)."""
    teams = dict(session.execute(select(Manager.manager_id, Manager.team_id)).all())
    names = dict(session.execute(select(Manager.manager_id, Manager.name)).all())
    q = select(CrmLead).where(CrmLead.created_at.is_not(None))
    if manager_id is not None:
        q = q.where(CrmLead.manager_id == manager_id)
    if scope.since is not None:
        q = q.where(CrmLead.created_at >= scope.since)
    if scope.until is not None:
        q = q.where(CrmLead.created_at < scope.until)
    leads: dict[str, LeadFacts] = {}
    for ld in session.scalars(q):
        team = ld.team_id or teams.get(ld.manager_id)
        if (scope.team_id is not None and team != scope.team_id) or (scope.teams is not None and team not in scope.teams):
            continue
        leads[ld.lead_key] = LeadFacts(ld.lead_key, ld.crm, ld.lead_id, ld.manager_id,
                                       ld.manager_name or names.get(ld.manager_id), team, ld.source, ld.temperature,
                                       as_utc(ld.created_at))
    if not leads:
        return []
    keys = sorted(leads)
    closes: dict[str, tuple] = {}
    statuses: dict[str, tuple] = {}
    for e in session.scalars(select(CrmLeadEvent).where(CrmLeadEvent.lead_key.in_(keys))):
        f = leads[e.lead_key]
        at = as_utc(e.at)
        if e.type == "proposal_sent":
            f.proposals += 1
        elif e.type == "invoice_issued":
            f.invoices += 1
        elif e.type == "lead_status_changed" and (at, e.event_id) > statuses.get(e.lead_key, (at, ""))[:2]:
            statuses[e.lead_key] = (at, e.event_id, e.data.get("status"))
        elif e.type == "deal_closed" and (e.lead_key not in closes or (at, e.event_id) > closes[e.lead_key][:2]):
            closes[e.lead_key] = (at, e.event_id, e.data)
    for key, (_, _, status) in statuses.items():
        leads[key].status = status
    for key, (at, _, d) in closes.items():
        f = leads[key]
        f.outcome, f.amount, f.currency, f.loss_reason, f.closed_at = (
            d.get("outcome"), d.get("amount"), d.get("currency"), d.get("loss_reason"), at)
    calls = session.execute(select(CrmLeadCall.lead_key, Call.call_id, Call.started_at, Call.status, Call.furthest_step)
                            .join(Call, Call.call_id == CrmLeadCall.call_id)
                            .where(CrmLeadCall.lead_key.in_(keys))).all()
    tagged = {c.call_id: c.lead_key for c in calls if c.status == "tagged"}
    for c in calls:
        f = leads[c.lead_key]
        f.calls += 1
        started = as_utc(c.started_at)
        f.first_call_at = started if f.first_call_at is None else min(f.first_call_at, started)
        if c.status == "tagged":
            f.tagged_calls += 1
            if c.furthest_step and (f.furthest_step is None or STEPS.index(c.furthest_step) > STEPS.index(f.furthest_step)):
                f.furthest_step = c.furthest_step
    if tagged:
        for cs in session.execute(select(CallStep.call_id, CallStep.step, CallStep.present, CallStep.quality)
                                  .where(CallStep.call_id.in_(sorted(tagged)))):
            f = leads[tagged[cs.call_id]]
            if cs.present:
                f.steps_present.add(cs.step)
            if cs.quality == "good":
                f.steps_good.add(cs.step)
    return sorted(leads.values(), key=lambda f: f.created_at)


# ---- the funnel per manager and team ------------------------------------------------------------

def _median(xs: list[float]) -> Optional[float]:
    return _r(statistics.median(xs), 1) if xs else None


def funnel_figures(leads: list[LeadFacts], hot_minutes: float, now: datetime) -> dict[str, Any]:
    hot = [f for f in leads if f.temperature == "hot"]
    # a hot lead counts once its minutes are up or it was called: one created a minute ago is not missed yet
    due = [f for f in hot if f.first_call_at is not None or now - f.created_at >= timedelta(minutes=hot_minutes)]
    in_time = [f for f in due if f.first_call_delay_min is not None and f.first_call_delay_min <= hot_minutes]
    won = [f for f in leads if f.outcome == "won"]
    revenue: Counter = Counter()
    for f in won:
        if f.amount:
            revenue[f.currency or ""] += f.amount
    n = len(leads)
    calls = sum(f.calls for f in leads)
    proposals = sum(f.proposals for f in leads)
    return {
        "leads": n, "hot_leads": len(hot), "hot_due": len(due), "hot_called_in_time": len(in_time),
        "hot_in_time_share": _r(len(in_time) / len(due)) if due else None,
        "hot_missed": len(due) - len(in_time),
        "hot_median_delay_min": _median([f.first_call_delay_min for f in hot if f.first_call_delay_min is not None]),
        "median_first_call_min": _median([f.first_call_delay_min for f in leads if f.first_call_delay_min is not None]),
        "leads_called": sum(1 for f in leads if f.calls), "calls": calls, "proposals": proposals,
        "invoices": sum(f.invoices for f in leads),
        "calls_per_lead": _r(calls / n, 2) if n else None, "proposals_per_lead": _r(proposals / n, 2) if n else None,
        "won": len(won), "lost": sum(1 for f in leads if f.outcome == "lost"),
        "open": sum(1 for f in leads if f.outcome is None),
        "conversion": _r(len(won) / n) if n else None,
        "revenue": {k: round(v, 2) for k, v in sorted(revenue.items())},
    }


def funnel_rows(session: Session, scope: Scope = Scope(), hot_minutes: float = 15.0,
                now: Optional[datetime] = None, manager_id: Optional[str] = None) -> dict[str, Any]:
    """{"managers": [...], "teams": [...], "total": {...}}; each with the figures of ``funnel_figures``."""
    now = as_utc(now) or utcnow()
    leads = lead_facts(session, scope, manager_id)
    per_manager: dict[Optional[str], list[LeadFacts]] = {}
    per_team: dict[Optional[str], list[LeadFacts]] = {}
    for f in leads:
        per_manager.setdefault(f.manager_id, []).append(f)
        per_team.setdefault(f.team_id, []).append(f)
    managers = [{"manager_id": mid, "manager_name": fs[0].manager_name, "team_id": fs[-1].team_id,
                 **funnel_figures(fs, hot_minutes, now)}
                for mid, fs in sorted(per_manager.items(), key=lambda kv: (kv[1][0].manager_name or kv[0] or "~"))]
    teams = [{"team_id": t, **funnel_figures(fs, hot_minutes, now)}
             for t, fs in sorted(per_team.items(), key=lambda kv: kv[0] or "~")]
    return {"hot_lead_minutes": hot_minutes, "managers": managers, "teams": teams,
            "total": funnel_figures(leads, hot_minutes, now)}


# ---- which weak step costs deals ------------------------------------------------------------------

def wilson(k: int, n: int, z: float = Z90) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def diff_interval(k1: int, n1: int, k2: int, n2: int, z: float = Z90) -> tuple[float, float]:
    """Newcombe's hybrid score interval for p1 - p2 (sound at small counts, unlike the Wald one)."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson(k1, n1, z)
    l2, u2 = wilson(k2, n2, z)
    d = p1 - p2
    return d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def _impact(leads: list[LeadFacts], step: str, min_leads: int, deal_value: Optional[float]) -> dict:
    well = [f for f in leads if step in f.steps_good]
    not_well = [f for f in leads if step not in f.steps_good]
    k1, n1 = sum(f.outcome == "won" for f in well), len(well)
    k2, n2 = sum(f.outcome == "won" for f in not_well), len(not_well)
    row: dict[str, Any] = {"step": step, "leads_well": n1, "won_well": k1, "conversion_well": _r(k1 / n1) if n1 else None,
                           "leads_not_well": n2, "won_not_well": k2,
                           "conversion_not_well": _r(k2 / n2) if n2 else None,
                           "difference": None, "interval": None, "deals_lost": None, "money_lost": None}
    if not n1 or not n2:
        row["verdict"] = "too_few"
        row["note"] = f"every lead is on one side ({n1} did it well, {n2} did not): nothing to compare"
        return row
    d = k1 / n1 - k2 / n2
    lo, hi = diff_interval(k1, n1, k2, n2)
    row.update(difference=_r(d), interval=[_r(lo), _r(hi)])
    if d > 0:
        row["deals_lost"] = _r(d * n2, 1)  # deals the weak side would have won at the strong side's rate
        row["money_lost"] = _r(d * n2 * deal_value, 2) if deal_value else None
    if min(n1, n2) < min_leads:
        row["verdict"] = "too_few"
        row["note"] = f"too few leads to conclude ({n1} and {n2}; {min_leads} a side needed)"
    elif lo > 0:
        row["verdict"] = "costs_deals"
        row["note"] = f"done well: +{round(d * 100)} pts conversion (90% interval {round(lo * 100)} to {round(hi * 100)})"
    elif hi < 0:
        row["verdict"] = "no_gain"
        row["note"] = "leads whose calls did it well converted less (90% interval below zero)"
    else:
        row["verdict"] = "unclear"
        row["note"] = f"no clear difference (90% interval {round(lo * 100)} to {round(hi * 100)} pts spans zero)"
    return row


def _impact_block(leads: list[LeadFacts], min_leads: int) -> dict:
    closed = [f for f in leads if f.outcome in ("won", "lost") and f.tagged_calls]
    won_amounts = [f.amount for f in closed if f.outcome == "won" and f.amount]
    currencies = Counter(f.currency for f in closed if f.outcome == "won" and f.amount)
    deal_value = statistics.mean(won_amounts) if won_amounts else None
    steps = [_impact(closed, step, min_leads, deal_value) for step in STEPS]
    sure = [r for r in steps if r["verdict"] == "costs_deals"]
    costliest = max(sure, key=lambda r: (r["deals_lost"] or 0)) if sure else None
    return {"closed_leads": len(closed), "won": sum(f.outcome == "won" for f in closed),
            "average_deal": _r(deal_value, 2), "currency": currencies.most_common(1)[0][0] if currencies else None,
            "steps": steps, "costliest_step": costliest["step"] if costliest else None,
            "conclusion": (f"{costliest['step']} costs the most deals: about {costliest['deals_lost']:g} of "
                           f"{len(closed)} closed leads" if costliest else
                           "Too few closed leads to say which step costs deals." if all(
                               r["verdict"] == "too_few" for r in steps) else
                           "No step shows a clear effect on conversion yet.")}


def step_impact(session: Session, scope: Scope = Scope(), min_leads: int = 10,
                manager_id: Optional[str] = None) -> dict[str, Any]:
    """Per step: the conversion of the closed leads (won or lost) with at least one tagged call whose calls did
    the step well, against those whose calls did not; team-wide and per manager. Open leads are left out."""
    leads = lead_facts(session, scope, manager_id)
    by_manager: dict[Optional[str], list[LeadFacts]] = {}
    for f in leads:
        by_manager.setdefault(f.manager_id, []).append(f)
    return {"min_leads": min_leads, "team": _impact_block(leads, min_leads),
            "managers": [{"manager_id": mid, "manager_name": fs[0].manager_name, "team_id": fs[-1].team_id,
                          **_impact_block(fs, min_leads)}
                         for mid, fs in sorted(by_manager.items(), key=lambda kv: kv[1][0].manager_name or kv[0] or "~")]}

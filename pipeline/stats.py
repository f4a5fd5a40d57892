"""Weak-stage maths: pure functions over per-call contributions.

Each call contributes, per step: whether it occurred, its quality, whether the
call went on to the next step that happened, and a score (1 done well, 0.5
present but weak, 0 missing; objection handling is only scored on calls where
the client objected). A manager's figures are the sum of their calls'
contributions, kept per period (all time, ISO week, month — in the business
time zone) and per team the call was made in. Contributions are keyed by
call_id and carry the store's revision, so applying a call again — a replay, a
re-tag — replaces its old contribution instead of adding a second one, an older
revision arriving late changes nothing, and a call that moved to another
manager is retracted from the old one.

Weak stage: for a manager with enough calls, the step whose mean score falls
furthest below the pooled mean of the team's calls, among steps with enough
scored calls behind them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from typing import Any, Iterable, Optional

from models.events import STEPS, StatsUpdate

UTC = timezone.utc
CLIENT_DRIVEN = {"objection_handling"}
QUALITY_CODE = {None: 0, "missing": 0, "weak": 1, "good": 2}
CODE_QUALITY = {0: None, 1: "weak", 2: "good"}
COUNTERS = ("calls", "occurred", "quality_passed", "reached_next", "scored", "score_sum", "score_sq")
FORMAT = 2  # of ManagerStats.to_dict; older values are rebuilt from their contributions
Z90 = 1.645  # the weak-stage gap is shown with a 90 % interval


def period_keys(started_at: Optional[datetime], tz: tzinfo = UTC) -> tuple[str, ...]:
    """The periods a call counts in: all time, its ISO week and its month, in the business time zone."""
    if started_at is None:
        return ("all",)
    local = (started_at if started_at.tzinfo else started_at.replace(tzinfo=UTC)).astimezone(tz)
    y, w, _ = local.isocalendar()
    return ("all", f"week:{y}-W{w:02d}", f"month:{local:%Y-%m}")


def next_step(steps: dict[str, tuple[bool, Optional[str]]], step: str) -> Optional[str]:
    """The step a call goes to after ``step``: the next one in order, skipping objection handling on a
    call where the client never objected (no objection is not a failure to convert). None after closing."""
    for nxt in STEPS[STEPS.index(step) + 1:]:
        if nxt in CLIENT_DRIVEN and not steps.get(nxt, (False, None))[0]:
            continue
        return nxt
    return None


@dataclass(frozen=True)
class CallOutcome:
    """What one call contributes to its manager's statistics."""

    call_id: str
    manager_id: str
    team_id: Optional[str]
    # step -> (present, quality) for every step in STEPS
    steps: dict[str, tuple[bool, Optional[str]]]
    started_at: Optional[datetime] = None
    objections: tuple[tuple[str, bool], ...] = ()  # (kind, answered)
    # Computed once, in the business time zone, and kept with the contribution, so that retracting it
    # later subtracts from the same buckets even if the time zone setting changed meanwhile.
    periods: tuple[str, ...] = ()
    revision: int = 0

    def __post_init__(self):
        if not self.periods:
            object.__setattr__(self, "periods", period_keys(self.started_at))

    def counters(self) -> dict[str, dict[str, float]]:
        """step -> counter -> value, for this call alone."""
        out: dict[str, dict[str, float]] = {}
        for step in STEPS:
            present, quality = self.steps.get(step, (False, None))
            nxt = next_step(self.steps, step)
            sc = step_score(step, present, quality)
            out[step] = {
                "calls": 1,
                "occurred": int(present),
                "quality_passed": int(present and quality == "good"),
                "reached_next": int(bool(present and nxt and self.steps.get(nxt, (False, None))[0])),
                "scored": 0 if sc is None else 1,
                "score_sum": 0.0 if sc is None else sc,
                "score_sq": 0.0 if sc is None else sc * sc,
            }
        return out

    def to_compact(self) -> dict[str, Any]:
        """A small JSON form, for the Faust table's changelog and the statistics updates."""
        return {"t": self.team_id, "a": self.started_at.isoformat() if self.started_at else None,
                "s": [[int(self.steps.get(s, (False, None))[0]), QUALITY_CODE[self.steps.get(s, (False, None))[1]]]
                      for s in STEPS],
                "o": [[k, int(a)] for k, a in self.objections], "p": list(self.periods), "r": self.revision}

    @classmethod
    def from_compact(cls, call_id: str, manager_id: str, d: dict[str, Any]) -> "CallOutcome":
        at = datetime.fromisoformat(d["a"]) if d["a"] else None
        return cls(call_id, manager_id, d["t"],
                   {s: (bool(p), CODE_QUALITY[q] if p or q else None) for s, (p, q) in zip(STEPS, d["s"])},
                   at, tuple((k, bool(a)) for k, a in d["o"]), tuple(d.get("p") or period_keys(at)),
                   int(d.get("r", 0)))


def step_score(step: str, present: bool, quality: Optional[str]) -> Optional[float]:
    """1 done well, 0.5 weak, 0 missing; None where the step does not apply (no objection).

    "Weak" counts half whether or not the step counts as having occurred: a vague "let's keep in touch"
    is not a closing (the guideline) but is shown as a weak one on the call page, and scored the same.
    """
    if step in CLIENT_DRIVEN and not present:
        return None
    if quality == "weak":
        return 0.5
    return 1.0 if present else 0.0


def outcome_from_tagged(ev, tz: tzinfo = UTC, revision: int = 0) -> CallOutcome:
    """From a CallTagged event."""
    return CallOutcome(
        call_id=ev.call_id, manager_id=ev.manager_id, team_id=ev.team_id,
        steps={s: (ev.steps[s].present, ev.steps[s].quality) if s in ev.steps else (False, None) for s in STEPS},
        started_at=ev.started_at, objections=tuple((o.kind, o.answered) for o in ev.objections),
        periods=period_keys(ev.started_at, tz), revision=revision)


def _retracted(c: dict[str, Any]) -> bool:
    return bool(c.get("x"))


def _call_time(c: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(c["a"]).astimezone(UTC) if c["a"] else datetime.min.replace(tzinfo=UTC)


def _team_key(team_id: Optional[str]) -> str:
    return team_id or ""


@dataclass
class ManagerStats:
    """One manager's running totals per period and team, plus each call's contribution (for replacement).

    This is the value kept in the Faust table; ``to_dict``/``from_dict`` give its JSON form.
    """

    manager_id: str
    team_id: Optional[str] = None  # the team of the manager's most recent call
    contributions: dict[str, dict[str, Any]] = field(default_factory=dict)
    # period -> team ("" for none) -> step -> counter -> value
    totals: dict[str, dict[str, dict[str, dict[str, float]]]] = field(default_factory=dict)
    # period -> kind -> [raised, answered]
    objections: dict[str, dict[str, list[int]]] = field(default_factory=dict)

    def apply(self, outcome: CallOutcome) -> bool:
        """Add a call, replacing its earlier contribution. Returns False if nothing changed.

        A contribution from an older revision than the one held is stale (a late redelivery) and ignored.
        """
        old = self.contributions.get(outcome.call_id)
        if old is not None and int(old.get("r", 0)) > outcome.revision:
            return False
        compact = outcome.to_compact()
        if old == compact:
            return False
        if old is not None and not _retracted(old):
            self._add(CallOutcome.from_compact(outcome.call_id, self.manager_id, old), -1)
        self._add(outcome, +1)
        self.contributions[outcome.call_id] = compact
        self._follow_team()
        return True

    def retract(self, call_id: str, revision: int) -> bool:
        """Remove a call that a newer store (``revision``) gave to another manager."""
        old = self.contributions.get(call_id)
        if old is not None and int(old.get("r", 0)) >= revision:
            return False
        if old is not None and not _retracted(old):
            self._add(CallOutcome.from_compact(call_id, self.manager_id, old), -1)
        # A marker, not a deletion: an older "apply" of this call redelivered after the retraction (two
        # producers during a rebalance) must find it and stay out.
        self.contributions[call_id] = {"r": revision, "x": 1}
        self._follow_team()
        return True

    def counted(self) -> dict[str, dict[str, Any]]:
        """call_id -> contribution, for the calls that count (not those retracted)."""
        return {k: v for k, v in self.contributions.items() if not _retracted(v)}

    def _follow_team(self) -> None:
        # The team of the most recent call that names one (as the managers table keeps it); a scan, as
        # the contributions bound the changelog value anyway.
        latest = max((c for c in self.contributions.values() if not _retracted(c) and c["t"]), key=_call_time,
                     default=None)
        self.team_id = latest["t"] if latest else None

    def _add(self, o: CallOutcome, sign: int) -> None:
        counters = o.counters()
        team = _team_key(o.team_id)
        for period in o.periods:
            teams = self.totals.setdefault(period, {})
            steps = teams.setdefault(team, {})
            for step, c in counters.items():
                acc = steps.setdefault(step, dict.fromkeys(COUNTERS, 0))
                for k, v in c.items():
                    acc[k] = round(acc.get(k, 0) + sign * v, 6)
            for kind, answered in o.objections:
                acc = self.objections.setdefault(period, {}).setdefault(kind, [0, 0])
                acc[0] += sign
                acc[1] += sign * int(answered)
                if acc == [0, 0]:  # keep the JSON form canonical: no empty kinds or periods
                    del self.objections[period][kind]
                    if not self.objections[period]:
                        del self.objections[period]
            if all(v["calls"] == 0 for v in steps.values()):
                del teams[team]  # a team left empty by a replacement
                if not teams:
                    del self.totals[period]
                    self.objections.pop(period, None)

    def manager_totals(self, period: str = "all") -> dict[str, dict[str, float]]:
        """step -> counters, summed over the teams the calls were made in."""
        out: dict[str, dict[str, float]] = {}
        for steps in self.totals.get(period, {}).values():
            for step, c in steps.items():
                acc = out.setdefault(step, dict.fromkeys(COUNTERS, 0))
                for k in COUNTERS:
                    acc[k] = round(acc[k] + c.get(k, 0), 6)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"v": FORMAT, "manager_id": self.manager_id, "team_id": self.team_id,
                "contributions": self.contributions, "totals": self.totals, "objections": self.objections}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ManagerStats":
        if d.get("v") != FORMAT:  # written by an older worker: rebuild the totals from the contributions
            ms = cls(d["manager_id"])
            for cid, c in d.get("contributions", {}).items():
                if not _retracted(c):
                    ms.apply(CallOutcome.from_compact(cid, ms.manager_id, c))
            return ms
        return cls(d["manager_id"], d.get("team_id"), d.get("contributions", {}), d.get("totals", {}),
                   d.get("objections", {}))


def apply_update(current: Optional[dict[str, Any]], update: StatsUpdate) -> tuple[ManagerStats, bool]:
    """One statistics update (from the store, on calls.stored) applied to a manager's table value."""
    ms = ManagerStats.from_dict(current) if current else ManagerStats(update.manager_id)
    if update.op == "retract":
        return ms, ms.retract(update.call_id, update.revision)
    o = CallOutcome.from_compact(update.call_id, update.manager_id, update.outcome or {})
    return ms, ms.apply(o)


def aggregate(outcomes: Iterable[CallOutcome]) -> dict[str, ManagerStats]:
    out: dict[str, ManagerStats] = {}
    for o in outcomes:
        out.setdefault(o.manager_id, ManagerStats(o.manager_id)).apply(o)
    return out


@dataclass
class StageStat:
    manager_id: str
    step: str
    calls: int = 0
    occurred: int = 0
    quality_passed: int = 0
    reached_next: int = 0
    scored: int = 0
    score_sum: float = 0.0
    score_sq: float = 0.0
    team_score: Optional[float] = None
    team_conversion: Optional[float] = None
    team_scored: int = 0
    team_score_sq: float = 0.0

    @property
    def share(self) -> float:
        return self.occurred / self.calls if self.calls else 0.0

    @property
    def pass_rate(self) -> Optional[float]:
        return self.quality_passed / self.occurred if self.occurred else None

    @property
    def conversion(self) -> Optional[float]:
        if self.step == STEPS[-1]:
            return None  # nothing follows closing
        return self.reached_next / self.occurred if self.occurred else None

    @property
    def score(self) -> Optional[float]:
        return self.score_sum / self.scored if self.scored else None

    @property
    def gap(self) -> Optional[float]:
        if self.score is None or self.team_score is None:
            return None
        return self.team_score - self.score

    @property
    def gap_margin(self) -> Optional[float]:
        """Half-width of a 90 % interval on the gap (normal approximation over the calls' scores)."""
        if self.gap is None:
            return None
        var_m = max(0.0, self.score_sq / self.scored - self.score ** 2)
        var_t = max(0.0, self.team_score_sq / self.team_scored - self.team_score ** 2) if self.team_scored else 0.0
        # one call tells little: never claim a tighter interval than a single 0/1 outcome would allow
        var_m = max(var_m, 0.25 / self.scored) if self.scored < 5 else var_m
        return Z90 * math.sqrt(var_m / self.scored + (var_t / self.team_scored if self.team_scored else 0.0))


@dataclass
class ManagerReport:
    manager_id: str
    team_id: Optional[str]
    calls: int
    stages: dict[str, StageStat] = field(default_factory=dict)
    objections: dict[str, list[int]] = field(default_factory=dict)
    weak_stage: Optional[str] = None
    enough_calls: bool = False

    @property
    def weak_gap(self) -> Optional[float]:
        return self.stages[self.weak_stage].gap if self.weak_stage else None

    @property
    def weak_margin(self) -> Optional[float]:
        return self.stages[self.weak_stage].gap_margin if self.weak_stage else None

    @property
    def weak_calls(self) -> int:
        """How many calls the weak-stage figure rests on."""
        return self.stages[self.weak_stage].scored if self.weak_stage else 0


def reports_from(stats: Iterable[ManagerStats], min_calls: int, period: str = "all",
                 min_step_calls: Optional[int] = None) -> dict[str, ManagerReport]:
    """Per manager: each step against the pooled calls of the manager's (current) team.

    The team pool counts each call under the team it was made in. A weak stage is named only for a
    manager with ``min_calls`` calls, and only among steps with ``min_step_calls`` scored calls behind
    them (objection handling is scored on calls with objections only), so one call cannot make it.
    """
    min_step_calls = min_calls if min_step_calls is None else min_step_calls
    stats = list(stats)
    reports: dict[str, ManagerReport] = {}
    team: dict[tuple[str, str], list[float]] = {}
    for ms in stats:
        for team_key, steps in ms.totals.get(period, {}).items():
            for step in STEPS:
                c = steps.get(step)
                if c is None:
                    continue
                acc = team.setdefault((team_key, step), [0.0] * 5)
                acc[0] += c["score_sum"]
                acc[1] += c["scored"]
                acc[2] += c["reached_next"]
                acc[3] += c["occurred"]
                acc[4] += c.get("score_sq", 0.0)
    for ms in stats:
        steps = ms.manager_totals(period)
        if not steps:
            continue
        # compared with their current team, or in a period before they joined it, the team they were in
        in_period = ms.totals[period]
        team_key = _team_key(ms.team_id)
        if team_key not in in_period:
            team_key = max(in_period, key=lambda t: (in_period[t][STEPS[0]]["calls"], t))
        r = ManagerReport(ms.manager_id, team_key or None, int(steps[STEPS[0]]["calls"]),
                          objections={k: list(v) for k, v in ms.objections.get(period, {}).items() if v[0]})
        for step in STEPS:
            c = steps.get(step, dict.fromkeys(COUNTERS, 0))
            st = StageStat(ms.manager_id, step, int(c["calls"]), int(c["occurred"]), int(c["quality_passed"]),
                           int(c["reached_next"]), int(c["scored"]), float(c["score_sum"]), float(c.get("score_sq", 0)))
            acc = team.get((team_key, step), [0.0] * 5)
            st.team_score = acc[0] / acc[1] if acc[1] else None
            st.team_conversion = acc[2] / acc[3] if acc[3] and step != STEPS[-1] else None
            st.team_scored, st.team_score_sq = int(acc[1]), acc[4]
            r.stages[step] = st
        reports[ms.manager_id] = r
    for r in reports.values():
        r.enough_calls = r.calls >= min_calls
        if r.enough_calls:
            gaps = [(st.gap, step) for step, st in r.stages.items()
                    if st.gap is not None and st.gap > 1e-9 and st.scored >= min_step_calls]
            # ties go to the earlier step: fixing it helps every later one
            r.weak_stage = max(gaps, key=lambda g: (round(g[0], 9), -STEPS.index(g[1])))[1] if gaps else None
    return reports


def compute(outcomes: Iterable[CallOutcome], min_calls: int, period: str = "all",
            min_step_calls: Optional[int] = None) -> dict[str, ManagerReport]:
    return reports_from(aggregate(outcomes).values(), min_calls, period, min_step_calls)

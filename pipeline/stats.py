"""Weak-stage maths: pure functions over per-call contributions.

Each call contributes, per step: whether it occurred, its quality, whether the
next step followed, and a score (1 done well, 0.5 present but weak, 0 missing;
objection handling is only scored on calls where the client objected). A
manager's figures are the sum of their calls' contributions, kept per period
(all time, ISO week, month). Contributions are keyed by call_id, so applying a
call again — a replay, a re-tag — replaces its old contribution instead of
adding a second one.

Weak stage: for a manager with enough calls, the step whose mean score falls
furthest below the team's pooled mean.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable, Optional

from models.events import STEPS

CLIENT_DRIVEN = {"objection_handling"}
QUALITY_CODE = {None: 0, "missing": 0, "weak": 1, "good": 2}
CODE_QUALITY = {0: None, 1: "weak", 2: "good"}
COUNTERS = ("calls", "occurred", "quality_passed", "reached_next", "scored", "score_sum")


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

    def periods(self) -> list[str]:
        if self.started_at is None:
            return ["all"]
        y, w, _ = self.started_at.isocalendar()
        return ["all", f"week:{y}-W{w:02d}", f"month:{self.started_at:%Y-%m}"]

    def counters(self) -> dict[str, dict[str, float]]:
        """step -> counter -> value, for this call alone."""
        out: dict[str, dict[str, float]] = {}
        for i, step in enumerate(STEPS):
            present, quality = self.steps.get(step, (False, None))
            nxt = STEPS[i + 1] if i + 1 < len(STEPS) else None
            sc = step_score(step, present, quality)
            out[step] = {
                "calls": 1,
                "occurred": int(present),
                "quality_passed": int(present and quality == "good"),
                "reached_next": int(bool(present and nxt and self.steps.get(nxt, (False, None))[0])),
                "scored": 0 if sc is None else 1,
                "score_sum": 0.0 if sc is None else sc,
            }
        return out

    def to_compact(self) -> dict[str, Any]:
        """A small JSON form, for the Faust table's changelog."""
        return {"t": self.team_id, "a": self.started_at.isoformat() if self.started_at else None,
                "s": [[int(self.steps.get(s, (False, None))[0]), QUALITY_CODE[self.steps.get(s, (False, None))[1]]]
                      for s in STEPS],
                "o": [[k, int(a)] for k, a in self.objections]}

    @classmethod
    def from_compact(cls, call_id: str, manager_id: str, d: dict[str, Any]) -> "CallOutcome":
        return cls(call_id, manager_id, d["t"],
                   {s: (bool(p), CODE_QUALITY[q] if p or q else None) for s, (p, q) in zip(STEPS, d["s"])},
                   datetime.fromisoformat(d["a"]) if d["a"] else None,
                   tuple((k, bool(a)) for k, a in d["o"]))


def step_score(step: str, present: bool, quality: Optional[str]) -> Optional[float]:
    if step in CLIENT_DRIVEN and not present:
        return None
    if not present:
        return 0.0
    if step in CLIENT_DRIVEN:
        return 1.0 if quality != "weak" else 0.0
    return 0.5 if quality == "weak" else 1.0


def outcome_from_tagged(ev) -> CallOutcome:
    """From a CallTagged event."""
    return CallOutcome(
        call_id=ev.call_id, manager_id=ev.manager_id, team_id=ev.team_id,
        steps={s: (ev.steps[s].present, ev.steps[s].quality) if s in ev.steps else (False, None) for s in STEPS},
        started_at=ev.started_at, objections=tuple((o.kind, o.answered) for o in ev.objections))


@dataclass
class ManagerStats:
    """One manager's running totals per period, plus each call's contribution (for replacement).

    This is the value kept in the Faust table; ``to_dict``/``from_dict`` give its JSON form.
    """

    manager_id: str
    team_id: Optional[str] = None
    contributions: dict[str, dict[str, Any]] = field(default_factory=dict)
    # period -> step -> counter -> value
    totals: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    # period -> kind -> [raised, answered]
    objections: dict[str, dict[str, list[int]]] = field(default_factory=dict)

    def apply(self, outcome: CallOutcome) -> bool:
        """Add a call, replacing its earlier contribution. Returns False if nothing changed."""
        compact = outcome.to_compact()
        old = self.contributions.get(outcome.call_id)
        if old == compact:
            return False
        if old is not None:
            self._add(CallOutcome.from_compact(outcome.call_id, self.manager_id, old), -1)
        self._add(outcome, +1)
        self.contributions[outcome.call_id] = compact
        self.team_id = outcome.team_id or self.team_id
        return True

    def _add(self, o: CallOutcome, sign: int) -> None:
        counters = o.counters()
        for period in o.periods():
            steps = self.totals.setdefault(period, {})
            for step, c in counters.items():
                acc = steps.setdefault(step, dict.fromkeys(COUNTERS, 0))
                for k, v in c.items():
                    acc[k] = round(acc[k] + sign * v, 6)
            for kind, answered in o.objections:
                acc = self.objections.setdefault(period, {}).setdefault(kind, [0, 0])
                acc[0] += sign
                acc[1] += sign * int(answered)
                if acc == [0, 0]:  # keep the JSON form canonical: no empty kinds or periods
                    del self.objections[period][kind]
                    if not self.objections[period]:
                        del self.objections[period]
            if steps and all(v["calls"] == 0 for v in steps.values()):
                del self.totals[period]  # a period left empty by a replacement
                self.objections.pop(period, None)

    def to_dict(self) -> dict[str, Any]:
        return {"manager_id": self.manager_id, "team_id": self.team_id, "contributions": self.contributions,
                "totals": self.totals, "objections": self.objections}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ManagerStats":
        return cls(d["manager_id"], d.get("team_id"), d.get("contributions", {}), d.get("totals", {}),
                   d.get("objections", {}))


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
    team_score: Optional[float] = None
    team_conversion: Optional[float] = None

    @property
    def share(self) -> float:
        return self.occurred / self.calls if self.calls else 0.0

    @property
    def pass_rate(self) -> Optional[float]:
        return self.quality_passed / self.occurred if self.occurred else None

    @property
    def conversion(self) -> Optional[float]:
        return self.reached_next / self.occurred if self.occurred else None

    @property
    def score(self) -> Optional[float]:
        return self.score_sum / self.scored if self.scored else None

    @property
    def gap(self) -> Optional[float]:
        if self.score is None or self.team_score is None:
            return None
        return self.team_score - self.score


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
    def weak_calls(self) -> int:
        """How many calls the weak-stage figure rests on."""
        return self.stages[self.weak_stage].scored if self.weak_stage else 0


def reports_from(stats: Iterable[ManagerStats], min_calls: int, period: str = "all") -> dict[str, ManagerReport]:
    reports: dict[str, ManagerReport] = {}
    team: dict[tuple[Optional[str], str], list[float]] = {}
    for ms in stats:
        steps = ms.totals.get(period)
        if not steps:
            continue
        r = ManagerReport(ms.manager_id, ms.team_id, int(steps[STEPS[0]]["calls"]),
                          objections={k: list(v) for k, v in ms.objections.get(period, {}).items() if v[0]})
        for step in STEPS:
            c = steps.get(step, dict.fromkeys(COUNTERS, 0))
            r.stages[step] = StageStat(ms.manager_id, step, int(c["calls"]), int(c["occurred"]),
                                       int(c["quality_passed"]), int(c["reached_next"]), int(c["scored"]),
                                       float(c["score_sum"]))
            acc = team.setdefault((ms.team_id, step), [0.0, 0.0, 0.0, 0.0])
            acc[0] += c["score_sum"]
            acc[1] += c["scored"]
            acc[2] += c["reached_next"]
            acc[3] += c["occurred"]
        reports[ms.manager_id] = r
    for r in reports.values():
        r.enough_calls = r.calls >= min_calls
        for step, st in r.stages.items():
            acc = team[(r.team_id, step)]
            st.team_score = acc[0] / acc[1] if acc[1] else None
            st.team_conversion = acc[2] / acc[3] if acc[3] else None
        if r.enough_calls:
            gaps = [(st.gap, step) for step, st in r.stages.items() if st.gap is not None and st.gap > 1e-9]
            # ties go to the earlier step: fixing it helps every later one
            r.weak_stage = max(gaps, key=lambda g: (round(g[0], 9), -STEPS.index(g[1])))[1] if gaps else None
    return reports


def compute(outcomes: Iterable[CallOutcome], min_calls: int, period: str = "all") -> dict[str, ManagerReport]:
    return reports_from(aggregate(outcomes).values(), min_calls, period)

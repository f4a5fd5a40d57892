"""Weak-stage maths: pure functions over per-call step outcomes.

Each call contributes a score per step: 1 when the step was done well, 0.5 when
present but weak, 0 when missing. Objection handling is only scored on calls
where the client objected (a call without objections says nothing about it).
A manager's weak stage is the step with the largest shortfall of their mean
score against the team's pooled mean, once they have enough calls.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

from models.events import STEPS

CLIENT_DRIVEN = {"objection_handling"}


@dataclass(frozen=True)
class CallOutcome:
    call_id: str
    manager_id: str
    team_id: Optional[str]
    # step -> (present, quality) for every step in STEPS
    steps: dict[str, tuple[bool, Optional[str]]]


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
    weak_stage: Optional[str] = None
    enough_calls: bool = False

    @property
    def weak_gap(self) -> Optional[float]:
        return self.stages[self.weak_stage].gap if self.weak_stage else None


def step_score(step: str, present: bool, quality: Optional[str]) -> Optional[float]:
    if step in CLIENT_DRIVEN and not present:
        return None
    if not present:
        return 0.0
    if step in CLIENT_DRIVEN:
        return 1.0 if quality != "weak" else 0.0
    return 0.5 if quality == "weak" else 1.0


def compute(outcomes: Iterable[CallOutcome], min_calls: int) -> dict[str, ManagerReport]:
    reports: dict[str, ManagerReport] = {}
    team_sum: dict[tuple[Optional[str], str], list[float]] = {}
    for o in outcomes:
        r = reports.get(o.manager_id)
        if r is None:
            r = reports[o.manager_id] = ManagerReport(
                o.manager_id, o.team_id, 0, {s: StageStat(o.manager_id, s) for s in STEPS})
        r.calls += 1
        r.team_id = o.team_id or r.team_id
        for i, step in enumerate(STEPS):
            present, quality = o.steps.get(step, (False, None))
            st = r.stages[step]
            st.calls += 1
            if present:
                st.occurred += 1
                st.quality_passed += quality == "good"
                nxt = STEPS[i + 1] if i + 1 < len(STEPS) else None
                st.reached_next += bool(nxt and o.steps.get(nxt, (False, None))[0])
            sc = step_score(step, present, quality)
            if sc is not None:
                st.scored += 1
                st.score_sum += sc
                acc = team_sum.setdefault((o.team_id, step), [0.0, 0.0])
                acc[0] += sc
                acc[1] += 1
    for r in reports.values():
        r.enough_calls = r.calls >= min_calls
        for step, st in r.stages.items():
            acc = team_sum.get((r.team_id, step))
            st.team_score = acc[0] / acc[1] if acc and acc[1] else None
        if r.enough_calls:
            gaps = [(st.gap, step) for step, st in r.stages.items() if st.gap is not None and st.gap > 1e-9]
            # ties go to the earlier step: fixing it helps every later one
            r.weak_stage = max(gaps, key=lambda g: (round(g[0], 9), -STEPS.index(g[1])))[1] if gaps else None
    return reports

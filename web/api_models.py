"""The JSON API's shapes: FastAPI publishes them in /api/openapi.json, and the tests check every answer
against that document."""
from __future__ import annotations

from typing import Optional

from pydantic import BaseModel


class StepFigures(BaseModel):
    share: Optional[float]
    pass_rate: Optional[float]
    conversion: Optional[float]
    score: Optional[float]
    team_score: Optional[float]
    team_conversion: Optional[float]
    gap: Optional[float]
    gap_margin: Optional[float]
    calls: int


class ObjectionCount(BaseModel):
    raised: int
    answered: int


class Kpi(BaseModel):
    calls_per_day: Optional[float] = None
    talk_time_min: Optional[float] = None
    lead_response_median_min: Optional[float] = None
    hot_leads: Optional[int] = None
    hot_leads_within_15min: Optional[float] = None


class ManagerRow(BaseModel):
    manager_id: str
    manager_name: Optional[str]
    team_id: Optional[str]
    calls: int
    failed_calls: int
    enough_calls: bool
    weak_stage: Optional[str]
    weak_gap: Optional[float]
    weak_margin: Optional[float]
    weak_calls: int
    steps: dict[str, StepFigures]
    objections: dict[str, ObjectionCount]
    kpi: Kpi


class Managers(BaseModel):
    managers: list[ManagerRow]


class FlaggedRow(BaseModel):
    call_id: str
    started_at: str
    manager_id: str
    manager_name: Optional[str]
    team_id: Optional[str]
    flag: str
    detail: str
    at: Optional[float]
    link: str
    review: Optional[str]
    review_comment: Optional[str]
    reviewer: Optional[str]


class Flagged(BaseModel):
    flagged: list[FlaggedRow]


class Moment(BaseModel):
    call_id: str
    at: Optional[float]
    kind: str
    objection: str
    manager_said: str
    link: str


class CoachingRow(BaseModel):
    manager_id: str
    manager_name: Optional[str]
    team_id: Optional[str]
    objections: int
    answered: int
    answer_rate: Optional[float]
    team_answer_rate: Optional[float]
    shortfall: Optional[float]
    missed_kinds: dict[str, int]
    moments: list[Moment]


class Coaching(BaseModel):
    coaching: list[CoachingRow]


class Problem(BaseModel):
    detail: str


class FunnelFigures(BaseModel):
    leads: int
    hot_leads: int
    hot_due: int
    hot_called_in_time: int
    hot_in_time_share: Optional[float]
    hot_missed: int
    hot_median_delay_min: Optional[float]
    median_first_call_min: Optional[float]
    leads_called: int
    calls: int
    proposals: int
    invoices: int
    calls_per_lead: Optional[float]
    proposals_per_lead: Optional[float]
    won: int
    lost: int
    open: int
    conversion: Optional[float]
    revenue: dict[str, float]


class FunnelManager(FunnelFigures):
    manager_id: Optional[str]
    manager_name: Optional[str]
    team_id: Optional[str]


class FunnelTeam(FunnelFigures):
    team_id: Optional[str]


class FunnelReport(BaseModel):
    hot_lead_minutes: float
    managers: list[FunnelManager]
    teams: list[FunnelTeam]
    total: FunnelFigures


class Funnel(BaseModel):
    funnel: FunnelReport


class StepImpactRow(BaseModel):
    step: str
    leads_well: int
    won_well: int
    conversion_well: Optional[float]
    leads_not_well: int
    won_not_well: int
    conversion_not_well: Optional[float]
    difference: Optional[float]
    interval: Optional[list[float]]
    deals_lost: Optional[float]
    money_lost: Optional[float]
    verdict: str
    note: str


class StepImpactBlock(BaseModel):
    closed_leads: int
    won: int
    average_deal: Optional[float]
    currency: Optional[str]
    steps: list[StepImpactRow]
    costliest_step: Optional[str]
    conclusion: str


class StepImpactManager(StepImpactBlock):
    manager_id: Optional[str]
    manager_name: Optional[str]
    team_id: Optional[str]


class StepImpactReport(BaseModel):
    min_leads: int
    team: StepImpactBlock
    managers: list[StepImpactManager]


class StepImpact(BaseModel):
    step_impact: StepImpactReport

"""ORM tables (SQLAlchemy 2.x). Everything hangs off ``calls.call_id``."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Manager(Base):
    __tablename__ = "managers"
    manager_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    name: Mapped[Optional[str]] = mapped_column(String(200))
    team_id: Mapped[Optional[str]] = mapped_column(String(200), index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class Call(Base):
    __tablename__ = "calls"
    call_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    source: Mapped[str] = mapped_column(String(32))
    manager_id: Mapped[str] = mapped_column(ForeignKey("managers.manager_id"), index=True)
    team_id: Mapped[Optional[str]] = mapped_column(String(200), index=True)
    direction: Mapped[str] = mapped_column(String(16))
    client_number: Mapped[Optional[str]] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    duration_s: Mapped[Optional[float]] = mapped_column(Float)
    recording_url: Mapped[str] = mapped_column(Text)
    language: Mapped[Optional[str]] = mapped_column(String(8))
    # "tagged" once stored; "failed" when a stage gave up (error says why, stage says where).
    status: Mapped[str] = mapped_column(String(16), index=True)
    failed_stage: Mapped[Optional[str]] = mapped_column(String(16))
    error: Mapped[Optional[str]] = mapped_column(Text)
    furthest_step: Mapped[Optional[str]] = mapped_column(String(32))
    metrics: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)
    asr: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)
    lead: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)
    # The whole tagged event, so a call can be re-tagged without re-transcribing.
    event: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    segments: Mapped[list["SegmentRow"]] = relationship(cascade="all, delete-orphan", order_by="SegmentRow.idx")
    steps: Mapped[list["CallStep"]] = relationship(cascade="all, delete-orphan")
    objections: Mapped[list["ObjectionRow"]] = relationship(cascade="all, delete-orphan")
    flags: Mapped[list["FlagRow"]] = relationship(cascade="all, delete-orphan")


class SegmentRow(Base):
    __tablename__ = "segments"
    __table_args__ = (UniqueConstraint("call_id", "idx"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.call_id", ondelete="CASCADE"), index=True)
    idx: Mapped[int] = mapped_column(Integer)
    speaker: Mapped[str] = mapped_column(String(16))
    start: Mapped[float] = mapped_column(Float)
    end: Mapped[float] = mapped_column(Float)
    text: Mapped[str] = mapped_column(Text)
    avg_logprob: Mapped[Optional[float]] = mapped_column(Float)
    step: Mapped[Optional[str]] = mapped_column(String(32))
    evidence: Mapped[Optional[str]] = mapped_column(Text)


class CallStep(Base):
    __tablename__ = "call_steps"
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.call_id", ondelete="CASCADE"), primary_key=True)
    step: Mapped[str] = mapped_column(String(32), primary_key=True)
    present: Mapped[bool] = mapped_column(Boolean)
    first_at: Mapped[Optional[float]] = mapped_column(Float)
    quality: Mapped[Optional[str]] = mapped_column(String(16))
    reasons: Mapped[Optional[list[Any]]] = mapped_column(JSON)


class ObjectionRow(Base):
    __tablename__ = "objections"
    __table_args__ = (UniqueConstraint("call_id", "idx"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.call_id", ondelete="CASCADE"), index=True)
    idx: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(32))
    answered: Mapped[bool] = mapped_column(Boolean)
    at: Mapped[Optional[float]] = mapped_column(Float)
    answer: Mapped[Optional[str]] = mapped_column(Text)


class FlagRow(Base):
    __tablename__ = "flags"
    __table_args__ = (UniqueConstraint("call_id", "idx"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.call_id", ondelete="CASCADE"), index=True)
    idx: Mapped[int] = mapped_column(Integer)
    code: Mapped[str] = mapped_column(String(64), index=True)
    detail: Mapped[str] = mapped_column(Text)
    at: Mapped[Optional[float]] = mapped_column(Float)


class Review(Base):
    """A sales head's verdict on a flagged call; survives re-tagging (keyed by call and flag code)."""

    __tablename__ = "reviews"
    __table_args__ = (UniqueConstraint("call_id", "flag_code"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.call_id", ondelete="CASCADE"), index=True)
    flag_code: Mapped[str] = mapped_column(String(64))
    verdict: Mapped[str] = mapped_column(String(16))  # agree | disagree
    comment: Mapped[Optional[str]] = mapped_column(Text)
    reviewer: Mapped[Optional[str]] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ManagerStageStat(Base):
    """Per manager, step and period ("all", "week:2026-W48", "month:2026-11"): the SQL mirror of the
    worker's live statistics table; a replayed call replaces its contribution, never adds twice."""

    __tablename__ = "manager_stage_stats"
    manager_id: Mapped[str] = mapped_column(ForeignKey("managers.manager_id"), primary_key=True)
    step: Mapped[str] = mapped_column(String(32), primary_key=True)
    period: Mapped[str] = mapped_column(String(16), primary_key=True)  # "all" (weeks and months later)
    calls: Mapped[int] = mapped_column(Integer)
    occurred: Mapped[int] = mapped_column(Integer)
    quality_passed: Mapped[int] = mapped_column(Integer)
    reached_next: Mapped[int] = mapped_column(Integer)
    scored: Mapped[int] = mapped_column(Integer, default=0)
    score_sum: Mapped[float] = mapped_column(Float, default=0.0)
    share: Mapped[float] = mapped_column(Float)
    pass_rate: Mapped[Optional[float]] = mapped_column(Float)
    conversion: Mapped[Optional[float]] = mapped_column(Float)
    score: Mapped[Optional[float]] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class ManagerObjectionStat(Base):
    __tablename__ = "manager_objection_stats"
    manager_id: Mapped[str] = mapped_column(ForeignKey("managers.manager_id"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    period: Mapped[str] = mapped_column(String(16), primary_key=True)
    raised: Mapped[int] = mapped_column(Integer)
    answered: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

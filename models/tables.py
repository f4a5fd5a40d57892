"""ORM tables (SQLAlchemy 2.x). Everything hangs off ``calls.call_id``."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy import false as sa_false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(dt: Optional[datetime]) -> Optional[datetime]:
    """An aware UTC instant; a naive time is taken to be UTC already (what RFC 3339 without offset means here)."""
    if dt is None:
        return None
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


class UTCDateTime(TypeDecorator):
    """An instant, stored in UTC on every database and read back as an aware UTC datetime.

    SQLite has no time zone type: SQLAlchemy's DateTime(timezone=True) silently drops the offset
    there, so 10:05+03:00 came back as 10:05 UTC. Converting to UTC before binding makes SQLite,
    PostgreSQL, comparisons in filters and ordering all agree.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        value = as_utc(value)
        if value is not None and dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        return as_utc(value)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: UTCDateTime}


class Manager(Base):
    __tablename__ = "managers"
    manager_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    name: Mapped[Optional[str]] = mapped_column(String(200))
    # The team of the manager's most recent call (by started_at): a re-tag of an old call must not move
    # the manager back to an old team.
    team_id: Mapped[Optional[str]] = mapped_column(String(200), index=True)
    team_since: Mapped[Optional[datetime]] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Call(Base):
    __tablename__ = "calls"
    call_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    source: Mapped[str] = mapped_column(String(32))
    manager_id: Mapped[str] = mapped_column(ForeignKey("managers.manager_id"), index=True)
    team_id: Mapped[Optional[str]] = mapped_column(String(200), index=True)
    direction: Mapped[str] = mapped_column(String(16))
    client_number: Mapped[Optional[str]] = mapped_column(String(64))
    # client_number in E.164 (pipeline/phones.py): what calls are joined to CRM leads on
    client_phone: Mapped[Optional[str]] = mapped_column(String(32), index=True)
    started_at: Mapped[datetime] = mapped_column(index=True)
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
    # Which version of the call is stored: a store only replaces an older one. published_at is when
    # the calls.recorded event was published (a newer upload wins), tagged_at when it was tagged (a
    # re-tag wins); revision counts the stores, and orders the statistics updates they send.
    published_at: Mapped[Optional[datetime]] = mapped_column()
    tagged_at: Mapped[Optional[datetime]] = mapped_column()
    revision: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

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
    # present only through the learned tagger's unsure turns: left out of the statistics (StepResult)
    uncertain: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())


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
    """A sales head's verdict on one flag of a call: the flag is its code and its moment (flag_at).

    Rows are never overwritten: a new verdict on the same flag makes the older one not current, so the
    history stays. A re-tag that moves or drops the flag leaves the verdict attached to nothing shown
    (it is matched by code and moment), never to a different moment.
    """

    __tablename__ = "reviews"
    __table_args__ = (Index("ix_reviews_flag", "call_id", "flag_code", "flag_at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.call_id", ondelete="CASCADE"), index=True)
    flag_code: Mapped[str] = mapped_column(String(64))
    flag_at: Mapped[Optional[float]] = mapped_column(Float)
    current: Mapped[bool] = mapped_column(Boolean, default=True)
    verdict: Mapped[str] = mapped_column(String(16))  # agree | disagree
    comment: Mapped[Optional[str]] = mapped_column(Text)
    reviewer: Mapped[Optional[str]] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Correction(Base):
    """A head's or trainer's correction of one tag of a call: a segment's step, or the kind or the
    answered/unanswered of the objection a segment raised. ``text`` is the segment as it read when
    corrected: after a new transcription the correction applies only where the text is still the same.
    Rows are never overwritten: a newer correction of the same thing makes the older not current."""

    __tablename__ = "corrections"
    __table_args__ = (Index("ix_corrections_target", "call_id", "segment", "field"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.call_id", ondelete="CASCADE"), index=True)
    segment: Mapped[int] = mapped_column(Integer)
    field: Mapped[str] = mapped_column(String(32))  # step | objection_kind | objection_answered
    value: Mapped[Optional[str]] = mapped_column(String(64))  # a step, a kind, "yes"/"no"; null: no step
    previous: Mapped[Optional[str]] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text)
    current: Mapped[bool] = mapped_column(Boolean, default=True)
    username: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ManagerStageStat(Base):
    """Per manager, team, step and period ("all", "week:2026-W48", "month:2026-11"): the SQL mirror of
    the worker's live statistics table; a replayed call replaces its contribution, never adds twice.
    team_id is the team the calls were made in ("" for none), so a team's figures count each call
    under the team it was made in, whichever team the manager is in now."""

    __tablename__ = "manager_stage_stats"
    __table_args__ = (Index("ix_manager_stage_stats_period", "manager_id", "period"),)  # rewritten by period
    manager_id: Mapped[str] = mapped_column(ForeignKey("managers.manager_id"), primary_key=True)
    team_id: Mapped[str] = mapped_column(String(200), primary_key=True, default="")
    step: Mapped[str] = mapped_column(String(32), primary_key=True)
    period: Mapped[str] = mapped_column(String(16), primary_key=True)  # "all", "week:2026-W48", "month:2026-11"
    calls: Mapped[int] = mapped_column(Integer)
    occurred: Mapped[int] = mapped_column(Integer)
    quality_passed: Mapped[int] = mapped_column(Integer)
    reached_next: Mapped[int] = mapped_column(Integer)
    scored: Mapped[int] = mapped_column(Integer, default=0)
    score_sum: Mapped[float] = mapped_column(Float, default=0.0)
    score_sq: Mapped[float] = mapped_column(Float, default=0.0)
    share: Mapped[float] = mapped_column(Float)
    pass_rate: Mapped[Optional[float]] = mapped_column(Float)
    conversion: Mapped[Optional[float]] = mapped_column(Float)
    score: Mapped[Optional[float]] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ManagerObjectionStat(Base):
    __tablename__ = "manager_objection_stats"
    __table_args__ = (Index("ix_manager_objection_stats_period", "manager_id", "period"),)
    manager_id: Mapped[str] = mapped_column(ForeignKey("managers.manager_id"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    period: Mapped[str] = mapped_column(String(16), primary_key=True)
    raised: Mapped[int] = mapped_column(Integer)
    answered: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Outbox(Base):
    """Messages a store must send, written in the store's transaction and marked once Kafka acknowledged
    them: a worker dying between the commit and the send loses nothing (the next worker sends them)."""

    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))  # stats (calls.stored) | flagged (calls.flagged)
    key: Mapped[str] = mapped_column(String(200))
    value: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[Optional[datetime]] = mapped_column(index=True)


class User(Base):
    """Someone who logs into the web app (or calls the JSON API with a token).

    role: admin (everything, users) | head (their teams: everything, verdicts) | trainer (their teams:
    statistics, coaching, calls, corrections) | manager (only their own calls: manager_id)."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    teams: Mapped[list[Any]] = mapped_column(JSON, default=list)
    manager_id: Mapped[Optional[str]] = mapped_column(String(200))
    language: Mapped[Optional[str]] = mapped_column(String(8))  # ru | en; None: the browser's Accept-Language
    timezone: Mapped[Optional[str]] = mapped_column(String(64))  # IANA name; None: CALLQA_TIMEZONE
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class UserSession(Base):
    """A logged-in browser. The cookie carries the session id (signed); only its SHA-256 is stored."""

    __tablename__ = "user_sessions"
    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()


class ApiToken(Base):
    """A user's token for the JSON API (BI tools): same rights as the user. Only its SHA-256 is stored."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[Optional[str]] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[Optional[datetime]] = mapped_column()


class LoginFailure(Base):
    """A wrong password (or unknown user): counted per username and per address to lock out guessing."""

    __tablename__ = "login_failures"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(100), index=True)
    address: Mapped[str] = mapped_column(String(64), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class AuditEntry(Base):
    """Who did what: verdicts, corrections, logins, user changes. Never updated or deleted by callqa."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    user_id: Mapped[Optional[int]] = mapped_column(Integer)
    username: Mapped[Optional[str]] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(32))
    call_id: Mapped[Optional[str]] = mapped_column(String(200), index=True)
    detail: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)


# ---- CRM: leads and deals, joined to calls by the client's phone (pipeline/crm.py) ---------------

class CrmLead(Base):
    """A CRM lead (``lead_key`` = ``<crm>:<lead id>``). A row can exist before its LeadCreated (a deal
    closed first): then ``created_at`` is null and the lead is left out of the reports until it comes."""

    __tablename__ = "crm_leads"
    lead_key: Mapped[str] = mapped_column(String(250), primary_key=True)
    crm: Mapped[str] = mapped_column(String(16))
    lead_id: Mapped[str] = mapped_column(String(200))
    source: Mapped[Optional[str]] = mapped_column(String(200))
    temperature: Mapped[Optional[str]] = mapped_column(String(8))
    manager_id: Mapped[Optional[str]] = mapped_column(String(200), index=True)
    manager_name: Mapped[Optional[str]] = mapped_column(String(200))
    team_id: Mapped[Optional[str]] = mapped_column(String(200), index=True)
    title: Mapped[Optional[str]] = mapped_column(Text)
    created_at: Mapped[Optional[datetime]] = mapped_column(index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class CrmLeadEvent(Base):
    """Every CRM event once (keyed by its event_id, so a replay adds nothing): statuses, proposals,
    invoices and deal outcomes are read from here."""

    __tablename__ = "crm_lead_events"
    event_id: Mapped[str] = mapped_column(String(300), primary_key=True)
    lead_key: Mapped[str] = mapped_column(String(250), index=True)
    type: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column()
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class CrmLeadPhone(Base):
    __tablename__ = "crm_lead_phones"
    lead_key: Mapped[str] = mapped_column(String(250), primary_key=True)
    phone: Mapped[str] = mapped_column(String(32), primary_key=True, index=True)


class CrmLeadCall(Base):
    """Which lead a call belongs to (at most one): recomputed per phone by the join, so the same facts
    in any order give the same links."""

    __tablename__ = "crm_lead_calls"
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.call_id", ondelete="CASCADE"), primary_key=True)
    lead_key: Mapped[str] = mapped_column(String(250), index=True)
    phone: Mapped[str] = mapped_column(String(32), index=True)
    linked_at: Mapped[datetime] = mapped_column(default=utcnow)

"""Event schemas on Kafka, one place for each shape (see design.md, "Events").

Every event carries ``schema_version``; unknown fields are kept (``extra="allow"``)
so a newer producer never loses data passing through an older worker.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION = 1

STEPS: tuple[str, ...] = (
    "greeting",
    "needs_discovery",
    "presentation",
    "objection_handling",
    "closing",
)
Step = Literal["greeting", "needs_discovery", "presentation", "objection_handling", "closing"]
Speaker = Literal["manager", "client", "unknown"]
Source = Literal["twilio", "asterisk", "freeswitch", "zadarma", "mango", "generic"]
ObjectionKind = Literal[
    "price", "supplier", "think", "timing", "trust", "no_need", "send_info", "other"
]


class _Event(BaseModel):
    model_config = ConfigDict(extra="allow")


class Channels(_Event):
    layout: Literal["stereo", "mono"] = "stereo"
    # Which channel carries the manager; null for mono or when unknown.
    manager_channel: Optional[Literal[0, 1]] = 0
    # Set by transcription from the audio (pipeline.channels): one party per channel ("stereo"), the same
    # call on both ("duplicate"), one silent channel ("one_channel") or a mono file ("mono"); with the
    # correlations it was decided on.
    detected: Optional[Literal["stereo", "duplicate", "one_channel", "mono"]] = None
    correlation: Optional[float] = None
    envelope_correlation: Optional[float] = None


class Lead(_Event):
    id: str
    created_at: Optional[datetime] = None
    temperature: Optional[Literal["hot", "warm", "cold"]] = None


class CallRecorded(_Event):
    schema_version: int = SCHEMA_VERSION
    call_id: str = Field(min_length=1, max_length=200)
    source: Source = "generic"
    manager_id: str = Field(min_length=1, max_length=200)
    # bounded as their columns are (models/tables.py): a longer value is refused here, with its reason,
    # not by the database at the store, after retries and with no failed call recorded
    manager_name: Optional[str] = Field(None, max_length=200)
    team_id: Optional[str] = Field(None, max_length=200)
    direction: Literal["inbound", "outbound"] = "outbound"
    client_number: Optional[str] = Field(None, max_length=64)
    started_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    duration_s: Optional[float] = None
    recording_url: str
    channels: Channels = Field(default_factory=Channels)
    language: Literal["ru", "en", "auto"] = "auto"
    lead: Optional[Lead] = None
    # When this event was published on calls.recorded (set by the worker from the Kafka timestamp):
    # of two versions of one call, the store keeps the later one, however the transcriptions finished.
    published_at: Optional[datetime] = None

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        # a newer producer's event may mean something this worker would get wrong: refused, it waits in
        # calls.dlq to be replayed once the workers are upgraded
        if not 1 <= v <= SCHEMA_VERSION:
            raise ValueError(f"schema_version {v} is not one this worker reads (1 to {SCHEMA_VERSION}): upgrade "
                             "callqa, then replay the event from calls.dlq")
        return v

    @field_validator("recording_url")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        if not v.startswith(("file://", "https://", "http://", "s3://")):
            raise ValueError("recording_url must start with file://, https://, http:// or s3://")
        return v


class Word(_Event):
    start: float
    end: float
    word: str
    probability: float = 1.0


class Segment(_Event):
    speaker: Speaker
    voice: Optional[int] = None  # mono calls: the diarized voice (0, 1, 2) the role was given to
    start: float
    end: float
    text: str
    avg_logprob: float = 0.0
    words: list[Word] = Field(default_factory=list)


class AsrInfo(_Event):
    engine: str
    model: str
    compute_type: str
    audio_s: float
    wall_s: float


class Roles(_Event):
    """How manager and client were told apart: by channel, or by voice and content (pipeline.roles)."""
    method: Literal["channels", "diarization", "none"]
    voices: int = 0
    confidence: Optional[float] = None  # that the manager is the manager (diarization)
    uncertain: bool = False             # then the speaker-dependent metrics are left out
    voice_similarity: Optional[float] = None  # cosine of the two main voices (1.0: one voice)
    reason: Optional[str] = None        # why "none" (e.g. the speaker encoder is not installed)


class CallTranscribed(CallRecorded):
    language_detected: Optional[str] = Field(None, max_length=8)  # calls.language
    segments: list[Segment] = Field(default_factory=list)
    asr: AsrInfo
    roles: Optional[Roles] = None


class UtteranceTag(_Event):
    segment: int
    step: Optional[Step] = None
    # Every step the segment shows, primary first (the guideline's per_turn_all).
    steps: list[Step] = Field(default_factory=list)
    evidence: Optional[str] = None
    # the learned tagger's probability of its step (of no step, when step is null); None from the rules
    prob: Optional[float] = None
    uncertain: bool = False  # prob under the model's threshold: shown, but not counted in statistics
    corrected_by: Optional[str] = None  # the step is a person's correction (pipeline.corrections)


class StepResult(_Event):
    present: bool = False
    first_at: Optional[float] = None
    quality: Optional[Literal["good", "weak", "missing"]] = None
    reasons: list[str] = Field(default_factory=list)
    # Present only through turns the learned tagger was unsure of: shown on the call, but left out of the
    # manager's statistics for this step, so a guess never moves a weak-stage figure.
    uncertain: bool = False


class Objection(_Event):
    text: str
    kind: ObjectionKind = "other"
    answered: bool = False
    at: Optional[float] = None
    segment: Optional[int] = None
    answer: Optional[str] = None


class Metrics(_Event):
    # The speaker-dependent ones are null when the call's roles are uncertain: left out, not guessed.
    talk_ratio: Optional[float] = None
    longest_monologue_s: Optional[float] = 0.0
    manager_questions: Optional[int] = 0
    interruptions: Optional[int] = 0
    silence_share: Optional[float] = None


class Flag(_Event):
    code: str = Field(max_length=64)  # flags.code
    detail: str = ""
    at: Optional[float] = None


class Tagging(_Event):
    """What the tagger adds to a transcribed call (pipeline.tagging.tag_call returns it)."""

    utterance_tags: list[UtteranceTag] = Field(default_factory=list)
    steps: dict[str, StepResult] = Field(default_factory=dict)
    furthest_step: Optional[Step] = None
    objections: list[Objection] = Field(default_factory=list)
    metrics: Metrics = Field(default_factory=Metrics)
    flags: list[Flag] = Field(default_factory=list)
    # When tagging ran: a re-tag of the same recording replaces an older tagging, never the reverse.
    tagged_at: Optional[datetime] = None


class CallTagged(CallTranscribed, Tagging):
    pass


class DeadLetter(_Event):
    """What a stage could not process: the original event, untouched, and why."""

    schema_version: int = SCHEMA_VERSION
    call_id: Optional[str] = None
    stage: Literal["ingest", "transcribe", "tag", "store", "crm"]
    error: str
    error_type: str = "Error"
    original: str  # the raw event as received (text), so it can be replayed
    # set when ``original`` is only the start of an event too large to fit in a dead letter: its size
    original_bytes: Optional[int] = None
    failed_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))


class CallFlagged(_Event):
    """On calls.flagged when a stored call gets a flag it did not have, for CRMs and chat bots."""

    schema_version: int = SCHEMA_VERSION
    call_id: str
    manager_id: str
    manager_name: Optional[str] = None
    team_id: Optional[str] = None
    started_at: datetime
    recording_url: str
    new_flags: list[str]
    flags: list[Flag]
    furthest_step: Optional[Step] = None


class StatsUpdate(_Event):
    """On calls.stored (key = manager_id) after a store: add a call's contribution to its manager's
    statistics, or retract it from a manager the call no longer belongs to. ``revision`` is the store's
    count for the call, so an update arriving late never undoes a newer one."""

    schema_version: int = SCHEMA_VERSION
    op: Literal["apply", "retract"]
    call_id: str
    manager_id: str
    revision: int
    outcome: Optional[dict] = None  # pipeline.stats.CallOutcome.to_compact(), for "apply"

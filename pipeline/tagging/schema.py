"""The shape of the tagger's trainer-editable YAML (lexicons and flag settings).

Kept apart from loading (``rules``) and matching (``matcher``) so both can depend on it
without depending on each other.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

LANGUAGES = ("en", "ru")

# Cue categories a lexicon may define (see the comments in config/lexicon/en.yaml).
CUE_CATEGORIES = (
    "greeting",          # hello, my name is, X from Y, is it convenient to talk
    "greeting_question",  # how can I help you (rule 5: greeting, not needs)
    "needs_question",    # manager questions about the client's situation / budget / volumes
    "needs_statement",   # client statements of need ("I'm looking for", "our budget is")
    "presentation",      # the offer: we have, I recommend, it costs, includes
    "product_question",  # client questions about the product / price before a decision
    "closing",           # concrete next step / commitment (order, meeting, contract, invoice)
    "closing_send",      # send the KP / price list / quote / info to e-mail
    "closing_accept",    # client agreement to a proposed next step (agreed, deal)
    "concrete_time",     # a date or time that makes a next step concrete
    "vague_next_step",   # keep in touch / будем на связи (not a closing by itself)
    "hold",              # let me check, one moment
    "connection",        # hello? can you hear me?
    "farewell",          # thanks, bye
    "navigation",        # gatekeeper: put me through, is the director in
    "service",           # support/service problem talk (negative control)
)
OBJECTION_KINDS = ("price", "supplier", "think", "timing", "trust", "no_need", "send_info", "other")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CueList(_Strict):
    phrases: list[str] = Field(default_factory=list)
    patterns: list[str] = Field(default_factory=list)


class Lexicon(_Strict):
    language: str
    question_words: list[str] = Field(default_factory=list)
    cues: dict[str, CueList] = Field(default_factory=dict)
    objections: dict[str, CueList] = Field(default_factory=dict)


class FlagToggle(_Strict):
    enabled: bool = True


class NoClosingFlag(FlagToggle):
    min_call_s: float = Field(120.0, ge=0)


class LongMonologueFlag(FlagToggle):
    max_s: float = Field(60.0, gt=0)


class HighTalkRatioFlag(FlagToggle):
    max_percent: float = Field(70.0, gt=0, le=100)
    min_speech_s: float = Field(30.0, ge=0)


class NoNeedsFlag(FlagToggle):
    min_call_s: float = Field(30.0, ge=0)


class FlagSettings(_Strict):
    unanswered_objection: FlagToggle = Field(default_factory=FlagToggle)
    no_needs_discovery: NoNeedsFlag = Field(default_factory=NoNeedsFlag)
    no_closing_attempt: NoClosingFlag = Field(default_factory=NoClosingFlag)
    long_monologue: LongMonologueFlag = Field(default_factory=LongMonologueFlag)
    high_talk_ratio: HighTalkRatioFlag = Field(default_factory=HighTalkRatioFlag)
    presentation_before_needs: FlagToggle = Field(default_factory=FlagToggle)
    vague_next_step: FlagToggle = Field(default_factory=FlagToggle)


class QualitySettings(_Strict):
    needs_questions_good: int = Field(2, ge=1)


class MetricSettings(_Strict):
    monologue_gap_s: float = Field(2.0, ge=0)
    interruption_min_overlap_s: float = Field(0.3, ge=0)


class FlagsConfig(_Strict):
    flags: FlagSettings = Field(default_factory=FlagSettings)
    quality: QualitySettings = Field(default_factory=QualitySettings)
    metrics: MetricSettings = Field(default_factory=MetricSettings)
    dialogue_turn_s: float = Field(3.0, gt=0)

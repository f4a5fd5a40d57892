"""People correct the tagger: a segment's step, an objection's kind, answered or not.

A correction is stored with who made it and when (and an audit entry by the caller); the newest of one
thing is current. ``callqa retag`` applies the current ones (they win over the rules and the model), and
``callqa train`` learns from every corrected call: its turns labelled with the stored tags, the corrected
ones replaced by what people said.
"""
from __future__ import annotations

from datetime import datetime
from typing import Iterable, Optional

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from models.events import STEPS, CallTagged
from models.tables import Call, Correction, utcnow
from pipeline.tagging.call import Overrides
from pipeline.tagging.schema import OBJECTION_KINDS

FIELDS = ("step", "objection_kind", "objection_answered")


class CorrectionError(ValueError):
    """A correction that cannot be stored; the message says why."""


def _check(field: str, value: Optional[str]) -> Optional[str]:
    if field == "step":
        if value in (None, "", "none"):
            return None
        if value not in STEPS:
            raise CorrectionError(f"step {value!r}: use one of {', '.join(STEPS)} or none")
        return value
    if field == "objection_kind":
        if value not in OBJECTION_KINDS:
            raise CorrectionError(f"objection kind {value!r}: use one of {', '.join(OBJECTION_KINDS)}")
        return value
    if field == "objection_answered":
        if value not in ("yes", "no"):
            raise CorrectionError("answered: yes or no")
        return value
    raise CorrectionError(f"cannot correct {field!r}: {', '.join(FIELDS)}")


def record_correction(session: Session, call_id: str, segment: int, field: str, value: Optional[str],
                      username: str, at: Optional[datetime] = None) -> Correction:
    """Store a correction of the call's current tags (the caller checked that the user may)."""
    value = _check(field, value)
    call = session.get(Call, call_id)
    if call is None or not call.event:
        raise CorrectionError(f"no stored call {call_id!r}")
    ev = CallTagged.model_validate(call.event)
    if not 0 <= segment < len(ev.segments):
        raise CorrectionError(f"call {call_id} has no segment {segment} (0-{len(ev.segments) - 1})")
    if field == "step":
        tag = next((t for t in ev.utterance_tags if t.segment == segment), None)
        previous = tag.step if tag else None
    else:
        obj = next((o for o in ev.objections if o.segment == segment), None)
        if obj is None:
            raise CorrectionError(f"segment {segment} of {call_id} raised no objection: correct its step first")
        previous = obj.kind if field == "objection_kind" else ("yes" if obj.answered else "no")
    session.execute(update(Correction).where(Correction.call_id == call_id, Correction.segment == segment,
                                             Correction.field == field, Correction.current.is_(True))
                    .values(current=False))
    row = Correction(call_id=call_id, segment=segment, field=field, value=value, previous=previous,
                     text=ev.segments[segment].text, current=True, username=username, created_at=at or utcnow())
    session.add(row)
    session.flush()
    return row


def current_corrections(session: Session, call_ids: Optional[Iterable[str]] = None) -> dict[str, list[Correction]]:
    q = select(Correction).where(Correction.current.is_(True)).order_by(Correction.created_at, Correction.id)
    if call_ids is not None:
        q = q.where(Correction.call_id.in_(list(call_ids)))
    out: dict[str, list[Correction]] = {}
    for c in session.scalars(q):
        out.setdefault(c.call_id, []).append(c)
    return out


def overrides_for(ev: CallTagged, corrections: list[Correction]) -> Overrides:
    """The corrections that still fit the call's transcript (same segment, same text) as tag overrides."""
    ov = Overrides()
    for c in corrections:
        if not 0 <= c.segment < len(ev.segments) or ev.segments[c.segment].text != c.text:
            continue  # transcribed again since: the segment is not the one corrected
        if c.field == "step":
            ov.steps[c.segment] = c.value
        elif c.field == "objection_kind":
            ov.objection_kinds[c.segment] = c.value
        else:
            ov.objection_answered[c.segment] = c.value == "yes"
        ov.by[c.segment] = c.username
    return ov


def corrected_dialogues(session: Session) -> list[dict]:
    """Every call with a current step correction, as a training dialogue (the corpus format, split train)."""
    found = current_corrections(session)
    out = []
    for call_id, rows in found.items():
        if not any(r.field == "step" for r in rows):
            continue
        call = session.get(Call, call_id)
        if call is None or not call.event:
            continue
        ev = CallTagged.model_validate(call.event)
        ov = overrides_for(ev, rows)
        if not ov.steps:
            continue
        steps = {t.segment: t.step for t in ev.utterance_tags}
        steps.update(ov.steps)
        out.append({"id": f"correction-{call_id}", "language": ev.language_detected or ev.language,
                    "split": "train", "source": {"kind": "corrections", "call_id": call_id},
                    "turns": [{"speaker": s.speaker, "text": s.text} for s in ev.segments],
                    "labels": {"per_turn": [steps.get(i) for i in range(len(ev.segments))]}})
    return out

"""Tagging a transcribed call into a CallTagged event (the worker's tag stage and `callqa retag`)."""
from __future__ import annotations

from datetime import datetime, timezone

from models.events import CallTagged, CallTranscribed

from .call import Overrides, tag_call
from .rules import Rules


def retag(ev: CallTranscribed, rules: Rules, model=None, overrides: Overrides | None = None) -> CallTagged:
    # A stored CallTagged is a CallTranscribed plus tags: drop the old tags, keep the transcript.
    base = ev
    if type(ev) is not CallTranscribed or _TAG_FIELDS & set(ev.model_extra or ()):
        base = CallTranscribed.model_validate(ev.model_dump(exclude=_TAG_FIELDS))
    result = tag_call(base.segments, base.language_detected or base.language, base.duration_s, rules, model,
                      speakers_reliable=not (base.roles and base.roles.uncertain), overrides=overrides)
    # tagged_at orders taggings of one recording: the store keeps the newest. The parts are passed as the
    # validated models they are (not dumped and parsed again): pydantic keeps such instances as they are,
    # and re-validating every word timestamp of the transcript was a third of the tag stage's cost.
    return CallTagged.model_validate({**dict(base), **dict(result), "tagged_at": datetime.now(timezone.utc)})


_TAG_FIELDS = set(CallTagged.model_fields) - set(CallTranscribed.model_fields)

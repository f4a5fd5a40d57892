"""Why each segment got its step, for trainers who edit the phrase lists.

An explanation holds, per segment, a list of entries in the order they acted. Each entry has a
``source``:

* ``lexicon``: a phrase or pattern of a lexicon category matched, and the step it argues for
  given the speaker; ``counted`` is False when it matched but could not count (a manager-only
  category said by the client, or a phrase lying inside a longer phrase of another category);
* ``context``: a context rule of the tagger changed the result (the ids are listed in
  ``CONTEXT_RULES`` and documented in ``config/lexicon/CONTEXT_RULES.md``);
* ``model``: what the learned step model said (its step, probability, the nearest labelled example,
  and what the rules alone would have given), when the call is tagged with one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, Field

from models.events import CallTagged, Segment

from .call import _resolve_language, tag_call_detailed
from .rules import Rules, default_rules
from .tagger import CONTEXT_RULES

# What a lexicon category argues for, by speaker. None: the category shapes a decision without
# being a step by itself (a date, an acceptance, a farewell...).
_CUE_STEP = {
    "greeting": ("greeting", None), "greeting_question": ("greeting", None),
    "needs_question": ("needs_discovery", "manager"), "needs_statement": ("needs_discovery", "client"),
    "presentation": ("presentation", "manager"), "product_question": ("presentation", "client"),
    "closing": ("closing", None), "closing_send": ("closing", None),
}
_CUE_ROLE = {
    "closing_accept": "an acceptance: makes a client turn after a closing proposal a closing",
    "concrete_time": "a date or time: makes a next step concrete",
    "vague_next_step": "a vague next step: not a closing by itself (guideline rule 9)",
    "hold": "a hold: no step", "connection": "a connection check: no step", "farewell": "a farewell: no step",
    "navigation": "gatekeeper navigation: no step", "service": "service talk: counts towards a service call",
}


class Entry(BaseModel):
    source: Literal["lexicon", "context", "model"]
    name: str                       # "cues.closing" / "objections.price", a context rule id, a model name
    detail: str                     # one line for people
    step: Optional[str] = None      # the step this entry argues for or sets, if any
    counted: bool = True
    data: dict[str, Any] = Field(default_factory=dict)


class SegmentExplanation(BaseModel):
    segment: int
    speaker: str
    start: float
    text: str
    step: Optional[str] = None
    steps: list[str] = Field(default_factory=list)
    no_step_reason: Optional[str] = None
    stored_step: Optional[str] = None   # explain_stored: the step the stored call has
    entries: list[Entry] = Field(default_factory=list)

    @property
    def differs(self) -> bool:
        return self.stored_step != self.step


class CallExplanation(BaseModel):
    language: str
    rules_source: str
    furthest_step: Optional[str] = None
    compared_with_stored: bool = False
    segments: list[SegmentExplanation] = Field(default_factory=list)

    @property
    def changed(self) -> list[SegmentExplanation]:
        return [s for s in self.segments if self.compared_with_stored and s.differs]


def _lexicon_entries(tag, speaker: str, lex_file: str) -> list[Entry]:
    out: list[Entry] = []
    for key, hits in tag.hits.items():
        section, name = key.split(":", 1)
        for h in hits:
            kind, written = h.source
            where = f"{'cues' if section == 'cue' else 'objections'}.{name}"
            matched = f'"{h.evidence}" matched {kind} "{written}"' if written else f'"{h.evidence}" matched'
            data = {"list": where, kind or "phrase": written, "evidence": h.evidence, "at_char": h.pos,
                    "file": lex_file}
            if section == "obj":
                ok = speaker != "manager"
                out.append(Entry(source="lexicon", name=where, step="objection_handling" if ok else None,
                                 counted=ok, data=data,
                                 detail=f"{matched} -> objection ({name})" if ok
                                 else f"{matched}, but objections count only for the client"))
                continue
            step, only = _CUE_STEP.get(name, (None, None))
            if step is None:
                out.append(Entry(source="lexicon", name=where, data=data,
                                 detail=f"{matched}: {_CUE_ROLE.get(name, name)}"))
            elif only and speaker not in (only, "unknown"):
                out.append(Entry(source="lexicon", name=where, counted=False, data=data,
                                 detail=f"{matched}, but {where} counts only for the {only}"))
            else:
                out.append(Entry(source="lexicon", name=where, step=step, data=data, detail=f"{matched} -> {step}"))
    for key, h, key2, h2 in tag.dropped:
        where = f"{'cues' if key.startswith('cue:') else 'objections'}.{key.split(':', 1)[1]}"
        where2 = f"{'cues' if key2.startswith('cue:') else 'objections'}.{key2.split(':', 1)[1]}"
        out.append(Entry(source="lexicon", name=where, counted=False,
                         data={"list": where, h.source[0] or "phrase": h.source[1], "evidence": h.evidence,
                               "at_char": h.pos, "file": lex_file, "overruled_by": where2},
                         detail=f'"{h.evidence}" matched {h.source[0]} "{h.source[1]}", but lies inside the longer '
                                f'"{h2.evidence}" of {where2}, which wins'))
    out.sort(key=lambda e: (not e.counted, e.data["at_char"], -len(e.data["evidence"])))
    return out


def explain_call(segments: list[Segment], language: str, rules: Optional[Rules] = None,
                 duration_s: Optional[float] = None, model=None) -> CallExplanation:
    """Tag the segments with the given rules (and model) and say, per segment, what decided its step."""
    rules = rules or default_rules()
    segs = list(segments)
    lang = _resolve_language(language, segs)
    tagging, tags = tag_call_detailed(segs, lang, duration_s, rules, model)
    lex_file = str(Path(rules.source or "") / "lexicon" / f"{lang}.yaml")
    out = []
    for i, (seg, tag) in enumerate(zip(segs, tags)):
        entries = _lexicon_entries(tag, seg.speaker, lex_file)
        entries += [Entry(source="context", name=rule, detail=effect,
                          step=None if effect.startswith("no step") else _leading_step(effect),
                          data={"rule": CONTEXT_RULES.get(rule, "")})
                    for rule, effect in tag.rules]
        if tag.model is not None:
            p = tag.model
            said = f"{p.step or 'no step'} (p={p.prob:.2f}{', uncertain' if p.uncertain else ''})"
            rules_said = tag.rule_step or "no step"
            entries.append(Entry(
                source="model", name=f"step model {model.meta.get('version', '')}".strip(), step=p.step,
                detail=said + (f'; like the labelled example "{p.like}"' if p.like else "")
                + ("" if rules_said == (p.step or "no step") else f"; the rules alone said {rules_said}"),
                data={"scores": p.probs, "rule_step": tag.rule_step}))
        out.append(SegmentExplanation(segment=i, speaker=seg.speaker, start=seg.start, text=seg.text,
                                      step=tag.step, steps=list(tag.steps), no_step_reason=tag.null_reason,
                                      entries=entries))
    for ob in tagging.objections:
        if ob.segment is None:
            continue
        seg = out[ob.segment]
        seg.entries.append(Entry(
            source="context", name="objection-answered" if ob.answered else "objection-unanswered",
            data={"rule": CONTEXT_RULES["objection-answered" if ob.answered else "objection-unanswered"]},
            detail=(f'answered by the manager: "{ob.answer}"' if ob.answered else
                    "not answered: the manager's next turn is not objection handling "
                    "(or there is none)")))
    return CallExplanation(language=lang, rules_source=str(rules.source or ""), furthest_step=tagging.furthest_step,
                           segments=out)


def explain_stored(event: CallTagged, rules: Optional[Rules] = None, model=None) -> CallExplanation:
    """Explain a stored call with the given (current) rules and model, noting where the stored tags differ."""
    ex = explain_call(event.segments, event.language_detected or event.language, rules, event.duration_s, model)
    stored = {u.segment: u.step for u in event.utterance_tags}
    for s in ex.segments:
        s.stored_step = stored.get(s.segment)
    ex.compared_with_stored = True
    return ex


def _leading_step(effect: str) -> Optional[str]:
    """The step a context rule set, from its effect text ("closing -> presentation: ..." or "closing: ...")."""
    head = effect.split(":", 1)[0].split("->")[-1].strip().split(" ")[0].rstrip(",")
    return head if head in ("greeting", "needs_discovery", "presentation", "objection_handling", "closing") else None


def _mmss(t: float) -> str:
    return f"{int(t // 60)}:{int(t % 60):02d}"


def render_text(ex: CallExplanation, only: Optional[set[int]] = None) -> str:
    """The explanation as plain text, one block per segment."""
    lines = [f"language {ex.language}; rules from {ex.rules_source or 'the packaged config/'}"]
    for s in ex.segments:
        if only is not None and s.segment not in only:
            continue
        step = s.step or f"no step{f' ({s.no_step_reason})' if s.no_step_reason else ''}"
        also = f" (also {', '.join(s.steps[1:])})" if len(s.steps) > 1 else ""
        lines.append(f"\n#{s.segment} {_mmss(s.start)} {s.speaker}: {s.text.strip()}")
        stored = ""
        if ex.compared_with_stored and s.differs:
            stored = f"   [stored: {s.stored_step or 'no step'}; `callqa retag` applies the current rules]"
        lines.append(f"  => {step}{also}{stored}")
        if not s.entries:
            lines.append("     no phrase matched and no context rule applied")
        for e in s.entries:
            mark = "" if e.counted else " (not counted)"
            lines.append(f"     {e.source:8} {e.name}{mark}: {e.detail}")
    if ex.changed:
        lines.append(f"\n{len(ex.changed)} segment(s) differ from the stored tags.")
    lines.append(f"\nfurthest step: {ex.furthest_step or '-'}")
    return "\n".join(lines)

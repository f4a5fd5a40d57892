"""Conversation metrics (talk ratio, monologues, questions, interruptions, silence) and flags."""
from __future__ import annotations

from typing import Optional

from models.events import Flag, Metrics, Segment

from .schema import FlagsConfig


def _union_length(intervals: list[tuple[float, float]]) -> float:
    total = 0.0
    cur_s = cur_e = None
    for s, e in sorted(intervals):
        if e <= s:
            continue
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def monologues(segments: list[Segment], gap_s: float) -> list[tuple[float, float]]:
    """Manager monologues: consecutive manager segments, no client speech between, pauses < gap_s."""
    out: list[tuple[float, float]] = []
    cur: Optional[list[float]] = None
    for seg in segments:
        if seg.speaker == "manager":
            if cur is not None and seg.start - cur[1] <= gap_s:
                cur[1] = max(cur[1], seg.end)
            else:
                if cur is not None:
                    out.append((cur[0], cur[1]))
                cur = [seg.start, seg.end]
        elif seg.speaker == "client" and seg.end > seg.start and seg.text.strip():
            if cur is not None:
                # client speech that starts inside the monologue cuts it there
                out.append((cur[0], min(cur[1], max(seg.start, cur[0]))))
                cur = None
    if cur is not None:
        out.append((cur[0], cur[1]))
    return out


def interruptions(segments: list[Segment], min_overlap_s: float) -> int:
    """Segments that start while the other party's segment is still running (by >= min_overlap_s)."""
    n = 0
    last_end = {"manager": float("-inf"), "client": float("-inf")}
    for seg in sorted(segments, key=lambda s: (s.start, s.end)):
        if seg.speaker not in last_end:
            continue
        other = "client" if seg.speaker == "manager" else "manager"
        if last_end[other] - seg.start >= min_overlap_s:
            n += 1
        last_end[seg.speaker] = max(last_end[seg.speaker], seg.end)
    return n


def compute_metrics(segments: list[Segment], manager_questions: int, duration_s: Optional[float],
                    cfg: FlagsConfig, speakers_reliable: bool = True) -> Metrics:
    man = sum(max(0.0, s.end - s.start) for s in segments if s.speaker == "manager")
    cli = sum(max(0.0, s.end - s.start) for s in segments if s.speaker == "client")
    talk_ratio = round(man / (man + cli), 4) if man + cli > 0 else None
    mono = monologues(segments, cfg.metrics.monologue_gap_s)
    longest = max((e - s for s, e in mono), default=0.0)
    dur = duration_s if duration_s else max((s.end for s in segments), default=0.0)
    silence = None
    if dur and dur > 0:
        speech = _union_length([(max(0.0, s.start), min(dur, s.end)) for s in segments])
        silence = round(max(0.0, dur - speech) / dur, 4)
    if not speakers_reliable:
        return Metrics(talk_ratio=None, longest_monologue_s=None, manager_questions=None, interruptions=None,
                       silence_share=silence)
    return Metrics(
        talk_ratio=talk_ratio,
        longest_monologue_s=round(longest, 3),
        manager_questions=manager_questions,
        interruptions=interruptions(segments, cfg.metrics.interruption_min_overlap_s),
        silence_share=silence,
    )


def compute_flags(*, segments: list[Segment], metrics: Metrics, steps: dict, objections: list,
                  duration_s: float, cfg: FlagsConfig, language: str) -> list[Flag]:
    f = cfg.flags
    ru = language == "ru"
    flags: list[Flag] = []
    if f.unanswered_objection.enabled:
        for o in objections:
            if not o.answered:
                flags.append(Flag(
                    code="unanswered_objection",
                    detail=(f"Возражение без ответа ({o.kind}): «{o.text[:120]}»" if ru
                            else f"Objection not answered ({o.kind}): \"{o.text[:120]}\""),
                    at=o.at))
    sales = any(steps[s].present for s in ("presentation", "objection_handling", "closing"))
    if f.no_needs_discovery.enabled and sales and not steps["needs_discovery"].present \
            and duration_s >= f.no_needs_discovery.min_call_s:
        flags.append(Flag(code="no_needs_discovery",
                          detail=("Потребности клиента не выявлялись" if ru
                                  else "No needs-discovery questions in a sales conversation"),
                          at=None))
    if f.no_closing_attempt.enabled and not steps["closing"].present \
            and duration_s > f.no_closing_attempt.min_call_s:
        flags.append(Flag(code="no_closing_attempt",
                          detail=(f"Звонок {duration_s:.0f} с без попытки договориться о следующем шаге" if ru
                                  else f"{duration_s:.0f} s call without a closing attempt (no concrete next step)"),
                          at=None))
    if f.long_monologue.enabled and metrics.longest_monologue_s is not None:
        for s, e in monologues(segments, cfg.metrics.monologue_gap_s):
            if e - s > f.long_monologue.max_s:
                flags.append(Flag(code="long_monologue",
                                  detail=(f"Монолог менеджера {e - s:.0f} с (порог {f.long_monologue.max_s:.0f} с)" if ru
                                          else f"Manager monologue of {e - s:.0f} s (limit {f.long_monologue.max_s:.0f} s)"),
                                  at=s))
    if f.high_talk_ratio.enabled and metrics.talk_ratio is not None:
        speech = sum(max(0.0, s.end - s.start) for s in segments if s.speaker in ("manager", "client"))
        if speech >= f.high_talk_ratio.min_speech_s and metrics.talk_ratio * 100 > f.high_talk_ratio.max_percent:
            flags.append(Flag(code="high_talk_ratio",
                              detail=(f"Менеджер говорит {metrics.talk_ratio * 100:.0f}% времени (порог {f.high_talk_ratio.max_percent:.0f}%)" if ru
                                      else f"Manager talks {metrics.talk_ratio * 100:.0f}% of the time (limit {f.high_talk_ratio.max_percent:.0f}%)"),
                              at=None))
    pres = steps["presentation"]
    if f.presentation_before_needs.enabled and pres.present and pres.quality == "weak" \
            and any("before" in r or "до " in r for r in pres.reasons):
        flags.append(Flag(code="presentation_before_needs",
                          detail=pres.reasons[0], at=pres.first_at))
    cl = steps["closing"]
    if f.vague_next_step.enabled and getattr(cl, "vague", False):
        flags.append(Flag(code="vague_next_step", detail=cl.reasons[0] if cl.reasons else "", at=cl.first_at))
    return flags

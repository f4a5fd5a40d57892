"""Per-call assembly: utterance tags, step verdicts, objections, metrics and flags."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from models.events import STEPS, Objection, Segment, StepResult, Tagging, UtteranceTag

from .metrics import compute_flags, compute_metrics
from .nlp import detect_language
from .rules import Rules, default_rules
from .tagger import STEP_ORDER, SegTag, tag_segments

_T = {
    "en": {
        "greet_ok": "manager opened the call: \"{ev}\"",
        "greet_client": "only the client greeted; the manager did not introduce themselves",
        "greet_none": "no greeting or introduction",
        "needs_ok": "{n} needs question(s) from the manager",
        "needs_few": "only {n} needs question(s) from the manager (aim for {k}+)",
        "needs_client": "needs came only from the client; the manager asked no needs questions",
        "needs_none": "no needs discovery",
        "pres_ok": "offer presented after needs discovery",
        "pres_before": "presentation before any needs question",
        "pres_none": "no offer presented",
        "obj_none": "no objection was raised",
        "obj_ok": "{n} objection(s), all answered",
        "obj_weak": "{u} of {n} objection(s) left unanswered",
        "close_good": "concrete next step: \"{ev}\"",
        "close_send": "next step without a date or follow-up: \"{ev}\"",
        "close_vague": "only a vague next step: \"{ev}\"",
        "close_none": "no next step agreed",
    },
    "ru": {
        "greet_ok": "менеджер представился: «{ev}»",
        "greet_client": "поздоровался только клиент; менеджер не представился",
        "greet_none": "нет приветствия и представления",
        "needs_ok": "вопросов о потребностях от менеджера: {n}",
        "needs_few": "мало вопросов о потребностях от менеджера: {n} (нужно от {k})",
        "needs_client": "потребности озвучил только клиент; менеджер вопросов не задавал",
        "needs_none": "потребности не выявлялись",
        "pres_ok": "предложение сделано после выявления потребностей",
        "pres_before": "презентация до выявления потребностей (до любого вопроса о потребностях)",
        "pres_none": "предложение не прозвучало",
        "obj_none": "возражений не было",
        "obj_ok": "возражений: {n}, на все дан ответ",
        "obj_weak": "без ответа осталось возражений: {u} из {n}",
        "close_good": "конкретный следующий шаг: «{ev}»",
        "close_send": "следующий шаг без даты и контрольной точки: «{ev}»",
        "close_vague": "только расплывчатый следующий шаг: «{ev}»",
        "close_none": "следующий шаг не согласован",
    },
}


def _resolve_language(language: Optional[str], segments: list[Segment]) -> str:
    if language in ("ru", "en"):
        return language
    return detect_language(s.text for s in segments)


@dataclass
class Overrides:
    """What people corrected on a call (pipeline.corrections): a segment's step (None: no step), and the
    kind or answered of the objection a segment raised. They win over the rules and the model."""
    steps: dict[int, Optional[str]] = field(default_factory=dict)
    objection_kinds: dict[int, str] = field(default_factory=dict)
    objection_answered: dict[int, bool] = field(default_factory=dict)
    by: dict[int, str] = field(default_factory=dict)  # segment -> who corrected it (last)

    def __bool__(self) -> bool:
        return bool(self.steps or self.objection_kinds or self.objection_answered)


def _apply_step_overrides(tags: list[SegTag], speakers: list[str], ov: Overrides) -> None:
    for i, step in ov.steps.items():
        if not 0 <= i < len(tags):
            continue
        tg = tags[i]
        tg.step, tg.steps = step, [step] if step else []
        tg.evidence = f"corrected by {ov.by.get(i, 'a reviewer')}"
        tg.null_reason = None if step else "corrected: no step"
        if step != "objection_handling":
            tg.objection_kind = None  # not an objection after all
        elif speakers[i] != "manager" and not tg.objection_kind:
            tg.objection_kind = ov.objection_kinds.get(i, "other")


def tag_call(segments: list[Segment], language: str, duration_s: float | None = None,
             rules: Rules | None = None, model=None, speakers_reliable: bool = True,
             overrides: Optional[Overrides] = None) -> Tagging:
    """Tag a transcribed call: per-segment steps, step verdicts, objections, metrics, flags.

    With a learned ``model`` (learned.StepModel) the model decides each segment's step, with the rules'
    cues among its inputs; without one the rules decide alone. ``speakers_reliable=False`` (roles told
    apart by voice with low confidence) leaves the speaker-dependent metrics and flags out."""
    return tag_call_detailed(segments, language, duration_s, rules, model, speakers_reliable, overrides)[0]


def tag_call_detailed(segments: list[Segment], language: str, duration_s: float | None = None,
                      rules: Rules | None = None, model=None, speakers_reliable: bool = True,
                      overrides: Optional[Overrides] = None) -> tuple[Tagging, list[SegTag]]:
    """tag_call plus the per-segment working (cue hits, context rules fired, the model's view)."""
    rules = rules or default_rules()
    lang = _resolve_language(language, segments)
    comp = rules.compiled(lang)
    t = _T[lang]
    cfg = rules.flags
    segs = list(segments)
    texts = [s.text or "" for s in segs]
    speakers = [s.speaker for s in segs]
    tags: list[SegTag] = tag_segments(texts, speakers, comp)
    if model is not None:
        from .learned import apply
        apply(model, tags, texts, speakers, lang)
    ov = overrides or Overrides()
    _apply_step_overrides(tags, speakers, ov)

    utterance_tags = [
        UtteranceTag(segment=i, step=tg.step, steps=tg.steps, evidence=tg.evidence,
                     prob=round(tg.model.prob, 3) if tg.model and i not in ov.steps else None,
                     uncertain=bool(tg.model and tg.model.uncertain) and i not in ov.steps,
                     corrected_by=ov.by.get(i) if i in ov.steps else None)
        for i, tg in enumerate(tags)
    ]

    def first_at(step: str) -> Optional[float]:
        for s, tg in zip(segs, tags):
            if step in tg.steps:
                return s.start
        return None

    present = {st: any(st in tg.steps for tg in tags) for st in STEPS}
    # a step shown by the model's unsure turns alone is kept on the call but marked, and not counted
    confident = {st: any(st in tg.steps and not u.uncertain for tg, u in zip(tags, utterance_tags)) for st in STEPS}

    # ---- objections
    objections: list[Objection] = []
    answers: set[int] = set()  # the manager turns that answered an objection so far

    def objects(k: int) -> bool:
        if k in ov.steps:
            return bool(tags[k].objection_kind)
        if model is None:
            return bool(tags[k].objection_kind)
        if k - 1 in answers and not tags[k].objection_kind:
            # the client's reply to the answer ("good to know", "да, это интересно") belongs to the same
            # exchange, so the model tags it objection handling (the guideline's rule 4); it raises nothing
            return False
        # the model's objection turns said by the client (or, speakers unknown, with an objection cue)
        return "objection_handling" in tags[k].steps and (
            speakers[k] == "client" or (speakers[k] != "manager" and bool(tags[k].objection_kind)))

    for i, tg in enumerate(tags):
        if not objects(i):
            continue
        answer_idx = None
        for j in range(i + 1, len(segs)):
            if segs[j].speaker == "client" and objects(j):
                continue  # the client keeps objecting; look at the manager's next turn
            if segs[j].speaker == "manager":
                soft = tg.step == "closing"   # "send it over, we'll think" / "call me in two weeks"
                if "objection_handling" in tags[j].steps or (soft and "closing" in tags[j].steps):
                    answer_idx = j
                    answers.add(j)
                break
        objections.append(Objection(
            text=segs[i].text.strip(), kind=ov.objection_kinds.get(i, tg.objection_kind or "other"),
            answered=ov.objection_answered.get(i, answer_idx is not None),
            at=segs[i].start, segment=i,
            answer=segs[answer_idx].text.strip() if answer_idx is not None else None,
            evidence=tg.objection_evidence,
        ))

    # ---- manager questions
    q_per_seg = [comp.question_count(x) if sp == "manager" else 0 for x, sp in zip(texts, speakers)]
    manager_questions = sum(q_per_seg)
    needs_q = sum(max(1, q) for q, tg, sp in zip(q_per_seg, tags, speakers)
                  if sp == "manager" and "needs_discovery" in tg.steps)

    # ---- verdicts
    steps: dict[str, StepResult] = {}
    # greeting
    g_ev = next((tg.evidence for tg, sp in zip(tags, speakers)
                 if sp != "client" and "greeting" in tg.steps), None)
    if present["greeting"]:
        if g_ev is not None or any(sp != "client" and "greeting" in tg.steps for tg, sp in zip(tags, speakers)):
            steps["greeting"] = StepResult(present=True, first_at=first_at("greeting"), quality="good",
                                           reasons=[t["greet_ok"].format(ev=g_ev or "")])
        else:
            steps["greeting"] = StepResult(present=True, first_at=first_at("greeting"), quality="weak",
                                           reasons=[t["greet_client"]])
    else:
        steps["greeting"] = StepResult(present=False, quality="missing", reasons=[t["greet_none"]])
    # needs discovery
    k = cfg.quality.needs_questions_good
    if present["needs_discovery"]:
        if needs_q >= k:
            q, r = "good", t["needs_ok"].format(n=needs_q)
        elif needs_q > 0:
            q, r = "weak", t["needs_few"].format(n=needs_q, k=k)
        else:
            q, r = "weak", t["needs_client"]
        steps["needs_discovery"] = StepResult(present=True, first_at=first_at("needs_discovery"),
                                              quality=q, reasons=[r], manager_questions=needs_q)
    else:
        steps["needs_discovery"] = StepResult(present=False, quality="missing", reasons=[t["needs_none"]],
                                              manager_questions=0)
    # presentation
    if present["presentation"]:
        p_at, n_at = first_at("presentation"), first_at("needs_discovery")
        if n_at is None or p_at < n_at:
            steps["presentation"] = StepResult(present=True, first_at=p_at, quality="weak",
                                               reasons=[t["pres_before"]])
        else:
            steps["presentation"] = StepResult(present=True, first_at=p_at, quality="good",
                                               reasons=[t["pres_ok"]])
    else:
        steps["presentation"] = StepResult(present=False, quality="missing", reasons=[t["pres_none"]])
    # objection handling
    if present["objection_handling"]:
        unanswered = sum(1 for o in objections if not o.answered)
        n = len(objections)
        if unanswered:
            steps["objection_handling"] = StepResult(present=True, first_at=first_at("objection_handling"),
                                                     quality="weak", reasons=[t["obj_weak"].format(u=unanswered, n=n)])
        else:
            steps["objection_handling"] = StepResult(present=True, first_at=first_at("objection_handling"),
                                                     quality="good", reasons=[t["obj_ok"].format(n=max(n, 1))])
    else:
        steps["objection_handling"] = StepResult(present=False, quality="missing", reasons=[t["obj_none"]])
    # closing
    steps["closing"] = _closing_verdict(segs, tags, t, present["closing"], first_at("closing"))

    for st, r in steps.items():
        r.uncertain = present[st] and not confident[st]

    # ---- furthest step
    furthest = None
    for st in STEP_ORDER:
        if present[st]:
            furthest = st

    duration = duration_s if duration_s else max((s.end for s in segs), default=0.0)
    metrics = compute_metrics(segs, manager_questions, duration_s, cfg, speakers_reliable)
    flags = compute_flags(segments=segs, metrics=metrics, steps=steps, objections=objections,
                          duration_s=duration, cfg=cfg, language=lang)
    return Tagging(utterance_tags=utterance_tags, steps=steps, furthest_step=furthest,
                   objections=objections, metrics=metrics, flags=flags, language=lang), tags


def _closing_verdict(segs: list[Segment], tags: list[SegTag], t: dict, present: bool,
                     at: Optional[float]) -> StepResult:
    idx = [i for i, tg in enumerate(tags) if "closing" in tg.steps]
    if present:
        concrete_ev = None
        send_ev = None
        for i in idx:
            h = tags[i].hits
            window = [tags[j].hits for j in range(max(0, i - 1), min(len(tags), i + 2))]
            has_time = any("cue:concrete_time" in w for w in window)
            strong = [x.evidence for x in h.get("cue:closing", [])]
            sends = [x.evidence for x in h.get("cue:closing_send", [])]
            if strong and (has_time or not sends):
                concrete_ev = concrete_ev or strong[0]
            elif (strong or sends) and has_time:
                concrete_ev = concrete_ev or (strong or sends)[0]
            elif sends:
                send_ev = send_ev or sends[0]
            if concrete_ev and has_time:
                break
        if concrete_ev:
            return StepResult(present=True, first_at=at, quality="good",
                              reasons=[t["close_good"].format(ev=concrete_ev)])
        ev = send_ev or (tags[idx[0]].evidence or segs[idx[0]].text[:80])
        return StepResult(present=True, first_at=at, quality="weak", reasons=[t["close_send"].format(ev=ev)])
    for i, tg in enumerate(tags):
        v = tg.hits.get("cue:vague_next_step")
        if v:
            return StepResult(present=False, first_at=segs[i].start, quality="weak",
                              reasons=[t["close_vague"].format(ev=v[0].evidence)], vague=True)
    return StepResult(present=False, quality="missing", reasons=[t["close_none"]])

"""Per-segment cue detection and the per-call step logic of the tagger.

Steps per segment (guideline ``shared/eval/GUIDELINE.md``):

1. cue detection: lexicon phrases are matched on lemmas (an n-gram index over the
   lemmas of the non-punctuation tokens, so commas or a missing "?" in ASR text do
   not matter) and regexes on the lower-cased text;
2. speaker-aware candidates: manager needs questions / offer / next-step proposals,
   client statements of need / product questions / objections / acceptance;
3. sequence logic: an objection opens an "objection exchange" that lasts until a
   new step (closing) or a farewell; turns without cues take the step of the
   exchange they belong to (rule 4); holds, farewells, connection problems and
   gatekeeper navigation are null; a call dominated by service talk is a
   negative control (only greetings are kept).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from .matcher import CompiledLexicon, Hit
from .nlp import normalize_text

STEP_ORDER = ("greeting", "needs_discovery", "presentation", "objection_handling", "closing")
NULL_CATS = ("hold", "farewell", "navigation", "connection", "service")


@dataclass
class SegTag:
    step: Optional[str] = None
    steps: list[str] = field(default_factory=list)
    evidence: Optional[str] = None
    objection_kind: Optional[str] = None   # the client's own objection cue
    objection_evidence: Optional[str] = None
    hits: dict = field(default_factory=dict)
    inherited: bool = False
    null_reason: Optional[str] = None


_INTERJECTION = re.compile(r"^[\W_]*((h+m+|m+h*|u+h+|u+m+|a+h+|e+r+|э+м*|м+|а+|хм+|ну)[\W_]*)*$", re.I)
_WORD = re.compile(r"[^\W_]+", re.U)


_INTRO = re.compile(r"\b(from|with|at|из|компани)")


def _n_distinct(hs: list[Hit]) -> int:
    """Separate stretches of text with cue hits: nested or overlapping hits ("мы внедряем" +
    "внедряем", "мы работаем" + "работаем с") count once."""
    n, end = 0, -1
    for s, e in sorted({(h.pos, h.pos + len(h.evidence)) for h in hs}):
        if s >= end:
            n += 1
        end = max(end, e)
    return n


# "noted" after the client gave an e-mail / a date: with a farewell it is part of the goodbye
_NOTED = re.compile(r"^(записал[аи]?|записываю|отметил[аи]?|noted|got it|all noted)$", re.I)
# the manager acknowledging / conceding an objection ("understood, no pressure")
_OBJ_ACK = re.compile(r"\b(no pressure|no obligation|i (totally |completely )?get (that|it)|i hear you|fair enough|"
                      r"that's fair|не настаиваю|никакого давления)\b", re.I)
# the manager answering a doubt ("that's a valid concern", "понимаю ваши сомнения")
_OBJ_ANSWER = re.compile(r"\b((a |that's a |that is a )?(valid|fair|reasonable|common|legitimate) (concern|point|question)|"
                         r"i understand your (concern|hesitation|worry|doubt)|many (people|customers|clients) (feel|think|say) that|"
                         r"понимаю ваш[иеу]? (сомнени|опасени|беспокойств)|многие (так|тоже) (думают|говорят|сомневал)|"
                         r"многие (наши )?клиенты тоже (так|сначала|были|сомневал|говорили))", re.I)
# the seller introducing themselves (an opening that also asks for the decision maker stays a greeting)
_SELF_INTRO = re.compile(r"(меня зовут|компани[яи]|«|my name is|this is \w+|calling from|, \w+ (from|with) )")
# a question about the client's situation (volumes, current set-up) inside an objection answer
_SITUATION_Q = re.compile(r"\b(how many|how much|how often|what do you (use|currently)|do you (currently|use|own|have)|"
                          r"are you (currently|using)|сколько|как(ой|ие|ая) (объем|тираж|количеств)|у вас сейчас|"
                          r"сейчас у вас|как организован|чем (вы )?пользуетесь|с кем (вы )?работаете)\b")
_CHANGE_MIND = re.compile(r"\b(change your mind|передумаете)\b")
# a client's closing question that is a proposal to act (a visit, a booking), not a question about terms
_ACT_PROPOSAL = re.compile(r"\b(come|stop|drop|visit|meet|see it|viewing|test drive|book|schedule|reserve|"
                           r"приехать|подъехать|заехать|встрет|посмотреть вживую)\b", re.I)


def _in_question(text: str, hit: Hit) -> bool:
    """The hit lies in a question sentence (up to the next "?" with no "." or "!" between);
    unpunctuated ASR text counts as one sentence."""
    rest = text[hit.pos:]
    q = rest.find("?")
    if q < 0:
        return not re.search(r"[.!?]", text)
    return not re.search(r"[.!]", rest[:q])


def _h(hits: dict, cat: str) -> list[Hit]:
    return hits.get(f"cue:{cat}", [])


def _cands(hits: dict[str, list[Hit]], speaker: str, greeting_ok: bool) -> dict[str, list[Hit]]:
    """Step candidates of one segment, by speaker role."""
    c: dict[str, list[Hit]] = {}
    greet = _h(hits, "greeting") + _h(hits, "greeting_question")
    if greet and greeting_ok:
        c["greeting"] = greet
    if speaker == "client":
        needs = _h(hits, "needs_statement")
        pres = _h(hits, "product_question")
    else:
        needs = _h(hits, "needs_question")
        pres = _h(hits, "presentation")
        if speaker == "unknown":
            needs = needs + _h(hits, "needs_statement")
            pres = pres + _h(hits, "product_question")
    close = _h(hits, "closing") + _h(hits, "closing_send")
    if needs:
        c["needs_discovery"] = needs
    if pres:
        c["presentation"] = pres
    if close:
        c["closing"] = close
    return c


def _objection(hits: dict[str, list[Hit]]) -> tuple[Optional[str], Optional[Hit]]:
    """The client's objection kind (the longest matching cue wins)."""
    best = None
    for key, hs in hits.items():
        if key.startswith("obj:"):
            for hit in hs:
                if best is None or len(hit.evidence) > len(best[1].evidence):
                    best = (key[4:], hit)
    return best if best else (None, None)


# tie-break when two functions are equally strong at the same place
_PRIORITY = {"closing": 4, "objection_handling": 3, "presentation": 2, "needs_discovery": 1, "greeting": 0}


def _rank(c: dict[str, list[Hit]], hits: dict) -> list[str]:
    """Primary first: any step over greeting; then more distinct cues; ties go to the
    function that comes last in the turn (the part the other party answers, rule 1)."""
    last = max(h.pos for hs in c.values() for h in hs)

    def score(step: str):
        hs = c[step]
        distinct = len({h.evidence.lower() for h in hs})
        if step == "closing":
            distinct += len(_h(hits, "concrete_time"))
        lastpos = max(h.pos for h in hs)
        return (step != "greeting", distinct + (0.5 if lastpos == last else 0), lastpos, _PRIORITY[step])

    return sorted(c, key=score, reverse=True)


def tag_segments(texts: list[str], speakers: list[str], comp: CompiledLexicon) -> list[SegTag]:
    docs = list(comp.nlp.pipe(texts)) if texts else []
    all_hits = [comp.match(t, d) for t, d in zip(texts, docs)]

    # Negative control: a service/support call keeps only its greetings (rule 11).
    service_segs = sum(1 for h in all_hits if "cue:service" in h)
    sales_segs = sum(
        1 for h, sp in zip(all_hits, speakers)
        if any(k.startswith("obj:") for k in h) and sp != "manager"
        or sp != "client" and ("cue:closing" in h or "cue:presentation" in h)
    )
    service_call = service_segs >= 2 and service_segs > sales_segs

    out: list[SegTag] = []
    in_objection = False
    any_step = False
    closed = False
    offered = False
    prev_sp: Optional[str] = None
    prev_q = False
    n = len(texts)
    prev: Optional[SegTag] = None
    for i, (text, sp, hits) in enumerate(zip(texts, speakers, all_hits)):
        tag = SegTag(hits=hits)
        words = _WORD.findall(text)
        # greetings open a call; "thanks for calling, have a nice day" at the end is a farewell
        greeting_ok = i < 4 or (not any_step and i < 0.7 * n and "cue:farewell" not in hits)
        c = _cands(hits, sp, greeting_ok)
        short = len(words) <= 15
        is_question = comp.question_count(text) > 0
        kind, ohit = (None, None)
        if sp != "manager":
            kind, ohit = _objection(hits)
        vague = "cue:vague_next_step" in hits and "cue:closing" not in hits and "cue:closing_send" not in hits
        conn = hits.get("cue:connection", [])
        # a bare "Алло?" / "Hello?" answering the phone opens the call; "алло, слышите меня?" is a
        # connection check (null), and so is the reply to one
        bare_hello = bool(conn) and all(h.evidence.lower().strip("?!., ") in ("алло", "hello") for h in conn)
        opening_hello = bare_hello and i < 2 and not (prev is not None and prev.null_reason == "connection")
        if opening_hello and "greeting" not in c:
            c["greeting"] = conn
        if conn and not opening_hello:
            if "greeting" in c and (any_step or i >= 2 or not bare_hello) and \
                    not any(_INTRO.search(h.evidence.lower()) or len(h.evidence.split()) > 1 for h in c["greeting"]):
                del c["greeting"]                    # "Hello? Are you there?" mid-call
            conn_words = sum(len(_WORD.findall(h.evidence)) for h in conn)
            if len(words) - conn_words > 6 and c == {}:
                conn = []                            # "... к выставке надо в марте ээ алло": content first
        null_hits = [k for k in NULL_CATS
                     if f"cue:{k}" in hits and k != "service" and not (k == "connection" and (opening_hello or not conn))]

        if not greeting_ok and any(len(h.evidence.split()) <= 4 and not _INTRO.search(h.evidence.lower())
                                   for h in _h(hits, "greeting")):
            null_hits.append("farewell")           # "have a good day" late in the call
        has_time = "cue:concrete_time" in hits
        if "cue:farewell" in hits and "closing" in c and not has_time and short \
                and all(_NOTED.match(h.evidence.strip()) for h in c["closing"]):
            del c["closing"]                         # "записал, спасибо, до свидания": a goodbye
        if "greeting" in c and not any_step and sp != "client":
            # the opening turn: "Hello, X from Y, we make boxes" / "Seaview Hotel reservations, how may
            # I help?" is an introduction; one offer/next-step word does not outweigh it
            for st in ("presentation", "closing"):
                if st in c and _n_distinct(c[st]) < 2 \
                        and not (st == "closing" and is_question and has_time) \
                        and not (st == "presentation" and any(ch.isdigit() for h in c[st] for ch in h.evidence)):
                    del c[st]
        if "closing" in c and not closed and not has_time \
                and not any(not _in_question(text, h) for h in hits.get("cue:closing_accept", [])) \
                and "cue:closing_send" not in hits:
            # rule 7: price / payment / contract questions before a decision are product Q&A,
            # and so is the manager's factual answer to such a question
            if sp == "client" and is_question and not kind and all(_in_question(text, h) for h in c["closing"]) \
                    and not any(_ACT_PROPOSAL.search(h.evidence) for h in c["closing"]):
                c.setdefault("presentation", []).extend(c.pop("closing"))
            elif sp == "manager" and prev_sp == "client" and prev is not None \
                    and prev.step == "presentation" and not text.rstrip().endswith("?"):
                c.setdefault("presentation", []).extend(c.pop("closing"))
        closing_hit = "closing" in c
        steps: list[str] = []

        if service_call:
            steps = ["greeting"] if "greeting" in c and "cue:service" not in hits else []
            in_objection = False
        elif not words or _INTERJECTION.match(text.strip()):
            steps = []                                # "Hmmm", "[noise]"
        elif kind:
            if "cue:closing_send" in hits and kind in ("no_need", "timing"):
                kind = "send_info"                  # "not now, just send me the price list"
            others = [s for s in _rank(c, hits) if s not in ("greeting", "objection_handling")] if c else []
            # a bare "just send me an e-mail" is a next step (rule 8); with "not now" / "not
            # interested" beside it, it stays an objection
            refusal = any(k.startswith("obj:") and k != "obj:send_info" for k in hits)
            soft = (kind in ("think", "timing") and closing_hit and ("cue:closing_send" in hits or has_time)) \
                or (kind == "send_info" and not refusal)
            if soft:
                # "send it by e-mail, we'll look at it" / "call me in two weeks": a next step (rule 8)
                steps = ["closing", "objection_handling"] + others
                in_objection = False
            else:
                if refusal:
                    others = [s for s in others if s != "closing"]   # rule 8: with a refusal it is an objection
                steps = ["objection_handling"] + others
                in_objection = True
            tag.objection_kind, tag.objection_evidence = kind, ohit.evidence
            tag.evidence = ohit.evidence
        elif vague and sp == "client" and short and not is_question \
                and not any(st in c for st in ("needs_discovery", "presentation", "closing")):
            tag.null_reason = "vague_next_step"         # rule 9: "будем на связи" is not a closing
            in_objection = False
        elif in_objection:
            if null_hits and not c and short and not is_question \
                    and not (sp == "manager" and _OBJ_ACK.search(normalize_text(text))):
                steps = []
                in_objection = False
            elif sp == "client" and is_question and "cue:product_question" in hits and not closing_hit:
                # the client asks about the alternative offered: product Q&A again (a new step)
                steps = ["presentation"]
                in_objection = False
            elif sp == "client" and prev is not None and prev_sp == "manager" and prev_q \
                    and prev.steps[-1:] == ["needs_discovery"] and not c:
                steps = ["needs_discovery"]         # answers the needs question the manager moved on to
                in_objection = False
            elif sp == "client":
                prev_close = prev is not None and prev.step == "closing"
                accept = "cue:closing_accept" in hits or has_time or len(words) <= 2
                if closing_hit or (prev_close and accept):
                    steps = ["closing"]
                    in_objection = False
                else:
                    steps = ["objection_handling"]
                    tag.inherited = True
            else:
                if closing_hit and (has_time or is_question or _CHANGE_MIND.search(normalize_text(text))):
                    # a direct ask or a dated next step moves the call on to closing
                    steps = ["closing", "objection_handling"]
                    in_objection = False
                elif "needs_discovery" in c and is_question and not closing_hit and _SITUATION_Q.search(normalize_text(text)) \
                        and max(h.pos for h in c["needs_discovery"]) >= max(h.pos for hs in c.values() for h in hs):
                    # "... out of curiosity, how many shipments a week?": the answer moves on to discovery
                    steps = ["objection_handling", "needs_discovery"]
                elif closing_hit:
                    # an undated next step inside the answer ("call me if you change your mind") still
                    # counts at call level (steps_present / furthest_step)
                    steps = ["objection_handling", "closing"]
                else:
                    steps = ["objection_handling"]
        elif sp == "client" and closed and prev is not None and prev.step == "closing" and short \
                and "cue:closing_accept" in hits and not any(st in c for st in ("needs_discovery", "presentation")) \
                and not ("cue:farewell" in hits and len(words) < 4):
            steps = ["closing"]                       # "standard shipping is fine, thanks"
        else:
            if null_hits and not c and (short or null_hits != ["farewell"]):
                tag.null_reason = null_hits[0]
            elif "cue:navigation" in hits and not closing_hit and not (
                    "greeting" in c and not any_step and _SELF_INTRO.search(text.lower())):
                tag.null_reason = "navigation"
            elif c:
                steps = _rank(c, hits)
                if sp == "manager" and _OBJ_ANSWER.search(normalize_text(text)) and steps[0] != "closing":
                    # "that's a valid concern, ..." answers an objection the client cues did not show
                    steps.insert(0, "objection_handling")
                    in_objection = True
                if sp == "client" and not offered and steps[0] == "presentation" and "needs_discovery" in steps:
                    # "I'm calling about the flat on Oak Street, is it still available?" before any offer
                    steps.remove("needs_discovery")
                    steps.insert(0, "needs_discovery")
                if sp == "client" and closed and is_question and steps[0] == "presentation" \
                        and prev is not None and prev_sp == "client" and prev.step == "closing":
                    steps.insert(0, "closing")       # rule 7: shipping / payment questions after the decision
                if sp == "manager" and prev_sp == "client" and prev is not None and prev.step == "closing" \
                        and prev_q and steps[0] == "presentation" and "closing" not in steps:
                    steps.insert(0, "closing")       # the terms asked for after the decision (rule 7)
                if closed and "closing" in steps and steps[0] == "presentation" \
                        and len({h.evidence.lower() for h in c["presentation"]}) < 2:
                    steps.remove("closing")
                    steps.insert(0, "closing")   # rule 7: after the decision, terms are closing
            elif is_question and sp != "client" and not closed:
                steps = ["needs_discovery"]           # an open manager question: discovery
                tag.inherited = True
            elif is_question and sp == "client" and not closed:
                # a client question: product Q&A once an offer is on the table, else a need
                steps = ["presentation" if offered else "needs_discovery"]
                tag.inherited = True
            elif prev is not None and prev.step is not None:
                if sp == "client":
                    steps = [prev.step]
                elif prev_sp == "client" and "cue:product_question" in prev.hits:
                    steps = ["presentation"]          # the manager answers a product question
                elif prev.step != "greeting" and not (prev_sp == "client" and prev.step == "needs_discovery"):
                    steps = [prev.step]
                elif prev.step == "greeting" and prev_sp == "client" and prev_q and i < 6:
                    steps = ["greeting"]              # "Кто вы?" - "«ПромСнаб», Иван": the introduction
                tag.inherited = True
        if steps:
            tag.steps = list(dict.fromkeys(steps))
            tag.step = tag.steps[0]
            if tag.evidence is None and tag.step in c:
                tag.evidence = c[tag.step][0].evidence
            if tag.step != "greeting":
                any_step = True
            if tag.step == "closing":
                closed = True
            if "presentation" in tag.steps:
                offered = True
        out.append(tag)
        prev, prev_sp, prev_q = tag, sp, is_question
    return out

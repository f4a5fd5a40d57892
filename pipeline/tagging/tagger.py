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
from typing import Any, Optional

from .matcher import CompiledLexicon, Hit
from .nlp import normalize_text

STEP_ORDER = ("greeting", "needs_discovery", "presentation", "objection_handling", "closing")
NULL_CATS = ("hold", "farewell", "navigation", "connection", "service")

# The context rules: what the tagger does beyond "a phrase of category X means step Y". Each id is
# what an explanation names when the rule changed a segment's result; config/lexicon/CONTEXT_RULES.md
# documents them for trainers (a test keeps the two in step). "Rule N" is the guideline's rule.
CONTEXT_RULES = {
    # cues adjusted before the step is chosen
    "opening-hello": "A bare \"Hello?\" answering the phone in the first two turns is a greeting.",
    "connection-check": "\"Hello? Are you there?\" later in the call checks the line: the greeting cue is dropped.",
    "content-before-connection": "A connection word after six or more words of content is ignored.",
    "late-greeting-is-farewell": "A short greeting phrase late in the call (\"have a good day\") is a farewell.",
    "noted-goodbye": "\"Noted, thanks, bye\" is a goodbye: its closing cue does not count.",
    "opening-introduction": "In the manager's opening turn one offer or next-step cue does not outweigh the "
                            "introduction (two distinct cues, a price or a dated question do).",
    "price-question-before-decision": "Rule 7: a client's question about price, payment or contract before any "
                                      "decision is presentation (product Q&A), not closing.",
    "answer-to-product-question": "Rule 7: a manager's closing phrase in a turn right after a client turn tagged "
                                  "presentation is the answer to that turn (presentation), unless the manager's "
                                  "turn asks a question, names a date or time, sends something, or the client "
                                  "has already accepted.",
    # the kind of turn
    "service-call": "Rule 11: in a service/support call (two or more service turns, more than sales turns) only "
                    "greetings are kept.",
    "interjection": "\"Hmm\", \"[noise]\": no step.",
    "null-turn": "A hold, farewell or connection cue with no step cue: no step.",
    "navigation": "Rule 10: gatekeeper navigation (\"put me through\") is no step.",
    "rank": "Rule 1: with cues of several steps the primary one has more distinct cues; on a tie, the function "
            "that comes last in the turn.",
    # objections
    "objection-opens-exchange": "A client objection cue makes the turn objection_handling and opens an objection "
                                "exchange that lasts until a new step (closing) or a farewell.",
    "send-info-not-now": "\"Not now, just send me the price list\": the objection is of kind send_info.",
    "soft-objection-is-next-step": "Rule 8: \"send it by e-mail, we'll look\" / \"call me in two weeks\" agrees "
                                   "a next step: closing first.",
    "refusal-is-not-closing": "Rule 8: a next-step cue beside an explicit refusal stays objection handling.",
    "exchange-ends": "In an objection exchange a short hold or farewell turn ends the exchange: no step.",
    "manager-vague-next-step": "Rule 9: in an objection exchange the manager's bare \"keep in touch\" / \"будем на "
                               "связи\" is no step and does not answer the objection.",
    "exchange-product-question": "In an objection exchange the client's product question is presentation again.",
    "exchange-needs-answer": "In an objection exchange the client's answer to the manager's needs question is "
                             "needs_discovery.",
    "exchange-client-accepts": "In an objection exchange the client agreeing a next step is closing.",
    "exchange-continues": "Rule 4: other client turns in an objection exchange are objection_handling.",
    "exchange-direct-ask": "In an objection exchange the manager's direct ask or dated next step is closing.",
    "exchange-situation-question": "In an objection exchange a manager's answer that ends on a question about the "
                                   "client's situation is also needs_discovery.",
    "exchange-undated-next-step": "In an objection exchange the manager's undated next step stays "
                                  "objection_handling first (closing counts at call level).",
    "exchange-answer": "In an objection exchange the manager's turns are objection_handling (they answer it).",
    "objection-answer-phrase": "\"That's a valid concern\" / \"понимаю ваши сомнения\" from the manager is "
                               "objection_handling even when no client cue showed the objection.",
    "objection-answered": "An objection counts as answered when the manager's next turn is objection handling "
                          "(or a closing, for a soft objection).",
    "objection-unanswered": "An objection is unanswered when the manager's next turn is not objection handling.",
    "client-vague-next-step": "Rule 9: the client's short \"keep in touch\" / \"будем на связи\" is not a closing: "
                              "no step.",
    # after a decision
    "accept-after-closing": "A client's short acceptance right after a closing turn is closing.",
    "terms-question-after-decision": "Rule 7: a client's question about terms after the decision is closing.",
    "terms-answer-after-decision": "Rule 7: the manager's answer to such a question is closing.",
    "terms-after-decision": "Rule 7: after the decision, a turn with one presentation cue and a closing cue is "
                            "closing first.",
    "need-before-offer": "Before any offer, a client turn with needs and product cues is needs_discovery first.",
    # turns without cues
    "open-question": "A manager question with no cue (before the decision) is needs_discovery.",
    "client-question": "A client question with no cue is presentation once an offer was made, else "
                       "needs_discovery.",
    "inherit": "Rule 4: a turn with no cue takes the step of the exchange it belongs to (the previous turn's).",
}


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
    # context rules that changed this segment's result: (rule id, what changed); explain.py shows them
    rules: list[tuple[str, str]] = field(default_factory=list)
    # lexicon hits overruled by a longer phrase of another category: (key, hit, longer key, longer hit)
    dropped: list = field(default_factory=list)
    # set when the learned model decided the step (learned.apply): what the rules alone said, and the model's view
    rule_step: Optional[str] = None
    rule_steps: Optional[list[str]] = None
    model: Optional[Any] = None  # learned.TurnPrediction

    def fired(self, rule: str, effect: str) -> None:
        self.rules.append((rule, effect))


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
    drops: list[list] = [[] for _ in texts]
    all_hits = [comp.match(t, d, dr) for t, d, dr in zip(texts, docs, drops)]

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
        tag = SegTag(hits=hits, dropped=drops[i])
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
            tag.fired("opening-hello", "a bare hello answering the phone: greeting")
        if conn and not opening_hello:
            if "greeting" in c and (any_step or i >= 2 or not bare_hello) and \
                    not any(_INTRO.search(h.evidence.lower()) or len(h.evidence.split()) > 1 for h in c["greeting"]):
                del c["greeting"]                    # "Hello? Are you there?" mid-call
                tag.fired("connection-check", "greeting dropped: a hello mid-call checks the line")
            conn_words = sum(len(_WORD.findall(h.evidence)) for h in conn)
            if len(words) - conn_words > 6 and c == {}:
                conn = []                            # "... к выставке надо в марте ээ алло": content first
                tag.fired("content-before-connection", "connection cue ignored: the turn has content first")
        null_hits = [k for k in NULL_CATS
                     if f"cue:{k}" in hits and k != "service" and not (k == "connection" and (opening_hello or not conn))]

        if not greeting_ok and any(len(h.evidence.split()) <= 4 and not _INTRO.search(h.evidence.lower())
                                   for h in _h(hits, "greeting")):
            null_hits.append("farewell")           # "have a good day" late in the call
            tag.fired("late-greeting-is-farewell", "a short greeting late in the call counts as a farewell")
        has_time = "cue:concrete_time" in hits
        if "cue:farewell" in hits and "closing" in c and not has_time and short \
                and all(_NOTED.match(h.evidence.strip()) for h in c["closing"]):
            del c["closing"]                         # "записал, спасибо, до свидания": a goodbye
            tag.fired("noted-goodbye", "closing dropped: \"noted\" with a farewell is a goodbye")
        if "greeting" in c and not any_step and sp != "client":
            # the opening turn: "Hello, X from Y, we make boxes" / "Seaview Hotel reservations, how may
            # I help?" is an introduction; one offer/next-step word does not outweigh it
            for st in ("presentation", "closing"):
                if st in c and _n_distinct(c[st]) < 2 \
                        and not (st == "closing" and is_question and has_time) \
                        and not (st == "presentation" and any(ch.isdigit() for h in c[st] for ch in h.evidence)):
                    del c[st]
                    tag.fired("opening-introduction", f"{st} dropped: one {st} cue does not outweigh the introduction")
        if "closing" in c and not closed and not has_time \
                and not any(not _in_question(text, h) for h in hits.get("cue:closing_accept", [])) \
                and "cue:closing_send" not in hits:
            # rule 7: price / payment / contract questions before a decision are product Q&A,
            # and so is the manager's factual answer to such a question
            if sp == "client" and is_question and not kind and all(_in_question(text, h) for h in c["closing"]) \
                    and not any(_ACT_PROPOSAL.search(h.evidence) for h in c["closing"]):
                c.setdefault("presentation", []).extend(c.pop("closing"))
                tag.fired("price-question-before-decision", "closing -> presentation: a client's question about "
                          "terms before any decision is product Q&A")
            elif sp == "manager" and prev_sp == "client" and prev is not None \
                    and prev.step == "presentation" and not text.rstrip().endswith("?"):
                c.setdefault("presentation", []).extend(c.pop("closing"))
                tag.fired("answer-to-product-question", "closing -> presentation: the manager answers a client turn "
                          "tagged presentation, with no question, date, acceptance or send in this turn")
        closing_hit = "closing" in c
        steps: list[str] = []

        if service_call:
            steps = ["greeting"] if "greeting" in c and "cue:service" not in hits else []
            in_objection = False
            if set(c) - {"greeting"} or kind:
                tag.fired("service-call", "a service/support call: only greetings are kept")
        elif not words or _INTERJECTION.match(text.strip()):
            steps = []                                # "Hmmm", "[noise]"
            if c or kind:
                tag.fired("interjection", "an interjection or noise: no step")
        elif kind:
            if "cue:closing_send" in hits and kind in ("no_need", "timing"):
                kind = "send_info"                  # "not now, just send me the price list"
                tag.fired("send-info-not-now", "objection kind -> send_info: \"not now, just send it\"")
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
                tag.fired("soft-objection-is-next-step", "closing first: the objection comes with a next step")
            else:
                if refusal and "closing" in others:
                    others = [s for s in others if s != "closing"]   # rule 8: with a refusal it is an objection
                    tag.fired("refusal-is-not-closing", "closing dropped: the next-step cue comes with a refusal")
                steps = ["objection_handling"] + others
                in_objection = True
                tag.fired("objection-opens-exchange", "objection_handling: a client objection opens an objection "
                          "exchange that lasts until a new step or a farewell")
            tag.objection_kind, tag.objection_evidence = kind, ohit.evidence
            tag.evidence = ohit.evidence
        elif vague and sp == "client" and short and not is_question \
                and not any(st in c for st in ("needs_discovery", "presentation", "closing")):
            tag.null_reason = "vague_next_step"         # rule 9: "будем на связи" is not a closing
            in_objection = False
            tag.fired("client-vague-next-step", "no step: a client's vague \"keep in touch\" is not a closing")
        elif in_objection:
            if null_hits and not c and short and not is_question \
                    and not (sp == "manager" and _OBJ_ACK.search(normalize_text(text))):
                steps = []
                in_objection = False
                tag.fired("exchange-ends", f"no step: a {null_hits[0]} turn ends the objection exchange")
            elif sp == "manager" and vague and not c and short and not is_question \
                    and not any(rx.search(normalize_text(text)) for rx in (_OBJ_ACK, _OBJ_ANSWER, _CHANGE_MIND)):
                # "Хорошо, будем на связи" gives up on the objection rather than answering it; "call me if you
                # change your mind" still offers a next step (rule 9)
                tag.null_reason = "vague_next_step"
                in_objection = False
                tag.fired("manager-vague-next-step", "no step: the manager only says \"keep in touch\", which "
                          "leaves the objection unanswered")
            elif sp == "client" and is_question and "cue:product_question" in hits and not closing_hit:
                # the client asks about the alternative offered: product Q&A again (a new step)
                steps = ["presentation"]
                in_objection = False
                tag.fired("exchange-product-question", "presentation: the client asks about the offer again")
            elif sp == "client" and prev is not None and prev_sp == "manager" and prev_q \
                    and prev.steps[-1:] == ["needs_discovery"] and not c:
                steps = ["needs_discovery"]         # answers the needs question the manager moved on to
                in_objection = False
                tag.fired("exchange-needs-answer", "needs_discovery: the client answers the manager's needs question")
            elif sp == "client":
                prev_close = prev is not None and prev.step == "closing"
                accept = "cue:closing_accept" in hits or has_time or len(words) <= 2
                if closing_hit or (prev_close and accept):
                    steps = ["closing"]
                    in_objection = False
                    tag.fired("exchange-client-accepts", "closing: the client agrees a next step, ending the exchange")
                else:
                    steps = ["objection_handling"]
                    tag.inherited = True
                    tag.fired("exchange-continues", "objection_handling: the client's turn belongs to the "
                              "objection exchange (rule 4)")
            else:
                if closing_hit and (has_time or is_question or _CHANGE_MIND.search(normalize_text(text))):
                    # a direct ask or a dated next step moves the call on to closing
                    steps = ["closing", "objection_handling"]
                    in_objection = False
                    tag.fired("exchange-direct-ask", "closing: a direct ask or a dated next step ends the exchange")
                elif "needs_discovery" in c and is_question and not closing_hit and _SITUATION_Q.search(normalize_text(text)) \
                        and max(h.pos for h in c["needs_discovery"]) >= max(h.pos for hs in c.values() for h in hs):
                    # "... out of curiosity, how many shipments a week?": the answer moves on to discovery
                    steps = ["objection_handling", "needs_discovery"]
                    tag.fired("exchange-situation-question", "objection_handling, then needs_discovery: the answer "
                              "ends on a question about the client's situation")
                elif closing_hit:
                    # an undated next step inside the answer ("call me if you change your mind") still
                    # counts at call level (steps_present / furthest_step)
                    steps = ["objection_handling", "closing"]
                    tag.fired("exchange-undated-next-step", "objection_handling first: an undated next step inside "
                              "the answer counts only at call level")
                else:
                    steps = ["objection_handling"]
                    tag.fired("exchange-answer", "objection_handling: the manager's turn answers the objection")
        elif sp == "client" and closed and prev is not None and prev.step == "closing" and short \
                and "cue:closing_accept" in hits and not any(st in c for st in ("needs_discovery", "presentation")) \
                and not ("cue:farewell" in hits and len(words) < 4):
            steps = ["closing"]                       # "standard shipping is fine, thanks"
            tag.fired("accept-after-closing", "closing: the client accepts what the closing turn proposed")
        else:
            if null_hits and not c and (short or null_hits != ["farewell"]):
                tag.null_reason = null_hits[0]
                tag.fired("null-turn", f"no step: a {null_hits[0]} cue and no step cue")
            elif "cue:navigation" in hits and not closing_hit and not (
                    "greeting" in c and not any_step and _SELF_INTRO.search(text.lower())):
                tag.null_reason = "navigation"
                if c:
                    tag.fired("navigation", "no step: gatekeeper navigation (rule 10)")
            elif c:
                steps = _rank(c, hits)
                if len(steps) > 1:
                    tag.fired("rank", f"{steps[0]} first of {', '.join(steps)}: more distinct cues, or the last "
                              "function in the turn (rule 1)")
                if sp == "manager" and _OBJ_ANSWER.search(normalize_text(text)) and steps[0] != "closing":
                    # "that's a valid concern, ..." answers an objection the client cues did not show
                    steps.insert(0, "objection_handling")
                    in_objection = True
                    tag.fired("objection-answer-phrase", "objection_handling: the manager answers a doubt "
                              "(\"that's a valid concern\")")
                if sp == "client" and not offered and steps[0] == "presentation" and "needs_discovery" in steps:
                    # "I'm calling about the flat on Oak Street, is it still available?" before any offer
                    steps.remove("needs_discovery")
                    steps.insert(0, "needs_discovery")
                    tag.fired("need-before-offer", "needs_discovery first: no offer has been made yet")
                if sp == "client" and closed and is_question and steps[0] == "presentation" \
                        and prev is not None and prev_sp == "client" and prev.step == "closing":
                    steps.insert(0, "closing")       # rule 7: shipping / payment questions after the decision
                    tag.fired("terms-question-after-decision", "closing: questions about terms after the decision "
                              "(rule 7)")
                if sp == "manager" and prev_sp == "client" and prev is not None and prev.step == "closing" \
                        and prev_q and steps[0] == "presentation" and "closing" not in steps:
                    steps.insert(0, "closing")       # the terms asked for after the decision (rule 7)
                    tag.fired("terms-answer-after-decision", "closing: the manager answers a terms question asked "
                              "after the decision (rule 7)")
                if closed and "closing" in steps and steps[0] == "presentation" \
                        and len({h.evidence.lower() for h in c["presentation"]}) < 2:
                    steps.remove("closing")
                    steps.insert(0, "closing")   # rule 7: after the decision, terms are closing
                    tag.fired("terms-after-decision", "closing first: after the decision, terms are closing (rule 7)")
            elif is_question and sp != "client" and not closed:
                steps = ["needs_discovery"]           # an open manager question: discovery
                tag.inherited = True
                tag.fired("open-question", "needs_discovery: a manager question with no other cue")
            elif is_question and sp == "client" and not closed:
                # a client question: product Q&A once an offer is on the table, else a need
                steps = ["presentation" if offered else "needs_discovery"]
                tag.inherited = True
                tag.fired("client-question", f"{steps[0]}: a client question with no cue "
                          + ("after an offer" if offered else "before any offer"))
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
                    tag.fired("inherit", f"{steps[0]}: a turn with no cue takes the step of the exchange it "
                              "belongs to (rule 4)")
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

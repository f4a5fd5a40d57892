"""Cue matching: a lexicon compiled into a lemma n-gram index and regexes, and question detection.

Below both ``rules`` (which caches a compiled lexicon per language) and ``tagger``
(which turns the hits into steps).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from .nlp import get_nlp, normalize_text
from .schema import Lexicon

_PUNCT = re.compile(r"^[\W_]+$")
# interrogatives that make a question even a few words into an unpunctuated sentence
_WH = {"what", "how", "when", "where", "who", "which", "why", "may",
       "сколько", "какой", "какая", "какие", "какое", "когда", "где", "кто", "почему", "подскажите"}
_FILLERS_EN = {"so", "and", "ok", "okay", "well", "um", "uh", "oh", "yes", "yeah", "right", "great",
               "sure", "alright", "then", "but", "also", "now", "hmm"}
_FILLERS_RU = {"а", "ну", "и", "вот", "так", "да", "хорошо", "ага", "понятно", "ясно", "отлично",
               "скажите", "подскажите", "и"}


# hesitation tokens that ASR keeps ("делаем ээ коробки", "I'm uh thinking")
_ASR_FILLERS = {"ээ", "эээ", "э", "эм", "ммм", "мм", "uh", "um", "uhm", "erm", "hmm"}


_OFFER_VERBS = {"предложить", "порекомендовать", "посоветовать", "сделать", "дать", "уступить"}


@dataclass
class Hit:
    pos: int          # character offset in the segment text (for ordering)
    evidence: str     # the text that matched
    # the lexicon entry behind the hit: ("phrase" | "pattern", its text as written in the YAML)
    source: tuple[str, str] = field(default=("", ""), compare=False)


class CompiledLexicon:
    """A lexicon turned into an n-gram index over lemmas plus compiled regexes."""

    def __init__(self, lex: Lexicon):
        self.lex = lex
        self.language = lex.language
        self.nlp = get_nlp(lex.language)
        self.index: dict[tuple[str, ...], list[str]] = {}
        self.phrase_of: dict[tuple[tuple[str, ...], str], str] = {}   # (lemmas, key) -> the phrase as written
        self.regexes: list[tuple[str, re.Pattern]] = []
        self.max_n = 1
        entries: list[tuple[str, list[str], list[str]]] = []
        for cat, cl in lex.cues.items():
            entries.append((f"cue:{cat}", cl.phrases, cl.patterns))
        for kind, cl in lex.objections.items():
            entries.append((f"obj:{kind}", cl.phrases, cl.patterns))
        for key, phrases, patterns in entries:
            for phrase, doc in zip(phrases, self.nlp.pipe(phrases)):
                lemmas = tuple(t.lemma_ for t in doc if not _PUNCT.match(t.text))
                if not lemmas:
                    continue
                keys = self.index.setdefault(lemmas, [])
                if key not in keys:
                    keys.append(key)
                self.phrase_of.setdefault((lemmas, key), phrase)
                self.max_n = max(self.max_n, len(lemmas))
            for pat in patterns:
                self.regexes.append((key, re.compile(pat)))
        self.question_words = {w.lower() for w in lex.question_words}
        self.fillers = _FILLERS_RU if lex.language == "ru" else _FILLERS_EN

    def match(self, text: str, doc=None, dropped: Optional[list] = None) -> dict[str, list[Hit]]:
        """Cue hits by key ("cue:<category>" / "obj:<kind>").

        Phrases match lemma n-grams that do not cross punctuation; a hit lying inside a
        longer hit of another key is dropped ("not interested in a particular brand" is a
        need, not a "not interested" objection). A caller that passes ``dropped`` gets those
        as (key, hit, key of the longer hit, the longer hit), so an explanation can say why a
        phrase that matched did not count."""
        if doc is None:
            doc = self.nlp(text)
        raw: list[tuple[int, int, str, str, tuple[str, str]]] = []
        run: list = []
        runs = []
        skip_to = -1
        for j, t in enumerate(doc):
            # ASR filler marks ("#uh", "[noise]", "ээ") neither match nor break a phrase
            if j <= skip_to:
                continue
            if t.text == "#" and j + 1 < len(doc) and not doc[j + 1].is_space:
                skip_to = j + 1
                continue
            if t.text == "[":
                close = next((k for k in range(j + 1, min(j + 4, len(doc))) if doc[k].text == "]"), None)
                if close is not None:
                    skip_to = close
                    continue
            if t.lower_ in _ASR_FILLERS or t.is_space:
                continue
            if _PUNCT.match(t.text):
                if run:
                    runs.append(run)
                run = []
            else:
                run.append(t)
        if run:
            runs.append(run)
        index, max_n = self.index, self.max_n
        for toks in runs:
            lem = [t.lemma_ for t in toks]
            n_tok = len(lem)
            for i in range(n_tok):
                for n in range(1, min(max_n, n_tok - i) + 1):
                    gram = tuple(lem[i:i + n])
                    keys = index.get(gram)
                    if keys:
                        start, end = toks[i].idx, toks[i + n - 1].idx + len(toks[i + n - 1].text)
                        for k in keys:
                            raw.append((start, end, k, text[start:end], ("phrase", self.phrase_of[(gram, k)])))
        if self.regexes:
            norm = normalize_text(text)
            for key, rx in self.regexes:
                m = rx.search(norm)
                if m:
                    raw.append((m.start(), m.end(), key, m.group(0).strip(), ("pattern", rx.pattern)))
        hits: dict[str, list[Hit]] = {}
        for s, e, k, ev, src in raw:
            longer = next(((k2, s2, ev2, src2) for s2, e2, k2, ev2, src2 in raw
                           if k2 != k and s2 <= s and e2 >= e and (e2 - s2) > (e - s)), None)
            if longer is not None:
                if dropped is not None:
                    k2, s2, ev2, src2 = longer
                    dropped.append((k, Hit(s, ev, src), k2, Hit(s2, ev2, src2)))
                continue
            hits.setdefault(k, []).append(Hit(s, ev, src))
        return hits

    def question_count(self, text: str) -> int:
        """Number of question sentences (by "?" or a question word opening the sentence)."""
        n = 0
        for sent in re.split(r"(?<=[.?!…])\s+|\n", text.strip()):
            s = sent.strip()
            if not s:
                continue
            if s.endswith("?"):
                n += 1
                continue
            words = re.findall(r"[\w'-]+", s.lower().replace("ё", "е"))
            while words and words[0] in self.fillers:
                words = words[1:]
            if len(words) >= 2 and words[0] in ("могу", "можем") and words[1] in _OFFER_VERBS:
                continue                   # "Могу предложить 145 грамм": an offer, not a question
            if words and words[0] in self.question_words and len(words) >= 3:
                n += 1
            elif any(w in _WH for w in words[1:4]) and len(words) >= 4:
                n += 1                     # "no problem may I ask who ...", "ну а сколько ..."
            elif self.language == "ru" and "или" in words[1:-1] and len(words) <= 12:
                n += 1                     # "печать в один цвет или полноцвет" (ASR drops the "?")

        return n

"""spaCy pipelines for the tagger (no model downloads).

* Russian: ``spacy.blank("ru")`` + a lemmatizer backed by pymorphy3 (the same
  analyser spaCy's ``lemmatizer`` component uses in ``pymorphy3`` mode), with a
  per-word cache: a blank pipeline has no POS tags to disambiguate with, so the
  first pymorphy3 parse is used, and caching makes a 10-minute call cost a few ms.
* English: ``spacy.blank("en")`` + a small rule lemmatizer (lower-casing,
  contractions, irregular verbs, suffix stripping). It is a stemmer more than a
  lemmatizer, but it is applied identically to lexicon phrases and to the text,
  so "costs"/"cost", "needed"/"need", "I'll take"/"I will take" match alike.

Lemmas are lower-case with "ё" folded to "е". Pipelines are built once per language.
"""
from __future__ import annotations

import re
import threading
from functools import lru_cache

import spacy
from spacy.language import Language
from spacy.tokens import Doc

_LOCK = threading.Lock()
_NLP: dict[str, Language] = {}

# --- English rule lemmatizer -------------------------------------------------
_EN_IRREGULAR = {
    "am": "be", "is": "be", "are": "be", "was": "be", "were": "be", "been": "be", "being": "be",
    "'m": "be", "’m": "be", "'re": "be", "’re": "be", "im": "i be",
    "has": "have", "had": "have", "having": "have", "'ve": "have", "’ve": "have",
    "does": "do", "did": "do", "done": "do", "doing": "do",
    "'ll": "will", "’ll": "will", "wo": "will", "'d": "would", "’d": "would",
    "n't": "not", "n’t": "not", "ca": "can", "sha": "shall",
    "went": "go", "gone": "go", "goes": "go", "took": "take", "taken": "take",
    "bought": "buy", "sent": "send", "thought": "think", "got": "get", "gotten": "get",
    "gave": "give", "given": "give", "made": "make", "paid": "pay", "told": "tell",
    "left": "leave", "met": "meet", "said": "say", "says": "say", "knew": "know", "known": "know",
    "saw": "see", "seen": "see", "spent": "spend", "came": "come", "felt": "feel",
    "found": "find", "heard": "hear", "kept": "keep", "sold": "sell", "brought": "bring",
    "children": "child", "people": "person", "men": "man", "women": "woman",
    "better": "good", "best": "good", "cheaper": "cheap", "pricier": "pricey",
    "u": "you", "ur": "your", "wanna": "want to", "gonna": "go to", "gotta": "have to",
    "ok": "okay", "o.k.": "okay", "k": "okay", "e-mail": "email", "emails": "email",
    "this": "this", "his": "his", "its": "its", "us": "us", "yes": "yes", "news": "news",
    "always": "always", "less": "less", "unless": "unless",
}
_KEEP_S = ("ss", "us", "is", "ys", "as", "os")
_DOUBLE = re.compile(r"([bdgmnprt])\1$")


@lru_cache(maxsize=50_000)
def en_lemma(word: str) -> str:
    w = word.lower().replace("’", "'")
    if w in _EN_IRREGULAR:
        return _EN_IRREGULAR[w]
    if not w.isalpha() or len(w) <= 3:
        return w
    if w.endswith("ies") and len(w) > 4:
        w = w[:-3] + "y"
    elif w.endswith("ing") and len(w) >= 6:
        w = w[:-3]
    elif w.endswith("ed") and len(w) >= 5:
        w = w[:-2]
    elif w.endswith("s") and not w.endswith(_KEEP_S):
        w = w[:-1]
    if len(w) >= 4 and w.endswith("e"):
        w = w[:-1]
    w = _DOUBLE.sub(r"\1", w) if len(w) >= 4 else w
    return w


# --- Russian lemmatizer (pymorphy3, cached) --------------------------------------
_MORPH = None


def _morph():
    global _MORPH
    if _MORPH is None:
        import pymorphy3

        _MORPH = pymorphy3.MorphAnalyzer()
    return _MORPH


@lru_cache(maxsize=100_000)
def ru_lemma(word: str) -> str:
    w = word.lower().replace("ё", "е")
    if not any("а" <= c <= "я" for c in w):
        return en_lemma(w) if w.isascii() else w
    return _morph().parse(w)[0].normal_form.replace("ё", "е")


@Language.component("callqa_en_lemmatizer")
def _en_lemmatizer(doc: Doc) -> Doc:
    for t in doc:
        t.lemma_ = en_lemma(t.text)
    return doc


@Language.component("callqa_ru_lemmatizer")
def _ru_lemmatizer(doc: Doc) -> Doc:
    for t in doc:
        t.lemma_ = ru_lemma(t.text)
    return doc


def get_nlp(language: str) -> Language:
    """The (cached) pipeline for "ru" or "en"; anything else gets English."""
    lang = "ru" if language == "ru" else "en"
    nlp = _NLP.get(lang)
    if nlp is not None:
        return nlp
    with _LOCK:
        nlp = _NLP.get(lang)
        if nlp is None:
            nlp = spacy.blank(lang)
            nlp.add_pipe(f"callqa_{lang}_lemmatizer")
            _NLP[lang] = nlp
    return nlp


_CYR = re.compile(r"[а-яё]", re.I)
_LAT = re.compile(r"[a-z]", re.I)


def detect_language(texts) -> str:
    """"ru" when Cyrillic letters are at least 30% of all letters, else "en"."""
    cyr = lat = 0
    for t in texts:
        cyr += len(_CYR.findall(t))
        lat += len(_LAT.findall(t))
    if cyr + lat == 0:
        return "en"
    return "ru" if cyr / (cyr + lat) >= 0.3 else "en"


def normalize_text(text: str) -> str:
    """Lower-case, fold ё, unify apostrophes and drop ASR filler marks like '#uh'."""
    t = text.lower().replace("ё", "е").replace("’", "'").replace("\\'", "'")
    t = re.sub(r"#\w+|\[(?:breath|noise|laughter|music)\]", " ", t)
    return re.sub(r"\s+", " ", t).strip()

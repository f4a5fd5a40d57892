"""The learned step tagger: per-turn features -> softmax regression -> Viterbi over the whole call.

Features of a turn: its sentence embedding, the embeddings of its neighbours, the embedding again
split by speaker (the same words mean other things from the client), the whole call's mean embedding
(what kind of call it is: a sale, a support call, a wrong number), speaker, position in the call,
length and question marks, and the rules' cues and verdict (the rules stay: as features and as
evidence). A softmax regression gives each turn a probability per step (and "none"); Viterbi with
step-transition priors then picks the call's most likely sequence, so tags are coherent (calls mostly
advance; objections return to earlier talk). Every tag keeps its probability; below a threshold it
is marked uncertain.

The model file is a numpy ``.npz`` (arrays + a JSON header), never a pickle.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from models.events import STEPS

from .embed import DIM, encode

CLASSES: tuple[str, ...] = STEPS + ("none",)
NONE = len(STEPS)
FORMAT = "callqa-step-model/1"
SPEAKERS = ("manager", "client", "unknown")
LANGS = ("en", "ru")
_WORD = re.compile(r"[^\W_]+", re.U)
# A turn with a step may carry a second one ("Hello, I'm looking for a calendar"): any other step whose
# probability reaches this. Second steps count only at call level (steps present, furthest step). Lower
# thresholds (0.15) won on the real families left out and written dev (bench/second_label.py) but lost
# furthest-step accuracy on the blind tests (written en 0.80 -> 0.74, CamRest676 1.00 -> 0.86), so it stays.
SECOND_LABEL = 0.35


class ModelError(ValueError):
    """A model file that cannot be used: missing, corrupted or of another format."""


@dataclass
class TurnPrediction:
    step: Optional[str]
    steps: list[str]
    prob: float  # the probability of ``step`` (of no step, for None)
    probs: dict[str, float]
    uncertain: bool
    like: Optional[str] = None  # the nearest labelled example with this step, as evidence


@dataclass
class StepModel:
    weights: np.ndarray  # (features, classes)
    bias: np.ndarray  # (classes,)
    mean: np.ndarray  # feature standardisation
    scale: np.ndarray
    transitions: np.ndarray  # (classes+1, classes): log P(next | previous), row NONE+1 = call start
    cue_names: list[str]
    meta: dict = field(default_factory=dict)
    # nearest-example evidence: unit embeddings (float16), their texts and labels
    ex_emb: Optional[np.ndarray] = None
    ex_text: list[str] = field(default_factory=list)
    ex_label: Optional[np.ndarray] = None
    ex_lang: Optional[np.ndarray] = None  # 0 en, 1 ru: an example in the call's own language reads better

    # ---- decoding settings (tuned on the dev split, kept in meta)
    @property
    def prior_weight(self) -> float:
        return float(self.meta.get("prior_weight", 0.5))

    @property
    def transition_weight(self) -> float:
        return float(self.meta.get("transition_weight", 1.0))

    @property
    def call_context(self) -> bool:
        """Whether the model reads the call's mean embedding (models trained before it was added do not)."""
        return bool(self.meta.get("call_context", False))

    @property
    def threshold(self) -> float:
        return float(self.meta.get("uncertain_below", 0.5))

    @property
    def second_label(self) -> float:
        return float(self.meta.get("second_label_above", SECOND_LABEL))

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        z = ((x - self.mean) / self.scale) @ self.weights + self.bias
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def decode(self, probs: np.ndarray) -> list[int]:
        """Viterbi: emission log p(y|x) - w*log prior(y) (a hybrid of the per-turn classifier and the
        transition model), transitions scaled by transition_weight."""
        n = len(probs)
        if n == 0:
            return []
        prior = np.asarray(self.meta.get("class_prior", [1 / len(CLASSES)] * len(CLASSES)))
        emit = np.log(np.clip(probs, 1e-9, 1)) - self.prior_weight * np.log(prior)
        trans = self.transition_weight * self.transitions
        score = trans[-1] + emit[0]
        back = np.zeros((n, len(CLASSES)), dtype=np.int64)
        for i in range(1, n):
            cand = score[:, None] + trans[:-1]
            back[i] = cand.argmax(axis=0)
            score = cand.max(axis=0) + emit[i]
        path = [int(score.argmax())]
        for i in range(n - 1, 0, -1):
            path.append(int(back[i][path[-1]]))
        return path[::-1]

    def nearest(self, emb: np.ndarray, label: int, language: Optional[str] = None) -> Optional[str]:
        if self.ex_emb is None or not len(self.ex_text):
            return None
        mask = self.ex_label == label
        if language in ("en", "ru") and self.ex_lang is not None and (mask & (self.ex_lang == LANGS.index(language))).any():
            mask = mask & (self.ex_lang == LANGS.index(language))
        if not mask.any():
            return None
        sims = self.ex_emb[mask].astype(np.float32) @ emb
        return [t for t, m in zip(self.ex_text, mask) if m][int(sims.argmax())]

    # ---- file
    def save(self, path: Path) -> None:
        header = {"format": FORMAT, "classes": list(CLASSES), "cue_names": self.cue_names, "meta": self.meta,
                  "ex_text": self.ex_text}
        arrays = dict(weights=self.weights.astype(np.float32), bias=self.bias.astype(np.float32),
                      mean=self.mean.astype(np.float32), scale=self.scale.astype(np.float32),
                      transitions=self.transitions.astype(np.float32),
                      header=np.frombuffer(json.dumps(header, ensure_ascii=False).encode(), dtype=np.uint8))
        if self.ex_emb is not None:
            arrays.update(ex_emb=self.ex_emb.astype(np.float16), ex_label=self.ex_label.astype(np.int8))
            if self.ex_lang is not None:
                arrays.update(ex_lang=self.ex_lang.astype(np.int8))
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, **arrays)
        tmp.replace(path)  # a running worker never reads a half-written file

    @classmethod
    def load(cls, path: Path) -> "StepModel":
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"no step model at {path}: run `callqa train`, or use the rules (--tagger rules)")
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(bytes(z["header"]).decode())
                if header.get("format") != FORMAT or header.get("classes") != list(CLASSES):
                    raise ModelError(f"{path} is not a callqa step model of format {FORMAT}")
                m = cls(z["weights"], z["bias"], z["mean"], z["scale"], z["transitions"], header["cue_names"],
                        header.get("meta", {}), z["ex_emb"] if "ex_emb" in z else None, header.get("ex_text", []),
                        z["ex_label"] if "ex_label" in z else None, z["ex_lang"] if "ex_lang" in z else None)
        except ModelError:
            raise
        except Exception as e:  # truncated, not a zip, missing arrays, bad JSON
            raise ModelError(f"{path} is not a usable step model ({type(e).__name__}: {e}); "
                             "reinstall it with `callqa train` or use the rules (--tagger rules)") from None
        n_feat = feature_size(len(m.cue_names), m.call_context)
        if m.weights.shape != (n_feat, len(CLASSES)) or m.mean.shape != (n_feat,) or \
                m.transitions.shape != (len(CLASSES) + 1, len(CLASSES)):
            raise ModelError(f"{path}: the arrays do not fit together (a damaged or foreign file)")
        return m


def feature_size(n_cues: int, call_context: bool = True) -> int:
    return 5 * DIM + len(SPEAKERS) + 6 + 2 * len(CLASSES) + n_cues + (DIM if call_context else 0)


def features(emb: np.ndarray, speakers: Sequence[str], texts: Sequence[str], rule_steps: Sequence[list[str]],
             rule_hits: Sequence[dict], cue_names: Sequence[str], call_context: bool = True) -> np.ndarray:
    """One row per turn (see the module docstring for what is in it)."""
    n = len(texts)
    x = np.zeros((n, feature_size(len(cue_names), call_context)), dtype=np.float32)
    if n == 0:
        return x
    if call_context:  # last, so that the columns before keep their place in older model files
        x[:, -DIM:] = emb.mean(axis=0)
    zero = np.zeros(DIM, np.float32)
    cue_index = {c: k for k, c in enumerate(cue_names)}
    o_sp = 5 * DIM
    o_pos = o_sp + len(SPEAKERS)
    o_rule = o_pos + 6
    o_cue = o_rule + 2 * len(CLASSES)
    for i in range(n):
        sp = speakers[i] if speakers[i] in SPEAKERS else "unknown"
        e = emb[i]
        x[i, 0:DIM] = e
        x[i, DIM:2 * DIM] = emb[i - 1] if i > 0 else zero
        x[i, 2 * DIM:3 * DIM] = emb[i + 1] if i + 1 < n else zero
        if sp == "manager":
            x[i, 3 * DIM:4 * DIM] = e
        elif sp == "client":
            x[i, 4 * DIM:5 * DIM] = e
        x[i, o_sp + SPEAKERS.index(sp)] = 1
        words = len(_WORD.findall(texts[i] or ""))
        x[i, o_pos:o_pos + 6] = (i / max(1, n - 1), float(i == 0), float(i == n - 1), math.log1p(n) / 5,
                                 math.log1p(words) / 4, float("?" in (texts[i] or "")))
        steps = rule_steps[i] or []
        x[i, o_rule + (CLASSES.index(steps[0]) if steps else NONE)] = 1
        for s in steps:
            x[i, o_rule + len(CLASSES) + CLASSES.index(s)] = 1
        if not steps:
            x[i, o_rule + len(CLASSES) + NONE] = 1
        for cat in rule_hits[i] or {}:
            k = cue_index.get(cat)
            if k is not None:
                x[i, o_cue + k] = 1
    return x


def cue_names_of(rules) -> list[str]:
    """Every cue and objection category of both languages' lexicons, in a fixed order."""
    names = set()
    for lang in ("en", "ru"):
        lex = rules.compiled(lang).lex
        names |= {f"cue:{k}" for k in lex.cues} | {f"obj:{k}" for k in lex.objections}
    return sorted(names)


def predict(model: StepModel, texts: Sequence[str], speakers: Sequence[str], rule_steps: Sequence[list[str]],
            rule_hits: Sequence[dict], emb: Optional[np.ndarray] = None,
            language: Optional[str] = None) -> list[TurnPrediction]:
    emb = encode(texts) if emb is None else emb
    probs = model.probabilities(features(emb, speakers, texts, rule_steps, rule_hits, model.cue_names,
                                         model.call_context))
    path = model.decode(probs)
    out = []
    for i, k in enumerate(path):
        step = None if k == NONE else CLASSES[k]
        p = {c: round(float(v), 4) for c, v in zip(CLASSES, probs[i])}
        steps = [step] if step else []
        if step:  # a turn with two functions ("Hello, I'm looking for a calendar")
            steps += [c for c in STEPS if c != step and p[c] >= model.second_label]
        out.append(TurnPrediction(step, steps, float(probs[i][k]), p, float(probs[i][k]) < model.threshold,
                                  model.nearest(emb[i], k, language) if step else None))
    return out


PACKAGED = Path(__file__).resolve().parent / "data" / "step_model.npz"


def installed_path(home: Path) -> Path:
    """Where `callqa train` installs a model (it wins over the packaged one)."""
    return Path(home) / "models" / "step_model.npz"


class LiveModel:
    """The step model a worker uses, following a newly installed file the way LiveRules follows YAML
    edits: checked at most every ``interval_s``; a missing or corrupted new file is reported through
    ``on_error`` and the previous model stays in use."""

    def __init__(self, paths: Sequence[Path], interval_s: float = 5.0, on_error=None, on_info=None):
        self.paths = [Path(p) for p in paths]
        self.interval_s = interval_s
        self.on_error = on_error or (lambda msg: None)
        self.on_info = on_info or (lambda msg: None)
        self.path = self._first()
        self._model = StepModel.load(self.path)  # none usable at start-up is an error, not a warning
        self._stamp = self._mtime()
        self._checked = 0.0
        self.error: Optional[str] = None

    def _first(self) -> Path:
        return next((p for p in self.paths if p.exists()), self.paths[-1])

    def _mtime(self):
        try:
            st = self.path.stat()
            return st.st_mtime_ns, st.st_size
        except OSError:
            return None

    def refresh(self) -> bool:
        import time
        self._checked = time.monotonic()
        path = self._first()
        if path != self.path:
            self.path = path
        stamp = self._mtime()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            model = StepModel.load(self.path)
        except ModelError as e:
            self.error = str(e)
            self.on_error(f"step model not taken: {e} (the previous model stays in use)")
            return False
        self._model, self.error = model, None
        self.on_info(f"step model {self.path} ({model.meta.get('version', '?')}) is in use")
        return True

    def get(self) -> StepModel:
        import time
        if time.monotonic() - self._checked >= self.interval_s:
            self.refresh()
        return self._model

    def watch(self, interval_s: float = 5.0) -> None:
        """Check the file in a daemon thread, so a new or broken model is logged when it is installed."""
        import threading
        stop = threading.Event()

        def loop():
            while not stop.wait(interval_s):
                try:
                    self.refresh()
                except Exception as e:  # never end the watching
                    self.on_error(f"checking the step model {self.path} failed: {e}")
        threading.Thread(target=loop, name="callqa-model-watch", daemon=True).start()


def apply(model: StepModel, tags: list, texts: Sequence[str], speakers: Sequence[str],
          language: Optional[str] = None) -> None:
    """Let the model decide the rules' SegTags' steps (in place), keeping what the rules said.

    The evidence stays the rule phrase when the rules agree; otherwise it is the nearest labelled
    example of the model's step ("like: …")."""
    preds = predict(model, texts, speakers, [list(t.steps) for t in tags], [t.hits for t in tags],
                    language=language)
    for tg, p in zip(tags, preds):
        tg.rule_step, tg.rule_steps = tg.step, list(tg.steps)
        tg.model = p
        if tg.step != p.step or not tg.evidence:
            tg.evidence = f'like: "{p.like}"' if p.like else None
        tg.step, tg.steps = p.step, list(p.steps)


_loaded: dict[Path, tuple[tuple, StepModel]] = {}


def load_cached(path: Path) -> StepModel:
    """A model file loaded once per process (reloaded when the file changes)."""
    path = Path(path)
    st = path.stat() if path.exists() else None
    stamp = (st.st_mtime_ns, st.st_size) if st else None
    hit = _loaded.get(path)
    if hit is None or hit[0] != stamp:
        _loaded[path] = (stamp, StepModel.load(path))
    return _loaded[path][1]

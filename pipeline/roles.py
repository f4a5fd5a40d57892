"""Which voice is the manager: from what each voice says, with a confidence.

A small logistic model reads each turn (multilingual sentence embedding plus its form: a question, its
length, where in the call it falls) and gives the odds that a manager said it — managers introduce
themselves and the company, ask about needs, present, propose the next step; clients answer, object and
ask about price. It is trained on the speaker labels of the project's own corpus (``corpus/``, train
split; never ``shared/eval``). A voice's evidence is the sum of its turns' log-odds, so a call with many
turns is decided more surely than one with three; below ``min_confidence`` the roles are marked
uncertain and the speaker-dependent metrics are left out of the statistics.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

MODEL_PATH = Path(__file__).resolve().parent / "data" / "role_model.npz"
MIN_CONFIDENCE = 0.8
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass
class RoleAssignment:
    roles: dict[int, str]           # voice -> manager | client
    confidence: float               # that the manager is the manager
    uncertain: bool
    evidence: dict[int, float] = field(default_factory=dict)  # voice -> summed log-odds of "manager"

    def as_dict(self) -> dict:
        return {"roles": {str(k): v for k, v in self.roles.items()}, "confidence": round(self.confidence, 4),
                "uncertain": self.uncertain, "evidence": {str(k): round(float(v), 3) for k, v in self.evidence.items()}}


def features(texts: Sequence[str], emb: np.ndarray) -> np.ndarray:
    n = len(texts)
    form = np.zeros((n, 4), np.float32)
    for i, t in enumerate(texts):
        words = _WORD.findall(t or "")
        form[i] = ("?" in (t or ""), math.log1p(len(words)), i / max(1, n - 1), i == 0)
    return np.hstack([emb.astype(np.float32), form])


@dataclass
class RoleModel:
    w: np.ndarray
    b: float
    mean: np.ndarray
    scale: np.ndarray

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros(0, np.float32)
        from pipeline.tagging.embed import encode
        x = (features(texts, encode(texts)) - self.mean) / self.scale
        return x @ self.w + self.b

    def save(self, path: Path) -> None:
        np.savez(path, w=self.w, b=np.float32(self.b), mean=self.mean, scale=self.scale)

    @classmethod
    def load(cls, path: Path = MODEL_PATH) -> "RoleModel":
        with np.load(path) as z:
            return cls(w=z["w"], b=float(z["b"]), mean=z["mean"], scale=z["scale"])


_MODEL: Optional[RoleModel] = None


def get_model() -> RoleModel:
    global _MODEL
    if _MODEL is None:
        _MODEL = RoleModel.load()
    return _MODEL


def train(dialogues: list[dict], l2: float = 1.0, iters: int = 300) -> RoleModel:
    """Fit on the manager/client turns of ``dialogues`` (ASR-style copies included by the caller)."""
    from pipeline.tagging.embed import encode
    from pipeline.tagging.training import fit_softmax

    xs, ys = [], []
    for d in dialogues:
        turns = [t for t in d["turns"] if t.get("speaker") in ("manager", "client")]
        if not turns:
            continue
        texts = [t["text"] for t in turns]
        xs.append(features(texts, encode(texts)))
        ys.extend(int(t["speaker"] == "manager") for t in turns)
    x = np.vstack(xs)
    y = np.array(ys)
    W, b, mean, scale = fit_softmax(x, y, np.ones(len(y), np.float32), l2=l2, iters=iters, k=2)
    return RoleModel(w=(W[:, 1] - W[:, 0]).astype(np.float32), b=float(b[1] - b[0]), mean=mean, scale=scale)


def assign(texts: Sequence[str], voices: Sequence[int], weights: Optional[Sequence[float]] = None,
           direction: Optional[str] = None, model: Optional[RoleModel] = None,
           min_confidence: float = MIN_CONFIDENCE) -> RoleAssignment:
    """Roles for the voices of a call's turns (in time order). The voice whose turns read most like a
    manager's is the manager; every other voice is the client (a transfer or an IVR reads as neither,
    and sides with the client)."""
    model = model or get_model()
    lg = np.clip(model.logits(list(texts)), -4, 4)
    w = np.ones(len(texts)) if weights is None else np.minimum(np.asarray(weights, float), 3.0)
    ev: dict[int, float] = {}
    for v, l, wt in zip(voices, lg, w):
        ev[v] = ev.get(v, 0.0) + float(l) * wt
    if direction == "inbound" and voices:  # the manager answers an inbound call
        ev[voices[0]] = ev.get(voices[0], 0.0) + 1.0
    if not ev:
        return RoleAssignment({}, 0.0, True)
    if len(ev) == 1:
        (v, s), = ev.items()
        conf = 1 / (1 + math.exp(-abs(s)))
        return RoleAssignment({v: "manager" if s >= 0 else "client"}, conf, conf < min_confidence, ev)
    ranked = sorted(ev, key=ev.get, reverse=True)
    margin = ev[ranked[0]] - ev[ranked[1]]
    conf = 1 / (1 + math.exp(-margin / 2))
    roles = {v: ("manager" if v == ranked[0] else "client") for v in ev}
    return RoleAssignment(roles, conf, conf < min_confidence, ev)


# Turn-taking between the two parties of a text dialogue whose speakers are not given: a turn is mostly the
# other party's reply. Chosen with the per-turn posterior below on the written dev split and the real
# source families left out in turn (bench/README.md, "Speakers inferred from the words"), never shared/eval.
SWITCH = 0.9
MIN_POSTERIOR = 0.8


def turn_roles(texts: Sequence[str], switch: float = SWITCH, min_posterior: float = MIN_POSTERIOR,
               model: Optional[RoleModel] = None) -> list[str]:
    """Who said each turn of a dialogue given as text without speakers: "manager", "client", or "unknown"
    where that is not sure enough (posterior under ``min_posterior``).

    Two hidden states (manager, client) over the turns, each turn's evidence the role model's log-odds
    that a manager said it, a change of speaker from one turn to the next with probability ``switch``;
    forward-backward gives every turn its posterior. Turn-taking carries a short "ok" or "yes" from the
    clear turns around it, where the words alone do not say who spoke. Only for turns that are speaker
    turns (a chat, a transcript by turns), not for a recording's pause-cut segments."""
    n = len(texts)
    if n < 2:
        return ["unknown"] * n
    model = model or get_model()
    lg = np.clip(model.logits(list(texts)), -4, 4).astype(np.float64)
    emit = np.stack([lg / 2, -lg / 2], axis=1)
    trans = np.log(np.array([[1 - switch, switch], [switch, 1 - switch]]))
    fwd, bwd = np.zeros((n, 2)), np.zeros((n, 2))
    fwd[0] = emit[0] + math.log(0.5)
    for i in range(1, n):
        fwd[i] = emit[i] + np.logaddexp(fwd[i - 1][0] + trans[0], fwd[i - 1][1] + trans[1])
    for i in range(n - 2, -1, -1):
        nxt = emit[i + 1] + bwd[i + 1]
        bwd[i] = np.logaddexp(trans[:, 0] + nxt[0], trans[:, 1] + nxt[1])
    post = fwd + bwd
    manager = np.exp(post[:, 0] - np.logaddexp(post[:, 0], post[:, 1]))
    return ["manager" if p >= min_posterior else "client" if p <= 1 - min_posterior else "unknown" for p in manager]


def turn_weight(text: str) -> float:
    """Longer turns say more about who speaks: up to 3 for twelve words or more."""
    return min(3.0, max(0.5, len(_WORD.findall(text or "")) / 4))


def main() -> None:
    """Retrain the packaged role model: ``python -m pipeline.roles`` (about a minute and a half on 2 cores).
    Train split plus its ASR-style copies (lower case, no punctuation, fillers); scored on the dev split."""
    import random

    from pipeline.tagging.training import asr_style, load_corpus

    rng = random.Random(7)
    corpus = load_corpus(real=False)  # the shipped role model was trained on the written corpus
    train_set = [d for d in corpus if d.get("split") == "train"]
    dev = [d for d in corpus if d.get("split") == "dev"]
    model = train(train_set + [asr_style(d, rng) for d in train_set])
    right = total = calls_right = 0
    for d in dev + [asr_style(d, rng) for d in dev]:
        turns = [t for t in d["turns"] if t.get("speaker") in ("manager", "client")]
        texts = [t["text"] for t in turns]
        lg = model.logits(texts)
        right += sum((x > 0) == (t["speaker"] == "manager") for x, t in zip(lg, turns))
        total += len(turns)
        a = assign(texts, [int(t["speaker"] != "manager") for t in turns], [turn_weight(x) for x in texts], model=model)
        calls_right += a.roles.get(0) == "manager"
    print(f"dev: turns {right / total:.3f}, calls whose manager is found {calls_right / (2 * len(dev)):.3f}")
    model.save(MODEL_PATH)
    print(f"saved {MODEL_PATH}")


if __name__ == "__main__":
    main()

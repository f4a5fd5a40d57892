"""Decode and split call recordings. No Kafka here.

Every failure is a typed ``AudioError`` whose message says what to do next;
the pipeline turns it into a dead letter and a failed call, never a crash.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000


class AudioError(Exception):
    """A recording that cannot be used; ``str()`` is the reason."""


class FetchError(AudioError):
    pass


class DecodeError(AudioError):
    pass


class EmptyAudioError(AudioError):
    pass


class TooLongError(AudioError):
    pass


@dataclass(frozen=True)
class AudioInfo:
    channels: int
    duration_s: float
    sample_rate: int
    codec: str


def probe(path: Path) -> AudioInfo:
    import av

    try:
        with av.open(str(path)) as container:
            streams = container.streams.audio
            if not streams:
                raise DecodeError(f"{path.name} has no audio stream")
            s = streams[0]
            duration = None
            if s.duration is not None and s.time_base is not None:
                duration = float(s.duration * s.time_base)
            elif container.duration is not None:
                duration = container.duration / 1_000_000
            return AudioInfo(channels=s.codec_context.channels, duration_s=duration or 0.0,
                             sample_rate=s.codec_context.sample_rate or 0, codec=s.codec_context.name)
    except AudioError:
        raise
    except Exception as e:  # PyAV raises many kinds for non-audio input
        raise DecodeError(f"{path.name} is not a readable audio file ({type(e).__name__}: {e})") from None


def decode_channels(path: Path, max_duration_s: float | None = None) -> list[np.ndarray]:
    """Decode to 16 kHz float32, one array per channel (mono: a list of one)."""
    from faster_whisper.audio import decode_audio

    info = probe(path)
    if max_duration_s and info.duration_s > max_duration_s:
        raise TooLongError(f"{path.name} lasts {info.duration_s:.0f}s, over the {max_duration_s:.0f}s limit "
                           "(CALLQA_ASR_MAX_AUDIO_S)")
    try:
        if info.channels >= 2:
            left, right = decode_audio(str(path), sampling_rate=SAMPLE_RATE, split_stereo=True)
            channels = [left, right]
        else:
            channels = [decode_audio(str(path), sampling_rate=SAMPLE_RATE)]
    except Exception as e:
        raise DecodeError(f"{path.name} could not be decoded ({type(e).__name__}: {e})") from None
    if not channels[0].size:
        raise EmptyAudioError(f"{path.name} holds no audio samples")
    return channels


def copy_into(path: Path, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    dest = directory / path.name
    shutil.copyfile(path, dest)
    return dest

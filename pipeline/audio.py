"""Decode and split call recordings. No Kafka here.

Every failure is a typed ``AudioError`` whose message says what to do next;
the pipeline turns it into a dead letter and a failed call, never a crash.
"""
from __future__ import annotations

import hashlib
import re
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


class SilentAudioError(EmptyAudioError):
    """Every channel is (digital) silence: nothing to transcribe."""


class NoSpeechError(AudioError):
    """Audio is there but no channel held recognisable speech (music, tones, noise, a dead line)."""


SILENCE_DBFS = -60.0  # peak level under which a channel counts as silent


@dataclass(frozen=True)
class AudioInfo:
    channels: int
    duration_s: float
    sample_rate: int
    codec: str


def probe(path: Path) -> AudioInfo:
    import av

    try:
        size = path.stat().st_size
    except OSError as e:
        raise DecodeError(f"{path.name} cannot be read ({e.strerror or e})") from None
    if size == 0:
        raise EmptyAudioError(f"{path.name} is empty (0 bytes)")
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            streams = container.streams.audio
            if not streams:
                raise DecodeError(f"{path.name} is not a readable audio file (no audio stream)")
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
    """Decode any container/codec PyAV (FFmpeg) reads - wav (PCM, u-law, A-law), flac, mp3, ogg/opus, m4a... -
    to 16 kHz float32, one array per channel (mono: a list of one).

    Raises DecodeError (not audio, corrupt), EmptyAudioError (no samples), SilentAudioError (every channel
    silent) or TooLongError (over ``max_duration_s``, checked from the header and again while decoding,
    since some containers do not state a duration).
    """
    info = probe(path)
    if max_duration_s and info.duration_s > max_duration_s:
        raise TooLongError(f"{path.name} lasts {info.duration_s:.0f}s, over the {max_duration_s:.0f}s limit "
                           "(CALLQA_ASR_MAX_AUDIO_S)")
    channels = _decode(path, info, max_duration_s)
    if not channels or not channels[0].size:
        raise EmptyAudioError(f"{path.name} holds no audio samples")
    if len(channels[0]) < SAMPLE_RATE // 10:
        raise EmptyAudioError(f"{path.name} holds only {len(channels[0]) / SAMPLE_RATE * 1000:.0f} ms of audio")
    peak = max(float(np.max(np.abs(c))) for c in channels)
    if peak <= 10 ** (SILENCE_DBFS / 20):
        raise SilentAudioError(f"{path.name} is silent ({len(channels[0]) / SAMPLE_RATE:.1f}s, peak "
                               f"{20 * np.log10(peak + 1e-12):.0f} dBFS on every channel)")
    return channels


def _decode(path: Path, info: AudioInfo, max_duration_s: float | None) -> list[np.ndarray]:
    import av

    n_ch = max(1, info.channels or 1)
    limit = int(max_duration_s * SAMPLE_RATE) if max_duration_s else None
    chunks: list[np.ndarray] = []
    total = 0
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            stream = container.streams.audio[0]
            layout = "mono" if n_ch == 1 else ("stereo" if n_ch == 2 else None)
            resampler = av.AudioResampler(format="fltp", layout=layout or stream.layout, rate=SAMPLE_RATE)
            frames = container.decode(stream)
            while True:
                try:
                    frame = next(frames)
                except StopIteration:
                    break
                except av.error.InvalidDataError:
                    if chunks:  # a damaged packet mid-file: keep what decoded (FFmpeg does the same)
                        continue
                    raise
                frame.pts = None
                for out in resampler.resample(frame):
                    arr = out.to_ndarray()
                    chunks.append(arr.reshape(-1, arr.shape[-1]))
                    total += arr.shape[-1]
                if limit is not None and total > limit:
                    raise TooLongError(f"{path.name} lasts over the {max_duration_s:.0f}s limit "
                                       "(CALLQA_ASR_MAX_AUDIO_S)")
            for out in resampler.resample(None):
                arr = out.to_ndarray()
                chunks.append(arr.reshape(-1, arr.shape[-1]))
    except AudioError:
        raise
    except Exception as e:
        if chunks:
            pass  # truncated at the end: use what decoded
        else:
            raise DecodeError(f"{path.name} could not be decoded ({type(e).__name__}: {e})") from None
    if not chunks:
        return []
    data = np.concatenate(chunks, axis=1).astype(np.float32)
    return [np.ascontiguousarray(data[i]) for i in range(data.shape[0])]


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def copy_into(path: Path, directory: Path, call_id: str) -> Path:
    """Copy a recording into ``directory`` under a name derived from its call, never replacing a
    different file: PBX exports share names like ``call.wav``, and a call's page must keep playing
    its own audio. The same bytes published again reuse the stored copy."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", call_id).strip("._")[:100] or "call"
    suffix = re.sub(r"[^A-Za-z0-9.]+", "", path.suffix.lower())[:10]
    digest = _digest(path)
    for name in (f"{stem}{suffix}", f"{stem}-{digest[:12]}{suffix}", f"{stem}-{digest}{suffix}"):
        dest = directory / name
        if dest.exists():
            if dest.is_file() and _digest(dest) == digest:
                return dest
            continue
        try:
            with dest.open("xb") as out, path.open("rb") as src:   # "x": never replaces a file that
                shutil.copyfileobj(src, out, 1 << 20)             # appeared since the check
        except FileExistsError:
            continue
        return dest
    raise FileExistsError(f"{directory} already holds different recordings named after call {call_id}; "
                          "publish with another --call-id")

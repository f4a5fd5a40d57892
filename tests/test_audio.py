"""Decoding: every common container/codec, channel split, and a typed failure for every kind of bad file."""
from __future__ import annotations

import wave
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from pipeline.audio import (SAMPLE_RATE, AudioError, DecodeError, EmptyAudioError, SilentAudioError, TooLongError,
                            decode_channels, probe)


def _encode(src: np.ndarray, rate: int, path: Path, codec: str, fmt: str | None = None, channels: int = 1) -> Path:
    """Write int16 samples (shape: channels x n) with PyAV, in any codec it has."""
    import av

    layout = {1: "mono", 2: "stereo"}[channels]
    with av.open(str(path), "w", format=fmt) as out:
        st = out.add_stream(codec, rate=rate)
        st.layout = layout
        data = np.atleast_2d(src).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(data.T.reshape(1, -1).copy() if channels > 1 else data, format="s16",
                                           layout=layout)
        frame.sample_rate = rate
        for pkt in st.encode(frame):
            out.mux(pkt)
        for pkt in st.encode(None):
            out.mux(pkt)
    return path


@pytest.fixture(scope="module")
def jfk(shared_dir) -> tuple[np.ndarray, int]:
    audio = decode_channels(shared_dir / "audio" / "real" / "jfk_16k.wav")[0]
    return (np.clip(audio, -1, 1) * 32767).astype(np.int16), SAMPLE_RATE


CODECS = [
    ("pcm_s16le", "wav", ".wav", 16000),
    ("pcm_mulaw", "wav", ".wav", 8000),
    ("pcm_alaw", "wav", ".wav", 8000),
    ("flac", "flac", ".flac", 16000),
    ("libmp3lame", "mp3", ".mp3", 16000),
    ("libopus", "ogg", ".opus", 48000),
    ("aac", "ipod", ".m4a", 16000),
]


@pytest.mark.parametrize("codec,fmt,ext,rate", CODECS, ids=[c[0] for c in CODECS])
def test_common_codecs_decode_to_16k_mono(jfk, tmp_path, codec, fmt, ext, rate):
    samples, sr = jfk
    if rate != sr:  # crude resample is fine: only the decoder is under test
        samples = np.interp(np.arange(0, len(samples), sr / rate), np.arange(len(samples)), samples).astype(np.int16)
    path = _encode(samples, rate, tmp_path / f"jfk{ext}", codec, fmt)
    chans = decode_channels(path)
    assert len(chans) == 1 and chans[0].dtype == np.float32
    assert abs(len(chans[0]) / SAMPLE_RATE - 11.0) < 0.2
    ref = samples.astype(np.float32) / 32768
    ref16 = np.interp(np.arange(len(chans[0])) * rate / SAMPLE_RATE, np.arange(len(ref)), ref)
    # same signal (lossy codecs delay and colour it a little): envelopes correlate at some small lag
    env = lambda x: np.abs(x[: len(x) // 160 * 160]).reshape(-1, 160).mean(1)  # noqa: E731
    a, b = env(chans[0]), env(ref16.astype(np.float32))
    n = min(len(a), len(b)) - 20
    best = max(np.corrcoef(a[lag:lag + n], b[:n])[0, 1] for lag in range(0, 20))
    assert best > 0.9


def test_stereo_is_split_into_its_channels(tmp_path):
    t = np.arange(8000 * 2) / 8000
    left = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    right = np.zeros_like(left)
    right[8000:] = (np.sin(2 * np.pi * 880 * t[8000:]) * 8000).astype(np.int16)
    path = tmp_path / "st.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes(np.stack([left, right], 1).tobytes())
    assert probe(path).channels == 2
    l, r = decode_channels(path)
    assert len(l) == len(r) == 2 * SAMPLE_RATE
    assert np.abs(l[:SAMPLE_RATE]).max() > 0.2 and np.abs(r[: SAMPLE_RATE - 200]).max() < 1e-3
    assert np.abs(r[SAMPLE_RATE + 200:]).max() > 0.2


def test_real_stereo_call_matches_reference_layout(shared_dir):
    chans = decode_channels(shared_dir / "audio" / "synthetic" / "synth_call_en_8k_stereo.wav")
    assert len(chans) == 2 and abs(len(chans[0]) / SAMPLE_RATE - 60.02) < 0.05
    # the manager (left) speaks first: 0.5 - 5.0 s
    lvl = lambda x, a, b: float(np.sqrt(np.mean(x[int(a * SAMPLE_RATE):int(b * SAMPLE_RATE)] ** 2)))  # noqa: E731
    assert lvl(chans[0], 1, 4.5) > 5 * lvl(chans[1], 1, 4.5)


def _wav(path: Path, samples: np.ndarray, rate: int = 8000) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes(samples.astype(np.int16).tobytes())
    return path


def test_not_audio_is_a_decode_error(tmp_path):
    p = tmp_path / "not_audio.wav"
    p.write_bytes(b"this is not a recording\n" * 100)
    with pytest.raises(DecodeError, match="not a readable audio file"):
        decode_channels(p)


def test_an_image_has_no_audio_stream(tmp_path):
    import av
    p = tmp_path / "picture.png"
    with av.open(str(p), "w", format="image2") as out:
        st = out.add_stream("png", rate=1)
        st.width, st.height, st.pix_fmt = 8, 8, "rgb24"
        frame = av.VideoFrame.from_ndarray(np.zeros((8, 8, 3), np.uint8), format="rgb24")
        for pkt in st.encode(frame):
            out.mux(pkt)
        for pkt in st.encode(None):
            out.mux(pkt)
    with pytest.raises(DecodeError):
        decode_channels(p)


def test_empty_file_and_empty_wav(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(EmptyAudioError, match="0 bytes"):
        decode_channels(empty)
    with pytest.raises(EmptyAudioError):
        decode_channels(_wav(tmp_path / "no_frames.wav", np.zeros(0)))
    with pytest.raises(EmptyAudioError, match="ms of audio"):
        decode_channels(_wav(tmp_path / "blip.wav", np.ones(80) * 1000))


def test_silence_is_its_own_error(tmp_path):
    with pytest.raises(SilentAudioError, match="silent"):
        decode_channels(_wav(tmp_path / "silence.wav", np.zeros(8000 * 30)))
    # one silent channel of a stereo call is fine (a client who never spoke is still a call)
    p = tmp_path / "half.wav"
    with wave.open(str(p), "wb") as w:
        w.setnchannels(2), w.setsampwidth(2), w.setframerate(8000)
        tone = (np.sin(np.arange(8000) / 8000 * 2 * np.pi * 300) * 5000).astype(np.int16)
        w.writeframes(np.stack([tone, np.zeros_like(tone)], 1).tobytes())
    assert len(decode_channels(p)) == 2


def test_truncated_and_corrupted_files_fail_typed_or_decode_what_is_there(jfk, tmp_path):
    samples, sr = jfk
    mp3 = _encode(samples, sr, tmp_path / "full.mp3", "libmp3lame", "mp3")
    data = mp3.read_bytes()
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(data[: len(data) // 2])
    chans = decode_channels(cut)  # a recording cut short: keep what is there
    assert 3 < len(chans[0]) / SAMPLE_RATE < 8
    rng = np.random.default_rng(0)
    garbled = bytearray(data)
    garbled[2000:] = rng.integers(0, 256, len(garbled) - 2000, dtype=np.uint8).tobytes()
    bad = tmp_path / "garbled.mp3"
    bad.write_bytes(bytes(garbled))
    try:
        decode_channels(bad)
    except AudioError:
        pass  # typed, never a crash of another kind
    header_only = tmp_path / "header.flac"
    header_only.write_bytes(_encode(samples, sr, tmp_path / "x.flac", "flac", "flac").read_bytes()[:200])
    with pytest.raises(AudioError):
        decode_channels(header_only)


def test_too_long_from_header_and_while_decoding(tmp_path):
    p = _wav(tmp_path / "long.wav", (np.sin(np.arange(8000 * 20) / 8000 * 2 * np.pi * 200) * 3000))
    with pytest.raises(TooLongError, match="limit"):
        decode_channels(p, max_duration_s=10)
    # a stream that does not state its duration (raw mp3 without a Xing header may not): checked while decoding
    from pipeline import audio as audio_mod
    real_probe = audio_mod.probe
    try:
        audio_mod.probe = lambda path: audio_mod.AudioInfo(1, 0.0, 8000, "pcm_s16le")
        with pytest.raises(TooLongError):
            decode_channels(p, max_duration_s=10)
    finally:
        audio_mod.probe = real_probe


def test_plan_channels_and_merge_semantics():
    from models.events import CallRecorded
    from pipeline.asr import AsrOptions, ChannelResult, Turn, WordT
    from pipeline.audio import AudioInfo
    from pipeline.transcribe import ChannelJob, merge, plan_channels

    ev = CallRecorded(call_id="c1", manager_id="m", recording_url="file:///x.wav", language="en",
                      started_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
                      channels={"layout": "stereo", "manager_channel": 1})
    stereo = AudioInfo(channels=2, duration_s=10, sample_rate=8000, codec="pcm_s16le")
    assert plan_channels(ev, stereo) == [ChannelJob(0, "client"), ChannelJob(1, "manager")]
    mono_ev = ev.model_copy(update={"channels": ev.channels.model_copy(update={"layout": "mono",
                                                                                "manager_channel": None})})
    assert plan_channels(mono_ev, stereo) == [ChannelJob(None, "unknown", diarize=True)]
    assert plan_channels(ev, AudioInfo(1, 10, 8000, "x")) == [ChannelJob(None, "unknown", diarize=True)]
    assert plan_channels(ev, AudioInfo(1, 10, 8000, "x"), diarize=False) == [ChannelJob(None, "unknown")]
    # what the audio shows wins over the event: the same call on both channels is read once
    from pipeline.channels import ChannelAnalysis
    assert plan_channels(ev, stereo, ChannelAnalysis("duplicate", 0.99, 0.99)) == [ChannelJob(0, "unknown", True)]
    assert plan_channels(ev, stereo, ChannelAnalysis("one_channel", active_channel=1)) == [
        ChannelJob(1, "unknown", True)]
    assert plan_channels(ev, stereo, ChannelAnalysis("stereo", 0.0, 0.1)) == [
        ChannelJob(0, "client"), ChannelJob(1, "manager")]

    def turn(a, b, text):
        return Turn(a, b, text, -0.2, [WordT(a, b, " " + text, 0.9)])
    res = [ChannelResult([turn(2.0, 3.0, "client two")], "en", 10.0, 1.0),
           ChannelResult([turn(0.5, 1.5, "manager one"), turn(3.5, 4.0, "manager three")], "en", 10.0, 1.0)]
    out = merge(ev, plan_channels(ev, stereo), res, AsrOptions(), 1.5)
    assert [(s.speaker, s.text) for s in out.segments] == [
        ("manager", "manager one"), ("client", "client two"), ("manager", "manager three")]
    assert out.segments[0].words[0].start == 0.5 and out.asr.audio_s == 10.0

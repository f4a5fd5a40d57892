"""Asterisk/FreePBX spool scanner: file-name parsing, leg joining, state across restarts."""
from __future__ import annotations

import os
import time
import wave
from pathlib import Path

import numpy as np

from pipeline.ingest.managers import ManagerDirectory
from pipeline.ingest.spool import SpoolScanner, parse_name

MANAGERS = ManagerDirectory([{"id": "m-ivanova", "name": "Анна", "team": "msk", "keys": ["101"]}])


def write_wav(path: Path, samples: np.ndarray, rate: int = 8000, age_s: float = 60.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())
    t = time.time() - age_s
    os.utime(path, (t, t))
    return path


def tone(freq: float, seconds: float, rate: int = 8000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (8000 * np.sin(2 * np.pi * freq * t)).astype("int16")


def day_dir(root: Path) -> Path:
    return root / "2024" / "05" / "01"


def test_parse_freepbx_names():
    n = parse_name("out-79161234567-101-20240501-120000-1714557600.42.wav", tz="Europe/Moscow")
    assert (n.kind, n.direction, n.extension, n.client, n.uniqueid, n.leg) == (
        "out", "outbound", "101", "79161234567", "1714557600.42", None)
    assert n.started_at.isoformat() == "2024-05-01T12:00:00+03:00"
    n = parse_name("external-101-79161234567-20240501-120000-1714557600.43-in.wav")
    assert (n.direction, n.extension, n.client, n.leg) == ("inbound", "101", "79161234567", "in")
    assert n.base == "external-101-79161234567-20240501-120000-1714557600.43"
    assert parse_name("q-600-+79161234567-20240501-120000-1714557600.44.WAV").extension == "600"
    assert parse_name("voicemail.txt") is None
    assert parse_name("out-1-2-20241399-120000-1.2.wav") is None     # month 13


def test_scan_mono_and_joined_legs(tmp_path):
    root, out = tmp_path / "monitor", tmp_path / "recordings" / "asterisk"
    d = day_dir(root)
    write_wav(d / "out-79161234567-101-20240501-120000-1714557600.42.wav", tone(300, 2.0))
    write_wav(d / "external-101-79990001122-20240501-130000-1714557601.7-in.wav", tone(300, 1.0))
    write_wav(d / "external-101-79990001122-20240501-130000-1714557601.7-out.wav", tone(700, 1.5))
    write_wav(d / "out-555-777-20240501-140000-1714557602.1.wav", tone(300, 0.5), age_s=1)   # still recording
    sc = SpoolScanner(root, out, tmp_path / "state.json", MANAGERS, settle_s=10)
    evs = {e.call_id: e for e in sc.scan()}
    assert set(evs) == {"1714557600.42", "1714557601.7"}

    mono = evs["1714557600.42"]
    assert mono.source == "asterisk" and mono.manager_id == "m-ivanova" and mono.direction == "outbound"
    assert mono.client_number == "79161234567" and mono.channels.layout == "mono"
    assert mono.recording_url.startswith("file://") and mono.duration_s == 2.0

    st = evs["1714557601.7"]
    assert st.direction == "inbound" and st.channels.layout == "stereo" and st.channels.manager_channel == 1
    joined = Path(st.recording_url[len("file://"):])
    assert joined.parent == out / "2024" / "05" / "01" and joined.exists()
    with wave.open(str(joined), "rb") as w:
        assert (w.getnchannels(), w.getframerate(), w.getnframes()) == (2, 8000, 12000)
        frames = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    assert np.array_equal(frames[:8000, 0], tone(300, 1.0))          # -in leg on the left
    assert np.array_equal(frames[:, 1], tone(700, 1.5))              # -out leg on the right
    assert not frames[8000:, 0].any()                                # shorter leg padded with silence
    assert st.duration_s == 1.5

    # nothing is remembered until committed; after commit a new scanner (restart) skips it
    assert {e.call_id for e in sc.scan()} == set(evs)
    sc.commit("1714557600.42")
    sc2 = SpoolScanner(root, out, tmp_path / "state.json", MANAGERS, settle_s=10)
    assert [e.call_id for e in sc2.scan()] == ["1714557601.7"]
    sc2.commit("1714557601.7")
    assert SpoolScanner(root, out, tmp_path / "state.json", MANAGERS).scan() == []


def test_lone_leg_waits_then_goes_mono_and_unknown_extension(tmp_path):
    root = tmp_path / "monitor"
    f = write_wav(day_dir(root) / "out-79161234567-999-20240501-120000-1714557603.5-in.wav", tone(300, 1), age_s=30)
    sc = SpoolScanner(root, tmp_path / "out", tmp_path / "state.json", MANAGERS, settle_s=10, leg_wait_s=60)
    assert sc.scan() == []                        # the -out leg may still come
    t = time.time() - 120
    os.utime(f, (t, t))
    (ev,) = sc.scan()
    assert ev.channels.layout == "mono" and ev.manager_id == "unknown:999"
    assert sc.unknown == ["999"] and MANAGERS.unknown_counts[("asterisk", "999")] >= 1


def test_corrupt_state_file_is_set_aside(tmp_path):
    root = tmp_path / "monitor"
    write_wav(root / "out-1-101-20240501-120000-1714557604.1.wav", tone(300, 0.2))   # flat monitor dir
    state = tmp_path / "state.json"
    state.write_text("{not json")
    sc = SpoolScanner(root, tmp_path / "out", state, MANAGERS)
    assert [e.call_id for e in sc.scan()] == ["1714557604.1"]
    assert state.with_suffix(".corrupt").exists()

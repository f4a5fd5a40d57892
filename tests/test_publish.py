"""`callqa publish` with audio files, against a real broker: where the recording goes and what the event says."""
from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from models.events import CallRecorded
from tests.helpers import consume_all, run_cli

pytestmark = pytest.mark.slow  # a broker round trip


@pytest.fixture
def env(kafka_bootstrap, tmp_path):
    return {"CALLQA_KAFKA_BOOTSTRAP": kafka_bootstrap, "CALLQA_HOME": str(tmp_path / "home"),
            "CALLQA_TOPIC_RECORDED": f"test-publish-{uuid.uuid4().hex[:8]}.recorded"}


def published(kafka_bootstrap, env) -> dict[str, CallRecorded]:
    evs = [CallRecorded.model_validate_json(m.value) for m in consume_all(kafka_bootstrap, env["CALLQA_TOPIC_RECORDED"])]
    return {e.call_id: e for e in evs}


def local(ev: CallRecorded) -> Path:
    return Path(ev.recording_url.removeprefix("file://"))


def test_a_recording_never_overwrites_another_of_the_same_name(kafka_bootstrap, env, tmp_path, shared_dir):
    # two PBX exports, both called call.wav, different calls
    a = tmp_path / "export-a" / "call.wav"
    b = tmp_path / "export-b" / "call.wav"
    for src, dest in ((shared_dir / "audio" / "synthetic" / "synth_call_en_8k_mono.wav", a),
                      (shared_dir / "audio" / "real" / "jfk_8k.wav", b)):
        dest.parent.mkdir()
        shutil.copyfile(src, dest)
    for path, manager, cid in ((a, "m-anna", "pbx-1"), (b, "m-olga", "pbx-2"), (b, "m-olga", None),
                               (a, "m-anna", "pbx-1"),      # the same call again: its stored copy is reused
                               (b, "m-anna", "pbx-1")):     # a different file for pbx-1: kept beside, not over
        args = ["publish", str(path), "--manager", manager, "--manager-channel", "none"]
        r = run_cli(*args, *(["--call-id", cid] if cid else []), env=env)
        assert r.returncode == 0, r.stderr
    evs = published(kafka_bootstrap, env)
    assert len(evs) == 3 and local(evs["pbx-2"]).read_bytes() == b.read_bytes()
    other = next(e for cid, e in evs.items() if cid.startswith("cli-"))
    assert local(other).read_bytes() == b.read_bytes()
    assert local(evs["pbx-2"]).name == "pbx-2.wav" and local(other).name == f"{other.call_id}.wav"
    stored = sorted(p.name for p in (Path(env["CALLQA_HOME"]) / "recordings").iterdir())
    assert len(stored) == 4 and "pbx-1.wav" in stored
    # the first pbx-1 recording still holds its own audio (the last event for pbx-1 points at the new copy)
    assert (Path(env["CALLQA_HOME"]) / "recordings" / "pbx-1.wav").read_bytes() == a.read_bytes()
    assert local(evs["pbx-1"]).name.startswith("pbx-1-") and local(evs["pbx-1"]).read_bytes() == b.read_bytes()


def test_manager_channel_on_a_mono_file_is_warned_about(kafka_bootstrap, env, shared_dir):
    mono = shared_dir / "audio" / "real" / "jfk_8k.wav"
    r = run_cli("publish", str(mono), "--manager", "m-1", "--manager-channel", "1", "--call-id", "mono-1", env=env)
    assert r.returncode == 0 and "jfk_8k.wav is mono, so --manager-channel 1 is ignored" in r.stderr
    r = run_cli("publish", str(mono), "--manager", "m-1", "--call-id", "mono-2", env=env)   # the default: quiet
    assert r.returncode == 0 and "warning" not in r.stderr
    stereo = shared_dir / "audio" / "synthetic" / "synth_call_en_8k_stereo.wav"
    r = run_cli("publish", str(stereo), "--manager", "m-1", "--manager-channel", "1", "--call-id", "st-1", env=env)
    assert r.returncode == 0 and "warning" not in r.stderr
    evs = published(kafka_bootstrap, env)
    assert evs["mono-1"].channels.layout == "mono" and evs["mono-1"].channels.manager_channel is None
    assert evs["mono-2"].channels.layout == "mono"
    assert evs["st-1"].channels.layout == "stereo" and evs["st-1"].channels.manager_channel == 1

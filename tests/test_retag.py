"""Trainers edit the YAML; a running worker picks it up, and `callqa retag` re-tags stored calls."""
from __future__ import annotations

import os
import shutil
import time

import pytest
from sqlalchemy import select

from callqa.cli import main
from callqa.publisher import Publisher
from models.events import CallTranscribed
from models.tables import FlagRow
from pipeline.tagging import LiveRules, load_rules
from pipeline.tagging.retag import retag
from pipeline.tagging.rules import DEFAULT_CONFIG_DIR
from tests.helpers import WorkerProcess


def rules_copy(tmp_path):
    d = tmp_path / "rules"
    shutil.copytree(DEFAULT_CONFIG_DIR / "lexicon", d / "lexicon")
    shutil.copy(DEFAULT_CONFIG_DIR / "flags.yaml", d / "flags.yaml")
    return d


def set_monologue_limit(d, seconds: int) -> None:
    f = d / "flags.yaml"
    text = f.read_text()
    start = text.index("long_monologue:")
    i = text.index("max_s:", start)
    j = text.index("\n", i)
    f.write_text(text[:i] + f"max_s: {seconds}" + text[j:])
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a visible change even on coarse clocks


def wait_for(cond, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"not seen within {timeout_s}s"
        time.sleep(0.5)


def long_call(call_id: str = "retag-1") -> CallTranscribed:
    return CallTranscribed.model_validate({
        "call_id": call_id, "manager_id": "m-retag", "language": "en", "recording_url": "file:///r.wav",
        "duration_s": 90.0,
        "asr": {"engine": "faster-whisper", "model": "base", "compute_type": "int8", "audio_s": 90, "wall_s": 9},
        "segments": [
            {"speaker": "manager", "start": 0.0, "end": 4.0, "text": "Hello, this is Ann from Acme. Is now a good time?"},
            {"speaker": "client", "start": 4.5, "end": 6.0, "text": "Sure."},
            {"speaker": "manager", "start": 6.5, "end": 51.0,
             "text": "We offer a warehouse platform with onboarding, training and support, it costs 200 a month."},
            {"speaker": "client", "start": 52.0, "end": 54.0, "text": "Sounds good, send me the contract."},
            {"speaker": "manager", "start": 55.0, "end": 60.0, "text": "I will send it today, let's talk on Friday at 10."},
        ]})


def test_live_rules_follow_edits_and_keep_the_last_good_ones(tmp_path):
    d = rules_copy(tmp_path)
    errors = []
    live = LiveRules(d, interval_s=0, on_error=errors.append)
    ev = long_call()
    assert "long_monologue" not in {f.code for f in retag(ev, live.get()).flags}
    set_monologue_limit(d, 30)
    assert "long_monologue" in {f.code for f in retag(ev, live.get()).flags}
    (d / "flags.yaml").write_text("flags: [this is not\n")
    assert "long_monologue" in {f.code for f in retag(ev, live.get()).flags}
    assert errors and "flags.yaml" in errors[0] and "keeping the previous rules" in errors[0]


@pytest.mark.slow
def test_retag_stored_calls_through_the_worker(kafka_bootstrap, tmp_path, monkeypatch, capsys):
    d = rules_copy(tmp_path)
    w = WorkerProcess(kafka_bootstrap, tmp_path, [tmp_path], extra_env={"CALLQA_RULES_DIR": str(d)}).start()
    try:
        with Publisher(kafka_bootstrap, w.topics["transcribed"]) as pub:
            ev = long_call()
            pub.publish_raw(ev.call_id, ev.model_dump_json().encode())
        first = w.wait_for_calls([ev.call_id], statuses=("tagged",), timeout_s=120)[ev.call_id]
        with w.sessions() as s:
            assert "long_monologue" not in set(s.scalars(select(FlagRow.code).where(FlagRow.call_id == ev.call_id)))

        set_monologue_limit(d, 30)
        for k, v in w.env.items():
            if k.startswith("CALLQA_"):
                monkeypatch.setenv(k, v)
        assert main(["retag", "--dry-run"]) == 0
        assert "1 of 1 stored calls change" in capsys.readouterr().out
        assert main(["retag"]) == 0
        assert "published 1 re-tagged" in capsys.readouterr().out
        w.wait_for_calls([ev.call_id], statuses=("tagged",), timeout_s=60,
                         newer_than=first.updated_at.replace(tzinfo=first.updated_at.tzinfo or __import__(
                             "datetime").timezone.utc))
        with w.sessions() as s:
            assert "long_monologue" in set(s.scalars(select(FlagRow.code).where(FlagRow.call_id == ev.call_id)))
        # the running worker re-reads the edit for new calls (it checks the files at most every 5 s)...
        time.sleep(6)
        flagged_new = {}
        for cid in ("retag-2", "retag-3"):
            with Publisher(kafka_bootstrap, w.topics["transcribed"]) as pub:
                pub.publish_raw(cid, long_call(cid).model_dump_json().encode())
            w.wait_for_calls([cid], statuses=("tagged",), timeout_s=60)
            with w.sessions() as s:
                flagged_new[cid] = "long_monologue" in set(s.scalars(select(FlagRow.code).where(FlagRow.call_id == cid)))
            # ...and keeps the last good rules through a broken edit, which retag refuses, naming the file
            (d / "flags.yaml").write_text("flags: {long_monologue: {max_s: soon}}\n")
            time.sleep(6)
        assert flagged_new == {"retag-2": True, "retag-3": True}
        assert "keeping the previous rules" in w.log.read_text()
        assert main(["retag"]) == 2
        assert "flags.yaml" in capsys.readouterr().err
        # the worker judges an edit when it is saved, with no call to tag: a new broken edit is logged...
        seen = w.log.read_text().count("rules edit rejected")
        (d / "flags.yaml").write_text("flags: {long_monologue: {max_s: later}}\n")
        wait_for(lambda: w.log.read_text().count("rules edit rejected") > seen, 20)
        # ...and so is the edit that fixes it
        shutil.copy(DEFAULT_CONFIG_DIR / "flags.yaml", d / "flags.yaml")
        set_monologue_limit(d, 30)
        wait_for(lambda: "rules fixed" in w.log.read_text(), 20)
    finally:
        w.stop()
    assert load_rules(DEFAULT_CONFIG_DIR).flags  # the packaged rules are untouched

"""The walking skeleton, end to end: real broker, real worker, real Whisper, real SQLite."""
from __future__ import annotations

import json
import re
import time
from datetime import datetime, timezone

import pytest
from sqlalchemy import func, select

from callqa.publisher import Publisher
from models.events import CallRecorded, DeadLetter
from models.tables import Call, CallStep, ManagerStageStat, SegmentRow
from tests.helpers import WorkerProcess, consume_all

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def worker(kafka_bootstrap, shared_dir, tmp_path_factory):
    home = tmp_path_factory.mktemp("worker")
    (home / "bad").mkdir()
    (home / "calls").mkdir()
    w = WorkerProcess(kafka_bootstrap, home, [shared_dir / "audio", home / "bad", home / "calls"]).start()
    yield w
    w.stop()


@pytest.fixture(scope="module")
def publisher(kafka_bootstrap, worker):
    with Publisher(kafka_bootstrap, worker.topics["recorded"]) as p:
        yield p


def synth_event(shared_dir, lang: str, call_id: str, manager: str) -> CallRecorded:
    path = shared_dir / "audio" / "synthetic" / f"synth_call_{lang}_8k_stereo.wav"
    return CallRecorded(call_id=call_id, source="generic", manager_id=manager, manager_name=manager.title(),
                        team_id="team-test", language=lang, recording_url=path.as_uri(),
                        started_at=datetime(2026, 11, 2, 10, 0, tzinfo=timezone.utc),
                        channels={"layout": "stereo", "manager_channel": 0})


def words(text: str) -> list[str]:
    return [w for w in re.findall(r"\w+", text.lower().replace("ё", "е")) if len(w) >= 4]


def test_stereo_calls_transcribed_tagged_and_counted(worker, publisher, shared_dir):
    ids = {"en": "synth-en-1", "ru": "synth-ru-1"}
    for lang, cid in ids.items():
        publisher.publish(synth_event(shared_dir, lang, cid, f"mgr-{lang}"))
    rows = worker.wait_for_calls(list(ids.values()), statuses=("tagged", "failed"))
    assert {c.status for c in rows.values()} == {"tagged"}, {c.call_id: c.error for c in rows.values()}

    with worker.sessions() as s:
        for lang, cid in ids.items():
            ref = json.loads((shared_dir / "audio" / "synthetic" / f"synth_call_{lang}_8k_stereo.ref.json").read_text())
            segs = s.scalars(select(SegmentRow).where(SegmentRow.call_id == cid).order_by(SegmentRow.idx)).all()
            assert len(segs) >= len(ref["turns"]) // 2
            # Attribution by channel: every segment's speaker is the speaker of the reference turn it overlaps most.
            for seg in segs:
                overlaps = [(min(seg.end, t["end"]) - max(seg.start, t["start"]), t["speaker"]) for t in ref["turns"]]
                best = max(overlaps)
                if best[0] > 0:
                    assert seg.speaker == best[1], (lang, seg.start, seg.text)
            # The words of each side come through (Whisper base on 8 kHz telephone audio).
            for speaker in ("manager", "client"):
                heard = set(words(" ".join(x.text for x in segs if x.speaker == speaker)))
                said = words(" ".join(t["text"] for t in ref["turns"] if t["speaker"] == speaker))
                hit = sum(w in heard for w in said) / len(said)
                assert hit >= 0.7, (lang, speaker, hit)
            steps = {cs.step: cs for cs in s.scalars(select(CallStep).where(CallStep.call_id == cid))}
            assert steps["greeting"].present and steps["needs_discovery"].present
            assert steps["presentation"].present and steps["closing"].present
            assert rows[cid].furthest_step == "closing"
            assert rows[cid].language == lang
            assert rows[cid].asr["engine"] == "faster-whisper" and rows[cid].asr["audio_s"] > 55

    # Statistics are mirrored to SQL by the worker (refreshed about once a second).
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with worker.sessions() as s:
            stats = {(r.manager_id, r.step): r
                     for r in s.scalars(select(ManagerStageStat).where(ManagerStageStat.period == "all"))}
        if ("mgr-ru", "closing") in stats and ("mgr-en", "closing") in stats:
            break
        time.sleep(0.5)
    assert stats[("mgr-en", "greeting")].calls == 1
    assert stats[("mgr-en", "greeting")].occurred == 1
    assert stats[("mgr-ru", "closing")].share == 1.0


def test_same_audio_stereo_call_is_read_once_with_roles(worker, publisher, shared_dir):
    """A PBX export with the mixed call on both channels, published as an ordinary (stereo) event: the
    worker reads it once, tells the voices apart, finds the manager, and the steps count for them."""
    from tests import speaker_refs as refs
    from tests.test_speakers import _stereo_copy

    src = shared_dir / "audio" / "synthetic" / "synth_call_en_8k_mono.wav"
    dup = _stereo_copy(src, worker.home / "calls" / "dup.wav", "wav")
    ev = CallRecorded(call_id="dup-en-1", source="generic", manager_id="mgr-dup", team_id="team-test",
                      language="en", recording_url=dup.as_uri(),
                      started_at=datetime(2026, 11, 3, 10, 0, tzinfo=timezone.utc))
    publisher.publish(ev)
    row = worker.wait_for_calls([ev.call_id])[ev.call_id]
    assert row.status == "tagged", row.error
    assert row.event["channels"]["detected"] == "duplicate"
    assert row.event["roles"]["method"] == "diarization" and not row.event["roles"]["uncertain"]
    assert row.metrics["talk_ratio"] is not None
    with worker.sessions() as s:
        segs = s.scalars(select(SegmentRow).where(SegmentRow.call_id == ev.call_id).order_by(SegmentRow.idx)).all()
        steps = {cs.step: cs for cs in s.scalars(select(CallStep).where(CallStep.call_id == ev.call_id))}
    for a, b in zip(segs, segs[1:]):
        assert b.start >= a.end - 0.05, (a.text, b.text)  # nothing transcribed twice
    acc = refs.role_accuracy(refs.synthetic(shared_dir, "en"), [(x.start, x.end, x.speaker) for x in segs])
    assert acc["of_covered"] >= 0.9, acc
    assert steps["greeting"].present and steps["needs_discovery"].present and steps["closing"].present
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with worker.sessions() as s:
            stat = s.scalar(select(ManagerStageStat).where(ManagerStageStat.manager_id == "mgr-dup",
                                                           ManagerStageStat.period == "all",
                                                           ManagerStageStat.step == "needs_discovery"))
        if stat is not None:
            break
        time.sleep(0.5)
    assert stat is not None and stat.calls == 1 and stat.occurred == 1


def test_replayed_event_is_stored_once(worker, publisher, shared_dir):
    ev = synth_event(shared_dir, "en", "synth-en-replay", "mgr-replay")
    publisher.publish(ev)
    first = worker.wait_for_calls([ev.call_id])[ev.call_id]
    with worker.sessions() as s:
        n_segments = s.scalar(select(func.count()).select_from(SegmentRow).where(SegmentRow.call_id == ev.call_id))
    publisher.publish(ev)  # a provider retry or a replay after a crash
    worker.wait_for_calls([ev.call_id], newer_than=first.updated_at.replace(tzinfo=timezone.utc)
                          if first.updated_at.tzinfo is None else first.updated_at)
    with worker.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Call).where(Call.call_id == ev.call_id)) == 1
        assert s.scalar(select(func.count()).select_from(SegmentRow)
                        .where(SegmentRow.call_id == ev.call_id)) == n_segments
        assert s.scalar(select(func.count()).select_from(CallStep).where(CallStep.call_id == ev.call_id)) == 5


def test_bad_events_go_to_dlq_and_the_worker_goes_on(worker, publisher, shared_dir, kafka_bootstrap):
    not_audio = worker.home / "bad" / "not_audio.wav"
    not_audio.write_bytes(b"this is not a recording\n" * 100)
    broken = synth_event(shared_dir, "en", "broken-audio-1", "mgr-bad").model_copy(
        update={"recording_url": not_audio.as_uri()})
    outside = synth_event(shared_dir, "en", "outside-dir-1", "mgr-bad").model_copy(
        update={"recording_url": "file:///etc/passwd"})
    publisher.publish_raw("junk-1", b"{this is not json")
    publisher.publish_raw("nomgr-1", json.dumps({"call_id": "nomgr-1", "recording_url": "file:///x.wav"}).encode())
    publisher.publish(broken)
    publisher.publish(outside)
    good = CallRecorded(call_id="jfk-after-bad", manager_id="mgr-bad", language="en",
                        recording_url=(shared_dir / "audio" / "real" / "jfk_8k.wav").as_uri(),
                        channels={"layout": "mono", "manager_channel": None})
    publisher.publish(good)

    rows = worker.wait_for_calls(["jfk-after-bad", "broken-audio-1", "outside-dir-1"])
    assert rows["jfk-after-bad"].status == "tagged"
    assert rows["broken-audio-1"].status == "failed"
    assert "not a readable audio file" in rows["broken-audio-1"].error
    assert rows["outside-dir-1"].status == "failed" and "outside the allowed" in rows["outside-dir-1"].error
    with worker.sessions() as s:
        segs = s.scalars(select(SegmentRow).where(SegmentRow.call_id == "jfk-after-bad")).all()
        # mono: the voices are told apart; one man's speech is no conversation, so its roles are not trusted
        roles = rows["jfk-after-bad"].event["roles"]
        assert roles["method"] == "diarization" and (roles["voices"] == 1 or roles["uncertain"]), roles
        if roles["uncertain"]:
            assert rows["jfk-after-bad"].metrics["talk_ratio"] is None
        assert "country" in " ".join(x.text for x in segs).lower()

    letters = [DeadLetter.model_validate_json(m.value) for m in consume_all(kafka_bootstrap, worker.topics["dlq"])]
    by_original = {l.original: l for l in letters}
    junk = by_original["{this is not json"]
    assert junk.stage == "transcribe" and "invalid event" in junk.error and junk.call_id is None
    nomgr = next(l for l in letters if l.call_id == "nomgr-1")
    assert "manager_id" in nomgr.error
    assert any(l.call_id == "broken-audio-1" and l.error_type == "DecodeError" for l in letters)

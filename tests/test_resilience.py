"""Resilience: a worker killed with kill -9, and a broker restarted, in the middle of a run.

The target (design.md): no call lost, none stored twice. Events are CallTranscribed, crafted from the
hand-written dev dialogues (tests/data/tagging_dev.jsonl) and published straight to the worker's
`transcribed` topic, so the tag, store and statistics agents do real work without Whisper.
"""
from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select

from callqa.publisher import Publisher
from models.events import CallTranscribed
from models.tables import Call, CallStep, SegmentRow
from pipeline import stats
from pipeline.store import load_outcomes, mirrored_stats
from tests.helpers import WorkerProcess

pytestmark = [pytest.mark.slow, pytest.mark.faults]

DEV = Path(__file__).resolve().parent / "data" / "tagging_dev.jsonl"
DIALOGUES = [json.loads(line) for line in DEV.read_text(encoding="utf-8").splitlines() if line.strip()]
MANAGERS = [f"res-mgr-{i}" for i in range(5)]


def transcribed_event(n: int, prefix: str = "res", managers: list[str] = MANAGERS) -> CallTranscribed:
    """Call number n: one of the dev dialogues (cycled) as a transcript, 4 s per turn."""
    d = DIALOGUES[n % len(DIALOGUES)]
    segments, t = [], 0.0
    for turn in d["turns"]:
        dur = 1.0 + 0.06 * len(turn["text"])
        segments.append({"speaker": turn["speaker"], "start": round(t, 2), "end": round(t + dur, 2),
                         "text": turn["text"], "avg_logprob": -0.2})
        t += dur + 0.4
    manager = managers[n % len(managers)]
    return CallTranscribed.model_validate({
        "call_id": f"{prefix}-{n}", "manager_id": manager, "manager_name": manager.title(),
        "team_id": "north" if n % len(managers) < 3 else "south", "language": d["language"],
        "language_detected": d["language"], "duration_s": round(t, 2),
        "started_at": (datetime(2026, 9, 1, 9, tzinfo=timezone.utc) + timedelta(days=n % 50, minutes=n)).isoformat(),
        "recording_url": f"file:///recordings/{prefix}-{n}.wav",
        "channels": {"layout": "stereo", "manager_channel": 0},
        "segments": segments,
        "asr": {"engine": "faster-whisper", "model": "base", "compute_type": "int8", "audio_s": round(t, 2),
                "wall_s": 1.0},
    })


def stored_count(w: WorkerProcess, ids: list[str]) -> int:
    with w.sessions() as s:
        return s.scalar(select(func.count()).select_from(Call)
                        .where(Call.call_id.in_(ids), Call.status == "tagged")) or 0


def wait_stored(w: WorkerProcess, ids: list[str], at_least: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        n = stored_count(w, ids)
        if n >= at_least:
            return n
        if w.proc is not None and w.proc.poll() is not None:
            raise AssertionError(f"worker exited (code {w.proc.returncode}) with {n}/{at_least} stored; "
                                 f"log tail:\n{w.log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"only {n} of {at_least} calls stored in {timeout_s:.0f}s; "
                                 f"log tail:\n{w.log.read_text()[-3000:]}")
        time.sleep(0.1)


def assert_each_stored_once(w: WorkerProcess, events: dict[str, CallTranscribed]) -> None:
    """Every call stored, as one row, with its own segments and five steps, and nothing else stored."""
    ids = list(events)
    with w.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Call)) == len(ids)
        rows = {c.call_id: c for c in s.scalars(select(Call))}
        assert set(rows) == set(ids)
        assert {c.status for c in rows.values()} == {"tagged"}, \
            {c.call_id: (c.status, c.failed_stage, c.error) for c in rows.values() if c.status != "tagged"}
        segs = dict(s.execute(select(SegmentRow.call_id, func.count()).group_by(SegmentRow.call_id)).all())
        steps = dict(s.execute(select(CallStep.call_id, func.count()).group_by(CallStep.call_id)).all())
        dup_idx = s.execute(select(SegmentRow.call_id, SegmentRow.idx, func.count())
                            .group_by(SegmentRow.call_id, SegmentRow.idx).having(func.count() > 1)).all()
    assert dup_idx == []
    assert {cid: segs.get(cid, 0) for cid in ids} == {cid: len(ev.segments) for cid, ev in events.items()}
    assert {cid: steps.get(cid, 0) for cid in ids} == {cid: 5 for cid in ids}
    for cid, ev in events.items():
        assert rows[cid].manager_id == ev.manager_id


def assert_stats_match_stored_calls(w: WorkerProcess, events: dict[str, CallTranscribed],
                                    timeout_s: float = 120) -> None:
    """The SQL mirror of the live Faust table equals the statistics recomputed from the stored calls
    (each call counted once). The mirror is written asynchronously, so poll until equal."""
    managers = {ev.manager_id for ev in events.values()}
    deadline = time.monotonic() + timeout_s
    while True:
        with w.sessions() as s:
            expected = stats.aggregate(load_outcomes(s))
            mirror = mirrored_stats(s)
        ok = set(expected) == managers and all(
            m in mirror and mirror[m].totals == expected[m].totals and mirror[m].objections == expected[m].objections
            for m in expected)
        if ok or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert set(expected) == managers
    n_calls = {m: sum(1 for ev in events.values() if ev.manager_id == m) for m in managers}
    for m in managers:
        assert expected[m].manager_totals()["greeting"]["calls"] == n_calls[m], m
        assert m in mirror, f"no mirrored statistics for {m}"
        assert mirror[m].totals == expected[m].totals, m
        assert mirror[m].objections == expected[m].objections, m


def _record(fault: str, w: WorkerProcess, ids: list[str], bootstrap: str, **extra) -> None:
    """This run's figures for docs/reliability.md (tests/faults.py; the asserts above already passed)."""
    from tests import faults
    led = faults.ledger(w.sessions, ids, letters=faults.dead_letters(bootstrap, w.topics["dlq"]))
    led.stats_equal = faults.stats_match(w.sessions)[0]
    faults.record(fault, led, **extra)


class PacedPublisher(threading.Thread):
    """Publishes events one by one (acks=all), `interval_s` apart, in the background. Short timeouts
    and no retries: when the broker dies it stops, and `published` counts the events the broker
    acknowledged (an unacknowledged one may still have been written: publishing it again later is a
    duplicate on the topic, which the pipeline must absorb)."""

    def __init__(self, bootstrap: str, topic: str, events: list[CallTranscribed], interval_s: float):
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.events, self.interval_s = bootstrap, topic, events, interval_s
        self.published = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        from kafka import KafkaProducer
        try:
            producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", retries=0,
                                     max_block_ms=3000, request_timeout_ms=3000,
                                     max_in_flight_requests_per_connection=1)
        except BaseException as e:
            self.error = e
            return
        try:
            for ev in self.events:
                producer.send(self.topic, key=ev.call_id.encode(), value=ev.model_dump_json().encode()).get(5)
                self.published += 1
                time.sleep(self.interval_s)
        except BaseException as e:  # the broker went away: reported to the test
            self.error = e
        finally:
            producer.close(timeout=2)


def test_worker_killed_mid_run_loses_and_duplicates_nothing(kafka_bootstrap, tmp_path):
    w1 = WorkerProcess(kafka_bootstrap, tmp_path, [tmp_path])
    events = {ev.call_id: ev for ev in (transcribed_event(n, "kill") for n in range(60))}
    ids = list(events)
    w2 = None
    w1.start()
    try:
        # Warm-up: the first call is stored once the worker is up, so the run below is really "mid-run".
        with Publisher(kafka_bootstrap, w1.topics["transcribed"]) as pub:
            pub.publish_raw(ids[0], events[ids[0]].model_dump_json().encode())
        wait_stored(w1, ids[:1], 1, timeout_s=180)

        feeder = PacedPublisher(kafka_bootstrap, w1.topics["transcribed"], list(events.values())[1:], 0.02)
        feeder.start()
        stored_at_kill = wait_stored(w1, ids, 10, timeout_s=60)
        w1.stop(kill=True)  # kill -9 while events are arriving and being tagged and stored
        published_at_kill = 1 + feeder.published
        feeder.join(timeout=60)
        assert feeder.error is None, feeder.error
        assert stored_at_kill < len(ids), "the kill came after the run, not in the middle of it"
        print(f"kill -9 with {stored_at_kill} stored, {published_at_kill} published of {len(ids)}")

        w2 = WorkerProcess(kafka_bootstrap, tmp_path, [tmp_path], app_id=w1.app_id)
        w2.topics, w2.env = w1.topics, w1.env
        w2.start()
        # The dead member's partitions are only handed over once its session times out.
        w2.wait_for_calls(ids, timeout_s=240, statuses=("tagged",))
        assert_each_stored_once(w2, events)
        assert_stats_match_stored_calls(w2, events)
        assert w2.proc.poll() is None, "the second worker exited"
        _record("worker killed (kill -9) mid-run", w2, ids, kafka_bootstrap, stored_at_kill=stored_at_kill,
                published_at_kill=published_at_kill)
    finally:
        w1.stop(kill=True)
        if w2 is not None:
            w2.stop()


def test_broker_restart_mid_run_loses_and_duplicates_nothing(tmp_path):
    from callqa.broker import LocalBroker

    broker = LocalBroker(workdir=tmp_path / "kafka", partitions=4).start()
    port = broker.port
    w = WorkerProcess(broker.bootstrap, tmp_path / "worker", [tmp_path])
    events = {ev.call_id: ev for ev in (transcribed_event(n, "brk") for n in range(60))}
    ids = list(events)
    before, after = list(events.values())[:30], list(events.values())[30:]
    w.start()
    try:
        with Publisher(broker.bootstrap, w.topics["transcribed"]) as pub:
            pub.publish_raw(ids[0], events[ids[0]].model_dump_json().encode())
        wait_stored(w, ids[:1], 1, timeout_s=180)

        feeder = PacedPublisher(broker.bootstrap, w.topics["transcribed"], before[1:], 0.02)
        feeder.start()
        stored_at_stop = wait_stored(w, ids, 10, timeout_s=60)
        broker.stop(kill=True)  # the broker dies (kill -9) in the middle of the run
        feeder.join(timeout=30)
        assert not feeder.is_alive()
        published_before = 1 + feeder.published
        print(f"broker killed with {stored_at_stop} stored, {published_before} published")
        time.sleep(5)  # the worker sees the broker gone (connection refused) for a while

        broker = LocalBroker(workdir=tmp_path / "kafka", partitions=4, port=port).start()
        # Whatever the feeder could not publish while the broker was down is published now, then the rest.
        pending = before[published_before:] + after
        with Publisher(broker.bootstrap, w.topics["transcribed"]) as pub:
            for ev in pending:
                pub.publish_raw(ev.call_id, ev.model_dump_json().encode())
        # The worker that lived through the restart carries on: no restart by hand.
        w.wait_for_calls(ids, timeout_s=300, statuses=("tagged",))
        assert_each_stored_once(w, events)
        assert_stats_match_stored_calls(w, events)
        assert w.proc.poll() is None, "the worker exited"
        _record("broker killed and restarted mid-run", w, ids, broker.bootstrap, stored_at_stop=stored_at_stop,
                published_before=published_before)
    finally:
        w.stop()
        broker.stop()

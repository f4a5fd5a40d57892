"""Fault: PostgreSQL goes away in the middle of a run and comes back.

A real broker, a real PostgreSQL server of the test's own (stopped with `pg_ctl stop -m fast`, which
cuts every open connection, and started again on the same data directory and port) and a real worker.
The target (design.md): no call lost, none stored twice; a call that could not be stored for want of a
database is retried, never dead-lettered, and its offset is not committed (a worker stopped during the
outage leaves it to the next one, and stops promptly). Events are CallTranscribed, as in
tests/test_resilience.py, so the tag, store and statistics agents do real work. The first two end with the
check of every fault test (tests/faults.py) and leave their figures for docs/reliability.md's table; the
third is about the failures agent alone.
"""
from __future__ import annotations

import re
import subprocess
import time

import pytest
from sqlalchemy import func, select

from callqa.publisher import Publisher
from models.events import CallRecorded, DeadLetter
from models.tables import Call, SegmentRow
from tests import faults
from tests.helpers import WorkerProcess, read_topic
from tests.pgserver import LocalPostgres
from tests.test_resilience import (PacedPublisher, assert_stats_match_stored_calls, stored_count,
                                   transcribed_event, wait_stored)

pytestmark = [pytest.mark.slow, pytest.mark.faults]

OUTAGE_S = 30.0
STOP_BOUND_S = 15.0  # a worker asked to stop (SIGTERM) during the outage exits by itself within this


@pytest.fixture
def pg():
    server = LocalPostgres().init()
    try:
        yield server
    finally:
        server.destroy()


def poison_event(call_id: str) -> bytes:
    """A call that is a fine CallRecorded but no CallTagged (no transcript): the store refuses its content
    (dead letter), and the failures agent records it as a failed call, in the database."""
    return CallRecorded(call_id=call_id, manager_id="res-mgr-0", recording_url="file:///recordings/x.wav",
                        started_at="2026-09-01T09:00:00Z").model_dump_json().encode()


def assert_outcome(w: WorkerProcess, events: dict, poison: str, bootstrap: str) -> None:
    """Every call stored once with all its segments, the poison call failed at the store, and the one
    dead letter its own (none for the outage)."""
    ids = set(events)
    with w.sessions() as s:
        rows = {c.call_id: (c.status, c.failed_stage) for c in s.scalars(select(Call))}
        segs = dict(s.execute(select(SegmentRow.call_id, func.count()).group_by(SegmentRow.call_id)).all())
    assert {cid for cid, (status, _) in rows.items() if status == "tagged"} == ids
    assert rows.get(poison) == ("failed", "store"), rows.get(poison)
    assert set(rows) == ids | {poison}
    assert {cid: segs.get(cid, 0) for cid in ids} == {cid: len(ev.segments) for cid, ev in events.items()}
    letters = [DeadLetter.model_validate_json(r.value) for r in read_topic(bootstrap, w.topics["dlq"])]
    assert [(d.call_id, d.stage) for d in letters] == [(poison, "store")], [(d.call_id, d.error) for d in letters]


def wait_failed(w: WorkerProcess, call_id: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with w.sessions() as s:
            call = s.get(Call, call_id)
        if call is not None and call.status == "failed":
            return
        assert time.monotonic() < deadline, f"{call_id} not recorded as failed; log:\n{w.log.read_text()[-3000:]}"
        time.sleep(0.5)


def store_waits(w: WorkerProcess) -> dict:
    """What the worker's log says of the outage: how many times the store found the database unavailable,
    and how long it waited before the database was back (the longest wait)."""
    log = w.log.read_text(errors="replace")
    waits = [float(x) for x in re.findall(r"database back for store after ([0-9.]+) s", log)]
    return {"store_retries": log.count("database unavailable for store"),
            "store_waited_s": max(waits, default=None)}


def left_uncommitted(bootstrap: str, w: WorkerProcess, ids: list[str]) -> dict[str, str]:
    """For each call, where its offset stands for the worker's consumer group (Faust's group is the app id):
    "tagged" if its event on the tagged topic is past the committed offset, "transcribed" if it has no
    tagged event and its transcribed event is past the committed offset, "committed" otherwise."""
    committed = {tp: -1 if c is None else c for tp, c in
                 faults.group_committed(bootstrap, w.app_id, [w.topics["tagged"], w.topics["transcribed"]]).items()}

    def pending(topic: str) -> dict[str, bool]:
        out: dict[str, bool] = {}
        for r in read_topic(bootstrap, topic):
            key = r.key.decode() if r.key else ""
            done = r.offset < committed.get((topic, r.partition), -1)
            out[key] = out.get(key, True) and not done  # any copy of the event not yet committed
        return out

    tagged, transcribed = pending(w.topics["tagged"]), pending(w.topics["transcribed"])
    return {cid: ("tagged" if tagged.get(cid) else "committed" if cid in tagged
                  else "transcribed" if transcribed.get(cid) else "committed") for cid in ids}


def test_postgres_down_30s_mid_run_worker_waits_and_loses_nothing(kafka_bootstrap, tmp_path, pg):
    w = WorkerProcess(kafka_bootstrap, tmp_path, [tmp_path], db_url=pg.url,
                      extra_env={"CALLQA_DB_RETRY_MAX_S": "2"})
    events = {ev.call_id: ev for ev in (transcribed_event(n, "pgout") for n in range(150))}
    ids = list(events)
    poison = "pgout-poison"
    w.sessions  # the schema, before the worker starts
    w.start()
    try:
        with Publisher(kafka_bootstrap, w.topics["transcribed"]) as pub:
            pub.publish_raw(ids[0], events[ids[0]].model_dump_json().encode())
        wait_stored(w, ids[:1], 1, timeout_s=180)

        # 149 calls over ~15 s; the database stops once some are stored, the rest arrive while it is away
        feeder = PacedPublisher(kafka_bootstrap, w.topics["transcribed"], list(events.values())[1:], 0.1)
        feeder.start()
        stored_at_stop = wait_stored(w, ids, 10, timeout_s=60)
        published_at_stop = 1 + feeder.published
        pg.stop()
        stopped = time.monotonic()
        with Publisher(kafka_bootstrap, w.topics["tagged"]) as pub:  # refused for its content, during the outage
            pub.publish_raw(poison, poison_event(poison))
        feeder.join(timeout=60)
        assert feeder.error is None, feeder.error
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped)))
        assert w.proc.poll() is None, f"the worker exited during the outage:\n{w.log.read_text()[-3000:]}"
        log = w.log.read_text(errors="replace")
        assert "database unavailable for store" in log, "the outage was not seen by the store agent"
        assert stored_at_stop < len(ids), "the outage came after the run, not in the middle of it"
        pg.start()
        back = time.monotonic()
        stored_when_back = stored_count(w, ids)  # at once: the worker retries at most every 2 s
        print(f"PostgreSQL stopped for {back - stopped:.0f} s with {stored_at_stop} of {len(ids)} stored")

        w.wait_for_calls(ids, timeout_s=240, statuses=("tagged",))
        all_stored_s = time.monotonic() - back
        wait_failed(w, poison, timeout_s=120)
        assert_outcome(w, events, poison, kafka_bootstrap)
        assert_stats_match_stored_calls(w, events)
        assert w.proc.poll() is None, "the worker exited"
        assert "database back for store" in w.log.read_text(errors="replace")
        letters = faults.dead_letters(kafka_bootstrap, w.topics["dlq"])
    finally:
        w.stop()
    led = faults.ledger(w.sessions, ids, bad_in=1, bad_ids=[poison], letters=letters)
    led.stats_equal = faults.stats_match(w.sessions)[0]
    faults.record(f"PostgreSQL stopped for {OUTAGE_S:.0f} s mid-run", led, outage_s=round(back - stopped, 1),
                  published_at_stop=published_at_stop, stored_at_stop=stored_at_stop,
                  stored_when_back=stored_when_back, all_stored_s_after_back=round(all_stored_s, 1),
                  **store_waits(w))
    faults.assert_clean(led)
    assert led.stats_equal
    assert led.failed_calls == 1 and led.dead_letter_stages == {"store": 1}, led


def test_worker_stopped_while_postgres_is_down_leaves_the_unstored_calls_to_the_next(kafka_bootstrap, tmp_path, pg):
    """A worker asked to stop (SIGTERM) during the outage stops by itself, promptly (the store gives up
    retrying instead of holding Faust's shutdown, which waits for every event taken to be acknowledged), and
    commits the offset of no call it did not store: the next worker gets them again and stores each once."""
    w1 = WorkerProcess(kafka_bootstrap, tmp_path, [tmp_path], db_url=pg.url,
                       extra_env={"CALLQA_DB_RETRY_MAX_S": "1"})
    events = {ev.call_id: ev for ev in (transcribed_event(n, "pgstop") for n in range(40))}
    ids = list(events)
    poison = "pgstop-poison"
    w1.sessions
    w1.start()
    w2 = None
    try:
        with Publisher(kafka_bootstrap, w1.topics["transcribed"]) as pub:
            pub.publish_raw(ids[0], events[ids[0]].model_dump_json().encode())
            stored_at_stop = wait_stored(w1, ids[:1], 1, timeout_s=180)
            pg.stop()
            stopped = time.monotonic()
            for cid in ids[1:]:
                pub.publish_raw(cid, events[cid].model_dump_json().encode())
        with Publisher(kafka_bootstrap, w1.topics["tagged"]) as pub:
            pub.publish_raw(poison, poison_event(poison))
        deadline = time.monotonic() + 60
        while "database unavailable for store" not in w1.log.read_text(errors="replace"):
            assert time.monotonic() < deadline, f"the store never met the outage:\n{w1.log.read_text()[-3000:]}"
            time.sleep(0.5)
        time.sleep(3)
        sigterm_s = time.monotonic() - stopped
        sigterm_at = time.monotonic()
        w1.proc.terminate()  # SIGTERM, as docker compose stop or Kubernetes: Faust commits what was acknowledged
        try:
            exit_code = w1.proc.wait(timeout=STOP_BOUND_S)
        except subprocess.TimeoutExpired:
            exit_code = None
        exit_after_s = time.monotonic() - sigterm_at
        assert exit_code is not None, (f"the worker did not stop within {STOP_BOUND_S:.0f} s of SIGTERM:\n"
                                       f"{w1.log.read_text(errors='replace')[-3000:]}")
        stopped_worker_s = time.monotonic() - stopped
        assert exit_code == 0, f"exit code {exit_code}:\n{w1.log.read_text(errors='replace')[-3000:]}"
        assert "stops retrying" in w1.log.read_text(errors="replace")
        # read from the broker, before anyone else consumes: no unstored call's offset was committed
        where = left_uncommitted(kafka_bootstrap, w1, ids[stored_at_stop:])
        committed = sorted(cid for cid, at in where.items() if at == "committed")
        assert committed == [], f"offsets committed for calls never stored: {committed[:10]}"
        pg.start()
        outage_s = time.monotonic() - stopped

        w2 = WorkerProcess(kafka_bootstrap, tmp_path, [tmp_path], app_id=w1.app_id, db_url=pg.url)
        w2.topics, w2.env = w1.topics, w1.env
        started = time.monotonic()
        w2.start()
        w2.wait_for_calls(ids, timeout_s=240, statuses=("tagged",))
        all_stored_s = time.monotonic() - started
        wait_failed(w2, poison, timeout_s=120)
        assert_outcome(w2, events, poison, kafka_bootstrap)
        assert_stats_match_stored_calls(w2, events)
        letters = faults.dead_letters(kafka_bootstrap, w1.topics["dlq"])
    finally:
        w1.stop(kill=True)
        if w2 is not None:
            w2.stop()
    led = faults.ledger(w2.sessions, ids, bad_in=1, bad_ids=[poison], letters=letters)
    led.stats_equal = faults.stats_match(w2.sessions)[0]
    faults.record("worker stopped (SIGTERM) while PostgreSQL is down, a second one takes over", led,
                  outage_s=round(outage_s, 1), stored_at_stop=stored_at_stop,
                  first_worker_sigterm_after_s=round(sigterm_s, 1),
                  first_worker_exited_after_s=round(stopped_worker_s, 1),
                  first_worker_exit=f"stopped by itself on SIGTERM, exit code {exit_code}",
                  first_worker_exit_s_after_sigterm=round(exit_after_s, 1),
                  uncommitted_at_stop_tagged=sum(at == "tagged" for at in where.values()),
                  uncommitted_at_stop_transcribed=sum(at == "transcribed" for at in where.values()),
                  all_stored_s_after_second_start=round(all_stored_s, 1),
                  first_worker_store_retries=store_waits(w1)["store_retries"])
    faults.assert_clean(led)
    assert led.stats_equal
    assert led.failed_calls == 1 and led.dead_letter_stages == {"store": 1}, led


def test_dead_letter_being_recorded_when_the_worker_stops_is_left_to_the_next(kafka_bootstrap, tmp_path, pg):
    """The failures agent (like crm and join) acknowledges an event by hand once its database work is done:
    with Faust's automatic acks, the dead letter it was retrying when SIGTERM came was acknowledged as its
    stream closed and its offset committed, and the failed call was never recorded."""
    w1 = WorkerProcess(kafka_bootstrap, tmp_path, [tmp_path], db_url=pg.url,
                       extra_env={"CALLQA_DB_RETRY_MAX_S": "1"})

    def letter(cid: str) -> bytes:
        return DeadLetter(call_id=cid, stage="transcribe", error="undecodable",
                          original=poison_event(cid).decode()).model_dump_json().encode()

    w1.sessions
    w1.start()
    w2 = None
    try:
        with Publisher(kafka_bootstrap, w1.topics["dlq"]) as pub:
            pub.publish_raw("dlstop-0", letter("dlstop-0"))  # recorded while the database is up
        wait_failed(w1, "dlstop-0", timeout_s=180)
        pg.stop()
        with Publisher(kafka_bootstrap, w1.topics["dlq"]) as pub:
            pub.publish_raw("dlstop-1", letter("dlstop-1"))
        deadline = time.monotonic() + 60
        while "database unavailable for failures" not in w1.log.read_text(errors="replace"):
            assert time.monotonic() < deadline, f"the outage was not met:\n{w1.log.read_text()[-3000:]}"
            time.sleep(0.5)
        time.sleep(2)
        w1.proc.terminate()
        assert w1.proc.wait(timeout=STOP_BOUND_S) == 0, w1.log.read_text(errors="replace")[-3000:]
        pg.start()
        w2 = WorkerProcess(kafka_bootstrap, tmp_path, [tmp_path], app_id=w1.app_id, db_url=pg.url)
        w2.topics, w2.env = w1.topics, w1.env
        w2.start()
        wait_failed(w2, "dlstop-1", timeout_s=180)
    finally:
        w1.stop(kill=True)
        if w2 is not None:
            w2.stop()

"""`python -m tests.fault_worker worker`: the real `callqa worker`, except that Whisper is replaced by a
transcript taken from the dev dialogues. Only for the fuzz and burst tests (tests/test_faults.py), where
the events on calls.recorded are the thing under test and ASR is not: the recording is still fetched for
real (file:// inside CALLQA_RECORDINGS_DIR), so a bad URL fails as it would in production."""
from __future__ import annotations

import asyncio
import functools
import os
import sys
import zlib

import agents.app
from callqa.cli import main
from models.events import CallRecorded, CallTranscribed


class CannedTranscriber:
    def __init__(self, settings):
        self.s = settings

    async def __call__(self, ev: CallRecorded) -> CallTranscribed:
        from pipeline.fetch import fetch
        from tests.test_resilience import transcribed_event

        s = self.s
        await asyncio.to_thread(fetch, ev.recording_url, s.allowed_dirs, s.home_dir / "cache" / "recordings",
                                max_bytes=s.fetch_max_bytes, timeout_s=s.fetch_timeout_s)
        canned = transcribed_event(zlib.crc32(ev.call_id.encode()) % 1000)
        data = ev.model_dump()
        data.update(segments=canned.segments, asr=canned.asr, language_detected=canned.language_detected,
                    duration_s=ev.duration_s or canned.duration_s)
        return CallTranscribed.model_validate(data)


def once_partition_0_runs(app, topic: str, fault) -> None:
    """Call ``fault(tp)`` once, as soon as partition 0 of ``topic`` is assigned and the worker is running
    (recovered, not rebalancing)."""
    done = []

    @app.timer(interval=1.0)
    async def inject():
        consumer = app.consumer
        if done or app.rebalancing or app.in_recovery or consumer is None:
            return
        tp = next((tp for tp in consumer.assignment() if tp.topic == topic and tp.partition == 0), None)
        if tp is not None and tp in app.topics._tp_to_callback and app.tables.recovery.completed.is_set():
            fault(tp)
            done.append(tp)


def lose_a_partition(app, topic: str) -> None:
    """CALLQA_TEST_UNFETCH=<topic>: once the worker runs, partition 0 of <topic> drops out of Faust's fetched
    partitions while staying assigned (as after faust-streaming#629), so its events wait until the worker's
    stall detector (agents/app.py, unstick_partitions) notices and fetches it again."""
    def fault(tp):
        app.consumer._get_active_partitions().discard(tp)
        print(f"test: {topic}[0] is no longer fetched", flush=True)

    once_partition_0_runs(app, topic, fault)


def drop_one_event(app, topic: str) -> None:
    """CALLQA_TEST_HOLE=<topic>: the first event fetched from partition 0 of <topic> once the worker runs is
    not delivered to the agents (as an event dropped around a rebalance), while the ones after it are. Faust
    alone would commit past it; the worker must not (guard_commits) and must read it again."""
    def fault(tp):
        callbacks = app.topics._tp_to_callback
        deliver = callbacks[tp]

        async def drop_first(message):
            callbacks[tp] = deliver  # only the first
            print(f"test: {topic}[0]@{message.offset} dropped", flush=True)

        callbacks[tp] = drop_first
        print(f"test: {topic}[0] will drop its next event", flush=True)

    once_partition_0_runs(app, topic, fault)


if __name__ == "__main__":
    real = agents.app.create_app

    @functools.wraps(real)
    def create_app(settings=None, **kw):
        app = real(settings, transcriber=CannedTranscriber(settings), **kw)
        if os.environ.get("CALLQA_TEST_UNFETCH"):
            lose_a_partition(app, os.environ["CALLQA_TEST_UNFETCH"])
        if os.environ.get("CALLQA_TEST_HOLE"):
            drop_one_event(app, os.environ["CALLQA_TEST_HOLE"])
        return app

    agents.app.create_app = create_app  # cmd_worker imports it at call time
    raise SystemExit(main(sys.argv[1:]))

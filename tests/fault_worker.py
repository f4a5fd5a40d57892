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


def lose_a_partition(app, topic: str) -> None:
    """CALLQA_TEST_UNFETCH=<topic>: once the worker runs, partition 0 of <topic> drops out of Faust's fetched
    partitions while staying assigned (as after faust-streaming#629), so its events wait until the worker's
    stall detector (agents/app.py, unstick_partitions) notices and fetches it again."""
    done = []

    @app.timer(interval=1.0)
    async def drop_partition():
        consumer = app.consumer
        if done or app.rebalancing or app.in_recovery or consumer is None:
            return
        tp = next((tp for tp in consumer.assignment() if tp.topic == topic and tp.partition == 0), None)
        if tp is not None and app.tables.recovery.completed.is_set():
            consumer._get_active_partitions().discard(tp)
            done.append(tp)
            print(f"test: {topic}[0] is no longer fetched", flush=True)


if __name__ == "__main__":
    real = agents.app.create_app

    @functools.wraps(real)
    def create_app(settings=None, **kw):
        app = real(settings, transcriber=CannedTranscriber(settings), **kw)
        if os.environ.get("CALLQA_TEST_UNFETCH"):
            lose_a_partition(app, os.environ["CALLQA_TEST_UNFETCH"])
        return app

    agents.app.create_app = create_app  # cmd_worker imports it at call time
    raise SystemExit(main(sys.argv[1:]))

"""The Faust app: three agents chained by topics, plus the dead-letter mirror.

Agents stay thin: decode the event, call a pipeline function, emit the result.
Anything that fails becomes a DeadLetter on calls.dlq (original event, stage,
reason) and the worker carries on with the next event.
"""
from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import faust

from config.settings import Settings
from models.events import CallFlagged, CallRecorded, CallTagged, CallTranscribed, DeadLetter

log = logging.getLogger("callqa.agents")
STALL_S = 20.0


def _call_id(raw: bytes) -> Optional[str]:
    try:
        cid = json.loads(raw).get("call_id")
        return str(cid) if cid else None
    except (ValueError, AttributeError):
        return None


def _reason(exc: BaseException) -> str:
    if hasattr(exc, "errors") and callable(exc.errors):  # pydantic: name the bad fields
        try:
            return "invalid event: " + "; ".join(
                f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors())
        except Exception:
            pass
    return str(exc) or type(exc).__name__


def create_app(settings: Optional[Settings] = None, *, transcriber=None, tagger=None) -> faust.App:
    s = settings or Settings.from_env()
    app = faust.App(
        s.app_id,
        broker=f"kafka://{s.kafka_bootstrap or 'localhost:9092'}",
        store="memory://",
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=s.topic_partitions,
        topic_replication_factor=1,
        datadir=str(s.home_dir / "faust"),
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        # Whisper on a long call outlasts the defaults; the pool keeps the loop free meanwhile.
        broker_max_poll_interval=max(1000.0, s.asr_call_timeout_s * 2),
        stream_processing_timeout=max(300.0, s.asr_call_timeout_s * 2),
        producer_acks=-1,
        # With a standby copy, taking over a partition after a rebalance stalled table recovery
        # ("No event received for active tp", tests/test_stats_workers.py); the changelog is small.
        table_standby_replicas=0,
    )
    app.conf.callqa = s  # type: ignore[attr-defined]

    recorded = app.topic(s.topic_recorded)
    transcribed = app.topic(s.topic_transcribed)
    tagged = app.topic(s.topic_tagged)
    dlq = app.topic(s.topic_dlq)
    flagged = app.topic(s.topic_flagged)
    # Live per-manager statistics; the changelog topic makes them survive restarts and rebalances.
    # Plain JSON values (no key_type/value_type): Faust would call dict.from_data() during recovery
    # and silently stall it.
    stats_table = app.Table("manager-stats", default=None, partitions=s.topic_partitions,
                            schema=faust.Schema(key_serializer="json", value_serializer="json"))

    if transcriber is None:
        from pipeline.transcribe import CallTranscriber
        transcriber = CallTranscriber(s)
    if tagger is None:
        from pipeline.tagging import LiveRules
        from pipeline.tagging.retag import retag
        rules = LiveRules(s.rules_dir or None, on_error=log.error, on_info=log.info)

        def tagger(ev: CallTranscribed) -> CallTagged:
            return retag(ev, rules.get())

        # a trainer's edit is judged (and logged) when it is saved, not when the next call comes; a thread,
        # not a Faust timer: with a timer, partition hand-overs between workers stalled in tests
        rules.watch(interval_s=2.0)

    db_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="callqa-db")  # one writer
    sessions = None

    def db():
        nonlocal sessions
        if sessions is None:
            from models.db import session_factory
            sessions = session_factory(s.db_url)
        return sessions

    async def in_db(fn, *args):
        def run():
            with db().begin() as session:
                return fn(session, *args)
        return await asyncio.get_running_loop().run_in_executor(db_executor, run)

    async def dead(stage: str, raw: bytes, exc: BaseException) -> None:
        cid = _call_id(raw)
        letter = DeadLetter(call_id=cid, stage=stage, error=_reason(exc), error_type=type(exc).__name__,
                            original=raw.decode("utf-8", "replace"))
        log.warning("call %s failed at %s: %s", cid or "?", stage, letter.error)
        await dlq.send(key=(cid or "").encode() or None, value=letter.model_dump_json().encode())

    @app.agent(recorded, concurrency=max(1, s.asr_workers))
    async def transcribe(stream):
        async for raw in stream:
            try:
                ev = CallRecorded.model_validate_json(raw)
                out = await transcriber(ev)
            except Exception as exc:
                await dead("transcribe", raw, exc)
                continue
            log.info("transcribed %s: %d segments, %.1fs audio in %.1fs", ev.call_id, len(out.segments),
                     out.asr.audio_s, out.asr.wall_s)
            await transcribed.send(key=ev.call_id.encode(), value=out.model_dump_json().encode())

    @app.agent(transcribed)
    async def tag(stream):
        async for raw in stream:
            try:
                out = tagger(CallTranscribed.model_validate_json(raw))
            except Exception as exc:
                await dead("tag", raw, exc)
                continue
            await tagged.send(key=out.call_id.encode(), value=out.model_dump_json().encode())

    @app.agent(tagged)
    async def store(stream):
        from pipeline.store import store_tagged
        async for raw in stream:
            for attempt in range(3):
                try:
                    ev = CallTagged.model_validate_json(raw)
                    new_flags = await in_db(store_tagged, ev)
                    break
                except Exception as exc:
                    if attempt == 2 or isinstance(exc, ValueError):
                        await dead("store", raw, exc)
                        new_flags = None
                        break
                    await asyncio.sleep(2 ** attempt)  # a busy or restarting database
            if new_flags:
                note = CallFlagged(call_id=ev.call_id, manager_id=ev.manager_id, manager_name=ev.manager_name,
                                   team_id=ev.team_id, started_at=ev.started_at, recording_url=ev.recording_url,
                                   new_flags=new_flags, flags=ev.flags, furthest_step=ev.furthest_step)
                await flagged.send(key=ev.call_id.encode(), value=note.model_dump_json().encode())

    def by_manager(raw: bytes) -> bytes:
        try:
            return str(json.loads(raw)["manager_id"]).encode()
        except (ValueError, KeyError, TypeError):
            return b""  # the store agent dead-letters it

    @app.agent(tagged)
    async def manager_stats(stream):
        from pipeline.stats import ManagerStats, outcome_from_tagged
        from pipeline.store import mirror_manager_stats
        # Repartitioned by manager, so one worker owns each manager's row of the table.
        async for raw in stream.group_by(by_manager, name="by-manager"):
            try:
                ev = CallTagged.model_validate_json(raw)
            except ValueError:
                continue
            current = stats_table.get(ev.manager_id)
            ms = ManagerStats.from_dict(current) if current else ManagerStats(ev.manager_id)
            if ms.apply(outcome_from_tagged(ev)):
                stats_table[ev.manager_id] = ms.to_dict()
            # mirrored even when unchanged: a crash between the table write and SQL is healed by the replay.
            # Retried: with two workers, the other one's store agent can insert the manager's row between
            # our read and our insert (IntegrityError on managers), and an exception here would crash the
            # agent and stop the statistics of its partitions for good (bench/pipeline.py --two-workers).
            for attempt in range(5):
                try:
                    await in_db(mirror_manager_stats, ms)
                    break
                except Exception:
                    if attempt == 4:  # the table stays right; the mirror heals on this manager's next call
                        log.exception("could not mirror the statistics of manager %s to SQL", ms.manager_id)
                        break
                    await asyncio.sleep(0.25 * 2 ** attempt)

    @app.agent(dlq)
    async def record_failure(stream):
        from pipeline.store import mark_failed
        async for raw in stream:
            try:
                await in_db(mark_failed, DeadLetter.model_validate_json(raw))
            except Exception:
                log.exception("could not record a dead letter in the database (it stays in %s)", s.topic_dlq)

    stalled: dict = {}

    @app.timer(interval=5.0)
    async def unstick_partitions():
        # faust-streaming#629: after quick successive rebalances a partition can stay assigned but
        # never be fetched again, so its calls would wait forever. A partition with records past its
        # committed offset, nothing of it in flight, and no commit for STALL_S is re-seeked to its
        # committed offset (at-least-once; every stage is idempotent, so a re-read is harmless).
        consumer = app.consumer
        if app.rebalancing or app.in_recovery or consumer is None:
            stalled.clear()
            return
        tps = [tp for tp in consumer.assignment() if not consumer._is_changelog_tp(tp)]
        if not tps:
            return
        ends = await consumer.highwaters(*tps)
        busy = {m.tp for m in list(consumer._unacked_messages)}
        now = asyncio.get_running_loop().time()
        for tp in tps:
            committed = consumer._committed_offset.get(tp)
            if (ends.get(tp) or 0) <= (committed or 0) or tp in busy:
                stalled.pop(tp, None)
                continue
            since, seen = stalled.get(tp, (now, committed))
            if seen != committed:
                since = now
            stalled[tp] = (since, committed)
            if now - since >= STALL_S:
                log.warning("%s[%d] has records after offset %s but is not being fetched; seeking back to it",
                            tp.topic, tp.partition, committed)
                await consumer.seek(tp, committed or 0)
                stalled.pop(tp, None)

    app.callqa_agents = dict(transcribe=transcribe, tag=tag, store=store,  # type: ignore[attr-defined]
                             manager_stats=manager_stats, record_failure=record_failure)
    app.callqa_stats_table = stats_table  # type: ignore[attr-defined]
    return app

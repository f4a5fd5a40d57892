"""The Faust app: agents chained by topics, plus the dead-letter mirror.

    calls.recorded -> transcribe -> calls.transcribed -> tag -> calls.tagged -> store -> SQL
    store -> calls.stored (key: manager_id) -> manager_stats -> Faust table + SQL mirror (touched periods)
    store -> outbox (same transaction) -> calls.flagged, and retractions on calls.stored
    crm.events -> crm (leads, deals in SQL) -> crm.joins (key: phone) <- store (the call's client phone)
    crm.joins -> join (calls <-> leads of one phone, recomputed: any order, any replay)

Agents stay thin: decode the event, call a pipeline function, emit the result.
Anything that fails becomes a DeadLetter on calls.dlq (original event, stage,
reason) and the worker carries on with the next event. The statistics count
only what the store kept: a call the store refused never reaches them.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Optional

import faust

from agents.logs import CALL_ID
from agents.metrics import WorkerMetrics
from config.kafka_security import KafkaSecurity
from config.settings import Settings
from models.events import CallRecorded, CallTagged, CallTranscribed, DeadLetter, StatsUpdate

log = logging.getLogger("callqa.agents")
STALL_S = 20.0
SLOW_S = 60.0  # events in flight with no commit for this long are logged (note_slow)
OUTBOX_GRACE_S = 30.0  # rows older than this were left by a worker that died before sending them
DLQ_MAX_BYTES = 900_000  # under the producer's 1 MB request limit (aiokafka max_request_size)
DLQ_ORIGINAL_CHARS = 100_000  # what is kept of an original too large for its dead letter


def _call_id(raw: Optional[bytes]) -> Optional[str]:
    """The call_id of an event that failed, if it names a usable one. Never raises: this runs on poison
    (a null value, invalid UTF-8, JSON nested past the recursion limit), and an exception here would take
    the agent down with the event still unacknowledged."""
    if not raw:
        return None
    try:
        cid = json.loads(raw.decode("utf-8", "replace")).get("call_id")
    except (ValueError, AttributeError, TypeError, RecursionError):
        return None
    # not a string, or longer than a call_id can be: no call to mark failed (and too big for a Kafka key)
    return cid if isinstance(cid, str) and 0 < len(cid) <= 200 else None


def _reason(exc: BaseException) -> str:
    if hasattr(exc, "errors") and callable(exc.errors):  # pydantic: name the bad fields
        try:
            return "invalid event: " + "; ".join(
                f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors())
        except Exception:
            pass
    return str(exc) or type(exc).__name__


AGENTS = ("transcribe", "tag", "store", "stats", "failures", "crm")


def parse_agents(text: str) -> frozenset:
    """``--agents transcribe`` / ``tag,store,stats`` (empty or ``all``: every agent)."""
    names = {n.strip() for n in (text or "").split(",") if n.strip()}
    if not names or names == {"all"}:
        return frozenset(AGENTS)
    unknown = names - set(AGENTS)
    if unknown:
        raise ValueError(f"unknown agent(s) {', '.join(sorted(unknown))}: choose from {', '.join(AGENTS)}")
    return frozenset(names)


def group_id(app_id: str, agents: frozenset) -> str:
    """The consumer group (and Faust app id) of a worker running ``agents``. Workers of one group must
    subscribe alike (Kafka refuses a group whose members disagree), so each agent set is a group of its
    own; the set with the statistics keeps the plain app id, and with it the statistics table's changelog,
    so moving from one worker to split ones keeps the numbers."""
    return app_id if "stats" in agents else f"{app_id}-{'+'.join(a for a in AGENTS if a in agents)}"


def guard_commits() -> None:
    """Never commit an offset past an event that was not processed (faust-streaming 0.15, bounded in
    pyproject.toml; once per process).

    Faust commits the run of acknowledged offsets that starts at the committed one, but two things let it
    commit past an event no agent handled, which nothing would ever redeliver: (1) its head check lets one
    missing offset right after the committed one through (``min(acked) - committed > 1``, while committed
    is already the next offset to read), and (2) offsets the fetcher skipped are counted as acknowledged
    (``_add_gap``: meant for compacted topics and transaction markers, which callqa's topics never have;
    here a skip is a record Faust dropped around a rebalance). The two-workers fault test lost calls this
    way now and then. With the guard such a partition's commit stops at the missing event instead, and the
    stall detector (``unstick_partitions``) reads the partition again from there: a delay, not a loss."""
    from faust.transport.consumer import Consumer
    if getattr(Consumer, "_callqa_guarded", False):
        return
    new_offset = Consumer._new_offset

    def _new_offset(self, tp):
        acked, committed = self._acked[tp], self._committed_offset[tp]
        if acked and (committed is None or min(acked) > committed):
            # the event at the committed offset is not done yet; or the partition was never committed and
            # where it starts is not known yet (the stall detector sets it to where the log starts)
            return None
        return new_offset(self, tp)

    async def _add_gap(self, tp, offset_from: int, offset_to: int) -> None:
        log.warning("%s[%d]: offsets %d..%d were not delivered to the agents; they stay uncommitted and are "
                    "read again", tp.topic, tp.partition, offset_from, offset_to - 1)

    Consumer._new_offset, Consumer._add_gap, Consumer._callqa_guarded = _new_offset, _add_gap, True


def create_app(settings: Optional[Settings] = None, *, transcriber=None, tagger=None,
               agents: frozenset = frozenset(AGENTS)) -> faust.App:
    s = settings or Settings.from_env()
    guard_commits()
    app = faust.App(
        group_id(s.app_id, agents),
        broker=f"kafka://{s.kafka_bootstrap or 'localhost:9092'}",
        store="memory://",
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=s.topic_partitions,
        topic_replication_factor=s.topic_replication,
        broker_credentials=KafkaSecurity.from_settings(s).faust_credentials(),
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
        # A slow stage (Whisper, the step model) lets the consumer read a burst far ahead of it; this bounds it.
        stream_buffer_maxsize=s.stream_buffer,
    )
    app.conf.callqa = s  # type: ignore[attr-defined]

    recorded = app.topic(s.topic_recorded)
    transcribed = app.topic(s.topic_transcribed)
    tagged = app.topic(s.topic_tagged)
    dlq = app.topic(s.topic_dlq)
    flagged = app.topic(s.topic_flagged)
    stored = app.topic(s.topic_stored)
    crm_events = app.topic(s.topic_crm)
    crm_joins = app.topic(s.topic_crm_joins)
    outbox_topics = {"stats": stored, "flagged": flagged}
    tz = s.tz
    # Live statistics (pipeline.stats.StatsState): per manager and period the counts, per manager and
    # call its contribution, in one table so both share the manager's changelog partition; the changelog
    # topic makes them survive restarts and rebalances. Plain JSON values (no key_type/value_type): Faust
    # would call dict.from_data() during recovery and silently stall it.
    stats_table = app.Table("manager-stats", default=None, partitions=s.topic_partitions,
                            schema=faust.Schema(key_serializer="json", value_serializer="json")) \
        if "stats" in agents else None

    def agent(name: str, channel, **kw):
        """app.agent for the agents this worker runs (``agents``); the others are left to other workers:
        transcription on GPU machines, the rest on small CPU ones."""
        if name in agents:
            return app.agent(channel, **kw)
        return lambda fn: None

    if transcriber is None and "transcribe" in agents:
        from pipeline.transcribe import CallTranscriber
        transcriber = CallTranscriber(s)
    if tagger is None and "tag" in agents:
        from pipeline.tagging import LiveRules
        from pipeline.tagging.retag import retag
        rules = LiveRules(s.rules_dir or None, on_error=log.error, on_info=log.info)
        model = None
        if s.tagger == "learned":
            from pipeline.tagging.learned import LiveModel
            model = LiveModel(s.tagger_model_paths, on_error=log.error, on_info=log.info)
            log.info("tagging with the step model %s", model.path)

        def tagger(ev: CallTranscribed) -> CallTagged:
            return retag(ev, rules.get(), model.get() if model else None)

        # a trainer's edit is judged (and logged) when it is saved, not when the next call comes; a thread,
        # not a Faust timer: with a timer, partition hand-overs between workers stalled in tests
        rules.watch(interval_s=2.0)
        if model is not None:
            model.watch(interval_s=5.0)

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

    # The topics of the agents that write to the database (store, stats, crm, join, failures): each of them
    # acknowledges an event only once its database work is done (noack_take, noack), and a worker stopped
    # during an outage leaves their unacknowledged events to the next worker (in_db_until_done).
    db_topics = frozenset({s.topic_tagged, s.topic_stored, s.topic_crm, s.topic_crm_joins, s.topic_dlq})

    async def in_db_until_done(what: str, fn, *args):
        """in_db, retried with capped backoff for as long as the database is unreachable (a restart, a
        fail-over, an outage): the caller's events stay unacknowledged meanwhile, so their offsets are not
        committed. Errors of the data itself are raised at once. A worker asked to stop (SIGTERM) during an
        outage stops retrying (see below)."""
        from pipeline.store import is_transient_db_error
        delay, since = 0.25, None
        while True:
            try:
                out = await in_db(fn, *args)
            except Exception as exc:
                if not is_transient_db_error(exc):
                    raise
                if app.should_stop:
                    await leave_to_next_worker(what)  # never returns
                now = time.monotonic()
                since = since or now
                metrics.failed.labels(what, "database_unavailable").inc()
                log.warning("database unavailable for %s (%.0f s so far), retrying in %.1f s: %s", what,
                            now - since, delay, str(exc).strip().splitlines()[0] if str(exc).strip() else
                            type(exc).__name__)
                await app.sleep(delay)  # cut short when the worker is asked to stop: one last try, then give up
                delay = min(s.db_retry_max_s, delay * 2)
                continue
            if since is not None:
                log.info("database back for %s after %.1f s", what, time.monotonic() - since)
            return out

    async def leave_to_next_worker(what: str) -> None:
        """Stop retrying for good: the worker is stopping and the database is unreachable.

        Faust's shutdown (App.on_stop -> App._stop_consumer -> Consumer.wait_empty, faust/app/base.py and
        faust/transport/consumer.py) waits, with no time limit, until every message the agents took is
        acknowledged (`while not self.should_stop and self._unacked_messages`; the consumer itself is
        stopped only after that), so a store retrying until the database is back kept the worker from ever
        stopping. The messages of the database's agents (the batch being retried and whatever their
        noack_take buffers hold) are taken off the consumer's unacked set WITHOUT acknowledging them: the
        shutdown no longer waits for them, and the commits that follow (Consumer.commit) commit only
        acknowledged offsets, so these stay uncommitted and the next worker (or this one restarted) stores
        them, once. Nothing is raised: a CancelledError out of the agent is taken by Faust for a rebalance
        (Agent._execute_actor logs a crash and restarts the actor); this coroutine waits instead until Faust
        cancels the agent as it stops, so none of the caller's code (its acks) runs."""
        consumer = app.consumer
        left = [m for m in list(consumer.unacked) if m.topic in db_topics and not m.acked]
        for message in left:
            consumer.unacked.discard(message)
        log.warning("the worker is stopping and the database is unavailable: %s stops retrying; %d events "
                    "left unacknowledged (offsets not committed) for the next worker", what, len(left))
        await asyncio.Event().wait()

    metrics = WorkerMetrics()
    metrics.models.info({"asr_engine": s.asr_engine, "asr_model": s.asr_model, "asr_compute_type": s.asr_compute_type,
                         "tagger": s.tagger, "agents": ",".join(a for a in AGENTS if a in agents)})
    app.callqa_metrics = metrics  # type: ignore[attr-defined]

    async def dead(stage: str, raw: bytes, exc: BaseException) -> None:
        metrics.failed.labels(stage, type(exc).__name__).inc()
        cid = _call_id(raw)
        CALL_ID.set(cid)
        original = (raw or b"").decode("utf-8", "replace")
        letter = DeadLetter(call_id=cid, stage=stage, error=_reason(exc)[:10_000], error_type=type(exc).__name__,
                            original=original)
        value = letter.model_dump_json().encode()
        if len(value) > DLQ_MAX_BYTES:
            # Escaped once more inside the letter, an event near Kafka's message limit (quotes, control or
            # replacement characters) no longer fits in one: the send would fail and crash the agent
            letter.original = original[:DLQ_ORIGINAL_CHARS]
            letter.original_bytes = len(raw or b"")
            value = letter.model_dump_json().encode()
        log.warning("call %s failed at %s: %s", cid or "?", stage, letter.error)
        await dlq.send(key=(cid or "").encode() or None, value=value)

    @agent("transcribe", recorded, concurrency=max(1, s.asr_workers))
    async def transcribe(stream):
        async for event in stream.events():
            raw = event.value
            try:
                ev = CallRecorded.model_validate_json(raw)
                CALL_ID.set(ev.call_id)  # an event that does not parse gets its id in dead()
                if ev.published_at is None and event.message.timestamp:
                    # which upload of a call is newer, however the transcriptions finish (concurrency)
                    ev.published_at = datetime.fromtimestamp(event.message.timestamp, timezone.utc)
                t0 = time.perf_counter()
                out = await transcriber(ev)
            except Exception as exc:
                await dead("transcribe", raw, exc)
                continue
            metrics.latency.labels("transcribe").observe(time.perf_counter() - t0)
            metrics.processed.labels("transcribe").inc()
            metrics.audio.inc(out.asr.audio_s)
            if out.asr.wall_s > 0:
                metrics.rtf.observe(out.asr.audio_s / out.asr.wall_s)
            log.info("transcribed %s: %d segments, %.1fs audio in %.1fs", ev.call_id, len(out.segments),
                     out.asr.audio_s, out.asr.wall_s)
            await transcribed.send(key=ev.call_id.encode(), value=out.model_dump_json().encode())

    @agent("tag", transcribed)
    async def tag(stream):
        async for raw in stream:
            try:
                t0 = time.perf_counter()
                ev = CallTranscribed.model_validate_json(raw)
                CALL_ID.set(ev.call_id)
                out = tagger(ev)
            except Exception as exc:
                await dead("tag", raw, exc)
                continue
            metrics.latency.labels("tag").observe(time.perf_counter() - t0)
            metrics.processed.labels("tag").inc()
            await tagged.send(key=out.call_id.encode(), value=out.model_dump_json().encode())

    async def send_outbox(ids: Optional[list[int]] = None, older_than: Optional[datetime] = None) -> None:
        """Send outbox rows and delete them once Kafka acknowledged them (a crash in between resends)."""
        from pipeline.store import outbox_sent, pending_outbox
        rows = await in_db(lambda session: [(o.id, o.kind, o.key, o.value) for o in
                                            pending_outbox(session, ids=ids, older_than=older_than)])
        sent = [(oid, await outbox_topics[kind].send(key=key.encode(), value=value.encode(), force=True))
                for oid, kind, key, value in rows]
        done = []
        for oid, acked in sent:  # all in flight at once; a row goes only once the broker has it
            await acked
            done.append(oid)
        if done:
            await in_db(outbox_sent, done)

    async def store_batch(evs: list[CallTagged]) -> list:
        """The batch in one transaction; when its content breaks a constraint, call by call, so that only
        the bad call is dead-lettered. Returns (event, StoreResult or the exception that refused it), in order."""
        from sqlalchemy.exc import IntegrityError

        from pipeline.store import store_tagged_batch
        try:
            return list(zip(evs, await in_db_until_done("store", store_tagged_batch, evs, tz, s.phone_region)))
        except Exception as exc:
            log.warning("a batch of %d calls was refused (%s); storing them one by one", len(evs), _reason(exc))
        out = []
        for ev in evs:
            CALL_ID.set(ev.call_id)
            for attempt in range(3):
                try:
                    out.append((ev, (await in_db_until_done("store", store_tagged_batch, [ev], tz,
                                                            s.phone_region))[0]))
                    break
                except Exception as exc:
                    # two workers inserting one new call during a rebalance: the loser's retry sees the row
                    if attempt < 2 and isinstance(exc, IntegrityError):
                        await asyncio.sleep(0.2 * 2 ** attempt)
                        continue
                    out.append((ev, exc))
                    break
        return out

    @agent("store", tagged)
    async def store(stream):
        # Batches: one transaction and a few statements for up to store_batch_max calls (bench/README.md).
        # noack_take: an event is acknowledged only below, after its call is stored (or dead-lettered), so a
        # worker stopped while the database is away commits no offset past an unstored call.
        async for batch in stream.noack_take(s.store_batch_max, within=s.store_batch_wait_s):
            evs, raws = [], []
            for event in batch:
                try:
                    evs.append(CallTagged.model_validate_json(event.value))
                    raws.append(event.value)
                except ValueError as exc:
                    await dead("store", event.value, exc)
            t0 = time.perf_counter()
            done = await store_batch(evs) if evs else []
            elapsed = time.perf_counter() - t0
            phones, outbox = set(), []
            for raw, (ev, result) in zip(raws, done):
                CALL_ID.set(ev.call_id)
                if isinstance(result, BaseException):
                    await dead("store", raw, result)
                    continue
                metrics.latency.labels("store").observe(elapsed)
                metrics.processed.labels("store").inc()
                if not result.stored:
                    log.info("call %s: a newer version is stored (revision %d); this one is dropped",
                             ev.call_id, result.revision)
                    continue
                # A crash before this send is healed by the redelivery of the tagged event (stored again).
                await stored.send(key=result.update.manager_id.encode(),
                                  value=result.update.model_dump_json().encode())
                if result.client_phone:  # its CRM lead, whichever came first (a replay re-sends: the join is idempotent)
                    phones.add(result.client_phone)
                outbox += result.outbox
            await ask_join(sorted(phones))
            if outbox:
                try:
                    await send_outbox(outbox)
                except Exception:  # kept in the outbox: the timer below sends it
                    log.exception("could not send the outbox of %d calls yet", len(done))
            for event in batch:
                await stream.ack(event)

    @agent("stats", stored)
    async def manager_stats(stream):
        from pipeline.stats import StatsState
        from pipeline.store import mirror_managers_stats
        state = StatsState(stats_table)
        # calls.stored is keyed by manager_id, so one worker owns each manager's keys of the table.
        async for batch in stream.noack_take(s.store_batch_max, within=s.store_batch_wait_s):
            touched: dict[str, set] = {}
            for event in batch:
                try:
                    update = StatsUpdate.model_validate_json(event.value)
                except ValueError:
                    log.error("not a statistics update on %s: %r", s.topic_stored, event.value[:200])
                    continue
                # the table writes its changelog to the partition of the event being handled, which a
                # taken batch does not set
                stream._set_current_event(event)
                applied = state.apply(update, offset=event.message.offset)
                touched.setdefault(update.manager_id, set()).update(applied.periods)
            stream._set_current_event(None)
            # Each touched manager's periods once per batch, in one transaction. Mirrored even when
            # unchanged: a crash between the table write and SQL is healed by the replay.
            items = [(state.manager(m, periods), periods) for m, periods in sorted(touched.items())]
            for attempt in range(5):
                try:
                    await in_db_until_done("stats", mirror_managers_stats, items)
                    break
                except Exception:
                    if attempt == 4:  # the table stays right; the mirror heals as the managers' next calls touch the periods
                        log.exception("could not mirror the statistics of %d managers to SQL", len(items))
                        break
                    await asyncio.sleep(0.25 * 2 ** attempt)
            for event in batch:
                await stream.ack(event)

    async def ask_join(phones: list[str]) -> None:
        for phone in phones:
            await crm_joins.send(key=phone.encode(), value=json.dumps({"phone": phone}).encode())

    @agent("crm", crm_events)
    async def crm(stream):
        from models.crm import parse_crm_event
        from pipeline.crm import record_crm_event
        # acknowledged by hand once done, as in the agents below: a worker stopped during an outage must not
        # acknowledge (and commit) the event it was retrying, which an automatic ack would (leave_to_next_worker)
        events = stream.noack()
        async for event in events.events():
            raw = event.value
            try:
                ev = parse_crm_event(raw)
                phones = await in_db_until_done("crm", record_crm_event, ev, s.phone_region)
            except Exception as exc:
                await dead("crm", raw, exc)
            else:
                await ask_join(phones)
            await events.ack(event)

    @agent("crm", crm_joins)
    async def join(stream):
        from pipeline.crm import join_phone
        window, before = timedelta(days=s.crm_match_window_days), timedelta(minutes=s.crm_match_before_min)
        # keyed by phone: one worker joins a phone's calls and leads, after both were committed
        events = stream.noack()  # acknowledged by hand once done (see crm)
        async for event in events.events():
            raw = event.value
            try:
                phone = json.loads(raw)["phone"]
                links = await in_db_until_done("crm", join_phone, phone, window, before)
            except Exception:
                log.exception("could not join the calls and leads of %r", raw[:100])
            else:
                log.info("joined %s: %d calls, %d with a lead", phone, len(links),
                         sum(v is not None for v in links.values()))
            await events.ack(event)

    @agent("failures", dlq)
    async def record_failure(stream):
        from pipeline.store import mark_failed
        events = stream.noack()  # acknowledged by hand once done (see crm)
        async for event in events.events():
            try:
                await in_db_until_done("failures", mark_failed, DeadLetter.model_validate_json(event.value),
                                       s.phone_region)
            except Exception:
                log.exception("could not record a dead letter in the database (it stays in %s)", s.topic_dlq)
            await events.ack(event)

    stalled: dict = {}
    slow: dict = {}
    outbox_checked = [0.0]

    def note_slow(tp, committed, now, consumer) -> None:
        """A partition with events in flight whose commit has not moved for SLOW_S: said once per episode,
        with what a stall would be made of (a database outage says so itself, so this is for the rest)."""
        since, seen, said = slow.get(tp, (now, committed, False))
        if seen != committed:
            since, said = now, False
        if not said and now - since >= SLOW_S:
            said = True
            log.warning("%s[%d]: committed offset %s unchanged for %.0f s with events in flight; %s",
                        tp.topic, tp.partition, committed, now - since, partition_state(tp, consumer))
        slow[tp] = (since, committed, said)

    def partition_state(tp, consumer) -> str:
        """What decides whether a partition's records reach the agents, for the logs of a stall."""
        try:
            return _partition_state(tp, consumer)
        except Exception as exc:  # Faust's internals moved: the warning is still worth having
            return f"state unavailable ({exc!r})"

    def _partition_state(tp, consumer) -> str:
        mine = sorted(m.offset for m in list(consumer._unacked_messages) if m.tp == tp)
        queues = {getattr(ch, "label", repr(ch))[-40:]: ch.queue.qsize() for ch in app.topics._tp_index.get(tp, ())}
        try:
            paused_below = tp in consumer._thread._ensure_consumer().paused()
        except Exception:
            paused_below = "?"
        return (f"in flight {len(mine)} (offsets {mine[0] if mine else '-'}..{mine[-1] if mine else '-'}), "
                f"read up to {consumer._read_offset.get(tp)}, fetching={tp in consumer._get_active_partitions()}, "
                f"held back for a full buffer={tp in consumer._buffered_partitions}, "
                f"paused={tp in consumer._paused_partitions}, paused in the client={paused_below}, "
                f"flow active={consumer.flow_active}, agent queues {queues}")

    @app.timer(interval=5.0)
    async def unstick_partitions():
        metrics.beat()
        # also: send what a dead worker left in the outbox (one timer: more of them made partition
        # hand-overs stall in tests)
        loop_now = asyncio.get_running_loop().time()
        if loop_now - outbox_checked[0] >= 10.0:
            outbox_checked[0] = loop_now
            try:
                await send_outbox(older_than=datetime.now(timezone.utc) - timedelta(seconds=OUTBOX_GRACE_S))
            except Exception:
                log.exception("could not send the outbox yet; retrying")
        # faust-streaming#629: after quick successive rebalances a partition can stay assigned but
        # never be fetched again, so its calls would wait forever; or an event can be dropped around a
        # rebalance while later ones go on (a hole, where guard_commits holds the commit). A partition with
        # records past its committed offset, the event at that offset not in flight, and no commit for
        # STALL_S is fetched again from its committed offset (at-least-once; every stage is idempotent, so
        # a re-read is harmless).
        consumer = app.consumer
        if app.rebalancing or app.in_recovery or consumer is None:
            stalled.clear()
            slow.clear()
            return
        tps = [tp for tp in consumer.assignment() if not consumer._is_changelog_tp(tp)]
        if not tps:
            return
        ends = await consumer.highwaters(*tps)
        never = [tp for tp in tps if consumer._committed_offset.get(tp) is None]
        if never:  # never committed by the group: read from where the log starts (auto_offset_reset earliest)
            for tp, first in (await consumer.earliest_offsets(*never)).items():
                if consumer._committed_offset.get(tp) is None and first is not None:
                    consumer._committed_offset[tp] = first
        lowest: dict = {}  # per partition, the lowest offset of the events in flight
        for m in list(consumer._unacked_messages):
            if m.offset < lowest.get(m.tp, m.offset + 1):
                lowest[m.tp] = m.offset
        now = asyncio.get_running_loop().time()
        for tp in tps:
            committed = consumer._committed_offset.get(tp)
            metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, (ends.get(tp) or 0) - (committed or 0)))
            if (ends.get(tp) or 0) <= (committed or 0):
                stalled.pop(tp, None)
                slow.pop(tp, None)
                continue
            low = lowest.get(tp)
            if low is not None and (committed is None or low <= committed):
                # the event at the committed offset is in flight: the partition moves (or waits on the database)
                stalled.pop(tp, None)
                note_slow(tp, committed, now, consumer)
                continue
            since, seen = stalled.get(tp, (now, committed))
            if seen != committed:
                since = now
            stalled[tp] = (since, committed)
            if now - since < STALL_S:
                continue
            stalled.pop(tp, None)
            if low is None:
                log.warning("%s[%d] has records after offset %s and none of them in flight for %.0f s; fetching it "
                            "again from there (%s)", tp.topic, tp.partition, committed, now - since,
                            partition_state(tp, consumer))
                # Faust fetches only the partitions in its active set (Consumer._get_active_partitions): one left
                # out of it (paused, or held back for a full buffer whose pressure drop never came) is never
                # fetched, whatever its position, so a seek alone does not bring it back. Nothing of it is in
                # flight, so its buffers are not full.
                consumer._buffered_partitions.discard(tp)
                consumer.resume_partitions([tp])
            else:
                # a hole: later events are in flight or done, the one at the committed offset is neither (dropped
                # around a rebalance; guard_commits keeps the commit there). Those in flight will be done twice.
                log.warning("%s[%d]: the event at offset %s is neither done nor in flight (in flight from %d on); "
                            "reading the partition again from it (%s)", tp.topic, tp.partition, committed, low,
                            partition_state(tp, consumer))
            await consumer.seek(tp, committed or 0)

    app.callqa_agents = dict(transcribe=transcribe, tag=tag, store=store,  # type: ignore[attr-defined]
                             manager_stats=manager_stats, record_failure=record_failure, crm=crm, join=join)
    app.callqa_stats_table = stats_table  # type: ignore[attr-defined]
    return app

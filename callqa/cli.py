"""The ``callqa`` command."""
from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

from config.settings import Settings


def _err(msg: str) -> int:
    print(f"callqa: error: {msg}", file=sys.stderr)
    return 2


def cmd_worker(args, s: Settings) -> int:
    if not s.kafka_bootstrap:
        return _err("no Kafka broker: set CALLQA_KAFKA_BOOTSTRAP=host:port "
                    "(or start a local one in another terminal with `callqa broker`)")
    from callqa.broker import BrokerError, ensure_topics, wait_for_broker
    try:
        wait_for_broker(s.kafka_bootstrap, timeout_s=30)
        ensure_topics(s.kafka_bootstrap, [s.topic_recorded, s.topic_transcribed, s.topic_tagged, s.topic_dlq,
                                          s.topic_flagged], s.topic_partitions)
    except BrokerError as e:
        return _err(f"{e}. Is the broker running? Check CALLQA_KAFKA_BOOTSTRAP.")
    from faust.worker import Worker

    from agents.app import create_app
    app = create_app(s)
    Worker(app, loglevel=args.loglevel, quiet=True).execute_from_commandline()
    return 0


def cmd_broker(args, s: Settings) -> int:
    import signal
    import threading

    from callqa.broker import BrokerError, LocalBroker
    b = LocalBroker(workdir=Path(args.dir) if args.dir else s.home_dir / "kafka", port=args.port)
    try:
        b.start()
    except BrokerError as e:
        return _err(str(e))
    print(f"Kafka broker on {b.bootstrap} (data in {b.workdir}); Ctrl-C stops it.")
    print(f"  export CALLQA_KAFKA_BOOTSTRAP={b.bootstrap}")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        b.stop()
    return 0


def _event_for_audio(args, s: Settings) -> "CallRecorded":
    from models.events import CallRecorded
    from pipeline.audio import copy_into

    src = Path(args.input).resolve()
    if not src.is_file():
        raise FileNotFoundError(f"no such file: {src}")
    allowed = s.allowed_dirs
    path = src if any(src.is_relative_to(d) for d in allowed) else copy_into(src, allowed[0])
    mc = None if args.manager_channel == "none" else int(args.manager_channel)
    return CallRecorded(
        call_id=args.call_id or f"cli-{uuid.uuid4().hex[:12]}", source="generic", manager_id=args.manager,
        manager_name=args.manager_name, team_id=args.team, language=args.language,
        started_at=datetime.now(timezone.utc), recording_url=path.as_uri(),
        channels={"layout": "mono" if mc is None else "stereo", "manager_channel": mc})


def cmd_publish(args, s: Settings) -> int:
    from pydantic import ValidationError

    from callqa.publisher import Publisher
    from models.events import CallRecorded
    if not s.kafka_bootstrap:
        return _err("set CALLQA_KAFKA_BOOTSTRAP=host:port to publish")
    try:
        if args.input.endswith(".json"):
            data = json.loads(Path(args.input).read_text())
            events = [CallRecorded.model_validate(d) for d in (data if isinstance(data, list) else [data])]
        else:
            if not args.manager:
                return _err("publishing an audio file needs --manager ID")
            events = [_event_for_audio(args, s)]
    except (OSError, ValueError, ValidationError) as e:
        return _err(str(e))
    with Publisher(s.kafka_bootstrap, s.topic_recorded) as pub:
        for ev in events:
            pub.publish(ev)
            print(f"published {ev.call_id} ({ev.manager_id}) to {s.topic_recorded}")
    return 0


def cmd_report(args, s: Settings) -> int:
    from callqa import report as rp
    from models.db import session_factory
    try:
        scope = rp.Scope(team_id=args.team, since=rp.parse_day(args.since) if args.since else None,
                         until=rp.until_day(args.until) if args.until else None)
    except ValueError as e:
        return _err(f"bad date ({e}); use YYYY-MM-DD")
    fmt = args.format
    with session_factory(s.db_url)() as session:
        if args.what in ("managers", "manager"):
            rows = rp.manager_rows(session, s.min_calls_for_rank, scope)
            if args.what == "manager":
                if not args.id:
                    return _err("which manager? callqa report manager ID")
                rows = [r for r in rows if r["manager_id"] == args.id]
                if not rows:
                    return _err(f"no calls stored for manager {args.id!r}; `callqa report managers` lists them")
                text = rp.render_manager(rows[0], s.min_calls_for_rank)
            else:
                text = rp.render_managers(rows, s.min_calls_for_rank)
            out = {"table": text, "json": rp.render_json("managers", rows), "csv": rp.rows_csv(rows)}[fmt]
        elif args.what == "flagged":
            rows = rp.flagged_rows(session, scope)
            out = {"table": rp.render_flagged(rows), "json": rp.render_json("flagged", rows),
                   "csv": rp.rows_csv(rows)}[fmt]
        elif args.what == "flags":
            rows = rp.flag_rule_rows(session, scope)
            out = {"table": rp.render_flag_rules(rows), "json": rp.render_json("flag_rules", rows),
                   "csv": rp.rows_csv(rows)}[fmt]
        else:  # coaching
            rows = rp.coaching_rows(session, scope)
            out = {"table": rp.render_coaching(rows), "json": rp.render_json("coaching", rows),
                   "csv": rp.coaching_csv(rows)}[fmt]
    sys.stdout.write(out if out.endswith("\n") or not out else out + "\n")
    return 0


def cmd_retag(args, s: Settings) -> int:
    """Re-tag stored calls from their transcripts with the current YAML rules."""
    from sqlalchemy import select

    from callqa import report as rp
    from models.db import session_factory
    from models.events import CallTagged
    from models.tables import Call
    from pipeline.tagging import RulesError, load_rules
    from pipeline.tagging.retag import retag
    try:
        rules = load_rules(s.rules_dir or None)
    except RulesError as e:
        return _err(f"the rules do not validate, nothing was re-tagged: {e}")
    if not args.dry_run and not s.kafka_bootstrap:
        return _err("set CALLQA_KAFKA_BOOTSTRAP (re-tagged calls go through calls.tagged so the worker stores "
                    "them and updates the statistics), or use --dry-run to see what would change")
    q = select(Call).where(Call.status == "tagged", Call.event.is_not(None))
    if args.call:
        q = q.where(Call.call_id.in_(args.call))
    if args.manager:
        q = q.where(Call.manager_id == args.manager)
    if args.since:
        q = q.where(Call.started_at >= rp.parse_day(args.since))
    changed = []
    with session_factory(s.db_url)() as session:
        calls = session.scalars(q.order_by(Call.started_at)).all()
        for c in calls:
            old = CallTagged.model_validate(c.event)
            new = retag(old, rules)
            diff = []
            if old.furthest_step != new.furthest_step:
                diff.append(f"furthest {old.furthest_step} -> {new.furthest_step}")
            of, nf = sorted(f.code for f in old.flags), sorted(f.code for f in new.flags)
            if of != nf:
                diff.append(f"flags {','.join(of) or '-'} -> {','.join(nf) or '-'}")
            os_, ns = ({k: (v.present, v.quality) for k, v in ev.steps.items()} for ev in (old, new))
            diff += [f"{k} {os_.get(k)} -> {ns.get(k)}" for k in ns if os_.get(k) != ns.get(k)][:3]
            if old.model_dump(include={"utterance_tags", "steps", "objections", "flags", "furthest_step"}) != \
                    new.model_dump(include={"utterance_tags", "steps", "objections", "flags", "furthest_step"}):
                changed.append((new, diff or ["utterance tags"]))
    for new, diff in changed:
        print(f"{new.call_id}: {'; '.join(diff)}")
    print(f"{len(changed)} of {len(calls)} stored calls change with the current rules"
          + (" (dry run: nothing published)" if args.dry_run else ""))
    if not args.dry_run and changed:
        from callqa.publisher import Publisher
        with Publisher(s.kafka_bootstrap, s.topic_tagged) as pub:
            for new, _ in changed:
                pub.publish_raw(new.call_id, new.model_dump_json().encode())
        print(f"published {len(changed)} re-tagged calls to {s.topic_tagged}; the worker stores them "
              "and replaces their contribution to the statistics")
    return 0


def cmd_review(args, s: Settings) -> int:
    from models.db import session_factory
    from pipeline.store import record_review
    verdict = "agree" if args.agree else "disagree"
    try:
        with session_factory(s.db_url).begin() as session:
            record_review(session, args.call_id, args.flag, verdict, args.comment, args.reviewer)
    except (LookupError, ValueError) as e:
        return _err(str(e))
    print(f"{args.call_id}: {args.flag} marked {verdict}")
    return 0


def cmd_tag(args, s: Settings) -> int:
    from pipeline.tagging import tag_dialogues
    tag_dialogues(args.input, args.output)
    return 0


def cmd_transcribe(args, s: Settings) -> int:
    """Transcribe one file in this process (no broker, no pool), with a progress bar for long files."""
    import time as _time

    from models.events import CallRecorded
    from pipeline.asr import AsrError, options_from_settings, transcribe_arrays
    from pipeline.audio import AudioError, NoSpeechError, decode_channels, probe
    from pipeline.transcribe import merge, plan_channels

    src = Path(args.file).resolve()
    if not src.is_file():
        return _err(f"no such file: {src}")
    threads = args.threads
    if threads is None and "CALLQA_ASR_CPU_THREADS" not in os.environ:
        threads = os.cpu_count() or 1  # one process here (the worker splits the cores among its processes)
    opts = options_from_settings(
        s, engine=args.engine, model=args.model, compute_type=args.compute_type, beam_size=args.beam_size,
        vad=args.vad, initial_prompt=args.prompt, hotwords=args.hotwords, cpu_threads=threads,
        batched=args.batched, batch_size=args.batch_size, device=args.device)
    mc = None if args.manager_channel == "none" else int(args.manager_channel)
    ev = CallRecorded(call_id="cli", manager_id="cli", recording_url=src.as_uri(), language=args.language,
                      channels={"layout": "mono" if mc is None else "stereo", "manager_channel": mc})
    t0 = _time.perf_counter()
    bar = None
    try:
        info = probe(src)
        channels = decode_channels(src, s.asr_max_audio_s)
        jobs = plan_channels(ev, info)
        streams = [channels[j.channel if j.channel is not None and len(channels) > 1 else 0] for j in jobs]
        del channels
        total = sum(len(a) for a in streams) / 16000
        if not args.no_progress and total >= 60:
            from tqdm import tqdm
            bar = tqdm(total=round(total, 1), unit="s", desc=src.name, file=sys.stderr, leave=False)

        def progress(done, _total):
            if bar:
                bar.update(round(done - bar.n, 1))
        results = transcribe_arrays(streams, None if args.language == "auto" else args.language, opts, progress,
                                    mono=len(jobs) == 1 and jobs[0].channel is None)
        out = merge(ev, jobs, results, opts, _time.perf_counter() - t0)
        if not out.segments:
            raise NoSpeechError(f"no speech found in {src.name}: silence, music or a dead line")
    except (AudioError, AsrError) as e:
        return _err(f"{type(e).__name__}: {e}")
    finally:
        if bar:
            bar.close()
    if args.format == "json":
        print(out.model_dump_json(indent=2))
    elif args.format == "srt":
        def ts(t: float) -> str:
            ms = int(round(t * 1000))
            return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"
        for i, seg in enumerate(out.segments, 1):
            print(f"{i}\n{ts(seg.start)} --> {ts(seg.end)}\n[{seg.speaker}] {seg.text}\n")
    else:
        for seg in out.segments:
            print(f"[{seg.start:7.2f} - {seg.end:7.2f}] {seg.speaker:>7}: {seg.text}")
    print(f"({out.asr.audio_s:.1f}s audio in {out.asr.wall_s:.1f}s, {out.asr.engine} {out.asr.model} "
          f"{out.asr.compute_type}, language {out.language_detected})", file=sys.stderr)
    return 0


def cmd_demo(args, s: Settings) -> int:
    from callqa.demo.run import run_demo
    return run_demo(s, timeout_s=args.timeout)


def cmd_config(args, s: Settings) -> int:
    secret = ("TOKEN", "SECRET", "SALT", "KEY", "PASSWORD")
    for env, default, help_ in Settings.describe():
        current = os.environ.get(env)
        if current and any(w in env for w in secret):
            current = "***"  # never echo credentials to a terminal or a CI log
        print(f"{env:28} default={default!r:12} {help_}" + (f"  [set: {current}]" if current else ""))
    return 0


def cmd_web(args, s: Settings) -> int:
    import uvicorn

    from web.app import create_app
    print(f"callqa web on http://{args.host}:{args.port}/ (database: {s.db_url})")
    uvicorn.run(create_app(s), host=args.host, port=args.port, log_level="warning")
    return 0


def cmd_ingest(args, s: Settings) -> int:
    from callqa.ingest_app import run_ingest
    return run_ingest(args.host, args.port) or 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="callqa", description="Call-quality pipeline for sales teams.")
    sub = p.add_subparsers(dest="command", required=True)

    w = sub.add_parser("worker", help="run the Faust worker (transcribe, tag, store)")
    w.add_argument("--loglevel", default="info")
    w.set_defaults(fn=cmd_worker)

    b = sub.add_parser("broker", help="run a local single-node Kafka broker (development)")
    b.add_argument("--port", type=int, default=9092)
    b.add_argument("--dir", help="data directory (default: CALLQA_HOME/kafka)")
    b.set_defaults(fn=cmd_broker)

    pub = sub.add_parser("publish", help="publish a CallRecorded event (JSON file) or an audio file")
    pub.add_argument("input", help="event .json (one event or a list) or an audio file")
    pub.add_argument("--manager", help="manager id (audio files)")
    pub.add_argument("--manager-name")
    pub.add_argument("--team")
    pub.add_argument("--call-id")
    pub.add_argument("--language", choices=["ru", "en", "auto"], default="auto")
    pub.add_argument("--manager-channel", choices=["0", "1", "none"], default="0",
                     help="stereo channel of the manager; none = mono recording")
    pub.set_defaults(fn=cmd_publish)

    r = sub.add_parser("report", help="weak stages, flagged calls, flag rules, coaching",
                       description="managers: weak stage per manager; manager ID: one manager in detail; "
                                   "flagged: the review queue; flags: how reviewers judged each flag rule; "
                                   "coaching: managers ranked by objection-handling shortfall, with moments")
    r.add_argument("what", nargs="?", default="managers",
                   choices=["managers", "manager", "flagged", "flags", "coaching"])
    r.add_argument("id", nargs="?", help="manager id (with `manager`)")
    r.add_argument("--team")
    r.add_argument("--since", help="YYYY-MM-DD (calls started on or after)")
    r.add_argument("--until", help="YYYY-MM-DD (calls started on or before that day)")
    r.add_argument("--format", choices=["table", "json", "csv"], default="table")
    r.set_defaults(fn=cmd_report)

    rv = sub.add_parser("review", help="record a sales head's verdict on a flagged call")
    rv.add_argument("call_id")
    rv.add_argument("flag", help="the flag code, as `callqa report flagged` shows it")
    g = rv.add_mutually_exclusive_group(required=True)
    g.add_argument("--agree", action="store_true", help="the flag was right")
    g.add_argument("--disagree", action="store_true", help="the flag was wrong")
    rv.add_argument("--comment")
    rv.add_argument("--reviewer", default=os.environ.get("USER"))
    rv.set_defaults(fn=cmd_review)

    rt = sub.add_parser("retag", help="re-tag stored calls from their transcripts after a rules (YAML) change")
    rt.add_argument("--call", action="append", help="only this call id (repeatable)")
    rt.add_argument("--manager", help="only this manager's calls")
    rt.add_argument("--since", help="only calls started on or after YYYY-MM-DD")
    rt.add_argument("--dry-run", action="store_true", help="show what would change, publish nothing")
    rt.set_defaults(fn=cmd_retag)

    t = sub.add_parser("tag", help="tag dialogues from a JSONL file (the eval format)")
    t.add_argument("--input", required=True)
    t.add_argument("--output", required=True)
    t.set_defaults(fn=cmd_tag)

    tr = sub.add_parser("transcribe", help="transcribe one recording and print the turns")
    tr.add_argument("file")
    tr.add_argument("--engine", choices=["faster-whisper", "openai-whisper"])
    tr.add_argument("--model")
    tr.add_argument("--language", choices=["ru", "en", "auto"], default="auto")
    tr.add_argument("--manager-channel", choices=["0", "1", "none"], default="0",
                    help="stereo channel of the manager; none = transcribe as mono (speaker unknown)")
    tr.add_argument("--compute-type", choices=["int8", "float32", "float16", "int8_float32"])
    tr.add_argument("--beam-size", type=int, help="default CALLQA_ASR_BEAM_SIZE (5)")
    tr.add_argument("--batched", action=argparse.BooleanOptionalAction, default=None,
                    help="faster-whisper batched decoding (default CALLQA_ASR_BATCHED: on); --no-batched: sequential")
    tr.add_argument("--batch-size", type=int,
                    help="30 s chunks decoded at once (default CALLQA_ASR_BATCH_SIZE: 4; GPU 16-32)")
    tr.add_argument("--device", choices=["cpu", "cuda"],
                    help="default CALLQA_ASR_DEVICE (cpu); on cuda float16 unless --compute-type says otherwise")
    tr.add_argument("--vad", action=argparse.BooleanOptionalAction, default=None, help="voice activity filter")
    tr.add_argument("--prompt", help="initial prompt (default CALLQA_ASR_INITIAL_PROMPT)")
    tr.add_argument("--hotwords", help="product/company names (default CALLQA_ASR_HOTWORDS)")
    tr.add_argument("--threads", type=int, help="CPU threads (default CALLQA_ASR_CPU_THREADS, else all cores)")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    tr.add_argument("--format", choices=["text", "json", "srt"], default="text")
    tr.set_defaults(fn=cmd_transcribe)

    d = sub.add_parser("demo", help="broker + worker + sample calls + report, all local")
    d.add_argument("--timeout", type=float, default=1200.0)
    d.set_defaults(fn=cmd_demo)

    c = sub.add_parser("config", help="list the settings and their environment names")
    c.set_defaults(fn=cmd_config)

    wb = sub.add_parser("web", help="web pages: weak stages, review queue, calls, coaching (and a JSON API)")
    wb.add_argument("--host", default="127.0.0.1")
    wb.add_argument("--port", type=int, default=8080)
    wb.set_defaults(fn=cmd_web)

    i = sub.add_parser("ingest", help="HTTP service for telephony callbacks")
    i.add_argument("--host", default="0.0.0.0")
    i.add_argument("--port", type=int, default=8090)
    i.set_defaults(fn=cmd_ingest)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as e:
        return _err(str(e))
    return args.fn(args, settings)

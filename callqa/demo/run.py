"""`callqa demo`: a local broker, a worker, the shipped sample calls, the report."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from config.settings import Settings

DEMO_DIR = Path(__file__).resolve().parent


def demo_events(recordings: Path) -> list:
    from models.events import CallRecorded

    events = []
    for item in json.loads((DEMO_DIR / "calls.json").read_text()):
        src = DEMO_DIR / "calls" / item["file"]
        dest = recordings / item["file"]
        shutil.copyfile(src, dest)
        data = {k: v for k, v in item.items() if k not in ("file", "intended")}
        events.append(CallRecorded.model_validate({**data, "recording_url": dest.as_uri()}))
    return events


def demo_crm_events() -> list:
    """The demo's CRM: a lead for each call (some hot leads called late, one never), proposals, deals won
    and lost (callqa/demo/crm.json, in the generic CRM event format)."""
    from models.crm import parse_crm_event
    return [parse_crm_event(d) for d in json.loads((DEMO_DIR / "crm.json").read_text())]


def _wait_for_joins(sessions, crm_events: list, timeout_s: float = 60.0) -> int:
    """Wait until every CRM event is recorded and the joins settle; how many calls joined a lead."""
    from sqlalchemy import func, select

    from models.tables import CrmLeadCall, CrmLeadEvent
    deadline, last, stable = time.monotonic() + timeout_s, -1, 0
    while time.monotonic() < deadline:
        with sessions() as session:
            events = session.scalar(select(func.count()).select_from(CrmLeadEvent))
            links = session.scalar(select(func.count()).select_from(CrmLeadCall))
        stable = stable + 1 if (events == len(crm_events) and links == last) else 0
        if stable >= 3:
            break
        last = links
        time.sleep(1.0)
    return last


def _saved_reviews(db_url: str) -> list[dict]:
    """Reviews made on an earlier demo's calls, read before the demo resets its database."""
    from sqlalchemy import select

    from models.db import session_factory, sqlite_path
    from models.tables import Review
    path = sqlite_path(db_url)
    if path is None or not path.is_file():
        return []
    try:
        with session_factory(db_url)() as session:
            # the whole history, oldest first, so the current verdict of each flag stays the current one
            return [{"call_id": r.call_id, "flag": r.flag_code, "at": r.flag_at, "verdict": r.verdict,
                     "comment": r.comment, "reviewer": r.reviewer, "created_at": r.created_at}
                    for r in session.scalars(select(Review).order_by(Review.current, Review.id))]
    except Exception as e:  # an unreadable old database must not stop the demo; say what is lost
        print(f"  (could not read the reviews of the previous demo database: {e})")
        return []


def _restore_reviews(sessions, reviews: list[dict]) -> tuple[int, list[str]]:
    from pipeline.store import record_review
    kept, lost = 0, []
    for r in reviews:
        try:
            with sessions.begin() as session:
                try:
                    rv = record_review(session, r["call_id"], r["flag"], r["verdict"], r["comment"], r["reviewer"],
                                       at=r.get("at"))
                except LookupError:
                    # re-transcribed on another machine, the moment may have moved a little: the call's only
                    # flag of that code is the same one (several: record_review refuses to guess)
                    rv = record_review(session, r["call_id"], r["flag"], r["verdict"], r["comment"], r["reviewer"])
                if r["created_at"] is not None:
                    rv.created_at = r["created_at"]
            kept += 1
        except (LookupError, ValueError):
            lost.append(f"{r['call_id']} {r['flag']}")  # this run did not raise that flag again
    return kept, lost


def _callqa_command() -> str:
    """How to run callqa again from here: the script beside this Python (.venv/bin/callqa), else callqa."""
    script = Path(sys.executable).parent / "callqa"
    if not script.exists():
        return "callqa"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def _demo_admin(sessions) -> tuple[str, str]:
    """An admin for the demo's web pages, with a random password (printed once by the caller)."""
    from pipeline import accounts
    password = accounts.random_password()
    with sessions.begin() as session:
        try:
            accounts.set_password(session, "admin", password)
        except accounts.AccountError:
            accounts.add_user(session, "admin", "admin", password)
    return "admin", password


def _progress(done: int, total: int, started: float, last: list) -> None:
    if sys.stdout.isatty():
        bar = "#" * int(30 * done / total) + "-" * (30 - int(30 * done / total))
        sys.stdout.write(f"\r  [{bar}] {done}/{total} calls processed, {time.monotonic() - started:5.0f}s")
        sys.stdout.flush()
    elif done != last[0]:  # a log file or CI: one line per change, not one per second
        print(f"  {done}/{total} calls processed, {time.monotonic() - started:.0f}s", flush=True)
    last[0] = done


def run_demo(base: Settings, timeout_s: float = 1200.0) -> int:
    from sqlalchemy import select

    from callqa.broker import BrokerError, LocalBroker
    from callqa.publisher import Publisher
    from callqa.report import manager_rows, render_funnel, render_managers
    from pipeline import funnel
    from models.db import session_factory
    from models.tables import Call

    home = base.home_dir / "demo" if not base.home else base.home_dir
    s = replace(base, home=str(home), recordings_dir=str(home / "recordings"), database_url=base.database_url,
                app_id=f"{base.app_id}-demo")
    reviews = _saved_reviews(s.db_url)
    if home.exists():
        # the figures must come from this run's calls alone; what people added (reviews) is carried over
        print(f"Resetting the demo in {home} (database, recordings, broker data)"
              + (f"; the {len(reviews)} review(s) made on the demo calls are kept" if reviews else "") + ".")
    shutil.rmtree(home, ignore_errors=True)
    recordings = home / "recordings"
    recordings.mkdir(parents=True)
    broker = None
    worker = None
    try:
        if not s.kafka_bootstrap:
            print("Starting a local Apache Kafka broker (KRaft)...")
            try:
                broker = LocalBroker(workdir=home / "kafka").start()
            except BrokerError as e:
                print(f"callqa: error: {e}", file=sys.stderr)
                return 2
            s = replace(s, kafka_bootstrap=broker.bootstrap)
            print(f"  broker on {broker.bootstrap}")
        env = {**os.environ, "CALLQA_HOME": str(home), "CALLQA_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
               "CALLQA_RECORDINGS_DIR": s.recordings_dir, "CALLQA_APP_ID": s.app_id,
               "CALLQA_DATABASE_URL": s.db_url}
        log_path = home / "worker.log"
        print(f"Starting the worker (log: {log_path})...")
        worker = subprocess.Popen([sys.executable, "-m", "callqa", "worker"], env=env,
                                  stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)
        events = demo_events(recordings)
        with Publisher(s.kafka_bootstrap, s.topic_recorded) as pub:
            for ev in events:
                pub.publish(ev)
        crm_events = demo_crm_events()
        with Publisher(s.kafka_bootstrap, s.topic_crm) as pub:
            for cev in crm_events:  # deals close before the calls are transcribed: the join takes any order
                pub.publish_raw(cev.lead_key, cev.model_dump_json().encode())
        print(f"Published {len(events)} sample calls to {s.topic_recorded} and {len(crm_events)} CRM events "
              f"(leads, proposals, deals) to {s.topic_crm}; transcribing and tagging...")
        sessions = session_factory(s.db_url)
        ids = [e.call_id for e in events]
        started = time.monotonic()
        done = 0
        last = [-1]
        while done < len(ids):
            if worker.poll() is not None:
                print(f"\ncallqa: error: the worker stopped (exit {worker.returncode}); see {log_path}",
                      file=sys.stderr)
                return 1
            if time.monotonic() - started > timeout_s:
                print(f"\ncallqa: error: only {done}/{len(ids)} calls done after {timeout_s:.0f}s; see {log_path}",
                      file=sys.stderr)
                return 1
            with sessions() as session:
                done = len(session.scalars(select(Call.call_id).where(
                    Call.call_id.in_(ids), Call.status.in_(("tagged", "failed")))).all())
            _progress(done, len(ids), started, last)
            time.sleep(1.0)
        print()
        if reviews:
            kept, lost = _restore_reviews(sessions, reviews)
            print(f"Kept {kept} review(s) from the previous demo run"
                  + (f"; {len(lost)} no longer apply (flag not raised this time): {', '.join(lost)}" if lost else ""))
        with sessions() as session:
            failed = session.scalars(select(Call).where(Call.call_id.in_(ids), Call.status == "failed")).all()
            rows = manager_rows(session, s.min_calls_for_rank)
        for c in failed:
            print(f"  failed: {c.call_id} at {c.failed_stage}: {c.error}")
        print()
        print(render_managers(rows, s.min_calls_for_rank))
        joined = _wait_for_joins(sessions, crm_events)
        with sessions() as session:
            funnel_data = funnel.funnel_rows(session, hot_minutes=s.hot_lead_minutes)
            impact = funnel.step_impact(session, min_leads=s.min_leads)
        print(f"\nThe CRM funnel ({joined} of {len(ids)} calls joined to their leads by the client's phone):\n")
        print(render_funnel(funnel_data))
        print(f"\nStep impact: {impact['team']['conclusion']} (`report step-impact` shows each step)")
        print()
        print(f"Database: {s.db_url}")
        cmd = _callqa_command()
        print(f"Again, any time: CALLQA_DATABASE_URL={s.db_url} {cmd} report "
              "[managers|manager ID|flagged|flags|coaching|funnel|step-impact]")
        print(f"In a browser:    CALLQA_HOME={home} CALLQA_DATABASE_URL={s.db_url} "
              f"CALLQA_RECORDINGS_DIR={s.recordings_dir} {cmd} web  (http://127.0.0.1:8080/)")
        user, password = _demo_admin(sessions)
        print(f"  log in as {user} with the password {password}  (shown once; {cmd} users passwd {user} sets another)")
        return 0 if not failed else 1
    except KeyboardInterrupt:
        print("\ninterrupted; stopping the worker and the broker")
        return 130
    finally:
        if worker is not None and worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
        if broker is not None:
            broker.stop()

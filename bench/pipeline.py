"""Pipeline benchmarks through a real Kafka broker and a real `callqa worker` process.

(a) Non-ASR throughput: N CallTranscribed events (the dev dialogues of tests/data/tagging_dev.jsonl,
    cycled, with word timestamps like the ASR stage emits) published to the worker's `transcribed`
    topic; calls/s until every call is stored (tag + store), and until the live statistics of all of
    them are mirrored to SQL. For context, the per-call cost of each agent's work measured in this
    process, without Kafka.
(b) Latency: one 60 s stereo call (synth_call_en_8k_stereo.wav) published as CallRecorded; seconds
    from the publish to the call stored and to its manager's statistics mirrored. "cold" = the first
    call after the worker is ready (includes starting the ASR processes and loading the model),
    "warm" = the following calls.

(c) Scale (--scale, run on its own): one manager's 5,000 and 50,000 calls through the statistics
    agent; ms and memory per call at both sizes (flat is the target), and the recovery time after a
    restart, proven by a re-tag of an old call counted right. `--json FILE` writes
    {"scale": {"5000": {"ms_per_call", "rss_mb", "recovery_s", ...}, "50000": {...}}}.

(d) Throughput (--throughput, run on its own): the non-ASR path of (a), calls/s until every call is
    counted in the SQL mirror of the statistics, with one worker on SQLite, one on PostgreSQL and two
    on PostgreSQL; with `--before DIR` (an export of older code, e.g. `git archive main | tar -x -C DIR`)
    each is run with that code's worker too, side by side in the same run. The CPU seconds each process
    (worker, broker, PostgreSQL) spent per call show where the time goes. `--json FILE` merges
    {"throughput": {"sqlite_1w", "postgres_1w", "postgres_2w"}} (calls/s) into FILE, beside "scale".

Run:  .venv/bin/python bench/pipeline.py [--calls 2000] [--warm 3] [--write-readme]
      .venv/bin/python bench/pipeline.py --scale [--json FILE] [--write-readme]
      .venv/bin/python bench/pipeline.py --throughput [--before DIR] [--json FILE] [--write-readme]
It starts its own broker (or uses --bootstrap), and a worker with default settings (faster-whisper
base int8, 2 ASR processes, SQLite) in a temporary CALLQA_HOME.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import func, select  # noqa: E402

from models.events import CallRecorded, CallTagged, CallTranscribed, StatsUpdate  # noqa: E402
from models.tables import Call, ManagerStageStat  # noqa: E402
from tests.helpers import SHARED, WorkerProcess  # noqa: E402
from tests.test_resilience import transcribed_event  # noqa: E402

README = REPO / "bench" / "README.md"
START, END = "<!-- pipeline:start -->", "<!-- pipeline:end -->"
STEREO = SHARED / "audio" / "synthetic" / "synth_call_en_8k_stereo.wav"
TP_MANAGERS = [f"tp-mgr-{i:02d}" for i in range(20)]


def with_words(ev: CallTranscribed) -> CallTranscribed:
    """Add word timestamps, as the ASR stage does (they travel through tag and store)."""
    data = ev.model_dump(mode="json")
    for seg in data["segments"]:
        words = seg["text"].split()
        step = (seg["end"] - seg["start"]) / max(1, len(words))
        seg["words"] = [{"start": round(seg["start"] + i * step, 2), "end": round(seg["start"] + (i + 1) * step, 2),
                         "word": " " + w, "probability": 0.9} for i, w in enumerate(words)]
    return CallTranscribed.model_validate(data)


def tp_events(n: int, prefix: str) -> list[CallTranscribed]:
    return [with_words(transcribed_event(i, prefix, TP_MANAGERS)) for i in range(n)]


# ---------------------------------------------------------------------------------------------- in-process

def in_process_costs(n: int, workdir: Path) -> dict[str, float]:
    """ms per call of each agent's work without Kafka: tag, store, statistics (table value + SQL mirror)."""
    from models.db import session_factory
    from pipeline.stats import JsonTable, StatsState, outcome_from_tagged
    from pipeline.store import mirror_manager_stats, store_tagged
    from pipeline.tagging import load_rules
    from pipeline.tagging.retag import retag

    rules = load_rules()
    raws = [ev.model_dump_json().encode() for ev in tp_events(n, "ip")]

    def tag(raw: bytes) -> bytes:
        # what the worker's tag agent does (agents/app.py: retag)
        return retag(CallTranscribed.model_validate_json(raw), rules).model_dump_json().encode()

    for raw in raws[:20]:  # warm the lemma caches
        tag(raw)
    t = time.perf_counter()
    tagged = [tag(raw) for raw in raws]
    tag_ms = (time.perf_counter() - t) * 1000 / n

    sessions = session_factory(f"sqlite:///{workdir / 'inproc.db'}")
    t = time.perf_counter()
    for raw in tagged:
        ev = CallTagged.model_validate_json(raw)
        with sessions.begin() as s:
            store_tagged(s, ev)
    store_ms = (time.perf_counter() - t) * 1000 / n

    state = StatsState(JsonTable())  # values through JSON, as the changelog carries them
    t = time.perf_counter()
    mirror_s = 0.0
    for offset, raw in enumerate(tagged):
        ev = CallTagged.model_validate_json(raw)
        o = outcome_from_tagged(ev, revision=1)
        applied = state.apply(StatsUpdate(op="apply", call_id=o.call_id, manager_id=o.manager_id, revision=1,
                                          outcome=o.to_compact()), offset)
        t1 = time.perf_counter()
        with sessions.begin() as s:
            mirror_manager_stats(s, state.manager(o.manager_id, applied.periods), applied.periods)
        mirror_s += time.perf_counter() - t1
    stats_ms = (time.perf_counter() - t) * 1000 / n
    return {"tag": tag_ms, "store": store_ms, "stats": stats_ms, "mirror": mirror_s * 1000 / n,
            "event_kb": sum(map(len, tagged)) / n / 1024}


def tag_costs(n: int) -> dict[str, float]:
    """ms per call of the tag stage as the worker runs it, rules alone and with the learned model (the default),
    on texts the sentence encoder's cache has seen and on new ones. The throughput runs cycle 30 dev dialogues,
    so after the first pass every sentence is cached; real calls are new texts."""
    from pipeline.tagging import load_rules
    from pipeline.tagging.learned import PACKAGED, load_cached
    from pipeline.tagging.retag import retag

    rules, model = load_rules(), load_cached(PACKAGED)
    seen = tp_events(n, "tc")

    def new_texts(ev: CallTranscribed, i: int) -> CallTranscribed:
        data = ev.model_dump(mode="json")
        for k, seg in enumerate(data["segments"]):
            seg["text"] += f" (ref {i}-{k})"  # a text no other call has: the cache cannot answer it
        return CallTranscribed.model_validate(data)

    new = [new_texts(ev, i) for i, ev in enumerate(seen)]
    for ev in seen:  # every dialogue's sentences cached, as after the first cycle of a throughput run
        retag(ev, rules, model)
    out = {"n": n, "segments_per_call": sum(len(ev.segments) for ev in seen) / n}
    for name, evs, m in (("rules", new, None), ("learned_seen", seen, model), ("learned_new", new, model)):
        t = time.perf_counter()
        for ev in evs:
            retag(ev, rules, m)
        out[name] = (time.perf_counter() - t) * 1000 / n
    return out


def fmt_tag_costs(tc: dict) -> str:
    return "\n".join([
        f"`bench/pipeline.py --tag-cost` ({tc['n']} calls of the dev dialogues, {tc['segments_per_call']:.0f} segments a "
        "call, one process, run with OMP_NUM_THREADS=1, same run): ms per call of the tag stage (`retag`: parse to tags to `CallTagged`).",
        "",
        "| tagger | texts | ms / call | calls/s if alone (one core) |",
        "|---|---|---|---|",
        f"| rules alone (`CALLQA_TAGGER=rules`) | new | {tc['rules']:.1f} | {1000 / tc['rules']:.0f} |",
        f"| learned (the default) | seen before (the throughput runs' cycled dialogues) | {tc['learned_seen']:.1f} | "
        f"{1000 / tc['learned_seen']:.0f} |",
        f"| learned (the default) | new (real traffic) | **{tc['learned_new']:.1f}** | **{1000 / tc['learned_new']:.0f}** |",
    ])


# ---------------------------------------------------------------------------------------------- worker

def wait_ready(w: WorkerProcess, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while "[^Worker]: Ready" not in (w.log.read_text(errors="replace") if w.log.exists() else ""):
        if w.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker not ready: {w.log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)


def stored(w: WorkerProcess, prefix: str) -> int:
    with w.sessions() as s:
        return s.scalar(select(func.count()).select_from(Call)
                        .where(Call.call_id.like(f"{prefix}-%"), Call.status == "tagged")) or 0


def mirrored_calls(w: WorkerProcess, managers: list[str]) -> int:
    with w.sessions() as s:
        return s.scalar(select(func.coalesce(func.sum(ManagerStageStat.calls), 0))
                        .where(ManagerStageStat.manager_id.in_(managers), ManagerStageStat.period == "all",
                               ManagerStageStat.step == "greeting")) or 0


def latency_call(w: WorkerProcess, pub, call_id: str, manager: str, timeout_s: float = 300) -> dict:
    ev = CallRecorded(call_id=call_id, manager_id=manager, manager_name=manager, team_id="bench", language="en",
                      recording_url=STEREO.as_uri(), channels={"layout": "stereo", "manager_channel": 0},
                      started_at=datetime(2026, 11, 2, 10, 0, tzinfo=timezone.utc))
    t0 = time.perf_counter()
    pub.publish(ev)
    t_stored = None
    deadline = time.monotonic() + timeout_s
    while True:
        with w.sessions() as s:
            call = s.get(Call, call_id)
            if t_stored is None and call is not None and call.status in ("tagged", "failed"):
                if call.status == "failed":
                    raise RuntimeError(f"{call_id} failed: {call.error}")
                t_stored = time.perf_counter() - t0
                asr = dict(call.asr)
            has_stats = s.scalar(select(func.count()).select_from(ManagerStageStat)
                                 .where(ManagerStageStat.manager_id == manager)) or 0
        if t_stored is not None and has_stats:
            return {"stored_s": t_stored, "stats_s": time.perf_counter() - t0, "asr_wall_s": asr["wall_s"],
                    "audio_s": asr["audio_s"]}
        if time.monotonic() > deadline:
            raise RuntimeError(f"{call_id} not done in {timeout_s}s: {w.log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)


def throughput(w: WorkerProcess, bootstrap: str, n: int, workers: list[WorkerProcess] | None = None) -> dict:
    """w: the worker whose topics and database are used; workers: every process of the group (default [w])."""
    workers = workers or [w]
    from kafka import KafkaProducer

    events = tp_events(n, "tp")
    raws = [(ev.call_id.encode(), ev.model_dump_json().encode()) for ev in events]
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, batch_size=512 * 1024,
                             max_request_size=8 * 1024 * 1024)
    t0 = time.perf_counter()
    wall0 = datetime.now(timezone.utc)
    for key, value in raws:
        producer.send(w.topics["transcribed"], key=key, value=value)
    producer.flush()
    publish_s = time.perf_counter() - t0
    producer.close()
    t_stored = t_stats = None
    deadline = time.monotonic() + max(600, n)
    stats_deadline = None
    while t_stats is None:
        if t_stored is None and stored(w, "tp") >= n:
            t_stored = time.perf_counter() - t0
            stats_deadline = time.monotonic() + 120
        if t_stored is not None and mirrored_calls(w, TP_MANAGERS) >= n:
            t_stats = time.perf_counter() - t0
        if stats_deadline is not None and time.monotonic() > stats_deadline:
            print(f"statistics stalled: {mirrored_calls(w, TP_MANAGERS)} of {n} calls mirrored 120 s after "
                  "the last was stored", file=sys.stderr)
            t_stats = float("nan")
            break
        if any(x.proc.poll() is not None for x in workers) or time.monotonic() > deadline:
            raise RuntimeError(f"throughput run did not finish: {stored(w, 'tp')}/{n} stored, "
                               f"{mirrored_calls(w, TP_MANAGERS)} in stats; {w.log.read_text()[-3000:]}")
        time.sleep(0.1)
    with w.sessions() as s:
        times = sorted(t for (t,) in s.execute(select(Call.updated_at).where(Call.call_id.like("tp-%"))))
    times = [t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t for t in times]
    i10, i90 = int(0.1 * n), int(0.9 * n) - 1
    steady = (i90 - i10) / max(1e-9, (times[i90] - times[i10]).total_seconds())
    return {"n": n, "workers": len(workers), "publish_s": publish_s, "stored_s": t_stored, "stats_s": t_stats,
            "first_stored_s": (times[0] - wall0).total_seconds(),
            "stored_rate": n / t_stored, "stats_rate": n / t_stats, "steady_rate": steady}


def two_workers(bootstrap: str, home: Path, n: int) -> dict:
    a = WorkerProcess(bootstrap, home, [home])
    b = WorkerProcess(bootstrap, home, [home], app_id=a.app_id)
    b.topics, b.env = a.topics, a.env
    a.start()
    b.start()
    try:
        wait_ready(a)
        wait_ready(b)
        time.sleep(5)  # let the group settle on one assignment
        from callqa.publisher import Publisher
        with Publisher(bootstrap, a.topics["transcribed"]) as pub:
            warm = [with_words(transcribed_event(i, "tpwarm", TP_MANAGERS)) for i in range(16)]
            for ev in warm:
                pub.publish_raw(ev.call_id, ev.model_dump_json().encode())
        a.wait_for_calls([ev.call_id for ev in warm], timeout_s=180, statuses=("tagged",))
        print(f"throughput, two workers: {n} calls...", file=sys.stderr)
        tp = throughput(a, bootstrap, n, [a, b])
        print(json.dumps(tp), file=sys.stderr)
        return tp
    finally:
        a.stop()
        b.stop()


# ---------------------------------------------------------------------------------------------- throughput

TP_START, TP_END = "<!-- throughput:start -->", "<!-- throughput:end -->"
TP_CONFIGS = (("sqlite_1w", "sqlite", 1), ("postgres_1w", "postgres", 1), ("postgres_2w", "postgres", 2))


class CodeWorker(WorkerProcess):
    """A worker running the code of ``repo`` (this checkout, or an export of older code for --before)."""

    def __init__(self, *args, repo: Path = REPO, **kw):
        super().__init__(*args, **kw)
        self.repo = repo

    def start(self) -> "CodeWorker":
        import subprocess
        self.home.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-m", "callqa", "worker"], cwd=self.repo,
                                     env={**self.env, "PYTHONPATH": str(self.repo)},
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        return self


def cpu_s(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds of each of these processes so far (with their reaped children)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = sum(int(x) for x in f[11:15]) / tick  # utime stime cutime cstime
    return out


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two readings; a process that started in between (a PostgreSQL backend) from 0."""
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


def children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, ValueError, IndexError):
                pass
    return out


def throughput_run(bootstrap: str, home: Path, n: int, workers: int, db_url: str, repo: Path,
                   pids: dict[str, Callable[[], list[int]]]) -> dict:
    """``workers`` worker processes of ``repo``'s code (one group) on ``db_url``: a warm-up, then the run of
    (a), with the CPU seconds per call of each process kind."""
    from callqa.publisher import Publisher
    ws = [CodeWorker(bootstrap, home, [home], db_url=db_url, repo=repo)]
    for _ in range(workers - 1):
        ws.append(CodeWorker(bootstrap, home, [home], app_id=ws[0].app_id, db_url=db_url, repo=repo))
        ws[-1].topics, ws[-1].env = ws[0].topics, ws[0].env
    ws[0].sessions  # migrate the database now, not in two workers at once
    for w in ws:
        w.start()
    try:
        for w in ws:
            wait_ready(w)
        if workers > 1:
            time.sleep(5)  # let the group settle on one assignment
        with Publisher(bootstrap, ws[0].topics["transcribed"]) as pub:
            warm = [with_words(transcribed_event(i, "tpwarm", TP_MANAGERS)) for i in range(16)]
            for ev in warm:
                pub.publish_raw(ev.call_id, ev.model_dump_json().encode())
        ws[0].wait_for_calls([ev.call_id for ev in warm], timeout_s=180, statuses=("tagged",))
        kinds = {"worker": lambda: [w.proc.pid for w in ws], **pids}
        before = {k: cpu_s(v()) for k, v in kinds.items()}
        tp = throughput(ws[0], bootstrap, n, ws)
        tp["cpu_ms_per_call"] = {k: cpu_used(before[k], cpu_s(v())) * 1000 / n for k, v in kinds.items()}
        return tp
    finally:
        for w in ws:
            w.stop()


def fmt_throughput(runs: dict[str, dict], n: int, seconds: float) -> str:
    before = any("before" in r for r in runs.values())
    lines = [
        "## Throughput of the non-ASR path, side by side",
        "",
        f"`bench/pipeline.py --throughput{' --before DIR' if before else ''}` (run: `.venv/bin/python bench/pipeline.py "
        f"--throughput --calls {n}{' --before /tmp/callqa-before' if before else ''} --json FILE --write-readme`). "
        f"{n} `CallTranscribed` events (the dev dialogues with word timestamps, 20 managers) published at once "
        "to fresh workers' `transcribed` topic after a warm-up; calls/s until every call is stored, and until "
        "every call is counted in the SQL mirror of the statistics (tag + store + statistics: the figure). "
        f"{os.cpu_count()} CPU cores **shared with three other engineers' work**: numbers from one run move by "
        "±30 % from run to run, so only the columns of one run are compared. Kafka 3.9.1 (KRaft, local), "
        f"PostgreSQL local (fsync on), Python {platform.python_version()}."
        + (" \"before\": the worker of the code before this change (an export of `main`), run right before "
           "\"after\" on the same broker and database server." if before else ""),
        "",
        "| setup | " + (" before: stored / counted (calls/s) | " if before else "") + "after: stored / counted (calls/s) | "
        + ("ratio (counted) | " if before else "") + "after: CPU ms per call (worker / broker / PostgreSQL) |",
        "|---|" + ("---|" if before else "") + "---|" + ("---|" if before else "") + "---|",
    ]
    for key, r in runs.items():
        a = r["after"]
        cpu = a["cpu_ms_per_call"]
        row = f"| {key} | "
        if before:
            b = r["before"]
            row += f"{b['stored_rate']:.0f} / {b['stats_rate']:.0f} | "
        row += f"{a['stored_rate']:.0f} / **{a['stats_rate']:.0f}** | "
        if before:
            row += f"{a['stats_rate'] / r['before']['stats_rate']:.2f} | "
        row += f"{cpu['worker']:.2f} / {cpu.get('broker', float('nan')):.2f} / {cpu.get('postgres', 0):.2f} |"
        lines.append(row)
    lines += ["", "Target (design.md): ≥ 200 calls/s on 2 cores."]
    if seconds:
        lines += ["", f"_Benchmark ran in {seconds:.0f} s._"]
    return "\n".join(lines)


def throughput_bench(args, started: float) -> int:
    from tests.pgserver import LocalPostgres
    repos = ([("before", Path(args.before).resolve())] if args.before else []) + [("after", REPO)]
    runs: dict[str, dict] = {}
    broker = None
    with tempfile.TemporaryDirectory(prefix="callqa-tp-") as tmp, LocalPostgres() as pg:
        tmp = Path(tmp)
        bootstrap = args.bootstrap
        pids: dict[str, Callable[[], list[int]]] = {}
        if not bootstrap:
            from callqa.broker import LocalBroker
            broker = LocalBroker(workdir=tmp / "kafka").start(log=lambda m: print(m, file=sys.stderr))
            bootstrap = broker.bootstrap
            pids["broker"] = lambda: [broker._proc.pid]
        postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
        import psycopg
        try:
            for key, db, workers in TP_CONFIGS:
                for label, repo in repos:
                    tag = f"{key}-{label}"
                    if db == "sqlite":
                        url = f"sqlite:///{tmp / tag / 'callqa.db'}"
                    else:
                        with psycopg.connect(f"host=127.0.0.1 port={pg.port} user=callqa dbname=callqa",
                                             autocommit=True) as c:
                            c.execute(f'CREATE DATABASE "{tag}"')
                        url = pg.url.rsplit("/", 1)[0] + f"/{tag}"
                    print(f"throughput {tag}: {args.calls} calls...", file=sys.stderr)
                    run_pids = {**pids, "postgres": lambda: [postmaster] + children(postmaster)} \
                        if db == "postgres" else pids
                    r = throughput_run(bootstrap, tmp / tag, args.calls, workers, url, repo, run_pids)
                    print(json.dumps(r), file=sys.stderr)
                    runs.setdefault(key, {})[label] = r
        finally:
            if broker is not None:
                broker.stop()
    section = fmt_throughput(runs, args.calls, time.perf_counter() - started)
    print(section)
    if args.json:
        path = Path(args.json)
        data = json.loads(path.read_text()) if path.exists() else {}
        data["throughput"] = {k: r["after"]["stats_rate"] for k, r in runs.items()}
        data["throughput_runs"] = runs
        path.write_text(json.dumps(data, indent=2))
    if args.write_readme:
        write_readme(section, TP_START, TP_END)
    return 0


# ---------------------------------------------------------------------------------------------- scale

SCALE_MANAGER = "scale-mgr"
SCALE_START, SCALE_END = "<!-- scale:start -->", "<!-- scale:end -->"
SCALE_NOTE = ("Per call, time stays flat (the ratio column, first row) and so does the table's memory: each call adds one entry of about 200 bytes on the changelog (about 2 KB as Python objects in Faust's memory store), and a manager's counts grow only with the weeks and months they span, never past a few KB per period. Recovery reads every changelog record, so it grows with the changelog: four records per call here, because the broker does not compact within the run (Kafka's default 1 GB segments); with compaction it approaches one per call plus one per period. Faust read about 3,000 records/s in this run on these shared cores.")
LOG_TIME = re.compile(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def scale_update(i: int, n: int, variant: int = 0, revision: int = 1) -> StatsUpdate:
    """Call ``i`` of the one manager's ``n`` (tests/test_stats.py: 50 a day, two teams), as the store
    sends it on calls.stored."""
    from tests.test_stats import growth_outcome
    o = growth_outcome(i, n, variant, revision, SCALE_MANAGER)
    return StatsUpdate(op="apply", call_id=o.call_id, manager_id=SCALE_MANAGER, revision=revision,
                       outcome=o.to_compact())


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def changelog_records(bootstrap: str, topic: str) -> int:
    from kafka import KafkaConsumer, TopicPartition
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic) or ()]
        return sum(c.end_offsets(tps).values()) - sum(c.beginning_offsets(tps).values())
    finally:
        c.close()


def restore_window(log: Path) -> float | None:
    """Seconds between Faust's "Restoring state from changelog topics" and "Done reading from changelog
    topics" in a worker's log."""
    start = end = None
    for line in log.read_text(errors="replace").splitlines():
        m = LOG_TIME.search(line)
        if m and start is None and "Restoring state from changelog" in line:
            start = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
        elif m and "Done reading from changelog" in line:
            end = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
    return (end - start).total_seconds() if start and end else None


def scale_in_process(n: int, workdir: Path, window: int = 1000) -> dict:
    window = min(window, n // 2)
    """The statistics agent's work without Kafka for one manager's n calls: ms per call (apply + SQL mirror
    of the touched periods) over the last ``window`` calls, and the sizes of the table's values."""
    from models.db import session_factory
    from pipeline.stats import JsonTable, StatsState
    from pipeline.store import mirror_manager_stats
    state = StatsState(JsonTable())
    sessions = session_factory(f"sqlite:///{workdir / f'scale-inproc-{n}.db'}")
    for i in range(n - window):
        state.apply(scale_update(i, n), i)
    with sessions.begin() as s:
        mirror_manager_stats(s, state.manager(SCALE_MANAGER))
    t = time.perf_counter()
    for i in range(n - window, n):
        applied = state.apply(scale_update(i, n), i)
        with sessions.begin() as s:
            mirror_manager_stats(s, state.manager(SCALE_MANAGER, applied.periods), applied.periods)
    ms = (time.perf_counter() - t) * 1000 / window
    counts = [len(v) for k, v in state.table.data.items() if len(k) == 2]
    calls = [len(v) for k, v in state.table.data.items() if len(k) == 3]
    return {"ms_per_call": ms, "periods": len(counts), "largest_value_bytes": max(counts),
            "counts_bytes": sum(counts), "call_entry_bytes": sum(calls) / len(calls)}


def scale_run(bootstrap: str, home: Path, n: int) -> dict:
    """One manager's n calls through a real worker's statistics agent (StatsUpdates published on its
    calls.stored), then a restart: how long until a re-tag of an old call is counted right."""
    from kafka import KafkaProducer
    from pipeline import stats
    from tests.test_stats import growth_outcome
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, batch_size=512 * 1024)
    w = WorkerProcess(bootstrap, home / f"scale-{n}", [home])
    w.home.mkdir(parents=True, exist_ok=True)
    w.sessions  # create the database now: the worker and this process migrating it at once collide
    w.start()
    try:
        wait_ready(w)
        rss_ready = rss_mb(w.proc.pid)
        t0 = time.perf_counter()
        for i in range(n):
            producer.send(w.topics["stored"], key=SCALE_MANAGER.encode(),
                          value=scale_update(i, n).model_dump_json().encode())
        producer.flush()
        marks: dict[float, float] = {}
        deadline = time.monotonic() + max(600, n / 20)
        while len(marks) < 2:
            done = mirrored_calls(w, [SCALE_MANAGER])
            for frac in (0.9, 1.0):
                if frac not in marks and done >= frac * n:
                    marks[frac] = time.perf_counter() - t0
            if w.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"scale run stalled at {done}/{n}: {w.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)
        rss = rss_mb(w.proc.pid)
    finally:
        w.stop()
    records = changelog_records(bootstrap, f"{w.app_id}-manager-stats-changelog")
    # restart on the same topics, changelog and database; a re-tag of call 7 must replace, not add
    expected = stats.aggregate(growth_outcome(i, n, 1, 2, SCALE_MANAGER) if i == 7 else
                               growth_outcome(i, n, manager=SCALE_MANAGER) for i in range(n))[SCALE_MANAGER]
    w2 = WorkerProcess(bootstrap, w.home, [home], app_id=w.app_id, db_url=w.db_url)
    w2.topics, w2.env = w.topics, w.env
    t0 = time.perf_counter()
    w2.start()
    try:
        producer.send(w.topics["stored"], key=SCALE_MANAGER.encode(),
                      value=scale_update(7, n, variant=1, revision=2).model_dump_json().encode())
        producer.flush()
        deadline = time.monotonic() + 600
        from pipeline.store import mirrored_stats
        while True:
            with w2.sessions() as s:
                got = mirrored_stats(s).get(SCALE_MANAGER)
            if got is not None and got.totals == expected.totals:
                recovery_s = time.perf_counter() - t0
                break
            if w2.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the re-tag after the restart was not counted right: "
                                   f"{w2.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)
        rss_recovered = rss_mb(w2.proc.pid)
    finally:
        w2.stop()
        producer.close()
    return {"n": n, "ms_per_call": (marks[1.0] - marks[0.9]) * 1000 / (0.1 * n),
            "ms_per_call_avg": marks[1.0] * 1000 / n, "rss_mb": rss, "rss_ready_mb": rss_ready,
            "kb_per_call": (rss - rss_ready) * 1024 / n, "recovery_s": recovery_s,
            "restore_s": restore_window(w2.log), "rss_recovered_mb": rss_recovered, "changelog_records": records}


def fmt_scale(runs: dict[int, dict], inproc: dict[int, dict], seconds: float) -> str:
    a, b = (runs[k] for k in sorted(runs))
    ia, ib = (inproc[k] for k in sorted(inproc))
    na, nb = a["n"], b["n"]
    r = b["ms_per_call"] / a["ms_per_call"]
    lines = [
        "## Scale: one manager's history",
        "",
        "`bench/pipeline.py --scale` (run: `.venv/bin/python bench/pipeline.py --scale --json scale.json "
        f"--write-readme`). One manager, {na:,} and {nb:,} calls at 50 a day (two teams, the ISO weeks and "
        "months of up to three years), each a `StatsUpdate` published on a fresh worker's `calls.stored` "
        "(so the statistics agent alone is measured: Faust table, changelog, SQLite mirror), then the worker "
        "stopped and a new one started on the same changelog and database, with a re-tag of call 7 "
        f"published at once. {os.cpu_count()} CPU cores **shared with other work**, Kafka 3.9.1 (KRaft, local), "
        f"Python {platform.python_version()}.",
        "",
        f"| measure | {na:,} calls | {nb:,} calls | ratio |",
        "|---|---|---|---|",
        f"| worker: ms per call, last 10 % of the calls | {a['ms_per_call']:.2f} | {b['ms_per_call']:.2f} | "
        f"**{r:.2f}** |",
        f"| worker: ms per call, all calls | {a['ms_per_call_avg']:.2f} | {b['ms_per_call_avg']:.2f} | "
        f"{b['ms_per_call_avg'] / a['ms_per_call_avg']:.2f} |",
        f"| worker RSS after the calls (ready: {a['rss_ready_mb']:.0f} / {b['rss_ready_mb']:.0f} MB) | "
        f"{a['rss_mb']:.0f} MB | {b['rss_mb']:.0f} MB | {b['rss_mb'] / a['rss_mb']:.2f} |",
        f"| RSS growth per call | {a['kb_per_call']:.2f} KB | {b['kb_per_call']:.2f} KB | "
        f"{b['kb_per_call'] / a['kb_per_call']:.2f} |",
        f"| changelog records | {a['changelog_records']:,} | {b['changelog_records']:,} | "
        f"{b['changelog_records'] / a['changelog_records']:.1f} |",
        f"| recovery: restart → the re-tag counted right (replaced, not added) | {a['recovery_s']:.1f} s | "
        f"{b['recovery_s']:.1f} s | {b['recovery_s'] / a['recovery_s']:.2f} |",
        f"| of which Faust read the changelog | {a['restore_s'] or 0:.1f} s | {b['restore_s'] or 0:.1f} s | – |",
        f"| in-process (no Kafka): apply + SQL mirror, ms per call, last {min(1000, na // 2):,} calls | {ia['ms_per_call']:.2f} | "
        f"{ib['ms_per_call']:.2f} | {ib['ms_per_call'] / ia['ms_per_call']:.2f} |",
        f"| table: periods kept / largest value / all counts of the manager | {ia['periods']} / "
        f"{ia['largest_value_bytes']} B / {ia['counts_bytes'] / 1024:.1f} KB | {ib['periods']} / "
        f"{ib['largest_value_bytes']} B / {ib['counts_bytes'] / 1024:.1f} KB | – |",
        f"| table: one call's entry | {ia['call_entry_bytes']:.0f} B | {ib['call_entry_bytes']:.0f} B | – |",
        "",
        SCALE_NOTE,
    ]
    if seconds:
        lines += ["", f"_Benchmark ran in {seconds:.0f} s._"]
    return "\n".join(lines)


def scale(args, started: float) -> int:
    sizes = tuple(int(x) for x in args.scale_sizes.split(","))
    runs, inproc = {}, {}
    broker = None
    with tempfile.TemporaryDirectory(prefix="callqa-scale-") as tmp:
        tmp = Path(tmp)
        for n in sizes:
            print(f"scale, in-process: {n} calls...", file=sys.stderr)
            inproc[n] = scale_in_process(n, tmp)
            print(json.dumps(inproc[n]), file=sys.stderr)
        bootstrap = args.bootstrap
        if not bootstrap:
            from callqa.broker import LocalBroker
            broker = LocalBroker(workdir=tmp / "kafka").start(log=lambda m: print(m, file=sys.stderr))
            bootstrap = broker.bootstrap
        try:
            for n in sizes:
                print(f"scale, worker: {n} calls...", file=sys.stderr)
                runs[n] = scale_run(bootstrap, tmp, n)
                print(json.dumps(runs[n]), file=sys.stderr)
        finally:
            if broker is not None:
                broker.stop()
    section = fmt_scale(runs, inproc, time.perf_counter() - started)
    print(json.dumps({"scale": {str(n): runs[n] for n in sizes}}, indent=2))
    print(section)
    if args.json:  # merged: --throughput writes its part into the same file
        path = Path(args.json)
        data = json.loads(path.read_text()) if path.exists() else {}
        data["scale"] = {str(n): {**runs[n], "in_process": inproc[n]} for n in sizes}
        path.write_text(json.dumps(data, indent=2))
    if args.write_readme:
        write_readme(section, SCALE_START, SCALE_END)
    return 0


# ---------------------------------------------------------------------------------------------- report

def fmt_table(tp: dict, tp2: dict | None, ip: dict, cold: dict, warm: list[dict], seconds: float) -> str:
    wm = {k: statistics.median(x[k] for x in warm) for k in warm[0]} if warm else None
    cpu = os.cpu_count()
    lines = [
        "## Pipeline",
        "",
        f"`bench/pipeline.py` (run: `.venv/bin/python bench/pipeline.py --calls {tp['n']}"
        f"{' --two-workers' if tp2 else ''} --write-readme`). One run on "
        f"{cpu} CPU cores **shared with other work** (a CI run and other sessions were using the same cores, so the "
        "numbers are noisy and on the low side), a real Kafka 3.9.1 broker (KRaft, local) and one `callqa worker` "
        "process with the default settings (faster-whisper base int8, 2 ASR processes, SQLite in WAL mode). "
        f"Python {platform.python_version()}.",
        "",
        "### (a) Non-ASR path: tag + store + live statistics through Kafka",
        "",
        f"{tp['n']} `CallTranscribed` events (the 30 dev dialogues of `tests/data/tagging_dev.jsonl` cycled, en and ru, "
        f"7-17 turns, with word timestamps as the ASR stage emits them; {len(TP_MANAGERS)} managers) published at once "
        "to the worker's `transcribed` topic (acks=all) after a warm-up call. The clock starts at the first publish.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| publishing {tp['n']} events (acks=all) | {tp['publish_s']:.2f} s |",
        f"| first call stored after | {tp['first_stored_s']:.2f} s |",
        f"| all {tp['n']} calls stored (tag + store) | {tp['stored_s']:.1f} s → **{tp['stored_rate']:.0f} calls/s** |",
        f"| steady rate (10th → 90th percentile stored) | {tp['steady_rate']:.0f} calls/s |",
        f"| all {tp['n']} calls counted in the SQL mirror of the statistics | {tp['stats_s']:.1f} s → "
        f"**{tp['stats_rate']:.0f} calls/s** |",
        "| target (design.md) | ≥ 200 calls/s on 2 cores |",
        "",
    ]
    if tp2:
        lines += [
            f"Two worker processes (same consumer group, same SQLite file), the same {tp2['n']} events: all stored in "
            f"{tp2['stored_s']:.1f} s → **{tp2['stored_rate']:.0f} calls/s** (steady {tp2['steady_rate']:.0f}), "
            f"statistics mirrored after {tp2['stats_s']:.1f} s → {tp2['stats_rate']:.0f} calls/s.",
            "",
        ]
    lines += [
        f"Per-call cost of each agent's work measured in-process (no Kafka, one core, {ip['n']} calls, tagged event "
        f"≈ {ip['event_kb']:.1f} KB of JSON):",
        "",
        "| agent work | ms / call | calls/s if alone |",
        "|---|---|---|",
        f"| tag: parse CallTranscribed, `retag` (`tag_call` + building CallTagged), serialise | {ip['tag']:.2f} | {1000 / ip['tag']:.0f} |",
        f"| store: parse CallTagged, `store_tagged` in one SQLite transaction | {ip['store']:.2f} | {1000 / ip['store']:.0f} |",
        f"| statistics: parse, `StatsState.apply` (JSON round trip), `mirror_manager_stats` of the touched periods "
        f"(of which the mirror: {ip['mirror']:.2f}) | {ip['stats']:.2f} | {1000 / ip['stats']:.0f} |",
        f"| sum (one core) | {ip['tag'] + ip['store'] + ip['stats']:.2f} | "
        f"{1000 / (ip['tag'] + ip['store'] + ip['stats']):.0f} |",
        "",
        "### (b) Latency: one 60 s stereo call, event to stored statistics",
        "",
        f"`{STEREO.name}` ({cold['audio_s']:.0f} s, 8 kHz stereo, en) published as `CallRecorded`; seconds from the "
        "publish to the call stored, and to its manager's row in `manager_stage_stats`. Cold: the first call after "
        "the worker reported ready (the ASR processes start and load the model on the first call). Warm: the "
        f"following {len(warm)} calls, one at a time (median).",
        "",
        "| call | ASR wall (both channels) | event → stored | event → stored stats | target |",
        "|---|---|---|---|---|",
        f"| cold (first call) | {cold['asr_wall_s']:.1f} s | {cold['stored_s']:.1f} s | {cold['stats_s']:.1f} s | – |",
    ]
    if wm:
        lines.append(f"| warm (median of {len(warm)}) | {wm['asr_wall_s']:.1f} s | {wm['stored_s']:.1f} s | "
                     f"**{wm['stats_s']:.1f} s** | < 10 s on 2 cores (base, int8) |")
        lines.append("")
        lines.append("Warm runs: " + ", ".join(f"{x['stats_s']:.1f} s" for x in warm) + ".")
    if seconds:
        lines += ["", f"_Benchmark ran in {seconds:.0f} s._"]
    return "\n".join(lines)


def write_readme(section: str, start: str = START, end: str = END) -> None:
    text = README.read_text(encoding="utf-8")
    block = f"{start}\n{section}\n{end}"
    if start in text and end in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    README.write_text(text, encoding="utf-8")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=2000, help="events in the throughput run")
    ap.add_argument("--inproc", type=int, default=300, help="calls for the in-process cost measurement")
    ap.add_argument("--warm", type=int, default=3, help="warm latency calls")
    ap.add_argument("--bootstrap", help="an existing broker (default: start a local one)")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--two-workers", action="store_true",
                    help="also run the throughput test with two worker processes (same group, same database)")
    ap.add_argument("--scale", action="store_true",
                    help="only the one-manager growth test: 5,000 and 50,000 calls, per-call time and memory, "
                         "recovery after a restart")
    ap.add_argument("--scale-sizes", default="5000,50000", help="the two history sizes of --scale")
    ap.add_argument("--throughput", action="store_true",
                    help="only the non-ASR throughput: one worker on SQLite, one and two on PostgreSQL")
    ap.add_argument("--before", help="with --throughput: also run each setup with the worker of the code in this "
                                     "directory (an export of older code), side by side")
    ap.add_argument("--tag-cost", action="store_true",
                    help="only the tag stage's cost per call: rules, learned on cached and on new texts")
    ap.add_argument("--write-readme", action="store_true", help="replace the section of bench/README.md")
    ap.add_argument("--json", help="also write the raw numbers here")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    if args.scale:
        return scale(args, started)
    if args.throughput:
        return throughput_bench(args, started)
    if args.tag_cost:
        section = fmt_tag_costs(tag_costs(args.inproc))
        print(section)
        if args.write_readme:
            write_readme(section, start="<!-- tagcost:start -->", end="<!-- tagcost:end -->")
        return 0

    broker = None
    with tempfile.TemporaryDirectory(prefix="callqa-bench-") as tmp:
        tmp = Path(tmp)
        print(f"in-process costs ({args.inproc} calls)...", file=sys.stderr)
        ip = in_process_costs(args.inproc, tmp)
        ip["n"] = args.inproc
        print(json.dumps(ip), file=sys.stderr)
        bootstrap = args.bootstrap
        if not bootstrap:
            from callqa.broker import LocalBroker
            broker = LocalBroker(workdir=tmp / "kafka").start(log=lambda m: print(m, file=sys.stderr))
            bootstrap = broker.bootstrap
        w = WorkerProcess(bootstrap, tmp / "worker", [SHARED / "audio"], extra_env={"HF_HUB_OFFLINE": "1"})
        w.start()
        try:
            from callqa.publisher import Publisher
            wait_ready(w)
            cold, warm = None, []
            with Publisher(bootstrap, w.topics["recorded"]) as pub:
                if not args.skip_latency:
                    print("latency: cold call...", file=sys.stderr)
                    cold = latency_call(w, pub, "lat-cold", "lat-mgr-cold")
                    print(json.dumps(cold), file=sys.stderr)
                    for i in range(args.warm):
                        warm.append(latency_call(w, pub, f"lat-warm-{i}", f"lat-mgr-warm-{i}"))
                        print(json.dumps(warm[-1]), file=sys.stderr)
            # warm-up of the non-ASR path, then the throughput run
            with Publisher(bootstrap, w.topics["transcribed"]) as pub:
                ev = with_words(transcribed_event(0, "tpwarm", TP_MANAGERS))
                pub.publish_raw(ev.call_id, ev.model_dump_json().encode())
            w.wait_for_calls([ev.call_id], timeout_s=120, statuses=("tagged",))
            print(f"throughput: {args.calls} calls...", file=sys.stderr)
            tp = throughput(w, bootstrap, args.calls)
            print(json.dumps(tp), file=sys.stderr)
            w.stop()
            tp2 = two_workers(bootstrap, tmp / "two", args.calls) if args.two_workers else None
        finally:
            w.stop()
            if broker is not None:
                broker.stop()
    section = fmt_table(tp, tp2, ip, cold or {"asr_wall_s": 0, "stored_s": 0, "stats_s": 0, "audio_s": 0}, warm,
                        time.perf_counter() - started)
    print(section)
    if args.json:
        Path(args.json).write_text(json.dumps({"throughput": tp, "throughput_two_workers": tp2, "in_process": ip, "cold": cold, "warm": warm},
                                              indent=2))
    if args.write_readme:
        write_readme(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())

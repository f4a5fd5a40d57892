"""Shared test helpers: a real worker process against the real broker."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from sqlalchemy import select

REPO = Path(__file__).resolve().parents[1]


def find_shared() -> Path:
    """The shared test data (audio, eval): CALLQA_SHARED_DIR, else ../shared beside the checkout."""
    candidates = [os.environ.get("CALLQA_SHARED_DIR"), REPO.parent / "shared", "/work/shared"]
    for c in candidates:
        if c and (Path(c) / "audio").is_dir():
            return Path(c)
    raise RuntimeError("test data not found: set CALLQA_SHARED_DIR to the folder holding audio/ and eval/")


SHARED = find_shared()
os.environ.setdefault("CALLQA_SHARED_DIR", str(SHARED))  # for the bench modules the tests import


class WorkerProcess:
    def __init__(self, bootstrap: str, home: Path, recordings: list[Path], app_id: str | None = None,
                 db_url: str | None = None, extra_env: dict | None = None, module: str = "callqa"):
        self.home = home
        self.module = module  # what `python -m` runs: the real worker, or tests.fault_worker
        self.app_id = app_id or f"callqa-test-{uuid.uuid4().hex[:8]}"
        self.db_url = db_url or f"sqlite:///{home / 'callqa.db'}"
        self.topics = {k: f"{self.app_id}.{k}" for k in ("recorded", "transcribed", "tagged", "dlq", "flagged",
                                                                "stored", "crm", "crm_joins")}
        self.env = {**os.environ, "CALLQA_HOME": str(home), "CALLQA_KAFKA_BOOTSTRAP": bootstrap,
                    "CALLQA_APP_ID": self.app_id, "CALLQA_DATABASE_URL": self.db_url,
                    "CALLQA_RECORDINGS_DIR": os.pathsep.join(str(p) for p in recordings),
                    "CALLQA_TOPIC_RECORDED": self.topics["recorded"],
                    "CALLQA_TOPIC_TRANSCRIBED": self.topics["transcribed"],
                    "CALLQA_TOPIC_TAGGED": self.topics["tagged"], "CALLQA_TOPIC_DLQ": self.topics["dlq"],
                    "CALLQA_TOPIC_FLAGGED": self.topics["flagged"], "CALLQA_TOPIC_STORED": self.topics["stored"],
                    "CALLQA_TOPIC_CRM": self.topics["crm"], "CALLQA_TOPIC_CRM_JOINS": self.topics["crm_joins"],
                    "PYTHONUNBUFFERED": "1", **(extra_env or {})}
        self.log = home / f"worker-{self.app_id}-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen | None = None
        self._sessions = None

    def start(self) -> "WorkerProcess":
        self.home.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-m", self.module, "worker"], env=self.env, cwd=REPO,
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        return self

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill() if kill else self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def dump_tasks(self) -> None:
        """Have a live worker write every asyncio task's stack to its log (mode's worker does on SIGUSR1):
        where a stalled worker waits, for the failure message."""
        if self.proc is not None and self.proc.poll() is None:
            import signal
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(3)
        print(f"worker log: {self.log}")

    @property
    def sessions(self):
        if self._sessions is None:
            from models.db import session_factory
            self._sessions = session_factory(self.db_url)
        return self._sessions

    def wait_for_calls(self, call_ids: list[str], timeout_s: float = 300, statuses=("tagged", "failed"),
                       newer_than=None) -> dict:
        from models.tables import Call
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.proc is not None and self.proc.poll() is None, \
                f"worker exited: {self.log.read_text()[-3000:]}"
            with self.sessions() as s:
                rows = {c.call_id: c for c in s.scalars(select(Call).where(Call.call_id.in_(call_ids)))
                        if c.status in statuses and (newer_than is None or _aware(c.updated_at) > newer_than)}
            if len(rows) == len(call_ids):
                return rows
            if time.monotonic() > deadline:
                raise AssertionError(f"only {sorted(rows)} of {call_ids} done in {timeout_s}s; "
                                     f"worker log tail:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.5)


def _aware(dt):
    from datetime import timezone
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def consume_all(bootstrap: str, topic: str, timeout_s: float = 10.0) -> list:
    from kafka import KafkaConsumer
    c = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                      consumer_timeout_ms=int(timeout_s * 1000), group_id=None)
    try:
        return list(c)
    finally:
        c.close()


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None, input: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    """The real `callqa` command in a child process, as a user runs it; CALLQA_* come only from ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CALLQA_") or k == "CALLQA_SHARED_DIR"}
    base["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return subprocess.run([sys.executable, "-m", "callqa", *args], env={**base, **(env or {})}, cwd=cwd or REPO,
                          capture_output=True, text=True, input=input, timeout=timeout)


def read_topic(bootstrap: str, topic: str, parse=lambda r: r) -> list:
    """Every record of ``topic`` up to its end offsets now (``parse`` maps each ConsumerRecord)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    try:
        parts = c.partitions_for_topic(topic)
        if not parts:
            return []
        tps = [TopicPartition(topic, p) for p in parts]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        end = c.end_offsets(tps)
        out = []
        while any(c.position(tp) < end[tp] for tp in tps):
            for recs in c.poll(timeout_ms=1000).values():
                out += [parse(r) for r in recs]
        return out
    finally:
        c.close()

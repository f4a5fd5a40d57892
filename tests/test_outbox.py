"""What a dead worker left behind is finished by the next one; an old database is brought forward."""
from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from alembic import command
from sqlalchemy import create_engine, select, text

from models.db import alembic_config, migrate, session_factory
from models.events import CallFlagged
from models.tables import Call, Outbox, Review
from tests.helpers import WorkerProcess, consume_all


@pytest.mark.slow
def test_a_notice_left_in_the_outbox_is_sent_by_the_next_worker(kafka_bootstrap, tmp_path):
    w = WorkerProcess(kafka_bootstrap, tmp_path, [tmp_path])
    note = CallFlagged(call_id="left-1", manager_id="m1", started_at=datetime(2026, 11, 2, tzinfo=timezone.utc),
                       recording_url="file:///r.wav", new_flags=["no_next_step"], flags=[])
    with w.sessions.begin() as s:  # committed by a worker that died before sending it
        s.add(Outbox(kind="flagged", key="left-1", value=note.model_dump_json(),
                     created_at=datetime.now(timezone.utc) - timedelta(minutes=5)))
    w.start()
    try:
        deadline = time.monotonic() + 90
        while True:
            with w.sessions() as s:
                left = s.scalars(select(Outbox)).all()
            if not left:
                break
            assert time.monotonic() < deadline, f"outbox not sent: {w.log.read_text()[-2000:]}"
            time.sleep(1)
        got = [CallFlagged.model_validate_json(m.value) for m in consume_all(kafka_bootstrap, w.topics["flagged"])]
        assert [n.call_id for n in got] == ["left-1"]
    finally:
        w.stop()


def test_an_old_sqlite_database_gets_utc_instants_and_keeps_its_verdicts(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
    event = {"call_id": "c1", "started_at": "2025-03-03T10:05:00+03:00"}
    with engine.begin() as conn:  # as the old code wrote it: the offset dropped
        conn.execute(text("INSERT INTO managers (manager_id, updated_at) VALUES ('m1', '2025-03-03 10:00:00')"))
        conn.execute(text(
            "INSERT INTO calls (call_id, source, manager_id, direction, started_at, recording_url, status, event, "
            "updated_at) VALUES ('c1', 'generic', 'm1', 'outbound', '2025-03-03 10:05:00.000000', 'file:///r.wav', "
            "'tagged', :ev, '2025-03-03 10:00:00')"), {"ev": json.dumps(event)})
        conn.execute(text("INSERT INTO flags (call_id, idx, code, detail, at) VALUES ('c1', 0, 'x', 'd', 7.5)"))
        conn.execute(text("INSERT INTO reviews (call_id, flag_code, verdict, created_at) "
                          "VALUES ('c1', 'x', 'disagree', '2025-03-04 09:00:00')"))
    migrate(engine)
    with session_factory(url)() as s:
        assert s.get(Call, "c1").started_at == datetime(2025, 3, 3, 7, 5, tzinfo=timezone.utc)
        (rv,) = s.scalars(select(Review)).all()
        assert (rv.verdict, rv.flag_at, rv.current) == ("disagree", 7.5, True)

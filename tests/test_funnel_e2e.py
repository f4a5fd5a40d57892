"""Through the real broker and a real `callqa worker`: a LeadCreated, a call and a DealClosed end in the
funnel report; a second lead arrives backwards (deal closed, then the call, then the lead) and a replay of
everything changes nothing."""
from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from callqa.publisher import Publisher
from models.tables import CrmLeadCall, CrmLeadEvent
from pipeline.funnel import lead_facts
from tests.helpers import WorkerProcess, run_cli
from tests.test_funnel import T0, call, closed, lead

pytestmark = pytest.mark.slow


def wait_for(check, what: str, worker: WorkerProcess, timeout_s: float = 120):
    deadline = time.monotonic() + timeout_s
    while True:
        assert worker.proc.poll() is None, worker.log.read_text()[-3000:]
        with worker.sessions() as s:
            got = check(s)
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen in {timeout_s}s; worker log:\n{worker.log.read_text()[-3000:]}")
        time.sleep(0.5)


def test_lead_call_deal_to_funnel_report(kafka_bootstrap, tmp_path, db_url):
    w = WorkerProcess(kafka_bootstrap, tmp_path, [tmp_path], db_url=db_url).start()
    try:
        forwards = [("crm", lead("F", ["8 (912) 345-67-89"], T0)),
                    ("tagged", call("call-f", "+7 912 345 67 89", T0 + timedelta(minutes=7))),
                    ("crm", closed("F", "won", T0 + timedelta(days=1), amount=250000))]
        backwards = [("crm", closed("B", "lost", T0 + timedelta(days=2))),
                     ("tagged", call("call-b", "+7-912-000-00-07", T0 + timedelta(hours=2), manager="m-ivan")),
                     ("crm", lead("B", ["89120000007"], T0 + timedelta(minutes=30), manager="m-ivan"))]

        def send(items):
            with Publisher(kafka_bootstrap, w.topics["tagged"]) as pub:
                for topic, ev in items:
                    if topic == "crm":
                        pub.publish_raw(ev.lead_key, ev.model_dump_json().encode(), topic=w.topics["crm"])
                    else:
                        pub.publish_raw(ev.call_id, ev.model_dump_json().encode())
                    time.sleep(0.3)  # in this order through the broker

        send(forwards)
        send(backwards)

        def joined(s):
            facts = {f.lead_id: f for f in lead_facts(s)}
            return facts if {k: (f.calls, f.outcome) for k, f in facts.items()} == \
                {"F": (1, "won"), "B": (1, "lost")} else None
        facts = wait_for(joined, "both leads joined to their calls with their outcomes", w)
        assert facts["F"].first_call_delay_min == 7.0 and facts["B"].first_call_delay_min == 90.0

        send(forwards + backwards)       # a replay of everything
        time.sleep(5)
        with w.sessions() as s:
            assert s.scalar(select(func.count()).select_from(CrmLeadEvent)) == 4
            assert dict(s.execute(select(CrmLeadCall.call_id, CrmLeadCall.lead_key)).all()) == \
                {"call-f": "generic:F", "call-b": "generic:B"}
    finally:
        w.stop()
    r = run_cli("report", "funnel", "--format", "json", env={"CALLQA_DATABASE_URL": db_url})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)["funnel"]
    by = {m["manager_id"]: m for m in out["managers"]}
    assert by["m-anna"]["hot_called_in_time"] == 1 and by["m-anna"]["conversion"] == 1.0
    assert by["m-anna"]["revenue"] == {"RUB": 250000.0}
    assert by["m-ivan"]["hot_missed"] == 1 and by["m-ivan"]["hot_median_delay_min"] == 90.0
    assert by["m-ivan"]["lost"] == 1 and out["total"]["leads"] == 2

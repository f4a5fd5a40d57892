"""Operators see a running worker: Prometheus metrics per stage and a health check that notices a stall."""
from __future__ import annotations

import time
import urllib.error
import urllib.request

import pytest

from agents.metrics import WorkerMetrics
from callqa.broker import free_port
from callqa.publisher import Publisher
from tests.helpers import WorkerProcess
from tests.test_retag import long_call


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_health_says_when_the_loop_stalls():
    m = WorkerMetrics()
    port = free_port()
    server = m.serve("127.0.0.1", port, stale_s=30)
    try:
        m.beat()
        status, body = _get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200 and body.startswith("ok")
        m._beat -= 120  # as if the event loop had not ticked for two minutes
        status, body = _get(f"http://127.0.0.1:{port}/healthz")
        assert status == 503 and "stalled" in body
        assert _get(f"http://127.0.0.1:{port}/nothing")[0] == 404
    finally:
        server.shutdown()


@pytest.mark.slow
def test_worker_metrics(kafka_bootstrap, tmp_path):
    port = free_port()
    w = WorkerProcess(kafka_bootstrap, tmp_path, [tmp_path], extra_env={"CALLQA_METRICS_PORT": str(port),
                                                                       "CALLQA_METRICS_HOST": "127.0.0.1",
                                                                       "CALLQA_LOG_FORMAT": "json"}).start()
    try:
        ev = long_call("metrics-1")
        with Publisher(kafka_bootstrap, w.topics["transcribed"]) as pub:
            pub.publish_raw(ev.call_id, ev.model_dump_json().encode())
            pub.publish_raw("broken-1", b'{"call_id": "broken-1", "segments": "not a list"}')
        w.wait_for_calls([ev.call_id], statuses=("tagged",), timeout_s=120)
        deadline = time.monotonic() + 30
        while True:
            status, text = _get(f"http://127.0.0.1:{port}/metrics")
            if 'callqa_events_failed_total{reason="ValidationError",stage="tag"} 1.0' in text \
                    and "callqa_consumer_lag{" in text:
                break
            assert time.monotonic() < deadline, text[-3000:]
            time.sleep(1)
        assert 'callqa_events_processed_total{stage="tag"} 1.0' in text
        assert 'callqa_events_processed_total{stage="store"} 1.0' in text
        assert 'callqa_stage_seconds_count{stage="tag"} 1.0' in text
        assert 'callqa_models_info{agents="transcribe,tag,store,stats,failures,crm"' in text
        assert _get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    finally:
        w.stop()
    # CALLQA_LOG_FORMAT=json: one object a line, the failed call's id on its line
    import json
    lines = [json.loads(x) for x in w.log.read_text().splitlines() if x.startswith("{")]
    failed = [x for x in lines if "failed at tag" in x["msg"]]
    assert failed and failed[0]["call_id"] == "broken-1" and failed[0]["level"] == "WARNING"

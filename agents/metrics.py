"""What a running worker shows operators: Prometheus metrics and a health check, on one small HTTP port.

``/metrics`` (Prometheus text format): events processed and failed per stage (failures by reason), each
stage's latency, the ASR real-time factor, consumer lag per partition, the models in use. ``/healthz``:
200 while the worker's event loop ticks (a timer stamps it every few seconds), 503 when it has not for
``stale_s`` — a stalled loop, which the process table would not show. A thread serves both, so a busy
event loop cannot make the health check itself hang.
"""
from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

STAGES = ("transcribe", "tag", "store", "stats", "failures")


class WorkerMetrics:
    def __init__(self, registry: Optional[CollectorRegistry] = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.processed = Counter("callqa_events_processed", "events a stage finished", ["stage"], registry=r)
        self.failed = Counter("callqa_events_failed", "events a stage sent to the dead-letter topic",
                              ["stage", "reason"], registry=r)
        self.latency = Histogram("callqa_stage_seconds", "time a stage spent on one event", ["stage"], registry=r,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
        self.rtf = Histogram("callqa_asr_realtime_factor", "seconds of audio transcribed per second of work",
                             registry=r, buckets=(1, 2, 5, 10, 15, 20, 30, 50, 100))
        self.audio = Counter("callqa_asr_audio_seconds", "seconds of audio transcribed", registry=r)
        self.lag = Gauge("callqa_consumer_lag", "records after the committed offset", ["topic", "partition"],
                         registry=r)
        self.heartbeat = Gauge("callqa_worker_heartbeat_timestamp", "when the event loop last ticked (unix s)",
                               registry=r)
        self.models = Info("callqa_models", "the models and agents in use", registry=r)
        self._beat = time.time()

    def beat(self) -> None:
        self._beat = time.time()
        self.heartbeat.set(self._beat)

    def age(self) -> float:
        return time.time() - self._beat

    def serve(self, host: str, port: int, stale_s: float = 60.0) -> ThreadingHTTPServer:
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                if self.path.split("?")[0] == "/metrics":
                    body, status, ctype = generate_latest(metrics.registry), 200, CONTENT_TYPE_LATEST
                elif self.path.split("?")[0] in ("/healthz", "/health"):
                    age = metrics.age()
                    ok = age < stale_s
                    status, ctype = (200 if ok else 503), "text/plain; charset=utf-8"
                    body = (f"ok: the event loop ticked {age:.0f} s ago\n" if ok else
                            f"stalled: the event loop has not ticked for {age:.0f} s\n").encode()
                else:
                    body, status, ctype = b"see /metrics and /healthz\n", 404, "text/plain; charset=utf-8"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # scraped every few seconds: not worth a log line each
                pass

        server = ThreadingHTTPServer((host, port), Handler)
        threading.Thread(target=server.serve_forever, name="callqa-metrics", daemon=True).start()
        return server

"""Container health checks (docker-compose.yml), with nothing but the image's Python:

    python -m callqa.healthcheck http://127.0.0.1:8080/healthz   # web, ingest: the page answers 200
    python -m callqa.healthcheck http://127.0.0.1:9102/healthz   # a worker with CALLQA_METRICS_PORT=9102
    python -m callqa.healthcheck worker                          # the worker's broker and database answer

A worker's /healthz (agents/metrics.py) says whether its event loop still ticks. The ``worker`` check, for
a worker without a metrics port, asks what it depends on, with its own settings (CALLQA_KAFKA_* including
TLS/SASL, CALLQA_DATABASE_URL): a metadata request to the broker and ``SELECT 1`` on the database; it says
the worker can work, not that it is making progress.
Exit status 0 = healthy, 1 = not (the reason on standard error)."""
from __future__ import annotations

import sys
import urllib.request


def check_http(url: str, timeout_s: float = 5.0) -> None:
    with urllib.request.urlopen(url, timeout=timeout_s) as r:  # noqa: S310 (a fixed local URL)
        if r.status != 200:
            raise RuntimeError(f"{url} answered {r.status}")


def check_worker(timeout_s: float = 10.0) -> None:
    from sqlalchemy import text

    from callqa.broker import wait_for_broker
    from config.kafka_security import KafkaSecurity
    from config.settings import Settings
    from models.db import make_engine
    s = Settings.from_env()
    if not s.kafka_bootstrap:
        raise RuntimeError("CALLQA_KAFKA_BOOTSTRAP is not set")
    wait_for_broker(s.kafka_bootstrap, timeout_s=timeout_s, security=KafkaSecurity.from_settings(s).kafka_python())
    engine = make_engine(s.db_url)
    try:
        with engine.connect() as c:
            c.execute(text("SELECT 1"))
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m callqa.healthcheck (URL | worker)", file=sys.stderr)
        return 2
    try:
        if args[0] == "worker":
            check_worker()
        else:
            check_http(args[0])
    except Exception as e:  # any failure is "unhealthy", with the reason for `docker inspect`
        print(f"unhealthy: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

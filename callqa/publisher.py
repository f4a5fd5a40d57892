"""Publishing CallRecorded events with kafka-python (key = call_id, acks=all)."""
from __future__ import annotations

from typing import Optional

from models.events import CallRecorded


class Publisher:
    def __init__(self, bootstrap: str, topic: str = "calls.recorded", connect_timeout_s: float = 10.0,
                 security: Optional[dict] = None):
        """A broker that does not answer within ``connect_timeout_s`` raises a KafkaError (kafka-python
        would otherwise wait 30 s to bootstrap, then up to 60 s for metadata). ``security``: kafka-python's
        TLS/SASL arguments (default: from the CALLQA_KAFKA_* settings)."""
        from kafka import KafkaProducer

        from config.kafka_security import client_args

        self.topic = topic
        ms = int(connect_timeout_s * 1000)
        extra = {"bootstrap_timeout_ms": ms} if "bootstrap_timeout_ms" in KafkaProducer.DEFAULT_CONFIG else {}
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap, acks="all", retries=5, linger_ms=5,
            max_in_flight_requests_per_connection=1, max_block_ms=max(ms, 30000), **extra,
            **client_args(security))

    def publish(self, event: CallRecorded, timeout_s: float = 30.0) -> None:
        """Returns only once the broker acknowledged the event."""
        self.publish_raw(event.call_id, event.model_dump_json().encode(), timeout_s)

    def publish_raw(self, key: str | None, value: bytes, timeout_s: float = 30.0, topic: str | None = None) -> None:
        fut = self._producer.send(topic or self.topic, value=value, key=key.encode() if key else None)
        fut.get(timeout=timeout_s)

    def close(self) -> None:
        self._producer.close()

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

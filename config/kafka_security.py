"""How callqa logs in to a company's Kafka: TLS and SASL for both Kafka clients it uses.

Faust (the worker, through aiokafka) and kafka-python (publish, ingest, retag, topic creation) take the
same settings in different shapes; this is the one place that turns ``CALLQA_KAFKA_*`` into both, so a
cluster that needs SASL_SSL with SCRAM works everywhere or is refused up front with the missing piece.
"""
from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any, Optional

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaSecurity:
    protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    username: str = ""
    password: str = ""
    cafile: str = ""
    certfile: str = ""
    keyfile: str = ""
    check_hostname: bool = True

    @classmethod
    def from_settings(cls, s) -> "KafkaSecurity":
        sec = cls(protocol=(s.kafka_security_protocol or "PLAINTEXT").upper(),
                  sasl_mechanism=(s.kafka_sasl_mechanism or "").upper(), username=s.kafka_sasl_username,
                  password=s.kafka_sasl_password, cafile=s.kafka_ssl_cafile, certfile=s.kafka_ssl_certfile,
                  keyfile=s.kafka_ssl_keyfile, check_hostname=s.kafka_ssl_check_hostname)
        sec.validate()
        return sec

    @classmethod
    def from_env(cls) -> "KafkaSecurity":
        from config.settings import Settings
        return cls.from_settings(Settings.from_env())

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def validate(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"CALLQA_KAFKA_SECURITY_PROTOCOL={self.protocol!r}: use one of {', '.join(PROTOCOLS)}")
        if self.sasl:
            if self.sasl_mechanism not in MECHANISMS:
                raise ValueError(f"CALLQA_KAFKA_SECURITY_PROTOCOL={self.protocol} needs CALLQA_KAFKA_SASL_MECHANISM: "
                                 f"one of {', '.join(MECHANISMS)}")
            if not self.username or not self.password:
                raise ValueError(f"CALLQA_KAFKA_SECURITY_PROTOCOL={self.protocol} needs CALLQA_KAFKA_SASL_USERNAME "
                                 "and CALLQA_KAFKA_SASL_PASSWORD")
        if bool(self.certfile) != bool(self.keyfile):
            raise ValueError("a client certificate needs both CALLQA_KAFKA_SSL_CERTFILE and CALLQA_KAFKA_SSL_KEYFILE")
        if (self.cafile or self.certfile) and not self.tls:
            raise ValueError(f"CALLQA_KAFKA_SSL_* are set but CALLQA_KAFKA_SECURITY_PROTOCOL={self.protocol} does "
                             "not use TLS: set SSL or SASL_SSL")

    def ssl_context(self) -> Optional[ssl.SSLContext]:
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.cafile or None)
        ctx.check_hostname = self.check_hostname
        if self.certfile:
            ctx.load_cert_chain(self.certfile, self.keyfile)
        return ctx

    def kafka_python(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python's clients (KafkaProducer, KafkaConsumer, KafkaAdminClient)."""
        if self.protocol == "PLAINTEXT":
            return {}
        out: dict[str, Any] = {"security_protocol": self.protocol}
        if self.sasl:
            out.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.username,
                       sasl_plain_password=self.password)
        if self.tls:
            out["ssl_context"] = self.ssl_context()
        return out

    def faust_credentials(self):
        """``broker_credentials`` for faust.App, or None for PLAINTEXT."""
        import faust

        if self.sasl:
            return faust.SASLCredentials(username=self.username, password=self.password,
                                         mechanism=self.sasl_mechanism, ssl_context=self.ssl_context())
        if self.tls:
            return faust.SSLCredentials(self.ssl_context())
        return None


def client_args(security: Optional[dict] = None) -> dict[str, Any]:
    """kafka-python's TLS/SASL arguments: the ones given, else from the CALLQA_KAFKA_* settings."""
    return KafkaSecurity.from_env().kafka_python() if security is None else security

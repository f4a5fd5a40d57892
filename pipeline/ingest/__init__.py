"""Telephony ingest: provider callbacks -> CallRecorded (pure functions, no Kafka here).

One module per provider (twilio, asterisk, freeswitch, zadarma, mango, generic),
``base`` for the adapter interface and errors, ``managers`` for extension ->
manager mapping, ``safety`` for the recording-URL guard, ``spool`` for the
Asterisk/FreePBX monitor-directory scanner. The HTTP service lives in
``callqa.ingest_app``.
"""
from pipeline.ingest.base import (  # noqa: F401
    Adapter, ContextStore, IngestConfig, Outcome, PayloadError, RequestParts, SignatureError,
)

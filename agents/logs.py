"""Structured worker logs: one JSON object a line, with the call_id of the event being handled.

``CALLQA_LOG_FORMAT=json`` (default ``text``). The agents set ``CALL_ID`` when they take an event; a
context variable is per asyncio task, so concurrent calls (``CALLQA_ASR_WORKERS``) never mix their ids.
"""
from __future__ import annotations

import json
import logging
import time
from contextvars import ContextVar
from typing import Optional

CALL_ID: ContextVar[Optional[str]] = ContextVar("callqa_call_id", default=None)


class CallIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.call_id = CALL_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        call_id = getattr(record, "call_id", None)
        if call_id:
            out["call_id"] = call_id
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def logging_config(loglevel: str) -> dict:
    """A logging.config.dictConfig for the Faust worker: JSON lines on standard error."""
    return {"version": 1, "disable_existing_loggers": False,
            "filters": {"call_id": {"()": CallIdFilter}},
            "formatters": {"json": {"()": JsonFormatter}},
            "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                                    "formatter": "json", "filters": ["call_id"]}},
            "root": {"level": loglevel.upper(), "handlers": ["stderr"]}}

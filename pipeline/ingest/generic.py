"""Generic JSON webhook: the body is a CallRecorded (models/events.py) as JSON.

Signed with ``X-Callqa-Signature: sha256=<hex HMAC-SHA256(CALLQA_GENERIC_SECRET, body)>``.
``manager_id`` may be left out when ``extension`` is given: it is then mapped
through config/managers.yaml (unknown -> ``unknown:<ext>``). ``source`` defaults
to ``generic``. Unknown fields are kept, like everywhere on the bus.
"""
from __future__ import annotations

import json

from pipeline.ingest.base import (
    ContextStore, IngestConfig, Outcome, RequestParts, bad, make_event, missing,
)
from pipeline.ingest.hmacauth import verify_shared_secret
from pipeline.ingest.managers import ManagerDirectory

SOURCE = "generic"


class GenericAdapter:
    source = SOURCE

    def __init__(self, cfg: IngestConfig, managers: ManagerDirectory):
        self.cfg = cfg
        self.managers = managers

    def verify(self, req: RequestParts) -> None:
        if self.cfg.verify:
            verify_shared_secret(req, self.cfg.generic_secret, "CALLQA_GENERIC_SECRET")

    def parse(self, req: RequestParts, ctx: ContextStore | None = None) -> Outcome:
        try:
            d = json.loads(req.body or b"")
        except ValueError:
            raise bad("body", "not valid JSON") from None
        if not isinstance(d, dict):
            raise bad("body", "expected a JSON object")
        for name in ("call_id", "recording_url"):
            if d.get(name) in (None, ""):
                raise missing(name)
        d.setdefault("source", SOURCE)
        d.setdefault("language", self.cfg.language)
        unknown = None
        if not d.get("manager_id"):
            ext = d.pop("extension", None)
            if ext in (None, ""):
                raise missing("manager_id")
            m = self.managers.resolve(SOURCE, str(ext))
            d["manager_id"] = m.manager_id
            d.setdefault("manager_name", m.manager_name)
            d.setdefault("team_id", m.team_id)
            unknown = None if m.known else str(ext)
        return Outcome(event=make_event(**d), unknown_extension=unknown)

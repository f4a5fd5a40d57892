"""Mango Office VPBX events (form POST: vpbx_api_key, sign, json).

sign = hex(sha256(vpbx_api_key + json + vpbx_api_salt)); the key must be ours.
Mango appends the event path to the base URL you register, so with base
``https://<host>/hooks/mango/`` it calls ``/hooks/mango/events/summary``,
``/hooks/mango/events/record/added`` and others (acknowledged, ignored).

``events/record/added`` (recording put in cloud storage): entry_id,
recording_id, user_id (VPBX employee), product_id, timestamp - no direction and
no client number. ``events/summary`` (call finished): entry_id, call_direction
(0 internal, 1 inbound, 2 outbound), from{extension,number}, to{extension,number},
line_number, create_time, talk_time, end_time, entry_result, disconnect_reason.
They are joined by entry_id; the record is published at once (rank 2 with the
summary, rank 1 without - then again, richer, when the summary comes).
call_id = recording_id (one entry may hold several recordings after transfers);
entry_id is kept in provider_ref.

The file itself is fetched with a signed POST to /vpbx/queries/recording/post
({"recording_id": ..., "action": "download"}) answering 302 to a one-time link;
``recording_request`` builds that request for the fetcher. Which channel of a
stereo Mango recording is the employee is not documented: CALLQA_MANGO_MANAGER_CHANNEL.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Optional
from urllib.parse import urlencode

from pipeline.ingest.base import (
    ContextStore, IngestConfig, Outcome, PayloadError, RequestParts, SignatureError, bad,
    channels_from_setting, consteq, epoch_to_dt, make_event, missing,
)
from pipeline.ingest.managers import ManagerDirectory

SOURCE = "mango"
API_BASE = "https://app.mango-office.ru/vpbx"


def sign(api_key: str, json_text: str, salt: str) -> str:
    return hashlib.sha256((api_key + json_text + salt).encode("utf-8")).hexdigest()


def recording_request(api_key: str, salt: str, recording_id: str,
                      api_base: str = API_BASE) -> tuple[str, dict[str, str]]:
    """(url, form) of the POST that answers 302 -> one-time link to the recording."""
    js = json.dumps({"recording_id": recording_id, "action": "download"}, separators=(",", ":"))
    return f"{api_base.rstrip('/')}/queries/recording/post", {
        "vpbx_api_key": api_key, "sign": sign(api_key, js, salt), "json": js}


def recording_url(recording_id: str) -> str:
    return f"{API_BASE}/queries/recording/post?{urlencode({'recording_id': recording_id})}"


class MangoAdapter:
    source = SOURCE

    def __init__(self, cfg: IngestConfig, managers: ManagerDirectory):
        self.cfg = cfg
        self.managers = managers

    def verify(self, req: RequestParts) -> None:
        if not self.cfg.verify:
            return
        if not (self.cfg.mango_api_key and self.cfg.mango_api_salt):
            raise SignatureError("secret_not_configured", "set CALLQA_MANGO_API_KEY and CALLQA_MANGO_API_SALT")
        f = req.form_dict()
        if not f.get("sign"):
            raise SignatureError("missing_signature", "form field 'sign' is missing")
        if not consteq(f.get("vpbx_api_key", ""), self.cfg.mango_api_key):
            raise SignatureError("bad_api_key", "vpbx_api_key is not ours")
        expected = sign(self.cfg.mango_api_key, f.get("json", ""), self.cfg.mango_api_salt)
        if not consteq(expected, f["sign"].lower()):
            raise SignatureError("bad_signature", "sign does not match")

    def _json(self, req: RequestParts) -> dict[str, Any]:
        f = req.form_dict()
        if "json" not in f:
            raise missing("json")
        try:
            data = json.loads(f["json"])
        except ValueError:
            raise bad("json", "not valid JSON") from None
        if not isinstance(data, dict):
            raise bad("json", "expected a JSON object")
        return data

    def parse(self, req: RequestParts, ctx: ContextStore, event: str = "record/added") -> Outcome:
        if event == "record/added":
            return self.record_added(self._json(req), ctx)
        if event == "summary":
            return self.summary(self._json(req), ctx)
        return Outcome(ignored=f"event:{event}")

    def record_added(self, d: dict[str, Any], ctx: ContextStore) -> Outcome:
        for name in ("entry_id", "recording_id"):
            if d.get(name) in (None, ""):
                raise missing(name)
        entry = str(d["entry_id"])
        recs: dict = ctx.get((SOURCE, "records", entry)) or {}
        recs[str(d["recording_id"])] = d
        ctx.put((SOURCE, "records", entry), recs)
        summary = ctx.get((SOURCE, "summary", entry))
        return self._build(d, summary)

    def summary(self, d: dict[str, Any], ctx: ContextStore) -> Outcome:
        if d.get("entry_id") in (None, ""):
            raise missing("entry_id")
        entry = str(d["entry_id"])
        ctx.put((SOURCE, "summary", entry), d)
        recs: dict = ctx.get((SOURCE, "records", entry)) or {}
        if not recs:
            return Outcome(ignored="summary_stored")
        outs = [self._build(r, d) for r in recs.values()]
        first = outs[0]
        first.extra_events = [(o.event, o.rank) for o in outs[1:] if o.event is not None]
        return first

    def _build(self, rec: dict[str, Any], summary: Optional[dict[str, Any]]) -> Outcome:
        user_key = f"user:{rec['user_id']}" if rec.get("user_id") not in (None, "") else None
        direction, ext, client = "inbound", None, None
        started, duration = None, None
        if summary:
            cd = summary.get("call_direction")
            frm, to = summary.get("from") or {}, summary.get("to") or {}
            if not isinstance(frm, dict) or not isinstance(to, dict):
                raise bad("from", "from/to must be objects")
            if str(cd) == "2":
                direction, ext, client = "outbound", frm.get("extension"), to.get("number")
            else:
                direction, ext, client = "inbound", to.get("extension"), frm.get("number")
            t0 = summary.get("talk_time") or summary.get("create_time")
            if t0:
                started = epoch_to_dt(t0, "talk_time")
                if summary.get("end_time"):
                    duration = max(0.0, float(summary["end_time"]) - float(t0))
        elif rec.get("timestamp"):
            started = epoch_to_dt(rec["timestamp"], "timestamp")
        m = self.managers.resolve(SOURCE, user_key, str(ext) if ext else None)
        kw = dict(
            call_id=str(rec["recording_id"]), source=SOURCE, manager_id=m.manager_id,
            manager_name=m.manager_name, team_id=m.team_id, direction=direction,
            client_number=str(client) if client else None, duration_s=duration,
            recording_url=recording_url(str(rec["recording_id"])),
            channels=channels_from_setting(self.cfg.mango_manager_channel), language=self.cfg.language,
            provider_ref={"provider": SOURCE, "entry_id": str(rec["entry_id"]),
                          "recording_id": str(rec["recording_id"]), "user_id": rec.get("user_id"),
                          "complete": summary is not None},
        )
        if started is not None:
            kw["started_at"] = started
        return Outcome(event=make_event(**kw), rank=2 if summary else 1,
                       unknown_extension=None if m.known else (user_key or str(ext or "")))


__all__ = ["MangoAdapter", "sign", "recording_request", "recording_url", "PayloadError"]

"""Zadarma PBX notifications (form POST, ``Signature`` header).

Signature = base64(hex(HMAC-SHA1(secret, <signature string>))) - the official SDK
does ``base64_encode(hash_hmac('sha1', $str, $secret))`` and PHP's hash_hmac
returns hex. The signature string depends on the event (zadarma/user-api-v1):

    NOTIFY_START, NOTIFY_INTERNAL, NOTIFY_END : caller_id + called_did + call_start
    NOTIFY_ANSWER                             : caller_id + destination + call_start
    NOTIFY_OUT_START, NOTIFY_OUT_END          : internal + destination + call_start
    NOTIFY_RECORD                             : pbx_call_id + call_id_with_rec

NOTIFY_RECORD says only that a recording is ready (pbx_call_id, call_id_with_rec);
who talked to whom comes with NOTIFY_END (inbound: caller_id = client, internal =
extension) / NOTIFY_OUT_END (outbound: internal = extension, destination = client),
which also carry is_recorded and call_id_with_rec. So: an END with is_recorded=1
is published at once (rank 2, full metadata); a NOTIFY_RECORD whose END was seen
is a duplicate; one whose END was not seen is published with what it has (rank 1,
manager unknown) and replaced once the END arrives. call_id = pbx_call_id.

Zadarma sends no link: recording_url names the API call that returns one
(``/v1/pbx/record/request/``); the fetcher signs it with ``api_request_auth``.
The GET ``?zd_echo=X`` check is answered by the HTTP layer (echo X).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime
from typing import Optional
from urllib.parse import urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pipeline.ingest.base import (
    ContextStore, IngestConfig, Outcome, RequestParts, SignatureError, bad, channels_from_setting, consteq,
    make_event, missing,
)
from pipeline.ingest.managers import ManagerDirectory

SOURCE = "zadarma"
API_BASE = "https://api.zadarma.com"

SIGNED_FIELDS: dict[str, tuple[str, ...]] = {
    "NOTIFY_START": ("caller_id", "called_did", "call_start"),
    "NOTIFY_INTERNAL": ("caller_id", "called_did", "call_start"),
    "NOTIFY_END": ("caller_id", "called_did", "call_start"),
    "NOTIFY_ANSWER": ("caller_id", "destination", "call_start"),
    "NOTIFY_OUT_START": ("internal", "destination", "call_start"),
    "NOTIFY_OUT_END": ("internal", "destination", "call_start"),
    "NOTIFY_RECORD": ("pbx_call_id", "call_id_with_rec"),
}


def sign(secret: str, data: str) -> str:
    hexmac = hmac.new(secret.encode(), data.encode("utf-8"), hashlib.sha1).hexdigest()
    return base64.b64encode(hexmac.encode()).decode()


def signature_string(event: str, form: dict[str, str]) -> str:
    return "".join(form.get(k, "") for k in SIGNED_FIELDS[event])


def record_request_url(call_id_with_rec: str | None, pbx_call_id: str | None) -> str:
    params = {k: v for k, v in (("call_id", call_id_with_rec), ("pbx_call_id", pbx_call_id)) if v}
    return f"{API_BASE}/v1/pbx/record/request/?{urlencode(params)}"


def api_query_string(params: dict[str, str]) -> str:
    """The query string the official client sends (and signs): sorted, with format=json."""
    p = dict(params)
    p.setdefault("format", "json")
    return urlencode(sorted(p.items()))


def api_request_auth(api_key: str, secret: str, method: str, params: dict[str, str]) -> str:
    """Authorization header value for a Zadarma API GET (for the fetcher).

    method is the path, e.g. "/v1/pbx/record/request/"; params without 'format'
    are sent with format=json added, as the official client does."""
    qs = api_query_string(params)
    data = method + qs + hashlib.md5(qs.encode()).hexdigest()
    return f"{api_key}:{sign(secret, data)}"


def api_get_request(api_key: str, secret: str, method: str, params: dict[str, str],
                    api_base: str = API_BASE) -> tuple[str, dict[str, str]]:
    """(url, headers) of a signed Zadarma API GET, e.g. method "/v1/pbx/record/request/"."""
    url = f"{api_base.rstrip('/')}{method}?{api_query_string(params)}"
    return url, {"Authorization": api_request_auth(api_key, secret, method, params)}


class ZadarmaAdapter:
    source = SOURCE

    def __init__(self, cfg: IngestConfig, managers: ManagerDirectory):
        self.cfg = cfg
        self.managers = managers
        try:
            self.tz = ZoneInfo(cfg.zadarma_timezone or "UTC")
        except ZoneInfoNotFoundError:
            raise ValueError(f"CALLQA_ZADARMA_TIMEZONE={cfg.zadarma_timezone!r} is not a time zone") from None

    def verify(self, req: RequestParts) -> None:
        if not self.cfg.verify:
            return
        f = req.form_dict()
        event = f.get("event", "")
        if event not in SIGNED_FIELDS:
            return  # nothing from it is published (parse ignores it)
        if not self.cfg.zadarma_secret:
            raise SignatureError("secret_not_configured", "set CALLQA_ZADARMA_SECRET")
        sig = req.header("signature")
        if not sig:
            raise SignatureError("missing_signature", "Signature header is missing")
        if not consteq(sign(self.cfg.zadarma_secret, signature_string(event, f)), sig):
            raise SignatureError("bad_signature", "Signature does not match")

    # -- parsing -------------------------------------------------------------
    def parse(self, req: RequestParts, ctx: ContextStore) -> Outcome:
        f = req.form_dict()
        event = f.get("event")
        if not event:
            raise missing("event")
        if event in ("NOTIFY_END", "NOTIFY_OUT_END"):
            return self._end(event, f, ctx)
        if event == "NOTIFY_RECORD":
            return self._record(f, ctx)
        return Outcome(ignored=f"event:{event}")

    def _end(self, event: str, f: dict[str, str], ctx: ContextStore) -> Outcome:
        for name in ("pbx_call_id", "call_start"):
            if not f.get(name):
                raise missing(name)
        if f.get("is_recorded", "0") != "1":
            return Outcome(ignored="not_recorded")
        if not f.get("call_id_with_rec"):
            raise missing("call_id_with_rec")
        ctx.put((SOURCE, "end", f["pbx_call_id"]), dict(f))
        return self._build(f, f.get("call_id_with_rec"), rank=2)

    def _record(self, f: dict[str, str], ctx: ContextStore) -> Outcome:
        for name in ("pbx_call_id", "call_id_with_rec"):
            if not f.get(name):
                raise missing(name)
        end = ctx.get((SOURCE, "end", f["pbx_call_id"]))
        if end is not None:
            return self._build(end, f["call_id_with_rec"], rank=2)
        return self._build({"pbx_call_id": f["pbx_call_id"]}, f["call_id_with_rec"], rank=1)

    def _build(self, f: dict[str, str], rec_id: Optional[str], rank: int) -> Outcome:
        event = f.get("event")
        if event == "NOTIFY_OUT_END":
            direction, ext, client = "outbound", f.get("internal"), f.get("destination")
        elif event == "NOTIFY_END":
            direction, ext, client = "inbound", f.get("internal"), f.get("caller_id")
        else:
            direction, ext, client = "inbound", None, None
        m = self.managers.resolve(SOURCE, ext or "none")
        kw = dict(
            call_id=f["pbx_call_id"], source=SOURCE, manager_id=m.manager_id, manager_name=m.manager_name,
            team_id=m.team_id, direction=direction, client_number=client or None,
            duration_s=_num(f.get("duration"), "duration"),
            recording_url=record_request_url(rec_id, f["pbx_call_id"]),
            channels=channels_from_setting(self.cfg.zadarma_manager_channel),
            language=self.cfg.language,
            provider_ref={"provider": SOURCE, "pbx_call_id": f["pbx_call_id"], "call_id_with_rec": rec_id,
                          "disposition": f.get("disposition"), "called_did": f.get("called_did"),
                          "complete": rank >= 2},
        )
        if f.get("call_start"):
            kw["started_at"] = self._time(f["call_start"])
        return Outcome(event=make_event(**kw), rank=rank,
                       unknown_extension=None if m.known else (ext or "none"))

    def _time(self, s: str) -> datetime:
        try:
            return datetime.strptime(s, "%Y-%m-%d %H:%M:%S").replace(tzinfo=self.tz)
        except ValueError:
            raise bad("call_start", "expected 'YYYY-MM-DD HH:MM:SS'") from None


def _num(v, name):
    if v in (None, ""):
        return None
    try:
        return float(v)
    except ValueError:
        raise bad(name, "not a number") from None

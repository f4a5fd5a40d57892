"""Twilio RecordingStatusCallback (form POST, X-Twilio-Signature).

Twilio posts: AccountSid, CallSid, RecordingSid, RecordingUrl, RecordingStatus
(in-progress|completed|absent|failed), RecordingDuration, RecordingChannels (1|2),
RecordingStartTime (RFC 2822), RecordingSource, RecordingTrack, ErrorCode.
It does not say who the agent or the client is, so callqa reads those from the
query string of the callback URL you configure (part of the signed URL):
``?agent=<key>&direction=inbound|outbound&client=<number>&lang=ru|en&agent_channel=1|2``.

Signature: base64(HMAC-SHA1(auth_token, URL + concat(sorted POST params as key+value))),
URL being exactly what Twilio called (CALLQA_INGEST_PUBLIC_URL + path + query when
behind a proxy); checked with and without the default port, as Twilio's SDKs do.

Dual-channel: channel 1 is the parent call leg. On an inbound call bridged with
<Dial> the parent is the customer, so the agent is channel 2 (the default,
CALLQA_TWILIO_AGENT_CHANNEL). Only ``completed`` recordings are published.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
from email.utils import parsedate_to_datetime
from typing import Iterable
from urllib.parse import urlsplit, urlunsplit

from pipeline.ingest.base import (
    ContextStore, IngestConfig, Outcome, RequestParts, SignatureError, bad, consteq, make_event, missing,
)
from pipeline.ingest.managers import ManagerDirectory

SOURCE = "twilio"


def compute_signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    grouped: dict[str, set[str]] = {}
    for k, v in params:
        grouped.setdefault(k, set()).add(v)
    s = url
    for k in sorted(grouped):
        for v in sorted(grouped[k]):
            s += k + v
    mac = hmac.new(auth_token.encode(), s.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(mac).decode()


def _port_variants(url: str) -> list[str]:
    sp = urlsplit(url)
    default = {"https": 443, "http": 80}.get(sp.scheme)
    host = sp.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    out = [url]
    if default is None:
        return out
    with_port = urlunsplit((sp.scheme, f"{host}:{sp.port or default}", sp.path, sp.query, sp.fragment))
    without = urlunsplit((sp.scheme, host, sp.path, sp.query, sp.fragment)) if sp.port in (None, default) else url
    for u in (with_port, without):
        if u not in out:
            out.append(u)
    return out


def signed_url(req: RequestParts, public_url: str) -> str:
    """The URL Twilio signed: the public base URL + the path and raw query we received."""
    if not public_url:
        return req.url
    got = urlsplit(req.url)
    base = urlsplit(public_url)
    path = got.path
    base_path = base.path.rstrip("/")
    if base_path and not path.startswith(base_path + "/") and path != base_path:
        path = base_path + path
    return urlunsplit((base.scheme, base.netloc, path, got.query, ""))


class TwilioAdapter:
    source = SOURCE

    def __init__(self, cfg: IngestConfig, managers: ManagerDirectory):
        self.cfg = cfg
        self.managers = managers

    def verify(self, req: RequestParts) -> None:
        if not self.cfg.verify:
            return
        if not self.cfg.twilio_auth_token:
            raise SignatureError("secret_not_configured", "set CALLQA_TWILIO_AUTH_TOKEN")
        sig = req.header("x-twilio-signature")
        if not sig:
            raise SignatureError("missing_signature", "X-Twilio-Signature header is missing")
        params = req.form or []
        for u in _port_variants(signed_url(req, self.cfg.public_url)):
            if consteq(compute_signature(self.cfg.twilio_auth_token, u, params), sig):
                return
        raise SignatureError("bad_signature", "X-Twilio-Signature does not match")

    def parse(self, req: RequestParts, ctx: ContextStore | None = None) -> Outcome:
        f = req.form_dict()
        q = req.query_dict()
        for name in ("CallSid", "RecordingSid", "RecordingStatus"):
            if not f.get(name):
                raise missing(name)
        status = f["RecordingStatus"]
        if status != "completed":
            return Outcome(ignored=f"status:{status}")
        if not f.get("RecordingUrl"):
            raise missing("RecordingUrl")
        channels_raw = f.get("RecordingChannels", "1") or "1"
        if channels_raw not in ("1", "2"):
            raise bad("RecordingChannels", f"expected 1 or 2, got {channels_raw!r}")
        agent_channel = q.get("agent_channel") or str(self.cfg.twilio_agent_channel)
        if agent_channel not in ("1", "2"):
            raise bad("agent_channel", "expected 1 or 2 (Twilio channel numbering)")
        channels = ({"layout": "stereo", "manager_channel": int(agent_channel) - 1}
                    if channels_raw == "2" else {"layout": "mono", "manager_channel": None})
        started = None
        if f.get("RecordingStartTime"):
            try:
                started = parsedate_to_datetime(f["RecordingStartTime"])
            except (TypeError, ValueError):
                raise bad("RecordingStartTime", "not an RFC 2822 date") from None
        direction = q.get("direction", "outbound")
        if direction not in ("inbound", "outbound"):
            raise bad("direction", "query parameter direction must be inbound or outbound")
        agent = q.get("agent") or q.get("manager") or q.get("extension")
        m = self.managers.resolve(SOURCE, agent or f"call:{f['CallSid']}")
        kw = dict(
            call_id=f["CallSid"], source=SOURCE, manager_id=m.manager_id, manager_name=m.manager_name,
            team_id=m.team_id, direction=direction, client_number=q.get("client") or None,
            duration_s=_num(f.get("RecordingDuration"), "RecordingDuration"),
            recording_url=f["RecordingUrl"], channels=channels,
            language=q.get("lang") or self.cfg.language,
            provider_ref={"provider": SOURCE, "account_sid": f.get("AccountSid"),
                          "recording_sid": f["RecordingSid"], "recording_source": f.get("RecordingSource")},
        )
        if started is not None:
            kw["started_at"] = started
        return Outcome(event=make_event(**kw), unknown_extension=None if m.known else (agent or ""))


def _num(v, name):
    if v in (None, ""):
        return None
    try:
        return float(v)
    except ValueError:
        raise bad(name, "not a number") from None

"""CRM webhooks -> CRM events (models/crm.py) on ``crm.events``: the shared part and the generic JSON.

A CRM adapter has the telephony adapters' shape (``verify`` raises SignatureError -> 401, ``parse``
raises PayloadError -> 400) but ``parse`` returns a ``CrmOutcome``: the events to publish (none when
the callback carries nothing callqa uses: answered 200, nothing published). Event ids are built from
the CRM's own ids and times, so a retried webhook gives the same ids and the service publishes it once.

Generic signed JSON (``POST /hooks/crm/generic``): the body is one CRM event or a list of them, as
models/crm.py describes (``type``: lead_created, lead_contact, lead_status_changed, proposal_sent,
invoice_issued, deal_closed), signed like /hooks/generic: ``X-Callqa-Signature: sha256=<hex
HMAC-SHA256(CALLQA_CRM_GENERIC_SECRET, raw body)>``. ``event_id`` may be left out: it is then the
SHA-256 of the event's content, so a resent body is still one event. A lead's ``manager_id`` may be
replaced by ``manager`` (a CRM user key, mapped through managers.yaml as ``crm:<key>`` or bare).
"""
from __future__ import annotations

import hashlib
import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional

from pydantic import ValidationError

from models.crm import CRM_EVENT, LeadCreated
from pipeline.ingest.base import PayloadError, RequestParts, UpstreamError, bad
from pipeline.ingest.hmacauth import verify_shared_secret
from pipeline.ingest.managers import ManagerDirectory


TEMPERATURES = {"hot": "hot", "горячий": "hot", "горячая": "hot", "warm": "warm", "тёплый": "warm",
                "теплый": "warm", "тёплая": "warm", "теплая": "warm", "cold": "cold", "холодный": "cold",
                "холодная": "cold"}


def temperature(value: Any) -> Optional[str]:
    """hot / warm / cold from a CRM's tag or field (English or Russian), None for anything else."""
    return TEMPERATURES.get(str(value or "").strip().casefold())


def id_set(value: str) -> set[str]:
    """A setting's comma-separated list of status or stage ids."""
    return {s for s in re.split(r"[,\s]+", value or "") if s}


def iso_time(value: Any, name: str) -> datetime:
    """An ISO 8601 time as the CRM APIs give it (``2026-03-02T10:00:00+03:00``, ``...Z``); naive = UTC."""
    from datetime import timezone
    try:
        dt = datetime.fromisoformat(str(value).strip())
    except ValueError:
        raise bad(name, f"{name!r} is not an ISO time: {value!r}") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def get_json(url: str, what: str, timeout_s: float, headers: Optional[dict] = None) -> tuple[int, Any]:
    """GET a CRM API's JSON: (HTTP status, the parsed body or None). A network failure or a body that is not
    JSON is an UpstreamError (502: the CRM sends its webhook again). ``what`` names the call in errors; the
    URL never does, because a Bitrix24 webhook URL holds its key."""
    req = urllib.request.Request(url, headers={"Accept": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            status, body = resp.status, resp.read(4 << 20)
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read(1 << 20)
    except (OSError, ValueError) as e:   # refused, reset, timed out, TLS, a malformed URL
        raise UpstreamError("fetch_failed", f"{what}: {type(e).__name__}: {e}") from None
    try:
        return status, json.loads(body) if body.strip() else None
    except ValueError:
        if 200 <= status < 300:
            raise UpstreamError("fetch_failed", f"{what}: HTTP {status} with a body that is not JSON") from None
        return status, None


@dataclass
class CrmOutcome:
    events: list = field(default_factory=list)
    ignored: Optional[str] = None


def stable_id(*parts: Any) -> str:
    """A short id that the same parts always give (a retried webhook's events keep their ids)."""
    text = "\x1f".join("" if p is None else str(p) for p in parts)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def make_crm_event(data: dict, where: str = "") -> Any:
    """Validate one event, turning pydantic errors into a PayloadError naming the field."""
    try:
        return CRM_EVENT.validate_python(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in (data.get("type"),)) or "payload"
        raise PayloadError(f"bad:{where}{loc}", err.get("msg", "invalid")) from None


def with_manager(ev: Any, managers: ManagerDirectory, provider: str, key: Optional[str]) -> Any:
    """A LeadCreated's responsible CRM user -> callqa's manager (managers.yaml ``<provider>:<key>``)."""
    if not isinstance(ev, LeadCreated) or ev.manager_id or not key:
        return ev
    m = managers.resolve(provider, str(key))
    return ev.model_copy(update={"manager_id": m.manager_id, "manager_name": ev.manager_name or m.manager_name,
                                 "team_id": ev.team_id or m.team_id})


@dataclass
class CrmConfig:
    """What the CRM adapters need from the settings (ingest_settings.py has the env names)."""

    verify: bool = True
    generic_secret: str = ""
    amocrm_secret: str = ""
    amocrm_subdomain: str = ""
    amocrm_temperature_field: str = "Температура"
    amocrm_source_field: str = "Источник"
    amocrm_won_status: str = "142"
    amocrm_lost_status: str = "143"
    amocrm_proposal_statuses: str = ""
    amocrm_invoice_statuses: str = ""
    amocrm_currency: str = "RUB"
    bitrix24_app_token: str = ""
    bitrix24_webhook_url: str = ""
    bitrix24_temperature_field: str = ""
    bitrix24_proposal_stages: str = ""
    bitrix24_invoice_stages: str = ""
    hubspot_client_secret: str = ""
    hubspot_token: str = ""
    hubspot_api_url: str = "https://api.hubapi.com"
    hubspot_public_url: str = ""          # CALLQA_INGEST_PUBLIC_URL: the URL HubSpot signs
    hubspot_temperature_property: str = ""
    hubspot_won_stages: str = "closedwon"
    hubspot_lost_stages: str = "closedlost"
    hubspot_proposal_stages: str = ""
    hubspot_invoice_stages: str = ""
    fetch_timeout_s: float = 10.0


class GenericCrmAdapter:
    source = "crm-generic"

    def __init__(self, cfg: CrmConfig, managers: ManagerDirectory):
        self.cfg = cfg
        self.managers = managers

    def verify(self, req: RequestParts) -> None:
        if self.cfg.verify:
            verify_shared_secret(req, self.cfg.generic_secret, "CALLQA_CRM_GENERIC_SECRET")

    def parse(self, req: RequestParts) -> CrmOutcome:
        try:
            body = json.loads(req.body or b"")
        except ValueError:
            raise bad("body", "not valid JSON") from None
        items = body if isinstance(body, list) else [body]
        if not items or not all(isinstance(x, dict) for x in items):
            raise bad("body", "expected a JSON object or a list of objects")
        events = []
        for i, d in enumerate(items):
            d = dict(d)
            d.setdefault("crm", "generic")
            if not d.get("event_id"):
                d["event_id"] = "generic:" + stable_id(json.dumps(d, sort_keys=True, ensure_ascii=False))
            manager_key = d.pop("manager", None)
            ev = make_crm_event(d, f"{i}." if len(items) > 1 else "")
            events.append(with_manager(ev, self.managers, "crm", manager_key))
        return CrmOutcome(events)

"""HubSpot webhooks (``POST /hooks/hubspot``) -> CRM events, the objects read through the CRM API v3.

HubSpot posts a JSON array of up to 100 subscription events (developers.hubspot.com "Webhooks API")::

    [{"eventId": 1, "subscriptionId": 2, "portalId": 62515, "appId": 54321, "occurredAt": 1564113600000,
      "subscriptionType": "contact.creation", "attemptNumber": 0, "objectId": 123, "changeSource": "CRM",
      "changeFlag": "NEW"},
     {"eventId": 3, ..., "subscriptionType": "deal.propertyChange", "objectId": 456,
      "propertyName": "dealstage", "propertyValue": "closedwon"}]

signed with ``X-HubSpot-Signature-v3`` = base64(HMAC-SHA256(client secret, method + URI + body + timestamp)),
``X-HubSpot-Request-Timestamp`` in ms ("Validating requests": refuse a timestamp over 5 minutes old; the URI
is the one HubSpot called, CALLQA_INGEST_PUBLIC_URL + path behind a proxy, with the characters HubSpot lists
decoded: ``%3A`` ``%2F`` ``%3F`` ``%40`` ``%21`` ``%24`` ``%27`` ``%28`` ``%29`` ``%2A`` ``%2C`` ``%3B``).

Events name objects, so callqa reads them with the private app's token (CALLQA_HUBSPOT_TOKEN, scopes
crm.objects.contacts.read and crm.objects.deals.read) from CALLQA_HUBSPOT_API_URL:
``GET /crm/v3/objects/contacts/{id}?properties=...`` and ``/crm/v3/objects/deals/{id}?properties=...
&associations=contacts``. A lead is a HubSpot contact (calls join leads by the client's phone):

* contact.creation -> LeadCreated (phone, mobilephone, createdate, hubspot_owner_id -> managers.yaml
  ``hubspot:<id>``, hs_analytics_source, temperature from CALLQA_HUBSPOT_TEMPERATURE_PROPERTY).
* contact.propertyChange: hs_lead_status -> LeadStatusChanged; phone / mobilephone -> LeadContact.
* deal.creation and deal.propertyChange of ``dealstage`` -> LeadStatusChanged (the stage) of the deal's first
  associated contact, DealClosed on CALLQA_HUBSPOT_WON_STAGES / CALLQA_HUBSPOT_LOST_STAGES (default closedwon /
  closedlost; a custom pipeline's stages are read from the deal's hs_is_closed / hs_is_closed_won too) with
  amount, deal_currency_code and closed_lost_reason; ProposalSent / InvoiceIssued on
  CALLQA_HUBSPOT_PROPOSAL_STAGES / CALLQA_HUBSPOT_INVOICE_STAGES. A deal with no contact is acknowledged and
  not counted.

A retried delivery repeats ``eventId`` (only attemptNumber grows), so ids are built from it or from the object.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional
from urllib.parse import quote, urlencode

from pipeline.ingest.base import (
    NotConfigured, RequestParts, SignatureError, UpstreamError, bad, consteq, epoch_to_dt, missing, to_float,
)
from pipeline.ingest.crm import (
    CrmConfig, CrmOutcome, get_json, id_set, iso_time, make_crm_event, stable_id, temperature, with_manager,
)
from pipeline.ingest.managers import ManagerDirectory
from pipeline.ingest.twilio import signed_url

CRM = "hubspot"
MAX_AGE_MS = 5 * 60 * 1000
DECODE = {"%3A": ":", "%2F": "/", "%3F": "?", "%40": "@", "%21": "!", "%24": "$", "%27": "'", "%28": "(",
          "%29": ")", "%2A": "*", "%2C": ",", "%3B": ";"}
CONTACT_PROPERTIES = ["phone", "mobilephone", "createdate", "hubspot_owner_id", "hs_lead_status",
                      "hs_analytics_source", "firstname", "lastname", "company"]
DEAL_PROPERTIES = ["dealstage", "amount", "deal_currency_code", "closed_lost_reason", "closedate", "dealname",
                   "hs_is_closed", "hs_is_closed_won", "hubspot_owner_id"]
NOT_CONFIGURED = ("HubSpot is not configured: set CALLQA_HUBSPOT_CLIENT_SECRET (the app's client secret, which "
                  "signs the webhooks) and CALLQA_HUBSPOT_TOKEN (a private app token) on callqa ingest")


def v3_signature(secret: str, method: str, uri: str, body: bytes, timestamp: str) -> str:
    for enc, ch in DECODE.items():
        uri = uri.replace(enc, ch).replace(enc.lower(), ch)
    source = method.upper().encode() + uri.encode() + body + timestamp.encode()
    return base64.b64encode(hmac.new(secret.encode(), source, hashlib.sha256).digest()).decode()


class NotFound(Exception):
    """The object is gone (deleted or merged since the event): nothing to publish."""


class HubSpotAdapter:
    source = CRM

    def __init__(self, cfg: CrmConfig, managers: ManagerDirectory, clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self.managers = managers
        self.clock = clock

    def verify(self, req: RequestParts) -> None:
        if not self.cfg.verify:
            return
        if not self.cfg.hubspot_client_secret:
            raise NotConfigured("not_configured", NOT_CONFIGURED)
        sig, stamp = req.header("x-hubspot-signature-v3"), req.header("x-hubspot-request-timestamp")
        if not sig or not stamp:
            raise SignatureError("missing_signature", "X-HubSpot-Signature-v3 or X-HubSpot-Request-Timestamp is "
                                                      "missing (callqa checks HubSpot's v3 signature)")
        try:
            age_ms = self.clock() * 1000 - int(stamp)
        except ValueError:
            raise SignatureError("bad_timestamp", f"X-HubSpot-Request-Timestamp is not ms since 1970: {stamp!r}") \
                from None
        if abs(age_ms) > MAX_AGE_MS:
            when = f"{age_ms / 60000:.0f} min old" if age_ms > 0 else f"{-age_ms / 60000:.0f} min ahead"
            raise SignatureError("stale_timestamp", f"X-HubSpot-Request-Timestamp is {when} by this server's clock "
                                                    "(over 5 min: a replay, or a clock to set right)")
        want = v3_signature(self.cfg.hubspot_client_secret, req.method, signed_url(req, self.cfg.hubspot_public_url),
                            req.body, stamp)
        if not consteq(want, sig.strip()):
            raise SignatureError("bad_signature", "X-HubSpot-Signature-v3 does not match: check "
                                                  "CALLQA_HUBSPOT_CLIENT_SECRET, and CALLQA_INGEST_PUBLIC_URL when "
                                                  "behind a proxy (HubSpot signs the URL it called)")

    # ---- the CRM API -----------------------------------------------------------------------------

    def get(self, kind: str, object_id: str, properties: list[str], extra: Optional[dict] = None) -> dict:
        if not self.cfg.hubspot_token:
            raise NotConfigured("not_configured", NOT_CONFIGURED)
        what = f"HubSpot GET /crm/v3/objects/{kind}/{object_id}"
        query = urlencode({"properties": ",".join(properties), **(extra or {})})
        status, data = get_json(f"{self.cfg.hubspot_api_url.rstrip('/')}/crm/v3/objects/{kind}/{quote(object_id)}"
                                f"?{query}", what, self.cfg.fetch_timeout_s,
                                {"Authorization": f"Bearer {self.cfg.hubspot_token}"})
        if status == 404:
            raise NotFound(f"{kind}:{object_id}")
        message = data.get("message") if isinstance(data, dict) else None
        if status in (401, 403):
            raise UpstreamError("fetch_failed", f"{what}: refused (HTTP {status}: {message}): check CALLQA_HUBSPOT_TOKEN, "
                                                "a private app token with crm.objects.contacts.read and "
                                                "crm.objects.deals.read")
        if not 200 <= status < 300 or not isinstance(data, dict) or not isinstance(data.get("properties"), dict):
            raise UpstreamError("fetch_failed", f"{what}: HTTP {status}" + (f" ({message})" if message else ""))
        return data

    # ---- the callback ----------------------------------------------------------------------------

    def parse(self, req: RequestParts) -> CrmOutcome:
        try:
            body = json.loads(req.body or b"")
        except ValueError:
            raise bad("body", "not valid JSON") from None
        if not isinstance(body, list) or not all(isinstance(x, dict) for x in body):
            raise bad("body", "expected a JSON array of HubSpot subscription events")
        handlers = {"contact.creation": self._contact_created, "contact.propertyChange": self._contact_changed,
                    "deal.creation": self._deal, "deal.propertyChange": self._deal}
        used = [(i, e) for i, e in enumerate(body) if e.get("subscriptionType") in handlers]
        for i, e in used:
            if not str(e.get("objectId", "")).isdigit():
                raise bad(f"{i}.objectId", f"not a HubSpot object id: {e.get('objectId')!r}")
            if e.get("eventId") in (None, ""):
                raise missing(f"{i}.eventId")

        def one(item: tuple[int, dict]) -> list:
            i, e = item
            try:
                return handlers[e["subscriptionType"]](e, f"{i}.")
            except NotFound:
                return []
        # up to 100 events, each read from the API: a few at a time, so HubSpot's own timeout is not reached
        with ThreadPoolExecutor(max_workers=4) as pool:
            events = [ev for evs in pool.map(one, used) for ev in evs]
        if not events:
            kinds = sorted({str(e.get("subscriptionType")) for e in body})
            return CrmOutcome(ignored="nothing_used:" + ",".join(kinds) if body else "empty")
        return CrmOutcome(events)

    def _at(self, e: dict, where: str) -> dict:
        return {"at": epoch_to_dt(e["occurredAt"], f"{where}occurredAt")} if e.get("occurredAt") else {}

    def _contact_created(self, e: dict, where: str) -> list:
        contact_id = str(e["objectId"])
        c = self.get("contacts", contact_id, CONTACT_PROPERTIES + [p for p in [self.cfg.hubspot_temperature_property] if p])
        props = c["properties"]
        created = props.get("createdate") or c.get("createdAt")
        if not created:
            raise missing(f"{where}contact.createdate")
        created_at = iso_time(created, f"{where}contact.createdate")
        prop = self.cfg.hubspot_temperature_property
        title = " ".join(p for p in (props.get("firstname"), props.get("lastname")) if p) or props.get("company")
        ev = make_crm_event({"type": "lead_created", "crm": CRM, "lead_id": contact_id,
                             "event_id": f"{CRM}:{contact_id}:created", "at": created_at, "created_at": created_at,
                             "phones": [p for p in (props.get("phone"), props.get("mobilephone")) if p],
                             "source": props.get("hs_analytics_source") or CRM, "title": title or None,
                             "temperature": temperature(props.get(prop)) if prop else None}, where)
        return [with_manager(ev, self.managers, CRM, props.get("hubspot_owner_id"))]

    def _contact_changed(self, e: dict, where: str) -> list:
        name, value = e.get("propertyName"), e.get("propertyValue")
        base = {"crm": CRM, "lead_id": str(e["objectId"]), **self._at(e, where)}
        if name == "hs_lead_status" and value:
            return [make_crm_event({**base, "type": "lead_status_changed", "status": str(value),
                                    "event_id": f"{CRM}:{e['eventId']}:status"}, where)]
        if name in ("phone", "mobilephone") and value:
            return [make_crm_event({**base, "type": "lead_contact", "phones": [str(value)],
                                    "event_id": f"{CRM}:{base['lead_id']}:phones:{stable_id(value)}"}, where)]
        return []

    def _deal(self, e: dict, where: str) -> list:
        if e["subscriptionType"] == "deal.propertyChange" and e.get("propertyName") != "dealstage":
            return []
        deal_id = str(e["objectId"])
        deal = self.get("deals", deal_id, DEAL_PROPERTIES, {"associations": "contacts"})
        props = deal["properties"]
        contacts = ((deal.get("associations") or {}).get("contacts") or {}).get("results") or []
        ids = sorted({str(c.get("id")) for c in contacts if isinstance(c, dict) and str(c.get("id", "")).isdigit()},
                     key=int)
        stage = str(e.get("propertyValue") or props.get("dealstage") or "")
        if not ids or not stage:
            return []
        lead_id = ids[0]   # the first contact: the same one on every retry
        amount = to_float(props.get("amount"), f"{where}deal.amount")
        currency = props.get("deal_currency_code") or None
        base = {"crm": CRM, "lead_id": lead_id, **self._at(e, where)}
        out = [make_crm_event({**base, "type": "lead_status_changed", "status": stage,
                               "event_id": f"{CRM}:{e['eventId']}:stage"}, where)]
        outcome = self._outcome(stage, props)
        if outcome:
            out.append(make_crm_event({**base, "type": "deal_closed", "deal_id": deal_id, "outcome": outcome,
                                       "event_id": f"{CRM}:{lead_id}:deal:{deal_id}:{outcome}",
                                       "amount": amount if outcome == "won" else None, "currency": currency,
                                       "loss_reason": (props.get("closed_lost_reason") or None)
                                       if outcome == "lost" else None}, where))
        for kind, stages in (("proposal_sent", self.cfg.hubspot_proposal_stages),
                             ("invoice_issued", self.cfg.hubspot_invoice_stages)):
            if stage in id_set(stages):
                out.append(make_crm_event({**base, "type": kind, "event_id": f"{CRM}:{lead_id}:deal:{deal_id}:{kind}",
                                           "amount": amount, "currency": currency}, where))
        return out

    def _outcome(self, stage: str, props: dict) -> Optional[str]:
        if stage in id_set(self.cfg.hubspot_won_stages):
            return "won"
        if stage in id_set(self.cfg.hubspot_lost_stages):
            return "lost"
        # a custom pipeline's closed stages have numeric ids; the deal itself says whether it is closed and won
        if props.get("dealstage") == stage and str(props.get("hs_is_closed")).lower() == "true":
            return "won" if str(props.get("hs_is_closed_won")).lower() == "true" else "lost"
        return None

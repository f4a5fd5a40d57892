"""Bitrix24 outbound webhooks (``POST /hooks/bitrix24``) -> CRM events, the entity read through the REST API.

An outbound webhook (Bitrix24: Developer resources -> Other -> Outbound webhook; apidocs.bitrix24.com
"onCrmLeadAdd", "onCrmDealUpdate") posts an ``application/x-www-form-urlencoded`` body that names the entity
and nothing else::

    event=ONCRMDEALUPDATE&event_handler_id=201&data[FIELDS][ID]=759&ts=1736405807
    &auth[domain]=portal.bitrix24.ru&auth[client_endpoint]=https://portal.bitrix24.ru/rest/
    &auth[member_id]=a223...&auth[application_token]=51856fefc120afa4b628cc82d3935cce

``auth[application_token]`` must equal CALLQA_BITRIX24_APP_TOKEN (constant time). The lead or deal is then read
through the inbound webhook the user configured (CALLQA_BITRIX24_WEBHOOK_URL, ``https://<portal>/rest/<user>/<key>/``
with the crm scope): ``crm.lead.get?id=``, ``crm.deal.get?id=``, and ``crm.contact.get?id=`` when the phones are
on the contact. The endpoint the callback names (``auth[client_endpoint]``) is never called: that would let
anyone who knows the token make callqa send requests where they like.

Mapping (the REST answers' fields):

* ONCRMLEADADD / ONCRMLEADUPDATE -> LeadCreated (PHONE [{VALUE, VALUE_TYPE}], SOURCE_ID, ASSIGNED_BY_ID ->
  managers.yaml ``bitrix24:<id>``, DATE_CREATE with its offset, TITLE, temperature from the field
  CALLQA_BITRIX24_TEMPERATURE_FIELD); on an update also LeadStatusChanged (STATUS_ID), LeadContact when phones
  were added, and DealClosed lost for a lead closed as junk (STATUS_SEMANTIC_ID ``F``).
* ONCRMDEALADD / ONCRMDEALUPDATE -> LeadStatusChanged (STAGE_ID) of the deal's lead (LEAD_ID), DealClosed on a
  won / lost stage (STAGE_SEMANTIC_ID ``S`` / ``F``, else the stage id: ``WON``, ``C1:WON``, ``LOSE``,
  ``C1:LOSE``, ``APOLOGY``; amount OPPORTUNITY, currency CURRENCY_ID), ProposalSent / InvoiceIssued on the stages
  of CALLQA_BITRIX24_PROPOSAL_STAGES / CALLQA_BITRIX24_INVOICE_STAGES. A deal made without a lead (a portal with
  leads turned off) is its own lead, ``deal-<ID>``, created from the deal with its contact's phones.

Ids are the entity's and the stage's, not the callback's time: Bitrix24 sends an update for any field change,
and one stage (one outcome) must stay one event however many updates repeat it.
"""
from __future__ import annotations

from typing import Any, Optional
from urllib.parse import urlencode

from pipeline.ingest.amocrm import nest
from pipeline.ingest.base import (
    NotConfigured, RequestParts, SignatureError, UpstreamError, bad, consteq, missing, to_float,
)
from pipeline.ingest.crm import (
    CrmConfig, CrmOutcome, get_json, id_set, iso_time, make_crm_event, stable_id, temperature, with_manager,
)
from pipeline.ingest.managers import ManagerDirectory

CRM = "bitrix24"
EVENTS = {"ONCRMLEADADD": ("lead", "add"), "ONCRMLEADUPDATE": ("lead", "update"),
          "ONCRMDEALADD": ("deal", "add"), "ONCRMDEALUPDATE": ("deal", "update")}
WON_STAGES = {"WON"}
LOST_STAGES = {"LOSE", "APOLOGY"}
NOT_CONFIGURED = ("Bitrix24 is not configured: set CALLQA_BITRIX24_APP_TOKEN (the outbound webhook's application "
                  "token) and CALLQA_BITRIX24_WEBHOOK_URL (an inbound webhook with the crm scope) on callqa ingest")


class NotFound(Exception):
    """The entity is gone (deleted since the callback): nothing to publish, and a retry would not help."""


def phones_of(item: dict) -> list[str]:
    return [str(p.get("VALUE")) for p in item.get("PHONE") or [] if isinstance(p, dict) and p.get("VALUE")]


def outcome_of(stage: str, semantic: Optional[str]) -> Optional[str]:
    """won / lost / None from a deal's STAGE_SEMANTIC_ID, else its stage id (pipelines prefix it: ``C1:WON``)."""
    if semantic in ("S", "F"):
        return "won" if semantic == "S" else "lost"
    last = stage.rsplit(":", 1)[-1].upper()
    return "won" if last in WON_STAGES else "lost" if last in LOST_STAGES else None


def _set(value: Any) -> bool:
    return value not in (None, "", "0", 0)


class Bitrix24Adapter:
    source = CRM

    def __init__(self, cfg: CrmConfig, managers: ManagerDirectory):
        self.cfg = cfg
        self.managers = managers

    def verify(self, req: RequestParts) -> None:
        if not self.cfg.verify:
            return
        if not self.cfg.bitrix24_app_token:
            raise NotConfigured("not_configured", NOT_CONFIGURED)
        token = (nest(req.form or []).get("auth") or {}).get("application_token")
        if not isinstance(token, str) or not token:
            raise SignatureError("missing_token", "auth[application_token] is missing: is this a Bitrix24 outbound "
                                                  "webhook?")
        if not consteq(token, self.cfg.bitrix24_app_token):
            raise SignatureError("bad_token", "auth[application_token] is not CALLQA_BITRIX24_APP_TOKEN (the token "
                                              "the outbound webhook's page shows)")

    # ---- the REST API -------------------------------------------------------------------------------

    def call(self, method: str, entity_id: str) -> dict:
        base = self.cfg.bitrix24_webhook_url.strip()
        if not base:
            raise NotConfigured("not_configured", NOT_CONFIGURED)
        what = f"Bitrix24 REST {method}({entity_id})"
        status, data = get_json(f"{base.rstrip('/')}/{method}?{urlencode({'id': entity_id})}", what,
                                self.cfg.fetch_timeout_s)
        error = data.get("error") if isinstance(data, dict) else None
        description = str(data.get("error_description") or "") if isinstance(data, dict) else ""
        if error == "NOT_FOUND" or (status == 400 and description.strip().lower() == "not found"):
            raise NotFound(f"{method}:{entity_id}")
        if status in (401, 403) or error in ("INVALID_CREDENTIALS", "insufficient_scope", "ACCESS_DENIED",
                                             "NO_AUTH_FOUND", "WRONG_AUTH_TYPE"):
            raise UpstreamError("fetch_failed", f"{what}: refused ({error or status}): check that "
                                                "CALLQA_BITRIX24_WEBHOOK_URL is an active inbound webhook with the "
                                                "crm scope")
        if not 200 <= status < 300 or not isinstance(data, dict) or not isinstance(data.get("result"), dict):
            detail = description or error
            raise UpstreamError("fetch_failed", f"{what}: HTTP {status}" + (f" ({detail})" if detail else ""))
        return data["result"]

    def _phones(self, item: dict) -> list[str]:
        """The entity's own phones, else its contact's (a repeat lead or a deal keeps them on the contact)."""
        phones = phones_of(item)
        if not phones and _set(item.get("CONTACT_ID")):
            try:
                phones = phones_of(self.call("crm.contact.get", str(item["CONTACT_ID"])))
            except NotFound:
                pass
        return phones

    # ---- the callback ----------------------------------------------------------------------------

    def parse(self, req: RequestParts) -> CrmOutcome:
        if req.form is None:
            raise missing("form body (application/x-www-form-urlencoded)")
        data = nest(req.form)
        event = str(data.get("event") or "").upper()
        if event not in EVENTS:
            return CrmOutcome(ignored=f"event:{event or 'none'}")
        fields = (data.get("data") or {}).get("FIELDS") if isinstance(data.get("data"), dict) else None
        entity_id = str((fields or {}).get("ID") or "").strip() if isinstance(fields, dict) else ""
        if not entity_id:
            raise missing("data[FIELDS][ID]")
        if not entity_id.isdigit():
            raise bad("data[FIELDS][ID]", f"not a Bitrix24 id: {entity_id!r}")
        kind, action = EVENTS[event]
        try:
            if kind == "lead":
                return CrmOutcome(self._lead(self.call("crm.lead.get", entity_id), action))
            return CrmOutcome(self._deal(self.call("crm.deal.get", entity_id)))
        except NotFound as e:
            return CrmOutcome(ignored=f"not_found:{e}")

    def _created(self, item: dict, lead_id: str, where: str):
        if not item.get("DATE_CREATE"):
            raise missing(f"{where}DATE_CREATE")
        created = iso_time(item["DATE_CREATE"], f"{where}DATE_CREATE")
        field = self.cfg.bitrix24_temperature_field
        ev = make_crm_event({"type": "lead_created", "crm": CRM, "lead_id": lead_id,
                             "event_id": f"{CRM}:{lead_id}:created", "at": created, "created_at": created,
                             "source": item.get("SOURCE_ID") or CRM, "phones": self._phones(item),
                             "temperature": temperature(item.get(field)) if field else None,
                             "title": item.get("TITLE") or None}, where)
        return with_manager(ev, self.managers, CRM, item.get("ASSIGNED_BY_ID"))

    def _moved_at(self, item: dict, where: str) -> dict:
        for name in ("MOVED_TIME", "DATE_MODIFY"):
            if item.get(name):
                return {"at": iso_time(item[name], f"{where}{name}")}
        return {}

    def _stage_events(self, base: dict, stage: str, at: dict, where: str, amount=None, currency=None) -> list:
        out = []
        if stage in id_set(self.cfg.bitrix24_proposal_stages):
            out.append(make_crm_event({**base, **at, "type": "proposal_sent", "event_id": base["event_id"] + ":proposal",
                                       "amount": amount, "currency": currency}, where))
        if stage in id_set(self.cfg.bitrix24_invoice_stages):
            out.append(make_crm_event({**base, **at, "type": "invoice_issued", "event_id": base["event_id"] + ":invoice",
                                       "amount": amount, "currency": currency}, where))
        return out

    def _lead(self, item: dict, action: str) -> list:
        where = "lead."
        lead_id = str(item.get("ID") or "")
        if not lead_id:
            raise missing(f"{where}ID")
        # every update repeats the creation under its fixed id: a lead whose ONCRMLEADADD came before callqa
        # was set up (or failed) is still created by its next update, and the store records the id once
        created = self._created(item, lead_id, where)
        out: list = [created]
        if action == "add":
            return out
        if created.phones:
            out.append(make_crm_event({"type": "lead_contact", "crm": CRM, "lead_id": lead_id, "phones": created.phones,
                                       "event_id": f"{CRM}:{lead_id}:phones:{stable_id(*sorted(created.phones))}"},
                                      where))
        status = str(item.get("STATUS_ID") or "")
        if not status:
            return out
        at = self._moved_at(item, where)
        base = {"crm": CRM, "lead_id": lead_id, "event_id": f"{CRM}:{lead_id}:status:{status}"}
        out.append(make_crm_event({**base, **at, "type": "lead_status_changed", "status": status}, where))
        if item.get("STATUS_SEMANTIC_ID") == "F":   # junk: the lead is lost without ever becoming a deal
            out.append(make_crm_event({**base, **at, "type": "deal_closed", "event_id": f"{CRM}:{lead_id}:lost",
                                       "outcome": "lost",
                                       "loss_reason": item.get("STATUS_DESCRIPTION") or status}, where))
        return out + self._stage_events(base, status, at, where)

    def _deal(self, item: dict) -> list:
        where = "deal."
        deal_id = str(item.get("ID") or "")
        if not deal_id:
            raise missing(f"{where}ID")
        out: list = []
        if _set(item.get("LEAD_ID")):
            lead_id = str(item["LEAD_ID"])
        else:
            lead_id = f"deal-{deal_id}"
            out.append(self._created(item, lead_id, where))
        stage = str(item.get("STAGE_ID") or "")
        if not stage:
            return out
        at = self._moved_at(item, where)
        amount = to_float(item.get("OPPORTUNITY"), f"{where}OPPORTUNITY") or None   # 0: no amount entered
        currency = item.get("CURRENCY_ID") or None
        base = {"crm": CRM, "lead_id": lead_id, "event_id": f"{CRM}:{lead_id}:deal:{deal_id}:stage:{stage}"}
        out.append(make_crm_event({**base, **at, "type": "lead_status_changed", "status": stage}, where))
        outcome = outcome_of(stage, item.get("STAGE_SEMANTIC_ID"))
        if outcome:
            out.append(make_crm_event({**base, **at, "type": "deal_closed", "deal_id": deal_id, "outcome": outcome,
                                       "event_id": f"{CRM}:{lead_id}:deal:{deal_id}:{outcome}",
                                       "amount": amount if outcome == "won" else None, "currency": currency,
                                       "loss_reason": stage if outcome == "lost" else None}, where))
        return out + self._stage_events(base, stage, at, where, amount, currency)

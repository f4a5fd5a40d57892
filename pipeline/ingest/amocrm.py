"""amoCRM / Kommo webhooks (``POST /hooks/amocrm/<secret>``, ``/hooks/kommo/<secret>``).

The payload follows amoCRM's documented webhook format ("Вебхуки", amocrm.ru/developers/content/crm_platform/
webhooks-format; Kommo: developers.kommo.com "Webhooks"): an ``application/x-www-form-urlencoded``
body of bracketed keys, one block per entity and action, e.g.::

    leads[add][0][id]=4242&leads[add][0][name]=...&leads[add][0][status_id]=...&leads[add][0][price]=...
    &leads[add][0][responsible_user_id]=...&leads[add][0][created_at]=<unix>&leads[add][0][custom_fields][0][id]=...
    &leads[add][0][custom_fields][0][name]=Источник&leads[add][0][custom_fields][0][values][0][value]=Сайт
    &leads[add][0][tags][0][name]=hot
    leads[status][0][id]=4242&leads[status][0][status_id]=142&leads[status][0][old_status_id]=...&...[last_modified]
    contacts[add][0][id]=...&contacts[add][0][custom_fields][0][code]=PHONE&...[values][0][value]=+7 912...
    &contacts[add][0][linked_leads_id][4242]=4242
    account[subdomain]=example&account[id]=...

amoCRM signs nothing, so the URL itself is the secret: the path ends with CALLQA_AMOCRM_SECRET (24+
characters), compared in constant time; ``account[subdomain]`` must be CALLQA_AMOCRM_SUBDOMAIN when that
is set. Mapping:

* ``leads[add]`` -> LeadCreated (responsible_user_id -> managers.yaml ``amocrm:<id>``; temperature from a
  tag hot/warm/cold (горячий/тёплый/холодный) or the custom field CALLQA_AMOCRM_TEMPERATURE_FIELD; the
  lead's source from the field CALLQA_AMOCRM_SOURCE_FIELD; phones from a field with code PHONE).
* ``contacts[add|update]`` with phones and linked leads -> LeadContact per linked lead (amoCRM keeps
  phones on the contact, not the lead).
* ``leads[status]`` -> LeadStatusChanged; and DealClosed on the system statuses 142 (won, amount =
  price) / 143 (lost, reason from loss_reason or a "Причина отказа" field); ProposalSent / InvoiceIssued
  when the new status is one of CALLQA_AMOCRM_PROPOSAL_STATUSES / CALLQA_AMOCRM_INVOICE_STATUSES.

Everything else (updates, deletions, notes, tasks) is acknowledged and ignored.
"""
from __future__ import annotations

import re
from typing import Any, Optional

from pipeline.ingest.base import RequestParts, SignatureError, consteq, epoch_to_dt, missing, to_float
from pipeline.ingest.crm import CrmConfig, CrmOutcome, make_crm_event, stable_id, temperature, with_manager
from pipeline.ingest.managers import ManagerDirectory

MIN_SECRET = 24
LOSS_REASON_FIELDS = ("причина отказа", "loss reason", "причина проигрыша")


def nest(items: list[tuple[str, str]]) -> dict:
    """``a[b][0][c]=v`` pairs -> nested dicts (list indices stay string keys)."""
    root: dict = {}
    for key, value in items:
        parts = re.findall(r"[^\[\]]+", key)
        if not parts:
            continue
        node = root
        for p in parts[:-1]:
            nxt = node.get(p)
            if not isinstance(nxt, dict):
                nxt = node[p] = {}
            node = nxt
        node[parts[-1]] = value
    return root


def _items(block: Any) -> list[dict]:
    if not isinstance(block, dict):
        return []
    return [v for _, v in sorted(block.items(), key=lambda kv: (len(kv[0]), kv[0])) if isinstance(v, dict)]


def _field_values(item: dict) -> list[tuple[dict, list[str]]]:
    out = []
    for f in _items(item.get("custom_fields")) + _items(item.get("custom_fields_values")):
        vals = [v.get("value", "") if isinstance(v, dict) else str(v) for v in _items(f.get("values"))] \
            if isinstance(f.get("values"), dict) else []
        out.append((f, [v for v in vals if v]))
    return out


def _field(item: dict, name_or_id: str) -> Optional[str]:
    want = name_or_id.strip().casefold()
    for f, vals in _field_values(item):
        if vals and want in (str(f.get("name", "")).casefold(), str(f.get("id", "")), str(f.get("code", "")).casefold(),
                             str(f.get("field_id", "")), str(f.get("field_name", "")).casefold()):
            return vals[0]
    return None


def _phones(item: dict) -> list[str]:
    return [v for f, vals in _field_values(item)
            if str(f.get("code", f.get("field_code", ""))).upper() == "PHONE" for v in vals]


def _ids(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [str(v) for v in value.values() if str(v).strip()]
    return [s for s in re.split(r"[,\s]+", str(value or "")) if s]


class AmoCrmAdapter:
    def __init__(self, cfg: CrmConfig, managers: ManagerDirectory, crm: str = "amocrm"):
        self.cfg = cfg
        self.managers = managers
        self.crm = crm
        self.source = crm

    def verify(self, req: RequestParts) -> None:
        if not self.cfg.verify:
            return
        secret = self.cfg.amocrm_secret
        if not secret:
            raise SignatureError("secret_not_configured", "set CALLQA_AMOCRM_SECRET")
        if len(secret) < MIN_SECRET:
            raise SignatureError("secret_too_short", f"CALLQA_AMOCRM_SECRET needs {MIN_SECRET}+ random characters")
        token = req.path.rstrip("/").rsplit("/", 1)[-1]
        if not consteq(token, secret):
            raise SignatureError("bad_secret", "the webhook URL's secret does not match")
        if self.cfg.amocrm_subdomain:
            sub = nest(req.form or []).get("account", {}).get("subdomain", "")
            if not consteq(str(sub), self.cfg.amocrm_subdomain):
                raise SignatureError("wrong_account", "account[subdomain] is not CALLQA_AMOCRM_SUBDOMAIN")

    def parse(self, req: RequestParts) -> CrmOutcome:
        if req.form is None:
            raise missing("form body (application/x-www-form-urlencoded)")
        data = nest(req.form)
        leads, contacts = data.get("leads") or {}, data.get("contacts") or {}
        events: list = []
        for i, item in enumerate(_items(leads.get("add") if isinstance(leads, dict) else None)):
            events.append(self._created(item, f"leads.add.{i}."))
        for i, item in enumerate(_items(leads.get("status") if isinstance(leads, dict) else None)):
            events += self._status(item, f"leads.status.{i}.")
        for action in ("add", "update"):
            for i, item in enumerate(_items(contacts.get(action) if isinstance(contacts, dict) else None)):
                events += self._contact(item, f"contacts.{action}.{i}.")
        if not events:
            return CrmOutcome(ignored="nothing_used:" + ",".join(sorted(data)) if data else "empty")
        return CrmOutcome(events)

    def _base(self, item: dict, where: str) -> dict:
        if not item.get("id"):
            raise missing(f"{where}id")
        return {"crm": self.crm, "lead_id": str(item["id"])}

    def _time(self, item: dict, where: str, *names: str):
        for n in names:
            if item.get(n):
                return epoch_to_dt(item[n], f"{where}{n}")
        return None

    def _created(self, item: dict, where: str):
        base = self._base(item, where)
        created = self._time(item, where, "created_at", "date_create")
        if created is None:
            raise missing(f"{where}created_at")
        temp = None
        for tag in _items(item.get("tags")):
            temp = temp or temperature(tag.get("name"))
        field = _field(item, self.cfg.amocrm_temperature_field) if self.cfg.amocrm_temperature_field else None
        temp = temp or temperature(field)
        ev = make_crm_event({**base, "type": "lead_created", "event_id": f"{self.crm}:{base['lead_id']}:created",
                             "at": created, "created_at": created, "temperature": temp,
                             "source": (_field(item, self.cfg.amocrm_source_field) if self.cfg.amocrm_source_field
                                        else None) or self.crm,
                             "phones": _phones(item), "title": item.get("name") or None}, where)
        return with_manager(ev, self.managers, self.crm, item.get("responsible_user_id"))

    def _status(self, item: dict, where: str) -> list:
        base = self._base(item, where)
        status = str(item.get("status_id") or "")
        if not status:
            raise missing(f"{where}status_id")
        at = self._time(item, where, "last_modified", "updated_at", "date_modify")
        stamp = item.get("last_modified") or item.get("updated_at") or stable_id(sorted(_flat(item)))
        eid = f"{self.crm}:{base['lead_id']}:status:{status}:{stamp}"
        common = {**base, **({"at": at} if at else {})}
        out = [make_crm_event({**common, "type": "lead_status_changed", "event_id": eid, "status": status,
                               "previous_status": str(item.get("old_status_id") or "") or None}, where)]
        price = to_float(item.get("price"), f"{where}price")
        if status == self.cfg.amocrm_won_status:
            out.append(make_crm_event({**common, "type": "deal_closed", "event_id": eid + ":won", "outcome": "won",
                                       "amount": price, "currency": self.cfg.amocrm_currency}, where))
        elif status == self.cfg.amocrm_lost_status:
            reason = item.get("loss_reason_id") or next(
                (v for f, vals in _field_values(item) for v in vals[:1]
                 if str(f.get("name", "")).casefold() in LOSS_REASON_FIELDS), None)
            if isinstance(item.get("loss_reason"), dict):
                first = _items(item["loss_reason"])
                reason = (first[0].get("name") if first else item["loss_reason"].get("name")) or reason
            out.append(make_crm_event({**common, "type": "deal_closed", "event_id": eid + ":lost", "outcome": "lost",
                                       "loss_reason": str(reason) if reason else None}, where))
        if status in _ids(self.cfg.amocrm_proposal_statuses):
            out.append(make_crm_event({**common, "type": "proposal_sent", "event_id": eid + ":proposal",
                                       "amount": price, "currency": self.cfg.amocrm_currency}, where))
        if status in _ids(self.cfg.amocrm_invoice_statuses):
            out.append(make_crm_event({**common, "type": "invoice_issued", "event_id": eid + ":invoice",
                                       "amount": price, "currency": self.cfg.amocrm_currency}, where))
        return out

    def _contact(self, item: dict, where: str) -> list:
        phones = _phones(item)
        leads = _ids(item.get("linked_leads_id"))
        if not phones or not leads:
            return []
        at = self._time(item, where, "last_modified", "updated_at", "created_at", "date_create")
        return [make_crm_event({"crm": self.crm, "lead_id": lead, "type": "lead_contact",
                                "event_id": f"{self.crm}:{lead}:contact:{item.get('id')}:{stable_id(*phones)}",
                                "phones": phones, **({"at": at} if at else {})}, where) for lead in leads]


def _flat(d: dict, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _flat(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", str(v)))
    return out

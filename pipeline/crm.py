"""CRM leads and deals in SQL, and the join of calls to leads by the client's phone (no Kafka here).

* ``record_crm_event``: one CRM event (models/crm.py) into crm_lead_events (once per event_id: a replay
  adds nothing), the lead's facts into crm_leads, its phones (E.164) into crm_lead_phones. It returns the
  phones whose joins may have changed.
* ``join_phone``: recompute, for one phone, which lead each call with that client phone belongs to: the
  most recent lead with the phone created at most ``window`` before the call (or up to ``before`` after
  its start: a CRM that makes the lead from the incoming call). A pure function of what is stored, so
  calls and leads arriving in any order, and any replay, give the same links.

The worker runs ``join_phone`` from one agent keyed by phone (agents/app.py): a call stored on one worker
and its lead recorded on another both ask for the join of that phone, and the second join sees both.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Optional

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from models.crm import LeadContact, LeadCreated
from models.tables import Call, CrmLead, CrmLeadCall, CrmLeadEvent, CrmLeadPhone, as_utc, utcnow
from pipeline.phones import normalize_all


def lead_phones(session: Session, lead_key: str) -> list[str]:
    return list(session.scalars(select(CrmLeadPhone.phone).where(CrmLeadPhone.lead_key == lead_key)
                                .order_by(CrmLeadPhone.phone)))


def record_crm_event(session: Session, ev, region: str = "RU") -> list[str]:
    """Store one CRM event; the phones to join again (none for a replayed event)."""
    if session.get(CrmLeadEvent, ev.event_id) is not None:
        return []
    session.add(CrmLeadEvent(event_id=ev.event_id, lead_key=ev.lead_key, type=ev.type, at=ev.at,
                             data=ev.model_dump(mode="json"), received_at=utcnow()))
    lead = session.get(CrmLead, ev.lead_key)
    if lead is None:
        lead = CrmLead(lead_key=ev.lead_key, crm=ev.crm, lead_id=ev.lead_id)
        session.add(lead)
    phones: list[str] = []
    if isinstance(ev, LeadCreated):
        lead.created_at = as_utc(ev.created_at)
        lead.source = ev.source or lead.source
        lead.temperature = ev.temperature or lead.temperature
        lead.manager_id = ev.manager_id or lead.manager_id
        lead.manager_name = ev.manager_name or lead.manager_name
        lead.team_id = ev.team_id or lead.team_id
        lead.title = ev.title or lead.title
        phones = normalize_all(ev.phones, region)
    elif isinstance(ev, LeadContact):
        phones = normalize_all(ev.phones, region)
    session.flush()
    known = set(lead_phones(session, ev.lead_key))
    new = [p for p in phones if p not in known]
    if new:
        session.execute(insert(CrmLeadPhone.__table__), [{"lead_key": ev.lead_key, "phone": p} for p in new])
    if isinstance(ev, LeadCreated):  # the creation time moves the matching window of every phone of the lead
        return sorted(known | set(new))
    return new


def join_phone(session: Session, phone: str, window: timedelta = timedelta(days=30),
               before: timedelta = timedelta(minutes=60)) -> dict[str, Optional[str]]:
    """Recompute the links of every call with client phone ``phone``: call_id -> lead_key (None: no lead)."""
    leads = session.execute(select(CrmLead.lead_key, CrmLead.created_at)
                            .join(CrmLeadPhone, CrmLeadPhone.lead_key == CrmLead.lead_key)
                            .where(CrmLeadPhone.phone == phone, CrmLead.created_at.is_not(None))).all()
    calls = session.execute(select(Call.call_id, Call.started_at).where(Call.client_phone == phone)).all()
    ids = [c.call_id for c in calls]
    # calls once joined on this phone whose number changed since, and the calls of this phone: joined afresh
    session.execute(delete(CrmLeadCall).where(CrmLeadCall.phone == phone))
    if ids:
        session.execute(delete(CrmLeadCall).where(CrmLeadCall.call_id.in_(ids)))
    out: dict[str, Optional[str]] = {}
    rows = []
    for c in calls:
        started = as_utc(c.started_at)
        fits = [(as_utc(created), key) for key, created in leads
                if as_utc(created) - before <= started <= as_utc(created) + window]
        out[c.call_id] = max(fits)[1] if fits else None
        if fits:
            rows.append({"call_id": c.call_id, "lead_key": out[c.call_id], "phone": phone, "linked_at": utcnow()})
    if rows:
        session.execute(insert(CrmLeadCall.__table__), rows)
    return out

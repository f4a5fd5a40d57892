"""CRM events on ``crm.events`` (key: ``<crm>:<lead_id>``): what the ingest service's CRM adapters
publish and the worker's CRM agents join to calls (pipeline/crm.py).

Every event has an ``event_id`` that a retried webhook reproduces exactly (it is built from the CRM's
own ids and timestamps), so the ingest service publishes a retry once and the store records each event
once however often it is redelivered. ``type`` tells the kinds apart; unknown fields are kept.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Literal, Optional, Union

from pydantic import Field, TypeAdapter, field_validator

from models.events import SCHEMA_VERSION, _Event

Crm = Literal["amocrm", "kommo", "bitrix24", "hubspot", "generic"]
Temperature = Literal["hot", "warm", "cold"]


def _now() -> datetime:
    return datetime.now(timezone.utc)


class _CrmEvent(_Event):
    schema_version: int = SCHEMA_VERSION
    event_id: str = Field(min_length=1, max_length=300)
    crm: Crm = "generic"
    lead_id: str = Field(min_length=1, max_length=200)
    at: datetime = Field(default_factory=_now)  # when it happened in the CRM

    @property
    def lead_key(self) -> str:
        """The lead across CRMs: ``amocrm:123`` (the Kafka key of crm.events)."""
        return f"{self.crm}:{self.lead_id}"


class LeadCreated(_CrmEvent):
    type: Literal["lead_created"] = "lead_created"
    source: Optional[str] = None          # where the lead came from: site form, ads, referral...
    temperature: Optional[Temperature] = None
    phones: list[str] = Field(default_factory=list)   # as the CRM has them; normalised by the join
    manager_id: Optional[str] = None      # the responsible manager, as callqa knows them (managers.yaml)
    manager_name: Optional[str] = None
    team_id: Optional[str] = None
    created_at: datetime
    title: Optional[str] = None


class LeadContact(_CrmEvent):
    """Phone numbers of a lead that came with its contact, not with the lead (amoCRM sends contacts
    separately and links them to leads)."""
    type: Literal["lead_contact"] = "lead_contact"
    phones: list[str] = Field(default_factory=list)


class LeadStatusChanged(_CrmEvent):
    type: Literal["lead_status_changed"] = "lead_status_changed"
    status: str
    previous_status: Optional[str] = None


class ProposalSent(_CrmEvent):
    type: Literal["proposal_sent"] = "proposal_sent"
    amount: Optional[float] = None
    currency: Optional[str] = None


class InvoiceIssued(_CrmEvent):
    type: Literal["invoice_issued"] = "invoice_issued"
    amount: Optional[float] = None
    currency: Optional[str] = None


class DealClosed(_CrmEvent):
    type: Literal["deal_closed"] = "deal_closed"
    deal_id: Optional[str] = None
    outcome: Literal["won", "lost"]
    amount: Optional[float] = None
    currency: Optional[str] = None
    loss_reason: Optional[str] = None

    @field_validator("currency")
    @classmethod
    def _upper(cls, v: Optional[str]) -> Optional[str]:
        return v.upper() if v else v


CrmEvent = Annotated[Union[LeadCreated, LeadContact, LeadStatusChanged, ProposalSent, InvoiceIssued, DealClosed],
                     Field(discriminator="type")]
CRM_EVENT = TypeAdapter(CrmEvent)
CRM_EVENTS = TypeAdapter(list[CrmEvent])


def parse_crm_event(raw: bytes | str | dict) -> _CrmEvent:
    """One event from JSON (bytes/str) or a dict; pydantic's ValidationError names the bad field."""
    if isinstance(raw, dict):
        return CRM_EVENT.validate_python(raw)
    return CRM_EVENT.validate_json(raw)

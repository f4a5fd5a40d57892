"""Typed settings of the telephony ingest service (env name + default), as config/settings.py."""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from config.settings import CONFIG_DIR, _parse, setting


@dataclass(frozen=True)
class IngestSettings:
    verify_signatures: bool = setting(
        "CALLQA_INGEST_VERIFY", True, "verify provider signatures (never turn off in production)")
    public_url: str = setting(
        "CALLQA_INGEST_PUBLIC_URL", "", "public base URL the providers call (Twilio signs it), e.g. https://qa.example.com")
    twilio_auth_token: str = setting("CALLQA_TWILIO_AUTH_TOKEN", "", "Twilio auth token (signature key)")
    twilio_agent_channel: int = setting(
        "CALLQA_TWILIO_AGENT_CHANNEL", 2, "dual-channel: Twilio channel (1|2) of the agent; 2 = child leg of <Dial>")
    zadarma_secret: str = setting("CALLQA_ZADARMA_SECRET", "", "Zadarma API secret (signs notifications)")
    zadarma_api_key: str = setting("CALLQA_ZADARMA_API_KEY", "", "Zadarma API key (the fetcher asks for recording links)")
    zadarma_manager_channel: str = setting(
        "CALLQA_ZADARMA_MANAGER_CHANNEL", "mono", "mono | 0 | 1 | unknown (stereo, channel not known)")
    zadarma_timezone: str = setting("CALLQA_ZADARMA_TIMEZONE", "UTC", "time zone of Zadarma's call_start")
    mango_api_key: str = setting("CALLQA_MANGO_API_KEY", "", "Mango Office vpbx_api_key")
    mango_api_salt: str = setting("CALLQA_MANGO_API_SALT", "", "Mango Office vpbx_api_salt (signature key)")
    mango_manager_channel: str = setting(
        "CALLQA_MANGO_MANAGER_CHANNEL", "mono", "mono | 0 | 1 | unknown: which channel is the employee")
    generic_secret: str = setting("CALLQA_GENERIC_SECRET", "", "HMAC-SHA256 key of /hooks/generic (fallback for asterisk/freeswitch)")
    asterisk_secret: str = setting("CALLQA_ASTERISK_SECRET", "", "HMAC-SHA256 key of /hooks/asterisk")
    freeswitch_secret: str = setting("CALLQA_FREESWITCH_SECRET", "", "HMAC-SHA256 key / Basic password of /hooks/freeswitch")
    crm_topic: str = setting("CALLQA_TOPIC_CRM", "crm.events", "topic of the CRM events (leads, deals)")
    crm_generic_secret: str = setting(
        "CALLQA_CRM_GENERIC_SECRET", "", "HMAC-SHA256 key of /hooks/crm/generic (signed CRM events as JSON)")
    amocrm_secret: str = setting(
        "CALLQA_AMOCRM_SECRET", "", "amoCRM/Kommo webhooks: the secret that ends the webhook URL (24+ random characters)")
    amocrm_subdomain: str = setting(
        "CALLQA_AMOCRM_SUBDOMAIN", "", "amoCRM/Kommo: accept only webhooks of this account (account[subdomain])")
    amocrm_temperature_field: str = setting(
        "CALLQA_AMOCRM_TEMPERATURE_FIELD", "Температура", "lead field (name or id) holding hot/warm/cold; tags work too")
    amocrm_source_field: str = setting("CALLQA_AMOCRM_SOURCE_FIELD", "Источник", "lead field (name or id): the lead's source")
    amocrm_won_status: str = setting("CALLQA_AMOCRM_WON_STATUS", "142", "status id of a won deal (amoCRM's system 142)")
    amocrm_lost_status: str = setting("CALLQA_AMOCRM_LOST_STATUS", "143", "status id of a lost deal (amoCRM's system 143)")
    amocrm_proposal_statuses: str = setting(
        "CALLQA_AMOCRM_PROPOSAL_STATUSES", "", "status ids (comma list) that mean a proposal (КП) was sent")
    amocrm_invoice_statuses: str = setting(
        "CALLQA_AMOCRM_INVOICE_STATUSES", "", "status ids (comma list) that mean an invoice was issued")
    amocrm_currency: str = setting("CALLQA_AMOCRM_CURRENCY", "RUB", "currency of amoCRM deal prices")
    bitrix24_app_token: str = setting(
        "CALLQA_BITRIX24_APP_TOKEN", "", "Bitrix24 outbound webhook: its application token (auth[application_token])")
    bitrix24_webhook_url: str = setting(
        "CALLQA_BITRIX24_WEBHOOK_URL", "", "Bitrix24 inbound webhook (crm scope) leads and deals are read through: "
        "https://<portal>/rest/<user id>/<key>/ (holds a key: keep it secret)")
    bitrix24_temperature_field: str = setting(
        "CALLQA_BITRIX24_TEMPERATURE_FIELD", "", "Bitrix24 lead/deal field (e.g. UF_CRM_1700000000) holding hot/warm/cold")
    bitrix24_proposal_stages: str = setting(
        "CALLQA_BITRIX24_PROPOSAL_STAGES", "", "Bitrix24 lead status / deal stage ids (comma list) that mean a proposal was sent")
    bitrix24_invoice_stages: str = setting(
        "CALLQA_BITRIX24_INVOICE_STAGES", "", "Bitrix24 lead status / deal stage ids (comma list) that mean an invoice was "
        "issued (the default deal pipeline: PREPAYMENT_INVOICE)")
    hubspot_client_secret: str = setting(
        "CALLQA_HUBSPOT_CLIENT_SECRET", "", "HubSpot app's client secret: the key of X-HubSpot-Signature-v3")
    hubspot_token: str = setting(
        "CALLQA_HUBSPOT_TOKEN", "", "HubSpot private app token (crm.objects.contacts.read, crm.objects.deals.read)")
    hubspot_api_url: str = setting("CALLQA_HUBSPOT_API_URL", "https://api.hubapi.com", "HubSpot API base URL")
    hubspot_temperature_property: str = setting(
        "CALLQA_HUBSPOT_TEMPERATURE_PROPERTY", "", "HubSpot contact property holding hot/warm/cold (empty: none)")
    hubspot_won_stages: str = setting("CALLQA_HUBSPOT_WON_STAGES", "closedwon", "HubSpot deal stage ids (comma list) of won deals")
    hubspot_lost_stages: str = setting("CALLQA_HUBSPOT_LOST_STAGES", "closedlost", "HubSpot deal stage ids of lost deals")
    hubspot_proposal_stages: str = setting(
        "CALLQA_HUBSPOT_PROPOSAL_STAGES", "", "HubSpot deal stage ids that mean a proposal was sent (e.g. contractsent)")
    hubspot_invoice_stages: str = setting(
        "CALLQA_HUBSPOT_INVOICE_STAGES", "", "HubSpot deal stage ids that mean an invoice was issued")
    crm_fetch_timeout_s: float = setting(
        "CALLQA_CRM_FETCH_TIMEOUT_S", 10.0, "Bitrix24 / HubSpot API calls made for a webhook: give up after this long (502)")
    allowed_hosts: str = setting(
        "CALLQA_INGEST_ALLOWED_HOSTS", "", "extra recording hosts (comma-separated, *.suffix allowed; '*' = any public host)")
    allow_private: bool = setting(
        "CALLQA_INGEST_ALLOW_PRIVATE", False, "allow recording URLs on loopback/private/link-local addresses")
    allow_http: bool = setting("CALLQA_INGEST_ALLOW_HTTP", False, "allow plain http:// recording URLs")
    recordings_dir: str = setting(
        "CALLQA_RECORDINGS_DIR", "", "file:// recordings must lie inside these dirs (os.pathsep-separated)")
    path_map: str = setting(
        "CALLQA_INGEST_PATH_MAP", "", "rewrite PBX paths to local ones: '/pbx/dir=/local/dir;...'")
    managers_file: str = setting(
        "CALLQA_MANAGERS_FILE", str(CONFIG_DIR / "managers.yaml"), "extension -> manager map (YAML)")
    language: str = setting("CALLQA_INGEST_LANGUAGE", "auto", "language of the calls: ru | en | auto")
    dedup_size: int = setting("CALLQA_INGEST_DEDUP_SIZE", 100_000, "call ids remembered for idempotency (LRU)")
    publish_timeout_s: float = setting("CALLQA_INGEST_PUBLISH_TIMEOUT_S", 30.0, "wait this long for the broker ack")
    max_body_bytes: int = setting("CALLQA_INGEST_MAX_BODY", 1_048_576, "larger callbacks are refused (413)")
    asterisk_timezone: str = setting("CALLQA_ASTERISK_TIMEZONE", "UTC", "time zone of FreePBX file-name timestamps")
    spool_dir: str = setting("CALLQA_ASTERISK_SPOOL_DIR", "", "Asterisk monitor dir to scan (empty = no scanner)")
    spool_out_dir: str = setting("CALLQA_ASTERISK_SPOOL_OUT", "", "where joined stereo files go (default CALLQA_HOME/recordings/asterisk)")
    spool_interval_s: float = setting("CALLQA_ASTERISK_SPOOL_INTERVAL_S", 10.0, "scan period")
    spool_settle_s: float = setting("CALLQA_ASTERISK_SPOOL_SETTLE_S", 10.0, "a file unchanged this long is finished")
    home: str = setting("CALLQA_HOME", "", "working directory (state files)")

    @classmethod
    def from_env(cls, **overrides: Any) -> "IngestSettings":
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = os.environ.get(f.metadata["env"])
            if raw is not None:
                values[f.name] = _parse(raw, type(f.default), f.metadata["env"])
        values.update(overrides)
        return cls(**values)

    @property
    def home_dir(self) -> Path:
        return Path(self.home or os.environ.get("CALLQA_HOME") or Path.cwd() / "var").resolve()

    @property
    def allowed_dirs(self) -> list[Path]:
        if self.recordings_dir:
            return [Path(p).resolve() for p in self.recordings_dir.split(os.pathsep) if p]
        return [self.home_dir / "recordings"]

    @classmethod
    def describe(cls) -> list[tuple[str, Any, str]]:
        return [(f.metadata["env"], f.default, f.metadata["help"]) for f in fields(cls)]

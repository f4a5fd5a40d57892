"""CRM webhooks: phone normalisation, the generic signed JSON and the amoCRM/Kommo adapters, through the
real HTTP app and a real broker (published exactly once, read back from the topic)."""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import pytest
from fastapi.testclient import TestClient

from callqa.ingest_app import create_app
from callqa.ingest_settings import IngestSettings
from callqa.publisher import Publisher
from models.crm import DealClosed, LeadContact, LeadCreated, LeadStatusChanged, ProposalSent, parse_crm_event
from pipeline.ingest.amocrm import AmoCrmAdapter, nest
from pipeline.ingest.base import RequestParts, SignatureError
from pipeline.ingest.crm import CrmConfig
from pipeline.ingest.hmacauth import body_signature
from pipeline.ingest.managers import ManagerDirectory
from pipeline.phones import normalize_all, normalize_phone
from tests.helpers import read_topic

CRM_SECRET = "crm-generic-secret"
AMO_SECRET = "Zq8vR3mK1pW7xT5nB2cY9dF4gH6jL0sA"  # 32 characters
MANAGERS = [{"id": "m-anna", "name": "Anna Petrova", "team": "north", "keys": ["amocrm:501", "kommo:501", "crm:anna"]}]


@pytest.mark.parametrize("raw,want", [
    ("8 (912) 345-67-89", "+79123456789"),
    ("+7 912 345 67 89", "+79123456789"),
    ("7-912-345-67-89", "+79123456789"),
    ("89123456789", "+79123456789"),
    ("9123456789", "+79123456789"),
    ("+7 (495) 123-45-67 доб. 123", "+74951234567"),
    ("8 800 555-35-35", "+78005553535"),
    ("+1 (415) 555-2671", "+14155552671"),
    ("0044 20 7946 0958", "+442079460958"),
    ("101", None), ("", None), (None, None), ("not a number", None),
])
def test_phone_normalisation(raw, want):
    assert normalize_phone(raw) == want


def test_phone_normalisation_other_region_and_dedup():
    assert normalize_phone("(415) 555-2671", "US") == "+14155552671"
    assert normalize_all(["8 912 345-67-89", "+79123456789", "101", "+7 495 123 45 67"]) == \
        ["+79123456789", "+74951234567"]


# ---- amoCRM / Kommo (payloads in amoCRM's documented webhook format: form-encoded, bracketed keys) ----

def amo_lead_add(lead_id="4242", created=1767261600, tag="hot", user="501"):
    """leads[add] as amoCRM posts it (webhooks-format): the lead's fields, custom_fields, tags, account."""
    return [
        ("leads[add][0][id]", lead_id), ("leads[add][0][name]", "Поставка бумаги"),
        ("leads[add][0][status_id]", "31001"), ("leads[add][0][price]", "120000"),
        ("leads[add][0][responsible_user_id]", user), ("leads[add][0][last_modified]", str(created)),
        ("leads[add][0][modified_user_id]", user), ("leads[add][0][created_user_id]", "0"),
        ("leads[add][0][date_create]", str(created)), ("leads[add][0][pipeline_id]", "3001"),
        ("leads[add][0][account_id]", "29000"), ("leads[add][0][created_at]", str(created)),
        ("leads[add][0][updated_at]", str(created)),
        ("leads[add][0][custom_fields][0][id]", "70001"), ("leads[add][0][custom_fields][0][name]", "Источник"),
        ("leads[add][0][custom_fields][0][values][0][value]", "Сайт"),
        ("leads[add][0][custom_fields][1][id]", "70002"), ("leads[add][0][custom_fields][1][name]", "Телефон"),
        ("leads[add][0][custom_fields][1][code]", "PHONE"),
        ("leads[add][0][custom_fields][1][values][0][value]", "8 (912) 345-67-89"),
        ("leads[add][0][custom_fields][1][values][0][enum]", "WORK"),
        ("leads[add][0][tags][0][id]", "9"), ("leads[add][0][tags][0][name]", tag),
        ("account[subdomain]", "example"), ("account[id]", "29000"),
        ("account[_links][self]", "https://example.amocrm.ru"),
    ]


def amo_status(lead_id="4242", status="142", old="31001", modified=1767348000, price="150000", extra=()):
    """leads[status]: a lead moved to another status (142 = won, 143 = lost: amoCRM's system statuses)."""
    return [
        ("leads[status][0][id]", lead_id), ("leads[status][0][status_id]", status),
        ("leads[status][0][old_status_id]", old), ("leads[status][0][pipeline_id]", "3001"),
        ("leads[status][0][old_pipeline_id]", "3001"), ("leads[status][0][price]", price),
        ("leads[status][0][responsible_user_id]", "501"), ("leads[status][0][last_modified]", str(modified)),
        ("account[subdomain]", "example"), ("account[id]", "29000"), *extra,
    ]


def amo_contact_add(lead_id="4242"):
    """contacts[add]: phones live on the contact; linked_leads_id ties it to the lead."""
    return [
        ("contacts[add][0][id]", "880"), ("contacts[add][0][name]", "Иван Клиентов"),
        ("contacts[add][0][responsible_user_id]", "501"), ("contacts[add][0][date_create]", "1767261660"),
        ("contacts[add][0][custom_fields][0][id]", "70010"), ("contacts[add][0][custom_fields][0][name]", "Телефон"),
        ("contacts[add][0][custom_fields][0][code]", "PHONE"),
        ("contacts[add][0][custom_fields][0][values][0][value]", "+7 912 000-11-22"),
        ("contacts[add][0][custom_fields][0][values][0][enum]", "MOB"),
        ("contacts[add][0][linked_leads_id][" + lead_id + "]", lead_id),
        ("account[subdomain]", "example"), ("account[id]", "29000"),
    ]


def amo(cfg=None, crm="amocrm"):
    return AmoCrmAdapter(cfg or CrmConfig(amocrm_secret=AMO_SECRET, amocrm_proposal_statuses="31002"),
                         ManagerDirectory(MANAGERS), crm)


def req(form, secret=AMO_SECRET, crm="amocrm"):
    return RequestParts.from_form(f"http://testserver/hooks/{crm}/{secret}", form)


def test_nest_bracketed_keys():
    assert nest([("a[b][0][c]", "1"), ("a[b][0][d]", "2"), ("a[b][1][c]", "3"), ("x", "y")]) == \
        {"a": {"b": {"0": {"c": "1", "d": "2"}, "1": {"c": "3"}}}, "x": "y"}


def test_amocrm_lead_add_maps_to_lead_created():
    out = amo().parse(req(amo_lead_add()))
    [ev] = out.events
    assert isinstance(ev, LeadCreated)
    assert ev.crm == "amocrm" and ev.lead_id == "4242" and ev.lead_key == "amocrm:4242"
    assert ev.temperature == "hot" and ev.source == "Сайт" and ev.phones == ["8 (912) 345-67-89"]
    assert ev.manager_id == "m-anna" and ev.team_id == "north" and ev.title == "Поставка бумаги"
    assert ev.created_at == datetime.fromtimestamp(1767261600, timezone.utc)
    assert ev.event_id == "amocrm:4242:created"
    # Russian tag names and the temperature field work as well
    assert amo().parse(req(amo_lead_add(tag="Горячий"))).events[0].temperature == "hot"
    form = [kv for kv in amo_lead_add(tag="x")] + [
        ("leads[add][0][custom_fields][2][id]", "70003"), ("leads[add][0][custom_fields][2][name]", "Температура"),
        ("leads[add][0][custom_fields][2][values][0][value]", "тёплый")]
    assert amo().parse(req(form)).events[0].temperature == "warm"


def test_amocrm_status_won_lost_and_proposal():
    won = amo().parse(req(amo_status())).events
    assert [type(e) for e in won] == [LeadStatusChanged, DealClosed]
    assert won[1].outcome == "won" and won[1].amount == 150000 and won[1].currency == "RUB"
    assert won[0].status == "142" and won[0].previous_status == "31001"
    lost = amo().parse(req(amo_status(status="143", extra=[
        ("leads[status][0][loss_reason][0][name]", "Дорого")]))).events
    assert lost[1].outcome == "lost" and lost[1].loss_reason == "Дорого"
    prop = amo().parse(req(amo_status(status="31002"))).events
    assert [type(e) for e in prop] == [LeadStatusChanged, ProposalSent]
    # the same callback retried gives the same ids; a later move to the same status does not
    again = amo().parse(req(amo_status())).events
    later = amo().parse(req(amo_status(modified=1767349000))).events
    assert [e.event_id for e in again] == [e.event_id for e in won]
    assert later[0].event_id != won[0].event_id


def test_amocrm_contact_gives_phones_of_linked_leads():
    [ev] = amo().parse(req(amo_contact_add())).events
    assert isinstance(ev, LeadContact) and ev.lead_id == "4242" and ev.phones == ["+7 912 000-11-22"]


def test_amocrm_ignores_what_it_does_not_use_and_names_missing_fields():
    assert amo().parse(req([("leads[delete][0][id]", "1"), ("account[subdomain]", "example")])).ignored
    from pipeline.ingest.base import PayloadError
    with pytest.raises(PayloadError) as e:
        amo().parse(req([kv for kv in amo_lead_add() if "created_at" not in kv[0] and "date_create" not in kv[0]]))
    assert e.value.reason == "missing:leads.add.0.created_at"


def test_amocrm_secret_in_the_url():
    a = amo()
    a.verify(req(amo_lead_add()))
    for bad_secret in ("wrong" * 7, AMO_SECRET[:-1], ""):
        with pytest.raises(SignatureError) as e:
            a.verify(req(amo_lead_add(), secret=bad_secret))
        assert e.value.reason == "bad_secret"
    with pytest.raises(SignatureError) as e:
        AmoCrmAdapter(CrmConfig(amocrm_secret="short"), ManagerDirectory()).verify(req(amo_lead_add(), "short"))
    assert e.value.reason == "secret_too_short"
    with pytest.raises(SignatureError) as e:
        AmoCrmAdapter(CrmConfig(), ManagerDirectory()).verify(req(amo_lead_add()))
    assert e.value.reason == "secret_not_configured"
    only = amo(CrmConfig(amocrm_secret=AMO_SECRET, amocrm_subdomain="other"))
    with pytest.raises(SignatureError) as e:
        only.verify(req(amo_lead_add()))
    assert e.value.reason == "wrong_account"


# ---- through the HTTP app and a real broker ------------------------------------------------------

def consume_crm(bootstrap: str, topic: str) -> list:
    return read_topic(bootstrap, topic, lambda r: (r.key.decode(), parse_crm_event(r.value)))


@pytest.fixture
def crm_env(kafka_bootstrap, tmp_path):
    topic = f"test.crm.{uuid.uuid4().hex[:10]}"
    settings = IngestSettings(crm_generic_secret=CRM_SECRET, amocrm_secret=AMO_SECRET, crm_topic=topic,
                              home=str(tmp_path))
    pub = Publisher(kafka_bootstrap, f"unused.{topic}")
    with TestClient(create_app(settings, pub, ManagerDirectory(MANAGERS))) as client:
        yield client, lambda: consume_crm(kafka_bootstrap, topic)
    pub.close()


def signed(client, body: bytes, secret=CRM_SECRET):
    return client.post("/hooks/crm/generic", content=body,
                       headers={"Content-Type": "application/json", "X-Callqa-Signature": body_signature(secret, body)})


@pytest.mark.slow
def test_crm_webhooks_publish_once_through_the_broker(crm_env):
    client, read = crm_env
    lead = {"type": "lead_created", "lead_id": "L-1", "manager": "anna", "temperature": "hot",
            "phones": ["8 (912) 345-67-89"], "created_at": "2026-01-01T10:00:00+03:00", "source": "site"}
    deal = {"type": "deal_closed", "event_id": "deal-L-1-won", "lead_id": "L-1", "outcome": "won",
            "amount": 50000, "currency": "rub"}
    body = json.dumps([lead, deal]).encode()
    r = signed(client, body)
    assert r.status_code == 200, r.text
    assert [e["status"] for e in r.json()["events"]] == ["published", "published"]
    r = signed(client, body)                       # the sender retries: nothing published twice
    assert [e["status"] for e in r.json()["events"]] == ["duplicate", "duplicate"]
    # bad and unsigned bodies: 4xx with the reason, nothing published
    r = signed(client, body, secret="wrong")
    assert r.status_code == 401 and r.json()["reason"] == "bad_signature"
    r = client.post("/hooks/crm/generic", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 401 and r.json()["reason"] == "missing_signature"
    r = signed(client, json.dumps({"type": "deal_closed", "lead_id": "L-1"}).encode())
    assert r.status_code == 400 and r.json()["reason"] == "bad:outcome"
    r = signed(client, b"{not json")
    assert r.status_code == 400 and r.json()["reason"] == "bad:body"

    # amoCRM: the secret URL, a lead, its retry, a won deal; a wrong secret publishes nothing
    url = f"/hooks/amocrm/{AMO_SECRET}"
    r = client.post(url, data=dict(amo_lead_add("77")))
    assert r.status_code == 200 and r.json()["events"][0]["status"] == "published", r.text
    assert client.post(url, data=dict(amo_lead_add("77"))).json()["events"][0]["status"] == "duplicate"
    assert client.post("/hooks/amocrm/" + "x" * 32, data=dict(amo_status("77"))).status_code == 401
    r = client.post(url, data=dict(amo_status("77")))
    assert [e["type"] for e in r.json()["events"]] == ["lead_status_changed", "deal_closed"]
    r = client.post(f"/hooks/kommo/{AMO_SECRET}", data=dict(amo_lead_add("78")))
    assert r.status_code == 200 and r.json()["events"][0]["lead_id"] == "78"

    got = read()
    keys = [k for k, _ in got]
    assert sorted(keys) == sorted(["generic:L-1", "generic:L-1", "amocrm:77", "amocrm:77", "amocrm:77", "kommo:78"])
    by_type = {(k, e.type): e for k, e in got}
    created = by_type[("generic:L-1", "lead_created")]
    assert created.manager_id == "m-anna" and created.event_id.startswith("generic:")
    assert by_type[("generic:L-1", "deal_closed")].currency == "RUB"
    assert by_type[("amocrm:77", "deal_closed")].outcome == "won"
    m = client.get("/metrics").text
    assert 'callqa_ingest_accepted_total{provider="crm-generic"} 2' in m
    assert 'callqa_ingest_duplicates_total{provider="amocrm"} 1' in m


def test_access_log_hides_the_amocrm_secret():
    import logging

    from callqa.ingest_app import HideUrlSecrets
    rec = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
                            ("1.2.3.4", "POST", f"/hooks/amocrm/{AMO_SECRET}", "1.1", 200), None)
    HideUrlSecrets().filter(rec)
    assert AMO_SECRET not in rec.getMessage() and "/hooks/amocrm/***" in rec.getMessage()

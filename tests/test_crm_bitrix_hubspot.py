"""Bitrix24 and HubSpot webhooks: the callback is verified (application token; v3 signature with a 5-minute
timestamp), the lead or deal is read from the CRM's API - a real HTTP server on loopback here, answering what
the APIs document - and mapped to CRM events; through the ingest app and a real broker, each published once.
An API that fails is a 502 and a CRM that is not configured a 503, with nothing published."""
from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from fastapi.testclient import TestClient

from callqa.ingest_app import create_app
from callqa.ingest_settings import IngestSettings
from callqa.publisher import Publisher
from models.crm import DealClosed, InvoiceIssued, LeadContact, LeadCreated, LeadStatusChanged, ProposalSent
from pipeline.ingest.base import NotConfigured, PayloadError, RequestParts, SignatureError, UpstreamError
from pipeline.ingest.bitrix24 import Bitrix24Adapter, outcome_of
from pipeline.ingest.crm import CrmConfig
from pipeline.ingest.hubspot import HubSpotAdapter, v3_signature
from pipeline.ingest.managers import ManagerDirectory
from tests.test_crm_ingest import consume_crm

MANAGERS = [{"id": "m-anna", "name": "Anna Petrova", "team": "north", "keys": ["bitrix24:7", "hubspot:9001"]}]
B24_TOKEN = "51856fefc120afa4b628cc82d3935cce"
B24_KEY = "/rest/1/abc123xyz/"
HS_SECRET = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy"
HS_TOKEN = "pat-na1-11111111-2222-3333-4444-555555555555"


class FakeApi:
    """A real HTTP server on 127.0.0.1: GET <path> answers ``routes[path without query]`` = (status, JSON);
    every request is recorded (path, query, headers)."""

    def __init__(self):
        self.routes: dict[str, tuple[int, object]] = {}
        self.requests: list[tuple[str, dict, dict]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                sp = urlsplit(self.path)
                api.requests.append((sp.path, parse_qs(sp.query), {k.lower(): v for k, v in self.headers.items()}))
                status, body = api.routes.get(sp.path, (404, {"error": "NOT_FOUND", "error_description": "Not found"}))
                raw = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api():
    a = FakeApi()
    yield a
    a.close()


# ---- Bitrix24 (the REST answers as apidocs.bitrix24.com documents crm.lead.get / crm.deal.get) ---------

def b24_lead(lead_id="123", status="NEW", semantic="P", phones=("8 (912) 345-67-89",), contact=None):
    return {"result": {
        "ID": lead_id, "TITLE": "Заявка с сайта", "NAME": "Иван", "STATUS_ID": status, "STATUS_SEMANTIC_ID": semantic,
        "STATUS_DESCRIPTION": "Спам" if status == "JUNK" else None, "SOURCE_ID": "WEB", "CURRENCY_ID": "RUB",
        "OPPORTUNITY": "0.00", "HAS_PHONE": "Y" if phones else "N", "ASSIGNED_BY_ID": "7", "CREATED_BY_ID": "1",
        "DATE_CREATE": "2026-03-02T10:00:00+03:00", "DATE_MODIFY": "2026-03-02T12:30:00+03:00",
        "MOVED_TIME": "2026-03-02T12:30:00+03:00", "CONTACT_ID": contact, "COMPANY_ID": None,
        "UF_CRM_TEMPERATURE": "горячий",
        "PHONE": [{"ID": "11", "VALUE_TYPE": "WORK", "VALUE": p, "TYPE_ID": "PHONE"} for p in phones],
    }, "time": {"start": 1740000000.1, "finish": 1740000000.2, "duration": 0.1}}


def b24_deal(deal_id="759", stage="C1:WON", semantic="S", lead="123", contact="55"):
    return {"result": {
        "ID": deal_id, "TITLE": "Поставка бумаги", "TYPE_ID": "SALE", "CATEGORY_ID": "1", "STAGE_ID": stage,
        "STAGE_SEMANTIC_ID": semantic, "IS_NEW": "N", "CURRENCY_ID": "RUB", "OPPORTUNITY": "150000.00",
        "LEAD_ID": lead, "CONTACT_ID": contact, "COMPANY_ID": "0", "ASSIGNED_BY_ID": "7", "SOURCE_ID": "CALL",
        "DATE_CREATE": "2026-03-03T09:00:00+03:00", "DATE_MODIFY": "2026-03-05T15:00:00+03:00",
        "MOVED_TIME": "2026-03-05T15:00:00+03:00", "CLOSED": "Y" if semantic in ("S", "F") else "N",
        "CLOSEDATE": "2026-03-05T03:00:00+03:00",
    }}


def b24_contact(contact_id="55", phone="+7 912 000-11-22"):
    return {"result": {"ID": contact_id, "NAME": "Пётр", "HAS_PHONE": "Y",
                       "PHONE": [{"ID": "21", "VALUE_TYPE": "MOBILE", "VALUE": phone, "TYPE_ID": "PHONE"}]}}


def b24_form(event="ONCRMLEADADD", entity_id="123", token=B24_TOKEN):
    """What an outbound webhook posts (form-encoded, PHP-style brackets)."""
    return [("event", event), ("event_handler_id", "201"), ("data[FIELDS][ID]", entity_id), ("ts", "1740900000"),
            ("auth[domain]", "portal.bitrix24.ru"), ("auth[client_endpoint]", "https://portal.bitrix24.ru/rest/"),
            ("auth[server_endpoint]", "https://oauth.bitrix.info/rest/"),
            ("auth[member_id]", "a223c6b3710f85df22e9377d6c4f7553"), ("auth[application_token]", token)]


def b24(api, **cfg):
    base = {"bitrix24_app_token": B24_TOKEN, "bitrix24_webhook_url": api.url + B24_KEY,
            "bitrix24_temperature_field": "UF_CRM_TEMPERATURE", "bitrix24_invoice_stages": "C1:FINAL_INVOICE",
            "fetch_timeout_s": 5.0}
    return Bitrix24Adapter(CrmConfig(**{**base, **cfg}), ManagerDirectory(MANAGERS))


def b24_req(form):
    return RequestParts.from_form("http://testserver/hooks/bitrix24", form)


def test_bitrix24_lead_add_reads_the_lead_through_the_rest_api(api):
    api.routes[B24_KEY + "crm.lead.get"] = (200, b24_lead())
    [ev] = b24(api).parse(b24_req(b24_form())).events
    assert isinstance(ev, LeadCreated) and ev.lead_key == "bitrix24:123" and ev.event_id == "bitrix24:123:created"
    assert ev.phones == ["8 (912) 345-67-89"] and ev.source == "WEB" and ev.title == "Заявка с сайта"
    assert ev.manager_id == "m-anna" and ev.team_id == "north" and ev.temperature == "hot"
    assert ev.created_at == datetime(2026, 3, 2, 7, 0, tzinfo=timezone.utc)   # +03:00 kept, not read as UTC
    [(path, query, _)] = api.requests
    assert path == B24_KEY + "crm.lead.get" and query == {"id": ["123"]}


def test_bitrix24_lead_update_status_junk_and_contact_phones(api):
    api.routes[B24_KEY + "crm.lead.get"] = (200, b24_lead(status="JUNK", semantic="F", phones=(), contact="55"))
    api.routes[B24_KEY + "crm.contact.get"] = (200, b24_contact())
    evs = b24(api).parse(b24_req(b24_form("ONCRMLEADUPDATE"))).events
    assert [type(e) for e in evs] == [LeadCreated, LeadContact, LeadStatusChanged, DealClosed]
    assert evs[0].phones == ["+7 912 000-11-22"] and evs[1].phones == ["+7 912 000-11-22"]
    assert evs[2].status == "JUNK" and evs[2].at == datetime(2026, 3, 2, 9, 30, tzinfo=timezone.utc)
    assert evs[3].outcome == "lost" and evs[3].loss_reason == "Спам" and evs[3].event_id == "bitrix24:123:lost"
    # the same update again (any field changed): the same ids, so nothing is published twice
    again = b24(api).parse(b24_req(b24_form("ONCRMLEADUPDATE"))).events
    assert [e.event_id for e in again] == [e.event_id for e in evs]


def test_bitrix24_deal_stages_won_lost_invoice_and_a_deal_without_lead(api):
    api.routes[B24_KEY + "crm.deal.get"] = (200, b24_deal())
    evs = b24(api).parse(b24_req(b24_form("ONCRMDEALUPDATE", "759"))).events
    assert [type(e) for e in evs] == [LeadStatusChanged, DealClosed]
    won = evs[1]
    assert won.lead_key == "bitrix24:123" and won.deal_id == "759" and won.outcome == "won"
    assert won.amount == 150000.0 and won.currency == "RUB" and won.event_id == "bitrix24:123:deal:759:won"
    api.routes[B24_KEY + "crm.deal.get"] = (200, b24_deal(stage="C1:FINAL_INVOICE", semantic="P"))
    evs = b24(api).parse(b24_req(b24_form("ONCRMDEALUPDATE", "759"))).events
    assert [type(e) for e in evs] == [LeadStatusChanged, InvoiceIssued] and evs[1].amount == 150000.0
    # leads turned off: the deal is its own lead, with its contact's phones
    api.routes[B24_KEY + "crm.deal.get"] = (200, b24_deal(deal_id="760", stage="NEW", semantic="P", lead=None))
    api.routes[B24_KEY + "crm.contact.get"] = (200, b24_contact())
    evs = b24(api).parse(b24_req(b24_form("ONCRMDEALADD", "760"))).events
    assert [type(e) for e in evs] == [LeadCreated, LeadStatusChanged]
    assert evs[0].lead_key == "bitrix24:deal-760" and evs[0].phones == ["+7 912 000-11-22"]
    assert evs[0].source == "CALL" and evs[0].manager_id == "m-anna"


@pytest.mark.parametrize("stage,semantic,want", [
    ("WON", None, "won"), ("C1:WON", None, "won"), ("LOSE", None, "lost"), ("C3:LOSE", None, "lost"),
    ("APOLOGY", None, "lost"), ("EXECUTING", None, None), ("C1:NEW", "P", None), ("C2:DONE", "S", "won"),
    ("C2:REFUSED", "F", "lost"),
])
def test_bitrix24_stage_semantics(stage, semantic, want):
    assert outcome_of(stage, semantic) == want


def test_bitrix24_token_config_and_api_failures(api):
    a = b24(api)
    a.verify(b24_req(b24_form()))
    with pytest.raises(SignatureError) as e:
        a.verify(b24_req(b24_form(token="x" * 32)))
    assert e.value.reason == "bad_token" and e.value.status == 401
    with pytest.raises(SignatureError) as e:
        a.verify(b24_req([kv for kv in b24_form() if kv[0] != "auth[application_token]"]))
    assert e.value.reason == "missing_token"
    with pytest.raises(NotConfigured) as e:
        b24(api, bitrix24_app_token="").verify(b24_req(b24_form()))
    assert e.value.status == 503 and "CALLQA_BITRIX24_APP_TOKEN" in e.value.detail
    with pytest.raises(NotConfigured):
        b24(api, bitrix24_webhook_url="").parse(b24_req(b24_form()))
    with pytest.raises(PayloadError) as e:
        a.parse(b24_req([("event", "ONCRMLEADADD"), ("data[FIELDS][ID]", "../../profile")]))
    assert e.value.reason == "bad:data[FIELDS][ID]"
    assert a.parse(b24_req(b24_form("ONCRMCOMPANYADD"))).ignored == "event:ONCRMCOMPANYADD"
    # the lead was deleted since: nothing to publish, and a retry would not help
    assert a.parse(b24_req(b24_form())).ignored == "not_found:crm.lead.get:123"
    api.routes[B24_KEY + "crm.lead.get"] = (400, {"error": "", "error_description": "Not found"})
    assert a.parse(b24_req(b24_form())).ignored == "not_found:crm.lead.get:123"
    # the API fails: a 502 naming the method, never the webhook URL (it holds the key)
    api.routes[B24_KEY + "crm.lead.get"] = (503, {"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"})
    with pytest.raises(UpstreamError) as e:
        a.parse(b24_req(b24_form()))
    assert e.value.status == 502 and "crm.lead.get(123)" in e.value.detail and "Too many" in e.value.detail
    assert "abc123xyz" not in str(e.value)
    api.routes[B24_KEY + "crm.lead.get"] = (401, {"error": "INVALID_CREDENTIALS", "error_description": "Invalid request credentials"})
    with pytest.raises(UpstreamError) as e:
        a.parse(b24_req(b24_form()))
    assert "crm scope" in e.value.detail
    down = b24(api, bitrix24_webhook_url="http://127.0.0.1:9" + B24_KEY)   # nothing listens there
    with pytest.raises(UpstreamError) as e:
        down.parse(b24_req(b24_form()))
    assert e.value.reason == "fetch_failed" and "abc123xyz" not in str(e.value)


# ---- HubSpot (webhooks v3 and the CRM API v3 objects) ---------------------------------------------------

NOW_MS = 1772434800000   # 2026-03-02T07:00:00Z


def hs_contact(contact_id="501", phone="+7 912 345-67-89"):
    return {"id": contact_id, "archived": False, "createdAt": "2026-03-02T07:00:00.000Z",
            "updatedAt": "2026-03-02T07:05:00.000Z",
            "properties": {"createdate": "2026-03-02T07:00:00.000Z", "phone": phone, "mobilephone": None,
                           "hubspot_owner_id": "9001", "hs_lead_status": "NEW", "hs_analytics_source": "ORGANIC_SEARCH",
                           "firstname": "Ivan", "lastname": "Klientov", "hs_object_id": contact_id,
                           "lead_temperature": "Hot"}}


def hs_deal(deal_id="777", stage="closedwon", contacts=("501",), closed=None):
    return {"id": deal_id, "archived": False, "createdAt": "2026-03-03T08:00:00Z", "updatedAt": "2026-03-05T12:00:00Z",
            "properties": {"dealstage": stage, "amount": "2500.50", "deal_currency_code": "USD",
                           "closed_lost_reason": "Chose a competitor" if stage == "closedlost" else None,
                           "closedate": "2026-03-05T12:00:00Z", "dealname": "Paper supply", "hs_object_id": deal_id,
                           "hs_is_closed": "true" if closed is not None else "false",
                           "hs_is_closed_won": "true" if closed == "won" else "false"},
            "associations": {"contacts": {"results": [{"id": c, "type": "deal_to_contact"} for c in contacts]}}}


def hs_event(kind="contact.creation", object_id=501, event_id=100, **extra):
    return {"eventId": event_id, "subscriptionId": 2345, "portalId": 62515, "appId": 54321,
            "occurredAt": NOW_MS - 2000, "subscriptionType": kind, "attemptNumber": 0, "objectId": object_id,
            "changeSource": "CRM_UI", "changeFlag": "CREATED" if kind.endswith("creation") else None, **extra}


def hs(api, **cfg):
    base = {"hubspot_client_secret": HS_SECRET, "hubspot_token": HS_TOKEN, "hubspot_api_url": api.url,
            "hubspot_temperature_property": "lead_temperature", "hubspot_proposal_stages": "contractsent",
            "fetch_timeout_s": 5.0}
    return HubSpotAdapter(CrmConfig(**{**base, **cfg}), ManagerDirectory(MANAGERS), clock=lambda: NOW_MS / 1000)


def hs_req(events, url="https://callqa.example.com/hooks/hubspot", secret=HS_SECRET, stamp=NOW_MS - 1000):
    body = json.dumps(events).encode()
    sig = v3_signature(secret, "POST", url, body, str(stamp))
    return RequestParts(method="POST", url=url, path=urlsplit(url).path, body=body,
                        headers={"content-type": "application/json", "x-hubspot-signature-v3": sig,
                                 "x-hubspot-request-timestamp": str(stamp), "x-hubspot-signature-version": "v3"})


def test_hubspot_v3_signature_matches_the_documented_recipe():
    import base64
    import hashlib
    import hmac
    body = b'[{"eventId":1,"subscriptionType":"contact.creation","objectId":123}]'
    source = b"POST" + b"https://www.example.com/webhook_uri?a=1:2" + body + b"1564113600000"
    want = base64.b64encode(hmac.new(HS_SECRET.encode(), source, hashlib.sha256).digest()).decode()
    # HubSpot signs the URI with %3A, %2F... decoded; a proxy may hand the path on encoded
    assert v3_signature(HS_SECRET, "POST", "https://www.example.com/webhook_uri?a=1%3A2", body, "1564113600000") == want


def test_hubspot_verify_signature_timestamp_and_config(api):
    a = hs(api)
    a.verify(hs_req([hs_event()]))
    r = hs_req([hs_event()])
    r.body = r.body.replace(b"501", b"502")      # tampered in transit
    with pytest.raises(SignatureError) as e:
        a.verify(r)
    assert e.value.reason == "bad_signature"
    with pytest.raises(SignatureError) as e:
        a.verify(hs_req([hs_event()], secret="another-secret"))
    assert e.value.reason == "bad_signature"
    with pytest.raises(SignatureError) as e:   # signed correctly, but 6 minutes old: a replay
        a.verify(hs_req([hs_event()], stamp=NOW_MS - 6 * 60 * 1000))
    assert e.value.reason == "stale_timestamp" and "6 min old" in e.value.detail
    a.verify(hs_req([hs_event()], stamp=NOW_MS - 4 * 60 * 1000))
    r = hs_req([hs_event()])
    del r.headers["x-hubspot-signature-v3"]
    with pytest.raises(SignatureError) as e:
        a.verify(r)
    assert e.value.reason == "missing_signature"
    with pytest.raises(NotConfigured) as e:
        hs(api, hubspot_client_secret="").verify(hs_req([hs_event()]))
    assert "CALLQA_HUBSPOT_CLIENT_SECRET" in e.value.detail
    # behind a proxy the service sees its own address: the public URL is what HubSpot signed
    signed = hs_req([hs_event()], url="https://qa.example.com/hooks/hubspot")
    seen = RequestParts(method="POST", url="http://127.0.0.1:8090/hooks/hubspot", path="/hooks/hubspot",
                        body=signed.body, headers=signed.headers)
    with pytest.raises(SignatureError):
        a.verify(seen)
    hs(api, hubspot_public_url="https://qa.example.com").verify(seen)


def test_hubspot_contact_creation_and_deal_stages(api):
    api.routes["/crm/v3/objects/contacts/501"] = (200, hs_contact())
    api.routes["/crm/v3/objects/deals/777"] = (200, hs_deal())
    a = hs(api)
    out = a.parse(hs_req([hs_event(),
                          hs_event("deal.propertyChange", 777, 101, propertyName="dealstage", propertyValue="closedwon"),
                          hs_event("deal.propertyChange", 777, 102, propertyName="amount", propertyValue="10"),
                          hs_event("company.creation", 9, 103)])).events
    assert [type(e) for e in out] == [LeadCreated, LeadStatusChanged, DealClosed]
    lead, stage, won = out
    assert lead.lead_key == "hubspot:501" and lead.phones == ["+7 912 345-67-89"] and lead.manager_id == "m-anna"
    assert lead.temperature == "hot" and lead.source == "ORGANIC_SEARCH" and lead.title == "Ivan Klientov"
    assert lead.created_at == datetime(2026, 3, 2, 7, 0, tzinfo=timezone.utc)
    assert stage.lead_key == "hubspot:501" and stage.status == "closedwon" and stage.event_id == "hubspot:101:stage"
    assert won.outcome == "won" and won.amount == 2500.5 and won.currency == "USD" and won.deal_id == "777"
    assert won.at == datetime.fromtimestamp((NOW_MS - 2000) / 1000, timezone.utc)
    paths = sorted(p for p, _, _ in api.requests)
    assert paths == ["/crm/v3/objects/contacts/501", "/crm/v3/objects/deals/777"]
    contact_q = next(q for p, q, _ in api.requests if "contacts" in p)
    assert "phone" in contact_q["properties"][0].split(",") and "lead_temperature" in contact_q["properties"][0]
    assert all(h["authorization"] == f"Bearer {HS_TOKEN}" for _, _, h in api.requests)
    deal_q = next(q for p, q, _ in api.requests if "deals" in p)
    assert deal_q["associations"] == ["contacts"]
    # lost with its reason; a custom pipeline's closed stage known from the deal; a proposal stage
    api.routes["/crm/v3/objects/deals/777"] = (200, hs_deal(stage="closedlost"))
    lost = a.parse(hs_req([hs_event("deal.propertyChange", 777, 104, propertyName="dealstage",
                                    propertyValue="closedlost")])).events[1]
    assert lost.outcome == "lost" and lost.loss_reason == "Chose a competitor" and lost.amount is None
    api.routes["/crm/v3/objects/deals/777"] = (200, hs_deal(stage="12345678", closed="won"))
    custom = a.parse(hs_req([hs_event("deal.creation", 777, 105)])).events
    assert [type(e) for e in custom] == [LeadStatusChanged, DealClosed] and custom[1].outcome == "won"
    api.routes["/crm/v3/objects/deals/777"] = (200, hs_deal(stage="contractsent"))
    prop = a.parse(hs_req([hs_event("deal.propertyChange", 777, 106, propertyName="dealstage",
                                    propertyValue="contractsent")])).events
    assert [type(e) for e in prop] == [LeadStatusChanged, ProposalSent]
    # a contact's lead status and a new phone need no API call
    n = len(api.requests)
    changed = a.parse(hs_req([hs_event("contact.propertyChange", 501, 107, propertyName="hs_lead_status",
                                       propertyValue="CONNECTED"),
                              hs_event("contact.propertyChange", 501, 108, propertyName="mobilephone",
                                       propertyValue="+7 999 111-22-33")])).events
    assert [type(e) for e in changed] == [LeadStatusChanged, LeadContact] and len(api.requests) == n


def test_hubspot_missing_objects_bad_payloads_and_api_failures(api):
    a = hs(api)
    assert a.parse(hs_req([hs_event()])).ignored == "nothing_used:contact.creation"   # deleted since (404)
    api.routes["/crm/v3/objects/deals/778"] = (200, hs_deal("778", contacts=()))
    assert a.parse(hs_req([hs_event("deal.creation", 778, 1)])).ignored   # no contact: nothing to join calls to
    with pytest.raises(PayloadError) as e:
        a.parse(hs_req({"not": "a list"}))
    assert e.value.reason == "bad:body"
    with pytest.raises(PayloadError) as e:
        a.parse(hs_req([hs_event(object_id="../../owners")]))
    assert e.value.reason == "bad:0.objectId"
    api.routes["/crm/v3/objects/contacts/501"] = (401, {"status": "error", "message": "Authentication credentials not found",
                                                        "category": "INVALID_AUTHENTICATION"})
    with pytest.raises(UpstreamError) as e:
        a.parse(hs_req([hs_event()]))
    assert e.value.status == 502 and "CALLQA_HUBSPOT_TOKEN" in e.value.detail and HS_TOKEN not in str(e.value)
    api.routes["/crm/v3/objects/contacts/501"] = (200, b"<html>gateway</html>")
    with pytest.raises(UpstreamError):
        a.parse(hs_req([hs_event()]))
    with pytest.raises(NotConfigured):
        hs(api, hubspot_token="").parse(hs_req([hs_event()]))


# ---- through the ingest app and a real broker ------------------------------------------------------

@pytest.fixture
def crm_app(kafka_bootstrap, tmp_path, api):
    topic = f"test.crm.{uuid.uuid4().hex[:10]}"
    settings = IngestSettings(bitrix24_app_token=B24_TOKEN, bitrix24_webhook_url=api.url + B24_KEY,
                              hubspot_client_secret=HS_SECRET, hubspot_token=HS_TOKEN, hubspot_api_url=api.url,
                              public_url="https://qa.example.com", crm_topic=topic, home=str(tmp_path),
                              crm_fetch_timeout_s=5.0)
    pub = Publisher(kafka_bootstrap, f"unused.{topic}")
    with TestClient(create_app(settings, pub, ManagerDirectory(MANAGERS))) as client:
        yield client, lambda: consume_crm(kafka_bootstrap, topic)
    pub.close()


def post_hubspot(client, events, secret=HS_SECRET, stamp=None):
    body = json.dumps(events).encode()
    stamp = str(stamp if stamp is not None else int(time.time() * 1000))
    sig = v3_signature(secret, "POST", "https://qa.example.com/hooks/hubspot", body, stamp)
    return client.post("/hooks/hubspot", content=body, headers={
        "Content-Type": "application/json", "X-HubSpot-Signature-v3": sig, "X-HubSpot-Request-Timestamp": stamp})


@pytest.mark.slow
def test_bitrix24_and_hubspot_through_the_ingest_app(crm_app, api):
    client, read = crm_app
    api.routes[B24_KEY + "crm.lead.get"] = (200, b24_lead())
    api.routes[B24_KEY + "crm.deal.get"] = (200, b24_deal())
    api.routes["/crm/v3/objects/contacts/501"] = (200, hs_contact())
    api.routes["/crm/v3/objects/deals/777"] = (200, hs_deal())

    form = urlencode(b24_form())
    hdr = {"Content-Type": "application/x-www-form-urlencoded"}
    r = client.post("/hooks/bitrix24", content=form, headers=hdr)
    assert r.status_code == 200 and r.json()["events"][0]["status"] == "published", r.text
    r = client.post("/hooks/bitrix24", content=form, headers=hdr)         # Bitrix24 sends it again
    assert r.json()["events"][0]["status"] == "duplicate"
    r = client.post("/hooks/bitrix24", content=urlencode(b24_form("ONCRMDEALUPDATE", "759")), headers=hdr)
    assert [e["type"] for e in r.json()["events"]] == ["lead_status_changed", "deal_closed"]
    r = client.post("/hooks/bitrix24", content=urlencode(b24_form(token="forged" * 6)), headers=hdr)
    assert r.status_code == 401 and r.json()["reason"] == "bad_token" and "CALLQA_BITRIX24_APP_TOKEN" in r.json()["detail"]
    api.routes[B24_KEY + "crm.lead.get"] = (500, {"error": "INTERNAL_SERVER_ERROR"})
    r = client.post("/hooks/bitrix24", content=urlencode(b24_form("ONCRMLEADUPDATE")), headers=hdr)
    assert r.status_code == 502 and r.json()["reason"] == "fetch_failed" and "crm.lead.get" in r.json()["detail"]

    hs_batch = [hs_event(event_id=200),
                hs_event("deal.propertyChange", 777, 201, propertyName="dealstage", propertyValue="closedwon")]
    r = post_hubspot(client, hs_batch)
    assert r.status_code == 200 and [e["status"] for e in r.json()["events"]] == ["published"] * 3, r.text
    r = post_hubspot(client, [dict(e, attemptNumber=1) for e in hs_batch])   # HubSpot's retry
    assert [e["status"] for e in r.json()["events"]] == ["duplicate"] * 3
    r = post_hubspot(client, hs_batch, secret="wrong")
    assert r.status_code == 401 and r.json()["reason"] == "bad_signature"
    r = post_hubspot(client, hs_batch, stamp=int(time.time() * 1000) - 10 * 60 * 1000)
    assert r.status_code == 401 and r.json()["reason"] == "stale_timestamp"
    r = client.post("/hooks/hubspot", content=json.dumps(hs_batch), headers={"Content-Type": "application/json"})
    assert r.status_code == 401 and r.json()["reason"] == "missing_signature"
    api.routes["/crm/v3/objects/contacts/502"] = (503, {"status": "error", "message": "Service unavailable"})
    r = post_hubspot(client, [hs_event(object_id=502, event_id=202)])
    assert r.status_code == 502 and "Service unavailable" in r.json()["detail"]

    got = read()
    assert sorted((k, e.type) for k, e in got) == sorted([
        ("bitrix24:123", "lead_created"), ("bitrix24:123", "lead_status_changed"), ("bitrix24:123", "deal_closed"),
        ("hubspot:501", "lead_created"), ("hubspot:501", "lead_status_changed"), ("hubspot:501", "deal_closed")])
    m = client.get("/metrics").text
    assert 'callqa_ingest_accepted_total{provider="bitrix24"} 3' in m
    assert 'callqa_ingest_rejected_total{provider="hubspot",reason="fetch_failed"} 1' in m


def test_not_configured_crms_say_what_to_set(tmp_path):
    class NoBroker:
        def publish_raw(self, *a, **k):
            raise AssertionError("nothing may be published")
    app = create_app(IngestSettings(home=str(tmp_path)), NoBroker(), ManagerDirectory(MANAGERS))
    with TestClient(app) as client:
        r = client.post("/hooks/bitrix24", data=dict(b24_form()))
        assert r.status_code == 503 and r.json()["reason"] == "not_configured"
        assert "CALLQA_BITRIX24_WEBHOOK_URL" in r.json()["detail"]
        r = client.post("/hooks/hubspot", content=b"[]", headers={"Content-Type": "application/json"})
        assert r.status_code == 503 and "CALLQA_HUBSPOT_CLIENT_SECRET" in r.json()["detail"]


def test_crm_settings_have_env_names():
    env = {name for name, _, _ in IngestSettings.describe()}
    assert {"CALLQA_BITRIX24_APP_TOKEN", "CALLQA_BITRIX24_WEBHOOK_URL", "CALLQA_HUBSPOT_CLIENT_SECRET",
            "CALLQA_HUBSPOT_TOKEN", "CALLQA_HUBSPOT_API_URL", "CALLQA_CRM_FETCH_TIMEOUT_S"} <= env

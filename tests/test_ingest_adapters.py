"""Telephony ingest: each provider's documented payload through the real HTTP app and a real broker.

Every test publishes to its own topic on the session's Kafka broker and reads the
topic back to the end offsets, so "published exactly once" is checked on the broker.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from urllib.parse import urlencode

import pytest
from fastapi.testclient import TestClient

from callqa.ingest_app import create_app
from callqa.ingest_settings import IngestSettings
from callqa.publisher import Publisher
from models.events import CallRecorded
from pipeline.ingest import mango as mango_mod
from pipeline.ingest import twilio as twilio_mod
from pipeline.ingest import zadarma as zadarma_mod
from pipeline.ingest.hmacauth import body_signature
from pipeline.ingest.managers import ManagerDirectory
from pipeline.ingest.safety import URLPolicy, UnsafeURL, check_recording_url
from tests.helpers import read_topic

TWILIO_TOKEN = "12345abcdef"
ZD_SECRET = "zd-secret"
MANGO_KEY, MANGO_SALT = "mango-key-1", "mango-salt-1"
GENERIC = "generic-secret"
FS_SECRET = "fs-secret"
AST_SECRET = "ast-secret"
BASE = "http://testserver"

MANAGERS = [
    {"id": "m-ivanova", "name": "Анна Иванова", "team": "msk", "keys": ["101", "mango:user:40001", "twilio:anna"]},
    {"id": "m-petrov", "name": "Пётр Петров", "team": "msk", "keys": ["zadarma:100", "freeswitch:1002", "mango:12"]},
]


def consume_all(bootstrap: str, topic: str) -> list[CallRecorded]:
    return read_topic(bootstrap, topic, lambda r: CallRecorded.model_validate_json(r.value))


@pytest.fixture
def env(kafka_bootstrap, tmp_path):
    topic = f"test.ingest.{uuid.uuid4().hex[:10]}"
    rec_dir = tmp_path / "recordings"
    rec_dir.mkdir()
    settings = IngestSettings(
        twilio_auth_token=TWILIO_TOKEN, zadarma_secret=ZD_SECRET, mango_api_key=MANGO_KEY,
        mango_api_salt=MANGO_SALT, generic_secret=GENERIC, freeswitch_secret=FS_SECRET,
        asterisk_secret=AST_SECRET, recordings_dir=str(rec_dir), mango_manager_channel="1",
        home=str(tmp_path))
    pub = Publisher(kafka_bootstrap, topic)
    app = create_app(settings, pub, ManagerDirectory(MANAGERS))
    with TestClient(app) as client:
        yield {"client": client, "topic": topic, "bootstrap": kafka_bootstrap, "rec_dir": rec_dir, "app": app,
               "read": lambda: consume_all(kafka_bootstrap, topic)}
    pub.close()


# ---------------------------------------------------------------- Twilio

def twilio_params(**over):
    p = {
        "AccountSid": "AC" + "0" * 32, "CallSid": "CA" + "1" * 32, "RecordingSid": "RE" + "2" * 32,
        "RecordingUrl": "https://api.twilio.com/2010-04-01/Accounts/AC00/Recordings/RE22",
        "RecordingStatus": "completed", "RecordingDuration": "61", "RecordingChannels": "2",
        "RecordingStartTime": "Mon, 22 Aug 2011 20:58:45 +0000", "RecordingSource": "DialVerb",
        "RecordingTrack": "both",
    }
    p.update(over)
    return {k: v for k, v in p.items() if v is not None}


def twilio_post(client, params, query="agent=anna&direction=inbound&client=%2B15550001111", token=TWILIO_TOKEN,
                url_base=BASE):
    path = "/hooks/twilio" + (f"?{query}" if query else "")
    sig = twilio_mod.compute_signature(token, url_base + path, sorted(params.items()))
    return client.post(path, data=params, headers={"X-Twilio-Signature": sig})


def test_twilio_signature_matches_documented_example():
    # The example from Twilio's webhook-security docs (token 12345, the Gather example URL/params).
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {"CallSid": "CA1234567890ABCDE", "Caller": "+12349013030", "Digits": "1234",
              "From": "+12349013030", "To": "+18005551212"}
    assert twilio_mod.compute_signature("12345", url, params.items()) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


def test_twilio_completed_recording_published_once(env):
    c = env["client"]
    r = twilio_post(c, twilio_params())
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "published"
    r2 = twilio_post(c, twilio_params())          # Twilio retries the same callback
    assert r2.status_code == 200 and r2.json()["status"] == "duplicate"
    got = env["read"]()
    assert len(got) == 1
    ev = got[0]
    assert ev.call_id == "CA" + "1" * 32 and ev.source == "twilio"
    assert ev.manager_id == "m-ivanova" and ev.manager_name == "Анна Иванова" and ev.team_id == "msk"
    assert ev.direction == "inbound" and ev.client_number == "+15550001111"
    assert ev.channels.layout == "stereo" and ev.channels.manager_channel == 1   # agent = Twilio channel 2
    assert ev.duration_s == 61 and ev.started_at.isoformat() == "2011-08-22T20:58:45+00:00"
    assert ev.recording_url.startswith("https://api.twilio.com/")


def test_twilio_agent_channel_override_and_mono(env):
    c = env["client"]
    r = twilio_post(c, twilio_params(CallSid="CA" + "3" * 32), query="agent=anna&direction=outbound&agent_channel=1")
    assert r.status_code == 200, r.text
    r = twilio_post(c, twilio_params(CallSid="CA" + "4" * 32, RecordingChannels="1"), query="agent=nobody")
    assert r.status_code == 200, r.text
    got = {e.call_id: e for e in env["read"]()}
    assert got["CA" + "3" * 32].channels.manager_channel == 0
    mono = got["CA" + "4" * 32]
    assert mono.channels.layout == "mono" and mono.channels.manager_channel is None
    assert mono.manager_id == "unknown:nobody"
    assert 'extension="nobody"' in c.get("/metrics").text


def test_twilio_bad_signature_401(env):
    c = env["client"]
    r = twilio_post(c, twilio_params(), token="wrong-token")
    assert r.status_code == 401 and r.json()["reason"] == "bad_signature"
    params = twilio_params()
    r = c.post("/hooks/twilio?agent=anna", data=params)
    assert r.status_code == 401 and r.json()["reason"] == "missing_signature"
    # a parameter changed after signing
    sig = twilio_mod.compute_signature(TWILIO_TOKEN, BASE + "/hooks/twilio", sorted(params.items()))
    r = c.post("/hooks/twilio", data={**params, "RecordingUrl": "https://api.twilio.com/other"},
               headers={"X-Twilio-Signature": sig})
    assert r.status_code == 401
    assert env["read"]() == []


def test_twilio_malformed_400_and_in_progress_ignored(env):
    c = env["client"]
    r = twilio_post(c, twilio_params(CallSid=None))
    assert r.status_code == 400 and r.json()["reason"] == "missing:CallSid"
    r = twilio_post(c, twilio_params(RecordingStartTime="yesterday"))
    assert r.status_code == 400 and r.json()["reason"] == "bad:RecordingStartTime"
    r = twilio_post(c, twilio_params(RecordingStatus="in-progress", RecordingUrl=None))
    assert r.status_code == 200 and r.json()["status"] == "ignored"
    r = twilio_post(c, twilio_params(RecordingUrl="https://169.254.169.254/latest/meta-data"))
    assert r.status_code == 400 and r.json()["reason"].startswith("unsafe_url:")
    assert env["read"]() == []
    m = c.get("/metrics").text
    assert 'callqa_ingest_rejected_total{provider="twilio",reason="missing:CallSid"} 1' in m


def test_twilio_public_url_behind_proxy(kafka_bootstrap, tmp_path):
    topic = f"test.ingest.{uuid.uuid4().hex[:10]}"
    s = IngestSettings(twilio_auth_token=TWILIO_TOKEN, public_url="https://qa.example.com",
                       recordings_dir=str(tmp_path))
    with Publisher(kafka_bootstrap, topic) as pub, TestClient(create_app(s, pub, ManagerDirectory(MANAGERS))) as c:
        r = twilio_post(c, twilio_params(), url_base="https://qa.example.com")
        assert r.status_code == 200, r.text
        r = twilio_post(c, twilio_params(CallSid="CA" + "9" * 32), url_base="https://qa.example.com:443")
        assert r.status_code == 200, r.text          # Twilio may sign with the explicit port
        r = twilio_post(c, twilio_params(CallSid="CA" + "8" * 32), url_base=BASE)
        assert r.status_code == 401
    assert len(consume_all(kafka_bootstrap, topic)) == 2


# ---------------------------------------------------------------- Zadarma

def zd_sig(s: str) -> str:
    # as the official PHP SDK: base64_encode(hash_hmac('sha1', $s, $secret)) - hex digest, then base64
    return base64.b64encode(hmac.new(ZD_SECRET.encode(), s.encode(), hashlib.sha1).hexdigest().encode()).decode()


OUT_END = {"event": "NOTIFY_OUT_END", "call_start": "2020-04-03 14:26:47",
           "pbx_call_id": "out_dcb22bcd4e78fa4b627aa2e0c67d0191cd0a5068", "caller_id": "0", "internal": "100",
           "destination": "+380989897908", "duration": "37", "disposition": "answered", "status_code": "16",
           "is_recorded": "1", "call_id_with_rec": "1585913205.75283"}


def zd_post(client, form, sig=None):
    if sig is None:
        sig = zd_sig(zadarma_mod.signature_string(form["event"], form))
    return client.post("/hooks/zadarma", data=form, headers={"Signature": sig})


def test_zadarma_echo(env):
    r = env["client"].get("/hooks/zadarma", params={"zd_echo": "abc123"})
    assert r.status_code == 200 and r.text == "abc123"


def test_zadarma_out_end_then_record_published_once(env):
    c = env["client"]
    assert zd_post(c, OUT_END).json()["status"] == "published"
    rec = {"event": "NOTIFY_RECORD", "pbx_call_id": OUT_END["pbx_call_id"],
           "call_id_with_rec": OUT_END["call_id_with_rec"]}
    assert zd_sig(rec["pbx_call_id"] + rec["call_id_with_rec"]) == zd_sig(
        zadarma_mod.signature_string("NOTIFY_RECORD", rec))
    r = zd_post(c, rec)
    assert r.status_code == 200 and r.json()["status"] == "duplicate"
    assert zd_post(c, OUT_END).json()["status"] == "duplicate"
    got = env["read"]()
    assert len(got) == 1
    ev = got[0]
    assert ev.call_id == OUT_END["pbx_call_id"] and ev.source == "zadarma"
    assert ev.direction == "outbound" and ev.client_number == "+380989897908"
    assert ev.manager_id == "m-petrov" and ev.duration_s == 37
    assert ev.started_at.isoformat() == "2020-04-03T14:26:47+00:00"
    assert ev.recording_url.startswith("https://api.zadarma.com/v1/pbx/record/request/?call_id=1585913205.75283")
    assert ev.channels.layout == "mono"


def test_zadarma_record_before_end_is_enriched(env):
    c = env["client"]
    inbound_end = {"event": "NOTIFY_END", "call_start": "2024-05-01 10:00:00", "pbx_call_id": "in_abc",
                   "caller_id": "+79161234567", "called_did": "+74950000000", "internal": "100",
                   "duration": "12", "disposition": "answered", "status_code": "16", "is_recorded": "1",
                   "call_id_with_rec": "1714557600.1"}
    rec = {"event": "NOTIFY_RECORD", "pbx_call_id": "in_abc", "call_id_with_rec": "1714557600.1"}
    assert zd_post(c, rec).json()["status"] == "published"
    assert zd_post(c, inbound_end).json()["status"] == "published"   # richer: replaces downstream
    assert zd_post(c, inbound_end).json()["status"] == "duplicate"
    got = env["read"]()
    assert [e.call_id for e in got] == ["in_abc", "in_abc"]
    assert got[0].manager_id == "unknown:none"
    assert got[1].manager_id == "m-petrov" and got[1].direction == "inbound"
    assert got[1].client_number == "+79161234567"


def test_zadarma_bad_signature_and_malformed(env):
    c = env["client"]
    r = zd_post(c, OUT_END, sig=zd_sig("something else"))
    assert r.status_code == 401 and r.json()["reason"] == "bad_signature"
    raw_b64 = base64.b64encode(hmac.new(b"other", b"x", hashlib.sha1).digest()).decode()
    assert zd_post(c, OUT_END, sig=raw_b64).status_code == 401
    assert c.post("/hooks/zadarma", data=OUT_END).status_code == 401
    bad = {"event": "NOTIFY_RECORD", "pbx_call_id": "in_x"}
    r = zd_post(c, bad)
    assert r.status_code == 400 and r.json()["reason"] == "missing:call_id_with_rec"
    r = zd_post(c, {**OUT_END, "call_start": "03.04.2020"})
    assert r.status_code == 400 and r.json()["reason"] == "bad:call_start"
    r = zd_post(c, {**OUT_END, "is_recorded": "0", "pbx_call_id": "out_norec"})
    assert r.status_code == 200 and r.json()["status"] == "ignored"
    r = c.post("/hooks/zadarma", data={"event": "NOTIFY_IVR", "pbx_call_id": "x"})
    assert r.status_code == 200 and r.json()["status"] == "ignored"
    assert env["read"]() == []


# ---------------------------------------------------------------- Mango

def mango_form(payload: dict, key=MANGO_KEY, salt=MANGO_SALT) -> dict:
    js = json.dumps(payload, ensure_ascii=False)
    return {"vpbx_api_key": key, "sign": hashlib.sha256((key + js + salt).encode()).hexdigest(), "json": js}


SUMMARY = {"entry_id": "MTA2MzQ1OjE0OTU2NTEzMjY=", "call_direction": 1,
           "from": {"number": "79161234567"}, "to": {"extension": "12", "number": "74950000000"},
           "line_number": "74950000000", "create_time": 1714557590, "forward_time": 1714557595,
           "talk_time": 1714557600, "end_time": 1714557690, "entry_result": 1, "disconnect_reason": 1110}
RECORD = {"entry_id": "MTA2MzQ1OjE0OTU2NTEzMjY=", "product_id": 1234, "user_id": 40001,
          "recording_id": "MToxMDA1NzU5MzoyNDE6NjQzNDY5OTYw", "timestamp": 1714557700}


def test_mango_summary_then_record_published_once(env):
    c = env["client"]
    r = c.post("/hooks/mango/events/summary", data=mango_form(SUMMARY))
    assert r.status_code == 200 and r.json()["status"] == "ignored"
    r = c.post("/hooks/mango/events/record/added", data=mango_form(RECORD))
    assert r.status_code == 200 and r.json()["status"] == "published", r.text
    r = c.post("/hooks/mango/events/record/added", data=mango_form(RECORD))
    assert r.json()["status"] == "duplicate"
    got = env["read"]()
    assert len(got) == 1
    ev = got[0]
    assert ev.call_id == RECORD["recording_id"] and ev.source == "mango"
    assert ev.manager_id == "m-ivanova"           # by user_id, before the extension
    assert ev.direction == "inbound" and ev.client_number == "79161234567"
    assert ev.duration_s == 90 and ev.started_at.timestamp() == 1714557600
    assert ev.channels.layout == "stereo" and ev.channels.manager_channel == 1   # the per-integration setting
    assert ev.recording_url.startswith("https://app.mango-office.ru/vpbx/queries/recording/post?recording_id=")
    assert ev.model_extra["provider_ref"]["entry_id"] == RECORD["entry_id"]


def test_mango_record_before_summary_is_enriched(env):
    c = env["client"]
    rec = {**RECORD, "user_id": 777, "recording_id": "REC-2", "entry_id": "ENTRY-2"}
    summ = {**SUMMARY, "entry_id": "ENTRY-2", "call_direction": 2, "from": {"extension": "12"},
            "to": {"number": "79990001122"}}
    assert c.post("/hooks/mango/events/record/added", data=mango_form(rec)).json()["status"] == "published"
    assert c.post("/hooks/mango/events/summary", data=mango_form(summ)).json()["status"] == "published"
    assert c.post("/hooks/mango/events/summary", data=mango_form(summ)).json()["status"] == "duplicate"
    got = env["read"]()
    assert len(got) == 2
    assert got[0].manager_id == "unknown:user:777" and got[0].client_number is None
    assert got[1].manager_id == "m-petrov" and got[1].direction == "outbound"
    assert got[1].client_number == "79990001122"


def test_mango_bad_signature_and_malformed(env):
    c = env["client"]
    f = mango_form(RECORD)
    r = c.post("/hooks/mango/events/record/added", data={**f, "sign": "0" * 64})
    assert r.status_code == 401 and r.json()["reason"] == "bad_signature"
    r = c.post("/hooks/mango/events/record/added", data=mango_form(RECORD, key="someone-else"))
    assert r.status_code == 401 and r.json()["reason"] == "bad_api_key"
    r = c.post("/hooks/mango/events/record/added", data=mango_form({"entry_id": "E"}))
    assert r.status_code == 400 and r.json()["reason"] == "missing:recording_id"
    bad_json = "{not json"
    r = c.post("/hooks/mango/events/record/added", data={
        "vpbx_api_key": MANGO_KEY, "json": bad_json,
        "sign": hashlib.sha256((MANGO_KEY + bad_json + MANGO_SALT).encode()).hexdigest()})
    assert r.status_code == 400 and r.json()["reason"] == "bad:json"
    r = c.post("/hooks/mango/events/call", data=mango_form({"entry_id": "E", "call_state": "Appeared"}))
    assert r.status_code == 200 and r.json()["status"] == "ignored"
    assert c.post("/hooks/mango/events/ping").json()["status"] == "ignored"
    assert env["read"]() == []


def test_mango_fetch_request_is_signed():
    url, form = mango_mod.recording_request(MANGO_KEY, MANGO_SALT, "R1")
    assert url == "https://app.mango-office.ru/vpbx/queries/recording/post"
    assert form["sign"] == hashlib.sha256((MANGO_KEY + form["json"] + MANGO_SALT).encode()).hexdigest()
    assert json.loads(form["json"]) == {"recording_id": "R1", "action": "download"}


# ---------------------------------------------------------------- FreeSWITCH

def fs_cdr(path: str, **vars_over) -> dict:
    variables = {
        "uuid": "a1b2c3d4-0000-4000-8000-000000000001", "direction": "inbound",
        "caller_id_number": "1002", "destination_number": "79161234567",
        "start_epoch": "1714557600", "answer_epoch": "1714557605", "billsec": "55",
        "RECORD_STEREO": "true", "callqa_recording": path.replace("/", "%2F"),   # encode-values=true
        "record_seconds": "54",
    }
    variables.update(vars_over)
    return {"core-uuid": "c0ffee", "switchname": "fs1", "channel_data": {"state": "CS_REPORTING"},
            "variables": variables, "callflow": [{"caller_profile": {"caller_id_number": "1002"}}]}


def fs_post(client, payload, secret=FS_SECRET, raw: bytes | None = None, headers=None):
    body = raw if raw is not None else json.dumps(payload).encode()
    h = {"Content-Type": "application/json", "X-Callqa-Signature": body_signature(secret, body)}
    h.update(headers or {})
    return client.post("/hooks/freeswitch", content=body, headers=h)


def test_freeswitch_cdr_published_once(env):
    c = env["client"]
    rec = env["rec_dir"] / "fs" / "a1b2.wav"
    cdr = fs_cdr(str(rec))
    r = fs_post(c, cdr)
    assert r.status_code == 200 and r.json()["status"] == "published", r.text
    assert fs_post(c, cdr).json()["status"] == "duplicate"
    got = env["read"]()
    assert len(got) == 1
    ev = got[0]
    assert ev.source == "freeswitch" and ev.call_id == "a1b2c3d4-0000-4000-8000-000000000001"
    assert ev.manager_id == "m-petrov" and ev.direction == "outbound" and ev.client_number == "79161234567"
    assert ev.channels.layout == "stereo" and ev.channels.manager_channel == 0   # caller A-leg is left
    assert ev.recording_url == rec.as_uri()
    assert ev.duration_s == 54 and ev.started_at.timestamp() == 1714557605


def test_freeswitch_record_stop_event_form_and_basic_auth(env):
    c = env["client"]
    rec = env["rec_dir"] / "fs" / "ev.wav"
    event = {"Event-Name": "RECORD_STOP", "Unique-ID": "uuid-ev-1", "Record-File-Path": str(rec),
             "Caller-Caller-ID-Number": "+79161234567", "Caller-Destination-Number": "1002",
             "Caller-Channel-Created-Time": "1714557600000000", "variable_record_stereo": "true",
             "variable_RECORD_STEREO_SWAP": "false", "variable_record_seconds": "30"}
    r = fs_post(c, event)
    assert r.status_code == 200, r.text
    # mod_json_cdr with encode=true posts cdr=<json> and can only do HTTP auth
    cdr = fs_cdr(str(env["rec_dir"] / "fs" / "b.wav"), uuid="uuid-cdr-2", caller_id_number="+79990000000",
                 destination_number="1002")
    body = urlencode({"cdr": json.dumps(cdr)}).encode()
    auth = "Basic " + base64.b64encode(f"callqa:{FS_SECRET}".encode()).decode()
    r = c.post("/hooks/freeswitch", content=body,
               headers={"Content-Type": "application/x-www-form-urlencoded", "Authorization": auth})
    assert r.status_code == 200, r.text
    got = {e.call_id: e for e in env["read"]()}
    ev = got["uuid-ev-1"]
    assert ev.direction == "inbound" and ev.manager_id == "m-petrov" and ev.channels.manager_channel == 1
    assert ev.started_at.timestamp() == 1714557600
    assert got["uuid-cdr-2"].direction == "inbound" and got["uuid-cdr-2"].client_number == "+79990000000"


def test_freeswitch_rejections(env):
    c = env["client"]
    cdr = fs_cdr(str(env["rec_dir"] / "x.wav"))
    assert fs_post(c, cdr, secret="wrong").status_code == 401
    auth = "Basic " + base64.b64encode(b"callqa:nope").decode()
    r = c.post("/hooks/freeswitch", content=json.dumps(cdr), headers={"Authorization": auth})
    assert r.status_code == 401
    r = fs_post(c, {"core-uuid": "x"})
    assert r.status_code == 400 and r.json()["reason"] == "missing:variables"
    r = fs_post(c, None, raw=b"{broken")
    assert r.status_code == 400 and r.json()["reason"] == "bad:body"
    r = fs_post(c, fs_cdr("", uuid="norec"))
    assert r.status_code == 200 and r.json()["status"] == "ignored"
    r = fs_post(c, fs_cdr("/etc/passwd", uuid="escape"))
    assert r.status_code == 400 and r.json()["reason"] == "unsafe_url:file_outside_allowed_dirs"
    r = fs_post(c, {"Event-Name": "RECORD_STOP", "Unique-ID": "u"})
    assert r.status_code == 400 and r.json()["reason"] == "missing:Record-File-Path"
    assert env["read"]() == []


# ---------------------------------------------------------------- Asterisk

def ast_post(client, payload, secret=AST_SECRET):
    body = json.dumps(payload).encode()
    return client.post("/hooks/asterisk", content=body,
                       headers={"Content-Type": "application/json", "X-Callqa-Signature": body_signature(secret, body)})


def test_asterisk_mixmonitor_post_published_once(env):
    c = env["client"]
    f = env["rec_dir"] / "2024" / "05" / "01" / "out-79161234567-101-20240501-120000-1714557600.42.wav"
    payload = {"uniqueid": "1714557600.42", "file": str(f), "duration": "42"}
    r = ast_post(c, payload)
    assert r.status_code == 200 and r.json()["status"] == "published", r.text
    assert ast_post(c, payload).json()["status"] == "duplicate"
    got = env["read"]()
    assert len(got) == 1
    ev = got[0]
    assert ev.source == "asterisk" and ev.call_id == "1714557600.42"
    assert ev.manager_id == "m-ivanova" and ev.direction == "outbound" and ev.client_number == "79161234567"
    assert ev.started_at.isoformat() == "2024-05-01T12:00:00+00:00" and ev.duration_s == 42
    assert ev.channels.layout == "mono" and ev.recording_url == f.as_uri()


def test_asterisk_rejections(env):
    c = env["client"]
    f = str(env["rec_dir"] / "external-101-79161234567-20240501-120000-1714557601.1.wav")
    assert ast_post(c, {"uniqueid": "1714557601.1", "file": f}, secret="bad").status_code == 401
    r = ast_post(c, {"file": f})
    assert r.status_code == 400 and r.json()["reason"] == "missing:uniqueid"
    r = ast_post(c, {"uniqueid": "u1", "file": str(env["rec_dir"] / "custom.wav")})
    assert r.status_code == 400 and r.json()["reason"] == "missing:direction"
    r = ast_post(c, {"uniqueid": "u2", "file": f, "manager_channel": 5})
    assert r.status_code == 400 and r.json()["reason"] == "bad:manager_channel"
    assert env["read"]() == []
    r = ast_post(c, {"uniqueid": "1714557601.1", "file": f})
    assert r.status_code == 200
    (ev,) = env["read"]()
    assert ev.direction == "inbound" and ev.manager_id == "m-ivanova"


# ---------------------------------------------------------------- generic

def gen_post(client, payload, secret=GENERIC):
    body = json.dumps(payload).encode()
    return client.post("/hooks/generic", content=body,
                       headers={"Content-Type": "application/json", "X-Callqa-Signature": body_signature(secret, body)})


def test_generic_published_once_and_unknown_extension(env):
    c = env["client"]
    p = {"call_id": "crm-1", "manager_id": "m-1", "recording_url": "https://api.twilio.com/r.wav",
         "direction": "inbound", "channels": {"layout": "stereo", "manager_channel": 1}, "custom": "kept"}
    assert gen_post(c, p).json()["status"] == "published"
    assert gen_post(c, p).json()["status"] == "duplicate"
    p2 = {"call_id": "crm-2", "extension": "555", "recording_url": (env["rec_dir"] / "a.wav").as_uri()}
    assert gen_post(c, p2).status_code == 200
    got = {e.call_id: e for e in env["read"]()}
    assert len(got) == 2
    assert got["crm-1"].source == "generic" and got["crm-1"].model_extra["custom"] == "kept"
    assert got["crm-2"].manager_id == "unknown:555"
    m = c.get("/metrics").text
    assert 'callqa_ingest_unknown_extension_total{provider="generic",extension="555"} 1' in m
    assert 'callqa_ingest_accepted_total{provider="generic"} 2' in m
    assert 'callqa_ingest_duplicates_total{provider="generic"} 1' in m


def test_generic_rejections(env):
    c = env["client"]
    p = {"call_id": "crm-3", "manager_id": "m", "recording_url": "https://api.twilio.com/r.wav"}
    assert gen_post(c, p, secret="bad").status_code == 401
    r = gen_post(c, {"call_id": "crm-3", "manager_id": "m"})
    assert r.status_code == 400 and r.json()["reason"] == "missing:recording_url"
    r = gen_post(c, {**p, "direction": "sideways"})
    assert r.status_code == 400 and r.json()["reason"] == "bad:direction"
    for url, why in [("https://127.0.0.1/x.wav", "private_address"), ("https://2130706433/x", "private_address"),
                     ("https://evil.example.com/x.wav", "host_not_allowed"),
                     ("https://user:pw@api.twilio.com/x", "credentials_in_url"),
                     ("file:///etc/passwd", "file_outside_allowed_dirs")]:
        r = gen_post(c, {**p, "recording_url": url})
        assert r.status_code == 400 and r.json()["reason"] == f"unsafe_url:{why}", (url, r.text)
    assert env["read"]() == []


def test_healthz_and_body_limit(env):
    c = env["client"]
    assert c.get("/healthz").json()["status"] == "ok"
    r = c.post("/hooks/generic", content=b"x" * 2_000_000)
    assert r.status_code == 413


# ---------------------------------------------------------------- safety (pure)

def test_url_policy(tmp_path):
    pol = URLPolicy.build("rec.example.com,*.cdn.example.net", [tmp_path])
    ok = ["https://api.twilio.com/x", "https://rec.example.com/a.wav", "https://a.b.cdn.example.net/x",
          "s3://bucket/key.wav", (tmp_path / "a.wav").as_uri()]
    for u in ok:
        assert check_recording_url(u, pol) == u
    bad = {"https://cdn.example.net.evil.com/x": "host_not_allowed", "http://api.twilio.com/x": "http_not_allowed",
           "https://[::1]/x": "private_address", "https://10.0.0.5/x": "private_address",
           "https://0x7f.1/x": "private_address", "https://[::ffff:127.0.0.1]/x": "private_address",
           "https://localhost/x": "private_address", "ftp://api.twilio.com/x": "scheme_not_allowed",
           (tmp_path / ".." / "etc" / "x").as_uri(): "file_outside_allowed_dirs"}
    for u, why in bad.items():
        with pytest.raises(UnsafeURL) as e:
            check_recording_url(u, pol)
        assert e.value.reason == why, u
    # the fetcher resolves the name: a public name pointing inside is refused
    with pytest.raises(UnsafeURL):
        check_recording_url("https://rec.example.com/a", pol, resolver=lambda h, p: ["192.168.1.10"])
    assert check_recording_url("https://rec.example.com/a", pol, resolver=lambda h, p: ["93.184.216.34"])
    allow_all = URLPolicy.build("*", [], allow_private=True, allow_http=True)
    assert check_recording_url("http://10.0.0.5/x", allow_all)

"""The web pages and JSON API over a real (SQLite) database."""
from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from config.settings import Settings
from models.db import session_factory
from pipeline.store import store_tagged
from tests.webapp import csrf_of, login, make_site


@pytest.fixture
def site(tmp_path, shared_dir, db_url):
    return make_site(db_url, tmp_path, shared_dir)


@pytest.fixture
def client(site):
    """Logged in as hana, a sales head of team north (calls a1, a2, b1, b2)."""
    from web.app import create_app
    s, sessions = site
    c = TestClient(create_app(s))
    c.app_state = {"sessions": sessions}
    assert login(c, "hana").status_code == 303
    return c


def test_pages_render_what_the_reports_say(client):
    r = client.get("/")
    assert r.status_code == 200 and "Anna" in r.text and "Objection handling" in r.text
    assert "Cat" not in r.text  # team south is not hana's
    r = client.get("/managers/anna")
    assert r.status_code == 200 and "Flagged calls" in r.text and "a2" in r.text
    assert client.get("/managers/nobody").status_code == 404
    r = client.get("/calls/a1")
    assert r.status_code == 200 and "Price" in r.text and "not answered" in r.text
    assert '<audio id="player"' in r.text
    r = client.get("/coaching")
    assert r.status_code == 200 and "moments to coach on" in r.text
    r = client.get("/coaching.csv")
    assert r.headers["content-type"].startswith("text/csv") and r.text.startswith("manager_id,")
    assert client.get("/?since=not-a-date").status_code == 400
    assert {m["manager_id"] for m in client.get("/api/managers").json()["managers"]} == {"anna", "bob"}


def test_review_from_the_queue(client):
    r = client.get("/flagged")
    assert r.status_code == 200 and r.text.count('name="verdict" value="agree"') == 3
    token = csrf_of(r.text)
    r = client.post("/calls/a2/reviews", data={"flag": "long_monologue", "verdict": "disagree", "csrf_token": token,
                                               "comment": "it was a demo", "next": "/flagged"},
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/flagged"
    assert client.get("/flagged").text.count('name="verdict" value="agree"') == 2  # reviewed ones leave the queue
    flagged = client.get("/api/flagged").json()["flagged"]
    assert [(f["review"], f["reviewer"]) for f in flagged if f["call_id"] == "a2"] == [("disagree", "hana")]
    assert client.post("/calls/b1/reviews", data={"flag": "long_monologue", "verdict": "agree",
                                                  "csrf_token": token}).status_code == 400
    for evil in ("https://evil.example", "//evil.example/x", "/\\evil.example", "/\tevil", "http:/x"):
        r = client.post("/calls/a1/reviews", data={"flag": "unanswered_objection", "verdict": "agree", "csrf_token": token,
                                                   "next": evil}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/flagged", evil  # never an open redirect


def test_audio_is_served_only_from_allowed_dirs_with_ranges(client):
    r = client.get("/calls/a1/audio", headers={"Range": "bytes=0-99"})
    assert r.status_code == 206 and len(r.content) == 100
    assert r.headers["content-range"].startswith("bytes 0-99/")
    r = client.get("/calls/a1/audio", headers={"Range": "bytes=-100"})  # the last 100 bytes (Safari asks so)
    assert r.status_code == 206 and len(r.content) == 100
    assert client.get("/calls/a1/audio").headers["accept-ranges"] == "bytes"
    assert client.get("/calls/a2/audio").status_code == 404  # file:///rec/a2.wav is not in the allowed dirs


def test_unknown_pages_are_pages_and_the_api_stays_json(client):
    r = client.get("/managers/nobody")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert "No calls are stored for manager &#39;nobody&#39;" in r.text and 'href="/"' in r.text
    r = client.get("/calls/<b>nope")
    assert r.status_code == 404 and "No call &#39;&lt;b&gt;nope&#39; is stored" in r.text and "<b>nope" not in r.text
    r = client.get("/api/nothing-here")
    assert r.status_code == 404 and r.json() == {"detail": "Not Found"}


def test_api_docs_work_offline(client):
    r = client.get("/api/docs")
    assert r.status_code == 200 and "swagger" in r.text.lower()
    assert "cdn." not in r.text and "https://" not in r.text.replace("https://fastapi.tiangolo.com", "")
    for src in re.findall(r'(?:src|href)="(/static/[^"]+)"', r.text):
        asset = client.get(src)
        assert asset.status_code == 200 and len(asset.content) > 100, src
    assert '/static/swagger/swagger-ui-bundle.js' in r.text
    assert client.get("/api/openapi.json").json()["paths"]


def test_manager_page_wording(client):
    r = client.get("/managers/bob")
    closing = r.text.split('<span class="chip closing" title="closing">Closing</span>')[1].split("</tr>")[0]
    assert re.findall(r'<td class="num">([^<]*)</td>', closing)[2] == "–"   # no step after closing
    assert "1 calls" not in client.get("/").text + r.text


def test_call_page_explains_each_turn_with_the_current_rules(client, tmp_path):
    from models.events import CallTranscribed
    from pipeline.tagging import load_rules
    from pipeline.tagging.retag import retag
    turns = [("manager", "Hello, this is Ann from Acme."), ("client", "Hi."),
             ("manager", "We offer a warehouse platform, it costs 200 a month. <script>alert(1)</script>"),
             ("client", "I will think about it."), ("manager", "Okay, let us keep in touch.")]
    ev = CallTranscribed.model_validate({
        "call_id": "x1", "manager_id": "anna", "team_id": "north", "language": "en", "recording_url": "file:///r/x1.wav",
        "asr": {"engine": "faster-whisper", "model": "base", "compute_type": "int8", "audio_s": 20, "wall_s": 2},
        "segments": [{"speaker": sp, "start": i * 4.0, "end": i * 4.0 + 3, "text": t}
                     for i, (sp, t) in enumerate(turns)]})
    with client.app_state["sessions"].begin() as db:
        store_tagged(db, retag(ev, load_rules()))
    r = client.get("/calls/x1")
    assert r.status_code == 200 and r.text.count('<details class="why">') == 5
    assert "cues.presentation" in r.text and "we offer" in r.text
    assert "manager-vague-next-step" in r.text and "objection-unanswered" in r.text
    assert "<script>alert(1)</script>" not in r.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text


def test_rules_page_shows_the_state(tmp_path):
    from tests.test_explain import rules_copy
    d = rules_copy(tmp_path)
    s = Settings(home=str(tmp_path), rules_dir=str(d))
    session_factory(s.db_url)
    from web.app import create_app
    c = TestClient(create_app(s))
    with session_factory(s.db_url).begin() as db:
        from pipeline.accounts import add_user
        add_user(db, "trainer", "trainer", "a long password", teams=["north"])
    login(c, "trainer", "a long password")
    r = c.get("/rules")
    assert r.status_code == 200 and "Valid." in r.text and "cues.closing" in r.text
    assert "answer-to-product-question" in r.text and str(d) in r.text
    (d / "flags.yaml").write_text("flags: {long_monologue: {max_s: soon}}\n")
    r = c.get("/rules")
    assert "Not valid" in r.text and "long_monologue.max_s" in r.text


def test_call_page_says_how_the_speakers_were_told_apart(client):
    from models.events import Roles
    from tests.test_report import call

    with client.app_state["sessions"].begin() as db:
        ev = call("m1", "anna", team="north")
        ev = ev.model_copy(update={
            "channels": ev.channels.model_copy(update={"detected": "duplicate", "envelope_correlation": 0.97}),
            "roles": Roles(method="diarization", voices=2, confidence=0.62, uncertain=True)})
        store_tagged(db, ev)
    r = client.get("/calls/m1")
    assert r.status_code == 200
    text = re.sub(r"\s+", " ", r.text)
    assert "the same audio on both channels (read once, as mono)" in text and "0.97" in text
    assert "2 voice(s) told apart; manager found with confidence 0.62" in text and "uncertain" in text

"""The web pages and JSON API over a real (SQLite) database."""
from __future__ import annotations

import shutil

import pytest
from fastapi.testclient import TestClient

from config.settings import Settings
from models.db import session_factory
from pipeline.store import store_tagged
from tests.test_report import call


@pytest.fixture
def client(tmp_path, shared_dir):
    rec = tmp_path / "recordings"
    rec.mkdir()
    wav = shutil.copy(shared_dir / "audio" / "real" / "jfk_8k.wav", rec / "a1.wav")
    s = Settings(home=str(tmp_path), recordings_dir=str(rec))
    sessions = session_factory(s.db_url)
    with sessions.begin() as db:
        a1 = call("a1", "anna", objections=[("price", False, 20)], flags=["unanswered_objection"], lead_min=5)
        store_tagged(db, a1.model_copy(update={"recording_url": f"file://{wav}"}))
        store_tagged(db, call("a2", "anna", objections=[("think", False, 30)], flags=["long_monologue"], day=1))
        store_tagged(db, call("b1", "bob", objections=[("price", True, 20)]))
        store_tagged(db, call("b2", "bob", flags=["long_monologue"], day=2))
    from web.app import create_app
    return TestClient(create_app(s))


def test_pages_render_what_the_reports_say(client):
    r = client.get("/")
    assert r.status_code == 200 and "Anna" in r.text and "objection_handling" in r.text
    r = client.get("/managers/anna")
    assert r.status_code == 200 and "Flagged calls" in r.text and "a2" in r.text
    assert client.get("/managers/nobody").status_code == 404
    r = client.get("/calls/a1")
    assert r.status_code == 200 and "objection price" in r.text and "not answered" in r.text
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
    r = client.post("/calls/a2/reviews", data={"flag": "long_monologue", "verdict": "disagree",
                                               "comment": "it was a demo", "next": "/flagged"},
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/flagged"
    assert client.get("/flagged").text.count('name="verdict" value="agree"') == 2  # reviewed ones leave the queue
    flagged = client.get("/api/flagged").json()["flagged"]
    assert [f["review"] for f in flagged if f["call_id"] == "a2"] == ["disagree"]
    assert client.post("/calls/b1/reviews", data={"flag": "long_monologue", "verdict": "agree"}).status_code == 400
    r = client.post("/calls/a1/reviews", data={"flag": "unanswered_objection", "verdict": "agree",
                                               "next": "https://evil.example"}, follow_redirects=False)
    assert r.headers["location"] == "/flagged"  # never an open redirect


def test_audio_is_served_only_from_allowed_dirs_with_ranges(client):
    r = client.get("/calls/a1/audio", headers={"Range": "bytes=0-99"})
    assert r.status_code == 206 and len(r.content) == 100
    assert client.get("/calls/a2/audio").status_code == 404  # file:///rec/a2.wav is not in the allowed dirs

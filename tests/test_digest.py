"""The evening digest: "yesterday" in the company's time zone, calls and leads per manager, hot leads missed,
flagged calls waiting, the biggest gap; text and escaped HTML; mailed through a real SMTP server on loopback
(STARTTLS with a throwaway certificate, a login); the /digest page scoped to the user like /funnel."""
from __future__ import annotations

import re
import ssl
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from callqa import digest as cd
from config.settings import Settings
from models.db import session_factory
from models.events import STEPS, CallTagged
from pipeline import accounts
from pipeline.digest import build_digest, window
from pipeline.store import record_review
from tests.helpers import run_cli
from tests.smtp_server import SmtpServer, self_signed
from tests.test_funnel import apply, lead
from tests.test_funnel import call as funnel_call

MSK = ZoneInfo("Europe/Moscow")
NOW = datetime(2026, 3, 3, 0, 10, tzinfo=timezone.utc)          # 03:10 in Moscow on 3 March
EVIL = "Anna <script>alert(1)</script> & Co"


def call(cid, phone, at, manager, team="north", flags=(), closing=True):
    base = funnel_call(cid, phone, at, manager=manager, team=team).model_dump(mode="json")
    steps = {s: {"present": s != "closing" or closing, "quality": "good"} for s in STEPS}
    return CallTagged.model_validate({**base, "steps": steps, "furthest_step": "closing" if closing else "presentation",
                                      "manager_name": EVIL if manager == "anna" else manager.title(),
                                      "flags": [{"code": c, "detail": f"<i>{c}</i> here", "at": 12.5} for c in flags]})


def fill(sessions):
    """2 March in Moscow runs from 1 March 21:00 to 2 March 21:00 UTC."""
    with sessions.begin() as db:
        for item in [
            lead("LA", ["+79120000001"], datetime(2026, 3, 1, 21, 50, tzinfo=timezone.utc), manager="anna"),
            call("a1", "+79120000001", datetime(2026, 3, 1, 22, 0, tzinfo=timezone.utc), "anna",
                 flags=["unanswered_objection"]),                                  # 01:00 on 2 March in Moscow
            call("a0", "+79120000009", datetime(2026, 3, 2, 21, 30, tzinfo=timezone.utc), "anna",
                 flags=["long_monologue"]),                                        # 00:30 on 3 March in Moscow
            lead("LB", ["+79120000002"], datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc), manager="bob"),
            call("b1", "+79120000002", datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc), "bob",
                 flags=["long_monologue"], closing=False),                          # an hour after its hot lead
            lead("LC", ["+79120000003"], datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc), manager="anna"),  # never called
            lead("LD", ["+79120000004"], datetime(2026, 3, 2, 8, 0, tzinfo=timezone.utc), temperature="cold",
                 manager="cat", team="south"),
            call("c1", "+79120000005", datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc), "cat", team="south"),
        ]:
            apply(db, item)
        record_review(db, "b1", "long_monologue", "agree", None, "hana", at=12.5)


@pytest.fixture
def db(tmp_path):
    url = f"sqlite:///{tmp_path / 'digest.db'}"
    sessions = session_factory(url)
    fill(sessions)
    return url, sessions


def test_yesterday_is_the_company_day():
    w = window("yesterday", MSK, NOW)
    assert (w.since, w.until, w.label) == (datetime(2026, 3, 2, tzinfo=MSK), datetime(2026, 3, 3, tzinfo=MSK), "2026-03-02")
    assert w.since == datetime(2026, 3, 1, 21, 0, tzinfo=timezone.utc)
    w = window("yesterday", timezone.utc, NOW)   # the same instant is already 3 March in UTC too, but 00:10
    assert w.label == "2026-03-02" and w.since == datetime(2026, 3, 2, tzinfo=timezone.utc)
    late = datetime(2026, 3, 2, 22, 0, tzinfo=timezone.utc)   # 01:00 on 3 March in Moscow, 22:00 on 2 March in UTC
    assert window("yesterday", MSK, late).label == "2026-03-02"
    assert window("yesterday", timezone.utc, late).label == "2026-03-01"
    today = window("today", MSK, NOW)
    assert today.since == datetime(2026, 3, 3, tzinfo=MSK) and today.until == NOW
    since = window("2026-02-25", MSK, NOW)
    assert since.since == datetime(2026, 2, 25, tzinfo=MSK) and since.label == "2026-02-25 – 2026-03-03"
    with pytest.raises(ValueError):
        window("2026-04-01", MSK, NOW)
    with pytest.raises(ValueError):
        window("last tuesday", MSK, NOW)


def test_digest_figures(db_url):
    sessions = session_factory(db_url)
    fill(sessions)
    with sessions() as s:
        d = build_digest(s, window("yesterday", MSK, NOW), tz=MSK, now=NOW, min_calls=1, min_step_calls=1)
    rows = {r["manager_id"]: r for r in d["managers"]}
    assert list(rows) == ["anna", "bob", "cat"]            # a0 (3 March in Moscow) is not in 2 March
    assert (rows["anna"]["calls"], rows["anna"]["leads"], rows["anna"]["hot_leads"], rows["anna"]["hot_missed"]) == \
        (1, 2, 2, 1)
    assert (rows["bob"]["calls"], rows["bob"]["hot_missed"], rows["cat"]["leads"], rows["cat"]["hot_leads"]) == (1, 1, 1, 0)
    assert rows["anna"]["manager_name"] == EVIL and d["totals"]["calls"] == 3 and d["totals"]["hot_missed"] == 2
    missed = {f["lead_id"]: f["first_call_delay_min"] for f in d["missed_hot_leads"]}
    assert missed == {"LB": 60.0, "LC": None}
    assert d["missed_hot_leads"][0]["created_at"] == "2026-03-02T12:00+03:00"   # shown in Moscow time
    fl = d["flagged"]
    assert (fl["in_period"], fl["calls"], fl["in_queue"]) == (1, 1, 2)   # b1's flag is reviewed; a0's is a day later
    assert fl["rows"][0]["call_id"] == "a1" and fl["rows"][0]["flag"] == "unanswered_objection"
    assert d["gap"]["weakest"]["manager_id"] == "bob" and d["gap"]["weakest"]["step"] == "closing"
    assert d["gap"]["drop"] == {"from": "presentation", "to": "closing", "from_calls": 3, "to_calls": 2,
                                "lost_share": 0.333, "calls": 3}
    with sessions() as s:   # the same night in UTC: 2 March there holds a0, not a1
        utc = build_digest(s, window("yesterday", timezone.utc, NOW), now=NOW)
        north = build_digest(s, window("yesterday", MSK, NOW), tz=MSK, now=NOW, teams=frozenset({"north"}),
                             manager_id="bob", include_flagged=False)
    assert {r["manager_id"]: r["calls"] for r in utc["managers"]}["anna"] == 1 and utc["flagged"]["rows"][0]["call_id"] == "a0"
    assert [r["manager_id"] for r in north["managers"]] == ["bob"] and north["flagged"] is None
    assert [f["lead_id"] for f in north["missed_hot_leads"]] == ["LB"]


def test_text_and_html_renderings_escape_what_users_typed(db):
    _, sessions = db
    with sessions() as s:
        d = build_digest(s, window("yesterday", MSK, NOW), tz=MSK, now=NOW, min_calls=1, min_step_calls=1)
    text = cd.render_text(d)
    assert "callqa digest: 2026-03-02" in text and "Hot leads not called within 15 min" in text
    assert "LC, " in text and "not called" in text and "called after 60 min" in text
    assert "Biggest drop: presentation -> closing: 2 of 3 calls went on (33% lost)" in text
    html = cd.render_html(d, "https://qa.example.com")
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; Co" in html
    assert "&lt;i&gt;unanswered_objection&lt;/i&gt; here" in html
    assert 'href="https://qa.example.com/calls/a1"' in html and 'href="https://qa.example.com/managers/bob"' in html
    assert "<a " not in cd.render_html(d)   # no public address: no links to nowhere


# ---- the command and the e-mail --------------------------------------------------------------------

def env_for(url, **extra):
    return {"CALLQA_DATABASE_URL": url, "CALLQA_TIMEZONE": "Europe/Moscow", "CALLQA_MIN_CALLS": "1",
            "CALLQA_MIN_STEP_CALLS": "1", **extra}


def test_cli_prints_text_and_html_in_the_company_time_zone(db):
    url, _ = db
    r = run_cli("digest", "--since", "2026-03-02", env=env_for(url))
    assert r.returncode == 0, r.stderr
    assert "Period: 2026-03-02 – " in r.stdout
    # from 2 March 00:00 in Moscow: a1 (01:00 there) and a0, lead LA (00:50 there) and LC
    assert re.search(r"^Anna <script>.*\s2\s+0\s+2\s+2\s+1$", r.stdout, re.M), r.stdout
    assert "Weakest step: Bob, closing: 67 points below the team over 1 call\n" in r.stdout
    r_utc = run_cli("digest", "--since", "2026-03-02", env=env_for(url, CALLQA_TIMEZONE="UTC"))
    assert re.search(r"^Anna <script>.*\s1\s+0\s+1\s+1\s+1$", r_utc.stdout, re.M), r_utc.stdout
    assert "a1 " not in r_utc.stdout and "a0 " in r_utc.stdout     # in UTC a1 and LA were on 1 March
    r = run_cli("digest", "--since", "2026-03-02", "--format", "html", env=env_for(url))
    assert r.returncode == 0 and r.stdout.startswith("<!doctype html>") and "&lt;script&gt;" in r.stdout
    r = run_cli("digest", "--since", "someday", env=env_for(url))
    assert r.returncode == 2 and "--since" in r.stderr and "YYYY-MM-DD" in r.stderr
    r = run_cli("digest", "--send", env=env_for(url))
    assert r.returncode == 2 and "CALLQA_SMTP_HOST" in r.stderr and "CALLQA_SMTP_TO" in r.stderr


@pytest.fixture
def smtp(tmp_path):
    cert, key = self_signed(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    server = SmtpServer(tls=ctx, users={"digest@example.com": "s3cret pass"}).start()
    yield server, cert
    server.stop()


def test_cli_sends_the_digest_over_starttls_with_a_login(db, smtp):
    url, _ = db
    server, cert = smtp
    smtp_env = {"CALLQA_SMTP_HOST": "127.0.0.1", "CALLQA_SMTP_PORT": str(server.port),
                "CALLQA_SMTP_USER": "digest@example.com", "CALLQA_SMTP_PASSWORD": "s3cret pass",
                "CALLQA_SMTP_FROM": "callqa@example.com", "CALLQA_SMTP_TO": "head@example.com, coo@example.com",
                "CALLQA_WEB_URL": "https://qa.example.com/", "SSL_CERT_FILE": str(cert)}
    r = run_cli("digest", "--since", "2026-03-02", "--send", env=env_for(url, **smtp_env))
    assert r.returncode == 0, r.stderr
    assert "sent to head@example.com, coo@example.com" in r.stdout
    [got] = server.received
    assert got.tls and got.user == "digest@example.com" and got.mail_from == "callqa@example.com"
    assert got.rcpt_to == ["head@example.com", "coo@example.com"]
    msg = got.message
    assert msg["Subject"].startswith("callqa digest: 2026-03-02") and msg.get_content_type() == "multipart/alternative"
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert "Calls and leads per manager" in text and EVIL in text
    assert "&lt;script&gt;" in html and "<script>alert" not in html and 'href="https://qa.example.com/calls/a1"' in html
    # a wrong password: not sent, and said so
    r = run_cli("digest", "--since", "2026-03-02", "--send",
                env=env_for(url, **{**smtp_env, "CALLQA_SMTP_PASSWORD": "wrong"}))
    assert r.returncode == 1 and "refused the login" in r.stderr and "CALLQA_SMTP_PASSWORD" in r.stderr
    assert len(server.received) == 1


def test_send_refuses_a_server_without_starttls_and_reports_refused_recipients(db):
    _, sessions = db
    plain = SmtpServer(refuse={"gone@example.com"}).start()
    try:
        s = Settings(smtp_host="127.0.0.1", smtp_port=plain.port, smtp_from="callqa@example.com",
                     smtp_to="head@example.com,gone@example.com", smtp_timeout_s=5)
        with sessions() as session:
            d = build_digest(session, window("yesterday", MSK, NOW), tz=MSK, now=NOW)
        with pytest.raises(cd.SendError, match="does not offer STARTTLS"):
            cd.send(s, d, cd.render_text(d), cd.render_html(d))
        assert plain.received == []
        relay = Settings(**{**s.__dict__, "smtp_starttls": False})
        assert cd.send(relay, d, cd.render_text(d), cd.render_html(d)) == ["head@example.com"]
        assert plain.received[0].rcpt_to == ["head@example.com"] and not plain.received[0].tls
        nobody = Settings(**{**relay.__dict__, "smtp_to": "gone@example.com"})
        with pytest.raises(cd.SendError, match="refused every recipient"):
            cd.send(nobody, d, "x", "<p>x</p>")
        down = Settings(**{**relay.__dict__, "smtp_port": 9})
        with pytest.raises(cd.SendError, match="cannot reach the SMTP server 127.0.0.1:9"):
            cd.send(down, d, "x", "<p>x</p>")
    finally:
        plain.stop()
    assert cd.check_smtp(Settings(smtp_host="h", smtp_from="f", smtp_to="t", smtp_user="u")).startswith(
        "CALLQA_SMTP_USER is set without CALLQA_SMTP_PASSWORD")


# ---- the web page, scoped like /funnel -------------------------------------------------------------------

def test_digest_page_is_scoped_to_the_user(db, tmp_path):
    from fastapi.testclient import TestClient

    from tests.webapp import PASSWORD, USERS, login
    from web.app import create_app
    url, sessions = db
    with sessions.begin() as s:
        for name, (role, teams, mid) in USERS.items():
            accounts.add_user(s, name, role, PASSWORD, teams=teams, manager_id=mid)
    app = create_app(Settings(home=str(tmp_path), database_url=url, timezone="Europe/Moscow", min_calls_for_rank=1,
                              min_step_calls=1))

    def as_user(name):
        c = TestClient(app)
        assert login(c, name).status_code == 303
        return c

    assert TestClient(app).get("/digest", follow_redirects=False).status_code == 303
    hana = as_user("hana")          # head of north: anna and bob
    page = hana.get("/digest", params={"since": "2026-03-02"})
    assert page.status_code == 200 and 'id="digest-managers"' in page.text and 'id="digest-flagged"' in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text and "<script>alert" not in page.text
    assert "Cat" not in page.text and 'href="/calls/a1"' in page.text and "generic LB" in page.text and "generic LC" in page.text
    assert 'href="/digest"' in page.text     # in the menu
    anna = as_user("anna")          # a manager: her own rows, no review queue
    mine = anna.get("/digest", params={"since": "2026-03-02"}).text
    assert "generic LC" in mine and "generic LB" not in mine and "Bob" not in mine and 'id="digest-flagged"' not in mine
    sam = as_user("sam")            # head of south: cat only
    south = sam.get("/digest", params={"since": "2026-03-02"}).text
    assert "Cat" in south and "generic LB" not in south and "&lt;script&gt;" not in south
    assert hana.get("/digest", params={"since": "not a day"}).status_code == 400
    assert hana.get("/digest").status_code == 200   # yesterday (nothing then): still a page
    ru = TestClient(app, headers={"Accept-Language": "ru"})
    assert login(ru, "hana").status_code == 303
    assert "Сводка" in ru.get("/digest", params={"since": "2026-03-02"}).text

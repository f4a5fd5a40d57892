"""Who may see and do what in the web app and the JSON API, over a real database (SQLite and PostgreSQL):
logins, roles and teams, CSRF, open redirects, recordings, cookies, lock-out, API tokens, the audit log."""
from __future__ import annotations

import os

import jsonschema
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from models.tables import AuditEntry, Review
from tests.helpers import run_cli
from tests.webapp import PASSWORD, csrf_of, login, make_site


@pytest.fixture
def site(tmp_path, shared_dir, db_url):
    return make_site(db_url, tmp_path, shared_dir, login_max_failures=3)


def client_for(site, user=None, **kw) -> TestClient:
    from web.app import create_app
    c = TestClient(create_app(site[0]), **kw)
    if user:
        assert login(c, user).status_code == 303
    return c


def test_anonymous_gets_the_login_page_everywhere(site):
    from web.app import create_app
    app = create_app(site[0])
    c = TestClient(app)
    open_paths = {"/login", "/healthz"}
    checked = 0
    for route in app.routes:
        path = getattr(route, "path", "")
        if path in open_paths or path.startswith("/static") or not hasattr(route, "methods"):
            continue
        url = path.replace("{call_id}", "a1").replace("{manager_id}", "anna")
        for method in route.methods - {"HEAD"}:
            r = c.request(method, url, follow_redirects=False)
            if path.startswith("/api/"):
                assert r.status_code == 401 and "Bearer" in r.headers["www-authenticate"], (method, path)
            else:
                assert r.status_code == 303 and r.headers["location"].startswith("/login?next="), (method, path)
            checked += 1
    assert checked >= 14
    r = c.get("/calls/a1?x=1")
    assert r.status_code == 200 and 'name="password"' in r.text  # followed to the login form
    assert c.get("/healthz").status_code == 200


def test_session_cookie_flags_and_logout(site):
    c = client_for(site)
    r = login(c, "hana")
    cookie = r.headers["set-cookie"]
    assert "callqa_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")
    assert "Secure" not in cookie  # plain http: a Secure cookie would never come back
    c2 = client_for(site, base_url="https://callqa.example")
    cookie = login(c2, "hana").headers["set-cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie
    # a forged or altered cookie is nobody
    value = c.cookies.get("callqa_session")
    forged = TestClient(c.app, cookies={"callqa_session": value[:-1] + ("0" if value[-1] != "0" else "1")})
    assert forged.get("/", follow_redirects=False).status_code == 303
    # logging out ends the session on the server: the old cookie no longer works
    page = c.get("/")
    assert c.post("/logout", data={"csrf_token": csrf_of(page.text)}, follow_redirects=False).status_code == 303
    replay = TestClient(c.app, cookies={"callqa_session": value})
    assert replay.get("/", follow_redirects=False).status_code == 303


def test_wrong_passwords_lock_the_user_out(site):
    c = client_for(site)
    for _ in range(3):
        r = login(c, "hana", "wrong password")
        assert r.status_code == 401 and "Wrong user name or password" in r.text and "callqa_session" not in c.cookies
    r = login(c, "hana")  # the right password, too late
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0 and "callqa users passwd" in r.text
    assert login(c, "tom").status_code == 303  # another user is not locked
    assert login(c, "nobody", "whatever1").status_code == 401  # unknown users look like wrong passwords
    with site[1].begin() as db:
        from pipeline.accounts import set_password
        set_password(db, "hana", PASSWORD)  # an admin's reset lifts the lock
    assert login(client_for(site), "hana").status_code == 303


def test_csrf_token_required_on_every_form(site):
    c = client_for(site, "hana")
    data = {"flag": "unanswered_objection", "verdict": "agree", "next": "/flagged"}
    assert c.post("/calls/a1/reviews", data=data).status_code == 403
    other = client_for(site, "root")
    their_token = csrf_of(other.get("/").text)
    assert c.post("/calls/a1/reviews", data={**data, "csrf_token": their_token}).status_code == 403
    assert c.post("/logout", data={}, follow_redirects=False).status_code == 403
    assert c.post("/account", data={"language": "ru"}, follow_redirects=False).status_code == 403
    with site[1]() as db:
        assert db.scalars(select(Review)).all() == []
    # the login form has its own token (there is no session yet)
    fresh = client_for(site)
    r = fresh.post("/login", data={"username": "hana", "password": PASSWORD, "csrf_token": "x"},
                   follow_redirects=False)
    assert r.status_code == 403 and "callqa_session" not in fresh.cookies


@pytest.mark.parametrize("evil", ["//evil.example/x", "https://evil.example", "/\\evil.example", "\\\\evil.example",
                                  "/\t/evil.example", "javascript:alert(1)", "http:evil.example"])
def test_no_open_redirect_after_login(site, evil):
    c = client_for(site)
    r = login(c, "hana", next=evil)
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert 'name="next" value="/"' in c.get("/login", params={"next": evil}).text
    r = login(client_for(site), "hana", next="/calls/a1?x=1#t=3")
    assert r.headers["location"] == "/calls/a1?x=1#t=3"


def test_roles_and_teams_scope_pages_api_and_recordings(site):
    anna, hana, sam, tom, root = (client_for(site, u) for u in ("anna", "hana", "sam", "tom", "root"))
    # a manager: their own calls only; another's call and recording are "not found", like a call that does not exist
    assert anna.get("/calls/a1").status_code == 200 and anna.get("/calls/a1/audio").status_code == 200
    for url in ("/calls/b1", "/calls/c1/audio", "/calls/c1", "/managers/bob", "/calls/nope"):
        assert anna.get(url).status_code == 404, url
    assert {m["manager_id"] for m in anna.get("/api/managers").json()["managers"]} == {"anna"}
    assert {f["manager_id"] for f in anna.get("/api/flagged").json()["flagged"]} == {"anna"}
    assert {m["manager_id"] for m in anna.get("/api/coaching").json()["coaching"]} == {"anna"}
    assert "Bob" not in anna.get("/").text and "bob" not in anna.get("/coaching.csv").text
    assert anna.get("/flagged").status_code == 403 and anna.get("/rules").status_code == 403
    r = anna.post("/calls/a1/reviews", data={"flag": "unanswered_objection", "verdict": "disagree",
                                             "csrf_token": csrf_of(anna.get("/calls/a1").text)})
    assert r.status_code == 403  # managers do not judge their own calls
    # heads see their teams: north for hana, south for sam
    assert hana.get("/calls/c1").status_code == 404 and hana.get("/calls/c1/audio").status_code == 404
    assert sam.get("/calls/c1").status_code == 200 and sam.get("/calls/a1/audio").status_code == 404
    assert {m["manager_id"] for m in hana.get("/api/managers").json()["managers"]} == {"anna", "bob"}
    assert {m["manager_id"] for m in sam.get("/api/managers", params={"team": "north"}).json()["managers"]} == set()
    r = hana.post("/calls/c1/reviews", data={"flag": "unanswered_objection", "verdict": "agree",
                                             "csrf_token": csrf_of(hana.get("/").text)})
    assert r.status_code == 404
    # a trainer sees the queue of their teams but gives no verdicts
    page = tom.get("/flagged")
    assert page.status_code == 200 and 'value="agree"' not in page.text and "c1" not in page.text
    r = tom.post("/calls/a1/reviews", data={"flag": "unanswered_objection", "verdict": "agree",
                                            "csrf_token": csrf_of(page.text)})
    assert r.status_code == 403
    assert {m["manager_id"] for m in root.get("/api/managers").json()["managers"]} == {"anna", "bob", "cat"}


def test_a_verdict_is_the_logged_in_users_and_is_audited(site):
    hana = client_for(site, "hana")
    page = hana.get("/calls/a1")
    r = hana.post("/calls/a1/reviews", data={"flag": "unanswered_objection", "verdict": "agree", "reviewer": "ceo",
                                             "comment": "<b>yes</b>", "csrf_token": csrf_of(page.text),
                                             "next": "/calls/a1"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/calls/a1"
    with site[1]() as db:
        assert [(v.reviewer, v.verdict) for v in db.scalars(select(Review))] == [("hana", "agree")]
        audit = db.scalars(select(AuditEntry).where(AuditEntry.action == "review")).all()
    assert [(a.username, a.call_id, a.detail["verdict"]) for a in audit] == [("hana", "a1", "agree")]
    assert "&lt;b&gt;yes&lt;/b&gt;" in hana.get("/flagged", params={"all": 1}).text


def test_recordings_cannot_leave_the_recordings_directories(site, tmp_path):
    s, sessions = site
    from models.tables import Call
    outside = tmp_path / "secret.wav"
    outside.write_bytes(b"RIFF secret")
    (tmp_path / "recordings" / "link.wav").symlink_to(outside)
    root = client_for(site, "root")
    for url in (f"file://{tmp_path}/recordings/../secret.wav", f"file://{tmp_path}/recordings/link.wav",
                "file:///etc/passwd", f"file://{tmp_path}/recordings/%2e%2e/secret.wav"):
        with sessions.begin() as db:
            db.get(Call, "b1").recording_url = url
        assert root.get("/calls/b1/audio").status_code == 404, url
    for url in ("/calls/..%2F..%2Fetc%2Fpasswd/audio", "/calls/%2e%2e/audio", "/calls/a1/../../etc/passwd"):
        r = root.get(url)
        assert r.status_code == 404 and b"root:" not in r.content, url


def test_transcript_script_is_inert(site):
    from pipeline.store import store_tagged
    from tests.test_report import call
    ev = call("x9", "anna")
    ev.segments[0].text = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    with site[1].begin() as db:
        store_tagged(db, ev)
    r = client_for(site, "anna").get("/calls/x9")
    assert r.status_code == 200 and "<script>alert" not in r.text and "<img src=x" not in r.text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in r.text


def test_api_tokens_carry_their_users_scope(site):
    s = site[0]
    env = {"CALLQA_DATABASE_URL": s.db_url, "CALLQA_HOME": s.home}
    r = run_cli("users", "token", "anna", "--label", "bi", env=env)
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip().splitlines()[-1]
    c = client_for(site)
    auth = {"Authorization": f"Bearer {token}"}
    assert {m["manager_id"] for m in c.get("/api/managers", headers=auth).json()["managers"]} == {"anna"}
    assert c.get("/calls/a1", headers=auth, follow_redirects=False).status_code == 303  # pages need a login
    bad = c.get("/api/managers", headers={"Authorization": "Bearer " + token[:-2] + "xx"})
    assert bad.status_code == 401 and "callqa users token" in bad.json()["detail"]
    assert run_cli("users", "disable", "anna", env=env).returncode == 0
    assert c.get("/api/managers", headers=auth).status_code == 401


def _validator(spec: dict, path: str):
    schema = spec["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    return jsonschema.Draft202012Validator({**schema, "components": spec["components"]},
                                           format_checker=jsonschema.FormatChecker())


def test_the_json_api_answers_what_its_openapi_document_says(site):
    root = client_for(site, "root")
    spec = root.get("/api/openapi.json").json()
    paths = [p for p in spec["paths"] if p.startswith("/api/")]
    assert sorted(paths) == ["/api/coaching", "/api/flagged", "/api/funnel", "/api/managers", "/api/step-impact"]
    for path in paths:
        assert spec["paths"][path]["get"]["responses"]["401"]
        body = root.get(path).json()
        assert body[path.removeprefix("/api/").replace("-", "_")], path
        _validator(spec, path).validate(body)
    assert root.get("/api/docs").status_code == 200


def test_users_cli(site):
    s = site[0]
    env = {"CALLQA_DATABASE_URL": s.db_url, "CALLQA_HOME": s.home}
    r = run_cli("users", "add", "lena", "--role", "head", "--team", "north", "--language", "ru", env=env)
    assert r.returncode == 0 and "password (shown once): " in r.stdout
    password = r.stdout.split("password (shown once): ")[1].strip()
    assert login(client_for(site), "lena", password).status_code == 303
    r = run_cli("users", "add", "max", "--role", "manager", "--password-stdin", env=env, input="short\n")
    assert r.returncode == 2 and "--manager-id" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("users", "add", "max", "--role", "manager", "--manager-id", "bob", "--password-stdin", env=env,
                input="short\n")
    assert r.returncode == 2 and "at least 8 characters" in r.stderr
    r = run_cli("users", "add", "x", "--role", "trainer", env=env)
    assert r.returncode == 2 and "--team" in r.stderr
    r = run_cli("users", "add", "hana", "--role", "admin", env=env)
    assert r.returncode == 2 and "exists already" in r.stderr
    r = run_cli("users", "passwd", "lena", "--password-stdin", env=env, input="a new long password\n")
    assert r.returncode == 0 and "shown once" not in r.stdout
    assert login(client_for(site), "lena", "a new long password").status_code == 303
    assert run_cli("users", "disable", "lena", env=env).returncode == 0
    assert login(client_for(site), "lena", "a new long password").status_code == 401
    r = run_cli("users", "list", env=env)
    assert r.returncode == 0 and "lena" in r.stdout and "DISABLED" in r.stdout and "north" in r.stdout
    r = run_cli("users", "passwd", "nobody", env=env)
    assert r.returncode == 2 and "no user 'nobody'" in r.stderr


def test_language_labels_charts_and_time_zone(site):
    s, sessions = site
    with sessions.begin() as db:
        from models.tables import User
        db.scalar(select(User).where(User.username == "hana")).timezone = "Asia/Vladivostok"
    hana = client_for(site, "hana", headers={"Accept-Language": "ru-RU,ru;q=0.9,en;q=0.8"})
    r = hana.get("/managers/anna")
    assert "Выявление потребностей" in r.text and "Работа с возражениями" in r.text and "Менеджеры" in r.text
    assert "2026-11-02 20:00" in r.text  # 10:00 UTC in Vladivostok
    assert r.text.count('<svg class="chart"') == 2 and 'class="trend"' in r.text and 'data-step="closing"' in r.text
    assert '<svg class="chart"' in hana.get("/").text  # the team's step funnel
    en = client_for(site, "tom", headers={"Accept-Language": "en-GB,en;q=0.9"})
    assert "Needs discovery" in en.get("/managers/anna").text
    page = en.get("/")
    en.post("/account", data={"csrf_token": csrf_of(page.text), "language": "ru", "next": "//evil"})
    assert "Выявление потребностей" in en.get("/managers/anna").text  # the user's choice beats the browser


def test_an_old_database_upgrades_to_accounts(db_url):
    from alembic import command
    from sqlalchemy import create_engine, inspect
    from models.db import alembic_config, migrate
    engine = create_engine(db_url)
    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0003")
    assert "users" not in inspect(engine).get_table_names()
    migrate(engine)
    assert {"users", "user_sessions", "api_tokens", "login_failures", "audit_log"} <= set(
        inspect(engine).get_table_names())
    engine.dispose()


def test_the_signing_key_comes_from_the_setting_or_a_private_file(tmp_path):
    from pipeline.accounts import AccountError, signing_key
    k1 = signing_key("", tmp_path)
    assert k1 == signing_key("", tmp_path) and len(k1) >= 48
    assert oct(os.stat(tmp_path / "secret_key").st_mode & 0o777) == "0o600"
    assert signing_key("x" * 40, tmp_path) == b"x" * 40
    with pytest.raises(AccountError, match="too short"):
        signing_key("short", tmp_path)

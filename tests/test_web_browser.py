"""The web app in a real headless Chromium (Playwright driving Debian's `chromium`), over a real server and
database: a head reviews a call, a manager cannot reach another's call, anonymous people get the login page,
a POST without the CSRF token is refused. Screenshots of every page go to var/screenshots/, or to
CALLQA_SCREENSHOTS_DIR (CALLQA_SCREENSHOTS_DIR=docs/screenshots refreshes the ones the README shows).

Needs `apt-get install chromium` (.ci/run does it) and the `playwright` package; Playwright's own browser
download is not used. CALLQA_CHROMIUM names another Chromium binary.
"""
from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import wave
from pathlib import Path

import pytest
from sqlalchemy import select

from models.tables import Call, Review
from tests.helpers import REPO
from tests.webapp import PASSWORD, make_site

CHROMIUM = os.environ.get("CALLQA_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
# var/screenshots by default (ignored by git); CALLQA_SCREENSHOTS_DIR=docs/screenshots refreshes the README's
SHOTS = Path(os.environ.get("CALLQA_SCREENSHOTS_DIR") or REPO / "var" / "screenshots")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _two_minute_wav(path: Path) -> None:
    """A 120 s recording (a quiet tone), long enough to seek to every moment of the test calls."""
    import math
    rate = 8000
    second = b"".join(int(2000 * math.sin(2 * math.pi * 440 * i / rate)).to_bytes(2, "little", signed=True)
                      for i in range(rate))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(second * 120)


@pytest.fixture
def server(tmp_path, shared_dir, db_url):
    import uvicorn

    from web.app import create_app
    if not CHROMIUM:
        pytest.fail("no chromium: apt-get install chromium (or set CALLQA_CHROMIUM to a Chromium binary)")
    s, sessions = make_site(db_url, tmp_path, shared_dir)
    long_wav = tmp_path / "recordings" / "a1-long.wav"
    _two_minute_wav(long_wav)
    with sessions.begin() as db:
        db.get(Call, "a1").recording_url = long_wav.as_uri()
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(s), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the web server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", sessions
    finally:
        srv.should_exit = True
        thread.join(10)


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"],
                              headless=True)
        try:
            yield b
        finally:
            b.close()


def _shot(page, name: str, db: str) -> None:
    if db != "sqlite":  # one set of pictures is enough; both databases run the same steps
        return
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _login(page, base: str, user: str, path: str = "/") -> None:
    page.goto(base + path)
    assert page.url.startswith(base + "/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", PASSWORD)
    page.click("form.login button[type=submit]")
    page.wait_for_url(base + path)


def test_a_head_reviews_a_call_in_the_browser(server, browser, request):
    base, sessions = server
    db = request.node.callspec.params["db_url"]
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
    page = ctx.new_page()
    # anonymous: the login page
    r = page.goto(base + "/flagged")
    assert r.ok and page.url.startswith(base + "/login?next=%2Fflagged") and page.locator("input[name=password]").count()
    _shot(page, "login", db)
    page.fill("input[name=username]", "hana")
    page.fill("input[name=password]", "not the password")
    page.click("form.login button[type=submit]")
    assert "Wrong user name or password" in page.locator("#login-error").inner_text()
    page.fill("input[name=username]", "hana")
    page.fill("input[name=password]", PASSWORD)
    page.click("form.login button[type=submit]")
    page.wait_for_url(base + "/flagged")
    assert "hana" in page.locator("#whoami").inner_text()
    _shot(page, "review-queue", db)
    page.click("a.call-link:text-is('a1')")
    page.wait_for_url(base + "/calls/a1*")
    page.wait_for_function("document.getElementById('player').readyState >= 1")
    # click a turn's time: the player jumps there
    page.click("#seg-1 a.seek")
    page.wait_for_function("Math.abs(document.getElementById('player').currentTime - 20) < 1.5")
    assert page.url.endswith("#t=20.0") or page.url.endswith("#t=20")
    page.evaluate("document.getElementById('player').pause()")
    _shot(page, "call", db)
    # a verdict, stored under the logged-in user
    form = page.locator("form[action='/calls/a1/reviews']").first
    form.locator("input[name=comment]").fill("missed the price objection")
    form.locator("button[value=agree]").click()
    page.wait_for_url(base + "/calls/a1")
    assert page.locator(".verdict").first.inner_text() == "agree"
    with sessions() as s:
        got = [(v.call_id, v.flag_code, v.verdict, v.reviewer, v.comment) for v in s.scalars(select(Review))]
    assert got == [("a1", "unanswered_objection", "agree", "hana", "missed the price objection")]
    # a POST without the CSRF token (as another site's form would send) is refused
    status = page.evaluate("""async () => (await fetch('/calls/a1/reviews', {method: 'POST',
        body: new URLSearchParams({flag: 'unanswered_objection', verdict: 'disagree'})})).status""")
    assert status == 403
    with sessions() as s:
        assert len(s.scalars(select(Review)).all()) == 1
    for path, name in (("/", "managers"), ("/managers/anna", "manager"), ("/coaching", "coaching"),
                       ("/rules", "rules")):
        assert page.goto(base + path).ok, path
        _shot(page, name, db)
    ctx.close()


def test_a_manager_gets_404_for_another_managers_call(server, browser, request):
    base, _ = server
    db = request.node.callspec.params["db_url"]
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, locale="ru-RU",
                              extra_http_headers={"Accept-Language": "ru-RU,ru;q=0.9"})
    page = ctx.new_page()
    _login(page, base, "anna", "/calls/a1")
    assert "Работа с возражениями" in page.content()
    _shot(page, "call-ru-manager", db)
    assert page.goto(base + "/calls/b1").status == 404
    assert page.goto(base + "/calls/b1/audio").status == 404
    assert ctx.request.get(base + "/calls/c1/audio").status == 404
    assert ctx.request.get(base + "/calls/a1/audio", headers={"Range": "bytes=0-1023"}).status == 206
    assert page.goto(base + "/managers/anna").ok
    _shot(page, "manager-ru", db)
    ctx.close()

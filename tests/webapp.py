"""A callqa web site over a real database, with one user of each role, for the web tests."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from config.settings import Settings
from models.db import session_factory
from pipeline import accounts
from pipeline.store import store_tagged
from tests.test_report import call

PASSWORD = "correct horse 11"
# name -> (role, teams, manager_id)
USERS = {"root": ("admin", [], None), "hana": ("head", ["north"], None), "tom": ("trainer", ["north"], None),
         "anna": ("manager", [], "anna"), "bob": ("manager", [], "bob"), "sam": ("head", ["south"], None)}


def make_site(db_url: str, home: Path, shared_dir: Path, **settings):
    """Calls a1, a2 (anna), b1, b2 (bob) in team north, c1 (cat) in south; a1 and c1 have recordings."""
    rec = home / "recordings"
    rec.mkdir(parents=True, exist_ok=True)
    wav = shutil.copy(shared_dir / "audio" / "real" / "jfk_8k.wav", rec / "a1.wav")
    wav_c = shutil.copy(shared_dir / "audio" / "real" / "jfk_8k.wav", rec / "c1.wav")
    s = Settings(home=str(home), recordings_dir=str(rec), database_url=db_url, **settings)
    sessions = session_factory(s.db_url)
    with sessions.begin() as db:
        a1 = call("a1", "anna", objections=[("price", False, 20)], flags=["unanswered_objection"], lead_min=5)
        store_tagged(db, a1.model_copy(update={"recording_url": f"file://{wav}"}))
        store_tagged(db, call("a2", "anna", objections=[("think", False, 30)], flags=["long_monologue"], day=1))
        store_tagged(db, call("b1", "bob", objections=[("price", True, 20)]))
        store_tagged(db, call("b2", "bob", flags=["long_monologue"], day=8))
        c1 = call("c1", "cat", objections=[("price", False, 10)], flags=["unanswered_objection"], team="south")
        store_tagged(db, c1.model_copy(update={"recording_url": f"file://{wav_c}"}))
        for name, (role, teams, mid) in USERS.items():
            accounts.add_user(db, name, role, PASSWORD, teams=teams, manager_id=mid)
    return s, sessions


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "no CSRF token in the page"
    return m.group(1)


def login(client, username: str, password: str = PASSWORD, next: str = "/"):
    """Log in through the real form (its CSRF cookie and field); the answer to the POST."""
    form = client.get("/login", params={"next": next})
    return client.post("/login", data={"username": username, "password": password, "csrf_token": csrf_of(form.text),
                                       "next": next}, follow_redirects=False)

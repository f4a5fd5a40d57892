"""CRM leads joined to calls by phone (any order, replay-safe), the funnel and the step impact."""
from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone

from sqlalchemy import func, select, text

from models.crm import DealClosed, LeadContact, LeadCreated, ProposalSent
from models.db import session_factory
from models.events import STEPS, CallTagged
from models.tables import CrmLeadCall, CrmLeadEvent
from pipeline.crm import join_phone, record_crm_event
from pipeline.funnel import diff_interval, funnel_rows, lead_facts, step_impact, wilson
from pipeline.queries import Scope
from pipeline.store import store_tagged

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


def call(call_id: str, phone: str | None, at: datetime, manager="m-anna", good=STEPS, team="north") -> CallTagged:
    return CallTagged.model_validate({
        "call_id": call_id, "manager_id": manager, "manager_name": manager.title(), "team_id": team,
        "client_number": phone, "recording_url": f"file:///r/{call_id}.wav", "language": "ru",
        "started_at": at.isoformat(), "duration_s": 60.0,
        "asr": {"engine": "faster-whisper", "model": "base", "compute_type": "int8", "audio_s": 60, "wall_s": 5},
        "segments": [{"speaker": "manager", "start": 0, "end": 2, "text": "добрый день"}],
        "steps": {s: {"present": True, "quality": "good" if s in good else "weak"} for s in STEPS},
        "furthest_step": "closing",
    })


def lead(lead_id: str, phones, created: datetime, temperature="hot", manager="m-anna", team="north") -> LeadCreated:
    return LeadCreated(event_id=f"generic:{lead_id}:created", lead_id=lead_id, phones=list(phones),
                       created_at=created, at=created, temperature=temperature, manager_id=manager,
                       manager_name=manager.title(), team_id=team, source="site")


def closed(lead_id: str, outcome: str, at: datetime, amount=100000.0) -> DealClosed:
    return DealClosed(event_id=f"generic:{lead_id}:{outcome}", lead_id=lead_id, outcome=outcome, at=at,
                      amount=amount if outcome == "won" else None, currency="RUB",
                      loss_reason="price" if outcome == "lost" else None)


def apply(session, item) -> None:
    """What the worker's agents do: store a call or record a CRM event, then join the phones they name."""
    if isinstance(item, CallTagged):
        r = store_tagged(session, item)
        phones = [r.client_phone] if r.client_phone else []
    else:
        phones = record_crm_event(session, item)
    for p in phones:
        join_phone(session, p)


def links(session) -> dict[str, str]:
    return dict(session.execute(select(CrmLeadCall.call_id, CrmLeadCall.lead_key)).all())


def story():
    """Two leads on one number a month apart, one call to each, a proposal, one deal won, one lost."""
    return [
        lead("L1", ["8 (912) 345-67-89"], T0),
        call("c1", "+7 912 345-67-89", T0 + timedelta(minutes=9)),
        ProposalSent(event_id="generic:L1:kp", lead_id="L1", at=T0 + timedelta(hours=2)),
        closed("L1", "won", T0 + timedelta(days=2)),
        lead("L2", ["89123456789"], T0 + timedelta(days=40)),
        call("c2", "89123456789", T0 + timedelta(days=40, minutes=50)),
        closed("L2", "lost", T0 + timedelta(days=41)),
        call("c3", "+7 999 000-00-00", T0 + timedelta(days=1)),   # nobody's lead
    ]


def test_join_is_the_same_in_any_order_and_on_replay(db_url):
    sessions = session_factory(db_url)
    items = story()
    expected = {"c1": "generic:L1", "c2": "generic:L2"}
    orders = [items, list(reversed(items))] + [list(p) for p in itertools.islice(
        itertools.permutations(items), 0, 5000, 997)]
    for order in orders:
        with sessions.begin() as s:
            for t in ("crm_lead_calls", "crm_lead_phones", "crm_lead_events", "crm_leads", "call_steps", "segments",
                      "calls", "managers"):
                s.execute(text(f"DELETE FROM {t}"))
        with sessions.begin() as s:
            for item in order:
                apply(s, item)
        with sessions() as s:
            assert links(s) == expected
    with sessions.begin() as s:   # everything delivered again: nothing added, nothing moved
        for item in items:
            apply(s, item)
    with sessions() as s:
        assert links(s) == expected
        assert s.scalar(select(func.count()).select_from(CrmLeadEvent)) == 5
        facts = {f.lead_id: f for f in lead_facts(s)}
    assert facts["L1"].outcome == "won" and facts["L1"].proposals == 1 and facts["L1"].calls == 1
    assert facts["L1"].first_call_delay_min == 9.0 and facts["L2"].first_call_delay_min == 50.0
    assert facts["L1"].furthest_step == "closing" and facts["L1"].steps_good == set(STEPS)
    assert facts["L2"].outcome == "lost" and facts["L2"].loss_reason == "price"


def test_join_window_contact_phones_and_a_changed_number(tmp_path):
    sessions = session_factory(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with sessions.begin() as s:
        apply(s, lead("L1", [], T0))                                       # no phone on the lead itself
        apply(s, call("early", "+79120000001", T0 - timedelta(minutes=30)))  # the call the lead was made from
        apply(s, call("late", "+79120000001", T0 + timedelta(days=31)))      # past the 30-day window
        assert links(s) == {}
        apply(s, LeadContact(event_id="c-1", lead_id="L1", phones=["8 912 000-00-01"]))
        assert links(s) == {"early": "generic:L1"}
        apply(s, call("early", "+79120000002", T0 - timedelta(minutes=30)))  # re-stored with another number
        assert links(s) == {}
        assert join_phone(s, "+79120000001", window=timedelta(days=40)) == {"late": "generic:L1"}


def test_funnel_figures_per_manager_and_team(db_url):
    sessions = session_factory(db_url)
    with sessions.begin() as s:
        for item in story():
            apply(s, item)
        apply(s, lead("L3", ["+7 912 111-11-11"], T0 + timedelta(days=3), manager="m-ivan"))   # hot, never called
        apply(s, lead("L4", ["+7 912 222-22-22"], T0 + timedelta(days=3), temperature="cold", manager="m-ivan"))
        apply(s, call("c4", "+7 912 222-22-22", T0 + timedelta(days=3, hours=5), manager="m-ivan"))
        apply(s, closed("L4", "won", T0 + timedelta(days=5), amount=50000))
    with sessions() as s:
        out = funnel_rows(s, now=T0 + timedelta(days=60))
        assert [m["manager_id"] for m in out["managers"]] == ["m-anna", "m-ivan"]
        anna, ivan = out["managers"]
        assert (anna["leads"], anna["hot_leads"], anna["hot_called_in_time"], anna["hot_missed"]) == (2, 2, 1, 1)
        assert anna["hot_in_time_share"] == 0.5 and anna["hot_median_delay_min"] == 29.5
        assert anna["calls_per_lead"] == 1.0 and anna["proposals_per_lead"] == 0.5
        assert anna["conversion"] == 0.5 and anna["revenue"] == {"RUB": 100000.0}
        assert (ivan["leads"], ivan["hot_leads"], ivan["hot_missed"], ivan["won"]) == (2, 1, 1, 1)
        assert out["teams"][0]["team_id"] == "north" and out["total"]["leads"] == 4 and out["total"]["won"] == 2
        # a hot lead whose 15 minutes are not up yet is not missed
        fresh = funnel_rows(s, now=T0 + timedelta(days=3, minutes=5))["managers"][1]
        assert fresh["hot_due"] == 0 and fresh["hot_missed"] == 0
        # scope: days and teams
        assert funnel_rows(s, Scope(since=T0 + timedelta(days=2)))["total"]["leads"] == 3
        assert funnel_rows(s, Scope(teams=frozenset({"south"})))["total"]["leads"] == 0


def test_step_impact_counts_interval_and_small_numbers(tmp_path):
    sessions = session_factory(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with sessions.begin() as s:
        # 30 leads: closing done well on 15 (12 won), weak on 15 (3 won); the other steps always good
        for i in range(30):
            phone = f"+7912{i:07d}"
            well = i < 15
            won = (i < 12) or (15 <= i < 18)
            apply(s, lead(f"L{i}", [phone], T0 + timedelta(hours=i), temperature="warm"))
            apply(s, call(f"c{i}", phone, T0 + timedelta(hours=i, minutes=20),
                          good=STEPS if well else [x for x in STEPS if x != "closing"]))
            apply(s, closed(f"L{i}", "won" if won else "lost", T0 + timedelta(days=3)))
        apply(s, lead("open", ["+79990000000"], T0))   # open leads are left out
    with sessions() as s:
        out = step_impact(s, min_leads=10)
    team = out["team"]
    closing = next(r for r in team["steps"] if r["step"] == "closing")
    assert (closing["leads_well"], closing["won_well"], closing["leads_not_well"], closing["won_not_well"]) == \
        (15, 12, 15, 3)
    assert closing["conversion_well"] == 0.8 and closing["conversion_not_well"] == 0.2
    assert closing["difference"] == 0.6 and closing["interval"][0] > 0.3 and closing["verdict"] == "costs_deals"
    assert closing["deals_lost"] == 9.0 and closing["money_lost"] == 900000.0
    assert team["costliest_step"] == "closing" and "closing costs the most deals" in team["conclusion"]
    greeting = next(r for r in team["steps"] if r["step"] == "greeting")
    assert greeting["verdict"] == "too_few" and "one side" in greeting["note"]
    [anna] = out["managers"]
    assert anna["closed_leads"] == 30
    with sessions() as s:   # the same with 10 leads a side needed and only 6 leads: said plainly
        small = step_impact(s, Scope(since=T0 + timedelta(hours=12), until=T0 + timedelta(hours=18)), min_leads=10)["team"]
    row = next(r for r in small["steps"] if r["step"] == "closing")
    assert small["closed_leads"] == 6 and row["verdict"] == "too_few" and "too few leads" in row["note"]
    assert small["costliest_step"] is None and small["conclusion"].startswith("Too few")


def test_intervals():
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and 0.15 < hi < 0.3
    lo, hi = diff_interval(12, 15, 3, 15)
    assert 0.25 < lo < 0.6 < hi < 0.85
    lo, hi = diff_interval(1, 2, 1, 2)
    assert lo < 0 < hi


# ---- the CLI ----------------------------------------------------------------------------------------

def test_report_funnel_and_step_impact_cli(tmp_path):
    import csv
    import io
    import json

    from tests.helpers import run_cli
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    env = {"CALLQA_DATABASE_URL": url}
    sessions = session_factory(url)
    r = run_cli("report", "funnel", env=env)
    assert r.returncode == 0 and "No CRM leads stored yet" in r.stdout
    with sessions.begin() as s:
        for item in story():
            apply(s, item)
    r = run_cli("report", "funnel", env=env)
    assert r.returncode == 0, r.stderr
    assert "Hot called in time" in r.stdout and "1/2 50%" in r.stdout and "100 000 RUB" in r.stdout
    data = json.loads(run_cli("report", "funnel", "--format", "json", env=env).stdout)["funnel"]
    assert data["managers"][0]["manager_id"] == "m-anna" and data["managers"][0]["leads"] == 2
    rows = list(csv.DictReader(io.StringIO(run_cli("report", "funnel", "--format", "csv", env=env).stdout)))
    assert [r["level"] for r in rows] == ["manager", "team", "total"] and rows[0]["revenue_RUB"] == "100000.0"
    r = run_cli("report", "step-impact", env=env)
    assert r.returncode == 0, r.stderr
    assert "Too few closed leads" in r.stdout and "Difference [90%]" in r.stdout
    data = json.loads(run_cli("report", "step-impact", "--format", "json", env=env).stdout)["step_impact"]
    assert [x["step"] for x in data["team"]["steps"]] == list(STEPS)
    rows = list(csv.DictReader(io.StringIO(run_cli("report", "step-impact", "--format", "csv", env=env).stdout)))
    assert len(rows) == 2 * len(STEPS) and rows[0]["scope"] == "team"
    r = run_cli("report", "funnel", "--since", "2026-04-01", env=env)   # only L2 (created 2026-04-11)
    assert r.returncode == 0 and json.loads(run_cli("report", "funnel", "--since", "2026-04-01", "--format", "json",
                                                    env=env).stdout)["funnel"]["total"]["leads"] == 1


# ---- the web page and the JSON API, login-scoped --------------------------------------------------

def test_funnel_page_and_api_are_scoped_to_the_user(tmp_path, shared_dir, db_url):
    from fastapi.testclient import TestClient

    from tests.webapp import login, make_site
    from web.app import create_app
    s, sessions = make_site(db_url, tmp_path, shared_dir)
    with sessions.begin() as db:
        for item in [lead("LA", ["+79120000001"], T0, manager="anna"),
                     call("la-1", "+79120000001", T0 + timedelta(minutes=5), manager="anna"),
                     closed("LA", "won", T0 + timedelta(days=1)),
                     lead("LB", ["+79120000002"], T0, manager="bob"),
                     lead("LC", ["+79120000003"], T0, manager="cat", team="south"),
                     closed("LC", "lost", T0 + timedelta(days=1))]:
            apply(db, item)
    app = create_app(s)

    def as_user(name):
        c = TestClient(app)
        assert login(c, name).status_code == 303
        return c

    anon = TestClient(app)
    assert anon.get("/api/funnel").status_code == 401 and anon.get("/api/step-impact").status_code == 401
    assert anon.get("/funnel", follow_redirects=False).status_code == 303
    hana = as_user("hana")      # head of north: anna and bob, not cat
    data = hana.get("/api/funnel").json()["funnel"]
    assert [m["manager_id"] for m in data["managers"]] == ["anna", "bob"] and data["total"]["leads"] == 2
    assert data["managers"][0]["hot_called_in_time"] == 1 and data["managers"][0]["revenue"] == {"RUB": 100000.0}
    impact = hana.get("/api/step-impact").json()["step_impact"]
    assert impact["team"]["closed_leads"] == 1 and [m["manager_id"] for m in impact["managers"]] == ["anna", "bob"]
    page = hana.get("/funnel")
    assert page.status_code == 200 and 'id="funnel-managers"' in page.text and "<svg" in page.text
    assert "Cat" not in page.text and "Too few closed leads" in page.text
    anna = as_user("anna")      # a manager: only her own leads
    assert [m["manager_id"] for m in anna.get("/api/funnel").json()["funnel"]["managers"]] == ["anna"]
    sam = as_user("sam")        # head of south
    assert [m["manager_id"] for m in sam.get("/api/funnel").json()["funnel"]["managers"]] == ["cat"]
    assert hana.get("/api/funnel", params={"since": "not a day"}).status_code == 400
    ru = TestClient(app, headers={"Accept-Language": "ru"})
    assert login(ru, "hana").status_code == 303
    assert "Горячим позвонили за 15 мин" in ru.get("/funnel").text

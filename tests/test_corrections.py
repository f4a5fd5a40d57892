"""People correct the tagger on the call page; `callqa retag` applies it, `callqa train` learns from it."""
from __future__ import annotations

import json
import re
import time
from datetime import timezone

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from models.events import CallTagged
from models.tables import AuditEntry, Call, CallStep, Correction, ManagerStageStat, SegmentRow
from pipeline.corrections import CorrectionError, corrected_dialogues, overrides_for, record_correction
from pipeline.tagging import load_rules
from pipeline.tagging.call import Overrides
from pipeline.tagging.retag import retag
from tests.test_retag import long_call
from tests.webapp import csrf_of, login, make_site


def test_overrides_win_over_the_rules():
    ev = long_call()
    plain = retag(ev, load_rules())
    assert plain.utterance_tags[2].step == "presentation"
    fixed = retag(ev, load_rules(), overrides=Overrides(steps={2: "needs_discovery", 0: None}, by={2: "tom", 0: "tom"}))
    tags = {t.segment: t for t in fixed.utterance_tags}
    assert tags[2].step == "needs_discovery" and tags[2].corrected_by == "tom"
    assert tags[0].step is None and fixed.steps["greeting"].first_at != 0.0  # not the corrected turn
    assert fixed.steps["needs_discovery"].present and not fixed.steps["presentation"].present
    # a client turn corrected to an objection becomes an objection, with the kind people gave it
    obj = retag(ev, load_rules(), overrides=Overrides(steps={1: "objection_handling"}, objection_kinds={1: "price"},
                                                       objection_answered={1: True}))
    assert [(o.segment, o.kind, o.answered) for o in obj.objections] == [(1, "price", True)]


@pytest.fixture
def site(tmp_path, shared_dir, db_url):
    return make_site(db_url, tmp_path, shared_dir)


def _client(site, user):
    from web.app import create_app
    s, sessions = site
    c = TestClient(create_app(s))
    assert login(c, user).status_code == 303
    return c


def test_correct_on_the_call_page(site):
    s, sessions = site
    tom = _client(site, "tom")  # a trainer of team north
    page = tom.get("/calls/a1")
    assert page.status_code == 200 and 'action="/calls/a1/corrections"' in page.text
    r = tom.post("/calls/a1/corrections", data={"segment": 0, "field": "step", "value": "needs_discovery",
                                                "csrf_token": csrf_of(page.text)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].endswith("/calls/a1#seg-0")
    page = tom.get("/calls/a1")
    assert "corrected by tom" in page.text
    with sessions() as db:
        rows = db.scalars(select(Correction).where(Correction.call_id == "a1")).all()
        assert [(x.segment, x.field, x.value, x.username, x.current) for x in rows] == [
            (0, "step", "needs_discovery", "tom", True)]
        audit = db.scalars(select(AuditEntry).where(AuditEntry.action == "correction")).all()
        assert audit and audit[0].username == "tom" and audit[0].detail["value"] == "needs_discovery"
    # the objection the client raised: its kind, and answered
    r = tom.post("/calls/a1/corrections", data={"segment": 1, "field": "objection_kind", "value": "timing",
                                                "csrf_token": csrf_of(page.text)}, follow_redirects=False)
    assert r.status_code == 303
    # nonsense is refused with the reason; no token is refused; a manager may not; another team's call is 404
    bad = tom.post("/calls/a1/corrections", data={"segment": 0, "field": "step", "value": "dancing",
                                                  "csrf_token": csrf_of(page.text)})
    assert bad.status_code == 400 and "dancing" in bad.text
    assert tom.post("/calls/a1/corrections", data={"segment": 0, "field": "step", "value": "closing"}).status_code == 403
    assert tom.post("/calls/c1/corrections", data={"segment": 0, "field": "step", "value": "closing",
                                                   "csrf_token": csrf_of(page.text)}).status_code == 404
    anna = _client(site, "anna")
    own = anna.get("/calls/a1")
    assert 'action="/calls/a1/corrections"' not in own.text
    assert anna.post("/calls/a1/corrections", data={"segment": 0, "field": "step", "value": "closing",
                                                    "csrf_token": csrf_of(own.text)}).status_code == 403
    with sessions() as db:
        assert len(corrected_dialogues(db)) == 1
        d = corrected_dialogues(db)[0]
        assert d["labels"]["per_turn"][0] == "needs_discovery" and d["split"] == "train"


def test_a_correction_follows_the_text(site):
    s, sessions = site
    with sessions.begin() as db:
        record_correction(db, "a1", 0, "step", "closing", "tom")
        with pytest.raises(CorrectionError, match="no segment 99"):
            record_correction(db, "a1", 99, "step", "closing", "tom")
        with pytest.raises(CorrectionError, match="raised no objection"):
            record_correction(db, "a1", 0, "objection_kind", "price", "tom")
        record_correction(db, "a1", 0, "step", "greeting", "hana")  # the newer one is current
    with sessions() as db:
        rows = db.scalars(select(Correction).order_by(Correction.id)).all()
        assert [(x.value, x.current) for x in rows] == [("closing", False), ("greeting", True)]
        ev = CallTagged.model_validate(db.get(Call, "a1").event)
        assert overrides_for(ev, [rows[1]]).steps == {0: "greeting"}
        moved = ev.model_copy(update={"segments": [ev.segments[0].model_copy(update={"text": "other words"})]
                                      + ev.segments[1:]})
        assert overrides_for(moved, [rows[1]]).steps == {}  # transcribed again: not the segment corrected


@pytest.mark.slow
def test_correction_then_train_and_retag_change_the_tags_and_the_statistics(kafka_bootstrap, tmp_path, monkeypatch,
                                                                           capsys, shared_dir):
    """Through the real web form, worker, broker and database: a trainer corrects a step; `callqa train`
    learns from it; `callqa retag` re-tags the call with the correction, and the statistics follow."""
    from callqa.cli import main
    from callqa.publisher import Publisher
    from pipeline import accounts
    from tests.helpers import WorkerProcess
    from tests.webapp import PASSWORD

    w = WorkerProcess(kafka_bootstrap, tmp_path, [tmp_path]).start()
    try:
        ev = long_call("corr-1").model_copy(update={"team_id": "north"})
        with Publisher(kafka_bootstrap, w.topics["transcribed"]) as pub:
            pub.publish_raw(ev.call_id, ev.model_dump_json().encode())
        first = w.wait_for_calls([ev.call_id], statuses=("tagged",), timeout_s=120)[ev.call_id]
        with w.sessions.begin() as db:
            accounts.add_user(db, "tom", "trainer", PASSWORD, teams=["north"])
        for k, v in w.env.items():
            if k.startswith("CALLQA_"):
                monkeypatch.setenv(k, v)
        from config.settings import Settings
        from web.app import create_app
        web = TestClient(create_app(Settings.from_env()))
        assert login(web, "tom").status_code == 303
        page = web.get("/calls/corr-1")
        assert web.post("/calls/corr-1/corrections", data={"segment": 2, "field": "step", "value": "needs_discovery",
                                                           "csrf_token": csrf_of(page.text)},
                        follow_redirects=False).status_code == 303

        # train on a small corpus (the real one takes minutes) plus the stored correction
        from pipeline.tagging.training import CORPUS
        lines = [json.loads(x) for x in CORPUS.read_text(encoding="utf-8").splitlines() if x.strip()]
        small = [d for d in lines if d["split"] == "train"][:12] + [d for d in lines if d["split"] == "dev"][:4] \
            + [d for d in lines if d["split"] == "test"][:4]
        corpus = tmp_path / "small.jsonl"
        corpus.write_text("\n".join(json.dumps(d, ensure_ascii=False) for d in small) + "\n", encoding="utf-8")
        assert main(["train", "--corpus", str(corpus), "--force"]) == 0
        out = capsys.readouterr().out
        assert "plus 1 call(s) corrected by people" in out and "installed" in out

        assert main(["retag", "--call", "corr-1"]) == 0
        assert "published 1 re-tagged" in capsys.readouterr().out
        w.wait_for_calls([ev.call_id], statuses=("tagged",), timeout_s=60,
                         newer_than=first.updated_at.replace(tzinfo=first.updated_at.tzinfo or timezone.utc))
        with w.sessions() as db:
            seg = db.scalar(select(SegmentRow).where(SegmentRow.call_id == "corr-1", SegmentRow.idx == 2))
            assert seg.step == "needs_discovery"
            steps = {x.step: x for x in db.scalars(select(CallStep).where(CallStep.call_id == "corr-1"))}
            assert steps["needs_discovery"].present and not steps["presentation"].present
        deadline = time.monotonic() + 30
        while True:
            with w.sessions() as db:
                st = {r.step: r for r in db.scalars(select(ManagerStageStat).where(
                    ManagerStageStat.manager_id == "m-retag", ManagerStageStat.period == "all"))}
            if st.get("needs_discovery") and st["needs_discovery"].occurred == 1 and st["presentation"].occurred == 0:
                break
            assert time.monotonic() < deadline, {k: (v.calls, v.occurred) for k, v in st.items()}
            time.sleep(0.5)
    finally:
        w.stop()


def test_manager_page_counts_uncertain_steps(site):
    s, sessions = site
    from pipeline.store import store_tagged
    from tests.test_report import call
    ev = call("u1", "anna")
    tags = [{"segment": i, "step": None, "prob": 0.4 if i == 0 else 0.9, "uncertain": i == 0}
            for i in range(len(ev.segments))]
    d = ev.model_dump()
    d["steps"]["presentation"]["uncertain"] = True
    with sessions.begin() as db:
        store_tagged(db, CallTagged.model_validate({**d, "utterance_tags": tags}))
    hana = _client(site, "hana")
    r = hana.get("/managers/anna")
    assert r.status_code == 200 and "uncertain turns: 1 / 2" in r.text
    # one step of anna's calls rests on unsure turns alone, of all the steps found on them
    assert re.search(r"Uncertain steps: 1 / (\d+) steps found", r.text)
    page = hana.get("/calls/u1")
    assert "uncertain, not counted" in page.text


def _tagged(tg, cid="u-steps", manager="anna"):
    from tests.test_report import call
    base = call(cid, manager)
    return CallTagged.model_validate({**base.model_dump(), **tg.model_dump(), "call_id": cid})


@pytest.mark.parametrize("threshold", [0.0, 0.75, 1.01])
def test_a_step_shown_only_by_unsure_turns_is_marked_and_left_out_of_the_statistics(threshold, db_url):
    from models.db import session_factory
    from pipeline import stats
    from pipeline.store import load_outcomes, store_tagged
    from pipeline.tagging.call import tag_call
    from pipeline.tagging.dialogues import dialogue_segments
    from pipeline.tagging.learned import PACKAGED, StepModel
    from pipeline.tagging.rules import default_rules
    from tests.test_learned import DIALOGUE
    model = StepModel.load(PACKAGED)
    model.meta["uncertain_below"] = threshold
    tg = tag_call(dialogue_segments(DIALOGUE["turns"]), "en", None, default_rules(), model)
    for step, r in tg.steps.items():
        carriers = [u for u in tg.utterance_tags if step in u.steps]
        assert r.uncertain == (bool(carriers) and all(u.uncertain for u in carriers)), step
    unsure = {s for s, r in tg.steps.items() if r.uncertain}
    if threshold == 0.0:
        assert not unsure
    if threshold > 1:
        assert unsure == {s for s, r in tg.steps.items() if r.present} and unsure
    ev = _tagged(tg)
    live = stats.outcome_from_tagged(ev)
    assert live.uncertain == unsure
    c = live.counters()
    for step in unsure:
        assert all(v == 0 for v in c[step].values()), step  # not a call of this step at all
    for step in set(c) - unsure:
        assert c[step]["calls"] == 1
    # what SQL gives back (reports, recomputation) leaves out the same steps as the live table
    sessions = session_factory(db_url)
    with sessions.begin() as db:
        store_tagged(db, ev)
    with sessions() as db:
        [stored] = load_outcomes(db)
    assert stored.uncertain == unsure and stored.counters() == c
    assert stats.CallOutcome.from_compact(ev.call_id, "anna", live.to_compact()).counters() == c

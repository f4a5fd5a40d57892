"""The statistics maths, with property tests: totals are sums of contributions, replays change nothing."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from models.events import STEPS
from pipeline.stats import COUNTERS, CallOutcome, ManagerStats, aggregate, compute, reports_from

QUALITIES = st.sampled_from(["good", "weak", "missing", None])
KINDS = st.sampled_from(["price", "supplier", "think", "timing", "trust", "no_need", "send_info"])


@st.composite
def outcomes(draw, call_ids=st.sampled_from([f"c{i}" for i in range(12)]),
             managers=st.sampled_from(["m1", "m2", "m3"])):
    steps = {}
    for s in STEPS:
        present = draw(st.booleans())
        q = draw(QUALITIES)
        steps[s] = (present, q if present else "missing")
    mid = draw(managers)
    return CallOutcome(
        call_id=draw(call_ids) + mid, manager_id=mid, team_id=draw(st.sampled_from(["t1", "t2"])),
        steps=steps,
        started_at=datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(hours=draw(st.integers(0, 24 * 120))),
        objections=tuple(draw(st.lists(st.tuples(KINDS, st.booleans()), max_size=3))))


def summed(contribs: list[CallOutcome]) -> dict:
    """Totals computed the slow way: each call's counters added up per period and team."""
    out: dict = {}
    for o in contribs:
        for p in o.periods:
            for step, c in o.counters().items():
                acc = out.setdefault(p, {}).setdefault(o.team_id or "", {}).setdefault(step, dict.fromkeys(COUNTERS, 0))
                for k, v in c.items():
                    acc[k] = round(acc[k] + v, 6)
    return out


@settings(max_examples=150, deadline=None)
@given(st.lists(outcomes(), max_size=40))
def test_totals_equal_sum_of_latest_contributions(events):
    ms = aggregate(events)
    latest: dict[str, CallOutcome] = {}
    for e in events:
        latest[e.call_id] = e  # a later event for the same call replaces the earlier one
    for mid, m in ms.items():
        assert m.totals == summed([o for o in latest.values() if o.manager_id == mid])
        raised = sum(len(o.objections) for o in latest.values() if o.manager_id == mid)
        assert sum(v[0] for v in m.objections.get("all", {}).values()) == raised


@settings(max_examples=150, deadline=None)
@given(st.lists(outcomes(), min_size=1, max_size=30), st.data())
def test_reprocessing_any_call_changes_nothing(events, data):
    ms = aggregate(events)
    before = {k: v.to_dict() for k, v in ms.items()}
    latest = {e.call_id: e for e in events}
    again = data.draw(st.sampled_from(sorted(latest)))
    assert ms[latest[again].manager_id].apply(latest[again]) is False
    assert {k: v.to_dict() for k, v in ms.items()} == before
    # and through the JSON form the Faust table stores
    m = ManagerStats.from_dict(before[latest[again].manager_id])
    m.apply(latest[again])
    assert m.to_dict() == before[latest[again].manager_id]


@settings(max_examples=100, deadline=None)
@given(st.lists(outcomes(), max_size=40), st.integers(1, 6))
def test_a_manager_below_the_minimum_is_never_ranked(events, min_calls):
    for r in compute(events, min_calls).values():
        if r.calls < min_calls:
            assert r.weak_stage is None and not r.enough_calls
        else:
            assert r.enough_calls


def test_weak_stage_is_the_largest_shortfall_against_the_team():
    def call(cid, mid, missing=(), weak=()):
        return CallOutcome(cid, mid, "t", {s: (s not in missing, "weak" if s in weak else "good") for s in STEPS})
    events = [call(f"a{i}", "anna", weak=["closing"]) for i in range(3)]
    events += [call(f"b{i}", "bob", missing=["needs_discovery"]) for i in range(3)]
    events += [call(f"c{i}", "cat") for i in range(3)]
    events += [call("d0", "dan", missing=["greeting"])]
    r = compute(events, min_calls=2)
    assert r["anna"].weak_stage == "closing"
    assert r["bob"].weak_stage == "needs_discovery"
    assert r["cat"].weak_stage is None
    assert r["dan"].weak_stage is None and not r["dan"].enough_calls
    assert r["bob"].weak_calls == 3
    assert abs(r["bob"].weak_gap - (0.7 - 0.0)) < 1e-9  # team: 7 of 10 calls did needs discovery


def test_objection_handling_is_scored_only_where_the_client_objected():
    no_obj = CallOutcome("x", "m", None, {s: (s != "objection_handling", "good") for s in STEPS})
    st_ = reports_from(aggregate([no_obj]).values(), 1)["m"].stages["objection_handling"]
    assert st_.scored == 0 and st_.score is None and st_.calls == 1


def test_periods_are_iso_week_and_month():
    o = CallOutcome("x", "m", None, {}, datetime(2026, 11, 27, 9, tzinfo=timezone.utc))
    assert o.periods == ("all", "week:2026-W48", "month:2026-11")

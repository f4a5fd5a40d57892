"""The statistics maths, with property tests: totals are sums of contributions, replays change nothing."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from models.events import STEPS
from models.events import StatsUpdate
from pipeline.stats import (COUNTERS, CallOutcome, JsonTable, ManagerStats, StatsState, aggregate, compute,
                            reports_from)

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


def update_of(o: CallOutcome) -> StatsUpdate:
    return StatsUpdate(op="apply", call_id=o.call_id, manager_id=o.manager_id, revision=o.revision,
                       outcome=o.to_compact())


def live(events: list[CallOutcome], **kw) -> StatsState:
    state = StatsState(JsonTable(), **kw)
    for offset, e in enumerate(events):
        state.apply(update_of(e), offset)
    return state


def figures(managers: dict[str, ManagerStats]) -> dict:
    return {m: (v.totals, v.objections, v.team_id) for m, v in managers.items()}


@settings(max_examples=150, deadline=None)
@given(st.lists(outcomes(), max_size=40), st.integers(1, 3))
def test_live_table_equals_a_recomputation(events, kept_latest):
    # kept_latest 1-3: the team bookkeeping runs out of kept calls and scans for the latest ones
    assert figures(live(events, kept_latest=kept_latest).managers()) == figures(aggregate(events))


@settings(max_examples=150, deadline=None)
@given(st.lists(outcomes(), min_size=1, max_size=30), st.data())
def test_reprocessing_any_call_changes_nothing(events, data):
    state = live(events)
    before = dict(state.table.data)
    latest = {e.call_id: e for e in events}
    again = data.draw(st.sampled_from(sorted(latest)))
    applied = state.apply(update_of(latest[again]), len(events))
    assert not applied.changed and "all" in applied.periods  # still mirrored: that heals a crash before SQL
    assert state.table.data == before


class CrashingTable(JsonTable):
    """A table whose last writes can be lost, as a worker dying before the changelog got them."""

    def __init__(self):
        super().__init__()
        self.log: list[tuple] = []

    def __setitem__(self, key, value):
        self.log.append((key, self.data.get(key)))
        super().__setitem__(key, value)

    def __delitem__(self, key):
        self.log.append((key, self.data.get(key)))
        super().__delitem__(key)

    def lose_last(self, n: int) -> None:
        for key, old in reversed(self.log[len(self.log) - n:]):
            if old is None:
                self.data.pop(key, None)
            else:
                self.data[key] = old
        del self.log[len(self.log) - n:]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(outcomes(), st.integers(0, 8), st.booleans()), max_size=30))
def test_an_update_redelivered_after_a_partial_write_counts_once(steps):
    """The worker dies after writing some of an update's keys (a prefix of them reaches the changelog)
    and before committing its offset: the update comes again at the same offset."""
    table = CrashingTable()
    state = StatsState(table, kept_latest=2)
    done = []
    for offset, (e, lost, retract) in enumerate(steps):
        u = update_of(e) if not retract else StatsUpdate(op="retract", call_id=e.call_id, manager_id=e.manager_id,
                                                         revision=e.revision + 1)
        table.log.clear()
        state.apply(u, offset)
        table.lose_last(min(lost, len(table.log)))
        state.apply(u, offset)  # the redelivery
        done.append(u)
    expected = StatsState(JsonTable(), kept_latest=2)
    for offset, u in enumerate(done):
        expected.apply(u, offset)
    assert table.data == expected.table.data


def legacy_value(events: list[CallOutcome], manager: str, fmt: int) -> dict:
    """A table value as the worker wrote it before issue 13: counts and every contribution in one."""
    ms = aggregate(events).get(manager, ManagerStats(manager))
    value = {"manager_id": manager, "contributions": {e.call_id: e.to_compact() for e in events}}
    if fmt == 2:
        value.update(v=2, team_id=ms.team_id, totals=ms.totals, objections=ms.objections)
    return value


@settings(max_examples=60, deadline=None)
@given(st.lists(outcomes(managers=st.just("m1")), min_size=1, max_size=20), st.sampled_from([1, 2]), st.data())
def test_a_table_written_by_the_old_worker_is_split_and_still_replaces(events, fmt, data):
    latest = list({e.call_id: e for e in events}.values())
    table = JsonTable()
    table["m1"] = legacy_value(latest, "m1", fmt)
    state = StatsState(table)
    assert figures(state.managers()) == figures(aggregate(latest))  # read as it is
    old = data.draw(st.sampled_from(latest))
    retagged = outcomes(call_ids=st.just(old.call_id[:-2]), managers=st.just("m1"))
    new = data.draw(retagged)
    new = CallOutcome(new.call_id, "m1", new.team_id, new.steps, new.started_at, new.objections, revision=1)
    state.apply(update_of(new), 0)
    assert "m1" not in table  # split on the first update
    assert figures(state.managers()) == figures(aggregate(latest + [new]))
    assert set(state.counted("m1")) == {e.call_id for e in latest}


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


GROWTH_T0 = datetime(2024, 1, 1, 9, tzinfo=timezone.utc)


def growth_outcome(i: int, n: int, variant: int = 0, revision: int = 1, manager: str = "m1") -> CallOutcome:
    """Call ``i`` of one manager's ``n``: 50 a day, the first half in team north, the rest in south
    (also bench/pipeline.py --scale)."""
    steps = {s: ((i + j + variant) % 3 != 0, "good" if (i + j + variant) % 4 else "weak") for j, s in enumerate(STEPS)}
    return CallOutcome(f"c{i}", manager, "north" if i < n // 2 else "south", steps,
                       GROWTH_T0 + timedelta(minutes=i * 1440 // 50), (("price", (i + variant) % 2 == 0),),
                       revision=revision)


def test_one_manager_with_50000_calls_keeps_small_values_and_a_retag_still_replaces():
    """Five months at 50 calls a day filled one value up to Kafka's 1 MB limit before issue 13; now 50,000
    calls (nearly three years at 50 a day, two teams) leave every value of the table small."""
    n = 50_000
    state = StatsState(JsonTable())
    for i in range(n):
        state.apply(update_of(growth_outcome(i, n)), i)
    sizes = {k: len(v) for k, v in state.table.data.items() if len(k) == 2}
    assert len(sizes) == 1 + 143 + 33  # all time, the ISO weeks and months of 1,000 days
    assert max(sizes.values()) < 2_000  # the largest: "all", with both teams and the latest calls kept
    assert sum(sizes.values()) < 256_000  # one manager's counts over all periods together
    assert max(len(v) for k, v in state.table.data.items() if len(k) == 3) < 300  # one call's entry
    ms = state.manager("m1", ["all"])
    assert ms.manager_totals()["greeting"]["calls"] == n and ms.team_id == "south"
    # a re-tag of a call from the first week replaces its contribution: every figure as if it had
    # been tagged that way from the start
    before = state.manager("m1")
    applied = state.apply(update_of(growth_outcome(7, n, variant=1, revision=2)), n)
    assert applied.changed and applied.periods == ("month:2024-01", "week:2024-W01", "all")
    after = state.manager("m1")
    assert after.manager_totals()["greeting"]["calls"] == n
    assert after.totals != before.totals
    fresh = aggregate(growth_outcome(i, n, variant=1, revision=2) if i == 7 else growth_outcome(i, n)
                      for i in range(n))["m1"]
    assert (after.totals, after.objections, after.team_id) == (fresh.totals, fresh.objections, fresh.team_id)

"""A stateful property test of the numbers: random sequences of stores, re-tags, manager and team
changes, replays, crashed deliveries, a worker dying halfway through writing an update to the table,
late (stale) versions and reviews, through the real store and statistics code. After every step the
live table and its SQL mirror agree, and once the outbox is sent, both equal a recomputation from the
stored calls, the table's per-call entries are exactly the stored calls under their managers, and its
per-period values hold counts only; every flag has at most one current verdict and every call is
stored once."""
from __future__ import annotations

import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from sqlalchemy import func, select

from models.db import session_factory
from models.events import STEPS
from models.tables import Call, FlagRow, Review
from pipeline import stats
from pipeline.store import (current_reviews, flag_moment, load_outcomes, mirrored_stats, pending_outbox, record_review,
                            store_tagged)
from tests.test_numbers import Live, tagged
from tests.test_stats import CrashingTable

TZ = ZoneInfo("Europe/Moscow")
CALLS = [f"c{i}" for i in range(6)]
MANAGERS = ["ann", "bob", "cat"]
TEAMS = ["north", "south", None]
T0 = datetime(2026, 3, 29, 20, 0, tzinfo=timezone.utc)  # near a week, a month and a DST edge
OFFSETS = [timezone.utc, timezone(timedelta(hours=3)), timezone(timedelta(hours=-5))]
QUAL = st.sampled_from(["good", "weak", None, "unsure"])


class NumbersMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.sessions = session_factory(f"sqlite:///{Path(self.dir.name) / 'n.db'}")
        # kept_latest=2: the team bookkeeping often runs out of kept calls and scans for the latest ones
        self.live = Live(self.sessions, kept_latest=2)
        self.live.table = self.live.state.table = CrashingTable()
        self.clock = 0  # publish and tagging times only move forward, like Kafka timestamps
        self.last: dict[str, dict] = {}  # call_id -> the keyword arguments of its newest version

    def teardown(self):
        self.sessions.kw["bind"].dispose()
        self.dir.cleanup()

    def _tick(self) -> str:
        self.clock += 1
        return (T0 + timedelta(minutes=self.clock)).isoformat()

    def _store(self, kw: dict, **extra):
        self.live.store(tagged(**kw), TZ, **extra)

    @rule(call=st.sampled_from(CALLS), manager=st.sampled_from(MANAGERS), team=st.sampled_from(TEAMS),
          hours=st.integers(0, 24 * 40), offset=st.sampled_from(OFFSETS),
          steps=st.fixed_dictionaries({s: QUAL for s in STEPS}),
          flags=st.lists(st.tuples(st.sampled_from(["unanswered_objection", "no_next_step"]),
                                   st.sampled_from([None, 3.0, 12.5, 40.0])), max_size=3),
          objections=st.lists(st.tuples(st.sampled_from(["price", "think"]), st.booleans(), st.just(5.0)),
                              max_size=2))
    def upload(self, call, manager, team, hours, offset, steps, flags, objections):
        """A new recording of the call (or its first), published now."""
        now = self._tick()
        kw = dict(cid=call, manager=manager, team=team,
                  started=(T0 + timedelta(hours=hours)).astimezone(offset).isoformat(),
                  steps={s: q for s, q in steps.items() if q}, flags=flags, objections=objections,
                  published=now, tagged_at=now)
        self.last[call] = kw
        self._store(kw)

    @precondition(lambda self: self.last)
    @rule(data=st.data(), steps=st.fixed_dictionaries({s: QUAL for s in STEPS}))
    def retag(self, data, steps):
        call = data.draw(st.sampled_from(sorted(self.last)))
        kw = {**self.last[call], "steps": {s: q for s, q in steps.items() if q}, "tagged_at": self._tick()}
        self.last[call] = kw
        self._store(kw)

    @precondition(lambda self: self.last)
    @rule(data=st.data(), manager=st.sampled_from(MANAGERS))
    def change_manager(self, data, manager):
        call = data.draw(st.sampled_from(sorted(self.last)))
        kw = {**self.last[call], "manager": manager, "tagged_at": self._tick()}
        self.last[call] = kw
        self._store(kw)

    @precondition(lambda self: self.last)
    @rule(data=st.data(), team=st.sampled_from(TEAMS))
    def change_team(self, data, team):
        call = data.draw(st.sampled_from(sorted(self.last)))
        kw = {**self.last[call], "team": team, "tagged_at": self._tick()}
        self.last[call] = kw
        self._store(kw)

    @precondition(lambda self: self.last)
    @rule(data=st.data())
    def replay(self, data):
        self._store(self.last[data.draw(st.sampled_from(sorted(self.last)))])

    @precondition(lambda self: self.last)
    @rule(data=st.data(), manager=st.sampled_from(MANAGERS))
    def crash_after_commit(self, data, manager):
        """Stored and committed, then the worker died before sending the outbox; later redelivered."""
        call = data.draw(st.sampled_from(sorted(self.last)))
        kw = {**self.last[call], "manager": manager, "tagged_at": self._tick(),
              "flags": [("no_next_step", None)]}
        self.last[call] = kw
        self._store(kw, crash_before_outbox=True)

    @precondition(lambda self: self.last)
    @rule(data=st.data(), manager=st.sampled_from(MANAGERS))
    def stale_version_arrives_late(self, data, manager):
        """An older upload whose transcription finished last: it must change nothing."""
        call = data.draw(st.sampled_from(sorted(self.last)))
        before = self._snapshot()
        kw = {**self.last[call], "manager": manager, "published": (T0 - timedelta(days=1)).isoformat(),
              "steps": {}}
        self._store(kw)
        assert self._snapshot() == before

    @precondition(lambda self: self.live.sent)
    @rule(data=st.data())
    def redeliver_an_old_update(self, data):
        """calls.stored is at-least-once, and during a rebalance two producers can interleave."""
        self.live.apply(data.draw(st.sampled_from(self.live.sent)))

    @precondition(lambda self: self.last)
    @rule(data=st.data(), manager=st.sampled_from(MANAGERS), steps=st.fixed_dictionaries({s: QUAL for s in STEPS}),
          lost=st.integers(1, 8))
    def worker_dies_while_writing_the_table(self, data, manager, steps, lost):
        """A re-tag (perhaps to another manager) whose update reached only some of the table's keys
        before the worker died: Kafka delivers it again, at the same offset."""
        call = data.draw(st.sampled_from(sorted(self.last)))
        kw = {**self.last[call], "manager": manager, "steps": {s: q for s, q in steps.items() if q},
              "tagged_at": self._tick()}
        self.last[call] = kw
        with self.sessions.begin() as s:
            result = store_tagged(s, tagged(**kw), TZ)
        offset, self.live.offset = self.live.offset, self.live.offset + 1
        table = self.live.table
        table.log.clear()
        self.live.state.apply(result.update, offset)
        table.lose_last(min(lost, len(table.log)))
        self.live.apply(result.update, offset)
        self.live.drain()

    @precondition(lambda self: len(self.last) >= 2)
    @rule(data=st.data(), steps=st.fixed_dictionaries({s: QUAL for s in STEPS}))
    def an_update_read_again_after_later_ones(self, data, steps):
        """Faust's fetcher skipped an update's offset and the worker's stall detector read it again after
        later updates of the partition (here: a call of the same manager and day) were counted."""
        call, other = data.draw(st.lists(st.sampled_from(sorted(self.last)), min_size=2, max_size=2, unique=True))
        kw = {**self.last[call], "steps": {s: q for s, q in steps.items() if q}, "tagged_at": self._tick()}
        self.last[call] = kw
        with self.sessions.begin() as s:
            result = store_tagged(s, tagged(**kw), TZ)
        skipped, self.live.offset = self.live.offset, self.live.offset + 1
        later = {**self.last[other], "manager": kw["manager"], "team": kw["team"], "started": kw["started"],
                 "tagged_at": self._tick()}
        self.last[other] = later
        self._store(later)
        self.live.apply(result.update, skipped)
        self.live.drain()

    @rule()
    def send_outbox(self):
        self.live.drain()

    @precondition(lambda self: self.last)
    @rule(data=st.data(), verdict=st.sampled_from(["agree", "disagree"]))
    def review(self, data, verdict):
        with self.sessions() as s:
            flags = [(f.call_id, f.code, f.at) for f in s.scalars(select(FlagRow).order_by(FlagRow.id))]
        if not flags:
            return
        call_id, code, at = data.draw(st.sampled_from(flags))
        if at is None and len([f for f in flags if f[:2] == (call_id, code)]) > 1:
            return  # two moment-less flags of one code cannot be told apart (the CLI asks for --at)
        with self.sessions.begin() as s:
            record_review(s, call_id, code, verdict, at=at)

    def _snapshot(self):
        with self.sessions() as s:
            calls = {c.call_id: (c.manager_id, c.team_id, c.revision) for c in s.scalars(select(Call))}
        return calls, {k: v.totals for k, v in self.live.managers().items()}

    @invariant()
    def live_table_and_mirror_agree(self):
        with self.sessions() as s:
            mirror = mirrored_stats(s)
        live = self.live.managers()
        assert {m: v.totals for m, v in live.items() if v.totals} == {m: v.totals for m, v in mirror.items()
                                                                    if v.totals}
        for m, v in live.items():
            if v.objections:
                assert mirror[m].objections == v.objections

    @invariant()
    def once_sent_they_equal_a_recomputation(self):
        with self.sessions() as s:
            if pending_outbox(s):
                return  # a retraction still waits in the outbox (a dead worker's): the timer sends it
            expected = stats.aggregate(load_outcomes(s, tz=TZ))
        live = {m: v for m, v in self.live.managers().items() if v.totals}
        assert {m: v.totals for m, v in live.items()} == {m: v.totals for m, v in expected.items()}
        assert {m: v.team_id for m, v in live.items()} == {m: v.team_id for m, v in expected.items()}

    @invariant()
    def per_call_entries_are_the_stored_calls_and_counts_hold_nothing_per_call(self):
        state = self.live.state
        for key, value in state.table.items():
            if len(key) == 2:  # (manager, period): counts only, and a bounded list of latest calls
                assert set(value) <= {"T", "O", "k", "L", "N"} and len(value.get("L", [])) <= state.kept_latest
        with self.sessions() as s:
            if pending_outbox(s):
                return
            stored = {(c.manager_id, c.call_id) for c in s.scalars(select(Call))}
        assert {(m, cid) for m in MANAGERS for cid in state.counted(m)} == stored

    @invariant()
    def every_call_once_and_one_current_verdict_per_flag(self):
        with self.sessions() as s:
            assert s.scalar(select(func.count()).select_from(Call)) == len(self.last)
            seen = {}
            for r in s.scalars(select(Review).where(Review.current.is_(True))):
                key = (r.call_id, r.flag_code, flag_moment(r.flag_at))
                assert key not in seen, f"two current verdicts on {key}"
                seen[key] = r
            assert len(current_reviews(s)) == len(seen)


NumbersMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
TestNumbers = NumbersMachine.TestCase

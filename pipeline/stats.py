"""Weak-stage maths: pure functions over per-call contributions, and the live table they are kept in.

Each call contributes, per step: whether it occurred, its quality, whether the call went on to the next
step that happened, and a score (1 done well, 0.5 present but weak, 0 missing; objection handling is only
scored on calls where the client objected). A manager's figures are the sum of their calls'
contributions, kept per period (all time, ISO week, month — in the business time zone) and per team the
call was made in. Contributions are keyed by call_id and carry the store's revision, so applying a call
again — a replay, a re-tag — replaces its old contribution instead of adding a second one, an older
revision arriving late changes nothing, and a call that moved to another manager is retracted from the
old one.

The live table (``StatsState``; issue 13). Per-call contributions live apart from the counts, so that
no table value grows with a manager's history (one value per manager holding every contribution hit
Kafka's 1 MB message limit at about 7,000 calls):

* ``(manager_id, "call", call_id)`` -> the call's current contribution (about 150 bytes) or a
  retraction marker with its revision (kept, so an older "apply" redelivered later stays out);
* ``(manager_id, period)`` -> that period's counts only: per team, per step the seven counters (sums
  of scores and of their squares for the 90 % intervals), objections by kind; "all" also keeps the
  manager's ``KEPT_LATEST`` latest calls naming a team, to follow their team.

Why keyed by manager and call, in the one table, fed by calls.stored keyed by manager_id: an update must
read the call's old contribution and change the counts in one step, so both must be on the partition
that carries the manager's updates. A Faust table writes a key to the changelog partition of the event
being processed, so the contribution lands beside its manager's counts and a worker that takes over
the partition recovers both. Keying contributions by call_id alone, with calls.stored re-keyed by call,
would need a second hop carrying count deltas to a manager-keyed agent: deltas are not idempotent
under Kafka's at-least-once delivery. A call that moves to another manager leaves a retraction marker
under the old one (sent through the store's outbox, as before) and gets a fresh entry under the new.

A redelivered update (a worker died after writing some of an update's keys but before committing its
offset) must not count twice. The keys go to one changelog partition in the order written, and Kafka
keeps that order, so what survives a crash is a prefix of the writes. Each period's counts remember
the calls.stored offset of the last update that changed them ("k"), and the call's entry is written
last: on a redelivery, counts last changed by this very update are left alone, and the entry (still the
old one if its write was lost) decides whether anything else is to do. Only the same offset, not any
offset at least as new: an update can come after later ones of its partition (an offset Faust's fetcher
skipped, read again by the worker's stall detector), and must then still count. This relies on
calls.stored never being recreated under a running changelog (its offsets would start again).

An update reads and writes a handful of small keys (the call's entry, at most five periods), whatever
the history. Recovery after a restart reads the changelog (one small record per write), so it takes
time proportional to the changelog; compaction keeps that to about one record per call and one per
manager and period. Values written by an older worker (one per manager, keyed by manager_id alone)
are split into the new keys the first time an update for that manager arrives.

Weak stage: for a manager with enough calls, the step whose mean score falls furthest below the pooled
mean of the team's calls, among steps with enough scored calls behind them.
"""
from __future__ import annotations

import json
import math
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from typing import Any, Iterable, Optional

from models.events import STEPS, StatsUpdate

UTC = timezone.utc
CLIENT_DRIVEN = {"objection_handling"}
QUALITY_CODE = {None: 0, "missing": 0, "weak": 1, "good": 2}
CODE_QUALITY = {0: None, 1: "weak", 2: "good"}
COUNTERS = ("calls", "occurred", "quality_passed", "reached_next", "scored", "score_sum", "score_sq")
Z90 = 1.645  # the weak-stage gap is shown with a 90 % interval


def period_keys(started_at: Optional[datetime], tz: tzinfo = UTC) -> tuple[str, ...]:
    """The periods a call counts in: all time, its ISO week and its month, in the business time zone."""
    if started_at is None:
        return ("all",)
    local = (started_at if started_at.tzinfo else started_at.replace(tzinfo=UTC)).astimezone(tz)
    y, w, _ = local.isocalendar()
    return ("all", f"week:{y}-W{w:02d}", f"month:{local:%Y-%m}")


def next_step(steps: dict[str, tuple[bool, Optional[str]]], step: str) -> Optional[str]:
    """The step a call goes to after ``step``: the next one in order, skipping objection handling on a
    call where the client never objected (no objection is not a failure to convert). None after closing."""
    for nxt in STEPS[STEPS.index(step) + 1:]:
        if nxt in CLIENT_DRIVEN and not steps.get(nxt, (False, None))[0]:
            continue
        return nxt
    return None


@dataclass(frozen=True)
class CallOutcome:
    """What one call contributes to its manager's statistics."""

    call_id: str
    manager_id: str
    team_id: Optional[str]
    # step -> (present, quality) for every step in STEPS
    steps: dict[str, tuple[bool, Optional[str]]]
    started_at: Optional[datetime] = None
    objections: tuple[tuple[str, bool], ...] = ()  # (kind, answered)
    # Computed once, in the business time zone, and kept with the contribution, so that retracting it
    # later subtracts from the same buckets even if the time zone setting changed meanwhile.
    periods: tuple[str, ...] = ()
    revision: int = 0
    # Steps present only through the learned tagger's unsure turns: left out of the step's counts (its
    # calls, occurrences and score), and not counted as reached by the step before it.
    uncertain: frozenset = frozenset()

    def __post_init__(self):
        if not self.periods:
            object.__setattr__(self, "periods", period_keys(self.started_at))

    def counters(self) -> dict[str, dict[str, float]]:
        """step -> counter -> value, for this call alone."""
        out: dict[str, dict[str, float]] = {}
        for step in STEPS:
            if step in self.uncertain:
                out[step] = dict.fromkeys(COUNTERS, 0)
                continue
            present, quality = self.steps.get(step, (False, None))
            nxt = next_step(self.steps, step)
            sc = step_score(step, present, quality)
            out[step] = {
                "calls": 1,
                "occurred": int(present),
                "quality_passed": int(present and quality == "good"),
                "reached_next": int(bool(present and nxt and nxt not in self.uncertain
                                         and self.steps.get(nxt, (False, None))[0])),
                "scored": 0 if sc is None else 1,
                "score_sum": 0.0 if sc is None else sc,
                "score_sq": 0.0 if sc is None else sc * sc,
            }
        return out

    def to_compact(self) -> dict[str, Any]:
        """A small JSON form, for the Faust table's changelog and the statistics updates."""
        return {"t": self.team_id, "a": self.started_at.isoformat() if self.started_at else None,
                "s": [[int(self.steps.get(s, (False, None))[0]), QUALITY_CODE[self.steps.get(s, (False, None))[1]]]
                      for s in STEPS],
                "o": [[k, int(a)] for k, a in self.objections], "p": list(self.periods), "r": self.revision,
                **({"n": [STEPS.index(s) for s in STEPS if s in self.uncertain]} if self.uncertain else {})}

    @classmethod
    def from_compact(cls, call_id: str, manager_id: str, d: dict[str, Any]) -> "CallOutcome":
        at = datetime.fromisoformat(d["a"]) if d["a"] else None
        return cls(call_id, manager_id, d["t"],
                   {s: (bool(p), CODE_QUALITY[q] if p or q else None) for s, (p, q) in zip(STEPS, d["s"])},
                   at, tuple((k, bool(a)) for k, a in d["o"]), tuple(d.get("p") or period_keys(at)),
                   int(d.get("r", 0)), frozenset(STEPS[i] for i in d.get("n", ())))


def step_score(step: str, present: bool, quality: Optional[str]) -> Optional[float]:
    """1 done well, 0.5 weak, 0 missing; None where the step does not apply (no objection).

    "Weak" counts half whether or not the step counts as having occurred: a vague "let's keep in touch"
    is not a closing (the guideline) but is shown as a weak one on the call page, and scored the same.
    """
    if step in CLIENT_DRIVEN and not present:
        return None
    if quality == "weak":
        return 0.5
    return 1.0 if present else 0.0


def outcome_from_tagged(ev, tz: tzinfo = UTC, revision: int = 0) -> CallOutcome:
    """From a CallTagged event."""
    return CallOutcome(
        call_id=ev.call_id, manager_id=ev.manager_id, team_id=ev.team_id,
        steps={s: (ev.steps[s].present, ev.steps[s].quality) if s in ev.steps else (False, None) for s in STEPS},
        started_at=ev.started_at, objections=tuple((o.kind, o.answered) for o in ev.objections),
        periods=period_keys(ev.started_at, tz), revision=revision,
        uncertain=frozenset(s for s, r in ev.steps.items() if getattr(r, "uncertain", False)))


def _retracted(c: dict[str, Any]) -> bool:
    return bool(c.get("x"))


def _at(iso: Optional[str]) -> datetime:
    """A contribution's start time as an aware UTC instant (calls without one sort first)."""
    if not iso:
        return datetime.min.replace(tzinfo=UTC)
    t = datetime.fromisoformat(iso)
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).astimezone(UTC)


def _team_key(team_id: Optional[str]) -> str:
    return team_id or ""


@dataclass
class ManagerStats:
    """One manager's counts per period and team: what the statistics show, and nothing per call.

    The live table keeps these counts one period per key (``StatsState``); ``aggregate`` computes them
    from scratch, and ``pipeline.store.mirrored_stats`` reads them back from SQL.
    """

    manager_id: str
    team_id: Optional[str] = None  # the team of the manager's most recent call that names one
    # period -> team ("" for none) -> step -> counter -> value
    totals: dict[str, dict[str, dict[str, dict[str, float]]]] = field(default_factory=dict)
    # period -> kind -> [raised, answered]
    objections: dict[str, dict[str, list[int]]] = field(default_factory=dict)

    def add(self, o: CallOutcome, sign: int, periods: Optional[Iterable[str]] = None) -> None:
        """Add (sign +1) or take away (-1) one call's counters, in its periods (or those of them given)."""
        counters = o.counters()
        team = _team_key(o.team_id)
        for period in o.periods if periods is None else [p for p in o.periods if p in periods]:
            teams = self.totals.setdefault(period, {})
            steps = teams.setdefault(team, {})
            for step, c in counters.items():
                acc = steps.setdefault(step, dict.fromkeys(COUNTERS, 0))
                for k, v in c.items():
                    acc[k] = round(acc.get(k, 0) + sign * v, 6)
            for kind, answered in o.objections:
                acc = self.objections.setdefault(period, {}).setdefault(kind, [0, 0])
                acc[0] += sign
                acc[1] += sign * int(answered)
                if acc == [0, 0]:  # keep the JSON form canonical: no empty kinds or periods
                    del self.objections[period][kind]
                    if not self.objections[period]:
                        del self.objections[period]
            if all(v["calls"] == 0 for v in steps.values()):
                del teams[team]  # a team left empty by a replacement
                if not teams:
                    del self.totals[period]
                    self.objections.pop(period, None)

    def manager_totals(self, period: str = "all") -> dict[str, dict[str, float]]:
        """step -> counters, summed over the teams the calls were made in."""
        out: dict[str, dict[str, float]] = {}
        for steps in self.totals.get(period, {}).values():
            for step, c in steps.items():
                acc = out.setdefault(step, dict.fromkeys(COUNTERS, 0))
                for k in COUNTERS:
                    acc[k] = round(acc[k] + c.get(k, 0), 6)
        return out


def aggregate(outcomes: Iterable[CallOutcome]) -> dict[str, ManagerStats]:
    """The statistics computed from scratch: each (manager, call)'s newest contribution (by revision, the
    later of equal ones), summed; a manager's team is that of their latest call naming one (by start
    time, then call_id). This is what the live table must always equal."""
    latest: dict[tuple[str, str], CallOutcome] = {}
    for o in outcomes:
        k = (o.manager_id, o.call_id)
        if k not in latest or o.revision >= latest[k].revision:
            latest[k] = o
    out: dict[str, ManagerStats] = {}
    newest: dict[str, CallOutcome] = {}
    for o in latest.values():
        out.setdefault(o.manager_id, ManagerStats(o.manager_id)).add(o, +1)
        best = newest.get(o.manager_id)
        if o.team_id and (best is None or _rank(_latest_entry(o)) > _rank(_latest_entry(best))):
            newest[o.manager_id] = o
    for mid, o in newest.items():
        out[mid].team_id = o.team_id
    return out


# ------------------------------------------------------------------------------------------- live table
ALL = "all"
KEPT_LATEST = 8  # the manager's latest calls naming a team, kept to follow their team without a scan
_FACT = ("t", "a", "s", "o", "p", "r", "x", "n")  # a contribution entry's fields about the call


def period_key(manager_id: str, period: str) -> tuple[str, str]:
    return (manager_id, period)


def call_key(manager_id: str, call_id: str) -> tuple[str, str, str]:
    return (manager_id, "call", call_id)


def _is_period_key(k: Any) -> bool:
    return isinstance(k, (tuple, list)) and len(k) == 2


def _is_call_key(k: Any) -> bool:
    return isinstance(k, (tuple, list)) and len(k) == 3 and k[1] == "call"


def _latest_entry(o: CallOutcome) -> list:
    return [o.started_at.isoformat() if o.started_at else None, o.call_id, o.team_id]


def _rank(entry: list) -> tuple[datetime, str]:
    return _at(entry[0]), entry[1]


def _ordered(periods: Iterable[str]) -> tuple[str, ...]:
    """Touched periods in write order: "all" last (it carries the team bookkeeping)."""
    return tuple(sorted(set(periods), key=lambda p: (p == ALL, p)))


def _encode_period(ms: ManagerStats, period: str) -> dict[str, Any]:
    return {"T": {team: [[steps[s].get(c, 0) for c in COUNTERS] for s in STEPS]
                  for team, steps in ms.totals.get(period, {}).items()},
            "O": ms.objections.get(period, {})}


def _decode_period(ms: ManagerStats, period: str, value: dict[str, Any]) -> None:
    if value.get("T"):
        ms.totals[period] = {team: {s: dict(zip(COUNTERS, row)) for s, row in zip(STEPS, rows)}
                             for team, rows in value["T"].items()}
    if value.get("O"):
        ms.objections[period] = {k: list(v) for k, v in value["O"].items()}


def split_legacy(value: dict[str, Any]) -> tuple[ManagerStats, dict[str, dict[str, Any]]]:
    """A table value written before issue 13 (one per manager, every call's contribution inside it):
    its counts, and its per-call contributions (retraction markers included)."""
    mid, contributions = value["manager_id"], value.get("contributions", {})
    if value.get("v") == 2:
        ms = ManagerStats(mid, value.get("team_id"), value.get("totals", {}), value.get("objections", {}))
    else:  # format 1 had no totals: count them from the contributions
        ms = aggregate(CallOutcome.from_compact(cid, mid, c) for cid, c in contributions.items()
                       if not _retracted(c)).get(mid, ManagerStats(mid))
    return ms, contributions


@dataclass
class Applied:
    """What one statistics update did: whether the figures changed, and the periods to mirror to SQL."""

    manager_id: str
    changed: bool
    periods: tuple[str, ...]


class StatsState:
    """The live statistics over one key-value table (the Faust table, or a dict in tests and the bench).

    Keys: ``(manager_id, period)`` holds that period's counts (per team and step, objections; for "all"
    also the latest calls naming a team), and ``(manager_id, "call", call_id)`` holds what that call
    contributes now (its compact outcome and store revision, or a retraction marker). See the module
    docstring for why they share one table and how a redelivered update is told from a new one.
    """

    def __init__(self, table: MutableMapping, kept_latest: int = KEPT_LATEST):
        self.table = table
        self.kept_latest = kept_latest

    # -- writing
    def apply(self, update: StatsUpdate, offset: Optional[int] = None) -> Applied:
        """One update from calls.stored. ``offset``: its offset in its partition of calls.stored (None
        outside Kafka: then a period's counts are not guarded against the update being applied twice)."""
        m = update.manager_id
        self.migrate(m)
        key = call_key(m, update.call_id)
        old = self.table.get(key)
        if update.op == "retract":
            new, fact = None, {"r": update.revision, "x": 1}
            if old is not None and int(old.get("r", 0)) >= update.revision:
                return self._unchanged(m, old, ())
        else:
            new = CallOutcome.from_compact(update.call_id, m, update.outcome or {})
            fact = new.to_compact()
            if old is not None and (int(old.get("r", 0)) > new.revision or _fact(old) == fact):
                return self._unchanged(m, old, new.periods)  # stale, or the same again
        before = None if old is None or _retracted(old) else CallOutcome.from_compact(update.call_id, m, old)
        touched = _ordered((before.periods if before else ()) + (new.periods if new else ()))
        for period in touched:
            self._change(m, period, before, new, offset)
        # Last, after the counts: see the module docstring ("a redelivered update").
        self.table[key] = {**fact, "k": offset, "u": list(touched)}
        return Applied(m, True, touched)

    def _unchanged(self, m: str, old: dict[str, Any], periods: Iterable[str]) -> Applied:
        # mirrored all the same: a crash between the table write and SQL is healed by the redelivery
        return Applied(m, False, _ordered(tuple(old.get("u") or ()) + tuple(periods)))

    def _change(self, m: str, period: str, before: Optional[CallOutcome], new: Optional[CallOutcome],
                offset: Optional[int]) -> None:
        k = period_key(m, period)
        cur = self.table.get(k) or {}
        if offset is not None and cur.get("k") == offset:
            return  # this update reached these counts before the worker died: do not count it twice
        ms = ManagerStats(m)
        _decode_period(ms, period, cur)
        if before is not None:
            ms.add(before, -1, (period,))
        if new is not None:
            ms.add(new, +1, (period,))
        value = _encode_period(ms, period)
        if period == ALL:
            value["L"], value["N"] = self._follow_team(m, cur, before, new)
        value["k"] = offset  # an emptied period is kept (with its offset), not deleted, for the same reason
        self.table[k] = value

    def _follow_team(self, m: str, cur: dict[str, Any], before: Optional[CallOutcome],
                     new: Optional[CallOutcome]) -> tuple[list, int]:
        """The manager's latest calls naming a team (newest first, at most ``kept_latest``) and how many
        counted calls name one. The list is always the head of that ranking; only when every call in it
        was removed is the manager's contributions scanned again (rare: a retraction or re-dating of
        their ``kept_latest`` latest calls in a row)."""
        latest = [list(x) for x in cur.get("L", [])]
        n = int(cur.get("N", 0))
        if before is not None and before.team_id:
            n -= 1
            latest = [x for x in latest if x[1] != before.call_id]
        if new is not None and new.team_id:
            entry = _latest_entry(new)
            if len(latest) == n or (latest and _rank(entry) > _rank(latest[-1])):
                latest = sorted(latest + [entry], key=_rank, reverse=True)
            n += 1
        if not latest and n:
            latest = self._scan_latest(m, skip=(before or new).call_id, new=new)
        return latest[:self.kept_latest], n

    def _scan_latest(self, m: str, skip: str, new: Optional[CallOutcome]) -> list:
        rows = [[v.get("a"), k[2], v["t"]] for k, v in self.table.items()
                if _is_call_key(k) and k[0] == m and k[2] != skip and not _retracted(v) and v.get("t")]
        if new is not None and new.team_id:
            rows.append(_latest_entry(new))
        return sorted(rows, key=_rank, reverse=True)[:self.kept_latest]

    def migrate(self, m: str) -> bool:
        """Split an old-format value of manager ``m`` (counts and every contribution in one) into the
        per-call entries and per-period counts; the old value goes last, so a crash halfway through
        leaves it in place and the split is simply done again."""
        value = self.table.get(m)
        if value is None:
            return False
        ms, contributions = split_legacy(value)
        for cid, c in contributions.items():
            self.table[call_key(m, cid)] = {**_fact(c), "k": None, "u": [] if _retracted(c) else list(c.get("p") or ())}
        teamed = sorted(([c.get("a"), cid, c["t"]] for cid, c in contributions.items()
                         if not _retracted(c) and c.get("t")), key=_rank, reverse=True)
        for period in _ordered(ms.totals):
            value = {**_encode_period(ms, period), "k": None}
            if period == ALL:
                value["L"], value["N"] = teamed[:self.kept_latest], len(teamed)
            self.table[period_key(m, period)] = value
        del self.table[m]
        return True

    # -- reading
    def contribution(self, manager_id: str, call_id: str) -> Optional[dict[str, Any]]:
        c = self.table.get(call_key(manager_id, call_id))
        if c is None:
            legacy = self.table.get(manager_id)
            c = legacy.get("contributions", {}).get(call_id) if legacy else None
        return _fact(c) if c is not None else None

    def manager(self, manager_id: str, periods: Optional[Iterable[str]] = None) -> ManagerStats:
        """A manager's counts: the given periods (direct reads, what the mirror needs), or all of them
        (a scan of the table: for tests and tools, not for the per-call path)."""
        legacy = self.table.get(manager_id)
        if legacy is not None:
            ms, _ = split_legacy(legacy)
        else:
            ms = ManagerStats(manager_id)
            if periods is None:
                periods = [k[1] for k in self.table.keys() if _is_period_key(k) and k[0] == manager_id]
            for period in periods:
                _decode_period(ms, period, self.table.get(period_key(manager_id, period)) or {})
            top = (self.table.get(period_key(manager_id, ALL)) or {}).get("L")
            ms.team_id = top[0][2] if top else None
        if periods is not None:
            wanted = set(periods)
            ms.totals = {p: v for p, v in ms.totals.items() if p in wanted}
            ms.objections = {p: v for p, v in ms.objections.items() if p in wanted}
        return ms

    def managers(self) -> dict[str, ManagerStats]:
        """Every manager with counts in the table (a scan)."""
        ids = {k if isinstance(k, str) else k[0] for k in self.table.keys()}
        out = {m: self.manager(m) for m in sorted(ids)}
        return {m: ms for m, ms in out.items() if ms.totals}

    def counted(self, manager_id: str) -> dict[str, dict[str, Any]]:
        """call_id -> contribution, for the calls that count for the manager now (a scan)."""
        legacy = self.table.get(manager_id)
        items = (legacy.get("contributions", {}).items() if legacy is not None else
                 ((k[2], v) for k, v in self.table.items() if _is_call_key(k) and k[0] == manager_id))
        return {cid: _fact(c) for cid, c in items if not _retracted(c)}


def _fact(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k in _FACT}


class JsonTable(MutableMapping):
    """A dict standing in for the Faust table outside a worker (tests, bench): values are kept as the
    JSON the changelog carries, so they come back as a recovered worker would read them."""

    def __init__(self):
        self.data: dict[Any, str] = {}

    def __getitem__(self, key):
        return json.loads(self.data[key])

    def __setitem__(self, key, value) -> None:
        self.data[key] = json.dumps(value, separators=(",", ":"))

    def __delitem__(self, key) -> None:
        del self.data[key]

    def __iter__(self):
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


@dataclass
class StageStat:
    manager_id: str
    step: str
    calls: int = 0
    occurred: int = 0
    quality_passed: int = 0
    reached_next: int = 0
    scored: int = 0
    score_sum: float = 0.0
    score_sq: float = 0.0
    team_score: Optional[float] = None
    team_conversion: Optional[float] = None
    team_scored: int = 0
    team_score_sq: float = 0.0

    @property
    def share(self) -> float:
        return self.occurred / self.calls if self.calls else 0.0

    @property
    def pass_rate(self) -> Optional[float]:
        return self.quality_passed / self.occurred if self.occurred else None

    @property
    def conversion(self) -> Optional[float]:
        if self.step == STEPS[-1]:
            return None  # nothing follows closing
        return self.reached_next / self.occurred if self.occurred else None

    @property
    def score(self) -> Optional[float]:
        return self.score_sum / self.scored if self.scored else None

    @property
    def gap(self) -> Optional[float]:
        if self.score is None or self.team_score is None:
            return None
        return self.team_score - self.score

    @property
    def gap_margin(self) -> Optional[float]:
        """Half-width of a 90 % interval on the gap (normal approximation over the calls' scores)."""
        if self.gap is None:
            return None
        var_m = max(0.0, self.score_sq / self.scored - self.score ** 2)
        var_t = max(0.0, self.team_score_sq / self.team_scored - self.team_score ** 2) if self.team_scored else 0.0
        # one call tells little: never claim a tighter interval than a single 0/1 outcome would allow
        var_m = max(var_m, 0.25 / self.scored) if self.scored < 5 else var_m
        return Z90 * math.sqrt(var_m / self.scored + (var_t / self.team_scored if self.team_scored else 0.0))


@dataclass
class ManagerReport:
    manager_id: str
    team_id: Optional[str]
    calls: int
    stages: dict[str, StageStat] = field(default_factory=dict)
    objections: dict[str, list[int]] = field(default_factory=dict)
    weak_stage: Optional[str] = None
    enough_calls: bool = False

    @property
    def weak_gap(self) -> Optional[float]:
        return self.stages[self.weak_stage].gap if self.weak_stage else None

    @property
    def weak_margin(self) -> Optional[float]:
        return self.stages[self.weak_stage].gap_margin if self.weak_stage else None

    @property
    def weak_calls(self) -> int:
        """How many calls the weak-stage figure rests on."""
        return self.stages[self.weak_stage].scored if self.weak_stage else 0


def reports_from(stats: Iterable[ManagerStats], min_calls: int, period: str = "all",
                 min_step_calls: Optional[int] = None) -> dict[str, ManagerReport]:
    """Per manager: each step against the pooled calls of the manager's (current) team.

    The team pool counts each call under the team it was made in. A weak stage is named only for a
    manager with ``min_calls`` calls, and only among steps with ``min_step_calls`` scored calls behind
    them (objection handling is scored on calls with objections only), so one call cannot make it.
    """
    min_step_calls = min_calls if min_step_calls is None else min_step_calls
    stats = list(stats)
    reports: dict[str, ManagerReport] = {}
    team: dict[tuple[str, str], list[float]] = {}
    for ms in stats:
        for team_key, steps in ms.totals.get(period, {}).items():
            for step in STEPS:
                c = steps.get(step)
                if c is None:
                    continue
                acc = team.setdefault((team_key, step), [0.0] * 5)
                acc[0] += c["score_sum"]
                acc[1] += c["scored"]
                acc[2] += c["reached_next"]
                acc[3] += c["occurred"]
                acc[4] += c.get("score_sq", 0.0)
    for ms in stats:
        steps = ms.manager_totals(period)
        if not steps:
            continue
        # compared with their current team, or in a period before they joined it, the team they were in
        in_period = ms.totals[period]
        team_key = _team_key(ms.team_id)
        if team_key not in in_period:
            team_key = max(in_period, key=lambda t: (in_period[t][STEPS[0]]["calls"], t))
        r = ManagerReport(ms.manager_id, team_key or None, int(steps[STEPS[0]]["calls"]),
                          objections={k: list(v) for k, v in ms.objections.get(period, {}).items() if v[0]})
        for step in STEPS:
            c = steps.get(step, dict.fromkeys(COUNTERS, 0))
            st = StageStat(ms.manager_id, step, int(c["calls"]), int(c["occurred"]), int(c["quality_passed"]),
                           int(c["reached_next"]), int(c["scored"]), float(c["score_sum"]), float(c.get("score_sq", 0)))
            acc = team.get((team_key, step), [0.0] * 5)
            st.team_score = acc[0] / acc[1] if acc[1] else None
            st.team_conversion = acc[2] / acc[3] if acc[3] and step != STEPS[-1] else None
            st.team_scored, st.team_score_sq = int(acc[1]), acc[4]
            r.stages[step] = st
        reports[ms.manager_id] = r
    for r in reports.values():
        r.enough_calls = r.calls >= min_calls
        if r.enough_calls:
            gaps = [(st.gap, step) for step, st in r.stages.items()
                    if st.gap is not None and st.gap > 1e-9 and st.scored >= min_step_calls]
            # ties go to the earlier step: fixing it helps every later one
            r.weak_stage = max(gaps, key=lambda g: (round(g[0], 9), -STEPS.index(g[1])))[1] if gaps else None
    return reports


def compute(outcomes: Iterable[CallOutcome], min_calls: int, period: str = "all",
            min_step_calls: Optional[int] = None) -> dict[str, ManagerReport]:
    return reports_from(aggregate(outcomes).values(), min_calls, period, min_step_calls)

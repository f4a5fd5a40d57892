"""The check every fault test ends with, and the figures it leaves for docs/reliability.md.

After a fault: every good call stored exactly once (one row, its segments and steps once), none lost, each
bad event in calls.dlq, and the statistics the worker kept (its SQL mirror of the Faust table) equal to a
recomputation from the stored calls. ``record`` appends the figures to a JSON file
(CALLQA_FAULT_FIGURES, default var/faults.json) that ``bench/reliability.py`` renders as the table.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from sqlalchemy import func, select

from models.events import DeadLetter
from models.tables import Call, CallStep, SegmentRow
from pipeline import stats
from pipeline.store import load_outcomes, mirrored_stats
from tests.helpers import REPO, read_topic

FIGURES = Path(os.environ.get("CALLQA_FAULT_FIGURES") or REPO / "var" / "faults.json")


@dataclass
class Ledger:
    calls_in: int            # distinct good calls published (a call sent twice counts once)
    stored_once: int         # of them: stored as tagged, with their segments and steps once
    duplicates: int          # calls stored or counted in the statistics more than once
    lost: int                # good calls not stored
    bad_in: int = 0          # poison events published
    failed_calls: int = 0    # of the bad: recorded as a failed call (status failed, with the reason)
    dead_letters: dict[str, int] = field(default_factory=dict)  # reason -> count
    dead_letter_stages: dict[str, int] = field(default_factory=dict)  # stage -> count
    stats_equal: Optional[bool] = None  # the worker's statistics equal the recomputation
    missing: list[str] = field(default_factory=list)  # ids of lost calls (a few, for the message)


def dead_letters(bootstrap: str, topic: str) -> list[DeadLetter]:
    return read_topic(bootstrap, topic, lambda r: DeadLetter.model_validate_json(r.value))


_REASONS = [  # (what the error says, the reason in the table), first match wins
    ("schema_version", "unknown schema version"),
    ("Invalid JSON", "not JSON / invalid UTF-8"),
    ("JSON input should be", "empty (null) value"),
    ("Input should be an object", "not a JSON object"),
    ("Field required", "missing field"),
    ("at most", "string too long"),
]


def reason(d: DeadLetter) -> str:
    """A dead letter's reason, short enough for the table: a schema error by its kind, any other by its type."""
    if d.error_type == "ValidationError":
        why = next((r for needle, r in _REASONS if needle in d.error), "wrong type or value")
    else:
        why = d.error_type
    return why


def by_reason(letters: Iterable[DeadLetter]) -> dict[str, int]:
    return dict(sorted(Counter(reason(d) for d in letters).items()))


def by_stage(letters: Iterable[DeadLetter]) -> dict[str, int]:
    return dict(sorted(Counter(d.stage for d in letters).items()))


def ledger(sessions, good_ids: Iterable[str], *, bad_in: int = 0, bad_ids: Iterable[str] = (),
           letters: Iterable[DeadLetter] = ()) -> Ledger:
    """What the database holds for ``good_ids`` (each expected stored once) and ``bad_ids`` (each expected
    failed, with a reason). Counted from the rows themselves, so a call stored twice or under a stray row
    shows up."""
    letters = list(letters)
    good = sorted(set(good_ids))
    bad = sorted(set(bad_ids))
    with sessions() as s:
        rows = {c.call_id: c for c in s.scalars(select(Call).where(Call.call_id.in_(good + bad)))}
        # the key constraints should make these impossible; counted, not assumed
        seg_dups = s.execute(select(SegmentRow.call_id).group_by(SegmentRow.call_id, SegmentRow.idx)
                             .having(func.count() > 1)).scalars().all()
        step_dups = s.execute(select(CallStep.call_id).group_by(CallStep.call_id, CallStep.step)
                              .having(func.count() > 1)).scalars().all()
        steps = dict(s.execute(select(CallStep.call_id, func.count()).group_by(CallStep.call_id)).all())
        expected = stats.aggregate(load_outcomes(s))
        mirror = mirrored_stats(s)
    dup_calls = set(seg_dups) | set(step_dups)
    # a call counted twice in the statistics: the mirror holds more calls for a manager than are stored
    counted_twice = sum(max(0, int(mirror[m].manager_totals().get("greeting", {}).get("calls", 0))
                            - int(expected[m].manager_totals().get("greeting", {}).get("calls", 0)))
                        for m in mirror if m in expected)
    stored = [cid for cid in good if cid in rows and rows[cid].status == "tagged" and steps.get(cid) == 5
              and cid not in dup_calls]
    lost = [cid for cid in good if cid not in rows or rows[cid].status != "tagged"]
    failed = [cid for cid in bad if cid in rows and rows[cid].status == "failed" and rows[cid].error]
    return Ledger(calls_in=len(good), stored_once=len(stored), duplicates=len(dup_calls) + counted_twice,
                  lost=len(lost), bad_in=bad_in, failed_calls=len(failed), dead_letters=by_reason(letters),
                  dead_letter_stages=by_stage(letters),
                  missing=lost[:10])


def stats_match(sessions) -> tuple[bool, str]:
    """The SQL mirror of the live statistics equals ``stats.aggregate`` over the stored calls, for every
    manager; a manager with no stored call left has nothing counted."""
    with sessions() as s:
        expected = stats.aggregate(load_outcomes(s))
        mirror = mirrored_stats(s)
    for m, want in expected.items():
        got = mirror.get(m)
        if got is None:
            return False, f"no statistics mirrored for {m}"
        if got.totals != want.totals or got.objections != want.objections:
            return False, f"{m}: mirrored {got.manager_totals()} != recomputed {want.manager_totals()}"
    for m in set(mirror) - set(expected):
        calls = mirror[m].manager_totals().get("greeting", {}).get("calls", 0)
        if calls:
            return False, f"{m} has {calls} calls counted and none stored"
    return True, ""


def where_stats_lost(sessions, bootstrap: str, app_id: str, stored_topic: str, manager: str) -> str:
    """For a failure message: which of ``manager``'s stored calls never had an update on calls.stored, and
    which have one but are missing from the statistics table's changelog (its last value for the call)."""
    from models.tables import Call
    from tests.helpers import consume_all
    with sessions() as s:
        in_db = {r.call_id: r.revision for r in s.execute(select(Call.call_id, Call.revision).where(
            Call.manager_id == manager, Call.status == "tagged"))}
    updates: dict[str, list] = {}
    for m in consume_all(bootstrap, stored_topic, timeout_s=5):
        try:
            u = json.loads(m.value)
        except ValueError:
            continue
        if u.get("manager_id") == manager:
            updates.setdefault(u["call_id"], []).append((m.partition, m.offset, u.get("op"), u.get("revision")))
    table: dict[str, object] = {}
    counted = None  # the calls its all-time counts hold, as the changelog last has them
    for m in consume_all(bootstrap, f"{app_id}-manager-stats-changelog", timeout_s=5):
        try:
            k = json.loads(m.key)
        except (TypeError, ValueError):
            continue
        if isinstance(k, list) and len(k) == 3 and k[0] == manager and k[1] == "call":
            table[k[2]] = json.loads(m.value) if m.value else None
        elif k == [manager, "all"] and m.value:
            v = json.loads(m.value)
            counted = (sum(rows[0][0] for rows in v.get("T", {}).values()), v.get("k"), m.partition, m.offset)
    no_update = sorted(c for c in in_db if c not in updates)
    not_in_table = sorted(c for c in in_db if c in updates and table.get(c) is None)
    stale = sorted(c for c in in_db if isinstance(table.get(c), dict) and table[c].get("r") != in_db[c])
    return (f"{manager}: {len(in_db)} calls stored; without an update on {stored_topic}: {no_update[:10]} "
            f"({len(no_update)}); with one but not in the table: {not_in_table[:10]} ({len(not_in_table)}) "
            f"updates {[updates[c] for c in not_in_table[:3]]}; table revision != stored: {stale[:10]} "
            f"({len(stale)}); the table's all-time counts (calls, last update's offset, changelog partition "
            f"and offset): {counted} (fewer calls than stored: the table lost an update; as many: the mirror did)")


def group_committed(bootstrap: str, group: str, topics) -> dict[tuple[str, int], Optional[int]]:
    """The consumer group's committed offset per (topic, partition), None where it committed none."""
    from kafka import KafkaConsumer, TopicPartition
    # a consumer of the group that never subscribes: it reads the group's offsets and neither joins nor commits
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {(topic, p): c.committed(TopicPartition(topic, p))
                for topic in topics for p in c.partitions_for_topic(topic) or ()}
    finally:
        c.close()


def where_calls_wait(bootstrap: str, group: str, topics: dict, call_ids) -> str:
    """For a failure message: where each unstored call's events are on calls.transcribed and calls.tagged
    (partition, offset) and whether the group committed past them: committed past an unprocessed event is
    a lost call (nothing will redeliver it), not committed is a worker that stopped reading."""
    committed = group_committed(bootstrap, group, [topics["transcribed"], topics["tagged"]])
    want, out = set(call_ids), []
    for stage in ("transcribed", "tagged"):
        topic = topics[stage]
        where: dict[str, list] = {}
        for r in read_topic(bootstrap, topic):
            cid = (r.key or b"").decode("utf-8", "replace")
            if cid in want:
                c = committed.get((topic, r.partition))
                where.setdefault(cid, []).append(f"{r.partition}@{r.offset}{'<' if c is not None and c > r.offset else '>='}"
                                                f"{c}")
        out.append(f"{stage}: " + "; ".join(f"{cid} {v}" for cid, v in sorted(where.items())[:12])
                   + f" ({len(where)} of {len(want)} there; 'a<b': offset a committed past (b), 'a>=b': not)")
    return "\n".join(out)


def wait_stats_match(sessions, timeout_s: float = 120, workers=(), diagnose=None) -> None:
    """The mirror is written after the store, asynchronously: poll until it agrees, then assert. ``workers``
    still running dump their tasks to their logs if it never does; ``diagnose(manager)`` says where a
    mismatching manager's calls were lost."""
    deadline = time.monotonic() + timeout_s
    while True:
        ok, why = stats_match(sessions)
        if ok:
            return
        if time.monotonic() > deadline:
            for w in workers:
                w.dump_tasks()
            if diagnose is not None:
                manager = why.removeprefix("no statistics mirrored for ").split(":", 1)[0].split(" has ", 1)[0]
                try:
                    why += "\n" + diagnose(manager)
                except Exception as exc:  # the failure above is the news, not this
                    why += f"\n(no diagnosis: {exc!r})"
            raise AssertionError(f"statistics differ from a recomputation after {timeout_s:.0f}s: {why}")
        time.sleep(0.5)


def assert_clean(led: Ledger) -> None:
    assert led.lost == 0, f"{led.lost} calls lost: {led.missing}"
    assert led.duplicates == 0, f"{led.duplicates} calls stored or counted twice"
    assert led.stored_once == led.calls_in, led


def record(fault: str, led: Ledger, **extra) -> None:
    """Keep the figures of one fault test for docs/reliability.md (the file accumulates one run's tests)."""
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads(FIGURES.read_text())
    except (OSError, ValueError):
        data = {}
    entry = asdict(led)
    entry.pop("missing")
    data[fault] = {**entry, **extra, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    tmp = FIGURES.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(FIGURES)

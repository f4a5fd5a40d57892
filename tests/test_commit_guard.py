"""The worker never commits an offset past an event no agent handled (agents.app.guard_commits): Faust's
own bookkeeping, on a real Faust consumer (not started: the offsets are its in-memory state)."""
from __future__ import annotations

import asyncio

import faust
import pytest
from faust.types import TP

from agents.app import guard_commits


@pytest.fixture
def consumer():
    guard_commits()
    app = faust.App("callqa-test-guard", broker="kafka://127.0.0.1:1")
    return app.consumer


TPX = TP("calls.tagged", 0)


def test_one_event_missing_right_after_the_committed_offset_stops_the_commit(consumer):
    # committed: 14 is the next offset to read; 15 and 16 are done, 14 is not (dropped around a rebalance)
    consumer._committed_offset[TPX] = 14
    consumer._acked[TPX].extend([15, 16])
    consumer._acked_index[TPX].update([15, 16])
    assert consumer._new_offset(TPX) is None  # Faust alone returns 17: 14 would never be read again
    consumer._acked[TPX].append(14)  # read again and done
    consumer._acked_index[TPX].add(14)
    assert consumer._new_offset(TPX) == 17


def test_a_run_that_starts_at_the_committed_offset_is_committed(consumer):
    consumer._committed_offset[TPX] = 14
    consumer._acked[TPX].extend([14, 15, 17])
    consumer._acked_index[TPX].update([14, 15, 17])
    assert consumer._new_offset(TPX) == 16  # not past the missing 16


def test_offsets_the_fetcher_skipped_are_not_counted_as_done(consumer, caplog):
    consumer._committed_offset[TPX] = 10
    asyncio.run(consumer._add_gap(TPX, 11, 20))
    consumer._acked[TPX].extend([10, 20])
    consumer._acked_index[TPX].update([10, 20])
    assert consumer._new_offset(TPX) == 11  # Faust alone: 21, past 11..19 that no agent saw
    assert "offsets 11..19 were not delivered" in caplog.text


def test_a_partition_never_committed_waits_for_where_it_starts(consumer):
    consumer._acked[TPX].extend([1, 2])  # 0 not done: Faust alone commits 3
    consumer._acked_index[TPX].update([1, 2])
    assert consumer._new_offset(TPX) is None
    consumer._committed_offset[TPX] = 0  # where the log starts, set by the stall detector
    assert consumer._new_offset(TPX) is None
    consumer._acked[TPX].append(0)
    consumer._acked_index[TPX].add(0)
    assert consumer._new_offset(TPX) == 3

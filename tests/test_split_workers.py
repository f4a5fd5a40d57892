"""Workers that run different agents: transcription on one (a GPU machine in production), tagging, storing
and the statistics on another; a call flows through both over the real broker."""
from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from agents.app import AGENTS, parse_agents
from callqa.publisher import Publisher
from models.events import CallRecorded
from models.tables import ManagerStageStat
from tests.helpers import WorkerProcess, run_cli


def test_agent_sets():
    assert parse_agents("") == parse_agents("all") == frozenset(AGENTS)
    assert parse_agents("tag, store,stats") == {"tag", "store", "stats"}
    with pytest.raises(ValueError, match="unknown agent.*transcibe"):
        parse_agents("transcibe")
    res = run_cli("worker", "--agents", "transcibe")
    assert res.returncode == 2 and "choose from transcribe, tag, store, stats, failures, crm" in res.stderr


@pytest.mark.slow
def test_a_call_flows_through_two_workers_with_different_agents(kafka_bootstrap, tmp_path, shared_dir):
    asr = WorkerProcess(kafka_bootstrap, tmp_path / "gpu", [shared_dir / "audio"],
                        extra_env={"CALLQA_WORKER_AGENTS": "transcribe"})
    rest = WorkerProcess(kafka_bootstrap, tmp_path / "cpu", [shared_dir / "audio"], app_id=asr.app_id,
                         db_url=f"sqlite:///{tmp_path / 'shared.db'}",
                         extra_env={"CALLQA_WORKER_AGENTS": "tag,store,stats,failures,crm"})
    asr.env["CALLQA_DATABASE_URL"] = rest.db_url  # one database; the transcribing worker never writes to it
    asr.start()
    rest.start()
    try:
        ev = CallRecorded(call_id="split-1", manager_id="m-split", language="en", team_id="t1",
                          recording_url=(shared_dir / "audio/synthetic/synth_call_en_8k_stereo.wav").as_uri(),
                          channels={"layout": "stereo", "manager_channel": 0})
        with Publisher(kafka_bootstrap, asr.topics["recorded"]) as pub:
            pub.publish(ev)
        row = rest.wait_for_calls([ev.call_id], timeout_s=300)[ev.call_id]
        assert row.status == "tagged" and row.furthest_step == "closing"
        deadline = time.monotonic() + 30
        while True:
            with rest.sessions() as s:
                st = s.scalar(select(ManagerStageStat).where(ManagerStageStat.manager_id == "m-split",
                                                             ManagerStageStat.step == "greeting",
                                                             ManagerStageStat.period == "all"))
            if st is not None:
                break
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert st.calls == 1
    finally:
        asr.stop()
        rest.stop()
    assert "transcribed split-1" in asr.log.read_text()
    assert "transcribed split-1" not in rest.log.read_text()
    assert "running the agents transcribe" in asr.log.read_text()

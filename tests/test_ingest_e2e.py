"""Telephony ingest end to end: a signed Twilio RecordingStatusCallback -> the ingest app ->
Kafka -> a real `callqa worker` that downloads the recording over HTTP -> a tagged call in SQL.

The "Twilio media server" is a local HTTP server serving the synthetic stereo call at a
RecordingUrl without extension, as Twilio sends it; the worker runs with loopback
downloads allowed (CALLQA_FETCH_ALLOW_PRIVATE / CALLQA_FETCH_ALLOW_HTTP).
"""
from __future__ import annotations

import json
import uuid
from datetime import timezone
from urllib.parse import urlencode

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from callqa.ingest_app import create_app
from callqa.ingest_settings import IngestSettings
from callqa.publisher import Publisher
from models.tables import Call, CallStep, SegmentRow
from pipeline.ingest import twilio as twilio_mod
from pipeline.ingest.managers import ManagerDirectory
from tests.helpers import WorkerProcess
from tests.test_fetch import FakeServer

pytestmark = pytest.mark.slow

TOKEN = "e2e-twilio-token"
ACCOUNT = "AC" + "e" * 32
MANAGERS = [{"id": "m-e2e", "name": "Mark Brightline", "team": "team-e2e", "keys": ["twilio:mark"]}]


@pytest.fixture(scope="module")
def media():
    """Twilio's media host stand-in: GET <RecordingUrl> -> the WAV."""
    with FakeServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def worker(kafka_bootstrap, tmp_path_factory):
    home = tmp_path_factory.mktemp("ingest-e2e")
    (home / "recordings").mkdir()
    w = WorkerProcess(kafka_bootstrap, home, [home / "recordings"],
                      extra_env={"CALLQA_FETCH_ALLOW_PRIVATE": "true", "CALLQA_FETCH_ALLOW_HTTP": "true"}).start()
    yield w
    w.stop()


def ingest_client(kafka_bootstrap, worker, home):
    settings = IngestSettings(twilio_auth_token=TOKEN, allowed_hosts="127.0.0.1", allow_private=True,
                              allow_http=True, home=str(home))
    pub = Publisher(kafka_bootstrap, worker.topics["recorded"])
    return TestClient(create_app(settings, pub, ManagerDirectory(MANAGERS))), pub


def callback(client: TestClient, params: dict, query: str):
    path = f"/hooks/twilio?{query}"
    sig = twilio_mod.compute_signature(TOKEN, "http://testserver" + path, sorted(params.items()))
    return client.post(path, data=params, headers={"X-Twilio-Signature": sig})


def test_twilio_callback_ends_as_tagged_call(kafka_bootstrap, worker, media, shared_dir, tmp_path):
    call_sid, rec_sid = "CA" + uuid.uuid4().hex, "RE" + uuid.uuid4().hex
    rec_path = f"/2010-04-01/Accounts/{ACCOUNT}/Recordings/{rec_sid}"
    wav = (shared_dir / "audio" / "synthetic" / "synth_call_en_8k_stereo.wav").read_bytes()
    media.file(rec_path, wav, ctype="audio/x-wav")
    params = {
        "AccountSid": ACCOUNT, "CallSid": call_sid, "RecordingSid": rec_sid,
        "RecordingUrl": media.base + rec_path, "RecordingStatus": "completed", "RecordingDuration": "60",
        "RecordingChannels": "2", "RecordingStartTime": "Mon, 02 Nov 2026 10:00:00 +0000",
        "RecordingSource": "OutboundAPI", "RecordingTrack": "both", "ErrorCode": "0",
    }
    # Click-to-call: Twilio called the agent first, so the agent is the parent leg = Twilio channel 1.
    query = urlencode({"agent": "mark", "direction": "outbound", "client": "+15550001111", "lang": "en",
                       "agent_channel": "1"})

    client, pub = ingest_client(kafka_bootstrap, worker, tmp_path / "ingest1")
    with client, pub:
        r = callback(client, params, query)
        assert r.status_code == 200, r.text
        assert r.json() == {"call_id": call_sid, "status": "published"}
        r = callback(client, params, query)           # Twilio retries the callback
        assert r.status_code == 200 and r.json()["status"] == "duplicate"

    first = worker.wait_for_calls([call_sid], timeout_s=420)[call_sid]
    assert first.status == "tagged", first.error
    assert first.source == "twilio" and first.manager_id == "m-e2e" and first.team_id == "team-e2e"
    assert first.direction == "outbound" and first.client_number == "+15550001111"
    assert first.recording_url == media.base + rec_path and first.language == "en"
    assert len(media.hits(rec_path)) == 1

    ref = json.loads((shared_dir / "audio" / "synthetic" / "synth_call_en_8k_stereo.ref.json").read_text())
    with worker.sessions() as s:
        segs = s.scalars(select(SegmentRow).where(SegmentRow.call_id == call_sid).order_by(SegmentRow.idx)).all()
        assert {x.speaker for x in segs} == {"manager", "client"}
        for seg in segs:   # the channel said who spoke: Twilio channel 1 (left) = the agent
            overlap, who = max((min(seg.end, t["end"]) - max(seg.start, t["start"]), t["speaker"]) for t in ref["turns"])
            if overlap > 0:
                assert seg.speaker == who, (seg.start, seg.text)
        n_segments = len(segs)
        steps = {cs.step: cs.present for cs in s.scalars(select(CallStep).where(CallStep.call_id == call_sid))}
        assert steps["greeting"] and steps["closing"]

    # The ingest service restarts (its dedup memory is gone) and Twilio retries once more:
    # published again, processed again, still one call with the same segments.
    client, pub = ingest_client(kafka_bootstrap, worker, tmp_path / "ingest2")
    with client, pub:
        r = callback(client, params, query)
        assert r.status_code == 200 and r.json()["status"] == "published"
    since = first.updated_at if first.updated_at.tzinfo else first.updated_at.replace(tzinfo=timezone.utc)
    again = worker.wait_for_calls([call_sid], timeout_s=420, newer_than=since)[call_sid]
    assert again.status == "tagged"
    with worker.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Call).where(Call.call_id == call_sid)) == 1
        assert s.scalar(select(func.count()).select_from(SegmentRow).where(SegmentRow.call_id == call_sid)) == n_segments
    assert len(media.hits(rec_path)) == 1   # the worker's download cache answered the replay

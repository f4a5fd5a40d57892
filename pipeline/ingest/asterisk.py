"""Asterisk/FreePBX: JSON posted by a MixMonitor post-command script.

MixMonitor runs its command after the call is hung up and the file is closed
(see docs/ingest.md for the script). The JSON body::

    {"uniqueid": "1714557600.42",            # required: the call id
     "file": "/var/spool/asterisk/monitor/2024/05/01/out-79161234567-101-20240501-120000-1714557600.42.wav",
     "recording_url": "...",                 # instead of file, when already uploaded
     "direction": "outbound", "extension": "101", "client": "79161234567",
     "start": 1714557600, "duration": 42.5,
     "manager_channel": 0}                   # only for stereo files; omit for mono

Fields left out are taken from a FreePBX file name when ``file`` has one.
``file`` becomes a file:// URL (CALLQA_INGEST_PATH_MAP rewrites PBX paths).
Signed with X-Callqa-Signature (CALLQA_ASTERISK_SECRET, else CALLQA_GENERIC_SECRET).
"""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

from pipeline.ingest.base import (
    ContextStore, IngestConfig, Outcome, RequestParts, bad, epoch_to_dt, file_url, make_event, map_path,
    missing,
)
from pipeline.ingest.hmacauth import verify_shared_secret
from pipeline.ingest.managers import ManagerDirectory
from pipeline.ingest.spool import parse_name

SOURCE = "asterisk"


class AsteriskAdapter:
    source = SOURCE

    def __init__(self, cfg: IngestConfig, managers: ManagerDirectory, tz: str = "UTC"):
        self.cfg = cfg
        self.managers = managers
        self.tz = tz

    def verify(self, req: RequestParts) -> None:
        if self.cfg.verify:
            verify_shared_secret(req, self.cfg.secret_for(SOURCE), "CALLQA_ASTERISK_SECRET")

    def parse(self, req: RequestParts, ctx: ContextStore | None = None) -> Outcome:
        try:
            d = json.loads(req.body or b"")
        except ValueError:
            raise bad("body", "not valid JSON") from None
        if not isinstance(d, dict):
            raise bad("body", "expected a JSON object")
        uid = str(d.get("uniqueid") or "").strip()
        if not uid:
            raise missing("uniqueid")
        path, url = d.get("file"), d.get("recording_url")
        if not path and not url:
            raise missing("file")
        name = parse_name(PurePosixPath(path).name, self.tz) if path else None
        if path:
            if not str(path).startswith("/"):
                raise bad("file", "must be an absolute path")
            url = url or file_url(map_path(str(path), self.cfg.path_map))
        direction = d.get("direction") or (name.direction if name else None)
        if direction not in ("inbound", "outbound"):
            raise missing("direction") if direction is None else bad("direction", "inbound or outbound")
        ext = d.get("extension") or (name.extension if name else None)
        if not ext:
            raise missing("extension")
        client = d.get("client") or (name.client if name else None)
        mch = d.get("manager_channel")
        if mch in (None, ""):
            channels = {"layout": "mono", "manager_channel": None}
        elif str(mch) in ("0", "1"):
            channels = {"layout": "stereo", "manager_channel": int(mch)}
        else:
            raise bad("manager_channel", "0, 1 or absent (mono)")
        m = self.managers.resolve(SOURCE, str(ext))
        kw: dict[str, Any] = dict(
            call_id=uid, source=SOURCE, manager_id=m.manager_id, manager_name=m.manager_name,
            team_id=m.team_id, direction=direction, client_number=str(client) if client else None,
            recording_url=url, channels=channels, language=d.get("language") or self.cfg.language,
            provider_ref={"provider": SOURCE, "uniqueid": uid, "linkedid": d.get("linkedid")},
        )
        start = d.get("start")
        if start not in (None, ""):
            kw["started_at"] = _start(start)
        elif name:
            kw["started_at"] = name.started_at
        if d.get("duration") not in (None, ""):
            try:
                kw["duration_s"] = float(d["duration"])
            except (TypeError, ValueError):
                raise bad("duration", "not a number") from None
        return Outcome(event=make_event(**kw), unknown_extension=None if m.known else str(ext))


def _start(v: Any) -> datetime:
    if isinstance(v, (int, float)) or (isinstance(v, str) and v.replace(".", "", 1).isdigit()):
        return epoch_to_dt(v, "start")
    try:
        return datetime.fromisoformat(str(v).replace("Z", "+00:00"))
    except ValueError:
        raise bad("start", "unix time or ISO 8601") from None

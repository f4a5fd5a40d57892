"""FreeSWITCH: mod_json_cdr CDRs or RECORD_STOP events, POSTed as JSON.

Two payload shapes are accepted on the same URL:

* a JSON CDR from mod_json_cdr (``{"variables": {...}, "callflow": ...}``), raw,
  form-encoded (``cdr=<json>``) or base64 (the module's ``encode`` setting);
  values may be URL-encoded (``encode-values``, the default) and are decoded;
* a RECORD_STOP event as JSON (event-socket ``event json RECORD_STOP`` relayed by
  a small script): ``Event-Name``, ``Unique-ID``, ``Record-File-Path``,
  ``Caller-Caller-ID-Number``, ``Caller-Destination-Number``, ``variable_*``.

Recording path, in order: variable ``callqa_recording`` (set it in the dialplan
next to record_session), header ``Record-File-Path``, variables
``record_file_name`` / ``record_path`` / ``recording_file``. A CDR without any
is a call that was not recorded: acknowledged, ignored. A local path becomes a
file:// URL (rewritten by CALLQA_INGEST_PATH_MAP when callqa mounts the
recordings elsewhere). Manager/direction: variables ``callqa_manager`` /
``callqa_direction`` when set; otherwise the side whose number is a known
extension is the manager (caller -> outbound, destination -> inbound), else a
short number (<= 6 digits) is taken for an extension.

RECORD_STEREO=true: the caller (A-leg) is the left channel (0), so the manager
is channel 0 on outbound calls and 1 on inbound; RECORD_STEREO_SWAP flips it.

Auth: X-Callqa-Signature (HMAC-SHA256 of the body) or HTTP Basic with
CALLQA_FREESWITCH_SECRET as password (mod_json_cdr ``cred`` = ``callqa:<secret>``).
"""
from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Optional
from urllib.parse import parse_qsl, unquote

from pipeline.ingest.base import (
    ContextStore, IngestConfig, Outcome, RequestParts, bad, epoch_to_dt, file_url, make_event, map_path,
    missing,
)
from pipeline.ingest.hmacauth import verify_shared_secret
from pipeline.ingest.managers import ManagerDirectory

SOURCE = "freeswitch"
_TRUE = ("true", "1", "yes", "on")
_PATH_VARS = ("callqa_recording", "Record-File-Path", "record_file_name", "record_path", "recording_file")


def decode_body(body: bytes) -> dict[str, Any]:
    text = body.decode("utf-8", errors="replace").strip()
    if not text:
        raise missing("body")
    if not text.startswith("{"):
        form = dict(parse_qsl(text, keep_blank_values=True))
        if "cdr" in form:
            text = form["cdr"].strip()
        else:
            try:
                text = base64.b64decode(text, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise bad("body", "neither JSON, cdr=<json> form nor base64 JSON") from None
    try:
        d = json.loads(text)
    except ValueError:
        raise bad("body", "not valid JSON") from None
    if not isinstance(d, dict):
        raise bad("body", "expected a JSON object")
    return d


def flatten(d: dict[str, Any]) -> tuple[dict[str, str], bool]:
    """Variables and core headers in one dict of strings; True when it is an event."""
    out: dict[str, str] = {}
    is_event = "Event-Name" in d
    if is_event:
        for k, v in d.items():
            if not isinstance(v, (str, int, float)):
                continue
            k2 = k[len("variable_"):] if k.startswith("variable_") else k
            out.setdefault(k2, unquote(str(v)))
    else:
        variables = d.get("variables")
        if not isinstance(variables, dict):
            raise missing("variables")
        for k, v in variables.items():
            if isinstance(v, (str, int, float)):
                out[k] = unquote(str(v))
        cp = (d.get("callflow") or [{}])
        cp = cp[0] if isinstance(cp, list) and cp else cp
        prof = (cp.get("caller_profile") or {}) if isinstance(cp, dict) else {}
        for k in ("caller_id_number", "destination_number", "uuid", "username"):
            if prof.get(k) and k not in out:
                out[k] = unquote(str(prof[k]))
    return out, is_event


class FreeSwitchAdapter:
    source = SOURCE

    def __init__(self, cfg: IngestConfig, managers: ManagerDirectory):
        self.cfg = cfg
        self.managers = managers

    def verify(self, req: RequestParts) -> None:
        if self.cfg.verify:
            verify_shared_secret(req, self.cfg.secret_for(SOURCE), "CALLQA_FREESWITCH_SECRET",
                                 allow_basic=True)

    def parse(self, req: RequestParts, ctx: ContextStore | None = None) -> Outcome:
        raw = decode_body(req.body)
        v, is_event = flatten(raw)
        if is_event and v.get("Event-Name") != "RECORD_STOP":
            return Outcome(ignored=f"event:{v.get('Event-Name')}")
        call_id = v.get("callqa_call_id") or v.get("Unique-ID") or v.get("uuid") or v.get("call_uuid")
        if not call_id:
            raise missing("Unique-ID" if is_event else "variables.uuid")
        path = next((v[k] for k in _PATH_VARS if v.get(k)), None)
        if not path:
            if is_event:
                raise missing("Record-File-Path")
            return Outcome(ignored="not_recorded")
        if path.startswith(("https://", "http://", "s3://", "file://")):
            url = path
        elif path.startswith("/"):
            url = file_url(map_path(path, self.cfg.path_map))
        else:
            raise bad("Record-File-Path", "recording path must be absolute or a URL")
        caller = (v.get("callqa_caller") or v.get("Caller-Caller-ID-Number") or v.get("caller_id_number")
                  or v.get("sip_from_user") or "")
        dest = (v.get("Caller-Destination-Number") or v.get("destination_number") or v.get("dialed_user")
                or v.get("sip_to_user") or "")
        direction, ext, client = self._sides(v, caller, dest)
        m = self.managers.resolve(SOURCE, ext)
        stereo = (v.get("RECORD_STEREO") or v.get("record_stereo") or "").lower() in _TRUE
        if stereo:
            ch = 0 if direction == "outbound" else 1      # A-leg (caller) is left
            if (v.get("RECORD_STEREO_SWAP") or v.get("record_stereo_swap") or "").lower() in _TRUE:
                ch = 1 - ch
            channels = {"layout": "stereo", "manager_channel": ch}
        else:
            channels = {"layout": "mono", "manager_channel": None}
        kw: dict[str, Any] = dict(
            call_id=call_id, source=SOURCE, manager_id=m.manager_id, manager_name=m.manager_name,
            team_id=m.team_id, direction=direction, client_number=client or None,
            recording_url=url, channels=channels,
            language=v.get("callqa_language") or self.cfg.language,
            provider_ref={"provider": SOURCE, "uuid": v.get("Unique-ID") or v.get("uuid"),
                          "shape": "event" if is_event else "cdr"},
        )
        started = self._start(v)
        if started is not None:
            kw["started_at"] = started
        dur = v.get("record_seconds") or v.get("billsec")
        if dur:
            try:
                kw["duration_s"] = float(dur)
            except ValueError:
                raise bad("record_seconds", "not a number") from None
        return Outcome(event=make_event(**kw), unknown_extension=None if m.known else ext)

    def _sides(self, v: dict[str, str], caller: str, dest: str) -> tuple[str, str, str]:
        forced_dir = v.get("callqa_direction")
        forced_mgr = v.get("callqa_manager")
        if forced_dir and forced_dir not in ("inbound", "outbound"):
            raise bad("callqa_direction", "must be inbound or outbound")
        if forced_mgr:
            direction = forced_dir or ("outbound" if forced_mgr == caller else "inbound")
            client = dest if direction == "outbound" else caller
            return direction, forced_mgr, client
        if forced_dir:
            return (forced_dir, caller, dest) if forced_dir == "outbound" else (forced_dir, dest, caller)
        if self.managers.is_known(SOURCE, caller):
            return "outbound", caller, dest
        if self.managers.is_known(SOURCE, dest):
            return "inbound", dest, caller
        if _looks_internal(caller) and not _looks_internal(dest):
            return "outbound", caller, dest
        if _looks_internal(dest):
            return "inbound", dest, caller
        return "outbound", caller or "none", dest

    @staticmethod
    def _start(v: dict[str, str]) -> Optional[Any]:
        for k in ("answer_uepoch", "answer_epoch", "start_uepoch", "start_epoch",
                  "Caller-Channel-Answered-Time", "Caller-Channel-Created-Time", "Event-Date-Timestamp"):
            val = v.get(k)
            if val and val != "0":
                return epoch_to_dt(val, k)
        return None


def _looks_internal(n: Optional[str]) -> bool:
    return bool(n) and n.isdigit() and len(n) <= 6

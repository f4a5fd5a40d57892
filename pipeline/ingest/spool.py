"""Asterisk/FreePBX spool-directory scanner: monitor/YYYY/MM/DD/*.wav -> CallRecorded.

FreePBX names call recordings ``<kind>-<a>-<b>-<YYYYMMDD>-<HHMMSS>-<uniqueid>.<ext>``:

    out-<dst>-<src>-...        outbound: src = extension (manager), dst = client
    external-<ext>-<cid>-...   inbound to an extension (also ``in-``, ``exten-``)
    internal-<dst>-<src>-...   extension to extension (src = caller, taken as manager)
    q-<queue>-<cid>-... / rg-<group>-<cid>-... / ondemand-<ext>-<cid>-...  inbound, a = manager key

FreePBX records one mixed mono file by default (published as mono). When
MixMonitor records the two directions separately (``r()``/``t()``), name them
``<same base>-in.<ext>`` (r: what the recorded channel said) and ``-out`` (t: what
it heard); the scanner joins them into one stereo WAV - ``-in`` left (0), ``-out``
right (1) - written under ``out_dir``. The recorded channel is the extension's on
outbound calls (manager = channel 0) and the trunk's on inbound (manager = 1).

A recording counts as finished once no file of the call changed for
``settle_s`` seconds; a lone ``-in``/``-out`` leg waits ``leg_wait_s`` for its
partner, then goes out as mono. What was handed out is remembered in a JSON
state file only when the caller says it was published (``commit``), so a crash
between publish and commit re-publishes (downstream upserts by call_id).
Timestamps in file names are PBX-local time (``tz``).
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import time
import wave
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator, Optional
from zoneinfo import ZoneInfo

from models.events import CallRecorded
from pipeline.ingest.base import file_url
from pipeline.ingest.managers import ManagerDirectory

SOURCE = "asterisk"
AUDIO_EXT = ("wav", "WAV", "wav49", "gsm", "mp3", "ogg", "sln", "flac")
NAME_RE = re.compile(
    r"^(?P<kind>[A-Za-z]+)-(?P<a>[^-]*)-(?P<b>[^-]*)-(?P<date>\d{8})-(?P<time>\d{6})-"
    r"(?P<uid>\d+(?:\.\d+)?)(?:-(?P<leg>in|out))?\.(?P<ext>" + "|".join(AUDIO_EXT) + r")$")
_INBOUND_KINDS = ("external", "in", "exten", "q", "rg", "ondemand", "from", "did")


@dataclass(frozen=True)
class SpoolName:
    kind: str
    direction: str        # inbound | outbound
    extension: str        # the manager side (extension, queue or group)
    client: str
    started_at: datetime
    uniqueid: str
    leg: Optional[str]    # None (mixed), "in" or "out"
    base: str             # name without leg suffix and extension


def parse_name(name: str, tz: str = "UTC") -> Optional[SpoolName]:
    m = NAME_RE.match(name)
    if not m:
        return None
    kind = m["kind"].lower()
    a, b = m["a"], m["b"]
    if kind in ("out", "internal"):
        direction, ext, client = "outbound", b, a
    else:
        direction, ext, client = "inbound", a, b
    try:
        started = datetime.strptime(m["date"] + m["time"], "%Y%m%d%H%M%S").replace(tzinfo=ZoneInfo(tz))
    except ValueError:
        return None
    base = name[: m.start("uid")] + m["uid"]
    return SpoolName(kind, direction, ext, client, started, m["uid"], m["leg"], base)


def decode_mono_s16(path: Path, rate: Optional[int] = None):
    """Decode any audio file to a mono int16 numpy array (resampled to ``rate`` if given)."""
    import av
    import numpy as np

    chunks = []
    with av.open(str(path)) as c:
        s = c.streams.audio[0]
        out_rate = rate or s.codec_context.sample_rate or 8000
        res = av.AudioResampler(format="s16", layout="mono", rate=out_rate)
        for frame in c.decode(s):
            for o in res.resample(frame):
                chunks.append(o.to_ndarray().reshape(-1))
        for o in res.resample(None):
            chunks.append(o.to_ndarray().reshape(-1))
    data = np.concatenate(chunks).astype("int16") if chunks else np.zeros(0, dtype="int16")
    return data, out_rate


def join_legs(left: Path, right: Path, out: Path) -> Path:
    """Write a 16-bit stereo WAV: ``left`` on channel 0, ``right`` on channel 1."""
    import numpy as np

    lch, rate = decode_mono_s16(left)
    rch, _ = decode_mono_s16(right, rate)
    n = max(len(lch), len(rch))
    st = np.zeros((n, 2), dtype="<i2")
    st[: len(lch), 0] = lch
    st[: len(rch), 1] = rch
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".join-", suffix=".wav", dir=out.parent)
    os.close(fd)
    try:
        with wave.open(tmp, "wb") as w:
            w.setnchannels(2)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(st.tobytes())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


class SpoolScanner:
    def __init__(self, root: str | Path, out_dir: str | Path, state_path: str | Path,
                 managers: Optional[ManagerDirectory] = None, settle_s: float = 10.0,
                 leg_wait_s: float = 60.0, tz: str = "UTC", language: str = "auto"):
        self.root = Path(root)
        self.out_dir = Path(out_dir)
        self.state_path = Path(state_path)
        self.managers = managers or ManagerDirectory()
        self.settle_s = settle_s
        self.leg_wait_s = leg_wait_s
        self.tz = tz
        self.language = language
        self.unknown: list[str] = []
        self._done: dict[str, float] = self._load()

    # -- state ---------------------------------------------------------------
    def _load(self) -> dict[str, float]:
        try:
            data = json.loads(self.state_path.read_text())
            return {str(k): float(v) for k, v in (data.get("published") or {}).items()}
        except FileNotFoundError:
            return {}
        except (ValueError, AttributeError):
            # a damaged state file: keep it aside and start over (re-publishing is idempotent downstream)
            self.state_path.replace(self.state_path.with_suffix(".corrupt"))
            return {}

    def _save(self) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps({"published": self._done}, sort_keys=True))
        os.replace(tmp, self.state_path)

    def commit(self, call_id: str) -> None:
        """Remember that ``call_id`` was published (call after the broker acknowledged)."""
        self._done[call_id] = time.time()
        self._save()

    def is_done(self, call_id: str) -> bool:
        return call_id in self._done

    # -- scanning ------------------------------------------------------------
    def _files(self) -> Iterator[Path]:
        if not self.root.is_dir():
            return
        yield from (p for p in self.root.glob("*") if p.is_file())
        yield from (p for p in self.root.glob("[0-9][0-9][0-9][0-9]/[0-9][0-9]/[0-9][0-9]/*") if p.is_file())

    def scan(self, now: Optional[float] = None) -> list[CallRecorded]:
        """Finished, not yet committed recordings as events (joining legs where needed)."""
        now = time.time() if now is None else now
        groups: dict[str, dict[Optional[str], tuple[Path, SpoolName, float]]] = {}
        for p in self._files():
            n = parse_name(p.name, self.tz)
            if n is None:
                continue
            try:
                mtime = p.stat().st_mtime
            except FileNotFoundError:
                continue
            groups.setdefault(n.uniqueid, {})[n.leg] = (p, n, mtime)
        events = []
        for uid, legs in sorted(groups.items()):
            if uid in self._done:
                continue
            newest = max(m for _, _, m in legs.values())
            if now - newest < self.settle_s:
                continue
            ev = self._event(uid, legs, now - newest)
            if ev is not None:
                events.append(ev)
        return events

    def _event(self, uid: str, legs, age: float) -> Optional[CallRecorded]:
        if "in" in legs and "out" in legs:
            p_in, n, _ = legs["in"]
            p_out, _, _ = legs["out"]
            rel = p_in.parent.relative_to(self.root) if p_in.parent != self.root else Path()
            out = self.out_dir / rel / f"{n.base}-stereo.wav"
            if not out.exists():
                join_legs(p_in, p_out, out)
            path = out
            channels = {"layout": "stereo", "manager_channel": 0 if n.direction == "outbound" else 1}
        elif None in legs:
            path, n, _ = legs[None]
            channels = {"layout": "mono", "manager_channel": None}
        else:
            if age < self.leg_wait_s:
                return None          # the other leg may still come
            path, n, _ = next(iter(legs.values()))
            channels = {"layout": "mono", "manager_channel": None}
        m = self.managers.resolve(SOURCE, n.extension or "none")
        if not m.known:
            self.unknown.append(n.extension)
        dur = _duration(path)
        return CallRecorded(
            call_id=uid, source=SOURCE, manager_id=m.manager_id, manager_name=m.manager_name,
            team_id=m.team_id, direction=n.direction, client_number=n.client or None,
            started_at=n.started_at, duration_s=dur, recording_url=file_url(str(path)),
            channels=channels, language=self.language,
            provider_ref={"provider": SOURCE, "kind": n.kind, "uniqueid": uid, "spool_file": path.name},
        )


def _duration(path: Path) -> Optional[float]:
    try:
        with wave.open(str(path), "rb") as w:
            return round(w.getnframes() / float(w.getframerate()), 3)
    except (wave.Error, EOFError, OSError):
        return None

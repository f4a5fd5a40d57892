"""The adapter interface shared by all providers.

An adapter gets the parts of an HTTP request (``RequestParts``), checks the
provider's signature (``verify`` raises ``SignatureError`` -> HTTP 401) and maps
the payload to a ``CallRecorded`` (``parse`` raises ``PayloadError`` -> HTTP 400,
with ``reason`` naming the missing or bad field). Callbacks that carry no
finished recording (a Twilio ``in-progress`` status, a Zadarma NOTIFY_START...)
come back as ``Outcome(ignored=...)``: answered 200, nothing published.

Some providers split one call over several callbacks (Zadarma NOTIFY_END +
NOTIFY_RECORD, Mango events/summary + events/record/added). Adapters keep what
they need in a ``ContextStore`` the caller passes in (in-memory LRU) and give
each event a ``rank``: an event built with the full context ranks higher, so the
service re-publishes a richer version of a call it first saw without context
(downstream upserts by call_id, so the richer one wins).
"""
from __future__ import annotations

import hmac
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping, Optional, Protocol
from urllib.parse import parse_qsl

from models.events import CallRecorded


class IngestError(Exception):
    status = 400

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class SignatureError(IngestError):
    """Bad, missing or unverifiable signature -> 401."""
    status = 401


class PayloadError(IngestError):
    """Malformed payload -> 400; ``reason`` names the field (e.g. ``missing:CallSid``)."""
    status = 400


class UpstreamError(IngestError):
    """The provider's own API, asked for what a callback only points at, failed -> 502, so the provider
    sends the callback again later (nothing was published)."""
    status = 502


class NotConfigured(IngestError):
    """The route's provider has no settings on this service -> 503 (the provider retries; once set, it works)."""
    status = 503


def missing(name: str) -> PayloadError:
    return PayloadError(f"missing:{name}", f"field {name!r} is required")


def bad(name: str, why: str = "") -> PayloadError:
    return PayloadError(f"bad:{name}", why or f"field {name!r} has a bad value")


@dataclass
class RequestParts:
    """What an adapter sees of a request; built by the HTTP layer (or a test)."""

    method: str = "POST"
    url: str = ""                      # full URL as the provider called it (scheme://host/path?query)
    path: str = ""
    query: list[tuple[str, str]] = field(default_factory=list)
    headers: Mapping[str, str] = field(default_factory=dict)   # lower-case names
    body: bytes = b""
    form: Optional[list[tuple[str, str]]] = None               # parsed x-www-form-urlencoded body

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)

    def form_dict(self) -> dict[str, str]:
        return dict(self.form or [])

    def query_dict(self) -> dict[str, str]:
        return dict(self.query)

    @classmethod
    def from_form(cls, url: str, form: Iterable[tuple[str, str]] | Mapping[str, str], headers=None,
                  method: str = "POST") -> "RequestParts":
        items = list(form.items()) if isinstance(form, Mapping) else list(form)
        from urllib.parse import urlencode, urlsplit
        sp = urlsplit(url)
        return cls(method=method, url=url, path=sp.path, query=parse_qsl(sp.query, keep_blank_values=True),
                   headers={k.lower(): v for k, v in (headers or {}).items()},
                   body=urlencode(items).encode(), form=items)


@dataclass
class Outcome:
    event: Optional[CallRecorded] = None
    rank: int = 1
    ignored: Optional[str] = None           # reason when nothing is to be published
    unknown_extension: Optional[str] = None  # set when the manager could not be mapped
    extra_events: list[tuple[CallRecorded, int]] = field(default_factory=list)

    def events(self) -> list[tuple[CallRecorded, int]]:
        out = [(self.event, self.rank)] if self.event is not None else []
        return out + list(self.extra_events)


class ContextStore:
    """A small LRU map for correlating multi-callback calls (in-memory, per process)."""

    def __init__(self, size: int = 50_000):
        self.size = size
        self._d: "OrderedDict[Any, Any]" = OrderedDict()

    def get(self, key: Any, default: Any = None) -> Any:
        if key in self._d:
            self._d.move_to_end(key)
            return self._d[key]
        return default

    def put(self, key: Any, value: Any) -> None:
        self._d[key] = value
        self._d.move_to_end(key)
        while len(self._d) > self.size:
            self._d.popitem(last=False)

    def __contains__(self, key: Any) -> bool:
        return key in self._d

    def __len__(self) -> int:
        return len(self._d)


@dataclass
class IngestConfig:
    """What the adapters need from the settings (kept small so tests build it directly)."""

    verify: bool = True
    public_url: str = ""
    twilio_auth_token: str = ""
    twilio_agent_channel: int = 2            # Twilio numbering: 1 = parent leg, 2 = child leg
    zadarma_secret: str = ""
    zadarma_manager_channel: str = "mono"    # mono | 0 | 1 | unknown
    zadarma_timezone: str = "UTC"
    mango_api_key: str = ""
    mango_api_salt: str = ""
    mango_manager_channel: str = "mono"
    generic_secret: str = ""
    asterisk_secret: str = ""
    freeswitch_secret: str = ""
    language: str = "auto"
    path_map: str = ""                       # "pbx/path=local/path;..." for file:// recordings

    def secret_for(self, provider: str) -> str:
        own = {"asterisk": self.asterisk_secret, "freeswitch": self.freeswitch_secret}.get(provider, "")
        return own or self.generic_secret


class Adapter(Protocol):
    source: str

    def verify(self, req: RequestParts) -> None: ...

    def parse(self, req: RequestParts, ctx: ContextStore) -> Outcome: ...


# ---- small shared helpers -------------------------------------------------

def consteq(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def channels_from_setting(value: str) -> dict:
    """'mono' -> mono; '0'/'1' -> stereo with that manager channel; 'unknown' -> stereo, null."""
    v = (value or "mono").strip().lower()
    if v in ("0", "1"):
        return {"layout": "stereo", "manager_channel": int(v)}
    if v in ("unknown", "stereo", "auto"):
        return {"layout": "stereo", "manager_channel": None}
    return {"layout": "mono", "manager_channel": None}


def epoch_to_dt(value: Any, name: str) -> datetime:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise bad(name, f"{name!r} is not a unix time: {value!r}") from None
    if x > 1e14:      # microseconds (FreeSWITCH *_uepoch, Caller-Channel-Created-Time)
        x /= 1e6
    elif x > 1e11:    # milliseconds
        x /= 1e3
    return datetime.fromtimestamp(x, tz=timezone.utc)


def to_float(value: Any, name: str) -> Optional[float]:
    if value in (None, ""):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise bad(name, f"{name!r} is not a number: {value!r}") from None


def map_path(path: str, path_map: str) -> str:
    """Rewrite a PBX-side path to where callqa sees the same file ("src=dst;src2=dst2")."""
    for pair in filter(None, (p.strip() for p in (path_map or "").split(";"))):
        if "=" not in pair:
            continue
        src, dst = (s.strip() for s in pair.split("=", 1))
        if src and (path == src or path.startswith(src.rstrip("/") + "/")):
            return dst.rstrip("/") + path[len(src.rstrip("/")):]
    return path


def file_url(path: str) -> str:
    from pathlib import Path
    return Path(path).absolute().as_uri()


def make_event(**kw: Any) -> CallRecorded:
    """Build a CallRecorded, turning pydantic errors into PayloadError naming the field."""
    from pydantic import ValidationError
    try:
        return CallRecorded.model_validate(kw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ())) or "payload"
        raise PayloadError(f"bad:{loc}", err.get("msg", "invalid")) from None


Resolver = Callable[[str, str], Any]

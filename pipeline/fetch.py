"""Fetch a call recording to a local file. No Kafka here.

``fetch(url, allowed_dirs, cache_dir, *, max_bytes, timeout_s, retries, headers, settings)``
returns a local path:

* ``file://`` - the file itself, when it lies inside an allowed directory.
* ``http(s)://`` - downloaded into ``cache_dir`` (one file per URL, kept), with

  - an SSRF guard on every hop (the event's URL, each redirect, every link a
    provider API hands out): the host is resolved, loopback / private /
    link-local / CGNAT / reserved addresses are refused unless
    CALLQA_FETCH_ALLOW_PRIVATE, and the connection goes to the address that was
    checked (no DNS-rebinding window). The event's URL must also be on
    CALLQA_FETCH_ALLOWED_HOSTS when that is set (the providers' API hosts are
    always added); redirects and API-issued links (storage buckets, CDNs) need
    only be public. ``http://`` needs CALLQA_FETCH_ALLOW_HTTP; ``user:pass@``
    URLs are refused (credentials live in settings).
  - provider awareness, by host (never by what an event claims, so credentials
    only ever go to the provider itself):

    - Twilio (``*.twilio.com``): HTTP basic auth (account SID + auth token) when
      CALLQA_TWILIO_AUTH_TOKEN is set - needed when the account enforces HTTP
      auth on media. The redirect to Twilio's storage is followed without it.
    - Zadarma (``api.zadarma.com/v1/pbx/record/request/?...``, as the adapter
      publishes): a signed API GET (``zadarma.api_get_request``) answers
      ``{"link": ...}``; that link is downloaded.
    - Mango Office (``app.mango-office.ru/vpbx/queries/recording/post?recording_id=``):
      the signed form POST (``mango.recording_request``) answers 302 to a
      one-time link, which is downloaded.

  - limits: ``max_bytes`` (Content-Length checked first, then while streaming),
    ``timeout_s`` per connect/read, CALLQA_FETCH_DEADLINE_S for a whole attempt.
  - retries with exponential backoff (Retry-After honoured, capped) on network
    errors, 408/425/429 and 5xx; never on 404, 401/403, a refused URL or a
    recording that is too large.

Failures are ``FetchError`` subclasses whose message says what to do next; the
worker turns them into a failed call and a dead letter.
"""
from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
import ssl
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional
from urllib.parse import parse_qsl, unquote, urlencode, urljoin, urlsplit

from pipeline.audio import FetchError
from pipeline.ingest import mango as mango_api
from pipeline.ingest import zadarma as zadarma_api
from pipeline.ingest.safety import (
    DEFAULT_ALLOWED_HOSTS, URLPolicy, UnsafeURL, check_recording_url, host_allowed, parse_ip, socket_resolver,
)

__all__ = ["fetch", "FetchConfig", "FetchError", "UnsafeRecordingURL", "RecordingNotFound", "FetchAuthError",
           "RecordingTooLarge", "ProviderAPIError", "FetchUnavailable", "PROVIDER_HOSTS"]


class UnsafeRecordingURL(FetchError):
    """The SSRF guard refused a URL (the event's, a redirect or an API-issued link)."""


class RecordingNotFound(FetchError):
    """404/410: the recording is not (or no longer) there."""


class FetchAuthError(FetchError):
    """401/403, or provider credentials missing on the worker."""


class RecordingTooLarge(FetchError):
    pass


class ProviderAPIError(FetchError):
    """The provider's API answered, but with an error instead of a recording link."""


class FetchUnavailable(FetchError):
    """Transient failures (network, 5xx, 429) outlasted the retries."""


class _Retry(Exception):
    def __init__(self, msg: str, retry_after: Optional[float] = None):
        super().__init__(msg)
        self.retry_after = retry_after


# Hosts whose recordings/API get the provider's credentials. Tests point these at a local fake.
PROVIDER_HOSTS: dict[str, tuple[str, ...]] = {
    "twilio": ("api.twilio.com", "*.twilio.com"),
    "zadarma": ("api.zadarma.com",),
    "mango": ("app.mango-office.ru",),
}
ZADARMA_RECORD_PATH = "/v1/pbx/record/request/"
MANGO_RECORD_SUFFIX = "/queries/recording/post"
_REDIRECTS = (301, 302, 303, 307, 308)
_USER_AGENT = "callqa-fetch/1"


@dataclass
class FetchConfig:
    """What the fetcher needs from the settings (tests build it directly)."""

    allowed_hosts: str = ""          # CALLQA_FETCH_ALLOWED_HOSTS; empty = any public host
    allow_private: bool = False      # CALLQA_FETCH_ALLOW_PRIVATE
    allow_http: bool = False         # CALLQA_FETCH_ALLOW_HTTP
    deadline_s: float = 900.0        # CALLQA_FETCH_DEADLINE_S
    twilio_account_sid: str = ""
    twilio_auth_token: str = ""
    zadarma_api_key: str = ""
    zadarma_secret: str = ""
    mango_api_key: str = ""
    mango_api_salt: str = ""
    provider_hosts: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(PROVIDER_HOSTS))
    backoff_s: float = 1.0           # first retry delay; doubles, capped at 30 s
    max_redirects: int = 5
    ssl_context: Optional[ssl.SSLContext] = None

    @classmethod
    def from_settings(cls, s: Any) -> "FetchConfig":
        names = ("allowed_hosts", "allow_private", "allow_http", "deadline_s")
        kw = {n: getattr(s, f"fetch_{n}") for n in names if hasattr(s, f"fetch_{n}")}
        for n in ("twilio_account_sid", "twilio_auth_token", "zadarma_api_key", "zadarma_secret",
                  "mango_api_key", "mango_api_salt"):
            if hasattr(s, n):
                kw[n] = getattr(s, n)
        return cls(**kw)

    def policy(self, allowed_dirs: list[Path], first_hop: bool) -> URLPolicy:
        extra = [h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip()]
        if first_hop and extra:
            provider = tuple(h for hosts in self.provider_hosts.values() for h in hosts)
            hosts = tuple(extra) + DEFAULT_ALLOWED_HOSTS + provider
        else:
            hosts = ("*",)
        return URLPolicy(allowed_hosts=hosts, allowed_dirs=list(allowed_dirs), allow_private=self.allow_private,
                         allow_http=self.allow_http)

    def provider_of(self, url: str) -> Optional[str]:
        host = (urlsplit(url).hostname or "").lower()
        for name, hosts in self.provider_hosts.items():
            if host and host_allowed(host, hosts):
                return name
        return None


def fetch(url: str, allowed_dirs: list[Path], cache_dir: Path, *, max_bytes: int = 500 * 2**20,
          timeout_s: float = 60.0, retries: int = 3, headers: dict[str, str] | None = None,
          settings: Any = None) -> Path:
    """Return a local path for a recording URL (file:// inside an allowed dir, or http(s)).

    ``settings``: a ``config.settings.Settings`` or a ``FetchConfig``; None reads the
    environment (``Settings.from_env()``)."""
    parsed = urlsplit(url)
    scheme = parsed.scheme.lower()
    if scheme == "file":
        path = Path(unquote(parsed.path)).resolve()
        if not any(path.is_relative_to(d.resolve()) for d in allowed_dirs):
            raise FetchError(f"{path} is outside the allowed recording directories "
                             f"({', '.join(map(str, allowed_dirs))}); set CALLQA_RECORDINGS_DIR")
        if not path.is_file():
            raise FetchError(f"recording not found: {path}")
        return path
    if scheme in ("http", "https"):
        if isinstance(settings, FetchConfig):
            cfg = settings
        else:
            if settings is None:
                from config.settings import Settings
                settings = Settings.from_env()
            cfg = FetchConfig.from_settings(settings)
        return _Downloader(cfg, allowed_dirs, max_bytes, timeout_s, retries, headers or {}).get(url, cache_dir)
    if scheme == "s3":
        raise FetchError(f"s3:// recordings are not supported by the fetcher yet ({url}): publish a pre-signed "
                         "https:// URL, or copy the file into CALLQA_RECORDINGS_DIR and publish file://")
    raise FetchError(f"unsupported recording URL scheme {parsed.scheme!r} in {url}: use https://, or file:// "
                     "inside CALLQA_RECORDINGS_DIR")


# ---- connections pinned to the checked address ---------------------------------------------------

class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, ip: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._ip = ip

    def connect(self) -> None:
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, ip: str, timeout: float, context: ssl.SSLContext):
        super().__init__(host, port, timeout=timeout, context=context)
        self._ip = ip

    def connect(self) -> None:
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def _show(url: str) -> str:
    """A URL for messages, without a query that may hold one-time signatures."""
    sp = urlsplit(url)
    return f"{sp.scheme}://{sp.netloc}{sp.path}" + ("?..." if sp.query else "")


_GUARD_HINTS = {
    "private_address": "a loopback/private address; if this recording server is yours, set "
                       "CALLQA_FETCH_ALLOW_PRIVATE=true on the worker",
    "host_not_allowed": "host not in CALLQA_FETCH_ALLOWED_HOSTS; add it there",
    "http_not_allowed": "plain http://; use https:// or set CALLQA_FETCH_ALLOW_HTTP=true on the worker",
    "credentials_in_url": "user:password@ in the URL; configure the provider's credentials instead",
    "unresolvable": "the host name does not resolve; check the URL and the worker's DNS",
}


class _Downloader:
    def __init__(self, cfg: FetchConfig, allowed_dirs: list[Path], max_bytes: int, timeout_s: float,
                 retries: int, headers: dict[str, str]):
        self.cfg = cfg
        self.allowed_dirs = allowed_dirs
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.retries = max(1, retries)
        self.headers = headers
        self.first_policy = cfg.policy(allowed_dirs, first_hop=True)
        self.hop_policy = cfg.policy(allowed_dirs, first_hop=False)
        self.ssl_context = cfg.ssl_context or ssl.create_default_context()

    # -- driver ---------------------------------------------------------------------------------
    def get(self, url: str, cache_dir: Path) -> Path:
        cache_dir.mkdir(parents=True, exist_ok=True)
        target = cache_dir / hashlib.sha256(url.encode()).hexdigest()[:32]
        if target.exists():
            return target
        self._guard(url, self.first_policy, resolve=False)   # refuse early, without retries
        last: Optional[_Retry] = None
        for attempt in range(self.retries):
            tmp = target.with_name(f"{target.name}.{uuid.uuid4().hex[:8]}.part")
            try:
                self._attempt(url, tmp, time.monotonic() + self.cfg.deadline_s)
                os.replace(tmp, target)
                return target
            except _Retry as e:
                last = e
                if attempt + 1 < self.retries:
                    delay = e.retry_after if e.retry_after is not None else self.cfg.backoff_s * 2 ** attempt
                    time.sleep(min(delay, 30.0))
            finally:
                tmp.unlink(missing_ok=True)
        raise FetchUnavailable(f"could not download {_show(url)} after {self.retries} attempts: {last}. The "
                               "recording server or the network failed; once it answers, publish the call "
                               "again (same call_id: it is updated, not duplicated)")

    def _attempt(self, url: str, tmp: Path, deadline: float) -> None:
        provider = self.cfg.provider_of(url)
        path = urlsplit(url).path
        if provider == "zadarma" and path.startswith(ZADARMA_RECORD_PATH):
            link = self._zadarma_link(url, deadline)
            self._download(link, {}, self.hop_policy, tmp, deadline, provider, what="Zadarma recording link")
        elif provider == "mango" and path.endswith(MANGO_RECORD_SUFFIX):
            self._mango(url, tmp, deadline)
        else:
            headers = dict(self.headers)
            if provider == "twilio":
                headers.update(self._twilio_auth(url))
            self._download(url, headers, self.first_policy, tmp, deadline, provider)

    # -- SSRF guard + connection ------------------------------------------------------------------
    def _guard(self, url: str, policy: URLPolicy, resolve: bool = True) -> list[str]:
        """Check the URL; return the addresses to connect to (all of them checked)."""
        if urlsplit(url).scheme.lower() not in ("http", "https"):
            raise UnsafeRecordingURL(f"refused to fetch {_show(url)}: only http(s) may be downloaded "
                                     "(a redirect or an API link pointed elsewhere)")
        seen: list[str] = []

        def resolver(host: str, port: int) -> list[str]:
            seen.extend(socket_resolver(host, port))
            return seen

        try:
            check_recording_url(url, policy, resolver=resolver if resolve else None)
        except UnsafeURL as e:
            hint = _GUARD_HINTS.get(e.reason, "")
            raise UnsafeRecordingURL(f"refused to fetch {_show(url)}: {e}" + (f" ({hint})" if hint else "")) from None
        if not resolve:
            return []
        sp = urlsplit(url)
        host = sp.hostname or ""
        ip = parse_ip(host)
        if ip is not None:
            return [str(ip)]
        if not seen:   # allow_private: the guard did not need to resolve
            try:
                seen = socket_resolver(host, sp.port or (443 if sp.scheme == "https" else 80))
            except OSError as e:
                raise _Retry(f"cannot resolve {host}: {e}") from None
        return sorted(seen, key=lambda a: ":" in a)   # IPv4 first

    def _request(self, method: str, url: str, headers: dict[str, str], body: Optional[bytes],
                 policy: URLPolicy, deadline: float):
        addrs = self._guard(url, policy)
        sp = urlsplit(url)
        https = sp.scheme.lower() == "https"
        port = sp.port or (443 if https else 80)
        timeout = max(0.1, min(self.timeout_s, deadline - time.monotonic()))
        target = (sp.path or "/") + (f"?{sp.query}" if sp.query else "")
        hdrs = {"User-Agent": _USER_AGENT, "Accept": "*/*", **headers}
        last: Optional[Exception] = None
        for ip in addrs:
            conn = (_PinnedHTTPS(sp.hostname, port, ip, timeout, self.ssl_context) if https
                    else _PinnedHTTP(sp.hostname, port, ip, timeout))
            try:
                conn.request(method, target, body=body, headers=hdrs)
                return conn, conn.getresponse()
            except ssl.SSLCertVerificationError as e:
                conn.close()
                raise FetchError(f"TLS certificate of {sp.hostname} is not valid ({e.verify_message}); "
                                 "the recording host must present a trusted certificate") from None
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                last = e
        raise _Retry(f"{_show(url)}: {type(last).__name__}: {last}")

    # -- responses ----------------------------------------------------------------------------------
    def _fail(self, status: int, reason: str, url: str, provider: Optional[str], headers, what: str) -> None:
        where = f"{what} {_show(url)}"
        if status in (404, 410):
            raise RecordingNotFound(f"{where} answered HTTP {status} {reason}: the recording is not there (deleted, "
                                    "expired, or a wrong URL); not retried - publish the call again with a "
                                    "working recording_url")
        if status in (401, 403):
            raise FetchAuthError(f"{where} answered HTTP {status} {reason}: {self._auth_hint(provider)}")
        if status in (408, 425, 429) or 500 <= status < 600:
            raise _Retry(f"{where} answered HTTP {status} {reason}", _retry_after(headers))
        raise FetchError(f"{where} answered HTTP {status} {reason}; not retried")

    @staticmethod
    def _auth_hint(provider: Optional[str]) -> str:
        return {
            "twilio": "the account requires HTTP auth on recordings: set CALLQA_TWILIO_AUTH_TOKEN (and "
                      "CALLQA_TWILIO_ACCOUNT_SID if the SID in the URL is not the one the token belongs to) on "
                      "the worker",
            "zadarma": "check CALLQA_ZADARMA_API_KEY / CALLQA_ZADARMA_SECRET on the worker (my.zadarma.com, "
                       "Settings -> API) and that the API is enabled",
            "mango": "check CALLQA_MANGO_API_KEY / CALLQA_MANGO_API_SALT on the worker (VPBX code and signing key)",
        }.get(provider or "", "the server wants credentials callqa does not have; publish a URL that needs none "
                              "(e.g. pre-signed) or a file:// path")

    def _download(self, url: str, headers: dict[str, str], policy: URLPolicy, tmp: Path, deadline: float,
                  provider: Optional[str], what: str = "recording") -> None:
        for _hop in range(self.cfg.max_redirects + 1):
            conn, resp = self._request("GET", url, headers, None, policy, deadline)
            try:
                if resp.status in _REDIRECTS and resp.getheader("Location"):
                    nxt = urljoin(url, resp.getheader("Location"))
                    if urlsplit(nxt).netloc.lower() != urlsplit(url).netloc.lower():
                        headers = {k: v for k, v in headers.items() if k.lower() not in ("authorization", "cookie")}
                    url, policy = nxt, self.hop_policy
                    continue
                if not 200 <= resp.status < 300:
                    self._fail(resp.status, resp.reason, url, provider, resp, what)
                self._stream(resp, url, tmp, deadline)
                return
            finally:
                conn.close()
        raise FetchError(f"more than {self.cfg.max_redirects} redirects from {_show(url)}; not retried")

    def _stream(self, resp, url: str, tmp: Path, deadline: float) -> None:
        length = resp.getheader("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        if expected is not None and expected > self.max_bytes:
            raise RecordingTooLarge(f"recording at {_show(url)} is {expected} bytes, over the {self.max_bytes}-byte "
                                    "limit (CALLQA_FETCH_MAX_BYTES); raise it if such calls are expected")
        size = 0
        try:
            with open(tmp, "wb") as out:
                while chunk := resp.read(1 << 16):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise RecordingTooLarge(f"recording at {_show(url)} is larger than {self.max_bytes} bytes "
                                                "(CALLQA_FETCH_MAX_BYTES); raise it if such calls are expected")
                    out.write(chunk)
                    if time.monotonic() > deadline:
                        raise FetchError(f"download of {_show(url)} did not finish within "
                                         f"{self.cfg.deadline_s:.0f}s (CALLQA_FETCH_DEADLINE_S); raise it for "
                                         "long recordings on slow links")
        except (OSError, http.client.HTTPException) as e:
            raise _Retry(f"{_show(url)}: connection broke after {size} bytes: {type(e).__name__}: {e}") from None
        if expected is not None and size != expected:
            raise _Retry(f"{_show(url)}: connection closed after {size} of {expected} bytes")
        if size == 0:
            raise FetchError(f"{_show(url)} answered an empty body: no recording there; not retried")

    def _small_body(self, resp, url: str, limit: int = 1 << 20) -> bytes:
        try:
            data = resp.read(limit + 1)
        except (OSError, http.client.HTTPException) as e:
            raise _Retry(f"{_show(url)}: {type(e).__name__}: {e}") from None
        if len(data) > limit:
            raise ProviderAPIError(f"{_show(url)} answered more than {limit} bytes where a short JSON was expected")
        return data

    # -- providers ------------------------------------------------------------------------------------
    def _twilio_auth(self, url: str) -> dict[str, str]:
        token = self.cfg.twilio_auth_token
        if not token:
            return {}
        sid = self.cfg.twilio_account_sid
        if not sid:   # /2010-04-01/Accounts/AC.../Recordings/RE...
            parts = urlsplit(url).path.split("/")
            sid = next((parts[i + 1] for i, p in enumerate(parts[:-1]) if p == "Accounts"), "")
        if not sid:
            return {}
        return {"Authorization": "Basic " + base64.b64encode(f"{sid}:{token}".encode()).decode()}

    def _zadarma_link(self, url: str, deadline: float) -> str:
        if not (self.cfg.zadarma_api_key and self.cfg.zadarma_secret):
            raise FetchAuthError("a Zadarma recording needs the API: set CALLQA_ZADARMA_API_KEY and "
                                 "CALLQA_ZADARMA_SECRET on the worker (my.zadarma.com, Settings -> API)")
        sp = urlsplit(url)
        params = {k: v for k, v in parse_qsl(sp.query, keep_blank_values=True) if k != "format"}
        api_url, headers = zadarma_api.api_get_request(self.cfg.zadarma_api_key, self.cfg.zadarma_secret, sp.path,
                                                       params, api_base=f"{sp.scheme}://{sp.netloc}")
        conn, resp = self._request("GET", api_url, {**headers, "Accept": "application/json"}, None,
                                   self.first_policy, deadline)
        try:
            body = self._small_body(resp, api_url)
            status, reason = resp.status, resp.reason
        finally:
            conn.close()
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        message = data.get("message") if isinstance(data, dict) else None
        if not 200 <= status < 300 or not isinstance(data, dict) or data.get("status") != "success":
            if status in (401, 403) or 500 <= status or status in (408, 425, 429):
                self._fail(status, f"{reason} ({message or body[:200]!r})", api_url, "zadarma", resp,
                           "Zadarma API")
            raise ProviderAPIError(f"Zadarma API gave no recording link for {params}: HTTP {status}, "
                                   f"{message or body[:200]!r}; check that the call was recorded and the "
                                   "recording is still stored (Zadarma keeps them for a limited time)")
        link = data.get("link")
        if not link and isinstance(data.get("links"), list) and data["links"]:
            link = data["links"][0]   # several recordings of one pbx_call_id: the first
        if not isinstance(link, str) or not link:
            raise ProviderAPIError(f"Zadarma API answered success without a link for {params}: {body[:200]!r}")
        return link

    def _mango(self, url: str, tmp: Path, deadline: float) -> None:
        if not (self.cfg.mango_api_key and self.cfg.mango_api_salt):
            raise FetchAuthError("a Mango Office recording needs the API: set CALLQA_MANGO_API_KEY and "
                                 "CALLQA_MANGO_API_SALT on the worker (VPBX code and signing key)")
        sp = urlsplit(url)
        rid = dict(parse_qsl(sp.query)).get("recording_id")
        if not rid:
            raise FetchError(f"Mango recording URL {url} has no recording_id; publish the call again from the "
                             "record/added event")
        base = f"{sp.scheme}://{sp.netloc}{sp.path[: -len(MANGO_RECORD_SUFFIX)]}"
        api_url, form = mango_api.recording_request(self.cfg.mango_api_key, self.cfg.mango_api_salt, rid,
                                                    api_base=base)
        conn, resp = self._request("POST", api_url, {"Content-Type": "application/x-www-form-urlencoded"},
                                   urlencode(form).encode(), self.first_policy, deadline)
        try:
            if resp.status in _REDIRECTS and resp.getheader("Location"):
                link = urljoin(api_url, resp.getheader("Location"))
            elif 200 <= resp.status < 300:
                ctype = (resp.getheader("Content-Type") or "").lower()
                if "json" in ctype or ctype.startswith("text/"):
                    body = self._small_body(resp, api_url)
                    raise ProviderAPIError(f"Mango API gave no recording for {rid}: {body[:300]!r}; check that "
                                           "recordings are kept in the cloud storage and the id is right")
                self._stream(resp, api_url, tmp, deadline)   # the file itself
                return
            else:
                self._fail(resp.status, resp.reason, api_url, "mango", resp, "Mango API")
        finally:
            conn.close()
        self._download(link, {}, self.hop_policy, tmp, deadline, "mango", what="Mango recording link")


def _retry_after(resp) -> Optional[float]:
    v = resp.getheader("Retry-After") if resp is not None else None
    if v and v.strip().isdigit():
        return min(float(v.strip()), 60.0)
    return None

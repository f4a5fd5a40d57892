"""Recording-URL guard (SSRF): which URLs callqa may later fetch.

* ``https://`` / ``http://``: the host must be on the allow-list (exact name,
  ``*.suffix`` wildcard, or ``*`` for any) and must not be - or, when a
  resolver is given, resolve to - a loopback, private, link-local, CGNAT,
  multicast, reserved or unspecified address, unless ``allow_private``.
  URLs with user:password@ are refused (credentials belong in settings).
  ``http://`` needs ``allow_http``.
* ``file://``: the path, symlinks resolved, must lie inside an allowed directory.
* ``s3://``: allowed (bucket access is governed by the fetcher's credentials).

The ingest service calls ``check_recording_url`` without a resolver (no DNS at
ingest time). The fetcher must call it again with ``resolver=socket_resolver``
right before connecting and connect to the address it checked (DNS rebinding).
"""
from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence
from urllib.parse import unquote, urlsplit

# Where the providers serve recordings (or the API that hands out the link).
DEFAULT_ALLOWED_HOSTS: tuple[str, ...] = (
    "api.twilio.com", "*.twilio.com",
    "api.zadarma.com", "*.zadarma.com",
    "app.mango-office.ru", "*.mango-office.ru",
)

_BLOCKED_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback",
                  "metadata", "metadata.google.internal")


class UnsafeURL(ValueError):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class URLPolicy:
    allowed_hosts: Sequence[str] = DEFAULT_ALLOWED_HOSTS
    allowed_dirs: Sequence[Path] = field(default_factory=list)
    allow_private: bool = False
    allow_http: bool = False
    allow_s3: bool = True

    @classmethod
    def build(cls, extra_hosts: str | Iterable[str] = "", allowed_dirs: Iterable[str | Path] = (),
              allow_private: bool = False, allow_http: bool = False,
              replace_defaults: bool = False) -> "URLPolicy":
        if isinstance(extra_hosts, str):
            extra = [h.strip().lower() for h in extra_hosts.split(",") if h.strip()]
        else:
            extra = [h.strip().lower() for h in extra_hosts if h.strip()]
        hosts = tuple(extra) if replace_defaults else tuple(DEFAULT_ALLOWED_HOSTS) + tuple(extra)
        return cls(hosts, [Path(d).resolve() for d in allowed_dirs], allow_private, allow_http)


def host_allowed(host: str, patterns: Iterable[str]) -> bool:
    host = host.lower().rstrip(".")
    for p in patterns:
        p = p.lower().rstrip(".")
        if p == "*" or p == host:
            return True
        if p.startswith("*.") and host.endswith(p[1:]) and len(host) > len(p) - 1:
            return True
    return False


def parse_ip(host: str) -> Optional[ipaddress._BaseAddress]:
    """An IP literal in any form a resolver/curl would accept (127.1, 0x7f.1, 2130706433, [::1])."""
    h = host.strip("[]")
    try:
        return ipaddress.ip_address(h.split("%", 1)[0])
    except ValueError:
        pass
    try:  # legacy IPv4 forms: inet_aton accepts decimal, octal, hex and short dotted forms
        if h and all(c in "0123456789abcdefxABCDEFX." for c in h) and any(c.isdigit() for c in h):
            return ipaddress.ip_address(socket.inet_aton(h))
    except OSError:
        pass
    return None


def ip_is_internal(ip: ipaddress._BaseAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip_is_internal(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            return ip_is_internal(ip.sixtofour)
    cgnat = isinstance(ip, ipaddress.IPv4Address) and ip in ipaddress.ip_network("100.64.0.0/10")
    return (ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast or ip.is_reserved
            or ip.is_unspecified or cgnat or not ip.is_global)


def socket_resolver(host: str, port: int) -> list[str]:
    return sorted({ai[4][0] for ai in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})


def path_inside(path: Path, dirs: Iterable[Path]) -> bool:
    real = Path(os.path.realpath(path))
    for d in dirs:
        d = Path(os.path.realpath(d))
        if real == d or d in real.parents:
            return True
    return False


def check_recording_url(url: str, policy: URLPolicy,
                        resolver: Optional[Callable[[str, int], list[str]]] = None) -> str:
    """Return the URL if it is safe to fetch, else raise UnsafeURL(reason)."""
    if not isinstance(url, str) or not url or any(c in url for c in "\r\n\t\x00 "):
        raise UnsafeURL("bad_url", "empty or contains whitespace/control characters")
    sp = urlsplit(url)
    scheme = sp.scheme.lower()
    if scheme == "file":
        if sp.netloc not in ("", "localhost"):
            raise UnsafeURL("file_remote_host", sp.netloc)
        path = Path(unquote(sp.path))
        if not path.is_absolute():
            raise UnsafeURL("file_not_absolute", str(path))
        if not policy.allowed_dirs or not path_inside(path, policy.allowed_dirs):
            raise UnsafeURL("file_outside_allowed_dirs", str(path))
        return url
    if scheme == "s3":
        if not policy.allow_s3 or not sp.netloc:
            raise UnsafeURL("s3_not_allowed" if not policy.allow_s3 else "bad_url", url)
        return url
    if scheme not in ("https", "http"):
        raise UnsafeURL("scheme_not_allowed", scheme or "(none)")
    if scheme == "http" and not policy.allow_http:
        raise UnsafeURL("http_not_allowed", "use https:// (or set CALLQA_INGEST_ALLOW_HTTP)")
    if sp.username is not None or sp.password is not None or "@" in sp.netloc:
        raise UnsafeURL("credentials_in_url", "user:password@ is not accepted")
    host = (sp.hostname or "").lower()
    if not host:
        raise UnsafeURL("bad_url", "no host")
    try:
        port = sp.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise UnsafeURL("bad_url", "bad port") from None
    ip = parse_ip(host)
    internal_name = host in _BLOCKED_NAMES or host.endswith(".localhost") or host.endswith(".internal")
    if not policy.allow_private:
        if (ip is not None and ip_is_internal(ip)) or internal_name:
            raise UnsafeURL("private_address", host)
    if not host_allowed(host, policy.allowed_hosts):
        raise UnsafeURL("host_not_allowed", host)
    if resolver is not None and not policy.allow_private and ip is None:
        try:
            addrs = resolver(host, port)
        except OSError as e:
            raise UnsafeURL("unresolvable", f"{host}: {e}") from None
        for a in addrs:
            aip = parse_ip(a)
            if aip is None or ip_is_internal(aip):
                raise UnsafeURL("private_address", f"{host} -> {a}")
    return url

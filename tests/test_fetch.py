"""The recording fetcher against real local HTTP servers: SSRF guard, limits, retries, provider auth.

The fake Zadarma and Mango APIs check requests the way the real ones do (signature
recomputed here from the providers' documented recipes, not with callqa's helpers).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from config.settings import Settings
from pipeline import fetch as fetch_mod
from pipeline.fetch import (
    FetchAuthError, FetchConfig, FetchError, FetchUnavailable, ProviderAPIError, RecordingNotFound,
    RecordingTooLarge, UnsafeRecordingURL, fetch,
)

AUDIO = b"RIFF" + b"\x00" * 4 + b"WAVEfmt " + bytes(range(256)) * 40   # content does not matter here


class FakeServer:
    """A threaded HTTP server; ``routes[(method, path)] = fn(req) -> (status, headers, body)``."""

    def __init__(self):
        self.routes: dict[tuple[str, str], object] = {}
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _handle(self):
                sp = urlsplit(self.path)
                n = int(self.headers.get("Content-Length") or 0)
                req = {"method": self.command, "path": sp.path, "query": dict(parse_qsl(sp.query, True)),
                       "raw_query": sp.query, "headers": {k.lower(): v for k, v in self.headers.items()},
                       "body": self.rfile.read(n) if n else b""}
                server.requests.append(req)
                fn = server.routes.get((self.command, sp.path))
                if fn is None:
                    status, headers, body = 404, {}, b"no such thing"
                else:
                    status, headers, body = fn(req)
                self.send_response(status)
                if isinstance(body, (bytes, bytearray)):
                    headers = {"Content-Length": str(len(body)), **headers}
                else:
                    headers = {"Connection": "close", **headers}
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if isinstance(body, (bytes, bytearray)):
                    self.wfile.write(body)
                else:   # an iterable of chunks, no Content-Length (read to close)
                    for chunk in body:
                        self.wfile.write(chunk)
                    self.close_connection = True

            do_GET = do_POST = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def file(self, path: str, data: bytes = AUDIO, ctype: str = "audio/x-wav"):
        self.routes[("GET", path)] = lambda req: (200, {"Content-Type": ctype}, data)

    def hits(self, path: str) -> list[dict]:
        return [r for r in self.requests if r["path"] == path]


@pytest.fixture
def srv():
    with FakeServer() as s:
        yield s


LOCAL = dict(allow_private=True, allow_http=True, backoff_s=0.01)


def get(url, tmp_path, cfg=None, **kw):
    kw.setdefault("timeout_s", 5)
    return fetch(url, [tmp_path / "rec"], tmp_path / "cache", settings=cfg or FetchConfig(**LOCAL), **kw)


def no_partials(tmp_path):
    return not list((tmp_path / "cache").glob("*.part"))


# ------------------------------------------------------------------ SSRF guard

def test_loopback_refused_by_default(srv, tmp_path):
    srv.file("/rec.wav")
    for url in (f"{srv.base}/rec.wav", f"http://localhost:{srv.port}/rec.wav", f"http://127.1:{srv.port}/rec.wav",
                f"http://[::ffff:127.0.0.1]:{srv.port}/rec.wav", f"http://2130706433:{srv.port}/rec.wav"):
        with pytest.raises(UnsafeRecordingURL, match="CALLQA_FETCH_ALLOW_PRIVATE"):
            get(url, tmp_path, FetchConfig(allow_http=True))
    assert srv.requests == []


def test_name_resolving_to_private_address_refused(srv, tmp_path, monkeypatch):
    monkeypatch.setattr(fetch_mod, "socket_resolver", lambda host, port: ["10.1.2.3"])
    with pytest.raises(UnsafeRecordingURL, match=r"private_address.*10\.1\.2\.3"):
        get("https://recordings.example.com/a.wav", tmp_path, FetchConfig())


def test_loopback_allowed_when_configured_and_connection_pinned(srv, tmp_path, monkeypatch):
    srv.file("/rec.wav")
    p = get(f"{srv.base}/rec.wav", tmp_path)
    assert p.read_bytes() == AUDIO and p.parent == tmp_path / "cache"
    # A name is resolved once; the connection goes to that address, the Host header keeps the name.
    monkeypatch.setattr(fetch_mod, "socket_resolver", lambda host, port: ["127.0.0.1"])
    p2 = get(f"http://pbx.office.test:{srv.port}/rec.wav", tmp_path)
    assert p2.read_bytes() == AUDIO
    assert srv.requests[-1]["headers"]["host"] == f"pbx.office.test:{srv.port}"
    # Through Settings too (what the worker passes), and through the environment when nothing is passed.
    s = Settings(fetch_allow_private=True, fetch_allow_http=True)
    srv.file("/s.wav")
    assert fetch(f"{srv.base}/s.wav", [], tmp_path / "c2", max_bytes=10**6, timeout_s=5, settings=s).exists()
    monkeypatch.setenv("CALLQA_FETCH_ALLOW_PRIVATE", "true")
    monkeypatch.setenv("CALLQA_FETCH_ALLOW_HTTP", "1")
    srv.file("/e.wav")
    assert fetch(f"{srv.base}/e.wav", [], tmp_path / "c3", max_bytes=10**6, timeout_s=5).exists()


def test_http_credentials_and_host_list(srv, tmp_path):
    srv.file("/rec.wav")
    with pytest.raises(UnsafeRecordingURL, match="CALLQA_FETCH_ALLOW_HTTP"):
        get(f"{srv.base}/rec.wav", tmp_path, FetchConfig(allow_private=True))
    with pytest.raises(UnsafeRecordingURL, match="credentials_in_url"):
        get(f"http://u:p@127.0.0.1:{srv.port}/rec.wav", tmp_path)
    with pytest.raises(UnsafeRecordingURL, match="CALLQA_FETCH_ALLOWED_HOSTS"):
        get(f"{srv.base}/rec.wav", tmp_path, FetchConfig(allowed_hosts="pbx.example.com", **LOCAL))
    assert get(f"{srv.base}/rec.wav", tmp_path, FetchConfig(allowed_hosts="pbx.example.com, 127.0.0.1", **LOCAL))
    assert srv.requests and all(r["path"] == "/rec.wav" for r in srv.requests)


def test_redirect_to_private_address_refused(srv, tmp_path, monkeypatch):
    # cdn.example.test "resolves" to a public address; the connection to it lands on the local server.
    names = {"cdn.example.test": ["93.184.216.34"], "intranet.example.test": ["10.0.0.5"]}
    monkeypatch.setattr(fetch_mod, "socket_resolver", lambda host, port: names[host])
    real_connect = fetch_mod._PinnedHTTP.connect

    def connect(self):
        if self._ip == "93.184.216.34":
            self._ip = "127.0.0.1"
        real_connect(self)
    monkeypatch.setattr(fetch_mod._PinnedHTTP, "connect", connect)
    srv.file("/ok.wav")
    cfg = FetchConfig(allow_http=True, backoff_s=0.01)
    assert get(f"http://cdn.example.test:{srv.port}/ok.wav", tmp_path, cfg).read_bytes() == AUDIO
    for target in ("http://169.254.169.254/latest/meta-data/", "http://intranet.example.test/admin",
                   "http://[::1]/x", "file:///etc/passwd"):
        srv.routes[("GET", "/r")] = lambda req, t=target: (302, {"Location": t}, b"")
        with pytest.raises(UnsafeRecordingURL):
            get(f"http://cdn.example.test:{srv.port}/r", tmp_path / "r", cfg)
    assert len(srv.hits("/r")) == 4 and len(srv.requests) == 5


def test_file_urls_unchanged(tmp_path):
    rec = tmp_path / "rec"
    rec.mkdir()
    (rec / "a.wav").write_bytes(AUDIO)
    assert fetch((rec / "a.wav").as_uri(), [rec], tmp_path / "cache", timeout_s=1) == (rec / "a.wav").resolve()
    with pytest.raises(FetchError, match="outside the allowed"):
        fetch("file:///etc/passwd", [rec], tmp_path / "cache", timeout_s=1)
    with pytest.raises(FetchError, match="unsupported recording URL scheme"):
        fetch("ftp://x/y.wav", [rec], tmp_path / "cache", timeout_s=1)


# ------------------------------------------------------------------ limits, errors, retries

def test_size_cap_by_content_length_and_while_streaming(srv, tmp_path):
    srv.file("/big.wav", b"x" * 5000)
    srv.routes[("GET", "/stream.wav")] = lambda req: (200, {"Content-Type": "audio/x-wav"}, (b"y" * 1000 for _ in range(10)))
    with pytest.raises(RecordingTooLarge, match="CALLQA_FETCH_MAX_BYTES"):
        get(f"{srv.base}/big.wav", tmp_path, max_bytes=4000)
    with pytest.raises(RecordingTooLarge, match="larger than 4000"):
        get(f"{srv.base}/stream.wav", tmp_path, max_bytes=4000)
    assert len(srv.hits("/big.wav")) == 1 and len(srv.hits("/stream.wav")) == 1   # not retried
    assert no_partials(tmp_path) and not list((tmp_path / "cache").iterdir())
    assert get(f"{srv.base}/stream.wav", tmp_path, max_bytes=20000).read_bytes() == b"y" * 10000


def test_404_is_clear_and_not_retried(srv, tmp_path):
    with pytest.raises(RecordingNotFound, match=r"HTTP 404.*not retried.*recording_url"):
        get(f"{srv.base}/gone.wav", tmp_path, retries=3)
    assert len(srv.hits("/gone.wav")) == 1


def test_503_is_retried_then_succeeds(srv, tmp_path):
    answers = iter([(503, {}, b"busy"), (503, {"Retry-After": "0"}, b"busy"), (200, {}, AUDIO)])
    srv.routes[("GET", "/flaky.wav")] = lambda req: next(answers)
    assert get(f"{srv.base}/flaky.wav", tmp_path, retries=3).read_bytes() == AUDIO
    assert len(srv.hits("/flaky.wav")) == 3


def test_503_forever_gives_up_with_advice(srv, tmp_path):
    srv.routes[("GET", "/down.wav")] = lambda req: (503, {}, b"down")
    with pytest.raises(FetchUnavailable, match=r"after 2 attempts.*HTTP 503.*publish the call again"):
        get(f"{srv.base}/down.wav", tmp_path, retries=2)
    assert len(srv.hits("/down.wav")) == 2


def test_read_timeout_is_retried(srv, tmp_path):
    def slow(req):
        time.sleep(1.0)
        return 200, {}, AUDIO
    srv.routes[("GET", "/slow.wav")] = slow
    with pytest.raises(FetchUnavailable, match="[Tt]imeout|timed out"):
        get(f"{srv.base}/slow.wav", tmp_path, retries=2, timeout_s=0.3)
    assert len(srv.hits("/slow.wav")) == 2


def test_downloads_are_cached_per_url(srv, tmp_path):
    srv.file("/c.wav")
    a = get(f"{srv.base}/c.wav", tmp_path)
    b = get(f"{srv.base}/c.wav", tmp_path)
    assert a == b and len(srv.hits("/c.wav")) == 1


# ------------------------------------------------------------------ Twilio

def test_twilio_basic_auth_sent_and_dropped_on_redirect(srv, tmp_path):
    sid, token = "AC" + "a" * 32, "tw-token"
    rec_path = f"/2010-04-01/Accounts/{sid}/Recordings/RE{'b' * 32}"
    # Twilio answers the media URL with a redirect to its storage; the token must not follow it.
    srv.routes[("GET", rec_path)] = lambda req: (302, {"Location": f"http://localhost:{srv.port}/storage/RE.wav?X-Amz-Signature=s"}, b"")
    srv.file("/storage/RE.wav")
    cfg = FetchConfig(twilio_auth_token=token, provider_hosts={"twilio": ("127.0.0.1",)}, **LOCAL)
    assert get(f"{srv.base}{rec_path}", tmp_path, cfg).read_bytes() == AUDIO
    first, second = srv.hits(rec_path)[0], srv.hits("/storage/RE.wav")[0]
    assert first["headers"]["authorization"] == "Basic " + base64.b64encode(f"{sid}:{token}".encode()).decode()
    assert "authorization" not in second["headers"]
    # An explicit account SID wins over the one in the URL (subaccount recordings).
    cfg2 = FetchConfig(twilio_auth_token=token, twilio_account_sid="ACparent",
                       provider_hosts={"twilio": ("127.0.0.1",)}, **LOCAL)
    get(f"{srv.base}{rec_path}", tmp_path / "2", cfg2)
    assert srv.hits(rec_path)[1]["headers"]["authorization"] == "Basic " + base64.b64encode(b"ACparent:tw-token").decode()
    # Not a Twilio host: no credentials, whatever the path looks like.
    srv.file("/2010-04-01/Accounts/AC1/Recordings/RE1")
    get(f"http://localhost:{srv.port}/2010-04-01/Accounts/AC1/Recordings/RE1", tmp_path / "3", cfg)
    assert "authorization" not in srv.hits("/2010-04-01/Accounts/AC1/Recordings/RE1")[0]["headers"]


def test_twilio_401_says_which_setting(srv, tmp_path):
    path = "/2010-04-01/Accounts/AC1/Recordings/RE1"
    srv.routes[("GET", path)] = lambda req: (401, {}, b'{"code": 20003}')
    with pytest.raises(FetchAuthError, match="CALLQA_TWILIO_AUTH_TOKEN"):
        get(f"{srv.base}{path}", tmp_path, FetchConfig(provider_hosts={"twilio": ("127.0.0.1",)}, **LOCAL))
    assert len(srv.hits(path)) == 1


# ------------------------------------------------------------------ Zadarma

ZD_KEY, ZD_SECRET = "zd-key", "zd-secret"


def zadarma_api(srv: FakeServer, link: str):
    """The API's check, as the official client signs: key:base64(hex(HMAC-SHA1(secret, method+qs+md5(qs))))."""
    method = "/v1/pbx/record/request/"

    def handler(req):
        qs = req["raw_query"]
        params = dict(parse_qsl(qs))
        assert qs == urlencode(sorted(params.items())), "parameters must be sent sorted"
        assert params.get("format") == "json"
        data = method + qs + hashlib.md5(qs.encode()).hexdigest()
        want = base64.b64encode(hmac.new(ZD_SECRET.encode(), data.encode(), hashlib.sha1).hexdigest().encode()).decode()
        if req["headers"].get("authorization") != f"{ZD_KEY}:{want}":
            return 401, {"Content-Type": "application/json"}, b'{"status":"error","message":"Not authorized"}'
        if params.get("call_id") == "missing":
            return 200, {"Content-Type": "application/json"}, b'{"status":"error","message":"Record not found"}'
        return 200, {"Content-Type": "application/json"}, json.dumps(
            {"status": "success", "link": link, "lifetime_till": "2026-11-02 12:00:00"}).encode()
    srv.routes[("GET", method)] = handler
    return method


def test_zadarma_link_requested_with_signed_api_call(srv, tmp_path):
    from pipeline.ingest.zadarma import record_request_url
    method = zadarma_api(srv, f"{srv.base}/zd/download/rec1.mp3?token=t")
    srv.file("/zd/download/rec1.mp3", ctype="audio/mpeg")
    # The URL the adapter publishes, pointed at the fake API.
    url = record_request_url("1705312345.123-rec", "in_abc").replace("https://api.zadarma.com", srv.base)
    cfg = FetchConfig(zadarma_api_key=ZD_KEY, zadarma_secret=ZD_SECRET, provider_hosts={"zadarma": ("127.0.0.1",)},
                      **LOCAL)
    assert get(url, tmp_path, cfg).read_bytes() == AUDIO
    api = srv.hits(method)[0]
    assert api["query"] == {"call_id": "1705312345.123-rec", "pbx_call_id": "in_abc", "format": "json"}
    assert "authorization" not in srv.hits("/zd/download/rec1.mp3")[0]["headers"]

    bad = FetchConfig(zadarma_api_key=ZD_KEY, zadarma_secret="wrong", provider_hosts={"zadarma": ("127.0.0.1",)}, **LOCAL)
    with pytest.raises(FetchAuthError, match="CALLQA_ZADARMA_SECRET"):
        get(url, tmp_path / "bad", bad)
    with pytest.raises(ProviderAPIError, match="Record not found"):
        get(url.replace("1705312345.123-rec", "missing"), tmp_path / "missing", cfg)
    n = len(srv.requests)
    with pytest.raises(FetchAuthError, match="CALLQA_ZADARMA_API_KEY"):
        get(url, tmp_path / "nocreds", FetchConfig(provider_hosts={"zadarma": ("127.0.0.1",)}, **LOCAL))
    assert len(srv.requests) == n     # nothing sent without credentials


# ------------------------------------------------------------------ Mango Office

MG_KEY, MG_SALT = "mg-key", "mg-salt"


def mango_api(srv: FakeServer):
    path = "/vpbx/queries/recording/post"

    def handler(req):
        assert req["headers"]["content-type"] == "application/x-www-form-urlencoded"
        form = dict(parse_qsl(req["body"].decode()))
        want = hashlib.sha256((MG_KEY + form.get("json", "") + MG_SALT).encode()).hexdigest()
        if form.get("vpbx_api_key") != MG_KEY or form.get("sign") != want:
            return 401, {"Content-Type": "application/json"}, b'{"result":3102}'
        js = json.loads(form["json"])
        assert js["action"] == "download"
        return 302, {"Location": f"/files/{js['recording_id']}.mp3?one-time=1"}, b""
    srv.routes[("POST", path)] = handler
    return path


def test_mango_recording_fetched_through_signed_post(srv, tmp_path):
    from pipeline.ingest.mango import recording_url
    path = mango_api(srv)
    srv.file("/files/MToxMDY.mp3", ctype="audio/mpeg")
    url = recording_url("MToxMDY").replace("https://app.mango-office.ru", srv.base)
    cfg = FetchConfig(mango_api_key=MG_KEY, mango_api_salt=MG_SALT, provider_hosts={"mango": ("127.0.0.1",)}, **LOCAL)
    assert get(url, tmp_path, cfg).read_bytes() == AUDIO
    post = srv.hits(path)[0]
    assert post["method"] == "POST" and json.loads(dict(parse_qsl(post["body"].decode()))["json"])["recording_id"] == "MToxMDY"
    assert srv.hits("/files/MToxMDY.mp3")[0]["method"] == "GET"

    bad = FetchConfig(mango_api_key=MG_KEY, mango_api_salt="wrong", provider_hosts={"mango": ("127.0.0.1",)}, **LOCAL)
    with pytest.raises(FetchAuthError, match="CALLQA_MANGO_API_SALT"):
        get(url, tmp_path / "bad", bad)
    with pytest.raises(FetchAuthError, match="CALLQA_MANGO_API_KEY"):
        get(url, tmp_path / "nocreds", FetchConfig(provider_hosts={"mango": ("127.0.0.1",)}, **LOCAL))

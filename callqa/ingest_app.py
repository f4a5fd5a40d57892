"""The telephony ingest HTTP service: provider callbacks -> CallRecorded on Kafka.

``create_app(settings, publisher)`` builds the FastAPI app; ``run_ingest(host,
port)`` runs it (the ``callqa ingest`` command). Every hook verifies the
provider's signature (401), parses with the provider's adapter (400 with a
reason naming the field), checks the recording URL against the SSRF guard (400
``unsafe_url:<why>``), publishes through the injected publisher in a worker
thread, and answers only after the broker acknowledged (503 if it did not, so
the provider retries).

Idempotency: a retried callback publishes nothing twice. The service remembers
``(provider, call_id) -> rank`` in an in-memory LRU (CALLQA_INGEST_DEDUP_SIZE)
and serialises concurrent callbacks for one call; an event is published again
only when it is richer (higher rank: e.g. a Zadarma NOTIFY_END after a bare
NOTIFY_RECORD). The LRU does not survive a restart and is per process: beyond
it, duplicates are harmless because every downstream stage upserts by call_id.
"""
from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from callqa.ingest_settings import IngestSettings
from models.events import CallRecorded
from pipeline.ingest.amocrm import AmoCrmAdapter
from pipeline.ingest.asterisk import AsteriskAdapter
from pipeline.ingest.base import ContextStore, IngestConfig, IngestError, Outcome, RequestParts
from pipeline.ingest.bitrix24 import Bitrix24Adapter
from pipeline.ingest.crm import CrmConfig, GenericCrmAdapter
from pipeline.ingest.freeswitch import FreeSwitchAdapter
from pipeline.ingest.generic import GenericAdapter
from pipeline.ingest.hubspot import HubSpotAdapter
from pipeline.ingest.mango import MangoAdapter
from pipeline.ingest.managers import ManagerDirectory
from pipeline.ingest.safety import URLPolicy, UnsafeURL, check_recording_url
from pipeline.ingest.twilio import TwilioAdapter
from pipeline.ingest.zadarma import ZadarmaAdapter

log = logging.getLogger("callqa.ingest")
PROVIDERS = ("twilio", "asterisk", "freeswitch", "zadarma", "mango", "generic", "amocrm", "kommo", "bitrix24", "hubspot",
             "crm-generic")


def ingest_config(s: IngestSettings) -> IngestConfig:
    return IngestConfig(
        verify=s.verify_signatures, public_url=s.public_url, twilio_auth_token=s.twilio_auth_token,
        twilio_agent_channel=s.twilio_agent_channel, zadarma_secret=s.zadarma_secret,
        zadarma_manager_channel=s.zadarma_manager_channel, zadarma_timezone=s.zadarma_timezone,
        mango_api_key=s.mango_api_key, mango_api_salt=s.mango_api_salt,
        mango_manager_channel=s.mango_manager_channel, generic_secret=s.generic_secret,
        asterisk_secret=s.asterisk_secret, freeswitch_secret=s.freeswitch_secret, language=s.language,
        path_map=s.path_map)


def crm_config(s: IngestSettings) -> CrmConfig:
    return CrmConfig(
        verify=s.verify_signatures, generic_secret=s.crm_generic_secret, amocrm_secret=s.amocrm_secret,
        amocrm_subdomain=s.amocrm_subdomain, amocrm_temperature_field=s.amocrm_temperature_field,
        amocrm_source_field=s.amocrm_source_field, amocrm_won_status=s.amocrm_won_status,
        amocrm_lost_status=s.amocrm_lost_status, amocrm_proposal_statuses=s.amocrm_proposal_statuses,
        amocrm_invoice_statuses=s.amocrm_invoice_statuses, amocrm_currency=s.amocrm_currency,
        bitrix24_app_token=s.bitrix24_app_token, bitrix24_webhook_url=s.bitrix24_webhook_url,
        bitrix24_temperature_field=s.bitrix24_temperature_field, bitrix24_proposal_stages=s.bitrix24_proposal_stages,
        bitrix24_invoice_stages=s.bitrix24_invoice_stages, hubspot_client_secret=s.hubspot_client_secret,
        hubspot_token=s.hubspot_token, hubspot_api_url=s.hubspot_api_url, hubspot_public_url=s.public_url,
        hubspot_temperature_property=s.hubspot_temperature_property, hubspot_won_stages=s.hubspot_won_stages,
        hubspot_lost_stages=s.hubspot_lost_stages, hubspot_proposal_stages=s.hubspot_proposal_stages,
        hubspot_invoice_stages=s.hubspot_invoice_stages, fetch_timeout_s=s.crm_fetch_timeout_s)


def url_policy(s: IngestSettings) -> URLPolicy:
    return URLPolicy.build(s.allowed_hosts, s.allowed_dirs, allow_private=s.allow_private,
                           allow_http=s.allow_http)


class Metrics:
    def __init__(self) -> None:
        self.accepted: Counter[str] = Counter()
        self.rejected: Counter[tuple[str, str]] = Counter()
        self.ignored: Counter[tuple[str, str]] = Counter()
        self.duplicates: Counter[str] = Counter()
        self._lock = threading.Lock()

    def render(self, managers: ManagerDirectory) -> str:
        def esc(v: str) -> str:
            return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        lines = ["# HELP callqa_ingest_accepted_total Calls published to the broker (acknowledged).",
                 "# TYPE callqa_ingest_accepted_total counter"]
        for p in PROVIDERS:
            lines.append(f'callqa_ingest_accepted_total{{provider="{p}"}} {self.accepted[p]}')
        lines += ["# HELP callqa_ingest_rejected_total Callbacks refused, by reason.",
                  "# TYPE callqa_ingest_rejected_total counter"]
        for (p, r), n in sorted(self.rejected.items()):
            lines.append(f'callqa_ingest_rejected_total{{provider="{esc(p)}",reason="{esc(r)}"}} {n}')
        lines += ["# HELP callqa_ingest_ignored_total Callbacks acknowledged without a recording to publish.",
                  "# TYPE callqa_ingest_ignored_total counter"]
        for (p, r), n in sorted(self.ignored.items()):
            lines.append(f'callqa_ingest_ignored_total{{provider="{esc(p)}",reason="{esc(r)}"}} {n}')
        lines += ["# HELP callqa_ingest_duplicates_total Retried callbacks that published nothing.",
                  "# TYPE callqa_ingest_duplicates_total counter"]
        for p in PROVIDERS:
            lines.append(f'callqa_ingest_duplicates_total{{provider="{p}"}} {self.duplicates[p]}')
        lines += ["# HELP callqa_ingest_unknown_extension_total Calls whose extension maps to no manager.",
                  "# TYPE callqa_ingest_unknown_extension_total counter"]
        for (p, ext), n in sorted(managers.unknown_counts.items()):
            lines.append(f'callqa_ingest_unknown_extension_total{{provider="{esc(p)}",extension="{esc(ext)}"}} {n}')
        return "\n".join(lines) + "\n"


class Deduper:
    """(provider, call_id) -> best rank published; LRU-bounded; one in-flight publish per key."""

    def __init__(self, size: int):
        self.size = size
        self._seen: "OrderedDict[tuple[str, str], int]" = OrderedDict()
        self._locks: dict[tuple[str, str], list] = {}   # key -> [lock, users]

    def rank(self, key) -> Optional[int]:
        r = self._seen.get(key)
        if r is not None:
            self._seen.move_to_end(key)
        return r

    def mark(self, key, rank: int) -> None:
        self._seen[key] = max(rank, self._seen.get(key, 0))
        self._seen.move_to_end(key)
        while len(self._seen) > self.size:
            self._seen.popitem(last=False)

    async def guard(self, key):
        entry = self._locks.setdefault(key, [asyncio.Lock(), 0])
        entry[1] += 1
        return _Guard(self, key, entry)


class _Guard:
    def __init__(self, d: Deduper, key, entry):
        self.d, self.key, self.entry = d, key, entry

    async def __aenter__(self):
        await self.entry[0].acquire()

    async def __aexit__(self, *exc):
        self.entry[0].release()
        self.entry[1] -= 1
        if self.entry[1] == 0:
            self.d._locks.pop(self.key, None)


def create_app(settings: IngestSettings, publisher: Any, managers: Optional[ManagerDirectory] = None) -> FastAPI:
    """``publisher`` needs ``publish(event, timeout_s=...)`` that returns after the broker ack."""
    managers = managers if managers is not None else ManagerDirectory.from_yaml(settings.managers_file)
    cfg = ingest_config(settings)
    policy = url_policy(settings)
    ctx = ContextStore(max(1000, settings.dedup_size // 2))
    dedup = Deduper(settings.dedup_size)
    metrics = Metrics()
    adapters = {
        "twilio": TwilioAdapter(cfg, managers),
        "zadarma": ZadarmaAdapter(cfg, managers),
        "mango": MangoAdapter(cfg, managers),
        "freeswitch": FreeSwitchAdapter(cfg, managers),
        "asterisk": AsteriskAdapter(cfg, managers, tz=settings.asterisk_timezone),
        "generic": GenericAdapter(cfg, managers),
    }
    crm_cfg = crm_config(settings)
    crm_adapters = {
        "amocrm": AmoCrmAdapter(crm_cfg, managers, "amocrm"),
        "kommo": AmoCrmAdapter(crm_cfg, managers, "kommo"),
        "bitrix24": Bitrix24Adapter(crm_cfg, managers),
        "hubspot": HubSpotAdapter(crm_cfg, managers),
        "crm-generic": GenericCrmAdapter(crm_cfg, managers),
    }
    app = FastAPI(title="callqa ingest", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.metrics, app.state.dedup, app.state.managers, app.state.context = metrics, dedup, managers, ctx

    def reject(provider: str, status: int, reason: str, detail: str = "") -> JSONResponse:
        metrics.rejected[(provider, reason)] += 1
        log.warning("ingest %s rejected (%s): %s %s", provider, status, reason, detail)
        return JSONResponse({"status": "rejected", "reason": reason, "detail": detail}, status_code=status)

    async def parts_of(request: Request) -> RequestParts:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_body_bytes:
                raise IngestError("body_too_large")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        form = None
        if ctype == "application/x-www-form-urlencoded":
            form = parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True)
        return RequestParts(method=request.method, url=str(request.url), path=request.url.path,
                            query=list(request.query_params.multi_items()),
                            headers={k.lower(): v for k, v in request.headers.items()}, body=body, form=form)

    async def publish_once(provider: str, ev: CallRecorded, rank: int) -> str:
        key = (provider, ev.call_id)
        async with await dedup.guard(key):
            prev = dedup.rank(key)
            if prev is not None and prev >= rank:
                metrics.duplicates[provider] += 1
                return "duplicate"
            await run_in_threadpool(publisher.publish, ev, timeout_s=settings.publish_timeout_s)
            dedup.mark(key, rank)
            metrics.accepted[provider] += 1
            return "published"

    async def checked(provider: str, request: Request, verify: Callable[[RequestParts], None],
                      parse: Callable[[RequestParts], Any], in_thread: bool = False) -> Any:
        """The adapter's outcome for a verified, parsed request, or the 4xx answer saying why not (5xx where the
        CRM's API failed or the provider is not configured). ``in_thread``: a parse that calls the CRM's API
        runs off the event loop, so other callbacks are answered meanwhile."""
        try:
            parts = await parts_of(request)
        except IngestError:
            return reject(provider, 413, "body_too_large")
        try:
            verify(parts)
            return await run_in_threadpool(parse, parts) if in_thread else parse(parts)
        except IngestError as e:
            return reject(provider, e.status, e.reason, e.detail)

    def ignored(provider: str, reason: Optional[str]) -> Response:
        metrics.ignored[(provider, reason or "nothing")] += 1
        return JSONResponse({"status": "ignored", "reason": reason})

    async def publish_crm_once(provider: str, ev: Any) -> str:
        """One CRM event on the CRM topic (key: the lead), once per event_id while remembered."""
        key = (provider, ev.event_id)
        async with await dedup.guard(key):
            if dedup.rank(key) is not None:
                metrics.duplicates[provider] += 1
                return "duplicate"
            await run_in_threadpool(publisher.publish_raw, ev.lead_key, ev.model_dump_json().encode(),
                                    settings.publish_timeout_s, settings.crm_topic)
            dedup.mark(key, 1)
            metrics.accepted[provider] += 1
            return "published"

    async def handle_crm(provider: str, request: Request) -> Response:
        """A CRM webhook: verify (401), parse (400; 502 when the CRM's API, asked for the lead or deal, failed;
        503 when the CRM is not configured here), publish every event or answer 503 (the CRM retries; the events
        already published are then duplicates, published nothing twice)."""
        adapter = crm_adapters[provider]
        outcome = await checked(provider, request, adapter.verify, adapter.parse, in_thread=True)
        if isinstance(outcome, Response):
            return outcome
        if not outcome.events:
            return ignored(provider, outcome.ignored)
        results = []
        for ev in outcome.events:
            try:
                results.append({"event_id": ev.event_id, "type": ev.type, "lead_id": ev.lead_id,
                                "status": await publish_crm_once(provider, ev)})
            except Exception as e:
                log.error("ingest %s: publish of %s failed: %r", provider, ev.event_id, e)
                return reject(provider, 503, "publish_failed", type(e).__name__)
        return JSONResponse({"status": "ok", "events": results})

    async def handle(provider: str, request: Request,
                     parse: Optional[Callable[[RequestParts], Outcome]] = None) -> Response:
        adapter = adapters[provider]
        outcome = await checked(provider, request, adapter.verify,
                                parse or (lambda parts: adapter.parse(parts, ctx)))
        if isinstance(outcome, Response):
            return outcome
        events = outcome.events()
        if not events:
            return ignored(provider, outcome.ignored)
        if outcome.unknown_extension is not None:
            log.warning("ingest %s: extension %r maps to no manager (config %s)", provider,
                        outcome.unknown_extension, settings.managers_file)
        results = []
        for ev, rank in events:
            try:
                check_recording_url(ev.recording_url, policy)
            except UnsafeURL as e:
                return reject(provider, 400, f"unsafe_url:{e.reason}", str(e))
            try:
                results.append({"call_id": ev.call_id, "status": await publish_once(provider, ev, rank)})
            except Exception as e:  # broker down or no ack in time: let the provider retry
                log.error("ingest %s: publish of %s failed: %r", provider, ev.call_id, e)
                return reject(provider, 503, "publish_failed", type(e).__name__)
        body: dict[str, Any] = dict(results[0])
        if len(results) > 1:
            body["calls"] = results
        return JSONResponse(body)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "managers": len(managers)}

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return PlainTextResponse(metrics.render(managers), media_type="text/plain; version=0.0.4")

    @app.post("/hooks/twilio")
    async def twilio(request: Request) -> Response:
        return await handle("twilio", request)

    @app.get("/hooks/zadarma")
    async def zadarma_echo(zd_echo: str = "") -> Response:
        # Zadarma checks the URL by GET ?zd_echo=<random> and expects it echoed back.
        return PlainTextResponse(zd_echo[:256])

    @app.post("/hooks/zadarma")
    async def zadarma(request: Request) -> Response:
        return await handle("zadarma", request)

    @app.post("/hooks/mango/events/record/added")
    async def mango_record(request: Request) -> Response:
        return await handle("mango", request, lambda p: adapters["mango"].parse(p, ctx, "record/added"))

    @app.post("/hooks/mango/events/summary")
    async def mango_summary(request: Request) -> Response:
        return await handle("mango", request, lambda p: adapters["mango"].parse(p, ctx, "summary"))

    @app.post("/hooks/mango/{rest:path}")
    async def mango_other(rest: str, request: Request) -> Response:
        def parse(p: RequestParts) -> Outcome:
            return Outcome(ignored=f"event:{rest}")
        if not (await request.body()).strip():      # Mango's "check connection" posts nothing
            metrics.ignored[("mango", "ping")] += 1
            return JSONResponse({"status": "ignored", "reason": "ping"})
        return await handle("mango", request, parse)

    @app.post("/hooks/freeswitch")
    async def freeswitch(request: Request) -> Response:
        return await handle("freeswitch", request)

    @app.post("/hooks/asterisk")
    async def asterisk(request: Request) -> Response:
        return await handle("asterisk", request)

    @app.post("/hooks/generic")
    async def generic(request: Request) -> Response:
        return await handle("generic", request)

    # ---- CRM webhooks -> crm.events (leads, statuses, deals) ----

    @app.post("/hooks/crm/generic")
    async def crm_generic(request: Request) -> Response:
        return await handle_crm("crm-generic", request)

    @app.post("/hooks/amocrm/{secret}")
    async def amocrm(secret: str, request: Request) -> Response:
        return await handle_crm("amocrm", request)

    @app.post("/hooks/kommo/{secret}")
    async def kommo(secret: str, request: Request) -> Response:
        return await handle_crm("kommo", request)

    @app.post("/hooks/bitrix24")
    async def bitrix24(request: Request) -> Response:
        return await handle_crm("bitrix24", request)

    @app.post("/hooks/hubspot")
    async def hubspot(request: Request) -> Response:
        return await handle_crm("hubspot", request)

    return app


# ---- spool watcher (Asterisk/FreePBX monitor directory) ---------------------

def spool_loop(settings: IngestSettings, publisher: Any, managers: ManagerDirectory,
               stop: threading.Event) -> None:
    """Scan the monitor dir every CALLQA_ASTERISK_SPOOL_INTERVAL_S; publish, then commit."""
    from pipeline.ingest.spool import SpoolScanner

    out_dir = Path(settings.spool_out_dir) if settings.spool_out_dir else settings.allowed_dirs[0] / "asterisk"
    scanner = SpoolScanner(settings.spool_dir, out_dir, settings.home_dir / "ingest" / "spool-state.json",
                           managers, settle_s=settings.spool_settle_s, tz=settings.asterisk_timezone,
                           language=settings.language)
    policy = url_policy(settings)
    while not stop.is_set():
        try:
            for ev in scanner.scan():
                try:
                    check_recording_url(ev.recording_url, policy)
                except UnsafeURL as e:
                    log.error("spool: %s refused (%s); add the spool dirs to CALLQA_RECORDINGS_DIR", ev.call_id, e)
                    continue
                publisher.publish(ev, timeout_s=settings.publish_timeout_s)
                scanner.commit(ev.call_id)
        except Exception:  # keep watching; the next scan retries what was not committed
            log.exception("spool scan failed")
        stop.wait(settings.spool_interval_s)


class HideUrlSecrets(logging.Filter):
    """The access log must not print the secret that ends an amoCRM/Kommo webhook URL."""

    _secret = re.compile(r"(/hooks/(?:amocrm|kommo)/)[^/?\s\"]+")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple(self._secret.sub(r"\1***", a) if isinstance(a, str) else a
                                for a in (record.args if isinstance(record.args, tuple) else (record.args,)))
        return True


def run_ingest(host: str = "0.0.0.0", port: int = 8090) -> None:
    """Run the ingest service (and the spool watcher when CALLQA_ASTERISK_SPOOL_DIR is set)."""
    import uvicorn

    from callqa.publisher import Publisher
    from config.settings import Settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)   # kafka-python logs every connection at INFO
    base = Settings.from_env()
    ingest = IngestSettings.from_env()
    bootstrap = base.kafka_bootstrap
    if not bootstrap:
        raise SystemExit("callqa: error: set CALLQA_KAFKA_BOOTSTRAP=host:port (the broker the worker reads); "
                         "for a local one run `callqa broker` in another terminal")
    try:
        publisher = Publisher(bootstrap, base.topic_recorded)
    except Exception as e:   # kafka-python: NoBrokersAvailable / KafkaTimeoutError at bootstrap
        raise SystemExit(f"callqa: error: cannot reach the Kafka broker at CALLQA_KAFKA_BOOTSTRAP={bootstrap} "
                         f"({type(e).__name__}); start it (`callqa broker`) or fix the address") from None
    managers = ManagerDirectory.from_yaml(ingest.managers_file)
    app = create_app(ingest, publisher, managers)
    stop = threading.Event()
    watcher = None
    if ingest.spool_dir:
        watcher = threading.Thread(target=spool_loop, args=(ingest, publisher, managers, stop),
                                   name="callqa-spool", daemon=True)
        watcher.start()
    logging.getLogger("uvicorn.access").addFilter(HideUrlSecrets())
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        stop.set()
        if watcher is not None:
            watcher.join(timeout=30)
        publisher.close()

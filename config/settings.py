"""Typed settings: each has an environment name and a default, so callqa runs
embedded (SQLite, local broker) with nothing to configure first."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from datetime import tzinfo
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent


def _home() -> Path:
    return Path(os.environ.get("CALLQA_HOME", Path.cwd() / "var")).resolve()


def setting(env: str, default: Any, help: str) -> Any:
    return field(default=default, metadata={"env": env, "help": help})


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str = setting(
        "CALLQA_KAFKA_BOOTSTRAP", "", "Kafka bootstrap servers (host:port,...); worker, publish and retag need it "
        "(`callqa broker` runs a local one); only `callqa demo` starts its own broker when it is empty")
    kafka_security_protocol: str = setting(
        "CALLQA_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", "PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL (a company cluster)")
    kafka_sasl_mechanism: str = setting(
        "CALLQA_KAFKA_SASL_MECHANISM", "", "PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512 (with SASL_*)")
    kafka_sasl_username: str = setting("CALLQA_KAFKA_SASL_USERNAME", "", "SASL user")
    kafka_sasl_password: str = setting("CALLQA_KAFKA_SASL_PASSWORD", "", "SASL password")
    kafka_ssl_cafile: str = setting(
        "CALLQA_KAFKA_SSL_CAFILE", "", "PEM file of the CA that signed the brokers' certificates (empty: the system's)")
    kafka_ssl_certfile: str = setting(
        "CALLQA_KAFKA_SSL_CERTFILE", "", "client certificate (PEM), where the brokers ask for one (mutual TLS)")
    kafka_ssl_keyfile: str = setting("CALLQA_KAFKA_SSL_KEYFILE", "", "the client certificate's private key (PEM)")
    kafka_ssl_check_hostname: bool = setting(
        "CALLQA_KAFKA_SSL_CHECK_HOSTNAME", True, "check that the broker's certificate names the host connected to")
    database_url: str = setting(
        "CALLQA_DATABASE_URL", "", "SQLAlchemy URL; empty = SQLite file in CALLQA_HOME")
    db_pool_size: int = setting("CALLQA_DB_POOL_SIZE", 5, "PostgreSQL: connections kept open per process")
    db_max_overflow: int = setting("CALLQA_DB_MAX_OVERFLOW", 10, "PostgreSQL: extra connections under load")
    db_pool_recycle_s: int = setting(
        "CALLQA_DB_POOL_RECYCLE_S", 1800, "PostgreSQL: reopen connections older than this (proxies drop idle ones)")
    db_pool_timeout_s: int = setting("CALLQA_DB_POOL_TIMEOUT_S", 30, "PostgreSQL: wait this long for a free connection")
    store_batch_max: int = setting(
        "CALLQA_STORE_BATCH_MAX", 200, "worker: tagged calls (and statistics updates) written to the database in one "
        "transaction at most; their offsets are committed only after it")
    store_batch_wait_s: float = setting(
        "CALLQA_STORE_BATCH_WAIT_S", 0.05, "worker: how long a batch waits for more events before it is written "
        "(a latency bound when calls trickle in; under load batches fill first)")
    stream_buffer: int = setting(
        "CALLQA_STREAM_BUFFER", 1000, "worker: events each agent holds read ahead of its work (Faust's "
        "stream_buffer_maxsize, 4096 by default): with 10 KB transcripts, a bound of about 10 MB per agent "
        "on what a burst can park in memory")
    db_retry_max_s: float = setting(
        "CALLQA_DB_RETRY_MAX_S", 5.0, "worker: longest pause between retries while the database is unreachable "
        "(retried until it is back, or until the worker is asked to stop: then left, unacknowledged, to the next "
        "worker; a call is never dead-lettered for an outage)")
    app_id: str = setting("CALLQA_APP_ID", "callqa", "Faust app id (consumer group)")
    log_format: str = setting("CALLQA_LOG_FORMAT", "text", "worker logs: text, or json (one object a line, with "
                              "the call_id of the event being handled)")
    metrics_port: int = setting(
        "CALLQA_METRICS_PORT", 0, "worker: serve Prometheus /metrics and /healthz on this port (0: off; e.g. 9102)")
    metrics_host: str = setting("CALLQA_METRICS_HOST", "0.0.0.0", "worker: the address /metrics listens on")
    worker_agents: str = setting(
        "CALLQA_WORKER_AGENTS", "all", "agents a worker runs: all, or some of transcribe,tag,store,stats,failures,crm "
        "(`callqa worker --agents`), so transcription can run on GPU machines and the rest on CPU ones")
    topic_recorded: str = setting("CALLQA_TOPIC_RECORDED", "calls.recorded", "input topic")
    topic_transcribed: str = setting("CALLQA_TOPIC_TRANSCRIBED", "calls.transcribed", "after ASR")
    topic_tagged: str = setting("CALLQA_TOPIC_TAGGED", "calls.tagged", "after tagging")
    topic_dlq: str = setting("CALLQA_TOPIC_DLQ", "calls.dlq", "dead letters")
    topic_flagged: str = setting("CALLQA_TOPIC_FLAGGED", "calls.flagged", "a call got a new flag (for CRM/chat)")
    topic_stored: str = setting(
        "CALLQA_TOPIC_STORED", "calls.stored", "statistics updates after a store (key: manager_id; internal)")
    topic_crm: str = setting("CALLQA_TOPIC_CRM", "crm.events", "CRM events: leads, statuses, deals (key: the lead)")
    topic_crm_joins: str = setting(
        "CALLQA_TOPIC_CRM_JOINS", "crm.joins", "phones whose calls and leads to join again (key: the phone; internal)")
    crm_match_window_days: float = setting(
        "CALLQA_CRM_MATCH_WINDOW_DAYS", 30.0, "a call joins a lead with its client's phone created up to this many "
        "days before the call (the most recent such lead)")
    crm_match_before_min: float = setting(
        "CALLQA_CRM_MATCH_BEFORE_MIN", 60.0, "... or created up to this many minutes after the call started (the CRM "
        "made the lead from the call)")
    phone_region: str = setting(
        "CALLQA_PHONE_REGION", "RU", "country of numbers written without +country code (8 912 ... = +7 912 ...)")
    min_leads: int = setting(
        "CALLQA_MIN_LEADS", 10, "closed leads each side of a step needs before `report step-impact` draws a conclusion")
    hot_lead_minutes: float = setting("CALLQA_HOT_LEAD_MINUTES", 15.0, "a hot lead is to be called within this many minutes")
    topic_partitions: int = setting("CALLQA_TOPIC_PARTITIONS", 4, "partitions of the calls.* topics")
    topic_replication: int = setting(
        "CALLQA_TOPIC_REPLICATION", 1, "replication factor of the topics callqa creates (3 on a production cluster)")
    asr_engine: str = setting("CALLQA_ASR_ENGINE", "faster-whisper", "faster-whisper | openai-whisper")
    asr_model: str = setting("CALLQA_ASR_MODEL", "base", "model name or directory")
    asr_compute_type: str = setting("CALLQA_ASR_COMPUTE_TYPE", "int8", "int8 | float32 | float16 (GPU)")
    asr_device: str = setting("CALLQA_ASR_DEVICE", "cpu", "cpu | cuda")
    asr_beam_size: int = setting("CALLQA_ASR_BEAM_SIZE", 5, "beam size (1 = greedy: faster, less accurate)")
    asr_batched: bool = setting(
        "CALLQA_ASR_BATCHED", True, "faster-whisper: decode VAD chunks in batches (off: sequential decoding)")
    asr_batch_size: int = setting(
        "CALLQA_ASR_BATCH_SIZE", 4, "30 s chunks decoded at once (batched mode, over all CPU threads); GPU 16-32")
    asr_vad: bool = setting("CALLQA_ASR_VAD", True, "voice activity filter (stops echo/silence hallucinations)")
    asr_workers: int = setting("CALLQA_ASR_WORKERS", 2, "transcription processes (one model each)")
    asr_cpu_threads: int = setting("CALLQA_ASR_CPU_THREADS", 1, "CPU threads per transcription process "
                                   "(`callqa transcribe`, one process: all cores unless set)")
    asr_max_audio_s: float = setting("CALLQA_ASR_MAX_AUDIO_S", 4 * 3600.0, "longer recordings are refused")
    asr_call_timeout_s: float = setting("CALLQA_ASR_CALL_TIMEOUT_S", 900.0, "per-call transcription limit")
    asr_turn_gap_s: float = setting("CALLQA_ASR_TURN_GAP_S", 0.8, "pause that starts a new turn")
    diarize: bool = setting("CALLQA_DIARIZE", True, "mono and same-audio stereo calls: tell the voices apart "
                            "and find the manager (off: speaker 'unknown')")
    role_min_confidence: float = setting(
        "CALLQA_ROLE_MIN_CONFIDENCE", 0.8, "below this the roles found by voice are marked uncertain and the "
        "speaker-dependent metrics (talk ratio, questions, monologues, interruptions) are left out")
    asr_initial_prompt: str = setting(
        "CALLQA_ASR_INITIAL_PROMPT", "", "Whisper initial prompt (style, product and company names)")
    asr_hotwords: str = setting(
        "CALLQA_ASR_HOTWORDS", "", "product/company names to favour (faster-whisper hotwords; openai: added to the prompt)")
    asr_vad_gap_s: float = setting("CALLQA_ASR_VAD_GAP_S", 1.0, "silence kept between VAD speech regions")
    asr_no_speech_threshold: float = setting(
        "CALLQA_ASR_NO_SPEECH_THRESHOLD", 0.6, "drop segments over this no_speech_prob (with a low log-prob)")
    asr_logprob_threshold: float = setting(
        "CALLQA_ASR_LOGPROB_THRESHOLD", -1.0, "avg log-prob under which a no-speech segment is dropped")
    asr_allow_download: bool = setting(
        "CALLQA_ASR_ALLOW_DOWNLOAD", False, "let a bare model name be fetched from the hub (off: local weights only)")
    recordings_dir: str = setting(
        "CALLQA_RECORDINGS_DIR", "", "file:// recordings must lie inside these dirs (os.pathsep-separated); empty = CALLQA_HOME/recordings")
    fetch_max_bytes: int = setting("CALLQA_FETCH_MAX_BYTES", 500 * 1024 * 1024, "download size cap")
    fetch_timeout_s: float = setting("CALLQA_FETCH_TIMEOUT_S", 60.0, "download timeout")
    rules_dir: str = setting("CALLQA_RULES_DIR", "", "folder with lexicon/{ru,en}.yaml and flags.yaml "
                             "(empty = the packaged config/); edits are picked up by a running worker")
    tagger: str = setting(
        "CALLQA_TAGGER", "learned", "learned (the step model, with the rules as its inputs; it beats the rules on "
        "real conversations of sources it never saw: bench/README.md) | rules (the rules alone)")
    tagger_model: str = setting(
        "CALLQA_TAGGER_MODEL", "", "step model file; empty = the one `callqa train` installed in CALLQA_HOME/models, "
        "else the packaged one")
    min_calls_for_rank: int = setting("CALLQA_MIN_CALLS", 2, "calls a manager needs before a weak stage is named")
    min_step_calls: int = setting(
        "CALLQA_MIN_STEP_CALLS", 2, "scored calls a step needs before it can be named a manager's weak stage "
        "(objection handling is scored only on calls with objections)")
    timezone: str = setting(
        "CALLQA_TIMEZONE", "UTC", "business time zone (IANA name, e.g. Europe/Moscow): weeks and months of the "
        "statistics, and the days of report date filters")
    home: str = setting("CALLQA_HOME", "", "working directory for the database, broker data and caches")
    fetch_allowed_hosts: str = setting(
        "CALLQA_FETCH_ALLOWED_HOSTS", "", "hosts recording URLs may name (comma list, *.suffix; the providers' API hosts "
        "are added); empty = any public host. Redirects and API-issued links need only be public")
    fetch_allow_private: bool = setting(
        "CALLQA_FETCH_ALLOW_PRIVATE", False, "allow downloads from loopback/private/link-local addresses (on-prem PBX, tests)")
    fetch_allow_http: bool = setting("CALLQA_FETCH_ALLOW_HTTP", False, "allow plain http:// downloads")
    fetch_deadline_s: float = setting("CALLQA_FETCH_DEADLINE_S", 900.0, "whole-download time limit (per attempt)")
    twilio_account_sid: str = setting(
        "CALLQA_TWILIO_ACCOUNT_SID", "", "Twilio account SID for recording downloads (default: the SID in the URL)")
    twilio_auth_token: str = setting(
        "CALLQA_TWILIO_AUTH_TOKEN", "", "Twilio auth token: HTTP basic auth on api.twilio.com recordings")
    zadarma_api_key: str = setting("CALLQA_ZADARMA_API_KEY", "", "Zadarma API key (asks the API for recording links)")
    zadarma_secret: str = setting("CALLQA_ZADARMA_SECRET", "", "Zadarma API secret (signs the API request)")
    mango_api_key: str = setting("CALLQA_MANGO_API_KEY", "", "Mango Office vpbx_api_key (recording download)")
    mango_api_salt: str = setting("CALLQA_MANGO_API_SALT", "", "Mango Office vpbx_api_salt (signs the download)")
    secret_key: str = setting(
        "CALLQA_SECRET_KEY", "", "key that signs the web app's session cookies (32+ random characters); empty = a key "
        "generated once into CALLQA_HOME/secret_key (mode 600) and read from there")
    session_hours: float = setting("CALLQA_SESSION_HOURS", 12.0, "a web login lasts this long")
    login_max_failures: int = setting(
        "CALLQA_LOGIN_MAX_FAILURES", 5, "wrong passwords for one user (or 4x that from one address) within "
        "CALLQA_LOGIN_LOCK_S that lock further logins out")
    login_lock_s: float = setting("CALLQA_LOGIN_LOCK_S", 900.0, "the lock-out window after too many wrong passwords")
    web_url: str = setting(
        "CALLQA_WEB_URL", "", "the web pages' public address (https://qa.example.com): links in the digest e-mail "
        "(empty: call ids without links)")
    smtp_host: str = setting("CALLQA_SMTP_HOST", "", "SMTP server that sends `callqa digest --send` (empty: no e-mail)")
    smtp_port: int = setting("CALLQA_SMTP_PORT", 587, "SMTP port (587 with STARTTLS, 25 on a trusted relay)")
    smtp_starttls: bool = setting(
        "CALLQA_SMTP_STARTTLS", True, "upgrade the SMTP connection with STARTTLS (certificate checked) before logging in")
    smtp_user: str = setting("CALLQA_SMTP_USER", "", "SMTP login (empty: send without logging in)")
    smtp_password: str = setting("CALLQA_SMTP_PASSWORD", "", "SMTP password (from the environment only)")
    smtp_from: str = setting("CALLQA_SMTP_FROM", "", "sender address of the digest, e.g. callqa@example.com")
    smtp_to: str = setting("CALLQA_SMTP_TO", "", "digest recipients, comma-separated")
    smtp_timeout_s: float = setting("CALLQA_SMTP_TIMEOUT_S", 30.0, "give up on the SMTP server after this long")
    cookie_secure: bool = setting(
        "CALLQA_COOKIE_SECURE", False, "always mark the session cookie Secure (it is anyway on https requests, "
        "including X-Forwarded-Proto: https from a trusted proxy)")

    @classmethod
    def from_env(cls, **overrides: Any) -> "Settings":
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = os.environ.get(f.metadata["env"])
            if raw is None:
                continue
            values[f.name] = _parse(raw, type(f.default), f.metadata["env"])
        values.update(overrides)
        s = cls(**values)
        business_tz(s.timezone)  # a mistyped zone fails here, with advice, not on the first call
        if s.tagger not in ("learned", "rules"):
            raise ValueError(f"CALLQA_TAGGER={s.tagger!r}: use learned or rules")
        from config.kafka_security import KafkaSecurity
        KafkaSecurity.from_settings(s)  # a half-configured cluster login fails here, saying what is missing
        return s

    @property
    def tz(self) -> tzinfo:
        return business_tz(self.timezone)

    @property
    def tagger_model_paths(self) -> list[Path]:
        """Where the step model is looked for, first found wins."""
        if self.tagger_model:
            return [Path(self.tagger_model)]
        from pipeline.tagging.learned import PACKAGED, installed_path
        return [installed_path(self.home_dir), PACKAGED]

    @property
    def home_dir(self) -> Path:
        return Path(self.home).resolve() if self.home else _home()

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home_dir / 'callqa.db'}"

    @property
    def allowed_dirs(self) -> list[Path]:
        if self.recordings_dir:
            return [Path(p).resolve() for p in self.recordings_dir.split(os.pathsep) if p]
        return [self.home_dir / "recordings"]

    @classmethod
    def describe(cls) -> list[tuple[str, Any, str]]:
        return [(f.metadata["env"], f.default, f.metadata["help"]) for f in fields(cls)]


def _parse(raw: str, typ: type, env: str) -> Any:
    try:
        if typ is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        return typ(raw)
    except ValueError:
        raise ValueError(f"{env}={raw!r} is not a valid {typ.__name__}") from None


def business_tz(name: str) -> tzinfo:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"CALLQA_TIMEZONE={name!r} is not a time zone name: use an IANA name such as "
                         "Europe/Moscow, America/New_York or UTC") from None

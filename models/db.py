"""Engine, sessions and migrations. SQLite by default, PostgreSQL in production."""
from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import sessionmaker

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
URL_HELP = "sqlite:////absolute/path/callqa.db or postgresql+psycopg://user:password@host/dbname"


class DatabaseError(RuntimeError):
    """The database URL is wrong, its driver is missing, or the database cannot be reached or found.
    The message says which, and what to do."""


def _shown(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        from sqlalchemy.engine import make_url
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def sqlite_path(url: str) -> Path | None:
    if url.startswith("sqlite:///") and url not in ("sqlite:///", "sqlite:///:memory:"):
        return Path(url.removeprefix("sqlite:///").split("?", 1)[0])
    return None


def _json_dumps(value) -> str:
    # orjson: the JSON columns (a call's whole event, ~10 KB) took ~0.5 ms a call with the json module
    import orjson
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def _json_loads(text):
    import orjson
    return orjson.loads(text)


def make_engine(url: str) -> Engine:
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    pool = {}
    if path is None and url.startswith("postgres"):
        from config.settings import Settings
        s = Settings.from_env()
        pool = dict(pool_size=s.db_pool_size, max_overflow=s.db_max_overflow, pool_recycle=s.db_pool_recycle_s,
                    pool_timeout=s.db_pool_timeout_s)
    try:
        engine = create_engine(url, future=True, pool_pre_ping=True, json_serializer=_json_dumps,
                               json_deserializer=_json_loads, **pool)
    except NoSuchModuleError:
        scheme = url.split("://", 1)[0]
        hint = "postgresql+psycopg://" if scheme.startswith("postgres") else None
        raise DatabaseError(f"CALLQA_DATABASE_URL {_shown(url)!r}: {scheme}:// is not a database kind SQLAlchemy "
                            f"knows; " + (f"write {hint}... instead" if hint else f"use {URL_HELP}")) from None
    except ArgumentError:
        raise DatabaseError(f"CALLQA_DATABASE_URL {_shown(url)!r} is not a database URL; use {URL_HELP}") from None
    except ImportError as e:
        name = getattr(e, "name", None) or str(e)
        extra = " (pip install -e '.[postgres]')" if "psycopg" in name else ""
        raise DatabaseError(f"CALLQA_DATABASE_URL {_shown(url)!r} needs the Python driver {name!r}, which is not "
                            f"installed{extra}. callqa runs on SQLite or PostgreSQL: {URL_HELP}") from None
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _):  # readers (report, web) must not block the writer
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.close()
    return engine


def alembic_config(engine: Engine):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    from alembic import command
    from sqlalchemy.exc import OperationalError

    cfg = alembic_config(engine)
    try:
        with engine.connect():
            pass
    except OperationalError as e:  # only reaching the database is the user's to fix; the rest is a bug
        reason = (str(getattr(e, "orig", e)).strip() or type(e).__name__).splitlines()[0]
        raise DatabaseError(f"cannot open the database {_shown(engine.url.render_as_string(hide_password=False))}: "
                            f"{reason}. Is the server running, and are the host, port, user and password in "
                            "CALLQA_DATABASE_URL right?") from None
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def session_factory(url: str, *, create: bool = True, must_exist: bool = False) -> sessionmaker:
    """``must_exist``: for commands that only read (report, review, web): a mistyped SQLite path is an
    error, not a new empty database that looks like "no calls yet"."""
    path = sqlite_path(url)
    if must_exist and path is not None and not path.is_file():
        raise DatabaseError(
            f"no database at {path.resolve()}. Check CALLQA_DATABASE_URL (or CALLQA_HOME, whose callqa.db is the "
            "default); a worker creates the database when it stores its first call. After `make demo`: "
            "CALLQA_DATABASE_URL=sqlite:///var/demo/callqa.db")
    engine = make_engine(url)
    if create:
        migrate(engine)
    return sessionmaker(engine, expire_on_commit=False)

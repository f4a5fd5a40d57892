"""A throwaway PostgreSQL server that a test or benchmark can stop and start again on the same data
directory and port (the database going away mid-run, and coming back)."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import uuid
from pathlib import Path


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class LocalPostgres:
    def __init__(self, base: Path | None = None, port: int | None = None):
        from callqa.broker import free_port
        self.bindir = pg_bin()
        if self.bindir is None:
            raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql")
        # not under pytest's tmp_path: the socket path must stay short, and the postgres user must reach it
        self.base = base or Path("/tmp") / f"callqa-pg-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.port = port or free_port()
        self.data = self.base / "data"
        self.run_as: list[str] = []
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            self.run_as = ["runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://callqa@127.0.0.1:{self.port}/callqa"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(self.run_as + list(args), check=check, capture_output=True, text=True)

    def init(self) -> "LocalPostgres":
        shutil.rmtree(self.base, ignore_errors=True)
        self.base.mkdir(parents=True)
        if self.run_as:
            shutil.chown(self.base, "postgres")
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "callqa", "--auth=trust", "-E", "UTF8")
        self.start()
        self._run(str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "callqa", "callqa")
        return self

    def start(self) -> "LocalPostgres":
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.base / "log"), "-w", "-o",
                  f"-p {self.port} -k {self.base} -h 127.0.0.1 -c max_connections=200", "start")
        return self

    def stop(self) -> None:
        """Fast shutdown: open connections are cut, as when a database server goes down."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> "LocalPostgres":
        return self.init()

    def __exit__(self, *exc) -> None:
        self.destroy()

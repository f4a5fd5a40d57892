"""docs/reliability.md's table, from the figures the fault tests wrote in one run.

    CALLQA_FAULT_FIGURES=var/faults.json .venv/bin/python -m pytest -m faults   # each test adds its row
    .venv/bin/python bench/reliability.py [--figures var/faults.json] [--write]

Without --write it prints the table; with it, the table replaces the part of docs/reliability.md between
its markers, with the commit and the machine it was run on.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "reliability.md"
START, END = "<!-- faults:start -->", "<!-- faults:end -->"
# the order of the table: the faults of issue 13, then whatever else was recorded
ORDER = ["worker killed (kill -9) mid-run", "broker killed and restarted mid-run",
         "two workers, one killed for good (kill -9)", "a partition assigned but no longer fetched",
         "an event dropped before the agents", "a statistics update dropped before the agents",
         "fuzzed events (hypothesis, 3 topics)", "bad audio",
         "burst of 5,000 events (PostgreSQL)", "PostgreSQL stopped for 30 s mid-run",
         "worker stopped (SIGTERM) while PostgreSQL is down, a second one takes over"]


def machine() -> str:
    cpu = ""
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                   "")
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs ({cpu or 'unknown'}), Python " \
           f"{platform.python_version()}"


def commit() -> str:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()
    sha = git("rev-parse", "--short", "HEAD")
    dirty = " (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else ""
    return f"{sha}{dirty}" if sha else "unknown"


def table(figures: dict) -> str:
    rows = ["| fault | calls in | stored once | duplicates | lost | bad events in | failed calls recorded | "
            "dead letters by reason | statistics = recomputation |",
            "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    names = [n for n in ORDER if n in figures] + sorted(set(figures) - set(ORDER))
    for name in names:
        f = figures[name]
        letters = "<br>".join(f"{k}: {v}" for k, v in f.get("dead_letters", {}).items()) or "none"
        same = {True: "yes", False: "**no**", None: "not checked"}[f.get("stats_equal")]
        rows.append(f"| {name} | {f['calls_in']:,} | {f['stored_once']:,} | {f['duplicates']} | {f['lost']} | "
                    f"{f.get('bad_in', 0)} | {f.get('failed_calls', 0)} | {letters} | {same} |")
    return "\n".join(rows)


def notes(figures: dict) -> str:
    """The figures that are not in every row (burst memory and pace, calls sent twice...)."""
    out = []
    for name in [n for n in ORDER if n in figures] + sorted(set(figures) - set(ORDER)):
        extra = {k: v for k, v in figures[name].items() if k not in (
            "calls_in", "stored_once", "duplicates", "lost", "bad_in", "failed_calls", "dead_letters", "stats_equal",
            "recorded_at")}
        extra = {k: v for k, v in extra.items() if v not in ({}, None, "")}
        if extra:
            out.append(f"- {name}: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(extra.items())))
    return "\n".join(out)


def render(figures: dict) -> str:
    return (f"Run at commit {commit()} on {machine()}.\n\n{table(figures)}\n\nOther figures of the same run:\n\n"
            f"{notes(figures)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--figures", default=os.environ.get("CALLQA_FAULT_FIGURES") or str(REPO / "var" / "faults.json"))
    p.add_argument("--write", action="store_true", help=f"put the table into {DOC.relative_to(REPO)}")
    args = p.parse_args(argv)
    try:
        figures = json.loads(Path(args.figures).read_text())
    except OSError:
        print(f"no figures at {args.figures}: run the fault tests first (pytest -m faults)", file=sys.stderr)
        return 1
    text = render(figures)
    if not args.write:
        print(text)
        return 0
    doc = DOC.read_text()
    if START not in doc or END not in doc:
        print(f"{DOC} has no {START} ... {END} markers", file=sys.stderr)
        return 1
    DOC.write_text(re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: f"{START}\n{text}\n{END}", doc,
                          flags=re.S))
    print(f"wrote the table of {len(figures)} faults into {DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""The lock files that `make` and CI install from, made from pyproject.toml.

    python3 requirements/lock.py compile --uv .venv-tools/bin/uv [--upgrade]   # `make lock`
    python3 requirements/lock.py check                                         # `make check-lock`
    .venv/bin/python requirements/lock.py pip-check                            # after an install

The locks (all pinned with sha256 hashes, for one platform: TARGET below):

* ``test.lock``   the project's dependencies, every extra and the build requirements: what
                  `make test` installs. Resolved first.
* ``base.lock``   the dependencies, the extras in BASE_EXTRAS and the build requirements, at the
                  versions of test.lock: what `make demo` and the Docker image install.
* ``nodeps.lock`` the packages of ``nodeps.in``, installed without their declared dependencies
                  (resemblyzer: only its weights file is read, and its requirements would pull torch).
* ``gpu.lock``    the packages of ``gpu.in``: the CUDA libraries the GPU image adds (Dockerfile,
                  ``--build-arg WITH_CUDA=1``), at the test set's versions where they overlap.

Every lock's header holds ``inputs-sha256``, a digest of what it was made from (the dependency lists
of pyproject.toml, its build requirements, requires-python, nodeps.in, gpu.in and TARGET); ``check``
fails when that no longer matches, i.e. when pyproject.toml changed and `make lock` was not run.

`make lock` keeps the versions already in the locks where they still fit (uv reads the existing
output file as its preferences) and adds what is new; `make lock-upgrade` re-resolves everything
to the newest versions.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        sys.exit("requirements/lock.py needs Python 3.11+ (tomllib) or the tomli package")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYPROJECT = ROOT / "pyproject.toml"
NODEPS_IN, GPU_IN = HERE / "nodeps.in", HERE / "gpu.in"
BASE, TEST, NODEPS, GPU = HERE / "base.lock", HERE / "test.lock", HERE / "nodeps.lock", HERE / "gpu.lock"
LOCKS = (BASE, TEST, NODEPS, GPU)

# The one platform the locks are made for: this project's machines and CI (Debian, x86_64, CPython
# 3.11, glibc >= 2.28) and the Docker image (python:3.11-slim). Each pin lists the hashes of all of
# its files on PyPI, but which version was picked (and whether it has a wheel here) is decided for it.
TARGET = {"python_version": "3.11", "python_platform": "x86_64-manylinux_2_28"}
BASE_EXTRAS = ["postgres"]  # the Docker image runs on PostgreSQL; psycopg's binary wheel is small

DIGEST_RE = re.compile(r"^# inputs-sha256: ([0-9a-f]{64})$", re.M)
PIN_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", re.M)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _in_lines(path: Path = NODEPS_IN) -> list[str]:
    lines = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def inputs() -> dict:
    """Everything a lock is made from, normalized (comments and layout of pyproject.toml don't count)."""
    data = tomllib.loads(PYPROJECT.read_text())
    project = data.get("project", {})
    return {
        "requires-python": project.get("requires-python"),
        "build-system.requires": sorted(data.get("build-system", {}).get("requires", [])),
        "dependencies": sorted(project.get("dependencies", [])),
        "optional-dependencies": {k: sorted(v) for k, v in sorted(project.get("optional-dependencies", {}).items())},
        "base-extras": BASE_EXTRAS,
        "nodeps.in": sorted(_in_lines()),
        "gpu.in": sorted(_in_lines(GPU_IN)),
        "target": TARGET,
    }


def digest() -> str:
    return hashlib.sha256(json.dumps(inputs(), sort_keys=True).encode()).hexdigest()


def pins(path: Path) -> dict[str, str]:
    return {_norm(n): v for n, v in PIN_RE.findall(path.read_text())}


def _header(path: Path, what: str, dig: str) -> str:
    return (
        f"# requirements/{path.name}: {what}\n"
        f"# Pinned with hashes for CPython {TARGET['python_version']} on Linux x86_64 "
        f"({TARGET['python_platform']}); install with\n"
        f"#   pip install --require-hashes --no-deps -r requirements/{path.name}\n"
        "# Made by `make lock` (requirements/lock.py) from pyproject.toml: do not edit by hand.\n"
        f"# inputs-sha256: {dig}\n"
    )


def _uv(uv: str, args: list[str], out: Path, upgrade: bool) -> None:
    cmd = [uv, "pip", "compile", "--quiet", "--generate-hashes", "--no-header",
           "--python-version", TARGET["python_version"], "--python-platform", TARGET["python_platform"],
           *(["--upgrade"] if upgrade else []), *args, "-o", str(out)]
    # relative paths in the annotations ("# via -r ..."), so a lock does not depend on where it was made
    subprocess.run(cmd, check=True, cwd=ROOT)


def _finish(path: Path, what: str, dig: str, names: dict[str, str]) -> None:
    body = path.read_text()
    for tmp, shown in names.items():
        body = body.replace(tmp, shown)
    # a constraint is no reason a package is there: keep the annotations that say why
    body = re.sub(r"^ *# via -c requirements/test\.lock\n|^ *#   -c requirements/test\.lock\n", "", body, flags=re.M)
    body = re.sub(r"^( *)# via\n *#   (.+)\n(?! *#   )", r"\1# via \2\n", body, flags=re.M)
    path.write_text(_header(path, what, dig) + body.lstrip("\n"))


def _unconflict(path: Path) -> None:
    """A lock left with git's conflict markers (two branches each ran `make lock`) keeps its first side, so
    uv can read its pins as preferences; the other side's new packages come back from pyproject.toml."""
    if not path.exists() or "\n<<<<<<< " not in "\n" + path.read_text():
        return
    out, side = [], None
    for line in path.read_text().splitlines(keepends=True):
        if line.startswith("<<<<<<< "):
            side = "ours"
        elif side and line.startswith("||||||| "):
            side = "base"
        elif side and line.startswith("======="):
            side = "theirs"
        elif side and line.startswith(">>>>>>> "):
            side = None
        elif side in (None, "ours"):
            out.append(line)
    path.write_text("".join(out))
    print(f"lock: {path.name} had merge conflicts; kept the first side's pins and resolved again")


def compile_locks(uv: str, upgrade: bool) -> None:
    for path in LOCKS:
        _unconflict(path)
    dig = digest()
    data = tomllib.loads(PYPROJECT.read_text())
    build = data.get("build-system", {}).get("requires", [])
    with tempfile.TemporaryDirectory(dir=HERE, prefix=".lock-") as tmp:
        tmpd = Path(tmp)
        build_in = tmpd / "build-system.in"
        build_in.write_text("".join(r + "\n" for r in build))
        rel_build = str(build_in.relative_to(ROOT))
        names = {rel_build: "pyproject.toml [build-system]"}

        # 1. the test set: everything, so it is resolved as one
        _uv(uv, ["pyproject.toml", rel_build, "--all-extras"], TEST, upgrade)
        _finish(TEST, "what `make test` installs: dependencies, every extra, build requirements.", dig, names)

        # 2. the base set, at the test set's versions (a plain-pin copy: constraints carry no hashes)
        cons = tmpd / "test-pins.txt"
        cons.write_text("".join(f"{n}=={v}\n" for n, v in sorted(pins(TEST).items())))
        rel_cons = str(cons.relative_to(ROOT))
        extras = [a for e in BASE_EXTRAS for a in ("--extra", e)]
        _uv(uv, ["pyproject.toml", rel_build, *extras, "-c", rel_cons], BASE, upgrade=False)
        _finish(BASE, "what `make demo` and the Docker image install: dependencies, "
                f"the {', '.join(BASE_EXTRAS)} extra, build requirements.", dig,
                {**names, rel_cons: "requirements/test.lock"})

        # 3. the packages installed without their dependencies
        _uv(uv, ["requirements/nodeps.in", "--no-deps"], NODEPS, upgrade)
        _finish(NODEPS, "packages installed WITHOUT their declared dependencies (see nodeps.in).", dig, {})

        # 4. the GPU image's CUDA libraries, at the test set's versions where a package is in both
        _uv(uv, ["requirements/gpu.in", "-c", rel_cons], GPU, upgrade)
        _finish(GPU, "the CUDA libraries the GPU image adds (see gpu.in; Dockerfile WITH_CUDA=1).", dig,
                {rel_cons: "requirements/test.lock"})

    base, test = pins(BASE), pins(TEST)
    odd = {n: (v, test.get(n)) for n, v in base.items() if test.get(n) != v}
    if odd:
        sys.exit(f"lock: base.lock differs from test.lock on {odd}")
    print(f"lock: {len(base)} packages in base.lock, {len(test)} in test.lock, "
          f"{len(pins(NODEPS))} in nodeps.lock, {len(pins(GPU))} in gpu.lock "
          f"({TARGET['python_platform']}, CPython {TARGET['python_version']})")


def check() -> int:
    want = digest()
    bad = []
    for path in LOCKS:
        if not path.exists():
            bad.append(f"{path.name} is missing")
            continue
        m = DIGEST_RE.search(path.read_text())
        if not m or m.group(1) != want:
            bad.append(f"{path.name} was made from another pyproject.toml / nodeps.in / gpu.in")
    for b in bad:
        print(f"check-lock: {b}", file=sys.stderr)
    if bad:
        print("check-lock: the locks are stale: run `make lock` and commit requirements/*.lock", file=sys.stderr)
        return 1
    return 0


def pip_check(python: str) -> int:
    """`pip check`, leaving out what the packages of nodeps.in declare but are installed without on purpose
    (resemblyzer's torch, librosa, webrtcvad: only its weights file is read). Anything else fails."""
    skip = {_norm(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0]) for line in _in_lines()}
    res = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True)
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    left = [ln for ln in lines if ln.strip() != "No broken requirements found."
            and _norm(ln.split()[0]) not in skip]
    for ln in left:
        print(f"pip check: {ln}", file=sys.stderr)
    return 1 if left else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compile", help="(re)make the locks")
    c.add_argument("--uv", required=True, help="the uv executable")
    c.add_argument("--upgrade", action="store_true", help="newest versions, not those already locked")
    sub.add_parser("check", help="fail when the locks are older than pyproject.toml / nodeps.in / gpu.in")
    p = sub.add_parser("pip-check", help="pip check, less nodeps.in's known gaps")
    p.add_argument("--python", default=sys.executable)
    a = ap.parse_args(argv)
    if a.cmd == "compile":
        compile_locks(a.uv, a.upgrade)
        return 0
    if a.cmd == "check":
        return check()
    return pip_check(a.python)


if __name__ == "__main__":
    sys.exit(main())

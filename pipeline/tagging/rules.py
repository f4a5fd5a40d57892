"""Loading and validating the tagger's trainer-editable configuration.

* ``config/lexicon/<lang>.yaml``: cue phrases per category (matched on lemmas)
  and regular expressions (matched on the lower-cased text);
* ``config/flags.yaml``: flag thresholds and quality settings.

Every problem is reported as ``RulesError("<file>: <key.path>: <what is wrong>")``.
"""
from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import ValidationError

from .matcher import CompiledLexicon
from .schema import CUE_CATEGORIES, LANGUAGES, OBJECTION_KINDS, FlagsConfig, Lexicon

DEFAULT_CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


class RulesError(ValueError):
    """A configuration file is missing or invalid; the message names file and key."""


class Rules:
    """Validated lexicons (per language) and flag settings; compiled matchers are cached."""

    def __init__(self, lexicons: dict[str, Lexicon], flags: FlagsConfig, source: Optional[Path] = None):
        self.lexicons = lexicons
        self.flags = flags
        self.source = source
        self._compiled: dict[str, Any] = {}

    def lexicon(self, language: str) -> Lexicon:
        return self.lexicons["ru" if language == "ru" else "en"]

    def compiled(self, language: str):
        lang = "ru" if language == "ru" else "en"
        c = self._compiled.get(lang)
        if c is None:
            c = self._compiled[lang] = CompiledLexicon(self.lexicons[lang])
        return c

    def __repr__(self) -> str:
        return f"Rules(source={self.source}, languages={sorted(self.lexicons)})"


def _loc(err: dict) -> str:
    return ".".join(str(p) for p in err.get("loc", ())) or "<root>"


def _format(path: Path, exc: ValidationError) -> str:
    parts = [f"{path}: {_loc(e)}: {e['msg']}" for e in exc.errors()]
    return "; ".join(parts)


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise RulesError(f"{path}: file not found")
    try:
        with path.open(encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise RulesError(f"{path}: not valid YAML: {e}") from e
    return {} if data is None else data


def load_lexicon(path: Path, language: str) -> Lexicon:
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise RulesError(f"{path}: <root>: expected a mapping, got {type(data).__name__}")
    try:
        lex = Lexicon.model_validate(data)
    except ValidationError as e:
        raise RulesError(_format(path, e)) from None
    if lex.language != language:
        raise RulesError(f"{path}: language: expected {language!r}, got {lex.language!r}")
    for cat in lex.cues:
        if cat not in CUE_CATEGORIES:
            raise RulesError(
                f"{path}: cues.{cat}: unknown cue category; allowed: {', '.join(CUE_CATEGORIES)}"
            )
    for kind in lex.objections:
        if kind not in OBJECTION_KINDS:
            raise RulesError(
                f"{path}: objections.{kind}: unknown objection kind; allowed: {', '.join(OBJECTION_KINDS)}"
            )
    for section in ("cues", "objections"):
        for name, cl in getattr(lex, section).items():
            for i, ph in enumerate(cl.phrases):
                if not ph or not ph.strip():
                    raise RulesError(f"{path}: {section}.{name}.phrases[{i}]: empty phrase")
            for i, pat in enumerate(cl.patterns):
                try:
                    re.compile(pat)
                except re.error as e:
                    raise RulesError(
                        f"{path}: {section}.{name}.patterns[{i}]: invalid regular expression {pat!r}: {e}"
                    ) from None
    return lex


def load_flags(path: Path) -> FlagsConfig:
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise RulesError(f"{path}: <root>: expected a mapping, got {type(data).__name__}")
    try:
        return FlagsConfig.model_validate(data)
    except ValidationError as e:
        raise RulesError(_format(path, e)) from None


_CACHE: dict[Path, Rules] = {}


def load_rules(config_dir: Path | None = None) -> Rules:
    """Read ``lexicon/en.yaml``, ``lexicon/ru.yaml`` and ``flags.yaml`` under config_dir.

    Raises RulesError naming the file and key on any problem.
    """
    base = Path(config_dir) if config_dir is not None else DEFAULT_CONFIG_DIR
    lexicons = {lang: load_lexicon(base / "lexicon" / f"{lang}.yaml", lang) for lang in LANGUAGES}
    flags = load_flags(base / "flags.yaml")
    return Rules(lexicons, flags, source=base)


def default_rules() -> Rules:
    """The rules from the default config dir, loaded once per process."""
    r = _CACHE.get(DEFAULT_CONFIG_DIR)
    if r is None:
        r = _CACHE[DEFAULT_CONFIG_DIR] = load_rules(DEFAULT_CONFIG_DIR)
    return r


class LiveRules:
    """Rules that follow trainers' edits: the YAML is re-read when a file changes (checked at most
    every ``interval_s`` by ``get()``, or all the time by ``watch()``'s thread). An edit that does not
    validate is reported through ``on_error`` and the last good rules stay; the edit that fixes it
    is reported through ``on_info``, so a trainer watching the log sees both."""

    def __init__(self, config_dir: Path | None = None, interval_s: float = 5.0, on_error=None, on_info=None):
        self.base = Path(config_dir) if config_dir is not None else DEFAULT_CONFIG_DIR
        self.interval_s = interval_s
        self.on_error = on_error or (lambda msg: None)
        self.on_info = on_info or (lambda msg: None)
        self._rules = load_rules(self.base)  # a broken file at start-up is an error, not a warning
        self._stamp = self._mtimes()
        self._checked = time.monotonic()
        self.error: Optional[str] = None     # the rejected edit the files hold now, if any
        self.loaded_at = time.time()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: Optional[threading.Thread] = None

    def _mtimes(self) -> tuple:
        out = []
        for f in rule_files(self.base):
            try:
                st = f.stat()
                out.append((st.st_mtime_ns, st.st_size))
            except OSError:
                out.append(None)
        return tuple(out)

    def refresh(self) -> bool:
        """Re-read the files if they changed; True when new rules were taken."""
        with self._lock:
            return self._refresh()

    def _refresh(self) -> bool:
        self._checked = time.monotonic()
        stamp = self._mtimes()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            rules = load_rules(self.base)
        except RulesError as e:
            self.error = str(e)
            self.on_error(f"rules edit rejected: {e} (keeping the previous rules until the file is fixed; "
                          "`callqa rules check` shows the state)")
            return False
        was_broken, self.error = self.error is not None, None
        self._rules, self.loaded_at = rules, time.time()
        self.on_info(f"rules {'fixed' if was_broken else 'changed'}: new rules from {self.base} are in use"
                     + (" (the earlier rejected edit is resolved)" if was_broken else ""))
        return True

    def get(self) -> Rules:
        watched = self._watcher is not None and self._watcher.is_alive()
        if not watched and time.monotonic() - self._checked >= self.interval_s:
            self.refresh()
        return self._rules

    def watch(self, interval_s: float = 2.0) -> None:
        """Check the files every ``interval_s`` in a daemon thread, whether or not anything is tagged."""
        if self._watcher is not None:
            return

        def loop():
            while not self._stop.wait(interval_s):
                try:
                    self.refresh()
                except Exception as e:  # an unreadable folder must not end the watching
                    self.on_error(f"checking the rules in {self.base} failed: {e}")
        self._watcher = threading.Thread(target=loop, name="callqa-rules-watch", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()


def rule_files(base: Path) -> list[Path]:
    return [base / "lexicon" / f"{lang}.yaml" for lang in LANGUAGES] + [base / "flags.yaml"]


def rules_state(config_dir: Path | None = None) -> dict:
    """What ``callqa rules check`` and the rules page show: where the rules come from, whether
    they validate (else the error naming file and key), and what they hold."""
    base = Path(config_dir) if config_dir is not None else DEFAULT_CONFIG_DIR
    files = []
    for f in rule_files(base):
        files.append({"path": str(f), "exists": f.is_file(),
                      "modified": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(f.stat().st_mtime))
                      if f.is_file() else None})
    state: dict = {"source": str(base.resolve()), "packaged": base.resolve() == DEFAULT_CONFIG_DIR.resolve(),
                   "ok": True, "error": None, "files": files, "languages": {}, "flags": {}}
    try:
        rules = load_rules(base)
    except RulesError as e:
        state.update(ok=False, error=str(e))
        return state
    for lang, lex in sorted(rules.lexicons.items()):
        state["languages"][lang] = {
            section: {name: {"phrases": len(cl.phrases), "patterns": len(cl.patterns)}
                      for name, cl in getattr(lex, section).items()}
            for section in ("cues", "objections")}
    state["flags"] = {name: getattr(rules.flags.flags, name).enabled for name in type(rules.flags.flags).model_fields}
    return state

"""Loading and validating the tagger's trainer-editable configuration.

* ``config/lexicon/<lang>.yaml``: cue phrases per category (matched on lemmas)
  and regular expressions (matched on the lower-cased text);
* ``config/flags.yaml``: flag thresholds and quality settings.

Every problem is reported as ``RulesError("<file>: <key.path>: <what is wrong>")``.
"""
from __future__ import annotations

import re
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
    every ``interval_s``). An edit that does not validate is reported and the last good rules stay."""

    def __init__(self, config_dir: Path | None = None, interval_s: float = 5.0, on_error=None):
        self.base = Path(config_dir) if config_dir is not None else DEFAULT_CONFIG_DIR
        self.interval_s = interval_s
        self.on_error = on_error or (lambda msg: None)
        self._rules = load_rules(self.base)  # a broken file at start-up is an error, not a warning
        self._stamp = self._mtimes()
        self._checked = time.monotonic()

    def _mtimes(self) -> tuple:
        files = [self.base / "lexicon" / f"{lang}.yaml" for lang in LANGUAGES] + [self.base / "flags.yaml"]
        return tuple(f.stat().st_mtime_ns if f.exists() else 0 for f in files)

    def get(self) -> Rules:
        now = time.monotonic()
        if now - self._checked >= self.interval_s:
            self._checked = now
            stamp = self._mtimes()
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._rules = load_rules(self.base)
                except RulesError as e:
                    self.on_error(f"{e} (keeping the previous rules until the file is fixed)")
        return self._rules

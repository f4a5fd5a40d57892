"""Provider user/extension -> manager (id, name, team), from a YAML file.

Format (see config/managers.yaml)::

    managers:
      - id: m-ivanova
        name: Анна Иванова
        team: msk-sales
        keys: ["101", "mango:user:40001", "twilio:client:anna"]

A key is either bare (``"101"``: that extension on any provider) or qualified
with the provider (``"asterisk:101"``); a qualified key wins over a bare one.
Mango user ids are looked up as ``user:<id>``. An extension nobody claims maps to
``manager_id = "unknown:<ext>"`` and is counted (``unknown_counts``) so an admin
sees whom to add; the call itself is never dropped.
"""
from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import yaml


@dataclass(frozen=True)
class Manager:
    manager_id: str
    manager_name: Optional[str] = None
    team_id: Optional[str] = None
    known: bool = True


class ManagerDirectory:
    def __init__(self, entries: Iterable[dict] = ()):
        self._by_key: dict[str, Manager] = {}
        self.unknown_counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        for e in entries:
            self.add(e)

    def add(self, entry: dict) -> None:
        mid = str(entry.get("id") or "").strip()
        if not mid:
            raise ValueError(f"manager entry without id: {entry!r}")
        m = Manager(mid, entry.get("name"), entry.get("team"))
        keys = entry.get("keys") or entry.get("extensions") or []
        if isinstance(keys, (str, int)):
            keys = [keys]
        for k in keys:
            k = str(k).strip()
            if k in self._by_key and self._by_key[k].manager_id != mid:
                raise ValueError(f"key {k!r} is claimed by both {self._by_key[k].manager_id} and {mid}")
            self._by_key[k] = m

    @classmethod
    def from_yaml(cls, path: str | Path) -> "ManagerDirectory":
        p = Path(path)
        if not p.exists():
            return cls()
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        return cls(data.get("managers") or [])

    def find(self, provider: str, key: str | None) -> Optional[Manager]:
        if key in (None, ""):
            return None
        key = str(key).strip()
        return self._by_key.get(f"{provider}:{key}") or self._by_key.get(key)

    def resolve(self, provider: str, *keys: str | None) -> Manager:
        """First known key wins; otherwise ``unknown:<first non-empty key>``, counted."""
        for k in keys:
            m = self.find(provider, k)
            if m is not None:
                return m
        first = next((str(k).strip() for k in keys if k not in (None, "")), "") or "none"
        with self._lock:
            self.unknown_counts[(provider, first)] += 1
        return Manager(f"unknown:{first}", None, None, known=False)

    def is_known(self, provider: str, key: str | None) -> bool:
        return self.find(provider, key) is not None

    def __len__(self) -> int:
        return len({m.manager_id for m in self._by_key.values()})

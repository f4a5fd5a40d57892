"""Fetch a call recording to a local file. No Kafka here."""
from __future__ import annotations

import hashlib
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from pipeline.audio import FetchError


def fetch(url: str, allowed_dirs: list[Path], cache_dir: Path, *, max_bytes: int = 500 * 2**20,
          timeout_s: float = 60.0, retries: int = 3, headers: dict[str, str] | None = None) -> Path:
    """Return a local path for a recording URL (file:// inside an allowed dir, or http(s))."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        path = Path(urllib.parse.unquote(parsed.path)).resolve()
        if not any(path.is_relative_to(d.resolve()) for d in allowed_dirs):
            raise FetchError(f"{path} is outside the allowed recording directories "
                             f"({', '.join(map(str, allowed_dirs))}); set CALLQA_RECORDINGS_DIR")
        if not path.is_file():
            raise FetchError(f"recording not found: {path}")
        return path
    if parsed.scheme in ("http", "https"):
        return _download(url, cache_dir, max_bytes, timeout_s, retries, headers or {})
    raise FetchError(f"unsupported recording URL scheme {parsed.scheme!r} in {url}")


def _download(url: str, cache_dir: Path, max_bytes: int, timeout_s: float, retries: int,
              headers: dict[str, str]) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / hashlib.sha256(url.encode()).hexdigest()[:32]
    if target.exists():
        return target
    last: Exception | None = None
    for attempt in range(retries):
        try:
            req = urllib.request.Request(url, headers=headers)
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                tmp = target.with_suffix(".part")
                size = 0
                with open(tmp, "wb") as out:
                    while chunk := resp.read(1 << 16):
                        size += len(chunk)
                        if size > max_bytes:
                            tmp.unlink(missing_ok=True)
                            raise FetchError(f"recording at {url} is larger than {max_bytes} bytes "
                                             "(CALLQA_FETCH_MAX_BYTES)")
                        out.write(chunk)
                tmp.rename(target)
                return target
        except urllib.error.HTTPError as e:
            last = e
            if 400 <= e.code < 500 and e.code not in (408, 429):
                break  # the provider said no: retrying will not help
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            last = e
        time.sleep(min(2 ** attempt, 10))
    raise FetchError(f"could not download {url}: {last}")

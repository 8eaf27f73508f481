"""Bytes of an image from http(s) (pooled `requests.Session` + urllib3 `Retry`) or a local file.

Downloads are cached by URL, written to a temporary name and renamed, so an
interrupted run never leaves a partial file in the cache and a rerun never
downloads the same URL twice.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from .fileio import atomic_path

USER_AGENT = "fashion-generate-dataset/0.1 (+requests)"
RETRY_STATUS = (429, 500, 502, 503, 504)
CHUNK = 64 * 1024


class FetchError(Exception):
    """A download or read that failed; `str(e)` is `kind: detail` for failures.csv."""


def make_session(retries: int = 3, pool_size: int = 16, backoff: float = 0.5) -> requests.Session:
    """A pooled session that retries connection errors, read timeouts and 429/5xx with backoff."""
    retry = Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        backoff_factor=backoff,
        status_forcelist=RETRY_STATUS,
        allowed_methods=("GET",),
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=retry)
    session = requests.Session()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session


class Fetcher:
    """Thread-safe byte source for items: local reads, cached HTTP downloads."""

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        connect_timeout: float = 5.0,
        retries: int = 3,
        max_bytes: int = 20 << 20,
        min_bytes: int = 5 << 10,
        pool_size: int = 16,
        cache_dir: str | None = None,
    ):
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self.max_bytes, self.min_bytes = max_bytes, min_bytes
        self.session = make_session(retries, pool_size)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        if self.cache_dir:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.downloads = 0  # network fetches (not cache hits); read by tests and the summary
        self._lock = threading.Lock()
        self._dirs: set[Path] = set()

    def close(self) -> None:
        self.session.close()

    def cache_path(self, url: str) -> Path | None:
        if not self.cache_dir:
            return None
        h = hashlib.sha1(url.encode("utf-8")).hexdigest()
        return self.cache_dir / h[:2] / h

    def fetch(self, source: str) -> bytes:
        if source.startswith(("http://", "https://")):
            return self._fetch_url(source)
        return self._read_file(source)

    def _read_file(self, path: str) -> bytes:
        try:
            size = os.path.getsize(path)
        except FileNotFoundError:
            raise FetchError(f"missing file: {path}") from None
        except OSError as e:
            raise FetchError(f"unreadable file: {path}: {e.strerror}") from None
        if size > self.max_bytes:
            raise FetchError(f"too large: {size} bytes > --max-bytes {self.max_bytes}")
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            raise FetchError(f"unreadable file: {path}: {e.strerror}") from None

    def _fetch_url(self, url: str) -> bytes:
        cached = self.cache_path(url)
        if cached is not None:
            try:
                with open(cached, "rb") as f:
                    return f.read()
            except FileNotFoundError:
                pass
        data = self._download(url)
        # Tiny bodies are error placeholders from image hosts (the original Caffe
        # project dropped files under 5 KB); local files are the user's own and are kept.
        if len(data) < self.min_bytes:
            raise FetchError(f"too small: {len(data)} bytes < --min-bytes {self.min_bytes}")
        if cached is not None:
            self._cache_write(cached, data)
        return data

    def _cache_write(self, path: Path, data: bytes) -> None:
        """Temp name + rename: a kill mid-write never leaves a partial file under the final name.

        No fsync: it is a cache, and a file lost to a crash is downloaded again."""
        if path.parent not in self._dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(path.parent)
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)

    def _download(self, url: str) -> bytes:
        timeout = (self.connect_timeout, self.timeout)
        try:
            with self.session.get(url, stream=True, timeout=timeout) as r:
                with self._lock:
                    self.downloads += 1
                if r.status_code != 200:
                    raise FetchError(f"http {r.status_code}: {r.reason or 'error'}")
                declared = r.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > self.max_bytes:
                    raise FetchError(f"too large: Content-Length {declared} > --max-bytes {self.max_bytes}")
                buf = bytearray()
                for chunk in r.iter_content(CHUNK):
                    buf += chunk
                    if len(buf) > self.max_bytes:  # stop streaming: never hold a huge body
                        raise FetchError(f"too large: body over --max-bytes {self.max_bytes}")
                return bytes(buf)
        except FetchError:
            raise
        except (requests.exceptions.ConnectTimeout, requests.exceptions.ReadTimeout) as e:
            raise FetchError(f"timeout: no answer within {self.timeout:g}s ({type(e).__name__})") from None
        except requests.exceptions.RetryError as e:
            raise FetchError(f"http error: retries exhausted: {_short(e)}") from None
        except requests.exceptions.ConnectionError as e:
            if "timed out" in str(e).lower() or "timeout" in str(e).lower():
                raise FetchError(f"timeout: no answer within {self.timeout:g}s") from None
            raise FetchError(f"connection error: {_short(e)}") from None
        except requests.exceptions.RequestException as e:
            raise FetchError(f"http error: {_short(e)}") from None


def _short(e: Exception, n: int = 160) -> str:
    text = str(e).replace("\n", " ")
    return text if len(text) <= n else text[: n - 3] + "..."

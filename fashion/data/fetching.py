"""Bytes of an image from http(s) (pooled `requests.Session` + urllib3 `Retry`) or a local file.

Every download has one deadline (`timeout`) that covers connecting, retries,
backoff and the body: urllib3 is given a `Timeout` whose waits never run past
it and a `Retry` that starts no attempt (and sleeps no longer) than it allows,
and the body is streamed one socket read at a time so a server that drips a
byte every few seconds is cut off on time. `close()` cancels every download in
flight (checked between reads and before any retry).

Downloads that are recognised images are cached by URL, written to a temporary
name and renamed, so an interrupted run never leaves a partial file in the
cache and a rerun never downloads the same URL twice. A cache that cannot be
written (disk full, read-only) is warned about once and then left alone: it
never turns a good image into a failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry
from urllib3.util.timeout import Timeout

from fashion.core.fileio import atomic_write_bytes
from fashion.data.imaging import sniff
from fashion.core.storage import RemotePath, location

USER_AGENT = "fashion-generate-dataset/0.1 (+requests)"
RETRY_STATUS = (429, 500, 502, 503, 504)
CHUNK = 64 * 1024
_MIN_WAIT = 0.01  # a socket timeout of 0 would make the socket non-blocking, not "give up now"


class FetchError(Exception):
    """A download or read that failed; `str(e)` is `kind: detail` for failures.csv."""


@dataclass
class _Budget:
    """One download's deadline and the fetcher's cancel event; `attempts` counts the requests made."""

    timeout: float
    cancel: threading.Event
    start: float = field(default_factory=time.monotonic)
    attempts: int = 1
    retry_after: float | None = None  # the last response's Retry-After, seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def remaining(self) -> float:
        return self.timeout - self.elapsed()

    def wait(self, limit: float) -> float:
        """`limit` cut to what is left, never below the smallest socket timeout."""
        return max(_MIN_WAIT, min(limit, self.remaining()))


# urllib3 runs retries in the calling thread and requests passes no per-request Retry,
# so the Retry below finds the budget of the download its thread is running here.
_local = threading.local()


def _budget() -> _Budget | None:
    return getattr(_local, "budget", None)


class _DeadlineRetry(Retry):
    """`Retry` that starts no new attempt after a cancel or when its wait (backoff, or the server's
    Retry-After) would reach the deadline, and never sleeps past the deadline."""

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        b = _budget()
        if b is not None:
            has = response is not None and self.respect_retry_after_header
            b.retry_after = self.get_retry_after(response) if has else None
        new = super().increment(method, url, response, error, _pool, _stacktrace)  # raises when exhausted
        if b is not None:
            b.attempts += 1
        return new

    def is_exhausted(self) -> bool:  # called by increment on the next Retry, whose backoff is the next wait
        b = _budget()
        if b is not None and (b.cancel.is_set() or b.remaining() <= (b.retry_after or self.get_backoff_time())):
            return True
        return super().is_exhausted()

    def sleep(self, response=None) -> None:
        b = _budget()
        if b is None:
            return super().sleep(response)
        b.cancel.wait(max(0.0, min(b.retry_after or self.get_backoff_time(), b.remaining())))


class _DeadlineTimeout(Timeout):
    """urllib3 `Timeout` whose connect and read waits never run past the budget's deadline
    (urllib3 clones it for every attempt and reads the properties when it sets the socket timeout)."""

    def __init__(self, budget: _Budget, connect: float, read: float):
        super().__init__(connect=connect, read=read)
        self.budget = budget
        self.connect_s, self.read_s = connect, read

    def clone(self) -> _DeadlineTimeout:
        return _DeadlineTimeout(self.budget, self.connect_s, self.read_s)

    @property
    def connect_timeout(self) -> float:
        return self.budget.wait(self.connect_s)

    @property
    def read_timeout(self) -> float:
        return self.budget.wait(self.read_s)


def make_session(retries: int = 3, pool_size: int = 16, backoff: float = 0.5) -> requests.Session:
    """A pooled session that retries connection errors, read timeouts and 429/5xx with backoff."""
    retry = _DeadlineRetry(
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


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


class Fetcher:
    """Thread-safe byte source for items: local reads, cached HTTP downloads.

    `timeout` is the deadline for the whole download of one URL (connection, retries, body);
    `warn` prints a one-line warning (the cache that cannot be written)."""

    def __init__(
        self,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        retries: int = 3,
        max_bytes: int = 20 << 20,
        min_bytes: int = 5 << 10,
        pool_size: int = 16,
        cache_dir: str | None = None,
        warn: Callable[[str], None] = _warn,
    ):
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self.max_bytes, self.min_bytes = max_bytes, min_bytes
        self.session = make_session(retries, pool_size)
        self.downloads = 0  # network fetches (not cache hits); read by tests and the summary
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._warn = warn
        self._dirs: set[Path | RemotePath] = set()
        # a local folder, or on any filesystem Beam supports (s3://, gs://: --engine beam's workers share it)
        self.cache_dir = location(cache_dir) if cache_dir else None
        if self.cache_dir:
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                self._cache_failed(e)

    def close(self) -> None:
        """Cancel the downloads in flight (they stop at their next read or retry) and close the session."""
        self._cancel.set()
        self.session.close()

    def cache_path(self, url: str) -> Path | RemotePath | None:
        if not self.cache_dir:
            return None
        h = hashlib.sha1(url.encode("utf-8")).hexdigest()
        return self.cache_dir / h[:2] / h

    def fetch(self, source: str) -> bytes:
        parts = urlsplit(source)
        scheme = parts.scheme.lower()  # schemes are case-insensitive (RFC 3986): HTTP:// is http://
        if scheme in ("http", "https"):
            return self._fetch_url(source)
        if scheme == "file":
            return self._read_file(unquote(parts.path))
        return self._read_file(source)

    # ---- local files
    def _read_file(self, path: str) -> bytes:
        """A regular file only (a FIFO would block, a device never ends), read up to `max_bytes` + 1."""
        try:
            self._check_regular(path, os.stat(path))
            # O_NONBLOCK: if the path became a FIFO since the stat, opening it must not wait for a writer.
            with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
                st = os.fstat(f.fileno())
                self._check_regular(path, st)
                data = f.read(self.max_bytes + 1)
        except FileNotFoundError:
            raise FetchError(f"missing file: {path}") from None
        except (OSError, ValueError) as e:
            raise FetchError(f"unreadable file: {path}: {getattr(e, 'strerror', None) or e}") from None
        if len(data) > self.max_bytes:
            raise FetchError(f"too large: over --max-bytes {self.max_bytes} bytes")
        return data

    def _check_regular(self, path: str, st: os.stat_result) -> None:
        if not stat.S_ISREG(st.st_mode):
            raise FetchError(f"not a regular file: {path} is {_file_kind(st.st_mode)}")
        if st.st_size > self.max_bytes:
            raise FetchError(f"too large: {st.st_size} bytes > --max-bytes {self.max_bytes}")

    # ---- URLs and the cache
    def _fetch_url(self, url: str) -> bytes:
        cached = self.cache_path(url)
        data = self._cache_read(cached) if cached is not None else None
        if data is not None:
            return data
        data = self._download(url)
        # Tiny bodies are error placeholders from image hosts (the original Caffe
        # project dropped files under 5 KB); local files are the user's own and are kept.
        if len(data) < self.min_bytes:
            raise FetchError(f"too small: {len(data)} bytes < --min-bytes {self.min_bytes}")
        # Only recognised images are kept: an HTML error page cached once would be served forever.
        if cached is not None and sniff(data) is not None and not self._cancel.is_set():
            self._cache_write(cached, data)
        return data

    def _cache_read(self, path: Path | RemotePath) -> bytes | None:
        """The cached body, or None to download: absent, unreadable, or not what we would cache now
        (a non-image written by an older version, a size outside this run's limits)."""
        try:
            with path.open("rb") as f:
                data = f.read(self.max_bytes + 1)
        except Exception:  # OSError; on an object store also the client's own error at the first read
            return None
        if sniff(data) is None:
            with contextlib.suppress(OSError):  # an error page an older version cached: never serve it
                path.unlink()
            return None
        return data if self.min_bytes <= len(data) <= self.max_bytes else None

    def _cache_write(self, path: Path | RemotePath, data: bytes) -> None:
        """Temp name + rename (an object store: one upload): a kill mid-write never leaves a partial file
        under the final name. No fsync: it is a cache, and a file lost to a crash is downloaded again."""
        if self.cache_dir is None:
            return
        try:
            if path.parent not in self._dirs:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._dirs.add(path.parent)
            atomic_write_bytes(path, data, sync=False)
        except OSError as e:
            self._cache_failed(e)

    def _cache_failed(self, e: OSError) -> None:
        """Warn once, then cache nothing more (a full disk would fail every later write the same way)."""
        with self._lock:
            if self.cache_dir is None:
                return
            folder, self.cache_dir = self.cache_dir, None
        self._warn(f"warning: cache {folder} cannot be written ({e.strerror or e}); going on without caching downloads")

    def _download(self, url: str) -> bytes:
        budget = _Budget(self.timeout, self._cancel)
        _local.budget = budget
        try:
            timeout = _DeadlineTimeout(budget, self.connect_timeout, self.timeout)
            with self.session.get(url, stream=True, timeout=timeout) as r:  # type: ignore[arg-type]  # (urllib3 takes its Timeout through requests)
                with self._lock:
                    self.downloads += 1
                if r.status_code != 200:
                    raise FetchError(f"http {r.status_code}: {r.reason or 'error'}")
                declared = r.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > self.max_bytes:
                    raise FetchError(f"too large: Content-Length {declared} > --max-bytes {self.max_bytes}")
                return self._body(r.raw, budget)
        except FetchError:
            raise
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
            raise self._failure(e, budget) from None
        finally:
            _local.budget = None

    def _body(self, raw: urllib3.BaseHTTPResponse, budget: _Budget) -> bytes:
        """The body, one socket read at a time, checking the deadline and the cancel event between reads
        (a read of a whole chunk would wait for 64 KB from a server that sends a byte every 2 s)."""
        buf = bytearray()
        sock = getattr(getattr(raw, "connection", None), "sock", None)
        while True:
            if self._cancel.is_set():
                raise FetchError("cancelled: the run was interrupted")
            if budget.remaining() <= 0:
                raise FetchError(self._deadline_message(budget, f", {len(buf)} bytes received"))
            if sock is not None:
                sock.settimeout(budget.wait(self.timeout))  # the next read, too, ends by the deadline
            chunk = raw.read1(CHUNK, decode_content=True)  # as requests' iter_content: gzip undone
            if not chunk:
                return bytes(buf)
            buf += chunk
            if len(buf) > self.max_bytes:  # stop streaming: never hold a huge body
                raise FetchError(f"too large: body over --max-bytes {self.max_bytes}")

    def _failure(self, e: Exception, budget: _Budget) -> FetchError:
        if self._cancel.is_set():
            return FetchError("cancelled: the run was interrupted")
        if budget.remaining() <= _MIN_WAIT:  # every wait is cut at the deadline: this is it
            return FetchError(self._deadline_message(budget))
        if isinstance(e, requests.exceptions.ConnectTimeout):
            return FetchError(
                f"timeout: no connection within --connect-timeout {self.connect_timeout:g}s ({_tries(budget)})"
            )
        if timed_out(e):
            return FetchError(f"timeout: {_short(e)} ({_tries(budget)})")
        if isinstance(e, requests.exceptions.RetryError):
            return FetchError(f"http error: retries exhausted: {_short(e)}")
        if isinstance(e, (requests.exceptions.ConnectionError, urllib3.exceptions.ProtocolError)):
            return FetchError(f"connection error: {_short(e)}")
        return FetchError(f"http error: {_short(e)}")

    def _deadline_message(self, budget: _Budget, detail: str = "") -> str:
        return (
            f"timeout: not complete within the {self.timeout:g}s deadline for the whole download (--timeout): "
            f"{_tries(budget)}{detail}"
        )


def _tries(budget: _Budget) -> str:
    n = budget.attempts
    return f"gave up after {budget.elapsed():.1f}s, {n} attempt{'s' if n > 1 else ''}"


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _short(e: Exception, n: int = 160) -> str:
    text = str(e).replace("\n", " ")
    return text if len(text) <= n else text[: n - 3] + "..."


def timed_out(e: BaseException) -> bool:
    """`e` is a timeout, or wraps one: decided from the exception types, not their wording (requests
    wraps urllib3's ReadTimeoutError from a streamed body in a plain ConnectionError, and a
    MaxRetryError keeps the last attempt's error as `reason`)."""
    seen: list[BaseException] = []
    todo: list[object] = [e]
    while todo:
        x = todo.pop()
        if not isinstance(x, BaseException) or any(x is s for s in seen):
            continue
        seen.append(x)
        if isinstance(x, (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)):
            return True
        todo.extend([*x.args, getattr(x, "reason", None), x.__cause__, x.__context__])
    return False


# The kinds of FetchError (the words before the first ":") that a second try may pass: the network or
# the server, not the image. Everything else (http 404, not an image, too large, ...) stays as it is.
TRANSIENT_KINDS = ("timeout", "connection error", "http error", "cancelled")


def transient(reason: str) -> bool:
    """A failure reason written by this module (failures.csv's `reason`) that a rerun may turn into an
    image: timeouts, connection errors, retries exhausted on 5xx/429, an interrupted download, 429, 5xx."""
    kind = reason.split(":", 1)[0].strip()
    if kind in TRANSIENT_KINDS:
        return True
    code = kind.removeprefix("http ")
    return code != kind and code.isdigit() and (int(code) == 429 or int(code) >= 500)

"""Where `generate_dataset.py` writes: a local folder (pathlib.Path), or any filesystem Apache Beam
supports (`gs://`, `s3://`, ...) through Beam's own `FileSystems`, for `--engine beam` on a cluster.

`RemotePath` is the part of `pathlib.Path` the ingest job uses, so the job, the shard writer and the
download cache take either. Object stores differ from a disk in three ways that matter here:
- no rename that is atomic, and none needed: an object appears only once its upload completes, so a
  killed upload leaves nothing under the final name (`fileio.atomic_write_bytes` writes directly);
- no folders: `mkdir` does nothing, and a folder exists while some object lies under it;
- no lock: two runs into the same remote OUT are not kept apart (outlock says so at the start).
Every failure of the store comes out as an OSError naming the object, so the callers' one-line
error handling holds.

Beam's filesystems read their options (endpoints, credentials, project) from the pipeline options:
`configure(beam_args)` passes the options given after `--` before the job's first access.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Union

from fashion.core.errors import IngestError

INSTALL = "pip install 'fashion[beam]' (or: pip install 'apache-beam[aws]' for s3://, 'apache-beam[gcp]' for gs://)"
CHECK_DEADLINE_S = 60.0  # for the first look at a remote --out/--cache
CHUNK = 8 << 20  # upload/download in pieces: a shard is never held in memory whole
Location = Union[Path, "RemotePath"]  # a local folder or file, or one on an object store


def is_remote(path: str | Path | RemotePath | None) -> bool:
    return isinstance(path, RemotePath) or (isinstance(path, str) and "://" in path)


def location(path: str | Location) -> Location:
    """`path` as a Path (local) or a RemotePath (a URL such as s3://bucket/folder)."""
    if isinstance(path, (Path, RemotePath)):
        return path
    return RemotePath(path) if is_remote(path) else Path(path)


# What each scheme's Beam filesystem imports, and the install that brings it. Decided from what is
# installed, before anything is read or written: Beam registers GCSFileSystem even without its client
# and words the failure differently from one release to the next (2.78: "GCP dependencies are not
# installed, and no alternative client was provided to GcsIO").
NEEDS: dict[str, tuple[tuple[str, ...], str]] = {
    "gs": (("google.cloud.storage", "google.api_core"), "pip install 'apache-beam[gcp]'"),
    "s3": (("boto3",), "pip install 'apache-beam[aws]'"),
    "azfs": (("azure.storage.blob", "azure.core"), "pip install 'apache-beam[azure]'"),
    "hdfs": (("hdfs",), "pip install 'apache-beam[hadoop]'"),
}


def installed(module: str) -> bool:
    """`module` can be imported here (a missing parent package counts as missing)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # find_spec imports the parents: google.cloud absent, say
        return False


def missing_client(url: str) -> str | None:
    """What to install for `url`'s scheme when its client library is not installed; None when it is, or
    when the scheme is not one of NEEDS (Beam itself then says whether it knows it)."""
    scheme = url.split("://", 1)[0].lower()
    if scheme not in NEEDS:
        return None
    modules, install = NEEDS[scheme]
    absent = [m for m in modules if not installed(m)]
    if not absent:
        return None
    return f"{scheme}:// needs {', '.join(absent)}, not installed: {install}"


def _filesystems() -> Any:
    try:
        from apache_beam.io.filesystems import FileSystems
    except ImportError as e:
        raise IngestError(
            f"remote paths are read and written through Apache Beam, not installed ({e}): {INSTALL}"
        ) from None
    return FileSystems


def configure(beam_args: Sequence[str]) -> None:
    """Give Beam's filesystems the pipeline options (e.g. --s3_endpoint_url, --s3_region_name, --project).
    Their retry notices and logged tracebacks stay off the console: a failure reaches the user as one
    line naming the object (RemotePath)."""
    fs = _filesystems()  # (Beam not installed: one line saying what to install)
    from apache_beam.options.pipeline_options import PipelineOptions

    for name in ("apache_beam.utils.retry", "apache_beam.io"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    logging.getLogger().addFilter(_not_beam_io)  # s3io logs some errors on the root logger itself
    fs.set_options(PipelineOptions(list(beam_args)))


def _not_beam_io(record: logging.LogRecord) -> bool:
    return "apache_beam/io/" not in record.pathname.replace("\\", "/")


def check(url: str, flag: str, deadline_s: float = CHECK_DEADLINE_S) -> None:
    """The filesystem of `url` answers a listing within `deadline_s` (Beam's clients retry with
    backoff for minutes against a wrong endpoint): else one line naming the flag and the reason.
    A scheme whose client library is not installed is refused first, without a request."""
    fs = _filesystems()
    absent = missing_client(url)
    if absent:
        raise IngestError(f"{flag} {url}: {absent}")
    outcome: list[BaseException | None] = []

    def probe() -> None:
        try:
            fs.get_filesystem(url)
            fs.match([url.rstrip("/") + "/*"])
            outcome.append(None)
        except BaseException as e:  # handed to the waiting thread
            outcome.append(e)

    worker = threading.Thread(target=probe, name=f"check {url}", daemon=True)
    worker.start()
    worker.join(deadline_s)
    if not outcome:
        raise IngestError(
            f"{flag} {url}: no answer within {deadline_s:.0f} s (check the endpoint, credentials and network; "
            f"Beam's filesystem options go after --, e.g. --s3_endpoint_url=URL)"
        )
    e = outcome[0]
    if e is not None:
        hint = f"; {INSTALL}" if isinstance(e, ImportError) else ""
        raise IngestError(f"{flag} {url}: {_short(e)}{hint}")


def _short(e: BaseException) -> str:
    text = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
    return text[:300]


class RemotePath:
    """A file or folder on a filesystem Beam supports; the methods of pathlib.Path the job calls."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"RemotePath({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __truediv__(self, name: str) -> RemotePath:
        return RemotePath(f"{self.url}/{name}")

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def parent(self) -> RemotePath:
        return RemotePath(self.url.rsplit("/", 1)[0])

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        """`fn(*args)` on Beam's FileSystems; the store's error as an OSError naming this object."""
        fs = _filesystems()
        try:
            return getattr(fs, fn)(*args)
        except OSError as e:
            raise type(e)(f"{what} {self.url}: {_short(e)}") from None
        except IngestError:
            raise
        except Exception as e:  # the store's own (S3ClientError, BeamIOError, google.api_core...)
            raise OSError(f"{what} {self.url}: {_short(e)}") from None

    def _metadata(self, pattern: str) -> list[Any]:
        return self._call("cannot list", "match", [pattern])[0].metadata_list

    # ---- what is there
    def is_file(self) -> bool:
        return bool(self._call("cannot look up", "exists", self.url))

    def is_dir(self) -> bool:
        return bool(self._metadata(self.url + "/**"))

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def stat(self) -> SimpleNamespace:
        found = self._metadata(self.url)
        if not found:
            raise FileNotFoundError(f"not found: {self.url}")
        return SimpleNamespace(st_size=found[0].size_in_bytes)

    def glob(self, pattern: str) -> Iterator[RemotePath]:
        """Objects directly in this folder whose name matches `pattern` (`*` stops at `/`)."""
        return iter(sorted(RemotePath(m.path) for m in self._metadata(f"{self.url}/{pattern}")))

    def iterdir(self) -> Iterator[RemotePath]:
        children = {m.path[len(self.url) + 1 :].split("/", 1)[0] for m in self._metadata(self.url + "/**")}
        return iter(sorted(self / c for c in children if c))

    def __lt__(self, other: RemotePath) -> bool:
        return self.url < other.url

    # ---- reading and writing whole objects
    def open(self, mode: str = "rb") -> Any:
        from apache_beam.io.filesystem import CompressionTypes

        if mode == "rb":
            return self._call(
                "cannot read", "open", self.url, "application/octet-stream", CompressionTypes.UNCOMPRESSED
            )
        if mode == "wb":
            return self._call(
                "cannot write", "create", self.url, "application/octet-stream", CompressionTypes.UNCOMPRESSED
            )
        raise ValueError(f"RemotePath.open: mode {mode!r} (only 'rb' and 'wb')")

    def read_bytes(self) -> bytes:
        try:
            with self.open("rb") as f:
                return f.read()
        except OSError:
            raise
        except Exception as e:  # raised by the first read, not by open
            raise OSError(f"cannot read {self.url}: {_short(e)}") from None

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> None:
        """One upload: the object appears whole when it completes, or not at all."""
        if not data and self.url.startswith("s3://"):
            _put_empty_s3(self.url)
            return
        try:
            with self.open("wb") as f:
                f.write(data)
        except OSError:
            raise
        except Exception as e:
            raise OSError(f"cannot write {self.url}: {_short(e)}") from None

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(text.encode(encoding))

    def upload(self, local: Path) -> None:
        """The local file `local` becomes this object (in pieces of CHUNK bytes)."""
        if local.stat().st_size == 0:  # (an empty shard: every image of it failed)
            return self.write_bytes(b"")
        try:
            with open(local, "rb") as src, self.open("wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
        except OSError:
            raise
        except Exception as e:
            raise OSError(f"cannot write {self.url}: {_short(e)}") from None

    def download(self, local: Path) -> None:
        with self.open("rb") as src, open(local, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)

    # ---- removing
    def unlink(self, missing_ok: bool = False) -> None:
        if not self.is_file():
            if missing_ok:
                return
            raise FileNotFoundError(f"not found: {self.url}")
        self._call("cannot delete", "delete", [self.url])

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to make: an object store's folders are the prefixes of its objects' names."""

    def rmtree(self) -> None:
        found = [m.path for m in self._metadata(self.url + "/**")]
        if found:
            self._call("cannot delete", "delete", found)


def _put_empty_s3(url: str) -> None:
    """A zero-byte object on S3: Beam's S3 writer cannot make one (it completes a multipart upload with
    no part, which S3 refuses: its s3io.py says so), so one PUT through the boto3 client Beam builds
    from the same pipeline options."""
    from apache_beam.io.aws import s3io

    bucket, key = s3io.parse_s3_path(url)
    options = _filesystems()._pipeline_options  # what configure() or Beam's worker start-up set
    try:
        s3io.S3IO(options=options).client.client.put_object(Bucket=bucket, Key=key, Body=b"")
    except Exception as e:
        raise OSError(f"cannot write {url}: {_short(e)}") from None


def rmtree(path: Path | RemotePath) -> None:
    """A folder and everything in it, if it is there (shutil.rmtree(ignore_errors=True) for local ones)."""
    if isinstance(path, RemotePath):
        path.rmtree()
    else:
        shutil.rmtree(path, ignore_errors=True)


def copy_tree(src: RemotePath, dst: Path) -> int:
    """Every object under `src` into the local folder `dst` (same relative names); returns their count."""
    n = 0
    for m in src._metadata(src.url + "/**"):
        target = dst / m.path[len(src.url) + 1 :]
        target.parent.mkdir(parents=True, exist_ok=True)
        RemotePath(m.path).download(target)
        n += 1
    return n

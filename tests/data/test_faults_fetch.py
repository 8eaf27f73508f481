"""Issue #11, fetching side: hostile servers and paths, a cache that cannot be written, Ctrl-C.

Nothing hangs (every subprocess has a generous timeout: raising is the failure), nothing good is
lost (the records are read back), and every refusal is one clear line (never a traceback).
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT, SAMPLE, photo_bytes, sample_lines
from fashion.core import fileio
from fashion.data import dataset_json, imaging, records
from fashion.data.fetching import Fetcher, FetchError

LABELS = str(SAMPLE / "labels.txt")


def _default_sigint() -> None:
    # A background job (`make test &`, CI wrappers) ignores SIGINT and children inherit that, so
    # Python would install no KeyboardInterrupt handler: give the child the default, as at a terminal.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args: list[str], prefix: list[str] | None = None) -> subprocess.Popen:
    """generate_dataset.py as a user runs it (optionally under `prefix`, e.g. unshare)."""
    return subprocess.Popen(
        [*(prefix or []), sys.executable, str(ROOT / "generate_dataset.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )


def run(args: list[str], timeout: float = 120, prefix: list[str] | None = None) -> tuple[int, str, str]:
    proc = start(args, prefix)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def good_rows(n: int, prefix: str = "p", url: str | None = None) -> list[str]:
    """`n` sample photos as list lines: local paths, or `url/photos/NAME` when given."""
    rows = []
    for i, line in enumerate(sample_lines()[:n]):
        src = f"{url}/photos/{Path(line[1]).name}" if url else str(SAMPLE / line[1])
        rows.append(f"{prefix}{i},{src},{','.join(line[2:])}")
    return rows


def labels_of(i: int = 0) -> str:
    return ",".join(sample_lines()[i][2:])


def record_ids(out: Path) -> list[str]:
    return [r["id"] for s in records.SPLITS for r in records.iter_records(records.shard_paths(out, s))]


def failures(out: Path) -> dict[str, str]:
    return {r[0]: r[2] for r in fileio.read_csv_rows(out / records.FAILURES)}


def wait_for(condition, timeout: float = 90, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


# ------------------------------------------------------------------ the fetcher alone (fast)


@pytest.mark.timeout(60)
def test_deadline_covers_the_whole_download_and_the_message_says_so(server):
    """A drip (bytes every 2 s, never done) and a silent server both end at --timeout, with retries left;
    the message names the deadline, the time taken and the attempts made (the old one said 10 s after 40)."""
    fetcher = Fetcher(timeout=1.0, retries=3)
    with pytest.raises(FetchError) as drip:
        fetcher.fetch(f"{server.url}/drip/a.jpg")
    server.slow_seconds = 3.0
    with pytest.raises(FetchError) as slow:
        fetcher.fetch(f"{server.url}/slow")
    for e in (drip, slow):
        msg = str(e.value)
        assert msg.startswith("timeout: not complete within the 1s deadline for the whole download (--timeout)")
        assert "gave up after " in msg and "1 attempt" in msg, msg
    # <= 1: on a loaded machine the deadline can pass before the server even counts the request
    assert server.hits["/slow"] <= 1, "no attempt is started that the deadline cannot allow"


@pytest.mark.timeout(60)
def test_retry_after_never_outwaits_the_deadline(server):
    fetcher = Fetcher(timeout=5.0, retries=3)
    with pytest.raises(FetchError, match=r"^http 503"):
        fetcher.fetch(f"{server.url}/retry-after/3600")  # urllib3 alone would sleep an hour
    assert server.hits["/retry-after/3600"] == 1


@pytest.mark.timeout(60)
def test_close_cancels_a_download_in_flight(server):
    server.drip_seconds = 0.3  # the cancel is seen between reads
    fetcher = Fetcher(timeout=600.0)
    errors: list[str] = []

    def fetch() -> None:
        try:
            fetcher.fetch(f"{server.url}/drip/b.jpg")
        except FetchError as e:
            errors.append(str(e))

    t = threading.Thread(target=fetch, daemon=True)
    t.start()
    wait_for(lambda: server.hits["/drip/b.jpg"], what="the drip request")
    fetcher.close()
    t.join(timeout=20)
    assert not t.is_alive() and errors == ["cancelled: the run was interrupted"]


@pytest.mark.timeout(60)
def test_only_regular_files_are_read_and_within_max_bytes(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # nobody writes: reading it would block forever
    (tmp_path / "dir.jpg").mkdir()
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8\xff" + b"\0" * 5000)
    fetcher = Fetcher(max_bytes=4096)
    cases = {
        str(fifo): "is a named pipe (FIFO)",
        "/dev/zero": "is a character device",  # endless: would be read until memory runs out
        str(tmp_path / "dir.jpg"): "is a directory",
    }
    for path, kind in cases.items():
        with pytest.raises(FetchError) as e:
            fetcher.fetch(path)
        assert str(e.value) == f"not a regular file: {path} {kind}"
    with pytest.raises(FetchError, match=r"^too large: 5003 bytes > --max-bytes 4096$"):
        fetcher.fetch(str(big))
    with pytest.raises(FetchError, match=r"^missing file: "):
        fetcher.fetch(str(tmp_path / "none.jpg"))
    assert Fetcher().fetch(f"file://{SAMPLE / sample_lines()[0][1]}") == photo_bytes(0)


def test_scheme_is_case_insensitive(server):
    name = Path(sample_lines()[0][1]).name
    url = server.url.replace("http://", "HTTP://") + f"/photos/{name}"
    assert Fetcher().fetch(url) == photo_bytes(0)
    assert server.hits[f"/photos/{name}"] == 1


def test_cache_keeps_recognised_images_only(server, tmp_path):
    cache = tmp_path / "cache"
    fetcher = Fetcher(cache_dir=str(cache))
    name = Path(sample_lines()[1][1]).name
    page = f"{server.url}/page.jpg"
    for _ in range(2):  # an HTML error page is never cached: asked again, it is downloaded again
        assert imaging.sniff(fetcher.fetch(page)) is None
    assert server.hits["/page.jpg"] == 2
    # a transient error page served with 200: the next run gets the real photo
    first = f"{server.url}/html-first/{name}"
    assert imaging.sniff(fetcher.fetch(first)) is None
    assert fetcher.fetch(first) == fetcher.fetch(first) == (SAMPLE / "photos" / name).read_bytes()
    assert server.hits[f"/html-first/{name}"] == 2, "the photo came from the cache the third time"
    # an entry an older version cached (an HTML page) is dropped and downloaded again
    url = f"{server.url}/photos/{name}"
    bad = fetcher.cache_path(url)
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"<html>" + b"x" * 6000)
    assert fetcher.fetch(url) == (SAMPLE / "photos" / name).read_bytes()
    assert imaging.sniff(bad.read_bytes()) == "jpeg" and server.hits[f"/photos/{name}"] == 1
    assert all(imaging.sniff(p.read_bytes()) for p in cache.rglob("*") if p.is_file())


def test_cache_that_cannot_be_made_warns_once(server, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    warnings: list[str] = []
    fetcher = Fetcher(cache_dir=str(tmp_path / "file" / "cache"), warn=warnings.append)
    for line in sample_lines()[:3]:
        assert imaging.sniff(fetcher.fetch(f"{server.url}/photos/{Path(line[1]).name}")) == "jpeg"
    assert warnings == [
        f"warning: cache {tmp_path / 'file' / 'cache'} cannot be written (Not a directory); "
        "going on without caching downloads"
    ]


def test_non_images_are_named_never_shown():
    secret = b"aws_secret_access_key=hunter2hunter2\n" * 4
    cases = {
        secret: "not an image: a text file",
        b"<!DOCTYPE html><html><body>oops</body></html>": "not an image: content is an HTML page",
        b"%PDF-1.7\n%\xe2\xe3": "not an image: a PDF document",
        b"": "not an image: empty file",
        bytes(range(256)) * 2: "not an image: unrecognised binary data (512 bytes)",
    }
    for data, text in cases.items():
        assert imaging.describe_non_image(data) == text
    with pytest.raises(imaging.ImageError) as e:
        imaging.decode_rgb(secret)
    assert "hunter2" not in str(e.value)


def test_csv_cells_that_spreadsheets_run_are_escaped_and_read_back(tmp_path):
    ids = ['=HYPERLINK("http://x")', "+1", "-5", "@SUM(A1)", "\tx", "'=already", "'quoted", "plain", "a=b", ""]
    path = tmp_path / "index.csv"
    path.write_text(fileio.csv_text(["id", "split", "source"], [[i, "-train", f"={i}"] for i in ids]))
    raw = list(csv.reader(path.open(newline="")))[1:]
    for cell in (c for row in raw for c in (row[0], row[2])):
        assert cell[:1] not in ("=", "+", "-", "@", "\t"), cell  # what a spreadsheet would run
    assert [r[1] for r in raw] == ["-train"] * len(ids), "only the id/source columns are escaped"
    assert fileio.read_csv_rows(path) == [[i, "-train", f"={i}"] for i in ids], "read back exactly"


# ------------------------------------------------------------------ through the real CLI


@pytest.mark.slow
def test_hostile_list_then_overwrite(server, tmp_path):
    """Drip, FIFO, /dev/zero, HTTP://, a secret text file, an HTML page and formula ids in one list."""
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    secret = tmp_path / "notes.jpg"
    secret.write_text("password=hunter2\n" * 50)
    name = Path(sample_lines()[5][1]).name
    upper = server.url.replace("http://", "HTTP://")
    rows = good_rows(4) + [
        f"=HYPERLINK(1),{upper}/photos/{name},{labels_of(5)}",
        f"-7,{server.url}/html-first/{Path(sample_lines()[6][1]).name},{labels_of(6)}",
        f"drip,{server.url}/drip/c.jpg,{labels_of()}",
        f"@fifo,{fifo},{labels_of()}",
        f"zero,/dev/zero,{labels_of()}",
        f"secret,{secret},{labels_of()}",
        f"html,{server.url}/page.jpg,{labels_of()}",
    ]
    (tmp_path / "list.txt").write_text("\n".join(rows) + "\n")
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = [str(tmp_path / "list.txt"), "--labels", LABELS, "--out", str(out), "--cache", str(cache)]
    args += ["--image-size", "32", "--timeout", "2", "--workers", "3", "--shard-size", "3"]
    code, _, err = run(args)
    assert code == 1 and "Traceback" not in err, err
    fails = failures(out)
    assert fails["drip"].startswith("timeout: not complete within the 2s deadline for the whole download")
    assert fails["@fifo"] == f"not a regular file: {fifo} is a named pipe (FIFO)"
    assert fails["zero"] == "not a regular file: /dev/zero is a character device"
    assert fails["secret"] == "not an image: a text file"
    assert fails["html"] == fails["-7"] == "not an image: content is an HTML page"
    assert "hunter2" not in (out / "failures.csv").read_text() + err
    good = {f"p{i}" for i in range(4)} | {"=HYPERLINK(1)"}
    assert set(record_ids(out)) == good
    assert {r[0] for r in fileio.read_csv_rows(out / records.INDEX)} == good
    assert "'=HYPERLINK(1)" in (out / "index.csv").read_text(), "escaped for spreadsheets"
    assert "'@fifo" in (out / "failures.csv").read_text() and "'-7" in (out / "failures.csv").read_text()
    assert all(imaging.sniff(p.read_bytes()) for p in cache.rglob("*") if p.is_file()), "only images cached"

    # --overwrite: the HTML answers were not cached, so the page that now serves its photo is fetched again
    code, _, err = run([*args, "--overwrite"])
    assert code == 1 and "Traceback" not in err, err
    assert set(record_ids(out)) == good | {"-7"}
    assert server.hits[f"/html-first/{Path(sample_lines()[6][1]).name}"] == 2
    assert set(failures(out)) == {"drip", "@fifo", "zero", "secret", "html"}


@pytest.mark.slow
def test_ctrl_c_while_a_download_drips_exits_130_then_rerun_keeps_everything(server, tmp_path):
    rows = good_rows(4)
    rows.insert(2, f"drip,{server.url}/drip/d.jpg,{labels_of()}")
    (tmp_path / "list.txt").write_text("\n".join(rows) + "\n")
    args = [str(tmp_path / "list.txt"), "--labels", LABELS, "--out", str(tmp_path / "out")]
    args += ["--cache", str(tmp_path / "cache"), "--image-size", "32", "--shard-size", "2", "--workers", "2"]
    proc = start([*args, "--timeout", "600"])  # only the interrupt can end this drip
    try:
        wait_for(lambda: server.hits["/drip/d.jpg"] or proc.poll() is not None, what="the drip request")
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("interrupted")]
    assert len(lines) == 1 and "rerun the same command" in lines[0], err

    # the same command (a shorter deadline is not part of it) finishes: every good line once
    code, out, err = run([*args, "--timeout", "1"])
    assert code == 1 and "Traceback" not in err and "resuming" in out, err
    assert sorted(record_ids(tmp_path / "out")) == [f"p{i}" for i in range(4)]
    assert list(failures(tmp_path / "out")) == ["drip"]


def _tmpfs_prefix(folder: Path, size_kb: int) -> list[str]:
    """`unshare` (a user + mount namespace) mounting a small tmpfs on `folder`, or skip with the reason."""
    folder.mkdir()
    probe = ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size={size_kb}k tmpfs {folder}"]
    try:
        r = subprocess.run(probe, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot run unshare to mount a small tmpfs: {e}")
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (unshare -rm + mount -t tmpfs): {r.stderr.strip()}")
    script = f'mount -t tmpfs -o size={size_kb}k tmpfs "$0" && exec "$@"'
    return ["unshare", "-rm", "sh", "-c", script, str(folder)]


@pytest.mark.slow
def test_full_cache_disk_never_turns_a_good_image_into_a_failure(server, tmp_path):
    cache = tmp_path / "cache"
    prefix = _tmpfs_prefix(cache, 64)  # room for about two sample photos
    rows = good_rows(8, url=server.url)
    (tmp_path / "list.txt").write_text("\n".join(rows) + "\n")
    args = [str(tmp_path / "list.txt"), "--labels", LABELS, "--out", str(tmp_path / "out"), "--cache", str(cache)]
    code, _, err = run([*args, "--image-size", "32", "--workers", "2"], prefix=prefix)
    assert code == 0 and "Traceback" not in err, err
    warnings = [ln for ln in err.splitlines() if "cache" in ln and "warning" in ln]
    assert warnings == [
        f"warning: cache {cache} cannot be written (No space left on device); going on without caching downloads"
    ], err
    assert sorted(record_ids(tmp_path / "out")) == sorted(f"p{i}" for i in range(8))
    assert failures(tmp_path / "out") == {}


@pytest.mark.slow
def test_ctrl_c_during_the_final_shutdown_exits_130_without_traceback(tmp_path):
    """Ctrl-C after the job is done, while the interpreter joins threads at exit (here one that sleeps)."""
    (tmp_path / "list.txt").write_text("\n".join(good_rows(3)) + "\n")
    out = tmp_path / "out"
    script = tmp_path / "entry.py"
    script.write_text(
        "import sys, threading, time\n"
        "from fashion.cli import generate_dataset_main\n"
        f"sys.argv = ['generate_dataset.py', {str(tmp_path / 'list.txt')!r}, '--labels', {LABELS!r},\n"
        f"            '--out', {str(out)!r}, '--image-size', '32', '--cache', '']\n"
        "code = generate_dataset_main()\n"
        "threading.Thread(target=time.sleep, args=(120,)).start()  # a slow teardown: joined at exit\n"
        "print('job returned', code, flush=True)\n"
        "sys.exit(code)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-u", str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        preexec_fn=_default_sigint,
    )
    try:
        for line in proc.stdout:
            if line.startswith("job returned"):
                break
        assert line.strip() == "job returned 0"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert sorted(record_ids(out)) == ["p0", "p1", "p2"] and (out / dataset_json.MANIFEST).is_file()


def test_a_timeout_is_told_by_its_type_whatever_the_wording():
    """requests wraps urllib3's read timeout from a streamed body in a plain ConnectionError, and a
    MaxRetryError keeps the last attempt's error as `reason`: both are timeouts; a refusal is not."""
    import requests
    import urllib3

    from fashion.data.fetching import timed_out

    read = urllib3.exceptions.ReadTimeoutError(None, "http://127.0.0.1/x", "any words")
    assert timed_out(requests.exceptions.ConnectionError(read))
    retried = urllib3.exceptions.MaxRetryError(None, "u", reason=urllib3.exceptions.ConnectTimeoutError("w"))
    assert timed_out(requests.exceptions.ConnectionError(retried))
    assert timed_out(requests.exceptions.ReadTimeout("w")) and timed_out(TimeoutError())
    assert not timed_out(requests.exceptions.ConnectionError("timed out, but refused"))

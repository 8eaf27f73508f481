"""Shared fixtures: a real HTTP server on 127.0.0.1 serving real photos and awkward cases."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
# train.py's options for the tests' tiny runs: random weights, 32 px, the heads only
TINY_TRAIN = ["--weights", "none", "--image-size", "32", "--layers", "heads"]
SAMPLE = ROOT / "data" / "sample"
BUCKET = "fashion-test"  # the s3 fixture's bucket
# What a plain `import tensorflow` prints on a machine without a GPU (tensorflow 2.21): kept off the console
NOISE = (
    "absl::InitializeLog",
    "oneDNN custom operations",
    "Could not find cuda drivers",
    "cuInit",
    "cpu_feature_guard",
    "Warning: ",  # Python's warnings (UserWarning: resource_tracker: ... leaked semaphore objects)
)


@pytest.fixture(autouse=True)
def sigint_left_as_found(request):
    """A test that leaves Ctrl-C's handler changed (ignored, or a command's own) breaks the tests after it
    in the same worker, which need Python's default to install theirs (fashion.core.interrupts): put it
    back, and say which test it was."""
    import signal
    import warnings

    before = signal.getsignal(signal.SIGINT)
    yield
    after = signal.getsignal(signal.SIGINT)
    if after is not before:
        signal.signal(signal.SIGINT, before)
        warnings.warn(f"{request.node.nodeid} left the SIGINT handler as {after!r}; put back", stacklevel=1)


# The longest tests, longest first (seconds each in a whole `make test` on 2 cores, 2026-12-07): they start
# first, one per test process, so that neither process ends the run alone in a 5-minute test.
LONGEST = (
    "test_demo_learns_more_than_the_baselines_and_prints_no_noise",  # 338
    "test_train_py_on_two_logical_cpus_writes_a_bundle",  # 184
    "test_ctrl_c_on_the_jax_backend_stops_training_and_resume_finishes",  # 153
    "test_a_killed_worker_stops_the_other_and_resume_finishes_with_one_bundle",  # 152
    "test_two_processes_train_like_one_with_the_summed_batch",  # 148
    "test_two_replicas_train_like_one_device_with_the_summed_batch",  # 143
    "test_exports_agree_with_keras_and_the_savedmodel_takes_photo_bytes",
    "test_ctrl_c_then_resume_continues_epochs_and_optimizer",  # 118
)


def pytest_configure(config):
    """A shell's background job (`make test &` in a script, `nohup`) starts with SIGINT ignored, and every
    process it starts inherits that: the Ctrl-C tests would see no KeyboardInterrupt. Deliver it as at a
    terminal (each xdist worker runs this too; the children the tests start inherit the default)."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # JAX's persistent compilation cache, one for the whole run (set before xdist starts its workers, which
    # inherit it): a resumed or second JAX process reuses the first one's compiled steps instead of compiling
    # them again (a tiny train.py run on JAX: 37-40 s cold, 25 s warm, measured 2026-12-07)
    if not hasattr(config, "workerinput") and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        import tempfile

        config._jax_cache = tempfile.TemporaryDirectory(prefix="fashion-tests-jax-")
        os.environ["JAX_COMPILATION_CACHE_DIR"] = config._jax_cache.name
        os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"


def pytest_unconfigure(config):
    if hasattr(config, "_jax_cache"):
        os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
        os.environ.pop("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", None)
        config._jax_cache.cleanup()


def pytest_collection_modifyitems(config, items):
    """The slow tests first, the longest of them (LONGEST) in front (file order kept otherwise): the two
    test processes of `make test` take the long trainings one by one from the start and the quick tests
    fill the gaps at the end, instead of one process finishing a 5-minute test alone while the other idles."""

    def order(item) -> tuple[bool, int]:
        name = getattr(item, "originalname", item.name)
        return item.get_closest_marker("slow") is None, LONGEST.index(name) if name in LONGEST else len(LONGEST)

    items.sort(key=order)


def run(args: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """A command as its own process (python ARGS), from the repository root."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def noise_in(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(n in line for n in NOISE)]


def sample_lines() -> list[list[str]]:
    return [ln.strip().split(",") for ln in (SAMPLE / "train+val.txt").read_text().splitlines() if ln.strip()]


def photo_bytes(i: int = 0) -> bytes:
    return (SAMPLE / sample_lines()[i][1]).read_bytes()


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def awkward_files() -> dict[str, bytes]:
    """Variants of one real photo (portrait, 256 px wide) in the modes the ingester must handle."""
    im = Image.open(io.BytesIO(photo_bytes(0))).convert("RGB")
    rgba = im.convert("RGBA")
    alpha = np.full((im.height, im.width), 255, np.uint8)
    alpha[: im.height // 4] = 0  # top quarter fully transparent -> must come out white
    rgba.putalpha(Image.fromarray(alpha))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    grey16 = Image.fromarray(np.asarray(im.convert("L")).astype(np.uint16) * 257)
    full = photo_bytes(0)
    return {
        "rgba.png": _encode(rgba, "PNG"),
        "palette.png": _encode(im.convert("P", palette=Image.ADAPTIVE), "PNG"),
        "grey.png": _encode(im.convert("L"), "PNG"),
        "grey16.png": _encode(grey16, "PNG"),
        "cmyk.jpg": _encode(im.convert("CMYK"), "JPEG", quality=90),
        "exif6.jpg": _encode(im, "JPEG", quality=90, exif=exif.tobytes()),
        "truncated.jpg": full[: len(full) // 2],
        "tiny.jpg": _encode(im.resize((24, 36)), "JPEG", quality=80),  # < 5 KB
        "bomb.png": _encode(Image.new("L", (3000, 2000), 255), "PNG"),  # 6 MP, a few KB
    }


class Server:
    """Routes: /photos/<file> real photos; /files/<name> awkward variants; /status/<code>;
    /flaky/<file> 500 then 200; /slow (sleeps); /page.jpg an HTML page; /zero; /huge (streamed, no length);
    /huge-declared (Content-Length); /delay/<file> photos after `delay` seconds; /switchable/<file> 503 while
    `down`, the photo after;
    /drip/<name> headers, then one byte every `drip_seconds` until the client or the server goes;
    /html-first/<file> an HTML page on the first hit, the photo after; /retry-after/<s> 503 + Retry-After."""

    def __init__(self):
        self.hits: Counter[str] = Counter()
        self.files = awkward_files()
        self.delay = 0.0
        self.slow_seconds = 3.0
        self.drip_seconds = 2.0
        self.down = False  # /switchable/<file>: 503 while True, the photo after
        self.stopped = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args):  # keep test output clean
                pass

            def send(self, code: int, body: bytes, ctype: str = "image/jpeg", length: bool = True):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                if length:
                    self.send_header("Content-Length", str(len(body)))
                else:
                    self.send_header("Connection", "close")
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self):
                path = self.path.split("?")[0]
                server.hits[path] += 1
                parts = path.strip("/").split("/", 1)
                head, rest = parts[0], parts[1] if len(parts) > 1 else ""
                if head == "photos" and (SAMPLE / "photos" / rest).is_file():
                    return self.send(200, (SAMPLE / "photos" / rest).read_bytes())
                if head == "delay" and (SAMPLE / "photos" / rest).is_file():
                    time.sleep(server.delay)
                    return self.send(200, (SAMPLE / "photos" / rest).read_bytes())
                if head == "files" and rest in server.files:
                    return self.send(200, server.files[rest], "application/octet-stream")
                if head == "status":
                    return self.send(int(rest), b"error", "text/plain")
                if head == "switchable" and (SAMPLE / "photos" / rest).is_file():
                    if server.down:
                        return self.send(503, b"down for maintenance", "text/plain")
                    return self.send(200, (SAMPLE / "photos" / rest).read_bytes())
                if head == "flaky":
                    if server.hits[path] == 1:
                        return self.send(500, b"try again", "text/plain")
                    return self.send(200, (SAMPLE / "photos" / rest).read_bytes())
                if head == "slow":
                    time.sleep(server.slow_seconds)
                    return self.send(200, photo_bytes(1))
                if head == "page.jpg":  # lies about its type: must be recognised by its bytes
                    return self.send(200, b"<!DOCTYPE html><html><body>" + b"x" * 8000 + b"</body></html>")
                if head == "zero":
                    return self.send(200, b"")
                if head == "huge":  # 3 MB streamed without Content-Length
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    try:
                        self.wfile.write(b"\xff\xd8\xff" + b"\0" * (3 * 1024 * 1024))
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    return
                if head == "drip":  # answers at once, then never finishes: only a whole-download deadline ends it
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(1 << 20))
                    self.end_headers()
                    try:
                        self.wfile.write(b"\xff\xd8\xff")
                        while not server.stopped.wait(server.drip_seconds):
                            self.wfile.write(b"\0")
                            self.wfile.flush()
                    except OSError:  # the client hung up
                        pass
                    self.close_connection = True
                    return
                if head == "html-first":  # a transient error page served with 200, as some hosts do
                    if server.hits[path] == 1:
                        return self.send(200, b"<!DOCTYPE html><html><body>busy" + b" " * 8000 + b"</body></html>")
                    return self.send(200, (SAMPLE / "photos" / rest).read_bytes())
                if head == "retry-after":
                    self.send_response(503)
                    self.send_header("Retry-After", rest)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if head == "huge-declared":
                    return self.send(200, b"\xff\xd8\xff" + b"\0" * (3 * 1024 * 1024))
                return self.send(404, b"not found", "text/plain")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        # a client that hangs up mid-answer (a deadline, an interrupted run) is expected here: the
        # server's traceback for it would land in the stderr the tests read for ours
        self.httpd.handle_error = lambda request, client_address: None
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        # a short poll: close() (every test's teardown) waits for one
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.stopped.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """The shipped sample ingested once at 40 px (shards of 64 records), read-only for every test."""
    from fashion.cli import generate_dataset_main

    out = tmp_path_factory.mktemp("records")
    assert (
        generate_dataset_main(
            [
                str(SAMPLE / "train+val.txt"),
                "--labels",
                str(SAMPLE / "labels.txt"),
                "--out",
                str(out),
                "--image-size",
                "40",
                "--shard-size",
                "64",
            ]
        )
        == 0
    )
    return out


def tiny_bundle(
    folder: Path, thresholds: list[float] | None = None, seed: int = 3, backbone: str = "mobilenetv2"
) -> Path:
    """A real bundle (model.keras + meta.json) of an untrained 32 px `backbone` over the sample's 13 labels,
    as train.py lays one out; `thresholds` default: the first three always pass, the rest never.
    MobileNetV2: what uses it checks prediction, not the trunk, and every process that loads the bundle
    (detect.py, serve.py, Beam's workers) loads it in a fraction of DenseNet121's time."""
    import keras

    from fashion.core.fileio import atomic_write_json
    from fashion.model import network as model_lib
    from fashion.model.tasks.base import head_names

    labels = (SAMPLE / "labels.txt").read_text().split()
    folder.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(seed)
    model_lib.build_model(labels, backbone=backbone, image_size=32).save(folder / "model.keras")
    th = thresholds if thresholds is not None else [0.0] * 3 + [1.0] * 10
    atomic_write_json(
        folder / "meta.json", {"labels": labels, "heads": head_names(labels), "thresholds": th, "input_size": 32}
    )
    return folder


@pytest.fixture(scope="module")
def s3():
    """An S3 endpoint on 127.0.0.1 with one bucket; AWS credentials that it accepts, in the environment
    (the Beam workers inherit them)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    import boto3

    client = boto3.client("s3", endpoint_url=url)
    deadline = time.time() + 60
    while True:
        try:
            client.create_bucket(Bucket=BUCKET)
            break
        except Exception:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise
            time.sleep(0.2)
    yield url, client
    proc.terminate()
    proc.wait(timeout=30)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v

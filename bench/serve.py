#!/usr/bin/env python
"""serve.py under load: its throughput with concurrent clients against detect.py's batch rate on the same
photos, one client's latency, and many clients for a minute (errors, memory).

Run:   .venv/bin/python bench/serve.py [--model model_save/RUN] [--photos DIR]   (~5 min on 2 cores)

Builds a 64 px DenseNet121 bundle of the defaults with fixed random weights (the speed does not depend on
the weights) unless --model is given. Measured in one run, one after the other, on the same photos:
  detect   `detect.py PHOTOS --quiet --json` (batches of 32): the marginal rate between two numbers of
           photos (TensorFlow's import and the bundle's load are not throughput);
  model    the bundle's predict_on_batch alone at batch --clients: one-photo clients never fill more than
           that many photos into a batch, so the service cannot pass this rate;
  service  serve.py on 127.0.0.1, --clients (8) threads each posting one photo at a time (raw body),
           --requests photos in all: photos/s, and its ratio to detect (target >= 0.8) and to the model;
           then the same clients sending --per-request (8) photos in each multipart request, as a
           catalogue pipeline would (batches can fill to --batch-size);
  latency  one client, one photo at a time: p50 and p99 of --latency-requests requests;
  soak     --soak-clients (64) clients for --soak-seconds (60): errors, the service's RSS at the
           start and the end of the minute (target: no error, flat), and its photos/s.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ingest import run_child  # noqa: E402  (bench/ingest.py: child timing)
from score import SHARED, ceiling, make_bundle, photo_paths  # noqa: E402  (bench/score.py: bundle, photos, model)


def detect_rate(bundle: Path, paths: list[Path], n1: int, n2: int, tmp: Path) -> float:
    def once(n: int) -> float:
        cmd = [sys.executable, "detect.py", *map(str, paths[:n]), "--model", str(bundle), "--quiet"]
        return min(run_child([*cmd, "--json", str(tmp / f"d{n}.json")])[0] for _ in range(2))

    return (n2 - n1) / max(once(n2) - once(n1), 1e-9)


def start_service(bundle: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "serve.py", "--model", str(bundle), "--port", "0", *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "serving ... on http://127.0.0.1:PORT/ ..."
    match = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
    if not match:
        proc.kill()
        sys.exit(f"serve.py did not start: {line!r}")
    return proc, match.group(1)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def post(session: requests.Session, url: str, photo: bytes) -> float:
    t = time.perf_counter()
    r = session.post(f"{url}/v1/predict", data=photo, headers={"Content-Type": "image/jpeg"}, timeout=120)
    r.raise_for_status()
    return time.perf_counter() - t


def post_many(session: requests.Session, url: str, photos: list[bytes]) -> float:
    """Several photos in one multipart request (a pipeline's client sending a page of its catalogue)."""
    t = time.perf_counter()
    files = [("photo", (f"{i}.jpg", p, "image/jpeg")) for i, p in enumerate(photos)]
    r = session.post(f"{url}/v1/predict", files=files, timeout=120)
    r.raise_for_status()
    return time.perf_counter() - t


def throughput(url: str, photos: list[bytes], clients: int, n: int, per_request: int = 1) -> float:
    """Photos/s of `clients` threads posting `n` photos in all, `per_request` in each request."""
    counter = iter(range(0, n, per_request))
    lock = threading.Lock()

    def client() -> None:
        with requests.Session() as s:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                if per_request == 1:
                    post(s, url, photos[i % len(photos)])
                else:
                    post_many(s, url, [photos[(i + j) % len(photos)] for j in range(per_request)])

    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()
    return n / (time.perf_counter() - t)


def soak(url: str, pid: int, photos: list[bytes], clients: int, seconds: float) -> tuple[int, int, float, float]:
    stop = time.monotonic() + seconds
    done, errors = [0], [0]
    lock = threading.Lock()

    def client(k: int) -> None:
        with requests.Session() as s:
            i = k
            while time.monotonic() < stop:
                try:
                    post(s, url, photos[i % len(photos)])
                    with lock:
                        done[0] += 1
                except Exception:
                    with lock:
                        errors[0] += 1
                i += clients

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client, k) for k in range(clients)]
        time.sleep(min(10.0, seconds / 4))
        start_rss = rss_mib(pid)
        for f in futures:
            f.result()
    return done[0], errors[0], start_rss, rss_mib(pid)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="an existing bundle (default: a fresh DenseNet121 one at --size)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--photos", type=Path, default=SHARED if SHARED.is_dir() else ROOT / "data" / "sample")
    ap.add_argument("--images", type=int, nargs=2, default=[500, 2500], help="the two numbers of photos of detect")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=1000, help="photos each throughput measure posts")
    ap.add_argument("--per-request", type=int, default=8, help="photos per request of the multipart measure")
    ap.add_argument("--latency-requests", type=int, default=200)
    ap.add_argument("--soak-clients", type=int, default=64)
    ap.add_argument("--soak-seconds", type=float, default=60, help="0: no soak")
    ap.add_argument("--serve-args", default="", help='more options of serve.py, e.g. "--batch-wait-ms 2"')
    args = ap.parse_args()
    n1, n2 = args.images
    paths = photo_paths(args.photos, max(n2, args.requests))
    photos = [p.read_bytes() for p in paths[: args.requests]]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        bundle = Path(args.model) if args.model else make_bundle(tmp / "bundle", args.size)
        print(f"{date.today()}, {len(paths)} photos from {args.photos}", flush=True)
        ref = detect_rate(bundle, paths, n1, n2, tmp)
        print(f"detect.py batches: {ref:.1f} img/s", flush=True)
        # one-photo clients never fill more than `clients` photos in a batch: the model's own rate there
        small = ceiling(bundle, paths[:n1], args.clients)
        print(f"the model alone at batch {args.clients}: {small:.1f} img/s ({small / ref:.2f}x detect.py)", flush=True)
        proc, url = start_service(bundle, args.serve_args.split())
        try:
            throughput(url, photos[:64], args.clients, 64)  # warm: the graph is built outside the clock
            rate = throughput(url, photos, args.clients, args.requests)
            print(
                f"serve.py, {args.clients} clients: {rate:.1f} img/s = {rate / ref:.2f}x detect.py (target >= 0.8), "
                f"{rate / small:.2f}x the model at batch {args.clients}"
            )
            many = throughput(url, photos, args.clients, args.requests, args.per_request)
            print(
                f"serve.py, {args.clients} clients x {args.per_request} photos per request (multipart): "
                f"{many:.1f} img/s = {many / ref:.2f}x detect.py",
                flush=True,
            )
            with requests.Session() as s:
                times = sorted(post(s, url, photos[i % len(photos)]) for i in range(args.latency_requests))
            p50, p99 = times[len(times) // 2], times[int(len(times) * 0.99) - 1]
            print(f"serve.py, 1 client: p50 {1000 * p50:.1f} ms, p99 {1000 * p99:.1f} ms", flush=True)
            if args.soak_seconds <= 0:
                return
            n, errors, rss0, rss1 = soak(url, proc.pid, photos, args.soak_clients, args.soak_seconds)
            print(
                f"serve.py, {args.soak_clients} clients for {args.soak_seconds:.0f} s: {n} answered, {errors} errors; "
                f"RSS {rss0:.0f} -> {rss1:.0f} MiB ({rss1 / rss0:.2f}x); "
                f"{n / args.soak_seconds:.1f} img/s = {n / args.soak_seconds / ref:.2f}x detect.py"
            )
        finally:
            proc.terminate()
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Ingestion benchmark: ours (local and Beam engines) vs img2dataset, vs the original generator's way,
vs the local OpenCV limit, side by side.

Run:   .venv/bin/python bench/ingest.py --img2dataset /work/i2d-venv/bin/python    (about 20 minutes on 2 cores)
       .venv/bin/python bench/ingest.py --suite peer --img2dataset PYTHON         (the peer table only)
       .venv/bin/python bench/ingest.py --quick    (smaller lists, a few minutes)

A local HTTP server (its own process, 127.0.0.1 only) serves real 550x825 street
photos from ../shared/data/ccp-dev (or data/sample when that is absent) with a
configurable per-request latency. Every figure is a *marginal* rate: two list
sizes are timed and (n2 - n1) / (t2 - t1) is reported, so process start-up and
TensorFlow import cancel out. Each run gets fresh URLs (no cache hits).

  (a) ours: `generate_dataset.py LIST` end to end (download, decode, resize, encode, TFRecord)
  (b) reference: what the original generator did, one image at a time:
      skimage.io.imread(url), skimage.transform.resize to a square, PIL JPEG encode, TFRecord write
  (c) local limit: OpenCV decode + short side 256 + center crop + encode of the same files
      on all cores, no network, nothing written; also with the half-scale JPEG decode ours uses
  memory: peak RSS of (a) for two list sizes (flat = streaming)

Peer suite (issue #14), marginal rates between 250 and 2,500 URLs at 50 ms and 0 ms latency, the
engines interleaved over --rounds rounds (median rate, and median/min/max of each round's ratio):
  ours local (`generate_dataset.py`), ours beam (`--engine beam`: Beam's FnApiRunner, one worker
  process per core), img2dataset (its multiprocessing distributor, `--i2d-processes` x `--i2d-threads`,
  TFRecord output of 256 px center crops at q95: bench/img2dataset_ref.py, in a side environment);
  then the peak memory of the Beam run on 20,000 URLs, summed over all its processes.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "ccp-dev" / "photos"
SAMPLE = ROOT / "data" / "sample" / "photos"
LABELS = "," + ",".join(["0"] * 12 + ["1"])


def photo_dir() -> Path:
    return SHARED if SHARED.is_dir() and len(list(SHARED.glob("*.jpg"))) >= 400 else SAMPLE


# --------------------------------------------------------------------------- server process


def serve(folder: str, latency: mp.Value, port: mp.Value, ready: mp.Event) -> None:
    files = {p.name: p.read_bytes() for p in Path(folder).glob("*.jpg")}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms ACK stalls

        def log_message(self, *a):
            pass

        def do_GET(self):
            name = self.path.split("?")[0].rsplit("/", 1)[-1]
            body = files.get(name)
            if latency.value:
                time.sleep(latency.value)
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

    class Server(ThreadingHTTPServer):
        request_queue_size = 1024  # img2dataset opens P x T connections at once: socketserver's 5 overflowed

    httpd = Server(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    port.value = httpd.server_address[1]
    ready.set()
    httpd.serve_forever()


# --------------------------------------------------------------------------- workloads

_RUN = [0]


def make_list(tmp: Path, base_url: str, names: list[str], n: int, tag: str) -> Path:
    _RUN[0] += 1
    path = tmp / f"{tag}-{_RUN[0]}-{n}.txt"
    path.write_text("".join(f"{i:06d},{base_url}/{names[i % len(names)]}?r={_RUN[0]}-{i}{LABELS}\n" for i in range(n)))
    return path


def tree_memory_mib(root: int) -> tuple[float, float]:
    """Memory of a process and all its descendants now (Beam's workers, ours), MiB: summed RSS (counts
    the shared libraries every process maps once per process) and summed PSS (shares them out: what the
    machine really spends)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            pass
    tree, frontier = {root}, [root]
    while frontier:
        kids = [p for p, pp in parents.items() if pp in frontier and p not in tree]
        tree.update(kids)
        frontier = kids
    rss = pss = 0
    for pid in tree:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            pass
    return rss / 1024, pss / 1024


def run_child(cmd: list[str], tree: bool = False) -> tuple[float, Any]:
    """Wall seconds and peak RSS (MiB) of one child process; with `tree`, the peaks of the sums over the
    child and its descendants, (RSS, PSS), sampled every 0.2 s."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    peak = [0.0, 0.0]
    done = threading.Event()
    if tree:

        def sample() -> None:  # (not proc.poll(): it would reap the child before wait4 below)
            while not done.wait(0.2):
                rss, pss = tree_memory_mib(proc.pid)
                peak[:] = max(peak[0], rss), max(peak[1], pss)

        threading.Thread(target=sample, daemon=True).start()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    dt = time.perf_counter() - t
    code = os.waitstatus_to_exitcode(status)
    if code not in (0,):
        sys.exit(f"child failed ({code}): {' '.join(cmd[:3])}...\n{err.decode()[-2000:]}")
    return dt, (int(peak[0]), int(peak[1])) if tree else usage.ru_maxrss // 1024


def ours(lst: Path, tmp: Path, *more: str, tree: bool = False) -> tuple[float, int]:
    out = tempfile.mkdtemp(dir=tmp)
    cmd = [sys.executable, "generate_dataset.py", str(lst), "--out", out, "--cache", out + "/cache"]
    return run_child([*cmd, "--image-size", "256", "--shard-size", "1024", *more], tree=tree)


def ours_beam(lst: Path, tmp: Path, tree: bool = False) -> tuple[float, int]:
    """The same through `--engine beam` (FnApiRunner, one worker process per core). Shards of 256 so that
    a list of 1,250 gives every worker several shards (Beam spreads shards, not images)."""
    return ours(lst, tmp, "--engine", "beam", "--shard-size", "256", tree=tree)


def ours_beam_threads(lst: Path, tmp: Path) -> tuple[float, int]:
    """`--engine beam` with Beam's threads instead of processes (FnApiRunner, one worker thread per core)."""
    return ours(lst, tmp, "--engine", "beam", "--shard-size", "256", "--", "--direct_running_mode=multi_threading")


I2D = {"python": "", "processes": 2, "threads": 32}  # set from the command line


def img2dataset(lst: Path, tmp: Path) -> tuple[float, int]:
    """The peer: img2dataset in its own environment (bench/img2dataset_ref.py), same crops and TFRecords."""
    out = tempfile.mkdtemp(dir=tmp)
    script = str(ROOT / "bench" / "img2dataset_ref.py")
    procs, threads = str(I2D["processes"]), str(I2D["threads"])
    return run_child([I2D["python"], script, str(lst), out, "--processes", procs, "--threads", threads])


def reference(lst: Path, tmp: Path) -> tuple[float, int]:
    out = tempfile.mkdtemp(dir=tmp)
    return run_child([sys.executable, __file__, "--as-reference", str(lst), out])


def local_limit(lst: Path, tmp: Path) -> tuple[float, int]:
    return run_child([sys.executable, __file__, "--as-local", str(lst)])


def local_limit_reduced(lst: Path, tmp: Path) -> tuple[float, int]:
    """The same, decoding at half scale as ours does when the photo is >= 2x the target."""
    return run_child([sys.executable, __file__, "--as-local", str(lst), "--reduced"])


def reference_main(lst: str, out: str) -> None:
    """The original generator's per-image path, one image at a time."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import skimage.io
    import skimage.transform
    import tensorflow as tf
    from PIL import Image

    with tf.io.TFRecordWriter(os.path.join(out, "ref.tfrecord")) as w:
        for line in Path(lst).read_text().splitlines():
            parts = line.split(",")
            img = skimage.io.imread(parts[1])
            img = (skimage.transform.resize(img, (256, 256)) * 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, "JPEG", quality=95)
            feats = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[buf.getvalue()]))}
            for k, v in enumerate(parts[2:]):
                feats[f"label_{k}"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))
            w.write(tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString())


def _local_one(path: str, reduced: bool = False) -> int:
    import cv2

    cv2.setNumThreads(1)
    img = cv2.imread(path, cv2.IMREAD_REDUCED_COLOR_2 if reduced else cv2.IMREAD_COLOR)
    h, w = img.shape[:2]
    s = 256 / min(h, w)
    img = cv2.resize(img, (max(256, round(w * s)), max(256, round(h * s))), interpolation=cv2.INTER_AREA)
    t, l = (img.shape[0] - 256) // 2, (img.shape[1] - 256) // 2
    ok, buf = cv2.imencode(".jpg", img[t : t + 256, l : l + 256], [cv2.IMWRITE_JPEG_QUALITY, 95])
    return len(buf)


def local_main(lst: str, reduced: bool) -> None:
    folder = photo_dir()
    names = [ln.split(",")[1].split("?")[0].rsplit("/", 1)[-1] for ln in Path(lst).read_text().splitlines()]
    with mp.Pool(os.cpu_count()) as pool:
        pool.starmap(_local_one, [(str(folder / n), reduced) for n in names], chunksize=8)


# --------------------------------------------------------------------------- driver


def marginal(fn, tmp: Path, base: str, names: list[str], n1: int, n2: int, tag: str, reps: int = 2) -> float:
    """(n2 - n1) / (t2 - t1), each time the best of `reps` runs (shared machines are noisy)."""
    t1 = min(fn(make_list(tmp, base, names, n1, tag), tmp)[0] for _ in range(reps))
    t2 = min(fn(make_list(tmp, base, names, n2, tag), tmp)[0] for _ in range(reps))
    return (n2 - n1) / max(t2 - t1, 1e-9)


def peer_suite(tmp: Path, base: str, names: list[str], latency, args) -> None:
    """Ours (local engine), ours (Beam engine) and img2dataset on the same URLs, at 50 ms and 0 ms."""
    # 250 -> 2,500: both sizes give the Beam engine (shards of 256) work for every worker, and the
    # difference is long enough that start-up noise (Beam's workers, img2dataset's spawned processes,
    # +-2 s on this machine) moves the rate by under 15 %
    n1, n2 = (50, 300) if args.quick else (250, 2500)
    engines = [("ours local", ours), ("ours beam", ours_beam)]
    if I2D["python"]:
        engines.append((f"img2dataset {I2D['processes']}x{I2D['threads']}", img2dataset))
    if args.beam_threads:
        engines.append(("ours beam threads", ours_beam_threads))
    table = []
    for lat in (args.latency, 0.0):
        latency.value = lat
        # Rounds interleave the engines (local, beam, img2dataset, local, ...): this shared machine's speed
        # drifts by +-25 % over minutes, which would bias whichever engine ran in a slow minute.
        rounds = [
            {name: marginal(fn, tmp, base, names, n1, n2, name.replace(" ", "")[:16], reps=1) for name, fn in engines}
            for _ in range(args.rounds)
        ]
        table.append((lat, rounds))
    print(f"\nmarginal img/s between {n1} and {n2} URLs: median of {args.rounds} interleaved rounds")
    print(
        f"{'latency':>8} " + " ".join(f"{name:>22}" for name, _ in engines) + "   ratios: median (min-max) over rounds"
    )
    pairs = [("beam/local", "ours beam", "ours local")]  # (label, numerator, denominator)
    if I2D["python"]:
        i2d = engines[2][0]
        pairs = [("local/img2dataset", "ours local", i2d), ("beam/img2dataset", "ours beam", i2d), *pairs]
    if args.beam_threads:
        pairs.append(("beam threads/processes", "ours beam threads", "ours beam"))
    for lat, rounds in table:
        rates = {n: statistics.median(r[n] for r in rounds) for n, _ in engines}
        ratios = []
        for label, a, b in pairs:
            each = sorted(r[a] / r[b] for r in rounds)
            ratios.append(f"{label} {statistics.median(each):.2f} ({each[0]:.2f}-{each[-1]:.2f})")
        print(f"{lat * 1000:>6.0f}ms " + " ".join(f"{rates[n]:22.1f}" for n, _ in engines) + "   " + ", ".join(ratios))
    if args.beam_memory:
        latency.value = 0.0
        n = args.beam_memory
        seconds, (rss, pss) = ours_beam(make_list(tmp, base, names, n, "bm"), tmp, tree=True)
        local_seconds, (local_rss, local_pss) = ours(make_list(tmp, base, names, n, "lm"), tmp, tree=True)
        print(
            f"peak memory, all processes summed, {n} URLs: ours beam RSS {rss} MiB, PSS {pss} MiB ({seconds:.0f}s); "
            f"ours local RSS {local_rss} MiB, PSS {local_pss} MiB ({local_seconds:.0f}s) (target: beam < 2048 MiB)"
        )


def original_suite(tmp: Path, base: str, names: list[str], latency, args) -> None:
    """Ours vs the original generator's path, vs the local OpenCV limit, and memory (issue #2)."""
    big = 200 if args.quick else 1200
    small = 50 if args.quick else 200
    ref_n = (10, 30) if args.quick else (40, 120)
    rows = []
    latency.value = args.latency
    a50 = marginal(ours, tmp, base, names, small, big, "a50")
    b50 = marginal(reference, tmp, base, names, *ref_n, "b50")
    rows.append((f"{args.latency * 1000:.0f} ms", a50, b50, a50 / b50, "target >= 15x"))
    latency.value = 0.0
    a0 = marginal(ours, tmp, base, names, small, big, "a0")
    c0 = marginal(local_limit, tmp, base, names, small, big, "c0")
    c0r = marginal(local_limit_reduced, tmp, base, names, small, big, "c0r")
    print(f"\n{'latency':>8} {'ours img/s':>11} {'ref img/s':>10} {'ratio':>8}")
    for lat, a, b, r, note in rows:
        print(f"{lat:>8} {a:11.1f} {b:10.1f} {r:7.1f}x  ({note})")
    print(f"\n0 ms: ours {a0:.1f} img/s vs local OpenCV limit {c0:.1f} img/s = {a0 / c0:.0%} (target >= 70%)")
    print(f"      vs the same limit decoding at half scale as ours does: {c0r:.1f} img/s = {a0 / c0r:.0%}")
    if args.memory:
        n1, n2 = (int(x) for x in args.memory.split(","))
        _, m1 = ours(make_list(tmp, base, names, n1, "m"), tmp)
        _, m2 = ours(make_list(tmp, base, names, n2, "m"), tmp)
        print(f"peak RSS: {n1} images {m1} MiB, {n2} images {m2} MiB (ratio {m2 / m1:.2f}; flat = streaming)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller lists (a rough figure in under a minute)")
    ap.add_argument(
        "--suite",
        choices=("original", "peer", "all"),
        default="all",
        help="original: vs the original generator and the OpenCV limit; peer: local vs beam vs img2dataset",
    )
    ap.add_argument("--latency", type=float, default=0.05, help="per-request latency for the slow case, seconds")
    ap.add_argument("--memory", default="2000,40000", help="two list sizes for the peak-RSS check ('' to skip)")
    ap.add_argument(
        "--img2dataset",
        metavar="PYTHON",
        default="",
        help="python of a side environment holding img2dataset (see bench/img2dataset_ref.py): the peer",
    )
    ap.add_argument("--i2d-processes", type=int, default=2, help="img2dataset processes_count")
    ap.add_argument("--i2d-threads", type=int, default=32, help="img2dataset thread_count")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per latency (peer suite)")
    ap.add_argument("--beam-threads", action="store_true", help="also Beam with threads instead of processes")
    ap.add_argument("--beam-memory", type=int, default=20000, help="URLs for the Beam peak-memory check (0: skip)")
    ap.add_argument("--as-reference", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--as-local", help=argparse.SUPPRESS)
    ap.add_argument("--reduced", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.as_reference:
        return reference_main(*args.as_reference)
    if args.as_local:
        return local_main(args.as_local, args.reduced)
    I2D.update(python=args.img2dataset, processes=args.i2d_processes, threads=args.i2d_threads)

    folder = photo_dir()
    names = sorted(p.name for p in folder.glob("*.jpg"))
    latency, port, ready = mp.Value("d", 0.0), mp.Value("i", 0), mp.Event()
    server = mp.Process(target=serve, args=(str(folder), latency, port, ready), daemon=True)
    server.start()
    ready.wait(30)
    base = f"http://127.0.0.1:{port.value}"
    print(f"photos: {len(names)} from {folder} ; cores: {os.cpu_count()} ; date: {date.today()}")
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmpd:
        tmp = Path(tmpd)
        if args.suite in ("peer", "all"):
            peer_suite(tmp, base, names, latency, args)
        if args.suite in ("original", "all"):
            original_suite(tmp, base, names, latency, args)
    server.terminate()


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Several-process training: what the JAX engine and the per-process input cost, measured side by side.

Run:   .venv/bin/python bench/several_machines.py            (~12 min on 2 CPU cores)
       .venv/bin/python bench/several_machines.py --epochs 2 --photos 200   (a quick look)

In one run, on the same records (real CCP photos from ../shared/data/ccp-dev, else the shipped
sample) and the same recipe (DenseNet121 from scratch, heads, 64 px, batch 16 per device):
  (1) training images/s, whole `train.py` commands timed at E and 1 epochs (the difference: start-up
      and compilation cancel out), for: TensorFlow backend, one process (today's default); JAX backend,
      one process; JAX backend, two processes on 127.0.0.1 (`--workers`, per-process batch 8, the same
      global batch). On one 2-core machine two processes share the cores: the ratio is the engine's
      overhead, not a speed-up.
  (2) input images/s of one process of two: ours (every 2nd record decoded: pipeline.make_dataset's
      shard) vs Keras' own auto-sharding (`DataParallel(auto_shard_dataset=True)`: the whole stream
      decoded and batched, then rebatched and every 2nd batch kept).
Prints ratios; add the table to bench/RESULTS.md with the date.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from fashion.core import cluster

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "ccp-dev"
SAMPLE = ROOT / "data" / "sample"


def ingest(out: Path, photos: int) -> Path:
    src = SHARED if (SHARED / "train+val.txt").is_file() else SAMPLE
    lines = [line.split(",") for line in (src / "train+val.txt").read_text().splitlines()[:photos]]
    lst = out / "list.txt"  # the photos' paths made absolute: the list moves, the photos stay
    lst.write_text("".join(",".join([f[0], str(src / f[1]), *f[2:]]) + "\n" for f in lines))
    args = [str(lst), "--out", str(out / "records"), "--image-size", "96", "--shard-size", "256"]
    if (src / "labels.txt").is_file():
        args += ["--labels", str(src / "labels.txt")]
    subprocess.run([sys.executable, "generate_dataset.py", *args], cwd=ROOT, check=True, capture_output=True)
    return out / "records"


def timed_train(data: Path, tmp: Path, epochs: int, backend: str, processes: int, batch: int) -> float:
    """Seconds for the whole command(s), all processes together."""
    run = f"{backend}{processes}-{epochs}-{time.monotonic_ns()}"
    base = [sys.executable, str(ROOT / "train.py"), "--data", str(data), "--weights", "none", "--image-size", "64"]
    base += ["--layers", "heads", "--epochs", str(epochs), "--batch-size", str(batch), "--run", run]
    base += ["--model-save", str(tmp / "ms"), "--log", str(tmp / "log"), "--backend", backend]
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    t0 = time.perf_counter()
    if processes == 1:
        subprocess.run(base, check=True, capture_output=True, env=env)
    else:
        workers = cluster.local_workers(processes)
        procs = [
            subprocess.Popen(
                base + ["--workers", workers, "--worker-index", str(i)], env=env, stdout=subprocess.DEVNULL
            )
            for i in range(processes)
        ]
        if any(p.wait(timeout=1800) for p in procs):
            raise SystemExit(f"{processes} processes on {backend} failed")
    return time.perf_counter() - t0


INPUT = r"""
import sys, time
import tensorflow as tf
from fashion.data import pipeline
data, mode = sys.argv[1], sys.argv[2]
split = pipeline.describe_split(data, "train")
n = split.count
if mode == "ours":  # process 0 of 2: its every-2nd record, batch 8
    ds = pipeline.make_dataset(split.files, 13, image_size=64, batch_size=8, training=True, seed=0,
                               shard=(2, 0, n // 16))
else:  # Keras' DataParallel auto-shard of a global batch of 16, as distribute_tf_dataset does it
    ds = pipeline.make_dataset(split.files, 13, image_size=64, batch_size=16, training=True, seed=0)
    ds = ds.rebatch(8).shard(2, 0)
for _ in ds.take(2):
    pass
t0 = time.perf_counter()
seen = 0
for _ in range(3):
    for x, _ in ds:
        seen += int(x.shape[0])
print(seen / (time.perf_counter() - t0))
"""


def input_rate(data: Path, mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", INPUT, str(data), mode], cwd=ROOT, check=True, capture_output=True)
    return float(out.stdout.decode().strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=600, help="list lines to ingest (default 600)")
    ap.add_argument("--epochs", type=int, default=3, help="E: epochs of the long run (default 3)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        data = ingest(tmp, args.photos)
        import json

        train = json.loads((data / "dataset.json").read_text())["splits"]["train"]["records"]
        print(f"{train} training images, 64 px, heads, {args.epochs} vs 1 epochs")
        rates = {}
        for name, backend, processes, batch in (
            ("tensorflow, 1 process", "tensorflow", 1, 16),
            ("jax, 1 process", "jax", 1, 16),
            ("jax, 2 processes", "jax", 2, 8),
        ):
            long = timed_train(data, tmp, args.epochs, backend, processes, batch)
            short = timed_train(data, tmp, 1, backend, processes, batch)
            rates[name] = (args.epochs - 1) * train / max(long - short, 1e-6)
            print(f"  {name:24s} {rates[name]:7.1f} img/s   (whole commands: {long:.0f} s, {short:.0f} s)", flush=True)
        base = rates["tensorflow, 1 process"]
        for name, r in rates.items():
            print(f"  {name:24s} {r / base:5.2f}x the TensorFlow backend")
        ours, keras_auto = input_rate(data, "ours"), input_rate(data, "keras")
        print(
            f"input, process 0 of 2: ours {ours:.0f} img/s, Keras auto-shard {keras_auto:.0f} img/s: {ours / keras_auto:.2f}x"
        )
        print(f"({date.today().isoformat()})")


if __name__ == "__main__":
    main()

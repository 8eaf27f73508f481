#!/usr/bin/env python
"""Issue #13's GPU target: DenseNet-121 + 13 heads, every layer training, 224 px, on one GPU, fed by a
real input pipeline (real photos decoded and augmented on the host while the GPU trains), against the
same model fed tensors already in memory, over batch sizes and mixed-precision policies.

Run on the lent GPU machine (Keras' JAX backend; keras, namex and optree carried as wheels; each run
compiles for 1-3 min with XLA's convolution autotuning, then trains for seconds):
    KERAS_BACKEND=jax PYTHONPATH=.:bench python3 bench/gpu_throughput.py
    KERAS_BACKEND=jax PYTHONPATH=.:bench python3 bench/gpu_throughput.py --data RECORDS \
        --runs memory:256:mixed_bfloat16,records:256:mixed_bfloat16
CPU smoke run (2 min):
    .venv/bin/python generate_dataset.py data/sample/train+val.txt --labels data/sample/labels.txt \
        --out /tmp/sample-records --image-size 72
    KERAS_BACKEND=jax .venv/bin/python bench/gpu_throughput.py --size 64 --data /tmp/sample-records \
        --runs memory:8:mixed_bfloat16,photos:8:mixed_bfloat16,records:8:mixed_bfloat16 --steps 3 --warmup 2

Inputs: `memory` = batches decoded once and fed from memory (what the GPU step alone reaches); `photos` = the
shipped CCP photos (data/sample, 387x256 JPEGs, Apache-2.0) held as bytes in memory and, per batch, decoded
with OpenCV, scaled so the short side is 8/7 of the crop, randomly cropped and flipped (the training
pipeline's window at its smallest) by `keras.utils.PyDataset` worker threads (OpenCV releases the GIL;
processes would fork JAX); `records` = train.py's own tf.data pipeline (`pipeline.make_dataset`, training
mode) over the dataset in --data: needs TensorFlow there, which can reach the lent machine as the CPU wheel
(274 MB; 4 calls of 38 MB, see bench/RESULTS.md). Printed: host images/s of each pipeline alone, then training
images/s per run and the ratios.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import cv2
import keras
import numpy as np
from train_step_gpu import _devices, ours

from common import StepTimer
from fashion.model.tasks.base import head_names

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
LABELS = [f"label_{i}" for i in range(13)]


class Photos(keras.utils.PyDataset):
    """Batches of real photos decoded and augmented per batch (uint8, as the model takes them)."""

    def __init__(self, size: int, batch: int, steps: int, workers: int):
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=4 * workers)
        lines = [ln.split(",") for ln in (SAMPLE / "train+val.txt").read_text().split()]
        self.jpegs = [(SAMPLE / ln[1]).read_bytes() for ln in lines]
        self.labels = np.array([[float(v) for v in ln[2:]] for ln in lines], np.float32)
        self.size, self.batch, self.steps = size, batch, steps
        self.names = head_names(LABELS)

    def __len__(self) -> int:
        return self.steps

    def _one(self, i: int, rng: np.random.Generator) -> np.ndarray:
        img = cv2.imdecode(np.frombuffer(self.jpegs[i], np.uint8), cv2.IMREAD_COLOR)
        h, w = img.shape[:2]
        scale = round(self.size * 8 / 7) / min(h, w)
        img = cv2.resize(img, (max(self.size, round(w * scale)), max(self.size, round(h * scale))))
        y, x = rng.integers(0, img.shape[0] - self.size + 1), rng.integers(0, img.shape[1] - self.size + 1)
        img = img[y : y + self.size, x : x + self.size, ::-1]  # BGR -> RGB
        return img[:, ::-1] if rng.random() < 0.5 else img

    def __getitem__(self, step: int):
        rng = np.random.default_rng(step)
        idx = rng.integers(0, len(self.jpegs), self.batch)
        x = np.stack([self._one(i, rng) for i in idx])
        y = self.labels[idx]
        return x, {n: y[:, k : k + 1] for k, n in enumerate(self.names)}


def host_rate(ds: Photos, workers: int, n: int) -> float:
    """Images/s the pipeline alone delivers with `workers` threads (the ceiling it puts on training)."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(ds.__getitem__, range(n)):
            pass
    return n * ds.batch / (time.perf_counter() - t0)


def records(data: Path, size: int, batch: int):
    """train.py's training input over the dataset in `data`, repeated (the labels keyed as `ours` names its
    heads), and the images/s it delivers alone on its second pass (the first fills its cache)."""
    from fashion.data import pipeline

    split = pipeline.describe_split(data, "train")
    opts = {"image_size": size, "batch_size": batch, "training": True, "cache": True, "count": split.count}
    ds = pipeline.make_dataset(split.files, len(LABELS), output_names=head_names(LABELS), **opts)
    for _ in ds:
        pass
    t0, n = time.perf_counter(), 0
    for x, _ in ds:
        n += int(x.shape[0])
    return ds.repeat(), n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224, help="crop side in pixels (default: 224)")
    ap.add_argument(
        "--runs",
        default="memory:64:mixed_float16,memory:64:mixed_bfloat16,memory:256:mixed_bfloat16,"
        "photos:256:mixed_bfloat16,memory:128:mixed_bfloat16,photos:128:mixed_bfloat16",
        help="INPUT:BATCH:POLICY,... (INPUT memory, photos or records; default: see the source)",
    )
    ap.add_argument("--data", type=Path, help="a dataset folder with 13 labels, for the records runs")
    ap.add_argument("--warmup", type=int, default=5, help="untimed first steps (default: 5)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps (default: 30)")
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="pipeline threads (default: all cores)")
    args = ap.parse_args()
    n = args.warmup + args.steps
    print(f"backend {keras.backend.backend()}, devices: {_devices()}, {os.cpu_count()} cores", flush=True)
    results = []
    for run in args.runs.split(","):
        source, batch, policy = run.split(":")
        batch = int(batch)
        keras.mixed_precision.set_global_policy(policy)
        photos = Photos(args.size, batch, n, args.workers)
        if source == "records":
            x, host = records(args.data, args.size, batch)
            y = None
            print(f"  train.py's pipeline alone, batch {batch}: {host:,.0f} img/s on the host", flush=True)
        elif source == "photos":
            x, y = photos, None
            host = host_rate(photos, args.workers, min(n, 20))
            print(f"  pipeline alone, batch {batch}: {host:,.0f} img/s on the host", flush=True)
        else:  # the same photos, decoded once: tensors already in memory
            batches = [photos[i] for i in range(n)]
            x = np.concatenate([b[0] for b in batches])
            y = {k: np.concatenate([b[1][k] for b in batches]) for k in batches[0][1]}
        t0 = time.perf_counter()
        timer = StepTimer()
        # a PyDataset or tf.data makes its own batches; tf.data's repeats, so Keras is told the steps
        fit_batch = {"memory": {"batch_size": batch}, "photos": {}, "records": {"steps_per_epoch": n}}[source]
        ours(args.size, "all").fit(x, y, epochs=1, verbose=0, shuffle=False, callbacks=[timer], **fit_batch)
        r = timer.rate(batch, args.warmup)
        results.append((source, batch, policy, r))
        print(f"{source:>6} batch {batch:>3} {policy}: {r:8.1f} img/s  ({time.perf_counter() - t0:.0f} s)", flush=True)
        keras.backend.clear_session()
    print(f"\ndate {date.today()}, {_devices()}, {args.size} px, all layers, {args.steps} timed steps")
    print("| input | batch | policy | img/s | vs the first run |\n|---|---|---|---|---|")
    base = results[0][3]
    for source, batch, policy, r in results:
        print(f"| {source} | {batch} | {policy} | {r:,.0f} | {r / base:.2f} |")


if __name__ == "__main__":
    main()

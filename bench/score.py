#!/usr/bin/env python
"""Scoring a catalogue (`detect.py --list FILE --out DIR`): ours against the model's own speed, against what a
Keras user writes, over HTTP at 50 ms latency, and its peak memory as the list grows.

Run:   .venv/bin/python bench/score.py [--model model_save/RUN] [--photos DIR]   (~6 min on 2 cores)

Builds a 64 px DenseNet121 bundle of the defaults with fixed random weights (the speed does not depend on
the weights) unless --model is given; the photos are --photos (default: ../shared/data/myntra-dev's product
photos, else the shipped CCP sample). Measured in one run, one after the other:
  ceiling  the bundle's predict_on_batch on N photos already decoded and resized in memory, batch 32
           (the best of three passes);
  ours     `detect.py --list --out` on the same N local files: the marginal rate between two list
           lengths (the start-up, TensorFlow's import and the bundle's load, is not throughput);
  keras    tf.data from the file paths (read, decode, resize, batch 32, prefetch) into model.predict,
           as a Keras user writes it, on the same files;
  decode   the same photos read, decoded and resized alone on one thread per core (ours' own decode): with
           the ceiling it gives the bound of any scorer that decodes on the cores the model uses,
           1 / (1/ceiling + 1/decode), which ours is also compared with;
  beam     `detect.py --list --out --engine beam` (Beam's RunInference on the local FnApiRunner, one worker
           process per core) on the same files: its marginal rate against ours (the engine's price);
  http     ours on the same photos served by a local HTTP server (127.0.0.1) with 50 ms latency each;
  memory   peak RSS of ours at --memory-lines A and B lines (a small MobileNetV2 bundle at 32 px, so the
           long list is the pipeline's bookkeeping, not the model's time).
Targets (issue #29): ours >= 0.9x the ceiling on local files and at 50 ms; ours >= 1.0x keras;
beam >= 0.5x ours; memory at B lines <= 1.2x at A lines.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ingest import run_child, serve  # noqa: E402  (bench/ingest.py: the same server and child timing)

SHARED = ROOT.parent / "shared" / "data" / "myntra-dev"


def make_bundle(folder: Path, size: int, backbone: str = "densenet121") -> Path:
    import keras

    from fashion.core.fileio import atomic_write_json
    from fashion.model import network as model_lib
    from fashion.model.tasks.base import head_names

    labels = [f"label_{i}" for i in range(13)]
    folder.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    kw = {"alpha": 0.35} if backbone == "mobilenetv2" else {}
    model_lib.build_model(labels, image_size=size, backbone=backbone, **kw).save(folder / "model.keras")
    atomic_write_json(
        folder / "meta.json",
        {"labels": labels, "heads": head_names(labels), "thresholds": [0.5] * 13, "input_size": size},
    )
    return folder


def photo_paths(folder: Path, n: int) -> list[Path]:
    listed = folder / "train+val.txt"
    if listed.is_file():
        paths = [folder / ln.split(",")[1] for ln in listed.read_text().splitlines()[:n]]
    else:
        paths = sorted(folder.rglob("*.jpg"))[:n]
    return [p for p in paths if p.is_file()]


def write_list(path: Path, sources: list[str], n: int) -> Path:
    """n lines id,source,<13 labels> over `sources` (repeated when n is larger), as a dataset's list."""
    with open(path, "w") as f:
        for i in range(n):
            f.write(f"{i:07d},{sources[i % len(sources)]},{','.join('0' * 13)}\n")
    return path


def ours(bundle: Path, lst: Path, tmp: Path, *more: str) -> tuple[float, int]:
    out = tempfile.mkdtemp(dir=tmp)
    cmd = [sys.executable, "detect.py", "--list", str(lst), "--out", out, "--model", str(bundle), *more]
    return run_child(cmd)


def marginal(bundle: Path, tmp: Path, sources: list[str], n1: int, n2: int, tag: str, *more: str) -> float:
    t1 = min(ours(bundle, write_list(tmp / f"{tag}-a.txt", sources, n1), tmp, *more)[0] for _ in range(2))
    t2 = min(ours(bundle, write_list(tmp / f"{tag}-b.txt", sources, n2), tmp, *more)[0] for _ in range(2))
    return (n2 - n1) / max(t2 - t1, 1e-9)


def ceiling(bundle: Path, paths: list[Path], batch: int = 32) -> float:
    """The bundle's predict_on_batch on the photos already decoded, `batch` at a time; images/s."""
    import numpy as np

    from fashion.data import imaging
    from fashion.predict import bundle as prediction

    b = prediction.load_bundle(bundle)
    s = b.input_size
    x = np.stack([imaging.resize(imaging.decode_rgb(p.read_bytes(), target=s), s, "crop") for p in paths])
    b.model.predict_on_batch(x[:batch])  # the graph is built outside the clock
    best = float("inf")
    for _ in range(3):  # the best of three passes: shared machines are noisy, and so is ours (best of two)
        t = time.perf_counter()
        for i in range(0, len(x), batch):
            b.model.predict_on_batch(x[i : i + batch])
        best = min(best, time.perf_counter() - t)
    return len(x) / best


def decode_only(paths: list[Path], size: int) -> float:
    """Read, decode and resize as ours does (imaging, reduced DCT), one thread per core; images/s."""
    from concurrent.futures import ThreadPoolExecutor

    from fashion.data import imaging

    def one(p: Path) -> None:
        imaging.resize(imaging.decode_rgb(p.read_bytes(), target=size), size, "crop")

    best = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            list(pool.map(one, paths))
        best = min(best, time.perf_counter() - t)
    return len(paths) / best


def keras_user(bundle: Path, paths: list[Path]) -> float:
    import keras
    import tensorflow as tf

    model = keras.saving.load_model(bundle / "model.keras", compile=False)
    size = model.inputs[0].shape[1]

    def load(path):
        img = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        return tf.cast(tf.image.resize(img, (size, size)), tf.uint8)

    def dataset(ps):
        ds = tf.data.Dataset.from_tensor_slices([str(p) for p in ps])
        return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(32).prefetch(tf.data.AUTOTUNE)

    model.predict(dataset(paths[:64]), verbose=0)  # the predict function is built outside the clock
    best = float("inf")
    for _ in range(2):  # the best of two, as ours
        t = time.perf_counter()
        model.predict(dataset(paths), verbose=0)
        best = min(best, time.perf_counter() - t)
    return len(paths) / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="an existing bundle (default: a fresh DenseNet121 one at --size)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--photos", type=Path, default=SHARED if SHARED.is_dir() else ROOT / "data" / "sample")
    ap.add_argument("--images", type=int, default=2000, help="photos in the ceiling and keras runs")
    ap.add_argument("--lines", type=int, nargs=2, default=[500, 2500], help="the two list lengths of ours")
    ap.add_argument("--memory-lines", type=int, nargs=2, default=[10_000, 200_000])
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-beam", action="store_true")
    args = ap.parse_args()
    paths = photo_paths(args.photos, args.images)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        bundle = Path(args.model) if args.model else make_bundle(tmp / "bundle", args.size)
        n1, n2 = args.lines
        local = [str(p) for p in paths]
        print(f"{date.today()}, {os.cpu_count()} cores, {len(paths)} photos from {args.photos}", flush=True)
        top = ceiling(bundle, paths)
        print(f"ceiling: predict_on_batch on decoded photos {top:.1f} img/s", flush=True)
        dec = decode_only(paths, args.size)
        bound = 1 / (1 / top + 1 / dec)
        print(f"decode alone: {dec:.1f} img/s; ceiling with decoding on the same cores {bound:.1f} img/s", flush=True)
        mine = marginal(bundle, tmp, local, n1, n2, "local")
        print(
            f"ours, local files: {mine:.1f} img/s = {mine / top:.2f}x the ceiling (target >= 0.9), "
            f"{mine / bound:.2f}x the ceiling with decoding",
            flush=True,
        )
        user = keras_user(bundle, paths)
        print(
            f"keras tf.data -> model.predict: {user:.1f} img/s; ours = {mine / user:.2f}x (target >= 1.0)", flush=True
        )

        if not args.skip_beam:
            beam = marginal(bundle, tmp, local, n1, n2, "beam", "--engine", "beam")
            print(
                f"ours on Beam (RunInference, local runner): {beam:.1f} img/s = {beam / mine:.2f}x ours (target >= 0.5)"
            )

        latency, port, ready = mp.Value("d", 0.05), mp.Value("i", 0), mp.Event()
        server = mp.Process(target=serve, args=(str(paths[0].parent), latency, port, ready), daemon=True)
        server.start()
        ready.wait(30)
        urls = [f"http://127.0.0.1:{port.value}/{p.name}" for p in paths if p.parent == paths[0].parent]
        http = marginal(bundle, tmp, urls, n1, n2, "http")
        print(f"ours, 50 ms per photo over HTTP: {http:.1f} img/s = {http / top:.2f}x the ceiling (target >= 0.9)")
        server.terminate()

        if not args.skip_memory:
            small = make_bundle(tmp / "small", 32, "mobilenetv2")
            a, b = args.memory_lines
            peaks = []
            for n in (a, b):
                seconds, peak = ours(small, write_list(tmp / f"mem-{n}.txt", local, n), tmp)
                peaks.append(peak)
                print(f"memory: {n:,} lines, peak RSS {peak} MiB ({seconds:.0f} s)", flush=True)
            print(f"memory: {b:,} vs {a:,} lines = {peaks[1] / peaks[0]:.2f}x (target <= 1.2)")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""detect.py benchmark: cold start vs the floor, batch throughput vs bare model.predict.

Run:   .venv/bin/python bench/detect.py [--model model_save/RUN]   (~3 min on 2 cores)

Builds a DenseNet121 bundle with fixed random weights at --size (224) unless
--model is given, then measures in one run:
  cold:  wall time of `python detect.py one.jpg` vs the floor, a script that only
         imports TensorFlow/Keras and loads the same bundle (best of --reps runs each);
  batch: images/s of `detect.py` on 256 real photos (decode, resize, batched inference)
         vs a bare `model.predict` on the same images already decoded to tensors.
Targets (issue #4): cold <= 1.5x floor; batch >= 0.9x bare.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "ccp-dev" / "photos"
FLOOR = """
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras
keras.saving.load_model(sys.argv[1] + "/model.keras", compile=False, safe_mode=True)
"""


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def make_bundle(folder: Path, size: int) -> Path:
    import keras

    from fashion.core.fileio import atomic_write_json
    from fashion.model import network as model_lib
    from fashion.model.tasks.base import head_names

    labels = [f"label_{i}" for i in range(13)]
    keras.utils.set_random_seed(0)
    model_lib.build_model(labels, image_size=size).save(folder / "model.keras")
    atomic_write_json(
        folder / "meta.json",
        {"labels": labels, "heads": head_names(labels), "thresholds": [0.5] * 13, "input_size": size},
    )
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="an existing bundle (default: a fresh DenseNet121 one at --size)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    photos_dir = PHOTOS if PHOTOS.is_dir() else ROOT / "data" / "sample" / "photos"
    photos = sorted(photos_dir.glob("*.jpg"))[: args.images]
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(args.model) if args.model else make_bundle(Path(tmp), args.size)
        floor_py = Path(tmp) / "floor.py"
        floor_py.write_text(FLOOR)
        py = sys.executable
        cold, floor = [], []
        for _ in range(args.reps):  # alternate so load drifts hit both
            floor.append(timed([py, str(floor_py), str(bundle)]))
            cold.append(timed([py, "detect.py", str(photos[0]), "--model", str(bundle)]))
        c, f = min(cold), min(floor)

        out = Path(tmp) / "r.json"
        t_detect = (
            timed([py, "detect.py", *map(str, photos), "--model", str(bundle), "--json", str(out), "--quiet"]) - c
        )  # the cold start is not throughput
        import numpy as np

        from fashion.data import imaging
        from fashion.predict import bundle as prediction

        b = prediction.load_bundle(bundle)
        x = np.stack(
            [
                imaging.resize(imaging.decode_rgb(p.read_bytes(), target=b.input_size), b.input_size, "crop")
                for p in photos
            ]
        )
        b.model.predict(x[:32], batch_size=32, verbose=0)  # build the predict graph outside the clock
        t = time.perf_counter()
        b.model.predict(x, batch_size=32, verbose=0)
        t_bare = time.perf_counter() - t
        assert len(json.loads(out.read_text())) == len(photos)
    n = len(photos)
    print(f"{date.today()}, {os.cpu_count()} cores, bundle input {b.input_size} px, {n} photos from {photos_dir}")
    print(
        f"cold start: detect.py one.jpg {c:.2f}s vs floor (import + load bundle) {f:.2f}s = {c / f:.2f}x "
        f"(target <= 1.5x)"
    )
    print(
        f"batch: detect.py {n / t_detect:.1f} img/s (after its cold start) vs bare model.predict on decoded "
        f"tensors {n / t_bare:.1f} img/s = {t_bare / t_detect:.2f}x (target >= 0.9x)"
    )


if __name__ == "__main__":
    main()

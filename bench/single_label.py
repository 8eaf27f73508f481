#!/usr/bin/env python
"""Single-label benchmark (issue #5): our train.py vs a plain Keras tutorial on clothing-small.

Run:   .venv/bin/python bench/single_label.py                 (~35 min on 2 CPU cores)
       .venv/bin/python bench/single_label.py --backbones mobilenetv2 --epochs 1   (a quick look)

Data: ../shared/data/clothing-small (3,781 product photos, 10 classes, train/ validation/
test/ folders; CC0), or the 39-photo subset shipped in data/clothing-small without it.
Budget: the same number of epochs over the train folder at 96 px, from scratch, batch 32;
ours with its defaults (`python train.py --task multiclass --backbone B --weights none
--image-size 96 --epochs E`: Adam one-cycle 2e-3), the reference with Keras' usual Adam 1e-3.
  ours       generate_dataset.py --from-folders DIR --image-size 96 --resize stretch, then train.py
             (random crop 96 from the 96 px stored image = flip only, as the reference).
  reference  keras.utils.image_dataset_from_directory(train, image_size=(96, 96)) + RandomFlip
             + the same keras.applications backbone (its preprocess_input) + GAP + Dense softmax,
             model.fit: the Keras tutorial a user would write.
Both are scored on the validation folder: accuracy (and wall time, which includes the
first epoch's graph build).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "clothing-small"
OUT = ROOT / "bench" / "out"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def source(given: str | None) -> Path:
    if given:
        return Path(given).resolve()
    return SHARED if SHARED.is_dir() else ROOT / "data" / "clothing-small"


def ours(src: Path, backbone: str, alpha: float, size: int, epochs: int) -> tuple[float, float]:
    data = OUT / f"single-{src.parent.name}-{src.name}-{size}"
    if not (data / "dataset.json").is_file():
        subprocess.run(
            [
                sys.executable,
                "generate_dataset.py",
                "--from-folders",
                str(src),
                "--out",
                str(data),
                "--image-size",
                str(size),
                "--resize",
                "stretch",
                "--cache",
                "",
            ],
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    run = f"single-{src.parent.name}-{src.name}-{backbone}-{size}-{epochs}"
    extra = ["--alpha", str(alpha)] if backbone == "mobilenetv2" else []
    t = time.perf_counter()
    cmd = [
        sys.executable,
        "train.py",
        "--data",
        str(data),
        "--task",
        "multiclass",
        "--backbone",
        backbone,
        *extra,
        "--weights",
        "none",
        "--image-size",
        str(size),
        "--epochs",
        str(epochs),
        "--run",
        run,
        "--model-save",
        str(OUT / "model_save"),
        "--log",
        str(OUT / "log"),
    ]
    meta = OUT / "model_save" / run / "meta.json"
    if not meta.is_file():
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"{run} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    wall = time.perf_counter() - t
    return float(json.loads(meta.read_text())["validation"]["accuracy"]), wall


def reference(src: Path, backbone: str, alpha: float, size: int, epochs: int) -> tuple[float, float]:
    import keras

    keras.utils.set_random_seed(0)
    val_dir = next(src / d for d in ("validation", "valid", "val") if (src / d).is_dir())
    kw = dict(image_size=(size, size), batch_size=32, label_mode="categorical")
    train = keras.utils.image_dataset_from_directory(src / "train", shuffle=True, seed=0, **kw)
    val = keras.utils.image_dataset_from_directory(val_dir, shuffle=False, **kw)
    apps = {
        "densenet121": (keras.applications.DenseNet121, keras.applications.densenet.preprocess_input),
        "mobilenetv2": (keras.applications.MobileNetV2, keras.applications.mobilenet_v2.preprocess_input),
        "resnet50": (keras.applications.ResNet50, keras.applications.resnet50.preprocess_input),
    }
    cls, prep = apps[backbone]
    extra = {"alpha": alpha} if backbone == "mobilenetv2" else {}
    inp = keras.Input((size, size, 3))
    x = keras.layers.RandomFlip("horizontal")(inp)
    x = keras.layers.Lambda(prep)(x)
    x = cls(include_top=False, weights=None, input_shape=(size, size, 3), **extra)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(len(train.class_names), activation="softmax")(x)
    m = keras.Model(inp, out)
    m.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", metrics=["accuracy"])
    t = time.perf_counter()
    m.fit(train, epochs=epochs, verbose=0)
    wall = time.perf_counter() - t
    return float(m.evaluate(val, verbose=0)[1]), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", default="mobilenetv2,densenet121", help="(default: mobilenetv2,densenet121)")
    ap.add_argument("--alpha", type=float, default=1.0, help="MobileNetV2 width (default: 1.0)")
    ap.add_argument("--size", type=int, default=96, help="input side (default: 96)")
    ap.add_argument("--epochs", type=int, default=5, help="the budget, in epochs over train/ (default: 5)")
    ap.add_argument(
        "--data",
        help="class folders with train/ and validation/ (default: ../shared/data/"
        "clothing-small, else data/clothing-small)",
    )
    args = ap.parse_args()
    src = source(args.data)
    print(f"{src}: {args.size} px, {args.epochs} epochs from scratch", flush=True)
    rows = []
    for b in args.backbones.split(","):
        acc_o, t_o = ours(src, b, args.alpha, args.size, args.epochs)
        print(f"  ours      {b}: accuracy {acc_o:.3f} ({t_o:.0f} s)", flush=True)
        acc_r, t_r = reference(src, b, args.alpha, args.size, args.epochs)
        print(f"  reference {b}: accuracy {acc_r:.3f} ({t_r:.0f} s)", flush=True)
        rows.append((b, acc_o, t_o, acc_r, t_r))
    print(f"\n{date.today()}, {os.cpu_count()} cores, {src.name}, {args.size} px, {args.epochs} epochs, weights none")
    print(f"{'backbone':<12} {'ours acc':>9} {'ours s*':>8} {'plain Keras acc':>16} {'plain s':>8} {'acc diff':>9}")
    for b, ao, to, ar, tr in rows:
        print(f"{b:<12} {ao:9.3f} {to:8.0f} {ar:16.3f} {tr:8.0f} {ao - ar:+9.3f}")
    print("* ours: the whole train.py process (start, graph build, fit, evaluation, bundle); plain: model.fit only")


if __name__ == "__main__":
    main()

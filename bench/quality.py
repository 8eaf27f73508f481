#!/usr/bin/env python
"""Recipe quality on real imbalanced photos: our defaults vs the original recipe vs baselines.

Run:   .venv/bin/python bench/quality.py                      (ccp-dev, 96 px, 8 epochs: ~8 min on 2 cores)
       .venv/bin/python bench/quality.py --data myntra --size 64 --stored 72 --epochs 4   (issue #6 protocol)

Ingests ../shared/data/<set> once (cached under bench/out/), then trains from
scratch (`--weights none`, same split, crops and epochs) in fresh processes:
  ours      python train.py (defaults)
  original  --head-weights original --pos-weight none --loss bce --optimizer sgd --lr 0.01 --schedule constant
            (the original project: loss weight ∝ frequency, SGD 1e-2, threshold 0.5)
and prints, on the validation split, mAP and sample-F2: at 0.5, with thresholds
tuned 2-fold (tuned on one half of the split, scored on the other: honest), and
tuned and scored on the whole split (optimistic, for reference); beside the best
constant label set (chosen on train) and class priors as scores.
`--ablation all` adds one run per lever in ABLATIONS (defaults with one flag changed); `--inference` scores
the defaults' weights with TTA and at the stored size too (no retraining).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
OUT = ROOT / "bench" / "out"

RECIPES = {
    "ours (defaults)": [],
    "original": [
        "--head-weights",
        "original",
        "--pos-weight",
        "none",
        "--loss",
        "bce",
        "--optimizer",
        "sgd",
        "--lr",
        "0.01",
        "--schedule",
        "constant",
    ],
}
# One lever changed from the defaults each (`--ablation NAME,...` or `--ablation all`).
ABLATIONS = {
    "head-weights sqrt": ["--head-weights", "sqrt"],
    "head-weights inverse": ["--head-weights", "inverse"],
    "head-weights effective": ["--head-weights", "effective"],
    "pos-weight auto": ["--pos-weight", "auto"],
    "loss focal": ["--loss", "focal"],
    "loss asl": ["--loss", "asl"],
    "schedule cosine": ["--schedule", "cosine"],
    "optimizer adamw": ["--optimizer", "adamw"],
    "optimizer sgd": ["--optimizer", "sgd", "--lr", "0.05"],
    "lr 1e-3": ["--lr", "0.001"],
    "lr 5e-3": ["--lr", "0.005"],
    "head dropout 0.2": ["--head-dropout", "0.2"],
    "label smoothing 0.1": ["--label-smoothing", "0.1"],
    "batch 64": ["--batch-size", "64"],
    "head csra": ["--head", "csra"],  # class-specific residual attention, the paper's λ 0.1, T 1
    "head csra T99": ["--head", "csra", "--csra-temperature", "99"],  # λ 0.1, max pooling's attention
    "head mldecoder": ["--head", "mldecoder"],  # one query per label over the 2x2 map's locations, width 256
    "ema 0.99": ["--ema", "0.99"],  # Keras' moving average of the weights, ~the last 100 of 1,200 steps
    "mixup 0.2": ["--mixup", "0.2"],  # keras.layers.MixUp on each batch, label vectors blended alike
    "cutmix 1.0": ["--cutmix", "1.0"],  # keras.layers.CutMix, label vectors mixed by the pasted area
    "backend jax": ["--backend", "jax"],  # the same recipe on Keras' JAX backend (records still via tf.data)
    "seed 1": ["--seed", "1"],  # the defaults' second seed: the spread a lever must beat
    "backend jax seed 1": ["--backend", "jax", "--seed", "1"],
}


def ingest(name: str, stored: int) -> Path:
    src = SHARED / name
    out = OUT / f"{name}-{stored}"
    if (out / "dataset.json").is_file():
        return out
    cmd = [
        sys.executable,
        "generate_dataset.py",
        str(src / "train+val.txt"),
        "--labels",
        str(src / "labels.txt"),
        "--out",
        str(out),
        "--image-size",
        str(stored),
        "--cache",
        "",
    ]
    subprocess.run(cmd, cwd=ROOT, check=False, stdout=subprocess.DEVNULL)
    if not (out / "dataset.json").is_file():
        sys.exit(f"ingestion of {src} failed")
    return out


def train(data: Path, run: str, size: int, epochs: int, extra: list[str]) -> dict:
    ms, log = OUT / "model_save", OUT / "log"
    meta = ms / run / "meta.json"
    if not meta.is_file():
        cmd = [
            sys.executable,
            "train.py",
            "--data",
            str(data),
            "--weights",
            "none",
            "--image-size",
            str(size),
            "--epochs",
            str(epochs),
            "--run",
            run,
            "--model-save",
            str(ms),
            "--log",
            str(log),
            *extra,
        ]
        t = time.perf_counter()
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"{run} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
        seconds = time.perf_counter() - t
        (ms / run / "bench_seconds.txt").write_text(f"{seconds:.0f}\n")  # the wall time, kept with the run
        print(f"  {run}: trained in {seconds:.0f}s", flush=True)
    return ms / run


def wall_time(bundle_dir: Path) -> str:
    f = bundle_dir / "bench_seconds.txt"
    return f.read_text().strip() + "s" if f.is_file() else "?"


def split_labels(data: Path) -> tuple:
    """(train labels, validation labels) in record order."""
    from fashion.data import dataset_json, pipeline

    n = len(dataset_json.read(data)["labels"])
    return tuple(pipeline.labels_of(pipeline.describe_split(data, s).files, n) for s in ("train", "val"))


def bundle_scores(bundle_dir: Path, data: Path):
    """Validation scores of a finished run, predicted now (so cached runs are scored by today's metrics)."""
    from fashion.data import pipeline
    from fashion.predict import bundle as prediction, evaluate as evaluation

    return evaluation.split_scores(prediction.load_bundle(bundle_dir), pipeline.describe_split(data, "val"))


def inference_scores(bundle_dir: Path, data: Path, stored: int) -> dict:
    """The same trained weights scored three more ways, no retraining: with the mirror averaged in (TTA), on
    the whole stored image instead of a resize to the training size (train at 64, test at 72: the objects
    look as large as the training crops made them, FixRes), and both."""
    import tensorflow as tf

    from fashion.data import pipeline
    from fashion.model import network
    from fashion.predict import bundle as prediction

    b = prediction.load_bundle(bundle_dir)
    part = pipeline.describe_split(data, "val")
    large = network.build_model(b.labels, b.backbone, stored, None, task=b.task)  # the defaults' gap heads
    large.set_weights(b.model.get_weights())  # fully convolutional + pooled heads: the weights fit any size

    def probs(model, size: int, flip: bool):
        ds = pipeline.make_dataset(
            part.files, len(b.labels), image_size=size, batch_size=64, training=False, count=part.count
        )
        if flip:
            ds = ds.map(lambda x, y: (tf.image.flip_left_right(x), y))
        return b.task_obj.predict(model, ds)

    small, small_flip = probs(b.model, b.input_size, False), probs(b.model, b.input_size, True)
    big, big_flip = probs(large, stored, False), probs(large, stored, True)
    return {
        "+ TTA (mirror)": (small + small_flip) / 2,
        f"+ test at {stored} px": big,
        f"+ test at {stored} px + TTA": (big + big_flip) / 2,
    }


def score(y, p, y_train) -> dict:
    """mAP and sample-F2 at 0.5, tuned 2-fold (honest) and tuned in-sample (the bundle's thresholds)."""
    from fashion.model import metrics

    at_half = metrics.summary(y, p, 0.5)
    tuned = metrics.summary(y, p, metrics.tune_thresholds(y, p, y_train=y_train))
    return {
        "mAP": at_half["mAP"],
        "f2_samples_at_0.5": at_half["f2_samples"],
        "f2_samples_tuned_crossfit": metrics.crossfit_f2(y, p, y_train=y_train),
        "f2_samples_tuned": tuned["f2_samples"],
        "f1_macro_tuned": tuned["f1_macro"],
    }


def export_split(data: Path) -> Path:
    """The stored JPEGs and labels of every split, as files fastai can read (once, cached)."""
    from fashion.data import dataset_json, records

    out = data.parent / f"{data.name}-export"
    if (out / "labels.csv").is_file():
        return out
    labels = dataset_json.read(data)["labels"]
    tmp = out.with_name(out.name + ".tmp")
    (tmp / "images").mkdir(parents=True, exist_ok=True)
    rows = ["id,split,labels"]
    for split in ("train", "val"):
        for r in records.iter_records(records.shard_paths(data, split), len(labels)):
            name = r["id"].replace("/", "_")
            (tmp / "images" / f"{name}.jpg").write_bytes(r["image"])
            rows.append(f"{name},{split},{';'.join(lb for lb, v in zip(labels, r['labels']) if v)}")
    (tmp / "labels.txt").write_text("\n".join(labels) + "\n")
    (tmp / "labels.csv").write_text("\n".join(rows) + "\n")
    tmp.rename(out)
    return out


def fastai_run(python: str, data: Path, size: int, epochs: int):
    """fastai's recipe in its own environment; returns its validation (labels, probabilities)."""
    import numpy as np

    from fashion.data import dataset_json

    npz = OUT / f"fastai-{data.name}-{size}-{epochs}.npz"
    if not npz.is_file():
        export = export_split(data)
        t = time.perf_counter()
        p = subprocess.run(
            [
                python,
                str(ROOT / "bench" / "fastai_multilabel.py"),
                "--export",
                str(export),
                "--size",
                str(size),
                "--epochs",
                str(epochs),
                "--out",
                str(npz),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if p.returncode != 0:
            sys.exit(f"fastai run failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
        print(f"  fastai: trained in {time.perf_counter() - t:.0f}s", flush=True)
    z = np.load(npz)
    n_train = dataset_json.read(data)["splits"]["train"]["records"]
    print(f"  fastai: lr_find valley {float(z['lr']):.2e}, {len(z['targets'])} validation images, {n_train} train")
    return z["targets"].astype("float32"), z["probs"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="ccp-dev", help="folder under ../shared/data")
    ap.add_argument("--size", type=int, default=96, help="training crop size")
    ap.add_argument("--stored", type=int, default=112, help="ingested image size")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--tag", default="", help="suffix for run names (reruns reuse finished runs)")
    ap.add_argument(
        "--ablation",
        default="",
        help="also run these levers, one changed from the defaults each: "
        f"comma-separated names, or all ({', '.join(ABLATIONS)})",
    )
    ap.add_argument(
        "--inference",
        action="store_true",
        help="also score the defaults' weights with TTA and at the stored size (no retraining)",
    )
    ap.add_argument("--only-ablation", action="store_true", help="skip the original recipe (ours is the reference)")
    ap.add_argument(
        "--fastai",
        metavar="PYTHON",
        help="python of a side environment holding fastai: adds "
        "fastai's multi-label recipe on the same split and crops (bench/fastai_multilabel.py)",
    )
    args = ap.parse_args()
    if args.data == "myntra":
        args.data = "myntra-dev"
    from fashion.model import metrics

    data = ingest(args.data, args.stored)
    y_train, y_val = split_labels(data)
    print(f"{args.data}: stored {args.stored} px, trained at {args.size} px, {args.epochs} epochs, from scratch")
    results = {}
    todo = dict(RECIPES)
    if args.only_ablation:
        todo.pop("original")
    names = list(ABLATIONS) if args.ablation == "all" else [n for n in args.ablation.split(",") if n]
    for n in names:
        if n not in ABLATIONS:
            sys.exit(f"--ablation {n!r}: not one of {', '.join(ABLATIONS)}")
        todo[n] = ABLATIONS[n]
    for label, extra in todo.items():
        tag = label.split()[0] if label in RECIPES else "ab-" + label.replace(" ", "-")
        run = f"q-{args.data}-{args.size}-{args.epochs}-{tag}{args.tag}"
        bundle_dir = train(data, run, args.size, args.epochs, extra)
        results[label] = {**score(y_val, bundle_scores(bundle_dir, data), y_train), "wall": wall_time(bundle_dir)}
        if args.inference and label == "ours (defaults)":
            for how, p in inference_scores(bundle_dir, data, args.stored).items():
                results[f"  {how}"] = score(y_val, p, y_train)
    if args.fastai:
        results["fastai (side env)"] = score(*fastai_run(args.fastai, data, args.size, args.epochs), y_train)
    base = metrics.baselines(y_train, y_val)
    print(f"\n{date.today()}, {os.cpu_count()} cores — validation split of {args.data}")
    print(f"{'recipe':<24} {'mAP':>6} {'F2 @0.5':>8} {'F2 tuned':>9} {'F2 tuned*':>10} {'macro-F1*':>10} {'wall':>6}")
    for label, v in results.items():
        print(
            f"{label:<24} {v['mAP']:6.3f} {v['f2_samples_at_0.5']:8.3f} {v['f2_samples_tuned_crossfit']:9.3f} "
            f"{v['f2_samples_tuned']:10.3f} {v['f1_macro_tuned']:10.3f} {v.get('wall', '?'):>6}"
        )
    print(f"{'constant':<24} {'':>6} {base['constant']['f2_samples']:8.3f}")
    print(f"{'class priors':<24} {base['prior']['mAP']:6.3f}")
    print(
        "F2 tuned: thresholds tuned on one half of the validation split, scored on the other (2-fold, mean of "
        "5 random splits)"
    )
    print("* thresholds tuned and scored on the whole validation split (optimistic); wall: training's wall time")


if __name__ == "__main__":
    main()

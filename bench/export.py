#!/usr/bin/env python
"""The exports against the bundle: the SavedModel's photo-bytes signature (TensorFlow decodes) against
detect.py's OpenCV decoding in probabilities and AP, and onnxruntime against Keras in agreement and speed.

Run:   .venv/bin/python bench/export.py --model model_save/RUN --data data/records   (~3 min on 2 cores)

`make demo` leaves such a bundle and dataset. The photos are the originals the split's records came from
(each record's `source`), so both decoders start from the same JPEG/PNG bytes. Measured in one run:
  decode   probabilities of detect.py's path (OpenCV decode + resize, then the Keras model) and of
           saved_model/'s serving_default on the same bytes: max and mean |difference|, the share of
           photos whose chosen labels agree, and mAP of each on the split's labels;
  onnx     model.onnx on onnxruntime vs the Keras model on the same decoded batches (--batch-size):
           max |difference| (target <= 1e-4) and images/s of each, best of 3 passes, as a ratio.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fashion.data import pipeline, records  # noqa: E402
from fashion.model import metrics  # noqa: E402
from fashion.predict import export  # noqa: E402
from fashion.predict.bundle import image_pixels, load_bundle, predict_arrays  # noqa: E402
from fashion.predict.runtimes import OnnxModel  # noqa: E402


def split_photos(data: Path, split: str, n_labels: int) -> tuple[list[bytes], np.ndarray]:
    """The original photo bytes and labels of a split's records (their `source` paths)."""
    photos, labels = [], []
    for r in records.iter_records(pipeline.describe_split(data, split).files, n_labels):
        source = Path(r["source"])
        path = source if source.is_absolute() else ROOT / source
        if path.is_file():
            photos.append(path.read_bytes())
            labels.append(r["labels"])
    if not photos:
        sys.exit(f"no original photo of {data}/{split} found on disk (records' sources must be local files)")
    return photos, np.asarray(labels, np.float32)


def rate(predict, batches: list[np.ndarray]) -> float:
    """images/s of `predict` over the batches, best of 3 passes after a warm-up batch."""
    predict(batches[0])
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for b in batches:
            predict(b)
        best = min(best, time.perf_counter() - t)
    return sum(len(b) for b in batches) / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a trained bundle folder (make demo: model_save/demo-*)")
    ap.add_argument("--data", required=True, help="its records folder (make demo: data/records)")
    ap.add_argument("--split", default="val", help="the split whose photos are compared. Defaults to val.")
    ap.add_argument("--batch-size", type=int, default=32, help="the batch of both runtimes. Defaults to 32.")
    args = ap.parse_args()

    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "bundle"
        shutil.copytree(args.model, work, ignore=shutil.ignore_patterns("saved_model", "*.onnx", "*.tflite"))
        bundle = load_bundle(work)
        photos, y = split_photos(Path(args.data), args.split, len(bundle.labels))
        size, bs = bundle.input_size, args.batch_size
        print(f"{len(photos)} photos of {args.data}/{args.split}, {bundle.backbone} at {size} px")

        arrays = np.stack([image_pixels(p, size, 64_000_000) for p in photos])
        batches = [arrays[i : i + bs] for i in range(0, len(arrays), bs)]
        cv = np.concatenate([predict_arrays(bundle, b) for b in batches])

        serve = tf.saved_model.load(str(export.export_bundle(bundle, "savedmodel"))).signatures["serving_default"]
        outs = [serve(photos=tf.constant(photos[i : i + bs])) for i in range(0, len(photos), bs)]
        tfp = np.concatenate([o["probabilities"].numpy() for o in outs])
        tf_chosen = np.concatenate([o["chosen"].numpy() for o in outs])
        th = bundle.thresholds
        cv_chosen = ((cv >= th) & (th < 1)) | (th <= 0)
        diff = np.abs(cv - tfp)
        map_cv = metrics.mean_ap(metrics.average_precision(y, cv))
        map_tf = metrics.mean_ap(metrics.average_precision(y, tfp))
        agree = float((cv_chosen == tf_chosen).all(axis=1).mean())

        onnx = OnnxModel(export.export_bundle(bundle, "onnx"))
        ox = np.concatenate([bundle.task_obj.to_probs(onnx.predict_on_batch(b)) for b in batches])
        keras_rate = rate(bundle.model.predict_on_batch, batches)
        onnx_rate = rate(onnx.predict_on_batch, batches)

    rows = [
        ("photos", f"{len(photos)} ({args.split})"),
        ("decode: max / mean abs(p_TF - p_OpenCV)", f"{diff.max():.2e} / {diff.mean():.2e}"),
        ("decode: chosen labels equal", f"{agree:.1%} of photos"),
        (
            "decode: mAP OpenCV (detect.py) / TF (serving_default)",
            f"{map_cv:.4f} / {map_tf:.4f} (Δ {map_tf - map_cv:+.4f})",
        ),
        ("onnx: max abs(p_ONNX - p_Keras)", f"{np.abs(ox - cv).max():.2e} (target <= 1e-4)"),
        (f"onnx: images/s at batch {bs} (Keras / onnxruntime)", f"{keras_rate:.1f} / {onnx_rate:.1f}"),
        ("onnx: onnxruntime / Keras", f"{onnx_rate / keras_rate:.2f}x"),
    ]
    print(f"\n## exports ({date.today()}): bench/export.py --model {args.model} --data {args.data}\n")
    print("| measure | result |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()

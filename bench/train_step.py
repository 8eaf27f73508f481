#!/usr/bin/env python
"""Training-step benchmark: our model fed by the real pipeline vs synthetic tensors vs plain Keras.

Run:   .venv/bin/python bench/train_step.py                 (~25 min on 2 CPU cores)
       .venv/bin/python bench/train_step.py --sizes 96 --groups heads --steps 4   (a quick look)

For each input size and layer group, in one process, steady-state training
images/s (the first steps, which build the graph, are excluded) of:
  (a) ours: fashion.model.network + per-head weighted losses, fed by fashion.data.pipeline from TFRecords
      (256 px JPEGs of real CCP photos, random crop + flip);
  (b) ours fed synthetic uint8 tensors already in memory (the pipeline's cost removed);
  (c) plain Keras: keras.applications.DenseNet121 + the same 13 heads written inline,
      binary cross-entropy per output, model.fit on in-memory float tensors.
Targets (issue #3): (a) <= 5 % slower than (b); (b) <= 5 % slower than (c).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from common import StepTimer, plain_keras  # noqa: E402
from fashion.cli import generate_dataset_main  # noqa: E402
from fashion.data import pipeline  # noqa: E402
from fashion.model import losses, network as model_lib  # noqa: E402
from fashion.model.tasks.base import head_names  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "ccp-dev"
LABELS = [f"label_{i}" for i in range(13)]


def steady_rate(fit, batch: int, warmup: int, steps: int) -> float:
    timer = StepTimer()
    fit(warmup + steps, timer)
    return timer.rate(batch, warmup)


def ours(size: int, group: str, ds) -> keras.Model:
    keras.utils.set_random_seed(0)
    m = model_lib.build_model(LABELS, image_size=size)
    model_lib.set_trainable(m, group, bn="train")
    names = head_names(LABELS)
    m.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss={n: losses.HeadLoss("bce") for n in names},
        loss_weights={n: 1.0 for n in names},
    )
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="96,224")
    ap.add_argument("--groups", default="heads,all")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of (a), (b), (c); best of each")
    args = ap.parse_args()
    src = SHARED / "train+val.txt" if SHARED.is_dir() else ROOT / "data" / "sample" / "train+val.txt"
    b = args.batch
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        assert generate_dataset_main([str(src), "--out", tmp, "--val-fraction", "0.1", "--workers", "8"]) in (0, 1)
        train = pipeline.describe_split(tmp, "train")
        names = head_names(LABELS)
        for size in (int(s) for s in args.sizes.split(",")):
            real = pipeline.make_dataset(
                train.files, 13, image_size=size, batch_size=b, training=True, output_names=names, cache=True
            ).repeat()
            x8 = np.random.default_rng(0).integers(0, 256, (b, size, size, 3), dtype=np.uint8)
            yv = (np.random.default_rng(1).random((b, 13)) < 0.3).astype("float32")
            synth = tf.data.Dataset.from_tensors((x8, {n: yv[:, i : i + 1] for i, n in enumerate(names)})).repeat()
            xf = x8.astype("float32") / 255.0
            for group in args.groups.split(","):
                m = ours(size, group, real)
                ref = plain_keras(size, group)
                yd = {f"o{i}": yv[:, i : i + 1] for i in range(13)}
                xs = np.concatenate([xf] * (args.warmup + args.steps))
                ys = {k: np.concatenate([v] * (args.warmup + args.steps)) for k, v in yd.items()}
                ra = rb = rc = 0.0
                for _ in range(args.rounds):  # alternate, keep the best of each: load spikes hit all three alike
                    ra = max(
                        ra,
                        steady_rate(
                            lambda n, cb: m.fit(real, steps_per_epoch=n, epochs=1, verbose=0, callbacks=[cb]),
                            b,
                            args.warmup,
                            args.steps,
                        ),
                    )
                    rb = max(
                        rb,
                        steady_rate(
                            lambda n, cb: m.fit(synth, steps_per_epoch=n, epochs=1, verbose=0, callbacks=[cb]),
                            b,
                            args.warmup,
                            args.steps,
                        ),
                    )
                    rc = max(
                        rc,
                        steady_rate(
                            lambda n, cb: ref.fit(
                                xs[: n * b],
                                {k: v[: n * b] for k, v in ys.items()},
                                batch_size=b,
                                epochs=1,
                                verbose=0,
                                shuffle=False,
                                callbacks=[cb],
                            ),
                            b,
                            args.warmup,
                            args.steps,
                        ),
                    )
                rows.append((size, group, ra, rb, rc))
                print(f"{size:>4} {group:>5}: (a) {ra:7.1f}  (b) {rb:7.1f}  (c) {rc:7.1f} img/s", flush=True)
                keras.backend.clear_session()
    print(
        f"\ndate {date.today()}, {os.cpu_count()} cores, batch {b}, {args.steps} timed steps after {args.warmup}, "
        f"best of {args.rounds} alternating rounds"
    )
    print(
        f"{'px':>4} {'layers':>6} {'(a) pipeline':>13} {'(b) synthetic':>14} {'(c) plain Keras':>16} "
        f"{'a/b':>6} {'b/c':>6}"
    )
    for size, group, ra, rb, rc in rows:
        print(f"{size:>4} {group:>6} {ra:13.1f} {rb:14.1f} {rc:16.1f} {ra / rb:6.2f} {rb / rc:6.2f}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""GPU training-step benchmark: our model vs plain Keras, mixed precision, one process.

Run (on a machine with a GPU; any Keras 3 backend, TensorFlow not required):
    KERAS_BACKEND=jax PYTHONPATH=. python bench/train_step_gpu.py   (~5 min on one H100, compiles included;
        PYTHONPATH=. because a bare GPU machine has no `pip install -e .` of this project)
    KERAS_BACKEND=tensorflow .venv/bin/python bench/train_step_gpu.py --size 96 --steps 5  (CPU smoke run)

What it measures, steady-state training images/s (first steps, which compile, excluded):
  ours   fashion.model.network.build_model (uint8 in, preprocessing inside, 13 heads) + our per-head
         HeadLoss with head weights, Adam, fed uint8 tensors already in memory;
  plain  keras.applications.DenseNet121 + the same 13 heads written inline, binary
         cross-entropy per output, model.fit on in-memory float tensors (a Keras tutorial);
  fused  plain, but the 13 Conv2D(64) heads computed as one Conv2D(832) then split: the
         same function, to see whether fusing the heads pays on a GPU;
  ours fp32  ours with mixed precision off, to show what mixed precision buys.
The ratio ours/plain is the overhead of our model; fused/plain says whether to fuse.
The TensorFlow GPU wheel cannot be carried to the lent GPU machine (572 MB; it has no
network), so there this runs on Keras' JAX backend: the same Keras model code, XLA-compiled.
"""

from __future__ import annotations

import argparse
import time
from datetime import date

import keras
import numpy as np

from common import StepTimer, plain_keras
from fashion.model import losses, network as model_lib
from fashion.model.tasks.base import head_names

LABELS = [f"label_{i}" for i in range(13)]


def rate(m: keras.Model, x, y, batch: int, warmup: int) -> float:
    timer = StepTimer()
    m.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False, callbacks=[timer])
    return timer.rate(batch, warmup)


def ours(size: int, group: str) -> keras.Model:
    keras.utils.set_random_seed(0)
    m = model_lib.build_model(LABELS, image_size=size)
    model_lib.set_trainable(m, group, bn="train")
    names = head_names(LABELS)
    w = losses.head_weights([100 * (i + 1) for i in range(13)], 2000, "sqrt")
    m.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss={n: losses.HeadLoss("bce") for n in names},
        loss_weights={n: float(w[i]) for i, n in enumerate(names)},
    )
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224, help="input side in pixels (default: 224)")
    ap.add_argument("--groups", default="heads,all", help="layer groups (default: heads,all)")
    ap.add_argument("--batch", type=int, default=64, help="batch size (default: 64)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed first steps (default: 5)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps (default: 30)")
    ap.add_argument(
        "--variants", default="ours,plain,fused,ours-fp32", help="what to run (default: ours,plain,fused,ours-fp32)"
    )
    args = ap.parse_args()
    b, s, n = args.batch, args.size, args.warmup + args.steps
    rng = np.random.default_rng(0)
    x8 = rng.integers(0, 256, (n * b, s, s, 3), dtype=np.uint8)
    xf = x8.astype("float32") / 255.0
    yv = (rng.random((n * b, 13)) < 0.3).astype("float32")
    y_ours = {nm: yv[:, i : i + 1] for i, nm in enumerate(head_names(LABELS))}
    y_plain = {f"o{i}": yv[:, i : i + 1] for i in range(13)}
    print(f"backend {keras.backend.backend()}, devices: {_devices()}", flush=True)
    rows = []
    for group in args.groups.split(","):
        res = {}
        for v in args.variants.split(","):
            keras.mixed_precision.set_global_policy("float32" if v.endswith("fp32") else "mixed_float16")
            t0 = time.perf_counter()
            if v.startswith("ours"):
                res[v] = rate(ours(s, group), x8, y_ours, b, args.warmup)
            else:
                res[v] = rate(plain_keras(s, group, fused=v == "fused"), xf, y_plain, b, args.warmup)
            print(
                f"{s} px {group:>5} {v:>9}: {res[v]:8.1f} img/s  ({time.perf_counter() - t0:.0f} s with compile)",
                flush=True,
            )
            keras.backend.clear_session()
        rows.append((group, res))
    print(
        f"\ndate {date.today()}, backend {keras.backend.backend()}, {_devices()}, {s} px, batch {b}, "
        f"{args.steps} timed steps after {args.warmup}; mixed_float16 unless fp32"
    )
    for group, res in rows:
        line = "  ".join(f"{k} {v:.1f}" for k, v in res.items())
        ratios = []
        if "ours" in res and "plain" in res:
            ratios.append(f"ours/plain {res['ours'] / res['plain']:.2f}")
        if "fused" in res and "plain" in res:
            ratios.append(f"fused/plain {res['fused'] / res['plain']:.2f}")
        if "ours" in res and "ours-fp32" in res:
            ratios.append(f"mixed/fp32 {res['ours'] / res['ours-fp32']:.2f}")
        print(f"{group:>5}: {line} img/s;  {', '.join(ratios)}")


def _devices() -> str:
    b = keras.backend.backend()
    if b == "jax":
        import jax

        return ", ".join(str(d.device_kind) for d in jax.devices())
    if b == "torch":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    import tensorflow as tf

    return ", ".join(d.name for d in tf.config.list_physical_devices()) or "cpu"


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""fastai's multi-label recipe on the images our generator exported: the reference of issue #6.

Runs in a side environment holding fastai (not a dependency of this project), e.g.:
    python3.11 -m venv /tmp/fastai-venv
    /tmp/fastai-venv/bin/pip install fastai --extra-index-url https://download.pytorch.org/whl/cpu
    /tmp/fastai-venv/bin/python bench/fastai_multilabel.py --export bench/out/myntra-dev-72-export --size 64 --epochs 4
bench/quality.py --fastai /tmp/fastai-venv/bin/python does the export and this run for you.

The recipe: `vision_learner(densenet121, pretrained=False)` (fastai's own pooled head),
`fit_one_cycle(EPOCHS)` at the lr_find valley, on the same split, the same stored images
(our TFRecords' JPEGs) and the same crops as train.py (random crop SIZE + flip for
training, center crop SIZE for validation). Writes validation probabilities and targets
to OUT (.npz) for bench/quality.py to score with fashion.metrics, so both are scored alike.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from fastai.vision.all import (
    ColSplitter,
    DataBlock,
    Flip,
    ImageBlock,
    MultiCategoryBlock,
    Normalize,
    RandomCrop,
    densenet121,
    imagenet_stats,
    valley,
    vision_learner,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", required=True, help="folder with labels.csv, labels.txt and images/")
    ap.add_argument("--size", type=int, default=64, help="crop size (default: 64)")
    ap.add_argument("--epochs", type=int, default=4, help="epochs of fit_one_cycle (default: 4)")
    ap.add_argument("--batch-size", type=int, default=32, help="(default: 32, as train.py)")
    ap.add_argument("--out", required=True, help="output .npz")
    args = ap.parse_args()
    torch.manual_seed(0)
    root = Path(args.export)
    labels = (root / "labels.txt").read_text().split()
    df = pd.read_csv(root / "labels.csv", keep_default_na=False, dtype=str)
    df["is_valid"] = df["split"] == "val"
    block = DataBlock(
        blocks=(ImageBlock, MultiCategoryBlock(vocab=labels)),
        get_x=lambda r: root / "images" / f"{r['id']}.jpg",
        get_y=lambda r: r["labels"].split(";") if r["labels"] else [],
        splitter=ColSplitter("is_valid"),
        item_tfms=RandomCrop(args.size),
        batch_tfms=[Flip(), Normalize.from_stats(*imagenet_stats)],
    )
    dls = block.dataloaders(df, bs=args.batch_size, num_workers=0)
    learn = vision_learner(dls, densenet121, pretrained=False)
    t = time.perf_counter()
    lr = float(learn.lr_find(suggest_funcs=(valley,), show_plot=False).valley)
    print(f"lr_find valley: {lr:.2e}", flush=True)
    learn.fit_one_cycle(args.epochs, lr)
    probs, targets = learn.get_preds(dl=dls.valid)
    np.savez(args.out, probs=probs.numpy(), targets=targets.numpy(), lr=lr, seconds=time.perf_counter() - t)
    print(f"saved {args.out}: {len(probs)} validation images, {time.perf_counter() - t:.0f} s", flush=True)


if __name__ == "__main__":
    main()

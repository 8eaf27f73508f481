"""`train.py --lr-find`: the learning-rate range test (Smith 2015, fastai's `lr_find`).

The rate rises exponentially step by step while the training loss is recorded; the suggestion is
fastai's "valley", and the curve is saved as log/RUN/lr_find.png.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from fashion.core.errors import EXIT_OK
from fashion.model import plots


class LRRangeTest(keras.callbacks.Callback):
    """Raises the learning rate exponentially each step and records the loss; stops when it diverges."""

    def __init__(self, start: float, stop: float, steps: int):
        super().__init__()
        self.rates = np.geomspace(start, stop, steps)
        self.lrs: list[float] = []
        self.losses: list[float] = []

    def on_train_batch_begin(self, batch, logs=None):
        self.model.optimizer.learning_rate.assign(float(self.rates[min(batch, len(self.rates) - 1)]))

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", np.nan))
        self.lrs.append(float(self.rates[min(batch, len(self.rates) - 1)]))
        self.losses.append(loss)
        best = np.nanmin(self.losses)
        if not np.isfinite(loss) or (len(self.losses) > 5 and loss > 4 * best):
            self.model.stop_training = True


def suggest_lr(lrs: list[float], losses_: list[float]) -> float:
    """fastai's 'valley': the middle of the longest run of falling smoothed loss."""
    loss = np.array(losses_, float)
    finite = np.isfinite(loss)
    lrs_a, loss = np.array(lrs)[finite], loss[finite]
    if len(loss) < 3:
        return float(lrs_a[0]) if len(lrs_a) else 1e-3
    smooth = np.convolve(loss, np.ones(3) / 3, mode="same")
    n = len(smooth)
    run = np.ones(n, int)  # longest decreasing run ending at i (over any earlier start)
    for i in range(1, n):
        for j in range(i):
            if smooth[i] < smooth[j] and run[j] + 1 > run[i]:
                run[i] = run[j] + 1
    end = int(run.argmax())
    start = end - run[end] + 1
    return float(lrs_a[start + (end - start) * 2 // 3])


def lr_find(
    model, train_ds, png: Path, steps_per_epoch: int, start: float = 1e-7, stop: float = 10.0, max_steps: int = 100
) -> int:
    """Runs the range test on a compiled model (its weights move: a throwaway run), plots, suggests."""
    n = max(10, min(max_steps, steps_per_epoch * 5))
    cb = LRRangeTest(start, stop, n)
    print(f"learning-rate range test: {n} steps from {start:g} to {stop:g}")
    model.fit(train_ds.repeat(), steps_per_epoch=n, epochs=1, callbacks=[cb], verbose=0, shuffle=False)
    lr = suggest_lr(cb.lrs, cb.losses)
    plots.save(plots.lr_range(cb.lrs, cb.losses, lr), png, dpi=100)
    print(f"suggested learning rate: {lr:.2e}  (plot: {png}); train with --lr {lr:.2g}")
    return EXIT_OK

"""Learning-rate schedules per stage: `--schedule onecycle|cosine|plateau|constant`.

OneCycle is registered as "fashion>OneCycle": checkpoints store that name, so it must not change.
"""

from __future__ import annotations

import math

import keras

from fashion.config.choices import SCHEDULES
from fashion.core.errors import TrainError


def make_schedule(kind: str, lr: float, steps: int, warmup: float):
    """The rate (or schedule) of a stage of `steps` optimizer steps at peak `lr`; plateau and constant
    start at `lr` (plateau lowers it from a callback)."""
    if kind not in SCHEDULES:
        raise TrainError(f"--schedule must be one of {SCHEDULES}, got {kind!r}")
    if kind == "onecycle":
        return OneCycle(lr, max(steps, 1), warmup=max(warmup, 0.25))
    if kind == "cosine":
        w = int(steps * warmup)
        return keras.optimizers.schedules.CosineDecay(
            lr / 25.0 if w else lr, max(steps - w, 1), alpha=1e-3, warmup_target=lr if w else None, warmup_steps=w
        )
    return lr


@keras.saving.register_keras_serializable(package="fashion")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """fastai's one-cycle: cosine warm-up from lr/25 to lr over `warmup` of the steps, cosine down to lr/1e5."""

    def __init__(self, lr: float, steps: int, warmup: float = 0.25):
        self.lr, self.steps, self.warmup = float(lr), int(steps), float(warmup)

    def __call__(self, step):
        ops = keras.ops
        step = ops.cast(step, "float32")
        up = max(self.steps * self.warmup, 1.0)
        lo, hi, end = self.lr / 25.0, self.lr, self.lr / 1e5
        t_up = ops.clip(step / up, 0.0, 1.0)
        t_down = ops.clip((step - up) / max(self.steps - up, 1.0), 0.0, 1.0)
        warm = lo + (hi - lo) * (1 - ops.cos(math.pi * t_up)) / 2
        cool = end + (hi - end) * (1 + ops.cos(math.pi * t_down)) / 2
        return ops.where(step < up, warm, cool)

    def get_config(self):
        return {"lr": self.lr, "steps": self.steps, "warmup": self.warmup}

"""Optimisers: `--optimizer sgd|adam|adamw`, with discriminative rates (`--lr-mult`) and clipping that is
right on several devices.

This module, and only this one, overrides private Keras 3 optimizer methods (`update_step`,
`_clip_gradients`, `_var_key`, all of keras/src/optimizers/base_optimizer.py, keras 3.15). A Keras
upgrade may move them: tests/test_train.py (`--lr-mult`) and tests/test_distributed.py (summed
clipping on two replicas) pin what they must keep doing.

The classes are registered as "fashion>SGD", "fashion>Adam", "fashion>AdamW": checkpoints (last.keras,
best.keras) store those names, so they must not change or `--resume` cannot load older runs.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from fashion.config.choices import OPTIMIZERS
from fashion.config.train import TrainConfig
from fashion.core.errors import TrainError
from fashion.model.tasks.base import HEAD_PREFIX

# A mixin over Keras' optimizers: the type checker sees it as one (Keras is untyped), Python as object.
_OptimizerBase: Any = object


class _TrunkRate(_OptimizerBase):
    """Discriminative rates (`--lr-mult`): trunk variables step at `lr_mult` x the rate, heads at the rate.

    Heads are the layers named `head_*` (fashion.model.tasks); everything else is trunk. Scaling the rate inside
    `update_step` keeps one optimizer, so its state, schedule, accumulation and loss scaling stay as
    they are, and the multiplier travels in the optimizer's config through checkpoints and --resume.
    """

    def __init__(self, *args, lr_mult: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.lr_mult = float(lr_mult)

    def build(self, variables):
        super().build(variables)
        # update_step may see the backend's variable (no .path), so remember the trunk by key
        self._trunk_keys = {self._var_key(v) for v in variables if not v.path.startswith(HEAD_PREFIX)}

    def update_step(self, gradient, variable, learning_rate):
        if self.lr_mult != 1.0 and self._var_key(variable) in self._trunk_keys:
            learning_rate = learning_rate * self.lr_mult
        return super().update_step(gradient, variable, learning_rate)

    def _clip_gradients(self, grads):
        # Keras 3's TensorFlow optimizer clips each replica's gradient before it sums them across replicas
        # (MirroredStrategy, --cpu-devices), so SGD's clipnorm would bound the wrong vector and training on
        # N devices would differ from one. Sum first, clip the batch gradient, hand back 1/N of it: Keras'
        # own sum then restores the clipped gradient exactly.
        if keras.backend.backend() != "tensorflow" or not (self.clipnorm or self.global_clipnorm or self.clipvalue):
            return super()._clip_gradients(grads)
        import tensorflow as tf

        ctx = tf.distribute.get_replica_context()
        n = ctx.num_replicas_in_sync if ctx is not None else 1
        if n == 1:
            return super()._clip_gradients(grads)
        live = [i for i, g in enumerate(grads) if g is not None]
        summed = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [grads[i] for i in live])
        out = list(grads)
        for i, g in zip(live, super()._clip_gradients(summed)):
            out[i] = g / n
        return out

    def get_config(self):
        return {**super().get_config(), "lr_mult": self.lr_mult}


@keras.saving.register_keras_serializable(package="fashion")
class SGD(_TrunkRate, keras.optimizers.SGD):
    pass


@keras.saving.register_keras_serializable(package="fashion")
class Adam(_TrunkRate, keras.optimizers.Adam):
    pass


@keras.saving.register_keras_serializable(package="fashion")
class AdamW(_TrunkRate, keras.optimizers.AdamW):
    pass


def make_optimizer(cfg: TrainConfig, lr) -> Any:
    """The `--optimizer` at learning rate (or schedule) `lr`, with --weight-decay, --accum-steps, --lr-mult,
    --ema."""
    accum = cfg.accum_steps if cfg.accum_steps > 1 else None
    if cfg.lr_mult < 0:
        raise TrainError(f"--lr-mult must be >= 0, got {cfg.lr_mult}")
    if not 0.0 <= cfg.ema < 1.0:
        raise TrainError(f"--ema must be in [0, 1) (a momentum such as 0.99; 0 = off), got {cfg.ema}")
    common: dict[str, Any] = {"gradient_accumulation_steps": accum, "lr_mult": cfg.lr_mult}
    if cfg.ema:  # Keras' own averaging: the optimizer keeps the average, SwapEMAWeights shows it (callbacks)
        common.update(use_ema=True, ema_momentum=cfg.ema)
    if cfg.optimizer == "sgd":  # the original project: momentum 0.9, clipnorm 5
        return SGD(lr, momentum=0.9, clipnorm=5.0, weight_decay=cfg.weight_decay or None, **common)
    if cfg.optimizer == "adam":
        return Adam(lr, weight_decay=cfg.weight_decay or None, **common)
    if cfg.optimizer == "adamw":
        return AdamW(lr, weight_decay=cfg.weight_decay or 1e-2, **common)
    raise TrainError(f"--optimizer must be one of {OPTIMIZERS}, got {cfg.optimizer!r}")


def current_lr(optimizer) -> float:
    """The rate the optimizer steps at now (a schedule evaluated at its iteration count)."""
    lr = optimizer.learning_rate
    try:
        return float(np.asarray(lr))
    except TypeError:
        return float(np.asarray(lr(optimizer.iterations)))

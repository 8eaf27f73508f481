"""Per-head losses and the weights that fight class imbalance.

Two levers, both computed from the training positives in dataset.json:
* a weight per head (`--head-weights`), the head's share of the total loss;
* a positive weight inside each head (`--pos-weight auto`), balancing its
  positives against its negatives (below 1 where positives are the majority).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

from fashion.config.choices import CLASS_WEIGHTS, HEAD_WEIGHTS, LOSSES

POS_WEIGHT_CLIP = (0.02, 50.0)  # a class with 3 positives in 10,000 must not blow up the loss


def head_weights(
    positives: Sequence[int] | np.ndarray, n: int, scheme: str = "none", beta: float = 0.999
) -> np.ndarray:
    """Loss weight per head, normalised to mean 1 over classes with positives.

    Args:
      positives: training positives per class.
      n: training images.
      scheme: `none` (all 1); `original` (∝ frequency, the original project);
        `inverse` (n / positives, the 2018 winners); `sqrt` (its square root);
        `effective` (Cui et al. 2019: (1 - beta) / (1 - beta ** positives)).
    Returns:
      float array; a class without positives gets weight 1 (it learns "never").
    """
    if scheme not in HEAD_WEIGHTS:
        raise ValueError(f"--head-weights must be one of {HEAD_WEIGHTS}, got {scheme!r}")
    pos = np.asarray(positives, float)
    has = pos > 0
    w = np.ones_like(pos)
    if scheme == "original":
        w[has] = pos[has] / max(n, 1)
    elif scheme == "inverse":
        w[has] = n / pos[has]
    elif scheme == "sqrt":
        w[has] = np.sqrt(n / pos[has])
    elif scheme == "effective":
        w[has] = (1.0 - beta) / (1.0 - np.power(beta, pos[has]))
    if has.any():
        w[has] = w[has] / w[has].mean()
    w[~has] = 1.0
    return w


def class_weights(counts: Sequence[int], scheme: str = "none") -> np.ndarray:
    """Loss weight per class of a single-label task (Keras `class_weight`) from training counts,
    normalised to mean 1 over the classes present: `none` (all 1), `inverse` (N / count), `sqrt`."""
    if scheme not in CLASS_WEIGHTS:
        raise ValueError(f"--class-weights must be one of {CLASS_WEIGHTS}, got {scheme!r}")
    n = np.asarray(counts, float)
    return head_weights(n, int(n.sum()), scheme)


def pos_weights(positives: Sequence[int], n: int, mode: str = "none") -> np.ndarray:
    """Weight of a positive relative to a negative inside each head: negatives / positives, clipped."""
    pos = np.asarray(positives, float)
    if mode == "none":
        return np.ones_like(pos)
    if mode != "auto":
        raise ValueError(f"--pos-weight must be auto or none, got {mode!r}")
    w = np.divide(n - pos, pos, out=np.ones_like(pos), where=pos > 0)
    return np.clip(w, *POS_WEIGHT_CLIP)


@keras.saving.register_keras_serializable(package="fashion")
class HeadLoss(keras.losses.Loss):
    """Binary loss of one sigmoid head: BCE, focal (Lin et al. 2017) or asymmetric (Ridnik et al. 2021).

    Args:
      kind: `bce`, `focal` or `asl`.
      pos_weight: multiplies the positive term (see `pos_weights`).
      gamma: focusing parameter of focal loss (2.0).
      gamma_neg, gamma_pos, clip: ASL's parameters (4, 0, 0.05).
      label_smoothing: targets become y * (1 - s) + s / 2.
    """

    def __init__(
        self,
        kind: str = "bce",
        pos_weight: float = 1.0,
        gamma: float = 2.0,
        gamma_neg: float = 4.0,
        gamma_pos: float = 0.0,
        clip: float = 0.05,
        label_smoothing: float = 0.0,
        name: str | None = None,
        reduction: str = "sum_over_batch_size",
        **kwargs,
    ):
        if kind not in LOSSES:
            raise ValueError(f"--loss must be one of {LOSSES}, got {kind!r}")
        super().__init__(name=name or f"{kind}_loss", reduction=reduction, **kwargs)
        self.kind, self.pos_weight, self.gamma = kind, float(pos_weight), float(gamma)
        self.gamma_neg, self.gamma_pos, self.clip = float(gamma_neg), float(gamma_pos), float(clip)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        y = ops.cast(y_true, y_pred.dtype)
        y = ops.reshape(y, ops.shape(y_pred))
        p = ops.clip(ops.cast(y_pred, "float32"), 1e-7, 1.0 - 1e-7)
        y = ops.cast(y, "float32")
        if self.label_smoothing:
            y = y * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
        log_p, log_q = ops.log(p), ops.log(1.0 - p)
        if self.kind == "bce":
            pos, neg = -log_p, -log_q
        elif self.kind == "focal":
            pos = -ops.power(1.0 - p, self.gamma) * log_p
            neg = -ops.power(p, self.gamma) * log_q
        else:  # asl: hard negatives shifted by `clip`, easy ones discarded
            p_m = ops.maximum(p - self.clip, 0.0)
            pos = -ops.power(1.0 - p, self.gamma_pos) * log_p
            neg = -ops.power(p_m, self.gamma_neg) * ops.log(ops.clip(1.0 - p_m, 1e-7, 1.0))
        return ops.mean(self.pos_weight * y * pos + (1.0 - y) * neg, axis=-1)

    def get_config(self):
        return {
            **super().get_config(),
            "kind": self.kind,
            "pos_weight": self.pos_weight,
            "gamma": self.gamma,
            "gamma_neg": self.gamma_neg,
            "gamma_pos": self.gamma_pos,
            "clip": self.clip,
            "label_smoothing": self.label_smoothing,
        }

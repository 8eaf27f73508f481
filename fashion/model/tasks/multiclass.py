"""multiclass: GAP -> dropout -> Dense(K) softmax `head_softmax`, categorical cross-entropy or focal."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from fashion.core.errors import TrainError
from fashion.model.tasks.single import SingleLabel


class MultiClass(SingleLabel):
    name = "multiclass"
    fixed_threshold = False
    monitor = "val_accuracy"
    head, activation = "head_softmax", "softmax"

    def class_indices(self, y: np.ndarray) -> np.ndarray:
        """The one-hot position."""
        return np.argmax(y, axis=1)

    def _columns(self, arr: np.ndarray) -> np.ndarray:
        return arr.reshape(len(arr), -1)

    def check_dataset(self, train) -> None:
        if len(self.labels) < 2:
            raise TrainError("--task multiclass needs at least 2 classes; with one, use --task binary")
        self._check_one_label_each(train)

    def loss(self, cfg, pos_weight: float = 1.0):
        """Categorical cross-entropy (`--loss bce`) or categorical focal."""
        if cfg.loss == "bce":
            return keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
        if cfg.loss == "focal":
            return keras.losses.CategoricalFocalCrossentropy(gamma=cfg.gamma, label_smoothing=cfg.label_smoothing)
        raise TrainError(
            f"--loss {cfg.loss} is for sigmoid heads; --task multiclass takes bce (categorical cross-entropy) or focal"
        )

    def keras_metrics(self) -> list:
        top = self.top
        return [
            keras.metrics.CategoricalAccuracy(name="accuracy"),
            keras.metrics.TopKCategoricalAccuracy(k=top, name=f"top{top}_accuracy"),
        ]

    def _loss_name(self, cfg) -> str:
        return "categorical cross-entropy" if cfg.loss == "bce" else cfg.loss

    def _epoch_scores(self, y, probs, s: dict, logs: dict) -> str:
        logs[f"val_top{s['top_k']}_accuracy"] = s["top_k_accuracy"]
        return f"val accuracy {s['accuracy']:.3f}  top-{s['top_k']} {s['top_k_accuracy']:.3f}"

    def _model_line(self, s: dict, extra: dict, thresholds: list[float]) -> str:
        return (
            f"  model     accuracy {s['accuracy']:.3f}  top-{self.top} {s['top_k_accuracy']:.3f}  "
            f"macro-F1 {s['f1_macro']:.3f}  log loss {s['log_loss']:.3f}"
        )

    def _summary_model_line(self, result: dict[str, Any]) -> str:
        return (
            f"  model     accuracy {result['accuracy']:.3f}  top-{result['top_k']} {result['top_k_accuracy']:.3f}  "
            f"macro-F1 {result['f1_macro']:.3f}  log loss {result['log_loss']:.3f}"
        )

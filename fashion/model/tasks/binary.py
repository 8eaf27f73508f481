"""binary: GAP -> dropout -> Dense 1 sigmoid `head_sigmoid` for the positive class (a 2-class dataset's
second label, a 1-class dataset's label), BCE/focal, scored by ROC-AUC and F1 at a tuned threshold."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from fashion.core.errors import TrainError
from fashion.model import losses, metrics
from fashion.model.meta_json import BundleMeta
from fashion.model.tasks.base import Validation, Weights, fmt
from fashion.model.tasks.single import SingleLabel


def binary_classes(labels: list[str]) -> list[str]:
    """[negative, positive]: a one-label binary dataset gets `not <label>` as its negative."""
    return list(labels) if len(labels) == 2 else [f"not {labels[0]}", labels[0]]


class Binary(SingleLabel):
    name = "binary"
    decides_by_cut = True
    monitor = "val_auc"
    head, activation = "head_sigmoid", "sigmoid"
    units = 1

    @property
    def classes(self) -> list[str]:
        return binary_classes(self.labels)

    @property
    def positive(self) -> str:
        return self.classes[1]

    def class_indices(self, y: np.ndarray) -> np.ndarray:
        """The positive column (the last label)."""
        return (y[:, -1] > 0.5).astype(int)

    def predicted(self, probs: np.ndarray, cut: float | None = None) -> np.ndarray:
        """Positive when its probability reaches `cut`."""
        return (probs[:, 1] >= cut).astype(int)

    def _columns(self, arr: np.ndarray) -> np.ndarray:
        p = arr.reshape(-1)
        return np.stack([1.0 - p, p], axis=1)

    def dataset_args(self) -> dict[str, Any]:
        return {"column": len(self.labels) - 1}

    def check_dataset(self, train) -> None:
        k = len(self.labels)
        if k not in (1, 2):
            raise TrainError(
                f"--task binary needs a dataset of 1 or 2 classes (the positive one second); "
                f"this one has {k}: use --task multiclass"
            )
        if k == 2:
            self._check_one_label_each(train)

    def check_labels(self, y: np.ndarray, where: str) -> None:
        if y.shape[1] != 1:  # one label: every row is either class
            super().check_labels(y, where)

    def loss(self, cfg, pos_weight: float = 1.0):
        """The sigmoid head's loss (BCE, focal or ASL), positives weighted by `pos_weight`."""
        return losses.HeadLoss(cfg.loss, pos_weight=pos_weight, gamma=cfg.gamma, label_smoothing=cfg.label_smoothing)

    def keras_metrics(self) -> list:
        return [keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")]

    def train_counts(self, train) -> list[int]:
        """A one-label binary dataset counts [negatives, positives]."""
        if len(train.positives) == 1:
            return [train.count - train.positives[0], train.positives[0]]
        return super().train_counts(train)

    def weights(self, cfg, train) -> Weights:
        w = super().weights(cfg, train)
        w.pos = losses.pos_weights(w.counts[1:], train.count, cfg.pos_weight)
        return w

    def _weights_note(self) -> str:
        return f"; positive class: {self.positive} (the second label)"

    def _print_pos_weight(self, cfg, w: Weights) -> None:
        if cfg.pos_weight != "none":
            print(f"  positive weight inside the loss: {w.pos[0]:.2f}")

    def _epoch_scores(self, y, probs, s: dict, logs: dict) -> str:
        b = metrics.binary_scores(y, probs[:, 1])
        logs["val_auc"], logs["val_ap"] = (float("nan") if b[k] is None else b[k] for k in ("roc_auc", "ap"))
        return f"val AUC {logs['val_auc']:.3f}  AP {logs['val_ap']:.3f}  accuracy@0.5 {s['accuracy']:.3f}"

    def _tuned(self, y, probs) -> tuple[list[float], dict, dict]:
        """The positive class's threshold, tuned for its F1."""
        p = probs[:, 1]
        t = metrics.tune_binary_threshold(y, p)
        s = metrics.single_label_summary(y, probs, self.classes, self.top, pred=(p >= t).astype(int))
        at_half = metrics.single_label_summary(y, probs, self.classes, self.top, pred=(p >= 0.5).astype(int))
        extra = {
            "threshold": t,
            "accuracy_at_0.5": at_half["accuracy"],
            **metrics.binary_scores(y, p),
            "f1_positive": s["per_class"][self.positive]["f1"],
        }
        return [t], s, extra

    def _model_line(self, s: dict, extra: dict, thresholds: list[float]) -> str:
        pos = self.positive
        return (
            f"  model     ROC-AUC {fmt(extra['roc_auc'])}  accuracy {s['accuracy']:.3f} at threshold "
            f"{thresholds[0]:.2f} (tuned here for F1 of '{pos}'), {extra['accuracy_at_0.5']:.3f} at 0.5  "
            f"F1({pos}) {extra['f1_positive']:.3f}"
        )

    def bundle_meta(self, run: dict[str, Any], w: Weights, v: Validation) -> BundleMeta:
        return {**super().bundle_meta(run, w, v), "positive_class": self.positive, "pos_weight": float(w.pos[0])}

    def _cut(self, thresholds: np.ndarray, threshold: float | None) -> float:
        """`threshold`, else the bundle's tuned one, else 0.5."""
        if threshold is not None:
            return threshold
        return float(thresholds[-1]) if len(thresholds) else 0.5

    def _evaluate_extra(self, y_idx, scores, cut, thresholds, threshold) -> dict[str, Any]:
        p = scores[:, 1]
        return {
            "positive_class": self.positive,
            "threshold": float(cut),
            "thresholds": "fixed" if threshold is not None else "tuned" if len(thresholds) else "0.5",
            "accuracy_at_0.5": float(((p >= 0.5).astype(int) == y_idx).mean()) if len(p) else 0.0,
            **metrics.binary_scores(y_idx, p),
        }

    def _summary_model_line(self, result: dict[str, Any]) -> str:
        pos = result["positive_class"]
        return (
            f"  model     accuracy {result['accuracy']:.3f} at threshold {result['threshold']:.2f} "
            f"({result['thresholds']}), {result['accuracy_at_0.5']:.3f} at 0.5  ROC-AUC {fmt(result['roc_auc'])}  "
            f"F1({pos}) {result['per_class'][pos]['f1']:.3f}  macro-F1 {result['f1_macro']:.3f}"
        )

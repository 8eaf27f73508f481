"""The Task interface: everything that differs between multilabel, multiclass and binary.

A task object is bound to a dataset's labels (`get_task(name, labels)`) and knows its heads, the
columns of its probabilities, the loss and weights it trains with, how an epoch and a finished run
are scored, and what evaluate.py reports. Training, evaluation, prediction and the model ask it
instead of testing the task's name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fashion.model.meta_json import BundleMeta


@dataclass(frozen=True)
class HeadSpec:
    """How each multi-label head pools its feature map into one logit.

    Args:
      kind: "gap" (global average pooling, then Dense 1: the original design), "csra" (the average
        plus `lam` times an attention-weighted score, Zhu & Wu, ICCV 2021) or "mldecoder" (one query per
        label attending to the feature map's locations, Ridnik et al., WACV 2023). Defaults to "gap".
      lam: CSRA's λ, the weight of the attention term. Defaults to 0.1 (the paper's single-head setting).
      temperature: CSRA's T; 99 or more is max pooling. Defaults to 1.0.
      dim: ML-Decoder's token and query width. Defaults to 256.

    >>> HeadSpec("csra").lam
    0.1
    """

    kind: str = "gap"
    lam: float = 0.1
    temperature: float = 1.0
    dim: int = 256


GAP = HeadSpec()  # the original design's pooling
HEAD_PREFIX = "head_"  # every head layer's name starts with it; the rest of the model is trunk
INPUT_NOTE = "uint8 RGB, resized/cropped square; the model normalises inside"
RUN_FIELDS = ("dataset", "config", "command", "created", "cluster")  # meta.json's closing fields, every task's


def slug(label: str) -> str:
    """A layer-name-safe form of a label: `smart casual` -> `smart_casual`."""
    s = re.sub(r"[^0-9a-zA-Z_]+", "_", label.strip()).strip("_").lower()
    return s or "label"


def head_names(labels: Sequence[str]) -> list[str]:
    """`head_<slug>` per label; two labels that slug alike still get distinct, stable names."""
    names, seen = [], set()
    for i, label in enumerate(labels):
        n = f"{HEAD_PREFIX}{slug(label)}"
        if n in seen:
            n = f"{n}_{i}"
        seen.add(n)
        names.append(n)
    return names


def top_k_for(k: int) -> int:
    """The k of top-k accuracy: 5 (as fastai and Caffe report), fewer on small class sets so it is not
    trivially 1 (top-2 of 3 classes; 1 = accuracy for 2)."""
    return max(1, min(5, k - 1))


@dataclass
class Weights:
    """Loss weights from the training counts.

    head: per head (multilabel, `--head-weights`) or per class (single-label Keras `class_weight`);
    pos: positives against negatives inside each sigmoid head (`--pos-weight`);
    counts: training positives per label (multilabel) or images per class (single-label).
    """

    head: np.ndarray
    pos: np.ndarray
    counts: list[int]


@dataclass
class Validation:
    """A finished run on the validation split: the bundle's thresholds, meta.json's `validation` block and
    the console lines under `validation (N images):`."""

    thresholds: list[float]
    metrics: dict[str, Any]
    lines: list[str]


class Task:
    """Base class; see MultiLabel, MultiClass and Binary. `heads` may be given (a bundle's meta.json)."""

    name = ""
    single_label = False  # one class per image (detect prints class + top-k, not a label list)
    fixed_threshold = True  # detect --threshold applies (multiclass: the most probable class wins)
    decides_by_cut = False  # the label is p(positive) >= a tuned cut (binary)
    monitor = ""  # the validation value that picks best.keras (and drives --schedule plateau)
    losses_note = ""  # how the top-losses figure titles its images

    def __init__(self, labels: Sequence[str] = (), heads: Sequence[str] | None = None):
        self.labels = list(labels)
        self.heads = list(heads) if heads is not None else self.head_names()

    def head_names(self) -> list[str]:
        raise NotImplementedError

    @property
    def classes(self) -> list[str]:
        """Names of the probability columns (`to_probs`)."""
        return list(self.labels)

    @property
    def top(self) -> int:
        return top_k_for(len(self.classes))

    # ------------------------------------------------------------------ model and probabilities

    def model_name(self, backbone: str) -> str:
        return f"fashion_{backbone}_{self.name}"

    def build_heads(self, features, dropout: float, head: HeadSpec = GAP):
        """The head layers on the trunk's feature map; returns the model's outputs. `head` other than GAP:
        multilabel only."""
        raise NotImplementedError

    def to_probs(self, out) -> np.ndarray:
        """A model's outputs (Keras or TFLite) as (N, columns) probabilities."""
        raise NotImplementedError

    def predict(self, model, ds) -> np.ndarray:
        from fashion.core.cluster import predict  # model.predict, or each process's own pass when there are several

        return self.to_probs(predict(model, ds))

    def dataset_args(self) -> dict[str, Any]:
        """pipeline.make_dataset's target arguments: labels shaped as the model's outputs."""
        return {}

    # ------------------------------------------------------------------ training

    def check_dataset(self, train) -> None:
        """Raise TrainError when the dataset (manifest labels, training split) does not fit the task."""

    def check_config(self, cfg) -> None:
        """Raise before anything is written when an option does not fit the task."""

    def check_labels(self, y: np.ndarray, where: str) -> None:
        """Raise when label rows do not fit the task."""

    def weights(self, cfg, train) -> Weights:
        raise NotImplementedError

    def print_weights(self, cfg, train, w: Weights) -> None:
        raise NotImplementedError

    def compile_args(self, cfg, w: Weights) -> dict[str, Any]:
        """model.compile's loss (and loss weights, metrics) for this task."""
        raise NotImplementedError

    def fit_args(self, cfg, w: Weights) -> dict[str, Any]:
        """Extra model.fit arguments (class weights)."""
        return {}

    def epoch_logs(self, y_val: np.ndarray, probs: np.ndarray) -> tuple[dict[str, float], str]:
        """Validation scores after an epoch: Keras log entries, and their part of the epoch line."""
        raise NotImplementedError

    def validate(self, probs: np.ndarray, y_val: np.ndarray, train, w: Weights) -> Validation:
        """Thresholds tuned on the validation split, its scores beside the baselines, the summary."""
        raise NotImplementedError

    def bundle_meta(self, run: dict[str, Any], w: Weights, v: Validation) -> BundleMeta:
        """meta.json: this task's fields around `run`'s (input_size, backbone, alpha, RUN_FIELDS)."""
        raise NotImplementedError

    def common_meta(self, run: dict[str, Any], v: Validation) -> BundleMeta:
        """meta.json's fields every task writes; `bundle_meta` adds the task's own and the run's."""
        return {
            "labels": self.labels,
            "heads": self.heads,
            "task": self.name,
            "input_size": run["input_size"],
            "input": INPUT_NOTE,
            "backbone": run["backbone"],
            "thresholds": v.thresholds,
            "validation": v.metrics,
        }

    # ------------------------------------------------------------------ evaluation

    def evaluate(
        self,
        y: np.ndarray,
        scores: np.ndarray,
        train,
        split: str,
        thresholds: np.ndarray,
        threshold: float | None = None,
        k: int | None = None,
    ) -> dict[str, Any]:
        """metrics.json for a split: labels `y`, probabilities `scores`, the bundle's `thresholds`
        (`threshold` overrides them), top-`k`; baselines come from the `train` split."""
        raise NotImplementedError

    def summary_lines(self, result: dict[str, Any]) -> list[str]:
        """evaluate.py's console summary of `result`."""
        raise NotImplementedError

    def image_losses(self, y: np.ndarray, scores: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def row_labels(
        self, y: np.ndarray, scores: np.ndarray, result: dict[str, Any]
    ) -> tuple[list[str], list[str], np.ndarray]:
        """Per image: true labels, predicted labels (';'-joined) and the predicted probability."""
        raise NotImplementedError

    def loss_caption(self, y_row: np.ndarray, p_row: np.ndarray, predicted: str) -> str:
        """The title lines under an image's id in the top-losses figure."""
        raise NotImplementedError

    def write_plots(self, out: Path, y: np.ndarray, scores: np.ndarray, result: dict[str, Any]) -> list[Path]:
        """The task's own report figures (and tables) in `out`; returns what it wrote."""
        raise NotImplementedError

    def html(self, result: dict[str, Any]) -> tuple[str, str]:
        """index.html's heading and the tables below the verdict."""
        raise NotImplementedError


def run_fields(run: dict[str, Any]) -> BundleMeta:
    fields: Any = {k: run[k] for k in RUN_FIELDS if k in run}  # (RUN_FIELDS are BundleMeta's run keys)
    return fields  # "cluster": only when trained on several processes


def fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"

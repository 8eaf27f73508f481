"""Single-label tasks (multiclass, binary): one head over all classes, Keras `class_weight` from the
training counts, scored by accuracy, top-k accuracy and macro-F1 beside the majority class and class
priors; evaluate.py adds the confusion matrix and the most confused pairs."""

from __future__ import annotations

import html as html_lib
from pathlib import Path
from typing import Any

import keras
import numpy as np

from fashion.core import fileio
from fashion.core.errors import TrainError
from fashion.model import losses, metrics, plots
from fashion.model.meta_json import BundleMeta
from fashion.model.tasks.base import GAP, HeadSpec, Task, Validation, Weights, run_fields

VALIDATION_KEYS = (
    "accuracy",
    "top_k",
    "top_k_accuracy",
    "f1_macro",
    "log_loss",
    "per_class",
    "confusion",
    "most_confused",
)


class SingleLabel(Task):
    """What multiclass and binary share; subclasses say how label rows become class indices, what the
    probability columns are, their loss and their own scores."""

    single_label = True

    head, activation = "", ""  # the one output layer's name and activation
    losses_note = "(true class and its probability; predicted class)"

    def head_names(self) -> list[str]:
        return [self.head]

    @property
    def units(self) -> int:
        return len(self.labels)

    def class_indices(self, y: np.ndarray) -> np.ndarray:
        """Label rows -> class indices."""
        raise NotImplementedError

    def predicted(self, probs: np.ndarray, cut: float | None = None) -> np.ndarray:
        """Predicted class indices: the most probable class."""
        return np.argmax(probs, axis=1)

    # ------------------------------------------------------------------ model and probabilities

    def build_heads(self, features, dropout: float, head: HeadSpec = GAP):
        if head.kind != "gap":
            raise TrainError(f"--head {head.kind} is for multi-label heads; the {self.name} task pools with gap")
        h = keras.layers.GlobalAveragePooling2D(name="head_pool")(features)
        if dropout:
            h = keras.layers.Dropout(dropout, name="head_drop")(h)
        # float32 output even under mixed precision: softmax/sigmoid + log in the loss need the range
        return keras.layers.Dense(self.units, activation=self.activation, dtype="float32", name=self.heads[0])(h)

    def to_probs(self, out) -> np.ndarray:
        if isinstance(out, dict):  # a TFLite runner names its one output itself
            out = out[self.heads[0]] if self.heads[0] in out else next(iter(out.values()))
        return self._columns(np.asarray(out, float))

    def _columns(self, arr: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # ------------------------------------------------------------------ training

    def check_config(self, cfg) -> None:
        self.loss(cfg)  # a loss the head cannot take stops here, before anything is written

    def check_labels(self, y: np.ndarray, where: str) -> None:
        bad = int((y.sum(1) != 1).sum())
        if bad:
            raise TrainError(
                f"--task {self.name}: {bad} record(s) of {where} have other than exactly one label "
                f"(use --task multilabel)"
            )

    def _check_one_label_each(self, train) -> None:
        if sum(train.positives) != train.count:
            raise TrainError(
                f"--task {self.name}: the training split has {sum(train.positives)} labels on "
                f"{train.count} images, not exactly one each: this is a multi-label dataset "
                f"(use --task multilabel)"
            )

    def loss(self, cfg, pos_weight: float = 1.0):
        raise NotImplementedError

    def keras_metrics(self) -> list:
        raise NotImplementedError

    def train_counts(self, train) -> list[int]:
        """Training images per class."""
        return [int(c) for c in train.positives]

    def weights(self, cfg, train) -> Weights:
        """Class weights (Keras `class_weight`) instead of head weights."""
        counts = self.train_counts(train)
        return Weights(losses.class_weights(counts, cfg.class_weights), np.ones(1), counts)

    def print_weights(self, cfg, train, w: Weights) -> None:
        print(
            f"task: {self.name}; training images: {train.count}; class weights: {cfg.class_weights}; loss: "
            f"{self._loss_name(cfg)}{self._weights_note()}"
        )
        width = max(len(c) for c in self.classes)
        print(f"  {'class':<{width}} {'images':>7} {'weight':>8}")
        for c, k, x in zip(self.classes, w.counts, w.head):
            print(f"  {c:<{width}} {k:7d} {x:8.3f}")
        self._print_pos_weight(cfg, w)
        empty = [c for c, k in zip(self.classes, w.counts) if not k]
        if empty:
            print(f"warning: no training image of {', '.join(empty)}: the model cannot learn those classes")

    def _loss_name(self, cfg) -> str:
        return cfg.loss

    def _weights_note(self) -> str:
        return ""

    def _print_pos_weight(self, cfg, w: Weights) -> None:
        pass

    def compile_args(self, cfg, w: Weights) -> dict[str, Any]:
        return {"loss": self.loss(cfg, float(w.pos[0])), "metrics": self.keras_metrics()}

    def fit_args(self, cfg, w: Weights) -> dict[str, Any]:
        return {"class_weight": {c: float(x) for c, x in enumerate(w.head)}} if cfg.class_weights != "none" else {}

    def epoch_logs(self, y_val: np.ndarray, probs: np.ndarray) -> tuple[dict[str, float], str]:
        y = self.class_indices(y_val)
        s = metrics.single_label_summary(y, probs, self.classes, self.top)
        logs = {"val_accuracy": s["accuracy"], "val_f1_macro": s["f1_macro"]}
        shown = self._epoch_scores(y, probs, s, logs)
        return logs, f"{shown}  macro-F1 {s['f1_macro']:.3f}"

    def _epoch_scores(self, y, probs, s: dict, logs: dict) -> str:
        """Adds the task's own scores to `logs`; returns how the epoch line shows them."""
        raise NotImplementedError

    def validate(self, probs: np.ndarray, y_val: np.ndarray, train, w: Weights) -> Validation:
        y = self.class_indices(y_val)
        thresholds, s, extra = self._tuned(y, probs)
        base = metrics.majority_baseline(w.counts, y, self.classes, self.top)
        scores = {**{k: s[k] for k in VALIDATION_KEYS}, **extra, "baselines": base}
        lines = [
            f"\nvalidation ({len(y)} images):",
            self._model_line(s, extra, thresholds),
            *self._baseline_lines(base),
        ]
        if s["most_confused"]:
            lines.append(
                "  most confused (true -> predicted): "
                + ", ".join(f"{a} -> {b} {c}" for a, b, c in s["most_confused"][:5])
            )
        gain = s["accuracy"] - base["majority"]["accuracy"]
        if gain <= 0:
            lines.append(f"warning: the model does not beat the majority class on accuracy ({gain:+.3f})")
        return Validation(thresholds, scores, lines)

    def _tuned(self, y, probs) -> tuple[list[float], dict, dict]:
        """(thresholds, summary, extra validation fields)."""
        return [], metrics.single_label_summary(y, probs, self.classes, self.top), {}

    def _model_line(self, s: dict, extra: dict, thresholds: list[float]) -> str:
        raise NotImplementedError

    def _baseline_lines(self, base: dict) -> list[str]:
        top = self.top
        return [
            f"  majority  accuracy {base['majority']['accuracy']:.3f} (always '{base['majority']['class']}')  "
            f"macro-F1 {base['majority']['f1_macro']:.3f}",
            f"  priors    top-{top} {base['prior']['top_k_accuracy']:.3f}  log loss {base['prior']['log_loss']:.3f}",
        ]

    def bundle_meta(self, run: dict[str, Any], w: Weights, v: Validation) -> BundleMeta:
        return {
            **self.common_meta(run, v),
            "classes": self.classes,
            "alpha": run["alpha"],
            "top_k": self.top,
            "class_weights": [float(x) for x in w.head],
            **run_fields(run),
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
        """Accuracy, top-k, per-class precision/recall/F1, confusion, most confused, beside the majority class
        and class priors (counted on the training split)."""
        k = k or self.top
        y_idx = self.class_indices(y)
        cut = self._cut(thresholds, threshold)
        s = metrics.single_label_summary(y_idx, scores, self.classes, k, pred=self.predicted(scores, cut))
        base = metrics.majority_baseline(self.train_counts(train), y_idx, self.classes, k)
        result: dict[str, Any] = {
            "task": self.name,
            "split": split,
            "classes": self.classes,
            **s,
            "baselines": base,
            **self._evaluate_extra(y_idx, scores, cut, thresholds, threshold),
        }
        gain = s["accuracy"] - base["majority"]["accuracy"]
        majority = base["majority"]["class"]
        result["verdict"] = (
            f"the model beats the majority class ('{majority}') on accuracy by {gain:+.3f}"
            if gain > 0
            else f"warning: the model does not beat the majority class ('{majority}') on accuracy ({gain:+.3f})"
        )
        return result

    def _cut(self, thresholds: np.ndarray, threshold: float | None) -> float | None:
        return None

    def _evaluate_extra(self, y_idx, scores, cut, thresholds, threshold) -> dict[str, Any]:
        return {}

    def summary_lines(self, result: dict[str, Any]) -> list[str]:
        b, k = result["baselines"], result["top_k"]
        width = max(len(c) for c in result["per_class"])
        lines = [
            f"{result['split']}: {result['images']} images ({result['task']})",
            self._summary_model_line(result),
            f"  majority  accuracy {b['majority']['accuracy']:.3f} (always '{b['majority']['class']}')  "
            f"macro-F1 {b['majority']['f1_macro']:.3f}",
            f"  priors    top-{k} {b['prior']['top_k_accuracy']:.3f}  log loss {b['prior']['log_loss']:.3f}",
            f"  {'class':<{width}} {'images':>6} {'precision':>9} {'recall':>7} {'F1':>6}",
        ]
        lines += [
            f"  {c:<{width}} {v['support']:6d} {v['precision']:9.3f} {v['recall']:7.3f} {v['f1']:6.3f}"
            for c, v in result["per_class"].items()
        ]
        if result["most_confused"]:
            lines.append(
                "  most confused (true -> predicted): "
                + ", ".join(f"{a} -> {p} {n}" for a, p, n in result["most_confused"][:10])
            )
        return [*lines, result["verdict"]]

    def _summary_model_line(self, result: dict[str, Any]) -> str:
        raise NotImplementedError

    def image_losses(self, y: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Cross-entropy of the true class."""
        idx = self.class_indices(y)
        return -np.log(np.clip(scores[np.arange(len(idx)), idx], 1e-7, 1.0))

    def row_labels(self, y, scores, result):
        """True and predicted class; score: the predicted class's probability."""
        t, pr = self.class_indices(y), self.predicted(scores, result.get("threshold"))
        names = self.classes
        return [names[i] for i in t], [names[i] for i in pr], scores[np.arange(len(pr)), pr]

    def loss_caption(self, y_row, p_row, predicted: str) -> str:
        t = self.class_indices(y_row[None])[0]
        return f"true: {self.classes[t]} {p_row[t]:.2f}\npredicted: {predicted} {p_row.max():.2f}"

    def write_plots(self, out: Path, y, scores, result) -> list[Path]:
        """confusion.png (counts, true classes down, predicted across), per_class.png, confusion.csv."""
        classes, cm = self.classes, np.array(result["confusion"])
        title = f"confusion matrix — accuracy {result['accuracy']:.3f} ({result['correct']}/{result['images']})"
        written = [plots.save(plots.confusion(cm, classes, title), out / "confusion.png")]
        fileio.atomic_write_text(
            out / "confusion.csv",
            fileio.csv_text(["true \\ predicted", *classes], ([c, *row] for c, row in zip(classes, cm.tolist()))),
        )
        written.append(
            plots.save(plots.per_class(result["per_class"], classes, result["f1_macro"]), out / "per_class.png")
        )
        return [*written, out / "confusion.csv"]

    def html(self, result: dict[str, Any]) -> tuple[str, str]:
        b, k, esc = result["baselines"], result["top_k"], html_lib.escape
        rows = "".join(
            f"<tr><td>{esc(c)}</td><td>{v['support']}</td><td>{v['predicted']}</td><td>{v['precision']:.3f}</td>"
            f"<td>{v['recall']:.3f}</td><td>{v['f1']:.3f}</td></tr>"
            for c, v in result["per_class"].items()
        )
        confused = "".join(f"<li>{esc(a)} &rarr; {esc(p)}: {n}</li>" for a, p, n in result["most_confused"][:10])
        tables = f"""<table><tr><th></th><th>accuracy</th><th>top-{k}</th><th>macro-F1</th><th>log loss</th></tr>
<tr><td>model</td><td>{result["accuracy"]:.3f}</td><td>{result["top_k_accuracy"]:.3f}</td>
<td>{result["f1_macro"]:.3f}</td><td>{result["log_loss"]:.3f}</td></tr>
<tr><td>majority ({esc(b["majority"]["class"])})</td><td>{b["majority"]["accuracy"]:.3f}</td><td></td>
<td>{b["majority"]["f1_macro"]:.3f}</td><td></td></tr>
<tr><td>class priors</td><td></td><td>{b["prior"]["top_k_accuracy"]:.3f}</td><td></td>
<td>{b["prior"]["log_loss"]:.3f}</td></tr></table>
<h2>Most confused (true &rarr; predicted)</h2><ul>{confused or "<li>none</li>"}</ul>
<h2>Per class</h2><table><tr><th>class</th><th>images</th><th>predicted</th><th>precision</th><th>recall</th>
<th>F1</th></tr>{rows}</table>"""
        return f"Evaluation ({result['task']}): {result['split']} split, {result['images']} images", tables

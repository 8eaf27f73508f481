"""multilabel, the original design: one small sigmoid head per label, weighted BCE/focal/ASL per head,
scored by mAP and sample-F2 at per-class thresholds tuned on validation data."""

from __future__ import annotations

import html as html_lib
from pathlib import Path
from typing import Any

import keras
import numpy as np

from fashion.model import losses, metrics, plots
from fashion.model.layers import CSRA, ClassQueries, GroupLogits
from fashion.model.meta_json import BundleMeta
from fashion.model.tasks.base import GAP, HEAD_PREFIX, HeadSpec, Task, Validation, Weights, fmt, head_names, run_fields

HEAD_FILTERS = 64


def _train_labels(train, n: int) -> np.ndarray:
    """The training split's labels, read from its records."""
    from fashion.data import pipeline  # tf.data, imported here: fashion.model builds without TensorFlow (the GPU bench)

    return pipeline.labels_of(train.files, n)


class MultiLabel(Task):
    name = "multilabel"
    monitor = "val_mAP"
    losses_note = "(true labels; worst two probabilities)"

    def head_names(self) -> list[str]:
        return head_names(self.labels)

    # ------------------------------------------------------------------ model and probabilities

    def model_name(self, backbone: str) -> str:
        return f"fashion_{backbone}"

    def build_heads(self, features, dropout: float, head: HeadSpec = GAP) -> dict:
        """Per label: Conv2D 3x3 (64, ReLU) -> global average pooling -> Dense 1 sigmoid, `head_<label>`;
        `head.kind` "csra": the pooling and the Dense are one CSRA layer, then the sigmoid; "mldecoder": one
        ML-Decoder shared by the labels (`_ml_decoder`), each label still its own named output."""
        if head.kind == "mldecoder":
            return self._ml_decoder(features, dropout, head.dim)
        outputs = {}
        for name in self.heads:
            h = keras.layers.Conv2D(HEAD_FILTERS, 3, padding="same", activation="relu", name=f"{name}_conv")(features)
            # float32 output even under mixed precision: sigmoid + log in the loss need the range
            if head.kind == "csra":
                if dropout:
                    h = keras.layers.Dropout(dropout, name=f"{name}_drop")(h)
                logit = CSRA(head.lam, head.temperature, dtype="float32", name=f"{name}_csra")(h)
                outputs[name] = keras.layers.Activation("sigmoid", dtype="float32", name=name)(logit)
                continue
            h = keras.layers.GlobalAveragePooling2D(name=f"{name}_pool")(h)
            if dropout:
                h = keras.layers.Dropout(dropout, name=f"{name}_drop")(h)
            outputs[name] = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name=name)(h)
        return outputs

    def _ml_decoder(self, features, dropout: float, dim: int) -> dict:
        """ML-Decoder (Ridnik et al., WACV 2023): the feature map's locations as `dim`-tokens (Dense + ReLU),
        one learned query per label attending to them (Keras' MultiHeadAttention, 8 heads; no self-attention
        between the queries, as the paper drops it), add & norm, a feed-forward block, add & norm, then one
        logit per label from its own query (group fully-connected). Its layers are named `head__mld_*` (a
        label's slug never starts with "_"), so they train with the heads group."""
        L, p = keras.layers, f"{HEAD_PREFIX}_mld"
        t = L.Reshape((-1, features.shape[-1]), name=f"{p}_locations")(features)
        t = L.Dense(dim, activation="relu", name=f"{p}_tokens")(t)
        if dropout:
            t = L.Dropout(dropout, name=f"{p}_drop")(t)
        q = ClassQueries(len(self.heads), dim, name=f"{p}_queries")(t)
        a = L.MultiHeadAttention(8, dim // 8, dropout=0.1, name=f"{p}_attention")(q, t)
        q = L.LayerNormalization(name=f"{p}_norm1")(L.Add(name=f"{p}_add1")([q, a]))
        f = L.Dense(4 * dim, activation="relu", name=f"{p}_ffn1")(q)
        f = L.Dense(dim, name=f"{p}_ffn2")(L.Dropout(0.1, name=f"{p}_ffn_drop")(f))
        q = L.LayerNormalization(name=f"{p}_norm2")(L.Add(name=f"{p}_add2")([q, f]))
        logits = GroupLogits(dtype="float32", name=f"{p}_logits")(q)
        # float32 output even under mixed precision: sigmoid + log in the loss need the range
        return {nm: L.Activation("sigmoid", dtype="float32", name=nm)(lg) for nm, lg in zip(self.heads, logits)}

    def to_probs(self, out) -> np.ndarray:
        """The model's {head: (N, 1)} outputs as one (N, labels) array in label order."""
        return np.concatenate([np.asarray(out[h]).reshape(-1, 1) for h in self.heads], axis=1)

    def dataset_args(self) -> dict[str, Any]:
        return {"output_names": self.heads}

    # ------------------------------------------------------------------ training

    def weights(self, cfg, train) -> Weights:
        n = train.count
        return Weights(
            losses.head_weights(train.positives, n, cfg.head_weights, cfg.beta),
            losses.pos_weights(train.positives, n, cfg.pos_weight),
            list(train.positives),
        )

    def print_weights(self, cfg, train, w: Weights) -> None:
        print(
            f"training images: {train.count}; head weights: {cfg.head_weights}; positive weights: "
            f"{cfg.pos_weight}; loss: {cfg.loss}"
        )
        width = max(len(lb) for lb in self.labels)
        print(f"  {'class':<{width}} {'pos':>7} {'head w':>8} {'pos w':>7}")
        for lb, p, h, q in zip(self.labels, w.counts, w.head, w.pos):
            print(f"  {lb:<{width}} {p:7d} {h:8.3f} {q:7.2f}")
        empty = [lb for lb, p in zip(self.labels, w.counts) if not p]
        if empty:
            print(
                f"warning: no training positive for {', '.join(empty)}: those heads learn to say no, and their "
                f"AP is left out of mAP"
            )

    def compile_args(self, cfg, w: Weights) -> dict[str, Any]:
        """One loss per head, weighted by the head weights, positives weighted inside it."""
        return {
            "loss": {
                nm: losses.HeadLoss(
                    cfg.loss, pos_weight=float(w.pos[k]), gamma=cfg.gamma, label_smoothing=cfg.label_smoothing
                )
                for k, nm in enumerate(self.heads)
            },
            "loss_weights": {nm: float(w.head[k]) for k, nm in enumerate(self.heads)},
        }

    def epoch_logs(self, y_val: np.ndarray, probs: np.ndarray) -> tuple[dict[str, float], str]:
        """AP per head, mAP, sample-F2 and macro-F1 at 0.5."""
        s = metrics.summary(y_val, probs)
        logs = {"val_mAP": s["mAP"], "val_f2_samples": s["f2_samples"], "val_f1_macro": s["f1_macro"]}
        for name, ap in zip(self.heads, s["ap"]):
            logs[f"val_ap_{name}"] = float("nan") if ap is None or np.isnan(ap) else ap
        return logs, (f"val mAP {s['mAP']:.3f}  sample-F2@0.5 {s['f2_samples']:.3f}  macro-F1 {s['f1_macro']:.3f}")

    def validate(self, probs: np.ndarray, y_val: np.ndarray, train, w: Weights) -> Validation:
        """Per-class thresholds maximising sample-F2 (from the best constant label set of the training split);
        the honest figure is sample-F2 with thresholds tuned on the other half (`crossfit`)."""
        y_train = _train_labels(train, len(self.labels))
        thresholds = metrics.tune_thresholds(y_val, probs, y_train=y_train)
        at_half = metrics.summary(y_val, probs, 0.5)
        tuned = metrics.summary(y_val, probs, thresholds)
        crossfit = metrics.crossfit_f2(y_val, probs, y_train=y_train)
        base = metrics.baselines(y_train, y_val)
        const, prior = base["constant"], base["prior"]
        scores = {
            "mAP": tuned["mAP"],
            "f2_samples_tuned": tuned["f2_samples"],
            "f2_samples_tuned_crossfit": crossfit,
            "f2_samples_at_0.5": at_half["f2_samples"],
            "f1_macro_tuned": tuned["f1_macro"],
            "ap": dict(zip(self.labels, at_half["ap"])),
            "baselines": base,
        }
        lines = [
            f"\nvalidation ({len(y_val)} images):",
            f"  model     mAP {tuned['mAP']:.3f}   sample-F2 {at_half['f2_samples']:.3f} at 0.5, "
            f"{tuned['f2_samples']:.3f} with thresholds tuned here ({crossfit:.3f} tuned on the other half, "
            f"the honest figure)   macro-F1 {tuned['f1_macro']:.3f}",
            f"  constant  sample-F2 {const['f2_samples']:.3f} (always {[self.labels[i] for i in const['labels']]})",
            f"  priors    mAP {prior['mAP']:.3f}",
        ]
        gain = crossfit - const["f2_samples"]
        if gain <= 0:
            lines.append(f"warning: the model does not beat the constant predictor on sample-F2 ({gain:+.3f})")
        return Validation([float(t) for t in thresholds], scores, lines)

    def bundle_meta(self, run: dict[str, Any], w: Weights, v: Validation) -> BundleMeta:
        return {
            **self.common_meta(run, v),
            "head_weights": [float(x) for x in w.head],
            "pos_weights": [float(x) for x in w.pos],
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
        """mAP, sample-F2 (bundle's thresholds or `threshold`, and 0.5), macro/micro-F1, per class AP,
        precision, recall, ROC-AUC, beside the constant label set and class priors."""
        n = len(self.labels)
        th = np.full(n, threshold) if threshold is not None else thresholds
        pred = scores >= th
        ap = metrics.average_precision(y, scores)
        has = y.any(0)
        _, _, f1 = metrics.f1_per_class(y, pred)
        tp, pp, tt = (y.astype(bool) & pred).sum(), pred.sum(), y.sum()
        y_train = _train_labels(train, n)
        base = metrics.baselines(y_train, y)
        result = {
            "split": split,
            "images": int(len(y)),
            "thresholds": "fixed" if threshold is not None else "tuned",
            "mAP": metrics.mean_ap(ap),
            "f2_samples": metrics.fbeta_samples(y, pred),
            "f2_samples_at_0.5": metrics.fbeta_samples(y, scores >= 0.5),
            "f1_macro": float(f1[has].mean()) if has.any() else 0.0,
            "f1_micro": float(2 * tp / (pp + tt) if pp + tt else 0.0),
            "per_class": self._per_class(y, scores, pred, ap, th),
            "baselines": self._baselines(y, base),
        }
        f2, how = result["f2_samples"], ""
        if threshold is None and split == "val":
            # the bundle's thresholds were tuned on this split: judge by thresholds tuned on its other half
            f2 = result["f2_samples_tuned_crossfit"] = metrics.crossfit_f2(y, scores, y_train=y_train)
            how = "; judged with thresholds tuned on the other half of this split (the bundle's were tuned on it)"
        gain = f2 - base["constant"]["f2_samples"]
        result["verdict"] = (
            f"the model beats the constant predictor on sample-F2 by {gain:+.3f}{how}"
            if gain > 0
            else f"warning: the model does not beat the constant predictor on sample-F2: {gain:+.3f}{how}"
        )
        return result

    def _per_class(self, y, scores, pred, ap, th) -> dict[str, dict]:
        precision, recall, _ = metrics.f1_per_class(y, pred)
        auc = [metrics.roc_auc(y[:, c], scores[:, c]) for c in range(len(self.labels))]
        return {
            lb: {
                "ap": None if np.isnan(ap[c]) else float(ap[c]),
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "threshold": float(th[c]),
                "positives": int(y[:, c].sum()),
                "roc_auc": auc[c],
            }
            for c, lb in enumerate(self.labels)
        }

    def _baselines(self, y, base) -> dict[str, dict]:
        const, has = base["constant"], y.any(0)
        cpred = np.broadcast_to(np.isin(np.arange(len(self.labels)), const["labels"]), y.shape)
        _, _, cf1 = metrics.f1_per_class(y, cpred)
        return {
            "constant": {
                "labels": [self.labels[c] for c in const["labels"]],
                "f2_samples": const["f2_samples"],
                "f1_macro": float(cf1[has].mean()) if has.any() else 0.0,
                "mAP": None,
            },
            "prior": {"mAP": base["prior"]["mAP"], "f2_samples": None},
        }

    def summary_lines(self, result: dict[str, Any]) -> list[str]:
        b = result["baselines"]
        lines = [
            f"{result['split']}: {result['images']} images",
            f"  model     mAP {result['mAP']:.3f}  sample-F2 {result['f2_samples']:.3f} ({result['thresholds']} "
            f"thresholds), {result['f2_samples_at_0.5']:.3f} at 0.5  macro-F1 {result['f1_macro']:.3f}  "
            f"micro-F1 {result['f1_micro']:.3f}",
        ]
        if "f2_samples_tuned_crossfit" in result:
            lines.append(
                f"            sample-F2 {result['f2_samples_tuned_crossfit']:.3f} with thresholds tuned on "
                f"the other half of the split (the honest figure: the bundle's were tuned on this split)"
            )
        return [
            *lines,
            f"  constant  sample-F2 {b['constant']['f2_samples']:.3f}  ({', '.join(b['constant']['labels'])})",
            f"  priors    mAP {b['prior']['mAP']:.3f}",
            result["verdict"],
        ]

    def image_losses(self, y: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Binary cross-entropy summed over the labels."""
        p = np.clip(scores, 1e-7, 1 - 1e-7)
        return -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum(1)

    def row_labels(self, y, scores, result):
        """Predicted: the labels past their threshold; score: the most probable label's probability."""
        th = np.array([result["per_class"][lb]["threshold"] for lb in self.labels])
        true = [";".join(lb for lb, v in zip(self.labels, row) if v) for row in y]
        pred = [";".join(lb for lb, s_, t_ in zip(self.labels, row, th) if s_ >= t_) for row in scores]
        return true, pred, scores.max(1) if scores.size else np.zeros(len(y))

    def loss_caption(self, y_row, p_row, predicted: str) -> str:
        true = [lb for lb, v in zip(self.labels, y_row) if v]
        wrong = sorted(range(len(self.labels)), key=lambda c: -abs(y_row[c] - p_row[c]))[:2]
        return f"true: {', '.join(true) or '-'}\n" + ", ".join(f"{self.labels[c]} {p_row[c]:.2f}" for c in wrong)

    def write_plots(self, out: Path, y, scores, result) -> list[Path]:
        """pr_curves.png, ap_per_class.png (against class frequency), cooccurrence.png."""
        ap = [result["per_class"][lb]["ap"] for lb in self.labels]
        return [
            plots.save(plots.pr_curves(y, scores, self.labels, ap), out / "pr_curves.png"),
            plots.save(
                plots.ap_per_class([a or 0.0 for a in ap], y.mean(0), self.labels, result["mAP"]),
                out / "ap_per_class.png",
            ),
            plots.save(plots.cooccurrence(y, self.labels), out / "cooccurrence.png"),
        ]

    def html(self, result: dict[str, Any]) -> tuple[str, str]:
        b, esc = result["baselines"], html_lib.escape
        rows = "".join(
            f"<tr><td>{esc(lb)}</td><td>{v['positives']}</td><td>{fmt(v['ap'])}</td><td>{fmt(v['roc_auc'])}</td>"
            f"<td>{v['threshold']:.2f}</td><td>{v['precision']:.3f}</td><td>{v['recall']:.3f}</td></tr>"
            for lb, v in result["per_class"].items()
        )
        tables = f"""<table><tr><th></th><th>mAP</th><th>sample-F2</th><th>macro-F1</th></tr>
<tr><td>model ({result["thresholds"]} thresholds)</td><td>{result["mAP"]:.3f}</td><td>{result["f2_samples"]:.3f}</td>
<td>{result["f1_macro"]:.3f}</td></tr>
<tr><td>model at 0.5</td><td></td><td>{result["f2_samples_at_0.5"]:.3f}</td><td></td></tr>
<tr><td>constant ({esc(", ".join(b["constant"]["labels"]))})</td><td></td>
<td>{b["constant"]["f2_samples"]:.3f}</td><td>{b["constant"]["f1_macro"]:.3f}</td></tr>
<tr><td>class priors</td><td>{b["prior"]["mAP"]:.3f}</td><td></td><td></td></tr></table>
<h2>Per class</h2><table><tr><th>class</th><th>positives</th><th>AP</th><th>ROC-AUC</th><th>threshold</th>
<th>precision</th><th>recall</th></tr>{rows}</table>"""
        return f"Evaluation: {result['split']} split, {result['images']} images", tables

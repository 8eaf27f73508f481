"""The `evaluate.py` job: a bundle on a dataset split -> metrics.json, plots and an HTML page.

Every figure is shown beside two baselines a model must beat: the best
constant label set (chosen on the training split) and class priors as scores.
"""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_auc_score

from . import metrics, pipeline, prediction, records


def evaluate(bundle: prediction.Bundle, data: str | Path, split: str = "val",
             threshold: float | None = None) -> tuple[dict[str, Any], np.ndarray, np.ndarray, list[str]]:
    """Scores the split; returns (metrics dict, labels, scores, record ids)."""
    part = pipeline.describe_split(data, split)
    n = len(bundle.labels)
    ds = pipeline.make_dataset(part.files, n, image_size=bundle.input_size, batch_size=64, training=False,
                               count=part.count)
    out = bundle.model.predict(ds, verbose=0)
    scores = prediction.stack_heads(out, bundle.heads)
    recs = [(r["id"], r["labels"]) for r in records.iter_records(part.files, n)]  # one pass: ids and labels
    ids = [i for i, _ in recs]
    y = np.array([lab for _, lab in recs], dtype=int).reshape(len(recs), n)
    th = np.full(n, threshold) if threshold is not None else bundle.thresholds
    pred = scores >= th
    ap = metrics.average_precision(y, scores)
    precision, recall, f1 = metrics.f1_per_class(y, pred)
    has = y.any(0)
    tp, pp, tt = (y.astype(bool) & pred).sum(), pred.sum(), y.sum()
    micro_f1 = 2 * tp / (pp + tt) if pp + tt else 0.0
    auc = [float(roc_auc_score(y[:, c], scores[:, c])) if 0 < y[:, c].sum() < len(y) else None for c in range(n)]
    y_train = pipeline.labels_of(pipeline.describe_split(data, "train").files, n)
    const = metrics.constant_baseline(y_train, y)
    cpred = np.broadcast_to(np.isin(np.arange(n), const["labels"]), y.shape)
    prior = metrics.prior_baseline(y_train, y)
    _, _, cf1 = metrics.f1_per_class(y, cpred)
    result = {
        "split": split, "images": int(len(y)), "thresholds": "fixed" if threshold is not None else "tuned",
        "mAP": metrics.mean_ap(ap),
        "f2_samples": metrics.fbeta_samples(y, pred),
        "f2_samples_at_0.5": metrics.fbeta_samples(y, scores >= 0.5),
        "f1_macro": float(f1[has].mean()) if has.any() else 0.0,
        "f1_micro": float(micro_f1),
        "per_class": {lb: {"ap": None if np.isnan(ap[c]) else float(ap[c]), "precision": float(precision[c]),
                           "recall": float(recall[c]), "threshold": float(th[c]), "positives": int(y[:, c].sum()),
                           "roc_auc": auc[c]} for c, lb in enumerate(bundle.labels)},
        "baselines": {
            "constant": {"labels": [bundle.labels[c] for c in const["labels"]], "f2_samples": const["f2_samples"],
                         "f1_macro": float(cf1[has].mean()) if has.any() else 0.0, "mAP": None},
            "prior": {"mAP": prior["mAP"], "f2_samples": None},
        },
    }
    gain = result["f2_samples"] - const["f2_samples"]
    result["verdict"] = (f"the model beats the constant predictor on sample-F2 by {gain:+.3f}" if gain > 0 else
                         f"warning: the model does not beat the constant predictor on sample-F2 ({gain:+.3f})")
    return result, y, scores, ids


def top_losses(y: np.ndarray, scores: np.ndarray, k: int = 20) -> np.ndarray:
    """Indices of the images with the highest summed binary cross-entropy (the fastai cleaning view)."""
    p = np.clip(scores, 1e-7, 1 - 1e-7)
    loss = -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum(1)
    return np.argsort(-loss)[:k]


def write_report(out: Path, bundle: prediction.Bundle, result: dict[str, Any], y: np.ndarray, scores: np.ndarray,
                 ids: list[str], data: str | Path, split: str, history: Path | None, k: int = 20) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    labels = bundle.labels
    n = len(labels)
    written: list[Path] = []

    def save(fig, name: str) -> None:
        path = out / name
        tmp = out / f".{name}.tmp.png"
        fig.tight_layout()
        fig.savefig(tmp, dpi=90)
        plt.close(fig)
        tmp.replace(path)
        written.append(path)

    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for c, ax in enumerate(axes.flat):
        if c >= n:
            ax.axis("off")
            continue
        if y[:, c].any():
            pr, rc, _ = precision_recall_curve(y[:, c], scores[:, c])
            ax.plot(rc, pr)
            ax.axhline(y[:, c].mean(), color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"{labels[c]} AP {result['per_class'][labels[c]]['ap'] or 0:.2f}", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
    fig.suptitle("precision-recall per class (dotted: class frequency)")
    save(fig, "pr_curves.png")

    freq = y.mean(0)
    ap = [result["per_class"][lb]["ap"] or 0.0 for lb in labels]
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * n), 4))
    x = np.arange(n)
    ax.bar(x - 0.2, ap, 0.4, label="AP")
    ax.bar(x + 0.2, freq, 0.4, label="frequency (AP of a random ranking)")
    ax.set_xticks(x, labels, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title(f"AP per class vs class frequency — mAP {result['mAP']:.3f}")
    save(fig, "ap_per_class.png")

    co = y.T @ y
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * n), max(4, 0.45 * n)))
    im = ax.imshow(co, cmap="viridis")
    ax.set_xticks(range(n), labels, rotation=90)
    ax.set_yticks(range(n), labels)
    fig.colorbar(im, ax=ax)
    ax.set_title("label co-occurrence (images)")
    save(fig, "cooccurrence.png")

    if history is not None and history.is_file():
        with open(history, newline="") as f:
            rows_h = list(csv.DictReader(f))
        if rows_h:
            ep = [int(r["epoch"]) + 1 for r in rows_h]
            fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.5))
            for key in ("loss", "val_loss"):
                if key in rows_h[0]:
                    a1.plot(ep, [float(r[key]) for r in rows_h], marker="o", label=key)
            a1.set_xlabel("epoch")
            a1.legend()
            for key in ("val_mAP", "val_f2_samples", "val_f1_macro"):
                if key in rows_h[0]:
                    a2.plot(ep, [float(r[key]) for r in rows_h], marker="o", label=key)
            a2.set_xlabel("epoch")
            a2.legend()
            fig.suptitle(f"training curves ({history.parent.name})")
            save(fig, "training_curves.png")

    worst = top_losses(y, scores, k)
    wanted = {ids[i] for i in worst}
    images = {r["id"]: r["image"] for r in records.iter_records(pipeline.describe_split(data, split).files, n)
              if r["id"] in wanted}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "true_labels", "predicted_labels", "action", *labels])
    th = np.array([result["per_class"][lb]["threshold"] for lb in labels])
    for i in worst:
        w.writerow([ids[i], ";".join(lb for lb, v in zip(labels, y[i]) if v),
                    ";".join(lb for lb, s, t in zip(labels, scores[i], th) if s >= t), "keep",
                    *(f"{s:.4f}" for s in scores[i])])
    records.atomic_write_text(out / "top_losses.csv", buf.getvalue())
    written.append(out / "top_losses.csv")
    if images:
        import cv2

        cols = 5
        rows = -(-len(worst) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.4 * rows), squeeze=False)
        for ax, i in zip(axes.flat, worst):
            img = images.get(ids[i])
            if img is not None:
                arr = cv2.imdecode(np.frombuffer(img, np.uint8), cv2.IMREAD_COLOR)
                ax.imshow(cv2.cvtColor(arr, cv2.COLOR_BGR2RGB))
            true = [lb for lb, v in zip(labels, y[i]) if v]
            wrong = sorted(range(n), key=lambda c: -abs(y[i, c] - scores[i, c]))[:2]
            ax.set_title(f"{ids[i]}\ntrue: {', '.join(true) or '-'}\n" +
                         ", ".join(f"{labels[c]} {scores[i, c]:.2f}" for c in wrong), fontsize=7)
        for ax in axes.flat:
            ax.axis("off")
        fig.suptitle("top losses: images the model gets most wrong (true labels; worst two probabilities)")
        save(fig, "top_losses.png")

    records.atomic_write_json(out / "metrics.json", result)
    written.append(out / "metrics.json")
    records.atomic_write_text(out / "index.html", _html(result, labels, [p.name for p in written if p.suffix == ".png"]))
    written.append(out / "index.html")
    return written


def _html(result: dict[str, Any], labels: list[str], pngs: list[str]) -> str:
    b = result["baselines"]
    rows = "".join(
        f"<tr><td>{html.escape(lb)}</td><td>{v['positives']}</td><td>{_f(v['ap'])}</td><td>{_f(v['roc_auc'])}</td>"
        f"<td>{v['threshold']:.2f}</td><td>{v['precision']:.3f}</td><td>{v['recall']:.3f}</td></tr>"
        for lb, v in result["per_class"].items())
    imgs = "".join(f'<h3>{html.escape(p)}</h3><img src="{html.escape(p)}" style="max-width:100%">' for p in pngs)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>fashion evaluation</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 10px;text-align:right}}</style></head><body>
<h1>Evaluation: {result['split']} split, {result['images']} images</h1>
<p><b>{html.escape(result['verdict'])}</b></p>
<table><tr><th></th><th>mAP</th><th>sample-F2</th><th>macro-F1</th></tr>
<tr><td>model ({result['thresholds']} thresholds)</td><td>{result['mAP']:.3f}</td><td>{result['f2_samples']:.3f}</td>
<td>{result['f1_macro']:.3f}</td></tr>
<tr><td>model at 0.5</td><td></td><td>{result['f2_samples_at_0.5']:.3f}</td><td></td></tr>
<tr><td>constant ({html.escape(', '.join(b['constant']['labels']))})</td><td></td>
<td>{b['constant']['f2_samples']:.3f}</td><td>{b['constant']['f1_macro']:.3f}</td></tr>
<tr><td>class priors</td><td>{b['prior']['mAP']:.3f}</td><td></td><td></td></tr></table>
<h2>Per class</h2><table><tr><th>class</th><th>positives</th><th>AP</th><th>ROC-AUC</th><th>threshold</th>
<th>precision</th><th>recall</th></tr>{rows}</table>{imgs}</body></html>
"""


def _f(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def print_summary(result: dict[str, Any]) -> None:
    b = result["baselines"]
    print(f"{result['split']}: {result['images']} images")
    print(f"  model     mAP {result['mAP']:.3f}  sample-F2 {result['f2_samples']:.3f} ({result['thresholds']} "
          f"thresholds), {result['f2_samples_at_0.5']:.3f} at 0.5  macro-F1 {result['f1_macro']:.3f}  "
          f"micro-F1 {result['f1_micro']:.3f}")
    print(f"  constant  sample-F2 {b['constant']['f2_samples']:.3f}  ({', '.join(b['constant']['labels'])})")
    print(f"  priors    mAP {b['prior']['mAP']:.3f}")
    print(result["verdict"])


def history_for(bundle: prediction.Bundle) -> Path | None:
    meta = json.loads((bundle.path / "meta.json").read_text())
    cfg = meta.get("config", {})
    if not cfg.get("run"):
        return None
    return Path(cfg.get("log", "log")) / cfg["run"] / "history.csv"

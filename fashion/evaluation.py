"""The `evaluate.py` job: a bundle on a dataset split -> metrics.json, plots and an HTML page.

Every figure is shown beside two baselines a model must beat: the best
constant label set (chosen on the training split) and class priors as scores;
for single-label bundles, the majority class and class priors. Every report
holds `review.csv`, the images with the highest loss, for a person to mark
keep/relabel/drop and feed back to `generate_dataset.py --apply-review`.
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

from . import fileio, metrics, pipeline, prediction, records, review


def split_scores(bundle: prediction.Bundle, part: pipeline.Split) -> np.ndarray:
    """The bundle's probabilities on every record of a split, in record order (center crops)."""
    ds = pipeline.make_dataset(part.files, len(bundle.labels), image_size=bundle.input_size, batch_size=64,
                               training=False, count=part.count)
    return prediction.to_probs(bundle.model.predict(ds, verbose=0), bundle.heads, bundle.task)


def evaluate(bundle: prediction.Bundle, data: str | Path, split: str = "val", threshold: float | None = None,
             top_k: int | None = None) -> tuple[dict[str, Any], np.ndarray, np.ndarray, list[str], list[str]]:
    """Scores the split; returns (metrics dict, labels (N, labels), scores (N, columns), record ids, sources)."""
    part = pipeline.describe_split(data, split)
    n = len(bundle.labels)
    scores = split_scores(bundle, part)
    # one pass: ids, sources and labels
    recs = [(r["id"], r["source"], r["labels"]) for r in records.iter_records(part.files, n)]
    ids = [i for i, _, _ in recs]
    sources = [src for _, src, _ in recs]
    y = np.array([lab for _, _, lab in recs], dtype=int).reshape(len(recs), n)
    if bundle.task != "multilabel":
        return evaluate_single(bundle, y, scores, data, split, threshold, top_k), y, scores, ids, sources
    th = np.full(n, threshold) if threshold is not None else bundle.thresholds
    pred = scores >= th
    ap = metrics.average_precision(y, scores)
    precision, recall, f1 = metrics.f1_per_class(y, pred)
    has = y.any(0)
    tp, pp, tt = (y.astype(bool) & pred).sum(), pred.sum(), y.sum()
    micro_f1 = 2 * tp / (pp + tt) if pp + tt else 0.0
    auc = [float(roc_auc_score(y[:, c], scores[:, c])) if 0 < y[:, c].sum() < len(y) else None for c in range(n)]
    y_train = pipeline.labels_of(pipeline.describe_split(data, "train").files, n)
    base = metrics.baselines(y_train, y)
    const, prior = base["constant"], base["prior"]
    cpred = np.broadcast_to(np.isin(np.arange(n), const["labels"]), y.shape)
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
    f2, how = result["f2_samples"], ""
    if threshold is None and split == "val":
        # the bundle's thresholds were tuned on this split: judge by thresholds tuned on its other half
        f2 = result["f2_samples_tuned_crossfit"] = metrics.crossfit_f2(y, scores, y_train=y_train)
        how = "; judged with thresholds tuned on the other half of this split (the bundle's were tuned on it)"
    gain = f2 - const["f2_samples"]
    result["verdict"] = (f"the model beats the constant predictor on sample-F2 by {gain:+.3f}{how}" if gain > 0 else
                         f"warning: the model does not beat the constant predictor on sample-F2: {gain:+.3f}{how}")
    return result, y, scores, ids, sources


def predicted_indices(bundle: prediction.Bundle, scores: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Most probable class; binary: positive when its probability reaches the (tuned) threshold."""
    if bundle.task == "binary":
        t = bundle.threshold if threshold is None else threshold
        return (scores[:, 1] >= t).astype(int)
    return np.argmax(scores, axis=1)


def evaluate_single(bundle: prediction.Bundle, y: np.ndarray, scores: np.ndarray, data: str | Path, split: str,
                    threshold: float | None = None, top_k: int | None = None) -> dict[str, Any]:
    """Accuracy, top-k, per-class precision/recall/F1, confusion, most confused, beside the majority class
    and class priors (counted on the training split)."""
    classes, task = bundle.classes, bundle.task
    k = top_k or int(bundle.meta.get("top_k") or max(1, min(5, len(classes) - 1)))
    y_idx = metrics.class_indices(y, task)
    pred = predicted_indices(bundle, scores, threshold)
    s = metrics.single_label_summary(y_idx, scores, classes, k, pred=pred)
    counts = pipeline.class_counts(pipeline.describe_split(data, "train"), task)
    base = metrics.majority_baseline(counts, y_idx, classes, k)
    result: dict[str, Any] = {"task": task, "split": split, "classes": classes, **s, "baselines": base}
    if task == "binary":
        p = scores[:, 1]
        result.update({
            "positive_class": classes[1], "threshold": float(bundle.threshold if threshold is None else threshold),
            "thresholds": "fixed" if threshold is not None else "tuned" if len(bundle.thresholds) else "0.5",
            "accuracy_at_0.5": float(((p >= 0.5).astype(int) == y_idx).mean()) if len(p) else 0.0,
            **metrics.binary_scores(y_idx, p)})
    gain = s["accuracy"] - base["majority"]["accuracy"]
    result["verdict"] = (
        f"the model beats the majority class ('{base['majority']['class']}') on accuracy by {gain:+.3f}"
        if gain > 0 else
        f"warning: the model does not beat the majority class ('{base['majority']['class']}') on accuracy "
        f"({gain:+.3f})")
    return result


def image_losses(bundle: prediction.Bundle, y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per image: summed binary cross-entropy over the labels (multilabel), cross-entropy of the true class
    (multiclass, binary)."""
    if bundle.task == "multilabel":
        p = np.clip(scores, 1e-7, 1 - 1e-7)
        return -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum(1)
    idx = metrics.class_indices(y, bundle.task)
    return -np.log(np.clip(scores[np.arange(len(idx)), idx], 1e-7, 1.0))


def top_losses(y: np.ndarray, scores: np.ndarray, k: int = 20, bundle: prediction.Bundle | None = None) -> np.ndarray:
    """Indices of the images with the highest loss (the fastai cleaning view): summed binary cross-entropy,
    or for a single-label bundle the cross-entropy of the true class."""
    if bundle is None:
        p = np.clip(scores, 1e-7, 1 - 1e-7)
        loss = -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum(1)
    else:
        loss = image_losses(bundle, y, scores)
    return np.argsort(-loss, kind="stable")[:k]


def row_labels(bundle: prediction.Bundle, result: dict[str, Any], y: np.ndarray, scores: np.ndarray,
               threshold: float | None = None) -> tuple[list[str], list[str], np.ndarray]:
    """Per image: true labels, predicted labels (';'-joined names) and the predicted probability
    (single-label: of the predicted class; multilabel: of the most probable label)."""
    if bundle.task != "multilabel":
        names = bundle.classes
        t, pr = metrics.class_indices(y, bundle.task), predicted_indices(bundle, scores, threshold)
        return [names[i] for i in t], [names[i] for i in pr], scores[np.arange(len(pr)), pr]
    th = np.array([result["per_class"][lb]["threshold"] for lb in bundle.labels])
    true = [";".join(lb for lb, v in zip(bundle.labels, row) if v) for row in y]
    pred = [";".join(lb for lb, s_, t_ in zip(bundle.labels, row, th) if s_ >= t_) for row in scores]
    return true, pred, scores.max(1) if scores.size else np.zeros(len(y))


def review_csv(bundle: prediction.Bundle, result: dict[str, Any], y: np.ndarray, scores: np.ndarray,
               ids: list[str], sources: list[str], k: int = 20, threshold: float | None = None) -> str:
    """The top-loss images as `id,source,labels,predicted,score,loss,action,new_labels`; action and
    new_labels are left blank for a person (keep / relabel / drop)."""
    loss = image_losses(bundle, y, scores)
    worst = np.argsort(-loss, kind="stable")[:k]
    true, pred, score = row_labels(bundle, result, y, scores, threshold)
    return fileio.csv_text(list(review.COLUMNS), ([ids[i], sources[i], true[i], pred[i], f"{score[i]:.4f}",
                                              f"{loss[i]:.4f}", "", ""] for i in worst))


def print_table(bundle: prediction.Bundle, result: dict[str, Any], y: np.ndarray, scores: np.ndarray,
                ids: list[str], sources: list[str], threshold: float | None = None) -> None:
    """One line per image (file, true label, predicted label, score), as the Caffe project printed, then
    `accuracy: X (n/N)` (multilabel: exact-match accuracy)."""
    true, pred, score = row_labels(bundle, result, y, scores, threshold)
    files = [src or i for src, i in zip(sources, ids)]
    wf = max([len("file")] + [len(f) for f in files])
    wt = max([len("true")] + [len(t) for t in true])
    wp = max([len("predicted")] + [len(p) for p in pred])
    print(f"{'file':<{wf}}  {'true':<{wt}}  {'predicted':<{wp}}  score")
    for f, t, p, s in zip(files, true, pred, score):
        print(f"{f:<{wf}}  {t:<{wt}}  {p:<{wp}}  {s:.4f}")
    n = len(true)
    right = sum(t == p for t, p in zip(true, pred))
    print(f"accuracy: {right / n if n else 0.0:.4f} ({right}/{n})")


def write_report(out: Path, bundle: prediction.Bundle, result: dict[str, Any], y: np.ndarray, scores: np.ndarray,
                 ids: list[str], data: str | Path, split: str, history: Path | None, k: int = 20,
                 sources: list[str] | None = None, threshold: float | None = None) -> list[Path]:
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
        # leave room for a figure title above the subplot titles
        fig.tight_layout(rect=(0, 0, 1, 0.97) if fig._suptitle is not None else (0, 0, 1, 1))
        fig.savefig(tmp, dpi=90)
        plt.close(fig)
        tmp.replace(path)
        written.append(path)

    single = bundle.task != "multilabel"
    if single:
        written.append(_single_plots(out, bundle, result, save, plt))
    else:
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
            for key in ("val_mAP", "val_f2_samples", "val_f1_macro", "val_accuracy", "val_auc", "val_ap",
                        *(c for c in rows_h[0] if c.startswith("val_top"))):
                if key in rows_h[0]:
                    a2.plot(ep, [float(r[key]) for r in rows_h], marker="o", label=key)
            a2.set_xlabel("epoch")
            a2.legend()
            for a in (a1, a2):
                a.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
            fig.suptitle(f"training curves ({history.parent.name})")
            save(fig, "training_curves.png")

    worst = top_losses(y, scores, k, bundle)
    wanted = {ids[i] for i in worst}
    images = {r["id"]: r["image"] for r in records.iter_records(pipeline.describe_split(data, split).files, n)
              if r["id"] in wanted}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    columns = bundle.classes
    true, pred, _ = row_labels(bundle, result, y, scores, threshold)
    w.writerow(["id", "true_labels", "predicted_labels", "action", *columns])
    for i in worst:
        w.writerow([ids[i], true[i], pred[i], "keep", *(f"{s:.4f}" for s in scores[i])])
    fileio.atomic_write_text(out / "top_losses.csv", buf.getvalue())
    written.append(out / "top_losses.csv")
    fileio.atomic_write_text(out / "review.csv", review_csv(bundle, result, y, scores, ids,
                                                             sources or [""] * len(ids), k, threshold))
    written.append(out / "review.csv")
    if images:
        import cv2

        cols = 5
        rows = -(-len(worst) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.9 * rows), squeeze=False)
        for ax, i in zip(axes.flat, worst):
            img = images.get(ids[i])
            if img is not None:
                arr = cv2.imdecode(np.frombuffer(img, np.uint8), cv2.IMREAD_COLOR)
                ax.imshow(cv2.cvtColor(arr, cv2.COLOR_BGR2RGB))
            if single:
                t = metrics.class_indices(y[i:i + 1], bundle.task)[0]
                ax.set_title(f"{ids[i]}\ntrue: {columns[t]} {scores[i, t]:.2f}\npredicted: {pred[i]} "
                             f"{scores[i].max():.2f}", fontsize=7)
                continue
            true_i = [lb for lb, v in zip(labels, y[i]) if v]
            wrong = sorted(range(n), key=lambda c: -abs(y[i, c] - scores[i, c]))[:2]
            ax.set_title(f"{ids[i]}\ntrue: {', '.join(true_i) or '-'}\n" +
                         ", ".join(f"{labels[c]} {scores[i, c]:.2f}" for c in wrong), fontsize=7)
        for ax in axes.flat:
            ax.axis("off")
        fig.suptitle("top losses: images the model gets most wrong " +
                     ("(true class and its probability; predicted class)" if single else
                      "(true labels; worst two probabilities)"))
        save(fig, "top_losses.png")

    fileio.atomic_write_json(out / "metrics.json", result)
    written.append(out / "metrics.json")
    pngs = [p.name for p in written if p.suffix == ".png"]
    fileio.atomic_write_text(out / "index.html", _html_single(result, pngs) if single else _html(result, labels, pngs))
    written.append(out / "index.html")
    return written


def _single_plots(out: Path, bundle: prediction.Bundle, result: dict[str, Any], save, plt) -> Path:
    """confusion.png (counts, true classes down, predicted across), confusion.csv, per_class.png."""
    classes = bundle.classes
    k = len(classes)
    cm = np.array(result["confusion"])
    fig, ax = plt.subplots(figsize=(max(4.5, 0.6 * k + 2), max(4, 0.55 * k + 1.5)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = cm.max() if cm.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if cm[i, j] > top / 2 else "black")
    ax.set_title(f"confusion matrix — accuracy {result['accuracy']:.3f} ({result['correct']}/{result['images']})")
    save(fig, "confusion.png")
    fileio.atomic_write_text(out / "confusion.csv", fileio.csv_text(
        ["true \\ predicted", *classes], ([c, *row] for c, row in zip(classes, cm.tolist()))))
    pc = result["per_class"]
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * k), 4))
    x = np.arange(k)
    for off, key in ((-0.27, "precision"), (0.0, "recall"), (0.27, "f1")):
        ax.bar(x + off, [pc[c][key] for c in classes], 0.27, label=key)
    ax.set_xticks(x, classes, rotation=45, ha="right")
    ax.set_ylim(0, 1.05)
    ax.legend()
    ax.set_title(f"per class — macro-F1 {result['f1_macro']:.3f}")
    save(fig, "per_class.png")
    return out / "confusion.csv"


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


def _html_single(result: dict[str, Any], pngs: list[str]) -> str:
    b = result["baselines"]
    k = result["top_k"]
    rows = "".join(
        f"<tr><td>{html.escape(c)}</td><td>{v['support']}</td><td>{v['predicted']}</td><td>{v['precision']:.3f}</td>"
        f"<td>{v['recall']:.3f}</td><td>{v['f1']:.3f}</td></tr>" for c, v in result["per_class"].items())
    confused = "".join(f"<li>{html.escape(a)} &rarr; {html.escape(p)}: {n}</li>"
                       for a, p, n in result["most_confused"][:10])
    imgs = "".join(f'<h3>{html.escape(p)}</h3><img src="{html.escape(p)}" style="max-width:100%">' for p in pngs)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>fashion evaluation</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 10px;text-align:right}}</style></head><body>
<h1>Evaluation ({result['task']}): {result['split']} split, {result['images']} images</h1>
<p><b>{html.escape(result['verdict'])}</b></p>
<table><tr><th></th><th>accuracy</th><th>top-{k}</th><th>macro-F1</th><th>log loss</th></tr>
<tr><td>model</td><td>{result['accuracy']:.3f}</td><td>{result['top_k_accuracy']:.3f}</td>
<td>{result['f1_macro']:.3f}</td><td>{result['log_loss']:.3f}</td></tr>
<tr><td>majority ({html.escape(b['majority']['class'])})</td><td>{b['majority']['accuracy']:.3f}</td><td></td>
<td>{b['majority']['f1_macro']:.3f}</td><td></td></tr>
<tr><td>class priors</td><td></td><td>{b['prior']['top_k_accuracy']:.3f}</td><td></td>
<td>{b['prior']['log_loss']:.3f}</td></tr></table>
<h2>Most confused (true &rarr; predicted)</h2><ul>{confused or '<li>none</li>'}</ul>
<h2>Per class</h2><table><tr><th>class</th><th>images</th><th>predicted</th><th>precision</th><th>recall</th>
<th>F1</th></tr>{rows}</table>{imgs}</body></html>
"""


def _f(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def print_summary(result: dict[str, Any]) -> None:
    b = result["baselines"]
    if result.get("task", "multilabel") != "multilabel":
        k = result["top_k"]
        print(f"{result['split']}: {result['images']} images ({result['task']})")
        if result["task"] == "binary":
            auc = "-" if result["roc_auc"] is None else f"{result['roc_auc']:.3f}"
            pos = result["positive_class"]
            print(f"  model     accuracy {result['accuracy']:.3f} at threshold {result['threshold']:.2f} "
                  f"({result['thresholds']}), {result['accuracy_at_0.5']:.3f} at 0.5  ROC-AUC {auc}  "
                  f"F1({pos}) {result['per_class'][pos]['f1']:.3f}  macro-F1 {result['f1_macro']:.3f}")
        else:
            print(f"  model     accuracy {result['accuracy']:.3f}  top-{k} {result['top_k_accuracy']:.3f}  "
                  f"macro-F1 {result['f1_macro']:.3f}  log loss {result['log_loss']:.3f}")
        print(f"  majority  accuracy {b['majority']['accuracy']:.3f} (always '{b['majority']['class']}')  "
              f"macro-F1 {b['majority']['f1_macro']:.3f}")
        print(f"  priors    top-{k} {b['prior']['top_k_accuracy']:.3f}  log loss {b['prior']['log_loss']:.3f}")
        width = max(len(c) for c in result["per_class"])
        print(f"  {'class':<{width}} {'images':>6} {'precision':>9} {'recall':>7} {'F1':>6}")
        for c, v in result["per_class"].items():
            print(f"  {c:<{width}} {v['support']:6d} {v['precision']:9.3f} {v['recall']:7.3f} {v['f1']:6.3f}")
        if result["most_confused"]:
            print("  most confused (true -> predicted): " +
                  ", ".join(f"{a} -> {p} {n}" for a, p, n in result["most_confused"][:10]))
        print(result["verdict"])
        return
    print(f"{result['split']}: {result['images']} images")
    print(f"  model     mAP {result['mAP']:.3f}  sample-F2 {result['f2_samples']:.3f} ({result['thresholds']} "
          f"thresholds), {result['f2_samples_at_0.5']:.3f} at 0.5  macro-F1 {result['f1_macro']:.3f}  "
          f"micro-F1 {result['f1_micro']:.3f}")
    if "f2_samples_tuned_crossfit" in result:
        print(f"            sample-F2 {result['f2_samples_tuned_crossfit']:.3f} with thresholds tuned on the other "
              f"half of the split (the honest figure: the bundle's were tuned on this split)")
    print(f"  constant  sample-F2 {b['constant']['f2_samples']:.3f}  ({', '.join(b['constant']['labels'])})")
    print(f"  priors    mAP {b['prior']['mAP']:.3f}")
    print(result["verdict"])


def history_for(bundle: prediction.Bundle) -> Path | None:
    meta = json.loads((bundle.path / "meta.json").read_text())
    cfg = meta.get("config", {})
    if not cfg.get("run"):
        return None
    return Path(cfg.get("log", "log")) / cfg["run"] / "history.csv"

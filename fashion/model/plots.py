"""The figures of evaluate.py's report and train.py's --lr-find, drawn with matplotlib (Agg).

Each function takes plain arrays and returns a figure; `save` lays it out and writes the PNG
atomically. matplotlib loads on the first figure only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fashion.core.fileio import save_figure_atomic


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path, dpi: int = 90) -> Path:
    # leave room for a figure title above the subplot titles
    fig.tight_layout(rect=(0, 0, 1, 0.97) if fig._suptitle is not None else (0, 0, 1, 1))
    save_figure_atomic(fig, path, dpi=dpi)
    pyplot().close(fig)
    return path


def pr_curves(y: np.ndarray, scores: np.ndarray, labels: Sequence[str], ap: Sequence[float | None]):
    """Precision-recall per class, class frequency dotted."""
    from sklearn.metrics import precision_recall_curve

    n = len(labels)
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = pyplot().subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for c, ax in enumerate(axes.flat):
        if c >= n:
            ax.axis("off")
            continue
        if y[:, c].any():
            pr, rc, _ = precision_recall_curve(y[:, c], scores[:, c])
            ax.plot(rc, pr)
            ax.axhline(y[:, c].mean(), color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"{labels[c]} AP {ap[c] or 0:.2f}", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
    fig.suptitle("precision-recall per class (dotted: class frequency)")
    return fig


def ap_per_class(ap: Sequence[float], freq: np.ndarray, labels: Sequence[str], mean_ap: float):
    n = len(labels)
    fig, ax = pyplot().subplots(figsize=(max(6, 0.55 * n), 4))
    x = np.arange(n)
    ax.bar(x - 0.2, ap, 0.4, label="AP")
    ax.bar(x + 0.2, freq, 0.4, label="frequency (AP of a random ranking)")
    ax.set_xticks(x, labels, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title(f"AP per class vs class frequency — mAP {mean_ap:.3f}")
    return fig


def cooccurrence(y: np.ndarray, labels: Sequence[str]):
    n = len(labels)
    fig, ax = pyplot().subplots(figsize=(max(5, 0.5 * n), max(4, 0.45 * n)))
    im = ax.imshow(y.T @ y, cmap="viridis")
    ax.set_xticks(range(n), labels, rotation=90)
    ax.set_yticks(range(n), labels)
    fig.colorbar(im, ax=ax)
    ax.set_title("label co-occurrence (images)")
    return fig


def confusion(cm: np.ndarray, classes: Sequence[str], title: str):
    """Counts, true classes down, predicted across."""
    k = len(classes)
    fig, ax = pyplot().subplots(figsize=(max(4.5, 0.6 * k + 2), max(4, 0.55 * k + 1.5)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = cm.max() if cm.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if cm[i, j] > top / 2 else "black",
            )
    ax.set_title(title)
    return fig


def per_class(per_class_: dict[str, dict], classes: Sequence[str], f1_macro: float):
    """Precision, recall and F1 bars per class."""
    k = len(classes)
    fig, ax = pyplot().subplots(figsize=(max(6, 0.7 * k), 4))
    x = np.arange(k)
    for off, key in ((-0.27, "precision"), (0.0, "recall"), (0.27, "f1")):
        ax.bar(x + off, [per_class_[c][key] for c in classes], 0.27, label=key)
    ax.set_xticks(x, classes, rotation=45, ha="right")
    ax.set_ylim(0, 1.05)
    ax.legend()
    ax.set_title(f"per class — macro-F1 {f1_macro:.3f}")
    return fig


# validation curves drawn when history.csv has them (every task's, in this order)
CURVES = ("val_mAP", "val_f2_samples", "val_f1_macro", "val_accuracy", "val_auc", "val_ap")


def training_curves(rows: list[dict[str, str]], run: str):
    """Losses (left) and validation scores (right) per epoch from history.csv rows."""
    plt = pyplot()
    ep = [int(r["epoch"]) + 1 for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.5))
    for key in ("loss", "val_loss"):
        if key in rows[0]:
            a1.plot(ep, [float(r[key]) for r in rows], marker="o", label=key)
    a1.set_xlabel("epoch")
    a1.legend()
    for key in (*CURVES, *(c for c in rows[0] if c.startswith("val_top"))):
        if key in rows[0]:
            a2.plot(ep, [float(r[key]) for r in rows], marker="o", label=key)
    a2.set_xlabel("epoch")
    a2.legend()
    for a in (a1, a2):
        a.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    fig.suptitle(f"training curves ({run})")
    return fig


def image_grid(images: Sequence[bytes | None], titles: Sequence[str], title: str):
    """Encoded images (None: left blank) five to a row, each with its title."""
    import cv2

    cols = 5
    rows = -(-len(titles) // cols)
    fig, axes = pyplot().subplots(rows, cols, figsize=(3.0 * cols, 3.9 * rows), squeeze=False)
    for ax, img, text in zip(axes.flat, images, titles):
        if img is not None:
            arr = cv2.imdecode(np.frombuffer(img, np.uint8), cv2.IMREAD_COLOR)
            if arr is not None:  # (a record's bytes were checked when written; a damaged one shows no image)
                ax.imshow(cv2.cvtColor(arr, cv2.COLOR_BGR2RGB))
        ax.set_title(text, fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(title)
    return fig


def lr_range(lrs: Sequence[float], losses: Sequence[float], suggested: float):
    """The learning-rate range test: training loss against a log learning rate, the suggestion marked."""
    fig, ax = pyplot().subplots(figsize=(6, 4))
    ax.plot(lrs, losses)
    ax.axvline(suggested, color="red", linestyle="--", label=f"suggested {suggested:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("learning-rate range test")
    ax.legend()
    return fig

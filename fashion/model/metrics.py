"""Multi-label metrics on numpy arrays, and per-class threshold tuning for sample-averaged F2.

The 2018 challenge scored sample-averaged F2; a constant label set already
scores well on it, so `constant_baseline` is reported beside every model.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

THRESHOLD_GRID = np.round(np.arange(0.02, 1.0, 0.02), 2)
# a threshold leaves the constant label set only for more than this many images' worth of sample-F2
# (measured on ccp-dev and myntra-dev: bench/RESULTS.md, 2026-11-23)
MIN_GAIN_IMAGES = 1.0


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AP per class; NaN for a class without positives (AP is undefined there)."""
    from sklearn.metrics import average_precision_score  # here: detect.py imports this module, never calls it

    y_true = np.asarray(y_true)
    out = np.full(y_true.shape[1], np.nan)
    for c in range(y_true.shape[1]):
        if y_true[:, c].any():
            out[c] = average_precision_score(y_true[:, c], scores[:, c])
    return out


def mean_ap(ap: np.ndarray) -> float:
    """Mean over classes that have positives (NaN-safe; 0.0 when none has)."""
    ap = ap[~np.isnan(ap)]
    return float(ap.mean()) if ap.size else 0.0


def fbeta_samples(y_true: np.ndarray, y_pred: np.ndarray, beta: float = 2.0) -> float:
    """Sample-averaged F-beta; a sample with no true and no predicted label scores 1."""
    y_true, y_pred = np.asarray(y_true, bool), np.asarray(y_pred, bool)
    tp = (y_true & y_pred).sum(1)
    fp = (~y_true & y_pred).sum(1)
    fn = (y_true & ~y_pred).sum(1)
    b2 = beta * beta
    den = (1 + b2) * tp + b2 * fn + fp
    f = np.where(den > 0, (1 + b2) * tp / np.maximum(den, 1), 1.0)
    return float(f.mean()) if len(f) else 0.0


def f1_per_class(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, F1) per class; 0 where undefined."""
    y_true, y_pred = np.asarray(y_true, bool), np.asarray(y_pred, bool)
    tp = (y_true & y_pred).sum(0).astype(float)
    pp = y_pred.sum(0)
    ap = y_true.sum(0)
    precision = np.divide(tp, pp, out=np.zeros_like(tp), where=pp > 0)
    recall = np.divide(tp, ap, out=np.zeros_like(tp), where=ap > 0)
    s = precision + recall
    f1 = np.divide(2 * precision * recall, s, out=np.zeros_like(tp), where=s > 0)
    return precision, recall, f1


def summary(y_true: np.ndarray, scores: np.ndarray, thresholds: np.ndarray | float = 0.5) -> dict[str, Any]:
    """mAP, sample-F2 and macro-F1 at the given thresholds, plus AP per class."""
    pred = scores >= np.asarray(thresholds)
    ap = average_precision(y_true, scores)
    has_pos = np.asarray(y_true).any(0)
    _, _, f1 = f1_per_class(y_true, pred)
    return {
        "mAP": mean_ap(ap),
        "f2_samples": fbeta_samples(y_true, pred),
        "f1_macro": float(f1[has_pos].mean()) if has_pos.any() else 0.0,
        "ap": ap.tolist(),
    }


def tune_thresholds(
    y_true: np.ndarray,
    scores: np.ndarray,
    beta: float = 2.0,
    passes: int = 3,
    grid: np.ndarray = THRESHOLD_GRID,
    y_train: np.ndarray | None = None,
    min_gain: float = MIN_GAIN_IMAGES,
) -> np.ndarray:
    """Per-class thresholds maximising sample-averaged F-beta, by coordinate ascent.

    Sample-F2 couples the classes (a sample's score depends on all its labels),
    so each class's threshold is chosen with the others fixed, for `passes`
    rounds. The start is the best constant label set (chosen on `y_train`
    when given: more labels than the tuning split), as thresholds 0 ("always")
    and 1 ("never"); a class leaves its start only for a threshold that raises
    mean sample-F2 on these images by more than `min_gain` images' worth. On a
    small split (ccp-dev: 60 images per half) unrestricted tuning fits noise and
    falls below the constant; this keeps it there unless the scores earn more.
    Classes without positives here get 1.
    """
    y_true = np.asarray(y_true, bool)
    n, k = y_true.shape
    if n == 0:
        return np.full(k, 0.5)
    chosen = np.isin(np.arange(k), constant_baseline(y_true if y_train is None else y_train, y_true, beta)["labels"])
    th = np.where(chosen, 0.0, 1.01)
    candidates = np.concatenate([[0.0], grid, [1.01]])  # 0 = always predict, 1.01 = never
    b2 = beta * beta
    # a class with no positives here can only add false positives: never predict it (not the first
    # grid value above its scores, which ties on this data and fires on a new image)
    empty = ~y_true.any(0)
    th[empty] = 1.01
    pred = scores >= th
    margin = min_gain / n
    for _ in range(passes):
        for c in np.flatnonzero(~empty):
            # counts of every sample without class c, then add c's contribution per candidate
            others = np.delete(np.arange(k), c)
            tp0 = (y_true[:, others] & pred[:, others]).sum(1)
            fp0 = (~y_true[:, others] & pred[:, others]).sum(1)
            fn0 = (y_true[:, others] & ~pred[:, others]).sum(1)
            pc = scores[:, c][None, :] >= candidates[:, None]  # (G, n)
            yc = y_true[:, c][None, :]
            tp = tp0 + (pc & yc)
            fp = fp0 + (pc & ~yc)
            fn = fn0 + (~pc & yc)
            den = (1 + b2) * tp + b2 * fn + fp
            f = np.where(den > 0, (1 + b2) * tp / np.maximum(den, 1), 1.0).mean(1)
            best = int(np.argmax(f))
            if f[best] > f[int(np.flatnonzero(candidates == th[c])[0])] + margin:
                th[c] = candidates[best]
                pred[:, c] = scores[:, c] >= th[c]
    return np.minimum(th, 1.0)


def crossfit_f2(
    y_true: np.ndarray,
    scores: np.ndarray,
    folds: int = 2,
    repeats: int = 5,
    seed: int = 0,
    beta: float = 2.0,
    y_train: np.ndarray | None = None,
) -> float:
    """Sample-F2 with thresholds tuned on the other folds only: an honest estimate of tuned F2.

    Tuning and scoring on the same images flatters the thresholds; here every
    image is scored with thresholds that never saw it. The mean over `repeats`
    random fold splits (one split of 120 images moves the figure by about 0.01).
    """
    y_true = np.asarray(y_true)
    n = len(y_true)
    if n < 2 * folds:
        th = tune_thresholds(y_true, scores, beta, y_train=y_train)
        return fbeta_samples(y_true, scores >= th, beta)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(repeats):
        order = rng.permutation(n)
        pred = np.zeros_like(y_true, dtype=bool)
        for k in range(folds):
            held = order[k::folds]
            fit = np.setdiff1d(order, held)
            pred[held] = scores[held] >= tune_thresholds(y_true[fit], scores[fit], beta, y_train=y_train)
        out.append(fbeta_samples(y_true, pred, beta))
    return float(np.mean(out))


def constant_baseline(y_train: np.ndarray, y_eval: np.ndarray, beta: float = 2.0) -> dict[str, Any]:
    """The best fixed label set (chosen on train), scored on `y_eval`.

    Greedy: add the label that raises train sample-F2 most until none does.
    """
    y_train = np.asarray(y_train, bool)
    k = y_train.shape[1]
    chosen = np.zeros(k, bool)
    best = fbeta_samples(y_train, np.zeros_like(y_train), beta)
    while True:
        gains = []
        for c in np.flatnonzero(~chosen):
            trial = chosen.copy()
            trial[c] = True
            gains.append((fbeta_samples(y_train, np.broadcast_to(trial, y_train.shape), beta), c))
        if not gains:
            break
        score, c = max(gains)
        if score <= best:
            break
        best, chosen[c] = score, True
    pred = np.broadcast_to(chosen, np.asarray(y_eval).shape)
    return {"labels": np.flatnonzero(chosen).tolist(), "f2_samples": fbeta_samples(y_eval, pred, beta)}


def prior_baseline(y_train: np.ndarray, y_eval: np.ndarray) -> dict[str, float]:
    """Class frequencies as scores: the mAP a model must beat to have learned anything."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prior = np.asarray(y_train, float).mean(0)
    scores = np.broadcast_to(prior, np.asarray(y_eval).shape)
    return {"mAP": mean_ap(average_precision(y_eval, scores))}


# --------------------------------------------------------------------------- single-label (multiclass, binary)


def baselines(y_train: np.ndarray, y_eval: np.ndarray, beta: float = 2.0) -> dict[str, dict]:
    """What a model must beat: the best constant label set and class priors, both chosen on train."""
    return {"constant": constant_baseline(y_train, y_eval, beta), "prior": prior_baseline(y_train, y_eval)}


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """(k, k) counts: row = true class, column = predicted class."""
    cm = np.zeros((k, k), int)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm


def most_confused(cm: np.ndarray, names: list[str], min_count: int = 1) -> list[tuple[str, str, int]]:
    """Off-diagonal cells as (true, predicted, count), largest first (fastai's `most_confused`)."""
    pairs = [
        (names[i], names[j], int(cm[i, j]))
        for i in range(len(cm))
        for j in range(len(cm))
        if i != j and cm[i, j] >= min_count
    ]
    return sorted(pairs, key=lambda p: (-p[2], p[0], p[1]))


def top_k_accuracy(y_true: np.ndarray, probs: np.ndarray, k: int) -> float:
    """Share of rows whose true class is among the k most probable."""
    if not len(y_true):
        return 0.0
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float((top == np.asarray(y_true)[:, None]).any(1).mean())


def single_label_summary(
    y_true: np.ndarray, probs: np.ndarray, names: list[str], k: int = 5, pred: np.ndarray | None = None
) -> dict:
    """Accuracy, top-k accuracy, per-class precision/recall/F1, macro-F1, log loss, confusion matrix
    and most-confused pairs for class indices `y_true` and (N, K) probabilities.

    `pred` (class indices) defaults to the most probable class; a binary task passes its thresholded one.
    """
    y_true = np.asarray(y_true, int)
    n, kk = probs.shape
    pred = np.argmax(probs, 1) if pred is None else np.asarray(pred, int)
    cm = confusion_matrix(y_true, pred, kk)
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(1), cm.sum(0)
    precision = np.divide(tp, predicted, out=np.zeros(kk), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(kk), where=support > 0)
    s = precision + recall
    f1 = np.divide(2 * precision * recall, s, out=np.zeros(kk), where=s > 0)
    present = support > 0
    p_true = np.clip(probs[np.arange(n), y_true], 1e-7, 1.0) if n else np.zeros(0)
    return {
        "images": int(n),
        "correct": int(tp.sum()),
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "top_k": int(min(k, kk)),
        "top_k_accuracy": top_k_accuracy(y_true, probs, min(k, kk)),
        "f1_macro": float(f1[present].mean()) if present.any() else 0.0,
        "log_loss": float(-np.log(p_true).mean()) if n else 0.0,
        "per_class": {
            nm: {
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "f1": float(f1[c]),
                "support": int(support[c]),
                "predicted": int(predicted[c]),
            }
            for c, nm in enumerate(names)
        },
        "confusion": cm.tolist(),
        "most_confused": [list(p) for p in most_confused(cm, names)],
    }


def majority_baseline(train_counts, y_eval: np.ndarray, names: list[str], k: int = 5) -> dict:
    """Always the most frequent training class (accuracy, macro-F1), and training class frequencies as
    probabilities for every image (top-k accuracy, log loss): what a model must beat."""
    counts = np.asarray(train_counts, float)
    prior = counts / max(counts.sum(), 1.0)
    y_eval = np.asarray(y_eval, int)
    majority = int(np.argmax(counts))
    const = single_label_summary(
        y_eval, np.tile(prior, (len(y_eval), 1)), names, k, pred=np.full(len(y_eval), majority)
    )
    return {
        "majority": {"class": names[majority], "accuracy": const["accuracy"], "f1_macro": const["f1_macro"]},
        "prior": {
            "top_k_accuracy": const["top_k_accuracy"],
            "log_loss": const["log_loss"],
            "accuracy": const["accuracy"],
        },
    }


def roc_auc(y_true: np.ndarray, p: np.ndarray) -> float | None:
    """ROC-AUC of one class; None unless both classes occur."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y_true).astype(int)
    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None


def binary_scores(y_true: np.ndarray, p: np.ndarray) -> dict[str, float | None]:
    """ROC-AUC (None unless both classes occur) and AP (None without positives) of the positive class."""
    y = np.asarray(y_true).astype(int)
    return {
        "roc_auc": roc_auc(y, p),
        "ap": float(average_precision(y[:, None], np.asarray(p)[:, None])[0]) if y.any() else None,
    }


def tune_binary_threshold(y_true: np.ndarray, p: np.ndarray, grid: np.ndarray = THRESHOLD_GRID) -> float:
    """The threshold on the positive class's probability that maximises its F1 (ties: closest to 0.5)."""
    y = np.asarray(y_true, bool)
    if not y.any() or y.all():
        return 0.5
    cands = np.concatenate([[0.5], grid])
    pred = np.asarray(p)[None, :] >= cands[:, None]
    tp = (pred & y).sum(1)
    den = pred.sum(1) + y.sum()
    f1 = np.where(den > 0, 2 * tp / np.maximum(den, 1), 0.0)
    best = f1.max()
    ok = cands[f1 >= best - 1e-12]
    return float(ok[np.argmin(np.abs(ok - 0.5))])

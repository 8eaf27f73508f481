"""Deterministic train/val split with iterative stratification (Sechidis et al., 2011).

Multi-label data cannot be stratified by a single key; iterative
stratification (the `iterative-stratification` package) assigns the rarest
labels first so every class keeps its share in both splits.
"""

from __future__ import annotations

import warnings

import numpy as np


def split_indices(
    labels: np.ndarray, *, val_fraction: float = 0.2, val_count: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split rows of a multi-hot matrix.

    Args:
      labels: (N, C) 0/1 array.
      val_fraction: share of rows for validation, used when `val_count` is None.
      val_count: exact number of validation rows (the original project held out 4,000).
      seed: makes the split reproducible.
    Returns:
      (train_idx, val_idx), each sorted ascending.
    """
    n = len(labels)
    n_val = val_count if val_count is not None else int(round(n * val_fraction))
    if n_val < 0 or n_val > n:
        raise ValueError(f"validation size {n_val} is outside 0..{n} (records available)")
    if n_val == 0 or n < 2:
        return np.arange(n), np.arange(0)
    if n_val == n:
        return np.arange(0), np.arange(n)
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    y = np.asarray(labels, dtype=int).reshape(n, -1)
    # scikit-learn takes a one-column matrix (one class, or no label column) for a binary target and
    # refuses it: stratify on positives and negatives as two columns. Any matrix of 2+ columns
    # (all zero, a single combination) is a valid multilabel-indicator.
    strat = y if y.shape[1] >= 2 else np.hstack([y, 1 - y]) if y.shape[1] else np.ones((n, 2), int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=n_val, random_state=seed)
        train, val = next(splitter.split(np.zeros(n), strat))
    train, val = _exact_size(y, list(train), list(val), n_val)
    train, val = _ensure_both_sides(y, np.sort(train), np.sort(val))
    return train, val


def _exact_size(y: np.ndarray, train: list[int], val: list[int], n_val: int) -> tuple[np.ndarray, np.ndarray]:
    """The stratifier may miss the asked size on small sets; move the rows whose classes can best spare them."""
    while len(val) != n_val:
        src, dst = (train, val) if len(val) < n_val else (val, train)
        left = y[src].sum(0)  # positives per class still on the giving side
        row = max(src, key=lambda i: min((left[c] for c in np.flatnonzero(y[i])), default=len(src) + 1))
        src.remove(row)
        dst.append(row)
    return np.array(train, dtype=int), np.array(val, dtype=int)


def _ensure_both_sides(y: np.ndarray, train: np.ndarray, val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Swap rows so every class with >= 2 positives has one in each split (small sets lose them)."""
    tr, va = [int(i) for i in train], [int(i) for i in val]
    for c in np.argsort(y.sum(0)):  # rarest first, so later swaps do not undo them
        if y[:, c].sum() < 2:
            continue
        for src, dst in ((tr, va), (va, tr)):
            if y[dst, c].any() or not dst:
                continue
            # move the positive with fewest other labels; bring back a row without class c
            give = min((i for i in src if y[i, c]), key=lambda i: y[i].sum())
            take = [i for i in dst if not y[i, c]]
            if not take:
                continue
            back = min(take, key=lambda i: y[i].sum())
            src.remove(give)
            dst.remove(back)
            src.append(back)
            dst.append(give)
    return np.sort(np.array(tr, dtype=int)), np.sort(np.array(va, dtype=int))

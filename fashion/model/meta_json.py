"""`meta.json`, the contract between train.py and every command that uses a bundle (detect, evaluate,
exports): its typed shape, its one reader (`read`, which checks the fields prediction relies on and
names the file and the field when one is wrong) and its one writer (`write`). A bundle folder holds
`model.keras` and `meta.json`; the writer runs last, so a folder with a meta.json is complete.

>>> from fashion.model import meta_json
>>> meta_json.META
'meta.json'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypedDict

from fashion.config.choices import TASKS
from fashion.core import fileio
from fashion.core.errors import BundleError

META = "meta.json"


class _MetaRequired(TypedDict):
    labels: list[str]  # the dataset's label (class) names, in its order
    input_size: int  # the image side the model was trained at


class BundleMeta(_MetaRequired, total=False):
    """What a task's `bundle_meta` writes; `task` absent means multilabel (the oldest bundles)."""

    task: str  # multilabel | multiclass | binary
    heads: list[str]  # the model's output names
    input: str  # what the model takes (uint8 RGB, preprocessing inside)
    backbone: str
    alpha: float | None  # MobileNetV2's width
    thresholds: list[float]  # tuned on validation data, one per label (binary: the positive class's last)
    validation: dict[str, object]  # the validation metrics at the end of training
    # multilabel
    head_weights: list[float]
    pos_weights: list[float]
    # multiclass and binary
    classes: list[str]
    top_k: int
    class_weights: list[float]
    positive_class: str  # binary
    pos_weight: float  # binary
    # the run (RUN_FIELDS)
    dataset: dict[str, object]  # path, manifest_sha256, records
    config: dict[str, object]  # the TrainConfig
    command: str
    created: str
    cluster: dict[str, object]  # only when trained on several processes


def write(folder: Path, meta: BundleMeta) -> None:
    """meta.json into the bundle folder (temp name, then rename): last, once model.keras is there."""
    fileio.atomic_write_json(folder / META, meta)


def read(path: Path) -> BundleMeta:
    """A bundle's meta.json with the fields prediction reads checked; BundleError naming the file and the field."""
    if not path.is_file():
        raise BundleError(f"{path}: missing (labels, thresholds and input size come from there)")
    try:
        meta: BundleMeta = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise BundleError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise BundleError(f"{path}: invalid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{path}: expected a JSON object, found {type(meta).__name__}")
    labels, task = meta.get("labels"), meta.get("task", "multilabel")
    if not labels or not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise BundleError(f"{path}: 'labels' must be a non-empty list of names")
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:
        raise BundleError(f"{path}: label {twice[0]!r} appears more than once")
    if task not in TASKS:
        raise BundleError(f"{path}: unknown task {task!r} (one of {', '.join(TASKS)})")
    size = meta.get("input_size")
    if size is None:
        raise BundleError(f"{path}: no 'input_size' (the image side the model was trained at)")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise BundleError(f"{path}: 'input_size' must be a whole number of pixels, got {size!r}")
    heads = meta.get("heads")
    if heads is not None and (not isinstance(heads, list) or not all(isinstance(h, str) for h in heads)):
        raise BundleError(f"{path}: 'heads' must be a list of output names")
    th = meta.get("thresholds") or []
    if not isinstance(th, list) or not all(_probability(t) for t in th):
        raise BundleError(f"{path}: 'thresholds' must be a list of numbers from 0 to 1")
    return meta


def _probability(t) -> bool:
    return isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t <= 1

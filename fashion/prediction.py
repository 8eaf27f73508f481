"""Prediction with a bundle from train.py: per-category probabilities and the labels past their thresholds
(multilabel), the most probable class (multiclass) or the positive class's probability (binary).

Only inference imports here (no training modules), and the model loads once,
in Keras' safe mode. What differs between tasks (columns, probabilities) the bundle's
task object (fashion.tasks) answers.
"""

from __future__ import annotations

import glob
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from . import imaging
from .errors import BundleError
from .fetching import Fetcher
from .sources import IMAGE_EXTENSIONS
from .tasks import Task, binary_classes, get_task  # noqa: F401  (binary_classes: API)


@dataclass
class Bundle:
    path: Path
    model: object
    labels: list[str]
    heads: list[str]
    thresholds: np.ndarray
    input_size: int
    task: str = "multilabel"
    backbone: str = ""
    meta: dict = field(default_factory=dict)

    @cached_property
    def task_obj(self) -> Task:
        """The bundle's task (fashion.tasks) over its labels and heads."""
        return get_task(self.task, self.labels, self.heads)

    @property
    def classes(self) -> list[str]:
        """Names of the columns `predict_arrays` returns: the labels, or for a binary bundle
        [negative, positive] (a one-label binary dataset gets `not <label>` as its negative)."""
        return self.task_obj.classes

    @property
    def threshold(self) -> float:
        """Binary bundles: the positive class's threshold (tuned on validation data, else 0.5)."""
        return float(self.thresholds[-1]) if len(self.thresholds) else 0.5


def _bundle(folder: Path, model, meta: dict) -> Bundle:
    return Bundle(
        folder,
        model,
        meta["labels"],
        meta["heads"],
        np.asarray(meta.get("thresholds") or [], float),
        int(meta["input_size"]),
        meta.get("task", "multilabel"),
        meta.get("backbone", ""),
        meta,
    )


def newest_bundle(model_save: str | Path = "model_save") -> Path:
    found = [p.parent for p in Path(model_save).glob("*/meta.json") if (p.parent / "model.keras").is_file()]
    if not found:
        raise BundleError(f"no bundle in {model_save}/ (train one with train.py, or pass --model)")
    return max(found, key=lambda p: (p / "meta.json").stat().st_mtime)


def load_bundle(path: str | Path | None = None, model_save: str | Path = "model_save") -> Bundle:
    import keras

    folder = Path(path) if path else newest_bundle(model_save)
    if folder.suffix == ".tflite":
        return load_tflite_bundle(folder)
    if folder.suffix == ".keras":
        folder = folder.parent
    meta_path, model_path = folder / "meta.json", folder / "model.keras"
    if not meta_path.is_file() or not model_path.is_file():
        raise BundleError(f"{folder}: not a bundle (expected model.keras and meta.json there)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    from . import model as _  # noqa: F401  registers our custom layers (ReverseChannels) before loading

    model = keras.saving.load_model(model_path, compile=False, safe_mode=True)
    return _bundle(folder, model, meta)


def expand_inputs(args: Iterable[str]) -> Iterator[str]:
    """Files, folders (recursive), globs, http(s) URLs and `-` (one path or URL per line on stdin)."""
    for arg in args:
        if arg == "-":
            yield from (ln.strip() for ln in sys.stdin if ln.strip())
        elif arg.startswith(("http://", "https://")):
            yield arg
        elif Path(arg).is_dir():
            yield from sorted(str(p) for p in Path(arg).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif any(c in arg for c in "*?[") and not Path(arg).exists():
            matches = sorted(glob.glob(arg, recursive=True))
            yield from matches if matches else [arg]  # an unmatched glob is reported as missing
        else:
            yield arg


def load_image(source: str, fetcher: Fetcher, size: int) -> np.ndarray:
    """uint8 RGB, shorter side to `size` and center-cropped: what validation saw."""
    data = fetcher.fetch(source if source.startswith(("http://", "https://")) else str(Path(source).resolve()))
    return imaging.resize(imaging.decode_rgb(data, target=size), size, "crop")


def to_probs(out, heads: list[str], task: str = "multilabel") -> np.ndarray:
    """A model's outputs as (N, columns) probabilities: one column per label (multilabel), the softmax
    (multiclass), or [1 - p, p] with p the positive class's probability (binary)."""
    return get_task(task, heads=heads).to_probs(out)


def predict_arrays(bundle: Bundle, images: np.ndarray, tta: bool = False) -> np.ndarray:
    """(N, S, S, 3) uint8 -> (N, columns) probabilities (see `to_probs`); `tta` averages with the mirror."""
    probs = bundle.task_obj.to_probs(bundle.model.predict_on_batch(images))
    if tta:
        mirrored = bundle.model.predict_on_batch(np.ascontiguousarray(images[:, :, ::-1]))
        probs = (probs + bundle.task_obj.to_probs(mirrored)) / 2
    return probs


def top_k(probs: np.ndarray, names: list[str], k: int) -> list[tuple[str, float]]:
    """The k most probable (name, probability) of one row, most probable first."""
    order = np.argsort(-probs, kind="stable")[:k]
    return [(names[i], float(probs[i])) for i in order]


class TFLiteModel:
    """A .tflite export behind the same `predict_on_batch` as a Keras model (dict of head outputs)."""

    def __init__(self, path: Path):
        import tensorflow as tf

        self.interpreter = tf.lite.Interpreter(model_path=str(path))
        self.runner = self.interpreter.get_signature_runner("serving_default")
        self.input_name = self.interpreter.get_signature_list()["serving_default"]["inputs"][0]

    def predict_on_batch(self, images: np.ndarray) -> dict:
        return self.runner(**{self.input_name: np.ascontiguousarray(images, dtype=np.uint8)})


def load_tflite_bundle(path: Path) -> Bundle:
    meta_path = path.parent / "meta.json"
    if not meta_path.is_file():
        raise BundleError(f"{path}: no meta.json beside it (labels and thresholds come from there)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    return _bundle(path.parent, TFLiteModel(path), meta)


def export_bundle(bundle: Bundle, fmt: str) -> Path:
    """`savedmodel` -> BUNDLE/saved_model/ (serving signature); `tflite` -> BUNDLE/model.tflite."""
    import shutil
    import tempfile

    from .fileio import atomic_write_bytes

    if fmt not in ("savedmodel", "tflite"):
        raise ValueError(f"--export must be savedmodel or tflite, got {fmt!r}")
    with tempfile.TemporaryDirectory(dir=bundle.path, prefix=".export-") as tmp:
        saved = Path(tmp) / "saved_model"
        bundle.model.export(str(saved), format="tf_saved_model", verbose=False)
        if fmt == "savedmodel":
            target = bundle.path / "saved_model"
            shutil.rmtree(target, ignore_errors=True)
            saved.rename(target)  # same folder: a rename, never a half-copied export
            return target
        import tensorflow as tf

        target = bundle.path / "model.tflite"
        atomic_write_bytes(target, tf.lite.TFLiteConverter.from_saved_model(str(saved)).convert())
        return target

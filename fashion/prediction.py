"""Prediction with a bundle from train.py: per-category probabilities and the labels past their thresholds
(multilabel), the most probable class (multiclass) or the positive class's probability (binary).

Only inference imports here (no training modules), and the model loads once,
in Keras' safe mode.
"""

from __future__ import annotations

import glob
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from . import imaging
from .errors import BundleError
from .fetching import Fetcher
from .sources import IMAGE_EXTENSIONS


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

    @property
    def classes(self) -> list[str]:
        """Names of the columns `predict_arrays` returns: the labels, or for a binary bundle
        [negative, positive] (a one-label binary dataset gets `not <label>` as its negative)."""
        return binary_classes(self.labels) if self.task == "binary" else list(self.labels)

    @property
    def threshold(self) -> float:
        """Binary bundles: the positive class's threshold (tuned on validation data, else 0.5)."""
        return float(self.thresholds[-1]) if len(self.thresholds) else 0.5


def binary_classes(labels: list[str]) -> list[str]:
    return list(labels) if len(labels) == 2 else [f"not {labels[0]}", labels[0]]


def _bundle(folder: Path, model, meta: dict) -> Bundle:
    return Bundle(folder, model, meta["labels"], meta["heads"], np.asarray(meta.get("thresholds") or [], float),
                  int(meta["input_size"]), meta.get("task", "multilabel"), meta.get("backbone", ""), meta)


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


def stack_heads(out: dict, heads: list[str]) -> np.ndarray:
    """The model's {head: (N, 1)} outputs as one (N, classes) array in label order."""
    return np.concatenate([np.asarray(out[h]).reshape(-1, 1) for h in heads], axis=1)


def to_probs(out, heads: list[str], task: str = "multilabel") -> np.ndarray:
    """A model's outputs as (N, columns) probabilities: one column per label (multilabel), the softmax
    (multiclass), or [1 - p, p] with p the positive class's probability (binary)."""
    if task == "multilabel":
        return stack_heads(out, heads)
    if isinstance(out, dict):  # a TFLite runner names its one output itself
        out = out[heads[0]] if heads[0] in out else next(iter(out.values()))
    arr = np.asarray(out, float)
    if task == "multiclass":
        return arr.reshape(len(arr), -1)
    p = arr.reshape(-1)
    return np.stack([1.0 - p, p], axis=1)


def predict_arrays(bundle: Bundle, images: np.ndarray, tta: bool = False) -> np.ndarray:
    """(N, S, S, 3) uint8 -> (N, columns) probabilities (see `to_probs`); `tta` averages with the mirror."""
    probs = to_probs(bundle.model.predict_on_batch(images), bundle.heads, bundle.task)
    if tta:
        mirrored = bundle.model.predict_on_batch(np.ascontiguousarray(images[:, :, ::-1]))
        probs = (probs + to_probs(mirrored, bundle.heads, bundle.task)) / 2
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

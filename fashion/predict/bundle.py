"""Prediction with a bundle from train.py: per-category probabilities and the labels past their thresholds
(multilabel), the most probable class (multiclass) or the positive class's probability (binary).

Only inference imports here (no training modules), and the model loads once,
in Keras' safe mode. `load_bundle` checks meta.json, the archive and the model's outputs and input
size against each other: a damaged or inconsistent bundle is one BundleError naming the file. What
differs between tasks (columns, probabilities) the bundle's task object (fashion.model.tasks) answers.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from fashion.core.errors import BundleError
from fashion.data import imaging
from fashion.data.fetching import Fetcher
from fashion.data.sources import IMAGE_EXTENSIONS
from fashion.model import meta_json
from fashion.model.meta_json import BundleMeta
from fashion.model.tasks.base import Task
from fashion.model.tasks.registry import get_task
from fashion.predict.runtimes import RUNTIMES, load_model_file


@dataclass
class Bundle:
    path: Path
    model: Any  # a Keras model, or a TFLiteModel / OnnxModel (fashion.predict.runtimes)
    labels: list[str]
    heads: list[str]
    thresholds: np.ndarray
    input_size: int
    task: str = "multilabel"
    backbone: str = ""
    meta: BundleMeta | dict = field(default_factory=dict)

    @cached_property
    def task_obj(self) -> Task:
        """The bundle's task (fashion.model.tasks) over its labels and heads."""
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


def _bundle(folder: Path, model, meta: BundleMeta, meta_path: Path, model_path: Path) -> Bundle:
    """The bundle, once meta.json agrees with the model's outputs and input size (else BundleError)."""
    labels, task = meta["labels"], meta.get("task", "multilabel")
    heads = meta.get("heads") or get_task(task, labels).heads
    # a multilabel bundle without tuned thresholds decides at 0.5, as an untuned binary one does
    th = meta.get("thresholds") or ([0.5] * len(labels) if task == "multilabel" else [])
    bundle = Bundle(
        folder, model, labels, heads, np.asarray(th, float), meta["input_size"], task, meta.get("backbone", ""), meta
    )
    outputs, side = _model_shape(model)
    _check_outputs(bundle, outputs, f"{meta_path}: ", model_path.name, named=getattr(model, "named_outputs", True))
    if side and side != (bundle.input_size, bundle.input_size):
        raise BundleError(
            f"{meta_path}: input_size {bundle.input_size} but {model_path.name} takes {side[0]}x{side[1]} images"
        )
    return bundle


def _model_shape(model) -> tuple[dict[str, Any], tuple[Any, ...] | None]:
    """({output name: columns}, (height, width) of the input when fixed) of a Keras or exported model."""
    if hasattr(model, "shapes"):  # runtimes.TFLiteModel, runtimes.OnnxModel
        outs, shape = model.shapes()
    else:
        outs = {n: t.shape[-1] for n, t in zip(model.output_names, model.outputs)}
        shape = list(model.inputs[0].shape)
    hw = tuple(shape[1:3]) if len(shape) == 4 and all(isinstance(d, int) and d > 1 for d in shape[1:3]) else None
    return outs, hw


def _check_outputs(bundle: Bundle, outputs: dict[str, int | None], where: str, model: str, named: bool) -> None:
    """meta.json's labels and heads against the model's outputs: one per label (multilabel) or one output
    with a column per class (multiclass) or one column (binary)."""
    n, task = len(bundle.labels), bundle.task_obj
    if not task.single_label:
        if len(outputs) != n:
            raise BundleError(f"{where}{n} labels for a model with {len(outputs)} outputs ({model}: one per label)")
        if len(bundle.heads) != n:
            raise BundleError(f"{where}{n} labels but {len(bundle.heads)} heads")
        if len(bundle.thresholds) != n:
            raise BundleError(f"{where}{len(bundle.thresholds)} thresholds for {n} labels")
        missing = [h for h in bundle.heads if h not in outputs] if named else []
        if missing:
            raise BundleError(f"{where}head {missing[0]!r} is not an output of {model} ({', '.join(sorted(outputs))})")
        return
    if len(outputs) != 1:
        raise BundleError(f"{where}a {task.name} bundle needs a model with one output; {model} has {len(outputs)}")
    (name, width), want = next(iter(outputs.items())), task.units  # type: ignore[attr-defined]  # (single-label tasks)
    if named and name != bundle.heads[0]:
        raise BundleError(f"{where}head {bundle.heads[0]!r} is not an output of {model} ({name})")
    if width is not None and width != want:
        raise BundleError(f"{where}{n} labels for a model whose output has {width} column(s) ({model})")


def _load_keras(path: Path):
    """model.keras in Keras' safe mode; a damaged or foreign file is a BundleError saying so."""
    import zipfile

    import keras

    from fashion.model import network as _  # noqa: F401  registers our custom layers (ReverseChannels) before loading

    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()  # every member's CRC: a flipped byte shows here, not as Keras' "File not found"
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise BundleError(f"{path}: damaged: not a readable .keras (zip) archive ({e})") from None
    if bad:
        raise BundleError(f"{path}: damaged: {bad} inside the archive fails its CRC")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:  # Keras raises ValueError, TypeError, KeyError... for a model it cannot rebuild
        raise BundleError(f"{path}: cannot be loaded: {str(e).strip().splitlines()[0][:300]}") from None


def newest_bundle(model_save: str | Path = "model_save") -> Path:
    found = [p.parent for p in Path(model_save).glob(f"*/{meta_json.META}") if (p.parent / "model.keras").is_file()]
    if not found:
        raise BundleError(f"no bundle in {model_save}/ (train one with train.py, or pass --model)")
    return max(found, key=lambda p: (p / meta_json.META).stat().st_mtime)


def load_bundle(path: str | Path | None = None, model_save: str | Path = "model_save") -> Bundle:
    """A bundle folder (or its model.keras, or a .tflite/.onnx export beside meta.json), checked; BundleError
    naming the file."""
    folder = Path(path) if path else newest_bundle(model_save)
    if folder.suffix in RUNTIMES:
        return load_file_bundle(folder)
    if folder.suffix == ".keras":
        folder = folder.parent
    meta_path, model_path = folder / meta_json.META, folder / "model.keras"
    if not folder.is_dir() or not (meta_path.is_file() or model_path.is_file()):
        raise BundleError(f"{folder}: not a bundle (expected model.keras and meta.json there)")
    if not model_path.is_file():
        raise BundleError(f"{model_path}: missing (the bundle's model)")
    meta = meta_json.read(meta_path)  # before the model: a bad meta.json is refused in milliseconds
    return _bundle(folder, _load_keras(model_path), meta, meta_path, model_path)


def is_url(arg: str) -> bool:
    """http(s) in any case: schemes are case-insensitive (RFC 3986), so HTTP://... is a URL, not a path."""
    return arg[:8].lower().startswith(("http://", "https://"))


def expand_inputs(args: Iterable[str]) -> Iterator[str]:
    """Files, folders (recursive), globs, http(s) URLs and `-` (one path or URL per line on stdin)."""
    for arg in args:
        if arg == "-":
            yield from (ln.strip() for ln in sys.stdin if ln.strip())
        elif is_url(arg):
            yield arg
        elif Path(arg).is_dir():
            yield from sorted(str(p) for p in Path(arg).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif any(c in arg for c in "*?[") and not Path(arg).exists():
            matches = sorted(glob.glob(arg, recursive=True))
            yield from matches if matches else [arg]  # an unmatched glob is reported as missing
        else:
            yield arg


def load_image(source: str, fetcher: Fetcher, size: int, max_pixels: int) -> np.ndarray:
    """A file or URL's image as `image_pixels` makes it."""
    # abspath, not Path.resolve(): the same file, without resolve's lstat of every parent folder (a
    # quarter of the per-photo time of the decode threads of detect.py --list on local files)
    return image_pixels(fetcher.fetch(source if is_url(source) else os.path.abspath(source)), size, max_pixels)


def image_pixels(data: bytes, size: int, max_pixels: int) -> np.ndarray:
    """uint8 RGB, shorter side to `size` and center-cropped: what validation saw. A large JPEG is decoded at
    a reduced DCT scale (a 100-megapixel photo as ~1.5 MP); more than `max_pixels` is refused from the header."""
    return imaging.resize(imaging.decode_rgb(data, target=size, max_pixels=max_pixels), size, "crop")


def to_probs(out, heads: list[str], task: str = "multilabel") -> np.ndarray:
    """A model's outputs as (N, columns) probabilities: one column per label (multilabel), the softmax
    (multiclass), or [1 - p, p] with p the positive class's probability (binary)."""
    return get_task(task, heads=heads).to_probs(out)


def predict_arrays(bundle: Bundle, images: np.ndarray, tta: bool = False, pad_to: int = 0) -> np.ndarray:
    """(N, S, S, 3) uint8 -> (N, columns) probabilities (see `to_probs`); `tta` averages with the mirror.
    `pad_to`: a shorter batch is filled up with black images whose rows are dropped, so that a run of many
    batches keeps one graph (Keras traces the model again for the first batch of another size: ~2 s for
    a DenseNet121 on CPU, at the end of every list whose length is not a multiple of the batch)."""
    n = len(images)
    if 0 < n < pad_to:
        images = np.concatenate([images, np.zeros((pad_to - n, *images.shape[1:]), images.dtype)])
    probs = bundle.task_obj.to_probs(bundle.model.predict_on_batch(images))
    if tta:
        mirrored = bundle.model.predict_on_batch(np.ascontiguousarray(images[:, :, ::-1]))
        probs = (probs + bundle.task_obj.to_probs(mirrored)) / 2
    return probs[:n]


def top_k(probs: np.ndarray, names: list[str], k: int) -> list[tuple[str, float]]:
    """The k most probable (name, probability) of one row, most probable first."""
    order = np.argsort(-probs, kind="stable")[:k]
    return [(names[i], float(probs[i])) for i in order]


def load_file_bundle(path: Path) -> Bundle:
    """A .tflite or .onnx export with the meta.json beside it (evaluate.py --export writes both there)."""
    meta_path = path.parent / meta_json.META
    if not path.is_file():
        raise BundleError(f"{path}: missing")
    if not meta_path.is_file():
        raise BundleError(f"{path}: no meta.json beside it (labels and thresholds come from there)")
    meta = meta_json.read(meta_path)
    return _bundle(path.parent, load_model_file(path), meta, meta_path, path)

"""Exported models behind a Keras model's `predict_on_batch` (a dict of head outputs), so detect.py, the
scorer and the service run a .tflite (TensorFlow Lite) or .onnx (onnxruntime) file as they run model.keras.

Each reports its outputs' columns and input size (`shapes`) for the bundle's checks against meta.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fashion.core.errors import BundleError

# what to install when onnxruntime is missing (pyproject.toml's extra)
ONNX_EXTRA = "pip install 'fashion[onnx]' (onnxruntime)"


class TFLiteModel:
    """A .tflite export. TFLite renames outputs (output_0, ...), so heads are matched by position."""

    named_outputs = False

    def __init__(self, path: Path):
        import tensorflow as tf

        self.interpreter = tf.lite.Interpreter(model_path=str(path))
        key = next(iter(self.interpreter.get_signature_list()))
        self.runner = self.interpreter.get_signature_runner(key)
        self.input_name = self.interpreter.get_signature_list()[key]["inputs"][0]

    def predict_on_batch(self, images: np.ndarray) -> dict:
        return self.runner(**{self.input_name: np.ascontiguousarray(images, dtype=np.uint8)})

    def shapes(self) -> tuple[dict[str, Any], list[Any]]:
        outs = {k: int(v["shape"][-1]) for k, v in self.runner.get_output_details().items()}
        return outs, list(self.runner.get_input_details()[self.input_name]["shape"])


class OnnxModel:
    """A .onnx export on onnxruntime's CPU provider (its outputs keep the heads' names)."""

    named_outputs = True

    def __init__(self, path: Path):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BundleError(f"{path}: running ONNX needs onnxruntime: {ONNX_EXTRA}") from None
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: its graph-optimisation notes are not the user's business
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0]
        self.names = [o.name for o in self.session.get_outputs()]
        self.dtype = np.uint8 if self.input.type == "tensor(uint8)" else np.float32

    def predict_on_batch(self, images: np.ndarray) -> dict:
        out = self.session.run(self.names, {self.input.name: np.ascontiguousarray(images, dtype=self.dtype)})
        return dict(zip(self.names, out))

    def shapes(self) -> tuple[dict[str, Any], list[Any]]:
        outs = {o.name: o.shape[-1] if isinstance(o.shape[-1], int) else None for o in self.session.get_outputs()}
        return outs, list(self.input.shape)


RUNTIMES = {".tflite": (TFLiteModel, "TFLite model"), ".onnx": (OnnxModel, "ONNX model")}


def load_model_file(path: Path):
    """A .tflite or .onnx file as its runtime's model; a damaged file is one BundleError naming it."""
    kind, what = RUNTIMES[path.suffix]
    try:
        return kind(path)
    except BundleError:
        raise
    except Exception as e:  # TFLite raises ValueError/RuntimeError, onnxruntime its own Fail/InvalidGraph...
        raise BundleError(f"{path}: damaged: not a readable {what} ({str(e).strip().splitlines()[0][:200]})") from None

"""evaluate.py --export: a bundle as a SavedModel for TF Serving (photo bytes in, probabilities and chosen
labels out), a TFLite file, an ONNX file for onnxruntime, or the trunk alone.

The SavedModel's `serving_default` decodes and resizes in the graph as detect.py does with OpenCV
(`bundle.image_pixels`): JPEGs at the same reduced DCT scale with libjpeg's accurate integer IDCT, the
shorter side to the input size (area averaging below half size, else bilinear), a centre crop. Two
differences remain: TensorFlow does not apply EXIF orientation, and its area/bilinear kernels round
slightly differently (bench/export.py measures the effect on probabilities and AP).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from fashion.core.errors import BundleError
from fashion.core.fileio import atomic_write_bytes
from fashion.predict.bundle import Bundle
from fashion.predict.runtimes import ONNX_EXTRA

FORMATS = ("savedmodel", "tflite", "onnx", "trunk")
# the signature that takes decoded arrays, kept under its own name beside serving_default
ARRAYS = "serving_arrays"
ONNX_OPSET = 17
ONNX_DEADLINE_S = 1800  # tf2onnx on DenseNet-201 at 224 px takes minutes, never hours


def export_bundle(bundle: Bundle, fmt: str) -> Path:
    """`savedmodel` -> BUNDLE/saved_model/; `tflite` -> BUNDLE/model.tflite; `onnx` -> BUNDLE/model.onnx;
    `trunk` -> BUNDLE/trunk-BACKBONE.weights.h5 (the trunk alone, float16: a start for --weights).
    Each is written under a temporary name in the bundle and renamed when whole."""
    from fashion.model.network import export_trunk

    if fmt not in FORMATS:
        raise ValueError(f"--export must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "trunk":
        return export_trunk(bundle.model, bundle.path / f"trunk-{bundle.backbone or 'model'}.weights.h5")
    with tempfile.TemporaryDirectory(dir=bundle.path, prefix=".export-") as tmp:
        saved = Path(tmp) / "saved_model"
        if fmt == "savedmodel":
            serving_archive(bundle).write_out(str(saved), verbose=False)
            target = bundle.path / "saved_model"
            shutil.rmtree(target, ignore_errors=True)
            saved.rename(target)  # same folder: a rename, never a half-copied export
            return target
        bundle.model.export(str(saved), format="tf_saved_model", verbose=False)  # the arrays signature alone
        if fmt == "onnx":
            return _onnx(saved, bundle.path / "model.onnx")
        import tensorflow as tf

        target = bundle.path / "model.tflite"
        atomic_write_bytes(target, tf.lite.TFLiteConverter.from_saved_model(str(saved)).convert())
        return target


def _onnx(saved: Path, target: Path) -> Path:
    """The arrays SavedModel through tf2onnx's converter. Keras' own model.export(format="onnx") is not used:
    on this model (Keras 3.15, TensorFlow 2.21) it writes a graph whose Normalization constants are left as
    inputs, and onnxruntime refuses to run it ("Required inputs (['.../normalize_1/Sub/y:0',
    '.../normalize_1/Sqrt/x:0']) are missing from input feed (['image'])"). The SavedModel has them as constants."""
    try:
        import tf2onnx  # noqa: F401  (checked here: the converter runs in a child process)
    except ImportError:
        raise BundleError(f"--export onnx needs tf2onnx: {ONNX_EXTRA}") from None
    tmp = target.with_name(f".{target.name}.tmp")
    cmd = [sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(saved), "--output", str(tmp)]
    try:
        # its own process: the converter's logging and TensorFlow graph state stay out of ours
        p = subprocess.run([*cmd, "--opset", str(ONNX_OPSET)], capture_output=True, text=True, timeout=ONNX_DEADLINE_S)
        if p.returncode != 0 or not tmp.is_file():
            lines = [ln for ln in p.stderr.splitlines() if "Error" in ln or "error" in ln] or p.stderr.splitlines()
            raise BundleError(f"{target}: tf2onnx failed: {(lines or ['no output'])[-1].strip()[:300]}")
        tmp.replace(target)
    except subprocess.TimeoutExpired:
        raise BundleError(f"{target}: tf2onnx did not finish within {ONNX_DEADLINE_S} s") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


def serving_archive(bundle: Bundle):
    """A keras.export.ExportArchive with `serving_default` (a batch of encoded JPEG/PNG/GIF/BMP strings ->
    probabilities, chosen, labels, classes, thresholds) and `serving_arrays` (the (N, S, S, 3) uint8 batch
    -> the model's head outputs, the export's signature before photo bytes)."""
    import keras
    import tensorflow as tf

    size, model = bundle.input_size, bundle.model
    classes = tf.constant(bundle.classes)
    task = bundle.task_obj
    thresholds = _cuts(bundle)

    def probabilities(images):
        out = model(images, training=False)
        if not task.single_label:
            return tf.concat([tf.reshape(tf.cast(out[h], tf.float32), (-1, 1)) for h in bundle.heads], axis=1)
        out = tf.cast(out[bundle.heads[0]] if isinstance(out, dict) else out, tf.float32)
        if task.decides_by_cut:  # binary: one sigmoid column -> [1 - p, p]
            p = tf.reshape(out, (-1, 1))
            return tf.concat([1.0 - p, p], axis=1)
        return out

    def serve_bytes(photos):
        images = tf.map_fn(
            lambda b: photo_pixels(b, size), photos, fn_output_signature=tf.TensorSpec((size, size, 3), tf.uint8)
        )
        p = probabilities(images)
        chosen = _chosen(p, thresholds, task)
        n = tf.shape(p)[0]
        names = tf.tile(classes[None], (n, 1))
        labels = tf.strings.reduce_join(tf.where(chosen, names + ",", ""), axis=1)
        return {
            "probabilities": p,
            "chosen": chosen,
            "labels": tf.strings.regex_replace(labels, ",$", ""),  # "bag,shoes": the chosen, in class order
            "classes": names,
            "thresholds": tf.tile(tf.constant(thresholds, tf.float32)[None], (n, 1)),
        }

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve_bytes, input_signature=[tf.TensorSpec((None,), tf.string, "photos")])
    spec = tf.TensorSpec((None, size, size, 3), tf.uint8, "image")
    archive.add_endpoint(ARRAYS, lambda image: model(image, training=False), input_signature=[spec])
    return archive


def _cuts(bundle: Bundle) -> list[float]:
    """Per column: the tuned threshold (multilabel), the positive class's (binary, both columns), else 0."""
    if not bundle.task_obj.single_label:
        return [float(t) for t in bundle.thresholds]
    return [bundle.threshold] * len(bundle.classes) if bundle.task_obj.decides_by_cut else [0.0] * len(bundle.classes)


def _chosen(p, thresholds: list[float], task):
    """detect.py's decision: multilabel ((p >= t) and t < 1) or t <= 0 (thresholds 0/1 are the constants
    "always"/"never"); binary the positive column at its cut (else the negative); multiclass the argmax."""
    import tensorflow as tf

    t = tf.constant(thresholds, tf.float32)[None]
    if not task.single_label:
        return ((p >= t) & (t < 1.0)) | (t <= 0.0)
    if task.decides_by_cut:
        pos = p[:, 1:2] >= t[:, 1:2]
        return tf.concat([~pos, pos], axis=1)
    return tf.one_hot(tf.argmax(p, axis=1), tf.shape(p)[1], on_value=True, off_value=False)


def photo_pixels(data, size: int):
    """One encoded photo (a scalar string tensor) -> (size, size, 3) uint8, as bundle.image_pixels makes it."""
    import tensorflow as tf

    def jpeg(ratio: int):
        return lambda: tf.io.decode_jpeg(data, channels=3, ratio=ratio, dct_method="INTEGER_ACCURATE")

    def other():
        img = tf.io.decode_image(data, channels=4, expand_animations=False)  # grey/palette/RGB get alpha 255
        if img.dtype != tf.uint8:
            img = tf.image.convert_image_dtype(img, tf.uint8)
        rgb, alpha = tf.cast(img[..., :3], tf.float32), tf.cast(img[..., 3:], tf.float32) / 255.0
        return tf.cast(tf.round(rgb * alpha + 255.0 * (1.0 - alpha)), tf.uint8)  # transparency on white

    def decode():
        shape = tf.io.extract_jpeg_shape(data)
        short = tf.minimum(shape[0], shape[1])
        # imaging._reduction: the largest DCT scale (8, 4, 2) that keeps the short side >= size
        index = tf.reduce_sum(tf.cast([short // 2 >= size, short // 4 >= size, short // 8 >= size], tf.int32))
        return tf.switch_case(index, [jpeg(1), jpeg(2), jpeg(4), jpeg(8)])

    img = tf.cond(tf.io.is_jpeg(data), decode, other)
    img.set_shape((None, None, 3))
    h, w = tf.shape(img)[0], tf.shape(img)[1]
    short = tf.minimum(h, w)
    scale = tf.cast(size, tf.float64) / tf.cast(short, tf.float64)
    # round half to even, as Python's round in imaging.resize
    nh = tf.maximum(size, tf.cast(tf.round(tf.cast(h, tf.float64) * scale), tf.int32))
    nw = tf.maximum(size, tf.cast(tf.round(tf.cast(w, tf.float64) * scale), tf.int32))

    def area():
        return tf.image.resize(img, (nh, nw), method="area")

    def bilinear():
        return tf.image.resize(img, (nh, nw), method="bilinear")

    resized = tf.cond(size * 2 < short, area, bilinear)
    resized = tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)
    top, left = (nh - size) // 2, (nw - size) // 2
    return tf.image.crop_to_bounding_box(resized, top, left, size, size)

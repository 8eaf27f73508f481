"""tf.data input pipeline over the shards `generate_dataset.py` writes (and the original project's).

train: parallel interleave over shards -> parse -> decode-and-crop a random
window (JPEG decodes only that window) -> flip (+ optional colour jitter,
rotation) -> shuffle -> batch -> prefetch. val: decode -> center crop.
Images stay uint8: the model normalises inside. `refuse_damaged` checks the shards before training;
`read_failure` names the shard behind a failed read (interleave loses file names).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from fashion.data import dataset_json, records


@dataclass
class Split:
    files: list[str]
    count: int
    positives: list[int]


def describe_split(folder: str | Path, split: str) -> Split:
    manifest = dataset_json.read(folder)
    info = manifest["splits"].get(split)
    if not info or not info["records"]:
        raise ValueError(f"{folder}: the dataset has no '{split}' records")
    files = [str(Path(folder) / s["name"]) for s in info["shards"] if s["records"]]
    return Split(files, info["records"], info["positives"])


def _parse(n_labels: int):
    spec = {
        records.F_IMAGE: tf.io.FixedLenFeature([], tf.string),
        records.F_LABELS: tf.io.FixedLenFeature([n_labels], tf.int64),
    }

    def parse(serialized):
        ex = tf.io.parse_single_example(serialized, spec)
        return ex[records.F_IMAGE], tf.cast(ex[records.F_LABELS], tf.float32)

    return parse


def _random_window(image_bytes, size: int, scale: tuple[float, float]):
    """A random square window covering `scale` of the shorter side, as crop_window for decode_and_crop_jpeg."""
    shape = tf.image.extract_jpeg_shape(image_bytes)
    h, w = shape[0], shape[1]
    short = tf.cast(tf.minimum(h, w), tf.float32)
    side = tf.cast(short * tf.random.uniform([], scale[0], scale[1]), tf.int32)
    side = tf.clip_by_value(side, 1, tf.minimum(h, w))
    top = tf.random.uniform([], 0, h - side + 1, dtype=tf.int32)
    left = tf.random.uniform([], 0, w - side + 1, dtype=tf.int32)
    return tf.stack([top, left, side, side])


def _resize_uint8(img, size: int):
    img = tf.image.resize(img, [size, size], method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8)


def make_train_image(
    size: int, crop_scale: tuple[float, float] = (0.875, 1.0), jitter: float = 0.0, rotate: float = 0.0
):
    def fn(image_bytes, labels):
        window = _random_window(image_bytes, size, crop_scale)
        img = tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)
        img = _resize_uint8(img, size)
        img = tf.image.random_flip_left_right(img)
        if jitter:
            f = tf.cast(img, tf.float32)
            f = tf.image.random_brightness(f, 255.0 * jitter)
            f = tf.image.random_contrast(f, 1 - jitter, 1 + jitter)
            f = tf.image.random_saturation(f, 1 - jitter, 1 + jitter)
            img = tf.cast(tf.clip_by_value(f, 0, 255), tf.uint8)
        if rotate:
            angle = tf.random.uniform([], -rotate, rotate) * math.pi / 180.0
            img = _rotate(img, angle)
        return img, labels

    return fn


def _rotate(img, angle):
    """Rotation about the center with edge fill, via a projective transform (no extra dependency)."""
    h, w = tf.cast(tf.shape(img)[0], tf.float32), tf.cast(tf.shape(img)[1], tf.float32)
    c, s = tf.cos(angle), tf.sin(angle)
    x0 = (w - 1) / 2 - c * (w - 1) / 2 + s * (h - 1) / 2
    y0 = (h - 1) / 2 - s * (w - 1) / 2 - c * (h - 1) / 2
    transform = tf.reshape(tf.stack([c, -s, x0, s, c, y0, 0.0, 0.0]), [1, 8])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(img[None], tf.float32),
        transforms=transform,
        output_shape=tf.shape(img)[:2],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="NEAREST",
    )
    return tf.cast(tf.clip_by_value(tf.round(out[0]), 0, 255), tf.uint8)


def make_eval_image(size: int, crop_fraction: float = 1.0):
    """Center crop (`crop_fraction` of the shorter side), resized to `size`."""

    def fn(image_bytes, labels):
        img = tf.io.decode_jpeg(image_bytes, channels=3)
        h, w = tf.shape(img)[0], tf.shape(img)[1]
        side = tf.cast(tf.cast(tf.minimum(h, w), tf.float32) * crop_fraction, tf.int32)
        top, left = (h - side) // 2, (w - side) // 2
        img = img[top : top + side, left : left + side]
        return _resize_uint8(img, size), labels

    return fn


def make_dataset(
    files: Sequence[str],
    n_labels: int,
    *,
    image_size: int,
    batch_size: int,
    training: bool,
    output_names: Sequence[str] | None = None,
    shuffle_buffer: int = 4096,
    seed: int | None = None,
    cache: bool = False,
    jitter: float = 0.0,
    rotate: float = 0.0,
    mixup: float = 0.0,
    cutmix: float = 0.0,
    count: int | None = None,
    column: int | None = None,
    shard: tuple[int, int, int] | None = None,
    full_batches: bool = False,
) -> tf.data.Dataset:
    """Batches of (uint8 images, labels): labels as a dict {output name: (B, 1)} when names are given,
    as the (B, 1) column `column` when that is given (a binary task's positive class), else (B, K).

    `count` (records in the files, from the manifest) lets Keras know the epoch length up front.
    `shard` = (processes, index, steps): this process's 1/N of the records (every N-th, in file order, so
    the processes' parts are disjoint), as exactly `steps` full batches. `full_batches`: drop the short last
    batch (the records it would hold wait for another epoch's shuffle). `mixup`/`cutmix` (training): Keras'
    MixUp/CutMix on each batch, the labels mixed with the images (`mix_batches`).
    """
    AUTOTUNE = tf.data.AUTOTUNE
    if shard is not None:
        ds = tf.data.TFRecordDataset(list(files)).shard(shard[0], shard[1])
    elif training:
        files_ds = tf.data.Dataset.from_tensor_slices(list(files)).shuffle(
            len(files), seed=seed, reshuffle_each_iteration=True
        )
        ds = files_ds.interleave(
            tf.data.TFRecordDataset, cycle_length=min(8, len(files)), num_parallel_calls=AUTOTUNE, deterministic=False
        )
    else:  # file order, so predictions line up with `labels_of`
        ds = tf.data.TFRecordDataset(list(files))
    ds = ds.map(_parse(n_labels), num_parallel_calls=AUTOTUNE)
    if cache:  # encoded JPEGs in memory: small datasets skip re-reading files every epoch
        ds = ds.cache()
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        ds = ds.map(
            make_train_image(image_size, jitter=jitter, rotate=rotate), num_parallel_calls=AUTOTUNE, deterministic=False
        )
    else:
        ds = ds.map(make_eval_image(image_size), num_parallel_calls=AUTOTUNE)
    ds = ds.batch(
        batch_size,
        drop_remainder=shard is not None or full_batches,
        num_parallel_calls=AUTOTUNE,
        deterministic=not training,
    )
    if training and (mixup or cutmix):
        ds = ds.map(mix_batches(mixup, cutmix, seed), num_parallel_calls=AUTOTUNE)
    if full_batches and count is not None:
        count = count // batch_size * batch_size
    if shard is not None:
        ds, count = ds.take(shard[2]), shard[2] * batch_size
    if output_names is not None:
        names = list(output_names)
        ds = ds.map(lambda x, y: (x, {n: y[:, i : i + 1] for i, n in enumerate(names)}), num_parallel_calls=AUTOTUNE)
    elif column is not None:
        ds = ds.map(lambda x, y: (x, y[:, column : column + 1]), num_parallel_calls=AUTOTUNE)
    if count is not None:
        ds = ds.apply(tf.data.experimental.assert_cardinality(math.ceil(count / batch_size)))
    opts = tf.data.Options()
    opts.experimental_deterministic = not training
    return ds.with_options(opts).prefetch(AUTOTUNE)


def mix_batches(mixup: float, cutmix: float, seed: int | None = None):
    """A batch map: Keras' MixUp (alpha `mixup`) then CutMix (factor `cutmix`), whichever is not 0, on the
    images as float and their (B, K) label vectors (mixed by the same weight: the soft targets of
    multi-label MixUp), the images back to uint8 (the model's input; rounding moves a pixel by < 0.5)."""
    import keras

    layers = []
    if mixup:
        layers.append(keras.layers.MixUp(alpha=mixup, seed=seed))
    if cutmix:
        layers.append(keras.layers.CutMix(factor=cutmix, seed=None if seed is None else seed + 1))

    def fn(images, labels):
        data = {"images": tf.cast(images, tf.float32), "labels": tf.cast(labels, tf.float32)}
        for layer in layers:
            data = layer(data, training=True)
        images = tf.cast(tf.clip_by_value(tf.round(data["images"]), 0, 255), tf.uint8)
        return images, data["labels"]

    return fn


TRAINING_SPLITS = ("train", "val")


def refuse_damaged(folder: str | Path, sha256: bool = False, splits: Sequence[str] = TRAINING_SPLITS) -> str | None:
    """Why training (or evaluation) must not start on `folder` (a shard missing, cut short or, with `sha256`,
    changed), in one line naming the shard; None when every shard is as dataset.json records it."""
    problems = records.check_shards(folder, splits, sha256=sha256)
    if not problems:
        return None
    return f"{_first_of(problems)}; restore it or rebuild the dataset (generate_dataset.py --verify {folder} lists every problem)"


def read_failure(e: BaseException, folder: str | Path, splits: Sequence[str] = TRAINING_SPLITS) -> str | None:
    """What broke reading `folder`, naming the shard (tf.data's interleave does not say which file), when
    `e` is the input failing on the data: a CRC or framing error (DataLossError), a shard gone
    (NotFoundError), an image TensorFlow cannot decode; None for any other error."""
    data = isinstance(e, (tf.errors.DataLossError, tf.errors.NotFoundError)) or (
        isinstance(e, tf.errors.InvalidArgumentError) and re.search(r"jpeg|image file format", str(e), re.I)
    )
    if not data:
        return None
    try:
        bad = records.find_damage(folder, splits)
        found = "every shard matches dataset.json and decodes"
    except Exception as search:  # the search must not hide the first error behind its own
        bad, found = [], f"the shards could not be checked ({search})"
    if not bad:
        return (
            f"reading {folder} failed ({records.tf_error_text(e)}); {found}: "
            f"generate_dataset.py --verify {folder} checks each record"
        )
    return _first_of(bad)


def _first_of(problems: Sequence[str]) -> str:
    """The first shard's line, and how many more there are."""
    return problems[0] + (f" (and {len(problems) - 1} more shard(s))" if len(problems) > 1 else "")


def labels_of(files: Sequence[str], n_labels: int) -> np.ndarray:
    """All label vectors of the shards, in the order an eval dataset yields them (no image decoding)."""
    ds = tf.data.TFRecordDataset(list(files)).map(_parse(n_labels)).map(lambda _, y: y).batch(4096)
    parts = [b.numpy() for b in ds]
    return np.concatenate(parts) if parts else np.zeros((0, n_labels), np.float32)

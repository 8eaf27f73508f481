"""Split and per-image rules on fixed inputs."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import photo_bytes
from fashion.data import imaging
from fashion.ingest.splits import split_indices


def test_split_is_stratified_deterministic_and_keeps_rare_classes_in_both():
    rng = np.random.default_rng(1)
    p = np.array([104, 4292, 49893, 262, 18722, 8882, 197, 1356, 49389, 7094, 3712, 1249, 361]) / 54000
    y = (rng.random((2000, 13)) < p).astype(int)
    y[:3, 0] = 1  # a class with a handful of positives
    tr, va = split_indices(y, val_count=400, seed=3)
    assert len(va) == 400 and len(tr) == 1600 and not set(tr) & set(va)
    for c in range(13):
        if y[:, c].sum() >= 2:
            assert y[tr, c].sum() > 0 and y[va, c].sum() > 0, c
    share = y[va].sum(0) / np.maximum(y.sum(0), 1)
    assert np.all(np.abs(share[y.sum(0) > 50] - 0.2) < 0.05)
    tr2, va2 = split_indices(y, val_count=400, seed=3)
    assert np.array_equal(va, va2)
    assert not np.array_equal(va, split_indices(y, val_count=400, seed=4)[1])


def test_tiny_sets_still_put_a_rare_class_on_both_sides():
    y = np.zeros((10, 2), int)
    y[:2, 0] = 1
    y[5:, 1] = 1
    tr, va = split_indices(y, val_fraction=0.2, seed=0)
    assert y[tr, 0].sum() == 1 and y[va, 0].sum() == 1


def test_class_without_positives_is_fine():
    y = np.zeros((20, 3), int)
    y[::2, 0] = 1
    tr, va = split_indices(y, val_fraction=0.25)
    assert len(va) == 5


@pytest.mark.parametrize("mode,shape", [("crop", (64, 64)), ("stretch", (64, 64)), ("keep", (96, 64))])
def test_resize_modes(mode, shape):
    rgb = imaging.decode_rgb(photo_bytes(0))  # 256 x 384 portrait
    assert rgb.shape[:2] == (384, 256)
    assert imaging.resize(rgb, 64, mode).shape[:2] == shape


def test_crop_is_centered():
    img = np.zeros((100, 300, 3), np.uint8)
    img[:, 100:200] = 255  # a white center band
    out = imaging.resize(img, 50, "crop")
    assert out.shape == (50, 50, 3) and out.min() == 255


def test_content_is_recognised_by_bytes():
    assert imaging.sniff(photo_bytes(0)) == "jpeg"
    assert imaging.sniff(b"\x89PNG\r\n\x1a\n....") == "png"
    with pytest.raises(imaging.ImageError, match="HTML"):
        imaging.decode_rgb(b"<html><body>nope</body></html>")


@pytest.mark.parametrize("mixup, cutmix", [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixup_and_cutmix_mix_each_label_vector_by_its_images_share(mixup, cutmix):
    """Flat images (image i all 20·i) with one-hot labels: after mixing, an image's mean is Σ_k y_k · 20k,
    the labels carry the blend (MixUp) or the pasted area (CutMix) the pixels show. Keras' CutMix counts the
    box's area from its unrounded corners: up to one row and one column of pixels off, hence `off`."""
    import tensorflow as tf

    from fashion.data.pipeline import mix_batches

    n, side = 8, 128
    flat = np.arange(n, dtype=np.uint8)[:, None, None, None] * 20
    images = tf.constant(np.broadcast_to(flat, (n, side, side, 3)))
    labels = tf.constant(np.eye(n, dtype=np.float32))
    mixed, soft = mix_batches(mixup, cutmix, seed=3)(images, labels)
    mixed, soft = np.asarray(mixed), np.asarray(soft)
    assert mixed.dtype == np.uint8 and mixed.shape == (n, side, side, 3) and soft.shape == (n, n)
    np.testing.assert_allclose(soft.sum(1), 1.0, atol=1e-5)  # a convex blend of label vectors
    assert ((soft > 0.01) & (soft < 0.99)).any(), "nothing was mixed: the check below could not fail"
    off = 0.5 + (20.0 * (n - 1) * 2 * side / side**2 if cutmix else 0.0)
    np.testing.assert_allclose(mixed.reshape(n, -1).mean(1), soft @ (20.0 * np.arange(n)), atol=off)


def test_mixup_and_cutmix_take_no_negative_parameter():
    from fashion.config.train import TrainConfig
    from fashion.core.errors import TrainError

    with pytest.raises(TrainError, match="--cutmix must be >= 0"):
        TrainConfig(cutmix=-1.0).validate()

"""The network: a keras.applications DenseNet trunk and one small head per class.

The model takes uint8 RGB and preprocesses inside (Rescaling + Normalization
layers, DenseNet's "torch" mode), so callers never need to know the recipe.
Layer names are deterministic (`head_<label>`), so weights load by name and
each head reports its own loss.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Sequence

import keras

MODEL_SAVE = Path("model_save")
BACKBONES = ("densenet121", "densenet169", "densenet201")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HEAD_FILTERS = 64

# Keras' own notop ImageNet files (keras/src/applications/densenet.py): name, md5.
WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/densenet/"
IMAGENET_NOTOP = {
    "densenet121": ("densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5", "30ee3e1110167f948a6b9946edeeb738"),
    "densenet169": ("densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5", "b8c4d4c20dd625c148057b9ff1c1176b"),
    "densenet201": ("densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5", "c13680b51ded0fb44dff2d8f86ac8bb1"),
}
_CONSTRUCTORS = {"densenet121": "DenseNet121", "densenet169": "DenseNet169", "densenet201": "DenseNet201"}


class WeightsError(Exception):
    """Pretrained weights that cannot be found or do not fit."""


def slug(label: str) -> str:
    """A layer-name-safe form of a label: `smart casual` -> `smart_casual`."""
    s = re.sub(r"[^0-9a-zA-Z_]+", "_", label.strip()).strip("_").lower()
    return s or "label"


def head_names(labels: Sequence[str]) -> list[str]:
    names, seen = [], set()
    for i, label in enumerate(labels):
        n = f"head_{slug(label)}"
        if n in seen:  # two labels that slug alike still get distinct, stable names
            n = f"{n}_{i}"
        seen.add(n)
        names.append(n)
    return names


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def imagenet_weights_file(backbone: str, model_save: Path = MODEL_SAVE) -> str:
    """Path of Keras' notop ImageNet file: model_save/, then Keras' cache, then a download.

    Raises:
      WeightsError naming the exact file to place in model_save/ when offline and absent.
    """
    fname, md5 = IMAGENET_NOTOP[backbone]
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    for candidate in (model_save / fname, keras_home / "models" / fname):
        if candidate.is_file():
            if _md5(candidate) != md5:
                raise WeightsError(f"{candidate}: md5 {_md5(candidate)} does not match Keras' {md5}; "
                                   f"the file is damaged or another one: replace it")
            return str(candidate)
    try:
        return keras.utils.get_file(fname, WEIGHTS_URL + fname, cache_subdir="models", file_hash=md5)
    except Exception as e:  # Keras raises a plain Exception for URL failures
        raise WeightsError(
            f"ImageNet weights for {backbone} are not on this machine and cannot be downloaded "
            f"({type(e).__name__}).\nPlace Keras' file\n  {fname}\n(from {WEIGHTS_URL}{fname}, md5 {md5})\n"
            f"in {model_save.resolve()}/ and run again, or train from scratch with --weights none.") from None


def build_trunk(backbone: str, image_size: int, weights: str | None) -> keras.Model:
    """A keras.applications trunk without its top; `weights` is None or a path to Keras' notop file."""
    if backbone not in _CONSTRUCTORS:
        raise ValueError(f"--backbone must be one of {BACKBONES}, got {backbone!r}")
    ctor = getattr(keras.applications, _CONSTRUCTORS[backbone])
    return ctor(include_top=False, weights=weights, input_shape=(image_size, image_size, 3))


def build_model(labels: Sequence[str], backbone: str = "densenet121", image_size: int = 224,
                weights: str | None = None, head_dropout: float = 0.0) -> keras.Model:
    """Trunk + one head per label.

    Args:
      labels: class names; head `i` is named `head_<slug(labels[i])>`.
      backbone: one of BACKBONES.
      image_size: square input side in pixels.
      weights: None (random init) or a path to Keras' notop ImageNet file.
      head_dropout: dropout before each head's Dense (0 = the original design).
    Returns:
      A Model from uint8 RGB images (B, S, S, 3) to a dict {head name: (B, 1) sigmoid}.
    """
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="image")
    x = keras.layers.Rescaling(1.0 / 255.0, name="scale")(inputs)
    x = keras.layers.Normalization(mean=IMAGENET_MEAN, variance=[s * s for s in IMAGENET_STD], name="normalize")(x)
    trunk = build_trunk(backbone, image_size, weights)
    features = trunk(x)
    outputs = {}
    for name in head_names(labels):
        h = keras.layers.Conv2D(HEAD_FILTERS, 3, padding="same", activation="relu", name=f"{name}_conv")(features)
        h = keras.layers.GlobalAveragePooling2D(name=f"{name}_pool")(h)
        if head_dropout:
            h = keras.layers.Dropout(head_dropout, name=f"{name}_drop")(h)
        # float32 output even under mixed precision: sigmoid + log in the loss need the range
        outputs[name] = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name=name)(h)
    return keras.Model(inputs, outputs, name=f"fashion_{backbone}")


def trunk_of(model: keras.Model) -> keras.Model:
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            return layer
    raise ValueError("model has no nested trunk")


def load_trunk_from_bundle(model: keras.Model, bundle: str | Path) -> None:
    """Domain pretraining: copy the trunk of an earlier bundle of ours into `model`'s trunk."""
    bundle = Path(bundle)
    path = bundle / "model.keras" if bundle.is_dir() else bundle
    if not path.is_file():
        raise WeightsError(f"{bundle}: no model.keras bundle there")
    old = keras.saving.load_model(path, compile=False)
    src, dst = trunk_of(old), trunk_of(model)
    if src.name != dst.name or len(src.weights) != len(dst.weights):
        raise WeightsError(f"{bundle}: its trunk ({src.name}) does not match this one ({dst.name})")
    # Convolution weights do not depend on the input size, so a bundle trained at 96 px seeds 224 px.
    dst.set_weights(src.get_weights())


def resolve_weights(spec: str, backbone: str, model_save: Path = MODEL_SAVE) -> tuple[str | None, str | None]:
    """`--weights` -> (Keras notop file or None, bundle path or None)."""
    if spec in ("none", "", None):
        return None, None
    if spec == "imagenet":
        return imagenet_weights_file(backbone, model_save), None
    p = Path(spec)
    if p.is_dir() and (p / "meta.json").is_file() or p.suffix == ".keras":
        return None, str(p)
    if p.suffix == ".h5" and p.is_file():
        return str(p), None
    raise WeightsError(f"--weights {spec}: not 'imagenet', 'none', a Keras notop .h5 file or a bundle folder")


# --------------------------------------------------------------------------- layer groups

STAGE_GROUPS = ("conv5+", "conv4+", "conv3+", "conv2+")


def set_trainable(model: keras.Model, layers: str, bn: str = "auto", from_scratch: bool = False) -> int:
    """Choose what trains.

    Args:
      layers: `heads` (trunk frozen), `all`, `conv5+`/`conv4+`/`conv3+` (that stage of
        the trunk onwards), or a regular expression over trunk layer names.
      bn: `frozen` keeps every trunk BatchNorm in inference mode (statistics fixed),
        `train` updates them, `auto` = `train` from scratch, `frozen` for pretrained trunks.
    Returns:
      Number of trainable trunk layers.
    """
    trunk = trunk_of(model)
    if layers == "heads":
        trunk.trainable = False  # a frozen trunk also runs BatchNorm in inference mode
        return 0
    trunk.trainable = True
    names = [layer.name for layer in trunk.layers]
    if layers == "all":
        chosen = set(names)
    elif layers in STAGE_GROUPS:
        stage = int(layers[4])
        start = next(i for i, n in enumerate(names) if n.startswith(f"conv{stage}_"))
        chosen = set(names[start:])
    else:
        try:
            rx = re.compile(layers)
        except re.error as e:
            raise ValueError(f"--layers {layers!r}: not heads/all/{'/'.join(STAGE_GROUPS)} nor a valid regex: {e}")
        chosen = {n for n in names if rx.search(n)}
        if not chosen:
            raise ValueError(f"--layers {layers!r} matches no trunk layer (e.g. {names[5]}, {names[-3]})")
    if bn == "auto":
        bn = "train" if from_scratch else "frozen"
    count = 0
    for layer in trunk.layers:
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        # trainable=False on a BatchNormalization layer is what keeps it in inference mode in Keras 3;
        # passing training=False to a trainable trunk does not (see shared NOTES).
        layer.trainable = layer.name in chosen and not (is_bn and bn == "frozen")
        count += layer.trainable and bool(layer.weights)
    return count


def describe(model: keras.Model) -> str:
    trunk = trunk_of(model)
    n_tr = sum(int(keras.ops.size(w)) for w in trunk.trainable_weights)
    heads = sum(int(keras.ops.size(w)) for w in model.trainable_weights) - n_tr
    return (f"{trunk.name}: {trunk.count_params() / 1e6:.2f} M params ({n_tr / 1e6:.2f} M trainable); "
            f"heads: {heads / 1e6:.2f} M trainable")


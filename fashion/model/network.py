"""The network: a keras.applications trunk and the heads of the task (built by the task object, fashion.model.tasks).

* multilabel (the original design): one small head per class, Conv2D 3x3 ->
  GAP -> Dense 1 sigmoid, named `head_<label>`;
* multiclass: GAP -> optional dropout -> one Dense(K) softmax, `head_softmax`;
* binary: GAP -> optional dropout -> one Dense(1) sigmoid, `head_sigmoid`.

The model takes uint8 RGB and preprocesses inside with the recipe of its
trunk (DenseNet: ImageNet mean/std; ResNet50: Caffe BGR mean subtraction;
MobileNetV2/Xception: [-1, 1]; EfficientNetB0: its own built-in layers), so
callers never need to know it. Layer names are deterministic, so weights load
by name and each head reports its own loss.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

import keras

from fashion.config.choices import BACKBONES, TASKS  # noqa: F401  (TASKS re-exported)
from fashion.core.errors import FashionError
from fashion.model.tasks.base import GAP, HeadSpec
from fashion.model.tasks.registry import get_task

MODEL_SAVE = Path("model_save")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # keras.applications.imagenet_utils, mode "caffe"
MIN_SIZE = {"xception": 71}  # keras.applications refuses smaller inputs; the others take 32 px
MOBILENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)  # ImageNet weights exist for these widths
MOBILENET_SIZES = (96, 128, 160, 192, 224)  # ... and these input sizes (others use the 224 file)

# Keras' own notop ImageNet files (keras/src/applications/*.py): name, md5.
WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/densenet/"
IMAGENET_NOTOP = {
    "densenet121": ("densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5", "30ee3e1110167f948a6b9946edeeb738"),
    "densenet169": ("densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5", "b8c4d4c20dd625c148057b9ff1c1176b"),
    "densenet201": ("densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5", "c13680b51ded0fb44dff2d8f86ac8bb1"),
    "resnet50": ("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", "4d473c1dd8becc155b73f8504c6f6626"),
    "xception": ("xception_weights_tf_dim_ordering_tf_kernels_notop.h5", "b0042744bf5b25fce3cb969f33bebb97"),
    "efficientnetb0": ("efficientnetb0_notop.h5", "50bc09e76180e00e4465e1a485ddc09d"),
    # one file per width and input size, and Keras publishes no hash for them (mobilenet_v2.py)
    "mobilenetv2": ("mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{rows}_no_top.h5", None),
}
WEIGHTS_URLS = {
    **{b: WEIGHTS_URL for b in ("densenet121", "densenet169", "densenet201")},
    "resnet50": "https://storage.googleapis.com/tensorflow/keras-applications/resnet/",
    "xception": "https://storage.googleapis.com/tensorflow/keras-applications/xception/",
    "efficientnetb0": "https://storage.googleapis.com/keras-applications/",
    "mobilenetv2": "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/",
}
_CONSTRUCTORS = {
    "densenet121": "DenseNet121",
    "densenet169": "DenseNet169",
    "densenet201": "DenseNet201",
    "resnet50": "ResNet50",
    "mobilenetv2": "MobileNetV2",
    "xception": "Xception",
    "efficientnetb0": "EfficientNetB0",
}


# The trunk this project trains itself on the CC0 clothing photos and ships (data/pretrained/README.md):
# what an offline user starts from when ImageNet's file cannot be had.
SHIPPED_TRUNKS = {
    "densenet121": Path(__file__).resolve().parents[2] / "data" / "pretrained" / "densenet121-clothing.weights.h5"
}


def shipped_trunk(backbone: str) -> str | None:
    """The shipped trunk's path for this backbone (relative to the working folder when under it), if present."""
    path = SHIPPED_TRUNKS.get(backbone)
    if path is None or not path.is_file():
        return None
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class WeightsError(FashionError):
    """Pretrained weights that cannot be found or do not fit."""


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def notop_file(backbone: str, alpha: float = 1.0, image_size: int = 224) -> tuple[str, str | None, str]:
    """(file name, md5 or None, URL folder) of Keras' notop ImageNet file for this trunk."""
    if backbone not in IMAGENET_NOTOP:
        raise ValueError(f"--backbone must be one of {BACKBONES}, got {backbone!r}")
    fname, md5 = IMAGENET_NOTOP[backbone]
    if backbone == "mobilenetv2":
        if float(alpha) not in MOBILENET_ALPHAS:
            raise WeightsError(
                f"ImageNet weights for mobilenetv2 exist for --alpha {', '.join(map(str, MOBILENET_ALPHAS))}"
                f", not {alpha:g}: pick one of those or train from scratch with --weights none"
            )
        rows = image_size if image_size in MOBILENET_SIZES else 224  # as keras.applications chooses
        fname = fname.format(alpha=float(alpha), rows=rows)
    return fname, md5, WEIGHTS_URLS[backbone]


def imagenet_weights_file(
    backbone: str, model_save: Path = MODEL_SAVE, alpha: float = 1.0, image_size: int = 224
) -> str:
    """Path of Keras' notop ImageNet file: model_save/, then Keras' cache, then a download.

    Raises:
      WeightsError naming the exact file to place in model_save/ when offline and absent.
    """
    fname, md5, url = notop_file(backbone, alpha, image_size)
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    for candidate in (model_save / fname, keras_home / "models" / fname):
        if candidate.is_file():
            if md5 is not None and _md5(candidate) != md5:
                raise WeightsError(
                    f"{candidate}: md5 {_md5(candidate)} does not match Keras' {md5}; "
                    f"the file is damaged or another one: replace it"
                )
            return str(candidate)
    try:
        return keras.utils.get_file(fname, url + fname, cache_subdir="models", file_hash=md5)
    except Exception as e:  # Keras raises a plain Exception for URL failures
        check = f", md5 {md5}" if md5 else ""
        ours = shipped_trunk(backbone)
        offline = (
            f"start from the trunk this project ships, trained on CC0 clothing photos (offline, no download):\n"
            f"  --weights {ours}\nor train from scratch with --weights none."
            if ours
            else "train from scratch with --weights none."
        )
        raise WeightsError(
            f"ImageNet weights for {backbone} are not on this machine and cannot be downloaded "
            f"({type(e).__name__}).\nPlace Keras' file\n  {fname}\n(from {url}{fname}{check})\n"
            f"in {model_save.resolve()}/ and run again, or {offline}"
        ) from None


def build_trunk(backbone: str, image_size: int, weights: str | None, alpha: float = 1.0) -> keras.Model:
    """A keras.applications trunk without its top; `weights` is None or a path to a notop weights file.

    Raises:
      WeightsError naming the file when it cannot be read or does not fit this trunk.
    """
    if backbone not in _CONSTRUCTORS:
        raise ValueError(f"--backbone must be one of {BACKBONES}, got {backbone!r}")
    if image_size < MIN_SIZE.get(backbone, 32):
        raise ValueError(
            f"--backbone {backbone} needs --image-size of at least {MIN_SIZE.get(backbone, 32)}, got {image_size}"
        )
    try:
        return _build_trunk(backbone, image_size, weights, alpha)
    except (OSError, ValueError, KeyError) as e:
        if not weights:
            raise
        why = " ".join(str(e).split())[:200]
        raise WeightsError(
            f"--weights {weights}: cannot be loaded into a {backbone} trunk ({type(e).__name__}: {why}); "
            f"a damaged or partial file (a Git LFS pointer?), or another backbone's weights"
        ) from None


def _build_trunk(backbone: str, image_size: int, weights: str | None, alpha: float) -> keras.Model:
    ctor = getattr(keras.applications, _CONSTRUCTORS[backbone])
    shape = (image_size, image_size, 3)
    if backbone == "mobilenetv2":
        # a name without the input size (Keras puts it in), so a 96 px bundle's trunk seeds a 224 px one
        return ctor(
            include_top=False, weights=weights, input_shape=shape, alpha=alpha, name=f"mobilenetv2_{float(alpha):.2f}"
        )
    if backbone == "efficientnetb0" and weights:
        # Keras adds a second rescaling layer only for weights="imagenet" (TF issue 49930): a file path
        # gets a trunk without it. Load the file, then fold that rescaling into the normalisation's variance.
        trunk = ctor(include_top=False, weights=None, input_shape=shape)
        trunk.load_weights(weights)
        norm = next(layer for layer in trunk.layers if isinstance(layer, keras.layers.Normalization))
        norm.adapt_variance.assign(keras.ops.convert_to_numpy(norm.adapt_variance) * IMAGENET_STD)
        norm.finalize_state()  # what Keras calls after loading variables: mean/variance from adapt_*
        return trunk
    return ctor(include_top=False, weights=weights, input_shape=shape)


@keras.saving.register_keras_serializable(package="fashion")
class ReverseChannels(keras.layers.Layer):
    """RGB -> BGR (Caffe-trained trunks such as ResNet50 expect BGR); a proper layer, unlike a Lambda."""

    def call(self, x):
        return keras.ops.flip(keras.ops.cast(x, self.compute_dtype), axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape


def preprocess(x, backbone: str):
    """uint8 RGB -> what the trunk was trained on, as serialisable layers."""
    if backbone.startswith("densenet"):  # "torch" mode: [0, 1], then ImageNet mean and std
        x = keras.layers.Rescaling(1.0 / 255.0, name="scale")(x)
        return keras.layers.Normalization(mean=IMAGENET_MEAN, variance=[s * s for s in IMAGENET_STD], name="normalize")(
            x
        )
    if backbone == "resnet50":  # "caffe" mode: BGR, minus the ImageNet mean per channel, no scaling
        x = ReverseChannels(name="rgb_to_bgr")(x)
        return keras.layers.Normalization(mean=CAFFE_MEAN_BGR, variance=(1.0, 1.0, 1.0), name="normalize")(x)
    if backbone in ("mobilenetv2", "xception"):  # "tf" mode: [-1, 1]
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale")(x)
    if backbone == "efficientnetb0":  # rescaling and normalisation are inside the Keras trunk; just floats
        return keras.layers.Rescaling(1.0, name="scale")(x)
    raise ValueError(f"--backbone must be one of {BACKBONES}, got {backbone!r}")


def build_model(
    labels: Sequence[str],
    backbone: str = "densenet121",
    image_size: int = 224,
    weights: str | None = None,
    head_dropout: float = 0.0,
    task: str = "multilabel",
    alpha: float = 1.0,
    head: HeadSpec = GAP,
) -> keras.Model:
    """Trunk + the heads of `task`.

    Args:
      labels: class names; in a multilabel model head `i` is named `head_<slug(labels[i])>`.
      backbone: one of BACKBONES.
      image_size: square input side in pixels.
      weights: None (random init) or a path to Keras' notop ImageNet file.
      head_dropout: dropout before the heads' Dense (0 = the original design).
      task: multilabel (one sigmoid head per class), multiclass (one softmax over the
        classes) or binary (one sigmoid; on two classes the positive class is the second).
      alpha: MobileNetV2 width multiplier.
      head: how each multi-label head pools (tasks.base.HeadSpec: gap, or csra with its λ and T).
    Returns:
      A Model from uint8 RGB images (B, S, S, 3) to a dict {head name: (B, 1) sigmoid}
      (multilabel), (B, K) softmax probabilities (multiclass) or (B, 1) (binary).
    """
    spec = get_task(task, labels)
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="image")
    x = preprocess(inputs, backbone)
    trunk = build_trunk(backbone, image_size, weights, alpha)
    outputs = spec.build_heads(trunk(x), head_dropout, head)
    return keras.Model(inputs, outputs, name=spec.model_name(backbone))


def cap_bn_momentum(model: keras.Model, momentum: float = 0.99) -> int:
    """Trained from scratch, a trunk's BatchNorm moving statistics must catch up within the run: MobileNetV2
    builds them with momentum 0.999 (≈ 1,000 steps to forget the initial 0/1), which left a 10-epoch
    clothing-small run at 63 % validation accuracy with batch statistics but 24 % (the majority class) in
    inference mode. Caps the momentum (Keras' default 0.99; the other trunks already use it); returns
    how many layers changed. The value is part of each layer's config, so bundles keep it."""
    changed = 0
    for layer in trunk_of(model).layers:
        if isinstance(layer, keras.layers.BatchNormalization) and layer.momentum > momentum:
            layer.momentum = momentum
            changed += 1
    return changed


def export_trunk(model: keras.Model, path: Path) -> Path:
    """The trunk's weights alone as float16 (half the size; a start for --weights PATH, which casts back)."""
    import h5py
    import numpy as np

    from fashion.core.fileio import atomic_path

    fp32 = path.with_name(f".fp32-{os.getpid()}.weights.h5")  # save_weights insists on this ending
    try:
        trunk_of(model).save_weights(fp32)  # Keras' own layout: keras.applications loads it by path
        with h5py.File(fp32, "r") as src, atomic_path(path) as tmp, h5py.File(tmp, "w") as dst:

            def copy(name, obj):
                if isinstance(obj, h5py.Dataset):
                    a = obj[()]
                    dst.create_dataset(name, data=a.astype(np.float16) if a.dtype == np.float32 else a)
                else:
                    dst.require_group(name)
                dst[name].attrs.update(obj.attrs)

            dst.attrs.update(src.attrs)
            src.visititems(copy)
    finally:
        fp32.unlink(missing_ok=True)
    return path


def trunk_of(model: keras.Model) -> keras.Model:
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            return layer
    raise ValueError("model has no nested trunk")


def load_trunk_from_bundle(model: keras.Model, bundle: str | Path) -> None:
    """Domain pretraining: copy the trunk of an earlier bundle of ours into `model`'s trunk (any task)."""
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


def resolve_weights(
    spec: str, backbone: str, model_save: Path = MODEL_SAVE, alpha: float = 1.0, image_size: int = 224
) -> tuple[str | None, str | None]:
    """`--weights` -> (Keras notop file or None, bundle path or None)."""
    if spec in ("none", "", None):
        return None, None
    if spec == "imagenet":
        return imagenet_weights_file(backbone, model_save, alpha, image_size), None
    p = Path(spec)
    if p.is_dir() and (p / "meta.json").is_file() or p.suffix == ".keras":
        return None, str(p)
    if p.suffix == ".h5" and p.is_file():
        import h5py

        if not h5py.is_hdf5(p):  # before anything is written: a Git LFS pointer, a cut download
            raise WeightsError(f"--weights {spec}: not an HDF5 file (damaged, partial, or a Git LFS pointer)")
        return str(p), None
    raise WeightsError(f"--weights {spec}: not 'imagenet', 'none', a Keras notop .h5 file or a bundle folder")


# --------------------------------------------------------------------------- layer groups

STAGE_GROUPS = ("conv5+", "conv4+", "conv3+", "conv2+")  # DenseNet and ResNet50 stages
# `GROUP+` = from the first trunk layer whose name matches the pattern to the end of the trunk.
_DENSE_STAGES = {g: rf"^conv{g[4]}_" for g in STAGE_GROUPS}
BACKBONE_STAGES: dict[str, dict[str, str]] = {
    "densenet121": _DENSE_STAGES,
    "densenet169": _DENSE_STAGES,
    "densenet201": _DENSE_STAGES,
    "resnet50": _DENSE_STAGES,
    # MobileNetV2's inverted-residual blocks; 16 is the last, 13/6/3 start a new resolution, 10 a new width
    "mobilenetv2": {f"block_{n}+": rf"^block_{n}_" for n in (16, 13, 10, 6, 3)},
    # Xception: 14 = the exit flow's last separable convs, 13 = the exit flow, 5 = the middle flow (5-12)
    "xception": {f"block{n}+": rf"^block{n}_" for n in (14, 13, 5)},
    # EfficientNetB0's seven stages (block1a ... block7a), then top_conv
    "efficientnetb0": {f"block{n}+": rf"^block{n}[a-z]_" for n in (7, 6, 5, 4, 3)},
}


def stage_groups(backbone: str) -> tuple[str, ...]:
    return tuple(BACKBONE_STAGES.get(backbone, {}))


def set_trainable(model: keras.Model, layers: str, bn: str = "auto", from_scratch: bool = False) -> int:
    """Choose what trains.

    Args:
      layers: `heads` (trunk frozen), `all`, a stage of the trunk onwards (DenseNet/ResNet50
        `conv5+`/`conv4+`/`conv3+`/`conv2+`, MobileNetV2 `block_16+`/`block_13+`/..., Xception
        `block14+`/`block13+`/`block5+`, EfficientNetB0 `block7+`/`block6+`/...), or a regular
        expression over trunk layer names.
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
    stages = next((v for k, v in BACKBONE_STAGES.items() if trunk.name.startswith(k)), _DENSE_STAGES)
    if layers == "all":
        chosen = set(names)
    elif layers in stages:
        rx = re.compile(stages[layers])
        start = next(i for i, n in enumerate(names) if rx.search(n))
        chosen = set(names[start:])
    else:
        try:
            rx = re.compile(layers)
        except re.error as e:
            raise ValueError(f"--layers {layers!r}: not heads/all/{'/'.join(stages)} nor a valid regex: {e}") from None
        chosen = {n for n in names if rx.search(n)}
        if not chosen:
            raise ValueError(
                f"--layers {layers!r} matches no trunk layer (e.g. {names[5]}, {names[-3]}); "
                f"stage groups of {trunk.name}: {', '.join(stages)}"
            )
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
    return (
        f"{trunk.name}: {trunk.count_params() / 1e6:.2f} M params ({n_tr / 1e6:.2f} M trainable); "
        f"heads: {heads / 1e6:.2f} M trainable"
    )

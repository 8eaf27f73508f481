"""One config object per command: defaults -> `--config FILE.yaml` -> command-line flags.

Every option is declared once, here: a field made with `opt` carries its default, help, argument
group, choices and metavar; options.build_parser makes the command's parser from the class, and
`validate` holds the checks that need neither data nor TensorFlow. Field names match the flags;
fields are in --help order.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import choices as C
from .errors import IngestError, TrainError
from .options import check_choices, load_yaml, opt, parse_size, resolve  # noqa: F401  (load_yaml, resolve: API)

DEFAULT_LIST = "data/train+val.txt"
DEFAULT_RECORDS = "data/records"
DEFAULT_CACHE = "data/cache"


def default_workers() -> int:
    # Downloads are I/O bound: 32 per core keep the decoders busy at 50 ms latency (16 in all reached
    # 207 img/s there, 64 reached 343: bench/ingest.py, 2 cores, 2026-12-03); capped for big machines.
    return min(64, 32 * (os.cpu_count() or 1))


class _Config:
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


IO, FETCH, IMAGES, SPLIT, SOURCES = "input and output", "fetching", "images", "split and shards", "label sources"


@dataclass
class IngestConfig(_Config):
    """Everything `generate_dataset.py` needs."""

    GROUPS = {
        SOURCES: "Instead of LIST: single-label datasets (task multiclass, one-hot labels), or the original "
        "project's TFRecords (multilabel). Splits given by the source are kept, else --val-fraction/--val-count "
        "apply; class names are sorted."
    }

    list: str = opt(
        DEFAULT_LIST,
        "list file, - for standard input, or a folder of images with --label-regex",
        positional=True,
        nargs="?",
        metavar="LIST",
    )
    out: str = opt(DEFAULT_RECORDS, "output folder", group=IO, metavar="DIR")
    labels: str | None = opt(
        None, "label names, one per line (default for the original format: label_0..N)", group=IO, metavar="FILE"
    )
    append: bool = opt(False, "add the list's records to an existing dataset as new shards", group=IO)
    overwrite: bool = opt(False, "replace the dataset (or unfinished run) in --out", group=IO)
    strict: bool = opt(False, "stop on the first malformed line instead of skipping it", group=IO)
    engine: str = opt(
        "local",
        "local: this machine's threads and processes; beam: an Apache Beam pipeline (pip install "
        "'fashion[beam]'), on all local cores by default; Beam options go after --, e.g. "
        "-- --runner=FlinkRunner --flink_master=HOST:8081",
        group=IO,
        choices=C.ENGINES,
    )
    beam_args: list[str] = field(default_factory=list)  # what followed `--` on the command line (not an option)
    workers: int = opt(help="parallel downloads/decodes", group=FETCH, metavar="N", factory=default_workers)
    cache: str | None = opt(DEFAULT_CACHE, "download cache folder ('' to disable)", group=FETCH, metavar="DIR")
    timeout: float = opt(
        30.0,
        "deadline for the whole download of one image (connection, retries, backoff and body), seconds: "
        "a server that stalls or drips bytes is cut off when it passes",
        group=FETCH,
        metavar="S",
    )
    connect_timeout: float = opt(5.0, "connect timeout per attempt, seconds", group=FETCH, metavar="S")
    retries: int = opt(
        3, "retries on connection errors, timeouts, 429 and 5xx (with backoff)", group=FETCH, metavar="N"
    )
    max_bytes: int = opt(
        20 * 1024 * 1024,
        "largest body accepted (e.g. 20MB); streaming stops past it",
        group=FETCH,
        type=parse_size,
        metavar="SIZE",
    )
    min_bytes: int = opt(
        5 * 1024,
        "smallest download accepted (error placeholders are tiny); local files are not filtered",
        group=FETCH,
        type=parse_size,
        metavar="SIZE",
    )
    image_size: int = opt(
        256, "output size in pixels (square side; shorter side with --resize keep)", group=IMAGES, metavar="PX"
    )
    resize: str = opt(
        "crop",
        "crop = shorter side to size then center crop; stretch = plain resize to a square "
        "(the original generator); keep = keep aspect ratio",
        group=IMAGES,
        choices=C.RESIZE_MODES,
    )
    quality: int = opt(95, "JPEG quality of the stored images", group=IMAGES, metavar="Q")
    min_side: int = opt(32, "refuse images whose shorter side is below this", group=IMAGES, metavar="PX")
    max_pixels: int = opt(64_000_000, "refuse images with more pixels (decompression bombs)", group=IMAGES, metavar="N")
    val_fraction: float = opt(
        0.2, "share of images held out for validation (iteratively stratified)", group=SPLIT, metavar="F"
    )
    val_count: int | None = opt(
        None, "exact number held out instead (the original held out 4000)", group=SPLIT, metavar="N"
    )
    seed: int = opt(0, "random seed of the split", group=SPLIT)
    shard_size: int = opt(1024, "records per shard", group=SPLIT, metavar="N")
    from_folders: str | None = opt(
        None,
        "a folder per class (images found recursively; class = subfolder name); "
        "DIR/train + DIR/valid|validation|val [+ DIR/test] holding class folders keep "
        "those splits (DIR/train [+ DIR/test] alone: validation is split from train)",
        group=SOURCES,
        metavar="DIR",
    )
    label_regex: str | None = opt(
        None,
        "with LIST a folder: class = first group of RE searched in each image's "
        r"path relative to LIST ('/' separators), e.g. '([^/]+)_\d+\.jpg$'",
        group=SOURCES,
        metavar="RE",
    )
    from_lists: str | None = opt(
        None,
        "PaddleHub layout: DIR/label_list.txt (a class per line) + "
        "train_list.txt, validate_list.txt [, test_list.txt] of "
        "'relative/path label_index_or_name'",
        group=SOURCES,
        metavar="DIR",
    )
    from_urls: str | None = opt(
        None,
        "DIR/CLASS.txt or CLASS.csv: one image URL per line (first column) per class, downloaded like LIST's URLs",
        group=SOURCES,
        metavar="DIR",
    )
    from_tfrecords: list[str] | None = opt(
        None,
        "the original project's TFRecords (features image + label_0..label_N), task multilabel: one file is "
        "split by --val-fraction/--val-count, two are train and val as given; ids FILESTEM-INDEX; images "
        "are extracted under --cache (else OUT/.partial/) first",
        group=SOURCES,
        metavar="FILE",
        nargs="+",
    )
    max_per_class: int | None = opt(
        None, "with --from-urls: take at most N URLs of each class; none = no cap", group=SOURCES, metavar="N"
    )
    apply_review: str | None = opt(
        None,
        "CSV written by evaluate.py (id,...,action,new_labels): leave out the "
        "'drop' ids and give 'relabel' ids their new_labels; works with any source",
        group=SOURCES,
        metavar="FILE",
    )

    def __post_init__(self) -> None:
        if self.cache == "":  # --cache '' disables the cache
            self.cache = None
        if isinstance(self.from_tfrecords, str):  # `from-tfrecords: FILE` in a YAML config
            self.from_tfrecords = [self.from_tfrecords]

    def validate(self) -> None:
        """Refuse impossible options before anything is read or written (IngestError)."""
        check_choices(self, IngestError)
        if self.image_size < 8:
            raise IngestError(f"--image-size {self.image_size} is too small (at least 8)")
        if not 1 <= self.quality <= 100:
            raise IngestError(f"--quality must be 1..100, got {self.quality}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise IngestError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.workers < 1 or self.shard_size < 1:
            raise IngestError("--workers and --shard-size must be at least 1")
        if not (self.timeout > 0 and self.connect_timeout > 0):
            raise IngestError("--timeout and --connect-timeout must be more than 0 seconds")
        self._validate_source()
        for flag, value in (("--out", self.out), ("--cache", self.cache)):
            if value and "://" in value:
                raise IngestError(
                    f"{flag} {value}: only local folders (or a shared mount every worker sees) are written "
                    f"to for now; remote filesystems such as gs:// or s3:// are not supported yet"
                )
        if self.beam_args and self.engine != "beam":
            raise IngestError(f"options after -- ({' '.join(self.beam_args)}) are Beam's: add --engine beam")
        if self.max_per_class is not None and (self.max_per_class < 1 or not self.from_urls):
            raise IngestError("--max-per-class takes N >= 1 and works with --from-urls")

    def _validate_source(self) -> None:
        """One label source: LIST, or one of --from-folders/--from-lists/--from-urls/--label-regex/--from-tfrecords."""
        chosen = [
            f
            for f, v in (
                ("--from-folders", self.from_folders),
                ("--from-lists", self.from_lists),
                ("--from-urls", self.from_urls),
                ("--label-regex", self.label_regex),
                ("--from-tfrecords", self.from_tfrecords),
            )
            if v
        ]
        if self.from_tfrecords is not None and not 1 <= len(self.from_tfrecords) <= 2:
            raise IngestError(
                f"--from-tfrecords takes one file (split by --val-fraction) or two (train, val), "
                f"got {len(self.from_tfrecords)}"
            )
        if len(chosen) > 1:
            raise IngestError(f"choose one label source, got {' and '.join(chosen)}")
        if chosen and chosen[0] != "--label-regex" and self.list != DEFAULT_LIST:
            raise IngestError(f"give either LIST ({self.list}) or {chosen[0]}, not both")
        if self.label_regex and not Path(self.list).is_dir():
            raise IngestError(f"--label-regex needs LIST to be a folder of images, got {self.list}")
        if not chosen and self.list != "-" and Path(self.list).is_dir():
            raise IngestError(
                f"{self.list} is a folder: add --label-regex RE (class from each file name), or use "
                f"--from-folders {self.list} (a folder per class)"
            )


RUN, MODEL, TRAINS, OPTIM, IMBALANCE, AUG, HW, MACHINES = (
    "data and run",
    "model",
    "what trains",
    "optimisation",
    "imbalance",
    "augmentation",
    "hardware",
    "several machines",
)


@dataclass
class TrainConfig(_Config):
    """Everything `train.py` needs."""

    data: str = opt(DEFAULT_RECORDS, "dataset folder (dataset.json + shards)", group=RUN, metavar="DIR")
    verify_data: bool = opt(
        False,
        "before training, also check every shard's sha256 against dataset.json (reads every byte, ~1 GB/s); "
        "without it each shard's presence and size are checked, and a record damaged inside is named when read",
        group=RUN,
    )
    run: str | None = opt(
        None, "run name: model_save/RUN and log/RUN (default: a timestamp)", group=RUN, metavar="NAME"
    )
    resume: bool = opt(False, "continue run --run where it stopped (stage, epoch, optimiser state)", group=RUN)
    model_save: str = opt("model_save", "where bundles go", group=RUN, metavar="DIR")
    log: str = opt("log", "where logs go", group=RUN, metavar="DIR")
    seed: int = opt(0, "random seed", group=RUN)
    task: str = opt(
        "auto",
        "auto = the dataset's task (dataset.json; multilabel when absent); multilabel = one "
        "sigmoid head per class; multiclass = one softmax over the classes (one label per image); "
        "binary = one sigmoid head: on a 2-class dataset the positive class is the SECOND label",
        group=MODEL,
        choices=C.TASK_CHOICES,
        expected=f"auto or one of {C.TASKS}",
    )
    backbone: str = opt(
        "densenet121",
        "trunk from keras.applications, with its own preprocessing inside the model",
        group=MODEL,
        choices=C.BACKBONES,
    )
    alpha: float = opt(
        1.0, "MobileNetV2 width multiplier (ImageNet weights: 0.35, 0.5, 0.75, 1.0, 1.3, 1.4)", group=MODEL, metavar="A"
    )
    weights: str = opt(
        "imagenet",
        "imagenet (Keras' notop file from model_save/ or Keras' cache), none, a .h5 "
        "file (Keras' notop file, or a trunk from evaluate.py --export trunk such as the shipped "
        "data/pretrained/densenet121-clothing.weights.h5), or an earlier bundle folder (reuse its trunk)",
        group=MODEL,
        metavar="W",
    )
    image_size: int = opt(224, "input side in pixels (random crops of the stored images)", group=MODEL, metavar="PX")
    head_dropout: float = opt(0.0, "dropout before each head's Dense", group=MODEL, metavar="P")
    epochs: int = opt(4, "epochs when --stages is not given", group=TRAINS, metavar="N")
    layers: str = opt(
        "all",
        "heads (trunk frozen), all, a stage onwards (densenet/resnet50: conv5+, conv4+, "
        "conv3+; mobilenetv2: block_16+, block_13+, block_10+, block_6+; xception: block14+, "
        "block13+, block5+; efficientnetb0: block7+ ... block3+), or a regex over trunk layer names",
        group=TRAINS,
        metavar="GROUP",
    )
    stages: str | None = opt(
        None, "staged recipe GROUP:EPOCHS[:LR],... e.g. heads:5,all:20:1e-4", group=TRAINS, metavar="SPEC"
    )
    bn: str = opt(
        "auto",
        "trunk BatchNorm: frozen (inference mode), train, auto (train from scratch, frozen when pretrained)",
        group=TRAINS,
        choices=C.BN_MODES,
    )
    optimizer: str = opt("adam", "sgd = momentum 0.9 + clipnorm 5 (the original)", group=OPTIM, choices=C.OPTIMIZERS)
    lr: float = opt(2e-3, "peak learning rate", group=OPTIM)
    lr_mult: float = opt(
        1.0,
        "discriminative rates: the trunk steps at this multiple of the heads' rate (e.g. "
        "0.1 when fine-tuning a pretrained trunk; 1 = one rate for all)",
        group=OPTIM,
        metavar="M",
    )
    schedule: str = opt("onecycle", "learning-rate schedule per stage", group=OPTIM, choices=C.SCHEDULES)
    warmup: float = opt(
        0.1, "warm-up share of the steps (cosine; one-cycle uses at least 0.25)", group=OPTIM, metavar="F"
    )
    weight_decay: float = opt(0.0, "decoupled weight decay (adamw default 1e-2)", group=OPTIM, metavar="WD")
    batch_size: int = opt(32, "images per step (per replica)", group=OPTIM, metavar="N")
    lr_find: bool = opt(
        False,
        "run the learning-rate range test instead of training: saves log/RUN/lr_find.png and prints the suggested --lr",
        group=OPTIM,
    )
    accum_steps: int = opt(
        1,
        "gradient accumulation: K steps act as one K x batch (Caffe iter_size); one device only",
        group=OPTIM,
        metavar="K",
    )
    head_weights: str = opt(
        "none",
        "each head's share of the loss from training positives: none, original "
        "(∝ frequency), inverse (N/pos), sqrt, effective (Cui et al. 2019)",
        group=IMBALANCE,
        choices=C.HEAD_WEIGHTS,
    )
    pos_weight: str = opt(
        "none",
        "inside each head, weight positives by negatives/positives",
        group=IMBALANCE,
        choices=C.POS_WEIGHTS,
        expected="auto or none",
    )
    loss: str = opt(
        "bce",
        "per-head loss: bce, focal, asl (asymmetric); multiclass: bce = categorical "
        "cross-entropy, focal = categorical focal",
        group=IMBALANCE,
        choices=C.LOSSES,
    )
    beta: float = opt(0.999, "beta of --head-weights effective", group=IMBALANCE)
    gamma: float = opt(2.0, "focal loss gamma", group=IMBALANCE)
    label_smoothing: float = opt(
        0.0, "targets move this far toward 0.5 (multiclass: toward 1/K)", group=IMBALANCE, metavar="S"
    )
    class_weights: str = opt(
        "none",
        "single-label tasks: weight each class's loss by training images (inverse "
        "= N/count, sqrt), normalised to mean 1",
        group=IMBALANCE,
        choices=C.CLASS_WEIGHTS,
    )
    jitter: float = opt(0.0, "colour jitter strength (brightness/contrast/saturation)", group=AUG, metavar="J")
    rotate: float = opt(0.0, "random rotation, +- degrees", group=AUG, metavar="DEG")
    mixed_precision: str = opt(
        "auto", "float16 compute on GPU (auto = on when a GPU is present)", group=HW, choices=C.MIXED_PRECISION
    )
    xla: bool = opt(False, "compile the training step with XLA", group=HW)
    eager: bool = opt(
        False,
        "run eagerly: no graph build (starts in seconds instead of ~1 min on CPU, steps run "
        "slower); for debugging and tiny smoke runs",
        group=HW,
    )
    cpu_devices: int = opt(
        1,
        "without a GPU, split the CPU into N logical devices and train on all of them "
        "through MirroredStrategy: rehearses multi-GPU training (batch per replica, gradients "
        "summed across replicas) on any machine; no speed-up",
        group=HW,
        metavar="N",
    )

    backend: str = opt(
        "auto",
        "Keras backend: auto = $KERAS_BACKEND if set, else tensorflow; jax when training on several "
        "machines (needs the jax extra: pip install -e '.[jax]')",
        group=HW,
        choices=C.BACKENDS,
    )
    workers: str | None = opt(
        None,
        "train on several machines: every process's HOST:PORT, the first is the coordinator; start the "
        "same command on each machine with its --worker-index (JAX backend, keras.distribution). "
        "Without it, KERAS_DISTRIBUTION_JOB_ADDRESSES/_PROCESS_ID or a TF_CONFIG of several tasks are used",
        group=MACHINES,
        metavar="H:P,H:P",
    )
    worker_index: int | None = opt(
        None,
        "this process's place in --workers (0 = the coordinator, the one that writes)",
        group=MACHINES,
        metavar="I",
    )

    def validate(self) -> None:
        """The checks that need neither the dataset nor TensorFlow (TrainError); the rest run in training."""
        check_choices(self, TrainError)
        if self.lr_mult < 0:
            raise TrainError(f"--lr-mult must be >= 0, got {self.lr_mult}")
        if self.cpu_devices < 1:
            raise TrainError(f"--cpu-devices must be >= 1, got {self.cpu_devices}")
        self.stage_specs()

    def stage_specs(self) -> list[tuple[str, int, float]]:
        """(layers, epochs, lr) per stage: `heads:5,all:20:1e-4`, or without --stages one stage of --layers
        for --epochs."""
        if not self.stages:
            return [(self.layers, self.epochs, self.lr)]
        out = []
        for part in self.stages.split(","):
            bits = part.strip().split(":")
            if len(bits) not in (2, 3) or not bits[1].isdigit():
                raise TrainError(f"--stages: '{part}' is not GROUP:EPOCHS[:LR] (e.g. heads:5,all:20:1e-4)")
            try:
                lr = float(bits[2]) if len(bits) == 3 else self.lr
            except ValueError:
                raise TrainError(f"--stages: '{bits[2]}' in '{part}' is not a learning rate") from None
            out.append((bits[0], int(bits[1]), lr))
        return out


@dataclass
class _BundleConfig(_Config):
    """Which bundle detect.py and evaluate.py use."""

    model: str | None = opt(None, "bundle folder", metavar="DIR", shown="the newest in --model-save")
    model_save: str = opt("model_save", "where to look for the newest bundle", metavar="DIR")


@dataclass
class DetectConfig(_BundleConfig):
    """Everything `detect.py` needs."""

    PILLOW_MAX_PIXELS = 2 * 89_478_485  # PIL.Image raises DecompressionBombError past 2 x MAX_IMAGE_PIXELS

    inputs: list[str] = opt(
        help="images, folders, globs, URLs or -", positional=True, nargs="+", metavar="IMAGE", shown=False, factory=list
    )
    threshold: float | None = opt(
        None,
        "one threshold for every class instead of the tuned ones (binary: for the positive class)",
        metavar="P",
        shown=False,
    )
    top_k: int | None = opt(
        None,
        "single-label: classes in the table (default: 5, or the number of classes); "
        "multilabel: show only the K most probable labels",
        metavar="K",
        shown=False,
    )
    json: str | None = opt(
        None,
        "write {input: {probabilities: {label: p}, labels: [...], source: {label: model|constant}}} "
        "(constant: a threshold-0 'always' label, not the model's decision); single-label: "
        "{input: {class, score, top_k: [{label, score}], probabilities}}",
        metavar="FILE",
        shown=False,
    )
    csv: str | None = opt(
        None,
        "write one row per image: input, labels, a column per class, constant_labels; single-label: "
        "input, class, score, top_k, then a column per class",
        metavar="FILE",
        shown=False,
    )
    tta: bool = opt(False, "average with the mirrored image")
    batch_size: int = opt(32, "images per batch", metavar="N")
    quiet: bool = opt(False, "no per-image table (with --json/--csv)")
    # large JPEGs decode at a reduced DCT scale (a 100 MP photo as ~1.5 MP), so the limit is against
    # decompression bombs, not phone photos; Pillow refuses more than 178,956,970 pixels whatever it says
    max_pixels: int = opt(
        150_000_000,
        "refuse images with more pixels, read from the header (decompression bombs); at most 178956970",
        metavar="N",
    )
    max_bytes: int = opt(
        128 * 1024 * 1024, "largest image file or download accepted (e.g. 64MB)", type=parse_size, metavar="SIZE"
    )

    def validate(self) -> None:
        check_choices(self, ValueError)
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not 1 <= self.max_pixels <= self.PILLOW_MAX_PIXELS:
            raise ValueError(
                f"--max-pixels must be from 1 to {self.PILLOW_MAX_PIXELS:,} (Pillow's own hard stop), got {self.max_pixels:,}"
            )
        if self.max_bytes < 1:
            raise ValueError(f"--max-bytes must be at least 1, got {self.max_bytes}")


@dataclass
class EvaluateConfig(_BundleConfig):
    """Everything `evaluate.py` needs."""

    data: str = opt(DEFAULT_RECORDS, "dataset folder", metavar="DIR")
    split: str = opt("val", "split to score")
    threshold: float | None = opt(
        None,
        "one fixed threshold instead of the tuned ones (binary: on the positive class's probability)",
        metavar="P",
        shown=False,
    )
    out: str = opt("report", "report folder", metavar="DIR")
    top_losses: int = opt(20, "images in the top-losses view and review.csv", metavar="K")
    top_k: int | None = opt(
        None, "single-label: k of top-k accuracy", metavar="K", shown="the bundle's, 5 or fewer on small class sets"
    )
    table: bool = opt(
        False,
        "print one line per image (file, true label, predicted label, score) and a final 'accuracy: X (n/N)' line",
    )
    export: list[str] | None = opt(
        None,
        "write a serving SavedModel (BUNDLE/saved_model/), BUNDLE/model.tflite, or the trunk "
        "alone in float16 (BUNDLE/trunk-BACKBONE.weights.h5, a start for train.py --weights) "
        "and exit (repeatable); detect.py --model BUNDLE/model.tflite runs the TFLite one",
        action="append",
        choices=C.EXPORT_FORMATS,
        expected="savedmodel, tflite or trunk",
        shown=False,
    )

    def validate(self) -> None:
        check_choices(self, ValueError)

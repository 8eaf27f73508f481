"""`detect.py`'s and `evaluate.py`'s options (both read a bundle)."""

from __future__ import annotations

from dataclasses import dataclass

from fashion.config import choices as C
from fashion.config.base import DEFAULT_RECORDS, _Config
from fashion.config.options import check_choices, opt, parse_size


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

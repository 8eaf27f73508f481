"""`detect.py`'s and `evaluate.py`'s options (both read a bundle)."""

from __future__ import annotations

import builtins
from dataclasses import dataclass, field

from fashion.config import choices as C
from fashion.config.base import DEFAULT_RECORDS, _Config
from fashion.config.options import check_choices, opt, parse_size


@dataclass
class _BundleConfig(_Config):
    """Which bundle detect.py and evaluate.py use."""

    model: str | None = opt(None, "bundle folder", metavar="DIR", shown="the newest in --model-save")
    model_save: str = opt("model_save", "where to look for the newest bundle", metavar="DIR")


SCORING = "scoring a catalogue (--list FILE --out DIR)"


@dataclass
class DetectConfig(_BundleConfig):
    """Everything `detect.py` needs."""

    PILLOW_MAX_PIXELS = 2 * 89_478_485  # PIL.Image raises DecompressionBombError past 2 x MAX_IMAGE_PIXELS

    inputs: list[str] = opt(
        help="images, folders, globs, URLs or - (a few photos; for a catalogue use --list and --out)",
        positional=True,
        nargs="*",
        metavar="IMAGE",
        shown=False,
        factory=list,
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

    # scoring a catalogue: --list FILE --out DIR
    list: str | None = opt(
        None,
        "score every image a list names: lines id,url_or_path[,anything...] as generate_dataset.py reads "
        "them (labels ignored), a CSV with a url/path column, - for standard input, or a folder or glob; "
        "rows go to Parquet shards in --out, resumable",
        group=SCORING,
        metavar="FILE",
        shown=False,
    )
    out: str | None = opt(
        None,
        "with --list: the folder of part-NNNNN.parquet shards, failures.csv and summary.json (rerun the "
        "same command to continue after a crash or Ctrl-C); with --engine beam also gs://BUCKET/DIR, s3://...",
        group=SCORING,
        metavar="DIR",
        shown=False,
    )
    shard_size: int = opt(
        10_000, "with --list: rows per Parquet shard (a crash redoes at most one)", group=SCORING, metavar="N"
    )
    workers: int | None = opt(
        None,
        "with --list: images fetched and decoded at once, on threads, while the model runs",
        group=SCORING,
        metavar="N",
        shown="32 for a list of URLs, 2 per core for local files (more threads only contend with the model)",
    )
    timeout: float = opt(30.0, "with --list: seconds for one download, retries included", group=SCORING, metavar="S")
    engine: str = opt(
        "local",
        "with --list: local: threads that fetch and decode on this machine, batches through the model; "
        "beam: an Apache Beam pipeline on Beam's RunInference (pip install 'fashion[beam]'), on all local "
        "cores by default; Beam options go after --, e.g. -- --runner=FlinkRunner --flink_master=HOST:8081",
        group=SCORING,
        choices=C.ENGINES,
    )
    beam_args: builtins.list[str] = field(
        default_factory=builtins.list
    )  # what followed `--` on the command line (not an option)
    retry_failed: bool = opt(
        False,
        "with --list, on a finished --out: score again the lines of its failures.csv that a second try may "
        "pass (timeouts, connection errors, 429, 5xx) and merge them in; 404s and non-images stay",
        group=SCORING,
    )

    def validate(self) -> None:
        check_choices(self, ValueError)
        if self.list is None and not self.inputs:
            raise ValueError("give images, folders, globs or URLs, or --list FILE --out DIR for a whole catalogue")
        if self.list is not None and self.inputs:
            raise ValueError("--list scores the list's images; give either images or --list, not both")
        if self.list is not None and not self.out:
            raise ValueError("--list needs --out DIR (the folder of Parquet shards)")
        if self.out and self.list is None:
            raise ValueError("--out is for --list; for a few images use --json FILE or --csv FILE")
        if self.list is not None and (self.json or self.csv):
            raise ValueError("--list writes Parquet shards to --out; --json/--csv are for a few images")
        if self.engine == "beam" and self.list is None:
            raise ValueError("--engine beam scores a --list; for a few images leave it out")
        if self.beam_args and self.engine != "beam":
            raise ValueError(f"options after -- ({' '.join(self.beam_args)}) are Beam's: add --engine beam")
        if self.out and "://" in self.out and self.engine != "beam":
            raise ValueError(
                f"--out {self.out}: remote filesystems (gs://, s3://, ...) are written by --engine beam, "
                f"through Beam's filesystems; the local engine writes local folders"
            )
        if self.shard_size < 1 or (self.workers is not None and self.workers < 1) or self.timeout <= 0:
            raise ValueError("--shard-size and --workers must be at least 1, --timeout above 0")
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
        "write the bundle for serving and exit (repeatable): savedmodel = BUNDLE/saved_model/ for TF Serving "
        "(serving_default takes photo bytes, returns probabilities and the chosen labels), tflite = "
        "BUNDLE/model.tflite, onnx = BUNDLE/model.onnx (needs the onnx extra), trunk = the trunk alone in "
        "float16 (BUNDLE/trunk-BACKBONE.weights.h5, a start for train.py --weights); detect.py --model "
        "BUNDLE/model.tflite or BUNDLE/model.onnx runs those",
        action="append",
        choices=C.EXPORT_FORMATS,
        expected="savedmodel, tflite, onnx or trunk",
        shown=False,
    )

    def validate(self) -> None:
        check_choices(self, ValueError)


@dataclass
class ServeConfig(_BundleConfig):
    """Everything `serve.py` (fashion-serve) needs."""

    host: str = opt("127.0.0.1", "address to listen on (0.0.0.0: every interface; put it behind TLS)", metavar="HOST")
    port: int = opt(8000, "port to listen on (0: any free one, printed at start)", metavar="N")
    api_key: str | None = opt(
        None, "require this key in an X-API-Key header (or Authorization: Bearer KEY) on /v1/*", metavar="KEY"
    )
    batch_size: int = opt(32, "most photos the model takes at once, gathered from concurrent requests", metavar="N")
    batch_wait_ms: float = opt(
        5.0, "how long the first photo of a batch waits for others (the price of batching)", metavar="MS"
    )
    max_photos: int = opt(64, "most photos in one request", metavar="N")
    max_bytes: int = opt(
        32 * 1024 * 1024, "largest photo accepted, uploaded or fetched (413 above)", type=parse_size, metavar="SIZE"
    )
    max_pixels: int = opt(
        150_000_000, "refuse photos with more pixels, read from the header (413: decompression bombs)", metavar="N"
    )
    timeout: float = opt(
        10.0, 'seconds for fetching one {"urls": [...]} photo, retries included (504 past it)', metavar="S"
    )
    tta: bool = opt(False, "average with the mirrored image")

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be 0..65535, got {self.port}")
        if self.batch_size < 1 or self.max_photos < 1 or self.max_bytes < 1 or self.max_pixels < 1:
            raise ValueError("--batch-size, --max-photos, --max-bytes and --max-pixels must be at least 1")
        if self.batch_wait_ms < 0 or self.timeout <= 0:
            raise ValueError("--batch-wait-ms must be 0 or more, --timeout more than 0")
        if self.max_pixels > DetectConfig.PILLOW_MAX_PIXELS:
            raise ValueError(
                f"--max-pixels must be at most {DetectConfig.PILLOW_MAX_PIXELS:,} (Pillow's own hard stop)"
            )

"""`generate_dataset.py`'s options."""

from __future__ import annotations

import builtins  # the field `list` (LIST) shadows the type in the annotations below it
import os
from dataclasses import dataclass, field
from pathlib import Path

from fashion.config import choices as C
from fashion.config.base import DEFAULT_CACHE, DEFAULT_LIST, DEFAULT_RECORDS, _Config
from fashion.config.options import check_choices, opt, parse_size
from fashion.core.errors import IngestError


def default_workers() -> int:
    # Downloads wait on the network: 32 threads per core (spread over the worker processes) keep the
    # cores decoding at 50 ms latency (16 in all reached 207 img/s there, 64 reached 343: bench/ingest.py,
    # 2 cores, 2026-12-03); capped for big machines.
    return min(64, 32 * (os.cpu_count() or 1))


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
    out: str = opt(
        DEFAULT_RECORDS, "output folder (with --engine beam also gs://BUCKET/DIR, s3://...)", group=IO, metavar="DIR"
    )
    labels: str | None = opt(
        None, "label names, one per line (default for the original format: label_0..N)", group=IO, metavar="FILE"
    )
    append: bool = opt(False, "add the list's records to an existing dataset as new shards", group=IO)
    overwrite: bool = opt(False, "replace the dataset (or unfinished run) in --out", group=IO)
    retry_failed: bool = opt(
        False,
        "on a finished --out, with the same list: fetch again the lines of its failures.csv that a second "
        "try may pass (timeouts, connection errors, 429, 5xx) and add those that succeed as new shards; "
        "404s and non-images stay in failures.csv",
        group=IO,
    )
    strict: bool = opt(False, "stop on the first malformed line instead of skipping it", group=IO)
    engine: str = opt(
        "local",
        "local: this machine's threads and processes; beam: an Apache Beam pipeline (pip install "
        "'fashion[beam]'), on all local cores by default; Beam options go after --, e.g. "
        "-- --runner=FlinkRunner --flink_master=HOST:8081",
        group=IO,
        choices=C.ENGINES,
    )
    beam_args: builtins.list[str] = field(
        default_factory=builtins.list
    )  # what followed `--` on the command line (not an option)
    workers: int = opt(help="parallel downloads/decodes", group=FETCH, metavar="N", factory=default_workers)
    cache: str | None = opt(
        DEFAULT_CACHE,
        "download cache folder ('' to disable; with --engine beam also gs://, s3://)",
        group=FETCH,
        metavar="DIR",
    )
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
    from_tfrecords: builtins.list[str] | None = opt(
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

    @property
    def adds_part(self) -> bool:
        """--append and --retry-failed add a part to a finished dataset (new shards, the manifest updated)."""
        return self.append or self.retry_failed

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
        if self.retry_failed and (self.append or self.overwrite):
            raise IngestError("--retry-failed adds to the dataset the list made; leave out --append and --overwrite")
        if not (self.timeout > 0 and self.connect_timeout > 0):
            raise IngestError("--timeout and --connect-timeout must be more than 0 seconds")
        self._validate_source()
        for flag, value in (("--out", self.out), ("--cache", self.cache)):
            if value and "://" in value and self.engine != "beam":
                raise IngestError(
                    f"{flag} {value}: remote filesystems (gs://, s3://, ...) are written by --engine beam, "
                    f"through Beam's filesystems; the local engine writes local folders"
                )
            if value and "://" in value and self.from_tfrecords:
                raise IngestError(f"{flag} {value}: --from-tfrecords extracts images to local folders: give local ones")
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

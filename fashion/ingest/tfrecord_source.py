"""--from-tfrecords: the original project's train.tfrecords / test.tfrecords as a source.

The 2018 JD fashion project (Keras DenseNet) wrote examples of `image` (encoded JPEG/PNG bytes, or a
raw square RGB array) and int64 `label_0..label_12`. Rather than a second ingestion path, each
record's image is written once as a file and returned as an `Item` whose source is that file, so the
job reads them like any list: verify, resize, split, shards, dataset.json, failures.csv, resume.
Ids are `<file stem>-<record index:06d>`; one file is split as usual, two are train and val as given.
A record damaged inside ends its file (TFRecords cannot resync): the records before it are kept and
the rest is one failure naming the file and the record index.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
from google.protobuf.message import DecodeError
from tqdm import tqdm

from fashion.core import fileio
from fashion.core.storage import Location
from fashion.data import records
from fashion.data.imaging import sniff
from fashion.data.sources import Failure, ListError, ParsedList, add_item

EXTRACTED = "tfrecords"  # the folder of extracted images, under --cache or OUT/.partial/
SPLITS = ("train", "val")  # two files: the first is train, the second val
_EXTENSIONS = {"jpeg": ".jpg", "tiff": ".tif"}


def extract_root(cache: str | None, partial: Location) -> Path:
    # Under --cache when set: like downloads there, extracted images outlive the run, so no rerun
    # extracts twice (after Ctrl-C, of a finished command, with --overwrite). With --cache '' they go
    # with the run's temp state in OUT/.partial/ (ingest keeps them when --overwrite clears it).
    return (Path(cache) if cache else Path(str(partial))).resolve() / EXTRACTED


def read_tfrecords(paths: list[str], extract_dir: Path, label_names: list[str] | None = None) -> ParsedList:
    """Extract every record's image under `extract_dir`; items (task multilabel), failures, label names."""
    files = [Path(p) for p in paths]
    for f in files:
        if not f.is_file():
            raise ListError(f"{f}: TFRecord file not found" if not f.exists() else f"{f}: not a file")
    if len(files) == 2 and files[0].stem == files[1].stem:
        raise ListError(f"--from-tfrecords: both files are named {files[0].stem}: their ids would repeat; rename one")
    rows: list[tuple[Path, int, Path, list[int], str]] = []
    failures: list[Failure] = []
    notes = []
    for k, src in enumerate(files):
        split = SPLITS[k] if len(files) == 2 else ""
        got, written, folder = _extract(src, extract_dir, failures)
        rows += [(src, n, path, labels, split) for n, path, labels in got]
        kept = f"kept as the {split} split" if split else "split by --val-fraction/--val-count"
        notes.append(f"{src}: {len(got)} record(s) {kept}; images in {folder} ({written} written now)")
    names = _label_names(rows, label_names, " ".join(paths))
    out = ParsedList([], failures, names, task="multilabel", notes=notes)
    seen: set[str] = set()
    for src, n, path, labels, split in rows:
        rid, bad = _id(src, n), [v for v in labels if v not in (0, 1)]
        problem = f"{len(labels)} labels, not {len(names)}" if len(labels) != len(names) else ""
        problem = problem or (f"label values must be 0 or 1, got {bad[0]}" if bad else "")
        if problem:
            failures.append(Failure(rid, str(src), f"malformed record: {src}: record index {n}: {problem}"))
        else:
            add_item(
                out, seen, 0, rid, str(path), tuple(labels), path.parent, where=f"{src}: record index {n}", split=split
            )
    return out


def _id(src: Path, n: int) -> str:
    return f"{src.stem}-{n:06d}"


def _extract(src: Path, root: Path, failures: list[Failure]) -> tuple[list[tuple[int, Path, list[int]]], int, Path]:
    """(index, image file, labels) of the readable records, how many files were written now, the folder."""
    tf = records.load_tensorflow()
    st = src.stat()
    # Keyed by the file's path, size and mtime: a changed file gets a fresh folder, never a stale image.
    key = hashlib.sha256(f"{src.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:12]
    folder = root / f"{src.stem}-{key}"
    got, written, n = [], 0, 0
    bar = tqdm(desc=f"extract {src.name}", unit="rec", disable=None, leave=False)
    try:
        for raw in tf.data.TFRecordDataset(str(src)).as_numpy_iterator():
            try:
                rec = records.parse_example(raw)
            except (ValueError, DecodeError) as e:  # no `image` feature, an odd raw size, not an Example
                failures.append(Failure(_id(src, n), str(src), f"malformed record: {src}: record index {n}: {e}"))
            else:
                path, new = _write_image(folder / _id(src, n), rec["image"])
                got.append((n, path, rec["labels"]))
                written += new
            n += 1
            bar.update()
    except tf.errors.OpError as e:  # DataLossError: a CRC mismatch or a truncated record
        why = records.tf_error_text(e)
        if n == 0:
            raise ListError(
                f"{src}: not a TFRecord file, or damaged from its first record (record index 0: {why})"
            ) from None
        why = f"record index {n} and after unreadable ({why}); the {n} record(s) before it are kept"
        failures.append(Failure(_id(src, n), str(src), f"damaged record: {src}: {why}"))
    finally:
        bar.close()
    if n == 0:
        raise ListError(f"{src}: holds no records")
    return got, written, folder


def _write_image(base: Path, image: bytes | np.ndarray) -> tuple[Path, bool]:
    """Encoded bytes as they are; a raw RGB array as a lossless PNG. An existing file is kept (a rerun)."""
    fmt = "png" if isinstance(image, np.ndarray) else sniff(image) or "bin"  # bin: not an image (a failure later)
    ext = _EXTENSIONS.get(fmt, f".{fmt}")
    path = base.with_name(base.name + ext)
    if path.is_file():
        return path, False
    if isinstance(image, np.ndarray):
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))  # OpenCV writes BGR
        if not ok:
            raise ValueError(f"{path}: OpenCV could not encode a {image.shape} array as PNG")
        image = buf.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)  # here, not earlier: a file that is no TFRecord leaves no folder
    fileio.atomic_write_bytes(path, image, sync=False)  # temp name + rename; a lost file is extracted again
    return path, True


def _label_names(rows: list, fixed: list[str] | None, where: str) -> list[str]:
    """--labels' (or the appended dataset's) names when given, else label_0..N by the records' usual count."""
    counts = Counter(len(r[3]) for r in rows).most_common()
    if fixed is not None:
        if counts and not any(c == len(fixed) for c, _ in counts):
            raise ListError(
                f"{where}: records carry {counts[0][0]} labels (label_0..label_{counts[0][0] - 1}) but "
                f"{len(fixed)} label names are set (--labels, or the dataset appended to)"
            )
        return list(fixed)
    return [f"label_{i}" for i in range(counts[0][0] if counts else 0)]

"""The record format: the shards every later stage reads (their manifest is dataset_json's).

A dataset folder holds
  train-00000-of-000NN.tfrecord ... val-00000-of-000MM.tfrecord [test-...]
  dataset.json   task (multilabel | multiclass: one-hot labels), labels, schema version, image size,
                 per split (train, val, and test when the source gives one): records,
                 positives per class, shards (name, records, sha256, bytes)
  failures.csv   id,source,reason for every line not written
  index.csv      id,split,shard,source for every record written

Shards are written under a temporary name and renamed when complete; the
manifest is written last, so a folder with a dataset.json is complete.
`verify` re-reads a folder against its manifest.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from fashion.core import outlock, storage
from fashion.data import dataset_json, tfrecord_lite
from fashion.data.dataset_json import MANIFEST, DatasetManifest, ShardEntry, SplitEntry
from fashion.core.errors import EXIT_FAILURES, EXIT_FATAL, EXIT_OK
from fashion.core.fileio import sha256_file

FAILURES = "failures.csv"
INDEX = "index.csv"
SPLITS = ("train", "val")  # always in the manifest
ALL_SPLITS = ("train", "val", "test")  # "test" only when the source gives one (folders, lists)

# Feature keys of our records (schema 1).
F_IMAGE, F_FORMAT, F_ID, F_SOURCE = "image/encoded", "image/format", "image/id", "image/source"
F_HEIGHT, F_WIDTH, F_LABELS = "image/height", "image/width", "labels"
# The original project's records: raw or encoded `image`, one int64 `label_i` per class.
LEGACY_IMAGE, LEGACY_LABEL = "image", "label_{}"


def load_tensorflow():
    """Import TensorFlow on first use: list parsing and --help stay fast."""
    import tensorflow as tf

    return tf


_tf = load_tensorflow


def shard_name(split: str, index: int, total: int, part: str = "") -> str:
    """`train-00003-of-00008.tfrecord`; appended parts add a tag: `train-a01-00000-of-00001.tfrecord`."""
    tag = f"-{part}" if part else ""
    return f"{split}{tag}-{index:05d}-of-{total:05d}.tfrecord"


# Beam's workers write shards without loading TensorFlow (tfrecord_lite: the same bytes, ~690 MB less
# per process); everything else uses TensorFlow, which it has loaded anyway.
_LITE = False


def write_without_tensorflow() -> None:
    """From here on, this process builds and frames records without importing TensorFlow."""
    global _LITE
    _LITE = True


def make_example(image: bytes, *, id: str, source: str, height: int, width: int, labels: Iterable[int]) -> bytes:
    """Serialize one image and its multi-hot labels as a `tf.train.Example`."""
    ex = tfrecord_lite.example_type(_LITE)()
    feature = ex.features.feature
    for key, value in ((F_IMAGE, image), (F_FORMAT, b"jpeg"), (F_ID, id.encode()), (F_SOURCE, source.encode())):
        feature[key].bytes_list.value.append(value)
    for key, values in ((F_HEIGHT, [height]), (F_WIDTH, [width]), (F_LABELS, labels)):
        feature[key].int64_list.value.extend(int(v) for v in values)
    return ex.SerializeToString(deterministic=True)  # map order fixed: the same bytes from any process


@dataclass
class ShardResult:
    name: str
    records: int = 0
    sha256: str = ""
    bytes: int = 0
    positives: list[int] = field(default_factory=list)


# A shard streams into `.NAME.tmp` (not `fileio.atomic_path`: the writer outlives one `with` block);
# a killed run leaves these behind, and the next run removes what matches SHARD_TMP_GLOB.
SHARD_TMP_GLOB = ".*.tfrecord.tmp"


def _record_writer(path: str) -> Any:
    if _LITE:
        try:
            return tfrecord_lite.RecordWriter(path)
        except tfrecord_lite.Unavailable:
            pass
    return _tf().io.TFRecordWriter(path)


def shard_tmp_name(name: str) -> str:
    return f".{name}.tmp"


class ShardWriter:
    """Writes one shard to `.name.tmp`, renames to `name` on `close()`; `abort()` removes the temp file.
    Into a remote folder (an object store) the shard is written to a local temp file and uploaded on
    `close()`: one upload, whole or nothing."""

    def __init__(self, folder: Path | storage.RemotePath, name: str, n_labels: int):
        self.path = folder / name
        if isinstance(folder, storage.RemotePath):
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp")
            os.close(fd)
            self.tmp = Path(tmp)
        else:
            self.tmp = folder / shard_tmp_name(name)
        self.result = ShardResult(name, positives=[0] * n_labels)
        self.written = 0  # bytes passed to the writer: a full disk's message estimates from them
        self._w = _record_writer(str(self.tmp))

    def write(self, serialized: bytes, labels: Iterable[int]) -> None:
        self._w.write(serialized)
        self.written += len(serialized) + 16  # TFRecord framing: length, its CRC, the data's CRC
        self.result.records += 1
        for k, v in enumerate(labels):
            self.result.positives[k] += int(v)

    def close(self) -> ShardResult:
        self._w.close()
        with open(self.tmp, "rb") as f:
            os.fsync(f.fileno())
        self.result.sha256 = sha256_file(self.tmp)
        self.result.bytes = self.tmp.stat().st_size
        if isinstance(self.path, storage.RemotePath):
            try:
                self.path.upload(self.tmp)
            finally:
                self.tmp.unlink(missing_ok=True)
        else:
            os.replace(self.tmp, self.path)
        return self.result

    def abort(self) -> None:
        try:
            self._w.close()
        except Exception:  # e.g. a full disk again while flushing: the temp file goes anyway
            pass
        finally:
            self.tmp.unlink(missing_ok=True)


def shard_paths(folder: str | Path, split: str) -> list[Path]:
    """Shards of a split: from the manifest when there is one, else by file name."""
    folder = Path(folder)
    if (folder / MANIFEST).is_file():
        manifest = dataset_json.read(folder)
        info = manifest["splits"].get(split)
        return [folder / s["name"] for s in info["shards"]] if info else []
    return sorted(folder.glob(f"{split}-*.tfrecord")) + sorted(folder.glob(f"{split}*.tfrecords"))


# --------------------------------------------------------------------------- reading


def parse_example(serialized: bytes, n_labels: int | None = None) -> dict[str, Any]:
    """Parse one record, ours or the original project's, into plain Python values.

    Returns a dict with `image` (encoded bytes, or an HxWx3 uint8 array for
    legacy raw records), `id`, `source`, `labels` (list of ints).
    """
    tf = _tf()
    ex = tf.train.Example.FromString(serialized)
    f = ex.features.feature
    if F_IMAGE in f:
        return {
            "image": f[F_IMAGE].bytes_list.value[0],
            "id": f[F_ID].bytes_list.value[0].decode("utf-8") if F_ID in f else "",
            "source": f[F_SOURCE].bytes_list.value[0].decode("utf-8") if F_SOURCE in f else "",
            "labels": list(f[F_LABELS].int64_list.value),
        }
    if LEGACY_IMAGE in f:
        keys = sorted((k for k in f if k.startswith("label_")), key=lambda k: int(k.split("_")[1]))
        n = n_labels if n_labels is not None else len(keys)
        labels = [
            int(f[LEGACY_LABEL.format(i)].int64_list.value[0]) if LEGACY_LABEL.format(i) in f else 0 for i in range(n)
        ]
        return {"image": legacy_image(f[LEGACY_IMAGE].bytes_list.value[0]), "id": "", "source": "", "labels": labels}
    raise ValueError(f"record has neither '{F_IMAGE}' nor legacy '{LEGACY_IMAGE}' feature: {sorted(f.keys())}")


def legacy_image(data: bytes) -> bytes | np.ndarray:
    """The original generator stored either encoded bytes or a raw square RGB array. A raw array may
    start like an image format (b'BM' is two pixel values): bytes that fit a raw square and do not
    decode are pixels."""
    import cv2

    from fashion.data.imaging import sniff

    side = int(round((len(data) / 3) ** 0.5))
    square = side * side * 3 == len(data)
    if sniff(data) and not (square and cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is None):
        return data
    if not square:
        raise ValueError(f"legacy record image is neither encoded nor a raw square RGB array ({len(data)} bytes)")
    return np.frombuffer(data, np.uint8).reshape(side, side, 3)


def iter_records(paths: Iterable[str | Path], n_labels: int | None = None) -> Iterator[dict[str, Any]]:
    """Every record of the given shards in order; raises on a CRC or framing error."""
    tf = _tf()
    for path in paths:
        for raw in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            yield parse_example(raw, n_labels)


# --------------------------------------------------------------------------- shard checks (train.py)


def check_shards(folder: str | Path, splits: Iterable[str] = SPLITS, *, sha256: bool = False) -> list[str]:
    """Before a dataset is read: every shard dataset.json lists for `splits` exists with its recorded size
    and, with `sha256`, its recorded hash. One line per problem, naming the shard's path. The size check
    costs a stat per shard; the hash reads every byte (about 1 GB/s)."""
    return [problem for _, problem in _changed_shards(Path(folder), splits, sha256)]


def find_damage(folder: str | Path, splits: Iterable[str] = SPLITS) -> list[str]:
    """After reading failed (CRC, truncation, an undecodable image), the shards to blame, one line each
    naming the shard and the record. Shards changed since ingestion (size, sha256) are read first; when
    none changed, every record is CRC-read and its image decoded (a bad image written as such)."""
    folder, splits = Path(folder), list(splits)
    changed = _changed_shards(folder, splits, True)
    if changed:
        return [(_first_bad_record(path, False) or problem) if path.is_file() else problem for path, problem in changed]
    manifest = dataset_json.read(folder)
    paths = [folder / s["name"] for split in splits if split in manifest["splits"] for s in manifest["splits"][split]["shards"]]
    return [bad for bad in (_first_bad_record(p, True) for p in paths) if bad]


def _changed_shards(folder: Path, splits: Iterable[str], sha256: bool) -> list[tuple[Path, str]]:
    manifest = dataset_json.read(folder)
    found = []
    for split in splits:
        for shard in manifest["splits"][split]["shards"] if split in manifest["splits"] else []:
            path = folder / shard["name"]
            if not path.is_file():
                found.append((path, f"{path}: missing (dataset.json lists it with {shard['records']} records)"))
            elif "bytes" in shard and path.stat().st_size != shard["bytes"]:
                size, want = path.stat().st_size, shard["bytes"]
                found.append((path, f"{path}: {size:,} bytes, dataset.json says {want:,} (cut short or replaced)"))
            elif sha256 and shard.get("sha256") and sha256_file(path) != shard["sha256"]:
                found.append((path, f"{path}: content differs from dataset.json (sha256)"))
    return found


def _first_bad_record(path: Path, decode: bool) -> str | None:
    """`path: record N ...` for the first record whose CRC or framing fails (or, with `decode`, whose image
    TensorFlow cannot decode, as training would meet it); None when every record reads."""
    tf = _tf()
    n = 0
    try:
        for raw in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            n += 1
            if decode:
                tf.io.decode_jpeg(parse_example(raw)["image"], channels=3)
    except (tf.errors.OpError, ValueError) as e:
        return f"{path}: record {n + (0 if decode else 1)} unreadable ({tf_error_text(e)})"
    return None


def tf_error_text(e: BaseException) -> str:
    """A TensorFlow error's own words on one line, without the graph-function and op decorations."""
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", getattr(e, "message", None) or str(e))
    text = re.split(r"\s*\[(?:Op:|\[\{\{node)", text.splitlines()[0] if text else "")[0]
    return text.strip()[:200] or type(e).__name__


# --------------------------------------------------------------------------- verification


def verify(folder: str | Path, shown: str | None = None) -> int:
    """Re-read every shard (CRC), decode every image, check counts and hashes against the manifest.
    `shown`: the name the user gave (a remote dataset is checked in a local copy)."""
    folder = Path(folder)
    shown = shown or str(folder)
    # A folder being written is checked read-only as its last dataset.json stands (a run writes it last,
    # and --append adds shards under new names); without one there is nothing to check yet.
    writer = outlock.holder(folder)
    if writer is not None:
        if not (folder / MANIFEST).is_file():
            print(
                f"error: {folder}: no {MANIFEST} yet; generate_dataset.py (pid {writer}) is writing it", file=sys.stderr
            )
            return EXIT_FATAL
        print(
            f"warning: {folder} is being written by generate_dataset.py (pid {writer}); "
            f"checking it as its {MANIFEST} stands now",
            file=sys.stderr,
        )
    try:
        manifest = dataset_json.read(folder)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FATAL
    total = manifest.get("records", sum(s["records"] for s in manifest["splits"].values()))
    bar = tqdm(total=total, unit="rec", desc="verify", dynamic_ncols=True)
    check = _Verifier(folder, manifest, bar)
    for split, info in manifest["splits"].items():
        check.split(split, info)
    bar.close()
    problems = check.problems
    dupes = [i for i, c in check.ids.items() if c > 1]
    if dupes:
        problems.append(f"{len(dupes)} id(s) appear more than once, e.g. {dupes[:3]}")
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    shards = sum(len(s["shards"]) for s in manifest["splits"].values())
    if problems:
        print(f"{shown}: {len(problems)} problem(s) in {shards} shard(s)")
        return EXIT_FAILURES
    print(
        f"{shown}: OK — {sum(check.ids.values())} records in {shards} shard(s), every CRC, image, count and "
        f"hash checked"
    )
    return EXIT_OK


class _Verifier:
    """What `verify` gathers while re-reading: ids seen and problems found, in reading order."""

    def __init__(self, folder: Path, manifest: DatasetManifest, bar: tqdm):
        self.folder, self.bar = folder, bar
        self.n_labels = manifest["num_classes"]
        self.multiclass = manifest.get("task", "multilabel") == "multiclass"
        self.ids: Counter[str] = Counter()
        self.problems: list[str] = []

    def split(self, split: str, info: SplitEntry) -> None:
        positives = [0] * self.n_labels
        count = 0
        for shard in info["shards"]:
            count += self.shard(shard, positives)
        if count != info["records"]:
            self.problems.append(f"{split}: {count} records, manifest says {info['records']}")
        if positives != info["positives"]:
            self.problems.append(
                f"{split}: positives per class {positives} differ from the manifest {info['positives']}"
            )

    def shard(self, shard: ShardEntry, positives: list[int]) -> int:
        """The number of records read; adds the shard's labels to `positives`."""
        name, path = shard["name"], self.folder / shard["name"]
        if not path.is_file():
            self.problems.append(f"{name}: missing")
            return 0
        digest = sha256_file(path)
        if digest != shard["sha256"]:
            self.problems.append(f"{name}: sha256 {digest[:12]}… does not match the manifest ({shard['sha256'][:12]}…)")
        n = 0
        try:
            for rec in iter_records([path], self.n_labels):
                n += 1
                self.bar.update(1)
                self.record(name, n, rec, positives)
        except Exception as e:  # tf raises DataLossError on a CRC mismatch or truncation
            self.problems.append(f"{name}: unreadable after record {n}: {type(e).__name__}: {tf_error_text(e)}")
        if n != shard["records"]:
            self.problems.append(f"{name}: {n} records, manifest says {shard['records']}")
        return n

    def record(self, name: str, n: int, rec: dict[str, Any], positives: list[int]) -> None:
        import cv2

        self.ids[rec["id"]] += 1
        labels = rec["labels"]
        if len(labels) != self.n_labels:
            self.problems.append(f"{name}: record {n} ({rec['id']}) has {len(labels)} labels, expected {self.n_labels}")
        positives[:] = [a + b for a, b in zip(positives, labels)]
        if self.multiclass and sum(labels) != 1:
            self.problems.append(
                f"{name}: record {n} ({rec['id']}) has {sum(labels)} positive labels; "
                f"a multiclass dataset has exactly one"
            )
        img = cv2.imdecode(np.frombuffer(rec["image"], np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            self.problems.append(f"{name}: record {n} ({rec['id']}): image does not decode")

"""`dataset.json`, the contract between generate_dataset.py and every later stage: its typed shape, its
one reader (`read`) and its one writer (`write`). A folder holding one is a complete dataset: the
writer runs last, after every shard is in place.

>>> from fashion.data import dataset_json
>>> dataset_json.MANIFEST
'dataset.json'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypedDict

from fashion.core import fileio, storage

SCHEMA_VERSION = 1
MANIFEST = "dataset.json"


class ShardEntry(TypedDict):
    name: str  # file name in the dataset folder, e.g. train-00000-of-00004.tfrecord
    records: int
    sha256: str
    bytes: int


class SplitEntry(TypedDict):
    records: int
    positives: list[int]  # per label, in `labels` order
    shards: list[ShardEntry]


class _PartRequired(TypedDict):
    tag: str
    fingerprint: str
    command: str
    records: int
    failures: int


class PartEntry(_PartRequired, total=False):
    """One run that added shards (the first, then each --append)."""

    review: dict[str, object]  # --apply-review: the file, its sha256 and the counts


class _ManifestRequired(TypedDict):
    schema_version: int
    labels: list[str]
    num_classes: int
    image_size: int
    resize: str
    quality: int
    format: str  # the encoding of image/encoded: "jpeg"
    features: dict[str, str]  # role -> feature key (records.F_*)
    splits: dict[str, SplitEntry]  # train, val, and test when the source gives one
    failures: int
    created: str
    commands: list[str]
    parts: list[PartEntry]
    config: dict[str, object]  # the IngestConfig of the first run


class DatasetManifest(_ManifestRequired, total=False):
    task: str  # multilabel (absent in the oldest manifests) | multiclass
    records: int  # the sum over splits, set by every run
    failures_by_kind: dict[str, int]
    updated: str


def read(folder: str | Path | storage.RemotePath) -> DatasetManifest:
    """The manifest of a dataset folder (local or remote). FileNotFoundError when there is none,
    ValueError when it was written by a newer version of this tool."""
    path = storage.location(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no dataset manifest (run generate_dataset.py first)")
    manifest: DatasetManifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("schema_version", 0) > SCHEMA_VERSION:
        raise ValueError(
            f"{path}: schema version {manifest['schema_version']} is newer than this "
            f"tool's ({SCHEMA_VERSION}); update fashion"
        )
    return manifest


def write(folder: Path | storage.RemotePath, manifest: DatasetManifest) -> None:
    """The manifest into `folder` (temp name, then rename): last, once the shards it names are there."""
    fileio.atomic_write_json(folder / MANIFEST, manifest)


def exists(folder: Path | storage.RemotePath) -> bool:
    return (folder / MANIFEST).is_file()

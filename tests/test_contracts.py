"""dataset.json and meta.json: what the writers put there is what the typed contracts declare, and the
readers refuse what they cannot use."""

from __future__ import annotations

import doctest
import json
import typing

import pytest

from fashion.data import dataset_json
from fashion.data.dataset_json import DatasetManifest, PartEntry, ShardEntry, SplitEntry
from fashion.model import meta_json
from fashion.model.meta_json import BundleMeta


def declared(td: type) -> tuple[set[str], set[str]]:
    """(required, all) keys of a TypedDict."""
    required = set(td.__required_keys__)  # type: ignore[attr-defined]
    return required, required | set(td.__optional_keys__)  # type: ignore[attr-defined]


def check(obj: dict, td: type, where: str) -> None:
    required, known = declared(td)
    assert required <= set(obj), f"{where}: missing {sorted(required - set(obj))}"
    assert set(obj) <= known, f"{where}: not declared in {td.__name__}: {sorted(set(obj) - known)}"


def test_a_written_dataset_json_is_exactly_the_typed_manifest(dataset):
    m = dataset_json.read(dataset)
    check(m, DatasetManifest, "dataset.json")
    for split, info in m["splits"].items():
        check(info, SplitEntry, f"splits.{split}")
        for shard in info["shards"]:
            check(shard, ShardEntry, f"splits.{split}.shards")
    for part in m["parts"]:
        check(part, PartEntry, "parts")
    hints = typing.get_type_hints(DatasetManifest)
    assert hints["labels"] == list[str] and len(m["labels"]) == m["num_classes"]


def test_the_reader_refuses_a_newer_schema_and_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no dataset manifest"):
        dataset_json.read(tmp_path)
    newer = {"schema_version": dataset_json.SCHEMA_VERSION + 1}
    (tmp_path / dataset_json.MANIFEST).write_text(json.dumps(newer))
    with pytest.raises(ValueError, match="newer than this tool's"):
        dataset_json.read(tmp_path)


def test_writers_write_whole_files_that_read_back(dataset, tmp_path):
    m = dataset_json.read(dataset)
    dataset_json.write(tmp_path, m)
    assert dataset_json.read(tmp_path) == m and dataset_json.exists(tmp_path)
    meta: BundleMeta = {"labels": ["a", "b"], "input_size": 32, "task": "multilabel", "thresholds": [0.5, 0.25]}
    meta_json.write(tmp_path, meta)
    assert meta_json.read(tmp_path / meta_json.META) == meta
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([dataset_json.MANIFEST, meta_json.META])


def test_the_meta_reader_names_the_field_that_is_wrong(tmp_path):
    path = tmp_path / meta_json.META
    path.write_text(json.dumps({"labels": ["a"], "input_size": 0}))
    with pytest.raises(Exception, match=r"'input_size' must be a whole number of pixels, got 0"):
        meta_json.read(path)


def test_the_contract_modules_examples_run():
    for module in (dataset_json, meta_json):
        failed, tried = doctest.testmod(module)
        assert tried >= 1 and failed == 0, module.__name__

"""generate_dataset.py --from-tfrecords: the original project's TFRecords (written here the way its
generator wrote them: `image` encoded or raw RGB, int64 label_0..label_12) into a dataset."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import ROOT, SAMPLE, sample_lines
from fashion.cli import generate_dataset_main
from fashion.data import dataset_json, records

FAST = ["--image-size", "32", "--workers", "4"]
N_LABELS = 13


def legacy_example(image: bytes | None, labels: list[int]) -> bytes:
    import tensorflow as tf

    feats = {f"label_{k}": tf.train.Feature(int64_list=tf.train.Int64List(value=[v])) for k, v in enumerate(labels)}
    if image is not None:
        feats["image"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def write_legacy(path: Path, examples: list[bytes]) -> list[int]:
    """The file as the original generator wrote it (tf.io.TFRecordWriter); each record's end offset."""
    import tensorflow as tf

    ends, at = [], 0
    with tf.io.TFRecordWriter(str(path)) as w:
        for ex in examples:
            w.write(ex)
            at += 8 + 4 + len(ex) + 4  # length, its CRC, the data, its CRC
            ends.append(at)
    return ends


def raw_rgb(photo: Path, side: int = 64) -> np.ndarray:
    return cv2.cvtColor(cv2.resize(cv2.imread(str(photo)), (side, side)), cv2.COLOR_BGR2RGB)


def sample_records(start: int, count: int) -> list[tuple[bytes | np.ndarray, list[int]]]:
    """Sample photos with their labels: even rows as JPEG bytes, odd rows as raw 64x64 RGB arrays."""
    rows = []
    for i, line in enumerate(sample_lines()[start : start + count]):
        photo = SAMPLE / line[1]
        rows.append((photo.read_bytes() if i % 2 == 0 else raw_rgb(photo), [int(v) for v in line[2:]]))
    return rows


def examples(rows) -> list[bytes]:
    return [legacy_example(img if isinstance(img, bytes) else img.tobytes(), labels) for img, labels in rows]


def ingest(*args: str | Path) -> int:
    return generate_dataset_main([str(a) for a in args] + FAST)


def read_all(out: Path) -> dict[str, dict]:
    manifest = dataset_json.read(out)
    recs = {}
    for split in manifest["splits"]:
        for rec in records.iter_records(records.shard_paths(out, split)):
            recs[rec["id"]] = {**rec, "split": split}
    return recs


def failure_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "failures.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_one_file_split_verified_and_rerun_extracts_nothing(tmp_path, capsys):
    rows = sample_records(0, 24)
    raw = rows[1][0].copy()
    raw[0, 0, :2] = (ord("B"), ord("M"))  # a raw array that starts like a BMP file: still pixels
    rows[1] = (raw, rows[1][1])
    write_legacy(tmp_path / "train.tfrecords", examples(rows))
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert ingest("--from-tfrecords", tmp_path / "train.tfrecords", "--out", out, "--cache", cache) == 0
    assert "train.tfrecords: 24 record(s) split by --val-fraction/--val-count" in capsys.readouterr().out

    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["task"] == "multilabel" and manifest["labels"] == [f"label_{k}" for k in range(N_LABELS)]
    assert manifest["splits"]["train"]["records"] > 0 and manifest["splits"]["val"]["records"] > 0
    got = read_all(out)
    assert sorted(got) == [f"train-{n:06d}" for n in range(24)]
    for n, (_, labels) in enumerate(rows):  # what train.py reads: the labels of each record
        assert got[f"train-{n:06d}"]["labels"] == labels
    assert generate_dataset_main(["--verify", str(out)]) == 0

    # extracted as given: JPEG bytes unchanged, raw arrays as lossless PNG in RGB order
    folder = next((cache / "tfrecords").iterdir())
    assert (folder / "train-000000.jpg").read_bytes() == rows[0][0]
    for n in (1, 3):
        back = cv2.cvtColor(cv2.imread(str(folder / f"train-{n:06d}.png")), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(back, rows[n][0])

    capsys.readouterr()
    assert ingest("--from-tfrecords", tmp_path / "train.tfrecords", "--out", tmp_path / "b", "--cache", cache) == 0
    assert "(0 written now)" in capsys.readouterr().out  # a rerun reads the cache, extracts nothing


@pytest.mark.slow  # several conversions
def test_two_files_keep_their_splits_and_overwrite_keeps_extracted_images(tmp_path, capsys):
    write_legacy(tmp_path / "train.tfrecords", examples(sample_records(0, 16)))
    write_legacy(tmp_path / "test.tfrecords", examples(sample_records(16, 6)))
    out = tmp_path / "out"
    files = [tmp_path / "train.tfrecords", tmp_path / "test.tfrecords"]
    labels = ["--labels", SAMPLE / "labels.txt", "--cache", ""]
    assert ingest("--from-tfrecords", *files, "--out", out, *labels) == 0
    manifest = dataset_json.read(out)
    assert manifest["labels"] == (SAMPLE / "labels.txt").read_text().split()
    got = read_all(out)
    assert {i for i, r in got.items() if r["split"] == "train"} == {f"train-{n:06d}" for n in range(16)}
    assert {i for i, r in got.items() if r["split"] == "val"} == {f"test-{n:06d}" for n in range(6)}
    assert not (out / ".partial").exists()  # without --cache the images went with the run's temp state

    # --overwrite clears OUT/.partial/ after the files were read: the extracted images must stay
    assert ingest("--from-tfrecords", *files, "--out", out, *labels, "--overwrite", "--quality", "80") == 0
    assert dataset_json.read(out)["records"] == 22 and not failure_rows(out)

    twelve = tmp_path / "twelve.txt"
    twelve.write_text("\n".join(f"c{k}" for k in range(12)) + "\n")
    capsys.readouterr()
    assert ingest("--from-tfrecords", *files, "--out", tmp_path / "c", "--labels", twelve, "--cache", "") == 2
    err = capsys.readouterr().err
    assert "records carry 13 labels" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow  # several conversions
def test_damaged_tail_and_record_without_image_are_failures(tmp_path, capsys):
    exs = examples(sample_records(0, 12))
    exs[2] = legacy_example(None, [0] * N_LABELS)  # no `image` feature
    exs[4] = legacy_example((SAMPLE / sample_lines()[4][1]).read_bytes(), [1] * 12)  # label_12 missing
    path = tmp_path / "old.tfrecords"
    ends = write_legacy(path, exs)
    path.write_bytes(path.read_bytes()[: ends[7] + 20])  # records 0..7 whole, record 8 cut short
    out = tmp_path / "out"
    assert ingest("--from-tfrecords", path, "--out", out, "--cache", "") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "record index 8 and after unreadable" in err

    assert sorted(read_all(out)) == [f"old-{n:06d}" for n in range(8) if n not in (2, 4)]
    fails = {r["id"]: r for r in failure_rows(out)}
    assert set(fails) == {"old-000002", "old-000004", "old-000008"}
    for rid, n in (("old-000002", 2), ("old-000004", 4), ("old-000008", 8)):
        assert fails[rid]["source"] == str(path) and f"{path}: record index {n}" in fails[rid]["reason"]
    assert fails["old-000002"]["reason"].startswith("malformed record:") and "'image'" in fails["old-000002"]["reason"]
    assert fails["old-000004"]["reason"].endswith("record index 4: 12 labels, not 13")
    assert fails["old-000008"]["reason"].startswith("damaged record:")
    assert generate_dataset_main(["--verify", str(out)]) == 0


def test_not_a_tfrecord_and_bad_options_are_one_line(tmp_path, capsys):
    photo = tmp_path / "photo.tfrecords"
    photo.write_bytes((SAMPLE / sample_lines()[0][1]).read_bytes())
    cases = [
        (["--from-tfrecords", photo], "not a TFRecord file"),
        (["--from-tfrecords", photo, photo, photo], "--from-tfrecords takes one file"),
        (["--from-tfrecords", photo, photo], "both files are named photo"),
        ([SAMPLE / "train+val.txt", "--from-tfrecords", photo], "not both"),
    ]
    for args, needle in cases:
        assert ingest(*args, "--out", tmp_path / "out", "--cache", "") == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_missing_file_is_one_error_line_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "generate_dataset.py"), "--from-tfrecords", str(tmp_path / "nope.tfrecords")]
        + ["--out", str(tmp_path / "out"), "--cache", ""],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope.tfrecords'}: TFRecord file not found"]
    assert not (tmp_path / "out").exists()

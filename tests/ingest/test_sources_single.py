"""generate_dataset.py on single-label sources: class folders, a file-name regex, PaddleHub lists,
per-class URL lists (real HTTP on 127.0.0.1) and --apply-review; real files and real TFRecords."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from conftest import ROOT, SAMPLE, sample_lines
from fashion.cli import generate_dataset_main
from fashion.data import dataset_json, records

CS = ROOT / "data" / "clothing-small"  # 3 classes x (8 train + 3 validation + 2 test)
CLASSES = ["dress", "pants", "shoes"]
FAST = ["--image-size", "32", "--workers", "4", "--min-side", "8"]


def ingest(*args: str | Path, cache: Path | None = None) -> int:
    return generate_dataset_main([str(a) for a in args] + FAST + ["--cache", str(cache) if cache else ""])


def read_records(out: Path) -> dict[str, dict]:
    """id -> record (with its split) from every split in the manifest."""
    manifest = dataset_json.read(out)
    recs = {}
    for split in manifest["splits"]:
        for rec in records.iter_records(records.shard_paths(out, split)):
            assert rec["id"] not in recs
            recs[rec["id"]] = {**rec, "split": split}
    assert len(recs) == manifest["records"]
    return recs


def label_of(rec: dict, names: list[str]) -> str:
    assert sorted(rec["labels"]) == [0] * (len(names) - 1) + [1], f"not one-hot: {rec['labels']}"
    return names[rec["labels"].index(1)]


def failures(out: Path) -> dict[str, str]:
    with open(out / "failures.csv", newline="") as f:
        return {r["id"]: r["reason"] for r in csv.DictReader(f)}


def cs_images(split: str = "train") -> list[tuple[str, Path]]:
    return [(c, p) for c in CLASSES for p in sorted((CS / split / c).glob("*.jpg"))]


def test_folders_with_given_splits_and_verify(tmp_path, capsys):
    out = tmp_path / "cs"
    assert ingest("--from-folders", CS, "--out", out) == 0
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["task"] == "multiclass" and manifest["labels"] == CLASSES and manifest["num_classes"] == 3
    expect = {"train": 8, "val": 3, "test": 2}
    for split, n in expect.items():
        assert manifest["splits"][split]["records"] == 3 * n
        assert manifest["splits"][split]["positives"] == [n, n, n]
    assert manifest["records"] == 39 and manifest["failures"] == 0
    recs = read_records(out)
    folder = {"train": "train", "val": "validation", "test": "test"}
    for rid, rec in recs.items():
        top, cls, _ = rid.split("/")  # id = path relative to DIR
        assert top == folder[rec["split"]] and label_of(rec, CLASSES) == cls
        assert Path(rec["source"]) == CS / rid
    # shards are not class-sorted (the training shuffle buffer sees every class early)
    order = [r for r in records.iter_records(records.shard_paths(out, "train"))]
    assert len({label_of(r, CLASSES) for r in order[:8]}) > 1
    # rerun: recognised, nothing to do
    assert ingest("--from-folders", CS, "--out", out) == 0
    assert "nothing to do" in capsys.readouterr().out

    # --verify reads the test split too: a flipped byte in the test shard is found
    assert generate_dataset_main(["--verify", str(out)]) == 0
    assert "39 records" in capsys.readouterr().out
    test_shard = out / manifest["splits"]["test"]["shards"][0]["name"]
    data = bytearray(test_shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    test_shard.write_bytes(bytes(data))
    assert generate_dataset_main(["--verify", str(out)]) == 1
    assert test_shard.name in capsys.readouterr().err


def test_folders_split_by_val_fraction(tmp_path):
    src = tmp_path / "flat"
    for i, (cls, p) in enumerate(cs_images()):
        # nested folders and upper-case extensions are found too
        dest = src / cls / ("sub" if i % 3 == 0 else "") / (p.stem + (".JPG" if i % 2 else ".jpg"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dest)
    (src / "dress" / "notes.txt").write_text("not an image\n")
    (src / "umbrella").mkdir()  # a class without images still counts as a class
    shutil.copy(cs_images()[0][1], src / "stray.jpg")  # not inside a class folder: a failure
    out = tmp_path / "out"
    assert ingest("--from-folders", src, "--out", out, "--val-fraction", "0.25") == 1
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["task"] == "multiclass" and manifest["labels"] == CLASSES + ["umbrella"]
    assert "test" not in manifest["splits"]
    assert manifest["splits"]["train"]["positives"] == [6, 6, 6, 0]  # stratified: 2 of 8 per class held out
    assert manifest["splits"]["val"]["positives"] == [2, 2, 2, 0]
    assert failures(out) == {"stray.jpg": "no class: stray.jpg: image is not inside a class folder"}
    recs = read_records(out)
    assert len(recs) == 24 and all(label_of(r, manifest["labels"]) == rid.split("/")[0] for rid, r in recs.items())


def test_label_regex_on_file_names(tmp_path, capsys):
    src = tmp_path / "pets"
    (src / "more").mkdir(parents=True)
    for i, (cls, p) in enumerate(cs_images()):
        shutil.copy(p, src / ("more" if i % 4 == 0 else "") / f"{cls}_{i}.jpg")
    shutil.copy(cs_images()[0][1], src / "oddname.jpg")
    regex = r"([^/]+)_\d+\.jpg$"
    out = tmp_path / "out"
    assert ingest(src, "--label-regex", regex, "--out", out, "--val-fraction", "0.25") == 1
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["task"] == "multiclass" and manifest["labels"] == CLASSES
    assert manifest["splits"]["val"]["positives"] == [2, 2, 2]
    fails = failures(out)
    assert list(fails) == ["oddname.jpg"]
    assert "oddname.jpg" in fails["oddname.jpg"] and regex in fails["oddname.jpg"]
    recs = read_records(out)
    assert len(recs) == 24 and "more/dress_0.jpg" in recs
    for rid, rec in recs.items():
        assert label_of(rec, CLASSES) == Path(rid).name.split("_")[0]
    # a folder without --label-regex, and a regex without a group, stop before anything is written
    capsys.readouterr()
    assert ingest(src, "--out", tmp_path / "x") == 2
    assert "--label-regex" in capsys.readouterr().err
    assert ingest(src, "--label-regex", r"[a-z]+_\d+", "--out", tmp_path / "y") == 2
    assert "no group" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_paddlehub_lists(tmp_path):
    src = tmp_path / "paddle"
    (src / "images").mkdir(parents=True)
    (src / "label_list.txt").write_text("\n".join(CLASSES) + "\n")
    lists = {}
    for split in ("train", "validation", "test"):
        rows = []
        for cls, p in cs_images(split):
            shutil.copy(p, src / "images" / p.name)
            k = CLASSES.index(cls)
            rows.append(f"images/{p.name} {cls if len(rows) == 1 else k}")  # one line names the class
        lists[split] = rows
    lists["train"][3:3] = ["justonetoken", f"images/{cs_images()[0][1].name}x 7"]  # lines 4 and 5: malformed
    for split, fname in (("train", "train_list.txt"), ("validation", "validate_list.txt"), ("test", "test_list.txt")):
        (src / fname).write_text("\n".join(lists[split]) + "\n")
    out = tmp_path / "out"
    assert ingest("--from-lists", src, "--out", out) == 1
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["task"] == "multiclass" and manifest["labels"] == CLASSES
    assert {s: v["positives"] for s, v in manifest["splits"].items()} == {
        "train": [8, 8, 8],
        "val": [3, 3, 3],
        "test": [2, 2, 2],
    }
    reasons = sorted(failures(out).values())
    assert len(reasons) == 2 and all(r.startswith("malformed line: train_list.txt: line") for r in reasons)
    assert "line 4" in reasons[0] and "line 5" in reasons[1] and "'7'" in reasons[1]
    recs = read_records(out)
    for split in ("train", "validation", "test"):
        for cls, p in cs_images(split):
            rec = recs[f"images/{p.name}"]
            assert label_of(rec, CLASSES) == cls and rec["split"] == {"validation": "val"}.get(split, split)


def test_url_lists_with_cap_and_a_broken_url(server, tmp_path):
    u = server.url
    photos = [Path(ln[1]).name for ln in sample_lines()[:12]]
    src = tmp_path / "urls"
    src.mkdir()
    (src / "bags.txt").write_text("\n".join(f"{u}/photos/{n}" for n in photos[:5]) + "\n")
    (src / "coats.csv").write_text("url,title\n" + "".join(f"{u}/photos/{n},photo {n}\n" for n in photos[5:8]))
    (src / "hats.txt").write_text(f"{u}/photos/{photos[8]}\n{u}/status/404\n\n{u}/photos/{photos[9]}\n")
    (src / "README.md").write_text("not a class\n")
    out = tmp_path / "out"
    code = ingest(
        "--from-urls",
        src,
        "--out",
        out,
        "--max-per-class",
        "3",
        "--val-fraction",
        "0",
        "--retries",
        "0",
        cache=tmp_path / "cache",
    )
    assert code == 1
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["task"] == "multiclass" and manifest["labels"] == ["bags", "coats", "hats"]
    assert manifest["splits"]["train"]["positives"] == [3, 3, 2]
    assert failures(out) == {f"{u}/status/404": "http 404: Not Found"}
    recs = read_records(out)
    assert {rid: label_of(r, manifest["labels"]) for rid, r in recs.items()} == {
        **{f"{u}/photos/{n}": "bags" for n in photos[:3]},
        **{f"{u}/photos/{n}": "coats" for n in photos[5:8]},
        f"{u}/photos/{photos[8]}": "hats",
        f"{u}/photos/{photos[9]}": "hats",
    }
    assert server.hits[f"/photos/{photos[3]}"] == 0  # beyond the cap: never downloaded


def write_review(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    """rows of (id, action, new_labels) in evaluate.py's review format."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "source", "labels", "predicted", "score", "loss", "action", "new_labels"])
        for rid, action, new in rows:
            w.writerow([rid, "", "", "", "0.5", "1.2", action, new])
    return path


def test_apply_review_drops_and_relabels(tmp_path, capsys):
    ids = [f"train/{c}/{p.name}" for c, p in cs_images()]
    review = write_review(
        tmp_path / "review.csv",
        [
            (ids[0], "drop", ""),
            (ids[9], "DROP", ""),
            (ids[1], "relabel", "shoes"),
            (ids[2], "", ""),
            (ids[3], "keep", ""),
            ("train/dress/not-there.jpg", "drop", ""),
            ("other/x.jpg", "relabel", "pants"),
        ],
    )
    out = tmp_path / "out"
    assert ingest("--from-folders", CS, "--out", out, "--apply-review", review) == 0
    captured = capsys.readouterr()
    assert "2 dropped, 1 relabelled" in captured.out
    assert "2 id(s) are not in" in captured.err
    recs = read_records(out)
    assert ids[0] not in recs and ids[9] not in recs and len(recs) == 37
    assert label_of(recs[ids[1]], CLASSES) == "shoes" and label_of(recs[ids[2]], CLASSES) == "dress"
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["splits"]["train"]["positives"] == [8 - 1 - 1, 8 - 1, 8 + 1]
    assert manifest["parts"][-1]["review"]["file"] == str(review)
    assert manifest["parts"][-1]["review"]["dropped"] == 2 and "--apply-review" in manifest["commands"][-1]

    # the original id,url,l0..lN lines (multi-label) take a review too
    lines = sample_lines()[:6]
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"{ln[0]},{SAMPLE / ln[1]},{','.join(ln[2:])}\n" for ln in lines))
    review2 = write_review(tmp_path / "review2.csv", [(lines[0][0], "drop", ""), (lines[1][0], "relabel", "bag;hat")])
    out2 = tmp_path / "out2"
    assert ingest(lst, "--labels", SAMPLE / "labels.txt", "--out", out2, "--apply-review", review2) == 0
    recs = read_records(out2)
    names = (SAMPLE / "labels.txt").read_text().split()
    assert lines[0][0] not in recs and len(recs) == 5
    assert [names[k] for k, v in enumerate(recs[lines[1][0]]["labels"]) if v] == ["bag", "hat"]
    assert json.loads((out2 / "dataset.json").read_text())["task"] == "multilabel"


@pytest.mark.parametrize(
    "rows, message",
    [
        ([("a", "", ""), ("train/dress/x.jpg", "relabel", "sandals")], "line 3: unknown label 'sandals'"),
        ([("train/dress/x.jpg", "relabel", "")], "line 2: relabel of 'train/dress/x.jpg' with empty new_labels"),
        ([("a", "keep", ""), ("b", "delete", "")], "line 3: action 'delete'"),
        ([("train/dress/x.jpg", "relabel", "dress;shoes")], "line 2: 'train/dress/x.jpg' gets 2 labels"),
    ],
)
def test_bad_review_file_stops_before_anything_is_written(tmp_path, capsys, rows, message):
    review = write_review(tmp_path / "review.csv", rows)
    out = tmp_path / "out"
    assert ingest("--from-folders", CS, "--out", out, "--apply-review", review) == 2
    err = capsys.readouterr().err
    assert str(review) in err and message in err, err
    assert not (out / "dataset.json").exists()


def test_append_folder_source_and_task_mismatch(tmp_path, capsys):
    out = tmp_path / "out"
    assert ingest("--from-folders", CS, "--out", out) == 0
    extra = tmp_path / "extra"
    for cls, p in cs_images("test")[-2:]:  # two more shoes, new ids
        (extra / cls / "new").mkdir(parents=True, exist_ok=True)
        shutil.copy(p, extra / cls / "new" / p.name)
    assert ingest("--from-folders", extra, "--out", out, "--append", "--val-fraction", "0") == 0
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["labels"] == CLASSES and manifest["records"] == 41 and manifest["task"] == "multiclass"
    assert manifest["splits"]["train"]["positives"] == [8, 8, 10]
    recs = read_records(out)
    assert label_of(recs[f"shoes/new/{cs_images('test')[-1][1].name}"], CLASSES) == "shoes"
    assert generate_dataset_main(["--verify", str(out)]) == 0
    # a multi-label list cannot be appended to a multiclass dataset
    lst = tmp_path / "list.txt"
    lst.write_text(f"x1,{cs_images()[0][1]},1,0,0\n")
    capsys.readouterr()
    assert ingest(lst, "--out", out, "--append") == 2
    assert "multiclass dataset" in capsys.readouterr().err


def test_train_and_test_folders_without_validation(tmp_path):
    src = tmp_path / "tt"
    shutil.copytree(CS / "train", src / "train")
    shutil.copytree(CS / "test", src / "test")
    out = tmp_path / "out"
    assert ingest("--from-folders", src, "--out", out, "--val-count", "3") == 0
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["labels"] == CLASSES  # not "train" and "test"
    assert {s: v["positives"] for s, v in manifest["splits"].items()} == {
        "train": [7, 7, 7],
        "val": [1, 1, 1],
        "test": [2, 2, 2],
    }


def test_relative_source_folders(tmp_path, monkeypatch):
    """The README's commands name folders relative to the working directory."""
    monkeypatch.chdir(ROOT)
    out = tmp_path / "rel"
    assert ingest("--from-folders", "data/clothing-small", "--out", out) == 0
    assert dataset_json.read(out)["records"] == 39
    monkeypatch.chdir(ROOT / "data")
    out2 = tmp_path / "rel2"
    assert ingest("clothing-small/train", "--label-regex", r"([^/]+)/[^/]+\.jpg$", "--out", out2) == 0
    assert dataset_json.read(out2)["records"] == 24

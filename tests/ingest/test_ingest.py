"""generate_dataset.py end to end against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import SAMPLE, sample_lines
from fashion.cli import generate_dataset_main
from fashion.core import fileio
from fashion.data import dataset_json, records

LABELS = str(SAMPLE / "labels.txt")


def write_list(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n")
    return path


def read_dataset(out: Path) -> dict[str, dict]:
    """id -> record (with decoded image) over every shard of the manifest."""
    manifest = dataset_json.read(out)
    recs = {}
    for split in records.SPLITS:
        for rec in records.iter_records(records.shard_paths(out, split)):
            assert rec["id"] not in recs, f"duplicate record {rec['id']}"
            rec["split"] = split
            rec["array"] = cv2.cvtColor(
                cv2.imdecode(np.frombuffer(rec["image"], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB
            )
            recs[rec["id"]] = rec
    assert len(recs) == manifest["records"]
    return recs


def read_failures(out: Path) -> dict[str, str]:
    with open(out / "failures.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {r["id"]: r["reason"] for r in rows}


def lbl(bits: str) -> str:
    return ",".join(bits)


def test_every_case_ends_as_the_rules_say(server, tmp_path):
    u = server.url
    good = [f"g{i},{u}/photos/{Path(l[1]).name},{','.join(l[2:])}" for i, l in enumerate(sample_lines()[:12])]
    z = lbl("1000000000000")
    cases = [
        f"flaky,{u}/flaky/{Path(sample_lines()[20][1]).name},{z}",
        f"rgba,{u}/files/rgba.png,{z}",
        f"palette,{u}/files/palette.png,{z}",
        f"grey,{u}/files/grey.png,{z}",
        f"grey16,{u}/files/grey16.png,{z}",
        f"cmyk,{u}/files/cmyk.jpg,{z}",
        f"exif6,{u}/files/exif6.jpg,{z}",
        f"missing,{u}/status/404,{z}",
        f"server500,{u}/status/503,{z}",
        f"slow,{u}/slow,{z}",
        f"html,{u}/page.jpg,{z}",
        f"zero,{u}/zero,{z}",
        f"tiny,{u}/files/tiny.jpg,{z}",
        f"truncated,{u}/files/truncated.jpg,{z}",
        f"huge,{u}/huge,{z}",
        f"hugedecl,{u}/huge-declared,{z}",
        f"bomb,{u}/files/bomb.png,{z}",
        f"ftp,ftp://127.0.0.1/x.jpg,{z}",
        f"localmissing,no/such/file.jpg,{z}",
        f"local,{SAMPLE / sample_lines()[30][1]},{z}",
        f"fileurl,file://{SAMPLE / sample_lines()[31][1]},{z}",
        "shortline,x.jpg,1,0",
        f"badlabel,{u}/photos/a.jpg,{lbl('2000000000000')}",
        f"g0,{u}/photos/dupe.jpg,{z}",
        f"emptyurl,,{z}",
    ]
    lst = write_list(tmp_path / "list.txt", good + cases)
    out = tmp_path / "rec"
    server.slow_seconds = 2.0
    args = [str(lst), "--labels", LABELS, "--out", str(out), "--cache", str(tmp_path / "c")]
    args += ["--image-size", "64", "--resize", "keep", "--timeout", "0.5", "--retries", "1"]
    args += ["--max-bytes", "1MB", "--max-pixels", "5000000", "--shard-size", "8", "--workers", "4"]
    code = generate_dataset_main(args)
    assert code == 1, "some lines failed: exit code 1"
    recs = read_dataset(out)
    fails = read_failures(out)
    written = {"flaky", "rgba", "palette", "grey", "grey16", "cmyk", "exif6", "local", "fileurl"} | {
        f"g{i}" for i in range(12)
    }
    assert set(recs) == written
    expected = {
        "missing": "http 404",
        "server500": "http 503",
        "slow": "timeout",
        "html": "not an image",
        "zero": "too small",
        "tiny": "too small",
        "truncated": "decode error",
        "huge": "too large",
        "hugedecl": "too large",
        "bomb": "too many pixels",
        "ftp": "bad url",
        "localmissing": "missing file",
        "shortline": "malformed line",
        "badlabel": "malformed line",
        "emptyurl": "malformed line",
    }
    for rid, kind in expected.items():
        assert fails[rid].startswith(kind), (rid, fails[rid])
    assert "line 35" in fails["badlabel"] and "'2'" in fails["badlabel"]
    assert "html" in fails["html"].lower()
    assert len(fails) == len(expected) + 1  # + the duplicate id g0
    dup = [r for r in csv.DictReader(open(out / "failures.csv")) if r["reason"].startswith("duplicate id")]
    assert len(dup) == 1 and dup[0]["id"] == "g0" and "dupe.jpg" in dup[0]["source"]
    assert server.hits[f"/flaky/{Path(sample_lines()[20][1]).name}"] == 2  # 500, retried, 200
    assert server.hits["/status/503"] == 2  # retried once, then given up

    # every stored image is 8-bit RGB at the asked size (shorter side 64, aspect kept)
    for r in recs.values():
        assert r["array"].dtype == np.uint8 and r["array"].shape[2] == 3 and min(r["array"].shape[:2]) == 64
    assert recs["g0"]["array"].shape[0] > recs["g0"]["array"].shape[1]  # portrait photo
    assert recs["exif6"]["array"].shape[1] > recs["exif6"]["array"].shape[0]  # EXIF turned it landscape
    top = recs["rgba"]["array"][:10]
    assert top.min() >= 245, "transparent pixels are composited on white"
    np.testing.assert_allclose(recs["cmyk"]["array"].mean((0, 1)), recs["g0"]["array"].mean((0, 1)), atol=12)
    for name in ("grey", "grey16"):
        a = recs[name]["array"].astype(int)
        assert np.abs(a[..., 0] - a[..., 1]).max() <= 2  # grey stays grey, as 3 channels

    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["labels"] == (SAMPLE / "labels.txt").read_text().split()
    assert manifest["failures"] == len(fails)
    assert manifest["failures_by_kind"]["malformed line"] == 3
    for split in ("train", "val"):
        info = manifest["splits"][split]
        y = np.array([recs[i]["labels"] for i in recs if recs[i]["split"] == split])
        assert info["records"] == len(y) and info["positives"] == y.sum(0).tolist()
        for sh in info["shards"]:
            assert sh["sha256"] == fileio.sha256_file(out / sh["name"])
    assert "--image-size 64" in manifest["commands"][0]
    assert not list(out.glob(".*")), "no temporary files left behind"

    # A rerun of the same command does nothing and downloads nothing, and says again what was skipped.
    hits = sum(server.hits.values())
    # the first run's skipped lines are repeated in the summary: still "some lines skipped"
    assert generate_dataset_main(args) == 1
    assert sum(server.hits.values()) == hits


def test_strict_makes_bad_lines_fatal(tmp_path, capsys):
    lst = write_list(tmp_path / "l.txt", [f"a,{SAMPLE / sample_lines()[0][1]},1,0", "b,x.jpg,1"])
    code = generate_dataset_main([str(lst), "--out", str(tmp_path / "o"), "--strict"])
    assert code == 2
    assert "line 2" in capsys.readouterr().err
    assert not (tmp_path / "o" / "dataset.json").exists()


def test_cache_means_no_second_download(server, tmp_path):
    rows = [f"p{i},{server.url}/photos/{Path(l[1]).name},{','.join(l[2:])}" for i, l in enumerate(sample_lines()[:6])]
    lst = write_list(tmp_path / "l.txt", rows)
    args = [str(lst), "--cache", str(tmp_path / "cache"), "--workers", "3", "--image-size", "32"]
    assert generate_dataset_main(args + ["--out", str(tmp_path / "a")]) == 0
    assert sum(server.hits.values()) == 6
    assert generate_dataset_main(args + ["--out", str(tmp_path / "b")]) == 0
    assert sum(server.hits.values()) == 6, "second dataset built from the cache"


def test_csv_with_header_and_union_of_labels(tmp_path):
    rows = ["relative_path,labels"] + [
        f"{l[1]},{'red' if i % 2 else 'blue'};{'dress' if i % 3 else 'coat'}" for i, l in enumerate(sample_lines()[:10])
    ]
    lst = tmp_path / "labels.csv"
    lst.write_text("\n".join(rows) + "\n")
    # relative paths resolve against the list's folder: copy nothing, point at the sample via symlink
    (tmp_path / "photos").symlink_to(SAMPLE / "photos")
    out = tmp_path / "o"
    assert generate_dataset_main([str(lst), "--out", str(out), "--image-size", "32", "--val-fraction", "0.3"]) == 0
    m = dataset_json.read(out)
    assert m["labels"] == ["blue", "coat", "dress", "red"]
    assert m["splits"]["train"]["records"] == 7 and m["splits"]["val"]["records"] == 3
    recs = read_dataset(out)
    first = recs[sample_lines()[0][1]]  # id defaults to the path
    assert first["labels"] == [1, 1, 0, 0]


def test_append_adds_shards_without_rewriting(server, tmp_path):
    lines = sample_lines()
    row = lambda i: f"n{i},{SAMPLE / lines[i][1]},{','.join(lines[i][2:])}"  # noqa: E731
    out = tmp_path / "o"
    common = ["--out", str(out), "--labels", LABELS, "--image-size", "32", "--shard-size", "4"]
    assert generate_dataset_main([str(write_list(tmp_path / "a.txt", [row(i) for i in range(10)]))] + common) == 0
    before = {p.name: fileio.sha256_file(p) for p in out.glob("*.tfrecord")}
    # without --append a different list is refused rather than mixed in
    assert generate_dataset_main([str(write_list(tmp_path / "b.txt", [row(i) for i in range(8, 16)]))] + common) == 2
    code = generate_dataset_main([str(tmp_path / "b.txt"), "--append"] + common)
    assert code == 1  # n8, n9 are already there: reported, not added twice
    after = {p.name: fileio.sha256_file(p) for p in out.glob("*.tfrecord")}
    assert all(after[n] == h for n, h in before.items()), "existing shards untouched"
    assert len(after) > len(before) and any("-a01-" in n for n in after)
    recs = read_dataset(out)
    assert set(recs) == {f"n{i}" for i in range(16)}
    fails = read_failures(out)
    assert set(fails) == {"n8", "n9"} and all(r.startswith("duplicate id") for r in fails.values())
    assert len(dataset_json.read(out)["commands"]) == 2
    assert dataset_json.read(out)["records"] == 16
    assert generate_dataset_main(["--verify", str(out)]) == 0


def test_verify_catches_corruption(tmp_path, capsys):
    lines = sample_lines()
    lst = write_list(tmp_path / "a.txt", [f"v{i},{SAMPLE / lines[i][1]},{','.join(lines[i][2:])}" for i in range(6)])
    out = tmp_path / "o"
    assert generate_dataset_main([str(lst), "--out", str(out), "--image-size", "32"]) == 0
    assert generate_dataset_main(["--verify", str(out)]) == 0
    shard = next(out.glob("train-*.tfrecord"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert generate_dataset_main(["--verify", str(out)]) == 1
    err = capsys.readouterr().err
    assert shard.name in err and "sha256" in err


def test_legacy_records_are_read(tmp_path):
    import tensorflow as tf

    jpeg = (SAMPLE / sample_lines()[0][1]).read_bytes()
    raw = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    path = tmp_path / "legacy.tfrecords"
    with tf.io.TFRecordWriter(str(path)) as w:
        for image, hot in ((jpeg, 3), (raw.tobytes(), 12)):
            feats = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))}
            for k in range(13):
                feats[f"label_{k}"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(k == hot)]))
            w.write(tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString())
    got = list(records.iter_records([path]))
    assert got[0]["image"] == jpeg and got[0]["labels"] == [int(k == 3) for k in range(13)]
    np.testing.assert_array_equal(got[1]["image"], raw)
    assert got[1]["labels"][12] == 1 and sum(got[1]["labels"]) == 1


def test_help_states_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        generate_dataset_main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for needle in ("(default: data/records)", "(default: 256)", "(default: 0.2)", "(default: 95)", "--verify"):
        assert needle in text


def test_yaml_config_sits_between_defaults_and_flags(tmp_path):
    lines = sample_lines()
    lst = write_list(tmp_path / "a.txt", [f"y{i},{SAMPLE / lines[i][1]},{','.join(lines[i][2:])}" for i in range(5)])
    cfg = tmp_path / "ingest.yaml"
    cfg.write_text(f"out: {tmp_path / 'o'}\nimage-size: 40\nquality: 80\nval_fraction: 0.4\n")
    assert generate_dataset_main([str(lst), "--config", str(cfg), "--image-size", "48"]) == 0
    m = dataset_json.read(tmp_path / "o")
    assert m["image_size"] == 48 and m["quality"] == 80 and m["splits"]["val"]["records"] == 2
    cfg.write_text("imagesize: 40\n")
    assert generate_dataset_main([str(lst), "--config", str(cfg)]) == 2  # unknown key: refused


def test_retry_failed_adds_what_a_second_try_passes_and_keeps_the_permanent_failures(server, tmp_path, capsys):
    server.down = True
    u, photos = server.url, sample_lines()
    good = [f"g{i},{u}/photos/{Path(l[1]).name},{','.join(l[2:])}" for i, l in enumerate(photos[:4])]
    down = [f"d{i},{u}/switchable/{Path(l[1]).name},{','.join(l[2:])}" for i, l in enumerate(photos[4:7])]
    lst = write_list(tmp_path / "l.txt", [*good, *down, f"gone,{u}/status/404,{lbl('1' * 13)}", "bad-line"])
    out = tmp_path / "o"
    args = [str(lst), "--labels", LABELS, "--out", str(out), "--image-size", "32", "--shard-size", "2"]
    assert generate_dataset_main(args) == 1
    fails = read_failures(out)
    assert (
        {"d0", "d1", "d2", "gone"} <= set(fails) and len(fails) == 5 and fails["d0"] == "http 503: Service Unavailable"
    )
    assert generate_dataset_main([*args, "--retry-failed"]) == 1  # still down: they fail again, nothing lost
    assert len(dataset_json.read(out)["parts"]) == 2 and len(read_dataset(out)) == 4
    server.down = False  # the host is back
    capsys.readouterr()
    assert generate_dataset_main([*args, "--retry-failed"]) == 1  # the 404 and the bad line stay
    said = capsys.readouterr().out
    assert "retrying 3 line(s) whose failure may pass now (2 permanent left as they are)" in said
    recs = read_dataset(out)
    assert sorted(recs) == ["d0", "d1", "d2", "g0", "g1", "g2", "g3"], "each id once"
    fails = read_failures(out)
    assert fails["gone"] == "http 404: Not Found" and len(fails) == 2 and not any(i.startswith("d") for i in fails)
    manifest = dataset_json.read(out)
    assert manifest["records"] == 7 and manifest["failures"] == 2
    assert sum(p["failures"] for p in manifest["parts"]) == 2, "each part's count matches failures.csv"
    assert records.verify(out) == 0
    assert generate_dataset_main([*args, "--retry-failed"]) == 1
    assert "nothing to retry: 2 failure(s)" in capsys.readouterr().out
    assert generate_dataset_main(args) == 1  # the first command again: its part is there, nothing to do
    assert "already holds the records of this exact command" in capsys.readouterr().out

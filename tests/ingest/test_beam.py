"""`generate_dataset.py --engine beam` (issue #14): a real Apache Beam pipeline (DirectRunner, worker
processes) against a real HTTP server on 127.0.0.1 gives the local engine's dataset: the same records,
failures, index and manifest (but for the recorded command), byte for byte."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, SAMPLE, sample_lines
from fashion.cli import generate_dataset_main
from fashion.core import beamrun
from fashion.data import dataset_json, records
from fashion.data.records import verify

pytest.importorskip("apache_beam", reason="the beam extra (make test installs it)")

LABELS = str(SAMPLE / "labels.txt")
PY = [sys.executable, str(ROOT / "generate_dataset.py")]
TIMEOUT = 300  # a hang fails the test, not the suite


def good_and_bad_rows(server, n: int = 20) -> list[str]:
    """n real photos over HTTP, then a 404, an HTML page, a truncated JPEG and a malformed line."""
    rows = [f"g{i},{server.url}/photos/{Path(l[1]).name},{','.join(l[2:])}" for i, l in enumerate(sample_lines()[:n])]
    labels = ",".join(sample_lines()[0][2:])
    rows += [
        f"nf,{server.url}/status/404,{labels}",
        f"html,{server.url}/page.jpg,{labels}",
        f"cut,{server.url}/files/truncated.jpg,{labels}",
        "short,only-two-columns",
    ]
    return rows


def opts(out: Path, cache: Path) -> list[str]:
    return ["--labels", LABELS, "--out", str(out), "--cache", str(cache), "--image-size", "32", "--shard-size", "6"]


def comparable(out: Path) -> dict:
    """Everything a dataset holds, less what names its run (command lines, times, the engine option)."""
    manifest = json.loads((out / dataset_json.MANIFEST).read_text())
    for key in ("created", "updated", "commands", "config"):  # config: --out, --cache, --engine
        manifest.pop(key, None)
    for part in manifest.get("parts", []):
        part.pop("command", None)
    shards = {p.name: p.read_bytes() for p in sorted(out.glob("*.tfrecord"))}
    return {
        "manifest": manifest,
        "shards": shards,
        "failures": (out / records.FAILURES).read_text(),
        "index": (out / records.INDEX).read_text(),
    }


@pytest.mark.slow  # a Beam pipeline: worker processes start in ~5 s
def test_beam_and_local_engines_write_the_same_dataset(server, tmp_path, capsys):
    lst = tmp_path / "list.txt"
    # 70 good lines: the local engine runs its worker processes (64 or more), Beam's workers write without
    # TensorFlow; the shards must still be the same bytes
    lst.write_text("\n".join(good_and_bad_rows(server, 70)) + "\n")
    cache = tmp_path / "cache"
    local, beam = tmp_path / "local", tmp_path / "beam"
    assert generate_dataset_main([str(lst), *opts(local, cache)]) == 1  # lines skipped: exit 1 for both
    hits = sum(server.hits.values())
    assert generate_dataset_main([str(lst), *opts(beam, tmp_path / "cache2"), "--engine", "beam"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert sum(server.hits.values()) > hits, "the beam run downloaded over HTTP itself"
    a, b = comparable(local), comparable(beam)
    # failures and index first: where the engines differ, they name the line and its shard
    assert a["failures"] == b["failures"]
    assert a["index"] == b["index"]
    assert a["shards"] == b["shards"], "the same records, in the same shards, byte for byte"
    assert a["manifest"] == b["manifest"]
    reasons = {r["id"]: r["reason"] for r in csv.DictReader(open(beam / records.FAILURES))}
    assert set(reasons) == {"nf", "html", "cut", "short"}
    assert reasons["nf"].startswith("http 404") and "HTML" in reasons["html"]
    assert verify(beam) == 0


@pytest.mark.slow  # a Beam pipeline: worker processes start in ~5 s
def test_beam_append_multiclass_folders_and_stdin(server, tmp_path):
    cache = tmp_path / "cache"
    first, more = good_and_bad_rows(server, 8)[:8], good_and_bad_rows(server, 14)[8:14]
    more = [r.replace("g", "m", 1) for r in more]
    lst, lst2 = tmp_path / "a.txt", tmp_path / "b.txt"
    lst.write_text("\n".join(first) + "\n")
    lst2.write_text("\n".join(more) + "\n")
    out = tmp_path / "o"
    assert generate_dataset_main([str(lst), *opts(out, cache), "--engine", "beam"]) == 0
    assert generate_dataset_main([str(lst2), *opts(out, cache), "--engine", "beam", "--append"]) == 0
    ids = sorted(r["id"] for s in records.SPLITS for r in records.iter_records(records.shard_paths(out, s)))
    assert ids == sorted([f"g{i}" for i in range(8)] + [f"m{i}" for i in range(8, 14)])
    assert verify(out) == 0

    folders = tmp_path / "cs"
    assert generate_dataset_main(["--from-folders", str(ROOT / "data" / "clothing-small"), "--out", str(folders),
                                  "--cache", "", "--image-size", "32", "--engine", "beam"]) == 0  # fmt: skip
    assert dataset_json.read(folders)["task"] == "multiclass" and verify(folders) == 0

    piped = tmp_path / "stdin"
    proc = subprocess.run(
        [*PY, "-", *opts(piped, cache), "--engine", "beam"],
        input=lst.read_text(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        dataset_json.read(piped)["splits"]["train"]["records"] + dataset_json.read(piped)["splits"]["val"]["records"]
        == 8
    )


@pytest.mark.slow  # a Beam pipeline: worker processes start in ~5 s
def test_sigkill_of_a_beam_run_leaves_no_manifest_and_the_rerun_finishes(server, tmp_path):
    server.delay = 0.1
    rows = [f"k{i},{server.url}/delay/{Path(l[1]).name},{','.join(l[2:])}" for i, l in enumerate(sample_lines()[:40])]
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(rows) + "\n")
    out = tmp_path / "o"
    args = [*PY, str(lst), *opts(out, tmp_path / "cache"), "--engine", "beam", "--workers", "2"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + TIMEOUT
    while time.time() < deadline and not list(out.glob("*.tfrecord")):
        time.sleep(0.05)
    assert list(out.glob("*.tfrecord")), "a first shard was written before the kill"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its Beam workers, as a machine going down would
    proc.wait(timeout=30)
    assert not (out / dataset_json.MANIFEST).exists(), "a killed pipeline leaves no folder that looks complete"

    rerun = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming" in rerun.stdout
    ids = [r["id"] for s in records.SPLITS for r in records.iter_records(records.shard_paths(out, s))]
    assert sorted(ids) == sorted(f"k{i}" for i in range(40)), "every line exactly once"
    assert verify(out) == 0 and not (out / ".partial").exists()


def test_beam_options_need_the_beam_engine_and_beam_itself(tmp_path, capsys, monkeypatch):
    lst = tmp_path / "l.txt"
    lst.write_text(f"a,{SAMPLE / sample_lines()[0][1]},{','.join(sample_lines()[0][2:])}\n")
    assert generate_dataset_main([str(lst), "--out", str(tmp_path / "o"), "--", "--runner=FlinkRunner"]) == 2
    assert "add --engine beam" in capsys.readouterr().err
    assert generate_dataset_main([str(lst), "--out", "s3://bucket/ds"]) == 2  # the local engine
    assert (
        "s3://bucket/ds: remote filesystems (gs://, s3://, ...) are written by --engine beam" in capsys.readouterr().err
    )
    # gs:// needs apache-beam[gcp], not installed here: one line before anything is read or written
    assert generate_dataset_main([str(lst), "--out", "gs://bucket/ds", "--engine", "beam"]) == 2
    err = capsys.readouterr().err
    assert "--out gs://bucket/ds: " in err and "apache-beam[gcp]" in err and len(err.strip().splitlines()) == 1
    assert not Path("gs:").exists()
    # the same for s3:// without boto3 (decided from what is installed, not from Beam's wording)
    monkeypatch.setitem(sys.modules, "boto3", None)  # as if apache-beam[aws] were not installed
    assert generate_dataset_main([str(lst), "--out", "s3://bucket/ds", "--engine", "beam"]) == 2
    err = capsys.readouterr().err
    assert "--out s3://bucket/ds: s3:// needs boto3, not installed: pip install 'apache-beam[aws]'" in err
    assert len(err.strip().splitlines()) == 1
    monkeypatch.delitem(sys.modules, "boto3")
    assert beamrun.pipeline_args([], cores=2) == [
        "--direct_num_workers=2",
        "--default_sdk_harness_log_level=WARNING",
    ]
    assert beamrun.pipeline_args(["--runner=FlinkRunner", "--flink_master=h:8081"])[:2] == [
        "--runner=FlinkRunner",
        "--flink_master=h:8081",
    ]
    monkeypatch.setitem(sys.modules, "apache_beam", None)  # as if the extra were not installed
    assert generate_dataset_main([str(lst), "--out", str(tmp_path / "o2"), "--engine", "beam"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'fashion[beam]'" in err and "Traceback" not in err
    assert not (tmp_path / "o2" / dataset_json.MANIFEST).exists()
    shutil.rmtree(tmp_path / "o2", ignore_errors=True)


def test_a_failed_worker_is_named_by_its_last_error_line():
    worker_text = (
        "Error processing instruction process_bundle-1. Original traceback is\n"
        'Traceback (most recent call last):\n  File "x.py", line 1, in f\n'
        "PermissionError: [Errno 13] Permission denied: '/data/out/.train-00000-of-00001.tfrecord.tmp'\n"
    )
    line = beamrun.runner_problem(RuntimeError(worker_text))
    assert (
        line
        == "RuntimeError: PermissionError: [Errno 13] Permission denied: '/data/out/.train-00000-of-00001.tfrecord.tmp'"
    )
    # the Prism hint follows from the runner named, whatever Beam's words for the failed download
    failed = RuntimeError("any wording at all")
    assert "--prism_location=PATH" in beamrun.runner_problem(failed, ["--runner=PrismRunner"])
    assert "--prism_location=PATH" in beamrun.runner_problem(failed, ["--runner", "DirectRunner"])
    assert "--prism_location" not in beamrun.runner_problem(failed, ["--runner=FlinkRunner"])
    assert "--prism_location=PATH" not in beamrun.runner_problem(
        failed, ["--runner=PrismRunner", "--prism_location=/opt/prism.zip"]
    )


def test_records_written_without_tensorflow_are_tensorflows_bytes(tmp_path):
    """Beam's workers write shards without importing TensorFlow (tfrecord_lite): the bytes must be those
    tf.train.Example and tf.io.TFRecordWriter write, and TensorFlow must really stay out of that process."""
    rows = [(photo, f"id-{i}", f"http://h/é{i}.jpg", 30 + i, 40 - i, [i % 2, 1, 0]) for i, photo in
            enumerate([b"\xff\xd8 jpeg bytes", b"", b"\x00" * 1000])]  # fmt: skip
    script = f"""
import sys
from pathlib import Path
from fashion.data import records
records.write_without_tensorflow()
w = records.ShardWriter(Path({str(tmp_path)!r}), "lite.tfrecord", 3)
for image, id, source, h, wd, labels in {rows!r}:
    w.write(records.make_example(image, id=id, source=source, height=h, width=wd, labels=labels), labels)
w.close()
print("tensorflow" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr  # written, TensorFlow never loaded
    w = records.ShardWriter(tmp_path, "tf.tfrecord", 3)  # this process: TensorFlow's writer and Example
    for image, id, source, h, wd, labels in rows:
        w.write(records.make_example(image, id=id, source=source, height=h, width=wd, labels=labels), labels)
    w.close()
    assert (tmp_path / "lite.tfrecord").read_bytes() == (tmp_path / "tf.tfrecord").read_bytes()
    back = list(records.iter_records([tmp_path / "lite.tfrecord"]))
    assert [r["id"] for r in back] == ["id-0", "id-1", "id-2"]

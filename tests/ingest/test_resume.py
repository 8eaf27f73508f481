"""Kill generate_dataset.py (SIGKILL) mid-run, rerun the same command: every good line exactly once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, SAMPLE, sample_lines
from fashion.data import dataset_json, records
from fashion.data.records import verify


def run_cmd(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "generate_dataset.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


@pytest.mark.slow
def test_sigkill_then_rerun_finishes_exactly_once(server, tmp_path):
    server.delay = 0.05
    lines = sample_lines()[:72]  # >= 64: the multi-process decoder is used
    rows = [f"k{i},{server.url}/delay/{Path(l[1]).name},{','.join(l[2:])}" for i, l in enumerate(lines)]
    rows.append(f"bad,{server.url}/status/404,{','.join(lines[0][2:])}")
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(rows) + "\n")
    out = tmp_path / "o"
    args = [
        str(lst),
        "--out",
        str(out),
        "--labels",
        str(SAMPLE / "labels.txt"),
        "--cache",
        str(tmp_path / "cache"),
        "--image-size",
        "32",
        "--shard-size",
        "8",
        "--workers",
        "2",
    ]
    proc = run_cmd(args)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("train-*.tfrecord")):
        time.sleep(0.05)
    assert list(out.glob("train-*.tfrecord")), "a first shard was completed before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "dataset.json").exists(), "killed before the end: no manifest claims completeness"
    hits_before = sum(server.hits.values())

    proc = run_cmd(args)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr  # the 404 line is a failure
    assert "resuming" in stdout
    ids = [r["id"] for s in records.SPLITS for r in records.iter_records(records.shard_paths(out, s))]
    assert sorted(ids) == sorted(f"k{i}" for i in range(72)), "every good line exactly once"
    assert verify(out) == 0
    assert (out / "failures.csv").read_text().count("\n") == 2  # header + the 404
    assert not (out / ".partial").exists() and not list(out.glob(".*.tmp"))
    # downloads already cached before the kill were not repeated
    assert sum(server.hits.values()) - hits_before <= 73 - 8


def test_stdin_stream(tmp_path):
    lines = sample_lines()[:5]
    text = "".join(f"s{i},{SAMPLE / l[1]},{','.join(l[2:])}\n" for i, l in enumerate(lines))
    out = tmp_path / "o"
    proc = run_cmd(["-", "--out", str(out), "--image-size", "32", "--val-fraction", "0.4"], stdin=subprocess.PIPE)
    stdout, stderr = proc.communicate(text, timeout=300)
    assert proc.returncode == 0, stderr
    m = dataset_json.read(out)
    assert m["records"] == 5 and m["labels"][0] == "label_0" and len(m["labels"]) == 13
    assert "positives per class" in stdout

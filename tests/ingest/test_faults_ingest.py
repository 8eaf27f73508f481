"""Issue #11, generate_dataset.py's part: hostile lists and faults end in one clear line, nothing good lost.

Disk full on a real small tmpfs (user namespace), two runs on one --out against a real HTTP server,
empty / BOM / odd-first-line / all-negative lists through the real CLI.
"""

from __future__ import annotations

import csv
import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, SAMPLE, sample_lines
from fashion.cli import generate_dataset_main
from fashion.core import fileio, outlock
from fashion.core.errors import EXIT_DISK_FULL
from fashion.data import dataset_json
from fashion.data.sources import resolve_source
from fashion.ingest.splits import split_indices

LABELS = str(SAMPLE / "labels.txt")
PY = [sys.executable, str(ROOT / "generate_dataset.py")]


def local_rows(n: int, prefix: str = "r", start: int = 0, labels: str | None = None) -> list[str]:
    """`id,path,labels` lines of the sample's real photos (absolute paths)."""
    return [
        f"{prefix}{i},{SAMPLE / l[1]},{labels or ','.join(l[2:])}"
        for i, l in enumerate(sample_lines()[start : start + n], start=start)
    ]


def write(path: Path, rows: list[str], bom: bool = False) -> Path:
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + ("\n".join(rows) + "\n").encode())
    return path


def opts(out: Path, *extra: str) -> list[str]:
    return ["--out", str(out), "--cache", "", "--image-size", "32", "--shard-size", "8", *extra]


def index_ids(out: Path) -> list[str]:
    with open(out / "index.csv", newline="") as f:
        return [r["id"] for r in csv.DictReader(f)]


def error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("error:")]


def one_error(err: str) -> str:
    assert "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1, err
    return lines[0]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


# --------------------------------------------------------------------------- 3. output disk full


def _can_mount_tmpfs() -> str:
    if not shutil.which("unshare"):
        return "no unshare command"
    r = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d"],
        capture_output=True,
        text=True,
    )
    return "" if r.returncode == 0 else f"cannot mount a tmpfs in a user namespace: {r.stderr.strip()}"


@pytest.mark.slow
def test_disk_full_keeps_finished_shards_and_a_rerun_completes(tmp_path):
    why = _can_mount_tmpfs()
    if why:
        pytest.skip(why)
    lst = write(tmp_path / "list.txt", local_rows(40))
    mnt, kept = tmp_path / "mnt", tmp_path / "kept"
    mnt.mkdir()
    base = [str(lst), "--labels", LABELS]
    args = [*base, *opts(mnt / "out", "--image-size", "96")]
    # ~6 KB a record: 120 KB hold two shards of 8, not five. The folder is copied out before the
    # namespace (and its tmpfs) ends, as a person would move it to a bigger disk.
    script = f'mount -t tmpfs -o size=120k tmpfs "$1" && shift && "$@"; rc=$?; cp -a "{mnt}/out" "{kept}"; exit $rc'
    r = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", str(mnt), *PY, *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == EXIT_DISK_FULL, r.stderr
    line = one_error(r.stderr)
    assert line.startswith(f"error: disk full writing {mnt / 'out'} (") and "free now" in line
    assert "shard(s) finished and kept" in line and "more is needed" in line and "rerun the same command" in line
    shards = sorted(p.name for p in kept.glob("*.tfrecord"))
    assert shards and not list(kept.glob(".*.tmp")), "finished shards kept, the half-written one removed"
    assert f"{len(shards)}/5 shard(s)" in line
    assert not (kept / "dataset.json").exists() and (kept / ".partial" / "plan.json").is_file()
    assert not (kept / outlock.LOCK_NAME).exists()

    before = {n: (kept / n).read_bytes() for n in shards}
    r = subprocess.run([*PY, *base, *opts(kept, "--image-size", "96")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout
    assert all((kept / n).read_bytes() == b for n, b in before.items()), "kept shards are not rewritten"
    assert sorted(index_ids(kept)) == sorted(f"r{i}" for i in range(40))
    assert generate_dataset_main(["--verify", str(kept)]) == 0


@pytest.mark.parametrize("target", ["state", "manifest"])
def test_disk_full_on_the_small_json_writes(tmp_path, monkeypatch, capsys, target):
    """ENOSPC from a state file or dataset.json (errno as the kernel gives it): same line and exit code."""
    lst = write(tmp_path / "list.txt", local_rows(20))
    out = tmp_path / "o"
    real = fileio.atomic_write_json
    calls = {"n": 0}

    def full(path, obj):
        hit = Path(path).name == "dataset.json" if target == "manifest" else Path(path).name.startswith("train-")
        if hit:
            calls["n"] += 1
            if target == "manifest" or calls["n"] == 2:  # the second shard's state
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, obj)

    monkeypatch.setattr(fileio, "atomic_write_json", full)
    assert generate_dataset_main([str(lst), "--labels", LABELS, *opts(out)]) == EXIT_DISK_FULL
    line = one_error(capsys.readouterr().err)
    assert f"disk full writing {out}" in line
    done = 1 if target == "state" else 3
    assert f"{done}/3 shard(s) finished and kept" in line
    assert not (out / "dataset.json").exists() and not list(out.glob(".*.tmp"))
    assert len(list(out.glob("*.tfrecord"))) == done, "a shard whose state was not written is not kept"
    monkeypatch.setattr(fileio, "atomic_write_json", real)
    assert generate_dataset_main([str(lst), "--labels", LABELS, *opts(out)]) == 0
    assert sorted(index_ids(out)) == sorted(f"r{i}" for i in range(20))
    assert generate_dataset_main(["--verify", str(out)]) == 0


# --------------------------------------------------------------------------- 5. empty, blank, all-bad lists


@pytest.mark.parametrize(
    "rows,why",
    [
        ([], "the list is empty or blank"),
        (["", "   ", ",,"], "the list is empty or blank"),
        (["x,no/such.jpg,2,0", "y,javascript:alert(1),0,1,1", "z,,0,1"], "all 3 line(s) are bad (warnings above)"),
    ],
    ids=["empty", "blank", "all-bad"],
)
def test_a_list_without_a_usable_line_writes_nothing(tmp_path, capsys, rows, why):
    lst = write(tmp_path / "list.txt", rows)
    out = tmp_path / "o"
    assert generate_dataset_main([str(lst), *opts(out)]) == 2
    assert one_error(capsys.readouterr().err) == f"error: {lst}: nothing to ingest: {why}; nothing written"
    assert not out.exists(), "no folder, no dataset.json, no .partial"


def test_an_empty_list_leaves_an_existing_dataset_alone(tmp_path, capsys):
    out = tmp_path / "o"
    assert generate_dataset_main([write(tmp_path / "good.txt", local_rows(6)).as_posix(), *opts(out)]) == 0
    before = snapshot(out)
    empty = write(tmp_path / "empty.txt", [" "])
    for extra in (["--append"], ["--overwrite"]):
        assert generate_dataset_main([str(empty), *opts(out), *extra]) == 2
        assert "nothing to ingest" in one_error(capsys.readouterr().err)
        assert snapshot(out) == before, f"{extra}: the dataset is untouched"


# --------------------------------------------------------------------------- 6. the label count


def test_label_count_is_the_most_common_not_the_first_lines(tmp_path, capsys):
    rows = local_rows(8)
    first = rows[0].rsplit(",", 1)[0]  # 12 labels instead of 13
    lst = write(tmp_path / "list.txt", [first, *rows[1:6], rows[6] + ",1", *rows[7:]])
    out = tmp_path / "o"
    assert generate_dataset_main([str(lst), *opts(out)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    warns = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert warns == [
        f"warning: {lst}: malformed line: line 1: expected 15 columns (id,url + 13 labels), got 14",
        f"warning: {lst}: malformed line: line 7: expected 15 columns (id,url + 13 labels), got 16",
    ]
    assert sorted(index_ids(out)) == sorted(f"r{i}" for i in (1, 2, 3, 4, 5, 7))
    assert dataset_json.read(out)["num_classes"] == 13


def test_label_count_from_labels_file(tmp_path, capsys):
    # lines of 12 labels are the majority here; --labels says 13, so they are the odd ones
    rows = [r.rsplit(",", 1)[0] for r in local_rows(3)] + local_rows(2, start=3)
    lst = write(tmp_path / "list.txt", rows)
    out = tmp_path / "o"
    assert generate_dataset_main([str(lst), "--labels", LABELS, *opts(out, "--val-fraction", "0")]) == 1
    err = capsys.readouterr().err
    assert sum("expected 15 columns (id,url + 13 labels), got 14" in ln for ln in err.splitlines()) == 3
    assert sorted(index_ids(out)) == ["r3", "r4"]
    # --labels that fits no line at all: one line, nothing written
    three = write(tmp_path / "three.txt", ["a", "b", "c"])
    assert generate_dataset_main([str(lst), "--labels", str(three), *opts(tmp_path / "p")]) == 2
    line = one_error(capsys.readouterr().err)
    assert (
        line == f"error: {lst}: lines carry 12 labels but 3 label names are set (--labels, or the dataset appended to)"
    )
    assert not (tmp_path / "p").exists()


# --------------------------------------------------------------------------- 7. a UTF-8 BOM


def test_bom_is_not_part_of_the_first_id_or_header(tmp_path, capsys):
    out = tmp_path / "o"
    lst = write(tmp_path / "list.txt", local_rows(4), bom=True)
    labels = write(tmp_path / "labels.txt", (SAMPLE / "labels.txt").read_text().split(), bom=True)
    assert generate_dataset_main([str(lst), "--labels", str(labels), *opts(out)]) == 0
    assert sorted(index_ids(out)) == ["r0", "r1", "r2", "r3"]
    assert dataset_json.read(out)["labels"][0] == (SAMPLE / "labels.txt").read_text().split()[0]

    names = (SAMPLE / "labels.txt").read_text().split()
    rows = [f"{SAMPLE / l[1]},{';'.join(n for n, b in zip(names, l[2:]) if b == '1')}" for l in sample_lines()[:4]]
    csv_list = write(tmp_path / "header.csv", ["path,labels", *rows], bom=True)
    assert generate_dataset_main([str(csv_list), *opts(tmp_path / "h")]) == 0, capsys.readouterr().err
    assert len(index_ids(tmp_path / "h")) == 4


# --------------------------------------------------------------------------- 9. one run per output folder


def test_a_held_folder_is_refused_and_left_untouched(tmp_path, capsys):
    out = tmp_path / "o"
    lst = write(tmp_path / "list.txt", local_rows(6))
    assert generate_dataset_main([str(lst), *opts(out)]) == 0
    assert not (out / outlock.LOCK_NAME).exists(), "released and removed at the end"
    with outlock.hold(out):
        before = snapshot(out)
        for extra in ([], ["--overwrite"], ["--append"]):
            assert generate_dataset_main([str(lst), *opts(out), *extra]) == 2
            line = one_error(capsys.readouterr().err)
            assert line == (
                f"error: {out} is being written by another generate_dataset.py run (pid {os.getpid()}); "
                f"wait for it to end or stop it, then rerun (nothing was changed)"
            )
            assert snapshot(out) == before
        # --verify proceeds read-only on a folder with a dataset.json, saying it is being written
        assert generate_dataset_main(["--verify", str(out)]) == 0
        assert f"is being written by generate_dataset.py (pid {os.getpid()})" in capsys.readouterr().err
        assert snapshot(out) == before


@pytest.mark.slow
def test_second_run_on_the_same_out_is_refused_and_kill_9_releases(server, tmp_path):
    server.delay = 3.0
    rows = [f"d{i},{server.url}/delay/{Path(l[1]).name},{','.join(l[2:])}" for i, l in enumerate(sample_lines()[:6])]
    lst = write(tmp_path / "list.txt", rows)
    out = tmp_path / "o"
    args = [*PY, str(lst), "--labels", LABELS, *opts(out, "--workers", "1")]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, lock = time.time() + 60, out / outlock.LOCK_NAME
        while time.time() < deadline and not (lock.is_file() and lock.read_text().strip() == str(first.pid)):
            time.sleep(0.05)  # the pid is written once the lock is held
        assert outlock.holder(out) == str(first.pid), "the first run holds the lock"
        r = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2
        assert f"being written by another generate_dataset.py run (pid {first.pid})" in one_error(r.stderr)
        r = subprocess.run([*PY, "--verify", str(out)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2
        assert (
            one_error(r.stderr)
            == f"error: {out}: no dataset.json yet; generate_dataset.py (pid {first.pid}) is writing it"
        )
        assert first.poll() is None, "the first run was still going through all this"
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)
    server.delay = 0.0
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)  # the kernel released the lock
    assert r.returncode == 0, r.stderr
    assert sorted(index_ids(out)) == sorted(f"d{i}" for i in range(6))
    assert generate_dataset_main(["--verify", str(out)]) == 0


# --------------------------------------------------------------------------- 10. any label matrix splits


@pytest.mark.parametrize(
    "y",
    [
        np.zeros((20, 13), int),
        np.zeros((20, 1), int),
        np.ones((20, 1), int),
        np.r_[np.ones(5), np.zeros(15)].astype(int)[:, None],
        np.tile([1, 0, 1], (20, 1)),
        np.zeros((20, 0), int),
    ],
    ids=["all-zero", "one-column-zero", "one-class", "one-column-mixed", "one-combination", "no-column"],
)
def test_any_label_matrix_splits_into_both(y):
    train, val = split_indices(y, val_fraction=0.2, seed=0)
    assert len(val) == 4 and len(train) == 16 and sorted([*train, *val]) == list(range(20))
    assert split_indices(y, val_fraction=0.2, seed=0)[1].tolist() == val.tolist(), "fixed by the seed"


def test_one_row_goes_to_train():
    train, val = split_indices(np.zeros((1, 13), int), val_fraction=0.2)
    assert train.tolist() == [0] and val.tolist() == []


def test_a_list_of_negatives_and_an_append_of_them(tmp_path):
    zeros = ",".join("0" * 13)
    out = tmp_path / "o"
    assert generate_dataset_main([str(write(tmp_path / "neg.txt", local_rows(10, labels=zeros))), *opts(out)]) == 0
    m = dataset_json.read(out)
    assert m["splits"]["train"]["records"] == 8 and m["splits"]["val"]["records"] == 2
    more = write(tmp_path / "more.txt", local_rows(10, prefix="n", start=10, labels=zeros))
    assert generate_dataset_main([str(more), *opts(out, "--append")]) == 0
    m = dataset_json.read(out)
    assert m["records"] == 20 and m["splits"]["val"]["records"] == 4
    assert generate_dataset_main(["--verify", str(out)]) == 0


# --------------------------------------------------------------------------- 11. small ones


def test_unsupported_scheme_is_shown_as_written():
    with pytest.raises(ValueError, match=r"unsupported url scheme 'javascript:' \(use"):
        resolve_source("javascript:alert(1)", Path("/"))
    with pytest.raises(ValueError, match="unsupported url scheme 'ftp:'"):
        resolve_source("ftp://host/x.jpg", Path("/"))


def test_rerun_of_a_finished_run_with_failures_repeats_the_summary(tmp_path, capsys):
    lst = write(tmp_path / "list.txt", [*local_rows(5), f"gone,{tmp_path / 'missing.jpg'},{','.join('0' * 13)}"])
    out = tmp_path / "o"
    assert generate_dataset_main([str(lst), *opts(out)]) == 1
    capsys.readouterr()
    assert generate_dataset_main([str(lst), *opts(out)]) == 1
    got = capsys.readouterr().out
    assert "nothing to do" in got
    assert f"this command: 5 record(s) written, 1 line(s) skipped (listed in {out / 'failures.csv'})" in got
    assert f"dataset: {out}  (5 records: train 4, val 1)" in got
    # a clean run's rerun still ends with 0
    clean = tmp_path / "c"
    assert generate_dataset_main([str(write(tmp_path / "ok.txt", local_rows(3))), *opts(clean)]) == 0
    assert generate_dataset_main([str(tmp_path / "ok.txt"), *opts(clean)]) == 0
    assert "0 line(s) skipped" in capsys.readouterr().out

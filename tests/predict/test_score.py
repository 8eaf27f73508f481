"""detect.py --list FILE --out DIR: a catalogue over a real HTTP server into Parquet shards, failures.csv and
summary.json; the same numbers as detect.py; resumable after kill -9 and Ctrl-C; one run per --out; rows
of one bundle per --out."""

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

import pyarrow.parquet as pq
import pytest

from conftest import ROOT, SAMPLE, noise_in, sample_lines, tiny_bundle
from fashion.cli import detect_main

LABELS = (SAMPLE / "labels.txt").read_text().split()
TIMEOUT = 300


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory.mktemp("model_save") / "tiny")


def rows_of(out: Path) -> list[dict]:
    """Every row of every shard, read by pyarrow itself (not our code)."""
    rows = []
    for part in sorted(out.glob("part-*.parquet")):
        rows += pq.read_table(part).to_pylist()
    return rows


def failures_of(out: Path) -> dict[str, str]:
    with open(out / "failures.csv", newline="") as f:
        return {r["id"]: r["reason"] for r in csv.DictReader(f)}


def good_lines(server, n: int, prefix: str = "p", route: str = "photos") -> list[str]:
    """`id,url,labels...` lines of real photos served at `route`, as a dataset's list has them."""
    return [
        f"{prefix}{i},{server.url}/{route}/{Path(ln[1]).name},{','.join(ln[2:])}"
        for i, ln in enumerate(sample_lines()[:n])
    ]


def bad_lines(server) -> list[str]:
    """Lines ingestion fails for its own reasons: a 404, an HTML page, a truncated JPEG, a download that stalls,
    a line without a URL (ids missing, html, cut, stalled, no-url-here)."""
    return [
        f"missing,{server.url}/status/404",
        f"html,{server.url}/page.jpg",
        f"cut,{server.url}/files/truncated.jpg",
        f"stalled,{server.url}/drip",
        "no-url-here",
    ]


def test_a_list_over_http_becomes_parquet_rows_failures_and_a_summary(server, bundle, tmp_path, capsys):
    lines = good_lines(server, 7) + bad_lines(server) + ["ftp,ftp://example.org/a.jpg"]
    lst, out = tmp_path / "list.txt", tmp_path / "scored"
    lst.write_text("\n".join(lines) + "\n")
    args = ["--list", str(lst), "--out", str(out), "--model", str(bundle), "--shard-size", "4", "--timeout", "2"]
    assert detect_main(args) == 1
    said = capsys.readouterr()
    rows = rows_of(out)
    assert sorted(r["id"] for r in rows) == [f"p{i}" for i in range(7)], "one row per good line, each once"
    assert sorted(p.name for p in out.glob("part-*.parquet")) == [f"part-0000{k}.parquet" for k in range(4)]
    schema = pq.read_schema(out / "part-00000.parquet")
    assert [schema.field(n).type for n in ("id", "input", "line")] == ["string", "string", "int64"]
    assert all(str(schema.field(lb).type) == "float" for lb in LABELS)  # float32, one column per label
    assert str(schema.field("labels").type) == "list<element: string>"
    # the first three labels' thresholds are 0 (constants): chosen on every row, and marked as constants
    assert all(r["labels"] == LABELS[:3] and r["constant_labels"] == LABELS[:3] for r in rows)
    fails = failures_of(out)
    assert set(fails) == {"missing", "html", "cut", "stalled", "no-url-here", "ftp"}
    # the reasons ingestion gives for the same faults
    assert fails["missing"] == "http 404: Not Found"
    assert fails["html"] == "not an image: content is an HTML page"
    assert fails["cut"].startswith("decode error: truncated JPEG")
    assert fails["stalled"].startswith("timeout: not complete within the 2s deadline")
    assert fails["no-url-here"].startswith("malformed line: line 12")
    assert fails["ftp"].startswith("bad url: line 13: unsupported url scheme 'ftp:'")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {
        "lines": 13,
        "scored": 7,
        "failed": 6,
        "failures_by_kind": summary["counts"]["failures_by_kind"],
    }
    assert summary["positive_rate"][LABELS[0]] == 1.0 and summary["positive_rate"][LABELS[5]] == 0.0
    assert len(summary["meta_sha256"]) == 64 and summary["thresholds"][:3] == [0.0, 0.0, 0.0]
    assert not (out / ".partial").exists() and not list(out.glob(".*tmp*"))
    assert "7 of 13 line(s) scored" in said.out and "<- every image" in said.out
    assert "6 line(s) failed" in said.err and "Traceback" not in said.err

    # the same probabilities as detect.py on one photo (its --json), within float32
    photo = SAMPLE / sample_lines()[2][1]
    one = tmp_path / "one.json"
    assert detect_main([str(photo), "--model", str(bundle), "--json", str(one), "--quiet"]) == 0
    want = json.loads(one.read_text())[str(photo)]["probabilities"]
    got = next(r for r in rows if r["id"] == "p2")
    assert max(abs(got[lb] - want[lb]) for lb in LABELS) <= 1e-5

    # a rerun of the finished command changes nothing and ends as it did
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert detect_main(args) == 1
    assert "already scored" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before

    # another bundle's rows never join these: refused in one line, nothing touched
    other = tiny_bundle(tmp_path / "other", thresholds=[0.5] * 13)
    assert detect_main([*args[:4], "--model", str(other), *args[6:]]) == 2
    err = capsys.readouterr().err
    assert "rows of two models never mix in one --out" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


@pytest.mark.slow
def test_stdin_a_folder_and_a_csv_with_a_header(bundle, tmp_path, capsys, monkeypatch):
    photos = SAMPLE / "photos"
    names = sorted(p.name for p in photos.iterdir())[:5]
    folder = tmp_path / "imgs"
    folder.mkdir()
    for n in names:
        shutil.copy(photos / n, folder / n)
    assert detect_main(["--list", str(folder), "--out", str(tmp_path / "f"), "--model", str(bundle)]) == 0
    assert sorted(r["id"] for r in rows_of(tmp_path / "f")) == names  # ids: paths relative to the folder
    header = tmp_path / "h.csv"
    header.write_text("sku,path,labels\n" + "".join(f"s{i},{photos / n},shoes\n" for i, n in enumerate(names)))
    assert detect_main(["--list", str(header), "--out", str(tmp_path / "h"), "--model", str(bundle)]) == 0
    assert sorted(r["input"] for r in rows_of(tmp_path / "h")) == [str(photos / n) for n in names]
    monkeypatch.setattr(sys, "stdin", open(header))  # noqa: SIM115  (closed with the test's monkeypatch)
    assert detect_main(["--list", "-", "--out", str(tmp_path / "s"), "--model", str(bundle)]) == 0
    assert len(rows_of(tmp_path / "s")) == 5
    capsys.readouterr()
    assert detect_main(["--list", str(header), "--model", str(bundle)]) == 2
    assert "--list needs --out DIR" in capsys.readouterr().err


@pytest.mark.slow
def test_retry_failed_scores_again_what_a_second_try_may_pass(server, bundle, tmp_path, capsys):
    server.down = True
    names = [Path(ln[1]).name for ln in sample_lines()[10:12]]
    lines = good_lines(server, 3) + [f"down{i},{server.url}/switchable/{n}" for i, n in enumerate(names)]
    lines.append(f"gone,{server.url}/status/404")
    lst, out = tmp_path / "list.txt", tmp_path / "scored"
    lst.write_text("\n".join(lines) + "\n")
    args = ["--list", str(lst), "--out", str(out), "--model", str(bundle), "--shard-size", "2", "--timeout", "5"]
    assert detect_main(args) == 1
    fails = failures_of(out)
    assert set(fails) == {"down0", "down1", "gone"} and fails["down0"] == "http 503: Service Unavailable"
    assert "add --retry-failed to the same command" in capsys.readouterr().err
    server.down = False  # the host is back
    assert detect_main([*args, "--retry-failed"]) == 1  # the 404 stays a failure
    said = capsys.readouterr()
    assert "retrying 2 line(s) whose failure may pass now (1 permanent left as they are)" in said.out
    assert sorted(r["id"] for r in rows_of(out)) == ["down0", "down1", "p0", "p1", "p2"], "each once"
    assert failures_of(out) == {"gone": "http 404: Not Found"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["scored"] == 5 and summary["counts"]["failed"] == 1 and len(summary["retries"]) == 1
    assert summary["shards"] == [f"part-0000{k}.parquet" for k in range(4)]
    assert summary["positives"][LABELS[0]] == 5 and summary["positive_rate"][LABELS[0]] == 1.0
    assert detect_main([*args, "--retry-failed"]) == 1
    assert "nothing to retry: the 1 failure(s)" in capsys.readouterr().out
    assert len(rows_of(out)) == 5


def spawn(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "detect.py"), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(cond, what: str, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"no {what} within {timeout:.0f}s"
        time.sleep(0.1)


@pytest.mark.slow
def test_kill_9_then_rerun_scores_every_line_once_and_a_second_run_is_refused(server, bundle, tmp_path):
    server.delay = 0.5  # 30 photos, one at a time: ~15 s, time for a second run to start and be refused
    lines = good_lines(server, 30, route="delay")
    lst, out = tmp_path / "list.txt", tmp_path / "scored"
    lst.write_text("\n".join(lines) + "\n")
    args = ["--list", str(lst), "--out", str(out), "--model", str(bundle), "--shard-size", "3", "--workers", "1"]
    proc = spawn(args)
    try:
        wait_for(lambda: len(list(out.glob("part-*.parquet"))) >= 2, "finished shard")
        second = subprocess.run(
            [sys.executable, str(ROOT / "detect.py"), *args], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT
        )
        assert second.returncode == 2, second.stderr
        assert "is being written by another detect.py --list run" in second.stderr
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    kept = len(list(out.glob("part-*.parquet")))
    assert 2 <= kept < 10 and not (out / "summary.json").exists()
    rerun = subprocess.run(
        [sys.executable, str(ROOT / "detect.py"), *args], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming: {kept} of 10 shard(s)" in rerun.stdout
    ids = [r["id"] for r in rows_of(out)]
    assert sorted(ids) == sorted(f"p{i}" for i in range(30)), "every good line exactly once"
    assert not noise_in(rerun.stderr), rerun.stderr


@pytest.mark.slow
def test_ctrl_c_is_one_line_and_130_and_the_rerun_finishes(server, bundle, tmp_path):
    server.delay = 0.3
    lst, out = tmp_path / "list.txt", tmp_path / "scored"
    lst.write_text("\n".join(good_lines(server, 18, route="delay")) + "\n")
    args = ["--list", str(lst), "--out", str(out), "--model", str(bundle), "--shard-size", "3", "--workers", "2"]
    proc = spawn(args)
    try:
        wait_for(lambda: any(out.glob("part-*.parquet")), "finished shard")
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted: " in err and "rerun the same command to continue" in err and "Traceback" not in err
    rerun = subprocess.run(
        [sys.executable, str(ROOT / "detect.py"), *args], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(r["id"] for r in rows_of(out)) == sorted(f"p{i}" for i in range(18))

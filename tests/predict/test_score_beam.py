"""detect.py --list --engine beam: a real Beam pipeline on Beam's RunInference writes the local engine's rows and
failures; killed (the driver and its workers) and rerun, every line is scored exactly once; the output on
s3:// through Beam's own S3 filesystem against a real S3-protocol server on 127.0.0.1 (moto's)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_score import LABELS, TIMEOUT, bad_lines, failures_of, good_lines, rows_of, wait_for

from conftest import BUCKET, ROOT, noise_in, tiny_bundle
from fashion.cli import detect_main

pytest.importorskip("apache_beam", reason="the beam extra (make test installs it)")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory.mktemp("model_save") / "tiny")


def assert_same_rows(ours: list[dict], theirs: list[dict]) -> None:
    assert [r["id"] for r in ours] == [r["id"] for r in theirs], "the same rows in the same order"
    for a, b in zip(ours, theirs):
        assert max(abs(a[lb] - b[lb]) for lb in LABELS) <= 1e-5, a["id"]
        assert (a["labels"], a["constant_labels"], a["input"], a["line"]) == (
            b["labels"],
            b["constant_labels"],
            b["input"],
            b["line"],
        )


@pytest.mark.slow  # a Beam pipeline: worker processes load TensorFlow and the bundle (~15 s)
def test_beam_engine_writes_the_local_engines_rows_and_failures(server, bundle, tmp_path, capsys):
    lines = good_lines(server, 9) + bad_lines(server)
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(lines) + "\n")
    common = ["--list", str(lst), "--model", str(bundle), "--shard-size", "4", "--timeout", "2"]
    assert detect_main([*common, "--out", str(tmp_path / "local")]) == 1
    out = tmp_path / "beam"
    assert detect_main([*common, "--out", str(out), "--engine", "beam"]) == 1
    said = capsys.readouterr()
    assert_same_rows(rows_of(out), rows_of(tmp_path / "local"))
    ours, theirs = failures_of(out), failures_of(tmp_path / "local")
    assert set(ours) == set(theirs) == {"missing", "html", "cut", "stalled", "no-url-here"}
    # the same reasons, but for how many bytes a stalled download had received when its deadline came
    assert {i: r for i, r in ours.items() if i != "stalled"} == {i: r for i, r in theirs.items() if i != "stalled"}
    assert ours["stalled"].startswith("timeout: not complete within the 2s deadline")
    assert "9 of 14 line(s) scored" in said.out and "Traceback" not in said.err
    assert not (out / ".partial").exists()
    # a finished output: the rerun changes nothing
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert detect_main([*common, "--out", str(out), "--engine", "beam"]) == 1
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # Beam's options without the engine, and the engine without a list: one line each, exit 2
    assert detect_main([*common, "--out", str(tmp_path / "x"), "--", "--runner=FlinkRunner"]) == 2
    assert "are Beam's: add --engine beam" in capsys.readouterr().err
    assert detect_main([str(lst), "--model", str(bundle), "--engine", "beam"]) == 2
    assert "--engine beam scores a --list" in capsys.readouterr().err


@pytest.mark.slow  # Beam pipelines: worker processes load TensorFlow and the bundle (~15 s) each run
def test_beam_scoring_into_s3_killed_and_rerun_scores_every_line_once(s3, server, bundle, tmp_path):
    pytest.importorskip("boto3", reason="the beam extra (make test installs it)")
    pytest.importorskip("moto", reason="the test extra (make test installs it)")
    endpoint, client = s3
    server.delay = 0.4  # 3 photos a shard, one at a time: ~1.2 s a shard, time to kill between two
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join([*good_lines(server, 15, route="delay"), f"missing,{server.url}/status/404"]) + "\n")
    common = ["--list", str(lst), "--model", str(bundle), "--shard-size", "3", "--workers", "1"]
    args = [*common, "--out", f"s3://{BUCKET}/scored", "--engine", "beam", "--", f"--s3_endpoint_url={endpoint}"]

    def shards() -> list[str]:
        found = client.list_objects_v2(Bucket=BUCKET, Prefix="scored/part-").get("Contents", [])
        return [o["Key"] for o in found]

    detect = [sys.executable, str(ROOT / "detect.py")]
    proc = subprocess.Popen(
        [*detect, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_for(lambda: len(shards()) >= 1, "first shard on s3", timeout=TIMEOUT)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its Beam workers, as a machine going down would
        proc.wait(timeout=30)
    finally:
        proc.kill()
    time.sleep(0.5)
    kept = len(shards())
    assert 1 <= kept < 6, "killed while shards were being written"
    rerun = subprocess.run([*detect, *args], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert rerun.returncode == 1, rerun.stderr  # the 404
    assert f"resuming: {kept} of 6 shard(s)" in rerun.stdout
    assert not noise_in(rerun.stderr), rerun.stderr
    scored = tmp_path / "from-s3"
    scored.mkdir()
    for key in [*shards(), "scored/failures.csv", "scored/summary.json"]:
        client.download_file(BUCKET, key, str(scored / Path(key).name))  # boto3 itself, not our code
    assert sorted(r["id"] for r in rows_of(scored)) == sorted(f"p{i}" for i in range(15)), "every line exactly once"
    server.delay = 0
    assert detect_main([*common, "--out", str(tmp_path / "local")]) == 1
    assert_same_rows(rows_of(scored), rows_of(tmp_path / "local"))
    assert failures_of(scored) == failures_of(tmp_path / "local") and set(failures_of(scored)) == {"missing"}

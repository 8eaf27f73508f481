"""The local engine's worker processes (64 images or more): each fetches on its own threads and decodes.

Real runs of generate_dataset.py against the test server on 127.0.0.1; the worker processes are found
in /proc and killed or interrupted as a user or the kernel's OOM killer would.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from test_faults_fetch import LABELS, failures, good_rows, record_ids, run, start, wait_for

N = 80  # above the 64 images from which the local engine starts worker processes


def workers_of(pid: int) -> list[int]:
    """The spawned worker processes of `pid` (not multiprocessing's resource tracker)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            try:
                cmd = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "spawn_main" in cmd:
                found.append(child)
    return sorted(found)


def alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def delayed_list(tmp_path: Path, server) -> list[str]:
    rows = good_rows(N, url=server.url)
    rows = [r.replace("/photos/", "/delay/") for r in rows]
    (tmp_path / "list.txt").write_text("\n".join(rows) + "\n")
    return [str(tmp_path / "list.txt"), "--labels", LABELS, "--out", str(tmp_path / "out"), "--image-size", "32"]


@pytest.mark.slow
def test_a_killed_worker_costs_only_its_images_and_the_run_goes_on(server, tmp_path):
    server.delay = 0.3
    args = delayed_list(tmp_path, server)
    proc = start([*args, "--workers", "4", "--shard-size", "16", "--cache", ""])
    try:
        wait_for(lambda: len(workers_of(proc.pid)) == 2 or proc.poll() is not None, what="two worker processes")
        victim = workers_of(proc.pid)[0]
        wait_for(lambda: sum(server.hits.values()) >= 12 or proc.poll() is not None, what="downloads under way")
        os.kill(victim, signal.SIGKILL)  # as the OOM killer would
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1 and "Traceback" not in err, err
    lost = failures(tmp_path / "out")
    assert lost and all("worker process fetching and decoding it died (killed by SIGKILL" in r for r in lost.values())
    assert len(lost) <= 8, lost  # at most the victim's items in flight (window 16 over two workers)
    # every other line is in the dataset, exactly once: the replacement worker went on
    assert sorted(record_ids(tmp_path / "out")) == sorted(f"p{i}" for i in range(N) if f"p{i}" not in lost)
    named = [ln for ln in err.splitlines() if "died" in ln]
    assert named and all(ln.startswith("skipped line") for ln in named), err


@pytest.mark.slow
def test_ctrl_c_stops_the_worker_processes_and_a_rerun_finishes(server, tmp_path):
    server.delay = 0.3
    args = delayed_list(tmp_path, server)
    args += ["--workers", "4", "--shard-size", "16", "--cache", str(tmp_path / "cache")]
    proc = start(args)
    try:
        wait_for(lambda: len(workers_of(proc.pid)) == 2 or proc.poll() is not None, what="two worker processes")
        children = workers_of(proc.pid)
        wait_for(lambda: sum(server.hits.values()) >= 24 or proc.poll() is not None, what="downloads under way")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert [ln for ln in err.splitlines() if ln.startswith("interrupted")], err
    deadline = time.monotonic() + 10
    while any(map(alive, children)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(alive, children)), "a worker process outlived the interrupted run"

    server.delay = 0.0
    code, out, err = run(args)
    assert code == 0 and "Traceback" not in err and "resuming" in out, err
    assert sorted(record_ids(tmp_path / "out")) == sorted(f"p{i}" for i in range(N))

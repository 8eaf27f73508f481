"""`generate_dataset.py --engine beam --out s3://... --cache s3://...` (issue #14): the dataset and the
download cache on an object store, through Apache Beam's own S3 filesystem, against a real S3-protocol
server on 127.0.0.1 (moto's, in its own process): nothing of ours is stood in for."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_beam import LABELS, TIMEOUT, comparable

from conftest import BUCKET, ROOT, sample_lines
from fashion.cli import generate_dataset_main
from fashion.core import storage
from fashion.core.errors import IngestError
from fashion.data import dataset_json, records

pytest.importorskip("apache_beam", reason="the beam extra (make test installs it)")
boto3 = pytest.importorskip("boto3", reason="the beam extra (make test installs it)")
pytest.importorskip("moto", reason="the test extra (make test installs it)")

PY = [sys.executable, str(ROOT / "generate_dataset.py")]


def keys(client, prefix: str) -> dict[str, int]:
    found = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/").get("Contents", [])
    return {o["Key"][len(prefix) + 1 :]: o["Size"] for o in found}


def download(client, prefix: str, to: Path) -> Path:
    """The objects under `prefix` as files, with boto3 itself (not our code), to compare with the local run."""
    to.mkdir()
    for name in keys(client, prefix):
        client.download_file(BUCKET, f"{prefix}/{name}", str(to / name))
    return to


def rows(server, n: int) -> list[str]:
    """n real photos (served after `server.delay`), then a 404 and an HTML page."""
    labels = ",".join(sample_lines()[0][2:])
    good = [f"r{i},{server.url}/delay/{Path(l[1]).name},{','.join(l[2:])}" for i, l in enumerate(sample_lines()[:n])]
    return [*good, f"nf,{server.url}/status/404,{labels}", f"html,{server.url}/page.jpg,{labels}"]


def ingest_args(out: str, cache: str) -> list[str]:
    return ["--labels", LABELS, "--out", out, "--cache", cache, "--image-size", "32", "--shard-size", "6"]


@pytest.mark.slow  # Beam pipelines: worker processes start in ~5 s each run
def test_dataset_and_cache_on_s3_killed_resumed_equal_to_local_and_verified(s3, server, tmp_path, capsys):
    endpoint, client = s3
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(rows(server, 30)) + "\n")
    beam = ["--engine", "beam", "--workers", "2", "--", f"--s3_endpoint_url={endpoint}"]
    out, cache = f"s3://{BUCKET}/ds", f"s3://{BUCKET}/cache"
    args = [*PY, str(lst), *ingest_args(out, cache), *beam]

    # killed with SIGKILL (driver and workers) once a first shard is on the store: no dataset.json there
    server.delay = 0.1
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + TIMEOUT
    while time.time() < deadline and not any(k.endswith(".tfrecord") for k in keys(client, "ds")):
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert any(k.endswith(".tfrecord") for k in keys(client, "ds")), "a first shard was written before the kill"
    assert dataset_json.MANIFEST not in keys(client, "ds"), "a killed pipeline leaves no dataset that looks complete"

    server.delay = 0.0
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT)
    assert rerun.returncode == 1, rerun.stderr  # the 404 and the HTML page: exit 1, as the local engine
    assert "resuming" in rerun.stdout and "Traceback" not in rerun.stderr
    written = keys(client, "ds")
    assert not any(k.startswith(".partial/") for k in written), "the run's bookkeeping is gone once complete"
    assert {dataset_json.MANIFEST, records.FAILURES, records.INDEX} <= set(written)

    # the same records as the local engine writes from the same list, byte for byte
    hits = sum(n for p, n in server.hits.items() if p.startswith("/delay/"))
    local = tmp_path / "local"
    assert generate_dataset_main([str(lst), *ingest_args(str(local), str(tmp_path / "cache"))]) == 1
    a, b = comparable(local), comparable(download(client, "ds", tmp_path / "from-s3"))
    assert a["shards"] == b["shards"] and a["failures"] == b["failures"] and a["index"] == b["index"]
    assert a["manifest"] == b["manifest"]
    local_hits = sum(n for p, n in server.hits.items() if p.startswith("/delay/")) - hits
    assert local_hits == 30, "the local run downloaded every photo once (its own cache was empty)"

    # a new dataset from the same list and the same cache on S3: no photo is downloaded again
    capsys.readouterr()
    assert generate_dataset_main([str(lst), *ingest_args(f"s3://{BUCKET}/ds2", cache), *beam]) == 1
    assert sum(n for p, n in server.hits.items() if p.startswith("/delay/")) == hits + local_hits
    assert comparable(download(client, "ds2", tmp_path / "from-s3-2"))["shards"] == a["shards"]

    # --verify reads it from the store; the same command again finds it done
    assert generate_dataset_main(["--verify", out, "--", f"--s3_endpoint_url={endpoint}"]) == 0
    assert f"{out}: OK — 30 records" in capsys.readouterr().out  # named as given, not as the local copy
    assert generate_dataset_main([str(lst), *ingest_args(out, cache), *beam]) == 1
    assert "already holds the records of this exact command" in capsys.readouterr().out
    assert json.loads(client.get_object(Bucket=BUCKET, Key="ds/dataset.json")["Body"].read())["records"] == 30

    # --append reads the manifest, index and failures back from the store and adds a part
    more = tmp_path / "more.txt"
    more.write_text("\n".join([*rows(server, 33)[30:33], rows(server, 1)[0]]) + "\n")  # 3 new ids, 1 known
    assert generate_dataset_main([str(more), *ingest_args(out, cache), "--append", *beam]) == 1
    manifest = json.loads(client.get_object(Bucket=BUCKET, Key="ds/dataset.json")["Body"].read())
    assert manifest["records"] == 33 and len(manifest["parts"]) == 2 and manifest["failures"] == 3
    assert "duplicate id" in client.get_object(Bucket=BUCKET, Key="ds/failures.csv")["Body"].read().decode()


def test_remote_faults_are_one_line(s3, tmp_path, capsys):
    endpoint, client = s3
    lst = tmp_path / "l.txt"
    photo = ROOT / "data" / "sample" / sample_lines()[0][1]
    lst.write_text(f"a,{photo},{','.join(sample_lines()[0][2:])}\n")
    beam = ["--engine", "beam", "--", f"--s3_endpoint_url={endpoint}"]
    # a bucket that does not exist: the first write says so, nothing else is printed
    assert generate_dataset_main([str(lst), "--labels", LABELS, "--out", "s3://no-such-bucket/ds", *beam]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "s3://no-such-bucket/ds/.partial/plan.json" in err[0] and "NoSuchBucket" in err[0]
    # no dataset there: --verify names the object
    assert generate_dataset_main(["--verify", f"s3://{BUCKET}/nothing", "--", f"--s3_endpoint_url={endpoint}"]) == 2
    assert f"s3://{BUCKET}/nothing/dataset.json: no dataset manifest" in capsys.readouterr().err
    # an endpoint that never answers: the first look has a deadline (Beam's own retries last minutes)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # accepts connections, never replies
        storage.configure([f"--s3_endpoint_url=http://127.0.0.1:{silent.getsockname()[1]}"])
        with pytest.raises(IngestError, match=r"--out s3://fashion-test/x: no answer within 2 s"):
            storage.check(f"s3://{BUCKET}/x", "--out", deadline_s=2)
    storage.configure([f"--s3_endpoint_url={endpoint}"])
    # an empty object (an empty shard: every image failed), which Beam's own S3 writer cannot make
    empty = storage.RemotePath(f"s3://{BUCKET}/e/empty.tfrecord")
    empty.write_bytes(b"")
    assert empty.is_file() and empty.stat().st_size == 0 and keys(client, "e") == {"empty.tfrecord": 0}

"""train.py on several machines: real processes on 127.0.0.1, Keras' JAX backend, keras.distribution.

Each check starts real `train.py` (or a script) processes that meet over jax.distributed (gloo on CPU).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, SAMPLE, TINY_TRAIN
from fashion.core import cluster, quiet
from fashion.core.errors import TrainError

jax_missing = pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("jax") is None, reason="the jax extra is not installed"
)


def start(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """A process of its own (its own Keras backend), output to `log`."""
    full = {**os.environ, **(env or {})}
    full.pop("KERAS_BACKEND", None)
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=full, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_for(path: Path, text: str, deadline_s: float, proc: subprocess.Popen) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            pytest.fail(f"{path.name} ended (exit {proc.returncode}) before '{text}':\n{path.read_text()[-3000:]}")
        time.sleep(0.5)
    pytest.fail(f"no '{text}' in {path.name} within {deadline_s} s:\n{path.read_text()[-3000:]}")


# ------------------------------------------------------------------ where the processes come from (fast)


def test_workers_option_and_the_standard_environments(monkeypatch):
    for var in ("TF_CONFIG", cluster.ENV_ADDRESSES, cluster.ENV_COUNT, cluster.ENV_INDEX):
        monkeypatch.delenv(var, raising=False)
    assert cluster.resolve(None, None) is None
    c = cluster.resolve("10.0.0.1:1234,10.0.0.2:1234", 1)
    assert (c.addresses, c.index, c.size) == (("10.0.0.1:1234", "10.0.0.2:1234"), 1, 2)
    monkeypatch.setenv(cluster.ENV_ADDRESSES, "h0:1,h1:1,h2:1")
    monkeypatch.setenv(cluster.ENV_COUNT, "3")
    monkeypatch.setenv(cluster.ENV_INDEX, "2")
    assert cluster.resolve(None, None).index == 2
    monkeypatch.delenv(cluster.ENV_ADDRESSES)
    tf_config = {"cluster": {"chief": ["c:1"], "worker": ["w0:1", "w1:1"]}, "task": {"type": "worker", "index": 1}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    c = cluster.resolve(None, None)
    assert (c.addresses, c.index, c.source) == (("c:1", "w0:1", "w1:1"), 2, "TF_CONFIG")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["w0:1"]}, "task": {"index": 0}}))
    assert cluster.resolve(None, None) is None  # one task: one machine


@pytest.mark.parametrize(
    "workers, index, says",
    [
        ("h0:1,h1:1", None, "--worker-index"),
        ("h0:1,h1:1", 2, "not in 0..1"),
        ("h0:1", 0, "at least two"),
        ("h0,h1:1", 0, "'h0' is not HOST:PORT"),
        (None, 1, "--worker-index needs --workers"),
    ],
)
def test_bad_cluster_options_are_one_line(workers, index, says, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.delenv(cluster.ENV_ADDRESSES, raising=False)
    with pytest.raises(TrainError, match=says):
        cluster.resolve(workers, index)


# XLA's words when two workers of `train.py --workers` ran on one H200 (2026-12-04)
NCCL_SHARED = (
    "INTERNAL: NCCL operation ncclCommInitRankConfig( &comm, num_ranks, nccl_unique_ids, rank.value(), "
    "&comm_config) failed: invalid usage (run with NCCL_DEBUG=WARN for details). Last NCCL warning(error) log "
    "entry (may be unrelated) 'Duplicate GPU detected : rank 0 and rank 1 both on CUDA device 60'."
)


def test_two_workers_on_one_gpu_get_one_line_saying_what_to_change():
    """NCCL takes one process per GPU; this cannot run here (no GPU), so the classifier gets XLA's own words."""
    says = cluster.shared_gpu(RuntimeError(NCCL_SHARED))
    assert says is not None and "share one GPU" in says and "CUDA_VISIBLE_DEVICES" in says
    assert (
        cluster.shared_gpu(RuntimeError("INTERNAL: NCCL operation ncclAllReduce failed: remote process exited")) is None
    )
    quiet_noise = [
        b"=== Source Location Trace: === ",
        b"external/xla+/xla/backends/gpu/collectives/nccl_communicator.cc:286",
    ]
    assert all(quiet.NOISE.match(line) for line in quiet_noise)
    assert not quiet.NOISE.match(b"E1204 15:20:23.096005   13813 gpu_cliques.cc:454] Failed to initialize GPU clique")


def test_several_machines_refuse_the_tensorflow_backend(dataset, tmp_path):
    p = subprocess.run(
        [sys.executable, "train.py", "--data", str(dataset), *TINY_TRAIN, "--backend", "tensorflow"]
        + ["--workers", "127.0.0.1:1,127.0.0.1:2", "--worker-index", "0", "--model-save", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("error:") and "JAX backend" in p.stderr and "20585" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and not any(tmp_path.iterdir())


# ------------------------------------------------------------------ real processes (slow)

# MobileNetV2: what is checked is how the gradients meet, not the trunk (it compiles in half DenseNet121's time).
# Two processes, each with its 1/2 of every batch (train.py's own sharding: every 2nd record, batch 4),
# against one process with batch 8 over the same records, from the same initial weights: equal weights
# after 3 steps of our SGD (momentum, clipnorm small enough to clip); one process with batch 4 must differ.
# (The heads' inputs are the same records per step in another order: the loss is a mean, order-free.)
EQUALITY = r"""
import os, sys
os.environ["KERAS_BACKEND"] = "jax"
import jax, keras, numpy as np
from fashion.core import cluster
from fashion.data import pipeline
from fashion.model import losses, network as model_lib
from fashion.model.tasks.base import head_names
from fashion.config.train import TrainConfig
from fashion.train.optim import make_optimizer

data, labels, out = sys.argv[1], open(sys.argv[2]).read().split(), sys.argv[3]
names = head_names(labels)
split = pipeline.describe_split(data, "train")
shard = None
if len(sys.argv) > 4:
    cluster.start(cluster.resolve(sys.argv[4], int(sys.argv[5])))
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices(), auto_shard_dataset=False))
    shard = (2, int(sys.argv[5]), 3)
def train(batch):
    ds = pipeline.make_dataset(split.files, len(labels), image_size=32, batch_size=batch, training=False,
                               output_names=names, shard=shard).take(3)
    keras.utils.set_random_seed(0)
    m = model_lib.build_model(labels, "mobilenetv2", 32, None)
    model_lib.set_trainable(m, "heads", "auto", from_scratch=True)
    m.compile(optimizer=make_optimizer(TrainConfig(optimizer="sgd"), 0.05),
              loss={n: losses.HeadLoss("bce") for n in names},
              loss_weights={n: 1.0 + k for k, n in enumerate(names)}, jit_compile=True)
    m.fit(ds, epochs=1, verbose=0, shuffle=False)
    return [np.asarray(v) for v in m.trainable_weights]

if shard:  # worker i: batch 4, its half
    weights = {"two": train(4)}
else:  # one process: batch 8 (the same records per step), and batch 4 (must differ)
    weights = {"one8": train(8), "one4": train(4)}
if cluster.is_writer():
    np.savez(out, **{f"{k}_{i}": w for k, ws in weights.items() for i, w in enumerate(ws)})
cluster.leave(0)
"""


@jax_missing
@pytest.mark.slow
def test_two_processes_train_like_one_with_the_summed_batch(dataset, tmp_path):
    labels = str(SAMPLE / "labels.txt")
    workers = cluster.local_workers(2)
    procs = [
        start(["-c", EQUALITY, str(dataset), labels, str(tmp_path / "two.npz"), workers, str(i)], tmp_path / f"w{i}")
        for i in range(2)
    ]
    for i, p in enumerate(procs):
        assert p.wait(timeout=600) == 0, (tmp_path / f"w{i}").read_text()[-3000:]
    p = start(["-c", EQUALITY, str(dataset), labels, str(tmp_path / "one.npz")], tmp_path / "one")
    assert p.wait(timeout=600) == 0, (tmp_path / "one").read_text()[-3000:]
    two, one = np.load(tmp_path / "two.npz"), np.load(tmp_path / "one.npz")
    n = len(two.files)
    same = max(float(np.abs(two[f"two_{i}"] - one[f"one8_{i}"]).max()) for i in range(n))
    other = max(float(np.abs(two[f"two_{i}"] - one[f"one4_{i}"]).max()) for i in range(n))
    assert same < 1e-5, same
    assert other > 1e-3, f"batch 4 on one process must differ, or the check cannot fail: {other}"


def train_args(dataset, tmp_path, *extra: str) -> list[str]:
    """train.py's tiny run, written into tmp_path; the cluster options (or environment) come on top.
    MobileNetV2: what is checked here is the processes, not the trunk, and it compiles in half DenseNet-121's
    time."""
    return [
        "train.py",
        "--data",
        str(dataset),
        *TINY_TRAIN,
        "--backbone",
        "mobilenetv2",
        "--batch-size",
        "10",  # 20 over the two processes: 160 train and 40 val photos in whole batches, one compiled shape
        "--model-save",
        str(tmp_path / "models"),
        "--log",
        str(tmp_path / "logs"),
        "--run",
        "r",
        *extra,
    ]


@jax_missing
@pytest.mark.slow
def test_a_killed_worker_stops_the_other_and_resume_finishes_with_one_bundle(dataset, tmp_path):
    """Worker 1 killed mid-run: worker 0 stops within 120 s with one line naming it, its checkpoint kept;
    both rerun with --resume and finish; only worker 0 wrote anything."""
    workers = cluster.local_workers(2)
    tmp = {"TMPDIR": str(tmp_path / "tmp")}  # where worker 1 keeps its private checkpoints
    (tmp_path / "tmp").mkdir()
    logs = [tmp_path / "w0", tmp_path / "w1"]
    cluster_options = [["--workers", workers, "--worker-index", str(i)] for i in range(2)]
    # 3 epochs: after the kill at epoch 1 the survivor must still be training (an epoch here takes ~2 s)
    procs = [start(train_args(dataset, tmp_path, "--epochs", "3", *cluster_options[i]), logs[i], tmp) for i in range(2)]
    try:
        wait_for(logs[1], "epoch 1:", 400, procs[1])
        procs[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        code = procs[0].wait(timeout=120)
        assert time.monotonic() - killed < 120
    finally:
        for p in procs:
            p.kill()
    out = logs[0].read_text()
    assert code == 4, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"worker 1 (127.0.0.1:{workers.split(':')[-1]})" in errors[0], out[-3000:]
    assert "--resume" in errors[0] and "Traceback" not in out and "Check failure" not in out
    assert "[Gloo]" not in out, "gloo's hello on stdout is noise"
    run = tmp_path / "models" / "r"
    assert (run / "last.keras").is_file() and not (run / "model.keras").exists()
    left_by_the_killed = set((tmp_path / "tmp").glob("fashion-worker*"))

    # the rerun as a cluster manager starts it, no --workers: worker 0 from Keras' KERAS_DISTRIBUTION_*
    # variables, worker 1 from a TF_CONFIG (chief = the coordinator)
    first, second = workers.split(",")
    envs = [
        {cluster.ENV_ADDRESSES: workers, cluster.ENV_COUNT: "2", cluster.ENV_INDEX: "0"},
        {
            "TF_CONFIG": json.dumps(
                {"cluster": {"chief": [first], "worker": [second]}, "task": {"type": "worker", "index": 0}}
            )
        },
    ]
    again = train_args(dataset, tmp_path, "--epochs", "3", "--resume")
    procs = [start(again, logs[i], {**tmp, **envs[i]}) for i in range(2)]
    for i, p in enumerate(procs):
        assert p.wait(timeout=600) == 0, logs[i].read_text()[-3000:]
    assert "resuming r: stage 1/1, after epoch" in logs[1].read_text()
    assert not any("[Gloo]" in log.read_text() for log in logs)
    assert "writes the bundle" in logs[1].read_text() and "bundle:" in logs[0].read_text()
    meta = json.loads((run / "meta.json").read_text())
    assert meta["config"]["backend"] == "jax" and meta["config"]["worker_index"] is None  # from the environment
    assert meta["cluster"] == {"workers": workers.split(","), "from": cluster.ENV_ADDRESSES}
    assert sorted(p.name for p in run.iterdir()) == [
        "best.keras",
        "last.keras",
        "meta.json",
        "model.keras",
        "state.json",
    ]
    assert json.loads((run / "state.json").read_text())["epoch"] == 3
    assert set((tmp_path / "tmp").glob("fashion-worker*")) == left_by_the_killed, "worker 1 left its checkpoints"
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["r"]
    # the bundle JAX wrote is an ordinary one: detect.py and evaluate.py read it on the TensorFlow backend
    import keras

    assert keras.backend.backend() == "tensorflow"
    model = keras.saving.load_model(run / "model.keras", compile=False)
    assert len(model.outputs) == len(meta["labels"])

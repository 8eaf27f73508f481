"""Training on several machines: one `train.py` process per machine, on Keras' JAX backend and its own
distribution API (`keras.distribution.initialize` + `DataParallel`), as Keras' maintainers recommend
for Keras 3 (its TensorFlow trainer cannot fit under MultiWorkerMirroredStrategy: keras-team/keras#20585).

Where the processes come from: `--workers HOST:PORT,... --worker-index I` (the first address is the
coordinator), else Keras' `KERAS_DISTRIBUTION_JOB_ADDRESSES` / `_NUM_PROCESSES` / `_PROCESS_ID`, else
`TF_CONFIG` (chief first, then workers), so a cluster manager can start the command unchanged.
Resolving them needs neither Keras nor JAX: the CLI picks the backend from it before Keras loads.

What the rest of the code asks here: `is_writer()` (only worker 0 writes logs, checkpoints and the
bundle), `predict` (each process scores the whole validation set on its own copy of the weights:
Keras' predict cannot gather outputs that span processes), and `lost_worker` (a collective that failed
because another process died, as one line naming it).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

from fashion.core import quiet
from fashion.core.errors import TrainError

ENV_ADDRESSES, ENV_COUNT, ENV_INDEX = (
    "KERAS_DISTRIBUTION_JOB_ADDRESSES",
    "KERAS_DISTRIBUTION_NUM_PROCESSES",
    "KERAS_DISTRIBUTION_PROCESS_ID",
)


@dataclass(frozen=True)
class Cluster:
    """The processes of one training run: every process's HOST:PORT (the first coordinates) and ours."""

    addresses: tuple[str, ...]
    index: int
    source: str  # where it was read from, for messages

    @property
    def size(self) -> int:
        return len(self.addresses)

    @property
    def writer(self) -> bool:
        """Worker 0 writes logs, checkpoints and the bundle; the others compute the same and write nothing."""
        return self.index == 0

    def name(self, i: int) -> str:
        return f"worker {i} ({self.addresses[i]})"


def resolve(workers: str | None, worker_index: int | None) -> Cluster | None:
    """The cluster from the options, else the environment; None for one process."""
    if workers:
        return _checked(workers.split(","), worker_index, "--workers")
    if worker_index is not None:
        raise TrainError("--worker-index needs --workers HOST:PORT,HOST:PORT,... (every process's address)")
    if os.environ.get(ENV_ADDRESSES):
        raw = os.environ.get(ENV_INDEX)
        if raw is None or not raw.isdigit():
            raise TrainError(f"{ENV_ADDRESSES} is set but {ENV_INDEX} is not a number ({raw!r})")
        addresses = os.environ[ENV_ADDRESSES].split(",")
        count = os.environ.get(ENV_COUNT)
        if count is not None and count != str(len(addresses)):
            raise TrainError(f"{ENV_COUNT}={count} but {ENV_ADDRESSES} lists {len(addresses)} addresses")
        return _checked(addresses, int(raw), ENV_ADDRESSES)
    return _from_tf_config(os.environ.get("TF_CONFIG"))


def _from_tf_config(raw: str | None) -> Cluster | None:
    if not raw:
        return None
    try:
        spec = json.loads(raw)
        cluster, task = spec.get("cluster", {}), spec.get("task", {})
        addresses = list(cluster.get("chief", [])) + list(cluster.get("worker", []))
        if len(addresses) < 2:
            return None
        offset = len(cluster.get("chief", [])) if task.get("type", "worker") == "worker" else 0
        index = offset + int(task.get("index", 0))
    except (ValueError, AttributeError, TypeError) as e:
        raise TrainError(f"TF_CONFIG is not valid (JSON with cluster.worker and task.index): {e}") from None
    return _checked(addresses, index, "TF_CONFIG")


def _checked(addresses: list[str], index: int | None, source: str) -> Cluster:
    addresses = [a.strip() for a in addresses if a.strip()]
    for a in addresses:
        host, _, port = a.rpartition(":")
        if not host or not port.isdigit():
            raise TrainError(f"{source}: '{a}' is not HOST:PORT")
    if len(addresses) < 2:
        raise TrainError(f"{source}: several machines need at least two HOST:PORT addresses, got {addresses}")
    if index is None:
        raise TrainError(f"{source}: say which process this is with --worker-index (0..{len(addresses) - 1})")
    if not 0 <= index < len(addresses):
        raise TrainError(f"{source}: worker index {index} is not in 0..{len(addresses) - 1}")
    return Cluster(tuple(addresses), index, source)


def local_workers(n: int) -> str:
    """--workers for `n` processes on this machine (127.0.0.1, ports free right now): to try the several-machine
    path on one machine, as the tests and bench/several_machines.py do."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ",".join(f"127.0.0.1:{p}" for p in ports)


# ---------------------------------------------------------------------------------------- at run time

_current: Cluster | None = None


def start(cluster: Cluster) -> None:
    """Join the other processes (jax.distributed waits up to 300 s for all of them), then keep a heartbeat
    of our own so that a worker that dies or hangs is named (`lost_worker`, the watchdog)."""
    global _current
    import jax
    import keras

    quiet.filter_stdout()  # gloo's "[Gloo] Rank 0 is connected to 1 peer ranks" goes to stdout

    # Without this, JAX's coordination service aborts every process (a C++ stack trace, exit 134) the moment
    # one dies; with it the collective that waited fails in Python and we say which worker went. (Worker 0
    # holds the service: when it dies the others still abort; fashion.core.quiet turns that into one line.)
    jax.config.update("jax_enable_recoverability", True)
    try:
        keras.distribution.initialize(",".join(cluster.addresses), cluster.size, cluster.index)
    except Exception as e:  # a coordinator that never answers, a port in use
        raise TrainError(
            f"{cluster.name(cluster.index)} could not join the other {cluster.size - 1} worker(s) "
            f"(coordinator {cluster.addresses[0]}): {str(e).strip().splitlines()[0][:300]}"
        ) from None
    _current = cluster
    threading.Thread(target=_heartbeat, name="fashion-heartbeat", daemon=True).start()


DONE = "done"


def leave(code: int) -> None:
    """The end of a run on several processes: wait until every worker is here (worker 0 writes the bundle
    first), worker 0 last, without JAX's shutdown, whose RPC to a coordinator that already left would abort."""
    if _current is None:
        return
    global _on_lost
    _on_lost = None
    sys.stdout.flush()  # everything this process says is said: from "left" on, only _exit may follow
    sys.stderr.flush()
    quiet.drain_stdout()
    with contextlib.suppress(Exception):
        client = _client()
        client.wait_at_barrier("fashion/end", END_WAIT_S * 1000)
        # The coordination service lives in worker 0: it leaves last, or another worker's error poller sees
        # it gone before that worker's own exit and aborts it (exit 134 after a finished run, seen under load).
        if _current.index == 0:
            for i in range(1, _current.size):
                client.blocking_key_value_get(f"fashion/left/{i}", 10_000)  # they are past the barrier: quick
            time.sleep(LEAVE_GRACE_S)  # from their "left" to their exit there is only an _exit
        else:
            client.key_value_set(f"fashion/left/{_current.index}", DONE)
    os._exit(code)


END_WAIT_S = 1800  # how long the others wait at the end for worker 0 to write the bundle
LEAVE_GRACE_S = 1.0  # at the very end, how long worker 0 gives the others to be gone
BEAT_S = 2.0  # how often each worker stamps the coordinator's key-value store
STALE_S = 60.0  # a worker whose stamp is older is hung: the others stop (a step or a save never takes this long
# without the stamping thread running: JAX and Keras release the GIL while they compute or write)
_on_lost = None  # what the trainer does when the watchdog finds a worker gone (set by watch())


def watch(on_lost) -> None:
    """Call `on_lost(line)` (it must not return: it exits) when another worker stops stamping."""
    global _on_lost
    _on_lost = on_lost


def _cluster() -> Cluster:
    """This process's cluster: set by `start` before anything that asks."""
    assert _current is not None, "cluster.start() first"
    return _current


def _client():
    from jax._src import distributed

    return distributed.global_state.client


def _heartbeat() -> None:
    cur = _cluster()
    client, me = _client(), cur.index
    while True:
        try:
            if _on_lost is not None:
                client.key_value_set(f"fashion/alive/{me}", repr(time.time()), allow_overwrite=True)
                stale = _stale_workers(client)
                if stale:
                    _on_lost(f"{stale} stopped answering for {STALE_S:.0f} s during training")
        except Exception:  # the coordinator is gone: it lives in worker 0
            if _on_lost is not None and me != 0:
                # JAX's client usually aborts this process now, its one line printed by fashion.core.quiet;
                # say it ourselves only if it does not
                time.sleep(3 * BEAT_S)
                _on_lost(f"worker 0 at {cur.addresses[0]} (the coordinator) stopped during training")
        time.sleep(BEAT_S)


def _stale_workers(client, older_than: float = STALE_S) -> str:
    cur, now, gone = _cluster(), time.time(), []
    # One listing of the stamps there are (a worker not stamped yet is absent, not an error to tell apart
    # by its wording); an exception here means the coordinator is gone.
    stamps = {key.rsplit("/", 1)[-1]: raw for key, raw in client.key_value_dir_get("fashion/alive/")}
    for i in range(cur.size):
        raw = stamps.get(str(i))
        if i == cur.index or raw is None:
            continue
        if raw != DONE and now - float(raw) > older_than:
            gone.append(cur.name(i))
    return ", ".join(gone)


def finished() -> None:
    """Training is over here: stop watching, and tell the others this worker's silence from now on is fine."""
    global _on_lost
    _on_lost = None
    if _current is not None:
        with contextlib.suppress(Exception):
            _client().key_value_set(f"fashion/alive/{_current.index}", DONE, allow_overwrite=True)


def is_writer() -> bool:
    """This process writes (one process: always)."""
    return _current is None or _current.writer


def predict(model, ds):
    """`model.predict`, or on several processes each process's own forward pass over all of `ds`."""
    import keras

    if _current is None:
        return model.predict(ds, verbose=0)
    import jax

    def local(v):  # every variable is replicated: our own copy is a whole one
        a = v.value
        return a if a.is_fully_addressable else a.addressable_data(0)

    with local_only():
        tv, ntv = [local(v) for v in model.trainable_variables], [local(v) for v in model.non_trainable_variables]
        step = getattr(model, "_fashion_local_predict", None)  # compiled once per model, not per epoch
        if step is None:
            step = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, x, training=False)[0])
            model._fashion_local_predict = step
        outs = [keras.tree.map_structure(np.asarray, step(tv, ntv, np.asarray(x))) for x, *_ in ds]
    return keras.tree.map_structure(lambda *parts: np.concatenate(parts), *outs)


@contextlib.contextmanager
def local_only():
    """No keras.distribution inside: what is built or placed here stays in this process. Saving needs it,
    since Keras' saver builds a throwaway optimizer variable, and placing a variable across processes is a
    collective that every process must join (worker 0 alone saving would wait for ever)."""
    import keras

    dist = keras.distribution.distribution()
    if dist is None:
        yield
        return
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(dist)


# Collectives run over gloo (CPU) or NCCL; when a peer dies they fail with these, in the process that waited.
# Matched as text on purpose: XLA hands them up as one runtime error type whatever the cause, so the words
# are all there is (the heartbeat below then names the worker that stopped).
_PEER_LOST = ("Connection closed by peer", "Gloo", "connection reset", "Socket closed", "NCCL", "coordination")


def shared_gpu(e: BaseException) -> str | None:
    """When `e` is NCCL refusing two workers on one GPU (it takes one process per GPU): one line saying what
    to change, else None. Seen on an H200 with two workers on one machine (tests: the error's own words).
    Text on purpose: NCCL's refusal reaches us inside XLA's one runtime error type, nothing else tells it."""
    if "Duplicate GPU detected" not in str(e):
        return None
    return (
        "two workers share one GPU, and NCCL (JAX's GPU collectives) runs one process per GPU: start one "
        "worker per machine (it trains on all of that machine's GPUs), or give each worker its own GPU "
        "with CUDA_VISIBLE_DEVICES"
    )


def lost_worker(e: BaseException) -> str | None:
    """When `e` is a collective that failed because another process stopped: one line naming it (the worker
    whose heartbeat stopped first), else None."""
    if _current is None or not any(k.lower() in str(e).lower() for k in _PEER_LOST):
        return None
    why = re.sub(r"\[[^\]]*\]\s*", "", str(e).strip().splitlines()[0])[:200]  # drop gloo's source positions
    try:
        client, who = _client(), ""
        for _ in range(int(3 * BEAT_S / 0.5)):  # a dead worker's stamp ages past 2 beats within 3
            who = _stale_workers(client, older_than=2 * BEAT_S)
            if who:
                break
            time.sleep(0.5)
    except Exception:  # the coordinator itself is gone (it runs inside worker 0)
        who = _current.name(0) if _current.index != 0 else ""
    return f"{who or 'another worker'} stopped during training ({why})"


def choose_backend(backend: str, cluster: Cluster | None) -> str:
    """The Keras backend this run uses, set in the environment before Keras loads (the CLI calls this first)."""
    import importlib.util

    want = backend if backend != "auto" else ("jax" if cluster else os.environ.get("KERAS_BACKEND", "tensorflow"))
    if cluster and want != "jax":
        raise TrainError(
            f"training on several machines ({cluster.source}) runs on Keras' JAX backend: Keras 3's TensorFlow "
            f"trainer cannot fit on several machines (https://github.com/keras-team/keras/issues/20585); "
            f"drop --backend {want}"
        )
    if want == "jax" and importlib.util.find_spec("jax") is None:
        raise TrainError("the JAX backend needs jax, which is not installed: pip install -e '.[jax]'")
    if "keras" in sys.modules:
        loaded = sys.modules["keras"].backend.backend()
        if loaded != want:
            raise TrainError(
                f"Keras is already loaded with the {loaded} backend in this process; --backend {want} must be "
                f"chosen before: run train.py as its own process"
            )
    os.environ["KERAS_BACKEND"] = want
    return want

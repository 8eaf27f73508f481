"""Where training runs: all GPUs, one CPU, or `--cpu-devices N` logical CPUs (a multi-GPU rehearsal),
through MirroredStrategy when there are several (TensorFlow backend) or keras.distribution's
DataParallel (JAX backend, also across processes: fashion.core.cluster); mixed precision on GPU. What Keras 3
cannot do on several devices is refused here, before anything is written."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import keras

from fashion.config.train import TrainConfig
from fashion.core import cluster as cluster_lib
from fashion.core.errors import TrainError


@dataclass
class JaxPlacement:
    """What the trainer asks of a tf.distribute strategy, on the JAX backend: the replicas this process
    feeds (its batch is --batch-size x that) and a scope (keras.distribution places the variables)."""

    num_replicas_in_sync: int

    def scope(self):
        return contextlib.nullcontext()


def check_devices(cfg: TrainConfig) -> None:
    """Refuse, before anything is written, what cannot run on the devices setup_device will use
    (all GPUs, else --cpu-devices logical CPUs)."""
    if cfg.cpu_devices < 1:
        raise TrainError(f"--cpu-devices must be >= 1, got {cfg.cpu_devices}")
    if keras.backend.backend() == "jax":
        return  # XLA always; accumulation under a sharded jit is the same as on one device
    import tensorflow as tf

    gpus = len(tf.config.list_physical_devices("GPU"))
    n = gpus or cfg.cpu_devices
    if cfg.xla and not gpus and n > 1:
        # XLA compiles the step for one CPU and then reads variables kept on the other logical devices
        # ("Trying to access resource ... located in device CPU:1", a TF XLA known issue); GPUs are fine
        raise TrainError("--xla cannot compile for --cpu-devices (logical CPUs share one XLA device): drop one")
    if cfg.accum_steps > 1 and n > 1:
        # Keras 3 accumulates inside a cond whose branch sums gradients across replicas, which
        # tf.distribute refuses ("merge_call called while defining a new graph"); found on --cpu-devices 2
        raise TrainError(
            f"--accum-steps {cfg.accum_steps} cannot run on {n} devices (Keras 3's gradient "
            f"accumulation does not work under MirroredStrategy): raise --batch-size instead, it is "
            f"per device, so {n} devices already train on {n}x the batch"
        )


def set_precision(cfg: TrainConfig, capabilities: list[float]) -> str:
    """Keras' global dtype policy from --mixed-precision and the GPUs' compute capabilities; returns the
    compute dtype (or "off"). on/auto: bfloat16 where every GPU has it (8.0+: A100, H100; its range needs
    no loss scaling, and on an H200 it trained 1.10x faster than float16 at batch 64), else float16
    (Keras then scales the loss), which is also what `on` means on a CPU."""
    choice = cfg.mixed_precision
    if choice == "off" or (choice == "auto" and not capabilities):
        keras.mixed_precision.set_global_policy("float32")
        return "off"
    if choice in ("on", "auto"):
        choice = "bfloat16" if capabilities and min(capabilities) >= 8.0 else "float16"
    keras.mixed_precision.set_global_policy(f"mixed_{choice}")
    return choice


def _capability(device) -> float:
    """A JAX GPU's CUDA compute capability ("9.0" -> 9.0); 0 where there is none to read (e.g. ROCm's "gfx90a")."""
    try:
        return float(getattr(device, "compute_capability", 0) or 0)
    except ValueError:
        return 0.0


def setup_device(cfg: TrainConfig, cluster: cluster_lib.Cluster | None = None):
    """Strategy (mirrored on >1 GPU, or on --cpu-devices logical CPUs) and mixed precision on GPU."""
    if keras.backend.backend() == "jax":
        return _setup_jax(cfg, cluster)
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for g in gpus:
        with contextlib.suppress(RuntimeError):
            tf.config.experimental.set_memory_growth(g, True)
    if cfg.cpu_devices > 1 and not gpus:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cfg.cpu_devices)
    if len(gpus) > 1:
        strategy = tf.distribute.MirroredStrategy()
    elif cfg.cpu_devices > 1 and not gpus:
        strategy = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
    else:
        strategy = tf.distribute.get_strategy()
    caps = [tf.config.experimental.get_device_details(g).get("compute_capability", (0, 0)) for g in gpus]
    mp = set_precision(cfg, [major + minor / 10 for major, minor in caps])
    where = f"{len(gpus)} GPU(s)" if gpus else "CPU"
    print(
        f"device: {where}; replicas: {strategy.num_replicas_in_sync}; mixed precision: {mp}"
        f"{'; XLA on' if cfg.xla else ''}"
    )
    return strategy


def _setup_jax(cfg: TrainConfig, cluster: cluster_lib.Cluster | None) -> JaxPlacement:
    """Every device of every process in one DataParallel mesh (batch split, gradients averaged by XLA)."""
    import jax
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")  # tf.data only feeds: the GPUs are JAX's
    if cfg.cpu_devices > 1:
        jax.config.update("jax_num_cpu_devices", cfg.cpu_devices)  # before JAX starts its backend
    if cluster is not None:
        cluster_lib.start(cluster)
    devices, local = jax.devices(), jax.local_devices()
    if len(devices) > 1:
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False))
    gpus = [d for d in local if d.platform == "gpu"]
    mp = set_precision(cfg, [_capability(d) for d in gpus])
    where = f"{len(gpus)} GPU(s)" if gpus else "CPU"
    machines = f"; {cluster.name(cluster.index)} of {cluster.size}" if cluster else ""
    print(f"device: {where} (JAX backend){machines}; replicas: {len(devices)}; mixed precision: {mp}")
    return JaxPlacement(len(local))

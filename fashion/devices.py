"""Where training runs: all GPUs, one CPU, or `--cpu-devices N` logical CPUs (a multi-GPU rehearsal),
through MirroredStrategy when there are several; mixed precision on GPU. What Keras 3 cannot do on
several devices or machines is refused here, before anything is written."""

from __future__ import annotations

import contextlib
import json
import os

import keras

from .config import TrainConfig
from .errors import TrainError


def check_cluster() -> None:
    """Refuse a multi-machine TF_CONFIG up front: Keras 3's TensorFlow trainer cannot fit under
    MultiWorkerMirroredStrategy (tried with keras 3.15 / TF 2.21 on two local workers: `fit` fails
    reducing the input batch, then reducing its logs; keras-team/keras#20585)."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return
    try:
        cluster = json.loads(raw).get("cluster", {})
    except (ValueError, AttributeError) as e:
        raise TrainError(f"TF_CONFIG is not valid JSON: {e}") from None
    tasks = sum(len(v) for k, v in cluster.items() if k in ("chief", "worker"))
    if tasks > 1:
        raise TrainError(
            f"TF_CONFIG describes {tasks} machines, but training across machines does not work with Keras 3's "
            f"TensorFlow trainer (model.fit under MultiWorkerMirroredStrategy fails: "
            f"https://github.com/keras-team/keras/issues/20585). Train on one machine, which uses all its GPUs "
            f"(MirroredStrategy), and unset TF_CONFIG."
        )


def check_devices(cfg: TrainConfig) -> None:
    """Refuse, before anything is written, what cannot run on the devices setup_device will use
    (all GPUs, else --cpu-devices logical CPUs)."""
    import tensorflow as tf

    if cfg.cpu_devices < 1:
        raise TrainError(f"--cpu-devices must be >= 1, got {cfg.cpu_devices}")
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


def setup_device(cfg: TrainConfig):
    """Strategy (mirrored on >1 GPU, or on --cpu-devices logical CPUs) and mixed precision on GPU."""
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
    mp = cfg.mixed_precision == "on" or (cfg.mixed_precision == "auto" and gpus)
    keras.mixed_precision.set_global_policy("mixed_float16" if mp else "float32")
    where = f"{len(gpus)} GPU(s)" if gpus else "CPU"
    print(
        f"device: {where}; replicas: {strategy.num_replicas_in_sync}; mixed precision: {'on' if mp else 'off'}"
        f"{'; XLA on' if cfg.xla else ''}"
    )
    return strategy

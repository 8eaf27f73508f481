"""Where a `train.py` run stands: its stages, what it planned and loaded (TrainState), and the optimiser's
step count a Ctrl-C's checkpoint records."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fashion.config.train import TrainConfig
from fashion.data import dataset_json, pipeline
from fashion.data.dataset_json import DatasetManifest
from fashion.model.tasks.base import Task, Weights
from fashion.train.callbacks import Progress


@dataclass
class Stage:
    layers: str
    epochs: int
    lr: float


def parse_stages(cfg: TrainConfig) -> list[Stage]:
    """`heads:5,all:20:1e-4` -> stages; without --stages, one stage of --layers for --epochs."""
    return [Stage(*spec) for spec in cfg.stage_specs()]


def manifest_hash(folder: str | Path) -> str:
    return hashlib.sha256((Path(folder) / dataset_json.MANIFEST).read_bytes()).hexdigest()[:16]


@dataclass
class TrainState:
    """One run: what `_plan` decides before anything is written, what `_load_data` adds once the devices
    are set up, and where the run stands."""

    task: Task  # labels, heads, classes, top-k
    manifest: DatasetManifest
    train: pipeline.Split
    val: pipeline.Split
    stages: list[Stage]
    weights: Weights
    start: Progress  # where training starts: state.json on --resume
    pretrained: tuple[str | None, str | None] = (None, None)  # (Keras notop file, bundle) for a new model
    strategy: Any = None
    train_ds: Any = None
    val_ds: Any = None
    y_val: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # set by _load_data
    batch: int = 0  # this process's batch (every replica's)
    steps: int = 0  # optimizer steps per epoch
    best_score: float = float("-inf")  # the task's monitored validation score, best so far
    stage_index: int = 0  # the stage model.fit is in, and the epoch that stage began at (for Ctrl-C)
    stage_start: int = 0


def steps_done(model) -> int | None:
    """The optimiser's step count, or None where the model holds no state to save. JAX backend: fit takes
    the variables' values into its step function (donated: JAX deletes them) and puts new ones back after
    each step; a Ctrl-C inside a step (the first one while XLA compiles, or any after the arrays went in)
    leaves the model with none, or with deleted arrays. Every variable the checkpoint writes is looked at
    (BatchNorm's moving statistics too: fit donates them with the weights)."""
    if getattr(model, "optimizer", None) is None:  # before the first compile
        return None
    for v in [*model.variables, *model.optimizer.variables]:
        value = getattr(v, "_value", 0)
        if value is None or getattr(value, "is_deleted", lambda: False)():  # is_deleted: jax.Array's
            return None
    return int(np.asarray(model.optimizer.iterations))

"""One config object per job: defaults -> `--config FILE.yaml` -> command-line flags."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_LIST = "data/train+val.txt"
DEFAULT_RECORDS = "data/records"
DEFAULT_CACHE = "data/cache"


def default_workers() -> int:
    # Downloads are I/O bound: several per core keeps the decoder busy even at
    # 50-100 ms latency, while the pool stays small enough for a laptop.
    return min(32, 8 * (os.cpu_count() or 1))


@dataclass
class IngestConfig:
    """Everything `generate_dataset.py` needs; field names match the CLI flags."""

    list: str = DEFAULT_LIST
    out: str = DEFAULT_RECORDS
    labels: str | None = None
    append: bool = False
    strict: bool = False
    overwrite: bool = False
    # fetching
    workers: int = field(default_factory=default_workers)
    cache: str | None = DEFAULT_CACHE
    timeout: float = 10.0
    connect_timeout: float = 5.0
    retries: int = 3
    max_bytes: int = 20 * 1024 * 1024
    min_bytes: int = 5 * 1024
    # images
    image_size: int = 256
    resize: str = "crop"
    quality: int = 95
    min_side: int = 32
    max_pixels: int = 64_000_000
    # split and shards
    val_fraction: float = 0.2
    val_count: int | None = None
    seed: int = 0
    shard_size: int = 1024
    # label sources (single-label: one-hot labels, task "multiclass")
    from_folders: str | None = None
    label_regex: str | None = None
    from_lists: str | None = None
    from_urls: str | None = None
    max_per_class: int | None = None
    apply_review: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config; keys may use `-` or `_`. Unknown keys are an error."""
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of option: value, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def resolve(cls: type, yaml_values: dict[str, Any], cli_values: dict[str, Any], source: str = "config") -> Any:
    """Build `cls` from defaults, then YAML values, then flags given on the command line."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(yaml_values) - names)
    if unknown:
        raise ValueError(f"{source}: unknown option(s) {', '.join(unknown)}")
    merged = {**yaml_values, **{k: v for k, v in cli_values.items() if k in names}}
    return cls(**merged)


def add_option(group, cls: type, flag: str, help: str, **kwargs: Any) -> None:
    """Add a flag whose default comes from `cls` and is stated in the help text.

    The argparse default is SUPPRESS so `resolve` can tell flags given on the
    command line from defaults (a YAML config sits between the two).
    """
    import argparse

    name = flag.lstrip("-").replace("-", "_")
    default = {f.name: f for f in dataclasses.fields(cls)}[name]
    value = default.default if default.default is not dataclasses.MISSING else default.default_factory()
    shown = "none" if value is None else value
    if kwargs.get("action") in ("store_true", "store_false"):
        group.add_argument(flag, help=help, default=argparse.SUPPRESS, **kwargs)
    else:
        group.add_argument(flag, help=f"{help} (default: {shown})", default=argparse.SUPPRESS, **kwargs)


@dataclass
class TrainConfig:
    """Everything `train.py` needs; field names match the CLI flags."""

    data: str = DEFAULT_RECORDS
    run: str | None = None
    # model
    task: str = "auto"
    backbone: str = "densenet121"
    alpha: float = 1.0
    weights: str = "imagenet"
    image_size: int = 224
    head_dropout: float = 0.0
    # what trains, and how long
    epochs: int = 4
    layers: str = "all"
    stages: str | None = None
    bn: str = "auto"
    # optimisation
    optimizer: str = "adam"
    lr: float = 2e-3
    lr_mult: float = 1.0
    schedule: str = "onecycle"
    warmup: float = 0.1
    weight_decay: float = 0.0
    batch_size: int = 32
    accum_steps: int = 1
    # imbalance
    head_weights: str = "none"
    pos_weight: str = "none"
    loss: str = "bce"
    beta: float = 0.999
    gamma: float = 2.0
    label_smoothing: float = 0.0
    class_weights: str = "none"
    # augmentation
    jitter: float = 0.0
    rotate: float = 0.0
    # runs
    seed: int = 0
    resume: bool = False
    lr_find: bool = False
    mixed_precision: str = "auto"
    xla: bool = False
    eager: bool = False
    cpu_devices: int = 1
    model_save: str = "model_save"
    log: str = "log"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

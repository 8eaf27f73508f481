"""The plan of a `generate_dataset.py` run: which item goes into which shard, and its fingerprint;
and the writing of one planned shard, which both engines (local, beam) share.

Every shard's content is fixed by the plan (the list, the split and the
options), so a rerun of the same command plans the same shards and finds the
finished ones on disk; the fingerprint names that plan. A shard is finished
when its file and its state file (`OUT/.partial/NAME.json`: records, sha256,
failures, index rows) agree on its size.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fashion.config.ingest import IngestConfig
from fashion.core import fileio
from fashion.core.storage import Location
from fashion.data import records
from fashion.data.sources import Failure, Item
from fashion.ingest import splits
from fashion.ingest.workers import Result


@dataclass
class ShardPlan:
    split: str
    index: int
    total: int
    part: str
    items: list[Item]

    @property
    def name(self) -> str:
        return records.shard_name(self.split, self.index, self.total, self.part)


def _content_options(cfg: IngestConfig) -> dict[str, Any]:
    """Options that change what ends up in the records (a rerun must match them)."""
    keys = (
        "image_size",
        "resize",
        "quality",
        "min_side",
        "max_pixels",
        "min_bytes",
        "max_bytes",
        "val_fraction",
        "val_count",
        "seed",
        "shard_size",
    )
    return {k: getattr(cfg, k) for k in keys}


def fingerprint(cfg: IngestConfig, labels: list[str], items: list[Item]) -> str:
    h = hashlib.sha256(json.dumps([_content_options(cfg), labels], sort_keys=True).encode())
    for it in items:
        given = f"\t{it.split}" if it.split else ""  # unchanged for the list formats (their reruns match)
        h.update(f"{it.id}\t{it.source}\t{''.join(map(str, it.labels))}{given}\n".encode())
    return h.hexdigest()[:16]


def plan_shards(items: list[Item], cfg: IngestConfig, part: str, shuffle: bool = False) -> list[ShardPlan]:
    """Split the items, then cut each split into shards of `shard_size` in list order.

    Items whose split the source fixed (train/val/test folders or lists) keep it; the others are
    split by `split_indices`. `shuffle` mixes each split's order with `--seed` (folder sources come
    sorted by class, and a class-sorted shard would starve the training shuffle buffer).
    """
    free = [i for i, it in enumerate(items) if not it.split]
    width = len(items[0].labels) if items else 0
    y = np.array([items[i].labels for i in free], dtype=int).reshape(len(free), width)
    train_idx, val_idx = splits.split_indices(y, val_fraction=cfg.val_fraction, val_count=cfg.val_count, seed=cfg.seed)
    assigned = {free[i]: "train" for i in train_idx} | {free[i]: "val" for i in val_idx}
    plans: list[ShardPlan] = []
    for split in records.ALL_SPLITS:
        chosen = [it for i, it in enumerate(items) if (it.split or assigned.get(i)) == split]
        if shuffle:
            rng = np.random.default_rng([cfg.seed, records.ALL_SPLITS.index(split)])
            chosen = [chosen[i] for i in rng.permutation(len(chosen))]
        total = max(1, -(-len(chosen) // cfg.shard_size)) if chosen else 0
        for s in range(total):
            plans.append(ShardPlan(split, s, total, part, chosen[s * cfg.shard_size : (s + 1) * cfg.shard_size]))
    return plans


# --------------------------------------------------------------------------- writing one shard


def state_path(partial: Location, plan: ShardPlan) -> Location:
    return partial / f"{plan.name}.json"


def shard_done(out: Location, partial: Location, plan: ShardPlan) -> dict[str, Any] | None:
    """The shard's state when an earlier run (or another worker) finished it, else None."""
    state_file, shard = state_path(partial, plan), out / plan.name
    if not (state_file.is_file() and shard.is_file()):
        return None
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if state.get("bytes") == shard.stat().st_size else None


def write_shard(
    out: Location,
    partial: Location,
    plan: ShardPlan,
    n_labels: int,
    results: Iterator[Result],
    on_result: Callable[[Item, Failure | None], None] = lambda item, failure: None,
    on_writer: Callable[[records.ShardWriter | None], None] = lambda writer: None,
) -> dict[str, Any]:
    """One shard from the next `len(plan.items)` results (temp name + rename), then its state file;
    returns the state. `on_writer` sees the open writer (a disk-full message counts from it)."""
    writer = records.ShardWriter(out, plan.name, n_labels)
    on_writer(writer)
    fails: list[dict[str, Any]] = []
    index: list[list[str]] = []
    try:
        for _ in plan.items:
            item, example, failure = next(results)
            if failure is not None:
                fails.append(asdict(failure))
            elif example is not None:  # (a result holds one or the other)
                writer.write(example, item.labels)
                index.append([item.id, plan.split, plan.name, item.source, "".join(map(str, item.labels))])
            on_result(item, failure)
        result = writer.close()
    except BaseException:
        writer.abort()
        raise
    state = {**asdict(result), "split": plan.split, "failures": fails, "index": index}
    try:
        fileio.atomic_write_json(state_path(partial, plan), state)
    except BaseException:
        (out / plan.name).unlink(missing_ok=True)  # not finished without its state: give its space back
        raise
    on_writer(None)
    return state

"""A full output disk during `generate_dataset.py`: recognise it, and say in one line what the rest needs."""

from __future__ import annotations

import errno
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from fashion.core.storage import Location

_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT from Python, or TensorFlow's ResourceExhaustedError (how its file writers report them)."""
    if isinstance(exc, OSError):
        return exc.errno in _ERRNOS
    tf = sys.modules.get("tensorflow")  # loaded by then if a shard was being written; never imported here
    return tf is not None and isinstance(exc, tf.errors.ResourceExhaustedError)


def size(n: float) -> str:
    return tqdm.format_sizeof(n, "B", 1024)


@dataclass
class Progress:
    """Where the run stood when the disk filled up."""

    shards_done: int
    shards_total: int
    records_left: int  # records of the shards not finished (some may still fail to download)
    bytes_per_record: float  # measured on what this run wrote; 0 when nothing was written yet
    bookkeeping: int  # state files, index.csv, failures.csv, dataset.json still to write


def progress(plans: Sequence[Any], states: list[dict[str, Any]], writer: Any) -> Progress:
    """From the run's shard plans, the states of those finished and the `ShardWriter` last used (or None)."""
    left = sum(len(p.items) for p in plans) - sum(len(s["index"]) + len(s["failures"]) for s in states)
    n_bytes = sum(s["bytes"] for s in states) + (writer.written if writer else 0)
    n_recs = sum(s["records"] for s in states) + (writer.result.records if writer else 0)
    # state files and index.csv repeat each item's id and source; failures.csv and dataset.json are small
    book = sum(2 * (len(it.id) + len(it.source) + len(it.labels)) + 64 for p in plans for it in p.items)
    return Progress(len(states), len(plans), left, n_bytes / n_recs if n_recs else 0.0, book + 65536)


def message(out: Location, p: Progress) -> str:
    """One line: the folder, what is kept, the free space the rest needs and what there is."""
    try:
        free = f"{size(shutil.disk_usage(str(out)).free)} free now"
    except OSError:
        free = "free space unknown"
    if not p.shards_total:
        kept = "nothing written yet"
    else:
        kept = f"{p.shards_done}/{p.shards_total} shard(s) finished and kept"
        kept += ", the half-written one removed" if p.shards_done < p.shards_total else ""
    if p.bytes_per_record:
        need = p.records_left * p.bytes_per_record * 1.05 + p.bookkeeping  # 5 %: records differ in size
        kept += f"; about {size(need)} more is needed"
        kept += f" ({p.records_left} record(s) left x ~{size(p.bytes_per_record)})" if p.records_left else ""
    elif p.records_left:
        kept += f"; {p.records_left} record(s) left to write"
    return f"disk full writing {out} ({free}): {kept}: free space and rerun the same command to finish"

"""One shard of `detect.py --list`'s output while it fills: rows wait in a batch for the model, results
gather in columns, and the shard is written as Parquet (pyarrow) beside its state file.

The state (rows, failures, label counts) is written first and the Parquet file last, each under a
temporary name renamed when whole: a shard whose Parquet file exists is complete.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fashion.core import fileio
from fashion.core.storage import Location, RemotePath
from fashion.data.sources import Failure, Item
from fashion.predict import bundle as prediction
from fashion.predict.detect import CONSTANT, Detector, multilabel_result, single_result
from fashion.predict.score import shard_name

FIXED_COLUMNS = ("id", "input", "line", "labels", "constant_labels", "class", "score")


@dataclass
class Row:
    """One line of the list on its way: the image's pixels, or why there are none."""

    shard: int  # the shard it belongs to (the list's row // --shard-size; retries: after the others)
    item: Item | None
    failure: Failure | None
    pixels: np.ndarray | None = None


@dataclass
class Scoring:
    """What turns a batch of images into rows: the bundle, its thresholds, the output's columns."""

    bundle: prediction.Bundle
    detector: Detector
    columns: list[str]  # the bundle's labels (multilabel) or classes (single-label)
    batch_size: int
    tta: bool

    @property
    def single(self) -> bool:
        return self.detector.single


def state_path(partial: Location, k: int) -> Location:
    return partial / f"{shard_name(k)}.json"


def read_state(partial: Location, k: int) -> dict[str, Any]:
    return json.loads(state_path(partial, k).read_text(encoding="utf-8"))


class ShardBuffer:
    """Shard `k`'s rows: `add` each (in list order), `write` once the last has been added."""

    def __init__(self, k: int, scoring: Scoring):
        self.k, self.s = k, scoring
        self.batch: list[Row] = []
        self.ids: list[str] = []
        self.inputs: list[str] = []
        self.lines: list[int] = []
        self.probs: list[np.ndarray] = []
        self.chosen: list[list[str]] = []
        self.constant: list[list[str]] = []
        self.scores: list[float] = []  # single-label: the chosen class's probability
        self.failures: list[Failure] = []
        self.positives = np.zeros(len(scoring.columns), np.int64)

    def add(self, row: Row) -> None:
        if row.failure is not None:
            self.failures.append(row.failure)
            return
        self.batch.append(row)
        if len(self.batch) >= self.s.batch_size:
            self.flush()

    def flush(self) -> None:
        """The waiting images through the model, as one batch."""
        if not self.batch:
            return
        rows, self.batch = self.batch, []
        images = np.stack([r.pixels for r in rows if r.pixels is not None])  # (a batch holds only decoded images)
        probs = prediction.predict_arrays(self.s.bundle, images, self.s.tta, self.s.batch_size).astype(np.float32)
        for row, p in zip(rows, probs):
            assert row.item is not None
            self.add_scored(row.item, p)

    def add_scored(self, item: Item, p: np.ndarray) -> None:
        """One image's probabilities as a row: the labels chosen as `detect.py --json` chooses them."""
        d = self.s.detector
        self.ids.append(item.id)
        self.inputs.append(item.source)
        self.lines.append(item.line)
        self.probs.append(p)
        if self.s.single:
            r = single_result(p, d.classes, 1, d.cut)
            best = d.classes.index(r["class"])
            self.chosen.append([r["class"]])
            self.scores.append(float(p[best]))
            self.positives[best] += 1
        else:
            r = multilabel_result(p, self.s.bundle.labels, d.thresholds, d.always, d.never, None)
            self.chosen.append(r["labels"])
            self.constant.append([lb for lb in r["labels"] if r["source"][lb] == CONSTANT])
            for lb in r["labels"]:
                self.positives[self.s.columns.index(lb)] += 1

    def table(self) -> Any:
        import pyarrow as pa

        probs = np.stack(self.probs) if self.probs else np.zeros((0, len(self.s.columns)), np.float32)
        cols: dict[str, Any] = {
            "id": pa.array(self.ids, pa.string()),
            "input": pa.array(self.inputs, pa.string()),
            "line": pa.array(self.lines, pa.int64()),
        }
        for j, name in enumerate(self.s.columns):
            cols[name] = pa.array(probs[:, j], pa.float32())
        cols["labels"] = pa.array(self.chosen, pa.list_(pa.string()))
        if self.s.single:
            cols["class"] = pa.array([c[0] for c in self.chosen], pa.string())
            cols["score"] = pa.array(self.scores, pa.float32())
        else:
            cols["constant_labels"] = pa.array(self.constant, pa.list_(pa.string()))
        return pa.table(cols)

    def write(self, out: Location, partial: Location) -> None:
        """The shard's state, then its Parquet file: each under a temporary name, renamed when whole (on an
        object store, one upload is whole or nothing)."""
        import pyarrow.parquet as pq

        self.flush()
        state = {
            "shard": self.k,
            "rows": len(self.ids),
            "failures": [[f.id, f.source, f.reason, f.line] for f in self.failures],
            "positives": self.positives.tolist(),
        }
        fileio.atomic_write_json(state_path(partial, self.k), state)
        target = out / shard_name(self.k)
        if isinstance(target, RemotePath):
            with tempfile.TemporaryDirectory(prefix="fashion-shard-") as tmp:
                local = Path(tmp) / target.name
                pq.write_table(self.table(), local)
                target.upload(local)
            return
        with fileio.atomic_path(target) as tmp_path:
            pq.write_table(self.table(), tmp_path)

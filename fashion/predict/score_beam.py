"""`detect.py --list FILE --out DIR --engine beam`: the same scoring as an Apache Beam pipeline built on
Beam's own RunInference.

The driver (scorer.py) reads the list, checks the output and decides the unfinished shards exactly as the
local engine does; this module hands those shards to Beam:

    OUT/.partial/score-plans.jsonl  one line per unfinished shard: its rows (line, id, input) and the
                                    list's own failures (ReadFromText splits the file over workers)
      -> Reshuffle                  spread the shards over the workers
      -> Prepare                    per shard: fetch and decode on threads (the local engine's `prepare`:
                                    Fetcher, deadlines, caps, reduced-DCT decode); each line keyed by
                                    (shard, its rows, line, id, input), with its pixels or the reason
                                    it has none
      -> RunInference               KeyedModelHandler(BundleHandler): the bundle loaded once per worker,
                                    batches of --batch-size made by Beam; the model sees only the images,
                                    a reason passes through beside them
      -> WriteShard                 rows gathered per shard; a shard whose every row has arrived is written
                                    by the local engine's ShardBuffer (rows in list order, state file, then
                                    the Parquet file under a temporary name or as one upload) and dropped
                                    from memory; its failures leave on the dead-letter output "failures"
                                    (counted by reason in Beam's metrics; failures.csv is the driver's)

One chain, without a Flatten or GroupByKey, on purpose: Beam then runs Prepare to WriteShard fused in one
worker, a shard's rows arrive in the bundle its plan line is in, and each shard is written the moment it is
whole, so a killed pipeline keeps every shard finished so far. (Failures on a side output merged back
before the writer need a Flatten, which Beam's local runner materialises: the shards were then written
only after the last image, and one shard's rows could reach two workers.) A batch the model itself fails
on fails its bundle, which Beam retries, then the run, in one line: that is a broken bundle or machine,
not a bad photo.

Exactly once: a shard is written whole or not at all, and the driver plans only shards without a Parquet
file, so a killed pipeline's rerun redoes whole unfinished shards; Beam retrying a bundle writes the same
bytes again. failures.csv and summary.json are the driver's, from the state files, as locally.

Why not Beam's stock TFModelHandlerNumpy: it loads with tf.keras.models.load_model and imports
tensorflow_hub (neither is how a bundle loads: model.keras with meta.json, checked), it returns the raw
head outputs (13 sigmoid heads, which a list-returning model zips along the wrong axis), and it knows
nothing of the thresholds. BundleHandler loads the bundle as detect.py does and its run_inference returns
one probability row per image (prediction.predict_arrays, the local engine's call).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference

from fashion.config.bundle import DetectConfig
from fashion.core import beamrun, quiet, storage
from fashion.core.storage import Location, RemotePath
from fashion.data.fetching import Fetcher
from fashion.data.ordered import ordered_map
from fashion.data.sources import Failure, Item
from fashion.predict import bundle as prediction
from fashion.predict.detect import Detector
from fashion.predict.parquet_shard import Row, Scoring, ShardBuffer, read_state
from fashion.predict.score import ScoreError, shard_name
from fashion.predict.scorer import Scorer, make_fetcher, prepare

PLANS = "score-plans.jsonl"
Key = tuple[int, int, int, str, str]  # (shard, its rows, line, id, input): what RunInference carries beside each image


def plan_lines(todo: Iterable[Row]) -> Iterator[str]:
    """One JSON line per shard of `todo` (rows in shard order): {"shard": k, "rows": [[line, id, input,
    reason or null], ...]}; a reason is the list's own (a malformed line), decided by the driver."""
    for k, rows in itertools.groupby(todo, key=lambda r: r.shard):
        yield json.dumps({"shard": k, "rows": [_plan_row(r) for r in rows]}, ensure_ascii=False)


def _plan_row(row: Row) -> list[Any]:
    if row.failure is not None:
        return [row.failure.line, row.failure.id, row.failure.source, row.failure.reason]
    assert row.item is not None  # (a row holds one or the other)
    return [row.item.line, row.item.id, row.item.source, None]


class BundleHandler(ModelHandler[np.ndarray | str, PredictionResult, prediction.Bundle]):
    """RunInference's ModelHandler for a bundle: loaded once per worker as detect.py loads it, a batch of
    decoded images in, one probability row per image out (the labels' columns: prediction.predict_arrays).
    An element may be the reason a line has no image instead: it passes through (see run_inference).

    Args:
        path: the bundle folder (model.keras and meta.json), on a filesystem the workers see.
        batch_size: images per batch, as the local engine batches them. Defaults to 32.
        tta: average with the mirrored image. Defaults to False.
    """

    def __init__(self, path: str, batch_size: int = 32, tta: bool = False):
        super().__init__()
        self.path, self.batch_size, self.tta = path, batch_size, tta

    def load_model(self) -> prediction.Bundle:
        return prediction.load_bundle(self.path)

    def run_inference(
        self,
        batch: Sequence[np.ndarray | str],
        model: prediction.Bundle,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        """Images (arrays) get a probability row; a reason (a line that has no image) passes through as the
        example of a result without inference. The pixels are not carried on."""
        images = [x for x in batch if isinstance(x, np.ndarray)]
        probs = iter(
            prediction.predict_arrays(model, np.stack(images), tta=self.tta).astype(np.float32) if images else ()
        )
        return [
            PredictionResult(None, next(probs)) if isinstance(x, np.ndarray) else PredictionResult(x, None)
            for x in batch
        ]

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return {"min_batch_size": self.batch_size, "max_batch_size": self.batch_size}


class Prepare(beam.DoFn):
    """A shard's plan line -> its images keyed by (shard, its rows, line, id, input), fetched and decoded on
    `workers` threads in list order: with its pixels, or the reason it has none."""

    def __init__(self, cfg: DetectConfig, size: int, workers: int):
        self.cfg, self.size, self.workers = cfg, size, workers
        self.fetcher: Fetcher | None = None

    def setup(self) -> None:
        self.fetcher = make_fetcher(self.cfg, self.workers)

    def process(self, line: str) -> Iterator[Any]:
        plan = json.loads(line)
        k, total = plan["shard"], len(plan["rows"])
        rows = (
            Row(k, None, Failure(i, src, reason, n)) if reason else Row(k, Item(n, i, src, ()), None)
            for n, i, src, reason in plan["rows"]
        )
        fetcher, size, most = self.fetcher, self.size, self.cfg.max_pixels
        assert fetcher is not None  # (Beam calls setup first)
        done = ordered_map(
            lambda r: prepare(r, fetcher, size, most), rows, workers=self.workers, window=2 * self.workers
        )
        try:
            for row in done:
                if row.failure is not None:
                    f = row.failure
                    yield (k, total, f.line, f.id, f.source), f.reason
                elif row.item is not None:
                    yield (k, total, row.item.line, row.item.id, row.item.source), row.pixels
        finally:
            done.close()

    def teardown(self) -> None:
        if self.fetcher is not None:
            self.fetcher.close()


class WriteShard(beam.DoFn):
    """RunInference's (key, result) gathered per shard; a shard whose every row has arrived is written by the
    local engine's ShardBuffer (rows in list order), its number yielded and its failures put on the
    "failures" output. A shard still short at the end of a bundle is an error (Beam retries the bundle;
    nothing of that shard was written)."""

    def __init__(self, scoring: Scoring, out: str, partial: str):
        self.scoring, self.out, self.partial = scoring, out, partial
        self.waiting: dict[int, list[tuple[Key, PredictionResult]]] = {}

    def start_bundle(self) -> None:
        self.waiting = {}

    def process(self, element: tuple[Key, PredictionResult]) -> Iterator[Any]:
        (k, total, *_), _ = element
        rows = self.waiting.setdefault(k, [])
        rows.append(element)
        if len(rows) == total:
            del self.waiting[k]
            for failure in self._write(k, rows):
                yield beam.pvalue.TaggedOutput("failures", failure)
            yield k

    def finish_bundle(self) -> None:
        if self.waiting:
            k, rows = next(iter(self.waiting.items()))
            raise RuntimeError(f"{shard_name(k)}: {len(rows)} of its {rows[0][0][1]} rows reached the writer")

    def _write(self, k: int, rows: list[tuple[Key, PredictionResult]]) -> list[list[Any]]:
        shard = ShardBuffer(k, self.scoring)
        for (_, _, n, i, src), result in sorted(rows, key=lambda r: (r[0][2], r[0][3])):
            if result.inference is not None:
                shard.add_scored(Item(n, i, src, ()), np.asarray(result.inference))
            else:
                shard.failures.append(Failure(i, src, str(result.example), n))
        shard.write(storage.location(self.out), storage.location(self.partial))
        return [[f.id, f.source, f.reason, f.line] for f in shard.failures]


def _count_failure(failure: list[Any]) -> None:
    beam.metrics.Metrics.counter("fashion.failures", str(failure[2]).split(":", 1)[0][:40]).inc()


def score(scorer: Scorer, todo: Iterator[Row], shards: range, bar: Any) -> None:
    """The pipeline over the rows `todo` (the shards of `shards` not yet written); `bar` advances as shards
    appear. Raises ScoreError in one line when the pipeline fails (finished shards are kept)."""
    out, partial, cfg = scorer.out, scorer.partial, scorer.cfg
    plans = partial / PLANS
    _write_plans(plans, plan_lines(todo))
    # what WriteShard needs from the bundle travels without the model (each worker's RunInference loads it)
    bundle = dataclasses.replace(scorer.bundle, model=None)
    scoring = dataclasses.replace(scorer.scoring, bundle=bundle, detector=Detector(cfg, bundle))
    handler: KeyedModelHandler[Key, np.ndarray | str, PredictionResult, prediction.Bundle] = KeyedModelHandler(
        BundleHandler(str(scorer.bundle.path), cfg.batch_size, cfg.tta)
    )
    stop = threading.Event()
    watcher = beamrun.watch(_look(scorer, shards, bar), 2.0 if storage.is_remote(out) else 0.5, stop)
    try:
        with (
            quiet.filtered_stderr(),
            beamrun.pipeline(cfg.beam_args, ScoreError, f"finished shards are kept in {out}") as p,
        ):
            written = (
                p
                | "ReadPlans" >> beam.io.ReadFromText(str(plans))
                | "Spread" >> beam.Reshuffle()
                | "Prepare" >> beam.ParDo(Prepare(cfg, scorer.bundle.input_size, scorer.workers))
                | "RunInference" >> RunInference(handler)
                | "WriteShard"
                >> beam.ParDo(WriteShard(scoring, str(out), str(partial))).with_outputs("failures", main="shards")
            )
            _ = written.failures | "CountFailures" >> beam.Map(_count_failure)
    finally:
        stop.set()
        watcher.join(timeout=5)
    plans.unlink(missing_ok=True)


def _write_plans(plans: Location, lines: Iterator[str]) -> None:
    """The plans file, streamed (a long list is never held): a temporary name renamed, or one upload."""
    from fashion.core import fileio

    if isinstance(plans, RemotePath):
        with tempfile.TemporaryDirectory(prefix="fashion-plans-") as tmp:
            local = Path(tmp) / plans.name
            with open(local, "w", encoding="utf-8") as f:
                f.writelines(line + "\n" for line in lines)
            plans.upload(local)
        return
    with fileio.atomic_path(plans) as tmp_path, open(tmp_path, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)


def _look(scorer: Scorer, shards: range, bar: Any) -> Any:
    """For beamrun.watch: the bar advanced by each shard written since the last look (one listing)."""
    left, failed = set(shards) - scorer.finished(shards), [0]

    def look() -> bool:
        try:
            now = scorer.finished(shards) & left
        except OSError:  # a store that does not answer this once: look again next time
            return False
        for k in sorted(now):
            try:
                state = read_state(scorer.partial, k)
            except (OSError, ValueError):
                continue
            left.discard(k)
            failed[0] += len(state["failures"])
            bar.set_postfix(failed=failed[0], refresh=False)
            bar.update(state["rows"] + len(state["failures"]))
        return not left

    return look

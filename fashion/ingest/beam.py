"""`generate_dataset.py --engine beam`: the planned shards written by an Apache Beam pipeline.

A different driver for the same per-image code. The job (ingest.py) reads the list, splits it and
plans the shards exactly as the local engine does; this module hands the unfinished shards to Beam:

    OUT/.partial/beam-plans.jsonl   one line per shard: its name, split and items (ReadFromText splits it)
      -> Reshuffle                  spread the shards over the workers
      -> WriteShard                 per shard: fetch (threads, the run's Fetcher: limits, retries, cache),
                                    decode/resize/encode (imaging), write the shard (temp name + rename)
                                    and its state file: shards.write_shard, as the local engine
      -> failures (side output)     counted by reason in Beam metrics (the rows travel in the state files,
                                    written with their shard, so a retried bundle never counts one twice)

The job then writes failures.csv, index.csv and dataset.json last, as for the local engine, so a
pipeline that dies leaves no folder that looks complete and a rerun redoes only unfinished shards.
Workers need OUT and the cache on a filesystem they all see: a shared mount, or any filesystem Beam
supports (`--out gs://BUCKET/DIR`, `s3://...`: storage.RemotePath, through Beam's FileSystems, which
take the options after `--`, e.g. --s3_endpoint_url, --s3_region_name, --project).

The runner, its options, Ctrl-C and the one error line are core/beamrun.py's (shared with scoring).
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fashion.config.ingest import IngestConfig
from fashion.core import beamrun, storage
from fashion.core.errors import IngestError
from fashion.data import records
from fashion.data.fetching import Fetcher
from fashion.data.sources import Item
from fashion.ingest import workers
from fashion.ingest.shards import ShardPlan, shard_done, write_shard

PLANS = "beam-plans.jsonl"


def plan_line(plan: ShardPlan) -> str:
    return json.dumps({**asdict(plan), "items": [asdict(it) for it in plan.items]}, ensure_ascii=False)


def plan_from_line(line: str) -> ShardPlan:
    d = json.loads(line)
    items = [Item(**{**it, "labels": tuple(it["labels"])}) for it in d.pop("items")]
    return ShardPlan(**d, items=items)


def _dofn(beam: Any) -> type:
    """The DoFn class, made once Beam is imported (this module imports without it)."""

    class _WriteShard(beam.DoFn):
        """One planned shard per element: written (or found finished), its failures on the side output."""

        def __init__(self, cfg: IngestConfig, out: str, partial: str, n_labels: int):
            self.cfg, self.n_labels = cfg, n_labels
            self.out, self.partial = storage.location(out), storage.location(partial)
            self.fetcher: Fetcher | None = None
            self.images = beam.metrics.Metrics.counter("fashion", "images")

        def setup(self) -> None:
            records.write_without_tensorflow()  # the same bytes, ~690 MB less per worker
            self.fetcher = workers.make_fetcher(self.cfg)

        def process(self, line: str):
            plan = plan_from_line(line)
            state = shard_done(self.out, self.partial, plan)
            if state is None:
                assert self.fetcher is not None  # (Beam calls setup first)
                results = workers.in_order(self.cfg, self.fetcher, plan.items)  # decoding in this process
                try:
                    state = write_shard(self.out, self.partial, plan, self.n_labels, results)
                finally:
                    results.close()
                self.images.inc(len(plan.items))
            for failure in state["failures"]:
                yield beam.pvalue.TaggedOutput("failures", failure)
            yield plan.name

        def teardown(self) -> None:
            if self.fetcher is not None:
                self.fetcher.close()

    return _WriteShard


def _count_failure(failure: dict[str, Any]) -> None:
    from apache_beam.metrics import Metrics

    Metrics.counter("fashion.failures", failure["reason"].split(":", 1)[0][:40]).inc()


def write_shards(
    cfg: IngestConfig,
    out: Path | storage.RemotePath,
    partial: Path | storage.RemotePath,
    todo: list[ShardPlan],
    n_labels: int,
    on_shard: Any,
) -> None:
    """Run the pipeline over the unfinished shards `todo`; `on_shard(plan, state)` is called (from a watcher
    thread) as each shard's state file appears, for the progress bar."""
    beam = beamrun.import_beam(IngestError)
    plans_file = partial / PLANS
    plans_file.write_text("".join(plan_line(p) + "\n" for p in todo), encoding="utf-8")
    stop = threading.Event()
    every = 2.0 if storage.is_remote(out) else 0.5  # on an object store each look is a request
    watcher = beamrun.watch(_look(out, partial, list(todo), on_shard), every, stop)
    try:
        with beamrun.pipeline(cfg.beam_args, IngestError, f"finished shards are kept in {out}") as p:
            written = (
                p
                | "ReadPlans" >> beam.io.ReadFromText(str(plans_file))
                | "Spread" >> beam.Reshuffle()
                | "WriteShard"
                >> beam.ParDo(_dofn(beam)(cfg, str(out), str(partial), n_labels)).with_outputs(
                    "failures", main="shards"
                )
            )
            _ = written.failures | "CountFailures" >> beam.Map(_count_failure)
    finally:
        stop.set()
        watcher.join(timeout=5)
    plans_file.unlink(missing_ok=True)


def _look(out: Any, partial: Any, left: list[ShardPlan], on_shard: Any) -> Any:
    """For beamrun.watch: `on_shard(plan, state)` for each shard of `left` finished since the last look;
    True once none is left. One listing of .partial/ per look: only shards whose state file is there are read."""

    def look() -> bool:
        try:
            present = {p.name for p in partial.glob("*.json")}
        except OSError:  # a store that does not answer this once: look again next time
            return False
        for plan in [p for p in left if f"{p.name}.json" in present]:
            state = shard_done(out, partial, plan)
            if state is not None:
                left.remove(plan)
                on_shard(plan, state)
        return not left

    return look

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

With no runner given, the pipeline runs on Beam's FnApiRunner (the DirectRunner's batch engine) with one
worker process per core: it needs no network (the Prism runner downloads a binary at run time; pass
--prism_location for it).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fashion.config.ingest import IngestConfig
from fashion.core import quiet, storage
from fashion.core.errors import IngestError
from fashion.data import records
from fashion.data.fetching import Fetcher
from fashion.data.sources import Item
from fashion.ingest import workers
from fashion.ingest.shards import ShardPlan, shard_done, write_shard

PLANS = "beam-plans.jsonl"
WORKER_OPTIONS = "FASHION_BEAM_OPTIONS"  # the pipeline options, for `local_runner`'s workers
INSTALL = "pip install 'fashion[beam]' (or: pip install 'apache-beam[tfrecord]' google-crc32c)"


def import_beam() -> Any:
    try:
        import apache_beam as beam
    except ImportError as e:
        raise IngestError(f"--engine beam needs Apache Beam, which is not installed ({e}): {INSTALL}") from None
    return beam


def pipeline_args(beam_args: Sequence[str], cores: int | None = None) -> list[str]:
    """Beam's options as given; with no --runner, `local_runner` runs it on every core."""
    args = list(beam_args)
    if not has_runner(args) and not any(a.startswith("--direct_num_workers") for a in args):
        args.append(f"--direct_num_workers={cores or os.cpu_count() or 1}")
    if not any(a.startswith("--default_sdk_harness_log_level") for a in args):
        args.append("--default_sdk_harness_log_level=WARNING")
    return args


def has_runner(args: Sequence[str]) -> bool:
    return any(a == "--runner" or a.startswith("--runner=") for a in args)


def local_runner() -> Any:
    """Beam's FnApiRunner (what the DirectRunner runs a batch pipeline on, without first trying Prism,
    which downloads a binary) with one worker process per core, as its multi_processing mode starts them,
    but through `python -m fashion.ingest.beam`: the same SDK harness with Ctrl-C ignored, so a Ctrl-C
    at the terminal reaches only the driver, which stops the workers and says what was kept. Processes,
    not threads: decoding holds the GIL part of the time."""
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.transforms.environments import SubprocessSDKEnvironment

    command = f"{shlex.quote(sys.executable)} -m fashion.ingest.beam"
    return FnApiRunner(default_environment=SubprocessSDKEnvironment.from_command_string(command))


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
    beam = import_beam()
    from apache_beam.options.pipeline_options import PipelineOptions

    plans_file = partial / PLANS
    plans_file.write_text("".join(plan_line(p) + "\n" for p in todo), encoding="utf-8")
    # Beam's own INFO off the console (the workers' start-up lines are quiet.py's job)
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    # it warns that direct_num_workers > 1 wants --direct_running_mode, which would replace our workers
    logging.getLogger("apache_beam.runners.portability.fn_api_runner.fn_runner").setLevel(logging.ERROR)
    # a failed worker's traceback, relayed as one log line of many: the job's one error line says it
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.CRITICAL)
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(out, partial, todo, on_shard, stop), daemon=True)
    watcher.start()
    old_handler = _mute_on_interrupt()
    args = pipeline_args(cfg.beam_args)
    runner = None if has_runner(args) else local_runner()
    old_env = os.environ.get(WORKER_OPTIONS)
    if runner is not None:  # the local workers read the options (filesystems: endpoints, credentials) from here
        os.environ[WORKER_OPTIONS] = worker_options(args)
    try:
        with beam.Pipeline(runner=runner, options=PipelineOptions(args)) as p:
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
    except IngestError:
        raise
    except Exception as e:  # (a KeyboardInterrupt is not one: it goes up as it is)
        # a worker's full disk (its OSError arrives as text: Python's own strerror): the disk-full line, exit 3
        if "No space left on device" in str(e):
            raise OSError(errno.ENOSPC, "No space left on device") from None
        raise IngestError(
            f"the Beam pipeline failed ({runner_problem(e, args)}); finished shards are kept in {out}"
        ) from None
    finally:
        if runner is not None:
            _restore_env(WORKER_OPTIONS, old_env)
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)
        stop.set()
        watcher.join(timeout=5)
    plans_file.unlink(missing_ok=True)


def worker_options(args: Sequence[str]) -> str:
    """The pipeline options for `local_runner`'s workers: the FnApiRunner starts them without (an empty
    PIPELINE_OPTIONS), and Beam's filesystems in a worker would then miss e.g. --s3_endpoint_url."""
    from apache_beam.options.pipeline_options import PipelineOptions

    return json.dumps(PipelineOptions(list(args)).get_all_options(drop_default=True))


def _with_our_options(given: str | None, ours: str) -> str:
    """The SDK harness' PIPELINE_OPTIONS (JSON, urn-keyed or under "options") with ours added where absent."""
    parsed = json.loads(given) if given else {}
    extra = json.loads(ours)
    if "options" in parsed:
        parsed["options"] = {**extra, **parsed["options"]}
        return json.dumps(parsed)
    present = {re.sub(r"^beam:option:(.*):v1$", r"\1", k) for k in parsed}
    parsed.update({f"beam:option:{k}:v1": v for k, v in extra.items() if k not in present})
    return json.dumps(parsed)


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _mute_on_interrupt() -> Any:
    """Ctrl-C during the pipeline: silence the console first, then interrupt. Beam's teardown logs the
    workers' broken connections and the workers (same process group) die with tracebacks; none of it is
    news, and the job says in one line what was kept. Returns the handler to restore (None off the main
    thread, where signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:
        return None

    def interrupt(signum: int, frame: Any) -> None:
        quiet.mute()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    return previous


def runner_problem(e: Exception, args: Sequence[str] = ()) -> str:
    """The pipeline's error in one line. When the runner named in `args` is one that starts Prism (a binary
    Beam downloads at run time) and no --prism_location is given, it says what to place where: decided
    from the options, not from the wording of Beam's error."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()] or [type(e).__name__]
    # a worker's failure arrives as the text of its traceback (only text crosses the process boundary):
    # the last "SomeError: why" line, in Python's own traceback format, says it
    named = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt): ", ln)]
    text = (named[-1] if named else lines[0])[:300]
    if starts_prism(args):
        return (
            f"{type(e).__name__}: {text}: the {runner_name(args)} runner runs Prism, a binary Beam downloads at run "
            f"time; place Beam's Prism release zip on this machine and add --prism_location=PATH after --, "
            f"or leave out --runner for the local default"
        )
    return f"{type(e).__name__}: {text}"


def runner_name(args: Sequence[str]) -> str:
    """The --runner given in `args` ('' when none)."""
    for i, a in enumerate(args):
        if a.startswith("--runner="):
            return a.split("=", 1)[1]
        if a == "--runner" and i + 1 < len(args):
            return args[i + 1]
    return ""


def starts_prism(args: Sequence[str]) -> bool:
    """Beam (since 2.68) runs a batch pipeline on Prism for these runners, fetching its binary unless
    --prism_location names one; with no --runner we use `local_runner`, which never does."""
    name = runner_name(args).lower().removesuffix("runner")
    return name in ("prism", "direct") and not any(a.startswith("--prism_location") for a in args)


def _watch(out: Any, partial: Any, todo: list[ShardPlan], on_shard: Any, stop: threading.Event) -> None:
    """`on_shard(plan, state)` for each shard of `todo` as it is finished, polling every 0.5 s (2 s on an
    object store, where each look is a request); once more after `stop`, for the shards finished since
    the last look. One listing of .partial/ per look: only shards whose state file is there are read."""
    left, stopped = list(todo), False
    every = 2.0 if storage.is_remote(out) else 0.5
    while left and not stopped:
        stopped = stop.wait(every)
        try:
            present = {p.name for p in partial.glob("*.json")}
        except OSError:  # a store that does not answer this once: look again next time
            continue
        for plan in [p for p in left if f"{p.name}.json" in present]:
            state = shard_done(out, partial, plan)
            if state is not None:
                left.remove(plan)
                on_shard(plan, state)


if __name__ == "__main__":  # a worker of `local_runner`: Beam's SDK harness, with Ctrl-C left to the driver
    import runpy

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if os.environ.get(WORKER_OPTIONS):
        os.environ["PIPELINE_OPTIONS"] = _with_our_options(
            os.environ.get("PIPELINE_OPTIONS"), os.environ[WORKER_OPTIONS]
        )
    runpy.run_module("apache_beam.runners.worker.sdk_worker_main", run_name="__main__", alter_sys=True)

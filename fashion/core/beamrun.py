"""Running an Apache Beam pipeline for a command (`generate_dataset.py --engine beam` writes shards,
`detect.py --list --engine beam` scores them): the runner, its options, Ctrl-C and the one error line.

With no --runner given, the pipeline runs on Beam's FnApiRunner (the DirectRunner's batch engine) with one
worker process per core: it needs no network (the Prism runner downloads a binary at run time; pass
--prism_location for it). Beam's filesystems (gs://, s3://) read their options from the same arguments.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from fashion.core import quiet
from fashion.core.errors import FashionError

WORKER_OPTIONS = "FASHION_BEAM_OPTIONS"  # the pipeline options, for `local_runner`'s workers
INSTALL = "pip install 'fashion[beam]' (or: pip install 'apache-beam[tfrecord]' google-crc32c)"


def import_beam(error: type[FashionError] = FashionError) -> Any:
    """apache_beam, or `error` in one line saying how to install it."""
    try:
        import apache_beam as beam
    except ImportError as e:
        raise error(f"--engine beam needs Apache Beam, which is not installed ({e}): {INSTALL}") from None
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
    but through `python -m fashion.core.beamrun`: the same SDK harness with Ctrl-C ignored, so a Ctrl-C
    at the terminal reaches only the driver, which stops the workers and says what was kept. Processes,
    not threads: decoding holds the GIL part of the time."""
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.transforms.environments import SubprocessSDKEnvironment

    command = f"{shlex.quote(sys.executable)} -m fashion.core.beamrun"
    return FnApiRunner(default_environment=SubprocessSDKEnvironment.from_command_string(command))


@contextlib.contextmanager
def pipeline(beam_args: Sequence[str], error: type[FashionError], kept: str) -> Iterator[Any]:
    """`with pipeline(args, Error, "finished shards are kept in OUT") as p:` build the pipeline on `p`; it
    runs when the block ends. Beam's chatter stays off the console; a failure is `error` in one line
    (naming the worker's own last error line, and what to place where for Prism), a worker's full disk an
    OSError(ENOSPC) (the caller's disk-full line); a Ctrl-C goes up as KeyboardInterrupt."""
    beam = import_beam(error)
    from apache_beam.options.pipeline_options import PipelineOptions

    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    # it warns that direct_num_workers > 1 wants --direct_running_mode, which would replace our workers
    logging.getLogger("apache_beam.runners.portability.fn_api_runner.fn_runner").setLevel(logging.ERROR)
    # a failed worker's traceback, relayed as one log line of many: the command's one error line says it
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.CRITICAL)
    old_handler = _mute_on_interrupt()
    args = pipeline_args(beam_args)
    runner = None if has_runner(args) else local_runner()
    old_env = os.environ.get(WORKER_OPTIONS)
    if runner is not None:  # the local workers read the options (filesystems: endpoints, credentials) from here
        os.environ[WORKER_OPTIONS] = worker_options(args)
    try:
        with beam.Pipeline(runner=runner, options=PipelineOptions(args)) as p:
            yield p
    except FashionError:
        raise
    except Exception as e:  # (a KeyboardInterrupt is not one: it goes up as it is)
        # a worker's full disk (its OSError arrives as text: Python's own strerror): the disk-full line
        if "No space left on device" in str(e):
            raise OSError(errno.ENOSPC, "No space left on device") from None
        raise error(f"the Beam pipeline failed ({runner_problem(e, args)}); {kept}") from None
    finally:
        if runner is not None:
            _restore_env(WORKER_OPTIONS, old_env)
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)


def watch(look: Callable[[], bool], every: float, stop: threading.Event) -> threading.Thread:
    """A daemon thread calling `look()` every `every` seconds until it returns True or `stop` is set, and
    once more after `stop` (for what finished since the last look): the progress of a pipeline, which
    only its files show."""

    def run() -> None:
        stopped = False
        while not stopped:
            stopped = stop.wait(every)
            if look():
                return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


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
    news, and the command says in one line what was kept. Returns the handler to restore (None off the
    main thread, where signals cannot be handled)."""
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


if __name__ == "__main__":  # a worker of `local_runner`: Beam's SDK harness, with Ctrl-C left to the driver
    import runpy

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if os.environ.get(WORKER_OPTIONS):
        os.environ["PIPELINE_OPTIONS"] = _with_our_options(
            os.environ.get("PIPELINE_OPTIONS"), os.environ[WORKER_OPTIONS]
        )
    runpy.run_module("apache_beam.runners.worker.sdk_worker_main", run_name="__main__", alter_sys=True)

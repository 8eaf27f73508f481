"""The per-image work of `generate_dataset.py` and the pools that run it.

One process per core, each fetching on its own threads and decoding what it
fetched (so HTTP, decoding and the hand-offs between them are spread over the
cores, as in img2dataset and the Beam engine's workers); the parent serializes
and writes. Results come back in list order with a bounded number in flight.
Tiny jobs run on threads in one process.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import itertools
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any

from tqdm import tqdm

from fashion.config.ingest import IngestConfig
from fashion.data import imaging, records
from fashion.data.fetching import Fetcher, FetchError
from fashion.data.ordered import ordered_map
from fashion.data.sources import Failure, Item

Encoded = tuple[bytes, int, int]  # JPEG, height, width
Prepared = tuple[Item, Encoded | None, Failure | None]  # what a fetch-and-decode thread returns
Result = tuple[Item, bytes | None, Failure | None]  # (item, serialized example, failure): one is None


def make_prepare(cfg: IngestConfig, fetcher: Fetcher) -> Callable[[Item], Prepared]:
    """The per-item function run on the threads: fetch, verify, resize, encode."""

    def prepare(item: Item) -> Prepared:
        try:
            data = fetcher.fetch(item.source)
            encoded = imaging.process(
                data,
                size=cfg.image_size,
                mode=cfg.resize,
                quality=cfg.quality,
                min_side=cfg.min_side,
                max_pixels=cfg.max_pixels,
            )
            return item, encoded, None
        except (FetchError, imaging.ImageError) as e:
            return item, None, Failure(item.id, item.source, str(e), item.line)
        except Exception as e:  # one bad file must never stop the run
            return item, None, Failure(item.id, item.source, f"error: {type(e).__name__}: {e}", item.line)

    return prepare


def serialized(prepared: Prepared) -> Result:
    """The record of a prepared item (TensorFlow's proto: built where the shard is written)."""
    item, encoded, failure = prepared
    if encoded is None:
        return item, None, failure
    jpeg, h, w = encoded
    return item, records.make_example(jpeg, id=item.id, source=item.source, height=h, width=w, labels=item.labels), None


def _watch_parent(parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled once, by the parent

    def watch() -> None:  # a SIGKILLed parent cannot stop us: leave when it is gone
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def _serve(cfg: IngestConfig, threads: int, inbox: Any, outbox: Any, parent: int) -> None:
    """A worker process: `(seq, item)` from `inbox` -> its threads -> `(seq, prepared)` on `outbox`;
    the parent ends it (SIGTERM). Warnings travel as `(-1, text)`, for the parent to print above its bar."""
    _watch_parent(parent)
    fetcher = make_fetcher(cfg, warn=lambda message: outbox.put((-1, message)))
    prepare = make_prepare(cfg, fetcher)
    # ThreadPoolExecutor, not multiprocessing's ThreadPool: that one makes semaphores, which a worker
    # ended by SIGTERM cannot release ("resource_tracker: ... leaked semaphore objects" at exit)
    pool = concurrent.futures.ThreadPoolExecutor(threads)
    while True:
        seq, item = inbox.get()
        pool.submit(prepare, item).add_done_callback(functools.partial(_send, outbox, seq))


def _send(outbox, seq: int, done: concurrent.futures.Future) -> None:
    outbox.put((seq, done.result()))


class Processes:
    """`processes` workers (`_serve`) sharing `cfg.workers` download threads; `map` gives results in order.

    Every item goes to the worker with the fewest in flight, and the parent records which, so the items
    a dead worker held become failures naming it, and a new worker takes its place. Every wait has a
    deadline (a 1 s poll that checks the workers are alive)."""

    def __init__(self, cfg: IngestConfig, processes: int):
        self.cfg = cfg
        self.threads = max(1, -(-cfg.workers // processes))
        self.ctx = multiprocessing.get_context("spawn")  # not fork: the parent may already run TensorFlow's threads
        self.outbox = self.ctx.Queue()
        self.procs: list[Any] = [None] * processes
        self.inboxes: list[Any] = [None] * processes
        self.load = [0] * processes  # items in flight per worker
        self.warned: set[str] = set()
        # Started with Ctrl-C ignored, which they inherit from birth: a Ctrl-C at the terminal reaches the
        # whole process group, and one arriving while a child still imports would print its traceback.
        with _sigint_ignored():
            for k in range(processes):
                self._start(k)

    def _start(self, k: int) -> None:
        self.inboxes[k] = self.ctx.Queue()
        self.procs[k] = self.ctx.Process(
            target=_serve, args=(self.cfg, self.threads, self.inboxes[k], self.outbox, os.getpid()), daemon=True
        )
        self.procs[k].start()

    def map(self, items: Iterable[Item]) -> Generator[Result, None, None]:
        window = self.cfg.workers * 4
        source = iter(items)
        pending: dict[int, tuple[Item, int]] = {}  # seq -> (item, its worker) in flight
        done: dict[int, Prepared] = {}  # seq -> prepared
        sent = itertools.count()
        next_out, exhausted = 0, False
        while True:
            while not exhausted and len(pending) + len(done) < window:
                item = next(source, None)
                if item is None:
                    exhausted = True
                    break
                seq = next(sent)
                k = min(range(len(self.procs)), key=self.load.__getitem__)
                pending[seq] = item, k
                self.load[k] += 1
                self.inboxes[k].put((seq, item))
            if next_out in done:
                yield serialized(done.pop(next_out))
                next_out += 1
                continue
            if not pending:
                return
            try:
                seq, prepared = self.outbox.get(timeout=1.0)
            except queue.Empty:
                self._replace_dead(pending, done)
                continue
            if seq < 0:
                self._warn(prepared)
            elif seq in pending:
                self.load[pending.pop(seq)[1]] -= 1
                done[seq] = prepared

    def _replace_dead(self, pending: dict[int, tuple[Item, int]], done: dict[int, Prepared]) -> None:
        for k, proc in enumerate(self.procs):
            if proc.is_alive():
                continue
            code = proc.exitcode
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            how += ": out of memory?" if code == -signal.SIGKILL else ""  # what the kernel's OOM killer sends
            why = f"the worker process fetching and decoding it died ({how})"
            for seq in [s for s, (_, o) in pending.items() if o == k]:
                item, _ = pending.pop(seq)
                self.load[k] -= 1
                done[seq] = (item, None, Failure(item.id, item.source, f"error: {why}", item.line))
            with _sigint_ignored():
                self._start(k)

    def _warn(self, message: str) -> None:
        if message not in self.warned:  # every worker meets the same unwritable cache: say it once
            self.warned.add(message)
            tqdm.write(message, file=sys.stderr)

    def close(self) -> None:
        """Stop the workers now: at the end they are idle; after a Ctrl-C their downloads are not wanted
        (a cache file is written under a temporary name, so none is left half-written)."""
        for proc in self.procs:
            proc.terminate()
        deadline = time.monotonic() + 5
        for proc in self.procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
        for q in (*self.inboxes, self.outbox):
            q.cancel_join_thread()  # never wait on a queue's feeder at exit
            q.close()


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def make_fetcher(cfg: IngestConfig, warn: Callable[[str], None] | None = None) -> Fetcher:
    """The run's byte source: its limits, retries, pool size and cache."""
    return Fetcher(
        timeout=cfg.timeout,
        connect_timeout=cfg.connect_timeout,
        retries=cfg.retries,
        max_bytes=cfg.max_bytes,
        min_bytes=cfg.min_bytes,
        pool_size=cfg.workers,
        cache_dir=cfg.cache,
        warn=warn or (lambda message: tqdm.write(message, file=sys.stderr)),  # above the progress bar
    )


def in_order(cfg: IngestConfig, fetcher: Fetcher, items: Iterable[Item]) -> Generator[Result, None, None]:
    """Results for `items` on `cfg.workers` threads of this process, in list order, 4 per thread in flight."""
    prepared = ordered_map(make_prepare(cfg, fetcher), items, workers=cfg.workers, window=cfg.workers * 4)
    try:
        yield from map(serialized, prepared)
    finally:
        prepared.close()


def processes_for(n_images: int) -> int:
    """One worker process per core; none for tiny jobs or one core (start-up would dominate)."""
    cores = os.cpu_count() or 1
    return 0 if cores < 2 or n_images < 64 else cores


@contextlib.contextmanager
def processed(cfg: IngestConfig, items: Iterable[Item], n_items: int) -> Iterator[Generator[Result, None, None]]:
    """Results for `items`, in order; the workers (or the fetcher and threads) are closed on leaving."""
    n = processes_for(n_items)
    if n:
        pool = Processes(cfg, n)
        results = pool.map(items)
        try:
            yield results
        finally:
            results.close()
            pool.close()
        return
    fetcher = make_fetcher(cfg)
    results = in_order(cfg, fetcher, items)
    try:
        yield results
    finally:
        fetcher.close()  # first: downloads in flight stop at their next read
        results.close()

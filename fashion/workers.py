"""The per-image work of `generate_dataset.py` and the pools that run it.

Threads fetch (they wait on the network); one process per core decodes and
resizes; results come back in list order with a bounded number in flight.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.pool import AsyncResult, ThreadPool
from typing import Any

from tqdm import tqdm

from . import imaging, records
from .config import IngestConfig
from .fetching import Fetcher, FetchError
from .sources import Failure, Item

Result = tuple[Item, bytes | None, Failure | None]  # (item, serialized example, failure): one is None


def make_worker(cfg: IngestConfig, fetcher: Fetcher, pool: ProcessPoolExecutor | None) -> Callable[[Item], Result]:
    """The per-item function run in the pool: fetch, verify, resize, encode, serialize."""

    options = dict(
        size=cfg.image_size, mode=cfg.resize, quality=cfg.quality, min_side=cfg.min_side, max_pixels=cfg.max_pixels
    )

    def work(item: Item) -> Result:
        try:
            data = fetcher.fetch(item.source)
            # Threads wait on the network; decoding runs in one process per core, because the
            # GIL-bound parts of a threaded decoder held it to ~1.5 of 2 cores (measured).
            if pool is None:
                jpeg, h, w = imaging.process(data, **options)
            else:
                jpeg, h, w = pool.submit(imaging.process, data, **options).result()
            example = records.make_example(jpeg, id=item.id, source=item.source, height=h, width=w, labels=item.labels)
            return item, example, None
        except (FetchError, imaging.ImageError) as e:
            return item, None, Failure(item.id, item.source, str(e), item.line)
        except Exception as e:  # one bad file must never stop the run
            return item, None, Failure(item.id, item.source, f"error: {type(e).__name__}: {e}", item.line)

    return work


def _decoder_init(parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled once, by the parent

    def watch() -> None:  # a SIGKILLed parent cannot stop us: leave when it is gone
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def decoder_pool(n_images: int) -> ProcessPoolExecutor | None:
    """One decoding process per core; none for tiny jobs or one core (start-up would dominate)."""
    cores = os.cpu_count() or 1
    if cores < 2 or n_images < 64:
        return None
    # spawn, not fork: the parent already runs TensorFlow's threads.
    pool = ProcessPoolExecutor(
        cores, mp_context=multiprocessing.get_context("spawn"), initializer=_decoder_init, initargs=(os.getpid(),)
    )
    if threading.current_thread() is threading.main_thread():
        # Start them now with Ctrl-C ignored, which they inherit from birth: a Ctrl-C at the terminal
        # reaches the whole process group, and one arriving while a child still imports (before
        # _decoder_init) would print its KeyboardInterrupt traceback.
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for _ in range(cores):
                pool.submit(os.getpid)
        finally:
            signal.signal(signal.SIGINT, old)
    return pool


def ordered_map(fn, items: Iterable[Item], workers: int, window: int) -> Iterator[Any]:
    """Like `executor.map`, but with at most `window` items in flight (memory stays flat).

    multiprocessing's ThreadPool, not ThreadPoolExecutor: its threads are daemons, so a download
    still stuck in a socket read cannot keep an interrupted process alive (the interpreter joins
    ThreadPoolExecutor's threads at exit)."""
    pool = ThreadPool(workers)
    pending: deque[AsyncResult] = deque()
    try:
        for it in items:
            pending.append(pool.apply_async(fn, (it,)))
            if len(pending) >= window:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
    finally:
        pool.terminate()  # drops queued work; downloads in flight see the fetcher's cancel and stop


def make_fetcher(cfg: IngestConfig) -> Fetcher:
    """The run's byte source: its limits, retries, pool size and cache."""
    return Fetcher(
        timeout=cfg.timeout,
        connect_timeout=cfg.connect_timeout,
        retries=cfg.retries,
        max_bytes=cfg.max_bytes,
        min_bytes=cfg.min_bytes,
        pool_size=cfg.workers,
        cache_dir=cfg.cache,
        warn=lambda message: tqdm.write(message, file=sys.stderr),  # above the progress bar
    )


def in_order(cfg: IngestConfig, fetcher: Fetcher, pool: ProcessPoolExecutor | None, items: Iterable[Item]):
    """`make_worker`'s results for `items` on `cfg.workers` threads, in list order, 4 per thread in flight."""
    return ordered_map(make_worker(cfg, fetcher, pool), items, workers=cfg.workers, window=cfg.workers * 4)


@contextlib.contextmanager
def processed(cfg: IngestConfig, items: Iterable[Item], n_items: int) -> Iterator[Iterator[Result]]:
    """`make_worker`'s results for `items`, in order; the fetcher and both pools are closed on leaving."""
    fetcher = make_fetcher(cfg)
    pool = decoder_pool(n_items)
    results = in_order(cfg, fetcher, pool, items)
    try:
        yield results
    finally:
        fetcher.close()  # first: downloads in flight stop at their next read
        results.close()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

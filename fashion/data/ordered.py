"""`ordered_map`: a function over a stream on a pool of threads, results in the stream's order, with a
bounded number in flight. Used by ingestion (fetch, decode, encode) and by scoring (fetch, decode).

Written here rather than taken from concurrent.futures: `Executor.map` submits the whole iterable at
once (a 10-million-line list would sit in memory), and its threads are not daemons.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterable
from multiprocessing.pool import AsyncResult, ThreadPool
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int, window: int) -> Generator[R, None, None]:
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

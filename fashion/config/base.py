"""What every command's config shares: the default paths and the base class."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

DEFAULT_LIST = "data/train+val.txt"
DEFAULT_RECORDS = "data/records"
DEFAULT_CACHE = "data/cache"


def default_workers() -> int:
    # Downloads are I/O bound: 32 per core keep the decoders busy at 50 ms latency (16 in all reached
    # 207 img/s there, 64 reached 343: bench/ingest.py, 2 cores, 2026-12-03); capped for big machines.
    return min(64, 32 * (os.cpu_count() or 1))


class _Config:
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

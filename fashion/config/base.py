"""What every command's config shares: the default paths and the base class."""

from __future__ import annotations

import dataclasses
from typing import Any

DEFAULT_LIST = "data/train+val.txt"
DEFAULT_RECORDS = "data/records"
DEFAULT_CACHE = "data/cache"


class _Config:
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]  # (every subclass is a dataclass)

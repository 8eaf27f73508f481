"""`dataset.json` as a `generate_dataset.py` run builds it: a new manifest, then each part's shards and counts.

The format itself (keys, schema version, reading) is records.py's; this is the writer's side.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from fashion.config.ingest import IngestConfig
from fashion.data import records
from fashion.data.sources import Failure


def timestamp() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_manifest(cfg: IngestConfig, task: str, labels: list[str], created: str) -> dict[str, Any]:
    return {
        "schema_version": records.SCHEMA_VERSION,
        "task": task,
        "labels": labels,
        "num_classes": len(labels),
        "image_size": cfg.image_size,
        "resize": cfg.resize,
        "quality": cfg.quality,
        "format": "jpeg",
        "features": {
            "image": records.F_IMAGE,
            "id": records.F_ID,
            "source": records.F_SOURCE,
            "height": records.F_HEIGHT,
            "width": records.F_WIDTH,
            "labels": records.F_LABELS,
        },
        "splits": {s: {"records": 0, "positives": [0] * len(labels), "shards": []} for s in records.SPLITS},
        "failures": 0,
        "created": created,
        "commands": [],
        "parts": [],
        "config": cfg.to_dict(),
    }


def add_part(
    manifest: dict[str, Any],
    part: dict[str, Any],
    splits: Sequence[str],
    states: list[dict[str, Any]],
    new_failures: list[Failure],
    task: str,
    updated: str,
) -> dict[str, Any]:
    """`manifest` with a part's shards (one state per shard, in `splits` order), counts and command added.

    `part`: tag, fingerprint, command and optionally review, as recorded under `parts`.
    """
    labels = manifest["labels"]
    for split, st in zip(splits, states):
        sp = manifest["splits"].setdefault(split, {"records": 0, "positives": [0] * len(labels), "shards": []})
        sp["records"] += st["records"]
        sp["positives"] = [a + b for a, b in zip(sp["positives"], st["positives"])]
        sp["shards"].append({k: st[k] for k in ("name", "records", "sha256", "bytes")})
    manifest.setdefault("task", task)
    manifest["failures"] += len(new_failures)
    kinds = Counter(manifest.get("failures_by_kind", {}))
    kinds.update(f.kind for f in new_failures)
    manifest["failures_by_kind"] = dict(kinds.most_common())
    manifest["records"] = sum(sp["records"] for sp in manifest["splits"].values())
    manifest["updated"] = updated
    manifest["commands"].append(part["command"])
    review = part.get("review")
    manifest["parts"].append(
        {
            "tag": part["tag"],
            "fingerprint": part["fingerprint"],
            "command": part["command"],
            "records": sum(s["records"] for s in states),
            "failures": len(new_failures),
            **({"review": review} if review else {}),
        }
    )
    return manifest

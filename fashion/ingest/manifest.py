"""`dataset.json` as a `generate_dataset.py` run builds it: a new manifest, then each part's shards and counts.

The format itself (its typed shape, reading and writing) is fashion.data.dataset_json's; this builds one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from fashion.config.ingest import IngestConfig
from fashion.data import dataset_json, records
from fashion.data.dataset_json import DatasetManifest, PartEntry, SplitEntry
from fashion.data.sources import Failure


def timestamp() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_manifest(cfg: IngestConfig, task: str, labels: list[str], created: str) -> DatasetManifest:
    return {
        "schema_version": dataset_json.SCHEMA_VERSION,
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
    manifest: DatasetManifest,
    part: dict[str, Any],
    splits: Sequence[str],
    states: list[dict[str, Any]],
    new_failures: list[Failure],
    task: str,
    updated: str,
) -> DatasetManifest:
    """`manifest` with a part's shards (one state per shard, in `splits` order), counts and command added.

    `part`: tag, fingerprint, command and optionally review, as recorded under `parts`.
    """
    labels = manifest["labels"]
    for split, st in zip(splits, states):
        empty: SplitEntry = {"records": 0, "positives": [0] * len(labels), "shards": []}
        sp = manifest["splits"].setdefault(split, empty)
        sp["records"] += st["records"]
        sp["positives"] = [a + b for a, b in zip(sp["positives"], st["positives"])]
        sp["shards"].append(
            {"name": st["name"], "records": st["records"], "sha256": st["sha256"], "bytes": st["bytes"]}
        )
    manifest.setdefault("task", task)
    manifest["failures"] += len(new_failures)
    kinds = Counter(manifest.get("failures_by_kind", {}))
    kinds.update(f.kind for f in new_failures)
    manifest["failures_by_kind"] = dict(kinds.most_common())
    manifest["records"] = sum(sp["records"] for sp in manifest["splits"].values())
    manifest["updated"] = updated
    manifest["commands"].append(part["command"])
    entry: PartEntry = {
        "tag": part["tag"],
        "fingerprint": part["fingerprint"],
        "command": part["command"],
        "records": sum(s["records"] for s in states),
        "failures": len(new_failures),
    }
    if part.get("review"):
        entry["review"] = part["review"]
    manifest["parts"].append(entry)
    return manifest

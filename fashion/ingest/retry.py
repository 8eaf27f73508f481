"""`generate_dataset.py LIST --out OUT --retry-failed`: the lines of a finished dataset's failures.csv that a
second try may pass (timeouts, connection errors, 429, 5xx: fetching.transient), fetched again from the
same list and added as a new part of shards; failures.csv then holds what is left (404s, non-images, and
the lines that failed again). The job (job.py) runs it as an --append of those lines only.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter

from fashion.core import fileio
from fashion.core.errors import EXIT_FAILURES, EXIT_OK
from fashion.core.storage import Location
from fashion.data import records
from fashion.data.dataset_json import DatasetManifest
from fashion.data.fetching import transient
from fashion.data.sources import ParsedList


def narrow(out: Location, existing: DatasetManifest, parsed: ParsedList, fp: str) -> tuple[ParsedList, str]:
    """The list narrowed to the ids of failures.csv whose reason may pass now; its bad lines are not counted
    again (failures.csv holds them). The fingerprint names the dataset it retries against (its number of
    parts), so an interrupted retry resumes and a later retry is a new part."""
    rows = fileio.read_csv_rows(out / records.FAILURES)[: existing["failures"]]
    again = {r[0] for r in rows if len(r) > 2 and transient(r[2])}
    items = [it for it in parsed.items if it.id in again]
    print(
        f"retrying {len(items)} line(s) whose failure may pass now ({len(rows) - len(again)} permanent left as they are)"
    )
    retry_fp = hashlib.sha256(f"retry {fp} {len(existing.get('parts', []))}".encode()).hexdigest()[:16]
    return dataclasses.replace(parsed, items=items, failures=[]), retry_fp


def nothing_to_retry(out: Location, existing: DatasetManifest) -> int:
    n = existing["failures"]
    print(f"nothing to retry: {n} failure(s) in {out / records.FAILURES}, none that a second try may pass")
    return EXIT_FAILURES if n else EXIT_OK


def without_retried(existing: DatasetManifest, rows: list[list[str]], retried: set[str]) -> list[list[str]]:
    """failures.csv's rows without the retried ids (those failing again come back as the new part's), and
    `existing`'s counts lowered to match: each part's (its rows are in part order: a rerun of that part's
    command reads its own slice), the total and the kinds."""
    kept: list[list[str]] = []
    start = 0
    for part in existing.get("parts", []):
        mine = rows[start : start + part.get("failures", 0)]
        start += len(mine)
        left = [r for r in mine if r[0] not in retried]
        part["failures"] = len(left)
        kept += left
    existing["failures"] = len(kept)
    existing["failures_by_kind"] = dict(Counter(r[2].split(":", 1)[0] for r in kept if len(r) > 2).most_common())
    return kept

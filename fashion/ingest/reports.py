"""Console summaries a person reads at the end of a job."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from fashion.core.storage import Location
from fashion.data.dataset_json import DatasetManifest, PartEntry
from fashion.data.sources import Failure, Item


def class_table(labels: Sequence[str], counts: dict[str, Sequence[int]], n_total: int) -> str:
    """Per-class positives per split, share of images and imbalance ratio (negatives per positive)."""
    splits = list(counts)
    width = max([len("class")] + [len(n) for n in labels])
    head = f"  {'class':<{width}} " + " ".join(f"{s:>7}" for s in splits) + f" {'total':>7} {'share':>7} {'neg:pos':>9}"
    lines = [head]
    for k, name in enumerate(labels):
        per = [int(counts[s][k]) for s in splits]
        tot = sum(per)
        share = tot / n_total if n_total else 0.0
        ratio = f"{(n_total - tot) / tot:9.1f}" if tot else f"{'no pos.':>9}"
        lines.append(f"  {name:<{width}} " + " ".join(f"{v:7d}" for v in per) + f" {tot:7d} {share:7.1%} {ratio}")
    return "\n".join(lines)


def top_cooccurrences(y: np.ndarray, labels: Sequence[str], k: int = 5) -> list[tuple[str, str, int]]:
    """The k most frequent label pairs in a multi-hot matrix."""
    if y.size == 0:
        return []
    co = y.T @ y
    pairs = [
        (labels[i], labels[j], int(co[i, j]))
        for i in range(len(labels))
        for j in range(i + 1, len(labels))
        if co[i, j] > 0
    ]
    return sorted(pairs, key=lambda p: -p[2])[:k]


def print_ingest_summary(
    manifest: DatasetManifest,
    failures: list[Failure],
    processed: int,
    elapsed: float,
    written_labels: np.ndarray,
    out: Location,
) -> None:
    labels = manifest["labels"]
    sp = manifest["splits"]
    total = sum(sp[s]["records"] for s in sp)
    rate = processed / elapsed if elapsed > 0 else 0.0
    print()
    print(
        f"dataset: {out}  ({manifest.get('task', 'multilabel')}, {total} records: "
        + ", ".join(f"{s} {sp[s]['records']}" for s in sp)
        + ")"
    )
    print(f"this run: {processed} image(s) processed in {elapsed:.1f}s ({rate:.1f} img/s), {len(failures)} skipped")
    if failures:
        print("skipped, by reason (details in failures.csv):")
        for kind, n in Counter(f.kind for f in failures).most_common():
            print(f"  {kind:<24} {n:6d}")
    print("positives per class:")
    print(class_table(labels, {s: sp[s]["positives"] for s in sp}, total))
    empty = [n for k, n in enumerate(labels) if not sum(sp[s]["positives"][k] for s in sp)]
    if empty:
        print(f"warning: {len(empty)} class(es) have no positive example: {', '.join(empty)}")
    missing_val = [
        n for k, n in enumerate(labels) if sp["train"]["positives"][k] and "val" in sp and not sp["val"]["positives"][k]
    ]
    if missing_val and "val" in sp and sp["val"]["records"]:
        print(f"warning: no validation positive for: {', '.join(missing_val)}")
    pairs = top_cooccurrences(written_labels, labels)
    if pairs:
        print("most frequent label pairs (this run): " + ", ".join(f"{a}+{b} {n}" for a, b, n in pairs))


def print_rerun_summary(manifest: DatasetManifest, part: PartEntry, reasons: list[str], out: Location) -> None:
    """A rerun of a finished command: what that command wrote and skipped, and where the list is."""
    sp = manifest["splits"]
    total = sum(sp[s]["records"] for s in sp)
    print(f"dataset: {out}  ({total} records: " + ", ".join(f"{s} {sp[s]['records']}" for s in sp) + ")")
    n = part.get("failures", 0)
    where = f" (listed in {out / 'failures.csv'})" if n else ""
    print(f"this command: {part.get('records', 0)} record(s) written, {n} line(s) skipped{where}")
    for kind, k in Counter(r.split(":", 1)[0] for r in reasons).most_common():
        print(f"  {kind:<24} {k:6d}")


class IngestProgress:
    """The ingest bar: images done (those of shards an earlier run finished count as done), skipped so far."""

    def __init__(self, total: int, done: int):
        self.bar = tqdm(total=total, initial=done, unit="img", desc="ingest", dynamic_ncols=True, smoothing=0.05)
        self.failed = 0

    def __enter__(self) -> IngestProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()

    def skipped(self, item: Item, failure: Failure) -> None:
        self.failed += 1
        where = f"line {item.line} ({item.id})" if item.line else item.id
        tqdm.write(f"skipped {where}: {failure.reason}", file=sys.stderr)

    def step(self) -> None:
        self.bar.update(1)
        self.bar.set_postfix(failed=self.failed, refresh=False)

    def shard(self, n: int) -> None:
        """A whole shard done at once (the Beam engine reports shards, not images)."""
        self.bar.update(n)
        self.bar.set_postfix(failed=self.failed, refresh=False)

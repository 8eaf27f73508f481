"""`--apply-review FILE`: drop or relabel records as a person decided after `evaluate.py`.

The review file is a CSV with the header
`id,source,labels,predicted,score,loss,action,new_labels`: `id` is the record id
(`image/id`), `labels`/`predicted`/`new_labels` are `;`-joined label names and
`action` is blank, `keep`, `relabel` or `drop` (case-insensitive; blank = keep).
Only `id`, `action` and `new_labels` are read here.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path

from fashion.core import fileio
from fashion.data.sources import ListError, ParsedList

ACTIONS = ("", "keep", "relabel", "drop")
COLUMNS = ("id", "source", "labels", "predicted", "score", "loss", "action", "new_labels")


@dataclass
class Review:
    path: str
    sha256: str
    drop: dict[str, int] = field(default_factory=dict)  # id -> line
    relabel: dict[str, tuple[int, list[str]]] = field(default_factory=dict)  # id -> (line, names)
    keep: set[str] = field(default_factory=set)


@dataclass
class ReviewResult:
    dropped: int
    relabelled: int
    unchanged: int  # relabel rows whose new labels equal the old ones
    unknown: int  # ids the review names that this source does not hold

    def summary(self, path: str) -> str:
        s = f"review {path}: {self.dropped} dropped, {self.relabelled} relabelled"
        if self.unchanged:
            s += f" ({self.unchanged} relabel row(s) already had those labels)"
        return s


def read_review(path: str | Path) -> Review:
    """Parse the review file; a bad action or an empty relabel is a ListError naming the file and line."""
    p = Path(path)
    if not p.is_file():
        raise ListError(f"{path}: review file not found")
    data = p.read_bytes()
    review = Review(str(path), hashlib.sha256(data).hexdigest())
    rows = csv.reader(data.decode("utf-8-sig", errors="replace").splitlines())
    header = [c.strip().lower() for c in next(rows, [])]
    missing = [c for c in ("id", "action", "new_labels") if c not in header]
    if missing:
        raise ListError(f"{path}: line 1: header lacks {', '.join(missing)} (expected {','.join(COLUMNS)})")
    col = {c: header.index(c) for c in ("id", "action", "new_labels")}
    seen: dict[str, tuple[int, str]] = {}
    for n, row in enumerate(rows, start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) < len(header):
            raise ListError(f"{path}: line {n}: expected {len(header)} columns, got {len(row)}")
        rid = fileio.unescape_cell(row[col["id"]].strip())
        action = row[col["action"]].strip().lower()
        if not rid:
            raise ListError(f"{path}: line {n}: empty id")
        if action not in ACTIONS:
            raise ListError(
                f"{path}: line {n}: action {row[col['action']]!r} is not one of keep, relabel, drop (or blank)"
            )
        action = action or "keep"
        new = [t.strip() for t in row[col["new_labels"]].split(";") if t.strip()]
        if action == "relabel" and not new:
            raise ListError(f"{path}: line {n}: relabel of '{rid}' with empty new_labels")
        if rid in seen and seen[rid][1] != action:
            raise ListError(
                f"{path}: line {n}: '{rid}' is marked {action} here and {seen[rid][1]} on line {seen[rid][0]}"
            )
        seen[rid] = (n, action)
        if action == "drop":
            review.drop[rid] = n
        elif action == "relabel":
            review.relabel[rid] = (n, new)
        else:
            review.keep.add(rid)
    return review


def apply_review(parsed: ParsedList, review: Review) -> ReviewResult:
    """Drop and relabel `parsed.items` in place; label names must be the source's."""
    names = parsed.label_names
    index = {n: i for i, n in enumerate(names)}
    vectors: dict[str, tuple[int, ...]] = {}
    for rid, (n, new) in review.relabel.items():
        unknown = [t for t in new if t not in index]
        if unknown:
            raise ListError(
                f"{review.path}: line {n}: unknown label '{unknown[0]}' in new_labels of '{rid}' "
                f"(labels: {', '.join(names)})"
            )
        if parsed.task == "multiclass" and len(set(new)) != 1:
            raise ListError(
                f"{review.path}: line {n}: '{rid}' gets {len(set(new))} labels but this dataset is "
                f"single-label (multiclass): give exactly one"
            )
        vectors[rid] = tuple(1 if lb in new else 0 for lb in names)
    ids = {it.id for it in parsed.items}
    named = set(review.drop) | set(review.relabel) | review.keep
    kept, dropped, relabelled, unchanged = [], 0, 0, 0
    for it in parsed.items:
        if it.id in review.drop:
            dropped += 1
            continue
        if it.id in vectors:
            if vectors[it.id] == it.labels:
                unchanged += 1
            else:
                relabelled += 1
                it = replace(it, labels=vectors[it.id])
        kept.append(it)
    parsed.items[:] = kept
    return ReviewResult(dropped, relabelled, unchanged, len(named - ids))

"""List files -> items to ingest, and per-line problems with their line numbers.

Two list formats are read (multi-label, task "multilabel"):
* the original one: `id,url,l0,...,lN` per line, no header (label names come
  from `--labels FILE` or default to `label_0..label_N`);
* a CSV with a header naming a path/url column and a `labels` column of
  `;`-separated names (the label set is the union unless `--labels` fixes it).

Single-label sources (folders, regex, PaddleHub lists, URL lists) are in
class_sources.py; they return the same `ParsedList`.

`iter_inputs` reads the same lists for scoring (detect.py --list), one line at a time and without
labels: `id,url_or_path[,anything...]`, or a CSV whose header names a path/url column.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO
from urllib.parse import unquote, urlparse

SOURCE_COLUMNS = ("url", "path", "relative_path", "image", "file", "filename")
ALLOWED_SCHEMES = ("http", "https", "file", "")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Item:
    """One image to ingest: `source` is an absolute path or an http(s) URL.

    `split` is set when the source fixes it (train/val/test folders or lists);
    empty means the job splits by --val-fraction/--val-count.
    """

    line: int
    id: str
    source: str
    labels: tuple[int, ...]
    split: str = ""


@dataclass(frozen=True)
class Failure:
    """A line (or image) that was not written, and why: `kind: detail`."""

    id: str
    source: str
    reason: str
    line: int = 0

    @property
    def kind(self) -> str:
        return self.reason.split(":", 1)[0]


class ListError(ValueError):
    """A problem that stops the whole list (unreadable file, no usable header)."""


@dataclass
class ParsedList:
    items: list[Item]
    failures: list[Failure]
    label_names: list[str]
    task: str = "multilabel"
    notes: list[str] = field(default_factory=list)  # printed once before the run starts


def read_label_names(path: str | Path) -> list[str]:
    """One label name per line; blank lines are ignored."""
    with open(path, encoding="utf-8-sig") as f:  # -sig: a BOM (Windows editors) is not part of the first name
        names = [ln.strip() for ln in f if ln.strip()]
    if not names:
        raise ListError(f"{path}: no label names in the file")
    if len(set(names)) != len(names):
        raise ListError(f"{path}: label names repeat")
    return names


def resolve_source(raw: str, base_dir: Path) -> str:
    """Return an http(s) URL or an absolute local path; raise ValueError for other schemes."""
    raw = raw.strip()
    if not raw:
        raise ValueError("empty url")
    parsed = urlparse(raw)
    scheme = parsed.scheme.lower()
    if len(scheme) == 1:  # a Windows drive letter, not a scheme
        scheme = ""
    if scheme not in ALLOWED_SCHEMES:  # shown as written: 'javascript:' has no '//'
        raise ValueError(f"unsupported url scheme '{raw[: len(scheme) + 1]}' (use http, https, file or a local path)")
    if scheme in ("http", "https"):
        if not parsed.netloc:
            raise ValueError(f"url has no host: {raw}")
        return raw
    path = Path(unquote(parsed.path)) if scheme == "file" else Path(raw).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    return str(path)


def open_list(path: str) -> tuple[TextIO, Path]:
    """Open a list (`-` = standard input); return the stream and the folder relative paths resolve against."""
    if path == "-":
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig", errors="replace"), Path.cwd()
    p = Path(path)
    if not p.is_file():
        raise ListError(f"{path}: list file not found")
    # utf-8-sig: a BOM would otherwise stay in the first id, or hide a CSV header's first column
    return open(p, encoding="utf-8-sig", errors="replace", newline=""), p.resolve().parent


def _is_header(first_row: list[str]) -> bool:
    return any(c.strip().lower() == "labels" for c in first_row)


def parse_list(
    lines: Iterable[str], base_dir: Path, label_names: list[str] | None = None, name: str = "list"
) -> ParsedList:
    """Parse every line; malformed ones become failures carrying their line number."""
    rows = ((i, row) for i, row in enumerate(csv.reader(lines), start=1) if row and any(c.strip() for c in row))
    first = next(rows, None)
    if first is None:
        return ParsedList([], [], list(label_names or []))
    if _is_header(first[1]):
        return _parse_header_csv(first, rows, base_dir, label_names, name)
    return _parse_original(first, rows, base_dir, label_names, name)


def _label_count(rows: list[tuple[int, list[str]]], label_names: list[str] | None, name: str) -> int:
    """--labels' count when given, else the lines' most common one (a bad first line must not decide)."""
    widths = [(w, n) for w, n in Counter(len(r) for _, r in rows).most_common() if w >= 3]  # ties: first seen
    if label_names:
        if widths and not any(w == len(label_names) + 2 for w, _ in widths):
            raise ListError(
                f"{name}: lines carry {widths[0][0] - 2} labels but {len(label_names)} label names are set "
                f"(--labels, or the dataset appended to)"
            )
        return len(label_names)
    if not widths:
        line, row = rows[0]
        raise ListError(f"{name}: line {line}: expected id,url,l0,...,lN; got {len(row)} column(s)")
    return widths[0][0] - 2


def _parse_original(first, rows, base_dir, label_names, name) -> ParsedList:
    rows = [first, *rows]  # read whole: the label count comes from all the lines
    n_labels = _label_count(rows, label_names, name)
    names = list(label_names) if label_names else [f"label_{i}" for i in range(n_labels)]
    out = ParsedList([], [], names)
    seen: set[str] = set()
    for line, row in rows:
        row = [c.strip() for c in row]
        rid = row[0] if row else ""
        src = row[1] if len(row) > 1 else ""
        if len(row) != n_labels + 2:
            out.failures.append(
                Failure(
                    rid,
                    src,
                    f"malformed line: line {line}: expected {n_labels + 2} columns "
                    f"(id,url + {n_labels} labels), got {len(row)}",
                    line,
                )
            )
            continue
        bad = [v for v in row[2:] if v not in ("0", "1")]
        if bad:
            out.failures.append(
                Failure(rid, src, f"malformed line: line {line}: label values must be 0 or 1, got '{bad[0]}'", line)
            )
            continue
        add_item(out, seen, line, rid, src, tuple(int(v) for v in row[2:]), base_dir)
    return out


def _parse_header_csv(first, rows, base_dir, label_names, name) -> ParsedList:
    header = [c.strip().lower() for c in first[1]]
    src_col = next((header.index(c) for c in SOURCE_COLUMNS if c in header), None)
    if src_col is None:
        raise ListError(f"{name}: header has no path/url column (one of {', '.join(SOURCE_COLUMNS)})")
    lab_col = header.index("labels")
    id_col = header.index("id") if "id" in header else None
    parsed: list[tuple[int, str, str, list[str]]] = []
    out = ParsedList([], [], [])
    for line, row in rows:
        row = [c.strip() for c in row]
        if len(row) != len(header):
            out.failures.append(
                Failure(
                    row[0] if row else "",
                    "",
                    f"malformed line: line {line}: expected {len(header)} columns, got {len(row)}",
                    line,
                )
            )
            continue
        src = row[src_col]
        rid = row[id_col] if id_col is not None else src
        parsed.append((line, rid, src, [t.strip() for t in row[lab_col].split(";") if t.strip()]))
    names = list(label_names) if label_names else sorted({t for *_, tags in parsed for t in tags})
    index = {n: i for i, n in enumerate(names)}
    seen: set[str] = set()
    for line, rid, src, tags in parsed:
        unknown = [t for t in tags if t not in index]
        if unknown:
            out.failures.append(
                Failure(rid, src, f"malformed line: line {line}: unknown label '{unknown[0]}' (not in --labels)", line)
            )
            continue
        vec = [0] * len(names)
        for t in tags:
            vec[index[t]] = 1
        add_item(out, seen, line, rid, src, tuple(vec), base_dir)
    out.label_names = names
    return out


def add_item(
    out: ParsedList,
    seen: set[str],
    line: int,
    rid: str,
    src: str,
    labels: tuple[int, ...],
    base_dir: Path,
    where: str = "",
    split: str = "",
) -> None:
    where = where or f"line {line}"
    if not rid:
        out.failures.append(Failure(rid, src, f"malformed line: {where}: empty id", line))
        return
    if rid in seen:
        out.failures.append(Failure(rid, src, f"duplicate id: {where}: id '{rid}' already used above", line))
        return
    try:
        resolved = resolve_source(src, base_dir)
    except ValueError as e:
        kind = "malformed line" if not src.strip() else "bad url"
        out.failures.append(Failure(rid, src, f"{kind}: {where}: {e}", line))
        return
    seen.add(rid)
    out.items.append(Item(line, rid, resolved, labels, split))


def relative_to_cwd(path: str) -> str:
    """Shorter paths in messages when the file lives under the working folder."""
    try:
        return os.path.relpath(path)
    except ValueError:
        return path


def iter_inputs(lines: Iterable[str], base_dir: Path, name: str = "list") -> Iterator[Item | Failure]:
    """The images a list names, streamed in its order: an `Item` (no labels) per usable line, a `Failure`
    per line that names none. Lines are `id,url_or_path[,anything...]` (a dataset's list as it is: the
    labels are ignored) or, when the first row is a header naming a path/url column (SOURCE_COLUMNS), CSV
    rows with an optional `id` column (default: the path). Nothing is held but the current line: ids are
    not checked for repeats (a repeated id gets a row per line; the rows' `line` tells them apart)."""
    rows: Iterator[tuple[int, list[str]]] = ((i, row) for i, row in enumerate(csv.reader(lines), start=1) if row and any(c.strip() for c in row))
    first = next(rows, None)
    if first is None:
        return
    header = [c.strip().lower() for c in first[1]]
    src_col = next((header.index(c) for c in SOURCE_COLUMNS if c in header), None)
    if src_col is not None:
        id_col = header.index("id") if "id" in header else None
    else:
        src_col, id_col = 1, 0
        rows = itertools.chain([first], rows)  # no header: the first row is a line like the others
    for line, row in rows:
        row = [c.strip() for c in row]
        src = row[src_col] if len(row) > src_col else ""
        rid = row[id_col] if id_col is not None and len(row) > id_col else src
        if len(row) <= src_col:
            what = "id,url_or_path" if id_col == 0 else f"a value in column {header[src_col]!r}"
            yield Failure(rid, "", f"malformed line: line {line}: expected {what}, got {len(row)} column(s)", line)
            continue
        if not rid:
            yield Failure(rid, src, f"malformed line: line {line}: empty id", line)
            continue
        try:
            yield Item(line, rid, resolve_source(src, base_dir), ())
        except ValueError as e:
            kind = "malformed line" if not src else "bad url"
            yield Failure(rid, src, f"{kind}: line {line}: {e}", line)


"""List files -> items to ingest, and per-line problems with their line numbers.

Two list formats are read (multi-label, task "multilabel"):
* the original one: `id,url,l0,...,lN` per line, no header (label names come
  from `--labels FILE` or default to `label_0..label_N`);
* a CSV with a header naming a path/url column and a `labels` column of
  `;`-separated names (the label set is the union unless `--labels` fixes it).

Single-label sources (task "multiclass", labels one-hot), the layouts classic
tutorials use:
* `read_folders`: a folder per class, optionally under train/ valid|validation/ test/;
* `read_regex`: class from each file's relative path by a regex (fastai's pets);
* `read_paddle_lists`: PaddleHub's label_list.txt + train/validate/test_list.txt;
* `read_url_lists`: one CLASS.txt/.csv of URLs per class (fastai's download_images).
Each returns a `ParsedList` like `parse_list`, so the rest of the job is shared.
"""

from __future__ import annotations

import csv
import io
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO
from urllib.parse import unquote, urlparse

SOURCE_COLUMNS = ("url", "path", "relative_path", "image", "file", "filename")
ALLOWED_SCHEMES = ("http", "https", "file", "")


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
    with open(path, encoding="utf-8") as f:
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
    if scheme not in ALLOWED_SCHEMES:
        raise ValueError(f"unsupported url scheme '{scheme}://' (use http, https, file or a local path)")
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
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace"), Path.cwd()
    p = Path(path)
    if not p.is_file():
        raise ListError(f"{path}: list file not found")
    return open(p, encoding="utf-8", errors="replace", newline=""), p.resolve().parent


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


def _parse_original(first, rows, base_dir, label_names, name) -> ParsedList:
    n_labels = len(label_names) if label_names else len(first[1]) - 2
    if n_labels < 1:
        raise ListError(f"{name}: line {first[0]}: expected id,url,l0,...,lN; got {len(first[1])} column(s)")
    names = list(label_names) if label_names else [f"label_{i}" for i in range(n_labels)]
    out = ParsedList([], [], names)
    seen: set[str] = set()
    for line, row in _chain(first, rows):
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
        _add(out, seen, line, rid, src, tuple(int(v) for v in row[2:]), base_dir)
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
        _add(out, seen, line, rid, src, tuple(vec), base_dir)
    out.label_names = names
    return out


def _chain(first, rows):
    yield first
    yield from rows


def _add(
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


# --------------------------------------------------------------------------- single-label sources

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp")
VAL_FOLDERS = ("valid", "validation", "val")
URL_LIST_EXTENSIONS = (".txt", ".csv")
PADDLE_SPLITS = (("train_list.txt", "train"), ("validate_list.txt", "val"), ("test_list.txt", "test"))


def images_under(folder: Path) -> list[Path]:
    """Image files below `folder` (extensions case-insensitive), hidden names skipped, in a stable order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [
            Path(dirpath) / f
            for f in sorted(filenames)
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return found


def _folder(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise ListError(f"{path}: {what} folder not found")
    return p.resolve()  # absolute: item paths must not be joined to the folder a second time


def _class_names(found: Iterable[str], fixed: list[str] | None, where: str) -> list[str]:
    """Sorted class names, or the fixed ones (--labels, or the dataset appended to) when they cover them."""
    found = sorted(set(found))
    if fixed is None:
        if not found:
            raise ListError(f"{where}: no classes found")
        return found
    extra = [c for c in found if c not in fixed]
    if extra:
        raise ListError(
            f"{where}: class(es) {', '.join(extra[:5])} not among the labels "
            f"({', '.join(fixed)}) set by --labels or the dataset appended to"
        )
    return list(fixed)


def _one_hot(k: int, n: int) -> tuple[int, ...]:
    return tuple(1 if i == k else 0 for i in range(n))


def _from_entries(
    entries: list[tuple[str, Path, str, str]], names: list[str], root: Path, out: ParsedList
) -> ParsedList:
    """(id, path, class, split) -> one-hot items."""
    index = {n: i for i, n in enumerate(names)}
    seen: set[str] = set()
    for rid, path, cls, split in entries:
        _add(out, seen, 0, rid, str(path), _one_hot(index[cls], len(names)), root, where=rid, split=split)
    out.label_names, out.task = names, "multiclass"
    return out


def read_folders(root: str | Path, fixed: list[str] | None = None) -> ParsedList:
    """DIR/CLASS/**/*.jpg, or DIR/{train,valid|validation|val[,test]}/CLASS/**/*.jpg with the splits kept."""
    root = _folder(root, "--from-folders")
    subdirs = {d.name.lower(): d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")}
    val = next((subdirs[n] for n in VAL_FOLDERS if n in subdirs), None)
    out = ParsedList([], [], [])
    train = subdirs.get("train")
    if train is not None and (val is not None or any(d.is_dir() for d in train.iterdir())):
        # without a validation folder, validation comes from train/ (--val-fraction); test/ is kept
        layout = [(train, "train" if val is not None else "")] + ([(val, "val")] if val is not None else [])
        layout += [(subdirs["test"], "test")] if "test" in subdirs else []
        names = ", ".join(f"{d.name}/" for d, _ in layout)
        out.notes.append(
            f"{root}: splits as given by {names}"
            if val is not None
            else f"{root}: {names} kept; no valid/ or validation/ folder, so validation is split "
            f"from train/ (--val-fraction/--val-count)"
        )
        other = sorted(set(subdirs.values()) - {d for d, _ in layout})
        if other:
            out.notes.append(f"{root}: ignoring folder(s) outside the splits: {', '.join(d.name for d in other[:5])}")
    else:
        layout = [(root, "")]
    entries, classes = [], set()
    for folder, split in layout:
        for p in images_under(folder):
            rel = p.relative_to(root).as_posix()
            parts = p.relative_to(folder).parts
            if len(parts) < 2:
                out.failures.append(Failure(rel, str(p), f"no class: {rel}: image is not inside a class folder"))
                continue
            entries.append((rel, p, parts[0], split))
            classes.add(parts[0])
    for folder, _ in layout:  # an empty class folder is still a class (the summary warns)
        classes.update(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ListError(f"{root}: no class folders (expected DIR/CLASS/*.jpg or DIR/train|valid|test/CLASS/*.jpg)")
    names = _class_names(classes, fixed, str(root))
    return _from_entries(entries, names, root, out)


def read_regex(root: str | Path, pattern: str, fixed: list[str] | None = None) -> ParsedList:
    """Every image below DIR; its class is the regex's first group, searched in the relative path ('/')."""
    root = _folder(root, "LIST")
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise ListError(f"--label-regex '{pattern}': {e}") from None
    if rx.groups < 1:
        raise ListError(
            f"--label-regex '{pattern}' has no group: put ( ) around the label, "
            r"e.g. '([^/]+)_\d+\.jpg$'"
        )
    out = ParsedList([], [], [])
    entries = []
    for p in images_under(root):
        rel = p.relative_to(root).as_posix()
        m = rx.search(rel)
        if not m or not m.group(1):
            out.failures.append(Failure(rel, str(p), f"no label: {rel} does not match --label-regex '{pattern}'"))
            continue
        entries.append((rel, p, m.group(1), ""))
    names = _class_names((e[2] for e in entries), fixed, f"{root} with --label-regex '{pattern}'")
    return _from_entries(entries, names, root, out)


def read_paddle_lists(root: str | Path, fixed: list[str] | None = None) -> ParsedList:
    """PaddleHub: label_list.txt (index = line) + train_list.txt, validate_list.txt [, test_list.txt]."""
    root = _folder(root, "--from-lists")
    if not (root / "label_list.txt").is_file():
        raise ListError(f"{root}: no label_list.txt (one class name per line)")
    names = read_label_names(root / "label_list.txt")
    if fixed is not None and fixed != names:
        raise ListError(
            f"{root / 'label_list.txt'}: labels differ from those set by --labels or the dataset "
            f"appended to ({', '.join(fixed)})"
        )
    if not (root / "train_list.txt").is_file():
        raise ListError(f"{root}: no train_list.txt (lines of 'relative/path label_index')")
    has_val = (root / "validate_list.txt").is_file()
    out = ParsedList([], [], names, task="multiclass")
    if not has_val:
        out.notes.append(f"{root}: no validate_list.txt: validation split taken from train_list.txt")
    index = {n: i for i, n in enumerate(names)}
    seen: set[str] = set()
    for fname, split in PADDLE_SPLITS:
        path = root / fname
        if not path.is_file():
            continue
        split = split if has_val else ("" if split == "train" else split)
        with open(path, encoding="utf-8", errors="replace") as f:
            for n, raw in enumerate(f, start=1):
                line = raw.strip()
                if not line:
                    continue
                where = f"{fname}: line {n}"
                parts = line.rsplit(None, 1)
                if len(parts) != 2:
                    out.failures.append(
                        Failure(line, "", f"malformed line: {where}: expected 'path label', got {line[:80]!r}", n)
                    )
                    continue
                rel, tok = parts
                k = int(tok) if tok.isdigit() else index.get(tok)
                if k is None or not 0 <= k < len(names):
                    out.failures.append(
                        Failure(
                            rel,
                            rel,
                            f"malformed line: {where}: label {tok!r} is neither an "
                            f"index 0..{len(names) - 1} nor a name in label_list.txt",
                            n,
                        )
                    )
                    continue
                _add(out, seen, n, rel, rel, _one_hot(k, len(names)), root, where=where, split=split)
    return out


def read_url_lists(root: str | Path, max_per_class: int | None = None, fixed: list[str] | None = None) -> ParsedList:
    """DIR/CLASS.txt or CLASS.csv: one URL (or path) per line, first column; id = the URL."""
    root = _folder(root, "--from-urls")
    files = sorted(
        p
        for p in root.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in URL_LIST_EXTENSIONS
    )
    if not files:
        raise ListError(f"{root}: no CLASS.txt or CLASS.csv files of URLs")
    names = _class_names((p.stem for p in files), fixed, str(root))
    out = ParsedList([], [], names, task="multiclass")
    index = {n: i for i, n in enumerate(names)}
    seen: set[str] = set()
    taken: dict[str, int] = {}
    capped: set[str] = set()
    for path in files:
        cls = path.stem
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            for n, row in enumerate(csv.reader(f), start=1):
                url = row[0].strip() if row else ""
                if not url or url.startswith("#") or (n == 1 and url.lower() in SOURCE_COLUMNS):
                    continue
                if max_per_class is not None and taken.get(cls, 0) >= max_per_class:
                    capped.add(cls)
                    break
                before = len(out.items)
                _add(out, seen, n, url, url, _one_hot(index[cls], len(names)), root, where=f"{path.name}: line {n}")
                taken[cls] = taken.get(cls, 0) + len(out.items) - before
    if capped:
        out.notes.append(
            f"--max-per-class {max_per_class}: {len(capped)} class(es) capped "
            f"({', '.join(sorted(capped)[:5])}{', ...' if len(capped) > 5 else ''})"
        )
    return out

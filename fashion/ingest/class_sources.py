"""Single-label sources (task "multiclass", labels one-hot), the layouts classic tutorials use.

* `read_folders`: a folder per class, optionally under train/ valid|validation/ test/;
* `read_regex`: class from each file's relative path by a regex (fastai's pets);
* `read_paddle_lists`: PaddleHub's label_list.txt + train/validate/test_list.txt;
* `read_url_lists`: one CLASS.txt/.csv of URLs per class (fastai's download_images).
Each returns a `ParsedList` like `sources.parse_list`, so the rest of the job is shared.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable
from pathlib import Path

from fashion.data.sources import (
    IMAGE_EXTENSIONS,
    SOURCE_COLUMNS,
    Failure,
    ListError,
    ParsedList,
    add_item,
    read_label_names,
)

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
        add_item(out, seen, 0, rid, str(path), _one_hot(index[cls], len(names)), root, where=rid, split=split)
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
        shown = ", ".join(f"{d.name}/" for d, _ in layout)
        out.notes.append(
            f"{root}: splits as given by {shown}"
            if val is not None
            else f"{root}: {shown} kept; no valid/ or validation/ folder, so validation is split "
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
        with open(path, encoding="utf-8-sig", errors="replace") as f:
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
                add_item(out, seen, n, rel, rel, _one_hot(k, len(names)), root, where=where, split=split)
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
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
            for n, row in enumerate(csv.reader(f), start=1):
                url = row[0].strip() if row else ""
                if not url or url.startswith("#") or (n == 1 and url.lower() in SOURCE_COLUMNS):
                    continue
                if max_per_class is not None and taken.get(cls, 0) >= max_per_class:
                    capped.add(cls)
                    break
                before = len(out.items)
                add_item(out, seen, n, url, url, _one_hot(index[cls], len(names)), root, where=f"{path.name}: line {n}")
                taken[cls] = taken.get(cls, 0) + len(out.items) - before
    if capped:
        out.notes.append(
            f"--max-per-class {max_per_class}: {len(capped)} class(es) capped "
            f"({', '.join(sorted(capped)[:5])}{', ...' if len(capped) > 5 else ''})"
        )
    return out

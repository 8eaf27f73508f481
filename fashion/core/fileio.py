"""Files written whole or not at all, and the small CSV helpers every stage shares.

Every output goes to a temporary name in the same folder and is renamed into
place, so a killed run never leaves a truncated file under the final name.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from fashion.core.storage import RemotePath

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix, so writers that infer the format from it work);
    renamed onto `path` when the block ends, removed if it raises."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{threading.get_ident()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path | RemotePath, data: bytes, sync: bool = True) -> None:
    """Write via a temporary file in the same folder, then rename (fsync first unless `sync=False`).
    On an object store one upload is already whole or nothing: written directly."""
    if isinstance(path, RemotePath):
        path.write_bytes(data)
        return
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path | RemotePath, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path | RemotePath, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def save_model_atomic(model: Any, path: str | Path) -> None:
    """`model.save` under a temporary `.keras` name, then rename (on one process of several: alone)."""
    from fashion.core.cluster import local_only

    with atomic_path(path) as tmp, local_only():
        model.save(tmp)


def save_figure_atomic(fig: Any, path: str | Path, dpi: int = 100) -> None:
    """A matplotlib figure as PNG under a temporary name, then rename."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# A cell starting with one of these is run as a formula by spreadsheets (OWASP "CSV injection"):
# such id/source cells are written with a leading `'`, which spreadsheets show as text and
# read_csv_rows removes again. Cells already starting with `'` before one of them get one more,
# so every id reads back exactly as written.
_FORMULA = re.compile(r"'*[=+\-@\t\r]")
ESCAPED_COLUMNS = ("id", "source", "input")


def escape_cell(cell: str) -> str:
    return "'" + cell if _FORMULA.match(cell) else cell


def unescape_cell(cell: str) -> str:
    return cell[1:] if cell.startswith("'") and _FORMULA.match(cell, 1) else cell


def _columns(header: list[str]) -> list[int]:
    return [i for i, name in enumerate(header) if name in ESCAPED_COLUMNS]


def csv_text(header: list[str], rows: Iterable[Iterable[Any]]) -> str:
    """CSV text with a header row; id/source/input cells escaped against spreadsheet formulas."""
    cols = _columns(header)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        row = list(row)
        for i in cols:
            if i < len(row) and isinstance(row[i], str):
                row[i] = escape_cell(row[i])
        w.writerow(row)
    return buf.getvalue()


def read_csv_rows(path: Path | RemotePath) -> list[list[str]]:
    """Rows of a CSV written by `csv_text`, without its header, cells as they were given; [] when absent."""
    if not path.is_file():
        return []
    rows = list(csv.reader(io.StringIO(path.read_bytes().decode("utf-8"), newline="")))
    if not rows:
        return []
    cols = _columns(rows[0])
    for row in rows[1:]:
        for i in cols:
            if i < len(row):
                row[i] = unescape_cell(row[i])
    return rows[1:]

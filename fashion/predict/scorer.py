"""The scorer behind `detect.py --list` (fashion.predict.score runs it once --out is locked): the list
streamed through a pool of threads that fetch and decode, batches through the model, rows into Parquet
shards, then failures.csv and summary.json. See score.py for the layout of --out.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from fashion.config.bundle import DetectConfig
from fashion.core import diskfull, fileio
from fashion.core.errors import EXIT_DISK_FULL, EXIT_FAILURES, EXIT_INTERRUPTED, EXIT_OK
from fashion.data.fetching import Fetcher, FetchError
from fashion.data.imaging import ImageError
from fashion.data.ordered import ordered_map
from fashion.data.sources import Failure, Item, iter_inputs, open_list
from fashion.predict import bundle as prediction
from fashion.predict.detect import CONSTANT, Detector, multilabel_result, single_result
from fashion.predict.score import FAILURES, PARTIAL, RUN, SUMMARY, ScoreError, shard_name

FIXED_COLUMNS = ("id", "input", "line", "labels", "constant_labels", "class", "score")
# what makes two runs' rows the same rows: a rerun that differs in one of these is refused
IDENTITY = ("bundle", "meta_sha256", "model_sha256", "list_sha256", "shard_size", "thresholds", "tta")


def sha256_of(path: Path) -> str:
    return fileio.sha256_file(path)


@dataclass
class Row:
    """One line of the list on its way: the image's pixels, or why there are none."""

    index: int  # the row's place among the list's rows: its shard is index // shard_size
    item: Item | None
    failure: Failure | None
    pixels: np.ndarray | None = None


class Scorer:
    """One `detect.py --list` run into `out` (locked by the caller)."""

    def __init__(self, cfg: DetectConfig, bundle: prediction.Bundle, out: Path, command: str):
        self.cfg, self.bundle, self.out, self.command = cfg, bundle, out, command
        self.partial = out / PARTIAL
        self.detector = Detector(cfg, bundle)
        self.single = self.detector.single
        self.columns = list(self.detector.classes if self.single else bundle.labels)
        clash = sorted(set(self.columns) & set(FIXED_COLUMNS))
        if clash:
            raise ScoreError(f"{bundle.path}: label {clash[0]!r} is also a column of the output; rename the label")
        self.fetcher = Fetcher(
            timeout=cfg.timeout, min_bytes=0, max_bytes=cfg.max_bytes, retries=2, pool_size=cfg.workers
        )

    # ---- the list: where it is, how many rows, the same one as before?
    def _list_file(self) -> Path:
        """The list as a file: standard input, a folder or a glob are written to OUT/.partial/ first
        (temp name, then rename), so a rerun reads the same rows again."""
        given = self.cfg.list or ""
        if given != "-" and Path(given).is_file():
            return Path(given)
        spooled = self.partial / "inputs.list"
        with fileio.atomic_path(spooled) as tmp, open(tmp, "wb") as f:
            if given == "-":
                shutil.copyfileobj(sys.stdin.buffer, f, 1 << 20)  # in pieces: a long list is never held whole
            else:
                paths = prediction.expand_inputs([given])
                root = Path(given) if Path(given).is_dir() else Path.cwd()
                n = 0
                for path in paths:
                    if not Path(path).is_file():
                        continue
                    f.write(f"{_rel(path, root)},{Path(path).resolve()}\n".encode())
                    n += 1
                if not n:
                    raise ScoreError(f"--list {given}: no such list file, folder or matching images")
        return spooled

    def _count_rows(self, path: Path) -> int:
        stream, base = open_list(str(path))
        with stream:
            return sum(1 for _ in iter_inputs(stream, base, str(path)))

    def _rows(self, path: Path, skip: set[int]) -> Iterator[Row]:
        """The list's rows in order, without those of the shards in `skip`."""
        stream, base = open_list(str(path))
        with stream:
            for i, entry in enumerate(iter_inputs(stream, base, str(path))):
                if i // self.cfg.shard_size in skip:
                    continue
                if isinstance(entry, Failure):
                    yield Row(i, None, entry)
                else:
                    yield Row(i, entry, None)

    def _identity(self, list_path: Path) -> dict[str, Any]:
        model_file = self.bundle.path / "model.keras"
        if not model_file.is_file():  # a .tflite bundle: the file given
            model_file = Path(self.cfg.model or "")
        return {
            "bundle": str(self.bundle.path.resolve()),
            "meta_sha256": sha256_of(self.bundle.path / "meta.json"),
            "model_sha256": sha256_of(model_file) if model_file.is_file() else "",
            "list": self.cfg.list,
            "list_sha256": sha256_of(list_path),
            "shard_size": self.cfg.shard_size,
            "thresholds": [float(t) for t in self.detector.thresholds],
            "tta": self.cfg.tta,
            "labels": self.columns,
            "task": self.bundle.task,
        }

    def _check_same(self, before: dict[str, Any], now: dict[str, Any], where: Path) -> None:
        differ = [k for k in IDENTITY if before.get(k) != now.get(k)]
        if not differ:
            return
        if {"bundle", "meta_sha256", "model_sha256"} & set(differ):
            why = (
                f"it holds rows of the bundle {before.get('bundle')} (meta.json sha256 {str(before.get('meta_sha256'))[:12]}), "
                f"this run's is {now['bundle']} (meta.json sha256 {now['meta_sha256'][:12]}): rows of two models never "
                f"mix in one --out"
            )
        elif "list_sha256" in differ:
            why = f"it holds rows of another list ({before.get('list')}, sha256 {str(before.get('list_sha256'))[:12]})"
        else:
            why = "it was scored with other options: " + ", ".join(
                f"{k.replace('_', '-')} {before.get(k)!r} (now {now.get(k)!r})" for k in differ
            )
        raise ScoreError(f"--out {self.out}: {why}; score into a new --out (see {where.name})")

    # ---- the run
    def run(self) -> int:
        created = not self.partial.exists()
        self.partial.mkdir(parents=True, exist_ok=True)
        try:
            list_path = self._list_file()
            identity = self._identity(list_path)
            summary_path, run_path = self.out / SUMMARY, self.partial / RUN
            if summary_path.is_file():  # a finished output: the same command again changes nothing
                summary = json.loads(summary_path.read_text(encoding="utf-8"))
                self._check_same(summary, identity, summary_path)
                print(f"{self.out}: already scored by this bundle and list; nothing to do")
                _clear(self.partial)
                return self._report(summary)
            if run_path.is_file():
                self._check_same(json.loads(run_path.read_text(encoding="utf-8")), identity, run_path)
            else:
                fileio.atomic_write_json(run_path, identity)
        except ScoreError:
            if created:  # a refused run leaves --out as it found it
                _clear(self.partial)
            raise
        n_rows = self._count_rows(list_path)
        n_shards = -(-n_rows // self.cfg.shard_size)
        done = {k for k in range(n_shards) if (self.out / shard_name(k)).is_file()}
        if done:
            print(f"resuming: {len(done)} of {n_shards} shard(s) already in {self.out}")
        started = time.time()
        try:
            self._score(list_path, n_rows, done)
        except KeyboardInterrupt:
            kept = sum(1 for k in range(n_shards) if (self.out / shard_name(k)).is_file())
            print(
                f"\ninterrupted: {kept}/{n_shards} shard(s) complete and kept in {self.out}; "
                f"rerun the same command to continue",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
        except OSError as e:
            if not diskfull.is_disk_full(e):
                raise
            return self._disk_full(n_shards, n_rows)
        finally:
            self.fetcher.close()
        summary = self._finish(identity, n_rows, n_shards, started)
        return self._report(summary)

    def _prepare(self, row: Row) -> Row:
        """On a pool thread: the image's pixels at the model's input size, or the reason it has none."""
        if row.item is None:
            return row
        item, size = row.item, self.bundle.input_size
        try:
            row.pixels = prediction.load_image(item.source, self.fetcher, size, self.cfg.max_pixels)
        except (FetchError, ImageError, OSError) as e:
            row.failure = Failure(item.id, item.source, str(e), item.line)
        return row

    def _score(self, list_path: Path, n_rows: int, done: set[int]) -> None:
        size = self.cfg.shard_size
        already = sum(min(size, n_rows - k * size) for k in done)
        window = max(2 * self.cfg.batch_size, 2 * self.cfg.workers)
        rows = ordered_map(self._prepare, self._rows(list_path, done), workers=self.cfg.workers, window=window)
        bar = tqdm(total=n_rows, initial=already, unit="img", desc="score", dynamic_ncols=True, file=sys.stderr)
        shard: ShardBuffer | None = None
        failed = 0
        try:
            for row in rows:
                k = row.index // size
                if shard is None or shard.k != k:
                    if shard is not None:
                        self._write(shard)
                    shard = ShardBuffer(k, self)
                shard.add(row)
                if row.failure is not None:
                    failed += 1
                    bar.set_postfix(failed=failed, refresh=False)
                bar.update(1)
            if shard is not None:
                self._write(shard)
        finally:
            rows.close()  # the pool stops; downloads in flight see the fetcher's cancel (run: close)
            bar.close()

    def _write(self, shard: ShardBuffer) -> None:
        """The shard's state, then its Parquet file: written under temporary names, renamed when whole."""
        import pyarrow.parquet as pq

        shard.flush()
        state = {
            "shard": shard.k,
            "rows": len(shard.ids),
            "failures": [[f.id, f.source, f.reason, f.line] for f in shard.failures],
            "positives": shard.positives.tolist(),
        }
        fileio.atomic_write_json(self.partial / f"{shard_name(shard.k)}.json", state)
        with fileio.atomic_path(self.out / shard_name(shard.k)) as tmp:
            pq.write_table(shard.table(), tmp)

    def _finish(self, identity: dict[str, Any], n_rows: int, n_shards: int, started: float) -> dict[str, Any]:
        """failures.csv, then summary.json (last: an output with one is complete); .partial/ goes."""
        failures: list[list[Any]] = []
        positives = np.zeros(len(self.columns), np.int64)
        scored = 0
        for k in range(n_shards):
            state = json.loads((self.partial / f"{shard_name(k)}.json").read_text(encoding="utf-8"))
            failures += state["failures"]
            positives += np.asarray(state["positives"], np.int64)
            scored += state["rows"]
        fileio.atomic_write_text(self.out / FAILURES, fileio.csv_text(["id", "input", "reason", "line"], failures))
        kinds = Counter(str(f[2]).split(":", 1)[0] for f in failures)
        summary = {
            **identity,
            "shards": [shard_name(k) for k in range(n_shards)],
            "counts": {
                "lines": n_rows,
                "scored": scored,
                "failed": len(failures),
                "failures_by_kind": dict(kinds.most_common()),
            },
            "positive_rate": {c: (float(n) / scored if scored else 0.0) for c, n in zip(self.columns, positives)},
            "command": self.command,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(time.time() - started, 1),
        }
        fileio.atomic_write_json(self.out / SUMMARY, summary)
        _clear(self.partial)
        return summary

    def _report(self, summary: dict[str, Any]) -> int:
        """The counts and the share of the catalogue each label was given (one that fires on everything
        or on nothing shows at once)."""
        c = summary["counts"]
        what = "class" if self.single else "label"
        print(f"{c['scored']:,} of {c['lines']:,} line(s) scored into {self.out} ({len(summary['shards'])} shard(s))")
        width = max(len(x) for x in summary["positive_rate"])
        print(f"share of the scored images given each {what}:")
        for name, rate in summary["positive_rate"].items():
            flag = "   <- every image" if rate >= 0.99 else "   <- no image" if rate == 0 else ""
            print(f"  {name:<{width}} {rate:7.1%}{flag}")
        if c["failed"]:
            kinds = ", ".join(f"{k} {n}" for k, n in c["failures_by_kind"].items())
            print(f"{c['failed']:,} line(s) failed ({kinds}): {self.out / FAILURES}", file=sys.stderr)
            return EXIT_FAILURES
        return EXIT_OK if c["lines"] else EXIT_FAILURES

    def _disk_full(self, n_shards: int, n_rows: int) -> int:
        kept = [k for k in range(n_shards) if (self.out / shard_name(k)).is_file()]
        written = sum((self.out / shard_name(k)).stat().st_size for k in kept)
        rows_kept = sum(min(self.cfg.shard_size, n_rows - k * self.cfg.shard_size) for k in kept)
        per_row = written / rows_kept if rows_kept else 0
        need = per_row * (n_rows - rows_kept)
        try:
            free = f"{diskfull.size(shutil.disk_usage(self.out).free)} free now"
        except OSError:
            free = "free space unknown"
        print(
            f"error: {self.out}: disk full; {len(kept)}/{n_shards} shard(s) complete and kept; "
            f"the rest needs about {diskfull.size(need) if per_row else 'an unknown amount'} more ({free}); "
            f"free space and rerun the same command",
            file=sys.stderr,
        )
        return EXIT_DISK_FULL


class ShardBuffer:
    """One shard's rows while it fills: images wait in a batch for the model, results in columns."""

    def __init__(self, k: int, scorer: Scorer):
        self.k, self.s = k, scorer
        n = len(scorer.columns)
        self.batch: list[Row] = []
        self.ids: list[str] = []
        self.inputs: list[str] = []
        self.lines: list[int] = []
        self.probs: list[np.ndarray] = []
        self.chosen: list[list[str]] = []
        self.scores: list[float] = []  # single-label: the chosen class's probability
        self.constant: list[list[str]] = []
        self.failures: list[Failure] = []
        self.positives = np.zeros(n, np.int64)

    def add(self, row: Row) -> None:
        if row.failure is not None:
            self.failures.append(row.failure)
            return
        self.batch.append(row)
        if len(self.batch) >= self.s.cfg.batch_size:
            self.flush()

    def flush(self) -> None:
        """The waiting images through the model, as one batch."""
        if not self.batch:
            return
        rows, self.batch = self.batch, []
        images = np.stack([r.pixels for r in rows if r.pixels is not None])  # (a batch holds only decoded images)
        probs = prediction.predict_arrays(self.s.bundle, images, tta=self.s.cfg.tta).astype(np.float32)
        d = self.s.detector
        for row, p in zip(rows, probs):
            assert row.item is not None
            self.ids.append(row.item.id)
            self.inputs.append(row.item.source)
            self.lines.append(row.item.line)
            self.probs.append(p)
            if self.s.single:
                r = single_result(p, d.classes, 1, d.cut)
                self.chosen.append([r["class"]])
                self.scores.append(float(p[d.classes.index(r["class"])]))
                self.positives[d.classes.index(r["class"])] += 1
            else:
                r = multilabel_result(p, self.s.bundle.labels, d.thresholds, d.always, d.never, None)
                self.chosen.append(r["labels"])
                self.constant.append([lb for lb in r["labels"] if r["source"][lb] == CONSTANT])
                for lb in r["labels"]:
                    self.positives[self.s.columns.index(lb)] += 1

    def table(self) -> Any:
        import pyarrow as pa

        probs = np.stack(self.probs) if self.probs else np.zeros((0, len(self.s.columns)), np.float32)
        cols: dict[str, Any] = {
            "id": pa.array(self.ids, pa.string()),
            "input": pa.array(self.inputs, pa.string()),
            "line": pa.array(self.lines, pa.int64()),
        }
        for j, name in enumerate(self.s.columns):
            cols[name] = pa.array(probs[:, j], pa.float32())
        cols["labels"] = pa.array(self.chosen, pa.list_(pa.string()))
        if self.s.single:
            cols["class"] = pa.array([c[0] for c in self.chosen], pa.string())
            cols["score"] = pa.array(self.scores, pa.float32())
        else:
            cols["constant_labels"] = pa.array(self.constant, pa.list_(pa.string()))
        return pa.table(cols)


def _rel(path: str, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return path


def _clear(partial: Path) -> None:
    shutil.rmtree(partial, ignore_errors=True)

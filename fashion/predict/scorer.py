"""The scorer behind `detect.py --list` (fashion.predict.score runs it once --out is locked): the list
streamed through a pool of threads that fetch and decode, batches through the model, rows into Parquet
shards (parquet_shard.py), then failures.csv and summary.json; and `--retry-failed`, which scores again
the lines whose failure a second try may pass and merges them into the same output. See score.py for
the layout of --out.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from fashion.config.bundle import DetectConfig
from fashion.core import diskfull, fileio, interrupts, storage
from fashion.core.errors import EXIT_DISK_FULL, EXIT_FAILURES, EXIT_INTERRUPTED, EXIT_OK
from fashion.core.storage import Location, RemotePath
from fashion.data.fetching import Fetcher, FetchError, transient
from fashion.data.imaging import ImageError
from fashion.data.ordered import ordered_map
from fashion.data.sources import Failure, Item, iter_inputs, open_list
from fashion.predict import bundle as prediction
from fashion.predict.detect import Detector
from fashion.predict.parquet_shard import FIXED_COLUMNS, Row, Scoring, ShardBuffer, read_state
from fashion.predict.score import FAILURES, PARTIAL, RUN, SUMMARY, ScoreError, shard_name

# what makes two runs' rows the same rows: a rerun that differs in one of these is refused
IDENTITY = ("bundle", "meta_sha256", "model_sha256", "list_sha256", "shard_size", "thresholds", "tta")
RETRY = "retry.json"  # in .partial/: a --retry-failed run's plan, until summary.json takes it in
# --workers by default: URLs wait on the network, so many in flight; local files need only the cores, and
# more threads contend with the model (2,500 local photos, 96 px bundle: 4 threads 45 s, 32 threads 54 s)
URL_WORKERS = 32


class Scorer:
    """One `detect.py --list` run into `out` (locked by the caller)."""

    def __init__(self, cfg: DetectConfig, bundle: prediction.Bundle, out: Location, command: str):
        self.cfg, self.bundle, self.out, self.command = cfg, bundle, out, command
        self.partial = out / PARTIAL
        detector = Detector(cfg, bundle)
        columns = list(detector.classes if detector.single else bundle.labels)
        clash = sorted(set(columns) & set(FIXED_COLUMNS))
        if clash:
            raise ScoreError(f"{bundle.path}: label {clash[0]!r} is also a column of the output; rename the label")
        self.scoring = Scoring(bundle, detector, columns, cfg.batch_size, cfg.tta)
        self.workers = cfg.workers or URL_WORKERS  # until the list's first image says local (_count_rows)
        self.fetcher = make_fetcher(cfg, self.workers)

    # ---- the list: where it is, how many rows, the same one as before?
    def _list_file(self) -> Path:
        """The list as a file: standard input, a folder or a glob are written to OUT/.partial/ first
        (temp name, then rename), so a rerun reads the same rows again."""
        given = self.cfg.list or ""
        if given != "-" and Path(given).is_file():
            return Path(given)
        if isinstance(self.partial, RemotePath):
            raise ScoreError(
                f"--list {given}: with --out on an object store the list must be a file (not -, a folder or a glob)"
            )
        spooled = self.partial / "inputs.list"
        with fileio.atomic_path(spooled) as tmp, open(tmp, "wb") as f:
            if given == "-":
                shutil.copyfileobj(sys.stdin.buffer, f, 1 << 20)  # in pieces: a long list is never held whole
            else:
                root = Path(given) if Path(given).is_dir() else Path.cwd()
                n = 0
                for path in prediction.expand_inputs([given]):
                    if Path(path).is_file():
                        f.write(f"{_rel(path, root)},{Path(path).resolve()}\n".encode())
                        n += 1
                if not n:
                    raise ScoreError(f"--list {given}: no such list file, folder or matching images")
        return spooled

    def _count_rows(self, path: Path) -> int:
        """The list's rows; on the way, --workers' default from its first image (a URL or a local file)."""
        stream, base = open_list(str(path))
        n = 0
        with stream:
            for entry in iter_inputs(stream, base, str(path)):
                if n == 0 and self.cfg.workers is None and isinstance(entry, Item):
                    self.workers = URL_WORKERS if prediction.is_url(entry.source) else 2 * (os.cpu_count() or 1)
                n += 1
        return n

    def _rows(self, path: Path, skip: set[int]) -> Iterator[Row]:
        """The list's rows in order, without those of the shards in `skip`."""
        size = self.cfg.shard_size
        stream, base = open_list(str(path))
        with stream:
            for i, entry in enumerate(iter_inputs(stream, base, str(path))):
                if i // size not in skip:
                    yield Row(i // size, None, entry) if isinstance(entry, Failure) else Row(i // size, entry, None)

    def _identity(self, list_path: Path) -> dict[str, Any]:
        model_file = self.bundle.path / "model.keras"
        if not model_file.is_file():  # a .tflite bundle: the file given
            model_file = Path(self.cfg.model or "")
        return {
            "bundle": str(self.bundle.path.resolve()),
            "meta_sha256": fileio.sha256_file(self.bundle.path / "meta.json"),
            "model_sha256": fileio.sha256_file(model_file) if model_file.is_file() else "",
            "list": self.cfg.list,
            "list_sha256": fileio.sha256_file(list_path),
            "shard_size": self.cfg.shard_size,
            "thresholds": [float(t) for t in self.scoring.detector.thresholds],
            "tta": self.cfg.tta,
            "labels": self.scoring.columns,
            "task": self.bundle.task,
        }

    def _check_same(self, before: dict[str, Any], now: dict[str, Any], where: Location) -> None:
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
            if summary_path.is_file():  # a finished output
                summary = json.loads(summary_path.read_text(encoding="utf-8"))
                self._check_same(summary, identity, summary_path)
                if self.cfg.retry_failed:
                    return self._retry(summary)
                if (self.partial / RETRY).is_file():
                    raise ScoreError(
                        f"--out {self.out}: a --retry-failed run was interrupted; add --retry-failed to finish it"
                    )
                print(f"{self.out}: already scored by this bundle and list; nothing to do")  # changes nothing
                _clear(self.partial)
                return self._report(summary)
            if self.cfg.retry_failed:
                raise ScoreError(f"--retry-failed: {self.out} is not finished yet; run without it first")
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
        done = self.finished(range(n_shards))
        if done:
            print(f"resuming: {len(done)} of {n_shards} shard(s) already in {self.out}")
        started = time.time()
        size = self.cfg.shard_size
        already = sum(min(size, n_rows - k * size) for k in done)
        code = self._score(self._rows(list_path, done), range(n_shards), n_rows, already)
        if code is not None:
            return code
        summary = self._summary(identity, range(n_shards), n_rows, started)
        return self._report(summary)

    def _prepare(self, row: Row) -> Row:
        return prepare(row, self.fetcher, self.bundle.input_size, self.cfg.max_pixels)

    def finished(self, shards: range) -> set[int]:
        """The shards of `shards` whose Parquet file is there (one listing: on an object store each look is a request)."""
        present = {p.name for p in self.out.glob("part-*.parquet")}
        return {k for k in shards if shard_name(k) in present}

    def _score(self, todo: Iterator[Row], shards: range, total: int, initial: int) -> int | None:
        """`todo` scored into its shards; None when done, else the exit code of a stop (Ctrl-C, full disk)."""
        bar = tqdm(total=total, initial=initial, unit="img", desc="score", dynamic_ncols=True, file=sys.stderr)
        try:
            if self.cfg.engine == "beam":
                from fashion.predict import score_beam

                score_beam.score(self, todo, shards, bar)
            else:
                self._score_here(todo, bar)
        except KeyboardInterrupt:
            kept = len(self.finished(shards))
            bar.close()
            print(
                f"\ninterrupted: {kept}/{len(shards)} shard(s) complete and kept in {self.out}; "
                f"rerun the same command to continue",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
        except OSError as e:
            if not diskfull.is_disk_full(e):
                raise
            bar.close()
            return self._disk_full(shards)
        finally:
            bar.close()
            self.fetcher.close()
        return None

    def _score_here(self, todo: Iterator[Row], bar: Any) -> None:
        """The local engine: a pool of threads fetches and decodes, batches go through the model here."""
        window = max(2 * self.cfg.batch_size, 2 * self.workers)
        rows = ordered_map(self._prepare, todo, workers=self.workers, window=window)
        shard: ShardBuffer | None = None
        failed = 0
        try:
            for row in rows:
                interrupts.check()  # a Ctrl-C that TensorFlow's code swallowed on its way (core/interrupts)
                if shard is None or shard.k != row.shard:
                    if shard is not None:
                        shard.write(self.out, self.partial)
                    shard = ShardBuffer(row.shard, self.scoring)
                shard.add(row)
                if row.failure is not None:
                    failed += 1
                    bar.set_postfix(failed=failed, refresh=False)
                bar.update(1)
            if shard is not None:
                shard.write(self.out, self.partial)
        finally:
            rows.close()  # the pool stops; downloads in flight see the fetcher's cancel

    # ---- --retry-failed
    def _retry(self, summary: dict[str, Any]) -> int:
        """The lines of failures.csv whose reason a second try may pass, scored into new shards after the
        others; failures.csv and summary.json then say what is left. Its plan is written first, so an
        interrupted retry continues (add --retry-failed again) and never scores a line twice."""
        plan_path = self.partial / RETRY
        if plan_path.is_file():
            plan = json.loads(plan_path.read_text(encoding="utf-8"))
        else:
            rows = list(csv.DictReader(io.StringIO((self.out / FAILURES).read_text(encoding="utf-8"), newline="")))
            again = [transient(r["reason"]) for r in rows]
            as_list = [[r["id"], r["input"], r["reason"], int(r["line"] or 0)] for r in rows]
            plan = {
                "first": len(summary["shards"]),
                "retry": [r for r, a in zip(as_list, again) if a],
                "keep": [r for r, a in zip(as_list, again) if not a],
            }
            if not plan["retry"]:
                print(f"nothing to retry: the {len(rows)} failure(s) in {self.out / FAILURES} are permanent")
                _clear(self.partial)
                return self._report(summary)
            fileio.atomic_write_json(plan_path, plan)
        size, first, retry = self.cfg.shard_size, plan["first"], plan["retry"]
        shards = range(first, first + -(-len(retry) // size))
        done = self.finished(shards)
        print(
            f"retrying {len(retry)} line(s) whose failure may pass now ({len(plan['keep'])} permanent left as they are)"
        )
        todo = (
            Row(first + j // size, Item(r[3], r[0], r[1], ()), None)
            for j, r in enumerate(retry)
            if first + j // size not in done
        )
        initial = sum(min(size, len(retry) - (k - first) * size) for k in done)
        code = self._score(todo, shards, len(retry), initial)
        if code is not None:
            return code
        merged = self._summary(summary, shards, summary["counts"]["lines"], time.time(), before=summary, plan=plan)
        return self._report(merged)

    # ---- the end
    def _summary(
        self,
        identity: dict[str, Any],
        shards: range,
        n_rows: int,
        started: float,
        before: dict[str, Any] | None = None,
        plan: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """failures.csv, then summary.json (last: an output with one is complete); .partial/ goes. After a
        retry (`before`, `plan`): the earlier counts plus the new shards', the permanent failures kept."""
        failures: list[list[Any]] = list(plan["keep"]) if plan else []
        columns = self.scoring.columns
        positives = np.zeros(len(columns), np.int64)
        scored = 0
        if before is not None:
            positives += np.asarray([before["positives"][c] for c in columns], np.int64)
            scored = before["counts"]["scored"]
        for k in shards:
            state = read_state(self.partial, k)
            failures += state["failures"]
            positives += np.asarray(state["positives"], np.int64)
            scored += state["rows"]
        failures.sort(key=lambda f: f[3])  # list order
        fileio.atomic_write_text(self.out / FAILURES, fileio.csv_text(["id", "input", "reason", "line"], failures))
        kinds = Counter(str(f[2]).split(":", 1)[0] for f in failures)
        summary = {
            **identity,
            "shards": [*(before["shards"] if before else []), *(shard_name(k) for k in shards)],
            "counts": {
                "lines": n_rows,
                "scored": scored,
                "failed": len(failures),
                "failures_by_kind": dict(kinds.most_common()),
            },
            "positives": {c: int(n) for c, n in zip(columns, positives)},
            "positive_rate": {c: (float(n) / scored if scored else 0.0) for c, n in zip(columns, positives)},
            "command": before["command"] if before else self.command,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if before is None:
            summary["seconds"] = round(time.time() - started, 1)
        else:
            summary["retries"] = [
                *before.get("retries", []),
                {"command": self.command, "retried": len(plan["retry"]) if plan else 0},
            ]
        fileio.atomic_write_json(self.out / SUMMARY, summary)
        _clear(self.partial)
        return summary

    def _report(self, summary: dict[str, Any]) -> int:
        """The counts and the share of the catalogue each label was given (one that fires on everything
        or on nothing shows at once)."""
        c = summary["counts"]
        what = "class" if self.scoring.single else "label"
        print(f"{c['scored']:,} of {c['lines']:,} line(s) scored into {self.out} ({len(summary['shards'])} shard(s))")
        width = max(len(x) for x in summary["positive_rate"])
        print(f"share of the scored images given each {what}:")
        for name, rate in summary["positive_rate"].items():
            flag = "   <- every image" if rate >= 0.99 else "   <- no image" if rate == 0 else ""
            print(f"  {name:<{width}} {rate:7.1%}{flag}")
        if c["failed"]:
            kinds = ", ".join(f"{k} {n}" for k, n in c["failures_by_kind"].items())
            print(f"{c['failed']:,} line(s) failed ({kinds}): {self.out / FAILURES}", file=sys.stderr)
            retryable = sum(1 for k in c["failures_by_kind"] if transient(k))
            if retryable:
                print("some may pass on a second try: add --retry-failed to the same command", file=sys.stderr)
            return EXIT_FAILURES
        return EXIT_OK if c["lines"] else EXIT_FAILURES

    def _disk_full(self, shards: range) -> int:
        """diskfull's one line (ingestion's): the shards kept and about how much more the rest needs."""
        kept = sorted(self.finished(shards))
        written = sum((self.out / shard_name(k)).stat().st_size for k in kept)
        rows_kept = sum(read_state(self.partial, k)["rows"] for k in kept)
        left = (len(shards) - len(kept)) * self.cfg.shard_size  # at most: the last shard may be shorter
        progress = diskfull.Progress(len(kept), len(shards), left, written / rows_kept if rows_kept else 0.0, 65536)
        print(f"error: {diskfull.message(self.out, progress)}", file=sys.stderr)
        return EXIT_DISK_FULL


def _rel(path: str, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return path


def _clear(partial: Location) -> None:
    storage.rmtree(partial)


def make_fetcher(cfg: DetectConfig, workers: int) -> Fetcher:
    """The scoring run's byte source (both engines): --timeout, --max-bytes, two retries, a connection per worker."""
    return Fetcher(timeout=cfg.timeout, min_bytes=0, max_bytes=cfg.max_bytes, retries=2, pool_size=workers)


def prepare(row: Row, fetcher: Fetcher, size: int, max_pixels: int) -> Row:
    """On a pool thread: the image's pixels at the model's input size, or the reason it has none."""
    if row.item is None:
        return row
    try:
        row.pixels = prediction.load_image(row.item.source, fetcher, size, max_pixels)
    except (FetchError, ImageError, OSError) as e:
        row.failure = Failure(row.item.id, row.item.source, str(e), row.item.line)
    return row

"""The `generate_dataset.py` job: list -> fetched, verified, resized images -> sharded TFRecords.

Resumable by construction: every shard's content is fixed by the plan
(the list, the split and the options), a shard is written to a temporary name
and renamed when complete, and its bookkeeping is kept in `OUT/.partial/`
until the manifest is written last. Kill the process at any point and rerun
the same command: finished shards are kept, downloads come from the cache,
and every good line ends up in the dataset exactly once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import multiprocessing
import signal
import sys
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from tqdm import tqdm

from . import fileio, imaging, records, reports, review, sources, splits
from .config import IngestConfig
from .errors import EXIT_FAILURES, EXIT_FATAL, EXIT_INTERRUPTED, EXIT_OK, IngestError
from .fetching import FetchError, Fetcher
from .sources import Failure, Item, ParsedList, open_list, parse_list, read_label_names

PARTIAL = ".partial"


@dataclass
class ShardPlan:
    split: str
    index: int
    total: int
    part: str
    items: list[Item]

    @property
    def name(self) -> str:
        return records.shard_name(self.split, self.index, self.total, self.part)


# --------------------------------------------------------------------------- planning

def _content_options(cfg: IngestConfig) -> dict[str, Any]:
    """Options that change what ends up in the records (a rerun must match them)."""
    keys = ("image_size", "resize", "quality", "min_side", "max_pixels", "min_bytes", "max_bytes",
            "val_fraction", "val_count", "seed", "shard_size")
    return {k: getattr(cfg, k) for k in keys}


def fingerprint(cfg: IngestConfig, labels: list[str], items: list[Item]) -> str:
    h = hashlib.sha256(json.dumps([_content_options(cfg), labels], sort_keys=True).encode())
    for it in items:
        given = f"\t{it.split}" if it.split else ""  # unchanged for the list formats (their reruns match)
        h.update(f"{it.id}\t{it.source}\t{''.join(map(str, it.labels))}{given}\n".encode())
    return h.hexdigest()[:16]


def plan_shards(items: list[Item], cfg: IngestConfig, part: str, shuffle: bool = False) -> list[ShardPlan]:
    """Split the items, then cut each split into shards of `shard_size` in list order.

    Items whose split the source fixed (train/val/test folders or lists) keep it; the others are
    split by `split_indices`. `shuffle` mixes each split's order with `--seed` (folder sources come
    sorted by class, and a class-sorted shard would starve the training shuffle buffer).
    """
    free = [i for i, it in enumerate(items) if not it.split]
    width = len(items[0].labels) if items else 0
    y = np.array([items[i].labels for i in free], dtype=int).reshape(len(free), width)
    train_idx, val_idx = splits.split_indices(y, val_fraction=cfg.val_fraction, val_count=cfg.val_count,
                                              seed=cfg.seed)
    assigned = {free[i]: "train" for i in train_idx} | {free[i]: "val" for i in val_idx}
    plans: list[ShardPlan] = []
    for split in records.ALL_SPLITS:
        chosen = [it for i, it in enumerate(items) if (it.split or assigned.get(i)) == split]
        if shuffle:
            rng = np.random.default_rng([cfg.seed, records.ALL_SPLITS.index(split)])
            chosen = [chosen[i] for i in rng.permutation(len(chosen))]
        total = max(1, -(-len(chosen) // cfg.shard_size)) if chosen else 0
        for s in range(total):
            plans.append(ShardPlan(split, s, total, part, chosen[s * cfg.shard_size:(s + 1) * cfg.shard_size]))
    return plans


# --------------------------------------------------------------------------- per-image work

def make_worker(cfg: IngestConfig, fetcher: Fetcher, pool: ProcessPoolExecutor | None):
    """The per-item function run in the pool: fetch, verify, resize, encode, serialize."""

    options = dict(size=cfg.image_size, mode=cfg.resize, quality=cfg.quality, min_side=cfg.min_side,
                   max_pixels=cfg.max_pixels)

    def work(item: Item) -> tuple[Item, bytes | None, Failure | None]:
        try:
            data = fetcher.fetch(item.source)
            # Threads wait on the network; decoding runs in one process per core, because the
            # GIL-bound parts of a threaded decoder held it to ~1.5 of 2 cores (measured).
            if pool is None:
                jpeg, h, w = imaging.process(data, **options)
            else:
                jpeg, h, w = pool.submit(imaging.process, data, **options).result()
            example = records.make_example(jpeg, id=item.id, source=item.source, height=h, width=w,
                                           labels=item.labels)
            return item, example, None
        except (FetchError, imaging.ImageError) as e:
            return item, None, Failure(item.id, item.source, str(e), item.line)
        except Exception as e:  # one bad file must never stop the run
            return item, None, Failure(item.id, item.source, f"error: {type(e).__name__}: {e}", item.line)

    return work


def _decoder_init(parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled once, by the parent

    def watch() -> None:  # a SIGKILLed parent cannot stop us: leave when it is gone
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def decoder_pool(n_images: int) -> ProcessPoolExecutor | None:
    """One decoding process per core; none for tiny jobs or one core (start-up would dominate)."""
    cores = os.cpu_count() or 1
    if cores < 2 or n_images < 64:
        return None
    # spawn, not fork: the parent already runs TensorFlow's threads.
    return ProcessPoolExecutor(cores, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_decoder_init, initargs=(os.getpid(),))


def ordered_map(fn, items: Iterable[Item], workers: int, window: int) -> Iterator[Any]:
    """Like `executor.map`, but with at most `window` items in flight (memory stays flat)."""
    ex = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch")
    pending: deque[Future] = deque()
    try:
        for it in items:
            pending.append(ex.submit(fn, it))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        # On Ctrl-C or an error: drop queued work; running downloads end within their timeout.
        ex.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------- the job

class Ingest:
    def __init__(self, cfg: IngestConfig, command: str):
        self.cfg = cfg
        self.command = command
        self.out = Path(cfg.out)
        self.partial = self.out / PARTIAL
        self.task = "multilabel"
        self.review_info: dict[str, Any] | None = None

    # ---- state files in OUT/.partial/
    def _state_path(self, plan: ShardPlan) -> Path:
        return self.partial / f"{plan.name}.json"

    def _shard_done(self, plan: ShardPlan) -> dict[str, Any] | None:
        state_path, shard = self._state_path(plan), self.out / plan.name
        if not (state_path.is_file() and shard.is_file()):
            return None
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return state if state.get("bytes") == shard.stat().st_size else None

    @property
    def source_name(self) -> str:
        c = self.cfg
        return c.from_folders or c.from_lists or c.from_urls or c.list

    def run(self) -> int:
        cfg = self.cfg
        existing = self._existing_manifest()
        labels = self._label_names(existing)
        parsed = self._read_list(labels)
        self.task = parsed.task
        if existing is not None and existing.get("task", "multilabel") != parsed.task:
            raise IngestError(f"{self.out} holds a {existing.get('task', 'multilabel')} dataset; "
                              f"{self.source_name} gives {parsed.task} labels")
        for note in parsed.notes:
            print(note)
        self.review_info = self._apply_review(parsed)
        line_failures = list(parsed.failures)
        items = parsed.items
        labels = parsed.label_names
        if cfg.strict and line_failures:
            for f in line_failures:
                print(f"error: {self.source_name}: {f.reason}", file=sys.stderr)
            raise IngestError(f"{len(line_failures)} bad line(s) and --strict is set: nothing written")
        for f in line_failures:
            tqdm.write(f"warning: {self.source_name}: {f.reason}", file=sys.stderr)
        # Fingerprint the list as given, before ids already in the dataset are dropped,
        # so a rerun of an interrupted --append recognises its own unfinished work.
        fp = fingerprint(cfg, labels, items)
        if existing is not None and any(p.get("fingerprint") == fp for p in existing.get("parts", [])):
            shutil.rmtree(self.partial, ignore_errors=True)
            print(f"{self.out}: already holds the records of this exact command (fingerprint {fp}); nothing to do")
            return EXIT_OK
        if existing is not None and cfg.append:
            items, dupes = self._drop_known_ids(items, existing)
            line_failures += dupes
        part = self._part_tag(existing)
        self._claim_partial(fp)
        plans = plan_shards(items, cfg, part, shuffle=parsed.task == "multiclass")
        if not items:
            print("warning: no usable line in the list", file=sys.stderr)

        records.load_tensorflow()  # ~2 s: before the clock and the progress bar start
        started = time.perf_counter()
        interrupted = False
        try:
            processed = self._write_shards(plans)
        except KeyboardInterrupt:
            interrupted = True
        if interrupted:
            done = sum(1 for p in plans if self._shard_done(p))
            print(f"\ninterrupted: {done}/{len(plans)} shard(s) complete and kept in {self.out}; "
                  f"rerun the same command to finish (downloads are cached)", file=sys.stderr)
            return EXIT_INTERRUPTED
        elapsed = time.perf_counter() - started

        states = [self._shard_done(p) for p in plans]
        if any(s is None for s in states):  # cannot happen unless files were removed under us
            raise IngestError(f"{self.out}: a shard vanished while writing; rerun the same command")
        manifest = self._finalize(existing, labels, plans, states, line_failures, fp, part)
        image_failures = [Failure(**f) for s in states for f in s["failures"]]
        all_failures = line_failures + image_failures
        reports.print_ingest_summary(manifest, all_failures, processed, elapsed, self._written_labels(states),
                                     out=self.out)
        return EXIT_FAILURES if all_failures else EXIT_OK

    # ---- steps
    def _existing_manifest(self) -> dict[str, Any] | None:
        cfg = self.cfg
        has_manifest = (self.out / records.MANIFEST).is_file()
        if cfg.overwrite and (has_manifest or self.partial.exists()):
            self._clear_out()
            return None
        if cfg.append:
            if not has_manifest:
                raise IngestError(f"--append: {self.out} has no {records.MANIFEST} to append to")
            return records.load_manifest(self.out)
        if has_manifest:
            manifest = records.load_manifest(self.out)
            return manifest  # a rerun of the same command is recognised by its fingerprint below
        return None

    def _clear_out(self) -> None:
        for p in self.out.glob("*.tfrecord"):
            p.unlink()
        for name in (records.MANIFEST, records.FAILURES, records.INDEX):
            (self.out / name).unlink(missing_ok=True)
        shutil.rmtree(self.partial, ignore_errors=True)

    def _label_names(self, existing: dict[str, Any] | None) -> list[str] | None:
        names = read_label_names(self.cfg.labels) if self.cfg.labels else None
        if existing is not None:
            if names is not None and names != existing["labels"]:
                raise IngestError(f"--labels {self.cfg.labels} differs from the labels of {self.out}")
            return list(existing["labels"])
        return names

    def _read_list(self, labels: list[str] | None) -> ParsedList:
        cfg = self.cfg
        if cfg.from_folders:
            return sources.read_folders(cfg.from_folders, labels)
        if cfg.from_lists:
            return sources.read_paddle_lists(cfg.from_lists, labels)
        if cfg.from_urls:
            return sources.read_url_lists(cfg.from_urls, cfg.max_per_class, labels)
        if cfg.label_regex:
            return sources.read_regex(cfg.list, cfg.label_regex, labels)
        stream, base = open_list(self.cfg.list)
        with stream:
            parsed = parse_list(stream, base, labels, name=self.cfg.list)
        if labels is not None and parsed.items and len(parsed.items[0].labels) != len(labels):
            raise IngestError(f"{self.cfg.list}: lines carry {len(parsed.items[0].labels)} labels but "
                              f"{len(labels)} label names are set")
        return parsed

    def _apply_review(self, parsed: ParsedList) -> dict[str, Any] | None:
        """--apply-review: drop/relabel before planning (so the fingerprint covers the result)."""
        if not self.cfg.apply_review:
            return None
        rv = review.read_review(self.cfg.apply_review)
        result = review.apply_review(parsed, rv)
        print(result.summary(self.cfg.apply_review))
        if result.unknown:
            print(f"warning: {self.cfg.apply_review}: {result.unknown} id(s) are not in {self.source_name} "
                  f"(ignored)", file=sys.stderr)
        return {"file": self.cfg.apply_review, "sha256": rv.sha256, "dropped": result.dropped,
                "relabelled": result.relabelled, "unknown_ids": result.unknown}

    def _drop_known_ids(self, items: list[Item], existing: dict[str, Any]) -> tuple[list[Item], list[Failure]]:
        known = {row[0] for row in _committed_index(self.out, existing)}
        keep, dupes = [], []
        for it in items:
            if it.id in known:
                where = f"line {it.line}: " if it.line else ""
                dupes.append(Failure(it.id, it.source, f"duplicate id: {where}id '{it.id}' is already "
                                                       f"in {self.out}", it.line))
            else:
                keep.append(it)
        return keep, dupes

    def _part_tag(self, existing: dict[str, Any] | None) -> str:
        if existing is None or not self.cfg.append:
            return ""
        return f"a{len(existing.get('parts', [])):02d}"

    def _claim_partial(self, fp: str) -> None:
        """Start or resume: `.partial/plan.json` names the command whose shards are in progress."""
        plan_file = self.partial / "plan.json"
        if plan_file.is_file():
            old = json.loads(plan_file.read_text(encoding="utf-8"))
            if old.get("fingerprint") == fp:
                print(f"resuming the unfinished run in {self.out}")
                return
            if not self.cfg.overwrite:
                raise IngestError(
                    f"{self.out} holds an unfinished run of another command:\n  {old.get('command')}\n"
                    f"rerun that command to finish it, or add --overwrite to start again")
            shutil.rmtree(self.partial)
        elif (self.out / records.MANIFEST).is_file() and not self.cfg.append:
            raise IngestError(f"{self.out} already holds a dataset made by another command; "
                              f"use --append to add records or --overwrite to replace it")
        self.partial.mkdir(parents=True, exist_ok=True)
        for stale in self.out.glob(".*.tfrecord.tmp"):  # half-written shards of a killed run
            stale.unlink()
        fileio.atomic_write_json(plan_file, {"fingerprint": fp, "command": self.command})

    def _write_shards(self, plans: list[ShardPlan]) -> int:
        cfg = self.cfg
        todo = [p for p in plans if self._shard_done(p) is None]
        n_total = sum(len(p.items) for p in plans)
        n_todo = sum(len(p.items) for p in todo)
        fetcher = Fetcher(timeout=cfg.timeout, connect_timeout=cfg.connect_timeout, retries=cfg.retries,
                          max_bytes=cfg.max_bytes, min_bytes=cfg.min_bytes, pool_size=cfg.workers,
                          cache_dir=cfg.cache)
        n_labels = len(plans[0].items[0].labels) if plans and plans[0].items else 0
        failed = 0
        bar = tqdm(total=n_total, initial=n_total - n_todo, unit="img", desc="ingest", dynamic_ncols=True,
                   smoothing=0.05)
        pool = decoder_pool(n_todo)
        results = ordered_map(make_worker(cfg, fetcher, pool), (it for p in todo for it in p.items),
                              workers=cfg.workers, window=cfg.workers * 4)
        try:
            for plan in todo:
                writer = records.ShardWriter(self.out, plan.name, n_labels)
                fails: list[dict[str, Any]] = []
                index: list[list[str]] = []
                try:
                    for _ in plan.items:
                        item, example, failure = next(results)
                        if failure is not None:
                            fails.append(asdict(failure))
                            failed += 1
                            where = f"line {item.line} ({item.id})" if item.line else item.id
                            tqdm.write(f"skipped {where}: {failure.reason}", file=sys.stderr)
                        else:
                            writer.write(example, item.labels)
                            index.append([item.id, plan.split, plan.name, item.source,
                                          "".join(map(str, item.labels))])
                        bar.update(1)
                        bar.set_postfix(failed=failed, refresh=False)
                    result = writer.close()
                except BaseException:
                    writer.abort()
                    raise
                fileio.atomic_write_json(self._state_path(plan), {**asdict(result), "split": plan.split,
                                                                   "failures": fails, "index": index})
        finally:
            results.close()
            bar.close()
            fetcher.close()
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        return n_todo

    def _written_labels(self, states: list[dict[str, Any]]) -> np.ndarray:
        rows = [[int(c) for c in r[4]] for s in states for r in s["index"]]
        return np.array(rows, dtype=int)

    def _finalize(self, existing, labels, plans, states, line_failures, fp, part) -> dict[str, Any]:
        """failures.csv and index.csv first, dataset.json last (its presence means complete)."""
        cfg = self.cfg
        # Only rows the previous manifest vouches for: a kill between the CSV writes and the
        # manifest's must not count this run's rows twice on the rerun.
        old_fail = fileio.read_csv_rows(self.out / records.FAILURES)[:existing["failures"]] if existing else []
        old_index = _committed_index(self.out, existing) if existing else []
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        manifest = existing or {
            "schema_version": records.SCHEMA_VERSION, "task": self.task, "labels": labels,
            "num_classes": len(labels),
            "image_size": cfg.image_size, "resize": cfg.resize, "quality": cfg.quality, "format": "jpeg",
            "features": {"image": records.F_IMAGE, "id": records.F_ID, "source": records.F_SOURCE,
                         "height": records.F_HEIGHT, "width": records.F_WIDTH, "labels": records.F_LABELS},
            "splits": {s: {"records": 0, "positives": [0] * len(labels), "shards": []} for s in records.SPLITS},
            "failures": 0, "created": now, "commands": [], "parts": [], "config": cfg.to_dict(),
        }
        new_failures = line_failures + [Failure(**f) for s in states for f in s["failures"]]
        for plan, st in zip(plans, states):
            sp = manifest["splits"].setdefault(plan.split, {"records": 0, "positives": [0] * len(labels),
                                                            "shards": []})
            sp["records"] += st["records"]
            sp["positives"] = [a + b for a, b in zip(sp["positives"], st["positives"])]
            sp["shards"].append({k: st[k] for k in ("name", "records", "sha256", "bytes")})
        manifest.setdefault("task", self.task)
        manifest["failures"] += len(new_failures)
        kinds = Counter(manifest.get("failures_by_kind", {}))
        kinds.update(f.kind for f in new_failures)
        manifest["failures_by_kind"] = dict(kinds.most_common())
        manifest["records"] = sum(sp["records"] for sp in manifest["splits"].values())
        manifest["updated"] = now
        manifest["commands"].append(self.command)
        manifest["parts"].append({"tag": part, "fingerprint": fp, "command": self.command,
                                  "records": sum(s["records"] for s in states), "failures": len(new_failures),
                                  **({"review": self.review_info} if self.review_info else {})})

        fileio.atomic_write_text(self.out / records.FAILURES, fileio.csv_text(
            ["id", "source", "reason"], old_fail + [[f.id, f.source, f.reason] for f in new_failures]))
        fileio.atomic_write_text(self.out / records.INDEX, fileio.csv_text(
            ["id", "split", "shard", "source", "labels"],
            old_index + [r for s in states for r in s["index"]]))
        fileio.atomic_write_json(self.out / records.MANIFEST, manifest)
        shutil.rmtree(self.partial, ignore_errors=True)
        return manifest


def _committed_index(out: Path, manifest: dict[str, Any]) -> list[list[str]]:
    """index.csv rows whose shard the manifest lists."""
    shards = {sh["name"] for sp in manifest["splits"].values() for sh in sp["shards"]}
    return [r for r in fileio.read_csv_rows(out / records.INDEX) if len(r) > 2 and r[2] in shards]


# --------------------------------------------------------------------------- verification

def verify(folder: str | Path) -> int:
    """Re-read every shard (CRC), decode every image, check counts and hashes against the manifest."""
    import cv2

    folder = Path(folder)
    try:
        manifest = records.load_manifest(folder)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FATAL
    problems: list[str] = []
    n_labels = manifest["num_classes"]
    multiclass = manifest.get("task", "multilabel") == "multiclass"
    ids: Counter[str] = Counter()
    total = manifest.get("records", sum(s["records"] for s in manifest["splits"].values()))
    bar = tqdm(total=total, unit="rec", desc="verify", dynamic_ncols=True)
    for split, info in manifest["splits"].items():
        positives = [0] * n_labels
        count = 0
        for shard in info["shards"]:
            path = folder / shard["name"]
            if not path.is_file():
                problems.append(f"{shard['name']}: missing")
                continue
            digest = fileio.sha256_file(path)
            if digest != shard["sha256"]:
                problems.append(f"{shard['name']}: sha256 {digest[:12]}… does not match the manifest "
                                f"({shard['sha256'][:12]}…)")
            n = 0
            try:
                for rec in records.iter_records([path], n_labels):
                    n += 1
                    bar.update(1)
                    ids[rec["id"]] += 1
                    if len(rec["labels"]) != n_labels:
                        problems.append(f"{shard['name']}: record {n} ({rec['id']}) has {len(rec['labels'])} "
                                        f"labels, expected {n_labels}")
                    positives = [a + b for a, b in zip(positives, rec["labels"])]
                    if multiclass and sum(rec["labels"]) != 1:
                        problems.append(f"{shard['name']}: record {n} ({rec['id']}) has {sum(rec['labels'])} "
                                        f"positive labels; a multiclass dataset has exactly one")
                    img = cv2.imdecode(np.frombuffer(rec["image"], np.uint8), cv2.IMREAD_COLOR)
                    if img is None:
                        problems.append(f"{shard['name']}: record {n} ({rec['id']}): image does not decode")
            except Exception as e:  # tf raises DataLossError on a CRC mismatch or truncation
                problems.append(f"{shard['name']}: unreadable after record {n}: {type(e).__name__}: "
                                f"{str(e).splitlines()[0][:200]}")
            if n != shard["records"]:
                problems.append(f"{shard['name']}: {n} records, manifest says {shard['records']}")
            count += n
        if count != info["records"]:
            problems.append(f"{split}: {count} records, manifest says {info['records']}")
        if positives != info["positives"]:
            problems.append(f"{split}: positives per class {positives} differ from the manifest {info['positives']}")
    bar.close()
    dupes = [i for i, c in ids.items() if c > 1]
    if dupes:
        problems.append(f"{len(dupes)} id(s) appear more than once, e.g. {dupes[:3]}")
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    shards = sum(len(s["shards"]) for s in manifest["splits"].values())
    if problems:
        print(f"{folder}: {len(problems)} problem(s) in {shards} shard(s)")
        return EXIT_FAILURES
    print(f"{folder}: OK — {sum(ids.values())} records in {shards} shard(s), every CRC, image, count and "
          f"hash checked")
    return EXIT_OK


def command_line(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in ["python", "generate_dataset.py", *argv])

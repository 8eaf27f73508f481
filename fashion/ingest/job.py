"""The `generate_dataset.py` job: list -> fetched, verified, resized images -> sharded TFRecords.

Resumable by construction: every shard's content is fixed by the plan
(the list, the split and the options), a shard is written to a temporary name
and renamed when complete, and its bookkeeping is kept in `OUT/.partial/`
until the manifest is written last. Kill the process at any point and rerun
the same command: finished shards are kept, downloads come from the cache,
and every good line ends up in the dataset exactly once.

The path of the data, with `OUT` locked against a second run (outlock): read the list
(sources, review) -> plan the shards (shards) -> claim `OUT/.partial/` -> write the shards
(workers: fetching, imaging; records) -> finalize the manifest (manifest). A full disk ends
the run with one line (diskfull). `verify` lives beside the record format, in records.
"""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from fashion.config.ingest import IngestConfig
from fashion.core import diskfull, fileio, outlock, storage
from fashion.core.errors import EXIT_DISK_FULL, EXIT_FAILURES, EXIT_FATAL, EXIT_INTERRUPTED, EXIT_OK, IngestError
from fashion.data import dataset_json, records, review
from fashion.data.dataset_json import DatasetManifest
from fashion.data.records import verify
from fashion.data.sources import Failure, Item, ParsedList, open_list, parse_list, read_label_names
from fashion.ingest import class_sources, reports, retry, tfrecord_source, workers
from fashion.ingest.manifest import add_part, new_manifest, timestamp
from fashion.ingest.shards import ShardPlan, fingerprint, plan_shards, shard_done, write_shard

# cli.py and tests/test_resume.py import these from here: `verify` lives in records,
# `IngestError` and the exit codes in errors; the names stay importable from ingest.
__all__ = ["EXIT_FATAL", "Ingest", "IngestError", "command_line", "verify", "verify_dataset"]

PARTIAL = ".partial"


@dataclass
class Part:
    """What this run adds to the dataset: one entry of the manifest's `parts`, and its shards."""

    tag: str  # "" for a new dataset; "a01", "a02"... for each --append (in the shard names)
    fingerprint: str
    labels: list[str]
    skipped: list[Failure]  # lines not written: bad lines, ids the dataset already holds
    plans: list[ShardPlan] = field(default_factory=list)


class Ingest:
    def __init__(self, cfg: IngestConfig, command: str):
        self.cfg = cfg
        self.command = command
        self.out = storage.location(cfg.out)  # a Path, or a RemotePath (s3://, gs://: --engine beam)
        self.partial = self.out / PARTIAL
        self.task = "multilabel"
        self.review_info: dict[str, Any] | None = None
        self.part: Part | None = None  # set once planned; what a disk-full message counts from
        self.writer: records.ShardWriter | None = None  # the shard being written

    @property
    def source_name(self) -> str:
        c = self.cfg
        return c.from_folders or c.from_lists or c.from_urls or " ".join(c.from_tfrecords or []) or c.list

    def run(self) -> int:
        """The job, holding the output folder's lock; a full disk ends it with one line and EXIT_DISK_FULL."""
        try:
            self._check_remote()
            with outlock.hold(self.out):
                return self._run()
        except Exception as e:
            if not diskfull.is_disk_full(e):
                raise
            plans = self.part.plans if self.part else []
            done = [s for s in map(self._shard_done, plans) if s]
            print(f"error: {diskfull.message(self.out, diskfull.progress(plans, done, self.writer))}", file=sys.stderr)
            return EXIT_DISK_FULL

    def _check_remote(self) -> None:
        """A remote --out or --cache: Beam's filesystems get the options after -- and are tried once."""
        remote = [(f, v) for f, v in (("--out", self.cfg.out), ("--cache", self.cfg.cache)) if storage.is_remote(v)]
        if not remote:
            return
        from fashion.core import quiet

        with quiet.filtered_stderr():  # Beam's import warns about cloud clients it does not need
            storage.configure(self.cfg.beam_args)
            for flag, url in remote:
                storage.check(str(url), flag)

    def _run(self) -> int:
        if self.cfg.engine == "beam":
            from fashion.core import quiet
            from fashion.core.beamrun import import_beam

            with quiet.filtered_stderr():  # Beam's import warns about cloud clients it does not need
                import_beam(IngestError)  # not installed: one line before anything is read or written
        existing = self._existing_manifest()
        parsed = self._read_source(existing)
        # Fingerprint the list as given, before ids already in the dataset are dropped,
        # so a rerun of an interrupted --append recognises its own unfinished work.
        fp = fingerprint(self.cfg, parsed.label_names, parsed.items)
        if self.cfg.retry_failed and existing is not None:
            parsed, fp = retry.narrow(self.out, existing, parsed, fp)
            if not parsed.items:
                return retry.nothing_to_retry(self.out, existing)
        done = self._already_holds(existing, fp)
        if done is not None:
            return done
        part = self._plan(existing, parsed, fp)

        if self.cfg.engine == "local":  # (Beam's workers write without TensorFlow; the driver writes no record)
            records.load_tensorflow()  # ~2 s: before the clock and the progress bar start
        started = time.perf_counter()
        interrupted = False
        try:
            processed = self._write_shards(part.plans)
        except KeyboardInterrupt:
            interrupted = True
        if interrupted:
            return self._interrupted(part.plans)
        elapsed = time.perf_counter() - started

        states = self._shard_states(part.plans)
        manifest = self._finalize(existing, part, states)
        all_failures = part.skipped + _image_failures(states)
        reports.print_ingest_summary(manifest, all_failures, processed, elapsed, _written_labels(states), out=self.out)
        if self.cfg.retry_failed:  # what is left in failures.csv, the permanent ones included
            return EXIT_FAILURES if manifest["failures"] else EXIT_OK
        return EXIT_FAILURES if all_failures else EXIT_OK

    # ---- the output folder as found
    def _existing_manifest(self) -> DatasetManifest | None:
        cfg = self.cfg
        has_manifest = dataset_json.exists(self.out)
        if cfg.overwrite:
            return None  # cleared in _plan, once the list has been read (a bad list must not cost the dataset)
        if cfg.adds_part:
            if not has_manifest:
                flag = "--append" if cfg.append else "--retry-failed"
                raise IngestError(
                    f"{flag}: {self.out} has no {dataset_json.MANIFEST} (not finished yet: rerun without it)"
                )
            return dataset_json.read(self.out)
        if has_manifest:
            manifest = dataset_json.read(self.out)
            return manifest  # a rerun of the same command is recognised by its fingerprint below
        return None

    def _clear_out(self) -> None:
        for p in self.out.glob("*.tfrecord"):
            p.unlink()
        for name in (dataset_json.MANIFEST, records.FAILURES, records.INDEX):
            (self.out / name).unlink(missing_ok=True)
        self._clear_partial()

    def _clear_partial(self) -> None:
        """The run's bookkeeping in OUT/.partial/ goes; images --from-tfrecords extracted there (no --cache)
        stay: they were read before the folder is cleared, and the new run's items point at them."""
        for p in self.partial.iterdir() if self.partial.is_dir() else []:
            if p.name == tfrecord_source.EXTRACTED:
                continue
            if p.is_dir():
                storage.rmtree(p)
            else:
                p.unlink()

    def _already_holds(self, existing: DatasetManifest | None, fp: str) -> int | None:
        """A rerun of a finished command: its summary again and the exit code it ended with; else None."""
        parts = existing.get("parts", []) if existing else []
        k = next((k for k, p in enumerate(parts) if p.get("fingerprint") == fp), None)
        if k is None or existing is None:
            return None
        storage.rmtree(self.partial)
        print(f"{self.out}: already holds the records of this exact command (fingerprint {fp}); nothing to do")
        first = sum(p.get("failures", 0) for p in parts[:k])  # failures.csv rows are in part order
        rows = fileio.read_csv_rows(self.out / records.FAILURES)[first : first + parts[k].get("failures", 0)]
        reports.print_rerun_summary(existing, parts[k], [r[2] for r in rows if len(r) > 2], self.out)
        return EXIT_FAILURES if parts[k].get("failures") else EXIT_OK

    # ---- step 1: read the list
    def _read_source(self, existing: DatasetManifest | None) -> ParsedList:
        """The source as parsed and reviewed; its bad lines warned about (or fatal with --strict)."""
        parsed = self._read_list(self._label_names(existing))
        self.task = parsed.task
        if existing is not None and existing.get("task", "multilabel") != parsed.task:
            raise IngestError(
                f"{self.out} holds a {existing.get('task', 'multilabel')} dataset; "
                f"{self.source_name} gives {parsed.task} labels"
            )
        for note in parsed.notes:
            print(note)
        self.review_info = self._apply_review(parsed)
        if self.cfg.strict and parsed.failures:
            for f in parsed.failures:
                print(f"error: {self.source_name}: {f.reason}", file=sys.stderr)
            raise IngestError(f"{len(parsed.failures)} bad line(s) and --strict is set: nothing written")
        for f in parsed.failures:
            tqdm.write(f"warning: {self.source_name}: {f.reason}", file=sys.stderr)
        if not parsed.items:  # a 0-record dataset.json would only block the folder
            raise IngestError(self._nothing_usable(parsed))
        return parsed

    def _nothing_usable(self, parsed: ParsedList) -> str:
        dropped = self.review_info["dropped"] if self.review_info else 0
        listed = self.source_name == self.cfg.list and not self.cfg.label_regex  # else a folder of images
        why = "the list is empty or blank" if listed else "no image found"
        if dropped:
            why = f"--apply-review dropped all {dropped} usable line(s)"
        elif parsed.failures:
            why = f"all {len(parsed.failures)} line(s) are bad (warnings above)"
        return f"{self.source_name}: nothing to ingest: {why}; nothing written"

    def _label_names(self, existing: DatasetManifest | None) -> list[str] | None:
        names = read_label_names(self.cfg.labels) if self.cfg.labels else None
        if existing is not None:
            if names is not None and names != existing["labels"]:
                raise IngestError(f"--labels {self.cfg.labels} differs from the labels of {self.out}")
            return list(existing["labels"])
        return names

    def _read_list(self, labels: list[str] | None) -> ParsedList:
        cfg = self.cfg
        if cfg.from_folders:
            return class_sources.read_folders(cfg.from_folders, labels)
        if cfg.from_lists:
            return class_sources.read_paddle_lists(cfg.from_lists, labels)
        if cfg.from_urls:
            return class_sources.read_url_lists(cfg.from_urls, cfg.max_per_class, labels)
        if cfg.from_tfrecords:
            root = tfrecord_source.extract_root(cfg.cache, self.partial)
            return tfrecord_source.read_tfrecords(cfg.from_tfrecords, root, labels)
        if cfg.label_regex:
            return class_sources.read_regex(cfg.list, cfg.label_regex, labels)
        stream, base = open_list(self.cfg.list)
        with stream:
            return parse_list(stream, base, labels, name=self.cfg.list)  # a label count that fits no line: ListError

    def _apply_review(self, parsed: ParsedList) -> dict[str, Any] | None:
        """--apply-review: drop/relabel before planning (so the fingerprint covers the result)."""
        if not self.cfg.apply_review:
            return None
        rv = review.read_review(self.cfg.apply_review)
        result = review.apply_review(parsed, rv)
        print(result.summary(self.cfg.apply_review))
        if result.unknown:
            print(
                f"warning: {self.cfg.apply_review}: {result.unknown} id(s) are not in {self.source_name} (ignored)",
                file=sys.stderr,
            )
        return {
            "file": self.cfg.apply_review,
            "sha256": rv.sha256,
            "dropped": result.dropped,
            "relabelled": result.relabelled,
            "unknown_ids": result.unknown,
        }

    # ---- step 2: plan, and claim OUT/.partial/ for it
    def _plan(self, existing: DatasetManifest | None, parsed: ParsedList, fp: str) -> Part:
        items, skipped = parsed.items, list(parsed.failures)
        if existing is not None and self.cfg.append:
            items, dupes = self._drop_known_ids(items, existing)
            skipped += dupes
        part = Part(self._part_tag(existing), fp, parsed.label_names, skipped)
        self.part = part
        if self.cfg.overwrite:
            self._clear_out()
        self._claim_partial(fp)
        part.plans = plan_shards(items, self.cfg, part.tag, shuffle=parsed.task == "multiclass")
        if not items:
            print(f"warning: every line is already in {self.out}: nothing new to add", file=sys.stderr)
        return part

    def _drop_known_ids(self, items: list[Item], existing: DatasetManifest) -> tuple[list[Item], list[Failure]]:
        known = {row[0] for row in _committed_index(self.out, existing)}
        keep, dupes = [], []
        for it in items:
            if it.id in known:
                where = f"line {it.line}: " if it.line else ""
                dupes.append(
                    Failure(it.id, it.source, f"duplicate id: {where}id '{it.id}' is already in {self.out}", it.line)
                )
            else:
                keep.append(it)
        return keep, dupes

    def _part_tag(self, existing: DatasetManifest | None) -> str:
        if existing is None or not self.cfg.adds_part:
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
                    f"rerun that command to finish it, or add --overwrite to start again"
                )
            self._clear_partial()
        elif dataset_json.exists(self.out) and not self.cfg.adds_part:
            raise IngestError(
                f"{self.out} already holds a dataset made by another command; "
                f"use --append to add records or --overwrite to replace it"
            )
        self.partial.mkdir(parents=True, exist_ok=True)
        for stale in self.out.glob(records.SHARD_TMP_GLOB):  # half-written shards of a killed run
            stale.unlink()
        fileio.atomic_write_json(plan_file, {"fingerprint": fp, "command": self.command})

    # ---- step 3: write the shards (state files in OUT/.partial/)
    def _shard_done(self, plan: ShardPlan) -> dict[str, Any] | None:
        return shard_done(self.out, self.partial, plan)

    def _write_shards(self, plans: list[ShardPlan]) -> int:
        """Every shard not finished by an earlier run; returns the number of images processed."""
        todo = [p for p in plans if self._shard_done(p) is None]
        n_total = sum(len(p.items) for p in plans)
        n_todo = sum(len(p.items) for p in todo)
        n_labels = len(plans[0].items[0].labels) if plans and plans[0].items else 0
        if self.cfg.engine == "beam":
            self._write_shards_beam(todo, n_labels, n_total, n_todo)
            return n_todo
        items = (it for p in todo for it in p.items)
        with (
            workers.processed(self.cfg, items, n_todo) as results,
            reports.IngestProgress(n_total, n_total - n_todo) as bar,
        ):
            for plan in todo:
                self._write_shard(plan, n_labels, results, bar)
        return n_todo

    def _write_shards_beam(self, todo: list[ShardPlan], n_labels: int, n_total: int, n_todo: int) -> None:
        from fashion.core import quiet
        from fashion.ingest import beam as beam_ingest

        with quiet.filtered_stderr(), reports.IngestProgress(n_total, n_total - n_todo) as bar:

            def on_shard(plan: ShardPlan, state: dict[str, Any]) -> None:  # from the pipeline's watcher thread
                for f in state["failures"]:
                    bar.skipped(Item(f["line"] or 0, f["id"], f["source"], ()), Failure(**f))
                bar.shard(len(plan.items))

            beam_ingest.write_shards(self.cfg, self.out, self.partial, todo, n_labels, on_shard)

    def _write_shard(
        self, plan: ShardPlan, n_labels: int, results: Iterator[workers.Result], bar: reports.IngestProgress
    ) -> None:
        def on_result(item: Item, failure: Failure | None) -> None:
            if failure is not None:
                bar.skipped(item, failure)
            bar.step()

        write_shard(self.out, self.partial, plan, n_labels, results, on_result, lambda w: setattr(self, "writer", w))

    def _interrupted(self, plans: list[ShardPlan]) -> int:
        done = sum(1 for p in plans if self._shard_done(p))
        print(
            f"\ninterrupted: {done}/{len(plans)} shard(s) complete and kept in {self.out}; "
            f"rerun the same command to finish (downloads are cached)",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED

    # ---- step 4: finalize the manifest
    def _shard_states(self, plans: list[ShardPlan]) -> list[dict[str, Any]]:
        states = [self._shard_done(p) for p in plans]
        found = [s for s in states if s is not None]
        if len(found) < len(states):  # cannot happen unless files were removed under us
            raise IngestError(f"{self.out}: a shard vanished while writing; rerun the same command")
        return found

    def _finalize(self, existing: DatasetManifest | None, part: Part, states: list[dict[str, Any]]) -> DatasetManifest:
        """failures.csv and index.csv first, dataset.json last (its presence means complete)."""
        # Only rows the previous manifest vouches for: a kill between the CSV writes and the
        # manifest's must not count this run's rows twice on the rerun.
        old_fail = fileio.read_csv_rows(self.out / records.FAILURES)[: existing["failures"]] if existing else []
        if existing is not None and self.cfg.retry_failed:  # the retried lines leave; those failing again come back
            old_fail = retry.without_retried(existing, old_fail, {it.id for p in part.plans for it in p.items})
        old_index = _committed_index(self.out, existing) if existing else []
        new_failures = part.skipped + _image_failures(states)
        ts = timestamp()
        info = {"tag": part.tag, "fingerprint": part.fingerprint, "command": self.command, "review": self.review_info}
        base = existing or new_manifest(self.cfg, self.task, part.labels, ts)
        manifest = add_part(base, info, [p.split for p in part.plans], states, new_failures, self.task, ts)

        fileio.atomic_write_text(
            self.out / records.FAILURES,
            fileio.csv_text(["id", "source", "reason"], old_fail + [[f.id, f.source, f.reason] for f in new_failures]),
        )
        fileio.atomic_write_text(
            self.out / records.INDEX,
            fileio.csv_text(
                ["id", "split", "shard", "source", "labels"], old_index + [r for s in states for r in s["index"]]
            ),
        )
        dataset_json.write(self.out, manifest)
        storage.rmtree(self.partial)
        return manifest


def _committed_index(out: Path | storage.RemotePath, manifest: DatasetManifest) -> list[list[str]]:
    """index.csv rows whose shard the manifest lists."""
    shards = {sh["name"] for sp in manifest["splits"].values() for sh in sp["shards"]}
    return [r for r in fileio.read_csv_rows(out / records.INDEX) if len(r) > 2 and r[2] in shards]


def _image_failures(states: list[dict[str, Any]]) -> list[Failure]:
    return [Failure(**f) for s in states for f in s["failures"]]


def _written_labels(states: list[dict[str, Any]]) -> np.ndarray:
    rows = [[int(c) for c in r[4]] for s in states for r in s["index"]]
    return np.array(rows, dtype=int)


def verify_dataset(folder: str, beam_args: list[str]) -> int:
    """`--verify DIR`; a remote DIR (s3://, gs://) is copied to a local temporary folder first, through
    Beam's filesystems (their options after --), and checked there."""
    if not storage.is_remote(folder):
        return verify(folder)
    from fashion.core import quiet

    with quiet.filtered_stderr():
        storage.configure(beam_args)
        storage.check(folder, "--verify")
    remote = storage.RemotePath(folder)
    if not (remote / dataset_json.MANIFEST).is_file():
        raise IngestError(f"{remote / dataset_json.MANIFEST}: no dataset manifest (run generate_dataset.py first)")
    with tempfile.TemporaryDirectory(prefix="fashion-verify-") as local:
        n = storage.copy_tree(remote, Path(local))
        print(f"{folder}: {n} file(s) copied to {local} to be checked there")
        return verify(local, shown=folder)


def command_line(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in ["python", "generate_dataset.py", *argv])

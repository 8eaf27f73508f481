"""`detect.py --list FILE --out DIR`: a whole catalogue scored into Parquet shards, in bounded memory,
resumable.

The list is read twice, one line at a time and never held: a first pass counts its rows (and hashes it,
so a rerun knows it is the same list); the second streams the rows of the shards not yet written
through a pool of threads that fetch and decode (`ordered_map`: results in list order, a bounded number
in flight) into batches for the model. Row i belongs to shard i // --shard-size, so a rerun redoes
only whole unfinished shards and never writes a row twice. Each shard's state (its failures and label
counts) is written to OUT/.partial/, then its Parquet file under a temporary name, renamed when whole;
failures.csv and summary.json come last. OUT/.partial/run.json records what the rows are of (the
bundle's files, the list, the options that change a row): a rerun that differs is refused, so rows of
two models never mix in one --out.

    OUT/part-00000.parquet ...   id, input, line, a float32 column per label, labels (and constant_labels;
                                 single-label bundles: class, score)
    OUT/failures.csv             id,input,reason,line for every line not scored
    OUT/summary.json             the bundle and its meta.json hash, thresholds, counts, positive rate per label
"""

from __future__ import annotations

import shlex

from fashion.config.bundle import DetectConfig
from fashion.core import beamrun, outlock, quiet, storage
from fashion.core.errors import FashionError

SUMMARY, FAILURES, PARTIAL, RUN = "summary.json", "failures.csv", ".partial", "run.json"


class ScoreError(FashionError):
    """A scoring run that cannot start or go on (one line; exit 2)."""


def shard_name(k: int) -> str:
    return f"part-{k:05d}.parquet"


def run(cfg: DetectConfig, argv: list[str]) -> int:
    """detect.py --list FILE --out DIR: 0 every line scored, 1 some failed (failures.csv), 2 a run that cannot
    start (bundle, list, another run in --out, another bundle's rows there), 3 disk full, 130 Ctrl-C."""
    out = storage.location(cfg.out or "")
    command = " ".join(["python", "detect.py", *map(shlex.quote, argv)])
    if cfg.engine == "beam":
        with quiet.filtered_stderr():  # Beam's import warns about cloud clients it does not need
            beamrun.import_beam(ScoreError)  # not installed: one line before anything is read or written
            if storage.is_remote(out):  # its client installed, the store answering: before the model loads
                storage.configure(cfg.beam_args)
                storage.check(str(out), "--out")
    with outlock.hold(out, "detect.py --list"):  # first: a second run is refused before Keras loads
        from fashion.predict import bundle as prediction, scorer

        bundle = prediction.load_bundle(cfg.model, cfg.model_save)
        return scorer.Scorer(cfg, bundle, out, command).run()

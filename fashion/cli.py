"""Command-line entry points; the top-level scripts only call these.

Each command: parse argv (a parser generated from its config class) -> resolve the config
(defaults -> `--config FILE.yaml` -> flags) -> validate -> run the job -> a fatal error becomes one
`error:` line and exit code 2. Heavy modules (TensorFlow, Keras, OpenCV) load only after parsing,
so `--help` is fast.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import textwrap
from collections.abc import Callable

from fashion.config.bundle import DetectConfig, EvaluateConfig, ServeConfig
from fashion.config.ingest import IngestConfig
from fashion.config.options import build_parser, configure
from fashion.config.train import TrainConfig
from fashion.core import cluster, interrupts, quiet
from fashion.core.errors import EXIT_FATAL, EXIT_INTERRUPTED, FashionError


def _beam_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(our options, Beam's options): what follows `--` is Beam's (--engine beam)."""
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1 :]


def _fatal(errors: tuple[type[Exception], ...], job: Callable[[], int]) -> int:
    """Run `job`; one of `errors` becomes one `error:` line (no traceback) and EXIT_FATAL."""
    try:
        return job()
    except errors as e:
        if interrupts.caused(e):  # a Ctrl-C that library code turned into an error on its way
            raise KeyboardInterrupt from None
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FATAL


def _interruptible(own_process: bool, errors: tuple[type[Exception], ...], job: Callable[[], int], said: str) -> int:
    """`_fatal(errors, job)` with Ctrl-C latched from the first import on (fashion.interrupts): a Ctrl-C, even
    one that library code dropped or turned into another error, ends it with the line `said` and 130."""
    try:
        with interrupts.latched():
            code = _fatal(errors, job)
    except (KeyboardInterrupt, Exception) as e:
        if not interrupts.caused(e):
            raise
        print(f"\n{said}", file=sys.stderr)
        code = EXIT_INTERRUPTED
    return _end(own_process, code)


def _end(own_process: bool, code: int) -> int:
    """The job is over. In the command's own process a Ctrl-C in the interpreter's teardown ends it with 130,
    and an interrupted job (its one line said what was kept) leaves at once: threads still winding down must
    not print or crash on their way out (Beam's gRPC readers; XLA stopped mid-compile: SIGSEGV)."""
    if own_process:
        _exit_on_interrupt()
        if code == EXIT_INTERRUPTED:
            _leave(EXIT_INTERRUPTED)
    return code


def _argv(argv: list[str] | None) -> list[str]:
    """The arguments; in the command's own process (argv None: the script or console entry point) also
    TensorFlow's start-up noise filtered off stderr from here on (quiet.install)."""
    if argv is None:
        quiet.install()
    return list(sys.argv[1:] if argv is None else argv)


# --------------------------------------------------------------------------- generate_dataset.py


def _verify_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--verify",
        metavar="DIR",
        help="check an existing dataset (CRC, decoding, counts, sha256) and exit; a remote DIR (s3://, gs://) "
        "is copied to a local temporary folder first",
    )


def ingest_parser() -> argparse.ArgumentParser:
    return build_parser(
        IngestConfig,
        "generate_dataset.py",
        "Download, verify and resize the images of a labelled list into sharded TFRecords "
        "with a dataset.json manifest and a failures.csv of every line skipped.",
        textwrap.fill(
            "List formats: the original `id,url,l0,...,lN` lines (no header), or a CSV with a header "
            "naming a path/url column and a `labels` column of ';'-separated names. URLs may be "
            "http(s)://, file:// or local paths (relative to the list's folder). Rerun the same command "
            "after an interruption to finish.",
            79,
        )
        + "\n\nexit code: 0 everything written, 1 some lines skipped (see failures.csv),\n"
        "           2 nothing done (bad options or input, an empty list, --out in use by another run),\n"
        "           3 output disk full (finished shards kept: free the space named and rerun),\n"
        "           130 interrupted\n"
        "one run per --out at a time (a lock in it); --verify on a folder being written checks it read-only\n"
        "as its dataset.json stands, with a warning naming the run\n\nexamples:\n"
        "  python generate_dataset.py data/sample/train+val.txt --labels data/sample/labels.txt --out data/records\n"
        "  # single-label (task multiclass, one-hot labels):\n"
        "  python generate_dataset.py --from-folders data/clothing-small --out data/cs    # CLASS/ or train|valid/CLASS/\n"
        "  python generate_dataset.py images/ --label-regex '([^/]+)_\\d+\\.jpg$' --out data/pets\n"
        "  python generate_dataset.py --from-lists paddle/ --out data/flowers            # label_list.txt + *_list.txt\n"
        "  python generate_dataset.py --from-urls urls/ --max-per-class 200 --out data/bears  # CLASS.txt of URLs\n"
        "  # the original project's TFRecords (image + label_0..12): one file split as usual, or train + val:\n"
        "  python generate_dataset.py --from-tfrecords train.tfrecords test.tfrecords --out data/records\n"
        "  # rebuild honouring the review.csv written by evaluate.py (drop / relabel rows):\n"
        "  python generate_dataset.py --from-folders data/clothing-small --out data/cs2 --apply-review report/review.csv\n"
        "  python generate_dataset.py --verify data/cs",
        extra=_verify_arg,
    )


def generate_dataset_main(argv: list[str] | None = None) -> int:
    own_process = argv is None  # the script or console entry point: the process ends when this returns
    argv = _argv(argv)
    ours, beam_args = _beam_args(argv)
    args = {**vars(ingest_parser().parse_args(ours)), "beam_args": beam_args}
    try:
        from fashion.ingest import job as ingest  # heavy imports only after --help has been served

        if args.get("verify"):
            code = _fatal((FashionError, OSError), lambda: ingest.verify_dataset(args["verify"], beam_args))
        else:
            code = _fatal(
                (FashionError, ValueError, OSError),
                lambda: ingest.Ingest(configure(IngestConfig, args), ingest.command_line(argv)).run(),
            )
    except KeyboardInterrupt:  # outside the shard loop (which says more): loading, finalizing, shutting down
        if own_process:
            _exit_on_interrupt()
        print(
            "\ninterrupted: rerun the same command to go on (finished shards and downloads are kept)", file=sys.stderr
        )
        code = EXIT_INTERRUPTED
    return _end(own_process, code)


def _leave(code: int) -> None:
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
        quiet.drain()  # os._exit skips atexit: the filter's last lines first
    os._exit(code)


def _exit_on_interrupt() -> None:
    """From here a Ctrl-C ends the process at once with 130, without a traceback: the job is over
    (everything it wrote is complete) and only the interpreter's teardown is left, where a
    KeyboardInterrupt would surface inside the joins of pool threads."""

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started with Ctrl-C ignored: keep it so
        return

    signal.signal(signal.SIGINT, lambda signum, frame: _leave(EXIT_INTERRUPTED))


# --------------------------------------------------------------------------- train.py


def train_parser() -> argparse.ArgumentParser:
    return build_parser(
        TrainConfig,
        "train.py",
        "Train a keras.applications trunk (DenseNet121 by default) with one sigmoid head per class "
        "(multilabel), one softmax head (multiclass) or one sigmoid head (binary) on a dataset made "
        "by generate_dataset.py; writes model_save/RUN/ (model.keras + meta.json with the task, "
        "classes, backbone and tuned thresholds) and log/RUN/ (history.csv, TensorBoard, "
        "config.yaml, console.log).",
        "Examples:\n"
        "  python train.py --weights none --image-size 64 --epochs 4\n"
        "  python train.py --stages heads:2,all:10:5e-4      # the usual two-stage fine-tune\n"
        "  python train.py --run myrun --resume              # continue an interrupted run\n"
        "  python train.py --data data/pets --backbone resnet50 --stages heads:1,all:2:1e-4  # single-label\n"
        "  python train.py --data data/faces --task binary --backbone mobilenetv2 --alpha 0.35 "
        "--image-size 96\n"
        "Exit code: 0 done; 2 bad options or input, one `error:` line: a shard missing or cut short\n"
        "(or changed, with --verify-data) is named before anything is written, a record damaged\n"
        "inside a shard is named when training reads it (the last checkpoint is kept: fix the data,\n"
        "rerun with --resume --run NAME); 130 interrupted (checkpoint saved).",
    )


def train_main(argv: list[str] | None = None) -> int:
    own_process = argv is None
    argv = _argv(argv)
    args = vars(train_parser().parse_args(argv))

    def job() -> int:
        cfg = configure(TrainConfig, args)
        cfg.backend = cluster.choose_backend(cfg.backend, cluster.resolve(cfg.workers, cfg.worker_index))
        from fashion.train import (
            job as training,  # TensorFlow and Keras load only after --help (and valid options), on that backend
        )

        return training.Trainer(cfg, " ".join(["python", "train.py", *argv])).run()

    # the line is for Ctrl-C while TensorFlow/JAX load; from then on the Trainer says what it keeps
    errors = (FashionError, FileNotFoundError, ValueError)
    return _interruptible(own_process, errors, job, "interrupted while starting; nothing written")


# --------------------------------------------------------------------------- detect.py


def detect_parser() -> argparse.ArgumentParser:
    return build_parser(
        DetectConfig,
        "detect.py",
        "Per-category probabilities for images, with the labels that pass the per-class "
        "thresholds tuned on validation data (marked *). Single-label bundles: the predicted class "
        "and its probability, then the top-k table; binary bundles: the positive class's probability "
        "(the positive class is the dataset's second label) and the label at the tuned threshold "
        "(0.5 when none was tuned).",
        "inputs: image files, folders (searched recursively), globs ('photos/*.jpg'),\n"
        "        http(s) URLs, or - to read paths/URLs from standard input\n"
        "a whole catalogue: --list catalogue.txt --out scored/ (Parquet shards, failures.csv, summary.json;\n"
        "        bounded memory, resumable: rerun the same command; --retry-failed for second tries)\n"
        "        on Apache Beam: --list catalogue.txt --out s3://bucket/scored --engine beam -- BEAM OPTIONS\n"
        "exit code: 0 all images processed, 1 some failed (one line each), 2 no model or a bundle\n"
        "           that cannot be used (one line naming model.keras or meta.json and what is wrong),\n"
        "           3 disk full (--list: finished shards kept), 130 Ctrl-C\n"
        "large JPEGs are decoded at a reduced scale (a 100-megapixel photo costs ~1.5 MP of memory);\n"
        "--max-pixels and --max-bytes only stop decompression bombs and runaway downloads",
    )


def detect_main(argv: list[str] | None = None) -> int:
    own_process = argv is None
    ours, beam_args = _beam_args(_argv(argv))
    args = {**vars(detect_parser().parse_args(ours)), "beam_args": beam_args}

    def job() -> int:
        cfg = configure(DetectConfig, args)
        if cfg.list is not None:  # a whole catalogue into Parquet shards
            from fashion.predict import score

            interrupts.check()  # a Ctrl-C dropped while TensorFlow loaded
            return score.run(cfg, list(argv) if argv is not None else sys.argv[1:])
        from fashion.predict import detect as detection

        interrupts.check()
        return detection.run(cfg)

    said = "interrupted; rerun the same command to classify every image"
    return _interruptible(own_process, (FashionError, OSError, ValueError), job, said)


# --------------------------------------------------------------------------- evaluate.py


def evaluate_parser() -> argparse.ArgumentParser:
    return build_parser(
        EvaluateConfig,
        "evaluate.py",
        "Score a bundle on a dataset split: mAP, sample-F2 (tuned and 0.5 thresholds), macro/micro "
        "F1, per-class AP/precision/recall/ROC-AUC, beside the constant predictor and class priors; "
        "single-label bundles: accuracy, top-k accuracy, per-class precision/recall/F1, confusion "
        "matrix and most confused pairs, beside the majority class and class priors. Writes "
        "metrics.json, PNG plots, top losses, review.csv (to mark keep/relabel/drop and feed back "
        "with generate_dataset.py --apply-review) and index.html.",
        "examples:\n"
        "  python evaluate.py --model model_save/RUN --data data/records --split val --out report\n"
        "  python evaluate.py --model model_save/pets --data data/pets --split test --table\n"
        "exit code: 0 done, 2 bad options, no dataset, or a bundle that cannot be used (one line naming\n"
        "           model.keras or meta.json and what is wrong)",
    )


def _evaluate(cfg: EvaluateConfig) -> int:
    from fashion.predict import evaluate  # TensorFlow loads only after --help (and valid options)

    return evaluate.run(cfg)


def evaluate_main(argv: list[str] | None = None) -> int:
    own_process = argv is None
    args = vars(evaluate_parser().parse_args(_argv(argv)))
    said = "interrupted; rerun the same command for a complete report"
    errors = (FashionError, FileNotFoundError, ValueError)
    return _interruptible(own_process, errors, lambda: _evaluate(configure(EvaluateConfig, args)), said)


# --------------------------------------------------------------------------- serve.py


def serve_parser() -> argparse.ArgumentParser:
    return build_parser(
        ServeConfig,
        "serve.py",
        "Serve a bundle over HTTP (FastAPI on uvicorn): POST /v1/predict with photos (multipart upload, a raw "
        'image body, or JSON {"urls": [...]}) answers what detect.py --json gives for each; GET /v1/model, '
        "GET /healthz, OpenAPI docs at /docs, and a page at / to drop, paste or pick photos and see their tags. "
        "Concurrent requests are batched on the model.",
        "examples:\n"
        "  python serve.py --model model_save/RUN                      # http://127.0.0.1:8000/\n"
        "  curl -F file=@photo.jpg http://127.0.0.1:8000/v1/predict\n"
        "  curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg' http://127.0.0.1:8000/v1/predict\n"
        "  curl -H 'Content-Type: application/json' -d '{\"urls\": [\"https://...\"]}' http://127.0.0.1:8000/v1/predict\n"
        "  python serve.py --model model_save/RUN --host 0.0.0.0 --api-key SECRET   # other machines, with a key\n"
        "answers: 200; 400 not an image (detect.py's reason); 401 wrong key; 413 too large (bytes, pixels,\n"
        "photos); 502 a URL that failed; 504 a URL past --timeout\n"
        "exit code: 0 stopped by Ctrl-C or SIGTERM (requests in flight answered first); 2 a bundle that\n"
        "           cannot be used or an address that cannot be listened on (one line)",
    )


def _serve(cfg: ServeConfig) -> int:
    from fashion.predict import service  # FastAPI, uvicorn and TensorFlow load only after --help

    return service.run(cfg)


def serve_main(argv: list[str] | None = None) -> int:
    args = vars(serve_parser().parse_args(_argv(argv)))
    try:
        return _fatal((FashionError, OSError, ValueError), lambda: _serve(configure(ServeConfig, args)))
    except ImportError as e:
        print(f"error: serve.py needs the serve extra ({e}): pip install 'fashion[serve]'", file=sys.stderr)
        return EXIT_FATAL

"""Command-line entry points; the top-level scripts only call these."""

from __future__ import annotations

import argparse
import sys

from .config import IngestConfig, add_option, load_yaml, resolve


def _size(text: str) -> int:
    """Bytes from `20MB`, `5KB`, `5120`."""
    t = text.strip().upper().removesuffix("B")
    mult = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}.get(t[-1:], 1)
    try:
        return int(float(t[:-1] if mult > 1 else t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 5120, 5KB, 20MB)") from None


def ingest_parser() -> argparse.ArgumentParser:
    C = IngestConfig
    p = argparse.ArgumentParser(
        prog="generate_dataset.py",
        description="Download, verify and resize the images of a labelled list into sharded TFRecords "
                    "with a dataset.json manifest and a failures.csv of every line skipped.",
        epilog="List formats: the original `id,url,l0,...,lN` lines (no header), or a CSV with a header "
               "naming a path/url column and a `labels` column of ';'-separated names. URLs may be http(s)://, "
               "file:// or local paths (relative to the list's folder). Rerun the same command after an "
               "interruption to finish; exit code 0 = everything written, 1 = some lines skipped, "
               "2 = nothing done (bad options or input), 130 = interrupted.\n"
               "Example: python generate_dataset.py data/sample/train+val.txt --labels data/sample/labels.txt "
               "--out data/records",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("list", nargs="?", default=argparse.SUPPRESS, metavar="LIST",
                   help=f"list file, or - for standard input (default: {C.list})")
    p.add_argument("--verify", metavar="DIR", help="check an existing dataset (CRC, decoding, counts, sha256) "
                                                   "and exit")
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of option: value pairs; flags override it")
    g = p.add_argument_group("input and output")
    add_option(g, C, "--out", "output folder", metavar="DIR")
    add_option(g, C, "--labels", "label names, one per line (default for the original format: label_0..N)",
               metavar="FILE")
    add_option(g, C, "--append", "add the list's records to an existing dataset as new shards",
               action="store_true")
    add_option(g, C, "--overwrite", "replace the dataset (or unfinished run) in --out", action="store_true")
    add_option(g, C, "--strict", "stop on the first malformed line instead of skipping it", action="store_true")
    g = p.add_argument_group("fetching")
    add_option(g, C, "--workers", "parallel downloads/decodes", type=int, metavar="N")
    add_option(g, C, "--cache", "download cache folder ('' to disable)", metavar="DIR")
    add_option(g, C, "--timeout", "read timeout per request, seconds", type=float, metavar="S")
    add_option(g, C, "--connect-timeout", "connect timeout, seconds", type=float, metavar="S")
    add_option(g, C, "--retries", "retries on connection errors, timeouts, 429 and 5xx (with backoff)",
               type=int, metavar="N")
    add_option(g, C, "--max-bytes", "largest body accepted (e.g. 20MB); streaming stops past it", type=_size,
               metavar="SIZE")
    add_option(g, C, "--min-bytes", "smallest download accepted (error placeholders are tiny); local files "
               "are not filtered", type=_size, metavar="SIZE")
    g = p.add_argument_group("images")
    add_option(g, C, "--image-size", "output size in pixels (square side; shorter side with --resize keep)",
               type=int, metavar="PX")
    add_option(g, C, "--resize", "crop = shorter side to size then center crop; stretch = plain resize to a "
               "square (the original generator); keep = keep aspect ratio", choices=("crop", "stretch", "keep"))
    add_option(g, C, "--quality", "JPEG quality of the stored images", type=int, metavar="Q")
    add_option(g, C, "--min-side", "refuse images whose shorter side is below this", type=int, metavar="PX")
    add_option(g, C, "--max-pixels", "refuse images with more pixels (decompression bombs)", type=int,
               metavar="N")
    g = p.add_argument_group("split and shards")
    add_option(g, C, "--val-fraction", "share of images held out for validation (iteratively stratified)",
               type=float, metavar="F")
    add_option(g, C, "--val-count", "exact number held out instead (the original held out 4000)", type=int,
               metavar="N")
    add_option(g, C, "--seed", "random seed of the split", type=int)
    add_option(g, C, "--shard-size", "records per shard", type=int, metavar="N")
    return p


def generate_dataset_main(argv: list[str] | None = None) -> int:
    from . import ingest  # heavy imports only after --help has been served

    argv = list(sys.argv[1:] if argv is None else argv)
    args = vars(ingest_parser().parse_args(argv))
    if args.get("verify"):
        return ingest.verify(args["verify"])
    try:
        yaml_values = load_yaml(args["config"]) if args.get("config") else {}
        cfg = resolve(IngestConfig, yaml_values, args, source=args.get("config") or "config")
        if cfg.cache == "":
            cfg.cache = None
        _check(cfg)
        return ingest.Ingest(cfg, ingest.command_line(argv)).run()
    except (ingest.IngestError, ingest.ListError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return ingest.EXIT_FATAL


def _check(cfg: IngestConfig) -> None:
    if cfg.image_size < 8:
        raise ValueError(f"--image-size {cfg.image_size} is too small (at least 8)")
    if not 1 <= cfg.quality <= 100:
        raise ValueError(f"--quality must be 1..100, got {cfg.quality}")
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1), got {cfg.val_fraction}")
    if cfg.workers < 1 or cfg.shard_size < 1:
        raise ValueError("--workers and --shard-size must be at least 1")

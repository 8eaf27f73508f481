"""Command-line entry points; the top-level scripts only call these."""

from __future__ import annotations

import argparse
import sys
import textwrap

from .config import IngestConfig, add_option, load_yaml, resolve
from .sources import ListError


def _parser(prog: str, description: str, epilog: str = "") -> argparse.ArgumentParser:
    """A parser whose description is wrapped and whose epilog (examples) keeps its lines."""
    return argparse.ArgumentParser(prog=prog, description=textwrap.fill(description, 79), epilog=epilog,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def _bundle_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="DIR", help="bundle folder (default: the newest in --model-save)")
    p.add_argument("--model-save", default="model_save", metavar="DIR",
                   help="where to look for the newest bundle (default: model_save)")


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
    p = _parser(
        "generate_dataset.py",
        "Download, verify and resize the images of a labelled list into sharded TFRecords "
        "with a dataset.json manifest and a failures.csv of every line skipped.",
        textwrap.fill("List formats: the original `id,url,l0,...,lN` lines (no header), or a CSV with a header "
                      "naming a path/url column and a `labels` column of ';'-separated names. URLs may be "
                      "http(s)://, file:// or local paths (relative to the list's folder). Rerun the same command "
                      "after an interruption to finish.", 79)
        + "\n\nexit code: 0 everything written, 1 some lines skipped (see failures.csv),\n"
          "           2 nothing done (bad options or input), 130 interrupted\n\nexamples:\n"
          "  python generate_dataset.py data/sample/train+val.txt --labels data/sample/labels.txt --out data/records\n"
          "  # single-label (task multiclass, one-hot labels):\n"
          "  python generate_dataset.py --from-folders data/clothing-small --out data/cs    # CLASS/ or train|valid/CLASS/\n"
          "  python generate_dataset.py images/ --label-regex '([^/]+)_\\d+\\.jpg$' --out data/pets\n"
          "  python generate_dataset.py --from-lists paddle/ --out data/flowers            # label_list.txt + *_list.txt\n"
          "  python generate_dataset.py --from-urls urls/ --max-per-class 200 --out data/bears  # CLASS.txt of URLs\n"
          "  # rebuild honouring the review.csv written by evaluate.py (drop / relabel rows):\n"
          "  python generate_dataset.py --from-folders data/clothing-small --out data/cs2 --apply-review report/review.csv\n"
          "  python generate_dataset.py --verify data/cs")
    p.add_argument("list", nargs="?", default=argparse.SUPPRESS, metavar="LIST",
                   help=f"list file, - for standard input, or a folder of images with --label-regex "
                        f"(default: {C.list})")
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
    g = p.add_argument_group("label sources", textwrap.fill(
        "Single-label datasets (task multiclass, one-hot labels), instead of LIST. Splits given by the source "
        "are kept, else --val-fraction/--val-count apply; class names are sorted.", 77))
    add_option(g, C, "--from-folders", "a folder per class (images found recursively; class = subfolder "
               "name); DIR/train + DIR/valid|validation|val [+ DIR/test] holding class folders keep those splits "
               "(DIR/train [+ DIR/test] alone: validation is split from train)",
               metavar="DIR")
    add_option(g, C, "--label-regex", "with LIST a folder: class = first group of RE searched in each image's "
               r"path relative to LIST ('/' separators), e.g. '([^/]+)_\d+\.jpg$'", metavar="RE")
    add_option(g, C, "--from-lists", "PaddleHub layout: DIR/label_list.txt (a class per line) + "
               "train_list.txt, validate_list.txt [, test_list.txt] of 'relative/path label_index_or_name'",
               metavar="DIR")
    add_option(g, C, "--from-urls", "DIR/CLASS.txt or CLASS.csv: one image URL per line (first column) per "
               "class, downloaded like LIST's URLs", metavar="DIR")
    add_option(g, C, "--max-per-class", "with --from-urls: take at most N URLs of each class; none = no cap",
               type=int, metavar="N")
    add_option(g, C, "--apply-review", "CSV written by evaluate.py (id,...,action,new_labels): leave out the "
               "'drop' ids and give 'relabel' ids their new_labels; works with any source", metavar="FILE")
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
    except (ingest.IngestError, ListError, ValueError, OSError) as e:
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
    from pathlib import Path

    from .config import DEFAULT_LIST

    chosen = [f for f, v in (("--from-folders", cfg.from_folders), ("--from-lists", cfg.from_lists),
                             ("--from-urls", cfg.from_urls), ("--label-regex", cfg.label_regex)) if v]
    if len(chosen) > 1:
        raise ValueError(f"choose one label source, got {' and '.join(chosen)}")
    if chosen and chosen[0] != "--label-regex" and cfg.list != DEFAULT_LIST:
        raise ValueError(f"give either LIST ({cfg.list}) or {chosen[0]}, not both")
    if cfg.label_regex and not Path(cfg.list).is_dir():
        raise ValueError(f"--label-regex needs LIST to be a folder of images, got {cfg.list}")
    if not chosen and cfg.list != "-" and Path(cfg.list).is_dir():
        raise ValueError(f"{cfg.list} is a folder: add --label-regex RE (class from each file name), or use "
                         f"--from-folders {cfg.list} (a folder per class)")
    if cfg.max_per_class is not None and (cfg.max_per_class < 1 or not cfg.from_urls):
        raise ValueError("--max-per-class takes N >= 1 and works with --from-urls")


def train_parser() -> argparse.ArgumentParser:
    from .config import TrainConfig as C

    p = _parser(
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
               "Exit code: 0 done, 2 bad options or input, 130 interrupted (checkpoint saved).")
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of option: value pairs; flags override it")
    g = p.add_argument_group("data and run")
    add_option(g, C, "--data", "dataset folder (dataset.json + shards)", metavar="DIR")
    add_option(g, C, "--run", "run name: model_save/RUN and log/RUN (default: a timestamp)", metavar="NAME")
    add_option(g, C, "--resume", "continue run --run where it stopped (stage, epoch, optimiser state)",
               action="store_true")
    add_option(g, C, "--model-save", "where bundles go", metavar="DIR")
    add_option(g, C, "--log", "where logs go", metavar="DIR")
    add_option(g, C, "--seed", "random seed", type=int)
    g = p.add_argument_group("model")
    add_option(g, C, "--task", "auto = the dataset's task (dataset.json; multilabel when absent); multilabel = "
               "one sigmoid head per class; multiclass = one softmax over the classes (one label per image); "
               "binary = one sigmoid head: on a 2-class dataset the positive class is the SECOND label",
               choices=("auto", "multilabel", "multiclass", "binary"))
    add_option(g, C, "--backbone", "trunk from keras.applications, with its own preprocessing inside the "
               "model", choices=("densenet121", "densenet169", "densenet201", "resnet50", "mobilenetv2",
                                 "xception", "efficientnetb0"))
    add_option(g, C, "--alpha", "MobileNetV2 width multiplier (ImageNet weights: 0.35, 0.5, 0.75, 1.0, 1.3, "
               "1.4)", type=float, metavar="A")
    add_option(g, C, "--weights", "imagenet (Keras' notop file from model_save/ or Keras' cache), none, a "
               ".h5 file, or an earlier bundle folder (reuse its trunk)", metavar="W")
    add_option(g, C, "--image-size", "input side in pixels (random crops of the stored images)", type=int,
               metavar="PX")
    add_option(g, C, "--head-dropout", "dropout before each head's Dense", type=float, metavar="P")
    g = p.add_argument_group("what trains")
    add_option(g, C, "--epochs", "epochs when --stages is not given", type=int, metavar="N")
    add_option(g, C, "--layers", "heads (trunk frozen), all, a stage onwards (densenet/resnet50: conv5+, "
               "conv4+, conv3+; mobilenetv2: block_16+, block_13+, block_10+, block_6+; xception: block14+, "
               "block13+, block5+; efficientnetb0: block7+ ... block3+), or a regex over trunk layer names",
               metavar="GROUP")
    add_option(g, C, "--stages", "staged recipe GROUP:EPOCHS[:LR],... e.g. heads:5,all:20:1e-4", metavar="SPEC")
    add_option(g, C, "--bn", "trunk BatchNorm: frozen (inference mode), train, auto (train from scratch, "
               "frozen when pretrained)", choices=("auto", "frozen", "train"))
    g = p.add_argument_group("optimisation")
    add_option(g, C, "--optimizer", "sgd = momentum 0.9 + clipnorm 5 (the original)",
               choices=("sgd", "adam", "adamw"))
    add_option(g, C, "--lr", "peak learning rate", type=float)
    add_option(g, C, "--lr-mult", "discriminative rates: the trunk steps at this multiple of the heads' rate "
               "(e.g. 0.1 when fine-tuning a pretrained trunk; 1 = one rate for all)", type=float, metavar="M")
    add_option(g, C, "--schedule", "learning-rate schedule per stage",
               choices=("onecycle", "cosine", "plateau", "constant"))
    add_option(g, C, "--warmup", "warm-up share of the steps (cosine; one-cycle uses at least 0.25)",
               type=float, metavar="F")
    add_option(g, C, "--weight-decay", "decoupled weight decay (adamw default 1e-2)", type=float, metavar="WD")
    add_option(g, C, "--batch-size", "images per step (per replica)", type=int, metavar="N")
    add_option(g, C, "--lr-find", "run the learning-rate range test instead of training: saves "
               "log/RUN/lr_find.png and prints the suggested --lr", action="store_true")
    add_option(g, C, "--accum-steps", "gradient accumulation: K steps act as one K x batch (Caffe iter_size); "
               "one device only", type=int, metavar="K")
    g = p.add_argument_group("imbalance")
    add_option(g, C, "--head-weights", "each head's share of the loss from training positives: none, original "
               "(∝ frequency), inverse (N/pos), sqrt, effective (Cui et al. 2019)",
               choices=("none", "original", "inverse", "sqrt", "effective"))
    add_option(g, C, "--pos-weight", "inside each head, weight positives by negatives/positives",
               choices=("auto", "none"))
    add_option(g, C, "--loss", "per-head loss: bce, focal, asl (asymmetric); multiclass: bce = categorical "
               "cross-entropy, focal = categorical focal", choices=("bce", "focal", "asl"))
    add_option(g, C, "--beta", "beta of --head-weights effective", type=float)
    add_option(g, C, "--gamma", "focal loss gamma", type=float)
    add_option(g, C, "--label-smoothing", "targets move this far toward 0.5 (multiclass: toward 1/K)", type=float,
               metavar="S")
    add_option(g, C, "--class-weights", "single-label tasks: weight each class's loss by training images "
               "(inverse = N/count, sqrt), normalised to mean 1", choices=("none", "inverse", "sqrt"))
    g = p.add_argument_group("augmentation")
    add_option(g, C, "--jitter", "colour jitter strength (brightness/contrast/saturation)", type=float, metavar="J")
    add_option(g, C, "--rotate", "random rotation, +- degrees", type=float, metavar="DEG")
    g = p.add_argument_group("hardware")
    add_option(g, C, "--mixed-precision", "float16 compute on GPU (auto = on when a GPU is present)",
               choices=("auto", "on", "off"))
    add_option(g, C, "--xla", "compile the training step with XLA", action="store_true")
    add_option(g, C, "--eager", "run eagerly: no graph build (starts in seconds instead of ~1 min on CPU, "
               "steps run slower); for debugging and tiny smoke runs", action="store_true")
    add_option(g, C, "--cpu-devices", "without a GPU, split the CPU into N logical devices and train on all of "
               "them through MirroredStrategy: rehearses multi-GPU training (batch per replica, gradients "
               "summed across replicas) on any machine; no speed-up", type=int, metavar="N")
    return p


def train_main(argv: list[str] | None = None) -> int:
    from .config import TrainConfig

    argv = list(sys.argv[1:] if argv is None else argv)
    args = vars(train_parser().parse_args(argv))
    from . import training  # TensorFlow and Keras load only after --help

    try:
        yaml_values = load_yaml(args["config"]) if args.get("config") else {}
        cfg = resolve(TrainConfig, yaml_values, args, source=args.get("config") or "config")
        return training.Trainer(cfg, " ".join(["python", "train.py", *argv])).run()
    except (training.TrainError, training.model_lib.WeightsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def threshold_text(t: float) -> str:
    """0 and 1 are the tuner's "always" / "never": validation data did not earn this label a real cut."""
    return "threshold 0: always" if t <= 0 else "threshold 1: never" if t >= 1 else f"threshold {t:.2f}"


def detect_parser() -> argparse.ArgumentParser:
    p = _parser(
        "detect.py",
        "Per-category probabilities for images, with the labels that pass the per-class "
                    "thresholds tuned on validation data (marked *). Single-label bundles: the predicted class "
                    "and its probability, then the top-k table; binary bundles: the positive class's probability "
                    "(the positive class is the dataset's second label) and the label at the tuned threshold "
                    "(0.5 when none was tuned).",
        "inputs: image files, folders (searched recursively), globs ('photos/*.jpg'),\n"
        "        http(s) URLs, or - to read paths/URLs from standard input\n"
        "exit code: 0 all images processed, 1 some failed (one line each), 2 no model")
    p.add_argument("inputs", nargs="+", metavar="IMAGE", help="images, folders, globs, URLs or -")
    _bundle_args(p)
    p.add_argument("--threshold", type=float, metavar="P",
                   help="one threshold for every class instead of the tuned ones (binary: for the positive class)")
    p.add_argument("--top-k", type=int, metavar="K", help="single-label: classes in the table (default: 5, or the "
                   "number of classes); multilabel: show only the K most probable labels")
    p.add_argument("--json", metavar="FILE", help="write {input: {probabilities: {label: p}, labels: [...]}}; "
                   "single-label: {input: {class, score, top_k: [{label, score}], probabilities}}")
    p.add_argument("--csv", metavar="FILE", help="write one row per image: input, labels, then a column per class; "
                   "single-label: input, class, score, top_k, then a column per class")
    p.add_argument("--tta", action="store_true", help="average with the mirrored image")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per batch (default: 32)")
    p.add_argument("--quiet", action="store_true", help="no per-image table (with --json/--csv)")
    return p


def detect_main(argv: list[str] | None = None) -> int:
    import csv
    import io
    import json

    import numpy as np
    from tqdm import tqdm

    from . import prediction
    from .fetching import FetchError, Fetcher
    from .imaging import ImageError
    from .fileio import atomic_write_text

    args = detect_parser().parse_args(argv)
    try:
        bundle = prediction.load_bundle(args.model, args.model_save)
    except (prediction.BundleError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    single = bundle.task != "multilabel"
    classes = bundle.classes
    if bundle.task == "multiclass" and args.threshold is not None:
        print("note: --threshold does not apply to a multiclass bundle (the most probable class wins)",
              file=sys.stderr)
    thresholds = np.full(len(bundle.labels), args.threshold) if args.threshold is not None else bundle.thresholds
    cut = (args.threshold if args.threshold is not None else bundle.threshold) if bundle.task == "binary" else None
    k = args.top_k if args.top_k else min(5, len(classes))
    fetcher = Fetcher(min_bytes=0, retries=2, pool_size=4)
    inputs = list(prediction.expand_inputs(args.inputs))
    results: dict[str, dict] = {}
    failed = 0
    width = max(len(lb) for lb in classes)
    show = not args.quiet
    bar = tqdm(total=len(inputs), unit="img", desc="detect", disable=len(inputs) <= args.batch_size, file=sys.stderr)
    for start in range(0, len(inputs), args.batch_size):
        chunk, arrays = [], []
        for src in inputs[start:start + args.batch_size]:
            try:
                arrays.append(prediction.load_image(src, fetcher, bundle.input_size))
                chunk.append(src)
            except (FetchError, ImageError, OSError) as e:
                failed += 1
                tqdm.write(f"error: {src}: {e}", file=sys.stderr)
        if arrays:
            probs = prediction.predict_arrays(bundle, np.stack(arrays), tta=args.tta)
            for src, p in zip(chunk, probs):
                if single:
                    results[src] = _single_result(p, classes, k, cut)
                    if show:
                        tqdm.write(_single_lines(src, results[src], width, cut))
                    continue
                chosen = [lb for lb, v, t in zip(bundle.labels, p, thresholds) if v >= t]
                results[src] = {"probabilities": {lb: round(float(v), 6) for lb, v in zip(bundle.labels, p)},
                                "labels": chosen}
                if args.top_k:
                    results[src]["top_k"] = [{"label": lb, "score": round(v, 6)}
                                             for lb, v in prediction.top_k(p, bundle.labels, args.top_k)]
                if show:
                    lines = [f"{src}: {', '.join(chosen) if chosen else '(no label passes its threshold)'}"]
                    # --top-k: the K most probable labels, most probable first; else every label in label order
                    order = np.argsort(-p, kind="stable")[:args.top_k] if args.top_k else range(len(p))
                    th = dict(zip(bundle.labels, thresholds))
                    lines += [f"  {'*' if p[i] >= th[bundle.labels[i]] else ' '} {bundle.labels[i]:<{width}} "
                              f"{p[i]:6.3f}   ({threshold_text(th[bundle.labels[i]])})" for i in order]
                    tqdm.write("\n".join(lines))
        bar.update(len(inputs[start:start + args.batch_size]))
    bar.close()
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
    if args.csv:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        if single:
            w.writerow(["input", "class", "score", "top_k", *classes])
            for src, r in results.items():
                w.writerow([src, r["class"], f"{r['score']:.6f}",
                            ";".join(f"{t['label']}:{t['score']:.4f}" for t in r["top_k"]),
                            *(f"{r['probabilities'][c]:.6f}" for c in classes)])
        else:
            w.writerow(["input", "labels", *bundle.labels])
            for src, r in results.items():
                w.writerow([src, ";".join(r["labels"]), *(f"{r['probabilities'][lb]:.6f}" for lb in bundle.labels)])
        atomic_write_text(args.csv, buf.getvalue())
    if failed:
        print(f"{failed} of {len(inputs)} input(s) failed; {len(results)} processed", file=sys.stderr)
    return 1 if failed or not inputs else 0


def _single_result(p, classes: list[str], k: int, cut: float | None) -> dict:
    """One image of a single-label bundle: class, score, top_k (and for binary the positive class's
    probability and the threshold that decided)."""
    from .prediction import top_k

    best = (1 if p[1] >= cut else 0) if cut is not None else int(p.argmax())
    r = {"class": classes[best], "score": round(float(p[best]), 6),
         "top_k": [{"label": c, "score": round(v, 6)} for c, v in top_k(p, classes, k)],
         "probabilities": {c: round(float(v), 6) for c, v in zip(classes, p)}}
    if cut is not None:
        r.update({"positive": classes[1], "probability": round(float(p[1]), 6), "threshold": float(cut)})
    return r


def _single_lines(src: str, r: dict, width: int, cut: float | None) -> str:
    if cut is not None:
        head = (f"{src}: {r['class']} {r['score']:.3f}   (p({r['positive']}) = {r['probability']:.3f}, "
                f"threshold {cut:.2f})")
    else:
        head = f"{src}: {r['class']} {r['score']:.3f}"
    return "\n".join([head] + [f"  {'*' if t['label'] == r['class'] else ' '} {t['label']:<{width}} "
                                f"{t['score']:6.3f}" for t in r["top_k"]])


def evaluate_parser() -> argparse.ArgumentParser:
    p = _parser(
        "evaluate.py",
        "Score a bundle on a dataset split: mAP, sample-F2 (tuned and 0.5 thresholds), macro/micro "
                    "F1, per-class AP/precision/recall/ROC-AUC, beside the constant predictor and class priors; "
                    "single-label bundles: accuracy, top-k accuracy, per-class precision/recall/F1, confusion "
                    "matrix and most confused pairs, beside the majority class and class priors. Writes "
                    "metrics.json, PNG plots, top losses, review.csv (to mark keep/relabel/drop and feed back "
                    "with generate_dataset.py --apply-review) and index.html.",
        "examples:\n"
        "  python evaluate.py --model model_save/RUN --data data/records --split val --out report\n"
        "  python evaluate.py --model model_save/pets --data data/pets --split test --table")
    _bundle_args(p)
    p.add_argument("--data", default="data/records", metavar="DIR", help="dataset folder (default: data/records)")
    p.add_argument("--split", default="val", help="split to score (default: val)")
    p.add_argument("--threshold", type=float, metavar="P", help="one fixed threshold instead of the tuned ones "
                   "(binary: on the positive class's probability)")
    p.add_argument("--out", default="report", metavar="DIR", help="report folder (default: report)")
    p.add_argument("--top-losses", type=int, default=20, metavar="K", help="images in the top-losses view "
                   "and review.csv (default: 20)")
    p.add_argument("--top-k", type=int, metavar="K", help="single-label: k of top-k accuracy (default: the "
                   "bundle's, 5 or fewer on small class sets)")
    p.add_argument("--table", action="store_true", help="print one line per image (file, true label, "
                   "predicted label, score) and a final 'accuracy: X (n/N)' line")
    p.add_argument("--export", action="append", choices=("savedmodel", "tflite"),
                   help="write a serving SavedModel (BUNDLE/saved_model/) or BUNDLE/model.tflite and exit "
                        "(repeatable); detect.py --model BUNDLE/model.tflite runs the TFLite one")
    return p


def evaluate_main(argv: list[str] | None = None) -> int:
    from pathlib import Path

    args = evaluate_parser().parse_args(argv)
    from . import evaluation, prediction

    try:
        bundle = prediction.load_bundle(args.model, args.model_save)
        if args.export:
            for fmt in args.export:
                print(f"exported {fmt}: {prediction.export_bundle(bundle, fmt)}")
            return 0
        result, y, scores, ids, sources = evaluation.evaluate(bundle, args.data, args.split, args.threshold,
                                                              args.top_k)
    except (prediction.BundleError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    evaluation.print_summary(result)
    written = evaluation.write_report(Path(args.out), bundle, result, y, scores, ids, args.data, args.split,
                                      evaluation.history_for(bundle), args.top_losses, sources, args.threshold)
    print(f"report: {Path(args.out) / 'index.html'} ({len(written)} files)")
    if args.table:  # last, so the accuracy line ends the output as in the Caffe project's script
        print()
        evaluation.print_table(bundle, result, y, scores, ids, sources, args.threshold)
    return 0

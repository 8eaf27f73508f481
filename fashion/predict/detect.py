"""The detect.py job: images in batches through a bundle, one console block per image, JSON/CSV out.

Multilabel bundles: the model's detections (labels past a real tuned cut, marked *) apart from the
labels a constant threshold turns on whatever the image ("always", threshold 0, marked =), then every
label's probability; single-label bundles (multiclass, binary): the predicted class, its score and
the top-k table.
"""

from __future__ import annotations

import json
import shlex
import sys
from typing import Any

import numpy as np
from tqdm import tqdm

from fashion.config.bundle import DetectConfig
from fashion.core.errors import EXIT_FAILURES, EXIT_OK
from fashion.core.fileio import atomic_write_text, csv_text
from fashion.data.fetching import Fetcher, FetchError
from fashion.data.imaging import ImageError
from fashion.predict import bundle as prediction

# where a chosen label comes from: the model's probability past a real cut, or a constant threshold
MODEL, CONSTANT = "model", "constant"
MARK = {MODEL: "*", CONSTANT: "="}
ALWAYS_ON = "always on (constant from validation data: the model cannot tell these classes apart)"


def threshold_text(t: float, tuned: bool = True) -> str:
    """0 and 1 are the tuner's "always" / "never": validation data did not earn this label a real cut.
    A --threshold from the command line is the user's cut, whatever its value."""
    if not tuned:
        return f"threshold {t:.2f}"
    return "threshold 0: always" if t <= 0 else "threshold 1: never" if t >= 1 else f"threshold {t:.2f}"


def single_result(p: np.ndarray, classes: list[str], k: int, cut: float | None) -> dict:
    """One image of a single-label bundle: class, score, top_k (and for binary the positive class's
    probability and the threshold that decided)."""
    best = (1 if p[1] >= cut else 0) if cut is not None else int(p.argmax())
    r = {
        "class": classes[best],
        "score": round(float(p[best]), 6),
        "top_k": [{"label": c, "score": round(v, 6)} for c, v in prediction.top_k(p, classes, k)],
        "probabilities": {c: round(float(v), 6) for c, v in zip(classes, p)},
    }
    if cut is not None:
        r.update({"positive": classes[1], "probability": round(float(p[1]), 6), "threshold": float(cut)})
    return r


def single_lines(src: str, r: dict, width: int, cut: float | None) -> str:
    if cut is not None:
        head = (
            f"{src}: {r['class']} {r['score']:.3f}   (p({r['positive']}) = {r['probability']:.3f}, threshold {cut:.2f})"
        )
    else:
        head = f"{src}: {r['class']} {r['score']:.3f}"
    return "\n".join(
        [head]
        + [f"  {'*' if t['label'] == r['class'] else ' '} {t['label']:<{width}} {t['score']:6.3f}" for t in r["top_k"]]
    )


def multilabel_result(
    p: np.ndarray, labels: list[str], thresholds: np.ndarray, always: np.ndarray, never: np.ndarray, top_k: int | None
) -> dict:
    """One image of a multilabel bundle: every label's probability, the chosen labels (model and
    constant, as before, for old readers), where each came from and, with --top-k, the K most probable.
    `always`/`never`: the labels whose tuned threshold is the constant 0 / 1."""
    # a "never" label stays off even where a saturated sigmoid reaches 1.0
    chosen = ((p >= thresholds) & ~never) | always
    r: dict[str, Any] = {
        "probabilities": {lb: round(float(v), 6) for lb, v in zip(labels, p)},
        "labels": [lb for lb, c in zip(labels, chosen) if c],
        "source": {lb: CONSTANT if a else MODEL for lb, c, a in zip(labels, chosen, always) if c},
    }
    if top_k:
        r["top_k"] = [{"label": lb, "score": round(v, 6)} for lb, v in prediction.top_k(p, labels, top_k)]
    return r


def multilabel_lines(
    src: str,
    r: dict,
    p: np.ndarray,
    labels: list[str],
    thresholds: np.ndarray,
    width: int,
    top_k: int | None,
    tuned: bool,
) -> str:
    """The model's detections with their probabilities, the always-on labels apart, then the table."""
    model = [lb for lb in r["labels"] if r["source"][lb] == MODEL]
    constant = [lb for lb in r["labels"] if r["source"][lb] == CONSTANT]
    if model:
        head = ", ".join(f"{lb} {r['probabilities'][lb]:.3f}" for lb in model)
    else:
        head = "(no model detection)" if constant else "(no label passes its threshold)"
    lines = [f"{src}: {head}"]
    if constant:
        lines.append(f"  {ALWAYS_ON}: {', '.join(constant)}")
    # --top-k: the K most probable labels, most probable first; else every label in label order
    order = np.argsort(-p, kind="stable")[:top_k] if top_k else range(len(p))
    lines += [
        f"  {MARK.get(r['source'].get(labels[i], ''), ' ')} {labels[i]:<{width}} "
        f"{p[i]:6.3f}   ({threshold_text(thresholds[i], tuned)})"
        for i in order
    ]
    return "\n".join(lines)


def results_csv(results: dict[str, dict], single: bool, columns: list[str]) -> str:
    """One row per image; `columns`: the bundle's classes (single-label) or labels (multilabel)."""
    if single:
        header = ["input", "class", "score", "top_k", *columns]
        rows = (
            [
                src,
                r["class"],
                f"{r['score']:.6f}",
                ";".join(f"{t['label']}:{t['score']:.4f}" for t in r["top_k"]),
                *(f"{r['probabilities'][c]:.6f}" for c in columns),
            ]
            for src, r in results.items()
        )
    else:
        # constant_labels last, so the columns readers already index keep their places
        header = ["input", "labels", *columns, "constant_labels"]
        rows = (
            [
                src,
                ";".join(r["labels"]),
                *(f"{r['probabilities'][lb]:.6f}" for lb in columns),
                ";".join(lb for lb in r["labels"] if r["source"][lb] == CONSTANT),
            ]
            for src, r in results.items()
        )
    return csv_text(header, rows)


class Detector:
    """A bundle with the options that decide how its probabilities become labels."""

    def __init__(self, cfg: DetectConfig, bundle: prediction.Bundle):
        self.cfg, self.bundle = cfg, bundle
        task = bundle.task_obj
        self.single = task.single_label
        self.classes = bundle.classes
        t = cfg.threshold
        self.thresholds = np.full(len(bundle.labels), t) if t is not None else bundle.thresholds
        self.cut = (t if t is not None else bundle.threshold) if task.decides_by_cut else None
        self.k = cfg.top_k if cfg.top_k else min(5, len(self.classes))
        self.width = max(len(lb) for lb in self.classes)
        # tuned thresholds at 0 / 1 are constants, not cuts on the model's probability; a --threshold
        # from the command line makes every label a model decision
        self.tuned = t is None
        self.always = self.thresholds <= 0 if self.tuned else np.zeros(len(self.thresholds), bool)
        self.never = self.thresholds >= 1 if self.tuned else np.zeros(len(self.thresholds), bool)

    def header(self, bundle_arg: str) -> tuple[str, str]:
        """Printed once before the first image (multilabel only): the weak-model note when most
        thresholds are constants, and the table's legend."""
        if self.single:
            return "", ""
        n, constant = len(self.thresholds), int(self.always.sum() + self.never.sum())
        note = ""
        if 2 * constant > n:
            note = (
                f"note: {constant} of {n} classes have constant thresholds (the model did not beat "
                f'"always"/"never" on validation data for them): its detections are weak; '
                f"see python evaluate.py --model {shlex.quote(bundle_arg)} for per-class AP"
            )
        legend = "legend: * detected by the model (probability >= the class's threshold)"
        if self.always.any():
            legend += "; = always on (threshold 0: a constant, not the model's decision)"
        if self.never.any():
            legend += '; "threshold 1: never" = a constant "no", never listed'
        return note, legend

    def result(self, src: str, p: np.ndarray) -> tuple[dict, str]:
        """One image's result and its console block."""
        if self.single:
            r = single_result(p, self.classes, self.k, self.cut)
            return r, single_lines(src, r, self.width, self.cut)
        labels, top = self.bundle.labels, self.cfg.top_k
        r = multilabel_result(p, labels, self.thresholds, self.always, self.never, top)
        return r, multilabel_lines(src, r, p, labels, self.thresholds, self.width, top, self.tuned)

    def batch(self, sources: list[str], fetcher: Fetcher, results: dict[str, dict], pad_to: int = 0) -> int:
        """Predict one batch into `results`, printing each image's block; returns how many failed to load.
        `pad_to`: see prediction.predict_arrays (one graph for all the batches of a run)."""
        chunk, arrays = [], []
        for src in sources:
            try:
                arrays.append(prediction.load_image(src, fetcher, self.bundle.input_size, self.cfg.max_pixels))
                chunk.append(src)
            except (FetchError, ImageError, OSError) as e:
                tqdm.write(f"error: {src}: {e}", file=sys.stderr)
        if arrays:
            probs = prediction.predict_arrays(self.bundle, np.stack(arrays), self.cfg.tta, pad_to)
            for src, p in zip(chunk, probs):
                results[src], lines = self.result(src, p)
                if not self.cfg.quiet:
                    tqdm.write(lines)
        return len(sources) - len(chunk)


def run(cfg: DetectConfig) -> int:
    """detect.py: EXIT_OK when every input was processed, EXIT_FAILURES when some failed (or none were
    given). A missing or broken bundle raises (BundleError, OSError, ValueError)."""
    bundle = prediction.load_bundle(cfg.model, cfg.model_save)
    if not bundle.task_obj.fixed_threshold and cfg.threshold is not None:
        print("note: --threshold does not apply to a multiclass bundle (the most probable class wins)", file=sys.stderr)
    detector = Detector(cfg, bundle)
    note, legend = detector.header(cfg.model or str(bundle.path))
    # the table's header on stdout; with --quiet (no table) the note still reaches the user on stderr
    if note:
        print(note, file=sys.stderr if cfg.quiet else sys.stdout)
    if legend and not cfg.quiet:
        print(legend)
    fetcher = Fetcher(min_bytes=0, max_bytes=cfg.max_bytes, retries=2, pool_size=4)
    inputs = list(prediction.expand_inputs(cfg.inputs))
    results: dict[str, dict] = {}
    failed = 0
    n = cfg.batch_size
    bar = tqdm(total=len(inputs), unit="img", desc="detect", disable=len(inputs) <= n, file=sys.stderr)
    for start in range(0, len(inputs), n):
        # several batches: the last one (or one with failures) is padded to the same size
        failed += detector.batch(inputs[start : start + n], fetcher, results, n if len(inputs) > n else 0)
        bar.update(len(inputs[start : start + n]))
    bar.close()
    if cfg.json:
        atomic_write_text(cfg.json, json.dumps(results, indent=2) + "\n")
    if cfg.csv:
        atomic_write_text(
            cfg.csv, results_csv(results, detector.single, detector.classes if detector.single else bundle.labels)
        )
    if failed:
        print(f"{failed} of {len(inputs)} input(s) failed; {len(results)} processed", file=sys.stderr)
    return EXIT_FAILURES if failed or not inputs else EXIT_OK

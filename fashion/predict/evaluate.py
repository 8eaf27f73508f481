"""The `evaluate.py` job: a bundle on a dataset split -> metrics.json, plots and an HTML page.

Every figure is shown beside two baselines a model must beat: the best
constant label set (chosen on the training split) and class priors as scores;
for single-label bundles, the majority class and class priors. Every report
holds `review.csv`, the images with the highest loss, for a person to mark
keep/relabel/drop and feed back to `generate_dataset.py --apply-review`.

    ev = evaluation.score(bundle, data, split, threshold, top_k)  # -> Evaluation
    evaluation.print_summary(ev.result)
    written = evaluation.save_report(ev, out, top_losses)          # -> files written
    evaluation.print_rows(ev)                                      # --table

What differs between tasks (the metrics, the task's figures, the summary) the bundle's task object
answers (fashion.model.tasks).
"""

from __future__ import annotations

import csv
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fashion.config.bundle import EvaluateConfig
from fashion.core import fileio, interrupts
from fashion.core.errors import EXIT_OK, FashionError
from fashion.data import pipeline, records, review
from fashion.model import meta_json, plots
from fashion.model.tasks.base import Task
from fashion.model.tasks.registry import get_task
from fashion.predict import bundle as prediction
from fashion.predict.export import export_bundle


@dataclass
class Evaluation:
    """A bundle scored on one split of a dataset: what every part of the report reads."""

    bundle: prediction.Bundle
    result: dict[str, Any]  # metrics.json
    y: np.ndarray  # (N, labels) label rows
    scores: np.ndarray  # (N, columns) probabilities
    ids: list[str]
    sources: list[str]
    data: str | Path
    split: str
    threshold: float | None = None  # one threshold for every class instead of the bundle's

    @property
    def task(self) -> Task:
        return self.bundle.task_obj

    def rows(self) -> tuple[list[str], list[str], np.ndarray]:
        """Per image: true labels, predicted labels and the predicted probability."""
        return self.task.row_labels(self.y, self.scores, self.result)

    def worst(self, k: int) -> np.ndarray:
        """Indices of the k images with the highest loss (the fastai cleaning view)."""
        return np.argsort(-self.task.image_losses(self.y, self.scores), kind="stable")[:k]


def split_scores(bundle: prediction.Bundle, part: pipeline.Split) -> np.ndarray:
    """The bundle's probabilities on every record of a split, in record order (center crops)."""
    ds = pipeline.make_dataset(
        part.files, len(bundle.labels), image_size=bundle.input_size, batch_size=64, training=False, count=part.count
    )
    return bundle.task_obj.predict(bundle.model, ds)


def score(
    bundle: prediction.Bundle,
    data: str | Path,
    split: str = "val",
    threshold: float | None = None,
    top_k: int | None = None,
) -> Evaluation:
    """Scores the split: the task's metrics beside its baselines (counted on the training split). A shard
    missing or damaged is one FashionError line naming it, before anything is written."""
    part = pipeline.describe_split(data, split)
    splits = tuple(dict.fromkeys((split, "train")))
    damaged = pipeline.refuse_damaged(data, splits=splits)
    if damaged:
        raise FashionError(damaged)
    n = len(bundle.labels)
    try:
        scores = split_scores(bundle, part)
        recs = [(r["id"], r["source"], r["labels"]) for r in records.iter_records(part.files, n)]
    except Exception as e:  # a record damaged inside a shard of the right size: name the shard
        where = pipeline.read_failure(e, data, splits)
        if where is None:
            raise
        raise FashionError(where) from None
    y = np.array([lab for _, _, lab in recs], dtype=int).reshape(len(recs), n)
    k = top_k or int(bundle.meta.get("top_k") or bundle.task_obj.top)
    result = bundle.task_obj.evaluate(
        y, scores, pipeline.describe_split(data, "train"), split, bundle.thresholds, threshold, k
    )
    return Evaluation(
        bundle, result, y, scores, [i for i, _, _ in recs], [s for _, s, _ in recs], data, split, threshold
    )


def print_summary(result: dict[str, Any]) -> None:
    for line in get_task(result.get("task", "multilabel")).summary_lines(result):
        print(line)


def print_rows(ev: Evaluation) -> None:
    """One line per image (file, true label, predicted label, score), as the Caffe project printed, then
    `accuracy: X (n/N)` (multilabel: exact-match accuracy)."""
    true, pred, score = ev.rows()
    files = [src or i for src, i in zip(ev.sources, ev.ids)]
    wf = max([len("file")] + [len(f) for f in files])
    wt = max([len("true")] + [len(t) for t in true])
    wp = max([len("predicted")] + [len(p) for p in pred])
    print(f"{'file':<{wf}}  {'true':<{wt}}  {'predicted':<{wp}}  score")
    for f, t, p, s in zip(files, true, pred, score):
        print(f"{f:<{wf}}  {t:<{wt}}  {p:<{wp}}  {s:.4f}")
    n = len(true)
    right = sum(t == p for t, p in zip(true, pred))
    print(f"accuracy: {right / n if n else 0.0:.4f} ({right}/{n})")


# --------------------------------------------------------------------------- the report folder


def save_report(ev: Evaluation, out: Path, top_losses: int = 20) -> list[Path]:
    """Writes the report into `out`: the task's figures, training curves (the bundle's log/RUN/history.csv),
    the `top_losses` worst images (CSV + PNG), review.csv, metrics.json, index.html; returns the files."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = ev.task.write_plots(out, ev.y, ev.scores, ev.result)
    curves = training_curves(history_for(ev.bundle), out)
    written += [curves] if curves else []
    written += write_losses(ev, out, ev.worst(top_losses))
    fileio.atomic_write_json(out / "metrics.json", ev.result)
    fileio.atomic_write_text(
        out / "index.html", html_page(ev.result, ev.task, [p.name for p in written if p.suffix == ".png"])
    )
    return [*written, out / "metrics.json", out / "index.html"]


def history_for(bundle: prediction.Bundle) -> Path | None:
    """The training run's history.csv, from the config in the bundle's meta.json."""
    meta = meta_json.read(bundle.path / meta_json.META)
    cfg = meta.get("config", {})
    if not cfg.get("run"):
        return None
    return Path(str(cfg.get("log", "log"))) / str(cfg["run"]) / "history.csv"


def training_curves(history: Path | None, out: Path) -> Path | None:
    """training_curves.png from history.csv, if there is one."""
    if history is None or not history.is_file():
        return None
    with open(history, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    return plots.save(plots.training_curves(rows, history.parent.name), out / "training_curves.png")


def write_losses(ev: Evaluation, out: Path, worst: np.ndarray) -> list[Path]:
    """top_losses.csv (probabilities, an `action` column to mark), review.csv, top_losses.png."""
    true, pred, _ = ev.rows()
    fileio.atomic_write_text(
        out / "top_losses.csv",
        fileio.csv_text(
            ["id", "true_labels", "predicted_labels", "action", *ev.bundle.classes],
            ([ev.ids[i], true[i], pred[i], "keep", *(f"{s:.4f}" for s in ev.scores[i])] for i in worst),
        ),
    )
    fileio.atomic_write_text(out / "review.csv", review_csv(ev, worst))
    written = [out / "top_losses.csv", out / "review.csv"]
    wanted = {ev.ids[i] for i in worst}
    images = {
        r["id"]: r["image"]
        for r in records.iter_records(pipeline.describe_split(ev.data, ev.split).files, len(ev.bundle.labels))
        if r["id"] in wanted
    }
    if images:
        titles = [f"{ev.ids[i]}\n" + ev.task.loss_caption(ev.y[i], ev.scores[i], pred[i]) for i in worst]
        fig = plots.image_grid(
            [images.get(ev.ids[i]) for i in worst],
            titles,
            "top losses: images the model gets most wrong " + ev.task.losses_note,
        )
        written.append(plots.save(fig, out / "top_losses.png"))
    return written


def review_csv(ev: Evaluation, worst: np.ndarray) -> str:
    """The top-loss images as `id,source,labels,predicted,score,loss,action,new_labels`; action and
    new_labels are left blank for a person (keep / relabel / drop)."""
    loss = ev.task.image_losses(ev.y, ev.scores)
    true, pred, score = ev.rows()
    sources = ev.sources or [""] * len(ev.ids)
    return fileio.csv_text(
        list(review.COLUMNS),
        ([ev.ids[i], sources[i], true[i], pred[i], f"{score[i]:.4f}", f"{loss[i]:.4f}", "", ""] for i in worst),
    )


def html_page(result: dict[str, Any], task: Task, pngs: list[str]) -> str:
    """index.html: the verdict, the task's tables, then every figure."""
    heading, tables = task.html(result)
    imgs = "".join(f'<h3>{html.escape(p)}</h3><img src="{html.escape(p)}" style="max-width:100%">' for p in pngs)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>fashion evaluation</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 10px;text-align:right}}</style></head><body>
<h1>{heading}</h1>
<p><b>{html.escape(result["verdict"])}</b></p>
{tables}{imgs}</body></html>
"""


def run(cfg: EvaluateConfig) -> int:
    """evaluate.py's job: export the bundle (--export), or score it and write the report."""
    bundle = prediction.load_bundle(cfg.model, cfg.model_save)
    interrupts.check()  # a Ctrl-C dropped while TensorFlow loaded
    if cfg.export:
        for fmt in cfg.export:
            print(f"exported {fmt}: {export_bundle(bundle, fmt)}")
        return EXIT_OK
    ev = score(bundle, cfg.data, cfg.split, cfg.threshold, cfg.top_k)
    print_summary(ev.result)
    interrupts.check()
    written = save_report(ev, Path(cfg.out), cfg.top_losses)
    print(f"report: {Path(cfg.out) / 'index.html'} ({len(written)} files)")
    if cfg.table:  # last, so the accuracy line ends the output as in the Caffe project's script
        print()
        print_rows(ev)
    return EXIT_OK

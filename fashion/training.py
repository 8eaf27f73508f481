"""The `train.py` job: dataset.json + shards -> trained model bundle in model_save/RUN/.

Stages (`--stages heads:5,all:20`) run one after another in one command, each
with its own layer group and learning rate. After every epoch the validation
set is scored (AP per head, mAP, sample-F2, macro-F1), `last.keras` is saved
(atomically) with the optimiser state, and `best.keras` when validation mAP
improves. At the end, per-class thresholds are tuned on validation data to
maximise sample-F2 and the bundle (`model.keras` + `meta.json`) is written.

Single-label tasks (`--task multiclass|binary`, or a manifest whose task is
multiclass) train one softmax (or sigmoid) head instead; they are scored by
accuracy, top-k accuracy and macro-F1 (binary: ROC-AUC, accuracy, F1 of the
positive class at a threshold tuned on validation data), beside the majority
class and class priors.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np

from . import fileio, losses, metrics, model as model_lib, pipeline, records
from .config import TrainConfig
from .errors import EXIT_INTERRUPTED, EXIT_OK, TrainError
from .fileio import save_model_atomic
from .prediction import binary_classes, to_probs

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("onecycle", "cosine", "plateau", "constant")


@dataclass
class Stage:
    layers: str
    epochs: int
    lr: float


def parse_stages(cfg: TrainConfig) -> list[Stage]:
    """`heads:5,all:20:1e-4` -> stages; without --stages, one stage of --layers for --epochs."""
    if not cfg.stages:
        return [Stage(cfg.layers, cfg.epochs, cfg.lr)]
    out = []
    for part in cfg.stages.split(","):
        bits = part.strip().split(":")
        if len(bits) not in (2, 3) or not bits[1].isdigit():
            raise TrainError(f"--stages: '{part}' is not GROUP:EPOCHS[:LR] (e.g. heads:5,all:20:1e-4)")
        try:
            lr = float(bits[2]) if len(bits) == 3 else cfg.lr
        except ValueError:
            raise TrainError(f"--stages: '{bits[2]}' in '{part}' is not a learning rate") from None
        out.append(Stage(bits[0], int(bits[1]), lr))
    return out


# --------------------------------------------------------------------------- optimisation

def make_schedule(kind: str, lr: float, steps: int, warmup: float):
    if kind not in SCHEDULES:
        raise TrainError(f"--schedule must be one of {SCHEDULES}, got {kind!r}")
    if kind == "onecycle":
        return OneCycle(lr, max(steps, 1), warmup=max(warmup, 0.25))
    if kind == "cosine":
        w = int(steps * warmup)
        return keras.optimizers.schedules.CosineDecay(lr / 25.0 if w else lr, max(steps - w, 1), alpha=1e-3,
                                                      warmup_target=lr if w else None, warmup_steps=w)
    return lr  # constant; plateau lowers it from a callback


class _TrunkRate:
    """Discriminative rates (`--lr-mult`): trunk variables step at `lr_mult` x the rate, heads at the rate.

    Heads are the layers named `head_*` (model.py); everything else is trunk. Scaling the rate inside
    `update_step` keeps one optimizer, so its state, schedule, accumulation and loss scaling stay as
    they are, and the multiplier travels in the optimizer's config through checkpoints and --resume.
    """

    def __init__(self, *args, lr_mult: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.lr_mult = float(lr_mult)

    def build(self, variables):
        super().build(variables)
        # update_step may see the backend's variable (no .path), so remember the trunk by key
        self._trunk_keys = {self._var_key(v) for v in variables if not v.path.startswith(model_lib.HEAD_PREFIX)}

    def update_step(self, gradient, variable, learning_rate):
        if self.lr_mult != 1.0 and self._var_key(variable) in self._trunk_keys:
            learning_rate = learning_rate * self.lr_mult
        return super().update_step(gradient, variable, learning_rate)

    def _clip_gradients(self, grads):
        # Keras 3's TensorFlow optimizer clips each replica's gradient before it sums them across replicas
        # (MirroredStrategy, --cpu-devices), so SGD's clipnorm would bound the wrong vector and training on
        # N devices would differ from one. Sum first, clip the batch gradient, hand back 1/N of it: Keras'
        # own sum then restores the clipped gradient exactly.
        if keras.backend.backend() != "tensorflow" or not (self.clipnorm or self.global_clipnorm or self.clipvalue):
            return super()._clip_gradients(grads)
        import tensorflow as tf

        ctx = tf.distribute.get_replica_context()
        n = ctx.num_replicas_in_sync if ctx is not None else 1
        if n == 1:
            return super()._clip_gradients(grads)
        live = [i for i, g in enumerate(grads) if g is not None]
        summed = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [grads[i] for i in live])
        out = list(grads)
        for i, g in zip(live, super()._clip_gradients(summed)):
            out[i] = g / n
        return out

    def get_config(self):
        return {**super().get_config(), "lr_mult": self.lr_mult}


@keras.saving.register_keras_serializable(package="fashion")
class SGD(_TrunkRate, keras.optimizers.SGD):
    pass


@keras.saving.register_keras_serializable(package="fashion")
class Adam(_TrunkRate, keras.optimizers.Adam):
    pass


@keras.saving.register_keras_serializable(package="fashion")
class AdamW(_TrunkRate, keras.optimizers.AdamW):
    pass


def make_optimizer(cfg: TrainConfig, lr) -> Any:
    accum = cfg.accum_steps if cfg.accum_steps > 1 else None
    if cfg.lr_mult < 0:
        raise TrainError(f"--lr-mult must be >= 0, got {cfg.lr_mult}")
    common = {"gradient_accumulation_steps": accum, "lr_mult": cfg.lr_mult}
    if cfg.optimizer == "sgd":  # the original project: momentum 0.9, clipnorm 5
        return SGD(lr, momentum=0.9, clipnorm=5.0, weight_decay=cfg.weight_decay or None, **common)
    if cfg.optimizer == "adam":
        return Adam(lr, weight_decay=cfg.weight_decay or None, **common)
    if cfg.optimizer == "adamw":
        return AdamW(lr, weight_decay=cfg.weight_decay or 1e-2, **common)
    raise TrainError(f"--optimizer must be one of {OPTIMIZERS}, got {cfg.optimizer!r}")


@keras.saving.register_keras_serializable(package="fashion")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """fastai's one-cycle: cosine warm-up from lr/25 to lr over `warmup` of the steps, cosine down to lr/1e5."""

    def __init__(self, lr: float, steps: int, warmup: float = 0.25):
        self.lr, self.steps, self.warmup = float(lr), int(steps), float(warmup)

    def __call__(self, step):
        ops = keras.ops
        step = ops.cast(step, "float32")
        up = max(self.steps * self.warmup, 1.0)
        lo, hi, end = self.lr / 25.0, self.lr, self.lr / 1e5
        t_up = ops.clip(step / up, 0.0, 1.0)
        t_down = ops.clip((step - up) / max(self.steps - up, 1.0), 0.0, 1.0)
        warm = lo + (hi - lo) * (1 - ops.cos(math.pi * t_up)) / 2
        cool = end + (hi - end) * (1 + ops.cos(math.pi * t_down)) / 2
        return ops.where(step < up, warm, cool)

    def get_config(self):
        return {"lr": self.lr, "steps": self.steps, "warmup": self.warmup}


# --------------------------------------------------------------------------- callbacks

MONITOR = {"multilabel": "val_mAP", "multiclass": "val_accuracy", "binary": "val_auc"}


class EpochEval(keras.callbacks.Callback):
    """Scores the validation set after each epoch: AP per head, mAP, sample-F2, macro-F1, learning rate
    (multilabel); accuracy, top-k accuracy, macro-F1 (multiclass); ROC-AUC, AP, accuracy at 0.5 (binary)."""

    def __init__(self, val_ds, y_val, names, task: str = "multilabel", classes=None, top: int = 5):
        super().__init__()
        self.val_ds, self.y_val, self.names = val_ds, y_val, names
        self.task, self.classes, self.top = task, classes, top

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if self.task != "multilabel":
            return self._single(epoch, logs)
        scores = predict_scores(self.model, self.val_ds, self.names)
        s = metrics.summary(self.y_val, scores)
        logs["val_mAP"] = s["mAP"]
        logs["val_f2_samples"] = s["f2_samples"]
        logs["val_f1_macro"] = s["f1_macro"]
        for name, ap in zip(self.names, s["ap"]):
            logs[f"val_ap_{name}"] = float("nan") if ap is None or np.isnan(ap) else ap
        logs["learning_rate"] = current_lr(self.model.optimizer)
        took = time.perf_counter() - self.t0
        print(f"epoch {epoch + 1}: loss {logs.get('loss', float('nan')):.4f}  val_loss "
              f"{logs.get('val_loss', float('nan')):.4f}  val mAP {s['mAP']:.3f}  sample-F2@0.5 "
              f"{s['f2_samples']:.3f}  macro-F1 {s['f1_macro']:.3f}  lr {logs['learning_rate']:.2e}  ({took:.0f}s)",
              flush=True)

    def _single(self, epoch, logs):
        probs = predict_scores(self.model, self.val_ds, self.names, self.task)
        y = metrics.class_indices(self.y_val, self.task)
        s = metrics.single_label_summary(y, probs, self.classes, self.top)
        logs["val_accuracy"], logs["val_f1_macro"] = s["accuracy"], s["f1_macro"]
        if self.task == "multiclass":
            logs[f"val_top{s['top_k']}_accuracy"] = s["top_k_accuracy"]
            shown = f"val accuracy {s['accuracy']:.3f}  top-{s['top_k']} {s['top_k_accuracy']:.3f}"
        else:
            b = metrics.binary_scores(y, probs[:, 1])
            logs["val_auc"], logs["val_ap"] = (float("nan") if b[k] is None else b[k] for k in ("roc_auc", "ap"))
            shown = f"val AUC {logs['val_auc']:.3f}  AP {logs['val_ap']:.3f}  accuracy@0.5 {s['accuracy']:.3f}"
        logs["learning_rate"] = current_lr(self.model.optimizer)
        took = time.perf_counter() - self.t0
        print(f"epoch {epoch + 1}: loss {logs.get('loss', float('nan')):.4f}  val_loss "
              f"{logs.get('val_loss', float('nan')):.4f}  {shown}  macro-F1 {s['f1_macro']:.3f}  "
              f"lr {logs['learning_rate']:.2e}  ({took:.0f}s)", flush=True)

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.perf_counter()


class Checkpoints(keras.callbacks.Callback):
    """last.keras every epoch and best.keras on a better monitored value (val mAP; single-label: val
    accuracy or AUC); temp name + rename; state.json last (its `best_mAP` holds the monitored value)."""

    def __init__(self, folder: Path, stage: int, best: float, monitor: str = "val_mAP"):
        super().__init__()
        self.folder, self.stage, self.best, self.monitor = folder, stage, best, monitor

    def on_epoch_end(self, epoch, logs=None):
        mAP = (logs or {}).get(self.monitor, float("-inf"))
        mAP = float("-inf") if mAP is None or np.isnan(mAP) else mAP
        save_model_atomic(self.model, self.folder / "last.keras")
        if mAP > self.best:
            self.best = mAP
            shutil.copyfile(self.folder / "last.keras", self.folder / ".best.tmp.keras")
            os.replace(self.folder / ".best.tmp.keras", self.folder / "best.keras")
        write_state(self.folder, {"stage": self.stage, "epoch": epoch + 1, "best_mAP": self.best})


def current_lr(optimizer) -> float:
    lr = optimizer.learning_rate
    try:
        return float(np.asarray(lr))
    except TypeError:
        return float(np.asarray(lr(optimizer.iterations)))


def write_state(folder: Path, state: dict) -> None:
    fileio.atomic_write_json(folder / "state.json", state)


def predict_scores(model, ds, names, task: str = "multilabel") -> np.ndarray:
    return to_probs(model.predict(ds, verbose=0), names, task)


# --------------------------------------------------------------------------- lr range test

class LRRangeTest(keras.callbacks.Callback):
    """Raises the learning rate exponentially each step and records the loss; stops when it diverges."""

    def __init__(self, start: float, stop: float, steps: int):
        super().__init__()
        self.rates = np.geomspace(start, stop, steps)
        self.lrs: list[float] = []
        self.losses: list[float] = []

    def on_train_batch_begin(self, batch, logs=None):
        self.model.optimizer.learning_rate.assign(float(self.rates[min(batch, len(self.rates) - 1)]))

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", np.nan))
        self.lrs.append(float(self.rates[min(batch, len(self.rates) - 1)]))
        self.losses.append(loss)
        best = np.nanmin(self.losses)
        if not np.isfinite(loss) or (len(self.losses) > 5 and loss > 4 * best):
            self.model.stop_training = True


def suggest_lr(lrs: list[float], losses_: list[float]) -> float:
    """fastai's 'valley': the middle of the longest run of falling smoothed loss."""
    loss = np.array(losses_, float)
    finite = np.isfinite(loss)
    lrs_a, loss = np.array(lrs)[finite], loss[finite]
    if len(loss) < 3:
        return float(lrs_a[0]) if len(lrs_a) else 1e-3
    smooth = np.convolve(loss, np.ones(3) / 3, mode="same")
    n = len(smooth)
    run = np.ones(n, int)  # longest decreasing run ending at i (over any earlier start)
    for i in range(1, n):
        for j in range(i):
            if smooth[i] < smooth[j] and run[j] + 1 > run[i]:
                run[i] = run[j] + 1
    end = int(run.argmax())
    start = end - run[end] + 1
    return float(lrs_a[start + (end - start) * 2 // 3])


def lr_find(model, train_ds, png: Path, steps_per_epoch: int, start: float = 1e-7, stop: float = 10.0,
            max_steps: int = 100) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(10, min(max_steps, steps_per_epoch * 5))
    cb = LRRangeTest(start, stop, n)
    print(f"learning-rate range test: {n} steps from {start:g} to {stop:g}")
    model.fit(train_ds.repeat(), steps_per_epoch=n, epochs=1, callbacks=[cb], verbose=0, shuffle=False)
    lr = suggest_lr(cb.lrs, cb.losses)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(cb.lrs, cb.losses)
    ax.axvline(lr, color="red", linestyle="--", label=f"suggested {lr:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("learning-rate range test")
    ax.legend()
    fig.tight_layout()
    tmp = png.with_name(".lr_find.tmp.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, png)
    plt.close(fig)
    print(f"suggested learning rate: {lr:.2e}  (plot: {png}); train with --lr {lr:.2g}")
    return EXIT_OK


# --------------------------------------------------------------------------- single-label tasks

def resolve_task(spec: str, manifest: dict, train: pipeline.Split) -> str:
    """`--task auto` = the manifest's task (absent: multilabel); checks the dataset fits the task."""
    task = manifest.get("task", "multilabel") if spec == "auto" else spec
    if task not in model_lib.TASKS:
        raise TrainError(f"--task must be auto or one of {model_lib.TASKS}, got {task!r}")
    k = len(manifest["labels"])
    if task == "binary" and k not in (1, 2):
        raise TrainError(f"--task binary needs a dataset of 1 or 2 classes (the positive one second); "
                         f"this one has {k}: use --task multiclass")
    if task == "multiclass" and k < 2:
        raise TrainError("--task multiclass needs at least 2 classes; with one, use --task binary")
    if (task == "multiclass" or task == "binary" and k == 2) and sum(train.positives) != train.count:
        raise TrainError(f"--task {task}: the training split has {sum(train.positives)} labels on "
                         f"{train.count} images, not exactly one each: this is a multi-label dataset "
                         f"(use --task multilabel)")
    return task


def top_k_for(k: int) -> int:
    """The k of top-k accuracy: 5 (as fastai and Caffe report), fewer on small class sets so it is not
    trivially 1 (top-2 of 3 classes; 1 = accuracy for 2)."""
    return max(1, min(5, k - 1))


def check_single_label(y: np.ndarray, task: str, where: str) -> None:
    if task == "binary" and y.shape[1] == 1:
        return
    bad = int((y.sum(1) != 1).sum())
    if bad:
        raise TrainError(f"--task {task}: {bad} record(s) of {where} have other than exactly one label "
                         f"(use --task multilabel)")


def single_loss(cfg: TrainConfig, task: str, pos_weight: float = 1.0):
    """multiclass: categorical cross-entropy (`--loss bce`) or focal; binary: the sigmoid head's loss."""
    if task == "binary":
        return losses.HeadLoss(cfg.loss, pos_weight=pos_weight, gamma=cfg.gamma,
                               label_smoothing=cfg.label_smoothing)
    if cfg.loss == "bce":
        return keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
    if cfg.loss == "focal":
        return keras.losses.CategoricalFocalCrossentropy(gamma=cfg.gamma, label_smoothing=cfg.label_smoothing)
    raise TrainError(f"--loss {cfg.loss} is for sigmoid heads; --task multiclass takes bce (categorical "
                     f"cross-entropy) or focal")


def single_metrics(task: str, top: int) -> list:
    if task == "binary":
        return [keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")]
    return [keras.metrics.CategoricalAccuracy(name="accuracy"),
            keras.metrics.TopKCategoricalAccuracy(k=top, name=f"top{top}_accuracy")]


# --------------------------------------------------------------------------- the job

class Tee:
    """Copies the console to log/RUN/console.log."""

    def __init__(self, stream, path: Path):
        self.stream, self.file = stream, open(path, "a", encoding="utf-8")

    def write(self, s):
        self.stream.write(s)
        self.file.write(s)
        return len(s)

    def flush(self):
        self.stream.flush()
        self.file.flush()

    def isatty(self):
        return self.stream.isatty()


def manifest_hash(folder: str | Path) -> str:
    return hashlib.sha256((Path(folder) / records.MANIFEST).read_bytes()).hexdigest()[:16]


def check_cluster() -> None:
    """Refuse a multi-machine TF_CONFIG up front: Keras 3's TensorFlow trainer cannot fit under
    MultiWorkerMirroredStrategy (tried with keras 3.15 / TF 2.21 on two local workers: `fit` fails
    reducing the input batch, then reducing its logs; keras-team/keras#20585)."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return
    try:
        cluster = json.loads(raw).get("cluster", {})
    except (ValueError, AttributeError) as e:
        raise TrainError(f"TF_CONFIG is not valid JSON: {e}") from None
    tasks = sum(len(v) for k, v in cluster.items() if k in ("chief", "worker"))
    if tasks > 1:
        raise TrainError(
            f"TF_CONFIG describes {tasks} machines, but training across machines does not work with Keras 3's "
            f"TensorFlow trainer (model.fit under MultiWorkerMirroredStrategy fails: "
            f"https://github.com/keras-team/keras/issues/20585). Train on one machine, which uses all its GPUs "
            f"(MirroredStrategy), and unset TF_CONFIG.")


def check_devices(cfg: TrainConfig) -> None:
    """Refuse, before anything is written, what cannot run on the devices setup_device will use
    (all GPUs, else --cpu-devices logical CPUs)."""
    import tensorflow as tf

    if cfg.cpu_devices < 1:
        raise TrainError(f"--cpu-devices must be >= 1, got {cfg.cpu_devices}")
    gpus = len(tf.config.list_physical_devices("GPU"))
    n = gpus or cfg.cpu_devices
    if cfg.xla and not gpus and n > 1:
        # XLA compiles the step for one CPU and then reads variables kept on the other logical devices
        # ("Trying to access resource ... located in device CPU:1", a TF XLA known issue); GPUs are fine
        raise TrainError("--xla cannot compile for --cpu-devices (logical CPUs share one XLA device): drop one")
    if cfg.accum_steps > 1 and n > 1:
        # Keras 3 accumulates inside a cond whose branch sums gradients across replicas, which
        # tf.distribute refuses ("merge_call called while defining a new graph"); found on --cpu-devices 2
        raise TrainError(f"--accum-steps {cfg.accum_steps} cannot run on {n} devices (Keras 3's gradient "
                         f"accumulation does not work under MirroredStrategy): raise --batch-size instead, it is "
                         f"per device, so {n} devices already train on {n}x the batch")


def setup_device(cfg: TrainConfig):
    """Strategy (mirrored on >1 GPU, or on --cpu-devices logical CPUs) and mixed precision on GPU."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for g in gpus:
        with contextlib.suppress(RuntimeError):
            tf.config.experimental.set_memory_growth(g, True)
    if cfg.cpu_devices > 1 and not gpus:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cfg.cpu_devices)
    if len(gpus) > 1:
        strategy = tf.distribute.MirroredStrategy()
    elif cfg.cpu_devices > 1 and not gpus:
        strategy = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
    else:
        strategy = tf.distribute.get_strategy()
    mp = cfg.mixed_precision == "on" or (cfg.mixed_precision == "auto" and gpus)
    keras.mixed_precision.set_global_policy("mixed_float16" if mp else "float32")
    where = f"{len(gpus)} GPU(s)" if gpus else "CPU"
    print(f"device: {where}; replicas: {strategy.num_replicas_in_sync}; mixed precision: {'on' if mp else 'off'}"
          f"{'; XLA on' if cfg.xla else ''}")
    return strategy


class Trainer:
    def __init__(self, cfg: TrainConfig, command: str):
        self.cfg = cfg
        self.command = command
        if not cfg.run:
            cfg.run = datetime.now().strftime("%Y%m%d-%H%M%S")
        self.save_dir = Path(cfg.model_save) / cfg.run
        self.log_dir = Path(cfg.log) / cfg.run

    def run(self) -> int:
        stdout = sys.stdout
        try:
            return self._run()
        finally:
            if isinstance(sys.stdout, Tee):
                sys.stdout.file.close()
            sys.stdout = stdout

    def _run(self) -> int:
        import yaml

        cfg = self.cfg
        manifest = records.load_manifest(cfg.data)
        labels = manifest["labels"]
        train = pipeline.describe_split(cfg.data, "train")
        val = pipeline.describe_split(cfg.data, "val")
        self.task = task = resolve_task(cfg.task, manifest, train)
        names = model_lib.task_heads(labels, task)
        self.classes = binary_classes(labels) if task == "binary" else list(labels)
        self.top = top_k_for(len(self.classes))
        if task != "multilabel":
            single_loss(cfg, task)  # a loss the head cannot take stops here, before anything is written
        stages = parse_stages(cfg)
        check_cluster()
        check_devices(cfg)
        if cfg.resume and not (self.save_dir / "state.json").is_file():
            raise TrainError(f"--resume: {self.save_dir}/state.json not found (is --run {cfg.run} right?)")
        if not cfg.resume and (self.save_dir / "state.json").is_file():
            raise TrainError(f"{self.save_dir} already holds run '{cfg.run}': add --resume to continue it, "
                             f"or pick another --run")
        # find pretrained weights before anything is written: a missing file leaves no empty run behind
        weights = (None, None) if cfg.resume else model_lib.resolve_weights(
            cfg.weights, cfg.backbone, Path(cfg.model_save), cfg.alpha, cfg.image_size)
        self.save_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        sys.stdout = Tee(sys.stdout, self.log_dir / "console.log")
        fileio.atomic_write_text(self.log_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        keras.utils.set_random_seed(cfg.seed)

        n = train.count
        if task == "multilabel":
            hw = losses.head_weights(train.positives, n, cfg.head_weights, cfg.beta)
            pw = losses.pos_weights(train.positives, n, cfg.pos_weight)
            self._print_weights(labels, train.positives, n, hw, pw)
        else:  # one head: class weights (Keras class_weight) instead of head weights
            self.counts = pipeline.class_counts(train, task)
            hw = losses.class_weights(self.counts, cfg.class_weights)
            pw = losses.pos_weights(self.counts[1:], n, cfg.pos_weight) if task == "binary" else np.ones(1)
            self._print_class_weights(n, hw, pw)

        strategy = setup_device(cfg)
        batch = cfg.batch_size * strategy.num_replicas_in_sync
        small = sum(s["bytes"] for s in manifest["splits"]["train"]["shards"]) < (1 << 30)
        target = dict(output_names=names) if task == "multilabel" else \
            dict(column=len(labels) - 1) if task == "binary" else {}
        train_ds = pipeline.make_dataset(train.files, len(labels), image_size=cfg.image_size, batch_size=batch,
                                         training=True, seed=cfg.seed, cache=small, jitter=cfg.jitter,
                                         rotate=cfg.rotate, count=train.count, **target)
        val_ds = pipeline.make_dataset(val.files, len(labels), image_size=cfg.image_size, batch_size=batch,
                                       training=False, cache=True, count=val.count, **target)
        y_val = pipeline.labels_of(val.files, len(labels))
        if task != "multilabel":
            check_single_label(y_val, task, f"{cfg.data} (val)")
        steps = math.ceil(n / batch)

        state = json.loads((self.save_dir / "state.json").read_text()) if cfg.resume else {
            "stage": 0, "epoch": 0, "best_mAP": float("-inf")}
        evaluator = EpochEval(val_ds, y_val, names, task, self.classes, self.top)
        monitor = MONITOR[task]
        with strategy.scope():
            if cfg.resume:
                print(f"resuming {cfg.run}: stage {state['stage'] + 1}/{len(stages)}, after epoch {state['epoch']}")
                model = keras.saving.load_model(self.save_dir / "last.keras")
            else:
                model = self._build(labels, *weights)
        print(model_lib.describe(model))
        if cfg.lr_find:
            with strategy.scope():
                self._prepare(model, stages[0].layers, 1e-7, names, hw, pw)
            return lr_find(model, train_ds, self.log_dir / "lr_find.png", steps)

        done = sum(s.epochs for s in stages[:state["stage"]])
        epoch = state["epoch"]
        try:
            for i, stage in enumerate(stages):
                end = done + stage.epochs
                if i < state["stage"] or epoch >= end:
                    done = end
                    continue
                # steps already taken in an epoch cut short by Ctrl-C (the optimiser state has them)
                partial = state.get("step", 0) if cfg.resume and i == state["stage"] else 0
                if not (cfg.resume and i == state["stage"] and (epoch > done or partial)):
                    with strategy.scope():
                        lr = make_schedule(cfg.schedule, stage.lr, steps * stage.epochs, cfg.warmup)
                        n_tr = self._prepare(model, stage.layers, lr, names, hw, pw)
                    print(f"stage {i + 1}/{len(stages)}: layers={stage.layers} ({n_tr} trunk layers train), "
                          f"epochs {epoch + 1}-{end}, lr {stage.lr:g} ({cfg.schedule}, {cfg.optimizer})"
                          + (f", trunk at x{cfg.lr_mult:g}" if cfg.lr_mult != 1 and stage.layers != "heads" else ""))
                checkpoints = Checkpoints(self.save_dir, i, state["best_mAP"], monitor)
                cbs = [evaluator, checkpoints,
                       keras.callbacks.CSVLogger(str(self.log_dir / "history.csv"), append=True),
                       keras.callbacks.TensorBoard(str(self.log_dir), write_graph=False, profile_batch=0)]
                if cfg.schedule == "plateau":
                    cbs.insert(1, keras.callbacks.ReduceLROnPlateau(monitor=monitor, mode="max", factor=0.3,
                                                                    patience=1, verbose=1))
                self._interrupt_info = (i, done, epoch)
                fit = dict(validation_data=val_ds, callbacks=cbs, shuffle=False,
                           verbose=1 if sys.stdout.isatty() else 0)
                if task != "multilabel" and cfg.class_weights != "none":
                    fit["class_weight"] = {c: float(w) for c, w in enumerate(hw)}
                if partial:
                    model.fit(train_ds, epochs=epoch + 1, initial_epoch=epoch, steps_per_epoch=steps - partial, **fit)
                    epoch += 1
                if epoch < end:
                    model.fit(train_ds, epochs=end, initial_epoch=epoch, **fit)
                state["best_mAP"] = checkpoints.best
                state.pop("step", None)
                epoch = done = end
                write_state(self.save_dir, {"stage": i + 1, "epoch": epoch, "best_mAP": state["best_mAP"]})
        except KeyboardInterrupt:
            self._save_interrupted(model, steps)
            return EXIT_INTERRUPTED

        if task != "multilabel":
            return self._finish_single(model, labels, names, val_ds, y_val, hw, pw, manifest)
        return self._finish(model, labels, names, val_ds, y_val, train, hw, pw, manifest)

    def _prepare(self, model, layers: str, lr, names, hw, pw) -> int:
        """Set the layer group, then compile with one weighted loss per head; returns trainable trunk layers."""
        cfg = self.cfg
        n_tr = model_lib.set_trainable(model, layers, cfg.bn, from_scratch=cfg.weights == "none")
        task = self.task
        if task != "multilabel":
            model.compile(optimizer=make_optimizer(cfg, lr), loss=single_loss(cfg, task, float(pw[0])),
                          metrics=single_metrics(task, self.top), jit_compile=cfg.xla, run_eagerly=cfg.eager)
            return n_tr
        model.compile(optimizer=make_optimizer(cfg, lr),
                      loss={nm: losses.HeadLoss(cfg.loss, pos_weight=float(pw[k]), gamma=cfg.gamma,
                                                label_smoothing=cfg.label_smoothing) for k, nm in enumerate(names)},
                      loss_weights={nm: float(hw[k]) for k, nm in enumerate(names)},
                      jit_compile=cfg.xla, run_eagerly=cfg.eager)
        return n_tr

    def _save_interrupted(self, model, steps: int) -> None:
        """Ctrl-C: checkpoint weights + optimiser mid-epoch; state.json records the steps already taken."""
        stage, first_epoch, _ = getattr(self, "_interrupt_info", (0, 0, 0))
        saved = json.loads((self.save_dir / "state.json").read_text()) if (self.save_dir / "state.json").is_file() \
            else {"stage": stage, "epoch": first_epoch, "best_mAP": float("-inf")}
        if saved["stage"] != stage:  # interrupted right at a stage boundary: nothing of the new stage to keep
            print("\ninterrupted between stages; rerun with --resume to go on", file=sys.stderr)
            return
        taken = int(np.asarray(model.optimizer.iterations)) - steps * (saved["epoch"] - first_epoch)
        save_model_atomic(model, self.save_dir / "last.keras")
        write_state(self.save_dir, {**saved, "step": max(0, min(taken, steps - 1))})
        print(f"\ninterrupted: checkpoint saved to {self.save_dir}/last.keras (epoch {saved['epoch'] + 1}, "
              f"step {taken}); continue with the same command plus --resume --run {self.cfg.run}", file=sys.stderr)

    def _build(self, labels, notop: str | None, bundle: str | None):
        cfg = self.cfg
        model = model_lib.build_model(labels, cfg.backbone, cfg.image_size, notop, cfg.head_dropout,
                                      task=self.task, alpha=cfg.alpha)
        if bundle:
            model_lib.load_trunk_from_bundle(model, bundle)
            print(f"trunk initialised from bundle {bundle}")
        elif notop:
            print(f"trunk initialised from ImageNet weights {notop}")
        else:
            print("trunk initialised at random (--weights none)")
            if model_lib.cap_bn_momentum(model):
                print("trunk BatchNorm momentum capped at 0.99 so its statistics converge in a short run")
        return model

    def _print_weights(self, labels, positives, n, hw, pw) -> None:
        cfg = self.cfg
        print(f"training images: {n}; head weights: {cfg.head_weights}; positive weights: {cfg.pos_weight}; "
              f"loss: {cfg.loss}")
        width = max(len(lb) for lb in labels)
        print(f"  {'class':<{width}} {'pos':>7} {'head w':>8} {'pos w':>7}")
        for lb, p, h, q in zip(labels, positives, hw, pw):
            print(f"  {lb:<{width}} {p:7d} {h:8.3f} {q:7.2f}")
        empty = [lb for lb, p in zip(labels, positives) if not p]
        if empty:
            print(f"warning: no training positive for {', '.join(empty)}: those heads learn to say no, and their "
                  f"AP is left out of mAP")

    def _print_class_weights(self, n, cw, pw) -> None:
        cfg = self.cfg
        extra = f"; positive class: {self.classes[1]} (the second label)" if self.task == "binary" else ""
        print(f"task: {self.task}; training images: {n}; class weights: {cfg.class_weights}; loss: "
              f"{'categorical cross-entropy' if self.task == 'multiclass' and cfg.loss == 'bce' else cfg.loss}"
              f"{extra}")
        width = max(len(c) for c in self.classes)
        print(f"  {'class':<{width}} {'images':>7} {'weight':>8}")
        for c, k, w in zip(self.classes, self.counts, cw):
            print(f"  {c:<{width}} {k:7d} {w:8.3f}")
        if self.task == "binary" and cfg.pos_weight != "none":
            print(f"  positive weight inside the loss: {pw[0]:.2f}")
        empty = [c for c, k in zip(self.classes, self.counts) if not k]
        if empty:
            print(f"warning: no training image of {', '.join(empty)}: the model cannot learn those classes")

    def _finish_single(self, model, labels, names, val_ds, y_val, cw, pw, manifest) -> int:
        """Single-label bundle: no thresholds (multiclass) or the positive class's, tuned for its F1 (binary)."""
        task, classes, top = self.task, self.classes, self.top
        best = self.save_dir / "best.keras"
        if best.is_file():
            model = keras.saving.load_model(best, compile=False)
        probs = predict_scores(model, val_ds, names, task)
        y = metrics.class_indices(y_val, task)
        thresholds: list[float] = []
        extra: dict[str, Any] = {}
        if task == "binary":
            p = probs[:, 1]
            t = metrics.tune_binary_threshold(y, p)
            thresholds = [t]
            s = metrics.single_label_summary(y, probs, classes, top, pred=(p >= t).astype(int))
            at_half = metrics.single_label_summary(y, probs, classes, top, pred=(p >= 0.5).astype(int))
            extra = {"threshold": t, "accuracy_at_0.5": at_half["accuracy"], **metrics.binary_scores(y, p),
                     "f1_positive": s["per_class"][classes[1]]["f1"]}
        else:
            s = metrics.single_label_summary(y, probs, classes, top)
        base = metrics.majority_baseline(self.counts, y, classes, top)
        save_model_atomic(model, self.save_dir / "model.keras")
        cfg = self.cfg
        meta = {
            "labels": labels, "classes": classes, "heads": names, "task": task,
            "input_size": cfg.image_size, "input": "uint8 RGB, resized/cropped square; the model normalises inside",
            "backbone": cfg.backbone, "alpha": cfg.alpha, "thresholds": thresholds, "top_k": top,
            "class_weights": [float(w) for w in cw],
            "validation": {**{k: s[k] for k in ("accuracy", "top_k", "top_k_accuracy", "f1_macro", "log_loss",
                                                "per_class", "confusion", "most_confused")},
                           **extra, "baselines": base},
            "dataset": {"path": str(cfg.data), "manifest_sha256": manifest_hash(cfg.data),
                        "records": manifest["records"]},
            "config": cfg.to_dict(), "command": self.command,
            "created": datetime.now().isoformat(timespec="seconds"),
        }
        if task == "binary":
            meta["positive_class"] = classes[1]
            meta["pos_weight"] = float(pw[0])
        fileio.atomic_write_json(self.save_dir / "meta.json", meta)
        print(f"\nvalidation ({len(y)} images):")
        if task == "binary":
            auc = "-" if extra["roc_auc"] is None else f"{extra['roc_auc']:.3f}"
            print(f"  model     ROC-AUC {auc}  accuracy {s['accuracy']:.3f} at threshold {thresholds[0]:.2f} "
                  f"(tuned here for F1 of '{classes[1]}'), {extra['accuracy_at_0.5']:.3f} at 0.5  "
                  f"F1({classes[1]}) {extra['f1_positive']:.3f}")
        else:
            print(f"  model     accuracy {s['accuracy']:.3f}  top-{top} {s['top_k_accuracy']:.3f}  "
                  f"macro-F1 {s['f1_macro']:.3f}  log loss {s['log_loss']:.3f}")
        print(f"  majority  accuracy {base['majority']['accuracy']:.3f} (always '{base['majority']['class']}')  "
              f"macro-F1 {base['majority']['f1_macro']:.3f}")
        print(f"  priors    top-{top} {base['prior']['top_k_accuracy']:.3f}  log loss {base['prior']['log_loss']:.3f}")
        if s["most_confused"]:
            print("  most confused (true -> predicted): " +
                  ", ".join(f"{a} -> {b} {c}" for a, b, c in s["most_confused"][:5]))
        gain = s["accuracy"] - base["majority"]["accuracy"]
        if gain <= 0:
            print(f"warning: the model does not beat the majority class on accuracy ({gain:+.3f})")
        print(f"bundle: {self.save_dir}/model.keras + meta.json; logs: {self.log_dir}/")
        return EXIT_OK

    def _finish(self, model, labels, names, val_ds, y_val, train, hw, pw, manifest) -> int:
        best = self.save_dir / "best.keras"
        if best.is_file():
            model = keras.saving.load_model(best, compile=False)
        scores = predict_scores(model, val_ds, names)
        y_train = pipeline.labels_of(train.files, len(labels))
        thresholds = metrics.tune_thresholds(y_val, scores, y_train=y_train)
        at_half = metrics.summary(y_val, scores, 0.5)
        tuned = metrics.summary(y_val, scores, thresholds)
        crossfit = metrics.crossfit_f2(y_val, scores, y_train=y_train)
        base = metrics.baselines(y_train, y_val)
        const, prior = base["constant"], base["prior"]
        save_model_atomic(model, self.save_dir / "model.keras")
        meta = {
            "labels": labels, "heads": names, "task": "multilabel", "input_size": self.cfg.image_size,
            "input": "uint8 RGB, resized/cropped square; the model normalises inside",
            "backbone": self.cfg.backbone, "thresholds": [float(t) for t in thresholds],
            "head_weights": [float(w) for w in hw], "pos_weights": [float(w) for w in pw],
            "validation": {"mAP": tuned["mAP"], "f2_samples_tuned": tuned["f2_samples"],
                           "f2_samples_tuned_crossfit": crossfit,
                           "f2_samples_at_0.5": at_half["f2_samples"], "f1_macro_tuned": tuned["f1_macro"],
                           "ap": dict(zip(labels, at_half["ap"])),
                           "baselines": base},
            "dataset": {"path": str(self.cfg.data), "manifest_sha256": manifest_hash(self.cfg.data),
                        "records": manifest["records"]},
            "config": self.cfg.to_dict(), "command": self.command,
            "created": datetime.now().isoformat(timespec="seconds"),
        }
        fileio.atomic_write_json(self.save_dir / "meta.json", meta)
        print(f"\nvalidation ({len(y_val)} images):")
        print(f"  model     mAP {tuned['mAP']:.3f}   sample-F2 {at_half['f2_samples']:.3f} at 0.5, "
              f"{tuned['f2_samples']:.3f} with thresholds tuned here ({crossfit:.3f} tuned on the other half, "
              f"the honest figure)   macro-F1 {tuned['f1_macro']:.3f}")
        print(f"  constant  sample-F2 {const['f2_samples']:.3f} (always {[labels[i] for i in const['labels']]})")
        print(f"  priors    mAP {prior['mAP']:.3f}")
        gain = crossfit - const["f2_samples"]
        if gain <= 0:
            print(f"warning: the model does not beat the constant predictor on sample-F2 ({gain:+.3f})")
        print(f"bundle: {self.save_dir}/model.keras + meta.json; logs: {self.log_dir}/")
        return EXIT_OK


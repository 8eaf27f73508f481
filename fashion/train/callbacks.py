"""What runs beside model.fit: validation scoring per epoch, checkpoints with the run's progress
(state.json, read by --resume), and the console copy in log/RUN/console.log."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from fashion.core import fileio, interrupts
from fashion.train.optim import current_lr


class EpochEval(keras.callbacks.Callback):
    """Scores the validation set after each epoch with the task's own measures (tasks: `epoch_logs`),
    adds them, the learning rate and the training speed to the logs (history.csv, TensorBoard) and prints
    one line. `images(steps)`: the images an epoch of that many steps trained on (every process's)."""

    def __init__(self, task, val_ds, y_val: np.ndarray, images=None):
        super().__init__()
        self.task, self.val_ds, self.y_val, self.images = task, val_ds, y_val, images

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = self.t_val = time.perf_counter()

    def on_test_begin(self, logs=None):
        # training's part of the epoch ends where Keras starts val_loss; no batch hook, so JAX's and
        # tf.function's asynchronous dispatch stays on (the first epoch includes the compile)
        self.t_val = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        trained = self.t_val - self.t0
        scores, shown = self.task.epoch_logs(self.y_val, self.task.predict(self.model, self.val_ds))
        logs.update(scores)
        logs["learning_rate"] = current_lr(self.model.optimizer)
        speed = ""
        if self.images and trained > 0:
            logs["train_img_per_s"] = self.images(self.params.get("steps") or 0) / trained
            speed = f"; train {logs['train_img_per_s']:,.0f} img/s"
        took = time.perf_counter() - self.t0
        print(
            f"epoch {epoch + 1}: loss {logs.get('loss', float('nan')):.4f}  val_loss "
            f"{logs.get('val_loss', float('nan')):.4f}  {shown}  lr {logs['learning_rate']:.2e}  ({took:.0f}s{speed})",
            flush=True,
        )


@dataclass
class Progress:
    """Where a run stands, as state.json keeps it: stages done, epochs done, the best monitored validation
    score so far, and optimizer steps already taken into the next epoch (after Ctrl-C)."""

    stage: int = 0
    epoch: int = 0
    best_score: float = float("-inf")
    step: int = 0

    FILE = "state.json"

    @classmethod
    def load(cls, folder: Path) -> Progress:
        raw = json.loads((folder / cls.FILE).read_text())
        # runs written before `best_score` kept the monitored value (whatever the task's) as `best_mAP`
        best = raw.get("best_score", raw.get("best_mAP", float("-inf")))
        return cls(raw["stage"], raw["epoch"], best, raw.get("step", 0))

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        state = {"stage": self.stage, "epoch": self.epoch, "best_score": self.best_score}
        if self.step:
            state["step"] = self.step
        fileio.atomic_write_json(folder / self.FILE, state)


class EmaWeights(keras.callbacks.SwapEMAWeights):
    """`--ema`: Keras' SwapEMAWeights(swap_on_epoch=True), first in the list, so validation, EpochEval and the
    checkpoints all see the average; training steps on the raw weights in between.

    Args:
      in_model: whether the model holds the average now: True when a run resumes from an epoch's end
        (last.keras was saved with the average swapped in, the raw weights in the optimizer's slots), so the
        first epoch swaps them back. Defaults to False.

    Example:
    >>> EmaWeights().swap_on_epoch
    True
    """

    def __init__(self, in_model: bool = False):
        super().__init__(swap_on_epoch=True)
        self._ema_weights_in_model = in_model

    # JAX: Keras' own versions leave the average and the weight on one device array after the last epoch
    # (`average.assign(var)`), which the next step or save finds deleted ("Array has been deleted", Keras
    # 3.15); each side gets its own copy here.
    def _backend_swap_variables(self, optimizer):
        for var, average in zip(optimizer._trainable_variables, optimizer._model_variables_moving_average):
            raw = np.array(var)
            var.assign(np.array(average))
            average.assign(raw)

    def _backend_finalize_ema_values(self, optimizer):
        for var, average in zip(optimizer._trainable_variables, optimizer._model_variables_moving_average):
            average.assign(np.array(var))


class Checkpoints(keras.callbacks.Callback):
    """last.keras every epoch; best.keras when `monitor` (higher is better) beats `best_score`; then
    state.json. Each file is written under a temporary name and renamed."""

    def __init__(self, folder: Path, stage: int, monitor: str, best_score: float = float("-inf")):
        super().__init__()
        self.folder, self.stage, self.monitor, self.best_score = folder, stage, monitor, best_score

    def score(self, logs) -> float:
        value = (logs or {}).get(self.monitor, float("-inf"))
        return float("-inf") if value is None or np.isnan(value) else value

    def on_epoch_end(self, epoch, logs=None):
        score = self.score(logs)
        last = self.folder / "last.keras"
        self.folder.mkdir(parents=True, exist_ok=True)  # the run's first checkpoint makes model_save/RUN/
        fileio.save_model_atomic(self.model, last)
        if score > self.best_score:
            self.best_score = score
            with fileio.atomic_path(self.folder / "best.keras") as tmp:
                shutil.copyfile(last, tmp)
        Progress(self.stage, epoch + 1, self.best_score).save(self.folder)


class CtrlC(keras.callbacks.Callback):
    """Stops `fit` at the next batch end after a Ctrl-C that was swallowed on its way (fashion.core.interrupts:
    on the JAX backend Keras waits for every step inside a bare `except:`). Once an epoch's steps are done,
    a Ctrl-C waits for its validation and checkpoint (last in the list: after Checkpoints), so that the
    resumed run starts at the next epoch instead of training a step again."""

    async_safe = True  # raised in Keras' callback thread, it comes back at fit's next dispatch

    def on_train_batch_end(self, batch, logs=None):
        interrupts.check()
        if batch + 1 == self.params.get("steps"):  # the last step: from here to the checkpoint, Ctrl-C waits
            interrupts.defer(True)

    def on_test_begin(self, logs=None):
        interrupts.defer(True)  # also where the number of steps is not known

    def on_epoch_end(self, epoch, logs=None):
        interrupts.defer(False)
        interrupts.check()


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

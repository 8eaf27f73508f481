"""The `train.py` job: dataset.json + shards -> trained model bundle in model_save/RUN/.

Stages (`--stages heads:5,all:20`) run one after another in one command, each with its own layer
group and learning rate. After every epoch the validation set is scored, `last.keras` is saved
(atomically) with the optimiser state, and `best.keras` when the task's validation score improves
(mAP; multiclass: accuracy; binary: ROC-AUC). At the end the task tunes its thresholds on validation
data (multilabel: per class for sample-F2; binary: the positive class's for its F1) and the bundle
(`model.keras` + `meta.json`) is written.

Where things are: the task's heads, loss, scores and bundle fields in fashion.model.tasks; optimisers in
optim, schedules in schedules, the per-epoch callbacks and state.json in callbacks, devices in
devices, --lr-find in lr_finder, the run's stages and state in state. This module runs the steps in order.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import keras

from fashion.config.train import TrainConfig
from fashion.core import cluster as cluster_lib, fileio, interrupts, quiet
from fashion.core.errors import EXIT_FATAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_WORKER_LOST, TrainError
from fashion.data import dataset_json, pipeline
from fashion.model import meta_json, network as model_lib
from fashion.model.tasks.base import HeadSpec
from fashion.model.tasks.registry import get_task, resolve_task
from fashion.train.callbacks import Checkpoints, CtrlC, EmaWeights, EpochEval, Progress, Tee
from fashion.train.devices import check_devices, setup_device
from fashion.train.lr_finder import lr_find, suggest_lr
from fashion.train.optim import make_optimizer
from fashion.train.schedules import make_schedule
from fashion.train.state import Stage, TrainState, manifest_hash, parse_stages, steps_done

# what cli.py and the tests reach through this module
__all__ = [
    "Trainer",
    "TrainError",
    "model_lib",
    "Stage",
    "parse_stages",
    "make_optimizer",
    "make_schedule",
    "suggest_lr",
    "lr_find",
    "resolve_task",
]


class Trainer:
    """`Trainer(cfg, command).run()` -> exit code: plan, open the run, load data and model, then each stage,
    then the bundle; Ctrl-C saves a checkpoint to --resume from."""

    def __init__(self, cfg: TrainConfig, command: str):
        self.cfg = cfg
        self.command = command
        if not cfg.run:
            cfg.run = datetime.now().strftime("%Y%m%d-%H%M%S")
        self.save_dir = Path(cfg.model_save) / cfg.run
        self.log_dir = Path(cfg.log) / cfg.run
        # several processes (fashion.core.cluster): all train, only worker 0 writes
        self.cluster = cluster_lib.resolve(cfg.workers, cfg.worker_index)
        self.writer = self.cluster is None or self.cluster.writer
        # where this process's checkpoints go: worker 0's are the run's; each other worker keeps its own in
        # a private temporary folder (for the end of the run: no shared disk needed but for --resume)
        self._board = None  # the TensorBoard callback of the stage training now
        self.out_dir = self.save_dir  # the others' folder is made when their training starts (_load_data)

    def run(self) -> int:
        stdout = sys.stdout
        try:
            code = self._run()
        except (KeyboardInterrupt, Exception) as e:  # outside training (start-up, the bundle): what is kept
            if not interrupts.caused(e):
                raise
            interrupts.handled()
            print(f"\ninterrupted; {self._kept()}", file=sys.stderr)
            code = EXIT_INTERRUPTED
        finally:
            if isinstance(sys.stdout, Tee):
                sys.stdout.file.close()
            sys.stdout = stdout
        cluster_lib.leave(code)  # several processes: all meet here once worker 0 wrote the bundle, then exit
        return code

    def _run(self) -> int:
        interrupts.check()  # swallowed while TensorFlow/JAX loaded
        st = self._plan()
        self._open_run()
        try:
            return self._run_opened(st)
        except Exception as e:  # a damaged shard met while reading: one line naming it, no traceback
            if interrupts.caused(e):
                raise
            shared = cluster_lib.shared_gpu(e)
            if shared is not None:
                self._stop_lost(shared, EXIT_FATAL)
            lost = cluster_lib.lost_worker(e)
            if lost is not None:
                self._stop_lost(lost)
            where = pipeline.read_failure(e, self.cfg.data)
            if where is None:
                raise
            raise TrainError(f"training stopped: {where}; {self._kept('fix the data')}") from None

    def _stop_lost(self, lost: str, code: int = EXIT_WORKER_LOST) -> None:
        """Another process died (or the processes cannot work together): say so in one line and leave now.
        os._exit, because JAX's shutdown would wait (up to 5 min) at a barrier for a process that is gone."""
        print(f"error: {lost}; {self._kept('restart every worker')}", file=sys.stderr, flush=True)
        self._drop_private()
        quiet.drain_stdout()
        os._exit(code)

    def _drop_private(self) -> None:
        """A worker other than 0: its private checkpoint folder goes when it leaves."""
        if not self.writer:
            shutil.rmtree(self.out_dir, ignore_errors=True)

    def _run_opened(self, st: TrainState) -> int:
        st.task.print_weights(self.cfg, st.train, st.weights)
        self._load_data(st)
        model = self._load_model(st)
        if self.cfg.lr_find:
            with st.strategy.scope():
                self._compile(model, st, st.stages[0].layers, 1e-7)
            return lr_find(model, st.train_ds, self.log_dir / "lr_find.png", st.steps)
        try:
            interrupts.check()  # a Ctrl-C swallowed while loading
            self._train(model, st)
            interrupts.check()
        except (KeyboardInterrupt, Exception) as e:
            if not interrupts.caused(e):
                raise
            interrupts.handled()
            self._save_interrupted(model, st)
            return EXIT_INTERRUPTED
        return self._finish(model, st)

    # ------------------------------------------------------------------ set-up

    def _plan(self) -> TrainState:
        """Read the dataset and check everything that can refuse the run, before anything is written."""
        cfg = self.cfg
        manifest = dataset_json.read(cfg.data)
        train = pipeline.describe_split(cfg.data, "train")
        val = pipeline.describe_split(cfg.data, "val")
        task = get_task(resolve_task(cfg.task, manifest, train), manifest["labels"])
        task.check_config(cfg)
        damaged = pipeline.refuse_damaged(cfg.data, cfg.verify_data)
        if damaged:
            raise TrainError(damaged)
        stages = parse_stages(cfg)
        check_devices(cfg)
        state = self.save_dir / Progress.FILE
        if cfg.resume and not state.is_file():
            raise TrainError(f"--resume: {state} not found (is --run {cfg.run} right?)")
        if not cfg.resume and state.is_file():
            raise TrainError(
                f"{self.save_dir} already holds run '{cfg.run}': add --resume to continue it, or pick another --run"
            )
        # find pretrained weights before anything is written: a missing file leaves no empty run behind
        pretrained = (
            (None, None)
            if cfg.resume
            else model_lib.resolve_weights(cfg.weights, cfg.backbone, Path(cfg.model_save), cfg.alpha, cfg.image_size)
        )
        start = Progress.load(self.save_dir) if cfg.resume else Progress()
        return TrainState(
            task, manifest, train, val, stages, task.weights(cfg, train), start, pretrained, best_score=start.best_score
        )

    def _open_run(self) -> None:
        """log/RUN/ (console.log, config.yaml) and the seed; model_save/RUN/ waits for the first checkpoint, so a
        run stopped before one leaves nothing there."""
        import yaml

        keras.utils.set_random_seed(self.cfg.seed)  # every process the same: same initial weights
        if not self.writer:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        sys.stdout = Tee(sys.stdout, self.log_dir / "console.log")
        fileio.atomic_write_text(self.log_dir / "config.yaml", yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))

    def _load_data(self, st: TrainState) -> None:
        """Devices, then the input pipelines (the batch spans every replica) and the validation labels."""
        cfg = self.cfg
        st.strategy = setup_device(cfg, self.cluster)
        if self.cluster is not None:
            cluster_lib.watch(self._stop_lost)  # a worker that dies or hangs stops this one, named
            if not self.writer:
                self.out_dir = Path(tempfile.mkdtemp(prefix=f"fashion-worker{self.cluster.index}-"))
        st.batch = batch = cfg.batch_size * st.strategy.num_replicas_in_sync
        small = sum(s["bytes"] for s in st.manifest["splits"]["train"]["shards"]) < (1 << 30)
        n, target = len(st.task.labels), st.task.dataset_args()
        processes = self.cluster.size if self.cluster else 1
        # one process: every record once per epoch (the last batch short), except on JAX, which compiles the
        # step again for a batch of another shape (as long as the first: 73 s for DenseNet-121 at 224 px on an
        # H200), so there whole batches only, as fastai trains (drop_last). Several: each reads every record's
        # bytes but decodes its own 1/N, and all take the same number of full batches (a collective needs
        # every process's batch)
        whole = keras.backend.backend() == "jax" and st.train.count >= batch
        if processes > 1:
            st.steps = max(1, st.train.count // (batch * processes))
        else:
            st.steps = st.train.count // batch if whole else math.ceil(st.train.count / batch)
        shard = (processes, self.cluster.index, st.steps) if self.cluster else None
        st.train_ds = pipeline.make_dataset(
            st.train.files,
            n,
            image_size=cfg.image_size,
            batch_size=batch,
            training=True,
            seed=cfg.seed,
            cache=small,
            jitter=cfg.jitter,
            rotate=cfg.rotate,
            mixup=cfg.mixup,
            cutmix=cfg.cutmix,
            count=st.train.count,
            shard=shard,
            full_batches=whole,
            **target,
        )
        # validation: every process reads all of it (Keras' val_loss over N copies is the same mean)
        st.val_ds = pipeline.make_dataset(
            st.val.files,
            n,
            image_size=cfg.image_size,
            batch_size=batch,
            training=False,
            cache=True,
            count=st.val.count,
            **target,
        )
        st.y_val = pipeline.labels_of(st.val.files, n)
        st.task.check_labels(st.y_val, f"{cfg.data} (val)")

    def _load_model(self, st: TrainState):
        """last.keras on --resume (weights and optimiser state), else a new model on the chosen weights."""
        cfg = self.cfg
        with st.strategy.scope():
            if cfg.resume:
                print(f"resuming {cfg.run}: stage {st.start.stage + 1}/{len(st.stages)}, after epoch {st.start.epoch}")
                model = keras.saving.load_model(self.save_dir / "last.keras")
            else:
                model = self._build(st)
        print(model_lib.describe(model))
        return model

    def _build(self, st: TrainState):
        cfg = self.cfg
        notop, bundle = st.pretrained
        head = HeadSpec(cfg.head, cfg.csra_lambda, cfg.csra_temperature)
        model = model_lib.build_model(
            st.task.labels,
            cfg.backbone,
            cfg.image_size,
            notop,
            cfg.head_dropout,
            task=st.task.name,
            alpha=cfg.alpha,
            head=head,
        )
        if bundle:
            model_lib.load_trunk_from_bundle(model, bundle)
            print(f"trunk initialised from bundle {bundle}")
        elif notop:
            what = "ImageNet weights" if cfg.weights == "imagenet" else "weights file"
            print(f"trunk initialised from {what} {notop}")
        else:
            print("trunk initialised at random (--weights none)")
            if model_lib.cap_bn_momentum(model):
                print("trunk BatchNorm momentum capped at 0.99 so its statistics converge in a short run")
        return model

    def _compile(self, model, st: TrainState, layers: str, lr) -> int:
        """Set the layer group, then compile with the task's loss; returns the trainable trunk layers."""
        cfg = self.cfg
        n_tr = model_lib.set_trainable(model, layers, cfg.bn, from_scratch=cfg.weights == "none")
        model.compile(
            optimizer=make_optimizer(cfg, lr),
            **st.task.compile_args(cfg, st.weights),
            jit_compile=cfg.xla or keras.backend.backend() == "jax",  # JAX unjitted runs op by op
            run_eagerly=cfg.eager,
        )
        return n_tr

    # ------------------------------------------------------------------ stages

    def _train(self, model, st: TrainState) -> None:
        """Every stage not finished yet, from where the run stands."""
        done, epoch = 0, st.start.epoch  # epochs of the stages before this one; epochs trained
        for i, stage in enumerate(st.stages):
            end = done + stage.epochs
            if i >= st.start.stage and epoch < end:
                self._run_stage(model, st, i, done, epoch)
                epoch = end
            done = end

    def _run_stage(self, model, st: TrainState, i: int, done: int, epoch: int) -> None:
        """Stage `i`, which began at epoch `done`, from epoch `epoch` to its end; state.json after it."""
        cfg, stage = self.cfg, st.stages[i]
        end = done + stage.epochs
        resuming = cfg.resume and i == st.start.stage
        # steps already taken in an epoch cut short by Ctrl-C (the optimiser state has them)
        partial = st.start.step if resuming else 0
        if not (resuming and (epoch > done or partial)):  # a stage resumed mid-way keeps its optimiser
            self._start_stage(model, st, i, epoch, end)
        checkpoints = Checkpoints(self.out_dir, i, st.task.monitor, st.best_score)
        # --ema: a checkpoint taken at an epoch's end holds the average (swapped in, the raw weights in the
        # kept optimiser's slots); one taken by Ctrl-C mid-epoch, or a fresh optimiser, the raw weights
        ema = [EmaWeights(in_model=resuming and not partial and epoch > done)] if cfg.ema else []
        fit = dict(
            validation_data=st.val_ds,
            callbacks=[*ema, *self._callbacks(st, checkpoints), CtrlC()],
            shuffle=False,
            verbose=1 if sys.stdout.isatty() else 0,
            **st.task.fit_args(cfg, st.weights),
        )
        st.stage_index, st.stage_start = i, done
        if keras.backend.backend() == "jax":  # a Ctrl-C in fit's first step must not put back an earlier fit's state
            model._jax_state = None
        if partial:
            model.fit(st.train_ds, epochs=epoch + 1, initial_epoch=epoch, steps_per_epoch=st.steps - partial, **fit)
            epoch += 1
        if epoch < end:
            model.fit(st.train_ds, epochs=end, initial_epoch=epoch, **fit)
        st.best_score = checkpoints.best_score
        Progress(i + 1, end, st.best_score).save(self.out_dir)

    def _start_stage(self, model, st: TrainState, i: int, epoch: int, end: int) -> None:
        """Compile for stage `i` with a fresh optimiser and its schedule, and say so."""
        cfg, stage = self.cfg, st.stages[i]
        with st.strategy.scope():
            lr = make_schedule(cfg.schedule, stage.lr, st.steps * stage.epochs, cfg.warmup)
            n_tr = self._compile(model, st, stage.layers, lr)
        mult = f", trunk at x{cfg.lr_mult:g}" if cfg.lr_mult != 1 and stage.layers != "heads" else ""
        print(
            f"stage {i + 1}/{len(st.stages)}: layers={stage.layers} ({n_tr} trunk layers train), "
            f"epochs {epoch + 1}-{end}, lr {stage.lr:g} ({cfg.schedule}, {cfg.optimizer}){mult}"
        )

    def _callbacks(self, st: TrainState, checkpoints: Checkpoints) -> list:
        cbs = [EpochEval(st.task, st.val_ds, st.y_val, self._images(st)), checkpoints]
        if self.writer:
            self._board = keras.callbacks.TensorBoard(str(self.log_dir), write_graph=False, profile_batch=0)
            cbs += [keras.callbacks.CSVLogger(str(self.log_dir / "history.csv"), append=True), self._board]
        if self.cfg.schedule == "plateau":
            cbs.insert(
                1,
                keras.callbacks.ReduceLROnPlateau(
                    monitor=st.task.monitor, mode="max", factor=0.3, patience=1, verbose=1
                ),
            )
        return cbs

    def _images(self, st: TrainState):
        """Images an epoch of `steps` steps trains on, every process's (for the img/s on the epoch line)."""
        if self.cluster is not None:  # full batches only, one per process per step
            return lambda steps: steps * st.batch * self.cluster.size
        return lambda steps: min(steps * st.batch, st.train.count)  # the last batch may be short

    def _save_interrupted(self, model, st: TrainState) -> None:
        """Ctrl-C: checkpoint weights + optimiser mid-epoch; state.json records the steps already taken."""
        if self._board is not None:  # fit did not end it: its last epoch's scalars reach the event file now
            with contextlib.suppress(Exception):
                self._board.on_train_end()
        if not self.writer:
            print("\ninterrupted; worker 0 keeps the checkpoint", file=sys.stderr)
            return
        path = self.save_dir / Progress.FILE
        saved = Progress.load(self.save_dir) if path.is_file() else Progress(st.stage_index, st.stage_start)
        if saved.stage != st.stage_index:  # interrupted right at a stage boundary: nothing of the new stage to keep
            print("\ninterrupted between stages; rerun with --resume to go on", file=sys.stderr)
            return
        done = steps_done(model)
        taken = done - st.steps * (saved.epoch - st.stage_start) if done is not None else 0
        # nothing newer than the last checkpoint: before the first compile, (JAX) inside a step, or in the
        # epoch's validation (resuming from there would train a step more)
        if done is None or taken >= st.steps:
            print(f"\ninterrupted; {self._kept()}", file=sys.stderr)
            return
        self.save_dir.mkdir(parents=True, exist_ok=True)
        fileio.save_model_atomic(model, self.save_dir / "last.keras")
        saved.step = max(0, taken)
        saved.save(self.save_dir)
        print(
            f"\ninterrupted: checkpoint saved to {self.save_dir}/last.keras (epoch {saved.epoch + 1}, "
            f"step {taken}); continue with the same command plus --resume --run {self.cfg.run}",
            file=sys.stderr,
        )

    def _kept(self, fix: str = "") -> str:
        """After a fault: what the run keeps and how to go on (`fix`: what to do first, e.g. 'fix the data')."""
        if not (self.save_dir / "last.keras").is_file():
            return f"no checkpoint yet, nothing written to {self.save_dir}; " + (f"{fix} and rerun" if fix else "rerun")
        epoch = Progress.load(self.save_dir).epoch if (self.save_dir / Progress.FILE).is_file() else "?"
        return (
            f"checkpoint kept: {self.save_dir / 'last.keras'} (after epoch {epoch}); "
            + (f"{fix}, then rerun" if fix else "rerun")
            + f" with --resume --run {self.cfg.run}"
        )

    # ------------------------------------------------------------------ the bundle

    def _finish(self, model, st: TrainState) -> int:
        """The best epoch's model, its thresholds and validation scores (the task's), as model.keras +
        meta.json; then the summary."""
        if self.cluster is not None:  # from here each process works alone: no collective after training
            cluster_lib.finished()
            keras.distribution.set_distribution(None)
        best = self.out_dir / "best.keras"
        if best.is_file():
            model = keras.saving.load_model(best, compile=False)
        v = st.task.validate(st.task.predict(model, st.val_ds), st.y_val, st.train, st.weights)
        if not self.writer:
            self._drop_private()
            assert self.cluster is not None  # (only a worker of several is not the writer)
            print(f"{self.cluster.name(self.cluster.index)}: done; {self.cluster.name(0)} writes the bundle")
            return EXIT_OK
        interrupts.check()  # a Ctrl-C swallowed while scoring: the checkpoints stay, no bundle
        self.save_dir.mkdir(parents=True, exist_ok=True)
        fileio.save_model_atomic(model, self.save_dir / "model.keras")
        meta_json.write(self.save_dir, st.task.bundle_meta(self._run_fields(st), st.weights, v))
        for line in v.lines:
            print(line)
        print(f"bundle: {self.save_dir}/model.keras + meta.json; logs: {self.log_dir}/")
        return EXIT_OK

    def _run_fields(self, st: TrainState) -> dict[str, Any]:
        """What meta.json says about the run, whatever the task."""
        cfg = self.cfg
        return {
            "input_size": cfg.image_size,
            "backbone": cfg.backbone,
            "alpha": cfg.alpha,
            "dataset": {
                "path": str(cfg.data),
                "manifest_sha256": manifest_hash(cfg.data),
                "records": st.manifest["records"],
            },
            "config": cfg.to_dict(),
            "command": self.command,
            **(
                {"cluster": {"workers": list(self.cluster.addresses), "from": self.cluster.source}}
                if self.cluster
                else {}
            ),
            "created": datetime.now().isoformat(timespec="seconds"),
        }

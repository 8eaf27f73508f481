"""train.py on real tiny photos (32 px, --weights none): layer groups, losses, accumulation, resume, bundle."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from conftest import ROOT, SAMPLE
from fashion.cli import train_main
from fashion.config.train import TrainConfig
from fashion.data import pipeline
from fashion.model import losses, meta_json, metrics, network as model_lib
from fashion.model.meta_json import BundleMeta
from fashion.model.tasks.base import HEAD_PREFIX, head_names
from fashion.train.optim import make_optimizer

LABELS = (SAMPLE / "labels.txt").read_text().split()
SIZE = 32


def batch_from(dataset, n=16, training=False):
    split = pipeline.describe_split(dataset, "train")
    ds = pipeline.make_dataset(
        split.files,
        len(LABELS),
        image_size=SIZE,
        batch_size=n,
        training=training,
        output_names=head_names(LABELS),
    )
    return next(iter(ds))


def test_full_batches_drop_only_the_short_last_batch(dataset):
    """The JAX backend's epochs (one compile per batch shape): whole batches, the cardinality Keras is told."""
    split = pipeline.describe_split(dataset, "train")
    batch = next(b for b in range(7, 64) if split.count % b)
    args = dict(image_size=SIZE, batch_size=batch, training=True, seed=0, count=split.count)
    whole = pipeline.make_dataset(split.files, len(LABELS), full_batches=True, **args)
    plain = pipeline.make_dataset(split.files, len(LABELS), **args)
    assert [int(x.shape[0]) for x, _ in whole] == [batch] * (split.count // batch)
    assert int(whole.cardinality()) == split.count // batch
    sizes = [int(x.shape[0]) for x, _ in plain]
    assert sum(sizes) == split.count and sizes[-1] == split.count % batch


def test_head_weight_formulas_on_known_counts():
    pos, n = [10, 40, 0, 50], 100
    np.testing.assert_allclose(losses.head_weights(pos, n, "none"), [1, 1, 1, 1])
    np.testing.assert_allclose(losses.head_weights(pos, n, "original"), [0.3, 1.2, 1, 1.5])  # ∝ frequency
    inv = np.array([10, 2.5, 2])
    np.testing.assert_allclose(losses.head_weights(pos, n, "inverse"), [*inv[:2] / inv.mean(), 1, inv[2] / inv.mean()])
    sq = np.sqrt(inv)
    np.testing.assert_allclose(losses.head_weights(pos, n, "sqrt"), [*sq[:2] / sq.mean(), 1, sq[2] / sq.mean()])
    beta = 0.9
    eff = np.array([(1 - beta) / (1 - beta**p) for p in (10, 40, 50)])
    np.testing.assert_allclose(
        losses.head_weights(pos, n, "effective", beta), [*eff[:2] / eff.mean(), 1, eff[2] / eff.mean()]
    )
    pw = losses.pos_weights([10, 90, 0], 100, "auto")
    np.testing.assert_allclose(pw, [9.0, 10 / 90, 1.0])  # below 1 where positives are the majority


def test_losses_are_finite_and_ordered():
    y = np.array([[1.0], [0.0], [1.0], [0.0]], np.float32)
    p = np.array([[0.9], [0.1], [0.2], [0.8]], np.float32)
    vals = {k: float(losses.HeadLoss(k)(y, p)) for k in losses.LOSSES}
    bce = -np.mean([np.log(0.9), np.log(0.9), np.log(0.2), np.log(0.2)])
    assert vals["bce"] == pytest.approx(bce, rel=1e-4)
    assert 0 < vals["focal"] < vals["bce"] and 0 < vals["asl"] < vals["bce"]
    weighted = float(losses.HeadLoss("bce", pos_weight=3.0)(y, p))
    assert weighted == pytest.approx(-np.mean([3 * np.log(0.9), np.log(0.9), 3 * np.log(0.2), np.log(0.2)]), rel=1e-4)


def _fit_one_step(model, x, y, **compile_kw):
    model.compile(
        optimizer=keras.optimizers.SGD(0.1), loss={n: losses.HeadLoss() for n in y}, run_eagerly=True, **compile_kw
    )
    model.fit(x, y, epochs=1, verbose=0, shuffle=False)


def _trunk_weights(model):
    return [np.array(w) for w in model_lib.trunk_of(model).weights]


@pytest.mark.slow
def test_layer_groups_and_batchnorm_policy(dataset):
    keras.utils.set_random_seed(0)
    x, y = batch_from(dataset)
    model = model_lib.build_model(LABELS, image_size=SIZE)
    trunk = model_lib.trunk_of(model)
    head = model.get_layer(f"{head_names(LABELS)[0]}_conv")

    before, head_before = _trunk_weights(model), np.array(head.kernel)
    model_lib.set_trainable(model, "heads")
    _fit_one_step(model, x, y)
    assert all(np.array_equal(a, b) for a, b in zip(before, _trunk_weights(model))), "heads: trunk untouched"
    assert not np.array_equal(head_before, np.array(head.kernel)), "heads: heads change"

    bn = next(layer for layer in trunk.layers if isinstance(layer, keras.layers.BatchNormalization))
    conv = trunk.get_layer("conv1_conv")
    stats, kernel = np.array(bn.moving_mean), np.array(conv.kernel)
    model_lib.set_trainable(model, "all", bn="frozen")
    _fit_one_step(model, x, y)
    assert not np.array_equal(kernel, np.array(conv.kernel)), "all: trunk convolutions change"
    assert np.array_equal(stats, np.array(bn.moving_mean)), "frozen BN keeps its statistics"

    model_lib.set_trainable(model, "all", bn="train")
    _fit_one_step(model, x, y)
    assert not np.array_equal(stats, np.array(bn.moving_mean)), "bn=train updates statistics"

    n = model_lib.set_trainable(model, "conv5+", bn="train")
    trainable = {layer.name for layer in trunk.layers if layer.trainable}
    assert n > 0 and all(name.startswith(("conv5_", "bn", "relu")) for name in trainable)
    with pytest.raises(ValueError, match="matches no trunk layer"):
        model_lib.set_trainable(model, "nothing_like_this")


@pytest.mark.slow
def test_accumulation_matches_the_larger_batch(dataset):
    keras.utils.set_random_seed(1)
    x, y = batch_from(dataset, 16)
    ref = model_lib.build_model(LABELS, image_size=SIZE)
    acc = model_lib.build_model(LABELS, image_size=SIZE)
    initial = ref.get_weights()
    acc.set_weights(initial)
    for m in (ref, acc):
        model_lib.set_trainable(m, "heads")
    cfg = TrainConfig(optimizer="sgd", accum_steps=1)
    ref.compile(optimizer=make_optimizer(cfg, 0.05), loss={n: losses.HeadLoss() for n in y}, run_eagerly=True)
    ref.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    cfg.accum_steps = 2
    acc.compile(optimizer=make_optimizer(cfg, 0.05), loss={n: losses.HeadLoss() for n in y}, run_eagerly=True)
    acc.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    start = model_lib.build_model(LABELS, image_size=SIZE)
    start.set_weights(initial)
    model_lib.set_trainable(start, "heads")
    moved = False
    for a, b, w0 in zip(ref.trainable_weights, acc.trainable_weights, start.trainable_weights):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-6)
        moved |= not np.allclose(np.array(a), np.array(w0))
    assert moved, "the step did change the heads"


@pytest.mark.slow
def test_lr_mult_scales_trunk_steps_and_survives_saving(dataset, tmp_path):
    keras.utils.set_random_seed(2)
    x, y = batch_from(dataset, 8)
    models, initial = [], None
    for mult in (1.0, 0.1):
        m = model_lib.build_model(LABELS, image_size=SIZE)
        if initial is None:
            initial = m.get_weights()
        m.set_weights(initial)
        model_lib.set_trainable(m, "all", bn="frozen")  # BatchNorm statistics fixed: both see the same function
        m.compile(
            optimizer=make_optimizer(TrainConfig(optimizer="sgd", lr_mult=mult), 0.05),
            loss={n: losses.HeadLoss() for n in y},
            run_eagerly=True,
        )
        m.train_on_batch(x, y)  # first SGD step: delta = -rate * gradient, momentum not yet involved
        models.append(m)
    start = model_lib.build_model(LABELS, image_size=SIZE)
    start.set_weights(initial)
    trunk_moved = False
    for a, b, w0 in zip(models[0].weights, models[1].weights, start.weights):
        da, db = np.array(a) - np.array(w0), np.array(b) - np.array(w0)
        want = da if a.path.startswith(HEAD_PREFIX) else 0.1 * da
        np.testing.assert_allclose(db, want, rtol=2e-3, atol=1e-8, err_msg=a.path)
        trunk_moved |= not a.path.startswith(HEAD_PREFIX) and np.abs(da).max() > 0
    assert trunk_moved
    path = tmp_path / "m.keras"
    models[1].save(path)
    opt = keras.saving.load_model(path).optimizer
    assert opt.lr_mult == pytest.approx(0.1) and type(opt).__name__ == "SGD"


def test_imagenet_offline_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    with pytest.raises(model_lib.WeightsError) as e:
        model_lib.imagenet_weights_file("densenet121", tmp_path / "model_save")
    msg = str(e.value)
    assert "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5" in msg and str(tmp_path / "model_save") in msg
    (tmp_path / "model_save").mkdir()
    (tmp_path / "model_save" / "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5").write_bytes(b"not it")
    with pytest.raises(model_lib.WeightsError, match="md5"):
        model_lib.imagenet_weights_file("densenet121", tmp_path / "model_save")


def _default_sigint() -> None:
    # A shell's background job (`make test &`, CI wrappers) ignores SIGINT and children inherit that, so
    # Python would install no KeyboardInterrupt handler: give the child the default, as at a terminal.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_train(args, **kw):
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_default_sigint,
        **kw,
    )


def tiny(dataset, tmp_path, run: str, *extra: str) -> list[str]:
    """train.py's arguments for a from-scratch run at SIZE px on `dataset`, under tmp_path/ms and /log."""
    where = ["--run", run, "--model-save", str(tmp_path / "ms"), "--log", str(tmp_path / "log")]
    return ["--data", str(dataset), "--weights", "none", "--image-size", str(SIZE), *extra, *where]


@pytest.mark.slow
def test_train_end_to_end_bundle_thresholds_and_reload(dataset, tmp_path, capsys):
    # the trainer and the bundle are checked here, not the trunk (DenseNet121 trains end to end in test_demo)
    # --eager with 2 steps an epoch (batch 80): eager costs per step, a graph costs its trace per stage
    args = tiny(dataset, tmp_path, "e2e", "--backbone", "mobilenetv2", "--stages", "heads:1,all:1", "--eager")
    args += ["--batch-size", "80"]
    assert train_main(args) == 0
    out = capsys.readouterr().out
    assert "constant" in out and "priors" in out and "stage 2/2: layers=all" in out
    bundle = tmp_path / "ms" / "e2e"
    meta = json.loads((bundle / "meta.json").read_text())
    assert meta["labels"] == LABELS and meta["input_size"] == SIZE and len(meta["thresholds"]) == 13
    # what train.py writes is what the typed contract declares, and its one reader takes it
    assert set(meta) <= set(BundleMeta.__required_keys__) | set(BundleMeta.__optional_keys__), sorted(meta)
    assert meta_json.read(bundle / "meta.json") == meta
    # on the tuner's grid, or exactly 0 (always predict) / 1 (never)
    assert set(meta["thresholds"]) <= {0.0, 1.0, *metrics.THRESHOLD_GRID.tolist()}, meta["thresholds"]
    assert len(meta["head_weights"]) == 13 and meta["dataset"]["manifest_sha256"]
    history = (tmp_path / "log" / "e2e" / "history.csv").read_text().splitlines()
    assert len(history) == 3 and "val_mAP" in history[0] and "head_shoes_loss" in history[0]
    assert "val_ap_head_gloves" in history[0] and "learning_rate" in history[0]
    speeds = [float(row[history[0].split(",").index("train_img_per_s")]) for row in csv.reader(history[1:])]
    assert all(v > 0 for v in speeds) and re.search(r"^epoch 2: .*; train [\d,]+ img/s\)$", out, re.M), out
    assert list((tmp_path / "log" / "e2e").rglob("events.out.tfevents*"))
    assert (tmp_path / "log" / "e2e" / "config.yaml").is_file()

    # the bundle reloads (safe mode) and reproduces the stored validation numbers with the stored thresholds
    model = keras.saving.load_model(bundle / "model.keras", compile=False, safe_mode=True)
    val = pipeline.describe_split(dataset, "val")
    # at train.py's batch: an untrained model's scores tie, and another batch shape breaks the ties another way
    ds = pipeline.make_dataset(val.files, 13, image_size=SIZE, batch_size=80, training=False)
    out = model.predict(ds, verbose=0)
    scores = np.concatenate([out[n] for n in meta["heads"]], axis=1)
    y = pipeline.labels_of(val.files, 13)
    s = metrics.summary(y, scores, np.array(meta["thresholds"]))
    assert s["mAP"] == pytest.approx(meta["validation"]["mAP"], abs=1e-6)
    assert s["f2_samples"] == pytest.approx(meta["validation"]["f2_samples_tuned"], abs=1e-6)
    y_train = pipeline.labels_of(pipeline.describe_split(dataset, "train").files, 13)
    np.testing.assert_array_equal(meta["thresholds"], metrics.tune_thresholds(y, scores, y_train=y_train))

    # domain pretraining: a new model at another size takes this bundle's trunk
    fresh = model_lib.build_model(LABELS, "mobilenetv2", image_size=48)
    model_lib.load_trunk_from_bundle(fresh, bundle)
    for a, b in zip(model_lib.trunk_of(fresh).weights, model_lib.trunk_of(model).weights):
        np.testing.assert_array_equal(np.array(a), np.array(b))

    # the same run name without --resume is refused
    assert train_main(args) == 2


@pytest.mark.slow
def test_ctrl_c_then_resume_continues_epochs_and_optimizer(dataset, tmp_path):
    ms, log = tmp_path / "ms", tmp_path / "log"
    # the trainer is checked here, not the trunk: the lighter one
    args = tiny(dataset, tmp_path, "r", "--backbone", "mobilenetv2", "--layers", "heads", "--epochs", "3")
    args += ["--batch-size", "20", "--eager"]
    history = log / "r" / "history.csv"
    _interrupt_after_first_epoch(run_train(args), history)
    state = json.loads((ms / "r" / "state.json").read_text())
    assert state["epoch"] == 1

    proc = run_train(args + ["--resume"])
    text, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, text
    assert "resuming r" in text
    rows = history.read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2"], rows
    steps = 160 // 20
    last = load_checkpoint(ms / "r" / "last.keras")
    assert int(np.asarray(last.optimizer.iterations)) == 3 * steps, "optimizer state carried across the stop"


def load_checkpoint(path):
    """A checkpoint as train.py resumes it: its optimiser and schedule are this package's registered classes,
    which only an import registers (the test process may not have imported them yet)."""
    from fashion.train import optim, schedules  # noqa: F401

    return keras.saving.load_model(path)


def _interrupt_after_first_epoch(proc: subprocess.Popen, history, into: float = 1.0) -> None:
    """Ctrl-C `into` seconds after history.csv has epoch 1; the run must say so and exit 130."""
    deadline = time.time() + 300
    while time.time() < deadline and (not history.is_file() or len(history.read_text().splitlines()) < 2):
        time.sleep(0.2)
    time.sleep(into)
    proc.send_signal(signal.SIGINT)
    text, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, text
    # mid-epoch, or where the model holds no newer state (JAX, inside a step) the epoch's checkpoint is kept
    assert "interrupted: checkpoint saved" in text or "checkpoint kept" in text, text


@pytest.mark.slow
def test_ctrl_c_on_the_jax_backend_stops_training_and_resume_finishes(dataset, tmp_path):
    """On JAX, Keras waits for each step inside a bare `except:` (pythonify_logs) that swallowed the
    KeyboardInterrupt: Ctrl-C was lost and training ran to the end with exit 0."""
    # batch 20: the 160 train and 40 val photos in whole batches, so JAX compiles each step for one shape
    ms, log, epochs, batch = tmp_path / "ms", tmp_path / "log", 8, 20
    # the trainer is checked here, not the trunk: the lighter one
    args = tiny(
        dataset,
        tmp_path,
        "j",
        "--backbone",
        "mobilenetv2",
        "--layers",
        "heads",
        "--epochs",
        str(epochs),
        "--batch-size",
        str(batch),
        "--backend",
        "jax",
    )
    history = log / "j" / "history.csv"
    _interrupt_after_first_epoch(run_train(args), history, into=0.5)
    assert 1 <= json.loads((ms / "j" / "state.json").read_text())["epoch"] < epochs

    proc = run_train(args + ["--resume"])
    text, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, text
    rows = history.read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == [str(e) for e in range(epochs)], rows
    last = load_checkpoint(ms / "j" / "last.keras")
    # whole batches on JAX; the steps taken before Ctrl-C were saved with the optimiser, not retrained
    assert int(np.asarray(last.optimizer.iterations)) == epochs * (160 // batch)


@pytest.mark.slow
def test_resume_after_a_finished_stage_trains_only_what_is_left(dataset, tmp_path, capsys):
    """A run stopped between its stages resumes with the epochs left: the stage loop once counted the
    finished stages' epochs twice (`heads:1,heads:1` stopped after stage 1 trained epochs 2 and 3)."""
    ms = tmp_path / "ms"
    # the stage loop is checked here, not the trunk: the lighter one
    args = tiny(
        dataset,
        tmp_path,
        "r",
        "--backbone",
        "mobilenetv2",
        "--stages",
        "heads:1,heads:1",
        "--batch-size",
        "80",  # eager costs per step: 2 steps an epoch
        "--eager",
    )
    assert train_main(args) == 0
    state = json.loads((ms / "r" / "state.json").read_text())
    assert (state["stage"], state["epoch"]) == (2, 2)
    # as state.json stands when a run is stopped right after its first stage
    (ms / "r" / "state.json").write_text(json.dumps({**state, "stage": 1, "epoch": 1}))
    capsys.readouterr()
    assert train_main(args + ["--resume"]) == 0
    out = capsys.readouterr().out
    assert re.findall(r"^epoch (\d+):", out, re.M) == ["2"], out


@pytest.mark.slow
def test_ema_validates_and_saves_the_average_and_trains_the_raw_weights(dataset, tmp_path, capsys):
    """--ema: each epoch's validation and checkpoint hold Keras' moving average of the weights, the optimiser
    keeps the raw ones it steps on, and the bundle is the best epoch's average."""
    ms = tmp_path / "ms"
    # the averaging is checked here, not the trunk: the lighter one
    args = tiny(dataset, tmp_path, "ema", "--backbone", "mobilenetv2", "--layers", "heads", "--epochs", "2")
    args += ["--batch-size", "80", "--ema", "0.5", "--lr", "0.05", "--eager"]  # eager: 2 steps an epoch
    assert train_main(args) == 0
    last = load_checkpoint(ms / "ema" / "last.keras")
    opt = last.optimizer
    assert opt.use_ema and opt.ema_momentum == 0.5
    # after the last epoch Keras' fit leaves the average both in the model and in the optimiser's slots
    raw = {v.path: np.asarray(a) for v, a in zip(opt._trainable_variables, opt._model_variables_moving_average)}
    kernels = [w for w in last.trainable_weights if w.path.startswith(HEAD_PREFIX) and "kernel" in w.path]
    assert kernels and all(np.allclose(np.asarray(w), raw[w.path]) for w in kernels)
    history = list(csv.DictReader((tmp_path / "log" / "ema" / "history.csv").open()))
    model = keras.saving.load_model(ms / "ema" / "model.keras", compile=False)
    val = pipeline.describe_split(dataset, "val")
    # at train.py's batch: an untrained model's scores tie, and another batch shape breaks the ties another way
    ds = pipeline.make_dataset(val.files, 13, image_size=SIZE, batch_size=80, training=False)
    out = model.predict(ds, verbose=0)
    y = pipeline.labels_of(val.files, 13)
    meta = json.loads((ms / "ema" / "meta.json").read_text())
    scores = np.concatenate([out[n] for n in meta["heads"]], axis=1)
    best = max(float(r["val_mAP"]) for r in history)
    assert metrics.summary(y, scores, 0.5)["mAP"] == pytest.approx(best, abs=1e-5)  # the saved model was validated
    # a momentum outside [0, 1) is one line before anything is written
    capsys.readouterr()
    assert train_main(tiny(dataset, tmp_path, "bad", "--ema", "1.5")) == 2
    assert "--ema must be in [0, 1)" in capsys.readouterr().err
    assert not (ms / "bad").exists()


def ema_check(save_to: str) -> None:
    """Keras' SwapEMAWeights as train.py uses it (EmaWeights), against plain SGD and the average worked out by
    hand: at an epoch's end the model holds the average, at the next epoch's start the raw weights again;
    the model saves after the last epoch (on JAX, Keras' own swap left a deleted array there)."""
    from fashion.train.callbacks import EmaWeights

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False)])
    model.compile(optimizer=keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=0.5), loss="mse")
    x, y = np.ones((8, 2), "float32"), np.full((8, 1), 4.0, "float32")
    w = np.asarray(model.weights[0]).astype("float64")
    ends, begins, seen, avg = [], [], [], None
    for _ in range(2):  # by hand: one SGD step per row; Keras' average starts at the first step's weights
        for _ in range(8):
            w = w - 0.1 * 2 * (x[0] @ w - 4.0) * x[0][:, None]
            avg = w.copy() if avg is None else 0.5 * avg + 0.5 * w
        ends.append((w.copy(), avg.copy()))

    class Look(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            begins.append(np.asarray(self.model.weights[0]).copy())

        def on_epoch_end(self, epoch, logs=None):
            seen.append(np.asarray(self.model.weights[0]).copy())
            self.model.save(save_to)  # as the checkpoints do, after EmaWeights (first in the list)

    model.fit(x, y, batch_size=1, epochs=2, shuffle=False, callbacks=[EmaWeights(), Look()], verbose=0)
    np.testing.assert_allclose(seen[0], ends[0][1], rtol=1e-5)  # epoch 1's end: the average
    np.testing.assert_allclose(begins[1], ends[0][0], rtol=1e-5)  # epoch 2 trains on the raw weights
    np.testing.assert_allclose(seen[1], ends[1][1], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(model.weights[0]), ends[1][1], rtol=1e-5)  # fit ends on the average
    assert not np.allclose(ends[0][0], ends[0][1], rtol=1e-3)  # (the two differ: the test can tell them apart)
    saved = keras.saving.load_model(save_to, compile=False)
    np.testing.assert_allclose(np.asarray(saved.weights[0]), ends[1][1], rtol=1e-5)
    assert EmaWeights(in_model=True)._ema_weights_in_model  # a resumed run whose checkpoint holds the average


def test_ema_swaps_the_average_in_for_validation_and_back_for_training(tmp_path):
    ema_check(str(tmp_path / "m.keras"))


def steps_done_check() -> None:
    """What Ctrl-C's checkpoint reads: the optimiser's steps, or None where the model holds no state (before
    compile; on JAX, variables fit took into a step: purged, or donated and deleted). CI once failed on
    reading a deleted array after a Ctrl-C landed inside a JAX step (exit 1 instead of 130)."""
    from fashion.train.state import steps_done

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    assert steps_done(model) is None
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((4, 3)), np.ones((4, 1)), batch_size=2, verbose=0)
    assert steps_done(model) == 2
    if keras.backend.backend() == "jax":
        model.trainable_variables[0].value.delete()
        assert steps_done(model) is None
        model._purge_model_variables(optimizer_variables=True)
        assert steps_done(model) is None


def test_steps_done_reads_the_optimiser_or_says_there_is_nothing():
    steps_done_check()


@pytest.mark.slow
def test_ema_on_the_jax_backend(tmp_path):
    """The same checks (EMA's, and what a Ctrl-C's checkpoint reads) in a process on Keras' JAX backend."""
    code = "import sys; sys.path[:0] = sys.argv[1:3]; import test_train; test_train.ema_check(sys.argv[3]); test_train.steps_done_check(); print('ok')"
    tests = ROOT / "tests"
    p = subprocess.run(
        [sys.executable, "-c", code, str(tests), str(tests / "train"), str(tmp_path / "m.keras")],
        cwd=ROOT,
        env={**os.environ, "KERAS_BACKEND": "jax"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), p.stderr[-3000:]


@pytest.mark.slow
def test_lr_find_writes_plot_and_suggests(dataset, tmp_path, capsys):
    from fashion.train.lr_finder import suggest_lr

    lrs = list(np.geomspace(1e-6, 1, 30))
    curve = [5.0] * 10 + list(np.linspace(5.0, 2.0, 12)) + [2.5, 4, 8, 16, 32, 64, 90, 99]
    lr = suggest_lr(lrs, curve)
    assert lrs[10] < lr < lrs[21], "inside the falling stretch"
    # the finder is checked here, not the trunk: the lighter one
    args = tiny(dataset, tmp_path, "lf", "--backbone", "mobilenetv2", "--layers", "heads", "--lr-find", "--eager")
    assert train_main(args) == 0
    assert "suggested learning rate" in capsys.readouterr().out
    png = tmp_path / "log" / "lf" / "lr_find.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_ctrl_c_swallowed_by_a_gc_callback_is_raised_again_at_the_next_check():
    """JAX's gc callback (Keras imports JAX on every backend) turns a KeyboardInterrupt raised inside
    it into an "Exception ignored" report: the run went on as if Ctrl-C had not been pressed."""
    import gc

    from fashion.core import interrupts

    def callback(phase, info):
        if phase == "start":
            signal.raise_signal(signal.SIGINT)  # the handler runs here, inside the callback
        sum(range(100))  # bytecode for it to run at

    reported = []
    gc.callbacks.append(callback)
    hook, sys.unraisablehook = sys.unraisablehook, reported.append
    try:
        with interrupts.latched():
            gc.collect()  # the KeyboardInterrupt is raised in the callback and dropped by gc
            with pytest.raises(KeyboardInterrupt):
                interrupts.check()
            interrupts.handled()
            interrupts.check()  # handled: not raised a second time
    finally:
        gc.callbacks.remove(callback)
        sys.unraisablehook = hook
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert reported == [], "no 'Exception ignored' traceback for the remembered Ctrl-C"


def test_ctrl_c_in_validation_waits_for_the_epochs_checkpoint_and_a_second_one_does_not(capsys):
    """After an epoch's steps, a first Ctrl-C lets validation and the checkpoint finish (the resumed run
    starts at the next epoch, no step trained twice); a second one stops at once."""
    from fashion.core import interrupts
    from fashion.train.callbacks import CtrlC

    class Press(keras.callbacks.Callback):  # Ctrl-C as the user presses it, at chosen points
        def __init__(self, times):
            super().__init__()
            self.times, self.ended = times, []

        def on_test_batch_end(self, batch, logs=None):
            for _ in range(self.times if batch == 0 else 0):
                signal.raise_signal(signal.SIGINT)

        def on_epoch_end(self, epoch, logs=None):
            self.ended.append(epoch)  # where Checkpoints writes the epoch's checkpoint

    x, y = np.zeros((32, 4), "float32"), np.zeros((32, 1), "float32")
    for times, ended in ((1, [0]), (2, [])):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        model.compile("sgd", "mse")
        press = Press(times)
        with interrupts.latched(), pytest.raises(KeyboardInterrupt):
            model.fit(x, y, batch_size=8, epochs=3, validation_data=(x, y), callbacks=[press, CtrlC()], verbose=0)
        assert press.ended == ended
        assert int(np.asarray(model.optimizer.iterations)) == 4, "the first epoch's steps, none after"
        interrupts.handled()
    assert "stopping once this epoch is scored and saved" in capsys.readouterr().err

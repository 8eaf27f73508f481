"""Single-label and binary tasks, and the keras.applications backbones (issue #5, the model half).

Real tiny TFRecords from the real photos in data/clothing-small (3 classes), real Keras training
(--weights none --eager, 32 px, a few steps); one trained bundle per task, shared by the tests.
"""

from __future__ import annotations

import csv
import json
import re
import shutil

import keras
import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion, f1_score, precision_score, recall_score

from conftest import ROOT, SAMPLE, sample_lines
from fashion.cli import detect_main, evaluate_main, generate_dataset_main, train_main
from fashion.data import pipeline
from fashion.model import losses, metrics, network as model_lib
from fashion.model.tasks.base import head_names
from fashion.predict import bundle as prediction

CLOTHING = ROOT / "data" / "clothing-small"
CLASSES = ["dress", "pants", "shoes"]
SIZE = 32
QUIET = ["--eager", "--weights", "none", "--image-size", str(SIZE), "--batch-size", "8"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("tasks")


@pytest.fixture(scope="module")
def multiclass_data(work):
    out = work / "clothing"
    assert generate_dataset_main(["--from-folders", str(CLOTHING), "--out", str(out), "--image-size", "40"]) == 0
    return out


@pytest.fixture(scope="module")
def binary_data(work):
    """Two of the classes (dress, shoes): the positive class is the second label, shoes."""
    src = work / "two"
    for split in ("train", "validation", "test"):
        for c in ("dress", "shoes"):
            shutil.copytree(CLOTHING / split / c, src / split / c)
    out = work / "binary"
    assert generate_dataset_main(["--from-folders", str(src), "--out", str(out), "--image-size", "40"]) == 0
    return out


def _train(data, run, work, *extra):
    args = [
        "--data",
        str(data),
        "--run",
        run,
        "--model-save",
        str(work / "ms"),
        "--log",
        str(work / "log"),
        *QUIET,
        *extra,
    ]
    assert train_main(args) == 0
    return work / "ms" / run


@pytest.fixture(scope="module")
def mc_bundle(multiclass_data, work):
    keras.utils.set_random_seed(0)
    return _train(
        multiclass_data,
        "mc",
        work,
        "--backbone",
        "mobilenetv2",
        "--alpha",
        "0.35",
        "--stages",
        "heads:1,all:1",
        "--class-weights",
        "inverse",
        "--label-smoothing",
        "0.1",
        "--bn",
        "frozen",
    )  # BatchNorm statistics stay at their init: outputs differ per image


@pytest.fixture(scope="module")
def bin_bundle(binary_data, work):
    keras.utils.set_random_seed(0)
    return _train(
        binary_data, "bin", work, "--task", "binary", "--backbone", "resnet50", "--epochs", "1", "--lr", "1e-3"
    )


def _val_probs(bundle_dir, data):
    bundle = prediction.load_bundle(bundle_dir)
    val = pipeline.describe_split(data, "val")
    ds = pipeline.make_dataset(
        val.files, len(bundle.labels), image_size=bundle.input_size, batch_size=8, training=False
    )
    probs = prediction.to_probs(bundle.model.predict(ds, verbose=0), bundle.heads, bundle.task)
    return bundle, probs, pipeline.labels_of(val.files, len(bundle.labels))


# --------------------------------------------------------------------------- training and bundles


@pytest.mark.slow
def test_multiclass_trains_and_the_bundle_reproduces_its_numbers(mc_bundle, multiclass_data, work):
    out = (work / "log" / "mc" / "console.log").read_text()
    assert "task: multiclass" in out and "majority" in out and "priors" in out
    meta = json.loads((mc_bundle / "meta.json").read_text())
    assert meta["task"] == "multiclass" and meta["labels"] == CLASSES and meta["classes"] == CLASSES
    assert meta["backbone"] == "mobilenetv2" and meta["alpha"] == 0.35 and meta["heads"] == ["head_softmax"]
    assert meta["thresholds"] == [] and meta["top_k"] == 2
    assert set(meta["validation"]["baselines"]) == {"majority", "prior"}
    history = (work / "log" / "mc" / "history.csv").read_text().splitlines()
    assert len(history) == 3 and "val_accuracy" in history[0] and "val_top2_accuracy" in history[0]

    bundle, probs, y = _val_probs(mc_bundle, multiclass_data)
    assert bundle.task == "multiclass" and probs.shape == (9, 3)
    bns = [la for la in model_lib.trunk_of(bundle.model).layers if isinstance(la, keras.layers.BatchNormalization)]
    assert bns and all(la.momentum == 0.99 for la in bns), (
        "from scratch: MobileNetV2's 0.999 capped, kept in the bundle"
    )
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    s = metrics.single_label_summary(y.argmax(1), probs, CLASSES, 2)
    assert s["accuracy"] == pytest.approx(meta["validation"]["accuracy"], abs=1e-9)
    assert s["log_loss"] == pytest.approx(meta["validation"]["log_loss"], abs=1e-5)
    assert s["confusion"] == meta["validation"]["confusion"]
    # a second load predicts the same numbers (no state in the bundle besides the weights)
    _, again, _ = _val_probs(mc_bundle, multiclass_data)
    np.testing.assert_allclose(again, probs, atol=1e-6)


@pytest.mark.slow
def test_binary_trains_with_the_second_label_positive(bin_bundle, binary_data, work):
    assert "positive class: shoes (the second label)" in (work / "log" / "bin" / "console.log").read_text()
    meta = json.loads((bin_bundle / "meta.json").read_text())
    assert meta["task"] == "binary" and meta["positive_class"] == "shoes" and meta["heads"] == ["head_sigmoid"]
    assert meta["backbone"] == "resnet50" and len(meta["thresholds"]) == 1
    bundle, probs, y = _val_probs(bin_bundle, binary_data)
    assert bundle.classes == ["dress", "shoes"] and probs.shape == (6, 2)
    t = meta["thresholds"][0]
    assert t == metrics.tune_binary_threshold(y[:, 1], probs[:, 1]), "the F1-best threshold on these probabilities"
    pred = (probs[:, 1] >= t).astype(int)
    assert float((pred == y[:, 1]).mean()) == pytest.approx(meta["validation"]["accuracy"], abs=1e-9)
    assert float(((probs[:, 1] >= 0.5) == y[:, 1]).mean()) == pytest.approx(
        meta["validation"]["accuracy_at_0.5"], abs=1e-9
    )


def test_task_checks(multiclass_data, tmp_path, capsys):
    args = [
        "--data",
        str(multiclass_data),
        "--model-save",
        str(tmp_path),
        "--log",
        str(tmp_path),
        *QUIET,
        "--backbone",
        "mobilenetv2",
        "--alpha",
        "0.35",
    ]
    assert train_main([*args, "--task", "binary"]) == 2
    assert "1 or 2 classes" in capsys.readouterr().err
    assert train_main([*args, "--loss", "asl"]) == 2  # a softmax head takes bce (categorical) or focal
    assert "multiclass takes bce" in capsys.readouterr().err
    manifest = {"labels": ["a", "b"], "task": "multilabel"}
    split = pipeline.Split([], 10, [7, 6])  # 13 labels on 10 images: multi-label
    from fashion.core.errors import TrainError
    from fashion.model.tasks.registry import resolve_task

    assert resolve_task("auto", manifest, split) == "multilabel"
    assert resolve_task("auto", {"labels": ["a", "b"]}, split) == "multilabel"  # no task key: multilabel
    with pytest.raises(TrainError, match="not exactly one each"):
        resolve_task("multiclass", manifest, split)
    np.testing.assert_allclose(
        losses.class_weights([10, 30, 60], "inverse"), np.array([10, 10 / 3, 10 / 6]) / np.mean([10, 10 / 3, 10 / 6])
    )
    np.testing.assert_allclose(losses.class_weights([10, 30, 60], "none"), [1, 1, 1])


# --------------------------------------------------------------------------- metrics by hand


def test_single_label_metrics_on_a_hand_made_set():
    names = ["cat", "dog", "fox"]
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 1])
    pred = np.array([0, 1, 0, 1, 2, 2, 2, 0, 2, 1])
    probs = np.full((10, 3), 0.1)
    probs[np.arange(10), pred] = 0.8
    probs[0] = [0.5, 0.4, 0.1]
    probs[1] = [0.45, 0.5, 0.05]  # true cat is second: top-2 hit
    probs[4] = [0.3, 0.1, 0.6]  # true dog is last: top-2 miss
    probs[7] = [0.8, 0.05, 0.15]  # true fox is second: top-2 hit
    s = metrics.single_label_summary(y, probs, names, k=2)
    assert s["confusion"] == [[2, 1, 0], [0, 2, 1], [1, 0, 3]]
    assert s["confusion"] == sk_confusion(y, pred).tolist()
    assert s["accuracy"] == 0.7 and s["correct"] == 7 and s["images"] == 10
    assert s["top_k_accuracy"] == pytest.approx(0.9)  # only image 4 misses in the top two
    for c, name in enumerate(names):
        pc = s["per_class"][name]
        assert pc["precision"] == pytest.approx(precision_score(y, pred, average=None)[c])
        assert pc["recall"] == pytest.approx(recall_score(y, pred, average=None)[c])
        assert pc["f1"] == pytest.approx(f1_score(y, pred, average=None)[c])
    assert s["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert s["most_confused"] == [["cat", "dog", 1], ["dog", "fox", 1], ["fox", "cat", 1]]
    assert s["log_loss"] == pytest.approx(-np.mean(np.log(probs[np.arange(10), y])))

    base = metrics.majority_baseline([5, 3, 12], y, names, k=2)
    assert base["majority"] == {"class": "fox", "accuracy": 0.4, "f1_macro": pytest.approx((2 * 0.4 / 1.4) / 3)}
    assert base["prior"]["top_k_accuracy"] == pytest.approx(0.7)  # fox or cat
    assert metrics.tune_binary_threshold(np.array([0, 0, 1, 1]), np.array([0.1, 0.7, 0.8, 0.9])) == pytest.approx(0.72)


# --------------------------------------------------------------------------- detect and evaluate


def _photos(folder, n=2):
    return [str(p) for p in sorted((CLOTHING / "test" / folder).glob("*.jpg"))[:n]]


@pytest.mark.slow
def test_detect_prints_class_score_and_top_k(mc_bundle, bin_bundle, tmp_path, capsys):
    js, cs = tmp_path / "d.json", tmp_path / "d.csv"
    photos = _photos("dress") + _photos("shoes")
    assert detect_main([*photos, "--model", str(mc_bundle), "--top-k", "2", "--json", str(js), "--csv", str(cs)]) == 0
    out = capsys.readouterr().out.splitlines()
    heads = [ln for ln in out if ln.startswith(tuple(photos))]
    assert len(heads) == 4 and all(re.search(r": (dress|pants|shoes) [01]\.\d{3}$", h) for h in heads)
    assert len(out) == 4 * 3, "a head line and two top-k lines per image"
    res = json.loads(js.read_text())
    for r in res.values():
        assert r["class"] in CLASSES and [t["label"] for t in r["top_k"]][0] == r["class"]
        assert len(r["top_k"]) == 2 and r["score"] == pytest.approx(max(r["probabilities"].values()))
    rows = list(csv.reader(cs.open()))
    assert rows[0] == ["input", "class", "score", "top_k", *CLASSES] and len(rows) == 5

    assert detect_main([*photos[:1], "--model", str(mc_bundle)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1 + 3, "default top-k: min(5, classes)"

    assert detect_main([*photos[:1], "--model", str(bin_bundle), "--threshold", "0", "--json", str(js)]) == 0
    assert "p(shoes) = " in capsys.readouterr().out
    r = json.loads(js.read_text())[photos[0]]
    assert r["class"] == "shoes" and r["positive"] == "shoes" and r["threshold"] == 0.0
    assert r["probability"] == pytest.approx(r["probabilities"]["shoes"])


def test_detect_top_k_on_a_multilabel_bundle(tmp_path, capsys):
    labels = (SAMPLE / "labels.txt").read_text().split()
    folder = tmp_path / "ml"
    folder.mkdir()
    keras.utils.set_random_seed(5)
    m = model_lib.build_model(labels, "mobilenetv2", SIZE, alpha=0.35)
    m.save(folder / "model.keras")
    (folder / "meta.json").write_text(
        json.dumps(
            {
                "labels": labels,
                "heads": head_names(labels),
                "thresholds": [0.5] * len(labels),
                "input_size": SIZE,
            }
        )
    )
    photo = str(SAMPLE / sample_lines()[0][1])
    js = tmp_path / "r.json"
    assert detect_main([photo, "--model", str(folder), "--top-k", "3", "--json", str(js)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("legend:") and out[1].startswith(photo)  # then the table of the top 3
    lines = out[2:]
    assert len(lines) == 3
    shown = [float(ln.split()[-3]) for ln in lines]
    probs = json.loads(js.read_text())[photo]["probabilities"]
    assert shown == sorted(shown, reverse=True) and shown[0] == pytest.approx(max(probs.values()), abs=1e-3)
    assert [t["label"] for t in json.loads(js.read_text())[photo]["top_k"]] == sorted(probs, key=lambda k: -probs[k])[
        :3
    ]


@pytest.mark.slow
def test_evaluate_single_label_report_table_and_review(
    mc_bundle, bin_bundle, multiclass_data, binary_data, tmp_path, capsys
):
    out = tmp_path / "report"
    assert (
        evaluate_main(
            [
                "--model",
                str(mc_bundle),
                "--data",
                str(multiclass_data),
                "--split",
                "test",
                "--out",
                str(out),
                "--table",
                "--top-losses",
                "4",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    last = text.strip().splitlines()[-1]
    assert re.fullmatch(r"accuracy: [01]\.\d{4} \(\d/6\)", last), last
    assert "majority" in text and "accuracy" in text
    m = json.loads((out / "metrics.json").read_text())
    assert m["task"] == "multiclass" and m["images"] == 6 and sum(map(sum, m["confusion"])) == 6
    assert f"({m['correct']}/6)" in last
    for key in ("accuracy", "top_k_accuracy", "f1_macro", "per_class", "most_confused", "baselines", "verdict"):
        assert key in m
    for png in ("confusion.png", "per_class.png", "top_losses.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    conf = list(csv.reader((out / "confusion.csv").open()))
    assert conf[0][1:] == CLASSES and [list(map(int, r[1:])) for r in conf[1:]] == m["confusion"]
    review = (out / "review.csv").read_text().splitlines()
    assert review[0] == "id,source,labels,predicted,score,loss,action,new_labels"
    rows = list(csv.DictReader(review))
    assert len(rows) == 4 and all(r["action"] == "" and r["new_labels"] == "" for r in rows)
    assert all(r["labels"] in CLASSES and r["predicted"] in CLASSES and r["source"].endswith(".jpg") for r in rows)
    assert [float(r["loss"]) for r in rows] == sorted((float(r["loss"]) for r in rows), reverse=True)

    out = tmp_path / "binary"
    assert evaluate_main(["--model", str(bin_bundle), "--data", str(binary_data), "--out", str(out)]) == 0
    assert "ROC-AUC" in capsys.readouterr().out
    assert (out / "review.csv").read_text().splitlines()[0] == "id,source,labels,predicted,score,loss,action,new_labels"
    assert json.loads((out / "metrics.json").read_text())["positive_class"] == "shoes"


# --------------------------------------------------------------------------- backbones

PREPROCESS = {
    "densenet121": ("densenet", 32),
    "resnet50": ("resnet50", 32),
    "mobilenetv2": ("mobilenet_v2", 32),
    "xception": ("xception", 71),
    "efficientnetb0": ("efficientnet", 32),
}


@pytest.mark.parametrize("backbone", list(PREPROCESS))
def test_backbone_builds_preprocesses_and_trains_only_the_head(backbone):
    family, size = PREPROCESS[backbone]
    m = model_lib.build_model(
        CLASSES, backbone, size, task="multiclass", alpha=0.35 if backbone == "mobilenetv2" else 1.0
    )
    trunk = model_lib.trunk_of(m)
    # what the trunk receives is keras.applications' own preprocess_input for that family
    x = np.random.default_rng(0).integers(0, 256, (2, size, size, 3)).astype(np.uint8)
    fed = keras.Model(m.input, m.layers[m.layers.index(trunk) - 1].output)
    ref = getattr(keras.applications, family).preprocess_input(x.astype(np.float32).copy())
    np.testing.assert_allclose(np.asarray(fed(x)), ref, rtol=1e-5, atol=1e-4)
    assert m(x).shape == (2, 3)
    model_lib.set_trainable(m, "heads")
    assert sorted(w.path for w in m.trainable_weights) == ["head_softmax/bias", "head_softmax/kernel"]
    for group in model_lib.stage_groups(backbone):
        assert model_lib.set_trainable(m, group, bn="frozen") > 0
        assert not any(isinstance(layer, keras.layers.BatchNormalization) and layer.trainable for layer in trunk.layers)
    with pytest.raises(ValueError, match="stage groups"):
        model_lib.set_trainable(m, "no_layer_like_this")


def test_imagenet_file_names_for_the_new_backbones(tmp_path, monkeypatch):
    assert model_lib.notop_file("resnet50")[:2] == (
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "4d473c1dd8becc155b73f8504c6f6626",
    )
    assert model_lib.notop_file("efficientnetb0")[0] == "efficientnetb0_notop.h5"
    assert model_lib.notop_file("xception")[0] == "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert (
        model_lib.notop_file("mobilenetv2", 0.35, 96)[0]
        == "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5"
    )
    assert model_lib.notop_file("mobilenetv2", 1.0, 100)[0].endswith("_1.0_224_no_top.h5")  # Keras' fallback
    with pytest.raises(model_lib.WeightsError, match="--alpha"):
        model_lib.notop_file("mobilenetv2", 0.3)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    with pytest.raises(model_lib.WeightsError) as e:
        model_lib.imagenet_weights_file("mobilenetv2", tmp_path / "ms", alpha=0.35, image_size=96)
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5" in str(e.value)


def test_efficientnet_notop_file_loads_as_keras_imagenet_does(tmp_path):
    """A notop file given by path must give Keras' weights="imagenet" graph, whose extra 1/sqrt(std)
    rescaling (TF issue 49930) is folded into the normalisation here."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    src = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3))
    norm = next(layer for layer in src.layers if isinstance(layer, keras.layers.Normalization))
    mean, std = np.array(model_lib.IMAGENET_MEAN), np.array(model_lib.IMAGENET_STD)
    norm.adapt_mean.assign(mean)
    norm.adapt_variance.assign(std)  # what Keras' file holds: the std where a variance belongs
    norm.finalize_state()
    path = tmp_path / model_lib.notop_file("efficientnetb0")[0]
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, src)
    trunk = model_lib.build_trunk("efficientnetb0", 32, str(path))
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    stem_in = keras.Model(trunk.input, trunk.get_layer("stem_conv_pad").input)
    np.testing.assert_allclose(np.asarray(stem_in(x)), (x / 255 - mean) / np.sqrt(std) / np.sqrt(std), atol=1e-5)
    assert all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(src.weights, trunk.weights)
        if "normalization" not in a.path
    )

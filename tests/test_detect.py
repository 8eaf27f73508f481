"""detect.py with a real tiny bundle (fixed random weights, 32 px) on real photos."""

from __future__ import annotations

import csv
import json
import shutil

import keras
import numpy as np
import pytest

from conftest import SAMPLE, sample_lines
from fashion import model as model_lib
from fashion.cli import detect_main
from fashion.fileio import atomic_write_json

LABELS = (SAMPLE / "labels.txt").read_text().split()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model_save") / "tiny"
    folder.mkdir()
    keras.utils.set_random_seed(3)
    model = model_lib.build_model(LABELS, image_size=32)
    model.save(folder / "model.keras")
    thresholds = [0.0] * 3 + [1.0] * 10  # first three always pass, the rest never
    atomic_write_json(
        folder / "meta.json",
        {"labels": LABELS, "heads": model_lib.head_names(LABELS), "thresholds": thresholds, "input_size": 32},
    )
    return folder


def photos(n):
    return [str(SAMPLE / line[1]) for line in sample_lines()[:n]]


def test_table_json_csv_and_thresholds(bundle, tmp_path, capsys):
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    assert detect_main([*photos(3), "--model", str(bundle), "--json", str(out_json), "--csv", str(out_csv)]) == 0
    text = capsys.readouterr().out
    for label in LABELS:
        assert label in text
    assert text.count("*") == 3 * 3, "exactly the three always-pass labels are marked per image"
    res = json.loads(out_json.read_text())
    assert set(res) == set(photos(3))
    from fashion import imaging

    model = keras.saving.load_model(bundle / "model.keras", compile=False)
    imgs = np.stack(
        [
            imaging.resize(imaging.decode_rgb((SAMPLE / line[1]).read_bytes(), target=32), 32, "crop")
            for line in sample_lines()[:3]
        ]
    )
    ref = model(imgs, training=False)  # the model's own probabilities (eager: no predict graph to build)
    for i, line in enumerate(sample_lines()[:3]):
        r = res[str(SAMPLE / line[1])]
        assert set(r["probabilities"]) == set(LABELS)
        for label, head in zip(LABELS, model_lib.head_names(LABELS)):
            assert r["probabilities"][label] == pytest.approx(float(np.asarray(ref[head])[i, 0]), abs=1e-5)
        assert r["labels"] == LABELS[:3]
    rows = list(csv.reader(out_csv.open()))
    assert rows[0] == ["input", "labels", *LABELS] and len(rows) == 4

    # one threshold for all classes overrides the tuned ones
    assert (
        detect_main([photos(1)[0], "--model", str(bundle), "--threshold", "0", "--json", str(out_json), "--quiet"]) == 0
    )
    assert json.loads(out_json.read_text())[photos(1)[0]]["labels"] == LABELS


def test_folder_with_a_corrupt_file_reports_it_and_does_the_rest(bundle, tmp_path, capsys):
    folder = tmp_path / "in" / "sub"
    folder.mkdir(parents=True)
    for p in photos(4):
        shutil.copy(p, folder)
    (folder / "broken.jpg").write_bytes((SAMPLE / sample_lines()[0][1]).read_bytes()[:3000])
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    out = tmp_path / "r.json"
    code = detect_main(
        [str(tmp_path / "in"), str(tmp_path / "missing.jpg"), "--model", str(bundle), "--json", str(out), "--quiet"]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "missing.jpg" in err and "2 of 6 input(s) failed" in err
    assert len(json.loads(out.read_text())) == 4


def test_same_numbers_as_the_model_and_newest_bundle_default(bundle, tmp_path, capsys):
    from fashion import imaging

    out = tmp_path / "r.json"
    assert detect_main([photos(1)[0], "--model-save", str(bundle.parent), "--json", str(out), "--quiet"]) == 0
    got = json.loads(out.read_text())[photos(1)[0]]["probabilities"]
    model = keras.saving.load_model(bundle / "model.keras", compile=False)
    img = imaging.resize(imaging.decode_rgb((SAMPLE / sample_lines()[0][1]).read_bytes(), target=32), 32, "crop")
    ref = model.predict(img[None], verbose=0)
    for label, head in zip(LABELS, model_lib.head_names(LABELS)):
        assert got[label] == pytest.approx(float(np.asarray(ref[head]).ravel()[0]), abs=1e-5)


def test_no_bundle_is_a_clear_error(tmp_path, capsys):
    assert detect_main([photos(1)[0], "--model-save", str(tmp_path)]) == 2
    assert "no bundle" in capsys.readouterr().err


def test_evaluate_writes_metrics_plots_and_top_losses(bundle, tmp_path, capsys):
    from fashion.cli import evaluate_main, generate_dataset_main

    data = tmp_path / "records"
    assert (
        generate_dataset_main(
            [
                str(SAMPLE / "train+val.txt"),
                "--labels",
                str(SAMPLE / "labels.txt"),
                "--out",
                str(data),
                "--image-size",
                "40",
            ]
        )
        == 0
    )
    out = tmp_path / "report"
    assert evaluate_main(["--model", str(bundle), "--data", str(data), "--out", str(out), "--top-losses", "5"]) == 0
    assert "constant" in capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    for key in ("mAP", "f2_samples", "f1_macro", "per_class", "baselines", "verdict"):
        assert key in m
    assert set(m["per_class"]) == set(LABELS) and set(m["baselines"]) == {"constant", "prior"}
    # the bundle's thresholds were tuned on val: the verdict uses thresholds tuned on the other half
    from fashion import metrics, pipeline

    model = keras.saving.load_model(bundle / "model.keras", compile=False)
    val, train = pipeline.describe_split(data, "val"), pipeline.describe_split(data, "train")
    ds = pipeline.make_dataset(val.files, len(LABELS), image_size=32, batch_size=64, training=False)
    heads = model_lib.head_names(LABELS)
    scores = np.concatenate(
        [np.concatenate([np.asarray(o[h]) for h in heads], axis=1) for o in (model(x, training=False) for x, _ in ds)]
    )
    want = metrics.crossfit_f2(
        pipeline.labels_of(val.files, len(LABELS)), scores, y_train=pipeline.labels_of(train.files, len(LABELS))
    )
    assert m["f2_samples_tuned_crossfit"] == pytest.approx(want, abs=1e-9) and "other half" in m["verdict"]
    assert m["per_class"]["shoes"]["threshold"] == 0.0 and m["per_class"]["gloves"]["threshold"] == 1.0
    for png in ("pr_curves.png", "ap_per_class.png", "cooccurrence.png", "top_losses.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.reader((out / "top_losses.csv").open()))
    assert rows[0][:4] == ["id", "true_labels", "predicted_labels", "action"] and len(rows) == 6
    assert "sample-F2" in (out / "index.html").read_text()


@pytest.mark.slow
def test_tflite_export_agrees_with_keras(bundle, tmp_path):
    from fashion.cli import evaluate_main

    work = tmp_path / "b"
    shutil.copytree(bundle, work)
    assert evaluate_main(["--model", str(work), "--export", "tflite", "--export", "savedmodel"]) == 0
    assert (work / "model.tflite").is_file() and (work / "saved_model" / "saved_model.pb").is_file()
    a, b = tmp_path / "keras.json", tmp_path / "tflite.json"
    assert detect_main([*photos(3), "--model", str(work), "--json", str(a), "--quiet"]) == 0
    assert detect_main([*photos(3), "--model", str(work / "model.tflite"), "--json", str(b), "--quiet"]) == 0
    ka, kb = json.loads(a.read_text()), json.loads(b.read_text())
    for src in ka:
        for label in LABELS:
            assert kb[src]["probabilities"][label] == pytest.approx(ka[src]["probabilities"][label], abs=1e-4)
        assert kb[src]["labels"] == ka[src]["labels"]

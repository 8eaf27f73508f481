"""detect.py with a real tiny bundle (fixed random weights, 32 px) on real photos."""

from __future__ import annotations

import csv
import json
import shutil

import keras
import numpy as np
import pytest

from conftest import SAMPLE, sample_lines, tiny_bundle
from fashion.cli import detect_main
from fashion.core.fileio import atomic_write_json
from fashion.model.tasks.base import head_names

LABELS = (SAMPLE / "labels.txt").read_text().split()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory.mktemp("model_save") / "tiny")


def photos(n):
    return [str(SAMPLE / line[1]) for line in sample_lines()[:n]]


def test_table_json_csv_and_thresholds(bundle, tmp_path, capsys):
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    assert detect_main([*photos(3), "--model", str(bundle), "--json", str(out_json), "--csv", str(out_csv)]) == 0
    text = capsys.readouterr().out
    for label in LABELS:
        assert label in text
    rows = text.splitlines()
    # the three always-pass labels are constants, not the model's detections: marked = and listed apart
    assert sum(ln.startswith("  = ") for ln in rows) == 3 * 3 and not any(ln.startswith("  * ") for ln in rows)
    assert (
        text.count(
            f"always on (constant from validation data: the model cannot tell these classes apart): {', '.join(LABELS[:3])}"
        )
        == 3
    )
    assert text.count("(no model detection)") == 3
    # all 13 thresholds are constants: one note before the first image, naming the bundle given
    assert text.count("note: ") == 1 and text.index("note: 13 of 13 classes") < text.index(photos(1)[0])
    assert f"evaluate.py --model {bundle}" in text
    res = json.loads(out_json.read_text())
    assert set(res) == set(photos(3))
    from fashion.data import imaging

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
        for label, head in zip(LABELS, head_names(LABELS)):
            assert r["probabilities"][label] == pytest.approx(float(np.asarray(ref[head])[i, 0]), abs=1e-5)
        assert r["labels"] == LABELS[:3] and r["source"] == dict.fromkeys(LABELS[:3], "constant")
    rows = list(csv.reader(out_csv.open()))
    assert rows[0] == ["input", "labels", *LABELS, "constant_labels"] and len(rows) == 4
    assert rows[1][1] == rows[1][-1] == ";".join(LABELS[:3])

    # one threshold for all classes overrides the tuned ones
    assert (
        detect_main([photos(1)[0], "--model", str(bundle), "--threshold", "0", "--json", str(out_json), "--quiet"]) == 0
    )
    r = json.loads(out_json.read_text())[photos(1)[0]]
    assert r["labels"] == LABELS and r["source"] == dict.fromkeys(LABELS, "model")


@pytest.fixture(scope="module")
def probs(bundle, tmp_path_factory):
    """The tiny model's probabilities on two photos, to place real cuts around them."""
    out = tmp_path_factory.mktemp("probs") / "p.json"
    assert detect_main([*photos(2), "--model", str(bundle), "--json", str(out), "--quiet"]) == 0
    res = json.loads(out.read_text())
    return [res[src]["probabilities"] for src in photos(2)]


def retuned(bundle, folder, thresholds):
    """A copy of the bundle with other thresholds in meta.json, as train.py's tuner may leave them."""
    folder.mkdir()
    shutil.copy(bundle / "model.keras", folder)
    meta = json.loads((bundle / "meta.json").read_text())
    atomic_write_json(folder / "meta.json", {**meta, "thresholds": thresholds})
    return folder


def cuts(p, passing, failing):
    """Real cuts in (0, 1): below p for the labels in `passing`, above it for those in `failing`."""
    th = {lb: p[lb] / 2 if lb in passing else (p[lb] + 1) / 2 for lb in (*passing, *failing)}
    assert all(0 < t < 1 for t in th.values()), "the tiny model's probabilities leave room for real cuts"
    return th


@pytest.mark.slow  # several detect runs over the bundle
def test_few_constants_model_detections_apart_from_always_on(bundle, probs, tmp_path, capsys):
    p = probs[0]
    # label 0 always, label 1 never, label 2 a real cut it passes, the rest real cuts they miss
    th = {LABELS[0]: 0.0, LABELS[1]: 1.0, **cuts(p, LABELS[2:3], LABELS[3:])}
    folder = retuned(bundle, tmp_path / "few", [th[lb] for lb in LABELS])
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    src = photos(1)[0]
    assert detect_main([src, "--model", str(folder), "--json", str(out_json), "--csv", str(out_csv)]) == 0
    text = capsys.readouterr().out
    assert "note: " not in text, "2 of 13 constants: the model decides most classes"
    assert text.count("legend: * detected by the model") == 1
    lines = text.splitlines()
    head = lines.index(f"{src}: {LABELS[2]} {p[LABELS[2]]:.3f}")
    assert lines[head + 1].endswith(f"apart): {LABELS[0]}") and lines[head + 1].startswith("  always on")
    table = {ln[4:].split()[0]: ln for ln in lines[head + 2 :]}
    assert set(table) == set(LABELS)
    assert table[LABELS[0]].startswith("  = ") and "(threshold 0: always)" in table[LABELS[0]]
    assert table[LABELS[2]].startswith("  * ") and f"(threshold {th[LABELS[2]]:.2f})" in table[LABELS[2]]
    assert table[LABELS[1]].startswith("    ") and "(threshold 1: never)" in table[LABELS[1]]
    assert all(table[lb].startswith("    ") for lb in LABELS[3:])
    r = json.loads(out_json.read_text())[src]
    assert r["labels"] == [LABELS[0], LABELS[2]]
    assert r["source"] == {LABELS[0]: "constant", LABELS[2]: "model"}
    rows = list(csv.reader(out_csv.open()))
    assert rows[1][1] == f"{LABELS[0]};{LABELS[2]}" and rows[1][-1] == LABELS[0]


@pytest.mark.slow  # several detect runs over the bundle
def test_mostly_constants_note_once_and_sources_follow_thresholds(bundle, probs, tmp_path, capsys):
    # 4 always + 4 never = 8 of 13 constants; one real cut passed on the first photo, four missed
    th = {
        **dict.fromkeys(LABELS[:4], 0.0),
        **dict.fromkeys(LABELS[4:8], 1.0),
        **cuts(probs[0], LABELS[8:9], LABELS[9:]),
    }
    folder = retuned(bundle, tmp_path / "most", [th[lb] for lb in LABELS])
    out = tmp_path / "r.json"
    assert detect_main([*photos(2), "--model", str(folder), "--json", str(out), "--batch-size", "1"]) == 0
    text = capsys.readouterr().out
    assert text.count("note: ") == 1 and text.index("note: ") < text.index(photos(1)[0])
    assert "note: 8 of 13 classes have constant thresholds" in text and f"evaluate.py --model {folder} " in text
    assert (
        text.count(
            f"  always on (constant from validation data: the model cannot tell these classes apart): {', '.join(LABELS[:4])}\n"
        )
        == 2
    )
    res = json.loads(out.read_text())
    assert LABELS[8] in res[photos(1)[0]]["labels"]
    for r in res.values():
        assert set(r["source"]) == set(r["labels"]) and set(LABELS[:4]) <= set(r["labels"])
        assert not set(LABELS[4:8]) & set(r["labels"]), "never labels are never listed"
        for lb, source in r["source"].items():
            assert source == ("constant" if th[lb] == 0 else "model")
            assert source == "constant" or (0 < th[lb] < 1 and r["probabilities"][lb] >= th[lb])

    # --quiet: no table, but the note still reaches the user (stderr)
    assert detect_main([photos(1)[0], "--model", str(folder), "--json", str(out), "--quiet"]) == 0
    got = capsys.readouterr()
    assert got.out == "" and got.err.count("note: 8 of 13") == 1

    # one cut for all from the command line: every label is the model's decision, no note, no always-on
    assert detect_main([*photos(2), "--model", str(folder), "--threshold", "0.5", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "note: " not in text and "always on" not in text and "  = " not in text
    for r in json.loads(out.read_text()).values():
        assert r["labels"] == [lb for lb in LABELS if r["probabilities"][lb] >= 0.5]
        assert r["source"] == dict.fromkeys(r["labels"], "model")


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
    from fashion.data import imaging

    out = tmp_path / "r.json"
    assert detect_main([photos(1)[0], "--model-save", str(bundle.parent), "--json", str(out), "--quiet"]) == 0
    got = json.loads(out.read_text())[photos(1)[0]]["probabilities"]
    model = keras.saving.load_model(bundle / "model.keras", compile=False)
    img = imaging.resize(imaging.decode_rgb((SAMPLE / sample_lines()[0][1]).read_bytes(), target=32), 32, "crop")
    ref = model.predict(img[None], verbose=0)
    for label, head in zip(LABELS, head_names(LABELS)):
        assert got[label] == pytest.approx(float(np.asarray(ref[head]).ravel()[0]), abs=1e-5)


def test_a_short_batch_padded_gives_the_same_rows_without_tracing_the_model_again(bundle):
    """predict_arrays(pad_to=N): a batch shorter than N is filled up with black images whose rows are dropped,
    so a run keeps one graph (the scorer's and detect.py's last batch traced the model a second time)."""
    from fashion.predict import bundle as prediction

    b = prediction.load_bundle(str(bundle))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    full = prediction.predict_arrays(b, images, tta=True, pad_to=8)
    short = prediction.predict_arrays(b, images[:3], tta=True, pad_to=8)
    assert short.shape == (3, len(LABELS))
    np.testing.assert_allclose(short, full[:3], atol=1e-6)  # the padding does not reach the real rows
    traced = b.model.predict_function.experimental_get_tracing_count()
    assert traced == 1, traced  # both calls ran one graph
    prediction.predict_arrays(b, images[:3])  # (without padding the short batch traces again: the test can tell)
    assert b.model.predict_function.experimental_get_tracing_count() == 2


def test_no_bundle_is_a_clear_error(tmp_path, capsys):
    assert detect_main([photos(1)[0], "--model-save", str(tmp_path)]) == 2
    assert "no bundle" in capsys.readouterr().err


def test_evaluate_writes_metrics_plots_and_top_losses(bundle, dataset, tmp_path, capsys):
    from fashion.cli import evaluate_main

    data = dataset  # the sample ingested at 40 px (conftest), read-only
    out = tmp_path / "report"
    assert evaluate_main(["--model", str(bundle), "--data", str(data), "--out", str(out), "--top-losses", "5"]) == 0
    assert "constant" in capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    for key in ("mAP", "f2_samples", "f1_macro", "per_class", "baselines", "verdict"):
        assert key in m
    assert set(m["per_class"]) == set(LABELS) and set(m["baselines"]) == {"constant", "prior"}
    # the bundle's thresholds were tuned on val: the verdict uses thresholds tuned on the other half
    from fashion.data import pipeline
    from fashion.model import metrics

    model = keras.saving.load_model(bundle / "model.keras", compile=False)
    val, train = pipeline.describe_split(data, "val"), pipeline.describe_split(data, "train")
    ds = pipeline.make_dataset(val.files, len(LABELS), image_size=32, batch_size=64, training=False)
    heads = head_names(LABELS)
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
def test_exports_agree_with_keras_and_the_savedmodel_takes_photo_bytes(tmp_path):
    """TFLite and ONNX (run by detect.py) and the SavedModel's serving_default (photo bytes in, TensorFlow
    decoding) give detect.py's probabilities and labels; the array signature stays as serving_arrays."""
    import cv2
    import tensorflow as tf

    from fashion.cli import evaluate_main

    work = tiny_bundle(tmp_path / "b")
    assert (
        evaluate_main(["--model", str(work), *("--export", "tflite", "--export", "savedmodel", "--export", "onnx")])
        == 0
    )
    assert not [p.name for p in work.iterdir() if p.name.startswith(".")]  # no temporary export left
    # a transparent PNG (composited on white by both decoders) beside the sample's JPEGs
    rgba = cv2.cvtColor(cv2.imread(photos(1)[0]), cv2.COLOR_BGR2BGRA)
    rgba[:, : rgba.shape[1] // 2, 3] = 60
    cv2.imwrite(str(tmp_path / "half.png"), rgba)
    inputs = [*photos(6), str(tmp_path / "half.png")]
    got = {}
    for name, model in (("keras", work), ("tflite", work / "model.tflite"), ("onnx", work / "model.onnx")):
        assert detect_main([*inputs, "--model", str(model), "--json", str(tmp_path / f"{name}.json"), "--quiet"]) == 0
        got[name] = json.loads((tmp_path / f"{name}.json").read_text())
    ref = got["keras"]
    for name in ("tflite", "onnx"):
        for src in inputs:
            for label in LABELS:
                assert got[name][src]["probabilities"][label] == pytest.approx(
                    ref[src]["probabilities"][label], abs=1e-4
                )
            assert got[name][src]["labels"] == ref[src]["labels"], name

    saved = tf.saved_model.load(str(work / "saved_model"))
    assert {"serving_default", "serving_arrays"} <= set(saved.signatures)
    out = saved.signatures["serving_default"](photos=tf.constant([open(p, "rb").read() for p in inputs]))
    meta = json.loads((work / "meta.json").read_text())
    assert [c.decode() for c in out["classes"].numpy()[0]] == LABELS
    np.testing.assert_allclose(out["thresholds"].numpy()[0], meta["thresholds"], atol=1e-6)
    for i, src in enumerate(inputs):
        want = [ref[src]["probabilities"][label] for label in LABELS]
        np.testing.assert_allclose(out["probabilities"].numpy()[i], want, atol=1e-5, err_msg=src)
        assert out["labels"].numpy()[i].decode() == ",".join(ref[src]["labels"]), src
    arrays = np.stack([cv2.cvtColor(cv2.imread(p), cv2.COLOR_BGR2RGB)[:32, :32] for p in photos(2)])
    heads = saved.signatures["serving_arrays"](image=tf.constant(arrays))
    direct = keras.saving.load_model(work / "model.keras", compile=False).predict_on_batch(arrays)
    for h in head_names(LABELS):
        np.testing.assert_allclose(heads[h].numpy(), direct[h], atol=1e-5)
    with pytest.raises(tf.errors.InvalidArgumentError):  # not a photo: TF Serving answers with the error
        saved.signatures["serving_default"](photos=tf.constant([b"not an image"]))

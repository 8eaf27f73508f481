"""Issue #11, cases 12-14: damaged shards stop train.py with one line naming the shard (nothing written
before training; the last checkpoint kept during it), damaged bundles stop detect.py/evaluate.py with one
line naming the file, and a 100-megapixel photo is classified (a --max-pixels that exists still guards)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import test_detect

from conftest import ROOT, SAMPLE, TINY_TRAIN, sample_lines
from fashion.cli import detect_main, evaluate_main, train_main
from fashion.data import dataset_json, imaging, pipeline, records

TIMEOUT = 600  # generous: a hang fails the test instead of the suite
bundle = test_detect.bundle  # its fixture: a tiny 32 px bundle (fixed random weights), built once per module


# --------------------------------------------------------------------------- helpers


def copy_dataset(dataset: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(dataset, tmp_path / "data"))


def shard(folder: Path, split: str, i: int = 0) -> Path:
    return folder / json.loads((folder / dataset_json.MANIFEST).read_text())["splits"][split]["shards"][i]["name"]


def flip_middle(path: Path, n: int = 16) -> None:
    """Same size, bytes inverted in the middle of the file: inside a record, so only its CRC can tell."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + n] = bytes(b ^ 0xFF for b in data[mid : mid + n])
    path.write_bytes(bytes(data))


def error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("error:")]


def run_cli(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT
    )


def train_args(data: Path, tmp_path: Path, *more: str) -> list[str]:
    return [
        "--data",
        str(data),
        *TINY_TRAIN,
        "--backbone",
        "mobilenetv2",  # the faults are checked here, not the trunk: the lighter one
        "--batch-size",
        "32",
        "--run",
        "r",
        "--model-save",
        str(tmp_path / "ms"),
        "--log",
        str(tmp_path / "log"),
        "--eager",
        *more,
    ]


# --------------------------------------------------------------------------- 12: shards before training


def test_shard_check_names_missing_cut_and_changed_shards(dataset, tmp_path):
    data = copy_dataset(dataset, tmp_path)
    cut, gone, flipped = shard(data, "train", 0), shard(data, "val", 0), shard(data, "train", 1)
    os.truncate(cut, cut.stat().st_size - 1000)
    gone.unlink()
    flip_middle(flipped)

    quick = records.check_shards(data)  # sizes only: the flipped shard keeps its size
    assert len(quick) == 2
    assert quick[0].startswith(f"{cut}: ") and "bytes, dataset.json says" in quick[0]
    assert quick[1] == f"{gone}: missing (dataset.json lists it with 40 records)"
    full = records.check_shards(data, sha256=True)
    assert full[1] == f"{flipped}: content differs from dataset.json (sha256)" and len(full) == 3

    line = pipeline.refuse_damaged(data)
    assert line.startswith(str(cut)) and "(and 1 more shard(s))" in line and "\n" not in line
    # after a read failed: the CRC names the record inside the changed shard
    damage = records.find_damage(data)
    assert any(d.startswith(f"{flipped}: record ") and "corrupted record" in d for d in damage), damage
    assert pipeline.refuse_damaged(dataset) is None


def test_train_refuses_a_missing_cut_or_changed_shard_before_writing(dataset, tmp_path, capsys):
    data = copy_dataset(dataset, tmp_path)
    target = shard(data, "train", 1)
    good = target.read_bytes()
    for damage, extra, words in (
        (lambda: target.unlink(), [], "missing"),
        (lambda: target.write_bytes(good[: len(good) // 2]), [], "cut short"),
        (lambda: flip_middle(target), ["--verify-data"], "content differs from dataset.json (sha256)"),
    ):
        target.write_bytes(good)
        damage()
        assert train_main(train_args(data, tmp_path, *extra)) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        (line,) = error_lines(err)
        assert line.startswith(f"error: {target}: ") and words in line
        assert not (tmp_path / "ms").exists() and not (tmp_path / "log").exists(), "refused before writing"


def test_an_undecodable_image_with_a_good_crc_is_named(dataset, tmp_path):
    """Ingestion never writes one, but a foreign or hand-made shard may: TensorFlow's decoder fails with
    InvalidArgumentError, the CRC reads fine, so every image is decoded to find it."""
    tf = records.load_tensorflow()
    data = copy_dataset(dataset, tmp_path)
    target = shard(data, "val", 0)
    raws = list(tf.data.TFRecordDataset(str(target)).as_numpy_iterator())
    with tf.io.TFRecordWriter(str(target)) as w:
        for i, raw in enumerate(raws):
            w.write(
                raw
                if i != 5
                else records.make_example(
                    b"\xff\xd8\xff not a jpeg", id="bad", source="s", height=40, width=40, labels=[0] * 13
                )
            )
    manifest = json.loads((data / dataset_json.MANIFEST).read_text())
    entry = manifest["splits"]["val"]["shards"][0]
    entry["bytes"], entry["sha256"] = target.stat().st_size, hashlib.sha256(target.read_bytes()).hexdigest()
    (data / dataset_json.MANIFEST).write_text(json.dumps(manifest))

    err = tf.errors.InvalidArgumentError(None, None, "Invalid JPEG data, size 17")
    assert pipeline.read_failure(err, data).startswith(f"{target}: record 6 unreadable")
    assert pipeline.read_failure(tf.errors.InvalidArgumentError(None, None, "Incompatible shapes"), data) is None
    assert pipeline.read_failure(ValueError("no"), data) is None


@pytest.mark.slow
def test_train_cli_damaged_record_is_one_line_and_leaves_no_run(dataset, tmp_path):
    data = copy_dataset(dataset, tmp_path)
    target = shard(data, "train", 1)
    flip_middle(target)  # same size: passes the quick check, met by the CRC while training reads it
    proc = run_cli("train.py", *train_args(data, tmp_path), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    (line,) = error_lines(proc.stderr)
    assert line.startswith(f"error: training stopped: {target}: record ") and "corrupted record" in line, line
    assert "no checkpoint yet" in line
    assert not (tmp_path / "ms" / "r").exists(), "a refused run leaves no model_save/RUN"


@pytest.mark.slow
def test_train_damaged_record_on_resume_keeps_the_checkpoint(dataset, tmp_path, capsys):
    data = copy_dataset(dataset, tmp_path)
    run = tmp_path / "ms" / "r"
    assert train_main(train_args(data, tmp_path, "--epochs", "1")) == 0
    # as the run stands when stopped after epoch 1 of 2; then a train shard goes bad
    (run / "state.json").write_text(json.dumps({"stage": 0, "epoch": 1, "best_score": 0.0}))
    kept = {p.name: p.read_bytes() for p in run.iterdir()}
    target = shard(data, "train", 0)
    flip_middle(target)
    capsys.readouterr()
    assert train_main(train_args(data, tmp_path, "--epochs", "2", "--resume")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = error_lines(err)
    assert line.startswith(f"error: training stopped: {target}: record "), line
    assert f"checkpoint kept: {run / 'last.keras'} (after epoch 1)" in line and "--resume --run r" in line
    assert {p.name: p.read_bytes() for p in run.iterdir()} == kept, "checkpoint, bundle and state untouched"


# --------------------------------------------------------------------------- 13: bundles


def damaged_copy(bundle_dir: Path, tmp_path: Path, damage) -> Path:
    folder = Path(shutil.copytree(bundle_dir, tmp_path / "b"))
    damage(folder)
    return folder


def edit_meta(change):
    def damage(folder: Path) -> None:
        meta = json.loads((folder / "meta.json").read_text())
        change(meta)
        (folder / "meta.json").write_text(json.dumps(meta))

    return damage


def photo() -> str:
    return str(SAMPLE / sample_lines()[0][1])


@pytest.mark.parametrize(
    "damage, file, words",
    [
        (lambda f: flip_middle(f / "model.keras", 64), "model.keras", "fails its CRC"),
        (lambda f: os.truncate(f / "model.keras", 4096), "model.keras", "damaged: not a readable .keras"),
        (lambda f: (f / "model.keras").unlink(), "model.keras", "missing"),
        (lambda f: (f / "meta.json").unlink(), "meta.json", "missing"),
        (lambda f: (f / "meta.json").write_text('{"labels": ["a",'), "meta.json", "invalid JSON"),
        (edit_meta(lambda m: m.pop("input_size")), "meta.json", "no 'input_size'"),
        (edit_meta(lambda m: m.update(labels=m["labels"][:12])), "meta.json", "12 labels for a model with 13 outputs"),
        # these three load the model (3-4 s each): slow, so that make test-fast stays under 2 minutes
        pytest.param(
            edit_meta(lambda m: m.update(labels=[*m["labels"], "x"])),
            "meta.json",
            "14 labels for a model with 13",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            edit_meta(lambda m: m.update(thresholds=[0.5] * 12)),
            "meta.json",
            "12 thresholds for 13 labels",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            edit_meta(lambda m: m.update(input_size=64)),
            "meta.json",
            "input_size 64 but model.keras takes 32x32",
            marks=pytest.mark.slow,
        ),
    ],
    ids=["flipped", "cut", "no-model", "no-meta", "bad-json", "no-input-size", "12", "14", "thresholds", "size"],
)
def test_damaged_bundle_is_one_line_naming_the_file(bundle, tmp_path, capsys, damage, file, words):
    folder = damaged_copy(bundle, tmp_path, damage)
    assert detect_main([photo(), "--model", str(folder)]) == 2
    err = capsys.readouterr().err
    (line,) = error_lines(err)
    assert line.startswith(f"error: {folder / file}: ") and words in line, line
    assert "File not found" not in line and "Traceback" not in err


def test_evaluate_and_tflite_paths_validate_the_bundle_too(bundle, dataset, tmp_path, capsys):
    folder = damaged_copy(bundle, tmp_path, lambda f: flip_middle(f / "model.keras", 64))
    assert evaluate_main(["--model", str(folder), "--data", str(dataset), "--out", str(tmp_path / "rep")]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(f"error: {folder / 'model.keras'}: damaged") and not (tmp_path / "rep").exists()
    (folder / "model.tflite").write_bytes(b"TFL3" + b"\0" * 100)
    assert detect_main([photo(), "--model", str(folder / "model.tflite")]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(f"error: {folder / 'model.tflite'}: damaged: not a readable TFLite model")


@pytest.mark.slow  # two evaluations: 8 s
def test_evaluate_names_a_missing_or_damaged_shard_and_writes_no_report(bundle, dataset, tmp_path, capsys):
    data = copy_dataset(dataset, tmp_path)
    target = shard(data, "val", 0)
    good = target.read_bytes()
    rep = tmp_path / "rep"
    target.unlink()
    assert evaluate_main(["--model", str(bundle), "--data", str(data), "--out", str(rep)]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(f"error: {target}: missing") and not rep.exists()
    # Same size, one record's bytes flipped: only reading tells; the line names the shard and the record.
    target.write_bytes(good)
    flip_middle(target)
    manifest = json.loads((data / dataset_json.MANIFEST).read_text())
    manifest["splits"]["val"]["shards"][0]["sha256"] = hashlib.sha256(target.read_bytes()).hexdigest()
    (data / dataset_json.MANIFEST).write_text(json.dumps(manifest))
    assert evaluate_main(["--model", str(bundle), "--data", str(data), "--out", str(rep)]) == 2
    err = capsys.readouterr().err
    (line,) = error_lines(err)
    assert line.startswith(f"error: {target}: record ") and "Traceback" not in err and not rep.exists()


@pytest.mark.slow
def test_detect_and_evaluate_clis_refuse_a_bad_bundle_in_one_line(bundle, dataset, tmp_path):
    folder = damaged_copy(bundle, tmp_path, edit_meta(lambda m: m.update(labels=m["labels"][:12])))
    proc = run_cli("detect.py", photo(), "--model", str(folder), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert error_lines(proc.stderr) == [
        f"error: {folder / 'meta.json'}: 12 labels for a model with 13 outputs (model.keras: one per label)"
    ]
    edit_meta(lambda m: m.pop("input_size"))(folder)
    proc = run_cli("evaluate.py", "--model", str(folder), "--data", str(dataset), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert error_lines(proc.stderr) == [
        f"error: {folder / 'meta.json'}: no 'input_size' (the image side the model was trained at)"
    ]
    assert not (tmp_path / "report").exists()


# --------------------------------------------------------------------------- 14: a 100-megapixel photo


def big_photo(path: Path, side: int = 10_000) -> Path:
    """A 100 MP phone-sized JPEG of a simple pattern: ~2 MB on disk, made in under a second."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (side, side), (200, 180, 150))
    draw = ImageDraw.Draw(im)
    draw.rectangle([side // 5, side * 3 // 10, side * 4 // 5, side * 9 // 10], fill=(30, 40, 120))
    draw.ellipse([side * 3 // 10, side // 20, side * 7 // 10, side * 7 // 20], fill=(220, 200, 190))
    im.save(path, "JPEG", quality=60)
    return path


@pytest.mark.slow
def test_detect_classifies_a_100_megapixel_photo_and_max_pixels_exists(bundle, tmp_path):
    big = big_photo(tmp_path / "phone.jpg")
    out = tmp_path / "r.json"
    proc = run_cli("detect.py", str(big), "--model", str(bundle), "--json", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(json.loads(out.read_text())[str(big)]["probabilities"]) == 13
    # the bomb limit is a flag detect.py has, and its refusal names it
    proc = run_cli("detect.py", str(big), "--model", str(bundle), "--max-pixels", "50000000", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert error_lines(proc.stderr) == [
        f"error: {big}: too many pixels: 10000x10000 = 100,000,000 > --max-pixels 50,000,000"
    ]


def test_max_pixels_bounds_and_pillows_own_stop_name_the_flag(capsys):
    assert detect_main(["x.jpg", "--max-pixels", "500000000"]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "--max-pixels must be from 1 to 178,956,970" in line

    # a PNG header claiming 20000x10000 (200 MP): Pillow stops it from the header; the message names the flag
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 20_000, 10_000, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    with pytest.raises(imaging.ImageError, match="too many pixels: .*--max-pixels 150,000,000"):
        imaging.decode_rgb(png, target=32, max_pixels=150_000_000)


@pytest.mark.parametrize(
    "command, line",
    [
        (["detect.py", "photo.jpg"], "interrupted; rerun the same command to classify every image"),
        (["evaluate.py", "--out", "rep"], "interrupted; rerun the same command for a complete report"),
        (["train.py", "--run", "r"], "interrupted while starting; nothing written"),
    ],
)
def test_ctrl_c_while_tensorflow_loads_is_one_line_and_130(command, line, tmp_path):
    """Ctrl-C 1.5 s in, while TensorFlow and Keras import (0.1 s to about 5 s here): was a traceback
    through importlib and exit -2 (killed by SIGINT); JAX's gc callback could also drop it."""
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, str(ROOT / command[0]), *command[1:], "--model-save", str(tmp_path / "ms")],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as at a terminal
    )
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert err.strip().splitlines() == [line], err

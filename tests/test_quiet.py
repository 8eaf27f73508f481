"""TensorFlow's start-up noise stays off the console of every command; real messages still reach it.

The commands run as real processes (the filter is installed only in a command's own process, not in
pytest's); FASHION_VERBOSE=1 shows the same lines do appear unfiltered on this machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SAMPLE, TINY_TRAIN

ROOT = Path(__file__).resolve().parents[1]
# What a plain `import tensorflow` prints on a machine without a GPU (tensorflow 2.21).
NOISE = (
    "absl::InitializeLog",
    "oneDNN custom operations",
    "Could not find cuda drivers",
    "cuInit",
    "cpu_feature_guard",
)
TIMEOUT = 600


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, **(env or {})},
    )


def noise_in(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(n in line for n in NOISE)]


SCRIPT = """
import os, sys
from fashion import quiet
quiet.install()
import tensorflow as tf
tf.raw_ops.PrintV2(input=tf.constant("a line TensorFlow's C++ writes"), output_stream="stderr")
print("a line Python writes", file=sys.stderr)
tf.io.read_file("/nonexistent/fashion-quiet-test.jpg")
"""


def test_filter_drops_noise_and_keeps_a_genuine_tensorflow_error():
    p = run(["-c", SCRIPT])
    assert p.returncode == 1
    assert noise_in(p.stderr) == [], p.stderr
    assert "a line TensorFlow's C++ writes" in p.stderr and "a line Python writes" in p.stderr
    assert "NotFoundError" in p.stderr and "fashion-quiet-test.jpg" in p.stderr  # a genuine TensorFlow error


@pytest.mark.slow
def test_filter_survives_a_crash_and_verbose_shows_the_noise():
    # A crash right after C++ wrote: the filter is a process of its own and still copies the line out.
    crash = run(["-c", SCRIPT.replace('tf.io.read_file("/nonexistent/fashion-quiet-test.jpg")', "os.abort()")])
    assert crash.returncode != 0
    assert "a line TensorFlow's C++ writes" in crash.stderr

    verbose = run(["-c", SCRIPT], env={"FASHION_VERBOSE": "1"})
    assert noise_in(verbose.stderr), "no start-up noise without the filter: this test would prove nothing"


@pytest.mark.slow
def test_the_four_commands_print_no_startup_noise(tmp_path):
    out, models, logs = tmp_path / "records", tmp_path / "model_save", tmp_path / "log"
    lines = (SAMPLE / "train+val.txt").read_text().splitlines()[:24]
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    photo = str(SAMPLE / lines[0].split(",")[1])
    where = ["--model-save", str(models), "--log", str(logs)]
    steps = [
        ["generate_dataset.py", "--help"],
        ["train.py", "--help"],
        ["detect.py", "--help"],
        ["evaluate.py", "--help"],
        ["generate_dataset.py", str(tmp_path / "list.txt"), "--labels", str(SAMPLE / "labels.txt")]
        + ["--out", str(out), "--image-size", "40", "--cache", ""],
        ["generate_dataset.py", "--verify", str(out)],
        ["train.py", "--data", str(out), *TINY_TRAIN, "--epochs", "1", "--run", "q", *where],
        ["detect.py", photo, "--model", str(models / "q")],
        ["evaluate.py", "--model", str(models / "q"), "--data", str(out), "--out", str(tmp_path / "report")],
    ]
    for args in steps:
        p = run(args)
        assert p.returncode == 0, (args, p.stderr[-2000:])
        assert noise_in(p.stderr) == [], (args, noise_in(p.stderr))
        if args[1] != "--help" and args[0] != "generate_dataset.py":
            assert p.stdout.strip(), args  # the command's own output still arrives

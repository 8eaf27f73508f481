"""TensorFlow's start-up noise stays off the console; real messages still reach it.

The filter is installed only in a command's own process (not in pytest's), so these run real
processes; FASHION_VERBOSE=1 shows the same lines do appear unfiltered on this machine. The four
commands themselves are checked by tests/test_demo.py, which runs the demo as make demo does.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

import pytest

from conftest import ROOT, noise_in, run

SCRIPT = """
import os, sys
from fashion.core import quiet
quiet.install()
import tensorflow as tf
tf.raw_ops.PrintV2(input=tf.constant("a line TensorFlow's C++ writes"), output_stream="stderr")
print("a line Python writes", file=sys.stderr)
tf.io.read_file("/nonexistent/fashion-quiet-test.jpg")
"""


@pytest.mark.slow  # a TensorFlow process
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


LIVE = """
import os, sys
from fashion.core import quiet
quiet.filter_stdout()
print("epoch 1/3 [=====", end="", flush=True)  # a progress bar: no newline until the epoch ends
sys.stdin.readline()  # the test saw it
print("] done", flush=True)
os.write(1, b"[Gloo] Rank 0 is connected to 1 peer ranks. Expected number of connected peer ranks is : 1\\n")
print("[Gloo is not gloo's hello]")
quiet.drain_stdout()
os._exit(0)  # as train.py on several processes leaves: the drain got every line out first
"""


def test_stdout_filter_drops_gloos_hello_and_keeps_a_progress_bar_live():
    p = subprocess.Popen([sys.executable, "-c", LIVE], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        seen, deadline = b"", time.monotonic() + 60
        while b"[=====" not in seen and time.monotonic() < deadline:  # before its newline
            if select.select([p.stdout], [], [], 1)[0]:
                seen += os.read(p.stdout.fileno(), 4096)
        assert seen == b"epoch 1/3 [=====", seen
        p.stdin.write(b"go\n")
        p.stdin.flush()
        rest, _ = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 0
    assert (seen + rest).decode() == "epoch 1/3 [=====] done\n[Gloo is not gloo's hello]\n"

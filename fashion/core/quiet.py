"""Start-up noise kept off the console, at the file-descriptor level, while real messages pass.

TensorFlow's C++ start-up lines (oneDNN, CUDA drivers on a machine without a GPU) and Beam's worker
chatter are written to file descriptor 2 by C code and by child processes, where neither Python's
logging nor `TF_CPP_MIN_LOG_LEVEL` (no longer honoured by TensorFlow 2.21's absl logging for these)
reach. Both tools point fd 2 at a pipe, drop the lines matching `NOISE` and copy every other line to
the real stderr; Python's own writes (`sys.stderr`: progress bars, our messages) go straight to the
real stderr, unbuffered by the filter.

* `install()`: for the whole life of a command's process (the four scripts call it first). The
  filter is a forked *process*, so what a crash writes last (a TensorFlow `F` line before an abort)
  is still copied out after the crash: a filter thread would die with the process.
* `filtered_stderr()`: a block of code, by a thread; `mute()` silences it (Beam after a Ctrl-C).
* `filter_stdout()`: fd 1 likewise, by a thread (train.py on several processes: gloo prints on stdout).

`FASHION_VERBOSE=1` in the environment turns the filtering off (everything TensorFlow says).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

# CUDA's "no driver" lines are noise only where there is no NVIDIA device: on a GPU machine a failed
# cuInit is a real fault (training would silently fall back to the CPU), so it stays visible there.
_CUDA_NOISE = rb"|[WE]0000 \S+ +\d+ cuda_\w+\.cc" if not Path("/dev/nvidiactl").exists() else b""
# gloo's hello when train.py's processes connect: printed on stdout (filter_stdout), dropped on stderr too
_GLOO_HELLO_START = b"[Gloo]"
_GLOO_HELLO = re.escape(_GLOO_HELLO_START) + rb" Rank \d+ is connected to"
NOISE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    # absl INFO lines from TensorFlow's C++ (start-up, "TFRecordDataset buffer_size is unspecified"...): never
    # a problem; its W/E/F lines pass
    rb"|I(\d{4} \d\d:\d\d:\d\d\.\d+|0000 \S+) +\d+ \w+\.cc:\d+\]" + _CUDA_NOISE + rb"|WARNING:root:apitools not found"
    rb"|INFO:"
    rb"|WARNING:__main__:No semi_persistent_directory"
    rb"|WARNING:apache_beam\.options\.pipeline_options:Discarding unparseable args"
    rb"|WARNING:apache_beam\.runners\.portability\.local_job_service:Worker: severity: WARN"
    # Beam 2.78's RunInference: its `import resource` shares a try with a module that needs torch, so without
    # torch every batch warns that memory cannot be measured (only its model-size metric is lost)
    rb"|WARNING:root:Resource module is not available for current platform"
    rb"|To enable the following instructions: .* in other operations, rebuild TensorFlow"
    # train.py on several processes: gloo's hello, and the line JAX logs just before the fatal one below
    rb"|" + _GLOO_HELLO + rb"|E\d{4} [\d:.]+ +\d+ coordination_service_agent\.cc:\d+\] Polled an error"
    # XLA's source positions under its E lines (a failed NCCL set-up prints a dozen): nothing to act on
    rb"|=== Source Location Trace: ===|external/xla\+?/\S+:\d+\s*$)"
)
# A fatal C++ line that ends the process with a stack trace nobody can act on: printed as one line instead,
# and everything after it (the trace, gRPC's details) dropped. JAX aborts a worker this way when the
# coordinator (inside worker 0 of `train.py --workers`) is gone; its client offers no callback Python can take.
FATAL = (
    (
        re.compile(rb"^F\d{4} .*Terminating process because the JAX distributed service detected fatal errors"),
        b"error: worker 0 (the coordinator) stopped or cannot be reached, so this worker stops too; "
        b"restart every worker with the same command plus --resume\n",
    ),
)


_muted = threading.Event()
_installed: dict[str, int] = {}  # the filter process's pid and the real stderr, once install() ran
_stdout: dict = {}  # filter_stdout()'s real fd 1 and copier thread
VERBOSE_ENV = "FASHION_VERBOSE"
DRAIN_DEADLINE_S = 3.0  # at exit, how long the filter may take to copy what is left in the pipe


def install(noise: re.Pattern[bytes] = NOISE) -> None:
    """For the rest of this process and its children: fd 2 through a filter process that drops `noise`.

    Call it first in a command's own process (not in a test's, whose capture owns fd 2).
    """
    if _installed or os.environ.get(VERBOSE_ENV, "") not in ("", "0") or not hasattr(os, "fork"):
        return
    if not _is_fd(sys.stderr, 2):
        return
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the filter: copies until every writer is gone, whatever happens to the command
        try:
            os.close(write_end)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C ends the command; its last lines still pass
            _copy(read_end, real, noise)
        finally:
            os._exit(0)
    os.close(read_end)
    os.dup2(write_end, 2)
    os.close(write_end)
    # mute() is a block's business: the command's own last line ("interrupted: ...") must still get out
    sys.stderr = _Writes(os.fdopen(os.dup(real), "w", buffering=1, encoding=sys.stderr.encoding), noise, mutable=False)
    _installed.update(pid=pid, real=real)
    atexit.register(drain)


def drain() -> None:
    """Before this process ends: give fd 2 back and let the filter copy the rest (bounded wait)."""
    if not _installed:
        return
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os.dup2(_installed["real"], 2)  # our write end closes: the filter sees EOF once the children's close too
    pid = _installed.pop("pid")
    deadline = time.monotonic() + DRAIN_DEADLINE_S
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        time.sleep(0.01)


def mute() -> None:
    """From now on inside `filtered_stderr`, drop everything but our own messages' stream: after a Ctrl-C,
    the children and their threads die with tracebacks the user has no use for (the job says in one
    line what was kept); threads that die later print nothing either."""
    _muted.set()
    threading.excepthook = lambda args: None


@contextlib.contextmanager
def filtered_stderr(noise: re.Pattern[bytes] = NOISE) -> Iterator[None]:
    """Inside: fd 2 (this process's C code and the children it starts) is filtered line by line."""
    sys.stderr.flush()
    _muted.clear()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    py_stderr = sys.stderr
    if _is_fd(py_stderr, 2):  # else (pytest's capture, a redirect in code) Python's writes already go elsewhere
        sys.stderr = _Writes(os.fdopen(os.dup(real), "w", buffering=1, encoding=py_stderr.encoding), noise)
    copier = threading.Thread(target=_copy, args=(read_end, os.dup(real), noise), daemon=True)
    copier.start()
    try:
        yield
    finally:
        if isinstance(sys.stderr, _Writes) and sys.stderr is not py_stderr:  # ours, not install()'s
            writes, sys.stderr = sys.stderr, py_stderr
            writes.hand_over(py_stderr)  # logging handlers made inside still hold it: they write on through it
        os.dup2(real, 2)  # our write end of the pipe is gone: EOF once the children's copies close too
        copier.join(timeout=2)  # a child still holding the pipe keeps the daemon copier, not us
        os.close(real)


# What C code prints on stdout, and how such a line starts
STDOUT_NOISE, STDOUT_NOISE_START = re.compile(rb"^" + _GLOO_HELLO), _GLOO_HELLO_START


def filter_stdout(noise: re.Pattern[bytes] = STDOUT_NOISE) -> None:
    """For the rest of this process: fd 1 (Python's prints too) through a thread that drops `noise` lines
    and passes the rest on as it comes (a progress bar's \r updates stay live). A thread, not install()'s
    process: it starts after JAX's threads, where a fork is unsafe; so call `drain_stdout()` before an
    `os._exit`, or its last lines may be lost."""
    if _stdout or os.environ.get(VERBOSE_ENV, "") not in ("", "0"):
        return
    sys.stdout.flush()  # (sys.stdout may be a copy to console.log: what it writes reaches fd 1 all the same)
    real = os.dup(1)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 1)
    os.close(write_end)
    copier = threading.Thread(
        target=_copy_live, args=(read_end, os.dup(real), noise), name="fashion-stdout", daemon=True
    )
    copier.start()
    _stdout.update(real=real, copier=copier)


def drain_stdout() -> None:
    """Flush stdout; fd 1 back to the real stdout, once the filter copied what was written (bounded wait)."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    if not _stdout:
        return
    os.dup2(_stdout["real"], 1)  # the pipe's last write end: EOF for the copier
    _stdout.pop("copier").join(timeout=DRAIN_DEADLINE_S)
    os.close(_stdout.pop("real"))


def _is_fd(stream, fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, ValueError):
        return False


class _Writes:
    """sys.stderr inside: each write straight through (a progress bar's \r updates stay live) unless it is
    a noise line (a logging handler writes a record in one call)."""

    def __init__(self, stream, noise: re.Pattern[bytes], mutable: bool = True):
        self._stream, self._noise, self._mutable = stream, noise, mutable

    def write(self, text: str) -> int:
        if (self._mutable and _muted.is_set()) or self._noise.match(text.encode("utf-8", "replace")):
            return len(text)
        return self._stream.write(text)

    def hand_over(self, stream) -> None:
        own, self._stream = self._stream, stream
        with contextlib.suppress(Exception):
            own.flush()
            own.close()

    def __getattr__(self, name: str):  # flush, fileno, isatty, encoding...
        if name.startswith("__") or name == "_stream":  # copy/pickle probe before __init__: no recursion
            raise AttributeError(name)
        return getattr(self._stream, name)


def _copy(read_end: int, out: int, noise: re.Pattern[bytes]) -> None:
    pending, ended = b"", False  # ended: a FATAL line was seen, the rest is its stack trace

    def keep(line: bytes) -> bytes:
        nonlocal ended
        if ended or _muted.is_set() or noise.match(line):
            return b""
        for pattern, message in FATAL:
            if pattern.match(line):
                ended = True
                return message
        return line + b"\n"

    with contextlib.suppress(OSError):
        while chunk := os.read(read_end, 65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            kept = b"".join(keep(line) for line in lines)
            if kept:
                os.write(out, kept)
        if pending and (last := keep(pending)):
            os.write(out, last)
    os.close(read_end)
    os.close(out)


def _copy_live(read_end: int, out: int, noise: re.Pattern[bytes], start: bytes = STDOUT_NOISE_START) -> None:
    """Whole `noise` lines dropped; the start of a line passes at once unless it may begin one (`start`)."""
    pending, passing = b"", False  # passing: this line's start already went out, the rest follows it
    with contextlib.suppress(OSError):
        while chunk := os.read(read_end, 65536):
            *lines, pending = (pending + chunk).split(b"\n")
            kept = b"".join(
                line + b"\n" for i, line in enumerate(lines) if (passing and i == 0) or not noise.match(line)
            )
            passing = passing and not lines
            if pending and (passing or not start.startswith(pending[: len(start)])):
                kept, pending, passing = kept + pending, b"", True
            if kept:
                os.write(out, kept)
        if pending:
            os.write(out, pending)
    os.close(read_end)
    os.close(out)

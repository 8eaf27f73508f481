"""A Ctrl-C that is not lost. Python raises KeyboardInterrupt wherever the main thread happens to be,
and two places there drop it: Keras' `pythonify_logs` (a bare `except:`, where the JAX backend waits
for every training step) and JAX's garbage-collection callback (an exception raised in a gc callback
is only reported as "ignored"; Keras imports JAX on every backend). Inside `latched()` the handler also
remembers the signal, and `check()` raises it again where the command can stop cleanly (batch and epoch
ends, between a run's phases); `caused(e)` tells an error that stands for it, and `defer()` lets a
short piece of work finish first.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

_pending = threading.Event()
_deferred = threading.Event()


def _interrupt(signum, frame) -> None:
    if _deferred.is_set() and not _pending.is_set():  # a second Ctrl-C does not wait
        _pending.set()
        print("\nCtrl-C: stopping once this epoch is scored and saved (Ctrl-C again to stop now)", file=sys.stderr)
        return
    _pending.set()
    raise KeyboardInterrupt


@contextlib.contextmanager
def latched() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt as usual and is remembered for `check()`. Only Python's own
    handler is replaced: a Ctrl-C the parent ignores (a background job) stays ignored."""
    _pending.clear()
    _deferred.clear()
    own = threading.current_thread() is threading.main_thread()
    if not own or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    previous, hook = signal.signal(signal.SIGINT, _interrupt), sys.unraisablehook

    def quiet_about_interrupts(unraisable) -> None:
        # Python's report of a KeyboardInterrupt dropped in a gc callback: it is remembered, not shown
        if not issubclass(unraisable.exc_type, KeyboardInterrupt):
            hook(unraisable)

    sys.unraisablehook = quiet_about_interrupts
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = hook


def defer(on: bool) -> None:
    """While on, a first Ctrl-C is only remembered and the next check() raises it: for work that is
    worth finishing once begun (an epoch's validation and checkpoint: its steps are then not redone)."""
    if on:
        _deferred.set()
    else:
        _deferred.clear()


def check() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed and not handled yet (it was swallowed on its way)."""
    if _pending.is_set():
        raise KeyboardInterrupt


def caused(e: BaseException) -> bool:
    """Whether `e` is the Ctrl-C, or what library code made of it on its way (TensorFlow's tensor
    conversion turns it into a TypeError, an import into an ImportError)."""
    return isinstance(e, KeyboardInterrupt) or _pending.is_set()


def handled() -> None:
    """The command has acted on the Ctrl-C (saved, said so): a later check() does not raise it again."""
    _pending.clear()
    _deferred.clear()

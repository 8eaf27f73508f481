"""Exit codes and the error types a command turns into one `error:` line (never a traceback).

The lowest layer: every module may import it, it imports nothing of ours.
"""

# What a command's exit code means (README, "Faults and exit codes").
EXIT_OK = 0  # everything done
EXIT_FAILURES = 1  # done, but some inputs were skipped (listed in failures.csv / one line each)
EXIT_FATAL = 2  # nothing done: bad options, bad input, missing data or model
# generate_dataset.py: the output disk filled up; finished shards are kept, the half-written one removed:
# free the space the message names and rerun the same command to finish.
EXIT_DISK_FULL = 3
# train.py on several machines: another worker stopped; every worker reruns with --resume
EXIT_WORKER_LOST = 4
EXIT_INTERRUPTED = 130  # Ctrl-C; rerun (or --resume) to go on


class FashionError(Exception):
    """A problem the user can fix, stated in one line; the command exits with EXIT_FATAL."""


class IngestError(FashionError):
    """Stops generate_dataset.py before anything is written (bad options, wrong folder state)."""


class TrainError(FashionError):
    """Stops train.py with a clear message (bad options, missing data or weights)."""


class BundleError(FashionError):
    """A model bundle that cannot be used (missing, incomplete or inconsistent files)."""

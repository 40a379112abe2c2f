"""Phase lines for the long steps before a progress bar can start (reading a corpus, training a
tokenizer, tokenising): a line when the step starts and one when it ends, with what it made and
how long it took, so a run that is busy is not taken for one that hangs.

Callers pass `enabled=bool(config.train.progress) and jax.process_index() == 0`, as the
trainer's own bar: one process prints, and `train.progress=False` silences them.
"""
from __future__ import annotations

import contextlib
import sys
import time


def on_terminal(stream=None) -> bool:
    """Whether `stream` (default: sys.stderr, looked up now) is a terminal: a library's own
    progress display (the tokenizers trainers') is worth its redraws there, and only clutters a
    log file, a CI log or a test's captured output."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # None (pythonw), closed, or no isatty
        return False


class Phase:
    """What `phase` yields: set `result` (e.g. "15,856 documents") to show it in the end line."""

    def __init__(self):
        self.result = ""


@contextlib.contextmanager
def phase(what: str, enabled: bool, prefix: str = "[data]"):
    """Prints `PREFIX What...` before the block and `PREFIX What: RESULT (N.Ns)` after it."""
    step = Phase()
    if not enabled:
        yield step
        return
    print(f"{prefix} {what}...", flush=True)
    start = time.perf_counter()
    yield step
    seconds = time.perf_counter() - start
    print(f"{prefix} {what}: {step.result + ' ' if step.result else ''}({seconds:.1f}s)",
          flush=True)

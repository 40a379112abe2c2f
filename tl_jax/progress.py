"""Phase lines for the long steps before a progress bar can start (reading a corpus, training a
tokenizer, tokenising): a line when the step starts and one when it ends, with what it made and
how long it took, so a run that is busy is not taken for one that hangs. And `bar`, tl_jax's
progress bars: tqdm's, sized for a terminal that reports no size.

Callers pass `enabled=bool(config.train.progress) and jax.process_index() == 0`, as the
trainer's own bar: one process prints, and `train.progress=False` silences them.
"""
from __future__ import annotations

import contextlib
import os
import shutil
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


def bar(*args, **kwargs):
    """`tqdm.auto.tqdm(*args, **kwargs)`, on a terminal that reports 0 columns or 0 rows too.

    Some CI pseudo-terminals, a container's console before its size is set and `stty cols 0`
    report a size of 0. tqdm takes one less than that, -1: with 0 rows it drew nothing at all,
    and with 0 columns a bar one character wide with its last character cut off. There the bar
    is given a fixed size instead ($COLUMNS and $LINES when set, else 80 x 24), with
    dynamic_ncols off, as tqdm would ask the terminal again on every redraw; an ncols or nrows
    the caller passes is kept."""
    from tqdm.auto import tqdm
    fixed = _fixed_size(kwargs.get("file"))
    if fixed:
        for key in ("ncols", "nrows"):
            if kwargs.get(key):
                fixed[key] = kwargs[key]
        kwargs.update(fixed)
    return tqdm(*args, **kwargs)


def _fixed_size(stream) -> dict:
    """tqdm's size arguments for `stream` (default: sys.stderr, tqdm's) when it is a terminal
    that reports 0 columns or rows; {} otherwise (tqdm asks the terminal itself)."""
    stream = sys.stderr if stream is None else stream
    if not on_terminal(stream):
        return {}
    try:
        columns, lines = os.get_terminal_size(stream.fileno())
    except (AttributeError, ValueError, OSError):
        return {}
    if columns > 0 and lines > 0:
        return {}
    # shutil's size: $COLUMNS/$LINES, else stdout's terminal, else the fallback, per dimension.
    fallback = shutil.get_terminal_size((80, 24))
    columns, lines = columns or fallback.columns, lines or fallback.lines
    # One less, as tqdm takes: a line as wide as the terminal would wrap.
    return {"ncols": max(columns - 1, 1), "nrows": max(lines - 1, 1), "dynamic_ncols": False}

"""Phase lines for the long steps before a progress bar can start (reading a corpus, training a
tokenizer, tokenising): a line when the step starts and one when it ends, with what it made and
how long it took, so a run that is busy is not taken for one that hangs. And `bar`, tl_jax's
progress bars: tqdm's on a terminal (sized for one that reports no size), and plain lines where
the bar's stream is no terminal (a log file, CI, `nohup ... > log 2>&1`), which tqdm's redraws
would fill with one long line of carriage returns.

Callers pass `enabled=bool(config.train.progress) and jax.process_index() == 0`, as the
trainer's own bar: one process prints, and `train.progress=False` silences them.
"""
from __future__ import annotations

import contextlib
import math
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


def write(message: str) -> None:
    """Prints `message` on stdout on a line of its own, above tqdm's bars where they are drawn.

    A plain `print` while a bar is drawn (on a terminal, stdout and stderr are one screen)
    lands on the end of the bar's line, where the cursor waits, and the bar's next redraw
    leaves a copy of itself under it. tqdm's `write` clears the bars first and redraws them
    under the message; it is flushed here too, so that in a log the message keeps its place
    among line mode's progress lines (on stderr). Where no bar is drawn, a `print`."""
    from tqdm.auto import tqdm
    tqdm.write(message)
    if sys.stdout is not None:  # None under pythonw: tqdm writes nothing there either
        sys.stdout.flush()


# Seconds between two of line mode's lines, unless the caller or this variable says otherwise.
DEFAULT_LINE_SECONDS = 30.0
LINE_SECONDS_VARIABLE = "TL_JAX_PROGRESS_SECONDS"


def bar(*args, line_seconds: float | None = None, **kwargs):
    """A progress bar with tqdm's arguments and the part of its API tl_jax uses.

    On a terminal (or in a Jupyter notebook): `tqdm.auto.tqdm(*args, **kwargs)`, on a terminal
    that reports 0 columns or 0 rows too. Some CI pseudo-terminals, a container's console
    before its size is set and `stty cols 0` report a size of 0. tqdm takes one less than that,
    -1: with 0 rows it drew nothing at all, and with 0 columns a bar one character wide with its
    last character cut off. There the bar is given a fixed size instead ($COLUMNS and $LINES
    when set, else 80 x 24), with dynamic_ncols off, as tqdm would ask the terminal again on
    every redraw; an ncols or nrows the caller passes is kept.

    Where the bar's stream (`file`, default sys.stderr) is no terminal: a `LineProgress`, which
    prints a plain line at most every `line_seconds` (default: $TL_JAX_PROGRESS_SECONDS, else
    30) and one when it closes. `disable=None` keeps tqdm's meaning, off where the stream is no
    terminal, so a bar asked for on a terminal only prints nothing here."""
    from tqdm.auto import tqdm
    if not _notebook(tqdm) and not on_terminal(kwargs.get("file")):
        return LineProgress(*args, line_seconds=line_seconds, **kwargs)
    fixed = _fixed_size(kwargs.get("file"))
    if fixed:
        for key in ("ncols", "nrows"):
            if kwargs.get(key):
                fixed[key] = kwargs[key]
        kwargs.update(fixed)
    return tqdm(*args, **kwargs)


def _notebook(tqdm_class) -> bool:
    """Whether this runs in a Jupyter kernel (Colab's too): its stderr is no terminal, but
    tqdm.auto draws a widget there, or (without ipywidgets) a text bar that the notebook's
    output area redraws in place, as a terminal does."""
    return ("ipykernel.zmqshell" in sys.modules  # what tqdm.autonotebook looks for too
            or any(c.__module__ == "tqdm.notebook" for c in tqdm_class.__mro__))


def line_seconds_from_env() -> float:
    """$TL_JAX_PROGRESS_SECONDS, the seconds between line mode's lines (default 30)."""
    value = os.environ.get(LINE_SECONDS_VARIABLE, "").strip()
    if not value:
        return DEFAULT_LINE_SECONDS
    return _check_seconds(value, f"${LINE_SECONDS_VARIABLE}")


def _check_seconds(value, where: str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{where}={value!r}: the seconds between two progress lines must be a "
                         "number >= 0 (0: a line on every update).")
    return seconds


class LineProgress:
    """tqdm's bar as newline-terminated lines, for a stream that is no terminal: one at most
    every `line_seconds` as it advances and one when it closes, such as

        [bert] step 200/1,000 (20%) loss=3.215 tok/s=6,490 | 41s elapsed, ~2m44s left
        [bert] step 1,000/1,000 (100%) loss=2.871 tok/s=6,512 | done in 3m25s, 4.87 step/s

    The ETA is from the rate since the previous line (a compilation before the first step
    slows only the first estimate). A bar left by an exception (by `with`, `stop`, or
    `closed_on_error` around a block) closes with the count reached and what stopped it,

        [bert] step 340/1,000 (34%) loss=3.215 | stopped by KeyboardInterrupt after 1m10s, ...

    rather than with no line, which left a log's last line up to `line_seconds` stale.
    Takes tqdm's arguments; those about drawing a bar (ncols, dynamic_ncols, mininterval,
    position, ...) mean nothing here and are ignored, and an argument tqdm does not know is an
    error, as it is there. `leave=False` still prints the
    closing line: unlike a bar, a line cannot be cleared. `clock` (seconds) is for tests."""

    def __init__(self, iterable=None, desc=None, total=None, leave=True, file=None, *,
                 unit="it", initial=0, disable=False, postfix=None, line_seconds=None,
                 clock=None, unit_scale=False, **drawing):
        unknown = sorted(set(drawing) - _tqdm_arguments())
        if unknown:
            raise TypeError(f"progress.bar got arguments that tqdm does not take: "
                            f"{', '.join(unknown)}")
        self.iterable = iterable
        if total is None and iterable is not None:
            try:
                total = len(iterable)
            except (TypeError, AttributeError):
                total = None
        self.total = total
        self.desc = desc or ""
        self.unit = unit
        self.unit_scale = bool(unit_scale)  # numbers as 3.42M (then "3.42MB" for unit "B")
        self.leave = leave
        self.n = self.initial = initial
        self.line_seconds = (line_seconds_from_env() if line_seconds is None
                             else _check_seconds(line_seconds, "line_seconds"))
        self.fp = sys.stderr if file is None else file
        # tqdm's disable=None: off where the stream is no terminal, which is always so here.
        self.disable = disable is None or bool(disable) or self.fp is None
        self._clock = clock or time.monotonic
        self._start = self._last_time = self._clock()
        self._last_n = initial
        self._postfix = ""
        self.closed = False
        if postfix:
            self.set_postfix(postfix)

    # -- what the callers use of tqdm's API

    def __iter__(self):
        if self.iterable is None:
            raise TypeError("progress.bar made without an iterable cannot be iterated")
        if self.disable:
            yield from self.iterable
            return
        try:
            for item in self.iterable:
                yield item
                self.update(1)  # counted once the caller is done with it, as tqdm does
        except GeneratorExit:
            raise  # freed: a `break`, or the loop's body raising; `finally` closes the bar
        except BaseException as error:  # raised by the iterable itself: say so
            self.stop(error)
            raise
        finally:
            self.close()  # also on a `break` out of the loop (when the generator is freed)

    def __len__(self):
        return self.total if self.total is not None else len(self.iterable)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        if exc is None:
            self.close()
        else:
            self.stop(exc)
        return False

    def update(self, n=1):
        """Advances by `n`; prints a line if `line_seconds` have passed since the last one."""
        self.n += n
        if self.disable or self.closed:
            return
        now = self._clock()
        if now - self._last_time >= self.line_seconds:
            self._print(self._progress_line(now))
            self._last_time, self._last_n = now, self.n

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        """Values shown after the count, `name=value` each; numbers as tqdm shows them."""
        values = dict(ordered_dict or {}, **kwargs)
        self._postfix = " ".join(f"{k}={_format_value(v)}" for k, v in values.items())

    def set_postfix_str(self, s="", refresh=True):
        self._postfix = str(s)

    def set_description(self, desc=None, refresh=True):
        self.desc = desc or ""

    def refresh(self, *args, **kwargs):
        pass  # nothing is drawn between lines

    def clear(self, *args, **kwargs):
        pass

    def write(self, s, file=None, end="\n"):
        """A message on a line of its own (on stdout unless `file`, as tqdm's `write`)."""
        stream = sys.stdout if file is None else file
        stream.write(f"{s}{end}")
        stream.flush()

    def close(self):
        """Prints the closing line (once), unless disabled."""
        self._close()

    def stop(self, error: BaseException):
        """Closes the bar after `error` (an exception, Ctrl-C's KeyboardInterrupt) ended the
        work it counts: its closing line (once, unless disabled or already closed) says that the
        work stopped there, by what, instead of "done". Not tqdm's: see `closed_on_error`."""
        self._close(stopped_by=type(error).__name__)

    def _close(self, stopped_by=None):
        if self.closed:
            return
        self.closed = True
        if self.disable:
            return
        self._print(self._closing_line(self._clock(), stopped_by))

    # -- the lines

    def _rate(self, per_second: float) -> str:
        if self.unit_scale and per_second >= 1:
            return f"{_scaled(per_second)}{self.unit}/s"
        return _rate(per_second, self.unit)

    def _print(self, line):
        self.fp.write(line + "\n")
        self.fp.flush()

    def _count(self):
        head = f"[{self.desc}] " if self.desc else ""
        if self.unit_scale:
            count = f"{head}{_scaled(self.n)}{self.unit}"
            if self.total:
                count += f"/{_scaled(self.total)}{self.unit}"
        else:
            count = f"{head}{self.unit} {self.n:,}"
            if self.total:
                count += f"/{self.total:,}"
        if self.total:
            count += f" ({int(100 * self.n / self.total)}%)"
        return count + (f" {self._postfix}" if self._postfix else "")

    def _progress_line(self, now):
        elapsed = now - self._start
        span, done = now - self._last_time, self.n - self._last_n
        tail = f"{_duration(elapsed)} elapsed"
        rate = done / span if span > 0 and done > 0 else None
        if self.total and rate:
            tail += f", ~{_duration(max(self.total - self.n, 0) / rate)} left"
        elif rate:
            tail += f", {self._rate(rate)}"
        return f"{self._count()} | {tail}"

    def _closing_line(self, now, stopped_by=None):
        elapsed = now - self._start
        if stopped_by:  # an exception: not "done", even at the total or without one
            ended = f"stopped by {stopped_by} after"
        else:
            ended = "done in" if not self.total or self.n >= self.total else "stopped after"
        tail = f"{ended} {_duration(elapsed)}"
        if elapsed > 0 and self.n > self.initial:
            tail += f", {self._rate((self.n - self.initial) / elapsed)}"
        return f"{self._count()} | {tail}"


@contextlib.contextmanager
def closed_on_error(progress_bar):
    """For a bar made before a block and closed after it, as the trainer's (which outlives its
    loop): an exception leaving the block (a non-finite loss, Ctrl-C, a failing eval) closes
    the bar, so that what follows it (the traceback, a `[checkpoint]` line) does not start on
    the bar's line, or leave a log ending on a progress line up to `line_seconds` old.

    A line-mode bar is `stop`ped: its last line says where the work stopped and by what. tqdm's
    bar on a terminal is closed as tqdm's own `with` closes it: left drawn where it stopped
    (with `leave`, the trainer's), or cleared (without, the eval bar), then the cursor at the
    start of a line of its own. A notebook's widget is also marked as failed (red), as
    tqdm.notebook marks one whose own loop raised, rather than as a success at its total.
    None (no bar) is left alone."""
    try:
        yield progress_bar
    except BaseException as error:
        if isinstance(progress_bar, LineProgress):
            progress_bar.stop(error)
        elif progress_bar is not None:
            _close_tqdm_after_error(progress_bar)
        raise


def _close_tqdm_after_error(tqdm_bar) -> None:
    """Closes a tqdm bar that an exception stopped (see `closed_on_error`)."""
    if getattr(tqdm_bar, "container", None) is not None and not tqdm_bar.disable:
        # tqdm.notebook's widget: "danger" first, which its `close` then keeps (shown, and
        # red, also with leave=False or at its total, where it would say "success").
        tqdm_bar.disp(bar_style="danger", check_delay=False)
    tqdm_bar.close()


def _tqdm_arguments() -> set:
    """The keyword arguments tqdm's bar takes."""
    import inspect

    from tqdm.std import tqdm
    return set(inspect.signature(tqdm.__init__).parameters) - {"self", "kwargs"}


def _format_value(value) -> str:
    """A postfix value: a string as given (callers format their own), a number as tqdm would."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}"


def _duration(seconds: float) -> str:
    """41s, 4.2s, 2m44s, 1h05m."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _scaled(number: float) -> str:
    """A count with an SI prefix, as tqdm's unit_scale shows it: 950, 3.42k, 4.40M."""
    from tqdm.std import tqdm
    return tqdm.format_sizeof(number)


def _rate(per_second: float, unit: str) -> str:
    """6,490 tok/s, 4.87 step/s, or 2.5s/step (1m40s/step) when slower than one a second."""
    if per_second >= 100:
        return f"{per_second:,.0f} {unit}/s"
    if per_second >= 1:
        return f"{per_second:#.3g} {unit}/s"
    return f"{_duration(1 / per_second)}/{unit}"


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

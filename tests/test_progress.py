"""tl_jax's progress output: bars drawn on a terminal whatever size it reports, and plain lines
where the output is no terminal (a log file, CI, captured output)."""
import io
import os

import pytest

from tl_jax import progress


class _Terminal(io.StringIO):
    """A stand-in for sys.stderr on a terminal (what tqdm writes is kept)."""

    def isatty(self):
        return True

    def fileno(self):
        return 2  # os.get_terminal_size is monkeypatched: never asked about it


def _drawn(monkeypatch, size, **kwargs):
    """What a 5-step bar made by `progress.bar` writes on a terminal of `size` (columns, rows)."""
    import sys
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)  # tqdm sizes bars on sys.stderr/stdout only
    monkeypatch.setattr(os, "get_terminal_size", lambda fd=None: os.terminal_size(size))
    for _ in progress.bar(range(5), desc="train", mininterval=0, **kwargs):
        pass
    return [line for line in terminal.getvalue().split("\r") if line.strip()]


@pytest.mark.parametrize("dynamic_ncols", [False, True])
@pytest.mark.parametrize("size", [(0, 0), (0, 24), (100, 0)])
def test_a_bar_is_drawn_on_a_terminal_that_reports_no_size(size, dynamic_ncols, monkeypatch):
    """A terminal reporting 0 rows (some CI pseudo-terminals, `stty rows 0`) got no bar at all
    from tqdm, and one reporting 0 columns a bar one character wide, cut short: the size falls
    back to $COLUMNS x $LINES, or 80 x 24."""
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)
    lines = _drawn(monkeypatch, size, dynamic_ncols=dynamic_ncols)
    width = size[0] or 80
    assert lines and lines[-1].startswith("train: 100%|")
    assert lines[-1].rstrip("\n").endswith("it/s]")  # the whole line, nothing cut off
    assert all(len(line.rstrip("\n")) == width - 1 for line in lines), lines
    monkeypatch.setenv("COLUMNS", "60")
    assert {len(line.rstrip("\n")) for line in _drawn(monkeypatch, size)} == {(size[0] or 60) - 1}
    # A width the caller asks for is kept.
    assert {len(line.rstrip("\n")) for line in _drawn(monkeypatch, size, ncols=50)} == {50}


def test_a_terminal_with_a_size_and_a_file_are_left_to_tqdm(monkeypatch):
    import sys
    lines = _drawn(monkeypatch, (70, 20), dynamic_ncols=True)
    assert {len(line.rstrip("\n")) for line in lines} == {69}
    assert progress._fixed_size(io.StringIO()) == {}  # not a terminal: tqdm's own defaults
    monkeypatch.setattr(sys, "stderr", None)  # pythonw
    assert progress._fixed_size(None) == {} and not progress.on_terminal()


class _Clock:
    """A clock for line mode's rate limit that moves only when told."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _line_bar(stream, clock, **kwargs):
    """A training-like line-mode bar on `stream` (a StringIO: no terminal)."""
    kwargs = dict(dict(total=1000, desc="bert", unit="step", dynamic_ncols=True), **kwargs)
    return progress.bar(file=stream, clock=clock, **kwargs)


def test_off_a_terminal_a_bar_prints_plain_lines_at_most_every_n_seconds():
    """Redirected to a file, tqdm's redraws made one long line of carriage returns with the
    loss and tokens/s only in the bar's postfix: a line now, every `line_seconds` at most,
    with the postfix, the ETA and a last line when it closes."""
    stream, clock = io.StringIO(), _Clock()
    bar = _line_bar(stream, clock, line_seconds=30)
    assert isinstance(bar, progress.LineProgress)
    bar.set_postfix({"loss": "3.215", "tok/s": "6,490"}, refresh=False)
    for _ in range(200):  # 200 steps in 40 s: one line, at 30 s
        clock.now += 0.2
        bar.update(1)
    assert stream.getvalue() == (
        "[bert] step 150/1,000 (15%) loss=3.215 tok/s=6,490 | 30s elapsed, ~2m50s left\n")
    clock.now += 5  # 45 s since the start, 15 since the last line: none
    bar.update(10)
    assert stream.getvalue().count("\n") == 1
    clock.now += 15  # 30 s since the last line, 60 steps in them: ~1m30s for the 790 left
    bar.update(0)
    assert stream.getvalue().splitlines()[-1] == (
        "[bert] step 210/1,000 (21%) loss=3.215 tok/s=6,490 | 1m00s elapsed, ~6m35s left")
    bar.n = 1000
    clock.now += 140
    bar.close()
    bar.close()  # once
    lines = stream.getvalue().split("\n")
    assert lines[-2:] == [
        "[bert] step 1,000/1,000 (100%) loss=3.215 tok/s=6,490 | done in 3m20s, 5.00 step/s", ""]
    assert "\r" not in stream.getvalue() and len(lines) == 4


def test_line_mode_every_update_with_no_interval_and_the_variable(monkeypatch):
    stream, clock = io.StringIO(), _Clock()
    monkeypatch.setenv("TL_JAX_PROGRESS_SECONDS", "0")
    with _line_bar(stream, clock, total=3, initial=1) as bar:  # resumed at step 1
        for _ in range(2):
            clock.now += 2
            bar.update()
    assert stream.getvalue().splitlines() == [
        "[bert] step 2/3 (66%) | 2.0s elapsed, ~2.0s left",
        "[bert] step 3/3 (100%) | 4.0s elapsed, ~0.0s left",
        "[bert] step 3/3 (100%) | done in 4.0s, 2.0s/step"]
    monkeypatch.setenv("TL_JAX_PROGRESS_SECONDS", "45")
    assert _line_bar(stream, clock).line_seconds == 45
    assert _line_bar(stream, clock, line_seconds=5).line_seconds == 5  # the caller's wins
    monkeypatch.delenv("TL_JAX_PROGRESS_SECONDS")
    assert _line_bar(stream, clock).line_seconds == progress.DEFAULT_LINE_SECONDS == 30
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv("TL_JAX_PROGRESS_SECONDS", bad)
        with pytest.raises(ValueError) as e:
            _line_bar(stream, clock)
        assert str(e.value) == (
            f"$TL_JAX_PROGRESS_SECONDS={bad!r}: the seconds between two progress lines must be "
            "a number >= 0 (0: a line on every update).")
    with pytest.raises(TypeError, match="tqdm does not take: colour_scheme"):
        _line_bar(stream, clock, line_seconds=1, colour_scheme="red")


def test_line_mode_over_an_iterable_and_what_it_leaves_out(capsys):
    """Iterating counts each item and closes at the end or on a `break` (as the eval pass
    stops at train.eval_batches). Off a terminal `disable=None` (tqdm's "only on a terminal",
    as `extract` and `generate --mode=score` ask) and disable=True print nothing. `write` is a
    line on stdout, as tqdm's; the lines go to stderr, tqdm's stream, by default."""
    clock = _Clock()

    def batches():
        for i in range(10):
            clock.now += 1
            yield i

    seen = []
    for i in progress.bar(batches(), total=4, desc="eval", unit="batch", leave=False,
                          line_seconds=3, clock=clock):
        if i == 4:
            break
        seen.append(i)
    assert seen == [0, 1, 2, 3]
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [
        "[eval] batch 3/4 (75%) | 3.0s elapsed, ~1.0s left",
        "[eval] batch 4/4 (100%) | done in 5.0s, 1.2s/batch"]
    assert list(progress.bar([1, 2], desc="x", line_seconds=0)) == [1, 2]
    assert capsys.readouterr().err.splitlines()[-1].startswith("[x] it 2/2 (100%) | done in ")
    for disable in (None, True):
        bar = progress.bar(range(3), desc="score", disable=disable, line_seconds=0)
        assert list(bar) == [0, 1, 2]
        bar.update(5)
        bar.set_postfix(loss=1.0)
        bar.write("a message")
        bar.close()
        assert capsys.readouterr() == ("a message\n", "")
    bar = progress.bar(desc="tokenize", unit="unit", line_seconds=0)  # no total: a rate
    clock_bar = progress.bar(desc="n", unit="doc", line_seconds=0, clock=clock)
    clock.now += 2
    clock_bar.update(300)
    bar.close()
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "[n] doc 300 | 2.0s elapsed, 150 doc/s"
    assert len(err) == 2 and err[1].startswith("[tokenize] unit 0 | done in ")


def test_on_a_terminal_a_bar_is_still_tqdms(monkeypatch):
    import sys

    from tqdm.auto import tqdm
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(os, "get_terminal_size", lambda fd=None: os.terminal_size((80, 24)))
    bar = progress.bar(total=3, desc="train", mininterval=0, line_seconds=5)
    assert isinstance(bar, tqdm)
    bar.update(3)
    bar.close()
    assert "\r" in terminal.getvalue() and "train: 100%|" in terminal.getvalue()
    assert isinstance(progress.bar(total=3, file=terminal, disable=True), tqdm)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert isinstance(progress.bar(total=3, disable=True), progress.LineProgress)
    assert isinstance(progress.bar(total=3, file=terminal), tqdm)  # the stream it writes to


def test_in_a_jupyter_kernel_a_bar_is_still_tqdms(monkeypatch):
    """A notebook's stderr is no terminal, but its output area shows tqdm's widget, or redraws
    its text bar in place: no lines there."""
    import sys
    import types

    from tqdm.auto import tqdm
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert isinstance(progress.bar(total=3), progress.LineProgress)
    monkeypatch.setitem(sys.modules, "ipykernel.zmqshell", types.ModuleType("ipykernel.zmqshell"))
    bar = progress.bar(total=3, line_seconds=5)
    assert isinstance(bar, tqdm)
    bar.close()


def test_line_mode_left_by_an_exception_says_where_it_stopped_and_why():
    """A bar left by an exception (the training loop raising, Ctrl-C, a non-finite loss) printed
    no closing line: a log's last progress line could be 30 s old and said nothing of where
    the run stopped. Now a last line gives the count reached and what stopped it, never
    "done" (even at the total, or without one), once."""
    stream, clock = io.StringIO(), _Clock()
    with pytest.raises(KeyboardInterrupt):
        with _line_bar(stream, clock, line_seconds=30) as bar:
            bar.set_postfix({"loss": "3.215"}, refresh=False)
            for _ in range(340):  # lines at 30 s and 60 s, then none for 10 s
                clock.now += 70 / 340
                bar.update(1)
            raise KeyboardInterrupt
    assert bar.closed and stream.getvalue().splitlines()[-1] == (
        "[bert] step 340/1,000 (34%) loss=3.215 | stopped by KeyboardInterrupt after 1m10s, "
        "4.86 step/s")
    bar.close()  # once
    bar.stop(ValueError())
    assert len(stream.getvalue().splitlines()) == 3

    # closed_on_error, for a bar closed after the block it counts (the trainer's): a line-mode
    # bar is stopped; at its total and without one too, it does not say "done".
    for total, count in ((3, "3/3 (100%)"), (None, "3")):
        stream = io.StringIO()
        bar = _line_bar(stream, clock, total=total, line_seconds=30)
        with pytest.raises(FloatingPointError, match="nan"):
            with progress.closed_on_error(bar) as same:
                assert same is bar
                bar.update(3)
                raise FloatingPointError("nan")
        assert stream.getvalue() == (
            f"[bert] step {count} | stopped by FloatingPointError after 0.0s\n")
    with pytest.raises(RuntimeError):  # no bar (train.progress=False, not process 0)
        with progress.closed_on_error(None):
            raise RuntimeError
    bar = _line_bar(stream := io.StringIO(), clock, disable=True)
    with pytest.raises(RuntimeError):
        with progress.closed_on_error(bar):
            raise RuntimeError
    assert bar.closed and stream.getvalue() == ""

    # An iterable that raises (reading a batch failed) stops the bar over it.
    def batches():
        yield 0
        raise OSError("disk gone")

    stream = io.StringIO()
    with pytest.raises(OSError, match="disk gone"):
        for _ in progress.bar(batches(), total=4, desc="eval", unit="batch", file=stream,
                              line_seconds=30, clock=clock):
            pass
    assert stream.getvalue() == "[eval] batch 1/4 (25%) | stopped by OSError after 0.0s\n"


def test_line_mode_with_unit_scale_shows_sizes_as_tqdm_does():
    """unit_scale (`tl_jax tokenize`'s bar over a file's bytes): counts, totals and rates with
    an SI prefix and the unit after them, 3.42MB/4.40MB, as tqdm's bar shows them."""
    stream, clock = io.StringIO(), _Clock()
    bar = progress.bar(total=4_396_208, desc="tokenising a.jsonl", unit="B", unit_scale=True,
                       file=stream, line_seconds=1, clock=clock)
    clock.now += 2
    bar.update(3_424_256)
    clock.now += 1.5
    bar.update(971_952)
    bar.close()
    assert stream.getvalue().splitlines() == [
        "[tokenising a.jsonl] 3.42MB/4.40MB (77%) | 2.0s elapsed, ~0.6s left",
        "[tokenising a.jsonl] 4.40MB/4.40MB (100%) | 3.5s elapsed, ~0.0s left",
        "[tokenising a.jsonl] 4.40MB/4.40MB (100%) | done in 3.5s, 1.26MB/s"]
    stream = io.StringIO()
    bar = progress.bar(desc="read", unit="B", unit_scale=True, file=stream, line_seconds=0,
                       clock=clock)
    clock.now += 4
    bar.update(950)
    assert stream.getvalue() == "[read] 950B | 4.0s elapsed, 238B/s\n"  # no total: a rate


def test_a_normally_closed_line_bar_prints_one_closing_line_as_before():
    """Leaving `with` or `closed_on_error` without an exception adds no line: one closing line,
    from `close` (the trainer's after its loop), "done" at the total, "stopped" before it (a
    SIGTERM's break)."""
    for n, ended in ((5, "done in 2.0s"), (2, "stopped after 2.0s")):
        stream, clock = io.StringIO(), _Clock()
        bar = _line_bar(stream, clock, total=5, line_seconds=30)
        with progress.closed_on_error(bar):
            clock.now += 2
            bar.update(n)
        assert stream.getvalue() == "" and not bar.closed
        bar.close()
        bar.close()
        rate = "2.50 step/s" if n == 5 else "1.00 step/s"
        assert stream.getvalue() == f"[bert] step {n}/5 ({20 * n}%) | {ended}, {rate}\n"
    stream = io.StringIO()
    with _line_bar(stream, clock, total=2, line_seconds=30) as bar:
        bar.update(2)
    assert stream.getvalue() == "[bert] step 2/2 (100%) | done in 0.0s\n"


def test_on_a_terminal_an_exception_closes_tqdms_bar_so_the_error_starts_a_line(monkeypatch):
    """closed_on_error left tqdm's bar open: the traceback (or a `[checkpoint]` line) that
    followed Ctrl-C, a non-finite loss or a failing eval started on the bar's line, after it.
    Now the bar is closed as tqdm's own `with` closes it: the trainer's (leave) stays drawn
    where it stopped, then a newline; one without leave (the eval bar) is cleared."""
    from tqdm.auto import tqdm
    monkeypatch.setattr(os, "get_terminal_size", lambda fd=None: os.terminal_size((80, 24)))

    def stopped(leave, terminal=None):
        terminal = _Terminal() if terminal is None else terminal
        bar = progress.bar(total=3, desc="train", mininterval=0, leave=leave, file=terminal)
        assert isinstance(bar, tqdm)
        with pytest.raises(KeyboardInterrupt):
            with progress.closed_on_error(bar):
                bar.update(1)
                raise KeyboardInterrupt
        return bar, terminal.getvalue()

    bar, drawn = stopped(leave=True)
    assert bar.disable  # tqdm disables a bar it closes
    assert drawn.endswith("\n") and drawn.count("\n") == 1, repr(drawn)
    last = drawn[:-1].rsplit("\r", 1)[-1]  # the bar as it was left, where it stopped
    assert last.startswith("train:  33%|") and " 1/3 " in last
    bar.close()  # closes once: nothing more is drawn
    assert bar.fp.getvalue() == drawn

    bar, drawn = stopped(leave=False)
    # Cleared (blanks over the bar), the cursor back at the start of the now blank line.
    assert bar.disable and "\n" not in drawn
    assert drawn.endswith("\r") and drawn.split("\r")[-2].strip() == ""

    # The trainer's bar with an eval bar under it, stopped during the eval: the eval bar is
    # cleared, the training bar left, and the error starts on the line under it.
    terminal = _Terminal()
    train = progress.bar(total=10, desc="train", mininterval=0, file=terminal)
    with pytest.raises(KeyboardInterrupt):
        with progress.closed_on_error(train):
            train.update(4)
            evaluation = progress.bar(total=5, desc="eval", mininterval=0, leave=False,
                                      file=terminal)
            with progress.closed_on_error(evaluation):
                evaluation.update(2)
                raise KeyboardInterrupt
    drawn = terminal.getvalue()
    assert train.disable and evaluation.disable and drawn.endswith("\n")
    assert drawn[:-1].rsplit("\r", 1)[-1].startswith("train:  40%|")

    # Without an exception the bar is left open: its owner closes it (the trainer after its
    # final save).
    bar = progress.bar(total=3, desc="train", mininterval=0, file=(terminal := _Terminal()))
    with progress.closed_on_error(bar):
        bar.update(3)
    assert not bar.disable and "\n" not in terminal.getvalue()
    bar.close()
    assert terminal.getvalue().endswith("\n")


def test_in_a_notebook_an_exception_marks_tqdms_widget_as_failed():
    """tqdm.notebook's widget closed after an error showed "success" (green) at its total, and
    one without leave vanished: left shown, and red ("danger"), as tqdm.notebook leaves a bar
    whose own loop raised. (ipywidgets' parts are stand-ins here.)"""
    import types

    from tqdm.notebook import tqdm_notebook

    class Widget(tqdm_notebook):
        @staticmethod
        def status_printer(_, total=None, desc=None, ncols=None):
            def part():
                return types.SimpleNamespace(value=None, bar_style="",
                                             style=types.SimpleNamespace(bar_color=None))
            box = types.SimpleNamespace(children=[part(), part(), part()],
                                        layout=types.SimpleNamespace(visibility="visible"))
            box.close = lambda: setattr(box.layout, "visibility", "hidden")
            return box

    for leave, n in ((True, 3), (False, 3), (False, 1)):
        bar = Widget(total=3, leave=leave, display=False)
        bar.update(n)
        with pytest.raises(FloatingPointError):
            with progress.closed_on_error(bar):
                raise FloatingPointError("nan")
        _, drawn, _ = bar.container.children
        assert bar.disable and drawn.value == n  # closed, where it stopped
        assert drawn.bar_style == "danger" and bar.container.layout.visibility == "visible"
    bar = Widget(total=3, display=False)
    with progress.closed_on_error(bar):
        bar.update(3)
    bar.close()
    assert bar.container.children[1].bar_style == "success"  # no error: as before


def _screen(drawn: str) -> list[str]:
    """The lines a terminal shows after `drawn`: carriage returns, newlines and tqdm's
    cursor-up (ESC [A) applied, each line's trailing blanks dropped."""
    lines, row, column, i = [[]], 0, 0, 0
    while i < len(drawn):
        if drawn.startswith("\x1b[A", i):
            row, i = max(row - 1, 0), i + 3
            continue
        char, i = drawn[i], i + 1
        if char == "\r":
            column = 0
        elif char == "\n":
            row, column = row + 1, 0
            if row == len(lines):
                lines.append([])
        else:
            line = lines[row]
            line.extend(" " * (column - len(line)))
            line[column:column + 1] = [char]
            column += 1
    return ["".join(line).rstrip() for line in lines]


def test_write_puts_a_message_above_tqdms_bar_on_a_line_of_its_own(monkeypatch, capsys):
    """On a terminal stdout and stderr are one screen: a note printed while the trainer's bar
    was drawn (an eval's note, SIGTERM's "saved step N") landed on the end of the bar's line,
    and the bar's next redraw left a copy of it under the note."""
    import sys

    monkeypatch.setattr(os, "get_terminal_size", lambda fd=None: os.terminal_size((80, 24)))
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = progress.bar(total=10, desc="train", unit="step", mininterval=0)
    bar.update(3)
    progress.write("[checkpoint] Note: a note")
    bar.update(1)
    bar.close()
    screen = _screen(terminal.getvalue())
    assert screen[0] == "[checkpoint] Note: a note", screen
    assert screen[1].startswith("train:  40%|") and screen[2:] == [""], screen
    # Where no bar is drawn, a line on stdout as `print`'s.
    monkeypatch.undo()
    progress.write("[eval] Note: x")
    assert capsys.readouterr() == ("[eval] Note: x\n", "")


def test_the_trainers_notes_during_its_loop_start_lines_of_their_own_on_a_terminal(
        tiny_bert_overrides, tmp_path, monkeypatch):
    """The trainer printed its notes during the loop (a best_metric no eval reports, SIGTERM's
    "saved step N") with `print`: on a terminal, after the bar on its line."""
    import sys

    from tl_jax import config as config_lib, train
    from tl_jax.tasks import bert_pretrain

    declared = bert_pretrain.Task.eval_metric_names  # one more: no eval reports it
    monkeypatch.setattr(bert_pretrain.Task, "eval_metric_names",
                        staticmethod(lambda config: declared(config) + ("mlm_acc",)))
    monkeypatch.setattr(train._Preemption, "stop_after",
                        lambda self, step, start_step: step == 1)  # as if SIGTERM came
    bert = os.path.join(os.path.dirname(__file__), "..", "configs", "bert_pretrain.py")
    config = config_lib.load_config(bert + ":tiny", tiny_bert_overrides + [
        "mesh.num_devices=1", "train.steps=3", "train.eval_every=1", "train.progress=True",
        "train.best_metric=eval/mlm_acc", "train.checkpoint_every=100"])
    monkeypatch.setattr(os, "get_terminal_size", lambda fd=None: os.terminal_size((80, 24)))
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(sys, "stderr", terminal)
    assert train.train_and_evaluate(config, str(tmp_path)).stopped
    monkeypatch.undo()
    screen = _screen(terminal.getvalue())
    assert any(line.startswith("[checkpoint] Note: train.best_metric='eval/mlm_acc' is not "
                               "among the eval metrics") for line in screen), screen
    assert "[checkpoint] SIGTERM: saved step 1; exiting." in screen, screen
    assert any(line.startswith("[eval] step 1: eval/mlm_accuracy=") for line in screen), screen
    # The bar, left at step 1 under them, and the summary.
    bars = [line for line in screen if line.startswith("bert_pretrain: ")]
    assert bars and " 1/3 " in bars[-1] and screen.index(bars[-1]) > screen.index(
        "[checkpoint] SIGTERM: saved step 1; exiting."), screen
    assert screen[-2].startswith("stopped: 1 of 3 steps (SIGTERM) | held-out mlm_accuracy "), screen


def test_a_training_run_stopped_by_a_non_finite_loss_logs_the_step_it_reached(
        tiny_bert_overrides, tmp_path, monkeypatch, capsys):
    """The trainer's bar off a terminal (captured stderr): a run stopped by
    train.on_nonfinite=stop ends its progress lines with the step it reached, not with a
    line up to 30 s old (or none, in a run shorter than that)."""
    from conftest import nan_loss_at_batch
    from tl_jax import config as config_lib, train

    nan_loss_at_batch(monkeypatch, 3)  # step 3's loss is NaN
    bert = os.path.join(os.path.dirname(__file__), "..", "configs", "bert_pretrain.py")
    config = config_lib.load_config(bert + ":tiny", tiny_bert_overrides + [
        "mesh.num_devices=1", "train.steps=6", "train.log_every=1", "train.eval_every=0",
        "train.checkpoint_every=100", "train.progress=True"])
    with pytest.raises(train.NonFiniteError, match="at step 3"):
        train.train_and_evaluate(config, str(tmp_path))
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("[bert_pretrain]")]
    # Step 3 (counted before its metrics are logged) is the one whose loss stopped the run.
    assert lines and lines[-1].startswith("[bert_pretrain] step 3/6 (50%) ")
    assert " | stopped by NonFiniteError after " in lines[-1]
    assert not any("done in" in x for x in lines)


def test_an_eval_pass_stopped_in_a_step_logs_the_batch_it_reached_and_why(monkeypatch, capsys):
    """The eval/predict bar iterated the batches itself: Ctrl-C (or an error) in a step freed it
    first, and its last line said only 'stopped after', without what stopped it."""
    import types

    from tl_jax import train

    monkeypatch.setenv("TL_JAX_PROGRESS_SECONDS", "3600")  # only the closing line
    monkeypatch.setattr(train.parallel, "host_batch_to_global", lambda batch, mesh: batch)
    steps = []

    def eval_step(params, batch):
        steps.append(batch)
        if len(steps) == 3:
            raise KeyboardInterrupt
        return {"loss": 1.0}

    trainer = types.SimpleNamespace(
        task=types.SimpleNamespace(eval_batches=lambda: [{"x": i} for i in range(5)]),
        mesh=None, eval_step=eval_step, eval_predict_step=None, predict_step=None)
    with pytest.raises(KeyboardInterrupt):
        train.eval_pass(trainer, None, 0, progress=True, desc="predict")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("[predict] batch 2/5 "), lines
    assert " | stopped by KeyboardInterrupt after " in lines[0], lines
    # A whole pass still ends with one closing line, at its total.
    steps.clear()
    trainer.eval_step = lambda params, batch: {"loss": 1.0}
    results, _ = train.eval_pass(trainer, None, 0, progress=True, desc="predict")
    lines = capsys.readouterr().err.splitlines()
    assert len(results) == 5 and len(lines) == 1, lines
    assert lines[0].startswith("[predict] batch 5/5 (100%) | done in "), lines

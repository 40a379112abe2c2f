"""tl_jax's progress output: bars drawn on a terminal whatever size it reports."""
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

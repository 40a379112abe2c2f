"""Static checks of the repository's own Python: names used but never defined.

A test that refers to a module it no longer imports fails only when that test runs (two tests of
test_checkpoint.py once did, after a refactor moved the import's other user away). pyflakes finds
such names in every file without running anything.
"""
import pathlib

import pytest
from pyflakes import api as pyflakes_api
from pyflakes import messages as pyflakes_messages
from pyflakes import reporter as pyflakes_reporter

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHECKED = ("tl_jax", "tests", "benchmarks", "configs")

# Messages that mean the code would fail when the line runs (not style: unused imports and
# variables are left to the author).
FATAL = (
    pyflakes_messages.UndefinedName,
    pyflakes_messages.UndefinedLocal,
    pyflakes_messages.UndefinedExport,
)


class _Collect(pyflakes_reporter.Reporter):
    def __init__(self):
        self.problems = []

    def unexpectedError(self, filename, msg):
        self.problems.append(f"{filename}: {msg}")

    def syntaxError(self, filename, msg, lineno, offset, text):
        self.problems.append(f"{filename}:{lineno}: syntax error: {msg}")

    def flake(self, message):
        if isinstance(message, FATAL):
            self.problems.append(str(message))


def _python_files():
    for top in CHECKED:
        yield from sorted((ROOT / top).rglob("*.py"))


def test_the_checker_sees_an_undefined_name(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    return bert_pretrain.Task\n")
    collect = _Collect()
    pyflakes_api.checkPath(str(bad), collect)
    assert len(collect.problems) == 1 and "undefined name 'bert_pretrain'" in collect.problems[0]


@pytest.mark.parametrize("top", CHECKED)
def test_no_name_is_used_that_is_never_defined(top):
    files = [p for p in _python_files() if p.relative_to(ROOT).parts[0] == top]
    assert files, f"no Python files under {top}/"
    collect = _Collect()
    for path in files:
        pyflakes_api.checkPath(str(path), collect)
    assert not collect.problems, "\n".join(collect.problems)

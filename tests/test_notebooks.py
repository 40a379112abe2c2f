"""Every notebook in colab/ executes top to bottom (shortened through environment variables)."""
import os
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "colab").glob("*.ipynb"))

# Environment each notebook reads to shrink its run for the tests.
SHRINK = {
    "quickstart.ipynb": {"TL_JAX_NOTEBOOK_STEPS": "3"},
    "gpt_austen.ipynb": {"TL_JAX_NOTEBOOK_STEPS": "8"},
    "finetune.ipynb": {"TL_JAX_NOTEBOOK_EXAMPLES": "64"},
}


def test_there_are_notebooks():
    assert "quickstart.ipynb" in [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path, tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("TL_JAX_NOTEBOOK_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("TL_JAX_DATA_DIR", str(data_dir))
    monkeypatch.setenv("XLA_FLAGS", "")  # a notebook runs on the real device count
    for key, value in SHRINK.get(path.name, {}).items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors

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


def test_finetune_notebook_builds_its_task_without_the_data_dir(tmp_path, monkeypatch):
    """On a fresh Colab (no TL_JAX_DATA_DIR) the notebook's config falls back to the gensim
    newsgroups and a model from scratch; its settings must fit that data (its positive label)."""
    from tl_jax.tasks import build_task
    monkeypatch.delenv("TL_JAX_DATA_DIR", raising=False)
    monkeypatch.setenv("TL_JAX_NOTEBOOK_EXAMPLES", "64")
    monkeypatch.chdir(ROOT)
    nb = nbformat.read(ROOT / "colab" / "finetune.ipynb", as_version=4)
    namespace = {}
    for cell in nb.cells:
        if cell.cell_type == "code":
            if "train_and_evaluate" in cell.source:
                break
            exec(cell.source, namespace)
    config = namespace["config"]
    assert config.data.train_file == "gensim:newsgroups:train" and not config.init_from
    build_task(config, str(tmp_path / "work"))


def test_transfer_strategies_notebook_fetches_minilm_from_the_hub_without_the_data_dir(
        data_dir, monkeypatch):
    """On a fresh Colab (no TL_JAX_DATA_DIR) the notebook downloads MiniLM from the Hugging Face
    Hub (it raised a bare KeyError). No network here: the download is a stand-in that returns
    the shared copy and records what was asked for."""
    import sys
    import types

    asked = []

    def snapshot_download(repo_id, allow_patterns=None):
        asked.append((repo_id, allow_patterns))
        return str(data_dir / "models" / "all-MiniLM-L6-v2")

    monkeypatch.setitem(sys.modules, "huggingface_hub",
                        types.SimpleNamespace(snapshot_download=snapshot_download))
    monkeypatch.delenv("TL_JAX_DATA_DIR", raising=False)
    nb = nbformat.read(ROOT / "colab" / "transfer_strategies.ipynb", as_version=4)
    code = [cell.source for cell in nb.cells if cell.cell_type == "code"]
    namespace = {}
    for source in code[:2]:  # imports and the model's path; then the model import itself
        exec(source, namespace)
    assert asked and asked[0][0] == "sentence-transformers/all-MiniLM-L6-v2"
    # Every file the import reads is among those fetched.
    assert {"config.json", "model.safetensors"} <= set(asked[0][1])
    assert namespace["transfer"].count_params(namespace["params"]) > 22_000_000

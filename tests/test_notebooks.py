"""Every notebook in colab/ executes top to bottom (shortened through environment variables)."""
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "colab").glob("*.ipynb"))

# Environment each notebook reads to shrink its run for the tests. quickstart.ipynb evaluates
# and checkpoints every STEPS // 3 steps (at least every step): one step is one train step,
# one eval and one checkpoint, which is all the cells after it need.
SHRINK = {
    "quickstart.ipynb": {"TL_JAX_NOTEBOOK_STEPS": "1"},
    "gpt_austen.ipynb": {"TL_JAX_NOTEBOOK_STEPS": "8"},
    "finetune.ipynb": {"TL_JAX_NOTEBOOK_EXAMPLES": "64"},
    "word_vectors.ipynb": {"TL_JAX_NOTEBOOK_EPOCHS": "1", "TL_JAX_NOTEBOOK_SENTENCES": "2000"},
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


def test_the_notebooks_default_workdirs_are_ignored_by_git():
    """Jupyter runs a notebook in its own folder, so its default WORKDIR (workdirs/...) lands in
    colab/workdirs/, which .gitignore did not cover (only /workdirs/): hundreds of MB of
    checkpoints showed as untracked files, for a `git add -A` to commit."""
    import re
    import subprocess

    workdirs = {}
    for path in NOTEBOOKS:
        source = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells
                           if c.cell_type == "code")
        workdirs.update({path.name: w for w in
                         re.findall(r'TL_JAX_NOTEBOOK_WORKDIR", "([^"]+)"', source)})
    # The training notebooks name one (transfer_strategies.ipynb trains nothing to keep).
    assert len(workdirs) >= 4, workdirs
    for name, workdir in workdirs.items():
        checkpoint = f"colab/{workdir}/checkpoints/1/state"
        ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", checkpoint],
                                 cwd=ROOT)
        assert ignored.returncode == 0, f"{name}: {checkpoint} is not ignored by .gitignore"


def fake_hub(monkeypatch, data_dir) -> list:
    """No network here: `huggingface_hub.snapshot_download` becomes a stand-in that returns the
    shared copy of MiniLM and records what was asked for."""
    import sys
    import types

    asked = []

    def snapshot_download(repo_id, allow_patterns=None):
        asked.append((repo_id, allow_patterns))
        return str(data_dir / "models" / "all-MiniLM-L6-v2")

    monkeypatch.setitem(sys.modules, "huggingface_hub",
                        types.SimpleNamespace(snapshot_download=snapshot_download))
    return asked


def is_install_cell(source: str) -> bool:
    return "pip install" in source


def cells_before_training(name: str, skip_install: bool = False) -> dict:
    """Runs a notebook's code cells up to the one that trains (all of them if none trains),
    without the install cell if `skip_install`; returns their namespace."""
    nb = nbformat.read(ROOT / "colab" / name, as_version=4)
    namespace = {}
    for cell in nb.cells:
        if cell.cell_type == "code":
            if "train_and_evaluate" in cell.source or "static_train.run(" in cell.source:
                break
            if not (skip_install and is_install_cell(cell.source)):
                exec(cell.source, namespace)
    return namespace


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_without_its_install_cell(path, tmp_path, data_dir, monkeypatch):
    """Where tl_jax is installed already, a user skips the install cell. It also held the imports
    (`NameError: name 'os' is not defined` in the next cell); now it holds only the commented pip
    lines, each of which runs once its `# ` is removed."""
    monkeypatch.setenv("TL_JAX_NOTEBOOK_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("TL_JAX_DATA_DIR", str(data_dir))
    monkeypatch.chdir(tmp_path)
    assert "jax" in cells_before_training(path.name, skip_install=True)
    nb = nbformat.read(path, as_version=4)
    install = [c.source for c in nb.cells if c.cell_type == "code" and is_install_cell(c.source)]
    assert len(install) == 1, "one install cell per notebook"
    lines = [line for line in install[0].splitlines() if line.strip()]
    assert all(line.startswith("#") for line in lines), "the install cell runs nothing by itself"
    assert [line for line in lines if line.startswith("# !pip install ")]


@pytest.mark.parametrize("name", ["quickstart.ipynb", "gpt_austen.ipynb", "finetune.ipynb"])
def test_a_notebooks_training_cell_shows_its_progress(name, tmp_path, data_dir, monkeypatch):
    """finetune.ipynb set train.progress=False: its training cell (minutes on a CPU runtime)
    printed nothing between the data notes and the final line, no bar and no eval line."""
    monkeypatch.setenv("TL_JAX_NOTEBOOK_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("TL_JAX_DATA_DIR", str(data_dir))
    monkeypatch.chdir(tmp_path)
    assert cells_before_training(name)["config"].train.progress


def test_finetune_notebook_builds_its_task_without_the_data_dir(tmp_path, data_dir, monkeypatch):
    """On a fresh Colab (no TL_JAX_DATA_DIR) the notebook fine-tunes MiniLM from the Hugging Face
    Hub on the gensim newsgroups (it trained a model from scratch, to chance accuracy); its
    settings must fit that data (its positive label)."""
    from tl_jax.tasks import build_task
    asked = fake_hub(monkeypatch, data_dir)
    monkeypatch.delenv("TL_JAX_DATA_DIR", raising=False)
    monkeypatch.setenv("TL_JAX_NOTEBOOK_EXAMPLES", "64")
    monkeypatch.chdir(tmp_path)  # as on Colab: not in the repository
    config = cells_before_training("finetune.ipynb")["config"]
    assert asked and asked[0][0] == "sentence-transformers/all-MiniLM-L6-v2"
    assert config.data.train_file == "gensim:newsgroups:train"
    assert config.init_from == str(data_dir / "models" / "all-MiniLM-L6-v2")
    task = build_task(config, str(tmp_path / "work"))
    assert task.labels == ["alt.atheism", "sci.space"]
    assert task.encoder.tokenizer.vocab_size == 30522  # MiniLM's vocabulary, not one trained here


def test_gpt_notebook_trains_on_gensim_text_without_the_data_dir(tmp_path, monkeypatch):
    """Without TL_JAX_DATA_DIR (a fresh Colab) the GPT notebook trains on the Wikipedia text that
    ships with gensim (it failed: "Corpus file not found: $TL_JAX_DATA_DIR/austen.jsonl")."""
    from tl_jax.tasks import build_task
    monkeypatch.delenv("TL_JAX_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    config = cells_before_training("gpt_austen.ipynb")["config"]
    assert config.data.corpus == "gensim:enwiki"
    task = build_task(config, str(tmp_path / "work"))
    assert task.tokenizer.vocab_size == 2048


def test_transfer_strategies_notebook_fetches_minilm_from_the_hub_without_the_data_dir(
        data_dir, monkeypatch):
    """On a fresh Colab (no TL_JAX_DATA_DIR) the notebook downloads MiniLM from the Hugging Face
    Hub (it raised a bare KeyError). No network here: the download is a stand-in that returns
    the shared copy and records what was asked for."""
    asked = fake_hub(monkeypatch, data_dir)
    monkeypatch.delenv("TL_JAX_DATA_DIR", raising=False)
    nb = nbformat.read(ROOT / "colab" / "transfer_strategies.ipynb", as_version=4)
    code = [cell.source for cell in nb.cells if cell.cell_type == "code"]
    namespace = {}
    for source in code[:3]:  # install (comments), imports and the model's path, the model import
        exec(source, namespace)
    assert asked and asked[0][0] == "sentence-transformers/all-MiniLM-L6-v2"
    # Every file the import reads is among those fetched.
    assert {"config.json", "model.safetensors"} <= set(asked[0][1])
    assert namespace["transfer"].count_params(namespace["params"]) > 22_000_000


def test_word_vectors_notebook_trains_and_scores_on_gensim_files_without_the_data_dir(
        tmp_path, monkeypatch):
    """On a fresh Colab (no TL_JAX_DATA_DIR) the static-vectors notebook trains on the text
    gensim ships and scores both vector sets on gensim's copies of the three benchmarks (the
    runs would otherwise stop: their eval_dir, `$TL_JAX_DATA_DIR`, would name no folder)."""
    import json

    work = tmp_path / "work"
    monkeypatch.delenv("TL_JAX_DATA_DIR", raising=False)
    monkeypatch.setenv("TL_JAX_NOTEBOOK_WORKDIR", str(work))
    monkeypatch.setenv("XLA_FLAGS", "")
    for key, value in SHRINK["word_vectors.ipynb"].items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(ROOT / "colab" / "word_vectors.ipynb", as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                      for o in c.get("outputs", []))
    assert "corpus gensim:enwiki,gensim:lee" in outputs
    assert sorted(p.name for p in (work / "gensim_eval" / "eval").iterdir()) == [
        "questions-words.txt", "simlex999.txt", "wordsim353.tsv"]
    for method in ("word2vec", "glove"):
        scores = json.loads((work / method / "scores.json").read_text())
        assert scores["wordsim353_pairs"] > 0 and scores["simlex999_pairs"] > 0, method
        assert scores["analogy_questions"] > 0, method
    assert "real GloVe" not in outputs  # only with the data folder's file

"""Paths in config values: `~` and `$VAR` expanded wherever a config names a file or folder."""
import os

from tl_jax import config as config_lib
from tl_jax import paths
from tl_jax.data import readers
from tl_jax.tasks import downstream


def test_expand_takes_home_and_variables_and_leaves_unset_ones(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TL_X", "/data")
    monkeypatch.delenv("TL_UNSET", raising=False)
    assert paths.expand("~/runs/a") == f"{tmp_path}/runs/a"
    assert paths.expand("$TL_X/models") == "/data/models"
    assert paths.expand("$TL_UNSET/x") == "$TL_UNSET/x"  # the "not found" error shows it
    assert paths.expand("") == "" and paths.expand(None) == ""
    assert paths.expand("runs/~a") == "runs/~a"


def test_config_values_starting_with_tilde_are_in_the_home_folder(monkeypatch, tmp_path):
    # The shell leaves '~' after '--config.init_from=' alone: it was "does not exist".
    monkeypatch.setenv("HOME", str(tmp_path))
    minilm = os.path.join(os.environ["TL_JAX_DATA_DIR"], "models", "all-MiniLM-L6-v2")
    os.symlink(minilm, tmp_path / "minilm")
    (tmp_path / "train.conll").write_text("a B-PER\nb O\n\n" * 3)
    assert len(readers.read_records("~/train.conll", "tagging")) == 3
    config = config_lib.load_config("configs/finetune_classify.py:tiny", ["init_from=~/minilm"])
    encoder = downstream.Encoder.from_config(config, ["a text"])
    assert encoder.model_config.num_layers == 6  # MiniLM's, read from ~/minilm

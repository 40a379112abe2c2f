"""Every config in configs/ runs a couple of steps at its smallest size, through the real entry
point its docstring names (`tl_jax train` or `tl_jax static`)."""
import pathlib

import pytest

from tl_jax import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.py"))

# Fields set when present: two steps, with an eval and a checkpoint at the end. The pretraining
# configs' :tiny read 200 documents (~480k words of gensim's Wikipedia and Lee text), built into
# segments and a 2,000-entry WordPiece for 20 steps; two steps and one eval batch use a few
# dozen segments, which 40 documents give many times over (the vocabulary stays 2,000).
SHORT = {
    "train.steps": 2, "train.log_every": 1, "train.eval_every": 2, "train.checkpoint_every": 2,
    "train.eval_batches": 1, "train.progress": False, "data.max_documents": 40,
}


def has(config, dotted):
    node = config
    for part in dotted.split("."):
        if not hasattr(node, "keys") or part not in node:
            return False
        node = node[part]
    return True


def test_every_config_documents_its_command():
    for path in CONFIGS:
        text = path.read_text()
        doc = text.split('"""')[1] if text.startswith('"""') else ""
        assert "tl_jax " in doc and f"configs/{path.name}" in doc, path.name


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_transfer_settings_of_every_config_are_valid(path):
    # configs/gpt_finetune_classify.py combined STLR with 20 optimizer warm-up steps it ignored.
    from tl_jax.optim import transfer

    for arg in ("", ":tiny"):
        config = config_lib.load_config(f"{path}{arg}")
        if has(config, "transfer"):
            transfer.check_config(config.transfer, config.optimizer)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_smoke_run(path, tmp_path, data_dir):
    config = config_lib.load_config(f"{path}:tiny")
    overrides = [f"{k}={v}" for k, v in SHORT.items() if has(config, k)]
    config = config_lib.load_config(f"{path}:tiny", overrides)
    if has(config, "task") and config.task == "distill":  # a teacher: two steps of BERT tiny
        from tl_jax import train
        bert = config_lib.load_config(f"{ROOT / 'configs' / 'bert_pretrain.py'}:tiny",
                                      [f"{k}={v}" for k, v in SHORT.items()])
        train.train_and_evaluate(bert, str(tmp_path / "teacher"))
        config.init_from = str(tmp_path / "teacher")
    if has(config, "task"):
        from tl_jax import train
        result = train.train_and_evaluate(config, str(tmp_path))
        assert result.summary["step"] == config.train.steps
        assert (tmp_path / "metrics.jsonl").exists()
    else:
        from tl_jax import static_train
        summary = static_train.run(config, str(tmp_path))
        assert summary


@pytest.mark.parametrize("name", ["finetune_classify", "finetune_tag", "finetune_squad",
                                  "transfer_full"])
def test_minilm_without_the_data_dir_is_an_error_not_a_model_from_scratch(name, tmp_path,
                                                                          monkeypatch, capsys):
    # `:minilm` names the all-MiniLM-L6-v2 in $TL_JAX_DATA_DIR; without the variable it must not
    # quietly become a 2-layer model from scratch.
    monkeypatch.delenv("TL_JAX_DATA_DIR", raising=False)
    for arg in ("minilm", "scratch"):
        config = config_lib.load_config(f"{ROOT / 'configs' / name}.py:{arg}")
        source = config.init_from if arg == "minilm" else config.model.size
        assert "$TL_JAX_DATA_DIR" in source, (arg, source)
    if name == "finetune_classify":  # its data falls back to gensim's: the run reaches init_from
        from tl_jax import main
        with pytest.raises(SystemExit) as e:
            main.main(["train", f"--config={ROOT / 'configs' / name}.py:minilm",
                       f"--workdir={tmp_path}"])
        assert "$TL_JAX_DATA_DIR/models/all-MiniLM-L6-v2" in str(e.value.code)

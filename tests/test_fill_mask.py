"""tl_jax/fill_mask.py: a BERT pretraining workdir, and clear refusals of what has no MLM head.

Distillation and ELECTRA workdirs are read in tests/test_distill.py and tests/test_electra.py,
by the runs those files train anyway.
"""
import json
import pathlib

import jax
import numpy as np
import pytest

from tl_jax import config as config_lib
from tl_jax import fill_mask, main, train

ROOT = pathlib.Path(__file__).resolve().parent.parent
BERT = str(ROOT / "configs" / "bert_pretrain.py") + ":tiny"


@pytest.fixture(scope="module")
def pretrained(tiny_bert_overrides, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bert")
    config = config_lib.load_config(BERT, tiny_bert_overrides + [
        "train.steps=2", "train.eval_every=0", "train.checkpoint_every=2", "mesh.num_devices=1"])
    return train.train_and_evaluate(config, str(workdir)), str(workdir)


def test_a_bert_pretraining_workdir_fills_masks_with_its_mlm_head(pretrained):
    result, workdir = pretrained
    model = fill_mask.FillMask.from_workdir(workdir)
    assert model.model_config == result.trainer.task.model_config
    assert model.description.startswith(f"BERT of {workdir} (step 2; 2 layers, 128 wide)")
    tok = model.tokenizer
    ids = np.asarray([[tok.cls_id] + tok.encode("the city") + [tok.mask_id, tok.sep_id]], np.int32)
    positions = np.asarray([[ids.shape[1] - 2]], np.int32)
    got = np.asarray(model._apply(model.params, ids, np.zeros_like(ids), np.ones_like(ids),
                                  positions))
    want = result.trainer.task.model.apply(
        {"params": jax.device_get(result.state["params"])}, ids, np.zeros_like(ids),
        np.ones_like(ids), masked_positions=positions)[0]["mlm_logits"]
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-5, atol=1e-5)
    top = model.predict("the [MASK] is [MASK].", top_k=2)
    assert len(top) == 2 and all(len(t) == 2 for t in top)
    assert not set(sum(top, [])) & {"[CLS]", "[SEP]", "[MASK]", "[PAD]"}
    assert model.predict("no mask here") == []


def fake_workdir(path, task, **config):
    """A workdir as `tl_jax train` leaves it, as far as fill_mask looks before refusing it: the
    task in config.json. (Training a classifier, a GPT and a biLM would only add minutes.)"""
    (path / "checkpoints").mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(dict(config, task=task)))
    return str(path)


@pytest.mark.parametrize("task, expected", [
    ("classify", "is a fine-tuned classify model: fine-tuning keeps the encoder and drops the MLM "
                 "head (its encoder came from init_from=runs/bert_mini)"),
    ("tag", "is a fine-tuned tag model"),
    ("squad", "is a fine-tuned squad model"),
    ("clm", "is a GPT causal language model (task clm): it predicts the next token, not a "
            "masked one; use `tl_jax generate --model="),
    ("lm_classify", "is a fine-tuned GPT classifier"),
    ("bilm", "is an ELMo-style biLM"),
    ("something_new", "is a something_new workdir"),
])
def test_workdirs_without_a_masked_lm_are_refused_in_one_line(task, expected, tmp_path,
                                                             monkeypatch):
    workdir = fake_workdir(tmp_path / "w", task, init_from="runs/bert_mini")
    with pytest.raises(fill_mask.FillMaskError) as e:
        fill_mask.FillMask.from_workdir(workdir)
    assert str(e.value).startswith(f"fill_mask: {workdir} {expected}"), str(e.value)
    assert "\n" not in str(e.value)
    monkeypatch.delenv("TL_JAX_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as e:  # the command line prints it, without a traceback
        main.main(["fill_mask", f"--model={workdir}", "--text=a [MASK]"])
    assert str(e.value.code).startswith(f"tl_jax: error: fill_mask: {workdir} {expected}")


def test_other_directories_are_refused_in_one_line(tmp_path, pretrained):
    static = tmp_path / "static"
    static.mkdir()
    (static / "static_config.json").write_text("{}")
    (static / "vocab.txt").write_text("the\n")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    for path, expected in ((static, "holds static word vectors"),
                           (tmp_path / "missing", "does not exist"),
                           (hf, "is not a `tl_jax train` workdir")):
        with pytest.raises(fill_mask.FillMaskError, match=f"fill_mask: {path} {expected}"):
            fill_mask.FillMask.from_workdir(str(path))
    with pytest.raises(fill_mask.FillMaskError, match="has no \\[MASK\\] to fill"):
        fill_mask.run(pretrained[1], ["no mask"])

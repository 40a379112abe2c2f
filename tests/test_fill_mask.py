"""tl_jax/fill_mask.py: a BERT pretraining workdir, Hugging Face BERT and ELECTRA (generator)
directories checked against transformers, and clear refusals of what has no MLM head.

Distillation and ELECTRA workdirs are read in tests/test_distill.py and tests/test_electra.py,
by the runs those files train anyway.
"""
import json
import pathlib
import re

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


def assert_logits_are_the_runs(model, result):
    """fill_mask's MLM logits at a [MASK] equal those of the trained run's own model."""
    tok = model.tokenizer
    ids = np.asarray([[tok.cls_id] + tok.encode("the city") + [tok.mask_id, tok.sep_id]], np.int32)
    positions = np.asarray([[ids.shape[1] - 2]], np.int32)
    got = np.asarray(model._apply(model.params, ids, np.zeros_like(ids), np.ones_like(ids),
                                  positions))
    want = result.trainer.task.model.apply(
        {"params": jax.device_get(result.state["params"])}, ids, np.zeros_like(ids),
        np.ones_like(ids), masked_positions=positions)[0]["mlm_logits"]
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-5, atol=1e-5)


def test_a_bert_pretraining_workdir_fills_masks_with_its_mlm_head(pretrained):
    result, workdir = pretrained
    model = fill_mask.FillMask.from_workdir(workdir)
    assert model.model_config == result.trainer.task.model_config
    assert model.description.startswith(f"BERT of {workdir} (step 2; 2 layers, 128 wide)")
    assert_logits_are_the_runs(model, result)
    top = model.predict("the [MASK] is [MASK].", top_k=2)
    assert len(top) == 2 and all(len(t) == 2 for t in top)
    assert not set(sum(top, [])) & {"[CLS]", "[SEP]", "[MASK]", "[PAD]"}
    assert model.predict("no mask here") == []


def test_only_mask_is_special_in_the_text_as_in_the_pretraining_data(pretrained):
    # "[SEP]" or "[CLS]" written in the text went in as the special tokens, which the model
    # never saw inside a segment; pretraining tokenises such text as plain words.
    _, workdir = pretrained
    model = fill_mask.FillMask.from_workdir(workdir)
    tok, fed = model.tokenizer, []
    apply = model._apply
    model._apply = lambda params, ids, *rest: fed.append(np.asarray(ids)) or apply(params, ids,
                                                                                 *rest)
    text = "the [SEP] city [CLS] is [MASK] [PAD]."
    top = model.predict(text, top_k=2)
    assert len(top) == 1  # one [MASK]: the others are not masks either
    ids = fed[0][0].tolist()
    # As the pretraining data encodes the same words (data/pretraining.py).
    before, after = tok.encode_batch(["the [SEP] city [CLS] is ", " [PAD]."],
                                     special_tokens_as_text=True)
    assert ids == [tok.cls_id] + before + [tok.mask_id] + after + [tok.sep_id]
    assert ids.count(tok.sep_id) == 1 and ids.count(tok.cls_id) == 1
    assert tok.pad_id not in ids


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
    text = tmp_path / "text.txt"  # was said not to exist
    text.write_text("the [MASK] is\n")
    above = tmp_path / "quickstart"  # a folder holding workdirs, as `tl_jax quickstart` makes
    for name in ("pretrain", "finetune"):
        (above / name / ("checkpoints" if name == "pretrain" else "scratch")).mkdir(parents=True)
    for path, expected in ((static, "holds static word vectors"),
                           (tmp_path / "missing", "does not exist"),
                           (text, "is a file, not a workdir or model directory"),
                           (hf, r"is not a `tl_jax train` workdir \(it needs checkpoints/ and "
                                r"config.json\)$"),
                           (above, r"is not a `tl_jax train` workdir .*; the workdirs in it: "
                                   r"pretrain$")):
        with pytest.raises(fill_mask.FillMaskError, match=f"fill_mask: {path} {expected}"):
            fill_mask.FillMask.from_workdir(str(path))
    with pytest.raises(fill_mask.FillMaskError, match="has no \\[MASK\\] to fill"):
        fill_mask.run(pretrained[1], ["no mask"])


def test_top_k_below_one_is_refused_and_above_the_vocabulary_gives_real_tokens(pretrained):
    # top_k=-3 used to print every token but three (an argsort sliced [:-3]); top_k=0 printed an
    # empty line; a top_k past the vocabulary listed the special tokens, decoded as "".
    workdir = pretrained[1]
    for top_k in (0, -3):
        with pytest.raises(fill_mask.FillMaskError, match=f"--top_k={top_k}: expected >= 1"):
            fill_mask.run(workdir, ["the [MASK] is"], top_k)
    model = fill_mask.FillMask.from_workdir(workdir)
    with pytest.raises(fill_mask.FillMaskError, match="top_k=0: expected >= 1"):
        model.predict("the [MASK] is", top_k=0)
    (tokens,) = model.predict("the [MASK] is", top_k=10 ** 6)
    tok = model.tokenizer
    assert len(tokens) == tok.vocab_size - len(tok.special_ids)
    assert "" not in tokens


def test_predict_refuses_a_list_and_a_mask_in_lower_case(pretrained):
    """A list of texts failed with "'list' object has no attribute 'split'"; "[mask]" (as an
    uncased model might suggest) was read as plain text, so predict returned [] without a word."""
    model = fill_mask.FillMask.from_workdir(pretrained[1])
    with pytest.raises(fill_mask.FillMaskError,
                       match=r"predict takes one text \(a str\), not a list; call it once per"):
        model.predict(["the [MASK] is", "a [MASK]"])
    for text, odd in (("the city is [mask].", "mask"), ("the [MASK] is [Mask].", "Mask")):
        with pytest.raises(fill_mask.FillMaskError,
                           match=rf"writes the mask as \[{odd}\]; the mask token is \[MASK\], "
                                 "in capitals"):
            model.predict(text)
    assert len(model.predict("the [MASK] is [MASK].")) == 2


def test_an_over_long_prompt_is_named_in_one_line(pretrained):
    model = fill_mask.FillMask.from_workdir(pretrained[1])
    text = "the city " * 40 + "[MASK]"
    with pytest.raises(fill_mask.FillMaskError,
                       match=r"fill_mask: --text='the city the city .*' is \d+ tokens with "
                             r"\[CLS\] and \[SEP\]; the model has 64 positions"):
        model.predict(text)


def test_rows_past_the_tokenizer_of_a_padded_vocabulary_are_never_predicted(pretrained):
    # model.vocab_size may exceed the tokenizer's (e.g. padded to a multiple of 128); those
    # rows are no token at all and decoded as "".
    import flax.linen as nn

    from tl_jax.models import bert

    tok = fill_mask.FillMask.from_workdir(pretrained[1]).tokenizer
    config = bert.BertConfig(vocab_size=tok.vocab_size + 8, hidden_size=16, num_layers=1,
                             num_heads=2, intermediate_size=32, max_position_embeddings=64)
    ids = np.zeros((1, 8), np.int32)
    params = nn.unbox(bert.BertForPreTraining(config).init(
        jax.random.PRNGKey(0), ids, masked_positions=np.zeros((1, 1), np.int32))["params"])
    params = jax.tree_util.tree_map(np.array, params)
    params["mlm_head"]["output_bias"][tok.vocab_size:] = 100.0
    model = fill_mask.FillMask(config, params, tok)
    (tokens,) = model.predict("the [MASK] is", top_k=3)
    assert len(tokens) == 3 and "" not in tokens


def test_a_broken_config_json_is_named_with_its_line(tmp_path, monkeypatch):
    """A workdir's config.json, or a HF directory's, that is not a JSON object: one line naming
    the file (and the line), never a JSON traceback."""
    workdir = tmp_path / "w"
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "config.json").write_text('{"task": "bert_pretrain",\n "model": {')
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "bert",\n')
    listed = tmp_path / "listed"
    (listed / "checkpoints").mkdir(parents=True)
    (listed / "config.json").write_text('["bert_pretrain"]')
    monkeypatch.delenv("TL_JAX_TRACEBACK", raising=False)
    for path, expected in (
            (workdir, f"{workdir}/config.json:2: invalid JSON \\(.*\\); it is the run's config"),
            (hf, f"{hf}/config.json:2: invalid JSON \\(.*\\); read as a Hugging Face model's "
                 f"config, since {hf} has no checkpoints/"),
            (listed, f"{listed}/config.json holds a JSON list, not the run's config")):
        with pytest.raises(fill_mask.FillMaskError, match=f"^fill_mask: {expected}"):
            fill_mask.FillMask.load(str(path))
        with pytest.raises(SystemExit) as e:
            main.main(["fill_mask", f"--model={path}", "--text=a [MASK]"])
        assert re.match(f"tl_jax: error: fill_mask: {expected}", str(e.value.code))
        assert "Traceback" not in str(e.value.code)


def _hf_bert(path, masked_lm: bool):
    """A random 2-layer HF BERT (with or without its MLM head) and a small WordPiece vocab."""
    import torch
    import transformers

    words = "the a city river town is was big old new in on of and".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    hf_config = transformers.BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    cls = transformers.BertForMaskedLM if masked_lm else transformers.BertModel
    model = cls(hf_config).eval()
    model.save_pretrained(path)
    (pathlib.Path(path) / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return model


def test_a_hugging_face_bert_with_its_mlm_head_fills_masks(tmp_path, capsys):
    import torch

    from tl_jax.interop import convert

    hf = _hf_bert(tmp_path / "hf", masked_lm=True)
    model = fill_mask.FillMask.load(str(tmp_path / "hf"))
    assert model.description.startswith(f"the Hugging Face BERT in {tmp_path / 'hf'}")
    text = "the old [MASK] is big"
    tok = model.tokenizer
    ids = [tok.cls_id] + tok.encode("the old") + [tok.mask_id] + tok.encode("is big") + [tok.sep_id]
    with torch.no_grad():
        logits = hf(torch.tensor([ids])).logits[0, ids.index(tok.mask_id)].numpy()
    logits[list(tok.special_ids)] = -np.inf
    want = [tok.decode([int(i)]) for i in np.argsort(-logits)[:3]]
    assert model.predict(text, top_k=3) == [want]
    # The same model as a tl_jax weights directory (`tl_jax convert`) predicts the same.
    # The HF model has an MLM head but no NSP head and no pooler: convert says so.
    with pytest.warns(UserWarning) as said:
        convert.convert(tmp_path / "hf", tmp_path / "tl", "hf_to_tl")
    said = [str(w.message) for w in said]
    assert any("partial heads; freshly initialised: ['nsp_head/" in m for m in said), said
    assert any("no pooler in the checkpoint; freshly initialised" in m for m in said), said
    assert fill_mask.FillMask.load(str(tmp_path / "tl")).predict(text, top_k=3) == [want]
    main.main(["fill_mask", f"--model={tmp_path / 'tl'}", f"--text={text}", "--top_k=3"])
    assert f"{text}\t[MASK] 1: {' '.join(want)}" in capsys.readouterr().out


def test_the_command_that_gives_an_encoder_its_mlm_head_is_one_that_runs(tmp_path):
    # The refusal names a continued-pretraining command: it has to parse (a workdir) and to
    # build the encoder's own shape and tokenizer (MiniLM's 6x384 is in no size table).
    from tl_jax import config as config_lib

    _hf_bert(tmp_path / "hf", masked_lm=False)
    with pytest.raises(fill_mask.FillMaskError) as e:
        fill_mask.FillMask.load(str(tmp_path / "hf"))
    command = str(e.value).split("`")[1].split()
    assert command[:2] == ["tl_jax", "train"]
    main.build_parser().parse_args(config_lib.split_overrides(command[1:])[1])
    for flag in ("model.size", "init_from", "data.tokenizer"):
        assert f"--config.{flag}={tmp_path / 'hf'}" in command


def test_an_encoder_without_its_mlm_head_is_refused(tmp_path):
    from tl_jax.interop import convert

    _hf_bert(tmp_path / "hf", masked_lm=False)
    with pytest.raises(fill_mask.FillMaskError, match=r"holds an encoder without its MLM head .*"
                                                      r"--config.init_from="):
        fill_mask.FillMask.load(str(tmp_path / "hf"))
    convert.convert(tmp_path / "hf", tmp_path / "tl", "hf_to_tl")
    with pytest.raises(fill_mask.FillMaskError, match="weights directory of a BERT encoder "
                                                      "without its MLM head"):
        fill_mask.FillMask.load(str(tmp_path / "tl"))
    gpt = tmp_path / "gpt"
    gpt.mkdir()
    (gpt / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(fill_mask.FillMaskError, match="is a Hugging Face gpt2 model"):
        fill_mask.FillMask.load(str(gpt))


WORDS = "the a city river town is was big old new in on of and".split()


def _hf_electra(path, pair: bool):
    """A random HF ELECTRA generator (`ElectraForMaskedLM`, factorised: 8-wide embeddings, 16-wide
    layers) in `path`, or with pair=True a discriminator in `path` and the generator in
    `path/generator` sharing its embeddings, as the hub's pairs are; the vocabulary is in `path`
    only. Returns the generator."""
    import torch
    import transformers

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    common = dict(vocab_size=len(vocab), embedding_size=8, max_position_embeddings=64)
    torch.manual_seed(1)
    gen = transformers.ElectraForMaskedLM(transformers.ElectraConfig(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
        **common)).eval()
    with torch.no_grad():  # non-trivial biases and LayerNorms: every tensor matters
        for p in gen.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path = pathlib.Path(path)
    if pair:
        disc = transformers.ElectraForPreTraining(transformers.ElectraConfig(
            hidden_size=24, num_hidden_layers=2, num_attention_heads=3, intermediate_size=32,
            **common)).eval()
        disc.electra.embeddings.load_state_dict(gen.electra.embeddings.state_dict())
        disc.save_pretrained(path)
        gen.save_pretrained(path / "generator")
    else:
        gen.save_pretrained(path)
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return gen


def _hf_top_k(hf, tok, ids, k):
    """transformers' logits at the first [MASK] of `ids` and their top-k tokens (specials out)."""
    import torch

    with torch.no_grad():
        logits = hf(torch.tensor([ids])).logits[0, ids.index(tok.mask_id)].numpy()
    ranked = logits.copy()
    ranked[list(tok.special_ids)] = -np.inf
    return logits, [tok.decode([int(i)]) for i in np.argsort(-ranked)[:k]]


@pytest.mark.parametrize("pair", [False, True])
def test_a_hugging_face_electra_generator_fills_masks(tmp_path, pair, capsys):
    """An ElectraForMaskedLM directory, or a pair whose generator/ holds it: the generator's
    logits match transformers' and so do the top-k tokens."""
    hf = _hf_electra(tmp_path / "hf", pair=pair)
    model = fill_mask.FillMask.load(str(tmp_path / "hf"))
    gen_dir = tmp_path / "hf" / "generator" if pair else tmp_path / "hf"
    assert f"ELECTRA generator {'of the pair ' + str(tmp_path / 'hf') + ', ' if pair else ''}" \
           f"in {gen_dir} (2 layers, 16 wide)" in model.description
    text = "the old [MASK] is big"
    tok = model.tokenizer
    ids = [tok.cls_id] + tok.encode("the old") + [tok.mask_id] + tok.encode("is big") + [tok.sep_id]
    want_logits, want = _hf_top_k(hf, tok, ids, 3)
    arr = np.asarray([ids], np.int32)
    got = np.asarray(model._apply(model.params, arr, np.zeros_like(arr), np.ones_like(arr),
                                  np.asarray([[ids.index(tok.mask_id)]], np.int32)))[0, 0]
    gap = np.abs(got - want_logits).max()
    with capsys.disabled():
        print(f"ELECTRA generator logits vs transformers (pair={pair}): max |diff| {gap:.2e}")
    assert gap < 1e-5
    assert model.predict(text, top_k=3) == [want]
    main.main(["fill_mask", f"--model={tmp_path / 'hf'}", f"--text={text}", "--top_k=3"])
    assert f"{text}\t[MASK] 1: {' '.join(want)}" in capsys.readouterr().out


def test_an_electra_discriminator_alone_is_refused_in_one_line(tmp_path, monkeypatch):
    import shutil

    _hf_electra(tmp_path / "hf", pair=True)
    shutil.rmtree(tmp_path / "hf" / "generator")  # what the hub's *-discriminator repos hold
    expected = (f"fill_mask: {tmp_path / 'hf'} holds an ELECTRA discriminator "
                "(ElectraForPreTraining) and no generator: it cannot fill masks, because only "
                "ELECTRA's generator (ElectraForMaskedLM) has a masked-LM head")
    with pytest.raises(fill_mask.FillMaskError) as e:
        fill_mask.FillMask.load(str(tmp_path / "hf"))
    assert str(e.value).startswith(expected) and "\n" not in str(e.value), str(e.value)
    monkeypatch.delenv("TL_JAX_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as e:
        main.main(["fill_mask", f"--model={tmp_path / 'hf'}", "--text=a [MASK]"])
    assert str(e.value.code).startswith(f"tl_jax: error: {expected}")
    # Without `architectures` in config.json the weights decide: no generator head, refused.
    config_file = tmp_path / "hf" / "config.json"
    config = json.loads(config_file.read_text())
    del config["architectures"]
    config_file.write_text(json.dumps(config))
    with pytest.raises(fill_mask.FillMaskError, match=r"cannot fill masks: .*model.safetensors "
                                                      r"lacks the generator's MLM head"):
        fill_mask.FillMask.load(str(tmp_path / "hf"))


def test_a_converted_electra_pair_fills_masks_as_its_hugging_face_directory(tmp_path):
    """`tl_jax convert` of a HF pair directory gives tl_jax weights of the pair; fill_mask read
    the HF directory but refused what it converted to ("a electra model ... needs a BERT")."""
    import shutil

    from tl_jax.interop import convert

    _hf_electra(tmp_path / "hf", pair=True)
    convert.convert(tmp_path / "hf", tmp_path / "tl", "hf_to_tl")
    text = "the old [MASK] is big and [MASK]"
    want = fill_mask.FillMask.load(str(tmp_path / "hf")).predict(text, top_k=3)
    model = fill_mask.FillMask.load(str(tmp_path / "tl"))
    assert model.description.startswith(f"the ELECTRA generator in {tmp_path / 'tl'} (2 layers, "
                                        "16 wide)")
    assert model.predict(text, top_k=3) == want
    # The discriminator alone converts too, and is refused saying what it is.
    shutil.rmtree(tmp_path / "hf" / "generator")
    convert.convert(tmp_path / "hf", tmp_path / "disc", "hf_to_tl")
    with pytest.raises(fill_mask.FillMaskError, match="weights directory of an ELECTRA "
                                                      "discriminator without its generator"):
        fill_mask.FillMask.load(str(tmp_path / "disc"))


def test_factorised_bert_pretraining_trains_fills_masks_and_exports(tiny_bert_overrides, tmp_path,
                                                                     capsys):
    """`model.embedding_size` factorises bert_pretrain's embeddings (ALBERT's E < H): the run
    trains 32-wide tables projected to the 128-wide layers, fill_mask reads it with that width,
    fine-tuning reads the architecture back from the checkpoint, and convert exports the encoder
    as a headless ElectraModel (HF BERT has no projection)."""
    from tl_jax.interop import convert
    from tl_jax.tasks import bert_pretrain, downstream

    workdir = str(tmp_path / "albert_like")
    config = config_lib.load_config(BERT, tiny_bert_overrides + [
        "model.embedding_size=32", "train.steps=2", "train.eval_every=0",
        "train.checkpoint_every=2", "mesh.num_devices=1"])
    result = train.train_and_evaluate(config, workdir)
    params = jax.device_get(result.state["params"])
    vocab = result.trainer.task.tokenizer.vocab_size
    assert params["bert"]["embeddings"]["word_embeddings"]["embedding"].shape == (vocab, 32)
    assert params["bert"]["embeddings_project"]["kernel"].shape == (32, 128)
    assert params["mlm_head"]["transform"]["kernel"].shape == (128, 32)

    model = fill_mask.FillMask.from_workdir(workdir)
    assert model.model_config.embedding_size == 32
    assert_logits_are_the_runs(model, result)
    tok = model.tokenizer

    assert downstream.architecture(workdir, tok).embedding_size == 32  # what init_from builds

    convert.convert(workdir, tmp_path / "hf", "tl_to_hf")
    assert "as a headless HF ElectraModel" in capsys.readouterr().out
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (hf_config["architectures"], hf_config["embedding_size"]) == (["ElectraModel"], 32)

    # A copied architecture (a directory as model.size) has its own embedding width.
    model_cfg = config.model.copy_and_resolve_references()
    model_cfg.size = workdir
    with pytest.raises(ValueError, match="model.embedding_size=32 applies to a size name"):
        bert_pretrain.bert_config_from(model_cfg, vocab, tok)

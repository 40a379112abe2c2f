"""Hugging Face ELECTRA interop: logit parity with transformers (PyTorch CPU) both ways, exact
round trips, `tl_jax convert` of a trained electra workdir, HF discriminators as `init_from`,
and errors for what cannot be converted."""
import dataclasses
import json
import pathlib
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from tl_jax import config as config_lib
from tl_jax import interop, train
from tl_jax.interop import convert
from tl_jax.interop import electra as hf_electra
from tl_jax.models import electra

ROOT = pathlib.Path(__file__).resolve().parent.parent
ELECTRA = str(ROOT / "configs" / "electra_pretrain.py")

# (vocab, width, layers, heads, intermediate, generator width, heads, intermediate, layers,
# embedding size): odd sizes catch transposes that happen to fit. The second has a generator as
# wide as the discriminator (no embeddings_project) and a shallower one; the last two are
# ELECTRA-Small-shaped, with factorised embeddings (12 and 8 wide) that the discriminator
# projects to its width and the generator to its own (third) or takes as they are (fourth).
SHAPES = [
    (53, 24, 2, 3, 37, 8, 1, 11, 2, 24),
    (67, 16, 2, 2, 20, 16, 2, 12, 1, 16),
    (59, 24, 2, 3, 37, 8, 1, 11, 2, 12),
    (61, 16, 1, 2, 20, 8, 2, 12, 1, 8),
]


def hf_pair(path, shape, seed=0):
    """A random-init discriminator + generator (shared embeddings), saved as HF saves them."""
    vocab, width, layers, heads, inter, g_width, g_heads, g_inter, g_layers, emb = shape
    common = dict(vocab_size=vocab, embedding_size=emb, max_position_embeddings=32,
                  type_vocab_size=3)
    disc_cfg = transformers.ElectraConfig(hidden_size=width, num_hidden_layers=layers,
                                          num_attention_heads=heads, intermediate_size=inter,
                                          **common)
    gen_cfg = transformers.ElectraConfig(hidden_size=g_width, num_hidden_layers=g_layers,
                                         num_attention_heads=g_heads, intermediate_size=g_inter,
                                         **common)
    torch.manual_seed(seed)
    disc = transformers.ElectraForPreTraining(disc_cfg).eval()
    gen = transformers.ElectraForMaskedLM(gen_cfg).eval()
    with torch.no_grad():  # non-trivial biases and LayerNorms, so every tensor matters
        for model in (disc, gen):
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        gen.electra.embeddings.load_state_dict(disc.electra.embeddings.state_dict())
    disc.save_pretrained(path)
    gen.save_pretrained(path / "generator")
    return disc, gen


def random_inputs(vocab, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (3, 13))
    segments = rng.integers(0, 3, (3, 13))
    mask = np.ones((3, 13), np.int64)
    mask[1, 9:] = 0
    mask[2, 4:] = 0
    return ids, segments, mask


def torch_logits(disc, gen, ids, segments, mask):
    args = dict(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(segments),
                attention_mask=torch.tensor(mask))
    with torch.no_grad():
        return disc(**args).logits.numpy(), gen(**args).logits.numpy()


def tl_logits(config, params, ids, segments, mask):
    """(discriminator logits (B, L), generator MLM logits at every position (B, L, V))."""
    model = electra.ElectraForPreTraining(config)

    @jax.jit  # one compilation instead of hundreds of op-by-op dispatches
    def both(p, ids, segments, mask):
        disc, _ = model.apply({"params": p}, ids, segments, mask, method="discriminate")
        every = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
        gen, _ = model.apply({"params": p}, ids, segments, mask, every, method="generate")
        return disc["discriminator_logits"], gen["mlm_logits"]

    disc, gen = both(params, *(np.asarray(x, np.int32) for x in (ids, segments, mask)))
    return np.asarray(disc), np.asarray(gen)


def assert_parity(ours, ref, mask):
    real = mask == 1  # HF computes padded positions too; nobody reads them
    np.testing.assert_allclose(ours[0][real], ref[0][real], atol=1e-5, rtol=0)
    np.testing.assert_allclose(ours[1][real], ref[1][real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_hf_to_tl_parity(tmp_path, shape):
    disc, gen = hf_pair(tmp_path / "hf", shape)
    config, params, report = hf_electra.load(tmp_path / "hf")
    assert report.unused == [] and report.missing == []
    assert (config.generator_hidden_size, config.generator_num_layers) == (shape[5], shape[8])
    assert config.discriminator.embedding_width == shape[9]
    assert ("embeddings_project" in params["bert"]) == (shape[9] != shape[1])
    assert ("embeddings_project" in params["generator"]) == (shape[9] != shape[5])
    inputs = random_inputs(shape[0])
    assert_parity(tl_logits(config, params, *inputs), torch_logits(disc, gen, *inputs),
                  inputs[2])


@pytest.mark.parametrize("shape", SHAPES)
def test_tl_to_hf_parity_and_exact_round_trip(tmp_path, shape):
    vocab, width, layers, heads, inter, g_width, g_heads, g_inter, g_layers, emb = shape
    config = electra.ElectraConfig(
        discriminator=electra.bert.BertConfig(
            vocab_size=vocab, hidden_size=width, num_layers=layers, num_heads=heads,
            intermediate_size=inter, max_position_embeddings=32, type_vocab_size=3,
            embedding_size=emb),
        generator_hidden_size=g_width, generator_num_heads=g_heads,
        generator_intermediate_size=g_inter, generator_num_layers=g_layers)
    ids, segments, mask = random_inputs(vocab, seed=1)
    positions = np.zeros((3, 2), np.int32)
    # The model's param shapes, filled with random values (compiling the real initialisers
    # would cost more than the rest of the test): LayerNorm scales near 1, the rest near 0.
    init = electra.ElectraForPreTraining(config).init
    shapes = nn.unbox(jax.eval_shape(
        init, {"params": jax.random.PRNGKey(0), "sample": jax.random.PRNGKey(1)},
        ids.astype(np.int32), segments.astype(np.int32), mask.astype(np.int32), positions,
        positions, np.ones((3, 2), np.float32))["params"])
    rng = np.random.default_rng(2)
    params = jax.tree_util.tree_map_with_path(
        lambda path, s: (path[-1].key == "scale") + np.float32(0.1) * rng.standard_normal(
            s.shape, np.float32), shapes)

    out = hf_electra.export(params, config, tmp_path / "hf")
    disc, info = transformers.ElectraForPreTraining.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    gen, info = transformers.ElectraForMaskedLM.from_pretrained(out / "generator",
                                                                output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert_parity(tl_logits(config, params, ids, segments, mask),
                  torch_logits(disc.eval(), gen.eval(), ids, segments, mask), mask)

    # tl_jax -> HF -> tl_jax is exact, and so is HF -> tl_jax -> HF.
    config2, params2, _ = hf_electra.load(out)
    assert config2 == config
    jax.tree_util.tree_map(np.testing.assert_array_equal, params2, params)
    hf_electra.export(params2, config2, tmp_path / "again")
    for sub in ("", "generator"):
        first = load_file(out / sub / "model.safetensors")
        again = load_file(tmp_path / "again" / sub / "model.safetensors")
        assert sorted(first) == sorted(again)
        assert all(np.array_equal(first[k], again[k]) for k in first)


def test_convert_of_an_hf_pair_round_trips_through_tl_weights(tmp_path, capsys):
    hf_pair(tmp_path / "hf", SHAPES[2])  # factorised embeddings, as ELECTRA-Small
    convert.convert(tmp_path / "hf", tmp_path / "tl", "hf_to_tl")
    config, params, family = convert.load_tl_params(tmp_path / "tl")  # nested BertConfig rebuilt
    assert family == "electra" and isinstance(config, electra.ElectraConfig)
    # The log says which halves were read.
    said = capsys.readouterr().out
    assert "[convert] ELECTRA pair: the discriminator from" in said
    assert f"({config.generator_num_layers} layers x {config.generator_hidden_size})" in said
    convert.convert(tmp_path / "tl", tmp_path / "back", "tl_to_hf")
    for sub in ("", "generator"):
        original = load_file(tmp_path / "hf" / sub / "model.safetensors")
        back = load_file(tmp_path / "back" / sub / "model.safetensors")
        assert sorted(back) == sorted(original), sub
        assert all(np.array_equal(back[k], original[k]) for k in original), sub
    # A discriminator alone (what the hub's *-discriminator repos hold) round-trips too.
    shutil.rmtree(tmp_path / "hf" / "generator")
    convert.convert(tmp_path / "hf", tmp_path / "tl_disc", "hf_to_tl")
    assert "[convert] ELECTRA discriminator only" in capsys.readouterr().out
    config, params, family = convert.load_tl_params(tmp_path / "tl_disc")
    assert family == "electra" and sorted(params) == ["bert", "discriminator_head"]
    convert.convert(tmp_path / "tl_disc", tmp_path / "back_disc", "tl_to_hf")
    original = load_file(tmp_path / "hf" / "model.safetensors")
    back = load_file(tmp_path / "back_disc" / "model.safetensors")
    assert sorted(back) == sorted(original)
    assert all(np.array_equal(back[k], original[k]) for k in original)
    assert not (tmp_path / "back_disc" / "generator").exists()


def random_params(model, *args):
    """`model`'s param shapes filled with random values: LayerNorm scales near 1, the rest near
    0 (compiling the real initialisers would cost more than the test)."""
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), *args)["params"])
    rng = np.random.default_rng(3)
    return jax.tree_util.tree_map_with_path(
        lambda path, s: (path[-1].key == "scale") + np.float32(0.1) * rng.standard_normal(
            s.shape, np.float32), shapes)


def electra_model_hidden_states(directory, ids, segments, mask):
    """Loads `directory` in transformers' ElectraModel (no missing or unexpected keys) and
    returns its last hidden states."""
    hf, info = transformers.ElectraModel.from_pretrained(directory, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    with torch.no_grad():
        return hf.eval()(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(segments),
                         attention_mask=torch.tensor(mask)).last_hidden_state.numpy()


def test_a_factorised_bert_weights_dir_exports_as_a_headless_electra_model(tmp_path, capsys):
    """HF BERT has no embeddings_project: a factorised BERT (here with its MLM/NSP heads and
    pooler) exports its encoder as ElectraModel, which computes our hidden states and reads back
    bit for bit, as a tl_jax weights directory and as an init_from."""
    config = electra.bert.BertConfig(vocab_size=53, hidden_size=24, num_layers=2, num_heads=3,
                                     intermediate_size=37, max_position_embeddings=32,
                                     type_vocab_size=3, embedding_size=12)
    ids, segments, mask = random_inputs(53, seed=4)
    params = random_params(electra.bert.BertForPreTraining(config), ids.astype(np.int32))
    convert.save_tl_params(tmp_path / "tl", config, params, "bert")
    out = convert.convert(tmp_path / "tl", tmp_path / "hf", "tl_to_hf")
    printed = capsys.readouterr().out
    assert ("factorised BERT encoder 2x24 (embeddings 12 wide, projected) -> "
            f"{tmp_path / 'hf'} as a headless HF ElectraModel") in printed
    assert "not exported (no place in ElectraModel): bert/pooler, mlm_head, nsp_head" in printed
    hf_config = json.loads((out / "config.json").read_text())
    assert (hf_config["model_type"], hf_config["architectures"], hf_config["embedding_size"],
            hf_config["hidden_size"]) == ("electra", ["ElectraModel"], 12, 24)

    ref = electra_model_hidden_states(out, ids, segments, mask)
    ours, _ = electra.bert.BertEncoder(config).apply(
        {"params": params["bert"]}, *(np.asarray(x, np.int32) for x in (ids, segments, mask)))
    real = mask == 1
    gap = np.abs(np.asarray(ours["sequence_output"])[real] - ref[real]).max()
    print(f"ElectraModel vs tl_jax encoder (weights dir): max |diff| {gap:.2e}")
    assert gap < 1e-5

    # Read back: the discriminator loader takes the headless directory (no head: missing), the
    # encoder bit for bit, and HF -> tl_jax -> HF returns the same tensors.
    read_config, flat, report = hf_electra.load_discriminator(out)
    assert read_config == config
    assert report.unused == [] and sorted(report.missing) == sorted(
        e.tl_path for e in hf_electra.discriminator_tensor_map(config)
        if e.tl_path.startswith("discriminator_head/"))
    encoder = {p: v for p, v in convert.safetensors_io.flatten_params(params).items()
               if p.startswith("bert/") and not p.startswith("bert/pooler/")}
    assert sorted(flat) == sorted(encoder)
    for name, value in encoder.items():
        np.testing.assert_array_equal(flat[name], value)
    convert.convert(out, tmp_path / "tl_again", "hf_to_tl")
    convert.convert(tmp_path / "tl_again", tmp_path / "hf_again", "tl_to_hf")
    first, again = load_file(out / "model.safetensors"), load_file(
        tmp_path / "hf_again" / "model.safetensors")
    assert sorted(first) == sorted(again) and all(np.array_equal(first[k], again[k])
                                                  for k in first)
    # As init_from, into a fresh tree of the same shape (the pooler and heads keep theirs).
    fresh = jax.tree_util.tree_map(np.zeros_like, params)
    merged, report = convert.init_from(fresh, out, warn=False)
    merged = convert.safetensors_io.flatten_params(merged)
    for name, value in encoder.items():
        np.testing.assert_array_equal(merged[name], value)
    assert [p for p in report.missing if p.startswith("bert/")] == [
        "bert/pooler/dense/bias", "bert/pooler/dense/kernel"]


@pytest.fixture(scope="module")
def trained(tiny_bert_overrides, tmp_path_factory):
    """A finished electra workdir: tiny model, three steps on real text (no eval: it would only
    add a compilation)."""
    workdir = tmp_path_factory.mktemp("electra_run")
    config = config_lib.load_config(ELECTRA + ":tiny", tiny_bert_overrides + [
        "train.steps=3", "train.log_every=3", "train.eval_every=0", "train.checkpoint_every=3",
        "optimizer.warmup_steps=1", "mesh.num_devices=1"])
    train.train_and_evaluate(config, str(workdir))
    return workdir


def test_convert_a_trained_workdir_loads_in_transformers(trained, tmp_path, data_dir, capsys):
    from tl_jax import checkpoint

    out = tmp_path / "hf"
    convert.convert(trained, out, "tl_to_hf")
    assert "ELECTRA discriminator 2x128" in capsys.readouterr().out
    flat, _ = checkpoint.load_params_from_workdir(str(trained))
    params = jax.tree_util.tree_map(np.asarray, convert.safetensors_io.unflatten_params(flat))
    config = hf_electra.config_from_params(params)

    lines = (data_dir / "enwiki_sample.jsonl").read_text().splitlines()[60:63]
    texts = [json.loads(line)["text"][:n] for line, n in zip(lines, (200, 60, 25))]
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    enc = hf_tok(texts, padding=True, truncation=True, max_length=32, return_tensors="np")
    from tl_jax.data.tokenizer import Tokenizer
    ours_tok = Tokenizer.load(str(trained / "tokenizer"))
    assert [ids[1:-1] for ids in hf_tok(texts, truncation=False)["input_ids"]] == \
        ours_tok.encode_batch(texts)  # same ids ([CLS]/[SEP] are added by our example builder)

    disc, info = transformers.ElectraForPreTraining.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    gen = transformers.ElectraForMaskedLM.from_pretrained(out / "generator")
    inputs = (enc["input_ids"], enc["token_type_ids"], enc["attention_mask"])
    assert (enc["attention_mask"] == 0).any()  # the batch really has padding
    assert_parity(tl_logits(config, params, *inputs), torch_logits(disc.eval(), gen.eval(),
                                                                   *inputs), inputs[2])
    assert (out / "generator" / "tokenizer.json").exists()


def test_an_hf_discriminator_is_an_init_from_for_fine_tuning(trained, tmp_path,
                                                              polarity_classifier_config, capsys):
    from tl_jax import checkpoint

    out = tmp_path / "hf"
    convert.convert(trained, out, "tl_to_hf")
    shutil.rmtree(out / "generator")  # what people fine-tune: the discriminator alone
    config = polarity_classifier_config(out)
    trainer = train.build_trainer(config, workdir=None)
    shape = trainer.task.model_config
    assert (shape.num_layers, shape.hidden_size, shape.vocab_size) == (2, 128, 2000)
    state = trainer.init_state(jax.random.PRNGKey(0))
    printed = capsys.readouterr().out
    assert "Hugging Face checkpoint" in printed and "bert/pooler" in printed  # fresh: no pooler
    source, _ = checkpoint.load_params_from_workdir(str(trained))
    got = convert.safetensors_io.flatten_params(jax.device_get(state["params"]))
    encoder = [n for n in source if n.startswith("bert/")]
    assert len(encoder) == 37
    for name in encoder:
        np.testing.assert_array_equal(got[name], source[name])


def test_an_hf_electra_small_discriminator_fine_tunes_and_exports_back(
        tiny_bert_overrides, tmp_path, polarity_classifier_config, capsys):
    """ELECTRA-Small's layout (embeddings narrower than the layers) as `init_from`: the
    classifier's encoder gets the embeddings_project and every tensor, and trains; `tl_jax
    convert` of the fine-tuned workdir writes its encoder as a headless ElectraModel (HF BERT
    has no projection), which computes our hidden states and is an init_from in turn."""
    from tl_jax import checkpoint

    hf_dir = tmp_path / "hf_small"
    torch.manual_seed(0)
    hf = transformers.ElectraForPreTraining(transformers.ElectraConfig(
        vocab_size=2000, embedding_size=12, hidden_size=16, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=20, max_position_embeddings=64)).eval()
    hf.save_pretrained(hf_dir)
    # A real vocabulary: the session's WordPiece of 2000 (the one `trained` copies into its
    # workdir; taken from the fixture, this test does not pay for an electra run).
    tokenizer = next(o.split("=", 1)[1] for o in tiny_bert_overrides
                     if o.startswith("data.tokenizer="))
    interop.bert.write_tokenizer(tokenizer, hf_dir, 2000, 64)
    config = polarity_classifier_config(
        hf_dir, "train.steps=2", "train.eval_every=2", "train.checkpoint_every=2",
        "train.log_every=1", "data.num_epochs=0")
    trainer = train.build_trainer(config, workdir=None)
    shape = trainer.task.model_config
    assert (shape.hidden_size, shape.embedding_size, shape.num_layers) == (16, 12, 2)
    state = trainer.init_state(jax.random.PRNGKey(0))
    assert "encoder loaded" in capsys.readouterr().out
    got = convert.safetensors_io.flatten_params(jax.device_get(state["params"]))
    source = {n: v.numpy() for n, v in hf.state_dict().items()}
    np.testing.assert_array_equal(got["bert/embeddings_project/kernel"],
                                  source["electra.embeddings_project.weight"].T)
    np.testing.assert_array_equal(got["bert/embeddings/word_embeddings/embedding"],
                                  source["electra.embeddings.word_embeddings.weight"])
    # The classifier's encoder computes HF's hidden states.
    ids = np.random.default_rng(0).integers(0, 2000, (2, 9))
    model = electra.bert.BertEncoder(shape)
    ours, _ = model.apply({"params": state["params"]["bert"]}, ids.astype(np.int32))
    with torch.no_grad():
        ref = hf.electra(input_ids=torch.tensor(ids)).last_hidden_state.numpy()
    np.testing.assert_allclose(ours["sequence_output"], ref, atol=1e-5)

    workdir = tmp_path / "ft"
    train.train_and_evaluate(config, str(workdir))
    tuned, step = checkpoint.load_params_from_workdir(str(workdir))
    assert step == 2
    assert not np.array_equal(tuned["bert/embeddings_project/kernel"],
                              got["bert/embeddings_project/kernel"])  # it trains

    capsys.readouterr()
    out = convert.convert(workdir, tmp_path / "hf_tuned", "tl_to_hf")
    printed = capsys.readouterr().out
    assert (f"{workdir} step 2: factorised BERT encoder 2x16 (embeddings 12 wide, "
            f"projected) -> {out} as a headless HF ElectraModel") in printed
    assert "not exported (no place in ElectraModel): bert/pooler, head" in printed
    assert json.loads((out / "config.json").read_text())["architectures"] == ["ElectraModel"]
    assert (out / "tokenizer.json").exists()
    segments, mask = np.zeros_like(ids), np.ones_like(ids)
    mask[1, 6:] = 0
    ref = electra_model_hidden_states(out, ids, segments, mask)
    tuned_tree = convert.safetensors_io.unflatten_params(tuned)
    ours, _ = model.apply({"params": tuned_tree["bert"]},
                          *(np.asarray(x, np.int32) for x in (ids, segments, mask)))
    real = mask == 1
    gap = np.abs(np.asarray(ours["sequence_output"])[real] - ref[real]).max()
    print(f"ElectraModel vs tl_jax encoder (fine-tuned workdir): max |diff| {gap:.2e}")
    assert gap < 1e-5
    # The export fine-tunes again: a classifier built from it starts from the tuned encoder.
    again = polarity_classifier_config(out)
    trainer = train.build_trainer(again, workdir=None)
    assert trainer.task.model_config.embedding_size == 12
    state = trainer.init_state(jax.random.PRNGKey(1))
    got = convert.safetensors_io.flatten_params(jax.device_get(state["params"]))
    encoder = [n for n in tuned if n.startswith("bert/") and not n.startswith("bert/pooler/")]
    assert len(encoder) == 39  # 5 embeddings, the projection's 2, 16 per layer
    for name in encoder:
        np.testing.assert_array_equal(got[name], tuned[name])


def test_errors_name_what_is_wrong(tmp_path):
    hf_pair(tmp_path / "hf", SHAPES[0])
    hf = tmp_path / "hf"

    bert_dir = tmp_path / "bert"
    transformers.BertModel(transformers.BertConfig(
        vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=8)).save_pretrained(bert_dir)
    with pytest.raises(ValueError, match=r"config.json: model_type='bert', expected 'electra'; "
                                         "this is not an ELECTRA checkpoint"):
        hf_electra.load(bert_dir)
    gpt = tmp_path / "gpt"
    gpt.mkdir()
    (gpt / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type='gpt2' is not a BERT-style encoder"):
        interop.encoder_family_of(gpt)

    with pytest.raises(FileNotFoundError, match="holds no ELECTRA generator"):
        hf_electra.load(hf, generator_directory=tmp_path / "nowhere")
    gen_config = json.loads((hf / "generator" / "config.json").read_text())
    bad = tmp_path / "bad_gen"
    shutil.copytree(hf / "generator", bad)
    (bad / "config.json").write_text(json.dumps(dict(gen_config, embedding_size=12)))
    with pytest.raises(ValueError, match=r"bad_gen/config.json: embedding_size=12, but the "
                                         r"generator shares the discriminator's embeddings"):
        hf_electra.load(hf, generator_directory=bad)
    (bad / "config.json").write_text(json.dumps(dict(gen_config, vocab_size=54)))
    with pytest.raises(ValueError, match="vocab_size=54 differs from the discriminator's 53"):
        hf_electra.load(hf, generator_directory=bad)
    (bad / "config.json").write_text(json.dumps(dict(gen_config, embedding_size="24")))
    with pytest.raises(ValueError, match='bad_gen/config.json: embedding_size must be an '
                                         'integer, got "24"'):
        hf_electra.load(hf, generator_directory=bad)

    # Layers beyond config.json's count were dropped without a word (BERT's too).
    disc_config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps(dict(disc_config, num_hidden_layers=1)))
    with pytest.raises(ValueError, match=r"model.safetensors holds encoder layers up to "
                                         r"electra.encoder.layer.1 \(2 layers\) but config.json "
                                         "has num_hidden_layers=1"):
        hf_electra.load_discriminator(hf)
    (bad / "config.json").write_text(json.dumps(dict(gen_config, num_hidden_layers=1)))
    with pytest.raises(ValueError, match=r"bad_gen/model.safetensors holds encoder layers up to "
                                         r"electra.encoder.layer.1 \(2 layers\)"):
        hf_electra.load_generator(bad)
    (hf / "config.json").write_text(json.dumps(disc_config))

    tensors = load_file(hf / "model.safetensors")
    name = "electra.encoder.layer.1.intermediate.dense.weight"
    tensors[name] = np.zeros((24, 37), np.float32)
    save_file(tensors, str(hf / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"'{name}' has shape \(24, 37\), but config.json "
                                         r"implies \(37, 24\)"):
        hf_electra.load(hf)
    del tensors[name]
    save_file(tensors, str(hf / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="lacks encoder tensors.*layer_1/mlp/intermediate/kernel"):
        hf_electra.load_discriminator(hf)

    # HF's generator head is always gelu: another activation cannot export exactly.
    hf_pair(tmp_path / "fresh", SHAPES[1])
    config, params, _ = hf_electra.load(tmp_path / "fresh")
    tanh_gelu = dataclasses.replace(
        config, discriminator=config.discriminator.replace(hidden_act="gelu_new"))
    with pytest.raises(ValueError, match="hidden_act='gelu_new'.*always applies 'gelu'"):
        hf_electra.export(params, tanh_gelu, tmp_path / "nope")
    hf_electra.export(params, tanh_gelu, tmp_path / "disc_only", with_generator=False)
    assert not (tmp_path / "disc_only" / "generator").exists()


def test_convert_of_a_discriminator_with_extra_tensors_names_them(tmp_path, recwarn):
    # A classifier head (ElectraForSequenceClassification) was dropped without a word; BERT's
    # convert lists such tensors as unused.
    hf_pair(tmp_path / "hf", SHAPES[0])
    disc = tmp_path / "disc"
    shutil.copytree(tmp_path / "hf", disc, ignore=shutil.ignore_patterns("generator"))
    tensors = load_file(disc / "model.safetensors")
    tensors["classifier.out_proj.weight"] = np.zeros((2, SHAPES[0][1]), np.float32)
    save_file(tensors, disc / "model.safetensors", metadata={"format": "pt"})
    with pytest.warns(UserWarning, match=r"1 tensor\(s\) .* not converted: "
                                         r"\['classifier.out_proj.weight'\]"):
        convert.convert(disc, tmp_path / "out")
    recwarn.clear()
    convert.convert(tmp_path / "hf", tmp_path / "out_pair")  # nothing extra: no such warning
    assert not [w for w in recwarn if "not converted" in str(w.message)]


def test_a_hugging_face_init_from_of_another_shape_is_refused_before_the_corpus(tmp_path,
                                                                                monkeypatch):
    # An ELECTRA (or BERT) run with init_from a HF directory of another architecture read and
    # tokenised its corpus (minutes on a large one) before the warm start refused it.
    from tl_jax.data import pretraining
    from tl_jax.tasks import bert_pretrain
    from tl_jax.tasks import electra as electra_task

    def build(*args, **kwargs):
        raise AssertionError("the corpus was read")

    monkeypatch.setattr(pretraining, "build_pretraining_data", build)
    hf_pair(tmp_path / "hf", SHAPES[0])
    transformers.BertForPreTraining(transformers.BertConfig(
        vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=8)).save_pretrained(tmp_path / "bert")
    config = config_lib.load_config(ELECTRA + ":tiny", [f"init_from={tmp_path / 'hf'}"])
    with pytest.raises(ValueError, match=r"init_from=.*hf: checkpoint architecture differs from "
                                         r"the model's: hidden_size: model 128 vs checkpoint 24;"
                                         r".* \(model.size=tiny\); pick the size"):
        electra_task.Task(config, str(tmp_path / "run"))
    bert_cfg = config_lib.load_config(str(ROOT / "configs" / "bert_pretrain.py") + ":tiny",
                                      [f"init_from={tmp_path / 'bert'}"])
    with pytest.raises(ValueError, match=r"checkpoint architecture differs .*hidden_size: model "
                                         r"128 vs checkpoint 8.*set model.size=.*bert"):
        bert_pretrain.Task(bert_cfg, str(tmp_path / "run"))
    # The same shape passes the check (and reaches the corpus). The folder has no tokenizer:
    # data.tokenizer names the one its weights were trained with (else that is the error).
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                               + [f"w{i}" for i in range(25)]) + "\n")
    bert_cfg = config_lib.load_config(str(ROOT / "configs" / "bert_pretrain.py") + ":tiny",
                                      [f"init_from={tmp_path / 'bert'}",
                                       f"model.size={tmp_path / 'bert'}",
                                       f"data.tokenizer={vocab}"])
    with pytest.raises(AssertionError, match="the corpus was read"):
        bert_pretrain.Task(bert_cfg, str(tmp_path / "run"))
    # tl_jax weights (`tl_jax convert`'s output) are checked from their own config.json, which
    # has no Hugging Face model_type (it was read as HF's: "has no model_type").
    convert.convert(tmp_path / "bert", tmp_path / "bert_tl", "hf_to_tl")
    convert.convert(tmp_path / "hf", tmp_path / "hf_tl", "hf_to_tl")
    for init_from, task, spec, width in ((tmp_path / "bert_tl", bert_pretrain, "bert_pretrain", 8),
                                         (tmp_path / "hf_tl", electra_task, "electra_pretrain",
                                          24)):
        cfg = config_lib.load_config(str(ROOT / "configs" / f"{spec}.py") + ":tiny",
                                     [f"init_from={init_from}"])
        with pytest.raises(ValueError, match=r"init_from=.*_tl: checkpoint architecture differs "
                                             rf".*hidden_size: model 128 vs checkpoint {width}"):
            task.Task(cfg, str(tmp_path / "run"))
    bert_cfg = config_lib.load_config(str(ROOT / "configs" / "bert_pretrain.py") + ":tiny",
                                      [f"init_from={tmp_path / 'bert_tl'}",
                                       f"model.size={tmp_path / 'bert_tl'}",
                                       f"data.tokenizer={vocab}"])
    with pytest.raises(AssertionError, match="the corpus was read"):
        bert_pretrain.Task(bert_cfg, str(tmp_path / "run"))

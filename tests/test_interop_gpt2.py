"""GPT-2 interop: logits and greedy generation match transformers' GPT2LMHeadModel (PyTorch)."""
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as nn
from transformers import GPT2Config, GPT2LMHeadModel

from tl_jax.generate import Generator
from tl_jax.interop import gpt2
from tl_jax.models.gpt import GPT, gpt_config


def random_hf(seed, **shape):
    """A GPT2LMHeadModel with every tensor random (not just the init's small weights), so that
    a swapped, untransposed or mis-split tensor changes the output visibly."""
    torch.manual_seed(seed)
    config = GPT2Config(bos_token_id=0, eos_token_id=None, pad_token_id=0, **shape)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith(
                    "ln_f.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    return model


def import_hf(model):
    config = gpt2.config_from_hf(model.config.to_dict())
    params = gpt2.params_from_hf({k: v.numpy() for k, v in model.state_dict().items()}, config)
    return config, params


SHAPES = [
    dict(vocab_size=97, n_positions=32, n_embd=48, n_layer=2, n_head=4),
    dict(vocab_size=50, n_positions=24, n_embd=32, n_layer=3, n_head=2, n_inner=80),
    dict(vocab_size=128, n_positions=40, n_embd=64, n_layer=1, n_head=8),
]


@pytest.mark.parametrize("shape", SHAPES)
def test_imported_logits_match_transformers(shape):
    hf = random_hf(0, **shape)
    config, params = import_hf(hf)
    tokens = np.random.RandomState(0).randint(0, shape["vocab_size"], (3, shape["n_positions"]))
    (outputs, intermediates) = GPT(config).apply({"params": params}, jnp.asarray(tokens))
    with torch.no_grad():
        ref = hf(torch.tensor(tokens), output_hidden_states=True)
    np.testing.assert_allclose(np.asarray(outputs["logits"]), ref.logits.numpy(), atol=1e-5,
                               rtol=1e-5)
    # HF's hidden_states: embeddings, then each block's output (the last one after ln_f).
    np.testing.assert_allclose(np.asarray(intermediates["embeddings"]),
                               ref.hidden_states[0].numpy(), atol=1e-5)
    for i in range(1, shape["n_layer"]):
        np.testing.assert_allclose(np.asarray(intermediates[f"layer_{i}"]),
                                   ref.hidden_states[i].numpy(), atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(outputs["hidden"]), ref.hidden_states[-1].numpy(),
                               atol=1e-5, rtol=1e-5)


def test_export_loads_in_transformers_with_no_missing_keys(tmp_path):
    config = gpt_config("tiny", 77, max_len=32, initializer_range=0.2)
    model = GPT(config)
    params = nn.unbox(model.init(jax.random.PRNGKey(3), jnp.zeros((1, 8), jnp.int32))["params"])
    # Random LayerNorm and bias values too, so that a dropped or swapped one is visible.
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(4), len(leaves))
    params = jax.tree_util.tree_unflatten(
        treedef, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    gpt2.save_pretrained(tmp_path, config, params)
    hf, info = GPT2LMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    hf.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    tokens = np.random.RandomState(1).randint(0, 77, (2, 32))
    with torch.no_grad():
        ref = hf(torch.tensor(tokens)).logits.numpy()
    mine = np.asarray(model.apply({"params": params}, jnp.asarray(tokens))[0]["logits"])
    np.testing.assert_allclose(mine, ref, atol=1e-5, rtol=1e-5)
    # And back: the import of the export is the identity.
    config2, params2 = gpt2.load_pretrained(tmp_path)
    assert config2 == config
    jax.tree_util.tree_map(np.testing.assert_array_equal, params2, jax.tree_util.tree_map(
        np.asarray, params))


def test_gpt2_directories_in_every_hf_weight_format_load_and_broken_ones_are_named(tmp_path):
    """A GPT-2 directory as transformers writes it, as model.safetensors, as the older
    pytorch_model.bin, or sharded with an index, imports the same weights; a truncated weight
    file (an interrupted download), a missing tensor or config field is a one-line ValueError
    naming the file."""
    hf = random_hf(0, **SHAPES[0])
    config, want = import_hf(hf)
    hf.save_pretrained(tmp_path / "bin")  # then as transformers < 4.35 saved it:
    (tmp_path / "bin" / "model.safetensors").unlink()
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    for name, kwargs in [("safetensors", {}), ("bin", None),
                         ("sharded", dict(max_shard_size="20KB"))]:
        if kwargs is not None:
            hf.save_pretrained(tmp_path / name, **kwargs)
        got_config, got = gpt2.load_pretrained(tmp_path / name)
        assert got_config == config, name
        jax.tree_util.tree_map(np.testing.assert_array_equal, got, want)
    assert (tmp_path / "bin" / "pytorch_model.bin").exists()
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()

    weights = tmp_path / "safetensors" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=r"model.safetensors is not a readable safetensors"):
        gpt2.load_pretrained(tmp_path / "safetensors")
    (tmp_path / "bin" / "pytorch_model.bin").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ValueError, match=r"pytorch_model.bin is not a readable PyTorch checkpoint"):
        gpt2.load_pretrained(tmp_path / "bin")

    from safetensors.numpy import load_file, save_file
    hf.save_pretrained(tmp_path / "missing")
    state = load_file(tmp_path / "missing" / "model.safetensors")
    del state["transformer.h.1.ln_2.bias"]
    save_file(state, tmp_path / "missing" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model.safetensors: GPT-2 state dict is missing "
                                         r"'h.1.ln_2.bias'"):
        gpt2.load_pretrained(tmp_path / "missing")
    hf_config = json.loads((tmp_path / "missing" / "config.json").read_text())
    del hf_config["n_embd"]
    (tmp_path / "missing" / "config.json").write_text(json.dumps(hf_config))
    with pytest.raises(ValueError, match=r"config.json: missing GPT-2 config field\(s\) "
                                         r"\['n_embd'\]"):
        gpt2.load_pretrained(tmp_path / "missing")


def test_greedy_generation_matches_hf_generate():
    hf = random_hf(1, vocab_size=89, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    config, params = import_hf(hf)
    prompts = [[3, 14, 15, 9, 26], [5], [35, 8, 9, 7, 9, 3, 2, 38, 4, 6, 2]]
    mine = Generator(GPT(config), params).generate(prompts, 16)
    width = max(map(len, prompts))
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):  # HF left-padded batch, as ours
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    with torch.no_grad():
        ref = hf.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False,
                          pad_token_id=0)
    assert mine == ref[:, width:].tolist()
    assert len({tuple(row) for row in mine}) == len(prompts)


def test_import_rejects_mismatched_state():
    hf = random_hf(0, **SHAPES[0])
    config = gpt2.config_from_hf(hf.config.to_dict())
    state = {k: v.numpy() for k, v in hf.state_dict().items()}
    missing = dict(state)
    del missing["transformer.h.1.mlp.c_fc.bias"]
    with pytest.raises(ValueError, match="missing .h.1.mlp.c_fc.bias"):
        gpt2.params_from_hf(missing, config)
    extra = dict(state, **{"transformer.h.9.attn.c_attn.weight": np.zeros(3)})
    with pytest.raises(ValueError, match="unexpected"):
        gpt2.params_from_hf(extra, config)
    wrong = dict(state, **{"transformer.wpe.weight": np.zeros((5, 48), np.float32)})
    with pytest.raises(ValueError, match="wpe.weight"):
        gpt2.params_from_hf(wrong, config)
    with pytest.raises(ValueError, match="activation_function"):
        gpt2.config_from_hf(dict(hf.config.to_dict(), activation_function="relu"))


def test_a_config_field_of_the_wrong_type_is_named_with_its_file(tmp_path):
    # `"n_layer": "2"` in a hand-edited config.json was a bare TypeError from GPTConfig.
    hf = GPT2Config(**SHAPES[0]).to_dict()
    assert gpt2.config_from_hf(hf).num_layers == SHAPES[0]["n_layer"]
    assert gpt2.config_from_hf(dict(hf, n_inner=None)).mlp_dim == 4 * SHAPES[0]["n_embd"]
    for change, expected in (({"n_layer": "2"}, 'n_layer must be an integer, got "2"'),
                             ({"n_embd": 48.0}, "n_embd must be an integer, got 48.0"),
                             ({"n_inner": "192"}, 'n_inner must be an integer or null, got "192"'),
                             ({"attn_pdrop": None}, "attn_pdrop must be a number, got null"),
                             # Values the model refuses name the file too (they named none).
                             ({"n_head": 0}, "GPTConfig: num_heads must be positive, got 0 "
                                             "(GPT-2 field names: n_layer"),
                             ({"activation_function": "relu"}, "activation_function='relu' is "
                                                               "not supported")):
        (tmp_path / "config.json").write_text(json.dumps(dict(hf, **change)))
        with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'config.json'}: {expected}")):
            gpt2.load_config(tmp_path)


def test_convert_exports_a_clm_workdir(tmp_path, monkeypatch):
    """`tl_jax convert --direction=tl_to_hf` of a GPT (clm) training run: a GPT2LMHeadModel
    with the run's tokenizer (it used to fail looking for a BERT encoder)."""
    import json

    from transformers import AutoTokenizer

    from tl_jax import checkpoint
    from tl_jax.data.bpe import BPETokenizer
    from tl_jax.interop import convert, safetensors_io

    tok = BPETokenizer.train(["the cat sat on the mat", "a dog sat on a log"] * 20,
                             vocab_size=280)
    config = gpt_config("tiny", tok.vocab_size, max_len=32, initializer_range=0.2)
    params = nn.unbox(GPT(config).init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))[
        "params"])
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    tok.save(str(workdir / "tokenizer"))
    (workdir / "config.json").write_text(json.dumps({"task": "clm", "model": dict(
        size="tiny", vocab_size=0, max_len=32, dropout_rate=0.1, attention_dropout_rate=0.1,
        dtype="float32")}))
    # The orbax reading is checkpoint.py's (tested there); this test owns the GPT-2 export.
    monkeypatch.setattr(checkpoint, "load_params_from_workdir",
                        lambda path: (safetensors_io.flatten_params(params), 5))
    convert.convert(workdir, tmp_path / "hf", "tl_to_hf")
    hf, info = GPT2LMHeadModel.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert hf.config.eos_token_id == tok.eos_id
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tok("the cat sat").input_ids == tok.encode("the cat sat")
    ids = np.random.RandomState(0).randint(0, tok.vocab_size, (2, 32))
    with torch.no_grad():
        ref = hf.eval()(torch.tensor(ids)).logits.numpy()
    mine = np.asarray(GPT(config).apply({"params": params}, jnp.asarray(ids))[0]["logits"])
    np.testing.assert_allclose(mine, ref, atol=1e-5, rtol=1e-5)

    (workdir / "config.json").write_text(json.dumps({"task": "lm_classify", "model": {}}))
    with pytest.raises(ValueError, match="lm_classify"):
        convert.convert(workdir, tmp_path / "hf2", "tl_to_hf")


def _clm_workdir(tmp_path):
    """A `clm` workdir with one real orbax checkpoint (step 5) of a tiny GPT whose params are
    random numpy (from the model's shapes: nothing is initialised on a device). Returns
    `(workdir, config, tokenizer, flat numpy params)`."""
    from tl_jax import checkpoint
    from tl_jax.data.bpe import BPETokenizer
    from tl_jax.interop import safetensors_io

    tok = BPETokenizer.train(["the cat sat on the mat", "a dog sat on a log"] * 20,
                             vocab_size=280)
    config = gpt_config("tiny", tok.vocab_size, max_len=32)
    shapes = nn.unbox(jax.eval_shape(GPT(config).init, jax.random.PRNGKey(0),
                                     jnp.zeros((1, 4), jnp.int32))["params"])
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(
        lambda s: np.float32(0.2) * rng.standard_normal(s.shape, np.float32), shapes)
    workdir = tmp_path / "run"
    tok.save(str(workdir / "tokenizer"))
    (workdir / "config.json").write_text(json.dumps({"task": "clm", "model": dict(
        size="tiny", vocab_size=0, max_len=32, dropout_rate=0.1, attention_dropout_rate=0.1,
        dtype="float32")}))
    ckpt = checkpoint.Checkpointer(str(workdir / "checkpoints"), async_save=False)
    ckpt.save(5, {"params": params, "step": np.int32(5)}, {"epoch": 0}, {"model": {}})
    ckpt.close()
    return workdir, config, tok, safetensors_io.flatten_params(params)


def _device_arrays_at_each_write(monkeypatch):
    """A list that gets, as each safetensors file is written, the shapes of the device arrays
    (jax.Arrays) made since this was called and still alive then."""
    from safetensors import numpy as st_numpy

    from tl_jax.interop import safetensors_io

    before = jax.live_arrays()  # held, so that no new array can reuse one of their ids
    known = {id(a) for a in before}
    seen = []

    def watched(write):
        def save_file(tensors, *args, **kwargs):
            seen.append(sorted(tuple(a.shape) for a in jax.live_arrays() if id(a) not in known))
            return write(tensors, *args, **kwargs)
        return save_file

    monkeypatch.setattr(gpt2, "save_file", watched(st_numpy.save_file))
    monkeypatch.setattr(safetensors_io, "save_file", watched(st_numpy.save_file))
    return seen


def test_convert_of_a_clm_workdir_puts_no_param_on_a_device(tmp_path, monkeypatch):
    """`tl_jax convert` of a GPT run reads the checkpoint into host numpy and writes it out from
    there: it used to copy the whole model onto device 0 first (generate's loading), which a
    model that only fits sharded does not survive. The file holds the checkpoint's tensors bit
    for bit; generation, which does want the params on a device, still gets them there."""
    from safetensors.numpy import load_file

    from tl_jax import generate
    from tl_jax.interop import convert, safetensors_io

    workdir, config, tok, flat = _clm_workdir(tmp_path)
    seen = _device_arrays_at_each_write(monkeypatch)
    convert.convert(workdir, tmp_path / "hf", "tl_to_hf")
    assert seen == [[]]  # one file (model.safetensors) written, no device array alive then
    written = load_file(tmp_path / "hf" / "model.safetensors")
    expected = gpt2.params_to_hf(safetensors_io.unflatten_params(flat), config)
    assert sorted(written) == sorted(expected)
    for name, value in expected.items():
        assert written[name].dtype == value.dtype and written[name].tobytes() == value.tobytes()

    model, params, _ = generate.load_model(str(workdir), on_device=False)
    assert all(type(v) is np.ndarray for v in jax.tree_util.tree_leaves(params))
    model, params, _ = generate.load_model(str(workdir))
    leaves = jax.tree_util.tree_leaves(params)
    assert all(isinstance(v, jax.Array) and v.devices() == {jax.devices()[0]} for v in leaves)
    out = generate.run_generate(str(workdir), prompts=["the cat"], max_new_tokens=4,
                                stop_at_eos=False)
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    ids = tok.encode("the cat")
    with torch.no_grad():
        ref = hf.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False,
                          pad_token_id=tok.eos_id)[0, len(ids):].tolist()
    assert out[0]["completion"] == tok.decode(ref)


def test_converted_tl_directory_loads_where_a_gpt2_directory_does(tmp_path):
    """`tl_jax convert` (hf_to_tl) output is usable by the GPT paths (generate --model,
    init_from): it used to fail with 'no model.safetensors' or KeyError 'n_embd'."""
    from tl_jax import generate
    from tl_jax.data.bpe import BPETokenizer
    from tl_jax.interop import convert

    tok = BPETokenizer.train(["the cat sat on the mat", "a dog sat on a log"] * 20,
                             vocab_size=280)
    hf = random_hf(2, vocab_size=tok.vocab_size, n_positions=32, n_embd=32, n_layer=2, n_head=4)
    hf.save_pretrained(tmp_path / "hf")
    tok.save(str(tmp_path / "hf"))
    convert.convert(tmp_path / "hf", tmp_path / "tl", "hf_to_tl")
    config, params = gpt2.load_pretrained(tmp_path / "tl")
    _, hf_params = gpt2.load_pretrained(tmp_path / "hf")
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, hf_params)
    outs = [generate.run_generate(str(tmp_path / d), prompts=["the cat"], max_new_tokens=5,
                                  stop_at_eos=False) for d in ("hf", "tl")]
    assert outs[0] == outs[1]
    assert gpt2.load_config(tmp_path / "tl") == gpt2.load_config(tmp_path / "hf")
    with pytest.raises(ValueError, match="model_type"):
        (tmp_path / "bert").mkdir()
        (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
        gpt2.load_config(tmp_path / "bert")


def test_generation_gets_the_params_of_a_gpt2_directory_on_a_device_once(tmp_path):
    """load_model places a GPT-2 directory's params (read as numpy) on the device, as it does a
    workdir's: left numpy, every jitted call (a decoding chunk, a scored batch) copied the whole
    model to the device again. on_device=False keeps them as read."""
    from tl_jax import generate
    from tl_jax.data.bpe import BPETokenizer

    tok = BPETokenizer.train(["the cat sat on the mat", "a dog sat on a log"] * 20,
                             vocab_size=280)
    hf = random_hf(4, vocab_size=tok.vocab_size, n_positions=32, n_embd=32, n_layer=2, n_head=4)
    hf.save_pretrained(tmp_path)
    tok.save(str(tmp_path))
    _, host, _ = generate.load_model(str(tmp_path), on_device=False)
    assert all(type(v) is np.ndarray for v in jax.tree_util.tree_leaves(host))
    _, placed, _ = generate.load_model(str(tmp_path))
    for v in jax.tree_util.tree_leaves(placed):
        assert isinstance(v, jax.Array) and v.devices() == {jax.devices()[0]}
    jax.tree_util.tree_map(np.testing.assert_array_equal, placed, host)


def test_gpt2_checkpoint_of_a_shape_outside_the_size_table(tmp_path, data_dir, monkeypatch):
    """A GPT-2 checkpoint whose shape no size names (as distilgpt2's 6 x 768): pretraining from
    it is refused with the overrides that fit, works with them, and the workdir it writes is
    read back at that shape by generate and by the classifier's warm start."""
    from tl_jax import config as config_lib, generate, train, warm_start
    from tl_jax.data.bpe import BPETokenizer
    from tl_jax.tasks import lm_classify

    monkeypatch.setenv("TL_JAX_DATA_DIR", str(data_dir))
    texts = [line for line in open(data_dir / "polarity_sentences.jsonl")][:200]
    tok = BPETokenizer.train(texts, vocab_size=300)
    hf = random_hf(3, vocab_size=tok.vocab_size, n_positions=48, n_embd=24, n_layer=3, n_head=2)
    hf.save_pretrained(tmp_path / "hf")
    tok.save(str(tmp_path / "hf"))
    base = [f"init_from={tmp_path / 'hf'}", f"data.corpus={data_dir}/polarity_sentences.jsonl",
            "train.steps=2", "data.batch_size=8", "data.eval_batch_size=8", "data.seq_len=16",
            "train.eval_every=2", "train.checkpoint_every=2", "train.progress=False"]
    shape = ["model.num_layers=3", "model.embed_dim=24", "model.num_heads=2",
             "model.mlp_dim=96", "model.max_len=48"]
    with pytest.raises(warm_start.WarmStartError,
                       match="--config.model.num_layers=3 --config.model.embed_dim=24 "
                             "--config.model.num_heads=2 --config.model.mlp_dim=96 "
                             "--config.model.max_len=48"):
        train.train_and_evaluate(config_lib.load_config("configs/gpt_pretrain.py:tiny", base),
                                 str(tmp_path / "refused"))
    lm_dir = tmp_path / "lm"
    result = train.train_and_evaluate(
        config_lib.load_config("configs/gpt_pretrain.py:tiny", base + shape), str(lm_dir))
    assert result.summary["step"] == 2
    model, params, _ = generate.load_model(str(lm_dir))
    cfg = model.config
    assert (cfg.num_layers, cfg.embed_dim, cfg.num_heads, cfg.mlp_dim, cfg.max_len) == (
        3, 24, 2, 96, 48)
    np.testing.assert_array_equal(params["h_2"]["mlp"]["proj"]["kernel"],
                                  jax.device_get(result.state["params"]["h_2"]["mlp"]["proj"]["kernel"]))
    cls_cfg = config_lib.load_config("configs/gpt_finetune_classify.py:tiny", [
        f"init_from={lm_dir}", "data.max_seq_length=32"])
    _, cls_model = lm_classify.resolve_model(cls_cfg, [])
    assert (cls_model.num_layers, cls_model.embed_dim, cls_model.max_len) == (3, 24, 48)


@pytest.mark.parametrize("saved, expected", [
    ('{"task": "bert_pretrain", "model": {"size": "tiny"}}',
     r"was trained with task='bert_pretrain'; lm_classify starts from a 'clm' \(GPT language "
     r"model\) workdir .*configs/finetune_classify.py"),
    ('{"task": "clm", "model": {', r"config.json:1: invalid JSON \(.*\); it is the run's config"),
])
def test_the_gpt_classifier_refuses_a_workdir_that_is_not_a_gpt_lm(tmp_path, saved, expected):
    """`init_from` a BERT workdir (or one with a broken config.json) is named as such, not met
    later by a tokenizer error ("no <|endoftext|> token") or a JSON traceback."""
    from tl_jax import config as config_lib
    from tl_jax.tasks import lm_classify

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.json").write_text(saved)
    cfg = config_lib.load_config("configs/gpt_finetune_classify.py:tiny",
                                 [f"init_from={tmp_path}"])
    with pytest.raises(ValueError, match=expected):
        lm_classify.resolve_model(cfg, [])

"""Hugging Face BERT interop: parity with transformers (PyTorch CPU), export, round trip, errors."""
import fractions
import io
import json
import re
import shutil
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from tl_jax import interop
from tl_jax.interop import bert as hf_bert
from tl_jax.interop import convert, safetensors_io
from tl_jax.models import bert

# (vocab, hidden, layers, heads, intermediate, act): odd sizes catch transposes that happen to fit.
SHAPES = [
    (67, 16, 1, 2, 24, "gelu"),
    (101, 32, 2, 4, 37, "gelu"),
    (53, 24, 3, 3, 40, "gelu_new"),
]


def hf_random_model(tmp_path, shape, seed=0, heads=True, **save_kwargs):
    vocab, hidden, layers, num_heads, inter, act = shape
    config = transformers.BertConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=num_heads, intermediate_size=inter, hidden_act=act,
        max_position_embeddings=32, type_vocab_size=3)
    torch.manual_seed(seed)
    cls = transformers.BertForPreTraining if heads else transformers.BertModel
    model = cls(config).eval()
    with torch.no_grad():  # make biases and LayerNorms non-trivial so every tensor matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path / f"hf_{seed}"
    model.save_pretrained(path, **save_kwargs)
    return model, path


def mean_pool(hidden, mask):
    mask = mask[..., None].astype(np.float32)
    return (hidden * mask).sum(1) / mask.sum(1)


@pytest.mark.parametrize("shape", SHAPES)
def test_parity_with_transformers_random_init(tmp_path, shape):
    torch_model, path = hf_random_model(tmp_path, shape)
    config, params, report = hf_bert.load(path)
    assert report.unused == [] and report.missing == []
    rng = np.random.default_rng(0)
    ids = rng.integers(0, shape[0], (3, 13))
    segments = rng.integers(0, 3, (3, 13))
    mask = np.ones((3, 13), np.int64)
    mask[1, 9:] = 0
    mask[2, 4:] = 0
    with torch.no_grad():
        ref = torch_model(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(segments),
                          attention_mask=torch.tensor(mask), output_hidden_states=True)
    positions = rng.integers(0, 4, (3, 5))
    out, inter = bert.BertForPreTraining(config).apply(
        {"params": params}, ids, segments, mask, masked_positions=positions)
    real = mask == 1
    for i, hidden in enumerate(ref.hidden_states):
        ours = np.asarray(inter["embeddings" if i == 0 else f"layer_{i}"])
        np.testing.assert_allclose(ours[real], hidden.numpy()[real], atol=1e-5, rtol=0)
    expected_mlm = np.take_along_axis(ref.prediction_logits.numpy(), positions[..., None], axis=1)
    np.testing.assert_allclose(out["mlm_logits"], expected_mlm, atol=1e-5, rtol=0)
    np.testing.assert_allclose(out["nsp_logits"], ref.seq_relationship_logits.numpy(), atol=1e-5,
                               rtol=0)


def real_sentences(data_dir, n=6):
    lines = (data_dir / "austen.jsonl").read_text().splitlines()[200:200 + n // 2]
    lines += (data_dir / "enwiki_sample.jsonl").read_text().splitlines()[50:50 + n - n // 2]
    return [json.loads(line)["text"][:300] for line in lines]


def test_minilm_parity_on_real_sentences(data_dir):
    model_dir = data_dir / "models" / "all-MiniLM-L6-v2"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a headless load must not invent anything
        config, params, report = hf_bert.load(model_dir, with_heads=False)
    assert (config.num_layers, config.hidden_size, config.num_heads) == (6, 384, 12)
    assert report.unused == [] and report.missing == []
    assert report.derived == ["embeddings.position_ids"]
    assert len(report.used) == 103

    texts = real_sentences(data_dir)
    hf_tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    enc = hf_tok(texts, padding=True, truncation=True, max_length=96, return_tensors="np")
    torch_model = transformers.BertModel.from_pretrained(model_dir).eval()
    with torch.no_grad():
        ref = torch_model(**{k: torch.tensor(v) for k, v in enc.items()}).last_hidden_state.numpy()
    out, _ = bert.BertModel(config).apply(
        {"params": params}, enc["input_ids"], enc["token_type_ids"], enc["attention_mask"])
    ours = np.asarray(out["sequence_output"])
    real = enc["attention_mask"] == 1
    assert (~real).any()  # the batch really has padding
    np.testing.assert_allclose(ours[real], ref[real], atol=1e-5, rtol=0)
    np.testing.assert_allclose(mean_pool(ours, enc["attention_mask"]),
                               mean_pool(ref, enc["attention_mask"]), atol=1e-5, rtol=0)


def test_tokenizer_ids_match_hf_on_real_text(data_dir, tmp_path):
    model_dir = data_dir / "models" / "all-MiniLM-L6-v2"
    texts = real_sentences(data_dir, n=40)
    expected = transformers.AutoTokenizer.from_pretrained(model_dir)(texts)["input_ids"]
    from_json = hf_bert.load_tokenizer_for(model_dir)
    assert [e.ids for e in from_json.encode_batch(texts)] == expected
    # The vocab.txt path (no tokenizer.json) gives the same ids.
    vocab_only = tmp_path / "vocab_only"
    vocab_only.mkdir()
    for name in ("config.json", "vocab.txt", "tokenizer_config.json"):
        shutil.copy(model_dir / name, vocab_only / name)
    from_vocab = hf_bert.load_tokenizer_for(vocab_only)
    assert [e.ids for e in from_vocab.encode_batch(texts)] == expected
    assert max(max(ids) for ids in expected) < 30522
    # The tl_jax Tokenizer (no [CLS]/[SEP]: the example builder adds them) agrees as well.
    tl_tok = hf_bert.load_tl_tokenizer(vocab_only)
    assert tl_tok.vocab_size == 30522
    assert tl_tok.encode_batch(texts) == [ids[1:-1] for ids in expected]


@pytest.mark.parametrize("with_heads", [True, False])
def test_export_loads_in_transformers_without_missing_keys(tmp_path, with_heads):
    config = bert.BertConfig(vocab_size=61, hidden_size=16, num_layers=2, num_heads=2,
                             intermediate_size=20, max_position_embeddings=16)
    model = bert.BertForPreTraining(config) if with_heads else bert.BertModel(config)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"])
    out_dir = hf_bert.export(params, config, tmp_path / "out", with_heads=with_heads)
    for cls in (transformers.BertModel, transformers.BertForPreTraining):
        if cls is transformers.BertForPreTraining and not with_heads:
            continue
        loaded, info = cls.from_pretrained(out_dir, output_loading_info=True)
        assert not info["missing_keys"] and not info["mismatched_keys"], info
        if (cls is transformers.BertModel) != with_heads:  # same architecture: nothing extra
            assert not info["unexpected_keys"], info
    ids = np.random.default_rng(1).integers(0, 61, (2, 7))
    ours, _ = model.apply({"params": params}, ids)
    torch_model = (transformers.BertForPreTraining if with_heads else transformers.BertModel)
    torch_model = torch_model.from_pretrained(out_dir).eval()
    with torch.no_grad():
        ref = torch_model(input_ids=torch.tensor(ids))
    if with_heads:
        np.testing.assert_allclose(ours["mlm_logits"], ref.prediction_logits.numpy(), atol=1e-5)
        np.testing.assert_allclose(ours["nsp_logits"], ref.seq_relationship_logits.numpy(),
                                   atol=1e-5)
    else:
        np.testing.assert_allclose(ours["sequence_output"], ref.last_hidden_state.numpy(),
                                   atol=1e-5)
        np.testing.assert_allclose(ours["pooled_output"], ref.pooler_output.numpy(), atol=1e-5)


def test_round_trip_is_exact(tmp_path):
    _, path = hf_random_model(tmp_path, SHAPES[1])
    config, params, _ = hf_bert.load(path)
    hf_bert.export(params, config, tmp_path / "back", with_heads=True)
    original = load_file(path / "model.safetensors")
    back = load_file(tmp_path / "back" / "model.safetensors")
    assert sorted(back) == sorted(original)
    for name, value in original.items():
        assert back[name].dtype == value.dtype and np.array_equal(back[name], value), name
    # tl_jax -> HF -> tl_jax is exact too.
    _, again, _ = hf_bert.load(tmp_path / "back")
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, again)


def test_convert_both_directions_on_minilm(data_dir, tmp_path, capsys):
    model_dir = data_dir / "models" / "all-MiniLM-L6-v2"
    convert.convert(model_dir, tmp_path / "tl", "hf_to_tl")
    # It accounts for every tensor (the heads a headless checkpoint never had are not "missing").
    assert ("103 tensors used, 1 derived (buffers/tied), 0 unused, 0 missing"
            in capsys.readouterr().out)
    config, params, family = convert.load_tl_params(tmp_path / "tl")
    assert family == "bert" and config.hidden_size == 384
    assert "mlm_head" not in params and "encoder" in params  # headless stays headless
    assert (tmp_path / "tl" / "vocab.txt").exists() and (tmp_path / "tl" / "tokenizer.json").exists()
    convert.convert(tmp_path / "tl", tmp_path / "hf", "tl_to_hf")
    original = load_file(model_dir / "model.safetensors")
    back = load_file(tmp_path / "hf" / "model.safetensors")
    # position_ids is a buffer (arange) that current transformers neither saves nor needs.
    assert set(original) - set(back) == {"embeddings.position_ids"} and set(back) <= set(original)
    for name in back:
        assert np.array_equal(back[name], original[name]), name
    _, info = transformers.BertModel.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    with pytest.raises(ValueError, match="direction must be one of"):
        convert.convert(model_dir, tmp_path / "x", "sideways")
    # The default direction is hf_to_tl: a tl_jax directory given without it is named as such.
    with pytest.raises(ValueError, match="is a tl_jax weights directory.*--direction=tl_to_hf"):
        convert.convert(tmp_path / "tl", tmp_path / "x", "hf_to_tl")


def test_convert_refuses_a_missing_input_a_wrong_direction_and_an_output_inside_the_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="input .*nowhere does not exist"):
        convert.convert(tmp_path / "nowhere", tmp_path / "out", "tl_to_hf")
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "config.json").write_text('{"task": "bert_pretrain"}')
    with pytest.raises(ValueError, match="is a `tl_jax train` workdir.*--direction=tl_to_hf"):
        convert.convert(workdir, tmp_path / "out", "hf_to_tl")
    assert not (tmp_path / "out").exists()
    (workdir / "tokenizer").mkdir()
    (workdir / "tokenizer" / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    for inside in ("tokenizer", "checkpoints/hf"):
        with pytest.raises(ValueError, match=f"inside the run's {inside.split('/')[0]}/ folder"):
            convert.convert(workdir, workdir / inside, "tl_to_hf")
    assert (workdir / "tokenizer" / "vocab.txt").read_text() == "[PAD]\n[UNK]\n"


def test_convert_refuses_to_overwrite_a_run_or_another_kind_of_checkpoint(tmp_path):
    # Its config.json was overwritten: the run no longer resumed, the HF directory no longer
    # loaded (a tl_jax config.json beside its model.safetensors).
    hf = tmp_path / "hf"
    transformers.BertModel(transformers.BertConfig(
        vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=8)).save_pretrained(hf)
    (hf / "vocab.txt").write_text("\n".join(f"t{i}" for i in range(30)) + "\n")
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "config.json").write_text('{"task": "bert_pretrain"}')
    with pytest.raises(ValueError, match="destination .*run is a `tl_jax train` workdir"):
        convert.convert(hf, workdir, "hf_to_tl")
    assert (workdir / "config.json").read_text() == '{"task": "bert_pretrain"}'
    other = tmp_path / "other_hf"
    shutil.copytree(hf, other)
    before = (other / "config.json").read_text()
    with pytest.raises(ValueError, match="holds a Hugging Face checkpoint, whose config.json"):
        convert.convert(hf, other, "hf_to_tl")
    assert (other / "config.json").read_text() == before
    tl = convert.convert(hf, tmp_path / "tl")
    convert.convert(hf, tl)  # converting again into the same kind of directory is fine
    tl2 = convert.convert(hf, tmp_path / "tl2")
    with pytest.raises(ValueError, match="holds tl_jax weights, whose config.json"):
        convert.convert(tl, tl2, "tl_to_hf")
    assert convert.is_tl_dir(tl2) and "family" in (tl2 / "config.json").read_text()
    convert.convert(tl, other, "tl_to_hf")  # an HF export over an HF directory: allowed


def test_convert_says_it_replaces_an_earlier_export_and_refuses_a_folder_of_other_files(
        tmp_path, capsys):
    hf = tmp_path / "hf"
    transformers.BertModel(transformers.BertConfig(
        vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=8)).save_pretrained(hf)
    # New and empty folders are written without a word about replacing anything.
    (tmp_path / "empty").mkdir()
    for name in ("new", "empty"):
        convert.convert(hf, tmp_path / name)
        assert "replacing" not in capsys.readouterr().out
    # Converting again over the earlier export replaces it, and says so (naming what it held).
    convert.convert(hf, tmp_path / "new")
    out = capsys.readouterr().out
    assert f"{tmp_path / 'new'} already holds tl_jax weights (config.json, params.safetensors" \
           in out and "replacing it" in out
    # A folder of other files had the export's files mixed in among them, silently.
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "README.md").write_text("mine")
    with pytest.raises(ValueError, match=r"destination .*notes is not empty \(README.md\) and "
                                         r"holds no checkpoint"):
        convert.convert(hf, notes)
    assert sorted(p.name for p in notes.iterdir()) == ["README.md"]
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ValueError, match=r"destination .*a_file is a file"):
        convert.convert(hf, tmp_path / "a_file")


def test_missing_heads_are_initialised_with_a_warning(data_dir):
    model_dir = data_dir / "models" / "all-MiniLM-L6-v2"
    with pytest.warns(UserWarning, match="freshly initialised.*mlm_head/transform/kernel"):
        config, params, report = hf_bert.load(model_dir, with_heads=True)
    assert sorted(report.missing) == sorted(
        ["mlm_head/transform/kernel", "mlm_head/transform/bias", "mlm_head/transform_norm/scale",
         "mlm_head/transform_norm/bias", "mlm_head/output_bias", "nsp_head/dense/kernel",
         "nsp_head/dense/bias"])
    assert "missing (freshly initialised): mlm_head" in str(report)
    kernel = np.asarray(params["mlm_head"]["transform"]["kernel"])
    assert kernel.shape == (384, 384) and 0.01 < kernel.std() < 0.03  # initializer_range 0.02
    assert params["mlm_head"]["output_bias"].shape == (30522,)
    # The encoder is the checkpoint's, untouched by the fresh init of the heads.
    original = load_file(model_dir / "model.safetensors")
    np.testing.assert_array_equal(params["bert"]["embeddings"]["word_embeddings"]["embedding"],
                                  original["embeddings.word_embeddings.weight"])


class _Classifier(nn.Module):
    """A downstream model with BERT nested under `bert/` and a head HF knows nothing about."""

    config: bert.BertConfig

    @nn.compact
    def __call__(self, ids):
        outputs, _ = bert.BertModel(self.config, name="bert")(ids)
        return nn.Dense(3, name="classifier")(outputs["pooled_output"])


def test_init_from_hf_merges_into_a_nested_tree(tmp_path):
    torch_model, path = hf_random_model(tmp_path, SHAPES[0])
    config = hf_bert.read_hf_config(path)
    model = _Classifier(config)
    fresh = nn.unbox(model.init(jax.random.PRNGKey(3), jnp.zeros((1, 4), jnp.int32))["params"])
    with pytest.warns(UserWarning, match="keep their fresh initialisation"):
        params, report = hf_bert.init_from_hf(fresh, path)
    assert report.missing == ["classifier/bias", "classifier/kernel"]
    assert all(name.startswith("cls.") for name in report.unused) and len(report.unused) == 7
    np.testing.assert_array_equal(params["classifier"]["kernel"], fresh["classifier"]["kernel"])
    ids = np.random.default_rng(2).integers(0, SHAPES[0][0], (2, 6))
    with torch.no_grad():
        ref = torch_model.bert(input_ids=torch.tensor(ids)).pooler_output.numpy()
    pooled, _ = bert.BertModel(config).apply({"params": params["bert"]}, ids)
    np.testing.assert_allclose(pooled["pooled_output"], ref, atol=1e-5)

    # The same through convert.init_from, from a tl_jax directory of a pretraining tree.
    full_config, full, _ = hf_bert.load(path)
    convert.save_tl_params(tmp_path / "tl", full_config, full, "bert")
    params2, report2 = convert.init_from(fresh, tmp_path / "tl", warn=False)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params2["bert"], params["bert"])
    assert report2.missing == ["classifier/bias", "classifier/kernel"]
    assert all(p.startswith(("mlm_head/", "nsp_head/")) for p in report2.unused)

    # A vocabulary that differs from the model's is a shape error naming the tensor.
    small = _Classifier(config.replace(vocab_size=config.vocab_size - 1))
    other = nn.unbox(small.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"])
    with pytest.raises(ValueError, match="embeddings.word_embeddings.weight maps to "
                                         "bert/embeddings/word_embeddings/embedding"):
        hf_bert.init_from_hf(other, path)


def test_init_from_hf_names_boxed_params_and_how_to_unbox_them(tmp_path):
    # model.init's params, not unboxed, failed as "'LogicallyPartitioned' object has no
    # attribute 'shape'".
    _, path = hf_random_model(tmp_path, SHAPES[0])
    model = _Classifier(hf_bert.read_hf_config(path))
    boxed = model.init(jax.random.PRNGKey(3), jnp.zeros((1, 4), jnp.int32))["params"]
    with pytest.raises(ValueError, match=r"init_from_hf: the params hold boxed leaves \(\w+ at "
                                         r"bert/.*\), as model.init returns them; unbox them "
                                         r"first: flax.linen.unbox"):
        hf_bert.init_from_hf(boxed, path, warn=False)
    hf_bert.init_from_hf(nn.unbox(boxed), path, warn=False)


def test_a_train_workdirs_config_read_as_a_hf_checkpoint_is_named_as_such(tmp_path):
    # A fine-tuned workdir given to read_hf_config / init_from_hf / convert.init_from said
    # "model_type=None, expected 'bert'; this is not a BERT checkpoint" or "has no model_type".
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({"task": "classify", "train": {"steps": 2},
                                                     "model": {"size": "tiny"}}))
    message = (r"run/config.json is the config of a `tl_jax train` workdir \(task 'classify'\), "
               r"not of a Hugging Face checkpoint: export the run's weights with `tl_jax convert "
               r"--input=.*run --output=DIR` and give DIR")
    for read in (hf_bert.read_hf_config, lambda d: hf_bert.init_from_hf({}, d),
                 lambda d: convert.init_from({}, d)):
        with pytest.raises(ValueError, match=message):
            read(workdir)


def test_layers_beyond_the_config_are_an_error_unless_the_model_keeps_fewer(tmp_path):
    # config.json with num_hidden_layers=2 over 3 layers of weights loaded as a 2-layer model:
    # convert listed the third layer as unused and exited 0, init_from said "encoder loaded".
    _, path = hf_random_model(tmp_path, SHAPES[2])  # 3 layers
    config = hf_bert.read_hf_config(path)
    model = _Classifier(config.replace(num_layers=1))  # model.num_layers=1 of a fine-tuning run
    fresh = nn.unbox(model.init(jax.random.PRNGKey(3), jnp.zeros((1, 4), jnp.int32))["params"])
    params, report = hf_bert.init_from_hf(fresh, path, warn=False)
    assert any(name.startswith("encoder.layer.2.") for name in report.unused)
    full, _, _ = hf_bert.load(path)

    hf_config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(dict(hf_config, num_hidden_layers=2)))
    expected = re.escape(f"{path / 'model.safetensors'} holds encoder layers up to "
                         "encoder.layer.2 (3 layers) but config.json has num_hidden_layers=2")
    with pytest.raises(ValueError, match=expected):
        hf_bert.load(path)
    with pytest.raises(ValueError, match=expected):
        hf_bert.init_from_hf(fresh, path, warn=False)
    with pytest.raises(ValueError, match=expected):
        hf_bert.load_flat_params(path)
    with pytest.raises(ValueError, match=expected):
        convert.convert(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_reads_pytorch_bin_and_lists_unused_tensors(tmp_path):
    torch_model, path = hf_random_model(tmp_path, SHAPES[0])
    (path / "model.safetensors").unlink()  # an older checkpoint: a PyTorch pickle only
    torch.save(torch_model.state_dict(), path / "pytorch_model.bin")
    assert safetensors_io.find_weight_file(path).name == "pytorch_model.bin"
    state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    state["classifier.weight"] = np.zeros((2, 16), np.float32)  # e.g. a fine-tuned checkpoint
    _, params, report = hf_bert.load(path)
    flat, report2 = hf_bert.params_from_hf_tensors(state, hf_bert.read_hf_config(path))
    assert report2.unused == ["classifier.weight"] and report2.missing == []
    assert "cls.predictions.decoder.weight" in report2.derived  # tied: checked, not stored twice
    np.testing.assert_array_equal(flat["bert/embeddings/word_embeddings/embedding"],
                                  params["bert"]["embeddings"]["word_embeddings"]["embedding"])


def test_a_broken_pytorch_bin_is_named_without_torchs_advice(tmp_path):
    # torch.load(weights_only=True) answers random bytes with "Re-running `torch.load` with
    # `weights_only` set to `False` will likely succeed, but it can result in arbitrary code
    # execution": quoted as it was, that read like advice.
    path = tmp_path / "hf"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(MINILM_HF_CONFIG))
    weights = path / "pytorch_model.bin"
    buffer = io.BytesIO()
    torch.save({"a": torch.zeros(64)}, buffer)
    objects = io.BytesIO()
    torch.save({"a": fractions.Fraction(1, 2)}, objects)
    for data, reason in (
            (np.random.default_rng(0).bytes(256),
             "its bytes are neither a PyTorch zip archive nor a pickle of tensors"),
            (objects.getvalue(), "it pickles fractions.Fraction, not only tensors"),
            (buffer.getvalue()[:200], "RuntimeError: PytorchStreamReader failed reading zip "
                                      "archive: failed finding central directory)"),
            (b"", "the file is empty or ends too early")):
        weights.write_bytes(data)
        with pytest.raises(ValueError) as e:
            hf_bert.load(path)
        assert str(e.value).startswith(f"{weights} is not a readable PyTorch checkpoint ({reason}")
        assert "weights_only" not in str(e.value)


def test_reads_bfloat16_safetensors_as_float32(tmp_path):
    """Many published checkpoints are stored in bfloat16: they load, upcast exactly."""
    torch_model, path = hf_random_model(tmp_path, SHAPES[0])
    from safetensors.torch import save_file as save_torch
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in torch_model.state_dict().items()}
    save_torch(state, str(path / "model.safetensors"))
    tensors, _ = safetensors_io.read_hf_tensors(path)
    name = "bert.embeddings.word_embeddings.weight"
    assert tensors[name].dtype == np.float32
    np.testing.assert_array_equal(tensors[name], state[name].float().numpy())
    _, params, report = hf_bert.load(path)
    assert report.missing == []


def test_errors_name_what_is_wrong(tmp_path, data_dir):
    with pytest.raises(FileNotFoundError, match="not a Hugging Face checkpoint: no config.json"):
        hf_bert.load(tmp_path)
    roberta = tmp_path / "roberta"
    roberta.mkdir()
    (roberta / "config.json").write_text(json.dumps({"model_type": "roberta", "vocab_size": 5}))
    with pytest.raises(ValueError, match="model_type='roberta', expected 'bert'; this is not a "
                                         "BERT checkpoint"):
        hf_bert.load(roberta)
    with pytest.raises(ValueError, match="no tl_jax interop for model_type 'roberta'"):
        interop.family_of(roberta)

    _, path = hf_random_model(tmp_path, SHAPES[0])
    config_only = tmp_path / "config_only"
    config_only.mkdir()
    shutil.copy(path / "config.json", config_only / "config.json")
    with pytest.raises(FileNotFoundError, match="holds no weights: expected one of "
                                                "model.safetensors"):
        hf_bert.load(config_only)

    tensors = load_file(path / "model.safetensors")
    tensors["bert.encoder.layer.0.intermediate.dense.weight"] = np.zeros((16, 24), np.float32)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"'bert.encoder.layer.0.intermediate.dense.weight' has "
                                         r"shape \(16, 24\), but config.json implies \(24, 16\)"):
        hf_bert.load(path)

    # A tokenizer whose vocabulary disagrees with the weights.
    mismatch = tmp_path / "mismatch"
    shutil.copytree(data_dir / "models" / "all-MiniLM-L6-v2", mismatch)
    hf_config = json.loads((mismatch / "config.json").read_text())
    hf_config["vocab_size"] = 30000
    (mismatch / "config.json").write_text(json.dumps(hf_config))
    with pytest.raises(ValueError, match="has 30522 entries but the model's vocab_size is 30000"):
        hf_bert.load_tokenizer_for(mismatch)

    config = bert.BertConfig(vocab_size=30, hidden_size=8, num_layers=1, num_heads=2,
                             intermediate_size=8, adapter_size=2)
    params = nn.unbox(bert.BertModel(config).init(jax.random.PRNGKey(0),
                                                  jnp.zeros((1, 2), jnp.int32))["params"])
    with pytest.raises(ValueError, match="HF BERT has no adapters"):
        hf_bert.export(params, config, tmp_path / "nope", with_heads=False)
    with pytest.raises(ValueError, match="mlm_head/transform/kernel' is missing"):
        hf_bert.export(params, config.replace(adapter_size=0), tmp_path / "nope", with_heads=True)


MINILM_HF_CONFIG = dict(model_type="bert", vocab_size=30522, hidden_size=384,
                        num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)


@pytest.mark.parametrize("field, value, expected", [
    ("num_hidden_layers", "6", 'num_hidden_layers must be an integer, got "6"'),
    ("num_hidden_layers", None, "num_hidden_layers must be an integer, got null"),
    ("vocab_size", "30522", 'vocab_size must be an integer, got "30522"'),
    ("hidden_size", 384.0, "hidden_size must be an integer, got 384.0"),  # transformers agrees
    ("num_attention_heads", True, "num_attention_heads must be an integer, got true"),
    ("hidden_dropout_prob", "0.1", 'hidden_dropout_prob must be a number, got "0.1"'),
    ("hidden_act", None, "hidden_act must be a string, got null"),
])
def test_a_config_field_of_the_wrong_type_is_named_with_its_file(tmp_path, field, value,
                                                                   expected):
    # A hand-edited config.json ended in a bare TypeError from BertConfig ("'<=' not supported
    # between instances of 'str' and 'int'"), or from numpy's reshape for 384.0, in convert,
    # extract, fill_mask and init_from alike.
    (tmp_path / "config.json").write_text(json.dumps({**MINILM_HF_CONFIG, field: value}))
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'config.json'}: {expected}")):
        hf_bert.read_hf_config(tmp_path)


def test_a_tl_weights_config_of_the_wrong_type_is_named_with_its_file(tmp_path):
    config = bert.BertConfig(vocab_size=30, hidden_size=8, num_layers=1, num_heads=2,
                             intermediate_size=8)
    params = nn.unbox(bert.BertModel(config).init(jax.random.PRNGKey(0),
                                                  jnp.zeros((1, 2), jnp.int32))["params"])
    convert.save_tl_params(tmp_path, config, params, "bert")
    meta = json.loads((tmp_path / "config.json").read_text())
    assert convert.load_tl_params(tmp_path)[0] == config
    for change, expected in (
            ({"num_layers": "1"}, 'config.num_layers must be an integer, got "1"'),
            ({"hidden_size": 8.0}, "config.hidden_size must be an integer, got 8.0"),
            ({"vocab_size": None}, "config.vocab_size must be an integer, got null"),
            ({"layer_norm_eps": "1e-12"}, 'config.layer_norm_eps must be a number, got "1e-12"'),
            ({"num_layer": 1}, "not a BertConfig: unknown field(s) ['config.num_layer']")):
        bad = dict(meta, config={**meta["config"], **change})
        (tmp_path / "config.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'config.json'}: {expected}")):
            convert.load_tl_params(tmp_path)
    # The class is one of tl_jax's configs, not any module a file names (it was imported, and
    # a bad name was an AttributeError / ModuleNotFoundError); the config an object.
    for change, expected in (
            ({"config_class": "os.system"}, 'config_class "os.system" is not one tl_jax writes'),
            ({"config_class": 3}, "config_class 3 is not one tl_jax writes"),
            ({"config": [1, 2]}, "config must be a JSON object (the BertConfig fields)")):
        (tmp_path / "config.json").write_text(json.dumps(dict(meta, **change)))
        with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'config.json'}: {expected}")):
            convert.load_tl_params(tmp_path)


def test_tl_weights_with_more_layers_than_their_config_are_an_error(tmp_path, capsys):
    # A config.json declaring 1 layer over 2 layers of params: warm_start listed layer_1 as
    # "unused source tensors" and fine-tuned a 1-layer model, dropping a trained layer.
    import ml_collections

    from tl_jax import warm_start
    from tl_jax.data.tokenizer import Tokenizer
    from tl_jax.models import electra, gpt
    from tl_jax.tasks import downstream

    tokenizer = Tokenizer.train_wordpiece([["the cat sat on the mat", "a dog ran"] * 4], 40)
    config = bert.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=8, num_layers=2,
                             num_heads=2, intermediate_size=8)
    params = nn.unbox(bert.BertModel(config).init(jax.random.PRNGKey(0),
                                                  jnp.zeros((1, 2), jnp.int32))["params"])
    weights = tmp_path / "weights"
    convert.save_tl_params(weights, config, params, "bert")
    tokenizer.save(str(weights))
    one = bert.BertModel(config.replace(num_layers=1))
    target = {"bert": nn.unbox(one.init(jax.random.PRNGKey(1),
                                        jnp.zeros((1, 2), jnp.int32))["params"])}

    # model.num_layers=1 over a consistent directory: the bottom layer, said twice.
    def encoder(num_layers):
        return downstream.Encoder.from_config(ml_collections.ConfigDict(dict(
            task="classify", init_from=str(weights),
            model=dict(num_layers=num_layers, dropout_rate=0.1, attention_dropout_rate=0.1,
                       dtype="float32"),
            data=dict(tokenizer="", max_seq_length=8))), [])

    capsys.readouterr()
    enc = encoder(1)
    assert enc.model_config.num_layers == 1
    loaded = enc.load_weights(target)
    np.testing.assert_array_equal(
        loaded["bert"]["encoder"]["layer_0"]["mlp"]["output"]["kernel"],
        params["encoder"]["layer_0"]["mlp"]["output"]["kernel"])
    out = capsys.readouterr().out
    assert f"model.num_layers=1: the bottom 1 of the 2 layers of {weights}" in out
    assert "unused source tensors: bert/encoder/layer_1/" in out

    # The same params under a config.json that says 1 layer: an error wherever it is read.
    meta = json.loads((weights / "config.json").read_text())
    meta["config"]["num_layers"] = 1
    (weights / "config.json").write_text(json.dumps(meta))
    expected = re.escape(
        f"{weights / 'params.safetensors'} holds 2 layers (layer indices 0-1) but "
        f"{weights / 'config.json'} declares config.num_layers=1, so layer(s) 1 would be "
        "dropped. Correct config.num_layers in config.json; to fine-tune only the bottom "
        "layers, keep the config as it is and set model.num_layers instead.")
    with pytest.raises(ValueError, match=expected):
        convert.load_tl_params(weights)
    with pytest.raises(ValueError, match=expected):
        warm_start.warm_start(target, str(weights), only="bert/")
    with pytest.raises(ValueError, match=expected):
        encoder(1)
    with pytest.raises(ValueError, match=expected):
        convert.init_from(target, weights, warn=False)

    # ELECTRA pairs count each half; GPT counts its blocks h_<i>.
    pair = electra.ElectraConfig(discriminator=config, generator_hidden_size=8,
                                 generator_num_heads=2, generator_intermediate_size=8,
                                 generator_num_layers=1)
    flat = {"bert/encoder/layer_1/x": 0, "generator/encoder/layer_0/x": 0,
            "generator/encoder/layer_1/x": 0, "generator/encoder/layer_3/x": 0}
    with pytest.raises(ValueError, match=r"holds 3 layers \(layer indices 0-1, 3\) but c\.json "
                                         r"declares config.generator_num_layers=1, so layer\(s\) "
                                         r"1, 3 would be dropped"):
        convert.check_no_extra_layers(flat, pair, "c.json", "p.safetensors")
    convert.check_no_extra_layers({"bert/encoder/layer_1/x": 0}, pair, "c.json", "p")
    decoder = gpt.GPTConfig(vocab_size=10, num_layers=2, embed_dim=8, num_heads=2, max_len=8,
                            mlp_dim=8)
    convert.check_no_extra_layers({"gpt/h_1/x": 0}, decoder, "c.json", "p")
    with pytest.raises(ValueError, match=r"declares config.num_layers=2, so layer\(s\) 2 would"):
        convert.check_no_extra_layers({"gpt/h_1/x": 0, "gpt/h_2/x": 0}, decoder, "c.json", "p")


def test_merge_lora_export_matches_the_lora_model(tmp_path):
    config = bert.BertConfig(vocab_size=40, hidden_size=16, num_layers=1, num_heads=2,
                             intermediate_size=20, lora_rank=2, lora_alpha=4.0)
    model = bert.BertModel(config)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"])
    flat = traverse_util.flatten_dict(params, sep="/")
    for key in [k for k in flat if k.endswith("lora_b")]:
        flat[key] = jax.random.normal(jax.random.PRNGKey(1), flat[key].shape) * 0.3
    params = traverse_util.unflatten_dict(flat, sep="/")
    hf_bert.export(params, config, tmp_path / "merged", with_heads=False)
    ids = np.random.default_rng(0).integers(0, 40, (2, 5))
    ours, _ = model.apply({"params": params}, ids)
    with torch.no_grad():
        ref = transformers.BertModel.from_pretrained(tmp_path / "merged")(
            input_ids=torch.tensor(ids)).last_hidden_state.numpy()
    np.testing.assert_allclose(ours["sequence_output"], ref, atol=1e-5)


def test_export_of_adapters_names_them_not_merge_lora(tmp_path):
    # `tl_jax convert` of a configs/transfer_adapters.py workdir told the user to "call
    # merge_lora()" (a Python function, and one that folds LoRA, not adapters).
    config = bert.BertConfig(vocab_size=40, hidden_size=16, num_layers=1, num_heads=2,
                             intermediate_size=20, adapter_size=4)
    params = nn.unbox(bert.BertModel(config).init(jax.random.PRNGKey(0),
                                                  jnp.zeros((1, 4), jnp.int32))["params"])
    with pytest.raises(ValueError, match=r"adapter_size=4.*cannot be folded") as info:
        hf_bert.export(params, config, tmp_path / "out", with_heads=False)
    assert "merge_lora" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_load_flat_params_for_name_and_shape_warm_start(tmp_path):
    _, path = hf_random_model(tmp_path, SHAPES[1])
    config, params, _ = hf_bert.load(path)
    flat = hf_bert.load_flat_params(path, config)
    assert flat.keys() == safetensors_io.flatten_params(params).keys()
    for name, value in safetensors_io.flatten_params(params).items():
        np.testing.assert_array_equal(flat[name], value)
    with pytest.raises(ValueError, match="num_layers: model 3 vs checkpoint 2"):
        hf_bert.load_flat_params(path, config.replace(num_layers=3))


def test_export_writes_a_tokenizer_transformers_reads(data_dir, tmp_path):
    model_dir = data_dir / "models" / "all-MiniLM-L6-v2"
    texts = real_sentences(data_dir, n=8)
    expected = transformers.AutoTokenizer.from_pretrained(model_dir)(texts)["input_ids"]
    config = bert.BertConfig(vocab_size=30522, hidden_size=8, num_layers=1, num_heads=2,
                             intermediate_size=8)
    params = nn.unbox(bert.BertModel(config).init(jax.random.PRNGKey(0),
                                                  jnp.zeros((1, 2), jnp.int32))["params"])
    for name, tokenizer in (("from_dir", model_dir),
                            ("from_object", hf_bert.load_tl_tokenizer(model_dir))):
        out = hf_bert.export(params, config, tmp_path / name, with_heads=False,
                             tokenizer=tokenizer)
        assert transformers.AutoTokenizer.from_pretrained(out)(texts)["input_ids"] == expected
    small = config.replace(vocab_size=100)
    with pytest.raises(ValueError, match="30522 entries but the model's vocab_size is 100"):
        hf_bert.export(nn.unbox(bert.BertModel(small).init(
            jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32))["params"]), small,
            tmp_path / "bad", with_heads=False, tokenizer=model_dir)


def test_convert_goes_through_the_family_table(tmp_path):
    # GPT-2 is another family module; convert must round-trip it exactly too.
    config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1,
                                     n_head=2, bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "hf")
    assert interop.model_type(tmp_path / "hf") == "gpt2"
    convert.convert(tmp_path / "hf", tmp_path / "tl", "hf_to_tl")
    tl_config, _, family = convert.load_tl_params(tmp_path / "tl")
    assert family == "gpt2" and tl_config.embed_dim == 16
    convert.convert(tmp_path / "tl", tmp_path / "hf2", "tl_to_hf")
    original = load_file(tmp_path / "hf" / "model.safetensors")
    back = load_file(tmp_path / "hf2" / "model.safetensors")
    assert sorted(back) == sorted(original)
    assert all(np.array_equal(back[k], original[k]) for k in original)


@pytest.mark.parametrize("kind", ["pretraining", "classifier"])
def test_convert_exports_a_trainer_workdir(tmp_path, monkeypatch, kind):
    from tl_jax import checkpoint

    config = bert.BertConfig(vocab_size=45, hidden_size=24, num_layers=2, num_heads=3,
                             intermediate_size=30, max_position_embeddings=20, type_vocab_size=3,
                             hidden_act="gelu_new")
    model = bert.BertForPreTraining(config) if kind == "pretraining" else _Classifier(config)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"])
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps({"model": {"hidden_act": "gelu_new"}}))
    # The orbax reading is checkpoint.py's (tested there); this test owns the BERT export.
    monkeypatch.setattr(checkpoint, "load_params_from_workdir",
                        lambda path: (safetensors_io.flatten_params(params), 7))
    convert.convert(workdir, tmp_path / "hf", "tl_to_hf")
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (hf_config["num_attention_heads"], hf_config["type_vocab_size"],
            hf_config["hidden_act"]) == (3, 3, "gelu_new")
    with_heads = kind == "pretraining"
    cls = transformers.BertForPreTraining if with_heads else transformers.BertModel
    torch_model, info = cls.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    ids = np.random.default_rng(0).integers(0, 45, (2, 6))
    with torch.no_grad():
        ref = torch_model.eval()(input_ids=torch.tensor(ids))
    if with_heads:
        ours, _ = model.apply({"params": params}, ids)
        np.testing.assert_allclose(ours["mlm_logits"], ref.prediction_logits.numpy(), atol=1e-5)
    else:
        ours, _ = bert.BertModel(config).apply({"params": params["bert"]}, ids)
        np.testing.assert_allclose(ours["sequence_output"], ref.last_hidden_state.numpy(),
                                   atol=1e-5)


def test_convert_of_a_lora_workdir_merges_at_the_runs_lora_alpha(tmp_path, monkeypatch, capsys):
    """A LoRA run's lora_alpha lives in transfer.lora_alpha, not in the run's model config: the
    export merged the update at alpha 1 (1/16 of its scale for configs/transfer_lora.py). It is
    read from the checkpoint's resolved_model, the model the run built."""
    from tl_jax import checkpoint

    config = bert.BertConfig(vocab_size=45, hidden_size=24, num_layers=2, num_heads=3,
                             intermediate_size=30, max_position_embeddings=20, lora_rank=4,
                             lora_alpha=16.0)
    model = _Classifier(config)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"])
    flat = safetensors_io.flatten_params(params)
    rng = np.random.default_rng(1)
    flat = {p: (rng.normal(0, 0.3, v.shape).astype(np.float32) if p.endswith("lora_b")
                else np.asarray(v)) for p, v in flat.items()}  # a trained update (init: zeros)
    assert sum(p.endswith("lora_b") for p in flat) == 4
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps({"task": "classify", "model": {},
                                                     "transfer": {"lora_alpha": 16.0}}))
    monkeypatch.setattr(checkpoint, "load_params_from_workdir", lambda path: (flat, 7))
    monkeypatch.setattr(checkpoint, "config_from_workdir", lambda path, step: {
        "resolved_model": {"lora_rank": 4, "lora_alpha": 16.0, "hidden_act": "gelu"}})
    convert.convert(workdir, tmp_path / "hf", "tl_to_hf")
    # The classifier's head is not in the export, and the line says so.
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"[convert] {workdir} step 7: BERT 2x24, without MLM/NSP heads (the encoder of a "
        "classify run: its task head has no place in the Hugging Face BertModel layout and is "
        "not exported; `tl_jax predict` uses the workdir)")
    torch_model = transformers.BertModel.from_pretrained(tmp_path / "hf").eval()
    ids = np.random.default_rng(0).integers(0, 45, (2, 6))
    with torch.no_grad():
        ref = torch_model(input_ids=torch.tensor(ids)).last_hidden_state.numpy()
    ours, _ = bert.BertModel(config).apply(
        {"params": safetensors_io.unflatten_params(flat)["bert"]}, ids)
    np.testing.assert_allclose(ours["sequence_output"], ref, atol=1e-5)


def test_convert_of_a_workdir_that_lost_its_tokenizer_says_the_export_has_none(
        tmp_path, monkeypatch, capsys):
    # A workdir copied without tokenizer/ exported its weights with no tokenizer file and no
    # word about it (README: "each with the run's tokenizer"); AutoTokenizer then failed later.
    from tl_jax import checkpoint
    from tl_jax.data.tokenizer import Tokenizer

    words = [f"w{i}" for i in range(40)]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words) + "\n")
    config = bert.BertConfig(vocab_size=45, hidden_size=24, num_layers=1, num_heads=3,
                             intermediate_size=30, max_position_embeddings=20)
    params = nn.unbox(bert.BertForPreTraining(config).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"])
    monkeypatch.setattr(checkpoint, "load_params_from_workdir",
                        lambda path: (safetensors_io.flatten_params(params), 7))
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps({"task": "bert_pretrain", "model": {}}))

    convert.convert(workdir, tmp_path / "hf_none", "tl_to_hf")
    out = capsys.readouterr().out
    assert f"{workdir} has no tokenizer/" in out and "without tokenizer files" in out
    assert (tmp_path / "hf_none" / "model.safetensors").is_file()
    assert not (tmp_path / "hf_none" / "vocab.txt").exists()

    Tokenizer.load(str(vocab)).save(str(workdir / "tokenizer"))
    convert.convert(workdir, tmp_path / "hf", "tl_to_hf")
    assert "no tokenizer/" not in capsys.readouterr().out
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "hf").vocab_size == 45


def _random_params(init, *inputs):
    """The param tree `init` would make, filled with random numpy (LayerNorm scales near 1):
    only shapes are traced, so no device holds any of it."""
    shapes = nn.unbox(jax.eval_shape(
        init, {"params": jax.random.PRNGKey(0), "sample": jax.random.PRNGKey(1)},
        *inputs)["params"])
    rng = np.random.default_rng(0)
    return jax.tree_util.tree_map_with_path(
        lambda path, s: (path[-1].key == "scale") + np.float32(0.1) * rng.standard_normal(
            s.shape, np.float32), shapes)


@pytest.mark.parametrize("kind", ["bert", "factorised", "electra"])
def test_convert_of_a_workdir_puts_no_param_on_a_device(tmp_path, monkeypatch, kind):
    """`tl_jax convert` of a BERT or ELECTRA run (a real orbax checkpoint) reads the params into
    host numpy and writes them from there: no device array holds any of them while the files
    are written, and the files are those the library's export writes from the same params."""
    from safetensors import numpy as st_numpy

    from tl_jax import checkpoint
    from tl_jax.interop import electra as hf_electra
    from tl_jax.models import electra

    ids = np.zeros((1, 4), np.int32)
    encoder = bert.BertConfig(vocab_size=45, hidden_size=24, num_layers=2, num_heads=3,
                              intermediate_size=30, max_position_embeddings=20,
                              type_vocab_size=3, hidden_act="gelu",
                              embedding_size=16 if kind == "factorised" else 0)
    if kind == "electra":
        config = electra.ElectraConfig(discriminator=encoder, generator_hidden_size=12,
                                       generator_num_heads=2, generator_intermediate_size=20,
                                       generator_num_layers=1)
        positions = np.zeros((1, 2), np.int32)
        params = _random_params(electra.ElectraForPreTraining(config).init, ids, ids, ids + 1,
                                positions, positions, np.ones((1, 2), np.float32))
        task, reference = "electra", lambda out: hf_electra.export(params, config, out)
    else:
        params = _random_params(bert.BertForPreTraining(encoder).init, ids)
        task = "bert_pretrain"
        # A factorised encoder exports headless, its pooler and MLM/NSP heads left behind.
        encoder_only = {"bert": {k: v for k, v in params["bert"].items() if k != "pooler"}}
        reference = ((lambda out: hf_electra.export_encoder(encoder_only, encoder, out))
                     if kind == "factorised"
                     else (lambda out: hf_bert.export(params, encoder, out)))
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({"task": task, "model": {
        "hidden_act": "gelu"}}))
    ckpt = checkpoint.Checkpointer(str(workdir / "checkpoints"), async_save=False)
    ckpt.save(3, {"params": params, "step": np.int32(3)}, {"epoch": 0}, {"model": {}})
    ckpt.close()

    before = jax.live_arrays()  # held, so that no new array can reuse one of their ids
    known = {id(a) for a in before}
    seen = []

    def save_file(tensors, *args, **kwargs):
        seen.append(sorted(tuple(a.shape) for a in jax.live_arrays() if id(a) not in known))
        return st_numpy.save_file(tensors, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(safetensors_io, "save_file", save_file)
        convert.convert(workdir, tmp_path / "hf", "tl_to_hf")
    assert seen == [[]] * (2 if kind == "electra" else 1)
    reference(tmp_path / "expected")
    files = sorted(p.relative_to(tmp_path / "expected")
                   for p in (tmp_path / "expected").rglob("model.safetensors"))
    assert len(files) == len(seen)
    for name in files:
        assert (tmp_path / "hf" / name).read_bytes() == (tmp_path / "expected" / name).read_bytes()


def test_pretraining_model_size_can_be_a_checkpoint_directory(data_dir):
    # Continued pretraining from a HF BERT outside the size table (MiniLM: 6 x 384, 12 heads):
    # `model.size` names the directory whose architecture to copy, as the fine-tuning configs
    # allow. It was "Unknown BERT size", and `init_from` alone an architecture mismatch.
    import ml_collections

    from tl_jax.tasks.bert_pretrain import bert_config_from

    minilm = str(data_dir / "models" / "all-MiniLM-L6-v2")
    model_cfg = ml_collections.ConfigDict(dict(
        size=minilm, vocab_size=0, max_position_embeddings=512, type_vocab_size=2,
        dropout_rate=0.0, attention_dropout_rate=0.0, dtype="bfloat16"))
    config = bert_config_from(model_cfg, 30522)
    assert (config.num_layers, config.hidden_size, config.num_heads, config.intermediate_size,
            config.vocab_size) == (6, 384, 12, 1536, 30522)
    assert config.dropout_rate == 0.0 and config.dtype == "bfloat16"  # the run's, not MiniLM's
    with pytest.raises(ValueError, match="smaller than the tokenizer's vocabulary"):
        bert_config_from(model_cfg, 40000)


def test_converted_tl_weights_are_an_init_from(data_dir, tmp_path):
    # `tl_jax convert` HF -> tl_jax weights, then use them: the directory (config.json in
    # tl_jax's format + params.safetensors) was taken for a HF one ("model_type=None, expected
    # 'bert'") by fine-tuning, pretraining and extract alike.
    from tl_jax import extract, warm_start
    from tl_jax.tasks import downstream

    model_dir = data_dir / "models" / "all-MiniLM-L6-v2"
    convert.convert(model_dir, tmp_path / "tl", "hf_to_tl")
    tl_dir = str(tmp_path / "tl")
    assert downstream.architecture(tl_dir, None) == hf_bert.read_hf_config(model_dir)
    text = ["Emma Woodhouse, handsome, clever, and rich."]
    tokens, feats = extract.extract(tl_dir, text, layers="all")
    ref_tokens, ref_feats = extract.extract(str(model_dir), text, layers="all")
    assert tokens == ref_tokens
    np.testing.assert_allclose(feats[0], ref_feats[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(warm_start.WarmStartError, match="neither a tl_jax workdir"):
        warm_start.warm_start({}, str(tmp_path))


def test_factorised_embeddings_are_inferred_and_refused_by_hf_bert(tmp_path):
    """HF BERT has no embeddings_project: a factorised encoder's shapes are read back right, and
    its export as BERT (or a BERT checkpoint as its warm start) is refused, naming why."""
    config = bert.BertConfig(vocab_size=40, hidden_size=16, num_layers=1, num_heads=2,
                             intermediate_size=20, embedding_size=8)
    model = bert.BertForPreTraining(config)
    params = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0),
                                     jnp.zeros((1, 4), jnp.int32))["params"])
    params = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), params)
    assert hf_bert.config_from_params(params) == config
    assert hf_bert.config_from_params(params["bert"]) == config  # a headless tree
    with pytest.raises(ValueError, match=r"HF BERT has no factorised embeddings: this model's "
                                         r"embeddings are 8 wide with an embeddings_project"):
        hf_bert.export(params, config, tmp_path / "nope")
    assert not (tmp_path / "nope").exists()
    _, path = hf_random_model(tmp_path, SHAPES[0])
    with pytest.raises(ValueError, match="embedding_width: model 8 vs checkpoint 16"):
        hf_bert.load_flat_params(path, bert.BertConfig(
            vocab_size=67, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=24,
            embedding_size=8))


def test_an_exported_cased_tokenizer_stays_cased_in_transformers(tmp_path):
    # write_tokenizer wrote no do_lower_case, and transformers then lowercases: "Elizabeth" got
    # the ids of "elizabeth". Loading back, tokenizer_config.json's settings win over
    # tokenizer.json's normaliser, in tl_jax as in transformers.
    from tl_jax.data.tokenizer import Tokenizer
    from tl_jax.interop import bert_tokenizer

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "Elizabeth",
                                "elizabeth", "Café", "cafe", "café", "THE", "the"]) + "\n")
    text = "Elizabeth Café THE"
    for lowercase, strip_accents in ((False, None), (True, False), (True, None)):
        tok = Tokenizer.from_vocab(str(vocab), lowercase=lowercase, strip_accents=strip_accents)
        out = tmp_path / f"hf_{lowercase}_{strip_accents}"
        out.mkdir()
        bert_tokenizer.write_tokenizer(tok, out, vocab_size=tok.vocab_size)
        want = tok.encode(text)
        hf = transformers.BertTokenizerFast.from_pretrained(str(out))
        assert hf(text, add_special_tokens=False)["input_ids"] == want, (lowercase, strip_accents)
        assert bert_tokenizer.load_tokenizer(out).encode(text, add_special_tokens=False).ids == want
        assert Tokenizer.load(str(out)).encode(text) == want
    # A tokenizer.json that lowercases, beside a config that says cased: the config wins.
    config = json.loads((out / "tokenizer_config.json").read_text())
    (out / "tokenizer_config.json").write_text(json.dumps({**config, "do_lower_case": False}))
    cased = Tokenizer.from_vocab(str(vocab), lowercase=False).encode(text)
    assert bert_tokenizer.load_tokenizer(out).encode(text, add_special_tokens=False).ids == cased
    assert transformers.BertTokenizerFast.from_pretrained(str(out))(
        text, add_special_tokens=False)["input_ids"] == cased


def test_a_copied_cased_tokenizer_directory_stays_cased_in_transformers(tmp_path):
    # `tl_jax convert --direction=tl_to_hf` of a workdir copies its tokenizer/ folder, which holds
    # tokenizer.json and vocab.txt only: with no tokenizer_config.json beside them transformers
    # lowercased the export of a cased run ("Elizabeth" -> el ##iz ##abeth).
    from tl_jax.data.tokenizer import Tokenizer
    from tl_jax.interop import bert_tokenizer

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "Elizabeth",
                                "elizabeth", "THE", "the"]) + "\n")
    text = "Elizabeth THE"
    for lowercase in (False, True):
        tok = Tokenizer.from_vocab(str(vocab), lowercase=lowercase)
        source = tmp_path / f"workdir_{lowercase}" / "tokenizer"
        tok.save(str(source))
        assert not (source / "tokenizer_config.json").exists()
        out = tmp_path / f"hf_{lowercase}"
        out.mkdir()
        bert_tokenizer.write_tokenizer(source, out, vocab_size=tok.vocab_size)
        config = json.loads((out / "tokenizer_config.json").read_text())
        assert config["do_lower_case"] is lowercase
        hf = transformers.BertTokenizerFast.from_pretrained(str(out))
        assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode(text), lowercase


def test_a_model_vocabulary_padded_beyond_its_tokenizer_exports_and_loads(tmp_path):
    # bert_pretrain takes model.vocab_size above the tokenizer's (a padded table), and
    # fill_mask reads such a workdir, but the export refused it ("they must agree"), and so did
    # fill_mask and load_tokenizer_for on a Hugging Face directory of that shape. Rows past the
    # tokenizer are never indexed; only a tokenizer larger than the table is an error.
    from tl_jax.data.tokenizer import Tokenizer
    from tl_jax.fill_mask import FillMask
    from tl_jax.interop import bert_tokenizer

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat",
                                "sat", "on", "mat", "."]) + "\n")
    tok = Tokenizer.from_vocab(str(vocab))
    config = bert.BertConfig(vocab_size=tok.vocab_size + 5, hidden_size=16, num_layers=1,
                             num_heads=2, intermediate_size=24, max_position_embeddings=16)
    params = nn.unbox(bert.BertForPreTraining(config).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32), jnp.zeros((1, 4), jnp.int32),
        jnp.ones((1, 4), jnp.int32), masked_positions=jnp.zeros((1, 1), jnp.int32))["params"])
    out = hf_bert.export(params, config, tmp_path / "hf", tokenizer=tok)

    assert hf_bert.load_tokenizer_for(out).get_vocab_size() == tok.vocab_size
    hf_tok = transformers.BertTokenizerFast.from_pretrained(str(out))
    assert hf_tok("the cat sat", add_special_tokens=False)["input_ids"] == tok.encode("the cat sat")
    torch_model = transformers.BertForMaskedLM.from_pretrained(str(out)).eval()
    assert torch_model.config.vocab_size == tok.vocab_size + 5
    predicted = FillMask.load(str(out)).predict("the cat [MASK] on the mat .", top_k=3)
    assert len(predicted) == 1 and len(predicted[0]) == 3

    # A tokenizer with more entries than the model has rows is not its tokenizer.
    with pytest.raises(ValueError, match=r"has 11 entries but the model's vocab_size is 9: "
                                         r"ids 9\.\.10 would index past"):
        bert_tokenizer.write_tokenizer(tok, tmp_path, vocab_size=9)


def test_a_broken_tokenizer_file_in_a_hf_directory_is_named(tmp_path):
    # An empty vocab.txt made `tl_jax fill_mask` of the directory end in a TypeError traceback
    # from tokenizers ("sep_token not found in the vocabulary"), a truncated tokenizer.json in
    # a bare Exception; both are now errors that name the file.
    _, path = hf_random_model(tmp_path, SHAPES[0])
    (path / "vocab.txt").write_text("")
    with pytest.raises(ValueError, match=r"vocab.txt is not a BERT vocabulary .*sep_token"):
        hf_bert.load_tokenizer_for(path)
    (path / "tokenizer.json").write_text('{"version": ')
    with pytest.raises(ValueError, match=r"Cannot read tokenizer file .*tokenizer.json: EOF"):
        hf_bert.load_tl_tokenizer(path)


def test_replacing_an_earlier_export_drops_its_tokenizer_files(tmp_path, capsys):
    # Converting over an earlier export overwrote the files it wrote and kept the rest: a
    # tokenizer.json of the earlier model stayed beside the new vocab.txt and, loaded first by
    # tl_jax and transformers alike, gave the old vocabulary's ids for the new model.
    from tl_jax.data.tokenizer import Tokenizer

    words = ["the", "cat", "sat", "on", "mat"]
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    config = transformers.BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=8)
    for name, vocab in (("a", specials + words), ("b", specials + words[::-1])):
        transformers.BertForPreTraining(config).save_pretrained(tmp_path / name)
        (tmp_path / name / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # "a" also has a tokenizer.json (as a hub model or a workdir's export has), "b" has not.
    Tokenizer.from_vocab(str(tmp_path / "a" / "vocab.txt")).save(str(tmp_path / "a"))
    want = Tokenizer.from_vocab(str(tmp_path / "b" / "vocab.txt")).encode("the cat")
    assert Tokenizer.load(str(tmp_path / "a")).encode("the cat") != want

    convert.convert(tmp_path / "a", tmp_path / "tl")
    convert.convert(tmp_path / "b", tmp_path / "tl")
    assert Tokenizer.load(str(tmp_path / "tl")).encode("the cat") == want
    assert sorted(p.name for p in (tmp_path / "tl").iterdir()) == [
        "config.json", "params.safetensors", "vocab.txt"]
    assert "old tokenizer files removed" in capsys.readouterr().out
    # The other direction alike: an export of "a" replaced by one of "b".
    convert.convert(tmp_path / "tl", tmp_path / "hf", "tl_to_hf")
    shutil.copyfile(tmp_path / "a" / "tokenizer.json", tmp_path / "hf" / "tokenizer.json")
    convert.convert(tmp_path / "tl", tmp_path / "hf", "tl_to_hf")
    assert not (tmp_path / "hf" / "tokenizer.json").exists()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert hf_tok("the cat", add_special_tokens=False)["input_ids"] == want


def test_convert_of_a_hf_directory_without_tokenizer_files_says_the_output_has_none(
        tmp_path, capsys):
    # A model saved without its tokenizer converted silently, while a workdir export that lost
    # its tokenizer/ says so; a run taking the output as init_from then trains a new vocabulary.
    _, path = hf_random_model(tmp_path, SHAPES[0])
    convert.convert(path, tmp_path / "tl", "hf_to_tl")
    out = capsys.readouterr().out
    assert (f"[convert] Note: {path} has no tokenizer files (tokenizer.json or vocab.txt or "
            f"vocab.json), so {tmp_path / 'tl'} gets the weights without a vocabulary: a run "
            f"with init_from={tmp_path / 'tl'} needs data.tokenizer") in out
    assert len([line for line in out.splitlines() if "Note:" in line]) == 1  # one line
    # And back: transformers would find nothing to load.
    convert.convert(tmp_path / "tl", tmp_path / "hf", "tl_to_hf")
    assert "AutoTokenizer has nothing to load" in capsys.readouterr().out
    # With a vocabulary beside the weights, nothing is said.
    (path / "vocab.txt").write_text("\n".join(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(62)]) + "\n")
    convert.convert(path, tmp_path / "tl2", "hf_to_tl")
    assert "Note:" not in capsys.readouterr().out and (tmp_path / "tl2" / "vocab.txt").exists()


def test_convert_of_a_bilm_or_static_workdir_says_it_has_no_hf_layout(tmp_path):
    # A biLM run failed deep in the export: "expected exactly one BERT encoder in the param tree
    # (...), found 0: []"; a static-vectors workdir as "is not a tl_jax weights directory".
    hf = tmp_path / "hf"
    transformers.BertModel(transformers.BertConfig(
        vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=8)).save_pretrained(hf)
    (hf / "vocab.txt").write_text("\n".join(f"t{i}" for i in range(30)) + "\n")
    workdir = tmp_path / "elmo"
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "config.json").write_text('{"task": "bilm"}')
    with pytest.raises(ValueError) as e:
        convert.convert(workdir, hf, "tl_to_hf")
    assert str(e.value) == (
        f"convert: {workdir} was trained with task='bilm' (an ELMo-style biLM), which has no "
        "Hugging Face layout; convert exports BERT (bert_pretrain and BERT fine-tuning runs), "
        "ELECTRA (electra) and GPT (clm) runs. A biLM's ELMo features are used from Python: "
        "load_elmo, ElmoEncoder and ElmoClassifier in tl_jax.elmo_features.")
    assert (hf / "vocab.txt").exists()  # refused before an earlier export's files are removed
    static = tmp_path / "w2v"
    static.mkdir()
    (static / "static_config.json").write_text("{}")
    (static / "vocab.txt").write_text("the\n")
    for direction in convert.DIRECTIONS:
        with pytest.raises(ValueError) as e:
            convert.convert(static, tmp_path / "out", direction)
        assert str(e.value) == (
            f"convert: {static} holds static word vectors (`tl_jax static`), not a model "
            "checkpoint, and has no Hugging Face layout: its vectors.* files are already "
            "word2vec/GloVe formats that gensim reads")
    assert not (tmp_path / "out").exists()


def test_convert_refuses_to_replace_an_export_of_another_model_family(tmp_path, capsys):
    # A GPT-2 export replaced by a BERT one was only noted ("already holds a Hugging Face
    # checkpoint ... replacing it"): the folder then held another model under its name.
    gpt = tmp_path / "gpt_hf"
    transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=0,
        eos_token_id=0)).save_pretrained(gpt)
    hf = tmp_path / "bert_hf"
    transformers.BertModel(transformers.BertConfig(
        vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=8)).save_pretrained(hf)
    (hf / "vocab.txt").write_text("\n".join(f"t{i}" for i in range(30)) + "\n")
    gpt_tl = convert.convert(gpt, tmp_path / "gpt_tl")
    bert_tl = convert.convert(hf, tmp_path / "tl")
    out = convert.convert(gpt_tl, tmp_path / "out", "tl_to_hf")
    (out / "vocab.json").write_text("{}")  # an earlier export's tokenizer file
    before = (out / "config.json").read_text()
    capsys.readouterr()
    with pytest.raises(ValueError) as e:
        convert.convert(bert_tl, out, "tl_to_hf")
    assert str(e.value) == (
        f"convert: destination {out} holds a Hugging Face checkpoint of another model family "
        "(GPT-2, model_type 'gpt2') than this export (BERT, model_type 'bert'); replacing it "
        "would put another model under its name. Choose a new directory.")
    assert (out / "config.json").read_text() == before and (out / "vocab.json").exists()
    assert "replacing it" not in capsys.readouterr().out
    # hf_to_tl alike: tl_jax GPT-2 weights are not replaced by BERT ones.
    with pytest.raises(ValueError, match=r"holds tl_jax weights of another model family \(GPT-2, "
                                         r"model_type 'gpt2'\) than this export \(BERT"):
        convert.convert(hf, gpt_tl, "hf_to_tl")
    # The same family is replaced, as before, with a note.
    convert.convert(gpt_tl, out, "tl_to_hf")
    assert "replacing it" in capsys.readouterr().out

"""Downstream heads: shapes, parameter paths, what each head computes, and loading MiniLM into them."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tl_jax.models import bert, heads
from tl_jax.tasks import downstream

CONFIG = bert.BertConfig.from_size("tiny", vocab_size=97, max_position_embeddings=32)


def _inputs(batch=3, length=10, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, CONFIG.vocab_size, (batch, length)).astype(np.int32)
    mask = np.ones((batch, length), np.int32)
    mask[0, 6:] = 0  # row 0 is padded after 6 tokens
    ids[0, 6:] = 0
    return jnp.asarray(ids), jnp.zeros_like(ids), jnp.asarray(mask)


def _init(model, inputs):
    return nn.unbox(model.init({"params": jax.random.PRNGKey(0)}, *inputs)["params"])


def _paths(params):
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    return {"/".join(str(k.key) for k in path): v.shape for path, v in flat}


@pytest.mark.parametrize("model,outputs", [
    (heads.BertForSequenceClassification(CONFIG, 3), {"logits": (3, 3)}),
    (heads.BertForTokenClassification(CONFIG, 5), {"logits": (3, 10, 5)}),
    (heads.BertForQuestionAnswering(CONFIG), {"start_logits": (3, 10), "end_logits": (3, 10)}),
])
def test_heads_shapes_paths_and_intermediates(model, outputs):
    inputs = _inputs()
    params = _init(model, inputs)
    encoder_paths = _paths(_init(bert.BertModel(CONFIG), inputs))
    paths = _paths(params)
    # The encoder sits under bert/ with exactly BertModel's tree; the head is the only addition.
    assert {p[len("bert/"):]: s for p, s in paths.items() if p.startswith("bert/")} == encoder_paths
    n_out = outputs.get("logits", (0, 0, 2))[-1]
    assert {p: s for p, s in paths.items() if not p.startswith("bert/")} == {
        "head/dense/kernel": (CONFIG.hidden_size, n_out), "head/dense/bias": (n_out,)}
    out, intermediates = model.apply({"params": params}, *inputs)
    for name, shape in outputs.items():
        assert out[name].shape == shape and out[name].dtype == jnp.float32
    assert list(intermediates) == ["embeddings", "layer_1", "layer_2"]


def test_head_math_on_encoder_outputs():
    inputs = _inputs()
    for pooling in ("pooler", "cls", "mean"):
        model = heads.BertForSequenceClassification(CONFIG, 4, pooling=pooling)
        params = _init(model, inputs)
        out, _ = model.apply({"params": params}, *inputs)
        w, b = params["head"]["dense"]["kernel"], params["head"]["dense"]["bias"]
        seq, mask = out["sequence_output"], inputs[2][..., None]
        pooled = {"pooler": out["pooled_output"], "cls": seq[:, 0],
                  "mean": (seq * mask).sum(1) / mask.sum(1)}[pooling]
        np.testing.assert_allclose(out["logits"], pooled @ w + b, rtol=1e-5, atol=1e-5)
    tagger = heads.BertForTokenClassification(CONFIG, 5)
    params = _init(tagger, inputs)
    out, _ = tagger.apply({"params": params}, *inputs)
    expected = out["sequence_output"] @ params["head"]["dense"]["kernel"] + params["head"]["dense"]["bias"]
    np.testing.assert_allclose(out["logits"], expected, rtol=1e-5, atol=1e-5)
    qa = heads.BertForQuestionAnswering(CONFIG)
    params = _init(qa, inputs)
    out, _ = qa.apply({"params": params}, *inputs)
    both = out["sequence_output"] @ params["head"]["dense"]["kernel"] + params["head"]["dense"]["bias"]
    np.testing.assert_allclose(out["start_logits"], both[..., 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["end_logits"], both[..., 1], rtol=1e-5, atol=1e-5)


def test_padding_does_not_change_any_head():
    ids, segments, mask = _inputs()
    other = ids.at[0, 6:].set(42)  # different ids behind the mask of row 0
    for model, key in ((heads.BertForSequenceClassification(CONFIG, 2, pooling="mean"), "logits"),
                       (heads.BertForTokenClassification(CONFIG, 3), "logits"),
                       (heads.BertForQuestionAnswering(CONFIG), "start_logits")):
        params = _init(model, (ids, segments, mask))
        a, _ = model.apply({"params": params}, ids, segments, mask)
        b, _ = model.apply({"params": params}, other, segments, mask)
        real_a, real_b = (a[key][0], b[key][0]) if a[key].ndim == 2 and key == "logits" else (
            a[key][0, :6], b[key][0, :6])  # per-token outputs: compare the real positions only
        np.testing.assert_allclose(real_a, real_b, rtol=1e-5, atol=1e-5)


def test_dropout_only_when_not_deterministic():
    model = heads.BertForSequenceClassification(CONFIG, 2)
    inputs = _inputs()
    params = _init(model, inputs)
    a, _ = model.apply({"params": params}, *inputs, deterministic=True)
    b, _ = model.apply({"params": params}, *inputs, deterministic=True)
    c, _ = model.apply({"params": params}, *inputs, deterministic=False,
                       rngs={"dropout": jax.random.PRNGKey(1)})
    np.testing.assert_array_equal(a["logits"], b["logits"])
    assert not np.allclose(a["logits"], c["logits"])
    with pytest.raises(ValueError, match="pooling='max'"):
        _init(heads.BertForSequenceClassification(CONFIG, 2, pooling="max"), inputs)


def test_minilm_loads_into_a_head_model_and_matches_transformers(data_dir):
    import torch
    import transformers

    minilm = str(data_dir / "models" / "all-MiniLM-L6-v2")
    config = ml_collections.ConfigDict(dict(
        init_from=minilm,
        model=dict(size="tiny", num_layers=0, max_position_embeddings=512, dropout_rate=0.1,
                   attention_dropout_rate=0.1, dtype="float32"),
        data=dict(tokenizer="", tokenizer_vocab_size=0, max_seq_length=32)))
    encoder = downstream.Encoder.from_config(config, [])
    assert (encoder.model_config.num_layers, encoder.model_config.hidden_size) == (6, 384)
    model = heads.BertForTokenClassification(encoder.model_config, 3)
    ids = np.array([encoder.tokenizer.encode("mr. darcy visited pemberley in derbyshire.")[:12]],
                   np.int32)
    ids = np.concatenate([[[encoder.tokenizer.cls_id]], ids, [[encoder.tokenizer.sep_id]]], 1)
    inputs = (jnp.asarray(ids), jnp.zeros_like(ids), jnp.ones_like(ids))
    fresh = _init(model, inputs)
    params = encoder.load_weights(fresh)
    # The head keeps its initialisation; the encoder changed.
    np.testing.assert_array_equal(params["head"]["dense"]["kernel"], fresh["head"]["dense"]["kernel"])
    out, _ = model.apply({"params": params}, *inputs)
    reference = transformers.BertModel.from_pretrained(minilm).eval()
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(ids, dtype=torch.long)).last_hidden_state
    np.testing.assert_allclose(out["sequence_output"], expected.numpy(), atol=2e-4, rtol=1e-3)


def test_a_data_tokenizer_other_than_init_froms_is_named(data_dir, tmp_path, capsys):
    # Fine-tuning MiniLM with an unrelated 2,000-token vocabulary trained without a word: every
    # id fits the 30,522 embedding rows, and every one selects another token's row.
    import json

    from tl_jax.data.tokenizer import Tokenizer
    from tl_jax.interop import convert

    def texts(name):
        with open(data_dir / name) as f:
            return [json.loads(line)["text"] for line in f][:400]

    own = Tokenizer.train_wordpiece([texts("austen.jsonl")], 300)
    model_config = bert.BertConfig(vocab_size=own.vocab_size, hidden_size=8, num_layers=1,
                                   num_heads=2, intermediate_size=8)
    params = nn.unbox(bert.BertModel(model_config).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32))["params"])
    init_from = tmp_path / "weights"
    convert.save_tl_params(init_from, model_config, params, "bert")
    own.save(str(init_from))
    own.save(str(tmp_path / "same"))
    Tokenizer.train_wordpiece([texts("enwiki_sample.jsonl")], 200).save(str(tmp_path / "other"))
    Tokenizer.train_wordpiece([texts("enwiki_sample.jsonl")], 600).save(str(tmp_path / "big"))

    def encoder(tokenizer):
        return downstream.Encoder.from_config(ml_collections.ConfigDict(dict(
            task="classify", init_from=str(init_from),
            model=dict(num_layers=0, dropout_rate=0.1, attention_dropout_rate=0.1,
                       dtype="float32"),
            data=dict(tokenizer=tokenizer, max_seq_length=16))), [])

    capsys.readouterr()
    encoder("")
    encoder(str(tmp_path / "same"))
    assert "warning" not in capsys.readouterr().out
    encoder(str(tmp_path / "other"))
    out = capsys.readouterr().out
    assert out.count("warning") == 1
    assert (f"[classify] warning: data.tokenizer={tmp_path / 'other' / 'tokenizer.json'} "
            in out and f"is not the vocabulary init_from's weights were trained with "
            f"({init_from / 'tokenizer.json'}, {own.vocab_size} tokens)" in out)
    # Continued pretraining from init_from says the same.
    from tl_jax.tasks import bert_pretrain
    data_cfg = ml_collections.ConfigDict(dict(tokenizer=str(tmp_path / "other")))
    assert bert_pretrain.with_init_from_tokenizer(data_cfg, str(init_from),
                                                  "bert_pretrain") is data_cfg
    assert "[bert_pretrain] warning: data.tokenizer=" in capsys.readouterr().out
    with pytest.raises(ValueError, match=f"has {Tokenizer.load(str(tmp_path / 'big')).vocab_size}"
                                         f" tokens but the model's vocab_size is "
                                         f"{own.vocab_size}"):
        encoder(str(tmp_path / "big"))

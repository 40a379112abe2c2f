"""Tests for tl_jax/models/bert.py and layers.py: shapes, masking, heads, hooks, sharding, FLOPs."""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util
from jax.sharding import Mesh

from tl_jax.models import bert

VOCAB = 97


def small_config(**overrides):
    fields = dict(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4,
                  intermediate_size=48, max_position_embeddings=24)
    fields.update(overrides)
    return bert.BertConfig(**fields)


def init(model, length=10, seed=0):
    ids = jnp.zeros((2, length), jnp.int32)
    return model.init(jax.random.PRNGKey(seed), ids)["params"]


def random_batch(rng, batch=3, length=10, vocab=VOCAB):
    ids = rng.integers(0, vocab, (batch, length))
    segments = rng.integers(0, 2, (batch, length))
    return ids, segments


def flat_paths(params):
    return set(traverse_util.flatten_dict(nn.unbox(params), sep="/"))


def test_size_table_and_from_size():
    for name, (num_layers, hidden, heads) in bert.SIZES.items():
        c = bert.BertConfig.from_size(name, vocab_size=100)
        assert (c.num_layers, c.hidden_size, c.num_heads) == (num_layers, hidden, heads)
        assert c.intermediate_size == 4 * hidden
    assert bert.SIZES["tiny"] == (2, 128, 2) and bert.SIZES["base"] == (12, 768, 12)
    with pytest.raises(ValueError, match="Unknown BERT size 'huge'"):
        bert.BertConfig.from_size("huge")
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        small_config(num_heads=5)
    with pytest.raises(ValueError, match="Unknown hidden_act"):
        small_config(hidden_act="swishy")


@pytest.mark.parametrize("field, rate", [("dropout_rate", 10.0), ("dropout_rate", 1.0),
                                         ("attention_dropout_rate", -0.1)])
def test_dropout_rates_outside_zero_to_one_are_errors(field, rate):
    # 10 (for 10%) dropped every unit: BERT pretraining trained on zeros without a word.
    with pytest.raises(ValueError, match=rf"BertConfig.{field}={rate} must be in \[0, 1\)"):
        bert.BertConfig.from_size("tiny", **{field: rate})
    for fine in (0.0, 0.1, 0.9):  # as HF configs have them
        assert getattr(bert.BertConfig.from_size("tiny", **{field: fine}), field) == fine


def test_outputs_shapes_and_intermediates():
    config = small_config(num_layers=3)
    model = bert.BertForPreTraining(config)
    params = nn.unbox(init(model))
    ids, segments = random_batch(np.random.default_rng(0))
    positions = np.array([[1, 2], [0, 9], [5, 5]])
    outputs, inter = model.apply({"params": params}, ids, segments, masked_positions=positions)
    assert outputs["sequence_output"].shape == (3, 10, 32)
    assert outputs["pooled_output"].shape == (3, 32)
    assert outputs["mlm_logits"].shape == (3, 2, VOCAB)
    assert outputs["nsp_logits"].shape == (3, 2)
    assert list(inter) == ["embeddings", "layer_1", "layer_2", "layer_3"]
    assert all(v.shape == (3, 10, 32) for v in inter.values())
    np.testing.assert_array_equal(inter["layer_3"], outputs["sequence_output"])
    # The embeddings intermediate is post-LayerNorm: zero mean, unit variance per token.
    np.testing.assert_allclose(np.asarray(inter["embeddings"]).mean(-1), 0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(inter["embeddings"]).var(-1), 1, atol=1e-3)


def test_encoder_and_model_share_names_and_outputs():
    config = small_config()
    full = nn.unbox(init(bert.BertForPreTraining(config)))
    ids, segments = random_batch(np.random.default_rng(1))
    out_full, _ = bert.BertForPreTraining(config).apply({"params": full}, ids, segments)
    out_model, _ = bert.BertModel(config).apply({"params": full["bert"]}, ids, segments)
    encoder_params = {k: v for k, v in full["bert"].items() if k != "pooler"}
    out_enc, _ = bert.BertEncoder(config).apply({"params": encoder_params}, ids, segments)
    np.testing.assert_array_equal(out_model["sequence_output"], out_full["sequence_output"])
    np.testing.assert_array_equal(out_model["pooled_output"], out_full["pooled_output"])
    np.testing.assert_array_equal(out_enc["sequence_output"], out_full["sequence_output"])
    assert "pooled_output" not in out_enc


def test_param_paths_are_stable_and_readable():
    paths = flat_paths(init(bert.BertForPreTraining(small_config())))
    expected = {
        "bert/embeddings/word_embeddings/embedding",
        "bert/embeddings/position_embeddings/embedding",
        "bert/embeddings/token_type_embeddings/embedding",
        "bert/embeddings/norm/scale",
        "bert/encoder/layer_0/attention/query/kernel",
        "bert/encoder/layer_1/attention/value/bias",
        "bert/encoder/layer_0/attention/out/kernel",
        "bert/encoder/layer_0/attention_output_norm/scale",
        "bert/encoder/layer_0/mlp/intermediate/kernel",
        "bert/encoder/layer_0/mlp/output/kernel",
        "bert/encoder/layer_1/mlp_output_norm/bias",
        "bert/pooler/dense/kernel",
        "mlm_head/transform/kernel",
        "mlm_head/transform_norm/scale",
        "mlm_head/output_bias",
        "nsp_head/dense/kernel",
    }
    assert expected <= paths
    layer_ids = {int(m.group(1)) for p in paths if (m := re.search(r"encoder/layer_(\d+)/", p))}
    assert layer_ids == {0, 1}
    # No separate decoder matrix: the MLM decoder is tied to the word embeddings.
    assert not [p for p in paths if p.startswith("mlm_head/") and p.endswith("embedding")]
    assert not [p for p in paths if "adapter" in p or "lora" in p]
    # 16 tensors per layer + 5 embeddings + 2 pooler + 5 MLM + 2 NSP.
    assert len(paths) == 2 * 16 + 5 + 2 + 5 + 2


def test_logical_axis_names_use_only_the_agreed_vocabulary():
    config = small_config(adapter_size=4, lora_rank=2)
    boxed = init(bert.BertForPreTraining(config))
    specs = traverse_util.flatten_dict(nn.get_partition_spec(boxed), sep="/")
    allowed = {"vocab", "embed", "heads", "kv", "mlp", None}
    for path, spec in specs.items():
        assert spec is not None and set(spec) <= allowed, (path, spec)
    assert tuple(specs["bert/embeddings/word_embeddings/embedding"]) == ("vocab", "embed")
    assert tuple(specs["bert/encoder/layer_0/attention/query/kernel"]) == ("embed", "heads", "kv")
    assert tuple(specs["bert/encoder/layer_0/attention/out/kernel"]) == ("heads", "kv", "embed")
    assert tuple(specs["bert/encoder/layer_0/mlp/intermediate/kernel"]) == ("embed", "mlp")
    assert tuple(specs["bert/encoder/layer_0/mlp/output/kernel"]) == ("mlp", "embed")
    # Boxed and unboxed params give the same result.
    ids, segments = random_batch(np.random.default_rng(2))
    model = bert.BertForPreTraining(config)
    a, _ = model.apply({"params": boxed}, ids, segments)
    b, _ = model.apply({"params": nn.unbox(boxed)}, ids, segments)
    np.testing.assert_array_equal(a["mlm_logits"], b["mlm_logits"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_padding_does_not_change_unpadded_outputs(seed):
    rng = np.random.default_rng(seed)
    config = small_config()
    model = bert.BertForPreTraining(config)
    params = nn.unbox(init(model, seed=seed))
    ids, segments = random_batch(rng, batch=2, length=12)
    lengths = rng.integers(3, 12, 2)
    mask = (np.arange(12)[None, :] < lengths[:, None]).astype(np.int32)
    # Replace every padded token by random junk: unpadded outputs must not move.
    junk = np.where(mask == 1, ids, rng.integers(0, VOCAB, ids.shape))
    out_a, inter_a = model.apply({"params": params}, ids, segments, mask)
    out_b, inter_b = model.apply({"params": params}, junk, segments, mask)
    for key in inter_a:
        a, b = np.asarray(inter_a[key]), np.asarray(inter_b[key])
        np.testing.assert_allclose(a[mask == 1], b[mask == 1], atol=1e-6)
    np.testing.assert_allclose(out_a["pooled_output"], out_b["pooled_output"], atol=1e-6)
    # And a padded row equals the same row run alone at its true length.
    row, n = 0, int(lengths[0])
    alone, _ = model.apply({"params": params}, ids[row:row + 1, :n], segments[row:row + 1, :n])
    np.testing.assert_allclose(out_a["sequence_output"][row, :n], alone["sequence_output"][0],
                               atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_masked_position_logits_equal_gathered_full_logits(seed):
    rng = np.random.default_rng(seed)
    model = bert.BertForPreTraining(small_config())
    params = nn.unbox(init(model, seed=seed))
    ids, segments = random_batch(rng, batch=3, length=10)
    positions = rng.integers(0, 10, (3, 4))
    full, _ = model.apply({"params": params}, ids, segments)
    part, _ = model.apply({"params": params}, ids, segments, masked_positions=positions)
    assert full["mlm_logits"].shape == (3, 10, VOCAB)
    gathered = np.take_along_axis(np.asarray(full["mlm_logits"]), positions[..., None], axis=1)
    np.testing.assert_allclose(part["mlm_logits"], gathered, atol=1e-5)
    np.testing.assert_array_equal(part["nsp_logits"], full["nsp_logits"])


def test_mlm_decoder_is_tied_to_word_embeddings():
    config = small_config()
    model = bert.BertForPreTraining(config)
    params = nn.unbox(init(model))
    ids, segments = random_batch(np.random.default_rng(3))
    # Changing only the embedding row of token 5 changes only logit 5 when the inputs avoid it.
    ids = np.where(ids == 5, 6, ids)
    base, _ = model.apply({"params": params}, ids, segments, masked_positions=np.zeros((3, 1), int))
    bumped = jax.tree_util.tree_map(lambda x: x, params)
    emb = bumped["bert"]["embeddings"]["word_embeddings"]["embedding"]
    bumped["bert"]["embeddings"]["word_embeddings"]["embedding"] = emb.at[5].add(
        jax.random.normal(jax.random.PRNGKey(1), (32,)))  # not constant: LN output has zero mean
    out, _ = model.apply({"params": bumped}, ids, segments, masked_positions=np.zeros((3, 1), int))
    diff = np.abs(np.asarray(out["mlm_logits"]) - np.asarray(base["mlm_logits"]))[:, 0]
    assert diff[:, 5].min() > 1e-3
    assert np.delete(diff, 5, axis=1).max() == 0


def test_dropout_is_active_only_when_not_deterministic():
    model = bert.BertForPreTraining(small_config(dropout_rate=0.3, attention_dropout_rate=0.3))
    params = nn.unbox(init(model))
    ids, segments = random_batch(np.random.default_rng(4))
    det, _ = model.apply({"params": params}, ids, segments)
    det2, _ = model.apply({"params": params}, ids, segments, rngs={"dropout": jax.random.PRNGKey(9)})
    np.testing.assert_array_equal(det["mlm_logits"], det2["mlm_logits"])
    run = lambda k: model.apply({"params": params}, ids, segments, deterministic=False,  # noqa
                                rngs={"dropout": jax.random.PRNGKey(k)})[0]["mlm_logits"]
    a, b, a2 = run(1), run(2), run(1)
    assert np.abs(np.asarray(a) - np.asarray(det["mlm_logits"])).max() > 1e-3
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3
    np.testing.assert_array_equal(a, a2)


def test_lora_and_adapters_start_as_the_plain_model():
    plain_config = small_config()
    model = bert.BertForPreTraining(plain_config)
    plain = nn.unbox(init(model))
    ids, segments = random_batch(np.random.default_rng(5))
    ref, _ = model.apply({"params": plain}, ids, segments)

    lora_config = small_config(lora_rank=3, lora_alpha=6.0)
    lora_model = bert.BertForPreTraining(lora_config)
    lora = traverse_util.flatten_dict(nn.unbox(init(lora_model, seed=7)), sep="/")
    extra = sorted(p for p in lora if "lora" in p)
    assert extra == sorted(f"bert/encoder/layer_{i}/attention/{proj}/lora_{ab}"
                           for i in range(2) for proj in ("query", "value") for ab in "ab")
    assert lora["bert/encoder/layer_0/attention/query/lora_a"].shape == (32, 3)
    assert lora["bert/encoder/layer_0/attention/query/lora_b"].shape == (3, 4, 8)
    merged = dict(traverse_util.flatten_dict(plain, sep="/"))
    merged.update({p: v for p, v in lora.items() if "lora" in p})
    merged = traverse_util.unflatten_dict(merged, sep="/")
    out, _ = lora_model.apply({"params": merged}, ids, segments)
    np.testing.assert_allclose(out["mlm_logits"], ref["mlm_logits"], atol=1e-6)  # B = 0
    # With a non-zero B the layer equals the plain one with W + alpha/r * A @ B (exact algebra).
    flat = traverse_util.flatten_dict(merged, sep="/")
    plain_flat = dict(traverse_util.flatten_dict(plain, sep="/"))
    for i, proj in ((0, "value"), (1, "query")):
        base = f"bert/encoder/layer_{i}/attention/{proj}/"
        b = jax.random.normal(jax.random.PRNGKey(i), (3, 4, 8))
        flat[base + "lora_b"] = b
        plain_flat[base + "kernel"] = plain_flat[base + "kernel"] + 2.0 * jnp.einsum(
            "er,rhd->ehd", flat[base + "lora_a"], b)
    out2, _ = lora_model.apply({"params": traverse_util.unflatten_dict(flat, sep="/")}, ids,
                               segments)
    ref2, _ = model.apply({"params": traverse_util.unflatten_dict(plain_flat, sep="/")}, ids,
                          segments)
    assert np.abs(np.asarray(out2["mlm_logits"]) - np.asarray(ref["mlm_logits"])).max() > 1e-3
    np.testing.assert_allclose(out2["mlm_logits"], ref2["mlm_logits"], atol=1e-5)

    adapter_model = bert.BertForPreTraining(small_config(adapter_size=4))
    adapter = traverse_util.flatten_dict(nn.unbox(init(adapter_model)), sep="/")
    names = {p.split("/", 4)[3] for p in adapter if "adapter" in p}
    assert names == {"attention_adapter", "mlp_adapter"}
    assert adapter["bert/encoder/layer_1/mlp_adapter/down/kernel"].shape == (32, 4)
    # Near-identity at init (up projection ~1e-3), exact identity with up set to zero.
    merged = dict(traverse_util.flatten_dict(plain, sep="/"))
    merged.update({p: v for p, v in adapter.items() if "adapter" in p})
    out, _ = adapter_model.apply({"params": traverse_util.unflatten_dict(merged, sep="/")},
                                 ids, segments)
    np.testing.assert_allclose(out["mlm_logits"], ref["mlm_logits"], atol=1e-2)
    merged.update({p: jnp.zeros_like(v) for p, v in adapter.items() if "adapter" in p
                   and "/up/" in p})
    out, _ = adapter_model.apply({"params": traverse_util.unflatten_dict(merged, sep="/")},
                                 ids, segments)
    np.testing.assert_allclose(out["mlm_logits"], ref["mlm_logits"], atol=1e-6)


def test_bfloat16_compute_keeps_float32_params_and_logits():
    config = small_config(dtype="bfloat16")
    model = bert.BertForPreTraining(config)
    params = nn.unbox(init(model))
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))
    ids, segments = random_batch(np.random.default_rng(6))
    out, inter = model.apply({"params": params}, ids, segments, masked_positions=ids[:, :3] % 10)
    assert out["mlm_logits"].dtype == jnp.float32 and out["nsp_logits"].dtype == jnp.float32
    assert inter["layer_2"].dtype == jnp.bfloat16
    ref, _ = bert.BertForPreTraining(small_config()).apply(
        {"params": params}, ids, segments, masked_positions=ids[:, :3] % 10)
    np.testing.assert_allclose(out["mlm_logits"], ref["mlm_logits"], atol=0.1)


def test_validate_inputs_errors():
    config = small_config()
    ok = np.ones((2, 8), np.int32)
    bert.validate_inputs(config, ok, np.zeros_like(ok), np.ones_like(ok))
    bad = ok.copy()
    bad[1, 3] = VOCAB
    with pytest.raises(ValueError, match=r"token id 97 at \(row, position\) \(1, 3\) is outside "
                                         r"the vocabulary \[0, 97\)"):
        bert.validate_inputs(config, bad)
    bad[1, 3] = -1
    with pytest.raises(ValueError, match="token id -1"):
        bert.validate_inputs(config, bad)
    with pytest.raises(ValueError, match=r"segment id 2 at \(row, position\) \(0, 0\)"):
        bert.validate_inputs(config, ok, np.full_like(ok, 2))
    with pytest.raises(ValueError, match="sequence length 25 exceeds max_position_embeddings=24"):
        bert.validate_inputs(config, np.ones((1, 25), np.int32))
    with pytest.raises(ValueError, match=r"shape \(batch, length\)"):
        bert.validate_inputs(config, np.ones((8,), np.int32))
    with pytest.raises(ValueError, match="input_mask shape"):
        bert.validate_inputs(config, ok, input_mask=np.ones((2, 7)))
    with pytest.raises(ValueError, match=r"masked position 8 at \(row, slot\) \(1, 0\) is outside "
                                         r"the sequence \[0, 8\)"):
        bert.validate_inputs(config, ok, masked_positions=np.array([[0, 7], [8, 1]]))
    with pytest.raises(ValueError, match="masked_positions must have shape"):
        bert.validate_inputs(config, ok, masked_positions=np.array([0, 7]))
    with pytest.raises(ValueError, match="must be integers"):
        bert.validate_inputs(config, ok.astype(np.float32))


def test_a_sequence_longer_than_the_position_table_is_an_error_when_traced():
    # The positions past the table were gathered as NaN: every output NaN, without a word.
    model = bert.BertModel(small_config())
    params = init(model)
    model.apply({"params": params}, jnp.ones((1, 24), jnp.int32))  # the table's length is fine
    with pytest.raises(ValueError, match="sequence length 25 exceeds max_position_embeddings=24"):
        model.apply({"params": params}, jnp.ones((1, 25), jnp.int32))


def test_sharded_apply_matches_unsharded():
    # (2 data x 4 tensor): heads, mlp and vocab split over "tensor", batch over "data".
    config = small_config(num_heads=4, intermediate_size=64, vocab_size=96)
    model = bert.BertForPreTraining(config)
    boxed = init(model)
    params = nn.unbox(boxed)
    ids, segments = random_batch(np.random.default_rng(7), batch=4, length=8, vocab=96)
    ref, _ = model.apply({"params": params}, ids, segments)

    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "tensor"))
    rules = (("batch", "data"), ("length", None), ("vocab", "tensor"), ("embed", None),
             ("heads", "tensor"), ("kv", None), ("mlp", "tensor"))
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
    sharded = jax.device_put(params, shardings)
    kernel = sharded["bert"]["encoder"]["layer_0"]["attention"]["query"]["kernel"]
    assert kernel.sharding.shard_shape(kernel.shape) == (32, 1, 8)

    @jax.jit
    def forward(p, ids, segments):
        with nn.logical_axis_rules(rules):
            return model.apply({"params": p}, ids, segments)[0]

    with jax.set_mesh(mesh):
        out = forward(sharded, ids, segments)
    assert out["sequence_output"].sharding.spec[0] == "data"
    for key in ("mlm_logits", "nsp_logits", "sequence_output"):
        np.testing.assert_allclose(out[key], ref[key], atol=1e-5)


def test_flops_per_token_counts_the_real_matmul_params():
    config = small_config(num_layers=3)
    flat = traverse_util.flatten_dict(nn.unbox(init(bert.BertForPreTraining(config))), sep="/")
    # Every encoder kernel is one multiply-add per weight per token: 2 FLOPs forward, 6 training.
    matmul = sum(v.size for p, v in flat.items()
                 if p.startswith("bert/encoder/") and p.endswith("kernel"))
    seq = 16
    attention = 3 * config.num_layers * 4 * seq * config.hidden_size  # QK^T and PV
    assert bert.flops_per_token(config, seq) == pytest.approx(6 * matmul + attention)
    head = sum(v.size for p, v in flat.items() if p.startswith("mlm_head/") and p.endswith("kernel"))
    vocab_matmul = flat["bert/embeddings/word_embeddings/embedding"].size
    assert bert.mlm_flops_per_prediction(config) == pytest.approx(6 * (head + vocab_matmul))
    per_example = bert.flops_per_example(config, seq, num_predictions=3)
    assert per_example > seq * bert.flops_per_token(config, seq) + 3 * bert.mlm_flops_per_prediction(config)


def test_pretraining_loss_fused_decoder_equals_loss_on_logits():
    """The task's loss (decoder fused into the softmax) equals optax on `mlm_logits`."""
    from tl_jax.tasks import bert_pretrain

    model = bert.BertForPreTraining(small_config())
    params = nn.unbox(init(model))
    # Give the output bias values, so a dropped bias term or gradient would show.
    params["mlm_head"]["output_bias"] = jax.random.normal(jax.random.PRNGKey(3), (VOCAB,))
    rng = np.random.default_rng(1)
    ids, segments = random_batch(rng)
    batch = dict(input_ids=ids, segment_ids=segments, input_mask=np.ones_like(ids),
                 masked_positions=rng.integers(0, 10, (3, 4)),
                 masked_ids=rng.integers(0, VOCAB, (3, 4)),
                 masked_weights=np.array([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], np.float32),
                 nsp_labels=np.array([0, 1, 1]))

    def on_logits(outputs):  # the plain formulation: optax on the materialised logits
        weights = batch["masked_weights"]
        logits = outputs["mlm_logits"]
        mlm_ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["masked_ids"])
        target = jnp.take_along_axis(logits, batch["masked_ids"][..., None], -1)[..., 0]
        nsp_ce = optax.softmax_cross_entropy_with_integer_labels(
            outputs["nsp_logits"], batch["nsp_labels"])
        nsp_correct = jnp.argmax(outputs["nsp_logits"], -1) == batch["nsp_labels"]
        n_pred, n_rows = weights.sum(), 3.0
        metrics = dict(mlm_loss=((mlm_ce * weights).sum(), n_pred),
                       mlm_accuracy=(((target >= logits.max(-1)) * weights).sum(), n_pred),
                       nsp_loss=(nsp_ce.sum(), n_rows), nsp_accuracy=(nsp_correct.sum(), n_rows))
        return (mlm_ce * weights).sum() / n_pred + nsp_ce.sum() / n_rows, metrics

    def loss(p, fused):
        outputs, _ = model.apply({"params": p}, batch["input_ids"], batch["segment_ids"],
                                 batch["input_mask"], masked_positions=batch["masked_positions"])
        return bert_pretrain.pretraining_loss(outputs, batch, p) if fused else on_logits(outputs)

    # Both compiled as one program each: op by op, the reference dispatched (and on a cold
    # cache compiled) every primitive of the forward and backward pass on its own.
    value_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
    (want, want_m), want_g = value_and_grad(params, False)
    (got, got_m), got_g = value_and_grad(params, True)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for key in want_m:
        np.testing.assert_allclose(got_m[key], want_m[key], rtol=1e-6)
    flat_want = traverse_util.flatten_dict(want_g, sep="/")
    flat_got = traverse_util.flatten_dict(got_g, sep="/")
    assert flat_got.keys() == flat_want.keys()
    for path in flat_want:
        np.testing.assert_allclose(flat_got[path], flat_want[path], atol=2e-6, err_msg=path)
    assert np.abs(flat_got["mlm_head/output_bias"]).max() > 1e-3


def test_factorised_embeddings_project_to_the_layers_and_tie_the_decoder():
    """embedding_size != hidden_size: E-wide tables and LayerNorm, `bert/embeddings_project`
    (E, H) before the layers, an MLM transform back to E so the decoder stays tied."""
    assert small_config(embedding_size=32) == small_config()  # = hidden_size: stored as 0
    assert not small_config().factorised and small_config().embedding_width == 32
    with pytest.raises(ValueError, match="embedding_size must be >= 0"):
        small_config(embedding_size=-1)
    config = small_config(embedding_size=12)
    model = bert.BertForPreTraining(config)
    boxed = init(model)
    params = nn.unbox(boxed)
    flat = traverse_util.flatten_dict(params, sep="/")
    shapes = {p: v.shape for p, v in flat.items()}
    assert shapes["bert/embeddings/word_embeddings/embedding"] == (VOCAB, 12)
    assert shapes["bert/embeddings/position_embeddings/embedding"] == (24, 12)
    assert shapes["bert/embeddings/norm/scale"] == (12,)
    assert shapes["bert/embeddings_project/kernel"] == (12, 32)
    assert shapes["bert/embeddings_project/bias"] == (32,)
    assert shapes["bert/encoder/layer_0/attention/query/kernel"] == (32, 4, 8)
    assert shapes["mlm_head/transform/kernel"] == (32, 12)
    assert shapes["mlm_head/transform_norm/scale"] == (12,)
    assert len(flat) == 2 * 16 + 5 + 2 + 2 + 5 + 2  # the projection's kernel and bias added
    specs = traverse_util.flatten_dict(nn.get_partition_spec(boxed), sep="/")
    assert tuple(specs["bert/embeddings_project/kernel"]) == ("embed", None)

    ids, segments = random_batch(np.random.default_rng(4))
    positions = np.array([[1, 2], [0, 9], [5, 5]])
    outputs, inter = model.apply({"params": params}, ids, segments, masked_positions=positions)
    assert outputs["sequence_output"].shape == (3, 10, 32)
    assert outputs["mlm_hidden"].shape == (3, 2, 12)
    # The layers' input (HF's hidden_states[0]) is the projection of the normalised embeddings.
    embedded = bert.BertEmbeddings(config).apply(
        {"params": params["bert"]["embeddings"]}, ids, segments, True)
    kernel, bias = flat["bert/embeddings_project/kernel"], flat["bert/embeddings_project/bias"]
    np.testing.assert_allclose(inter["embeddings"], embedded @ kernel + bias, atol=1e-5)
    assert all(inter[f"layer_{i}"].shape == (3, 10, 32) for i in (1, 2))
    words = flat["bert/embeddings/word_embeddings/embedding"]
    np.testing.assert_allclose(outputs["mlm_logits"],
                               outputs["mlm_hidden"] @ words.T + flat["mlm_head/output_bias"],
                               atol=1e-5)

    from tl_jax.optim import masks
    groups, order = masks.layer_groups(flat)
    assert groups["bert/embeddings_project/kernel"] == "embeddings"
    assert order == ["embeddings", "layer_0", "layer_1", "head"]

    # FLOPs: the projection is one more encoder matmul; the MLM transform is H x E.
    matmul = sum(v.size for p, v in flat.items() if p.endswith("kernel") and p.startswith(
        ("bert/encoder/", "bert/embeddings_project/")))
    attention = 3 * config.num_layers * 4 * 16 * config.hidden_size
    assert bert.flops_per_token(config, 16) == pytest.approx(6 * matmul + attention)
    assert bert.mlm_flops_per_prediction(config) == pytest.approx(
        6 * (flat["mlm_head/transform/kernel"].size + words.size))

"""The GPT decoder: shapes, logical axes, causality, the cache, input checks, and training."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from tl_jax.models import gpt
from tl_jax.models.gpt import GPT, gpt_config, init_cache

VOCAB = 53


@pytest.fixture(scope="module")
def tiny():
    cfg = gpt_config("tiny", VOCAB, max_len=32, dropout_rate=0.1, attention_dropout_rate=0.1,
                     initializer_range=0.2)
    model = GPT(cfg)
    # jit: one compile is cheaper than dispatching every init op eagerly.
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((2, 8), jnp.int32))
    return model, variables


def test_outputs_and_intermediates(tiny):
    model, variables = tiny
    tokens = jax.random.randint(jax.random.PRNGKey(1), (3, 11), 0, VOCAB)
    outputs, inter = model.apply(variables, tokens)
    assert outputs["logits"].shape == (3, 11, VOCAB) and outputs["logits"].dtype == jnp.float32
    assert outputs["hidden"].shape == (3, 11, 64)
    assert list(inter) == ["embeddings", "layer_1", "layer_2"]
    assert all(v.shape == (3, 11, 64) for v in inter.values())
    # The output projection is the token embedding (tied): no separate lm_head parameter.
    params = nn.unbox(variables["params"])
    assert set(params) == {"wte", "wpe", "h_0", "h_1", "ln_f"}
    want = outputs["hidden"] @ params["wte"]["embedding"].T
    np.testing.assert_allclose(outputs["logits"], want, atol=1e-5)


def test_params_carry_logical_axis_names(tiny):
    _, variables = tiny
    specs = nn.get_partition_spec(variables)["params"]
    assert specs["wte"]["embedding"] == jax.sharding.PartitionSpec("vocab", "embed")
    assert specs["h_0"]["attn"]["qkv"]["kernel"] == jax.sharding.PartitionSpec(
        "embed", None, "heads", "kv")
    assert specs["h_0"]["attn"]["out"]["kernel"] == jax.sharding.PartitionSpec(
        "heads", "kv", "embed")
    assert specs["h_1"]["mlp"]["fc"]["kernel"] == jax.sharding.PartitionSpec("embed", "mlp")
    boxed = jax.tree_util.tree_leaves(variables["params"],
                                      is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert all(isinstance(x, nn.Partitioned) for x in boxed)


def test_future_tokens_do_not_change_the_past(tiny):
    model, variables = tiny
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, VOCAB, (2, 16))
    base = np.asarray(model.apply(variables, tokens)[0]["logits"])
    for t in (0, 5, 15):
        changed = tokens.copy()
        changed[:, t:] = rng.integers(0, VOCAB, changed[:, t:].shape)
        out = np.asarray(model.apply(variables, changed)[0]["logits"])
        np.testing.assert_allclose(out[:, :t], base[:, :t], atol=1e-5)
        if t < 15:
            assert not np.allclose(out[:, t:], base[:, t:])


def test_chunked_decoding_with_the_cache_equals_one_pass(tiny):
    model, variables = tiny
    tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 12), 0, VOCAB)
    full = model.apply(variables, tokens)[0]["logits"]
    cache = init_cache(model, 2, 12)
    pieces = []
    decode = jax.jit(lambda v, t, p: model.apply(v, t, positions=p, decode=True,
                                                 mutable=["cache"]))
    for start, stop in ((0, 5), (5, 6), (6, 12)):  # prefill, one token, a chunk
        positions = jnp.broadcast_to(jnp.arange(start, stop), (2, stop - start))
        (out, _), mutated = decode({"params": variables["params"], "cache": cache},
                                   tokens[:, start:stop], positions)
        cache = mutated["cache"]
        pieces.append(out["logits"])
    np.testing.assert_allclose(jnp.concatenate(pieces, 1), full, atol=1e-5)
    assert int(cache["h_0"]["attn"]["cache_index"]) == 12


def test_query_blocks_halve_until_blocks_of_64_positions():
    assert [gpt.query_blocks(n) for n in (1, 12, 127, 128, 192, 256, 512, 1024, 4096)] == [
        1, 1, 1, 2, 2, 4, 8, 8, 8]


@pytest.mark.parametrize("length", [128, 256])
def test_attention_in_query_blocks_is_the_one_block_pass(length, monkeypatch):
    """The training pass scores each block of queries against the keys up to its end only: its
    outputs and gradients are those of scoring every query against every key, and decoding with
    the cache (one block) gives the same logits. Left-padded rows agree at their real tokens."""
    assert gpt.query_blocks(length) > 1
    cfg = gpt_config("tiny", VOCAB, max_len=length, initializer_range=0.2)
    model = GPT(cfg)
    tokens = jax.random.randint(jax.random.PRNGKey(3), (2, length), 0, VOCAB)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), tokens)
    key_mask = jnp.ones((2, length), bool).at[1, :70].set(False)  # row 1: 70 pads on the left

    def loss(params, tokens, mask):
        out = model.apply({"params": params}, tokens, key_mask=mask)[0]["logits"]
        return jnp.sum(jnp.where(mask[..., None], jnp.tanh(out), 0.0)), out

    def run():
        grad = jax.jit(jax.value_and_grad(loss, has_aux=True))
        return [grad(variables["params"], tokens, m) for m in (jnp.ones_like(key_mask), key_mask)]

    blocked = run()
    monkeypatch.setattr(gpt, "query_blocks", lambda n: 1)
    whole = run()
    for ((value, logits), grads), ((value1, logits1), grads1), mask in zip(
            blocked, whole, (jnp.ones_like(key_mask), key_mask)):
        np.testing.assert_allclose(np.asarray(logits)[np.asarray(mask)],
                                   np.asarray(logits1)[np.asarray(mask)], atol=2e-5)
        np.testing.assert_allclose(value, value1, rtol=1e-5)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads1)):
            # float32 sums in another order: within a millionth of the leaf's largest gradient
            np.testing.assert_allclose(a, b, atol=1e-6 * float(jnp.abs(b).max()), rtol=1e-4)
    monkeypatch.undo()
    cache = init_cache(model, 2, length)
    positions = jnp.broadcast_to(jnp.arange(length), (2, length))
    (out, _), _ = model.apply({"params": variables["params"], "cache": cache}, tokens,
                              positions=positions, decode=True, mutable=["cache"])
    np.testing.assert_allclose(out["logits"], blocked[0][0][1], atol=2e-5)


def test_dropout_only_in_training(tiny):
    model, variables = tiny
    tokens = jnp.ones((1, 8), jnp.int32)
    a = model.apply(variables, tokens, train=True, rngs={"dropout": jax.random.PRNGKey(0)})
    b = model.apply(variables, tokens, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    assert not np.allclose(a[0]["logits"], b[0]["logits"])
    np.testing.assert_array_equal(model.apply(variables, tokens)[0]["logits"],
                                  model.apply(variables, tokens)[0]["logits"])


def test_bad_inputs_get_clear_errors(tiny):
    model, variables = tiny
    cfg = model.config
    with pytest.raises(ValueError, match="outside the vocabulary"):
        gpt.check_tokens(np.array([[1, VOCAB]]), cfg)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        gpt.check_tokens(np.array([[-1, 2]]), cfg)
    with pytest.raises(ValueError, match="exceeds the model's max_len"):
        gpt.check_tokens(np.zeros((1, 33), np.int32), cfg)
    with pytest.raises(ValueError, match="exceeds max_len"):
        model.apply(variables, jnp.zeros((1, 33), jnp.int32))
    with pytest.raises(ValueError, match="exceeds max_len"):
        init_cache(model, 1, 40)
    with pytest.raises(ValueError, match="divisible"):
        gpt_config("tiny", 10, num_heads=3)
    with pytest.raises(ValueError, match="Unknown GPT size"):
        gpt_config("huge", 10)


@pytest.mark.parametrize("field, rate", [("dropout_rate", 10.0), ("dropout_rate", 1.0),
                                         ("attention_dropout_rate", -0.1)])
def test_dropout_rates_outside_zero_to_one_are_errors(field, rate):
    # 10 (for 10%) dropped every unit: a GPT run trained on zeros without a word.
    with pytest.raises(ValueError, match=rf"GPTConfig: {field}={rate} must be in \[0, 1\)"):
        gpt_config("tiny", 10, **{field: rate})
    for fine in (0.0, 0.1, 0.9):  # as GPT-2's config.json files have them
        assert getattr(gpt_config("tiny", 10, **{field: fine}), field) == fine


def test_size_table_matches_gpt2_shapes():
    small = gpt_config("small", 50257)
    medium = gpt_config("medium", 50257)
    assert (small.num_layers, small.embed_dim, small.num_heads, small.max_len) == (12, 768, 12, 1024)
    assert (medium.num_layers, medium.embed_dim, medium.num_heads) == (24, 1024, 16)
    shapes = jax.eval_shape(lambda: GPT(small).init(jax.random.PRNGKey(0),
                                                    jnp.zeros((1, 4), jnp.int32)))
    assert gpt.param_count(shapes["params"]) == 124_439_808  # GPT-2 small's count


def test_training_lowers_the_loss():
    cfg = gpt_config("tiny", 32, max_len=16, dropout_rate=0.0, attention_dropout_rate=0.0)
    model = GPT(cfg)
    # A periodic sequence: a causal LM can learn it exactly.
    tokens = jnp.asarray(np.tile(np.arange(7), 10)[None, :17].repeat(4, 0) + np.arange(4)[:, None])
    params = nn.unbox(model.init(jax.random.PRNGKey(0), tokens[:, :-1])["params"])
    tx = optax.adam(3e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt):
        def loss_fn(p):
            logits = model.apply({"params": p}, tokens[:, :-1])[0]["logits"]
            return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt = tx.update(grads, opt)
        return optax.apply_updates(params, updates), opt, loss

    losses = []
    for _ in range(60):
        params, opt, loss = step(params, opt)
        losses.append(float(loss))
    assert losses[-1] < 0.3 * losses[0]


def test_pretrain_then_classify_configs_run_with_the_trainer(tmp_path, data_dir, monkeypatch):
    """Smoke runs of both GPT configs through the real trainer: pretrain a tiny LM, then
    fine-tune a classifier from it (ULMFiT chain), checking the warm start took the LM."""
    from tl_jax import config as config_lib, train
    from tl_jax.tasks import clm

    monkeypatch.setenv("TL_JAX_DATA_DIR", str(data_dir))
    lm_dir = str(tmp_path / "lm")
    cfg = config_lib.load_config("configs/gpt_pretrain.py:tiny", [
        f"data.corpus={data_dir}/polarity_sentences.jsonl", "train.steps=6",
        "data.batch_size=8", "data.eval_batch_size=8",
        "train.eval_every=6", "train.checkpoint_every=6",
        "train.progress=False", "data.tokenizer_vocab_size=400",
        "data.seq_len=32",
        # 8 fake devices as data 2 x fsdp 2 x tensor 2: every GPT parameter's logical axes
        # ("vocab", "embed", "heads", "mlp") meet a real mesh axis.
        "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"])
    result = train.train_and_evaluate(cfg, lm_dir)
    assert result.summary["step"] == 6
    qkv = result.state["params"]["h_0"]["attn"]["qkv"]["kernel"]
    assert qkv.sharding.spec == jax.sharding.PartitionSpec("fsdp", None, "tensor", None)
    assert np.isfinite(result.summary["eval/perplexity"])
    assert result.summary["eval/perplexity"] < 400  # below uniform over the vocabulary

    # Generation from the workdir uses the same weights.
    from tl_jax import generate
    model, params, tok = generate.load_model(lm_dir)
    lm_params = jax.device_get(result.state["params"])
    np.testing.assert_array_equal(params["wte"]["embedding"], lm_params["wte"]["embedding"])

    cls_cfg = config_lib.load_config("configs/gpt_finetune_classify.py:tiny", [
        f"init_from={lm_dir}", "data.max_train_examples=32",
        "data.max_eval_examples=16", "train.progress=False"])
    cls = train.train_and_evaluate(cls_cfg, str(tmp_path / "cls"))
    assert cls.summary["step"] == 2 and "eval/accuracy" in cls.summary
    cls_params = jax.device_get(cls.state["params"])
    assert set(cls_params) == {"gpt", "head"}
    # Warm-started (then trained 2 steps at a small lr): close to the LM, far from a fresh init.
    diff = np.abs(cls_params["gpt"]["wpe"]["embedding"] - lm_params["wpe"]["embedding"]).max()
    assert diff < 0.05
    assert clm.Task  # the task module imports


def test_gpt_classifier_concat_pooling_is_ulmfits_last_max_mean_over_the_text():
    """pooling="concat" is ULMFiT's [h_T, maxpool(H), meanpool(H)] over the text's states only:
    padding (whatever its ids) does not enter the max or the mean."""
    from tl_jax.tasks.lm_classify import GPTClassifier

    cfg = gpt_config("tiny", VOCAB, max_len=16, initializer_range=0.2)
    model = GPTClassifier(cfg, num_labels=3, pooling="concat")
    tokens = np.array([[5, 9, 2, 7, 0, 0, 0, 0], [4, 1, 8, 3, 6, 2, 9, 11]], np.int32)
    lengths = np.array([4, 8], np.int32)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), tokens, lengths)
    out, _ = model.apply(variables, tokens, lengths)
    hidden = GPT(cfg).apply({"params": variables["params"]["gpt"]}, tokens)[0]["hidden"]
    for b, n in enumerate(lengths):
        text = np.asarray(hidden[b, :n])
        expected = np.concatenate([text[-1], text.max(0), text.mean(0)])
        np.testing.assert_allclose(out["pooled"][b], expected, rtol=1e-5, atol=1e-6)
    padded = tokens.copy()
    padded[0, 4:] = 50  # other padding ids: the same pooled text
    np.testing.assert_allclose(model.apply(variables, padded, lengths)[0]["logits"],
                               out["logits"], rtol=1e-5, atol=1e-6)
    assert nn.unbox(variables["params"]["head"]["kernel"]).shape == (3 * cfg.embed_dim, 3)


def test_flops_per_token_counts_the_real_matmul_params():
    """6 FLOPs per matmul weight per token (the tied output projection once, the MLP at its
    configured width) plus PaLM's 12 L E T for attention; no vocabulary projection for a
    classifier, which never computes the logits."""
    from flax import traverse_util

    cfg = gpt_config("tiny", VOCAB, max_len=32, mlp_dim=3 * 64)  # not 4 * embed_dim
    shapes = jax.eval_shape(lambda: GPT(cfg).init(jax.random.PRNGKey(0),
                                                  jnp.zeros((1, 4), jnp.int32)))
    flat = traverse_util.flatten_dict(nn.unbox(shapes["params"]), sep="/")
    kernels = sum(np.prod(v.shape) for p, v in flat.items() if p.endswith("kernel"))
    head = cfg.vocab_size * cfg.embed_dim  # tied to wte
    seq = 16
    attention = 6 * cfg.num_layers * 2 * seq * cfg.embed_dim
    assert cfg.flops_per_token(seq) == pytest.approx(6 * (kernels + head) + attention)
    assert cfg.flops_per_token(seq, logits=False) == pytest.approx(6 * kernels + attention)

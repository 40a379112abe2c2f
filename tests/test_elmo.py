"""ELMo biLM: LSTM cell vs NumPy, direction/causality and padding properties, sampled softmax,
the bilm task learning on real text, and ELMo features with a scalar mix."""
import dataclasses
import json
import pathlib

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tl_jax import config as config_lib
from tl_jax import elmo_features
from tl_jax.models import elmo
from tl_jax.tasks import bilm

CONFIG = str(pathlib.Path(__file__).resolve().parent.parent / "configs" / "elmo_pretrain.py")
TINY = elmo.elmo_config("tiny", vocab_size=30)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_lstm_projection_cell_matches_numpy_reference():
    hidden, proj, dim, b, steps = 6, 4, 5, 3, 7
    cell = elmo.LSTMProjCell(hidden, proj, cell_clip=0.8, proj_clip=0.5)
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(steps, b, dim)).astype(np.float32)
    carry = (jnp.zeros((b, hidden)), jnp.zeros((b, proj)))
    params = cell.init(jax.random.PRNGKey(1), carry, xs[0])["params"]
    # Kernels come boxed with their logical axes (nn.Partitioned), as every model's params do.
    p = jax.tree_util.tree_map(np.asarray, flax.linen.unbox(params))
    c_np, h_np = np.zeros((b, hidden)), np.zeros((b, proj))
    for t in range(steps):
        carry, out = cell.apply({"params": params}, carry, xs[t])
        gates = xs[t] @ p["input"]["kernel"] + p["input"]["bias"] + h_np @ p["recurrent"]["kernel"]
        i, f, g, o = np.split(gates, 4, axis=-1)
        c_np = np.clip(_sigmoid(f) * c_np + _sigmoid(i) * np.tanh(g), -0.8, 0.8)
        h_np = np.clip((_sigmoid(o) * np.tanh(c_np)) @ p["projection"]["kernel"], -0.5, 0.5)
        np.testing.assert_allclose(carry[0], c_np, atol=1e-5)
        np.testing.assert_allclose(out, h_np, atol=1e-5)
    assert np.abs(c_np).max() <= 0.8 + 1e-6 and np.abs(h_np).max() <= 0.5 + 1e-6


def test_gate_bias_inits_reproduce_the_references_and_default_to_zero():
    """bilm-tf (LSTMCell forget_bias=1.0) and AllenNLP (LstmCellWithProjection) start the forget
    gate at sigmoid(1) = 0.73, and AllenNLP's Highway starts its carry gate there too; the
    config fields give that, and their 0 default keeps the gates at 0.5 (the README's runs)."""
    hidden, proj, dim = 6, 4, 5
    carry = (jnp.ones((1, hidden)), jnp.zeros((1, proj)))
    x = jnp.zeros((1, dim))
    for value in (0.0, 1.0):
        cell = elmo.LSTMProjCell(hidden, proj, forget_bias_init=value)
        params = cell.init(jax.random.PRNGKey(1), carry, x)["params"]
        (c, _), _ = cell.apply({"params": params}, carry, x)  # x = h = 0: only the biases act
        np.testing.assert_allclose(c, _sigmoid(value), rtol=1e-6)  # + sigmoid(0) * tanh(0)
    for value, cfg in ((0.0, TINY), (1.0, elmo.elmo_config("tiny", vocab_size=30,
                                                            forget_bias_init=1.0,
                                                            highway_gate_bias_init=1.0))):
        params = elmo.BiLM(cfg).init(jax.random.PRNGKey(0), *_bilm_inputs([["a", "b"]]))["params"]
        h = cfg.lstm_dim
        for i in range(cfg.num_layers):
            for direction in ("forward", "backward"):
                bias = np.asarray(params[f"{direction}_{i}"]["input"]["bias"])
                np.testing.assert_array_equal(bias[h:2 * h], value)  # forget gate of (i, f, g, o)
                np.testing.assert_array_equal(np.delete(bias, np.s_[h:2 * h]), 0.0)
        for i in range(cfg.highway_layers):
            bias = np.asarray(params["char_cnn"][f"highway_{i}"]["bias"])
            np.testing.assert_array_equal(bias[:cfg.cnn_features], 0.0)  # the relu(W x) part
            np.testing.assert_array_equal(bias[cfg.cnn_features:], value)  # the carry gate


def test_bilm_task_passes_the_gate_bias_inits_from_the_config(data_dir):
    _, task = _tiny_task(data_dir, "model.forget_bias_init=1.0",
                         "model.highway_gate_bias_init=1.0")
    assert (task.model_config.forget_bias_init, task.model_config.highway_gate_bias_init) == (
        1.0, 1.0)
    _, task = _tiny_task(data_dir)
    assert (task.model_config.forget_bias_init, task.model_config.highway_gate_bias_init) == (
        0.0, 0.0)


def test_reverse_padded_reverses_real_steps_only_and_is_an_involution():
    x = jnp.arange(12.0).reshape(2, 6)[..., None]  # (B, T, 1)
    lengths = jnp.array([4, 6])
    rev = elmo.reverse_padded(x, lengths)
    np.testing.assert_array_equal(rev[0, :, 0], [3, 2, 1, 0, 4, 5])
    np.testing.assert_array_equal(rev[1, :, 0], [11, 10, 9, 8, 7, 6])
    np.testing.assert_array_equal(elmo.reverse_padded(rev, lengths), x)


def test_char_ids_mark_word_boundaries_and_sentence_markers():
    ids = elmo.char_ids(["ab", elmo.BOS_TOKEN, "é", "x" * 20], max_chars=6)
    np.testing.assert_array_equal(ids[0], [elmo.BOW, ord("a") + 1, ord("b") + 1, elmo.EOW, 0, 0])
    np.testing.assert_array_equal(ids[1], [elmo.BOW, elmo.BOS_CHAR, elmo.EOW, 0, 0, 0])
    assert list(ids[2, 1:3]) == [b + 1 for b in "é".encode()]  # UTF-8 bytes
    assert ids[3, -1] == elmo.EOW and (ids[3, 1:-1] == ord("x") + 1).all()  # cut to fit


def _bilm_inputs(sentences, max_chars=TINY.max_chars):
    return elmo_features.encode_sentences(sentences, max_chars)


def test_bilm_directions_see_only_their_side_and_ignore_padding():
    model = elmo.BiLM(TINY)
    chars, mask = _bilm_inputs([["a", "b", "c", "d", "e"], ["f", "g"]])
    params = model.init(jax.random.PRNGKey(0), chars, mask)["params"]
    out, inter = model.apply({"params": params}, chars, mask)
    assert set(inter) == {"char_cnn", "lstm_1", "lstm_2"}
    for v in inter.values():
        assert v.shape == (2, 7, 2 * TINY.projection_dim)
    # Change token 3 ("c", framed position 3) of sentence 0.
    chars2 = chars.copy()
    chars2[0, 3] = elmo.char_ids(["zz"], TINY.max_chars)[0]
    out2, _ = model.apply({"params": params}, chars2, mask)
    fwd_changed = np.abs(out["forward"][0] - out2["forward"][0]).max(-1) > 1e-6
    bwd_changed = np.abs(out["backward"][0] - out2["backward"][0]).max(-1) > 1e-6
    np.testing.assert_array_equal(fwd_changed, np.arange(7) >= 3)  # forward: t >= 3 only
    np.testing.assert_array_equal(bwd_changed, np.arange(7) <= 3)  # backward: t <= 3 only
    # Extra padding changes nothing for the real positions of the short sentence.
    chars3, mask3 = elmo_features.encode_sentences([["f", "g"]], TINY.max_chars, max_len=9)
    out3, _ = model.apply({"params": params}, chars3, mask3)
    for k in ("forward", "backward"):
        np.testing.assert_allclose(out3[k][0, :4], out[k][1, :4], atol=1e-5)
    # The softmax is one matrix for both directions.
    assert model.apply({"params": params}, out["forward"], method=elmo.BiLM.logits).shape == \
        (2, 7, TINY.vocab_size)


def test_sampled_softmax_correction_and_accidental_hits():
    v = 1000
    ids = jnp.arange(bilm.FIRST_CANDIDATE, v)  # the ids that are drawn (all but <pad>)
    q = jnp.exp(bilm.log_uniform_log_q(ids, v, 1))
    assert float(jnp.sum(q)) == pytest.approx(1.0, abs=1e-4)
    assert bool(jnp.all(jnp.diff(q) < 0))  # frequent (low) ids are sampled more often
    rng = np.random.default_rng(0)
    kernel = jnp.asarray(rng.normal(size=(v, 8)), jnp.float32)
    bias = jnp.zeros(v)
    hidden = jnp.asarray(rng.normal(size=(64, 8)), jnp.float32)
    targets = jnp.asarray(rng.integers(bilm.FIRST_CANDIDATE, 50, 64))
    full = optax.softmax_cross_entropy_with_integer_labels(hidden @ kernel.T + bias, targets)
    sampled = jnp.stack([bilm.sampled_softmax_nll(hidden, targets, kernel, bias,
                                                  jax.random.PRNGKey(s), 400) for s in range(8)])
    assert bool(jnp.all(jnp.isfinite(sampled)))
    # Importance-corrected sampled NLL tracks the full NLL across positions.
    corr = np.corrcoef(np.asarray(full), np.asarray(sampled.mean(0)))[0, 1]
    assert corr > 0.9


def test_sampled_softmax_never_draws_pad():
    """<pad> (id 0) is never a target; under log-uniform sampling over all ids it was the most
    likely draw. Make its logit huge: one draw of it would dominate every position's NLL."""
    v, s = 2000, 64
    kernel = jnp.zeros((v, 4)).at[bilm.PAD_ID].set(100.0)
    hidden = jnp.ones((16, 4))
    targets = jnp.arange(16) + 10
    for seed in range(20):
        nll = bilm.sampled_softmax_nll(hidden, targets, kernel, jnp.zeros(v),
                                       jax.random.PRNGKey(seed), s)
        # Without pad every logit is 0 before the correction: the NLL is log(1 + sum of 1/(SQ)).
        assert float(nll.max()) < 20.0, seed
    draws = bilm.log_uniform_candidates(jax.random.PRNGKey(0), v, 100_000)
    assert int(draws.min()) == bilm.FIRST_CANDIDATE and int(draws.max()) <= v - 1
    # Padding targets (weight 0 in the loss) must not make the NLL NaN or infinite.
    pad_nll = bilm.sampled_softmax_nll(hidden, jnp.full((16,), bilm.PAD_ID), jnp.zeros((v, 4)),
                                       jnp.zeros(v), jax.random.PRNGKey(0), s)
    assert bool(jnp.all(jnp.isfinite(pad_nll)))


def test_sampled_candidate_frequencies_match_the_correction():
    """The logit correction log(S Q(id)) must be the distribution the candidates come from:
    draw 2M candidates, compare per-id counts with S Q (Pearson chi-square over ids binned to
    an expected count >= 50) and per-id frequencies with Q."""
    v, draws = 2000, 2_000_000
    ids = bilm.log_uniform_candidates(jax.random.PRNGKey(3), v, draws)
    counts = np.bincount(np.asarray(ids), minlength=v).astype(np.float64)
    expected = np.exp(np.asarray(bilm.log_uniform_log_q(jnp.arange(v), v, draws),
                                 np.float64))
    expected[:bilm.FIRST_CANDIDATE] = 0.0  # ids below the first candidate are never drawn
    assert counts[:bilm.FIRST_CANDIDATE].sum() == 0
    assert expected.sum() == pytest.approx(draws, rel=1e-4)
    assert np.abs(counts / draws - expected / draws).max() < 1e-3
    # Bin consecutive ids until each bin expects >= 50 draws, then chi-square.
    obs_bins, exp_bins, o, e = [], [], 0.0, 0.0
    for c, x in zip(counts[bilm.FIRST_CANDIDATE:], expected[bilm.FIRST_CANDIDATE:]):
        o, e = o + c, e + x
        if e >= 50:
            obs_bins.append(o), exp_bins.append(e)
            o, e = 0.0, 0.0
    obs_bins[-1] += o
    exp_bins[-1] += e
    obs_bins, exp_bins = np.array(obs_bins), np.array(exp_bins)
    chi2 = float(np.sum((obs_bins - exp_bins) ** 2 / exp_bins))
    dof = len(obs_bins) - 1
    # Mean dof, sd sqrt(2 dof): 5 sd is far out for a correct sampler; a wrong Q is far past it.
    assert chi2 < dof + 5 * np.sqrt(2 * dof), (chi2, dof)


@pytest.mark.parametrize("rate", ["10.0", "-0.1"])
def test_a_dropout_rate_outside_0_1_is_named_before_the_corpus_is_read(tmp_path, rate):
    """model.dropout_rate=10 (for 10%) dropped every unit, so the biLM trained on zeros without
    a word; it is named by its key before the corpus (which does not exist here) is read, and
    ElmoConfig refuses it too (a hand-edited elmo_config.json)."""
    config = config_lib.load_config(CONFIG + ":tiny", [f"data.corpus={tmp_path / 'not_read'}",
                                                       f"model.dropout_rate={rate}"])
    with pytest.raises(ValueError, match=rf"^model.dropout_rate={rate} must be in \[0, 1\)"):
        bilm.Task(config, str(tmp_path / "run"))
    with pytest.raises(ValueError, match=rf"ElmoConfig.dropout_rate={rate} must be in"):
        elmo.elmo_config("tiny", 100, dropout_rate=float(rate))


def test_a_damaged_elmo_config_json_is_named(tmp_path):
    """load_elmo (ELMo features, probes) read elmo_config.json with json.load and ElmoConfig:
    a hand-edited file failed as a bare JSONDecodeError, KeyError or TypeError, or as
    "ElmoConfig.dropout_rate=10.0 ..." without the file."""
    path = tmp_path / "elmo_config.json"
    good = dataclasses.asdict(elmo.elmo_config("tiny", 100))
    cases = [("{not json", r"elmo_config.json:1: invalid JSON"),
             (json.dumps({k: v for k, v in good.items() if k != "filters"}),
              r"elmo_config.json: not a biLM config \(no field 'filters'\)"),
             (json.dumps({**good, "colour": 1}), r"elmo_config.json: not a biLM config \(.*colour"),
             (json.dumps({**good, "dropout_rate": 10.0}),
              r"elmo_config.json: not a biLM config \(ElmoConfig.dropout_rate=10.0 must be in")]
    for text, message in cases:
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            elmo_features.load_elmo(str(tmp_path))


def _tiny_task(data_dir, *overrides):
    assert data_dir.exists()
    config = config_lib.load_config(CONFIG + ":tiny", ["data.max_units=300", *overrides])
    return config, bilm.Task(config, workdir=None)


def test_full_softmax_gives_pad_no_probability(data_dir):
    """Training never draws <pad> (id 0) and never has it as a target, so its softmax row is
    untrained: the full softmax of eval and of sampled_softmax=0 training must leave it out of
    the normaliser. A huge <pad> logit must change neither perplexity nor the gradients, and
    the padding targets (weight 0) must not turn the sums into inf or NaN."""
    _, task = _tiny_task(data_dir)
    batch = task.eval_batches()[0]
    assert not np.asarray(batch["mask"]).all()  # padding targets are scored too
    params = flax.linen.unbox(task.init_variables(jax.random.PRNGKey(0), batch)["params"])
    huge = dict(params, softmax_bias=params["softmax_bias"].at[bilm.PAD_ID].set(1e4))
    ppl = [bilm.perplexities([jax.tree.map(np.asarray, task.predict_fn(p, batch))])
           for p in (params, huge)]
    assert all(np.isfinite(v) for v in ppl[1].values()), ppl
    assert ppl[1] == pytest.approx(ppl[0], rel=1e-6)
    vocab = len(task.vocab)
    assert 0.1 * vocab < ppl[0]["forward_perplexity"] < 10 * vocab  # untrained: about V

    def grads(p):
        return jax.grad(lambda p: task.loss_fn(p, batch, jax.random.PRNGKey(1), True)[0])(p)

    g, g_huge = grads(params), grads(huge)
    for leaf in jax.tree.leaves(g_huge):
        assert np.isfinite(np.asarray(leaf)).all()
    assert float(jnp.abs(g_huge["softmax_bias"][bilm.PAD_ID])) == 0.0
    assert not np.asarray(g_huge["softmax_kernel"][bilm.PAD_ID]).any()
    np.testing.assert_allclose(g_huge["softmax_bias"], g["softmax_bias"], rtol=1e-5, atol=1e-8)


def test_bilm_task_learns_on_real_text(data_dir):
    # Trained with the sampled softmax; evaluated (loss_fn with train=False) with the full one.
    config, task = _tiny_task(data_dir, "loss.sampled_softmax=64", "data.batch_size=16")
    batches = task.train_batches()
    first = next(batches)
    assert set(first) == {"token_ids", "chars", "mask"}
    assert (first["token_ids"][:, 0] == task.vocab.index(elmo.BOS_TOKEN)).all()
    params = task.init_variables(jax.random.PRNGKey(0), task.example_batch(16))["params"]
    params = flax.linen.unbox(params)
    tx = optax.adam(3e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, batch, rng):
        (loss, metrics), grads = jax.value_and_grad(task.loss_fn, has_aux=True)(
            params, batch, rng, True)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    eval_batch = task.eval_batches()[0]
    before, _ = task.loss_fn(params, eval_batch, jax.random.PRNGKey(0), False)
    for i in range(25):
        params, opt, _ = step(params, opt, next(batches), jax.random.PRNGKey(i))
    after, metrics = task.loss_fn(params, eval_batch, jax.random.PRNGKey(0), False)
    assert float(after) < float(before) - 0.5
    ppl = bilm.perplexities([task.predict_fn(params, eval_batch)])
    assert ppl["forward_perplexity"] == pytest.approx(
        float(np.exp(metrics["forward_nll"][0] / metrics["forward_nll"][1])), rel=1e-4)
    assert 1.0 < ppl["backward_perplexity"] < len(task.vocab)
    # The iterator resumes exactly where it stopped.
    state = batches.get_state()
    expected = next(batches)
    batches.set_state(state)
    np.testing.assert_array_equal(next(batches)["chars"], expected["chars"])


def test_elmo_features_batch_layer_norm_is_allennlps_over_the_framed_sentences():
    """layer_norm_stats="batch": one mean/variance per layer over every unpadded framed position
    of the batch, <S> and </S> included (AllenNLP's Elmo), markers stripped after the mix."""
    chars, mask = _bilm_inputs([["a", "b", "c"], ["d"]])
    encoder = elmo_features.ElmoEncoder(TINY, mode="scalar_mix", layer_norm=True,
                                        layer_norm_stats="batch")
    variables = encoder.init(jax.random.PRNGKey(0), chars, mask)
    features, out = encoder.apply(variables, chars, mask)
    _, hidden = elmo.BiLM(TINY).apply({"params": variables["params"]["elmo"]}, chars, mask)
    m = np.asarray(mask, np.float64)[..., None]
    want = 0.0
    for name in elmo_features.layer_names(TINY):
        x = np.asarray(hidden[name], np.float64)
        n = m.sum() * x.shape[-1]
        mean = (x * m).sum() / n
        var = (((x - mean) * m) ** 2).sum() / n
        want = want + (x - mean) / np.sqrt(var + 1e-12) / 3.0
    want = want[:, 1:-1] * np.asarray(out["mask"])[..., None]
    np.testing.assert_allclose(features, want, rtol=1e-4, atol=1e-4)


def test_elmo_features_scalar_mix_modes_and_frozen_bilm():
    chars, mask = _bilm_inputs([["a", "b", "c"], ["d"]])
    encoder = elmo_features.ElmoEncoder(TINY, mode="scalar_mix")
    params = flax.linen.unbox(encoder.init(jax.random.PRNGKey(0), chars, mask)["params"])
    params = dict(params, scalar_mix={"scalars": jnp.array([0.0, np.log(2.0), np.log(5.0)]),
                                      "gamma": jnp.array(2.0)})
    feats, out = encoder.apply({"params": params}, chars, mask)
    assert feats.shape == (2, 3, 2 * TINY.projection_dim)
    np.testing.assert_array_equal(out["mask"], [[1, 1, 1], [1, 0, 0]])
    w = np.array([1.0, 2.0, 5.0]) / 8.0
    layers = [out[n] for n in elmo_features.layer_names(TINY)]
    want = 2.0 * sum(wi * np.asarray(x) for wi, x in zip(w, layers))
    np.testing.assert_allclose(feats, want * np.asarray(out["mask"])[..., None], atol=1e-5)
    # Frozen: gradients reach the mix but not the biLM.
    grads = jax.grad(lambda p: jnp.sum(encoder.apply({"params": p}, chars, mask)[0] ** 2))(params)
    assert float(jnp.abs(grads["scalar_mix"]["scalars"]).sum()) > 0
    assert all(float(jnp.abs(g).sum()) == 0 for g in jax.tree_util.tree_leaves(grads["elmo"]))
    # Other modes, and loading pretrained biLM weights by shape.
    top = elmo_features.ElmoEncoder(TINY, mode="top")
    f_top, _ = top.apply({"params": {"elmo": params["elmo"]}}, chars, mask)
    np.testing.assert_allclose(f_top, out["lstm_2"] * np.asarray(out["mask"])[..., None],
                               atol=1e-6)
    concat = elmo_features.ElmoEncoder(TINY, mode="all")
    assert concat.apply({"params": {"elmo": params["elmo"]}}, chars, mask)[0].shape[-1] == \
        3 * 2 * TINY.projection_dim
    fresh = encoder.init(jax.random.PRNGKey(5), chars, mask)
    loaded = elmo_features.with_pretrained_elmo(fresh, params["elmo"])
    np.testing.assert_array_equal(loaded["params"]["elmo"]["softmax_kernel"],
                                  params["elmo"]["softmax_kernel"])
    other = elmo.BiLM(elmo.elmo_config("tiny", vocab_size=31)).init(
        jax.random.PRNGKey(0), chars, mask)["params"]
    with pytest.raises(ValueError, match="do not match"):
        elmo_features.with_pretrained_elmo(fresh, other)


def test_elmo_classifier_trains_its_head_and_mix_on_frozen_features():
    chars, mask = _bilm_inputs([["good", "film"], ["bad", "film", "!"]] * 4)
    labels = jnp.array([0, 1] * 4)
    model = elmo_features.ElmoClassifier(TINY, num_classes=2, dropout_rate=0.0)
    params = flax.linen.unbox(model.init(jax.random.PRNGKey(0), chars, mask)["params"])
    assert set(params) == {"encoder", "classifier"}
    elmo_before = params["encoder"]["elmo"]
    tx = optax.adam(0.05)
    opt = tx.init(params)

    def loss_fn(p):
        logits, _ = model.apply({"params": p}, chars, mask)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @jax.jit
    def step(p, o):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, o = tx.update(grads, o, p)
        return optax.apply_updates(p, updates), o, loss

    losses = []
    for _ in range(15):
        params, opt, loss = step(params, opt)
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]
    jax.tree_util.tree_map(np.testing.assert_array_equal, params["encoder"]["elmo"], elmo_before)
    tagger = elmo_features.ElmoClassifier(TINY, num_classes=3, per_token=True)
    logits, _ = tagger.apply(tagger.init(jax.random.PRNGKey(0), chars, mask), chars, mask)
    assert logits.shape == (8, 3, 3)


def test_resume_check_accepts_the_biLM_config_after_its_json_round_trip():
    # The checkpoint stores the resolved ElmoConfig as JSON, which turns the nested filter
    # tuples into lists; resuming a bilm workdir must not see that as a changed model.
    import dataclasses
    import json

    from tl_jax import checkpoint as ckpt_lib
    current = {"resolved_model": dataclasses.asdict(TINY)}
    saved = json.loads(json.dumps(current))
    assert ckpt_lib.config_differences(saved, current, sections=("resolved_model",)) == []
    changed = json.loads(json.dumps({"resolved_model": dataclasses.asdict(
        dataclasses.replace(TINY, filters=((1, 8), (2, 9))))}))
    assert ckpt_lib.config_differences(changed, current, sections=("resolved_model",))


def test_a_vocabulary_left_in_the_workdir_is_kept_only_by_a_run_that_resumes(data_dir, tmp_path):
    config, task = _tiny_task(data_dir)
    task.save(str(tmp_path))
    full = len(task.vocab)
    smaller = config_lib.load_config(CONFIG + ":tiny", ["data.max_units=300", "data.max_vocab=50"])
    # No checkpoint: the run that wrote vocab.txt never saved, so the config decides.
    assert len(bilm.Task(smaller, workdir=str(tmp_path)).vocab) < full
    (tmp_path / "checkpoints" / "10").mkdir(parents=True)
    assert len(bilm.Task(smaller, workdir=str(tmp_path)).vocab) == full


def test_a_run_continued_from_a_bilm_workdir_keeps_its_vocabulary(data_dir, tmp_path, capsys):
    # The vocabulary was built from the new run's corpus: two corpora capped at one
    # data.max_vocab give vocabularies of one size, so init_from's softmax rows were taken
    # over without a shape error and each stood for another word.
    source = config_lib.load_config(CONFIG + ":tiny", [
        f"data.corpus={data_dir}/polarity_sentences.jsonl", "data.max_vocab=50"])
    (tmp_path / "src").mkdir()
    bilm.Task(source, workdir=None).save(str(tmp_path / "src"))
    saved = bilm.load_vocab(tmp_path / "src" / "vocab.txt")
    fresh = _tiny_task(data_dir, "data.max_vocab=50")[1].vocab
    assert len(fresh) == len(saved) and fresh != saved  # what a vocabulary built here gives
    _, task = _tiny_task(data_dir, "data.max_vocab=50", f"init_from={tmp_path / 'src'}")
    assert task.vocab == saved
    assert "[bilm] the vocabulary of init_from" in capsys.readouterr().out


@pytest.mark.parametrize("override,match", [
    ("loss.sampled_softmax=-1", r"loss.sampled_softmax=-1"),
    ("data.batch_size=0", r"data.batch_size=0"),
    ("data.eval_batch_size=0", r"data.eval_batch_size=0"),
    ("data.max_units=-5", r"data.max_units=-5"),
    # 0 is "no cap" in the static configs; here it would leave only the specials (all <unk>).
    ("data.max_vocab=0", r"data.max_vocab=0 \(must be >= 5"),
    # 1 or more held out every piece: the error was an empty vocabulary at data.min_count.
    ("data.eval_fraction=1.0", r"data.eval_fraction=1.0 \(must be in \[0, 1\)\)"),
    ("data.eval_fraction=-0.1", r"data.eval_fraction=-0.1 \(must be in \[0, 1\)\)"),
    # narrower than the tiny size's widest character filter (3): the model's own error came
    # after the corpus was read, and named no key
    ("model.max_chars=2", r"model.max_chars=2 \(must be >= 3: .*filter 3 wide"),
])
def test_sizes_below_their_minimum_are_named_before_the_corpus_is_read(monkeypatch, override,
                                                                        match):
    from tl_jax.data import sources

    config = config_lib.load_config(CONFIG + ":tiny", [override])
    monkeypatch.setattr(sources, "load_documents", lambda *a, **k: pytest.fail("read the corpus"))
    with pytest.raises(ValueError, match=match):
        bilm.Task(config, workdir=None)


def test_characters_encoded_for_another_max_chars_are_refused():
    # The char CNN max-pools over positions, so any width would run; but a biLM trained on
    # words cut to max_chars - 2 bytes would then see other spellings than it learned.
    params = elmo.BiLM(TINY).init(jax.random.PRNGKey(0), *_bilm_inputs([["a", "b"]]))
    chars, mask = elmo_features.encode_sentences([["a", "b"]], TINY.max_chars + 4)
    with pytest.raises(ValueError,
                       match=rf"{TINY.max_chars + 4} characters.*max_chars={TINY.max_chars}"):
        elmo.BiLM(TINY).apply(params, chars, mask)
    with pytest.raises(ValueError, match=rf"max_chars={TINY.max_chars}"):
        elmo_features.ElmoEncoder(TINY).init(jax.random.PRNGKey(0), chars, mask)


def test_tokenize_keeps_combining_marks_in_their_word():
    # `\w` does not match a combining mark: decomposed "Zu\u0308rich" was "Zu", the mark and
    # "rich", and Hindi, which writes vowels as marks, fell apart into letters.
    hindi = "\u0939\u093f\u0928\u094d\u0926\u0940"
    assert bilm.tokenize(f"Zu\u0308rich's cafe\u0301, {hindi} well-known.") == [
        "Zu\u0308rich's", "cafe\u0301", ",", hindi, "well-known", "."]
    assert bilm.tokenize("Don't stop, well-known! 42") == [
        "Don't", "stop", ",", "well-known", "!", "42"]


def test_encode_sentences_refuses_untokenised_strings():
    # A string is a sequence of strings too: each character would silently become a token.
    with pytest.raises(ValueError, match=r"sentence 1 is a string.*tokenise"):
        elmo_features.encode_sentences([["The", "cat"], "The cat sat"], TINY.max_chars)


def test_a_min_count_no_word_reaches_is_an_error_not_an_all_unk_softmax(data_dir):
    with pytest.raises(ValueError, match=r"data.min_count=1000000"):
        _tiny_task(data_dir, "data.min_count=1000000")


def test_training_in_a_static_vectors_workdir_is_refused(tmp_path):
    from tl_jax import train

    (tmp_path / "vocab.txt").write_text("the 10\n")
    (tmp_path / "static_config.json").write_text("{}")
    config = config_lib.load_config(CONFIG + ":tiny")
    with pytest.raises(ValueError, match="holds static word vectors"):
        train.train_and_evaluate(config, str(tmp_path))
    assert (tmp_path / "vocab.txt").read_text() == "the 10\n"


def test_flops_count_the_char_convolutions_at_their_valid_positions():
    """A width-w filter over max_chars characters has max_chars - w + 1 positions (VALID
    padding), as XLA's own count of the convolutions says; same CNN width, other widths."""
    import dataclasses

    import flax.linen as nn

    wide = dataclasses.replace(TINY, filters=((1, 8), (2, 8), (3, 16)))
    narrow = dataclasses.replace(TINY, filters=((1, 8), (1, 8), (1, 16)))

    def xla_conv_flops(cfg):
        x = jnp.zeros((1, cfg.max_chars, cfg.char_dim))
        total = 0.0
        for width, n in cfg.filters:
            conv = nn.Conv(n, (width,), padding="VALID", use_bias=False)
            params = conv.init(jax.random.PRNGKey(0), x)
            cost = jax.jit(conv.apply).lower(params, x).compile().cost_analysis()
            total += (cost[0] if isinstance(cost, list) else cost)["flops"]
        return total

    measured = 3.0 * (xla_conv_flops(wide) - xla_conv_flops(narrow))
    assert wide.flops_per_token() - narrow.flops_per_token() == pytest.approx(measured)


def test_runs_with_other_seeds_are_scored_on_the_same_held_out_pieces(data_dir):
    # The held-out pieces were drawn with config.seed (see test_tasks_clm's twin).
    held = [_tiny_task(data_dir, f"seed={seed}", "data.eval_fraction=0.2")[1].eval_data
            for seed in (0, 1)]
    assert len(held[0]) == len(held[1]) > 0
    assert np.array_equal(held[0].types, held[1].types)
    assert np.array_equal(held[0].type_words, held[1].type_words)


def test_an_eval_fraction_that_holds_out_no_piece_is_an_error(data_dir):
    # The run trained and reported no held-out perplexity, with nothing said (GPT refuses it).
    with pytest.raises(ValueError, match=r"data.eval_fraction=1e-06 holds out none of the "
                                         r"corpus's \d+ pieces.*data.eval_fraction=0"):
        _tiny_task(data_dir, "data.eval_fraction=1e-6")
    _, task = _tiny_task(data_dir, "data.eval_fraction=0")  # no held-out text, as asked
    assert task.eval_data is None and task.eval_batches() == []


def test_eval_batches_are_every_held_out_piece_once_made_when_read(data_dir, monkeypatch):
    """The held-out pieces in order, each once, the last batch padded with empty rows; a
    process's batches are its rows of the global ones. A batch is made when it is read (the
    whole list, characters included, was built at every eval, however few batches it took)."""
    _, task = _tiny_task(data_dir, "data.eval_batch_size=8")
    made = []
    original = bilm.Encoded.batch
    monkeypatch.setattr(bilm.Encoded, "batch",
                        lambda self, rows: made.append(len(rows)) or original(self, rows))
    batches = task.eval_batches()
    n = len(task.eval_data)
    assert len(batches) == -(-n // 8) >= 2 and n % 8 and made == []
    first, last = next(iter(batches)), batches[-1]
    assert made == [8, 8]
    np.testing.assert_array_equal(first["token_ids"], task.eval_data.batch(np.arange(8))["token_ids"])
    assert last["mask"][:n % 8].any(axis=1).all() and not last["mask"][n % 8:].any()
    assert sum(int(b["mask"].any(axis=1).sum()) for b in batches) == n
    halves = []
    for index in (0, 1):
        task._process = (index, 2)
        halves.append(task.eval_batches()[-1])
    for key in last:
        np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), last[key], key)
    with pytest.raises(IndexError):
        batches[len(batches)]


def _one_mesh_step(data_dir, *mesh):
    from tl_jax import parallel, train

    config = config_lib.load_config(CONFIG + ":tiny", [
        f"data.corpus={data_dir}/polarity_sentences.jsonl", "data.batch_size=8",
        "train.progress=False", *mesh])
    trainer = train.build_trainer(config, workdir=None)
    state = trainer.init_state(jax.random.PRNGKey(0))
    batch = parallel.host_batch_to_global(next(trainer.task.train_batches()), trainer.mesh)
    state, metrics = trainer.train_step(state, batch)
    loss = {k: float(s) / max(float(c), 1.0) for k, (s, c) in jax.device_get(metrics).items()}
    return loss, state["params"]


def test_fsdp_shards_every_bilm_kernel_and_the_step_is_the_one_device_step(data_dir):
    # Only the softmax carried logical axes: under fsdp the char CNN, highways, projections and
    # LSTM kernels (all but 2 of the 29 parameters) stayed whole on every device.
    ref, ref_params = _one_mesh_step(data_dir, "mesh.num_devices=1")
    for mesh in (["mesh.data=1", "mesh.fsdp=8"], ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]):
        loss, params = _one_mesh_step(data_dir, *mesh)
        for key in ("loss", "forward_nll", "backward_nll"):
            assert loss[key] == pytest.approx(ref[key], rel=1e-6), (mesh, key)
        flat = jax.tree_util.tree_flatten_with_path(params)[0]
        kernels = {jax.tree_util.keystr(k): v for k, v in flat
                   if str(k[-1].key) in ("kernel", "embedding", "softmax_kernel")}
        assert len(kernels) == 19  # char embedding, 3 convs, highway, projection, 12 LSTM, softmax
        for name, value in kernels.items():
            assert "fsdp" in str(value.sharding.spec), (mesh, name, value.sharding.spec)
            shard = value.sharding.shard_shape(value.shape)
            assert np.prod(shard) < np.prod(value.shape), (mesh, name)
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4,
                                                    atol=2e-6), params, ref_params)


def test_perplexities_without_tokens_are_nan_and_noted_once(capsys):
    import math
    empty = {"forward_nll": np.zeros(1), "backward_nll": np.zeros(1), "tokens": np.zeros(1)}
    ppl = bilm.perplexities([empty])
    assert set(ppl) == {"forward_perplexity", "backward_perplexity"}
    assert all(math.isnan(v) for v in ppl.values())
    task = bilm.Task.__new__(bilm.Task)
    for step in (1, 2):
        assert all(math.isnan(v) for v in task.evaluate([(None, empty)], "", step).values())
    out = capsys.readouterr().out
    assert out.count("eval/forward_perplexity, eval/backward_perplexity are logged as nan") == 1
    some = dict(empty, forward_nll=np.array([3.0]), tokens=np.array([2.0]))
    assert bilm.perplexities([some])["forward_perplexity"] == pytest.approx(math.exp(1.5))
    assert bilm.perplexities([some])["backward_perplexity"] == pytest.approx(1.0)


def test_bilm_loss_is_the_mean_of_next_and_previous_word_nll_over_real_tokens(data_dir):
    """Forward state t scores token t + 1, backward state t scores token t - 1, each over the
    row's real tokens only; the loss is the mean of the two directions' per-token NLL."""
    _, task = _tiny_task(data_dir)
    # The two shortest and two longest pieces: rows with padding of different lengths.
    order = np.argsort(task.train_data.lengths, kind="stable")
    batch = task.train_data.batch(np.concatenate([order[:2], order[-2:]]))
    mask = np.asarray(batch["mask"])
    assert len(set(mask.sum(1))) > 1 and not mask.all()
    params = task.init_variables(jax.random.PRNGKey(0), batch)["params"]
    loss, metrics = task.loss_fn(params, batch, jax.random.PRNGKey(1), train=False)
    out, inter = task.model.apply({"params": params}, batch["chars"], batch["mask"])
    logp = {k: np.asarray(jax.nn.log_softmax(task.model.apply(
        {"params": params}, out[k], method=elmo.BiLM.logits)), np.float64)
        for k in ("forward", "backward")}
    ids = np.asarray(batch["token_ids"])
    fwd = bwd = count = 0.0
    for b, n in enumerate(mask.sum(1)):
        fwd -= sum(logp["forward"][b, t, ids[b, t + 1]] for t in range(n - 1))
        bwd -= sum(logp["backward"][b, t, ids[b, t - 1]] for t in range(1, n))
        count += n - 1
    np.testing.assert_allclose(float(metrics["forward_nll"][0]), fwd, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["backward_nll"][0]), bwd, rtol=1e-5)
    assert float(metrics["forward_nll"][1]) == float(metrics["backward_nll"][1]) == count
    np.testing.assert_allclose(float(loss), (fwd + bwd) / 2 / count, rtol=1e-5)
    # Layer 0 of the features is the token layer twice, [x; x], as ELMo gives it to the mix.
    p = task.model_config.projection_dim
    np.testing.assert_array_equal(inter["char_cnn"][..., :p], inter["char_cnn"][..., p:])


def test_the_bilm_corpus_is_encoded_as_before_without_a_string_per_token(data_dir):
    """The pieces were held as lists of token strings (about 60 bytes a token) until encoded:
    now each unit goes straight to 4-byte ids. The vocabulary and the encoded training and
    held-out data are the same as the string path's (frame_units, build_vocab, Encoded)."""
    import tracemalloc
    from tl_jax import paths
    from tl_jax.data import clm as clm_data, sources
    config, task = _tiny_task(data_dir, "data.max_units=3000", "data.eval_fraction=0.2",
                              "data.max_vocab=500")
    d = config.data
    units = [u for doc in sources.load_documents(paths.expand(d.corpus), d.text_field, None)
             for u in doc][:3000]
    sequences = bilm.frame_units(units, d.max_len)
    held = np.random.default_rng(clm_data.EVAL_SPLIT_SEED).random(len(sequences)) < 0.2
    train = [s for s, h in zip(sequences, held) if not h]
    vocab = bilm.build_vocab(train, d.min_count, d.max_vocab)
    assert task.vocab == vocab
    max_chars = task.model_config.max_chars
    for got, want in ((task.train_data, bilm.Encoded(train, vocab, d.max_len, max_chars)),
                      (task.eval_data, bilm.Encoded([s for s, h in zip(sequences, held) if h],
                                                    vocab, d.max_len, max_chars))):
        for key in ("types", "type_words", "type_chars", "lengths"):
            assert getattr(got, key).dtype == getattr(want, key).dtype
            np.testing.assert_array_equal(getattr(got, key), getattr(want, key))
    tracemalloc.start()
    try:
        spellings, types = bilm.encode_units(units, d.max_len)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    tokens = sum(map(len, sequences))
    assert np.count_nonzero(types) == tokens > 50_000
    # The padded array, the ids back to back (4 bytes a token, grown by doubling) and the
    # distinct spellings: no per-token strings (the string path's peak is over 60 per token).
    assert peak < types.nbytes + 12 * tokens + 200 * len(spellings), (peak, tokens)


def test_sequence_iterator_draws_each_epochs_order_once_with_the_same_batches(monkeypatch):
    """The biLM batches' order was redrawn (O(corpus)) on every step; now once per epoch, with
    the batches of the old formula over epoch boundaries and after a resume."""
    data = bilm.Encoded([[f"w{i}", f"v{i % 5}"] for i in range(23)], ["<pad>", "<unk>"],
                        max_len=3, max_chars=8)
    batch, seed, steps = 4, 3, 17  # 5 batches an epoch (3 rows dropped): 3.4 epochs

    def old(process_index, process_count):  # the old per-step formula
        local = batch // process_count
        out, epoch, position = [], 0, 0
        for _ in range(steps):
            order = np.random.default_rng([seed, epoch]).permutation(len(data))
            start = position * batch + process_index * local
            out.append(data.batch(order[start:start + local]))
            position += 1
            if position == len(data) // batch:
                epoch, position = epoch + 1, 0
        return out

    draws = []
    real_rng = np.random.default_rng
    monkeypatch.setattr(np.random, "default_rng", lambda s=None: draws.append(s) or real_rng(s))
    for index, count in ((0, 1), (1, 2)):
        reference = old(index, count)
        draws.clear()
        it = bilm.SequenceIterator(data, batch, seed, index, count)
        got = [next(it) for _ in range(steps)]
        assert draws == [[seed, e] for e in range(4)]  # once per epoch, not once per step
        for mine, theirs in zip(got, reference, strict=True):
            for k in theirs:
                np.testing.assert_array_equal(mine[k], theirs[k])
        for stop in (7, 10):  # mid-epoch; at an epoch's end
            first = bilm.SequenceIterator(data, batch, seed, index, count)
            for _ in range(stop):
                next(first)
            resumed = bilm.SequenceIterator(data, batch, seed, index, count)
            resumed.set_state(json.loads(json.dumps(first.get_state())))
            for mine, theirs in zip([next(resumed) for _ in range(steps - stop)],
                                    reference[stop:], strict=True):
                for k in theirs:
                    np.testing.assert_array_equal(mine[k], theirs[k])
            first.set_state({"epoch": 0, "batch": 2})  # another epoch's order is drawn again
            np.testing.assert_array_equal(next(first)["token_ids"], reference[2]["token_ids"])


@pytest.mark.parametrize("held_out", ["0.1", "0"])
def test_bilm_declares_the_eval_metrics_an_eval_reports(held_out):
    """`tasks.eval_metric_names` (what `tl_jax sweep --metrics=eval/...` is checked against
    before any run trains) is the task's declaration from the config: an eval reports exactly
    those names (none when data.eval_fraction=0 holds nothing out)."""
    from tl_jax import tasks, train

    config = config_lib.load_config(CONFIG + ":tiny", [
        "data.max_units=300", "train.eval_batches=1", "mesh.num_devices=1",
        "train.progress=False", f"data.eval_fraction={held_out}"])
    trainer = train.build_trainer(config, workdir=None)
    params = trainer.init_state(jax.random.PRNGKey(0))["params"]
    reported = train.evaluate(trainer, params, 0)
    assert sorted(reported) == sorted(tasks.eval_metric_names(config))
    assert bool(reported) == (held_out != "0")


@pytest.mark.parametrize("rate", [10.0, 1.0, -0.1])
def test_a_feature_dropout_rate_outside_0_1_is_refused(rate):
    # ElmoClassifier passes its rate to the encoder: 10 (meant as 10%) zeroed every feature in
    # training, so the head learned from nothing, without a word.
    chars, mask = _bilm_inputs([["a", "b"]])
    for model in (elmo_features.ElmoEncoder(TINY, dropout_rate=rate),
                  elmo_features.ElmoClassifier(TINY, num_classes=2, dropout_rate=rate)):
        with pytest.raises(ValueError, match=r"dropout_rate=.* must be in \[0, 1\)"):
            model.init(jax.random.PRNGKey(0), chars, mask)

"""word2vec / GloVe data statistics, the closed-form SGD step, short training runs that learn."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tl_jax import static_train
from tl_jax.data import word_vectors as wv
from tl_jax.models import embeddings


def _corpus(sentences, min_count=1):
    vocab = wv.Vocab.build(sentences, min_count)
    return vocab, wv.encode_corpus(sentences, vocab)


def test_tokenize_lowercases_and_keeps_inner_apostrophes():
    assert wv.tokenize("Don\u2019t STOP, well-known 42!") == ["don't", "stop", "well-known", "42"]


def test_tokenize_keeps_words_of_any_script_whole():
    # Only ASCII letters were words: "café" was "caf", "Zürich" the words "z" and "rich".
    assert wv.tokenize("The Café in Zürich, São Paulo; naïve Müller's") == [
        "the", "café", "in", "zürich", "são", "paulo", "naïve", "müller's"]
    # A decomposed accent (e + U+0301) is the same word as the composed one, not a cut.
    assert wv.tokenize("Cafe\u0301 CAFÉ") == ["café", "café"]
    # Vowel signs are combining marks: Devanagari "hindi" is one word, as are digits of any kind.
    assert wv.tokenize("\u0939\u093f\u0928\u094d\u0926\u0940 \u0661\u0662 foo_bar") == [
        "\u0939\u093f\u0928\u094d\u0926\u0940", "\u0661\u0662", "foo", "bar"]


def test_vocab_min_count_order_and_round_trip(tmp_path):
    sents = [["b", "a", "a", "c"], ["a", "b", "d"]]
    vocab = wv.Vocab.build(sents, min_count=2)
    assert vocab.words == ["a", "b"] and list(vocab.counts) == [3, 2]
    assert list(vocab.encode(["c", "b", "a"])) == [1, 0]  # OOV dropped
    vocab.save(tmp_path / "v.txt")
    again = wv.Vocab.load(tmp_path / "v.txt")
    assert again.words == vocab.words and list(again.counts) == [3, 2]
    (tmp_path / "bad.txt").write_text("a 3\nb two\n")
    with pytest.raises(ValueError, match=r"bad.txt:2"):
        wv.Vocab.load(tmp_path / "bad.txt")
    with pytest.raises(ValueError, match="min_count"):
        wv.Vocab.build(sents, min_count=10)


def test_subsampling_probabilities_formula_and_empirical_rate():
    counts = np.array([50_000, 5_000, 500, 50, 5])
    t = 1e-3
    keep = wv.subsample_keep_prob(counts, t)
    f = counts / counts.sum()
    np.testing.assert_allclose(keep, np.minimum(1, (np.sqrt(f / t) + 1) * t / f))
    assert np.all(np.diff(keep) >= 0) and keep[-1] == 1.0 and keep[0] < 0.2
    np.testing.assert_array_equal(wv.subsample_keep_prob(counts, 0), np.ones(5))
    # The pair generator keeps each word at that rate (a binomial check, 6 sigma).
    ids = np.repeat(np.arange(5, dtype=np.int32), counts)
    corpus = wv.EncodedCorpus(ids, np.array([len(ids)]))
    kept = wv._subsample(corpus, keep, np.random.default_rng(0)).ids
    seen = np.bincount(kept, minlength=5)
    assert np.all(np.abs(seen - counts * keep) <= 6 * np.sqrt(counts * keep * (1 - keep)) + 1)


def test_negative_table_and_samples_follow_unigram_to_the_075():
    counts = np.array([1000, 300, 100, 10, 1])
    expected = counts ** 0.75 / np.sum(counts ** 0.75)
    table = wv.negative_table(counts, 0.75, size=100_000)
    np.testing.assert_allclose(np.bincount(table, minlength=5) / len(table), expected, atol=1e-5)
    vocab = wv.Vocab([str(i) for i in range(5)], counts)
    corpus = wv.EncodedCorpus(np.arange(5, dtype=np.int32), np.array([5]))
    data = wv.Word2VecBatches(corpus, vocab, batch_size=2, window=1, negatives=5)
    draws = data.sample_negatives((200_000,))
    freq = np.bincount(draws, minlength=5) / len(draws)
    assert np.all(np.abs(freq - expected) <= 5 * np.sqrt(expected / len(draws)) + 1e-4)
    # Not the raw unigram distribution: rare words are boosted.
    assert freq[-1] > counts[-1] / counts.sum() * 2


def test_dynamic_window_distance_distribution_and_sentence_boundaries():
    window, n = 4, 40_000
    ids = np.arange(n, dtype=np.int32)  # every token distinct: distances are readable
    sent = (np.arange(n) // 100).astype(np.int32)
    corpus = wv.EncodedCorpus.from_sentence_ids(ids, sent)
    centre, context = wv.skipgram_pairs(corpus, window, np.ones(n), np.random.default_rng(0))
    dist = np.abs(context - centre)
    assert dist.min() >= 1 and dist.max() <= window
    assert np.all(sent[centre] == sent[context])
    # With b ~ U{1..W}, distance d is used with probability (W - d + 1) / W.
    by_d = np.bincount(dist, minlength=window + 1)[1:]
    ratio = by_d / by_d[0]
    np.testing.assert_allclose(ratio, (window - np.arange(window)) / window, atol=0.02)


def test_cbow_examples_hold_the_same_pairs_as_skipgram():
    rng_sents = np.random.default_rng(1)
    sents = [[str(x) for x in rng_sents.integers(0, 30, size=rng_sents.integers(1, 12))]
             for _ in range(200)]
    vocab, corpus = _corpus(sents)
    keep = wv.subsample_keep_prob(vocab.counts, 0.01)
    sg = wv.skipgram_pairs(corpus, 3, keep, np.random.default_rng(7))
    target, ctx = wv.cbow_examples(corpus, 3, keep, np.random.default_rng(7))
    valid = ctx >= 0
    cb = (np.broadcast_to(target[:, None], ctx.shape)[valid], ctx[valid])
    key = lambda a, b: sorted(zip(a.tolist(), b.tolist()))  # noqa: E731
    assert key(*sg) == key(*cb)
    assert valid.any(axis=1).all()


@pytest.mark.parametrize("cbow", [False, True])
@pytest.mark.parametrize("block", [5, 37, 1 << 20])
def test_an_epoch_built_a_block_at_a_time_is_the_whole_epoch(monkeypatch, cbow, block):
    # The trainer reads an epoch in chunks of steps built from `block` corpus tokens at a time
    # (an epoch's examples had been built whole, ~100 bytes a corpus word); the steps are the
    # whole epoch's, for every block size and chunk length, sentence edges included.
    rng = np.random.default_rng(3)
    sents = [[str(x) for x in rng.integers(0, 40, size=rng.integers(1, 15))] for _ in range(300)]
    vocab, corpus = _corpus(sents)
    keep = wv.subsample_keep_prob(vocab.counts, 0.02)
    make = wv.cbow_examples if cbow else wv.skipgram_pairs
    centre, context = make(corpus, 4, keep, np.random.default_rng(9))
    b = 16
    n = len(centre) // b * b
    monkeypatch.setattr(wv, "EPOCH_BLOCK_TOKENS", block)
    sizes = []
    real = wv._context_matrix

    def context_matrix(ids, *args):
        sizes.append(len(ids))
        return real(ids, *args)

    monkeypatch.setattr(wv, "_context_matrix", context_matrix)
    for steps_per_chunk in (1, 3, 1000):
        data = wv.Word2VecBatches(corpus, vocab, batch_size=b, window=4, negatives=2,
                                  sample=0.02, cbow=cbow, seed=9)
        n_steps, chunks = data.epoch_chunks(steps_per_chunk)
        assert n_steps == len(centre) // b
        chunks = list(chunks)
        assert [len(c["centre"]) for c in chunks[:-1]] == [steps_per_chunk] * (len(chunks) - 1)
        assert 1 <= len(chunks[-1]["centre"]) <= steps_per_chunk
        got = {k: np.concatenate([c[k] for c in chunks]) for k in ("centre", "context")}
        np.testing.assert_array_equal(got["centre"].reshape(-1), centre[:n])
        np.testing.assert_array_equal(got["context"].reshape((n,) + context.shape[1:]),
                                      context[:n])
        assert got["centre"].shape[:2] == (n_steps, b)
        assert max(sizes) <= block + 2 * 4  # never more than a block and its neighbours
        sizes.clear()
    whole = wv.Word2VecBatches(corpus, vocab, batch_size=b, window=4, negatives=2, sample=0.02,
                               cbow=cbow, seed=9).epoch_arrays(False)
    np.testing.assert_array_equal(whole["centre"].reshape(-1), centre[:n])


def test_word2vec_trains_the_same_vectors_whatever_the_epoch_block(monkeypatch):
    def train(block):
        monkeypatch.setattr(wv, "EPOCH_BLOCK_TOKENS", block)
        return static_train.train_word2vec(
            _planted_corpus(), dim=8, window=3, negatives=2, epochs=2, min_count=1,
            sample=1e-2, batch_size=64, steps_per_call=5, seed=1, log=None)

    (a, stats_a), (b, stats_b) = train(1 << 20), train(50)
    np.testing.assert_array_equal(a.vectors, b.vectors)
    assert stats_a["losses"] == stats_b["losses"]


def test_an_epoch_s_mean_loss_compiles_nothing_whatever_its_number_of_chunks():
    # The epoch's loss was `jnp.mean(jnp.concatenate(chunk_losses))`: a program with an operand
    # a chunk, compiled for every chunk count, for minutes once there were tens of thousands.
    sentences = _planted_corpus()
    vocab = wv.Vocab.build(sentences, 1)

    def train(n):
        return static_train.train_word2vec(
            sentences[:n], dim=8, window=2, negatives=2, epochs=1, sample=0, batch_size=16,
            steps_per_call=2, seed=0, vocab=vocab, log=None)[1]["losses"]

    train(len(sentences))  # compiles the chunk
    compiles = []
    listener = lambda name, *_, **__: compiles.append(name) if "backend_compile" in name else None  # noqa: E731
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        losses = [train(n) for n in (len(sentences) // 2, len(sentences) // 3)]
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiles == []
    assert all(np.isfinite(loss).all() for loss in losses)


@pytest.mark.parametrize("block", [1, 7, 1 << 20])
def test_cooccurrences_counted_a_block_at_a_time_are_every_pair_s(monkeypatch, block):
    # The pairs of each distance are counted a block of the corpus at a time (the whole
    # corpus's pairs of one distance took ~40 bytes a token); every block size counts each pair
    # once, across block edges too, and none across sentences.
    rng = np.random.default_rng(5)
    sents = [[str(x) for x in rng.integers(0, 12, size=rng.integers(1, 9))] for _ in range(60)]
    vocab, corpus = _corpus(sents)
    monkeypatch.setattr(wv, "EPOCH_BLOCK_TOKENS", block)
    got = wv.cooccurrence_matrix(corpus, len(vocab), window=3).toarray()
    want = np.zeros((len(vocab), len(vocab)))
    for sentence in sents:
        ids = [vocab.index[w] for w in sentence]
        for i in range(len(ids)):
            for j in range(i + 1, min(i + 4, len(ids))):
                want[ids[i], ids[j]] += 1 / (j - i)
                want[ids[j], ids[i]] += 1 / (j - i)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_cooccurrence_counts_weight_by_inverse_distance():
    vocab = wv.Vocab(["a", "b", "c"], [3, 2, 1])
    corpus = wv.encode_corpus([["a", "b", "c"], ["c", "a"]], vocab)
    x = wv.cooccurrence_matrix(corpus, 3, window=2).toarray()
    want = np.zeros((3, 3))
    want[0, 1] = want[1, 0] = 1.0
    want[1, 2] = want[2, 1] = 1.0
    want[0, 2] = want[2, 0] = 0.5 + 1.0  # distance 2 in sentence 1, adjacent in sentence 2
    np.testing.assert_allclose(x, want)


def test_glove_weighting_function():
    x = jnp.array([0.0, 1.0, 50.0, 100.0, 1e4])
    f = embeddings.glove_weight(x, x_max=100.0, alpha=0.75)
    np.testing.assert_allclose(f, [0.0, 0.01 ** 0.75, 0.5 ** 0.75, 1.0, 1.0], rtol=1e-6)
    grid = jnp.linspace(0.01, 200, 500)
    assert bool(jnp.all(jnp.diff(embeddings.glove_weight(grid)) >= 0))
    # The loss is zero exactly when the prediction is log X, whatever the weight.
    assert float(embeddings.glove_loss(jnp.log(x[1:]), x[1:]).max()) == 0.0


@pytest.mark.parametrize("cbow,shared", [(False, 0), (True, 0), (False, 6), (True, 6)])
def test_closed_form_sgd_step_equals_autodiff_of_the_flax_model(cbow, shared):
    vocab_size, dim, b, k = 50, 8, 16, 4
    model, _ = static_train.init_word2vec(vocab_size, dim, cbow, seed=0)
    rng = np.random.default_rng(0)
    params = {"input": jnp.asarray(rng.normal(size=(vocab_size, dim)), jnp.float32),
              "output": jnp.asarray(rng.normal(size=(vocab_size, dim)), jnp.float32)}
    # Words 0-24 are centres/contexts, 25-49 negatives: no accidental hits to mask here.
    centre = rng.integers(0, 25, b)
    context = rng.integers(0, 25, (b, 4) if cbow else b)
    if cbow:
        context[:, 2:] = np.where(rng.random((b, 2)) < 0.5, -1, context[:, 2:])
    negs = rng.integers(25, 50, (shared,) if shared else (b, k))
    weight = k / shared if shared else 1.0
    batch = {"centre": jnp.asarray(centre), "context": jnp.asarray(context),
             "negatives": jnp.asarray(negs)}
    lr = 0.1

    def loss(p):
        out, _ = model.apply({"params": p}, batch)
        return jnp.sum(embeddings.negative_sampling_loss(out["pos_logits"], out["neg_logits"],
                                                         weight))

    grads = jax.grad(loss)(params)
    new, mean_loss = static_train.word2vec_sgd_step(params, batch, lr, cbow, weight)
    np.testing.assert_allclose(mean_loss, loss(params) / b, rtol=1e-5)
    np.testing.assert_allclose(new["output"], params["output"] - lr * grads["output"], atol=1e-5)
    if not cbow:
        np.testing.assert_allclose(new["input"], params["input"] - lr * grads["input"], atol=1e-5)
        return
    # word2vec.c gives each context word the full hidden-layer gradient dL/dh, i.e. n_ctx
    # times the true gradient of the mean; check that convention.
    out, hidden = model.apply({"params": params}, batch)
    grad_h = jax.grad(lambda h: jnp.sum(embeddings.negative_sampling_loss(
        *model.apply({"params": params}, batch, method=lambda m, bt: _logits_from(m, bt, h)),
        weight)))(hidden["hidden"])
    want = np.zeros((vocab_size, dim), np.float32)
    for row in range(b):
        for c in context[row]:
            if c >= 0:
                want[c] += np.asarray(grad_h[row])
    np.testing.assert_allclose(new["input"], params["input"] - lr * want, atol=1e-5)


def _logits_from(module, batch, h):
    """The Word2Vec logits for a given hidden vector h (to differentiate with respect to h)."""
    pos = jnp.sum(h * module.output[batch["centre"]], axis=-1)
    negs = batch["negatives"]
    neg = h @ module.output[negs].T if negs.ndim == 1 else jnp.einsum(
        "bd,bkd->bk", h, module.output[negs])
    return pos, neg


TOPIC = 40  # words per topic


def _planted_corpus(n_sentences=1500, seed=0):
    """Two topics: words 0-39 only co-occur with each other, and words 40-79 likewise."""
    rng = np.random.default_rng(seed)
    sents = []
    for i in range(n_sentences):
        base = TOPIC * (i % 2)
        sents.append([f"w{base + x}" for x in rng.integers(0, TOPIC, size=12)])
    return sents


def _topic_margin(vectors):
    unit = vectors.unit_vectors()
    idx = np.array([vectors.index[f"w{i}"] for i in range(2 * TOPIC)])
    sims = unit[idx] @ unit[idx].T
    topic = np.arange(2 * TOPIC) // TOPIC
    same = (topic[:, None] == topic[None, :]) & ~np.eye(2 * TOPIC, dtype=bool)
    return sims[same].mean() - sims[topic[:, None] != topic[None, :]].mean()


@pytest.mark.parametrize("cbow", [False, True])
def test_word2vec_learns_planted_topics(cbow):
    vectors, stats = static_train.train_word2vec(
        _planted_corpus(), dim=16, window=3, negatives=5, epochs=3, min_count=1, sample=0,
        lr=0.05, batch_size=128, cbow=cbow, steps_per_call=16, log=None)
    assert stats["losses"][-1] < stats["losses"][0]
    assert _topic_margin(vectors) > 0.3  # chance is 0


def test_glove_learns_planted_topics():
    vectors, stats = static_train.train_glove(
        _planted_corpus(), dim=16, window=4, epochs=30, min_count=1, x_max=10.0,
        batch_size=64, steps_per_call=4, log=None)
    assert stats["losses"][-1] < 0.5 * stats["losses"][0]
    assert _topic_margin(vectors) > 0.3


def test_glove_c_adagrad_steps_like_glove_c():
    """Two updates on one co-occurrence entry, against glove.c's loop written out in NumPy:
    temp = eta * f(x) * diff * w_other; w -= temp / sqrt(gradsq); gradsq += temp^2."""
    import flax.linen as nn
    import optax

    v, d, eta, x_max, alpha = 5, 3, 0.05, 10.0, 0.75
    init = embeddings.GloVe(v, d).init(jax.random.PRNGKey(0), jnp.zeros(1, jnp.int32),
                                       jnp.zeros(1, jnp.int32))["params"]
    # Scaled up so the gradients are far from 0 and the two AdaGrad rules tell apart.
    start = jax.tree_util.tree_map(lambda a: a * 20.0, nn.unbox(init))
    batch = {"rows": jnp.array([1]), "cols": jnp.array([3]), "counts": jnp.array([4.0]),
             "mask": jnp.array([1.0])}
    opt = static_train.glove_c_adagrad(eta)
    params, state = start, opt.init(start)
    p = {k: np.array(val, np.float64) for k, val in start.items()}
    gsq = {k: np.ones_like(val) for k, val in p.items()}
    for _ in range(2):
        grads = jax.grad(static_train._glove_loss)(params, batch, x_max, alpha)
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        w, c = p["word"][1].copy(), p["context"][3].copy()
        diff = w @ c + p["word_bias"][1] + p["context_bias"][3] - np.log(4.0)
        fdiff = eta * (4.0 / x_max) ** alpha * diff
        for name, row, other in (("word", 1, c), ("context", 3, w)):
            temp = fdiff * other
            p[name][row] -= temp / np.sqrt(gsq[name][row])
            gsq[name][row] += temp ** 2
        for name, row in (("word_bias", 1), ("context_bias", 3)):
            p[name][row] -= fdiff / np.sqrt(gsq[name][row])
            gsq[name][row] += fdiff ** 2
        for k in p:
            np.testing.assert_allclose(params[k], p[k], rtol=1e-5, atol=1e-6)
    # optax's adagrad (the trainer's default) is another rule, even with the accumulator at 1.
    other = optax.adagrad(eta, initial_accumulator_value=1.0, eps=1e-8)
    grads = jax.grad(static_train._glove_loss)(start, batch, x_max, alpha)
    step, _ = other.update(grads, other.init(start), start)
    glove_c_step, _ = opt.update(grads, opt.init(start), start)
    assert not np.allclose(step["word"], glove_c_step["word"], rtol=1e-2)
    with pytest.raises(ValueError, match="adagrad='sgd'"):
        static_train.train_glove(_planted_corpus(10), min_count=1, adagrad="sgd", log=None)


def _glove_c_loop(sentences, *, dim, window, epochs, eta, x_max, alpha, seed):
    """glove.c's `glove_thread`, one co-occurrence entry at a time, in float64 NumPy, on the
    trainer's own counts, initial tables and entry order (glove.c shuffles its file once; the
    trainer draws a new order each epoch). Returns (W + C, mean cost per epoch)."""
    import flax.linen as nn

    vocab = wv.Vocab.build(sentences, 1)
    cooc = wv.cooccurrence_matrix(wv.encode_corpus(sentences, vocab), len(vocab), window)
    init = nn.unbox(embeddings.GloVe(len(vocab), dim).init(
        jax.random.PRNGKey(seed), jnp.zeros(1, jnp.int32), jnp.zeros(1, jnp.int32))["params"])
    # glove.c: W[a] = (rand() / RAND_MAX - 0.5) / vector_size for vectors and biases alike.
    for name, table in init.items():
        assert np.abs(table).max() <= 0.5 / dim, name
    w, c = np.array(init["word"], np.float64), np.array(init["context"], np.float64)
    bw, bc = np.array(init["word_bias"], np.float64), np.array(init["context_bias"], np.float64)
    gw, gc, gbw, gbc = np.ones_like(w), np.ones_like(c), np.ones_like(bw), np.ones_like(bc)
    rng, n, costs = np.random.default_rng(seed), cooc.nnz, []
    for _ in range(epochs):
        cost = 0.0
        for e in rng.permutation(n):  # with batch_size 1 the trainer's order is the permutation
            i, j, x = cooc.row[e], cooc.col[e], cooc.data[e]
            diff = w[i] @ c[j] + bw[i] + bc[j] - np.log(x)
            fdiff = (diff if x > x_max else (x / x_max) ** alpha * diff)
            cost += 0.5 * fdiff * diff
            fdiff *= eta
            temp1 = np.clip(fdiff * c[j], -100.0, 100.0)  # glove.c's grad_clip_value
            temp2 = np.clip(fdiff * w[i], -100.0, 100.0)
            w[i] -= temp1 / np.sqrt(gw[i])
            c[j] -= temp2 / np.sqrt(gc[j])
            gw[i] += temp1 ** 2
            gc[j] += temp2 ** 2
            bw[i] -= fdiff / np.sqrt(gbw[i])
            bc[j] -= fdiff / np.sqrt(gbc[j])
            gbw[i] += fdiff ** 2
            gbc[j] += fdiff ** 2
        costs.append(cost / n)
    return w + c, costs, init


def test_glove_c_with_batch_size_1_is_glove_c_training_loop():
    """With one entry per step, `train_glove(adagrad="glove_c")` is glove.c's training loop:
    same initial scale, gradsq from 1, eta inside the squares, both tables and both biases
    stepped, W + C saved. (On the README's corpus at eta 0.05 the batched trainer's losses and
    scores also track a sequential glove.c loop: 3 epochs learn nothing in either.)"""
    sentences = [s[:6] for s in _planted_corpus(6, seed=3)]
    kw = dict(dim=4, window=3, epochs=5, x_max=2.0, alpha=0.75, seed=0)
    expected, costs, init = _glove_c_loop(sentences, eta=0.2, **kw)
    vectors, stats = static_train.train_glove(
        sentences, min_count=1, lr=0.2, batch_size=1, steps_per_call=8, adagrad="glove_c",
        log=None, **kw)
    # The vectors moved far from where they started, so the comparison says something.
    assert np.abs(expected - (init["word"] + init["context"])).max() > 0.05
    np.testing.assert_allclose(vectors.vectors, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats["losses"], costs, rtol=1e-4)


def test_glove_adagrad_is_chosen_from_the_command_line(data_dir, tmp_path, monkeypatch):
    """`--config.glove.adagrad` reaches the optimizer: the two rules give other vectors, and
    glove_c's are those of `train_glove(adagrad="glove_c")` on the same sentences."""
    import json
    import pathlib

    from tl_jax import main
    from tl_jax.data import vector_formats

    config = pathlib.Path(__file__).resolve().parent.parent / "configs" / "glove.py"
    monkeypatch.delenv("TL_JAX_TRACEBACK", raising=False)
    argv = ["static", f"--config={config}:tiny", "--config.max_sentences=300",
            "--config.epochs=2", "--config.eval_dir=''", "--config.glove.learning_rate=0.05"]
    vectors = {}
    for rule in ("optax", "glove_c"):
        workdir = tmp_path / rule
        main.main(argv + [f"--workdir={workdir}", f"--config.glove.adagrad={rule}"])
        assert json.loads((workdir / "static_config.json").read_text())["glove"]["adagrad"] == rule
        vectors[rule] = vector_formats.load_vectors(workdir / "vectors.glove_text.txt")
    assert vectors["optax"].words == vectors["glove_c"].words
    assert not np.allclose(vectors["optax"].vectors, vectors["glove_c"].vectors, atol=1e-3)
    sentences = wv.load_sentences(
        f"{data_dir}/austen.jsonl,{data_dir}/enwiki_sample.jsonl", "text")[:300]
    direct, _ = static_train.train_glove(
        sentences, dim=16, window=10, epochs=2, min_count=2, batch_size=1024, steps_per_call=4,
        lr=0.05, adagrad="glove_c", log=None)
    assert direct.words == vectors["glove_c"].words
    np.testing.assert_array_equal(direct.vectors, vectors["glove_c"].vectors)

    # Another value stops the run, naming the key and the choices, before the corpus is read.
    monkeypatch.setattr(wv, "read_corpus", lambda *a, **k: pytest.fail("read the corpus first"))
    with pytest.raises(SystemExit) as e:
        main.main(argv + [f"--workdir={tmp_path / 'sgd'}", "--config.glove.adagrad=sgd"])
    assert str(e.value.code).startswith(
        "tl_jax: error: config.glove.adagrad='sgd': expected one of 'optax', 'glove_c'\n")
    assert not (tmp_path / "sgd").exists()


def test_a_workdir_saved_before_glove_adagrad_existed_reruns_with_optax(tmp_path, monkeypatch):
    import json
    import pathlib

    from tl_jax import config as config_lib

    path = pathlib.Path(__file__).resolve().parent.parent / "configs" / "glove.py"
    earlier = config_lib.load_config(f"{path}:tiny").to_dict()
    del earlier["glove"]["adagrad"]
    (tmp_path / "static_config.json").write_text(json.dumps(earlier))

    def read(*args, **kwargs):
        raise RuntimeError("reached the corpus")

    monkeypatch.setattr(wv, "read_corpus", read)
    with pytest.raises(RuntimeError, match="reached the corpus"):
        static_train.run(config_lib.load_config(f"{path}:tiny"), str(tmp_path))
    changed = config_lib.load_config(f"{path}:tiny", ["glove.adagrad=glove_c"])
    with pytest.raises(ValueError, match=r"glove.adagrad: 'optax' there, 'glove_c' now"):
        static_train.run(changed, str(tmp_path))


def test_glove_learning_rate_defaults_to_the_adagrad_rules_own_and_an_explicit_one_wins(
        tmp_path, monkeypatch):
    """glove.learning_rate None is the rule's default (optax 0.5, glove_c 0.05: 0.5 made
    glove_c's loss NaN in epoch 1); the saved config holds the rate that trained, so a rerun
    that leaves it to the default, or names the same value, is the same config."""
    import json
    import pathlib

    from tl_jax import config as config_lib

    path = pathlib.Path(__file__).resolve().parent.parent / "configs" / "glove.py"

    def resolved(*overrides):
        config = config_lib.load_config(f"{path}:tiny", list(overrides))
        static_train.check_config(config)
        return static_train._with_later_keys(config.to_dict())["glove"]["learning_rate"]

    assert resolved() == 0.5
    assert resolved("glove.adagrad=glove_c") == 0.05
    assert resolved("glove.adagrad=glove_c", "glove.learning_rate=0.2") == 0.2
    assert resolved("glove.learning_rate=0.1") == 0.1
    # The field is None (any type) by default: a value that is no rate is refused by name.
    for bad, match in (("glove.learning_rate=fast", r"learning_rate='fast': expected a number"),
                       ("glove.learning_rate=True", r"learning_rate=True: expected a number"),
                       ("glove.learning_rate=-1", r"config.glove.learning_rate=-1: must be > 0")):
        with pytest.raises(ValueError, match=match):
            static_train.check_config(config_lib.load_config(f"{path}:tiny", [bad]))
    # train_glove resolves it the same way (the rate reaches the optimizer).
    rates = []
    real = static_train.glove_c_adagrad
    monkeypatch.setattr(static_train, "glove_c_adagrad", lambda lr: rates.append(lr) or real(lr))
    for lr in (None, 0.01):
        static_train.train_glove(_planted_corpus(10), min_count=1, epochs=1, dim=4,
                                 adagrad="glove_c", lr=lr, log=None)
    assert rates == [0.05, 0.01]

    # A workdir saved when 0.5 was written out in the config is the default optax run's; a
    # glove_c run saved then (0.5) is not a default glove_c run now (0.05), which says so
    # before reading the corpus.
    monkeypatch.setattr(wv, "read_corpus", lambda *a, **k: (_ for _ in ()).throw(
        RuntimeError("reached the corpus")))
    for adagrad in ("optax", "glove_c"):
        earlier = config_lib.load_config(
            f"{path}:tiny", [f"glove.adagrad={adagrad}", "glove.learning_rate=0.5"]).to_dict()
        (tmp_path / "static_config.json").write_text(json.dumps(earlier))
        now = config_lib.load_config(f"{path}:tiny", [f"glove.adagrad={adagrad}"])
        if adagrad == "optax":
            with pytest.raises(RuntimeError, match="reached the corpus"):
                static_train.run(now, str(tmp_path))
        else:
            with pytest.raises(ValueError, match=r"glove.learning_rate: 0.5 there, 0.05 now"):
                static_train.run(now, str(tmp_path))


def test_glove_c_with_its_default_rate_trains_on_real_data_and_saves_the_rate(
        data_dir, tmp_path, capsys):
    """The default rate under glove_c made the loss NaN in the first epoch (500 sentences of
    the real corpus are enough to show it); the run now names the rate it used, saves it, and a
    rerun naming it explicitly is the same config."""
    import json
    import pathlib

    from tl_jax import config as config_lib

    path = pathlib.Path(__file__).resolve().parent.parent / "configs" / "glove.py"
    overrides = ["max_sentences=500", "epochs=1", "eval_dir=''", "glove.adagrad=glove_c"]
    scores = static_train.run(config_lib.load_config(f"{path}:tiny", overrides), str(tmp_path))
    assert np.isfinite(scores["final_loss"])
    saved = json.loads((tmp_path / "static_config.json").read_text())
    assert saved["glove"]["learning_rate"] == 0.05
    out = capsys.readouterr().out
    assert "glove: AdaGrad rule glove_c, learning_rate 0.05 (the rule's default)" in out
    assert "done: glove 1 epoch in " in out, out  # not "1 epochs"
    again = static_train.run(config_lib.load_config(
        f"{path}:tiny", overrides + ["glove.learning_rate=0.05"]), str(tmp_path))
    assert again["final_loss"] == scores["final_loss"]


@pytest.mark.parametrize("name", ["word2vec", "glove"])
def test_tiny_configs_run_end_to_end(data_dir, tmp_path, name, capsys, monkeypatch):
    import json
    import pathlib
    import re

    from tl_jax import config as config_lib
    from tl_jax.data import vector_formats

    path = pathlib.Path(__file__).resolve().parent.parent / "configs" / f"{name}.py"
    config = config_lib.load_config(f"{path}:tiny", ["max_sentences=400", "epochs=2"])
    assert data_dir.exists()
    monkeypatch.setenv("TL_JAX_PROGRESS_SECONDS", "0")  # a progress line on every update
    scores = static_train.run(config, str(tmp_path))
    # What a long run shows as it goes: the corpus read, then a bar of each epoch's steps.
    out, err = capsys.readouterr()
    assert re.search(rf"^\[{name}\] Reading \$TL_JAX_DATA_DIR/austen.jsonl,\S+: \(\d+\.\ds\)\n"
                     rf"{name}: 400 text units, [\d,]+ words, vocabulary [\d,]+ \(min_count 2\)$",
                     out, re.M), out
    assert f"done: {name} 2 epochs in " in out, out
    for epoch in (1, 2):
        assert re.search(rf"^\[{name} epoch {epoch}/2\] step (\d+)/\1 \(100%\) \| done in", err,
                         re.M), err
    if name == "glove":
        assert re.search(r"^\[glove\] Counting co-occurrences within 10 words: [\d,]+ nonzero "
                         r"pairs", out, re.M), out
    saved = json.loads((tmp_path / "scores.json").read_text())
    assert saved["wordsim353_pairs"] + saved["wordsim353_oov_pairs"] == 353
    assert np.isfinite(scores["final_loss"])
    assert json.loads((tmp_path / "static_config.json").read_text())["method"] == name
    vocab = wv.Vocab.load(tmp_path / "vocab.txt")
    for fmt in config.save_formats:
        ext = "bin" if fmt == "word2vec_binary" else "txt"
        vectors = vector_formats.load_vectors(tmp_path / f"vectors.{fmt}.{ext}")
        assert vectors.words == vocab.words and vectors.dim == config.dim


def test_unknown_save_format_fails_before_training(tmp_path, monkeypatch):
    import pathlib

    from tl_jax import config as config_lib

    path = pathlib.Path(__file__).resolve().parent.parent / "configs" / "word2vec.py"
    config = config_lib.load_config(f"{path}:tiny", ["save_formats=('word2vec_txt',)"])
    monkeypatch.setattr(wv, "read_corpus", lambda *a, **k: pytest.fail("read the corpus first"))
    with pytest.raises(ValueError, match=r"save_formats.*'word2vec_txt'"):
        static_train.run(config, str(tmp_path))


def test_empty_save_formats_fail_before_training(tmp_path, monkeypatch):
    # save_formats=() trained for the whole run and saved no vectors at all.
    import pathlib

    from tl_jax import config as config_lib

    path = pathlib.Path(__file__).resolve().parent.parent / "configs" / "glove.py"
    config = config_lib.load_config(f"{path}:tiny", ["save_formats=()"])
    monkeypatch.setattr(wv, "read_corpus", lambda *a, **k: pytest.fail("read the corpus first"))
    with pytest.raises(ValueError, match=r"save_formats is empty.*glove_text"):
        static_train.run(config, str(tmp_path))
    assert not (tmp_path / "static_config.json").exists()


@pytest.mark.parametrize("cbow", [False, True])
def test_epoch_batches_have_contract_shapes_and_in_vocab_ids(cbow):
    vocab, corpus = _corpus(_planted_corpus(200))
    data = wv.Word2VecBatches(corpus, vocab, batch_size=32, window=3, negatives=4, cbow=cbow)
    batches = list(data.epoch_batches())
    assert len(batches) > 10 and data.epoch == 1
    for b in batches:
        assert b["centre"].shape == (32,) and b["negatives"].shape == (32, 4)
        assert b["context"].shape == ((32, 6) if cbow else (32,))
        for k in ("centre", "negatives"):
            assert b[k].min() >= 0 and b[k].max() < len(vocab)
        assert b["context"].max() < len(vocab) and b["context"].min() >= (-1 if cbow else 0)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        wv.Word2VecBatches(corpus, vocab, batch_size=10**7, window=3, negatives=4).epoch_arrays()


@pytest.mark.parametrize("name,override,match", [
    ("word2vec", "epochs=0", r"config.epochs=0"),
    ("glove", "epochs=-1", r"config.epochs=-1"),
    ("word2vec", "batch_size=0", r"config.batch_size=0"),
    ("glove", "batch_size=0", r"config.batch_size=0"),
    ("word2vec", "steps_per_call=0", r"config.steps_per_call=0"),
    ("glove", "dim=0", r"config.dim=0"),
    ("word2vec", "window=0", r"config.window=0"),
    ("word2vec", "word2vec.negatives=0", r"config.word2vec.negatives=0"),
    ("word2vec", "word2vec.shared_negatives=-1", r"config.word2vec.shared_negatives=-1"),
    ("word2vec", "max_sentences=-5", r"config.max_sentences=-5"),
    ("glove", "max_vocab=-5", r"config.max_vocab=-5"),
    ("word2vec", "min_count=0", r"config.min_count=0"),
    # Weight 1 for every entry (plain least squares), or NaN weights read as a divergence.
    ("glove", "glove.x_max=0", r"config.glove.x_max=0.0 \(must be > 0\)"),
    ("glove", "glove.x_max=-1", r"config.glove.x_max=-1.0 \(must be > 0\)"),
    ("glove", "glove.alpha=-0.75", r"config.glove.alpha=-0.75 \(must be >= 0\)"),
    # The schedule max(lr * (1 - progress), min_lr) trained these at min_lr throughout.
    ("word2vec", "word2vec.learning_rate=-0.025", r"config.word2vec.learning_rate=-0.025: must"),
    ("word2vec", "word2vec.learning_rate=0", r"config.word2vec.learning_rate=0.0: must be > 0"),
    ("word2vec", "word2vec.min_learning_rate=0.1",
     r"config.word2vec.min_learning_rate=0.1: must be in \[0, learning_rate=0.025\]"),
    ("glove", "glove.learning_rate=0", r"config.glove.learning_rate=0: must be > 0"),
])
def test_sizes_below_their_minimum_fail_before_reading_the_corpus(tmp_path, monkeypatch, name,
                                                                   override, match):
    import pathlib

    from tl_jax import config as config_lib

    path = pathlib.Path(__file__).resolve().parent.parent / "configs" / f"{name}.py"
    config = config_lib.load_config(f"{path}:tiny", [override])
    monkeypatch.setattr(wv, "read_corpus", lambda *a, **k: pytest.fail("read the corpus first"))
    with pytest.raises(ValueError, match=match):
        static_train.run(config, str(tmp_path))


@pytest.mark.parametrize("train,kwargs", [
    (static_train.train_word2vec, dict(epochs=0)),
    (static_train.train_word2vec, dict(negatives=0)),
    (static_train.train_glove, dict(batch_size=0)),
    (static_train.train_glove, dict(steps_per_call=0)),
    (static_train.train_glove, dict(x_max=0)),
    (static_train.train_word2vec, dict(lr=0)),
    (static_train.train_glove, dict(lr=-1)),
])
def test_trainers_reject_sizes_below_one(train, kwargs):
    (key, value), = kwargs.items()
    with pytest.raises(ValueError, match=rf"{key}={value}"):
        train(_planted_corpus(20), min_count=1, log=None, **kwargs)


def test_glove_on_one_word_sentences_says_there_are_no_cooccurrences():
    sentences = [["a"], ["b"], ["a"], ["b"]]
    vocab, corpus = _corpus(sentences)
    with pytest.raises(ValueError, match="no co-occurrences"):
        wv.cooccurrence_matrix(corpus, len(vocab), window=5)
    with pytest.raises(ValueError, match="no co-occurrences"):
        static_train.train_glove(sentences, min_count=1, log=None)


def test_a_workdir_written_with_another_config_is_refused_and_the_same_config_reruns(
        tmp_path, monkeypatch):
    import json
    import pathlib

    from tl_jax import config as config_lib

    path = pathlib.Path(__file__).resolve().parent.parent / "configs" / "word2vec.py"
    earlier = config_lib.load_config(f"{path}:tiny")
    (tmp_path / "static_config.json").write_text(json.dumps(earlier.to_dict()))
    (tmp_path / "vectors.word2vec_text.txt").write_text("1 2\na 1 2\n")

    def read(*args, **kwargs):
        raise RuntimeError("reached the corpus")

    monkeypatch.setattr(wv, "read_corpus", read)
    changed = config_lib.load_config(f"{path}:tiny", ["dim=32", "eval_dir=''"])
    with pytest.raises(ValueError, match=r"(?s)another config.*dim: 16 there, 32 now"):
        static_train.run(changed, str(tmp_path))
    # The same training config (evaluation and progress display aside) runs again over its own
    # outputs; so does the config of a workdir saved before `progress` existed.
    with pytest.raises(RuntimeError, match="reached the corpus"):
        static_train.run(config_lib.load_config(f"{path}:tiny", ["eval_dir=''", "progress=False"]),
                         str(tmp_path))
    before = earlier.to_dict()
    del before["progress"]
    (tmp_path / "static_config.json").write_text(json.dumps(before))
    with pytest.raises(RuntimeError, match="reached the corpus"):
        static_train.run(config_lib.load_config(f"{path}:tiny"), str(tmp_path))
    # A saved config that is not JSON (cut short, edited by hand) is named, file and line.
    (tmp_path / "static_config.json").write_text('{"dim": 16,\n')
    with pytest.raises(ValueError, match=r"static_config.json:2: invalid JSON \(.*\); the config "
                                         r"`tl_jax static` saved there"):
        static_train.run(changed, str(tmp_path))


def test_untokenised_string_sentences_are_refused():
    # Each character of a string would silently count as a word ("a", "i" are real words).
    texts = ["a cat sat on a mat", "i saw a cat"] * 50
    with pytest.raises(ValueError, match=r"sentence 0 is a string.*tokenize"):
        wv.Vocab.build(texts, min_count=1)
    vocab = wv.Vocab.build([t.split() for t in texts], min_count=1)
    with pytest.raises(ValueError, match=r"sentence 0 is a string"):
        wv.encode_corpus(texts, vocab)
    with pytest.raises(ValueError, match=r"sentence 0 is a string"):
        static_train.train_glove(texts, min_count=1, log=None)


def test_glove_divergence_is_an_error_like_word2vec_not_nan_vectors():
    with pytest.raises(FloatingPointError, match=r"glove loss became nan in epoch 1.*learning"):
        static_train.train_glove(_planted_corpus(100), dim=8, window=3, epochs=2, min_count=1,
                                 lr=1e30, batch_size=64, steps_per_call=4, log=None)


def test_a_training_workdir_is_refused_before_its_vocab_is_overwritten(tmp_path, monkeypatch):
    # A biLM (or BERT) workdir keeps its vocabulary in vocab.txt, which a static run rewrites.
    import pathlib

    from tl_jax import config as config_lib

    (tmp_path / "checkpoints" / "6").mkdir(parents=True)
    (tmp_path / "vocab.txt").write_text("<pad>\n<unk>\n<S>\n</S>\nthe\n")
    path = pathlib.Path(__file__).resolve().parent.parent / "configs" / "glove.py"
    config = config_lib.load_config(f"{path}:tiny")
    monkeypatch.setattr(wv, "read_corpus", lambda *a, **k: pytest.fail("read the corpus first"))
    with pytest.raises(ValueError, match=r"training workdir.*use another workdir"):
        static_train.run(config, str(tmp_path))
    assert (tmp_path / "vocab.txt").read_text().startswith("<pad>")


def test_an_eval_dir_missing_some_of_the_files_fails_before_training(tmp_path, monkeypatch):
    # Only WordSim353 was checked, so a missing SimLex-999 crashed after training, before
    # scores.json was written.
    import pathlib

    from tl_jax import config as config_lib
    from tl_jax.evaluation import word_vectors as evaluation

    eval_dir = tmp_path / "evals"
    (eval_dir / "eval").mkdir(parents=True)
    (eval_dir / evaluation.WORDSIM353).write_text("a\tb\t1.0\nc\td\t2.0\n")
    path = pathlib.Path(__file__).resolve().parent.parent / "configs" / "word2vec.py"
    config = config_lib.load_config(f"{path}:tiny", [f"eval_dir='{eval_dir}'"])
    monkeypatch.setattr(wv, "read_corpus", lambda *a, **k: pytest.fail("read the corpus first"))
    with pytest.raises(ValueError, match=r"eval_dir.*lacks.*simlex999.txt.*questions-words.txt"):
        static_train.run(config, str(tmp_path / "work"))


def test_an_eval_dir_that_is_the_eval_folder_itself_fails_before_training(tmp_path, data_dir,
                                                                          monkeypatch):
    # eval_dir=$TL_JAX_DATA_DIR/eval (the folder of the files, not the one holding eval/) was
    # taken for a folder without them: the run trained and skipped the scores in one line.
    import pathlib

    from tl_jax import config as config_lib

    path = pathlib.Path(__file__).resolve().parent.parent / "configs" / "word2vec.py"
    config = config_lib.load_config(f"{path}:tiny", [f"eval_dir='{data_dir / 'eval'}'"])
    monkeypatch.setattr(wv, "read_corpus", lambda *a, **k: pytest.fail("read the corpus first"))
    with pytest.raises(ValueError, match=r"config.eval_dir: '.*/eval' holds wordsim353.tsv, "
                                         r"simlex999.txt, questions-words.txt itself, but .* "
                                         r"read from the eval/ folder inside it .*: give its "
                                         rf"parent folder, '{data_dir.resolve()}'"):
        static_train.run(config, str(tmp_path / "work"))
    assert not (tmp_path / "work").exists()


def test_a_config_spec_given_for_the_loaded_config_is_named(tmp_path):
    # static_train.run("configs/word2vec.py", workdir) failed as "'str' object has no
    # attribute 'method'".
    with pytest.raises(TypeError, match=r"static_train.run takes a loaded config, not "
                                        r"'configs/word2vec.py': load it first with "
                                        r"tl_jax.config.load_config"):
        static_train.run("configs/word2vec.py", str(tmp_path / "work"))
    assert not (tmp_path / "work").exists()


def test_a_workdir_that_is_a_file_fails_before_training(tmp_path, monkeypatch):
    # The workdir was made only after training: a file there (or an uncreatable folder) raised
    # "File exists" once the vectors were trained, and they were lost.
    import pathlib

    from tl_jax import config as config_lib

    path = pathlib.Path(__file__).resolve().parent.parent / "configs" / "glove.py"
    config = config_lib.load_config(f"{path}:tiny", ["eval_dir=''"])
    monkeypatch.setattr(wv, "read_corpus", lambda *a, **k: pytest.fail("read the corpus first"))
    (tmp_path / "vectors.txt").write_text("a 1 2\n")
    with pytest.raises(ValueError, match=r"workdir .*vectors.txt is a file, not a folder"):
        static_train.run(config, str(tmp_path / "vectors.txt"))
    with pytest.raises(OSError):  # a folder inside that file cannot be made either
        static_train.run(config, str(tmp_path / "vectors.txt" / "w"))
    assert (tmp_path / "vectors.txt").read_text() == "a 1 2\n"


def test_an_eval_dir_that_does_not_exist_fails_before_training(tmp_path, monkeypatch):
    # A mistyped folder was taken for one without the files: the run trained, printed one
    # "skipping" line and wrote no scores.
    import pathlib

    from tl_jax import config as config_lib

    path = pathlib.Path(__file__).resolve().parent.parent / "configs" / "word2vec.py"
    monkeypatch.setattr(wv, "read_corpus", lambda *a, **k: pytest.fail("read the corpus first"))
    config = config_lib.load_config(f"{path}:tiny", [f"eval_dir='{tmp_path / 'evlas'}'"])
    with pytest.raises(ValueError, match=r"config.eval_dir=.*no folder .*evlas.*eval_dir=''"):
        static_train.run(config, str(tmp_path / "work"))
    # The default names the data folder by a variable: unset, that is said.
    monkeypatch.delenv("TL_JAX_DATA_DIR")
    config = config_lib.load_config(f"{path}:tiny", ["corpus='unused.jsonl'"])
    with pytest.raises(ValueError, match=r"no folder '\$TL_JAX_DATA_DIR'.*variable"):
        static_train.run(config, str(tmp_path / "work"))
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("broken", ["simlex999", "analogies"])
def test_a_malformed_eval_file_fails_before_training(tmp_path, monkeypatch, broken):
    # All three files existed but one was malformed: the run trained, then crashed reading it,
    # and wrote neither vectors nor scores.json.
    import pathlib

    from tl_jax import config as config_lib
    from tl_jax.evaluation import word_vectors as evaluation

    eval_dir = tmp_path / "evals"
    (eval_dir / "eval").mkdir(parents=True)
    (eval_dir / evaluation.WORDSIM353).write_text("a\tb\t1.0\nc\td\t2.0\n")
    simlex = "a\tb\tnot-a-number\n" if broken == "simlex999" else "a\tb\t1.0\n"
    (eval_dir / evaluation.SIMLEX999).write_text(simlex)
    analogies = ": s\na b c\n" if broken == "analogies" else ": s\na b c d\n"
    (eval_dir / evaluation.GOOGLE_ANALOGIES).write_text(analogies)
    path = pathlib.Path(__file__).resolve().parent.parent / "configs" / "word2vec.py"
    config = config_lib.load_config(f"{path}:tiny", [f"eval_dir='{eval_dir}'"])
    monkeypatch.setattr(wv, "read_corpus", lambda *a, **k: pytest.fail("read the corpus first"))
    where = "simlex999.txt:1: score" if broken == "simlex999" else "questions-words.txt:2: expected"
    with pytest.raises(ValueError, match=where):
        static_train.run(config, str(tmp_path / "work"))


def test_word2vec_words_per_sec_includes_mapping_the_corpus_to_ids(monkeypatch):
    """gensim's `train` looks the words up as it goes; ours maps the corpus to ids first, and
    that belongs in the time words/s is measured over (the benchmark compares the two)."""
    import time

    encode = wv.encode_corpus

    def slow_encode(*args, **kwargs):
        time.sleep(1.0)
        return encode(*args, **kwargs)

    monkeypatch.setattr(wv, "encode_corpus", slow_encode)
    _, stats = static_train.train_word2vec(
        _planted_corpus(), dim=8, window=2, negatives=2, epochs=1, min_count=1, sample=0,
        batch_size=128, steps_per_call=16, log=None)
    assert stats["seconds"] >= 1.0


def test_word2vec_compiles_its_chunk_once_however_many_steps_each_epoch_has():
    # Subsampling gives every epoch another step count; the last, partial chunk of each had
    # its own length, and every new length compiled the scan again (seconds each).
    sentences = _planted_corpus()
    vocab = wv.Vocab.build(sentences, 1)
    data = wv.Word2VecBatches(wv.encode_corpus(sentences, vocab), vocab, batch_size=64,
                              window=3, negatives=5, sample=1e-2, seed=0)
    steps = {len(data.epoch_arrays(False)["centre"]) % 7 for _ in range(4)}
    assert len(steps) > 1  # the epochs' last chunks do differ in length
    before = static_train._word2vec_chunk._cache_size()
    _, stats = static_train.train_word2vec(
        sentences, dim=12, window=3, negatives=5, epochs=4, min_count=1, sample=1e-2,
        batch_size=64, steps_per_call=7, seed=0, log=None)
    assert static_train._word2vec_chunk._cache_size() - before == 1
    assert all(np.isfinite(stats["losses"]))
    # The padding steps (learning rate 0) leave every row as it was.
    _, params = static_train.init_word2vec(len(vocab), 12, False, seed=0)
    params = {k: v + 0.1 for k, v in params.items()}  # the output table starts at 0
    want = jax.tree_util.tree_map(np.asarray, params)
    batch = {"centre": jnp.ones((3, 64), jnp.int32), "context": jnp.full((3, 64), 2, jnp.int32)}
    got, _ = static_train._word2vec_chunk(params, batch, jnp.zeros(3), jax.random.PRNGKey(0),
                                          jnp.asarray(data.table), cbow=False, negatives=5)
    jax.tree_util.tree_map(np.testing.assert_array_equal, got, want)


def test_load_sentences_shares_one_string_a_word(tmp_path):
    """The text units' words, lower-cased, empty units dropped, in corpus order; every
    occurrence of a word is one string object (a token costs its 8-byte reference, not a
    string of its own)."""
    (tmp_path / "a.txt").write_text("The cat saw the dog.\n\n...\n\nThe dog ran.\n")
    (tmp_path / "b.txt").write_text("A cat, the end.\n")
    sentences = wv.load_sentences(f"{tmp_path}/a.txt,{tmp_path}/b.txt")
    assert sentences == [["the", "cat", "saw", "the", "dog"], ["the", "dog", "ran"],
                         ["a", "cat", "the", "end"]]
    the = [w for s in sentences for w in s if w == "the"]
    assert len(the) == 4 and all(w is the[0] for w in the)


def test_a_corpus_read_into_integers_has_the_vocabulary_and_ids_of_its_sentences(data_dir):
    """`read_corpus` holds ~4 bytes a token instead of lists of words; its vocabulary and
    encoding are those of the sentences `load_sentences` gives, at any min_count and size,
    out-of-vocabulary tokens removed and sentence ids the sentences' indices."""
    spec = f"{data_dir}/austen.jsonl,{data_dir}/enwiki_sample.jsonl"
    sentences = wv.load_sentences(spec)
    corpus = wv.read_corpus(spec)
    assert corpus.n_sentences == len(sentences)
    assert len(corpus) == sum(len(s) for s in sentences)
    assert corpus.ids.dtype == np.int32 and corpus.ids.nbytes == 4 * len(corpus)
    for min_count, max_size in ((1, None), (5, None), (3, 500)):
        vocab = corpus.vocab(min_count, max_size)
        want = wv.Vocab.build(sentences, min_count, max_size)
        assert vocab.words == want.words
        np.testing.assert_array_equal(vocab.counts, want.counts)
        got, ref = corpus.encode(vocab), wv.encode_corpus(sentences, want)
        np.testing.assert_array_equal(got.ids, ref.ids)
        np.testing.assert_array_equal(got.lengths, ref.lengths)
    # max_sentences is the first that many, and reads no further.
    head = wv.read_corpus(spec, max_sentences=300)
    vocab = head.vocab(2)
    assert vocab.words == wv.Vocab.build(sentences[:300], 2).words
    np.testing.assert_array_equal(head.encode(vocab).ids,
                                  wv.encode_corpus(sentences[:300], vocab).ids)
    taken = []

    def stream():
        for s in sentences:
            taken.append(s)
            yield s

    assert wv.WordCorpus.from_sentences(stream(), max_sentences=10).n_sentences == 10
    assert len(taken) == 10


def test_a_word_corpus_small_case_and_its_errors(tmp_path):
    (tmp_path / "a.txt").write_text("The cat saw the dog.\n\n...\n\nThe dog ran.\n")
    (tmp_path / "b.txt").write_text("A cat, the end.\n")
    corpus = wv.read_corpus(f"{tmp_path}/a.txt,{tmp_path}/b.txt")
    assert corpus.words == ["the", "cat", "saw", "dog", "ran", "a", "end"]
    assert corpus.counts.tolist() == [4, 2, 1, 2, 1, 1, 1]
    assert corpus.ids.tolist() == [0, 1, 2, 0, 3, 0, 3, 4, 5, 1, 0, 6]
    assert corpus.lengths.tolist() == [5, 3, 4]
    vocab = corpus.vocab(min_count=2)
    assert vocab.words == ["the", "cat", "dog"]
    encoded = corpus.encode(vocab)
    assert encoded.ids.tolist() == [0, 1, 0, 2, 0, 2, 1, 0]
    assert encoded.sentence_ids.tolist() == [0, 0, 0, 0, 1, 1, 2, 2]
    # A sentence of only unknown words is dropped (as in `encode_corpus`).
    other = wv.WordCorpus.from_sentences([["x"], ["w"], ["y", "z"], ["x", "y"]])
    encoded = other.encode(other.vocab(min_count=2))
    assert encoded.ids.tolist() == [0, 1, 0, 1] and encoded.sentence_ids.tolist() == [0, 1, 2, 2]
    assert encoded.lengths.tolist() == [1, 1, 2]
    with pytest.raises(ValueError, match="no in-vocabulary words"):
        other.encode(wv.Vocab(["q"], [3]))
    with pytest.raises(ValueError, match="min_count=9"):
        other.vocab(min_count=9)
    with pytest.raises(ValueError, match=r"sentence 1 is a string \('ab'\)"):
        wv.WordCorpus.from_sentences([["a"], "ab"])
    # max_sentences reads no further into a file than that (here, not to its malformed line).
    (tmp_path / "long.jsonl").write_text('{"text": "a b"}\n{"text": "c"}\n{"text": "d"}\n{"t\n')
    assert wv.read_corpus(f"{tmp_path}/long.jsonl", max_sentences=2).lengths.tolist() == [2, 1]
    with pytest.raises(ValueError, match=r"long.jsonl:4: malformed JSON"):
        wv.read_corpus(f"{tmp_path}/long.jsonl")
    (tmp_path / "empty.txt").write_text("...\n\n!!\n")
    with pytest.raises(ValueError, match=r"empty.txt' has no words"):
        wv.read_corpus(f"{tmp_path}/empty.txt")


@pytest.mark.parametrize("method", ["word2vec", "glove"])
def test_training_on_a_word_corpus_is_training_on_its_sentences(method):
    sentences = _planted_corpus(300)
    train = static_train.train_word2vec if method == "word2vec" else static_train.train_glove
    kwargs = dict(dim=8, window=3, epochs=2, min_count=1, batch_size=64, steps_per_call=5,
                  seed=1, log=None)
    a, stats_a = train(sentences, **kwargs)
    corpus = wv.WordCorpus.from_sentences(sentences)
    b, stats_b = train(corpus, **kwargs)
    # Given as vocabulary ids (as `tl_jax static` does, dropping the words' own ids), with the
    # vocabulary they were encoded with.
    vocab = corpus.vocab(min_count=1)
    c, stats_c = train(corpus.encode(vocab), vocab=vocab, **kwargs)
    assert a.words == b.words == c.words
    np.testing.assert_array_equal(a.vectors, b.vectors)
    np.testing.assert_array_equal(a.vectors, c.vectors)
    assert stats_a["losses"] == stats_b["losses"] == stats_c["losses"]
    if method == "word2vec":
        assert stats_a["words"] == stats_b["words"] == stats_c["words"] == 300 * 12 * 2
    with pytest.raises(ValueError, match="needs the vocabulary it was encoded with"):
        train(corpus.encode(vocab), **kwargs)
    with pytest.raises(ValueError, match=r"vocabulary id \d+, outside the 3-word vocabulary"):
        train(corpus.encode(vocab), vocab=wv.Vocab(vocab.words[:3], vocab.counts[:3]), **kwargs)


def test_an_encoded_corpus_works_out_each_tokens_sentence_from_the_lengths():
    """`sentence_ids_of` a block of tokens is that block of `sentence_ids` (what the word2vec
    epochs and GloVe's counts read instead of a stored sentence id a token), for blocks
    starting and ending anywhere, in sentences of one token or many."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 9, size=300)
    lengths[::7] = 1
    corpus = wv.EncodedCorpus(rng.integers(0, 50, size=lengths.sum()).astype(np.int32), lengths)
    every = corpus.sentence_ids
    assert every.tolist() == [i for i, n in enumerate(lengths) for _ in range(n)]
    n = len(corpus)
    for start, stop in [(0, n), (0, 1), (n - 1, n), (5, 5), *rng.integers(0, n, (200, 2))]:
        start, stop = sorted((int(start), int(stop)))
        np.testing.assert_array_equal(corpus.sentence_ids_of(start, stop), every[start:stop])
    again = wv.EncodedCorpus.from_sentence_ids(corpus.ids, every * 3 + 1)
    np.testing.assert_array_equal(again.lengths, lengths)
    with pytest.raises(ValueError, match="must cut the 5 ids"):
        wv.EncodedCorpus(np.zeros(5, np.int32), np.array([2, 2]))
    with pytest.raises(ValueError, match="none 0"):
        wv.EncodedCorpus(np.zeros(2, np.int32), np.array([2, 0]))

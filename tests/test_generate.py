"""Cached decoding, sampling, left padding, prompt scoring and the `generate` command."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from tl_jax import generate
from tl_jax.generate import Generator, Sampling, filter_logits, score
from tl_jax.models.gpt import GPT, gpt_config

VOCAB = 61


@pytest.fixture(scope="module")
def lm():
    # A wide init so the random model's greedy choices vary (a 0.02 init mostly repeats the
    # last token, which would make padding and cache bugs invisible).
    cfg = gpt_config("tiny", VOCAB, max_len=64, dropout_rate=0.0, attention_dropout_rate=0.0,
                     initializer_range=0.3)
    model = GPT(cfg)
    params = nn.unbox(model.init(jax.random.PRNGKey(1), jnp.zeros((1, 4), jnp.int32))["params"])
    return model, params


@pytest.fixture(scope="module")
def gen(lm):
    """One generator shared by the tests, so they share its compiled functions."""
    return Generator(*lm)


PROMPTS = [[3, 14, 15, 9, 26], [5], [35, 8, 9, 7, 9, 3, 2, 38, 4, 6, 2]]
N = 10  # new tokens; one value keeps the number of distinct compiled shapes small


def full_logits(model, params, seq):
    """Logits of a full forward pass without the cache (right-padded to one fixed width)."""
    fn = _FORWARD.setdefault(model.config, jax.jit(
        lambda p, t: model.apply({"params": p}, t)[0]["logits"]))
    tokens = np.zeros((1, 64), np.int32)
    tokens[0, :len(seq)] = seq
    return np.asarray(fn(params, tokens)[0, :len(seq)])


_FORWARD = {}


def test_cached_decoding_equals_full_recomputation(lm, gen):
    model, params = lm
    outs, logits = gen.generate(PROMPTS, N, Sampling(1.0), seed=0, return_logits=True)
    assert len(logits) == N
    for b, prompt in enumerate(PROMPTS):
        seq = prompt + outs[b]
        ref = full_logits(model, params, seq)[len(prompt) - 1:len(seq) - 1]  # (N, V)
        mine = np.stack([step[b] for step in logits])
        np.testing.assert_allclose(mine, ref, atol=2e-5, rtol=1e-5)
    assert len(set(map(tuple, outs))) == len(outs)  # the rows really differ


def test_step_is_compiled_once_for_all_tokens(lm):
    model, params = lm
    gen = Generator(model, params)
    gen.generate(PROMPTS, 20)
    assert gen.traces == {"prefill": 1, "step": 1}
    # Same shapes again, other prompts and seed: nothing is traced again.
    gen.generate([p[::-1] for p in PROMPTS], 20, seed=5)
    assert gen.traces == {"prefill": 1, "step": 1}
    # And XLA itself compiles nothing new for the same shapes.
    with jax.log_compiles(True):
        import logging
        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logger = logging.getLogger("jax")
        logger.addHandler(handler)
        try:
            gen.generate(PROMPTS, 20, seed=7)
        finally:
            logger.removeHandler(handler)
    compiled = [r for r in records
                if "_start_fn" in r.getMessage() or "_resume_fn" in r.getMessage()]
    assert compiled == []
    # A host-side stop check runs the same loop program segment after segment: no new trace
    # per segment or per call, whatever the segment's end.
    for check_every in (3, 7):
        with jax.log_compiles(True):
            records = []
            logger.addHandler(handler)
            try:
                gen.generate(PROMPTS, 20, seed=7, stop_when=lambda t: False,
                             check_every=check_every)
            finally:
                logger.removeHandler(handler)
        assert [r for r in records if "_start_fn" in r.getMessage()
                or "_resume_fn" in r.getMessage()] == []
        assert gen.last_steps == 20
    assert gen.traces == {"prefill": 1, "step": 1}


def test_left_padded_prompt_continues_like_unpadded(gen):
    batched, batched_logits = gen.generate(PROMPTS, N, return_logits=True)
    for b in (1, 2):  # the shortest prompt (most padding) and the longest (none)
        prompt = PROMPTS[b]
        alone, alone_logits = gen.generate([prompt], N, return_logits=True)
        assert alone[0] == batched[b]
        np.testing.assert_allclose(np.stack([l[0] for l in alone_logits]),
                                   np.stack([l[b] for l in batched_logits]), atol=2e-5)


def test_sampling_is_deterministic_per_seed(gen):
    s = Sampling(temperature=1.0, top_k=20, top_p=0.95)
    a = gen.generate(PROMPTS, N, s, seed=3)
    b = gen.generate(PROMPTS, N, s, seed=3)
    c = gen.generate(PROMPTS, N, s, seed=4)
    assert a == b
    assert a != c


def test_a_rows_sample_does_not_depend_on_the_other_rows_or_the_batch_size(gen):
    """The whole batch drew from one key, so a prompt's sampled completion changed with the
    prompts beside it and with its place among them. Each row now draws from the seed folded
    with its row id (its index, by default): alone, or in another order, a prompt given its
    id gets the same tokens."""
    s = Sampling(temperature=1.0, top_k=20)
    batched = gen.generate(PROMPTS, N, s, seed=3)
    for b, prompt in enumerate(PROMPTS):
        assert gen.generate([prompt], N, s, seed=3, row_ids=[b]) == [batched[b]]
    assert gen.generate(PROMPTS[::-1], N, s, seed=3, row_ids=[2, 1, 0]) == batched[::-1]
    # Other ids, other draws; the same prompt twice in one batch is two draws.
    assert gen.generate(PROMPTS, N, s, seed=3, row_ids=[7, 8, 9]) != batched
    twice = gen.generate([PROMPTS[0]] * 2, N, s, seed=3)
    assert twice[0] == batched[0] and twice[1] != twice[0]
    with pytest.raises(ValueError, match=r"row_ids must be 3 integers in \[0, 2\*\*32\), one "
                                         r"per prompt; got \[0, 1\]"):
        gen.generate(PROMPTS, N, s, row_ids=[0, 1])


def test_low_temperature_sampling_is_greedy(gen):
    assert gen.generate(PROMPTS, N, Sampling(1e-4), seed=9) == gen.generate(PROMPTS, N)


def test_stop_tokens_end_rows(gen):
    free = gen.generate(PROMPTS, N)
    stop = free[0][2]  # row 0 produces it at its third step
    stopped = gen.generate(PROMPTS, N, stop_tokens=[stop])
    for row_free, row_stopped in zip(free, stopped):
        if stop in row_free:
            cut = row_free.index(stop) + 1
            assert row_stopped == row_free[:cut]
        else:
            assert row_stopped == row_free


def test_generation_stops_once_every_row_has_stopped(gen):
    free, free_logits = gen.generate(PROMPTS[:1], N, return_logits=True)
    stop = free[0][2]
    cut = free[0].index(stop) + 1  # its first occurrence; the only row then stops there
    out, logits = gen.generate(PROMPTS[:1], N, stop_tokens=[stop], return_logits=True)
    assert out == [free[0][:cut]]
    assert len(logits) == cut  # no steps ran after the last row stopped
    np.testing.assert_allclose(np.stack(logits), np.stack(free_logits[:cut]), atol=1e-6)


M = 40  # new tokens for the host-check tests: several check_every segments


def _holds(seq):
    """A host check: whether a row's tokens hold `seq` (a multi-token stop sequence)."""
    n = len(seq)
    return lambda t: any(list(t[k:k + n]) == list(seq) for k in range(len(t) - n + 1))


def _first_end(row, seq):
    """The length of the shortest prefix of `row` that holds `seq`."""
    return next(k + len(seq) for k in range(len(row)) if row[k:k + len(seq)] == list(seq))


def test_a_host_stop_check_ends_decoding_early(gen):
    """A stop that only a sequence of tokens shows (a stop string spread over several tokens)
    used to run every row on to max_new_tokens; the host check ends the loop within
    `check_every` tokens of it, with the same tokens up to there."""
    free, free_logits = gen.generate(PROMPTS[:1], M, Sampling(1.0), seed=2, return_logits=True)
    assert gen.last_steps == M
    seq = free[0][4:6]
    end = _first_end(free[0], seq)
    assert end <= 8
    for check_every in (1, 4, 16):
        out, logits = gen.generate(PROMPTS[:1], M, Sampling(1.0), seed=2, return_logits=True,
                                   stop_when=_holds(seq), check_every=check_every)
        assert out == [free[0][:end]]  # ends at the shortest prefix, whatever the segment
        steps = -(-end // check_every) * check_every
        assert gen.last_steps == len(logits) == steps < M // 2
        np.testing.assert_allclose(np.stack(logits), np.stack(free_logits[:steps]), atol=1e-6)
    with pytest.raises(ValueError, match="check_every must be >= 1"):
        gen.generate(PROMPTS, M, stop_when=_holds(seq), check_every=0)


def test_a_host_stop_check_ends_only_the_rows_that_pass_it(gen):
    """Rows the check ends produce pad from then on; the others run on exactly as without it
    (left-padded batch, sampled), and so does a row that stops at a stop token."""
    sampling = Sampling(1.0, top_k=20)
    free = gen.generate(PROMPTS, M, sampling, seed=5)
    seq = free[0][:3]  # only row 0 produces it
    assert all(not _holds(seq)(row) for row in free[1:])
    out = gen.generate(PROMPTS, M, sampling, seed=5, stop_when=_holds(seq), check_every=8)
    assert out[0] == free[0][:_first_end(free[0], seq)]
    assert out[1:] == free[1:]
    assert gen.last_steps == M
    # With a stop token for row 2 and the check for row 0, row 1 alone runs to the end.
    stop = next(t for t in free[2] if t not in free[1] + seq)
    out = gen.generate(PROMPTS, M, sampling, seed=5, stop_tokens=[stop],
                       stop_when=_holds(seq), check_every=8)
    assert out == [free[0][:_first_end(free[0], seq)], free[1],
                   free[2][:free[2].index(stop) + 1]]
    # Every row ended (each by its own sequence): the loop stops at the segment after the last.
    seqs = [row[3:5] for row in free]
    out = gen.generate(PROMPTS, M, sampling, seed=5, check_every=8,
                       stop_when=lambda t: any(_holds(s)(t) for s in seqs))
    ends = [min(_first_end(row, s) for s in seqs if _holds(s)(row)) for row in free]
    assert out == [row[:e] for row, e in zip(free, ends)]
    assert gen.last_steps == -(-max(ends) // 8) * 8 < M


def test_a_row_ends_at_its_stop_token_or_check_whichever_is_first_for_any_check_every(gen):
    """A row whose check passed and which then produced a stop token in the same segment
    used to be skipped by the check (it was done), so it ran on to its stop token with long
    segments but ended at the check with short ones: where a row ends depended on
    `check_every`. It ends at the first of the two, whatever the segment length."""
    sampling = Sampling(1.0, top_k=20)

    def fits(row):  # the check passes at 3 tokens (row[1:3]), the stop token row[4] at 5
        return _first_end(row, row[1:3]) == 3 and row[4] not in row[:4]

    seed = next(s for s in range(20) if fits(gen.generate(PROMPTS[:1], M, sampling, seed=s)[0]))
    free = gen.generate(PROMPTS, M, sampling, seed=seed)
    seq, stop = free[0][1:3], free[0][4]

    def expected(row):
        cut = row.index(stop) + 1 if stop in row else len(row)
        return row[:_first_end(row, seq)] if _holds(seq)(row[:cut]) else row[:cut]

    want = [expected(row) for row in free]
    assert want[0] == free[0][:3]
    for check_every in (1, 2, 8, M):
        out = gen.generate(PROMPTS, M, sampling, seed=seed, stop_tokens=[stop],
                           stop_when=_holds(seq), check_every=check_every)
        assert out == want, check_every


def test_top_k_samples_only_the_k_most_likely(gen):
    k = 3
    outs, logits = gen.generate(PROMPTS, N, Sampling(2.0, top_k=k), seed=1, return_logits=True)
    for step, step_logits in enumerate(logits):
        top = np.argsort(-step_logits, axis=-1)[:, :k]
        for b in range(len(PROMPTS)):
            assert outs[b][step] in top[b]


def test_rows_past_the_tokenizer_vocabulary_are_never_generated(lm, gen):
    """A model whose vocabulary is padded past the tokenizer's (here 61 rows, 40 tokens) must
    not emit the padding ids: they decode to nothing, so text would silently lose tokens."""
    model, params = lm
    tokens = 40
    sampling = Sampling(1.5)
    unmasked = [t for out in gen.generate(PROMPTS, N, sampling, seed=3) for t in out]
    assert max(unmasked) >= tokens  # this random model does pick padding rows unmasked
    masked = Generator(model, params, num_tokens=tokens)
    for sampling in (sampling, Sampling(), Sampling(1.0, top_k=30), Sampling(1.0, top_p=0.99)):
        outs = masked.generate(PROMPTS, N, sampling, seed=3)
        assert max(t for out in outs for t in out) < tokens, sampling
    with pytest.raises(ValueError, match="num_tokens=62"):
        Generator(model, params, num_tokens=VOCAB + 1)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.99])
def test_top_p_keeps_the_smallest_nucleus(p):
    logits = jax.random.normal(jax.random.PRNGKey(0), (16, 40)) * 3
    probs = np.asarray(jax.nn.softmax(logits, -1))
    kept = np.asarray(filter_logits(logits, top_p=p)) > -1e29
    for row_p, row_kept in zip(probs, kept):
        kept_p = np.sort(row_p[row_kept])
        assert kept_p.sum() >= p - 1e-6  # reaches p ...
        assert kept_p.sum() - kept_p[0] < p + 1e-6  # ... and is minimal
        assert row_p[row_kept].min() >= row_p[~row_kept].max(initial=0)  # the most likely ones


def test_top_k_filter_keeps_k():
    logits = jax.random.normal(jax.random.PRNGKey(2), (8, 30))
    kept = np.asarray(filter_logits(logits, top_k=5)) > -1e29
    assert (kept.sum(-1) == 5).all()
    assert (np.asarray(logits)[kept].reshape(8, 5).min(-1)
            >= np.sort(np.asarray(logits), -1)[:, -5]).all()


def test_generate_rejects_bad_input(gen):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        gen.generate([[1, VOCAB]], 4)
    with pytest.raises(ValueError, match="max_len"):
        gen.generate([[1] * 60], 10)
    with pytest.raises(ValueError, match="empty"):
        gen.generate([[1], []], 4)


def test_prompt_and_new_tokens_may_fill_max_len_plus_one_and_no_more(lm, gen):
    # The last new token is never fed back, so the model reads positions 0 .. 63 of its 64 for
    # 55 prompt tokens + 10 new = max_len + 1 = 65. That was refused ("exceeds max_len"). The
    # padding bucket of 8 would make the cache 56 + 9 = 65 slots: generate re-pads without it.
    model, params = lm
    prompt = [int(t) for t in np.random.default_rng(0).integers(1, VOCAB, 55)]
    out, logits = gen.generate([prompt], N, return_logits=True)
    out = out[0]
    assert len(prompt) + len(out) == model.config.max_len + 1
    seq = prompt + out
    ref = full_logits(model, params, seq[:-1])[len(prompt) - 1:]  # one pass over all 64 slots
    np.testing.assert_allclose(np.stack([step[0] for step in logits]), ref, atol=2e-5,
                               rtol=1e-5)
    assert out == ref.argmax(-1).tolist()
    with pytest.raises(ValueError, match=r"prompt length 56 \+ max_new_tokens 10 is 66 tokens; "
                                         r"the model's max_len 64 allows at most 65"):
        gen.generate([prompt + [1]], N)


def test_score_is_the_continuation_log_likelihood(lm):
    model, params = lm
    contexts = [[3, 4, 5], [7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]]
    conts = [[8, 9], [10, 11, 12], [13]]
    got = score(model, params, contexts, conts, batch_size=2)
    for i, (ctx, cont) in enumerate(zip(contexts, conts)):
        seq = ctx + cont
        logp = jax.nn.log_softmax(full_logits(model, params, seq), -1)
        want = sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))
        assert got[i] == pytest.approx(want, abs=1e-4)
    assert (got < 0).all()


def test_score_normalises_over_the_tokenizers_vocabulary_as_generation_samples_from_it(lm):
    """Generation never picks a row past the tokenizer's vocabulary (`num_tokens`), but score
    mode normalised over every row of the model's embedding: with a padded embedding the
    choices' probabilities lost the padding rows' share. Now both use the tokenizer's ids."""
    model, params = lm
    tokens = 40
    contexts, conts = [[3, 4, 5], [7]], [[8, 9], [10, 11, 12]]
    got = score(model, params, contexts, conts, batch_size=2, num_tokens=tokens)
    for i, (ctx, cont) in enumerate(zip(contexts, conts)):
        logits = full_logits(model, params, ctx + cont)[:, :tokens]  # the padding rows left out
        logp = jax.nn.log_softmax(logits, -1)
        want = sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))
        assert got[i] == pytest.approx(want, abs=1e-4)
    every_row = score(model, params, contexts, conts, batch_size=2)
    assert (got > every_row + 1e-3).all()  # the padding rows held probability before
    np.testing.assert_array_equal(
        score(model, params, contexts, conts, batch_size=2, num_tokens=VOCAB), every_row)
    with pytest.raises(ValueError, match=r"continuation 1 holds token id 45, past the "
                                         r"num_tokens=40"):
        score(model, params, [[1], [2]], [[3], [45]], num_tokens=tokens)
    with pytest.raises(ValueError, match="num_tokens=62"):
        score(model, params, [[1]], [[3]], num_tokens=VOCAB + 1)


def test_scoring_never_holds_the_logits_of_a_whole_batch():
    """`score` (zero-shot classification, `--mode=score`) computed the full (B, L-1, V) logits
    and their log-softmax: 1.6 GB each for GPT-2's 50,257 words and 16 rows of 512 tokens (8
    prompts x 2 choices). It goes through the tied embedding a chunk at a time, as the training
    loss does. Checked on the compiled program (nothing is run)."""
    from tl_jax.models import losses

    model = GPT(gpt_config("tiny", 50257, max_len=512))
    params = jax.eval_shape(lambda: nn.unbox(model.init(
        jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"]))
    rows, width = 16, 513
    compiled = generate._score_fn(model).lower(
        params, jax.ShapeDtypeStruct((rows, width), jnp.int32),
        jax.ShapeDtypeStruct((rows, width), jnp.float32)).compile()
    logits_bytes = rows * (width - 1) * model.config.vocab_size * 4
    chunk_bytes = losses.DEFAULT_CHUNK_ELEMENTS * 4
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert temp < logits_bytes / 8, (temp, logits_bytes)
    assert temp < 16 * chunk_bytes, (temp, chunk_bytes)


def test_the_prefill_computes_the_logits_of_the_last_prompt_position_only():
    """The prefill ran the model with its vocabulary projection over every prompt position and
    kept the last: (8, 1016, 50257) float32 logits, 1.6 GB, for 8 long prompts at GPT-2's
    vocabulary. Checked on the compiled program (nothing is run)."""
    model = GPT(gpt_config("tiny", 50257, max_len=1024))
    params = jax.eval_shape(lambda: nn.unbox(model.init(
        jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"]))
    rows, prompt, new = 8, 1016, 8
    spec = jax.ShapeDtypeStruct
    compiled = Generator(model, params)._start.lower(
        params, spec((rows, prompt), jnp.int32), spec((rows, prompt), jnp.int32),
        spec((rows, prompt + new - 1), jnp.bool_), spec((rows, 2), jnp.uint32),  # row keys
        spec((1,), jnp.int32), max_new_tokens=new, sampling=Sampling(),
        return_logits=False).compile()
    logits_bytes = rows * prompt * model.config.vocab_size * 4
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert temp < logits_bytes / 8, (temp, logits_bytes)


def test_params_straight_from_init_generate_and_score_as_unboxed_ones():
    """`Generator` and `score` take the params `model.init` returns (logically partitioned
    boxes) as well as unboxed ones: reading the tied embedding outside `model.apply` failed
    on the boxes."""
    model = GPT(gpt_config("tiny", VOCAB, max_len=32))
    boxed = model.init(jax.random.PRNGKey(2), jnp.zeros((1, 4), jnp.int32))["params"]
    plain = nn.unbox(boxed)
    assert Generator(model, boxed).generate([[1, 2, 3]], 5) == \
        Generator(model, plain).generate([[1, 2, 3]], 5)
    np.testing.assert_allclose(score(model, boxed, [[1, 2]], [[3, 4]]),
                               score(model, plain, [[1, 2]], [[3, 4]]), rtol=1e-6)


def test_score_takes_a_continuation_of_max_len_tokens_and_no_more(lm):
    # One context token and max_len continuation tokens: the model reads positions 0 .. 63
    # (the last token is only scored). It was refused like one token more.
    model, params = lm
    rng = np.random.default_rng(3)
    cont = [int(t) for t in rng.integers(1, VOCAB, model.config.max_len)]
    got = score(model, params, [[5, 7]], [cont], batch_size=1)[0]  # the context keeps [7]
    logp = jax.nn.log_softmax(full_logits(model, params, [7] + cont[:-1]), -1)
    assert got == pytest.approx(sum(float(logp[j, t]) for j, t in enumerate(cont)), abs=1e-3)
    with pytest.raises(ValueError, match="continuation 0 has 65 tokens; the model's max_len 64 "
                                         "allows at most 64"):
        score(model, params, [[7]], [cont + [1]], batch_size=1)


def test_zero_shot_classification_picks_the_likelier_label(lm):
    model, params = lm
    prompts = [[3, 4, 5], [9, 9]]
    labels = [[10], [20, 21], [30]]
    pred, scores = generate.classify_zero_shot(model, params, prompts, labels)
    assert scores.shape == (2, 3)
    np.testing.assert_array_equal(pred, scores.argmax(-1))
    direct = score(model, params, [prompts[1]], [labels[1]])[0]
    assert scores[1, 1] == pytest.approx(direct, abs=1e-5)
    # --batch_size prompts at a time, each with every label; the scores do not depend on it.
    one_by_one = generate.classify_zero_shot(model, params, prompts, labels, batch_size=1)[1]
    np.testing.assert_allclose(one_by_one, scores, atol=1e-5)


def test_scoring_no_prompts_gives_no_scores_and_no_labels_is_named(lm):
    """An empty list of prompts is an empty result (it raised numpy's "need at least one array
    to concatenate"); no label continuations is an error that says so (it was "range() arg 3
    must not be zero")."""
    model, params = lm
    assert score(model, params, [], []).shape == (0,)
    predictions, scores = generate.classify_zero_shot(model, params, [], [[10], [20]])
    assert predictions.shape == (0,) and scores.shape == (0, 2)
    with pytest.raises(ValueError, match="classify_zero_shot: no label continuations"):
        generate.classify_zero_shot(model, params, [[3, 4]], [])


def test_score_mode_sends_batch_size_prompts_at_a_time(tmp_path, monkeypatch):
    _small_gpt2_dir(tmp_path)
    sizes = []
    real = generate.score
    monkeypatch.setattr(generate, "score", lambda *a, **k: sizes.append(k["batch_size"])
                        or real(*a, **k))
    kw = dict(mode="score", prompts=["the cat", "a dog", "the mat"], choices=[" sat", " dog"])
    small = generate.run_generate(str(tmp_path), batch_size=1, **kw)
    default = generate.run_generate(str(tmp_path), **kw)
    assert sizes == [2, 16]  # 1 and 8 prompts x 2 choices
    assert [r["prediction"] for r in small] == [r["prediction"] for r in default]


def test_scoring_shows_a_bar_on_a_terminal_and_none_when_told_not_to(lm, capsys):
    """`tl_jax generate --mode=score` scored every prompt before printing any: 1,000 food
    reviews with a tiny GPT were 5 s with no output (minutes with GPT-2 on a CPU). A bar over
    the batches now shows on a terminal; `progress=False` (the default of `score` as a library
    call) and a stderr that is no terminal (None, as here under capsys) show nothing."""
    model, params = lm
    contexts, conts = [[3, 4, 5]] * 5, [[7]] * 5
    capsys.readouterr()
    shown = score(model, params, contexts, conts, batch_size=2, progress=True)
    assert "score" in capsys.readouterr().err  # 3 batches of 2
    for progress in (False, None):
        np.testing.assert_array_equal(
            score(model, params, contexts, conts, batch_size=2, progress=progress), shown)
        assert capsys.readouterr() == ("", "")


def test_an_interrupted_scoring_ends_its_line_mode_bar_saying_what_stopped_it(
        lm, capsys, monkeypatch):
    """The bar was iterated by the batch loop: Ctrl-C in a batch freed it first, and its last
    line said only 'stopped after', without what stopped it."""
    model, params = lm
    monkeypatch.setenv("TL_JAX_PROGRESS_SECONDS", "3600")  # only the closing line
    real = generate._score_fn(model)
    calls = []

    def interrupted_at_the_second_batch(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(generate, "_score_fn", lambda *a: interrupted_at_the_second_batch)
    capsys.readouterr()
    with pytest.raises(KeyboardInterrupt):
        score(model, params, [[3, 4, 5]] * 5, [[7]] * 5, batch_size=2, progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("[score] batch 1/3 "), lines
    assert " | stopped by KeyboardInterrupt after " in lines[0], lines


def test_score_mode_asks_for_the_terminal_bar(tmp_path, monkeypatch):
    _small_gpt2_dir(tmp_path)
    asked = []
    real = generate.score
    monkeypatch.setattr(generate, "score", lambda *a, **k: asked.append(k["progress"])
                        or real(*a, **k))
    generate.run_generate(str(tmp_path), mode="score", prompts=["the cat", "a dog"],
                          choices=[" sat", " dog"])
    assert asked == [None]  # on stderr when it is a terminal


def test_run_generate_from_a_gpt2_directory(tmp_path, lm):
    from tl_jax.data.bpe import BPETokenizer
    from tl_jax.interop import gpt2

    texts = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog"] * 20
    tok = BPETokenizer.train(texts, vocab_size=300)
    cfg = gpt_config("tiny", tok.vocab_size, max_len=64, initializer_range=0.3)
    model = GPT(cfg)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"])
    gpt2.save_pretrained(tmp_path, cfg, params)
    tok.save(str(tmp_path))
    out = generate.run_generate(str(tmp_path), prompts=["the cat", "a dog sat"],
                                max_new_tokens=6, stop_at_eos=False)
    assert [r["prompt"] for r in out] == ["the cat", "a dog sat"]
    gen = Generator(model, params, pad_id=tok.eos_id)
    want = gen.generate([tok.encode("the cat")], 6)[0]
    assert out[0]["completion"] == tok.decode(want)

    # A checkpoint whose embedding is padded past the tokenizer (model 340 rows, tokenizer
    # fewer) samples tokens of the tokenizer only.
    padded = gpt_config("tiny", tok.vocab_size + 40, max_len=64, initializer_range=0.3)
    padded_params = nn.unbox(GPT(padded).init(jax.random.PRNGKey(0),
                                              jnp.zeros((1, 4), jnp.int32))["params"])
    gpt2.save_pretrained(tmp_path / "padded", padded, padded_params)
    tok.save(str(tmp_path / "padded"))
    sampled = generate.run_generate(str(tmp_path / "padded"), prompts=["the cat"],
                                    max_new_tokens=24, temperature=1.5, stop_at_eos=False)
    want = Generator(GPT(padded), padded_params, pad_id=tok.eos_id,
                     num_tokens=tok.vocab_size).generate(
        [tok.encode("the cat")], 24, Sampling(1.5), seed=0)[0]
    assert max(want) < tok.vocab_size and sampled[0]["completion"] == tok.decode(want)

    prompt_file = tmp_path / "prompts.jsonl"
    prompt_file.write_text('{"text": "the cat", "label": " sat"}\n{"text": "a", "label": " dog"}\n')
    scored = generate.run_generate(str(tmp_path), mode="score", prompt_file=str(prompt_file),
                                   choices=[" sat", " dog"], output=str(tmp_path / "out.jsonl"))
    assert all(r["prediction"] in ("sat", "dog") for r in scored)
    named = generate.run_generate(str(tmp_path), mode="score", prompts=["the cat", "a"],
                                  choices=[" sat", " dog"], labels=["S", "D"])
    assert [r["prediction"] for r in named] == [{"sat": "S", "dog": "D"}[r["prediction"]]
                                                for r in scored]

    # Scoring the padded checkpoint normalises over the tokenizer's ids, as sampling does.
    padded_scores = generate.run_generate(str(tmp_path / "padded"), mode="score",
                                          prompts=["the cat"], choices=[" sat", " dog"])
    contexts = [tok.encode("the cat")] * 2
    want = score(GPT(padded), padded_params, contexts, [tok.encode(" sat"), tok.encode(" dog")],
                 num_tokens=tok.vocab_size)
    assert list(padded_scores[0]["scores"].values()) == pytest.approx(want.tolist(), abs=1e-5)
    assert not list(padded_scores[0]["scores"].values()) == pytest.approx(
        score(GPT(padded), padded_params, contexts, [tok.encode(" sat"), tok.encode(" dog")]
              ).tolist(), abs=1e-5)
    assert (tmp_path / "out.jsonl").read_text().count("\n") == 2
    from tl_jax.data.readers import DataFormatError

    # A GLUE-style table scores as the jsonl does: its column under the header is the prompt
    # and its label column the gold label (it was read as text lines: the header a prompt and
    # every prompt with its tab and label).
    tsv = tmp_path / "dev.tsv"
    tsv.write_text("sentence\tlabel\nthe cat\t sat\na\t dog\n")
    csv_file = tmp_path / "dev.CSV"
    csv_file.write_text('label,sentence\n sat,the cat\n dog,"a"\n')
    for table in (tsv, csv_file):
        from_table = generate.run_generate(str(tmp_path), mode="score", prompt_file=str(table),
                                           text_field="sentence", choices=[" sat", " dog"])
        assert [(r["prompt"], r["label"], r["prediction"]) for r in from_table] == [
            (r["prompt"], r["label"], r["prediction"]) for r in scored]
    with pytest.raises(DataFormatError, match=r"dev.tsv:2: missing field 'text' \(has "
                       r"\['label', 'sentence'\]\)"):
        generate.run_generate(str(tmp_path), mode="score", prompt_file=str(tsv),
                              choices=[" sat", " dog"])
    # A plain-text prompt file saved on Windows (BOM, CRLF) gives the same prompts.
    windows = tmp_path / "prompts.txt"
    windows.write_bytes("\ufeffthe cat\r\na dog sat\r\n".encode("utf-8"))
    from_file = generate.run_generate(str(tmp_path), prompt_file=str(windows),
                                      max_new_tokens=6, stop_at_eos=False)
    assert [r["prompt"] for r in from_file] == ["the cat", "a dog sat"]
    assert from_file[0]["completion"] == out[0]["completion"]


def test_run_generate_rejects_max_new_tokens_that_fill_the_context(tmp_path):
    """max_new_tokens > max_len leaves no room for any prompt: say so (it used to report an
    empty prompt, or a prompt length that was not the user's), in both CLI modes' terms."""
    from tl_jax.data.bpe import BPETokenizer
    from tl_jax.interop import gpt2

    tok = BPETokenizer.train(["the cat sat on the mat", "a dog"] * 20, vocab_size=280)
    cfg = gpt_config("tiny", tok.vocab_size, max_len=16)
    params = nn.unbox(GPT(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"])
    gpt2.save_pretrained(tmp_path, cfg, params)
    tok.save(str(tmp_path))
    for n in (17, 40):
        with pytest.raises(ValueError, match="leaves no room for a prompt"):
            generate.run_generate(str(tmp_path), prompts=["the cat"], max_new_tokens=n)
    # max_len new tokens after the prompt's last token: 17 tokens, the last never fed back.
    out = generate.run_generate(str(tmp_path), prompts=["the cat"], max_new_tokens=16,
                                stop_at_eos=False)
    assert out[0]["prompt_tokens_cut"] == len(tok.encode("the cat")) - 1
    out = generate.run_generate(str(tmp_path), prompts=["the cat sat " * 10], max_new_tokens=15,
                                stop_at_eos=False)
    assert len(tok.encode(out[0]["completion"])) >= 1
    # Scoring keeps a long context's end (score() truncates), with a tiny max_len too.
    scored = generate.run_generate(str(tmp_path), mode="score", prompts=["the cat sat " * 10],
                                   choices=[" mat", " dog"])
    assert scored[0]["prediction"] in ("mat", "dog")


def _small_gpt2_dir(path, max_len=64):
    from tl_jax.data.bpe import BPETokenizer
    from tl_jax.interop import gpt2

    tok = BPETokenizer.train(["the cat sat on the mat.", "the dog sat on the log.",
                              "a cat and a dog."] * 20, vocab_size=300)
    cfg = gpt_config("tiny", tok.vocab_size, max_len=max_len, initializer_range=0.3)
    model = GPT(cfg)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"])
    gpt2.save_pretrained(path, cfg, params)
    tok.save(str(path))
    return model, params, tok


def test_sampled_completions_do_not_depend_on_the_batch_size(tmp_path):
    """`tl_jax generate` sampled each batch with seed + its first prompt's index: a prompt's
    completion changed with --batch_size, and seed 1's completions repeated seed 0's, one
    prompt along. Each prompt now draws from the seed and its own index."""
    _small_gpt2_dir(tmp_path)
    prompts = ["the cat", "a dog", "the mat", "a cat and", "the log"]

    def run(batch_size, seed=0):
        return [r["completion"] for r in generate.run_generate(
            str(tmp_path), prompts=prompts, max_new_tokens=12, temperature=1.0, seed=seed,
            stop_at_eos=False, batch_size=batch_size)]

    one = run(1)
    assert run(2) == run(5) == one
    assert len(set(one)) == len(one)  # sampled, not all alike
    assert run(1, seed=1)[:-1] != one[1:]


def test_output_keeps_the_completions_done_before_an_interruption(tmp_path, monkeypatch):
    """`--output` was written only once every prompt was done: Ctrl-C (or an error) in the
    last batch of a long prompt file lost every completion already printed. Each is written
    as it is printed."""
    import json

    _small_gpt2_dir(tmp_path / "model")
    real = Generator.generate
    calls = []

    def interrupted_at_the_third_batch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Generator, "generate", interrupted_at_the_third_batch)
    out = tmp_path / "out.jsonl"
    prompts = ["the cat", "a dog", "the mat", "a log", "the cat sat"]
    with pytest.raises(KeyboardInterrupt):
        generate.run_generate(str(tmp_path / "model"), prompts=prompts, max_new_tokens=4,
                              batch_size=2, output=str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == prompts[:4]
    # A run to the end writes every result, as before; a folder not made yet is made.
    monkeypatch.setattr(Generator, "generate", real)
    out = tmp_path / "new" / "folder" / "out.jsonl"
    done = generate.run_generate(str(tmp_path / "model"), prompts=prompts, max_new_tokens=4,
                                 batch_size=2, output=str(out))
    assert [json.loads(line) for line in out.read_text().splitlines()] == done


def test_a_stop_string_ends_the_loop_at_every_token_that_holds_it(tmp_path):
    _, _, tok = _small_gpt2_dir(tmp_path)
    vocab = range(tok.vocab_size)
    assert generate.stop_token_ids(tok, []) == []
    ids = generate.stop_token_ids(tok, ["t"])
    assert ids == [i for i in vocab if "t" in tok.decode([i], skip_special_tokens=True)]
    assert len(ids) > 1 and tok.encode("t")[0] in ids and tok.encode(" the")[0] in ids
    assert tok.eos_id not in generate.stop_token_ids(tok, ["end"])  # <|endoftext|> is no text
    # A stop string longer than any token ends no row early; the text is cut after the run.
    assert generate.stop_token_ids(tok, ["the cat sat on the mat"]) == []
    assert generate.cut_at_stop("a cat sat. the dog", ["the", ". "]) == "a cat sat"


def test_a_stop_string_inside_the_end_of_text_token_does_not_stop_a_row(tmp_path):
    """With stop_at_eos=False a row shows "<|endoftext|>" where it runs past its end: that is
    a token, which no stop token id holds, but `--stop=end` (or "t", ">") ended the row there
    from the host and cut its completion to "...<|"."""
    _, _, tok = _small_gpt2_dir(tmp_path)
    eos = "<|endoftext|>"
    assert generate.cut_at_stop(f"the cat{eos} sat", ["end"]) == f"the cat{eos} sat"
    assert generate.cut_at_stop(f"the cat{eos} the end", ["end", ">"]) == f"the cat{eos} the "
    assert generate.cut_at_stop("a dog sat", ["dog", "sat"]) == "a "
    holds = generate.stop_string_check(tok, ["end", "t"])
    assert not holds(tok.encode(" a dog") + [tok.eos_id] + tok.encode(" a dog"))
    assert holds(tok.encode(" a dog") + [tok.eos_id] + tok.encode(" the cat"))


def test_a_stop_string_across_several_tokens_ends_decoding_early(tmp_path, monkeypatch):
    """`--stop` with a string that no single token holds used to cut the text right but
    decode every row to max_new_tokens; now the row ends within 16 tokens of it, and the text
    is the same."""
    model, params, tok = _small_gpt2_dir(tmp_path)
    new, seed = 48, 2  # a seed whose samples hold such strings
    gen = Generator(model, params, pad_id=tok.eos_id, num_tokens=tok.vocab_size)

    def free_texts(prompts):
        rows = gen.generate([tok.encode(p) for p in prompts], new, Sampling(0.7, top_k=10),
                            seed=seed)
        return rows, [tok.decode(row) for row in rows]

    def early_stop(row, text, avoid=""):
        """A string of 3 of `row`'s first 12 tokens that no token holds, nor `avoid`."""
        return next(s for k in range(10) for s in [tok.decode(row[k:k + 3])]
                    if "\ufffd" not in s and s in text and s not in avoid
                    and not generate.stop_token_ids(tok, [s]))

    steps = []
    real = Generator.generate

    def spy(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        steps.append(self.last_steps)
        return out

    monkeypatch.setattr(Generator, "generate", spy)

    def run(prompts, stops):
        return [r["completion"] for r in generate.run_generate(
            str(tmp_path), prompts=prompts, max_new_tokens=new, temperature=0.7, top_k=10,
            seed=seed, stop_at_eos=False, stop=stops)]

    # One prompt: it runs no further than the 16-token segment where its text holds the string.
    rows, texts = free_texts(["a cat"])
    stop = early_stop(rows[0], texts[0])
    assert texts[0].index(stop) + len(stop) < len(texts[0])  # the text does run on past it
    steps.clear()
    assert run(["a cat"], [stop]) == [generate.cut_at_stop(texts[0], [stop])]
    assert steps == [16]
    # In one batch with a row whose text never holds it, that row runs on; the texts are the
    # same as without the early end.
    rows, texts = free_texts(["a cat", "the dog"])
    stop = early_stop(rows[0], texts[0], avoid=texts[1])
    steps.clear()
    assert run(["a cat", "the dog"], [stop]) == [generate.cut_at_stop(t, [stop]) for t in texts]
    assert steps == [new]
    # A stop string in each row ends the whole batch early.
    stops = [stop, early_stop(rows[1], texts[1])]
    steps.clear()
    assert run(["a cat", "the dog"], stops) == [generate.cut_at_stop(t, stops) for t in texts]
    assert steps == [16]


def test_a_stop_string_check_waits_for_an_unfinished_character(tmp_path):
    """The check counts only text more tokens cannot change: an unfinished UTF-8 character
    decodes to U+FFFD for now, and the stop must not be found in that."""
    _, _, tok = _small_gpt2_dir(tmp_path)
    ids = tok.encode("a \u00e9")  # "é" is two bytes, so two tokens here
    assert tok.decode(ids[:-1]).endswith("\ufffd") and tok.decode(ids) == "a \u00e9"
    check = generate.stop_string_check(tok, ["\ufffd", "x"])
    assert not check(ids[:-1]) and not check(ids)
    assert generate.stop_string_check(tok, [" \u00e9"])(ids)
    assert generate.stop_string_check(tok, ["a "])(ids[:-1])


@pytest.mark.parametrize("flag, value", [
    ("max_new_tokens", 8), ("temperature", 0.7), ("top_k", 40), ("top_p", 0.9), ("stop", "\\n"),
    ("temperature", 0.0),  # given, even at its default value: the user meant something by it
])
def test_score_mode_refuses_the_completion_flags(tmp_path, flag, value):
    """`--mode=score` silently ignored them: a user who sampled with --temperature=0.7 got the
    same scores as without, with no word that it did nothing."""
    from tl_jax import main

    missing = str(tmp_path / "no_model")  # refused before the model is read
    score = ["generate", f"--model={missing}", "--mode=score", "--prompt=the cat",
             "--choice= a", "--choice= b"]
    with pytest.raises(SystemExit) as e:  # one line, as the command's other flag errors
        main.main(score + [f"--{flag}={value}"])
    assert str(e.value).splitlines()[0] == (f"tl_jax: error: generate: --{flag} is for "
                                            "--mode=complete; --mode=score writes no completion")
    kwargs = {flag: [value] if flag == "stop" else value}
    with pytest.raises(ValueError, match=rf"--{flag} is for --mode=complete"):
        generate.run_generate(missing, mode="score", prompts=["the cat"], choices=[" a", " b"],
                              **kwargs)
    # Several are named together; without them the flags pass (the model is then missing).
    with pytest.raises(ValueError, match=r"--top_k, --stop are for --mode=complete"):
        generate.run_generate(missing, mode="score", prompts=["x"], choices=[" a"], top_k=5,
                              stop=["."])
    with pytest.raises(SystemExit) as e:
        main.main(score)
    assert "no_model" in str(e.value) and "for --mode=complete" not in str(e.value)


def test_score_mode_refuses_a_seed_and_no_stop_at_eos(tmp_path):
    """`--mode=score` refused the other completion flags but took --seed and --no_stop_at_eos
    without a word, though they change nothing in a score."""
    from tl_jax import main

    missing = str(tmp_path / "no_model")  # refused before the model is read
    score = ["generate", f"--model={missing}", "--mode=score", "--prompt=the cat",
             "--choice= a", "--choice= b"]
    # --seed=0 too: given, as any completion flag at its completion default.
    for flags, named in ((["--seed=7"], "--seed is"), (["--seed=0"], "--seed is"),
                         (["--no_stop_at_eos"], "--no_stop_at_eos is"),
                         (["--top_k=5", "--no_stop_at_eos", "--seed=1"],
                          "--top_k, --seed, --no_stop_at_eos are")):
        with pytest.raises(SystemExit) as e:
            main.main(score + flags)
        assert str(e.value).splitlines()[0] == (f"tl_jax: error: generate: {named} for "
                                                "--mode=complete; --mode=score writes no "
                                                "completion")
    for kwargs, named in ((dict(seed=3), "--seed"), (dict(seed=0), "--seed"),
                          (dict(stop_at_eos=False), "--no_stop_at_eos")):
        with pytest.raises(ValueError, match=rf"{named} is for --mode=complete"):
            generate.run_generate(missing, mode="score", prompts=["x"], choices=[" a"], **kwargs)
    # Left out, they pass (the model is then missing), from the CLI as from Python.
    with pytest.raises(FileNotFoundError):
        generate.run_generate(missing, mode="score", prompts=["x"], choices=[" a"])
    with pytest.raises(SystemExit) as e:
        main.main(score)
    assert "for --mode=complete" not in str(e.value)


def test_generate_checks_its_flags_before_loading_the_model(tmp_path):
    from tl_jax.data.readers import DataFormatError

    missing = str(tmp_path / "no_model")  # never reached: each flag is refused first
    cases = [
        (dict(top_p=1.5), r"generate: --top_p must be in \(0, 1\], got 1.5"),
        (dict(top_k=-1), "generate: --top_k must be >= 0, got -1"),
        (dict(temperature=-1.0), "generate: --temperature must be a finite number >= 0"),
        (dict(temperature=float("nan")), "temperature must be a finite number >= 0, got nan"),
        (dict(temperature=float("inf")), "temperature must be a finite number >= 0, got inf"),
        (dict(batch_size=0), "generate: --batch_size must be >= 1"),
        (dict(max_new_tokens=0), "generate: --max_new_tokens must be >= 1"),
        (dict(template="Summary:"), "generate: --template 'Summary:' has no {text}"),
        (dict(choices=[" a"]), "are for mode=score"),
        (dict(mode="score", choices=[" a", " b"], labels=["x"]), "1 labels for 2 choices"),
        (dict(mode="score", choices=[" a", " b"], labels=["x", "x"]), "repeat a label"),
        (dict(output=str(tmp_path)), "is a directory; name a file"),
        # A file of the model's folder (its config.json was replaced, the model lost).
        (dict(output=str(tmp_path / "no_model" / "config.json")),
         r"would replace .*config.json, which the model in .*no_model holds \(generate reads"),
    ]
    for kwargs, message in cases:
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            generate.run_generate(missing, prompts=["the cat"], **kwargs)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n"just a string"\n')
    with pytest.raises(DataFormatError, match=r"bad.jsonl:2: expected a JSON object"):
        generate.run_generate(missing, prompt_file=str(bad))
    with pytest.raises(ValueError, match=r"--output=.*bad.jsonl is the input file"):
        generate.run_generate(missing, prompt_file=str(bad), output=str(bad))
    assert bad.read_text() == '{"text": "fine"}\n"just a string"\n'
    nulls = tmp_path / "nulls.jsonl"  # read as the prompts "None" and "['a', 'b']" before
    for row, message in (('{"text": null}', "field 'text' is null"),
                         ('{"text": ["a", "b"]}', "field 'text' must be a string")):
        nulls.write_text('{"text": "fine"}\n' + row + "\n")
        with pytest.raises(DataFormatError, match=rf"nulls.jsonl:2: {re.escape(message)}"):
            generate.run_generate(missing, prompt_file=str(nulls))
    upper = tmp_path / "PROMPTS.JSONL"  # jsonl by its suffix in any case, as the readers
    upper.write_text('{"txt": "fine"}\n')
    with pytest.raises(DataFormatError, match=r"PROMPTS.JSONL:1: missing field 'text'"):
        generate.run_generate(missing, prompt_file=str(upper))
    # A JSON document was read as plain-text lines ("[", '  "the cat",', ...) without a word:
    # prompt files are plain text or .jsonl, so a .json one is refused.
    array = tmp_path / "prompts.JSON"
    array.write_text('[\n  "the cat",\n  "a dog"\n]\n')
    with pytest.raises(DataFormatError, match=r"prompts.JSON: a .json prompt file is not read: "
                       r".*plain text \(one prompt per line\), .jsonl .*'text' field"):
        generate.run_generate(missing, prompt_file=str(array))
    with pytest.raises(FileNotFoundError, match=r"prompt_file '.*nope.txt' does not exist"):
        generate.run_generate(missing, prompt_file=str(tmp_path / "nope.txt"))
    with pytest.raises(FileNotFoundError, match=r"prompt_file .* is not a file"):
        generate.run_generate(missing, prompt_file=str(tmp_path))
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\u00e9 ok\n".encode("utf-8") + "na\u00efve\n".encode("latin-1"))
    with pytest.raises(DataFormatError, match=r"latin1.txt:2: not UTF-8"):
        generate.run_generate(missing, prompt_file=str(latin1))
    # Gold labels the choices cannot produce would score 0 without a word: refused.
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text('{"text": "a", "label": "pos"}\n{"text": "b", "label": "neg"}\n')
    with pytest.raises(ValueError, match=r"labels \['neg', 'pos'\] in .*labelled.jsonl are not "
                                         r"among the labels of the choices \['good', 'bad'\]"):
        generate.run_generate(missing, mode="score", prompt_file=str(labelled),
                              choices=[" good", " bad"])


def test_a_string_where_a_list_is_expected_is_refused(tmp_path):
    """`prompts="Mr. Darcy"` completed each of its 9 characters as a prompt of its own, and
    `choices=" wife"` scored the choices " ", "w", "i", "f", "e", without a word."""
    missing = str(tmp_path / "no_model")  # refused before the model is loaded
    cases = [
        (dict(prompts="Mr. Darcy"), r"prompts='Mr. Darcy' is a string; give a list of strings "
                                    r"\(prompts=\['Mr. Darcy'\]\)"),
        (dict(prompts=["a"], stop="END"), "stop='END' is a string"),
        (dict(prompts=["a"], mode="score", choices=" wife"), "choices=' wife' is a string"),
        (dict(prompts=["a"], mode="score", choices=[" a", " b"], labels="xy"),
         "labels='xy' is a string"),
        # A float failed after the model loaded: "slice indices must be integers".
        (dict(prompts=["a"], top_k=5.0), "top_k must be a whole number, got 5.0"),
        (dict(prompts=["a"], max_new_tokens=3.0), "max_new_tokens must be a whole number"),
        (dict(prompts=["a"], batch_size=True), "batch_size must be a whole number, got True"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            generate.run_generate(missing, **kwargs)


def test_an_empty_prompt_file_is_named_as_such(tmp_path):
    """A prompt file with no prompts said "no prompts (give --prompt or --prompt_file)", as
    if no file had been given: the file is named, and what it lacks."""
    missing = str(tmp_path / "no_model")  # never reached
    for name, text, what in (("empty.txt", "", "it is empty or all its lines are blank"),
                             ("blank.txt", "\n  \n\r\n", "it is empty or all its lines are blank"),
                             ("empty.jsonl", "", "no rows"),
                             ("header.tsv", "sentence\tlabel\n", "no rows under its header")):
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ValueError, match=rf"prompt_file '.*{re.escape(name)}' holds no "
                                             rf"prompts \({what}\)"):
            generate.run_generate(missing, prompt_file=str(path), text_field="sentence")
    with pytest.raises(ValueError, match=r"no prompts \(give --prompt or --prompt_file\)"):
        generate.run_generate(missing)


def test_a_choice_longer_than_the_context_is_named_as_the_flag(tmp_path):
    """A --choice of more than max_len tokens was refused as "score: continuation 0 has N
    tokens", which named neither the flag nor which choice."""
    _small_gpt2_dir(tmp_path, max_len=16)
    long = " the cat sat on the mat." * 5
    with pytest.raises(ValueError, match=r"generate: --choice ' the cat sat on the mat\. the cat"
                                         r".*'\.\.\. is \d+ tokens; the model's max_len 16 allows"):
        generate.run_generate(str(tmp_path), mode="score", prompts=["a dog"],
                              choices=[" dog", long])


def test_sampling_errors_name_the_flag_on_the_command_line_and_the_field_in_the_library(
        tmp_path, capsys):
    """`tl_jax generate --top_p=1.5` said "Sampling: top_p must be in (0, 1]", the dataclass's
    words; the command names its flag, and `Sampling` keeps naming its field."""
    from tl_jax import main as cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", f"--model={tmp_path / 'no_model'}", "--prompt=a", "--top_p=1.5"])
    assert str(exit_info.value.code).startswith(
        "tl_jax: error: generate: --top_p must be in (0, 1], got 1.5")
    with pytest.raises(ValueError, match=r"^Sampling: top_p must be in \(0, 1\], got 1.5$"):
        Sampling(top_p=1.5)
    with pytest.raises(ValueError, match=r"^Sampling: top_k must be >= 0, got -1$"):
        Sampling(top_k=-1)
    with pytest.raises(ValueError, match=r"^Sampling: temperature must be a finite number"):
        Sampling(temperature=float("nan"))


def test_generate_command_line_labels_stops_and_long_prompts(tmp_path, capsys):
    from tl_jax import main as cli

    model, params, tok = _small_gpt2_dir(tmp_path, max_len=16)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"text": "the cat", "label": "pos"}\n{"text": "a dog", "label": "neg"}\n')
    out = tmp_path / "out.jsonl"
    # "--labels=pos, neg": the space after the comma is not part of a label (it made every
    # prediction " neg" and the accuracy 0).
    cli.main(["generate", f"--model={tmp_path}", "--mode=score", f"--prompt_file={prompts}",
              "--choice= sat", "--choice= dog", "--labels=pos, neg", f"--output={out}"])
    import json
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["prediction"] for r in rows} <= {"pos", "neg"}
    accuracy = sum(r["prediction"] == r["label"] for r in rows) / 2
    assert f"zero-shot accuracy {accuracy:.4f} on 2 labelled prompts" in capsys.readouterr().out
    # Numeric gold labels (pandas writes 1.0) are the labels "1" and "0".
    numeric = tmp_path / "n.jsonl"
    numeric.write_text('{"text": "the cat", "label": 1.0}\n{"text": "a dog", "label": 0}\n')
    by_number = generate.run_generate(str(tmp_path), mode="score", prompt_file=str(numeric),
                                      choices=[" sat", " dog"], labels=["1", "0"])
    assert [r["label"] for r in by_number] == ["1", "0"]
    assert [r["prediction"] for r in by_number] == [{"pos": "1", "neg": "0"}[r["prediction"]]
                                                    for r in rows]
    capsys.readouterr()

    # A prompt longer than max_len + 1 - max_new_tokens keeps its end, and says so.
    long = "the cat sat on the mat. " * 6
    cut = len(tok.encode(long)) - (16 + 1 - 4)
    results = generate.run_generate(str(tmp_path), prompts=[long, "a cat"], max_new_tokens=4,
                                    stop_at_eos=False)
    err = capsys.readouterr().err
    assert "1 prompt(s) longer than the 13 tokens" in err, err
    assert results[0]["prompt_tokens_cut"] == cut > 0 and "prompt_tokens_cut" not in results[1]

    # --stop: the completion ends before the first occurrence of a stop string, whether it is
    # one token, inside a token, or spread over several tokens.
    want = Generator(model, params, pad_id=tok.eos_id).generate([tok.encode("a cat")], 8)[0]
    text = tok.decode(want)

    def completion(stops):
        return generate.run_generate(str(tmp_path), prompts=["a cat"], max_new_tokens=8,
                                     stop_at_eos=False, stop=stops)[0]["completion"]

    usable = [(k, t) for k, t in enumerate(want)
              if tok.encode(tok.decode([t])) == [t] and t not in want[:k]]
    k, stop = ([u for u in usable if u[0] > 0] or usable)[0]
    assert completion([tok.decode([stop])]) == tok.decode(want[:k])
    spanning = tok.decode(want[-3:-1])  # two tokens
    assert completion([spanning]) == text[:text.index(spanning)]
    inside = tok.decode([want[-1]])[-1]  # the last character of a token
    assert completion([inside, spanning]) == text[:min(text.index(inside),
                                                       text.index(spanning))]
    assert completion(["never in the text \u2603"]) == text
    with pytest.raises(ValueError, match="an empty stop string"):
        generate.run_generate(str(tmp_path / "unread"), prompts=["a cat"], stop=[""])

    # Commands without a config refuse --config.* overrides instead of dropping them.
    # A usage error (exit 2), as any flag the command does not have.
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", f"--model={tmp_path}", "--prompt=a", "--config.model.foo=1"])
    assert e.value.code == 2


def test_a_workdir_with_a_broken_config_is_named(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.json").write_text('{"task": "clm", "mod')
    with pytest.raises(ValueError, match=r"config.json:1: invalid JSON \(.*\); it is the run's "
                       r"config, written by `tl_jax train`"):
        generate.load_model(str(tmp_path))
    (tmp_path / "config.json").write_text('["clm"]')  # JSON, but not a run's config
    with pytest.raises(ValueError, match=r"config.json holds a JSON list, not the run's config"):
        generate.load_model(str(tmp_path))


def test_a_workdir_without_its_checkpoints_folder_is_named(tmp_path):
    """A run's config.json without checkpoints/ is not read as a GPT-2 config.json."""
    (tmp_path / "config.json").write_text('{"task": "clm", "model": {"size": "tiny"}}')
    with pytest.raises(FileNotFoundError, match=r"is a tl_jax workdir \(task='clm'\) without a "
                       r"checkpoints/ folder"):
        generate.load_model(str(tmp_path))


def test_python_dash_m_runs_the_command_line():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "tl_jax", "generate", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--stop" in done.stdout, done.stderr


def test_an_empty_prompt_completes_from_endoftext_alone(tmp_path):
    """GPT-2's unconditional samples: an empty prompt (`--prompt=""`, or a template that makes
    one) starts from `<|endoftext|>` alone, as that token's greedy continuation."""
    from tl_jax.data.bpe import BPETokenizer
    from tl_jax.interop import gpt2

    tok = BPETokenizer.train(["the cat sat on the mat", "a dog ran"] * 20, vocab_size=280)
    cfg = gpt_config("tiny", tok.vocab_size, max_len=32)
    params = nn.unbox(GPT(cfg).init(jax.random.PRNGKey(3), jnp.zeros((1, 4), jnp.int32))["params"])
    gpt2.save_pretrained(tmp_path, cfg, params)
    tok.save(str(tmp_path))
    out = generate.run_generate(str(tmp_path), prompts=["", "the cat"], max_new_tokens=6,
                                stop_at_eos=False)
    model, loaded, _ = generate.load_model(str(tmp_path))
    want = Generator(model, loaded, pad_id=tok.eos_id, num_tokens=tok.vocab_size).generate(
        [[tok.eos_id]], 6, Sampling(), [])[0]
    assert out[0]["prompt"] == "" and out[0]["completion"] == tok.decode(want)
    assert len(want) == 6 and "prompt_tokens_cut" not in out[0]


@pytest.mark.parametrize("label_field, rows, noted", [
    ("lbl", [{"text": "a"}, {"text": "b", "label": "pos"}], True),  # named, in no row
    ("lbl", [{"text": "a"}, {"text": "b", "lbl": ""}], False),  # in a row (blank there)
    ("label", [{"text": "a"}], False),  # the default: an unlabelled file stays silent
])
def test_score_mode_notes_a_named_label_field_that_no_row_has(tmp_path, monkeypatch, capsys,
                                                               label_field, rows, noted):
    """`--mode=score --label_field=lbl` over a file without `lbl` skipped accuracy without a
    word."""
    import json

    prompt_file = tmp_path / "prompts.jsonl"
    prompt_file.write_text("".join(json.dumps(r) + "\n" for r in rows))

    class Loaded(Exception):
        pass

    def load_model(model_dir):
        raise Loaded
    monkeypatch.setattr(generate, "load_model", load_model)
    with pytest.raises(Loaded):
        generate.run_generate(str(tmp_path), mode="score", prompt_file=str(prompt_file),
                              label_field=label_field, choices=[" pos", " neg"])
    err = capsys.readouterr().err
    assert (f"has no field {label_field!r}, so no accuracy is computed" in err) == noted, err
    if noted:
        assert err.count("\n") == 1

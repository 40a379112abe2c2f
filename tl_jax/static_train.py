"""Trainers for static embeddings: word2vec (SGD, linear decay) and GloVe (AdaGrad).

Static embeddings do not fit the canonical `train.py` well: their whole appeal is speed on one
machine, a word2vec step touches a few thousand rows of a table, and plain SGD with a linearly
decaying rate has no optimizer state. So they get this small trainer, which reuses the models
(`tl_jax.models.embeddings`), the data code (`tl_jax.data.word_vectors`) and optax.

Speed comes from four things: (1) one jitted call runs `steps_per_call` steps under
`lax.scan`, so Python dispatch is paid once per many batches; (2) the word2vec step writes its
closed-form gradient straight into the gathered rows with a scatter-add on donated tables
(instead of materialising a dense (V, D) gradient); (3) negatives are drawn on the device;
(4) a host thread builds the next epoch's examples with vectorised numpy meanwhile.

Run from the CLI (see configs/word2vec.py and configs/glove.py), or call `train_word2vec` /
`train_glove` on tokenised sentences.
"""
from __future__ import annotations

import concurrent.futures
import functools
import os
import pathlib
import time
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tl_jax import paths
from tl_jax import progress as progress_lib
from tl_jax.data import word_vectors as wv
from tl_jax.data.vector_formats import FORMATS, WordVectors, save_vectors
from tl_jax.metrics_writer import json_safe
from tl_jax.models import embeddings

# ----------------------------------------------------------------------------------------------
# word2vec
# ----------------------------------------------------------------------------------------------


def _check_at_least(minimum: int, values: dict, prefix: str = "") -> None:
    """Raises naming every value below `minimum` (a 0 or negative size would otherwise fail
    deep inside numpy or JAX, or train on silently cut data)."""
    bad = [f"{prefix}{k}={v!r}" for k, v in values.items() if v < minimum]
    if bad:
        raise ValueError(f"{', '.join(bad)}: must be >= {minimum}")


def _check_rates(lr, min_lr, prefix: str = "",
                 names: tuple[str, str] = ("learning_rate", "min_learning_rate")) -> None:
    """A learning rate must be > 0, a floor in [0, lr]: the word2vec schedule max(lr * (1 -
    progress), min_lr) trained a rate <= 0 at min_lr throughout, without a word, and a floor
    above the rate at the floor. `names`: how the caller calls the two."""
    if not lr > 0:
        raise ValueError(f"{prefix}{names[0]}={lr!r}: must be > 0")
    if not 0 <= min_lr <= lr:
        raise ValueError(f"{prefix}{names[1]}={min_lr!r}: must be in [0, {names[0]}={lr!r}] "
                         "(the rate falls linearly to it)")


def word2vec_sgd_step(params, batch, lr, cbow: bool, neg_weight: float = 1.0):
    """One SGD step of negative-sampling word2vec, with the gradient in closed form.

    For logits x = h . v_t over t in [target, negatives] with labels [1, 0, ..., 0], the loss
    -log sigma(x_0) - w sum_k log sigma(-x_k) has dL/dx = sigma(x) - label (times w for the
    negatives), so dL/dv_t = (dL/dx_t) h and dL/dh = sum_t (dL/dx_t) v_t.

    `batch["negatives"]` is either (B, K), K negatives per example as in word2vec.c (w = 1), or
    (S,), S negatives shared by the whole batch (Ji et al. 2016, "Parallelizing word2vec in
    shared and distributed memory"): the negative terms become dense (B, S) matmuls instead
    of B * K row gathers and scatters; with w = K / S the expected gradient is that of K
    negatives per example. A negative equal to the target is ignored, as in word2vec.c.
    For CBOW every context word receives the full dL/dh (word2vec.c's and gensim's convention
    with a mean context). Returns (params, mean loss); equals `jax.grad` of `Word2Vec` +
    `negative_sampling_loss` summed over the batch (tested).
    """
    inp, out = params["input"], params["output"]
    dim = inp.shape[1]
    target = batch["centre"] if cbow else batch["context"]
    negs = batch["negatives"]
    if cbow:
        ctx = batch["context"]  # (B, 2W)
        ctx_mask = (ctx >= 0).astype(inp.dtype)[..., None]  # (B, 2W, 1)
        ctx_ids = jnp.maximum(ctx, 0)
        n_ctx = jnp.maximum(jnp.sum(ctx_mask, axis=1), 1.0)  # (B, 1)
        h = jnp.sum(inp[ctx_ids] * ctx_mask, axis=1) / n_ctx  # (B, D)
    else:
        h = inp[batch["centre"]]  # (B, D)
    v_pos = out[target]  # (B, D)
    pos = jnp.sum(h * v_pos, axis=-1)  # (B,)
    if negs.ndim == 1:
        v_neg = out[negs]  # (S, D)
        neg = h @ v_neg.T  # (B, S)
        valid = negs[None, :] != target[:, None]  # (B, S)
    else:
        v_neg = out[negs]  # (B, K, D)
        neg = jnp.einsum("bd,bkd->bk", h, v_neg)  # (B, K)
        valid = negs != target[:, None]  # (B, K)
    g_pos = jax.nn.sigmoid(pos) - 1.0  # dL/dpos, (B,)
    g_neg = neg_weight * jnp.where(valid, jax.nn.sigmoid(neg), 0.0)  # dL/dneg
    loss = -jax.nn.log_sigmoid(pos) - neg_weight * jnp.sum(
        jnp.where(valid, jax.nn.log_sigmoid(-neg), 0.0), axis=1)
    if negs.ndim == 1:
        grad_h = g_pos[:, None] * v_pos + g_neg @ v_neg  # (B, D)
        grad_v_neg = g_neg.T @ h  # (S, D)
    else:
        grad_h = g_pos[:, None] * v_pos + jnp.einsum("bk,bkd->bd", g_neg, v_neg)  # (B, D)
        grad_v_neg = (g_neg[..., None] * h[:, None, :]).reshape(-1, dim)  # (B * K, D)
    # One scatter for the target and negative rows (two would copy the table in between).
    out = out.at[jnp.concatenate([target, negs.reshape(-1)])].add(
        jnp.concatenate([-lr * g_pos[:, None] * h, -lr * grad_v_neg]))
    if cbow:
        upd = jnp.broadcast_to(-lr * grad_h[:, None, :], ctx_mask.shape[:2] + (dim,)) * ctx_mask
        inp = inp.at[ctx_ids.reshape(-1)].add(upd.reshape(-1, dim))  # (B * 2W, D)
    else:
        inp = inp.at[batch["centre"]].add(-lr * grad_h)
    return {"input": inp, "output": out}, jnp.mean(loss)


@functools.partial(jax.jit, static_argnames=("cbow", "negatives", "shared_negatives"),
                   donate_argnums=(0,))
def _word2vec_chunk(params, batches, lrs, key, table, cbow: bool, negatives: int,
                    shared_negatives: int = 0):
    """Runs len(lrs) SGD steps; `batches` holds arrays stacked as (steps, B, ...).

    Negatives are drawn here, on the device, from the unigram^0.75 `table`: that saves the host
    a random gather of steps * B * K ids per call and the copy of them to the device.
    """
    def body(p, xs):
        batch, lr, step_key = xs
        shape = (shared_negatives,) if shared_negatives else batch["centre"].shape + (negatives,)
        slots = jax.random.randint(step_key, shape, 0, table.shape[0])
        batch = dict(batch, negatives=table[slots])  # (S,) or (B, K)
        weight = negatives / shared_negatives if shared_negatives else 1.0
        return word2vec_sgd_step(p, batch, lr, cbow, weight)

    keys = jax.random.split(key, lrs.shape[0])
    params, losses = jax.lax.scan(body, params, (batches, lrs, keys))
    return params, losses


def _epoch_mean_loss(chunk_losses: list, n_steps: int) -> float:
    """The mean loss of an epoch's first `n_steps` steps (those after are padding), given as
    one device array a chunk, read chunk by chunk on the host. One `jnp.concatenate` of the
    list was an XLA program with an operand a chunk, compiled anew for each count and slower to
    compile the more there were (word2vec on 36 M words at the tiny config, 72,000 chunks an
    epoch: still compiling after 10 minutes), and slicing off the padding compiled a program
    for each length."""
    losses = np.concatenate([np.asarray(c, np.float64) for c in chunk_losses])
    return float(np.mean(losses[:n_steps]))


def init_word2vec(vocab_size: int, dim: int, cbow: bool, seed: int):
    """Initial word2vec tables (plain arrays, no partitioning boxes)."""
    model = embeddings.Word2Vec(vocab_size, dim, cbow)
    dummy = {"centre": jnp.zeros((1,), jnp.int32), "negatives": jnp.zeros((1, 1), jnp.int32),
             "context": jnp.zeros((1, 2) if cbow else (1,), jnp.int32)}
    params = nn.unbox(model.init(jax.random.PRNGKey(seed), dummy)["params"])
    return model, params


Corpus = Sequence[Sequence[str]] | wv.WordCorpus | wv.EncodedCorpus


def _vocab(sentences: Corpus, min_count: int) -> wv.Vocab:
    if isinstance(sentences, wv.EncodedCorpus):
        raise ValueError("a corpus given as vocabulary ids (an EncodedCorpus) needs the "
                         "vocabulary it was encoded with: pass vocab=")
    if isinstance(sentences, wv.WordCorpus):
        return sentences.vocab(min_count)
    return wv.Vocab.build(sentences, min_count)


def _encode(sentences: Corpus, vocab: wv.Vocab) -> wv.EncodedCorpus:
    """The corpus in vocabulary ids (its `n_words` counts out-of-vocabulary tokens too)."""
    if isinstance(sentences, wv.EncodedCorpus):
        if len(vocab) <= int(sentences.ids.max()):
            raise ValueError(f"the corpus holds vocabulary id {int(sentences.ids.max())}, "
                             f"outside the {len(vocab):,}-word vocabulary given")
        return sentences
    if isinstance(sentences, wv.WordCorpus):
        return sentences.encode(vocab)
    return wv.encode_corpus(sentences, vocab)


def train_word2vec(sentences: Corpus, *, dim: int = 100,
                   window: int = 5, negatives: int = 5, epochs: int = 5, min_count: int = 5,
                   sample: float = 1e-3, lr: float = 0.025, min_lr: float = 1e-4,
                   batch_size: int = 1024, cbow: bool = False, seed: int = 0,
                   steps_per_call: int = 64,
                   shared_negatives: int = 0, vocab: wv.Vocab | None = None,
                   log: Callable[[str], None] | None = print,
                   progress: bool = False) -> tuple[WordVectors, dict]:
    """Trains word2vec on tokenised sentences (lists of words, a `wv.WordCorpus`, or a
    `wv.EncodedCorpus` of the `vocab` given); returns (input vectors, stats).

    The learning rate falls linearly from `lr` towards 0 over all planned epochs and is held
    at `min_lr` once it gets there (word2vec.c's rule, whose floor is lr * 1e-4 rather than
    an absolute `min_lr`; gensim instead interpolates linearly from alpha to min_alpha).
    `shared_negatives=S > 0` draws S negatives per batch shared by all its
    examples, weighted K / S (see `word2vec_sgd_step`); 0 draws K per example.
    stats: words (corpus tokens x epochs), seconds, words_per_sec, losses (mean loss per
    epoch), vocab. `progress` shows a bar of each epoch's steps (`tl_jax.progress.bar`).
    """
    _check_at_least(1, dict(dim=dim, window=window, negatives=negatives, epochs=epochs,
                            batch_size=batch_size, steps_per_call=steps_per_call))
    _check_at_least(0, dict(shared_negatives=shared_negatives))
    _check_rates(lr, min_lr, names=("lr", "min_lr"))
    vocab = vocab or _vocab(sentences, min_count)
    # The clock covers everything after the vocabulary, mapping the corpus to ids included
    # (gensim's `train` looks every word up as it goes): words_per_sec is end-to-end training.
    # A `WordCorpus` had its words looked up as it was read, so only their mapping to vocabulary
    # ids is timed, and an `EncodedCorpus` (`tl_jax static`'s) is mapped already
    # (`benchmarks/word2vec_vs_gensim.py` passes lists of words, as gensim gets).
    start = time.perf_counter()
    corpus = _encode(sentences, vocab)
    n_words = corpus.n_words
    data = wv.Word2VecBatches(corpus, vocab, batch_size=batch_size, window=window,
                              negatives=negatives, sample=sample, cbow=cbow, seed=seed)
    _, params = init_word2vec(len(vocab), dim, cbow, seed)
    table = jnp.asarray(data.table)
    key = jax.random.PRNGKey(seed + 1)
    losses = []
    # An epoch's steps come a chunk at a time, built from a block of the corpus at a time (the
    # next block on a host thread while the device trains): an epoch is never built whole. The
    # next epoch's random draws are made on a thread too, while this one trains.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        upcoming = pool.submit(data.epoch_chunks, steps_per_call)
        for epoch in range(epochs):
            n_steps, chunks = upcoming.result()
            if epoch + 1 < epochs:
                upcoming = pool.submit(data.epoch_chunks, steps_per_call)
            frac = (epoch + np.arange(n_steps) / n_steps) / epochs  # progress through training
            lrs = np.maximum(lr * (1.0 - frac), min_lr).astype(np.float32)
            # Subsampling makes every epoch's step count differ, so its last, partial chunk had
            # a new length each epoch, and each length compiled the scan anew (4-7 s apiece on
            # 2 busy cores). It is padded to a whole chunk instead: the padding steps have
            # learning rate 0, so they change no row, and their losses are dropped.
            epoch_losses = []
            bar = progress_lib.bar(total=n_steps, desc=f"word2vec epoch {epoch + 1}/{epochs}",
                                   unit="step", dynamic_ncols=True, leave=False,
                                   disable=not progress)
            with progress_lib.closed_on_error(bar):
                for s, chunk in zip(range(0, n_steps, steps_per_call), chunks):
                    chunk_lrs = lrs[s:s + steps_per_call]
                    n_real = len(chunk_lrs)
                    if n_real < steps_per_call:  # the last chunk, padded (only it: no epoch copy)
                        chunk = {k: np.concatenate([v, np.zeros((steps_per_call - n_real,)
                                                                + v.shape[1:], v.dtype)])
                                 for k, v in chunk.items()}
                        chunk_lrs = np.concatenate(
                            [chunk_lrs, np.zeros(steps_per_call - n_real, np.float32)])
                    key, sub = jax.random.split(key)
                    params, chunk_losses = _word2vec_chunk(
                        params, chunk, chunk_lrs, sub, table, cbow=cbow,
                        negatives=negatives, shared_negatives=shared_negatives)
                    epoch_losses.append(chunk_losses)  # kept on device: no sync inside the epoch
                    bar.update(n_real)
                losses.append(_epoch_mean_loss(epoch_losses, n_steps))  # padding steps left out
            bar.close()
            if not np.isfinite(losses[-1]):
                # A batch sums the updates of every occurrence of a word; with a tiny vocabulary
                # (or a huge batch) one row gets too many at once.
                raise FloatingPointError(
                    f"word2vec loss became {losses[-1]} in epoch {epoch + 1}: lower the learning "
                    f"rate ({lr}) or batch_size ({batch_size}) for this {len(vocab)}-word "
                    "vocabulary")
            if log:
                log(f"word2vec epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f}")
    vectors = np.asarray(jax.block_until_ready(params["input"]))
    seconds = time.perf_counter() - start
    stats = {"words": n_words * epochs, "seconds": seconds,
             "words_per_sec": n_words * epochs / seconds, "losses": losses, "vocab": vocab}
    return WordVectors(list(vocab.words), vectors), stats


# ----------------------------------------------------------------------------------------------
# GloVe
# ----------------------------------------------------------------------------------------------


def glove_c_adagrad(learning_rate: float) -> optax.GradientTransformation:
    """AdaGrad exactly as GloVe's glove.c applies it (which is not optax's `adagrad`).

    glove.c scales the gradient by the rate first, divides by the root of the accumulator as it
    was *before* this step, then adds the square of the scaled gradient:

        u = eta * g;  theta -= u / sqrt(G);  G += u^2        (G starts at 1)

    optax's adagrad adds g^2 (unscaled) first and divides eta * g by the root of that, so its
    late steps are eta * g / sqrt(sum g^2), where glove.c's are g / sqrt(sum g^2), independent
    of eta: glove.c's eta = 0.05 behaves like plain SGD at 0.05 early and like AdaGrad with rate
    1 late. (Here a step sums a batch's per-entry gradients before squaring them, where glove.c
    steps once per entry; later versions of glove.c also clip each eta-scaled gradient component
    of the vectors at +-100, which this does not.) With one entry per step this is glove.c's loop
    exactly (tests/test_word_vectors.py checks it). The batching mattered little at eta 0.05 on
    the README's corpus: 15 epochs gave the same per-epoch losses (0.0740 vs 0.0734 in epoch 1,
    0.0216 vs 0.0216 in epoch 15) and scores as a sequential glove.c loop on the same counts. It
    matters at higher rates on small corpora, where a frequent word's row gets many entries per
    step: at 0.2 the loss went NaN in epoch 1 on 2,000 text units (466k entries, batch 16384),
    where the sequential loop trained.
    """
    def init(params):
        return jax.tree_util.tree_map(jnp.ones_like, params)

    def update(grads, acc, params=None):
        del params
        scaled = jax.tree_util.tree_map(lambda g: learning_rate * g, grads)
        updates = jax.tree_util.tree_map(lambda u, a: -u / jnp.sqrt(a), scaled, acc)
        acc = jax.tree_util.tree_map(lambda a, u: a + u * u, acc, scaled)
        return updates, acc

    return optax.GradientTransformation(init, update)


GLOVE_ADAGRADS = ("optax", "glove_c")

# Each AdaGrad rule's default learning rate: the same number means other steps in each (see
# `glove_c_adagrad`), and optax's 0.5 made glove_c's loss NaN in the first epoch on the README's
# corpus (and on 500 sentences of it; glove.c's own sequential loop blows up at 0.5 there too).
# glove_c's is glove.c's own eta, and it needs glove.c's number of epochs: on the README's corpus
# both this trainer and a sequential glove.c loop score WordSim353 ~0 after 3 epochs (the loss
# barely moves in epochs 2-3, 0.049 to 0.046) and 0.18 after 15 (SimLex 0.10, analogies 0.047;
# glove.c's loop 0.21 after 50). 0.2 scored higher after 15 epochs (WordSim353 0.206 / 0.199,
# SimLex 0.151 / 0.135 with seeds 0 / 1, analogies the same), but it went NaN on 2,000 text
# units at batch 16384, so the default stays glove.c's.
GLOVE_LEARNING_RATES = {"optax": 0.5, "glove_c": 0.05}


def glove_learning_rate(adagrad: str, lr: float | None = None) -> float:
    """`lr` when one is given, else the default of the AdaGrad rule `adagrad`."""
    if adagrad not in GLOVE_ADAGRADS:
        raise ValueError(f"adagrad={adagrad!r}; expected one of {GLOVE_ADAGRADS}")
    return GLOVE_LEARNING_RATES[adagrad] if lr is None else lr


def _check_glove_weighting(x_max, alpha, prefix: str = "") -> None:
    """f(x) = min(1, (x / x_max)^alpha): an x_max of 0 or a negative alpha gave every entry
    weight 1 (plain least squares, not GloVe), a negative x_max NaN weights, which stopped the
    run as a divergence ("lower the learning rate")."""
    bad = ([f"{prefix}x_max={x_max!r} (must be > 0)"] if not x_max > 0 else []) + \
        ([f"{prefix}alpha={alpha!r} (must be >= 0)"] if not alpha >= 0 else [])
    if bad:
        raise ValueError(", ".join(bad) + ": GloVe weights a count x by (x / x_max)^alpha "
                         "below x_max and by 1 above it")


def _glove_loss(params, batch, x_max, alpha):
    pred, _ = embeddings.GloVe(params["word"].shape[0], params["word"].shape[1]).apply(
        {"params": params}, batch["rows"], batch["cols"])
    per_entry = embeddings.glove_loss(pred, batch["counts"], x_max, alpha) * batch["mask"]
    # A sum, not a mean: GloVe's updates are per entry, and AdaGrad normalises the scale anyway.
    return 0.5 * jnp.sum(per_entry)


@functools.partial(jax.jit, static_argnames=("optimizer", "x_max", "alpha"),
                   donate_argnums=(0, 1))
def _glove_chunk(params, opt_state, batches, optimizer, x_max, alpha):
    def body(carry, batch):
        p, s = carry
        loss, grads = jax.value_and_grad(_glove_loss)(p, batch, x_max, alpha)
        updates, s = optimizer.update(grads, s, p)
        return (optax.apply_updates(p, updates), s), loss / jnp.maximum(jnp.sum(batch["mask"]), 1)

    (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), batches)
    return params, opt_state, losses


def train_glove(sentences: Corpus, *, dim: int = 100,
                window: int = 10, epochs: int = 15, min_count: int = 5, x_max: float = 10.0,
                alpha: float = 0.75, lr: float | None = None, batch_size: int = 16384,
                seed: int = 0, steps_per_call: int = 16, vocab: wv.Vocab | None = None,
                adagrad: str = "optax", log: Callable[[str], None] | None = print,
                progress: bool = False) -> tuple[WordVectors, dict]:
    """Trains GloVe with AdaGrad on the nonzero co-occurrences; returns (W + W~, stats).

    Defaults suit corpora of about a million words (see configs/glove.py for why x_max and
    lr differ from the paper's 100 and 0.05). `adagrad="optax"` (the default, which the README's
    scores used) is optax's AdaGrad with the accumulator started at 1; `"glove_c"` is glove.c's
    own variant, where the rate sits inside the accumulated squares (see `glove_c_adagrad`).
    The same `lr` means different steps in each, so glove.c's eta = 0.05 only carries over with
    "glove_c" (where, at 0.05, the batched steps track glove.c's per-entry ones; at higher rates
    they diverge sooner: tune it for the corpus). `lr=None` (the default) is the rule's own
    default, `GLOVE_LEARNING_RATES`: 0.5 for "optax", 0.05 for "glove_c", which like glove.c
    needs about 15 epochs to learn anything on a million words. `progress` prints a line
    around the co-occurrence count and shows a bar of each epoch's steps.
    """
    _check_at_least(1, dict(dim=dim, window=window, epochs=epochs, batch_size=batch_size,
                            steps_per_call=steps_per_call))
    lr = glove_learning_rate(adagrad, lr)
    _check_glove_weighting(x_max, alpha)
    _check_rates(lr, 0.0, names=("lr", "min_lr"))
    vocab = vocab or _vocab(sentences, min_count)
    corpus = _encode(sentences, vocab)
    with progress_lib.phase(f"Counting co-occurrences within {window} words", progress,
                            prefix="[glove]") as step:
        cooc = wv.cooccurrence_matrix(corpus, len(vocab), window)
        step.result = f"{cooc.nnz:,} nonzero pairs"
    rows, cols = cooc.row.astype(np.int32), cooc.col.astype(np.int32)
    counts = cooc.data.astype(np.float32)
    model = embeddings.GloVe(len(vocab), dim)
    params = nn.unbox(model.init(jax.random.PRNGKey(seed), jnp.zeros(1, jnp.int32),
                                 jnp.zeros(1, jnp.int32))["params"])
    # GloVe's C code starts every squared-gradient accumulator at 1 (but accumulates squares of
    # lr-scaled gradients, after the step: `glove_c_adagrad`).
    optimizer = (glove_c_adagrad(lr) if adagrad == "glove_c" else
                 optax.adagrad(lr, initial_accumulator_value=1.0, eps=1e-8))
    opt_state = optimizer.init(params)
    rng = np.random.default_rng(seed)
    n = len(counts)
    n_batches = -(-n // batch_size)
    losses = []
    start = time.perf_counter()
    for epoch in range(epochs):
        # Whole batches only: slots past n repeat real entries and are masked out of the loss.
        perm = rng.permutation(n_batches * batch_size)
        order = perm % n
        arrays = {"rows": rows[order], "cols": cols[order], "counts": counts[order],
                  "mask": (perm < n).astype(np.float32)}
        arrays = {k: v.reshape(n_batches, batch_size) for k, v in arrays.items()}  # (S, B)
        epoch_losses = []
        bar = progress_lib.bar(total=n_batches, desc=f"glove epoch {epoch + 1}/{epochs}",
                               unit="step", dynamic_ncols=True, leave=False, disable=not progress)
        with progress_lib.closed_on_error(bar):
            for s in range(0, n_batches, steps_per_call):
                chunk = {k: v[s:s + steps_per_call] for k, v in arrays.items()}
                params, opt_state, chunk_losses = _glove_chunk(
                    params, opt_state, chunk, optimizer, float(x_max), float(alpha))
                epoch_losses.append(chunk_losses)
                bar.update(len(chunk["rows"]))
            losses.append(_epoch_mean_loss(epoch_losses, n_batches))
        bar.close()
        if not np.isfinite(losses[-1]):  # as in word2vec: not NaN vectors saved and scored
            raise FloatingPointError(
                f"glove loss became {losses[-1]} in epoch {epoch + 1}: lower the learning "
                f"rate ({lr}) or batch_size ({batch_size})")
        if log:
            log(f"glove epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f}")
    vectors = embeddings.glove_vectors(jax.block_until_ready(params))
    seconds = time.perf_counter() - start
    stats = {"nonzeros": n, "seconds": seconds, "losses": losses, "vocab": vocab}
    return WordVectors(list(vocab.words), vectors), stats


# ----------------------------------------------------------------------------------------------
# The CLI entry point
# ----------------------------------------------------------------------------------------------


def _differences(a: dict, b: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """(dotted key, value in a, value in b) for every leaf that differs."""
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out.extend(_differences(x, y, f"{prefix}{key}."))
        elif x != y:
            out.append((prefix + key, x, y))
    return out


def _with_later_keys(config: dict) -> dict:
    """Fills in, in place, the keys added to the static configs since they were first saved,
    with the value that older code used, so that a workdir (or a config file) from before a key
    existed is not taken for "another config". Also fills a `glove.learning_rate` of None with
    its AdaGrad rule's default: the config `run` saves names the rate that trained, and a rerun
    leaving it to the default compares equal to it (as to a run saved when the default was
    written out, 0.5 for every rule, which trained optax's with the same rate)."""
    config.setdefault("progress", True)
    if isinstance(config.get("glove"), dict):
        glove = config["glove"]
        glove.setdefault("adagrad", "optax")
        if glove.get("learning_rate") is None and glove["adagrad"] in GLOVE_ADAGRADS:
            glove["learning_rate"] = glove_learning_rate(glove["adagrad"])
    return config


def check_config(config) -> str:
    """Checks what a static config says without its data (method, save formats, sizes, the
    AdaGrad rule, GloVe's weighting, the learning rates), raising ValueError naming the key;
    returns the AdaGrad rule. `run` calls it first, and a sweep calls it for every run before
    the first one trains."""
    if config.method not in ("word2vec", "glove"):
        raise ValueError(f"config.method={config.method!r}; expected 'word2vec' or 'glove'")
    if not config.save_formats:
        raise ValueError(f"config.save_formats is empty: the vectors would be trained and not "
                         f"saved; name one or more of {sorted(FORMATS)}")
    unknown = [f for f in config.save_formats if f not in FORMATS]
    if unknown:  # before training, not after it
        raise ValueError(f"config.save_formats: unknown format(s) {unknown}; known: "
                         f"{sorted(FORMATS)}")
    sizes = {k: config[k] for k in ("dim", "window", "epochs", "batch_size", "steps_per_call",
                                    "min_count")}
    if config.method == "word2vec":
        sizes["word2vec.negatives"] = config.word2vec.negatives
        _check_at_least(0, {"word2vec.shared_negatives": config.word2vec.shared_negatives},
                        "config.")
    _check_at_least(1, sizes, "config.")
    _check_at_least(0, {k: config[k] for k in ("max_sentences", "max_vocab")}, "config.")
    # A config written before `glove.adagrad` existed trained with optax's AdaGrad.
    adagrad = config.glove.get("adagrad", "optax") if "glove" in config else "optax"
    if config.method == "glove" and adagrad not in GLOVE_ADAGRADS:
        raise ValueError(f"config.glove.adagrad={adagrad!r}: expected one of "
                         f"{', '.join(map(repr, GLOVE_ADAGRADS))}")
    if config.method == "glove":
        _check_glove_weighting(config.glove.x_max, config.glove.alpha, "config.glove.")
        lr = config.glove.learning_rate
        # None is the rule's default (`GLOVE_LEARNING_RATES`); the field takes any type then.
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float))):
            raise ValueError(f"config.glove.learning_rate={lr!r}: expected a number > 0, or "
                             f"None for the AdaGrad rule's default {GLOVE_LEARNING_RATES}")
        _check_rates(glove_learning_rate(adagrad, lr), 0.0, "config.glove.")
    else:
        _check_rates(config.word2vec.learning_rate, config.word2vec.get("min_learning_rate", 0.0),
                     "config.word2vec.")
    return adagrad


# The scores `run` writes to scores.json: those of every run, word2vec's speed, and (when
# `config.eval_dir` holds the files) those of `evaluation.evaluate_all`.
TRAIN_SCORES = ("train_seconds", "final_loss")
WORD2VEC_SCORES = ("words_per_sec",)
EVAL_SCORES = ("wordsim353_spearman", "wordsim353_pairs", "wordsim353_oov_pairs",
               "wordsim353_oov_words", "simlex999_spearman", "simlex999_pairs",
               "simlex999_oov_pairs", "simlex999_oov_words", "analogy_accuracy",
               "analogy_questions", "analogy_oov_questions")


def _evaluation_files(config) -> tuple[str, list[str]]:
    """(the expanded `config.eval_dir`, the evaluation files missing there): ("", [...]) when
    it is "", no files missing when it holds them all, every file when it holds none. A folder
    that does not exist, or holds some of the files only, is refused (ValueError)."""
    from tl_jax.evaluation import word_vectors as evaluation

    eval_dir = paths.expand(config.eval_dir) if config.eval_dir else ""
    if eval_dir and not os.path.isdir(eval_dir):
        # A mistyped folder (or an unset variable in it) would otherwise look like a folder
        # without the files: the run trained and skipped the scores with one line of output.
        raise ValueError(f"config.eval_dir={config.eval_dir!r}: no folder {eval_dir!r}"
                         + (" (is the variable in it set?)" if "$" in eval_dir else "")
                         + "; name the folder holding eval/, or eval_dir='' to skip the "
                         "evaluation")
    eval_files = (evaluation.WORDSIM353, evaluation.SIMLEX999, evaluation.GOOGLE_ANALOGIES)
    missing = [f for f in eval_files if not pathlib.Path(eval_dir, f).exists()]
    if eval_dir and len(missing) == len(eval_files) and evaluation.misplaced_files(eval_dir):
        # The folder of the files themselves (eval/) was taken for one without them: the run
        # trained and skipped the scores with one line of output.
        raise ValueError(f"config.eval_dir: {evaluation.misplaced_files(eval_dir)}")
    if eval_dir and 0 < len(missing) < len(eval_files):  # before training, not after it
        raise ValueError(f"config.eval_dir={eval_dir!r} lacks {missing}; it needs all of "
                         f"{list(eval_files)} (or eval_dir='' to skip the evaluation)")
    return eval_dir, missing


def score_names(config) -> list[str]:
    """The names of the scores `run` writes for `config`, as its eval_dir stands now (a sweep
    checks `--metrics` against them before the first run trains)."""
    names = list(TRAIN_SCORES)
    if config.method == "word2vec":
        names += WORD2VEC_SCORES
    eval_dir, missing = _evaluation_files(config)
    if eval_dir and not missing:
        names += EVAL_SCORES
    return names


def vectors_path(workdir: str, fmt: str) -> str:
    """Where `run` saves the vectors in format `fmt` (one of `vector_formats.FORMATS`):
    WORKDIR/vectors.FORMAT.{txt,bin}."""
    if fmt not in FORMATS:  # a path no run writes ("vectors.glove.txt"), without a word
        raise ValueError(f"Unknown vector format {fmt!r}; known: {sorted(FORMATS)}")
    return os.path.join(workdir, f"vectors.{fmt}.{'bin' if fmt == 'word2vec_binary' else 'txt'}")


def _write_scores(workdir: str, scores: dict) -> None:
    """WORKDIR/scores.json, renamed over the old one once whole: a write cut short would lose
    the run's training figures, and a sweep would take it for unfinished and train it again."""
    import json

    with paths.atomic_open(os.path.join(workdir, "scores.json"), "w") as f:
        json.dump(json_safe(scores), f, indent=1, allow_nan=False)


def score_saved(config, workdir: str, scores: dict) -> dict:
    """Adds the evaluation to `scores` (a finished run's scores.json in `workdir`) when it
    lacks it and `config.eval_dir` now holds the files: the run trained before they were
    there. Scores the saved vectors (no training), rewrites scores.json and returns the
    scores; returns `scores` as they are when there is nothing to add (or, with a note, no
    saved vectors to score)."""
    from tl_jax.evaluation import word_vectors as evaluation

    eval_dir, missing = _evaluation_files(config)
    if not eval_dir or missing or all(k in scores for k in EVAL_SCORES):
        return scores
    fmt = config.save_formats[0]
    path = vectors_path(workdir, fmt)
    if not os.path.exists(path):
        print(f"Note: {workdir} has scores without the evaluation and no {path} to score; it "
              "stays unscored (delete it to train it again)", flush=True)
        return scores
    from tl_jax.data.vector_formats import load_vectors
    vectors = load_vectors(path, fmt)
    scores = {**scores, **evaluation.evaluate_all(vectors, eval_dir)}
    print(evaluation.format_scores(scores), flush=True)
    _write_scores(workdir, scores)
    return scores


def run(config, workdir: str) -> dict:
    """Trains `config.method` ("word2vec" or "glove") and writes vectors + scores to `workdir`.

    Writes WORKDIR/vectors.FORMAT.{txt,bin} for each FORMAT of `config.save_formats`,
    WORKDIR/vocab.txt, WORKDIR/static_config.json and WORKDIR/scores.json (with the evaluation
    when `config.eval_dir` holds its files), and prints the scores last. Returns the scores (plus
    words_per_sec for word2vec). A workdir written with another config (`eval_dir` aside) is
    refused. `config` is a loaded config (`config.load_config("configs/word2vec.py", ...)`).
    """
    import json

    from tl_jax import checkpoint, warm_start
    from tl_jax.evaluation import word_vectors as evaluation

    if isinstance(config, (str, os.PathLike)):
        # (It failed as "'str' object has no attribute 'method'".)
        raise TypeError(f"static_train.run takes a loaded config, not {str(config)!r}: load it "
                        "first with tl_jax.config.load_config(spec, overrides)")

    adagrad = check_config(config)
    if os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise ValueError(f"{workdir} is a training workdir (it has checkpoints/): static vectors "
                         f"would overwrite its vocab.txt; use another workdir")
    weights = warm_start.model_files(workdir)
    if weights:
        raise ValueError(f"{workdir} holds a model ({', '.join(['config.json'] + weights)}): "
                         "static vectors would overwrite its vocab.txt; use another workdir")
    # Outputs of another config would be overwritten, and those of formats not saved now left
    # beside the new ones as if they belonged to them: refused, as train.py refuses to resume.
    # (Not "config.json": that would make the workdir look like a Hugging Face directory.)
    current = json.loads(json.dumps(config.to_dict()))  # tuples as lists, as saved
    _with_later_keys(current)
    config_path = os.path.join(workdir, "static_config.json")
    if os.path.exists(config_path):
        saved = checkpoint.load_json(config_path, "the config `tl_jax static` saved there")
        _with_later_keys(saved)
        diffs = [f"  {k}: {saved_v!r} there, {now!r} now"
                 for k, saved_v, now in _differences(saved, current)
                 if k not in ("eval_dir", "progress")]
        if diffs:
            raise ValueError(f"{workdir} holds vectors trained with another config:\n"
                             + "\n".join(diffs) + "\nUse a new workdir (or delete this one).")
    eval_dir, missing = _evaluation_files(config)
    eval_data = evaluation.read_all(eval_dir) if eval_dir and not missing else None
    # The workdir is made now, not after training: a path that cannot be one (a file, a
    # folder without write access) failed only once the vectors were trained, losing them.
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"workdir {workdir} is a file, not a folder: use another workdir")
    os.makedirs(workdir, exist_ok=True)
    show = bool(config.get("progress", True))
    with progress_lib.phase(f"Reading {config.corpus}", show, prefix=f"[{config.method}]"):
        corpus = wv.read_corpus(config.corpus, config.text_field, key="corpus",
                                max_sentences=config.max_sentences)
    vocab = corpus.vocab(config.min_count, config.max_vocab or None)
    print(f"{config.method}: {corpus.n_sentences:,} text units, {len(corpus):,} words, "
          f"vocabulary {len(vocab):,} (min_count {config.min_count})", flush=True)
    # Trained on the vocabulary ids alone: the words' own ids (4 bytes a token) go now.
    corpus = corpus.encode(vocab)
    if config.method == "word2vec":
        w = config.word2vec
        vectors, stats = train_word2vec(
            corpus, dim=config.dim, window=config.window, negatives=w.negatives,
            epochs=config.epochs, sample=w.sample, lr=w.learning_rate, min_lr=w.min_learning_rate,
            batch_size=config.batch_size, cbow=w.cbow, seed=config.seed,
            steps_per_call=config.steps_per_call, shared_negatives=w.shared_negatives,
            vocab=vocab, progress=show)
    else:
        g = config.glove
        lr = current["glove"]["learning_rate"]  # the rule's default filled in, as saved
        print(f"glove: AdaGrad rule {adagrad}, learning_rate {lr}"
              + (" (the rule's default)" if g.learning_rate is None else ""), flush=True)
        vectors, stats = train_glove(
            corpus, dim=config.dim, window=config.window, epochs=config.epochs,
            x_max=g.x_max, alpha=g.alpha, lr=lr, batch_size=config.batch_size,
            seed=config.seed, steps_per_call=config.steps_per_call, vocab=vocab,
            adagrad=adagrad, progress=show)
    with open(config_path, "w") as f:
        json.dump(current, f, indent=1)
    vocab.save(os.path.join(workdir, "vocab.txt"))
    for fmt in config.save_formats:
        save_vectors(vectors, vectors_path(workdir, fmt), fmt)
    scores = {"train_seconds": stats["seconds"], "final_loss": stats["losses"][-1]}
    if "words_per_sec" in stats:
        scores["words_per_sec"] = stats["words_per_sec"]
    if eval_dir and not missing:
        scores.update(evaluation.evaluate_all(vectors, data=eval_data))
        print(evaluation.format_scores(scores), flush=True)
    elif eval_dir:
        print(f"no evaluation files under {eval_dir}; skipping word similarity and analogies")
    _write_scores(workdir, scores)
    epochs = f"{config.epochs} epoch{'' if config.epochs == 1 else 's'}"  # not "1 epochs"
    print(f"done: {config.method} {epochs} in {stats['seconds']:.1f}s | final loss "
          f"{scores['final_loss']:.4f} | vectors in {workdir}", flush=True)
    return scores

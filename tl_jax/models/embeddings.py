"""Static word embeddings: word2vec (skip-gram, CBOW) with negative sampling, and GloVe.

Also the bridge to downstream tasks: `embedding_matrix_for_vocab` lays pretrained vectors out
for a task's vocabulary, and `StaticEmbeddingClassifier` is a small classifier (bag of
embeddings or BiLSTM) whose table starts from them, frozen or tuned.

Models follow the house contract: `apply` returns `(outputs, intermediates)`.

References: Mikolov et al. 2013, "Distributed Representations of Words and Phrases and their
Compositionality"; Pennington et al. 2014, "GloVe: Global Vectors for Word Representation".
"""
from __future__ import annotations

import os
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tl_jax.models import layers

SIZES = {
    # name: embedding dimension
    "tiny": 16,
    "small": 50,
    "base": 100,
    "large": 300,
}


def _uniform(scale: float):
    """U(-scale, scale): word2vec.c and GloVe initialise input vectors this way."""
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)
    return init


class Word2Vec(nn.Module):
    """word2vec with negative sampling: `input` (centre) and `output` (context) tables.

    Skip-gram scores centre word vs context and negatives; CBOW scores the mean of the context
    words' input vectors vs the centre (target) word and negatives.

    Skip-gram follows the paper's p(context | centre): the centre word's input vector predicts
    the context word's output vector. word2vec.c's loop (and gensim's) runs each pair the other
    way round (the context word's input vector, the centre's output vector, negatives compared
    with the centre). The pairs come from a symmetric window whose size every word draws from
    the same distribution, so both visit the same (input, output) pairs in expectation.

    Batch: centre (B,), context (B,) [skip-gram] or (B, 2W) with -1 padding [CBOW],
    negatives (B, K), or (S,) shared by the batch. Outputs: pos_logits (B,),
    neg_logits (B, K) or (B, S).
    """

    vocab_size: int
    dim: int
    cbow: bool = False

    def setup(self):
        self.input = self.param(
            "input", nn.with_logical_partitioning(_uniform(0.5 / self.dim), ("vocab", "embed")),
            (self.vocab_size, self.dim))
        # word2vec.c starts the output table at zero: the first updates come from the inputs.
        self.output = self.param(
            "output", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab", "embed")),
            (self.vocab_size, self.dim))

    def hidden(self, batch) -> jnp.ndarray:
        """The vector that predicts: the centre word's (skip-gram) or the context mean (CBOW)."""
        if not self.cbow:
            return self.input[batch["centre"]]  # (B, D)
        ctx = batch["context"]  # (B, 2W)
        mask = (ctx >= 0).astype(self.input.dtype)[..., None]  # (B, 2W, 1)
        summed = jnp.sum(self.input[jnp.maximum(ctx, 0)] * mask, axis=1)  # (B, D)
        return summed / jnp.maximum(jnp.sum(mask, axis=1), 1.0)

    def __call__(self, batch):
        h = self.hidden(batch)  # (B, D)
        target = batch["centre"] if self.cbow else batch["context"]
        pos = jnp.sum(h * self.output[target], axis=-1)  # (B,)
        negs = batch["negatives"]
        if negs.ndim == 1:  # (S,) negatives shared by the whole batch
            neg = h @ self.output[negs].T  # (B, S)
        else:
            neg = jnp.einsum("bd,bkd->bk", h, self.output[negs])  # (B, K)
        return {"pos_logits": pos, "neg_logits": neg}, {"hidden": h}


def negative_sampling_loss(pos_logits: jnp.ndarray, neg_logits: jnp.ndarray,
                           neg_weight: float = 1.0) -> jnp.ndarray:
    """Per-example loss  -log sigma(pos) - w sum_k log sigma(-neg_k).

    w = 1 for K negatives per example; w = K / S for S negatives shared by a batch.
    """
    return -jax.nn.log_sigmoid(pos_logits) - neg_weight * jnp.sum(
        jax.nn.log_sigmoid(-neg_logits), axis=-1)


class GloVe(nn.Module):
    """GloVe's two tables and biases: prediction w_i . c_j + b_i + b~_j for log X_ij."""

    vocab_size: int
    dim: int

    @nn.compact
    def __call__(self, rows: jnp.ndarray, cols: jnp.ndarray):
        init = nn.with_logical_partitioning(_uniform(0.5 / self.dim), ("vocab", "embed"))
        w = self.param("word", init, (self.vocab_size, self.dim))
        c = self.param("context", init, (self.vocab_size, self.dim))
        bias_init = nn.with_logical_partitioning(_uniform(0.5 / self.dim), ("vocab",))
        bw = self.param("word_bias", bias_init, (self.vocab_size,))
        bc = self.param("context_bias", bias_init, (self.vocab_size,))
        wi, cj = w[rows], c[cols]  # (B, D)
        pred = jnp.sum(wi * cj, axis=-1) + bw[rows] + bc[cols]  # (B,)
        return pred, {"word": wi, "context": cj}


def glove_weight(x: jnp.ndarray, x_max: float = 100.0, alpha: float = 0.75) -> jnp.ndarray:
    """GloVe's weighting f(x) = (x / x_max)^alpha for x < x_max, else 1."""
    return jnp.minimum(1.0, (x / x_max) ** alpha)


def glove_loss(pred: jnp.ndarray, counts: jnp.ndarray, x_max: float = 100.0,
               alpha: float = 0.75) -> jnp.ndarray:
    """Per-entry weighted least squares  f(X_ij) (pred_ij - log X_ij)^2."""
    return glove_weight(counts, x_max, alpha) * (pred - jnp.log(counts)) ** 2


def glove_vectors(params) -> np.ndarray:
    """The vectors GloVe reports: word + context tables (the paper's W + W~)."""
    return np.asarray(params["word"]) + np.asarray(params["context"])


# ----------------------------------------------------------------------------------------------
# Static embeddings as a downstream encoder.
# ----------------------------------------------------------------------------------------------

def embedding_matrix_for_vocab(vectors, vocab: Sequence[str], seed: int = 0,
                               lowercase_fallback: bool = True) -> tuple[np.ndarray, int]:
    """Rows of `vectors` (a `WordVectors`) in the order of a task's `vocab`.

    A token missing from `vectors` (also after lowercasing, when `lowercase_fallback`) gets a
    random normal row with the pretrained vectors' per-dimension mean and std, so it is on
    the same scale as the rest. Returns (matrix (len(vocab), D) float32, number of such OOV rows).
    `vocab` is a list of tokens (a string alone is refused: each of its characters would be one
    token), and `vectors` a loaded `WordVectors` (`vector_formats.load_vectors(path)`).
    """
    if isinstance(vocab, str):
        raise ValueError(f"embedding_matrix_for_vocab: vocab={vocab[:60]!r} is a string; give "
                         "the task's tokens as a list, one per row of the table")
    if not hasattr(vectors, "vectors") or not hasattr(vectors, "index"):
        hint = (" (load the file first: vector_formats.load_vectors(path))"
                if isinstance(vectors, (str, os.PathLike)) else "")
        raise TypeError(f"embedding_matrix_for_vocab: vectors is a {type(vectors).__name__}, "
                        f"not WordVectors{hint}")
    rng = np.random.default_rng(seed)
    table = vectors.vectors
    mean, std = table.mean(axis=0), table.std(axis=0)
    out = np.empty((len(vocab), table.shape[1]), dtype=np.float32)
    n_oov = 0
    for i, token in enumerate(vocab):
        row = vectors.index.get(token)
        if row is None and lowercase_fallback:
            row = vectors.index.get(token.lower())
        if row is None:
            out[i] = rng.normal(mean, std)
            n_oov += 1
        else:
            out[i] = table[row]
    return out, n_oov


class StaticEmbeddingClassifier(nn.Module):
    """A classifier over a (pretrained) word-embedding table: bag of embeddings or BiLSTM.

    `freeze_embeddings` stops gradients into the table inside the model, but weight decay (AdamW's
    default) would still shrink the table; for optimizer-level freezing (no update, no decay, no
    optimizer state) use a transfer mask on the path `embed/embedding` instead.
    `load_embedding_matrix` below returns params with pretrained rows in
    params["embed"]["embedding"].

    The table is `nn.Embed`'s parameter (same name, same initial values for a seed) with the
    logical axes ("vocab", "embed") every other model's embedding has, so under a mesh it is
    sharded like theirs (rows over tensor, columns over fsdp): `init` returns it boxed in
    `nn.LogicallyPartitioned` (`nn.unbox` gives the arrays).

    Inputs: token_ids (B, T) int, mask (B, T) bool. Outputs: logits (B, num_classes).
    """

    vocab_size: int
    dim: int
    num_classes: int
    encoder: str = "bag"  # "bag" (mean of embeddings) or "bilstm"
    hidden: int = 128
    dropout: float = 0.1
    freeze_embeddings: bool = False

    @nn.compact
    def __call__(self, token_ids, mask, train: bool = False):
        # layers.Embed: nn.Embed's parameter and initialiser, with logical axes for the mesh
        # and a lookup that keeps the activations split over the batch (see there).
        emb = layers.Embed(
            self.vocab_size, self.dim,
            embedding_init=nn.with_logical_partitioning(nn.linear.default_embed_init,
                                                        ("vocab", "embed")),
            name="embed")(token_ids)  # (B, T, D)
        if self.freeze_embeddings:
            emb = jax.lax.stop_gradient(emb)
        maskf = mask.astype(emb.dtype)[..., None]  # (B, T, 1)
        if self.encoder == "bag":
            states = emb
        elif self.encoder == "bilstm":
            lengths = jnp.sum(mask, axis=1).astype(jnp.int32)
            fwd = nn.RNN(nn.OptimizedLSTMCell(self.hidden), name="forward")(
                emb, seq_lengths=lengths)
            bwd = nn.RNN(nn.OptimizedLSTMCell(self.hidden), reverse=True, keep_order=True,
                         name="backward")(emb, seq_lengths=lengths)
            states = jnp.concatenate([fwd, bwd], axis=-1)  # (B, T, 2H)
        else:
            raise ValueError(f"Unknown encoder {self.encoder!r}; use 'bag' or 'bilstm'")
        pooled = jnp.sum(states * maskf, axis=1) / jnp.maximum(jnp.sum(maskf, axis=1), 1.0)
        pooled = nn.Dropout(self.dropout, deterministic=not train)(pooled)
        logits = nn.Dense(self.num_classes, name="classifier")(pooled)  # (B, C)
        return logits, {"embeddings": emb, "states": states, "pooled": pooled}


def load_embedding_matrix(params, matrix: np.ndarray):
    """Returns params with the classifier's embedding table replaced by `matrix`.

    `params` may be boxed (as `init` returns them: the new table keeps its logical axes) or
    unboxed."""
    is_box = lambda x: isinstance(x, nn.Partitioned)  # noqa: E731
    params = jax.tree_util.tree_map(lambda x: x, params, is_leaf=is_box)  # a copy of the dicts
    current = params["embed"]["embedding"]
    value = current.unbox() if is_box(current) else current
    if tuple(value.shape) != tuple(matrix.shape):
        raise ValueError(f"Embedding matrix {matrix.shape} does not match the model's table "
                         f"{tuple(value.shape)}")
    table = jnp.asarray(matrix, dtype=value.dtype)
    params["embed"]["embedding"] = current.replace_boxed(table) if is_box(current) else table
    return params

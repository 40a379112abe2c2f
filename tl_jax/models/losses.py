"""Cross-entropy through a tied output embedding and optional bias, in chunks, hand-written VJP.

GPT's next-token loss uses it over every position; BERT's MLM loss at the masked positions,
with the decoder's output bias, keeping its (small) logits instead of recomputing them.

The plain way, `optax.softmax_cross_entropy_with_integer_labels(hidden @ E.T, targets)`, holds
the (B, T, V) logits in memory for the backward pass and then a (B, T, V) gradient next to them:
for GPT-2's 50,257-token vocabulary at batch 8 x 1024 that is 1.6 GB each in float32, far more
than the model. `tied_softmax_cross_entropy` never holds more than one chunk of logits: the
forward pass keeps only the log-partition per token; the backward pass recomputes each chunk's
logits, forms `softmax - onehot` there and multiplies it straight into the gradients of the
hidden states and of the embedding. It costs one more (chunk) matmul than autodiff, and saves
the passes XLA spends on the full logits (max, exp, scatter of the target term, transposes):
measured on a 2-core CPU at GPT tiny's head (2048 tokens, width 64, 8,192 words) fwd+bwd takes
~70-80 ms instead of ~105 ms; at width 256 the matmuls dominate and both take ~200 ms.

With bfloat16 hidden states (mixed precision) the matmuls take bf16 operands and accumulate in
float32, which XLA:CPU runs on the AMX units: measured in the GPT-mini bf16 step, the logits dot
at ~550-600 GFLOP/s against ~110 in float32, and the step ~20% faster.

Chunks run along the time axis, so a batch sharded over the data axes stays sharded.
JAX has no fused chunked softmax-cross-entropy of its own (optax's takes materialised logits),
which is why this is written here.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from tl_jax.models.layers import row_major_transpose

# Logits elements per chunk (B * chunk_len * V): 2M float32 = 8 MiB, a cache-friendly block.
DEFAULT_CHUNK_ELEMENTS = 1 << 21


def _chunk_len(batch: int, length: int, vocab: int, chunk_elements: int) -> int:
    return int(min(length, max(1, chunk_elements // max(1, batch * vocab))))


def _chunks(x, n_chunks: int, chunk_len: int):
    """(B, T, ...) -> (n_chunks, B, chunk_len, ...), zero-padding T up to n_chunks * chunk_len."""
    pad = n_chunks * chunk_len - x.shape[1]
    if pad:
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    x = x.reshape(x.shape[:1] + (n_chunks, chunk_len) + x.shape[2:])
    return jnp.moveaxis(x, 1, 0)


def _unchunk(x, length: int):
    """(n_chunks, B, chunk_len, ...) -> (B, T, ...)."""
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape(x.shape[:1] + (-1,) + x.shape[3:])[:, :length]


def _token_sum(x):
    """Sum of x (..., N) over every axis but the last: a bias gradient.

    On CPU this is a matrix-vector product with a ones vector: XLA:CPU (YNNPACK) runs a column
    sum of a (640, 30522) float32 array in ~36 ms and the same sum as a dot in ~2 ms on 2 cores.
    Elsewhere it is a plain reduction.
    """
    flat = x.reshape(-1, x.shape[-1])

    def as_dot(flat):
        return jnp.einsum("t,tn->n", jnp.ones(flat.shape[:1], flat.dtype), flat,
                          preferred_element_type=jnp.float32).astype(flat.dtype)

    return jax.lax.platform_dependent(flat, cpu=as_dot, default=lambda f: f.sum(0))


def _minus_at_targets(d_logits, targets, g):
    """d_logits (B, c, V) with g[b, t] subtracted at [b, t, targets[b, t]].

    A per-row scatter (vmapped, so batch and time are scatter batching dimensions and a batch
    sharded over the mesh stays sharded). Measured on 2 CPU cores at GPT tiny's head (2048
    tokens, width 64, 8,192 words): fwd+bwd ~94 -> ~82 ms, against fusing the one-hot into the
    exp pass as a compare of every logit's index with the target.
    """
    return jax.vmap(jax.vmap(lambda row, i, x: row.at[i].add(-x)))(d_logits, targets, g)


def _operand_dtype(hidden):
    """The dtype of the head's matmul operands: bfloat16 for bf16 hidden states (mixed precision),
    else float32. The dots accumulate in float32 either way and the softmax runs in float32."""
    return jnp.bfloat16 if hidden.dtype == jnp.bfloat16 else jnp.float32


def _chunk_logits(hidden_chunk, embedding, bias):
    """float32 logits of one chunk; `embedding` is already in the operand dtype."""
    logits = jnp.einsum("bte,ve->btv", hidden_chunk.astype(embedding.dtype), embedding,
                        preferred_element_type=jnp.float32)
    return logits if bias is None else logits + bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _tied_xent(hidden, embedding, bias, targets, chunk_len, recompute):
    return _tied_xent_fwd(hidden, embedding, bias, targets, chunk_len, recompute)[0]


def _tied_xent_fwd(hidden, embedding, bias, targets, chunk_len, recompute):
    length = hidden.shape[1]
    n_chunks = -(-length // chunk_len)

    operand = embedding.astype(_operand_dtype(hidden))

    def one_chunk(xs):
        h, t = xs
        logits = _chunk_logits(h, operand, bias)  # (B, c, V)
        top = jnp.max(logits, axis=-1)
        lse = jnp.log(jnp.sum(jnp.exp(logits - top[..., None]), axis=-1)) + top
        target_logit = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
        # The target's logit is the largest: `argmax == target` except on exact ties, without
        # an index-tracking reduction over the vocabulary.
        correct = target_logit >= top
        return lse, lse - target_logit, correct, (None if recompute else logits)

    lse, nll, correct, logits = jax.lax.map(
        one_chunk, (_chunks(hidden, n_chunks, chunk_len), _chunks(targets, n_chunks, chunk_len)))
    nll, correct = _unchunk(nll, length), _unchunk(correct, length)
    return (nll, correct), (hidden, embedding, bias, targets, lse, logits)


def _tied_xent_bwd(chunk_len, recompute, residuals, cotangents):
    hidden, embedding, bias, targets, lse, saved_logits = residuals
    g_nll = cotangents[0]  # the `correct` output has no gradient
    length = hidden.shape[1]
    n_chunks = lse.shape[0]
    operand = embedding.astype(_operand_dtype(hidden))
    low = operand.dtype == jnp.bfloat16
    f32 = jnp.float32

    def one_chunk(carry, xs):
        d_embedding, d_bias = carry
        h, t, chunk_lse, g, logits = xs
        h = h.astype(operand.dtype)
        if logits is None:
            logits = _chunk_logits(h, operand, bias)
        # d nll / d logits = (softmax - onehot(target)) * g: the softmax term in one
        # elementwise pass, then -g added at each token's target, one element per row.
        d_logits = _minus_at_targets(jnp.exp(logits - chunk_lse[..., None]) * g[..., None], t, g)
        if d_bias is not None:
            d_bias = d_bias + _token_sum(d_logits)
        d_logits = d_logits.astype(operand.dtype)  # bf16 operands: one rounding, f32 sums
        d_hidden = jnp.einsum("btv,ve->bte", d_logits, operand, preferred_element_type=f32)
        # h^T d_logits, (E, V): the small (E, B*c) transpose instead of the (V, B*c) one. As a
        # 2-D dot: XLA:CPU has no bf16 x bf16 -> f32 kernel with two contracting axes. In bf16
        # the transpose is a real copy (`row_major_transpose`), else XLA runs the dot in f32;
        # the sum stays (E, V) and is transposed the same way once after the loop (with one
        # chunk, a plain `.T` there let XLA fold it into a bf16 dot it has no kernel for).
        # float32 takes the same route when there are several chunks: XLA folds a per-chunk
        # `.T` into a (V, E) dot that contracts the first axis of both operands, which XLA:CPU
        # runs outside YNNPACK at a fraction of the speed (measured on 2 Zen 4 cores, GPT tiny's
        # 256 x 64 x 8192 chunk: 4.6 ms against 1.5 ms; the tiny head's fwd+bwd 78 -> 54 ms).
        # With one chunk float32 keeps the folded dot: there the one transpose of a large
        # (E, V) sum costs more than it saves (BERT-base's MLM decoder, 768 x 30522).
        h2, d_logits2 = h.reshape(-1, h.shape[-1]), d_logits.reshape(-1, d_logits.shape[-1])
        if transposed_sum:
            d_embedding = d_embedding + jnp.dot(row_major_transpose(h2), d_logits2,
                                                preferred_element_type=f32)
        else:
            d_embedding = d_embedding + jnp.einsum("ne,nv->ev", h2, d_logits2,
                                                   preferred_element_type=f32).T
        return (d_embedding, d_bias), d_hidden.astype(hidden.dtype)

    transposed_sum = low or n_chunks > 1
    init = (jnp.zeros(embedding.shape[::-1] if transposed_sum else embedding.shape, jnp.float32),
            None if bias is None else jnp.zeros(bias.shape, jnp.float32))
    (d_embedding, d_bias), d_hidden = jax.lax.scan(
        one_chunk, init,
        (_chunks(hidden, n_chunks, chunk_len), _chunks(targets, n_chunks, chunk_len), lse,
         _chunks(g_nll, n_chunks, chunk_len), saved_logits))
    if d_bias is not None:
        d_bias = d_bias.astype(bias.dtype)
    if transposed_sum:
        d_embedding = row_major_transpose(d_embedding)
    return _unchunk(d_hidden, length), d_embedding.astype(embedding.dtype), d_bias, None


_tied_xent.defvjp(_tied_xent_fwd, _tied_xent_bwd)


def tied_softmax_cross_entropy(hidden, embedding, targets, bias=None,
                               chunk_elements: int | None = DEFAULT_CHUNK_ELEMENTS,
                               recompute: bool = True):
    """Per-token NLL of `targets` under softmax(hidden @ embedding.T + bias), and correctness.

    Args:
      hidden: (B, T, E) final hidden states. float32, or bfloat16 in mixed precision: then the
        three matmuls (logits, and the gradients of hidden and embedding) take bf16 operands
        and sum in float32, as the model's own layers do. Logits, softmax and the loss are
        float32 either way.
      embedding: (V, E) the output (tied input) embedding.
      targets: (B, T) int ids in [0, V).
      bias: optional (V,) output bias (BERT's MLM decoder has one; GPT's has none).
      chunk_elements: logits elements per chunk (B * chunk_len * V); smaller saves memory.
        None: one chunk.
      recompute: True recomputes each chunk's logits in the backward pass, so only one chunk
        is ever held. False keeps every chunk's logits from the forward pass (memory for all
        of them) and skips that matmul: the right choice when the logits are small, as for
        BERT's masked positions (~15% of tokens).

    Returns:
      (nll, correct): (B, T) float32 and (B, T) bool (the target's logit is the largest; an
      exact tie counts as correct). Differentiable in `hidden`, `embedding` and `bias`
      (through nll); the gradients equal autodiff of the plain formulation.
    """
    if hidden.ndim != 3 or targets.shape != hidden.shape[:2]:
        raise ValueError(f"tied_softmax_cross_entropy: hidden must be (B, T, E) and targets "
                         f"(B, T); got {hidden.shape} and {targets.shape}")
    if embedding.ndim != 2 or embedding.shape[1] != hidden.shape[2]:
        raise ValueError(f"tied_softmax_cross_entropy: embedding must be (V, {hidden.shape[2]}),"
                         f" got {embedding.shape}")
    if bias is not None and bias.shape != embedding.shape[:1]:
        raise ValueError(f"tied_softmax_cross_entropy: bias must be ({embedding.shape[0]},), "
                         f"got {bias.shape}")
    batch, length, _ = hidden.shape
    chunk_len = (length if chunk_elements is None
                 else _chunk_len(batch, length, embedding.shape[0], chunk_elements))
    return _tied_xent(hidden, embedding, bias, targets.astype(jnp.int32), chunk_len,
                      bool(recompute))

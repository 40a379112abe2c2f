"""ELMo-style scalar mix: a learned weighted sum of a model's layers (Peters et al. 2018, eq. 1).

    ELMo_k = gamma * sum_j softmax(s)_j * h_{k,j}

`s` has one scalar per layer (initialised to zero, so the mix starts as the plain average) and
`gamma` scales the whole vector. ELMo optionally layer-normalises each layer before mixing, which
helps when layers have very different scales (BERT layers do). Padding is excluded from the
normalisation statistics when a mask is given, so the mix of a sentence does not depend on how
much padding the batch happened to add.

The statistics are per layer *and per example* by default (`layer_norm_stats="example"`), so a
sentence's features do not depend on which other sentences share its batch. That is a choice
made here: ELMo's bilm-tf (`weight_layers`) and AllenNLP's `ScalarMix` take one mean and one
variance per layer over the whole batch (all unpadded (B, T, H) entries);
`layer_norm_stats="batch"` does that, to reproduce them.
"""
from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class ScalarMix(nn.Module):
    """Softmax-weighted sum of `num_layers` tensors of the same shape, times a learned scale.

    Attributes:
      num_layers: how many layers are mixed (checked against the input).
      layer_norm: normalise each layer first, with one mean and variance over all its unpadded
        (T, H) entries of an example (or of the batch: `layer_norm_stats`), not per token.
      layer_norm_stats: "example" (one mean/variance per layer and example, the default) or
        "batch" (one per layer over the whole batch, as bilm-tf and AllenNLP do).
      initial_scalars: starting values of `s` (default zeros: the plain average).
      trainable_gamma: when False, gamma stays at `initial_gamma` (it is not a parameter).

    Params: `scalars` (num_layers,), `gamma` () when trainable.
    """

    num_layers: int
    layer_norm: bool = False
    layer_norm_stats: str = "example"
    initial_scalars: Optional[Sequence[float]] = None
    initial_gamma: float = 1.0
    trainable_gamma: bool = True

    @nn.compact
    def __call__(self, layers: Sequence[jax.Array], mask: Optional[jax.Array] = None) -> jax.Array:
        """layers: `num_layers` arrays (B, T, H); mask: (B, T), 1 for real tokens. Returns (B, T, H)."""
        if len(layers) != self.num_layers:
            raise ValueError(f"ScalarMix was built for {self.num_layers} layers but got {len(layers)}.")
        init = self.initial_scalars
        if init is not None and len(init) != self.num_layers:
            raise ValueError(f"initial_scalars has {len(init)} values for {self.num_layers} layers.")
        scalars = self.param(
            "scalars",
            (lambda _, shape: jnp.asarray(init, jnp.float32)) if init is not None else nn.initializers.zeros,
            (self.num_layers,))
        if self.trainable_gamma:
            gamma = self.param("gamma", nn.initializers.constant(self.initial_gamma), ())
        else:
            gamma = jnp.asarray(self.initial_gamma, jnp.float32)
        weights = jax.nn.softmax(scalars)  # (num_layers,)
        stacked = jnp.stack([jnp.asarray(x, jnp.float32) for x in layers])  # (N, B, T, H)
        if self.layer_norm_stats not in ("example", "batch"):
            raise ValueError(f"layer_norm_stats={self.layer_norm_stats!r}; expected 'example' "
                             f"or 'batch'")
        if self.layer_norm:
            stacked = _masked_layer_norm(stacked, mask,
                                         per_example=self.layer_norm_stats == "example")
        return gamma * jnp.einsum("n,n...->...", weights, stacked)

    @staticmethod
    def weights(params) -> jax.Array:
        """The softmax weights from this module's params (for reports and plots)."""
        return jax.nn.softmax(params["scalars"])


def _masked_layer_norm(stacked: jax.Array, mask: Optional[jax.Array], eps: float = 1e-12,
                       per_example: bool = True):
    """Normalises each layer (N, B, T, H) with mean/variance over its unpadded entries.

    per_example: statistics over each example's (T, H) entries; else over the whole batch's
    (B, T, H) entries, which is what bilm-tf's and AllenNLP's ELMo layer norm do.
    """
    if mask is None:
        mask = jnp.ones(stacked.shape[1:3], stacked.dtype)
    m = mask.astype(stacked.dtype)[None, :, :, None]  # (1, B, T, 1)
    axes = (2, 3) if per_example else (1, 2, 3)
    count = jnp.maximum(m.sum(axis=axes, keepdims=True) * stacked.shape[-1], 1.0)  # (1, B|1, 1, 1)
    mean = (stacked * m).sum(axis=axes, keepdims=True) / count
    var = (((stacked - mean) * m) ** 2).sum(axis=axes, keepdims=True) / count
    return (stacked - mean) / jnp.sqrt(var + eps)

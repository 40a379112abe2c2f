"""Learning-rate schedules used by transfer strategies that `optimizers.py` does not provide.

`optimizers.make_schedule` covers warmup + linear/polynomial/cosine/constant decay. This file adds
ULMFiT's slanted triangular learning rate (STLR) and the discriminative (layer-wise) learning-rate
multipliers. Both are plain functions of integers, so they are exact under `jit` and give the same
value after a checkpoint restore as in an uninterrupted run (they depend on the step only).
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import optax


def slanted_triangular(
    peak_value: float, total_steps: int, cut_frac: float = 0.1, ratio: float = 32.0
) -> optax.Schedule:
    """Slanted triangular learning rate (Howard & Ruder 2018, eq. 3).

    A short linear increase over the first `cut_frac` of training, then a long linear decay:

        cut = floor(T * cut_frac)
        p   = t / cut                                   if t < cut
              1 - (t - cut) / (cut * (1 / cut_frac - 1))  otherwise
        lr  = peak * (1 + p * (ratio - 1)) / ratio

    so the rate starts at `peak / ratio`, reaches `peak` at step `cut`, and returns to
    `peak / ratio` at step `T`. Steps past `T` keep the final value, and so do steps past
    `cut / cut_frac` when `T * cut_frac` is not a whole number (there eq. 3 would go below
    `peak / ratio`).

    The transfer plan uses one STLR over the whole run, T = all training steps, gradual
    unfreezing included. The ULMFiT scripts (fastai) instead restart a triangular cycle at each
    unfreezing stage, so there the rate rises and falls once per stage.

    Args:
      peak_value: the maximum learning rate (ULMFiT: 0.01).
      total_steps: T, the number of training iterations (epochs * updates per epoch).
      cut_frac: fraction of the steps spent increasing (ULMFiT: 0.1).
      ratio: how much smaller the lowest rate is than the peak (ULMFiT: 32).

    Returns:
      A schedule `step -> lr`, jittable.

    Example:
      >>> sched = slanted_triangular(0.01, 1000)
      >>> float(sched(100))  # the peak, at cut = 100
      0.01
    """
    if total_steps <= 0:
        raise ValueError(f"slanted_triangular: total_steps must be positive, got {total_steps}.")
    if not 0.0 < cut_frac < 1.0:
        raise ValueError(f"slanted_triangular: cut_frac must be in (0, 1), got {cut_frac}.")
    if ratio < 1.0:
        raise ValueError(f"slanted_triangular: ratio must be >= 1, got {ratio}.")
    # With very short runs floor(T * cut_frac) can be 0; one step of increase keeps p finite.
    cut = max(1, math.floor(total_steps * cut_frac))
    decay_len = max(1.0, cut * (1.0 / cut_frac - 1.0))

    def schedule(step):
        t = jnp.minimum(jnp.asarray(step, jnp.float32), float(total_steps))
        p = jnp.where(t < cut, t / cut, 1.0 - (t - cut) / decay_len)
        p = jnp.clip(p, 0.0, 1.0)
        return peak_value * (1.0 + p * (ratio - 1.0)) / ratio

    return schedule


def discriminative_multipliers(num_depths: int, decay: float) -> list[float]:
    """Layer-wise learning-rate multipliers, top depth first unscaled (ULMFiT section 3.2).

    ULMFiT sets eta^{l-1} = eta^l / 2.6: each layer below the top gets the rate of the layer above
    divided by `decay`. Index `d` of the result is the multiplier for depth `d`, where depth 0 is
    the embeddings and depth `num_depths - 1` is the task head, so the head trains at the base
    rate: `mult[d] = decay ** -(num_depths - 1 - d)`.

    ELECTRA's `layerwise_lr_decay` (a multiplier below 1, e.g. 0.8) is the same idea with one
    difference: its task head sits at depth L+2, one above the top layer's L, so its top encoder
    layer gets `0.8 ** 2` of the head's rate and the embeddings `0.8 ** (L + 2)`. Here
    `decay = 1 / 0.8` gives the top layer `0.8` and the embeddings `0.8 ** (L + 1)`; a rule
    `('bert/.*', 'train,lr=0.8')` ahead of the catch-all gives ELECTRA's rates to the embeddings
    and every encoder layer (and 0.8 to BERT's pooler, which ELECTRA does not have).

    Args:
      num_depths: number of depths (embeddings + encoder layers + head).
      decay: the factor between adjacent depths; 1.0 gives every depth the base rate.

    Returns:
      A list of `num_depths` floats, increasing with depth, ending in 1.0.
    """
    if num_depths <= 0:
        raise ValueError(f"discriminative_multipliers: num_depths must be positive, got {num_depths}.")
    if decay <= 0:
        raise ValueError(f"discriminative_multipliers: decay must be positive, got {decay}.")
    top = num_depths - 1
    return [float(decay ** -(top - d)) for d in range(num_depths)]

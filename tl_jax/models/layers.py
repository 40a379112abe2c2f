"""Transformer building blocks shared by the encoder models: attention, MLP, adapters, LayerNorm.

Every parameter is annotated with logical axis names (`nn.with_logical_partitioning`) drawn from
"vocab", "embed", "heads", "kv", "mlp" and None, so `tl_jax/parallel.py` can map them onto a
device mesh by rules in the config. The modules know nothing about meshes themselves.

Parameters are always created in float32; `dtype` is the compute dtype (bfloat16 for mixed
precision). Softmax and LayerNorm statistics are computed in float32 whatever `dtype` is.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# A large negative number instead of -inf: a row whose keys are all padding then gets a uniform
# softmax rather than NaNs, and adding it to a float32 score cannot overflow.
MASK_VALUE = -1e9


def _mix32(h):
    """MurmurHash3's 32-bit finaliser: a bijection on uint32 in which every input bit flips each
    output bit with probability ~1/2."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _dropout_bits_keep(key, shape, keep: float):
    """The keep-mask of `shape`: True where 32 pseudo-random bits fall below keep * 2^32.

    The bits are a keyed hash of each element's flat index (two rounds of `_mix32`, each keyed
    by one word of the threefry key). Being elementwise, XLA fuses it into the select that applies
    the mask, and under a mesh each device hashes its own slice of the global index space, so the
    mask does not depend on the sharding. Tensors of 2^32 elements or more, which the uint32 index
    cannot count, take XLA's RngBitGenerator (threefry) instead.
    """
    size = 1
    for d in shape:
        size *= d
    threshold = jnp.uint32(min(int(keep * 2.0 ** 32), 2 ** 32 - 1))
    if size >= 2 ** 32:
        _, bits = jax.lax.rng_bit_generator(
            key, shape, dtype=jnp.uint32, algorithm=jax.lax.RandomAlgorithm.RNG_THREE_FRY)
        return bits < threshold
    index = jax.lax.iota(jnp.uint32, size).reshape(shape)
    bits = _mix32(_mix32(index * jnp.uint32(0x9E3779B9) ^ key[0]) ^ key[1])
    return bits < threshold


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dropout(x, key, keep: float):
    return jnp.where(_dropout_bits_keep(key, x.shape, keep), x / jnp.asarray(keep, x.dtype),
                     jnp.zeros_like(x))


def _dropout_fwd(x, key, keep):
    return _dropout(x, key, keep), key


def _dropout_bwd(keep, key, g):
    # The backward pass hashes the same bits again from the key instead of keeping the mask,
    # so each mask fuses into its one consumer and is never written to memory.
    return _dropout(g, key, keep), None


_dropout.defvjp(_dropout_fwd, _dropout_bwd)


class Dropout(nn.Module):
    """Inverted dropout with hashed masks, a drop-in for `nn.Dropout`.

    `nn.Dropout` draws its mask with JAX's threefry written out in HLO, which is slow on CPU:
    0.3 s for the 19M attention-probability draws of a BERT-base step (batch 8, seq 128), whose
    dropout as a whole costs ~16% of the step. XLA's own `rng-bit-generator` (threefry too) was
    8x faster, but still ran as a separate loop writing every bit to memory: 5.5 ms per 1.5M-element
    mask. The keyed hash of `_dropout_bits_keep` fuses into the select that applies the mask
    (1.1 ms for the same mask), and the backward pass recomputes it from the key rather than
    keeping the mask (see `_dropout_bwd`). The mask is a pure function of the module's 'dropout'
    rng and the element's position, so runs stay deterministic for a seed, resume bit-exactly, and
    draw the same mask on any mesh.
    """

    rate: float
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        if self.rate >= 1.0:
            return jnp.zeros_like(x)
        key = jax.random.key_data(self.make_rng(self.rng_collection)).reshape(-1)
        key = jnp.concatenate([key, key[::-1]]) if key.shape[0] == 2 else key
        return _dropout(x, key.astype(jnp.uint32), 1.0 - self.rate)


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """Returns the activation function called `name` in Hugging Face configs.

    "gelu" is the exact erf GELU that BERT and HF use; the tanh approximation is "gelu_new".
    """
    table = {
        "gelu": lambda x: jax.nn.gelu(x, approximate=False),
        "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
        "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
        "relu": jax.nn.relu,
        "silu": jax.nn.silu,
        "swish": jax.nn.silu,
    }
    if name not in table:
        raise ValueError(f"Unknown hidden_act {name!r}; known: {sorted(table)}")
    return table[name]


def normal_init(stddev: float, axes: tuple) -> Callable:
    """Truncation-free normal init (as BERT/HF do) annotated with logical axes."""
    return nn.with_logical_partitioning(nn.initializers.normal(stddev=stddev), axes)


def zeros_init(axes: tuple) -> Callable:
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def ones_init(axes: tuple) -> Callable:
    return nn.with_logical_partitioning(nn.initializers.ones_init(), axes)


def layer_norm(epsilon: float, dtype: Dtype, name: str) -> nn.LayerNorm:
    """LayerNorm over the last axis with `scale` and `bias` annotated ("embed",).

    Uses the two-pass variance (not E[x^2] - E[x]^2) so it matches PyTorch to ~1e-6.
    """
    return nn.LayerNorm(
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=jnp.float32,
        use_fast_variance=False,
        scale_init=ones_init(("embed",)),
        bias_init=zeros_init(("embed",)),
        name=name,
    )


def dense(features: int, kernel_axes: tuple, stddev: float, dtype: Dtype, name: str) -> nn.Dense:
    """A plain dense layer (`kernel`, `bias`) whose kernel carries the given logical axes."""
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=normal_init(stddev, kernel_axes),
        bias_init=zeros_init(kernel_axes[-1:]),
        name=name,
    )


class HeadsProjection(nn.Module):
    """Projects (B, L, E) to per-head (B, L, heads, kv), with an optional LoRA update.

    kernel: (E, heads, kv) on ("embed", "heads", "kv"); bias: (heads, kv).
    With `lora_rank > 0` adds `lora_alpha / lora_rank * (x @ lora_a) @ lora_b`, where `lora_a`
    (E, r) starts small and random and `lora_b` (r, heads, kv) starts at zero, so the layer
    initially computes exactly the frozen projection (Hu et al., 2021).
    """

    num_heads: int
    head_dim: int
    initializer_range: float = 0.02
    lora_rank: int = 0
    lora_alpha: float = 1.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        embed = x.shape[-1]
        kernel = self.param(
            "kernel",
            normal_init(self.initializer_range, ("embed", "heads", "kv")),
            (embed, self.num_heads, self.head_dim),
            jnp.float32,
        )
        bias = self.param(
            "bias", zeros_init(("heads", "kv")), (self.num_heads, self.head_dim), jnp.float32
        )
        x = x.astype(self.dtype)
        y = jnp.einsum("ble,ehd->blhd", x, kernel.astype(self.dtype))  # (B, L, heads, kv)
        y = y + bias.astype(self.dtype)
        if self.lora_rank > 0:
            lora_a = self.param(
                "lora_a",
                normal_init(self.initializer_range, ("embed", None)),
                (embed, self.lora_rank),
                jnp.float32,
            )
            lora_b = self.param(
                "lora_b",
                zeros_init((None, "heads", "kv")),
                (self.lora_rank, self.num_heads, self.head_dim),
                jnp.float32,
            )
            low = jnp.einsum("ble,er->blr", x, lora_a.astype(self.dtype))  # (B, L, r)
            update = jnp.einsum("blr,rhd->blhd", low, lora_b.astype(self.dtype))
            y = y + (self.lora_alpha / self.lora_rank) * update
        return y


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention with an additive padding mask.

    Submodules `query`, `key`, `value` (HeadsProjection) and `out` (kernel (heads, kv, embed)).
    LoRA, when on, applies to `query` and `value` only, as in the LoRA paper.
    """

    num_heads: int
    attention_dropout_rate: float = 0.1
    initializer_range: float = 0.02
    lora_rank: int = 0
    lora_alpha: float = 1.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, attention_bias: jax.Array, deterministic: bool = True
    ) -> jax.Array:
        """x: (B, L, E); attention_bias: (B, 1, 1, L) float32, 0 for keys to attend, else large negative."""
        embed = x.shape[-1]
        if embed % self.num_heads:
            raise ValueError(f"hidden size {embed} is not divisible by num_heads {self.num_heads}")
        head_dim = embed // self.num_heads
        proj = lambda name, rank: HeadsProjection(  # noqa: E731
            self.num_heads,
            head_dim,
            self.initializer_range,
            lora_rank=rank,
            lora_alpha=self.lora_alpha,
            dtype=self.dtype,
            name=name,
        )
        query = proj("query", self.lora_rank)(x)  # (B, L, heads, kv)
        key = proj("key", 0)(x)  # (B, L, heads, kv)
        value = proj("value", self.lora_rank)(x)  # (B, L, heads, kv)

        scores = jnp.einsum("bqhd,bkhd->bhqk", query, key)  # (B, heads, L, L)
        # Softmax in float32: bfloat16 scores lose the small differences that matter here.
        scores = scores.astype(jnp.float32) / jnp.sqrt(jnp.float32(head_dim))
        probs = jax.nn.softmax(scores + attention_bias, axis=-1).astype(self.dtype)
        probs = Dropout(self.attention_dropout_rate)(probs, deterministic=deterministic)
        context = jnp.einsum("bhqk,bkhd->bqhd", probs, value)  # (B, L, heads, kv)

        return OutProjection(self.initializer_range, self.dtype, name="out")(context)


class OutProjection(nn.Module):
    """Merges heads back: (B, L, heads, kv) -> (B, L, E); kernel (heads, kv, embed)."""

    initializer_range: float = 0.02
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, context: jax.Array) -> jax.Array:
        _, _, heads, head_dim = context.shape
        embed = heads * head_dim
        kernel = self.param(
            "kernel",
            normal_init(self.initializer_range, ("heads", "kv", "embed")),
            (heads, head_dim, embed),
            jnp.float32,
        )
        bias = self.param("bias", zeros_init(("embed",)), (embed,), jnp.float32)
        y = jnp.einsum("blhd,hde->ble", context.astype(self.dtype), kernel.astype(self.dtype))
        return y + bias.astype(self.dtype)  # (B, L, E)


class Mlp(nn.Module):
    """The position-wise feed-forward block: `intermediate` (E -> mlp), activation, `output`."""

    intermediate_size: int
    hidden_act: str = "gelu"
    initializer_range: float = 0.02
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        embed = x.shape[-1]
        h = dense(
            self.intermediate_size, ("embed", "mlp"), self.initializer_range, self.dtype,
            "intermediate",
        )(x)  # (B, L, mlp)
        h = activation(self.hidden_act)(h)
        return dense(embed, ("mlp", "embed"), self.initializer_range, self.dtype, "output")(
            h
        )  # (B, L, E)


class Adapter(nn.Module):
    """Houlsby bottleneck adapter: x + up(act(down(x))), with `up` initialised near zero.

    Near-zero `up` makes the adapted network start as the pretrained one (Houlsby et al., 2019).
    """

    adapter_size: int
    hidden_act: str = "gelu"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        embed = x.shape[-1]
        h = dense(self.adapter_size, ("embed", None), 1e-3, self.dtype, "down")(x)  # (B, L, A)
        h = activation(self.hidden_act)(h)
        h = dense(embed, (None, "embed"), 1e-3, self.dtype, "up")(h)  # (B, L, E)
        return x + h

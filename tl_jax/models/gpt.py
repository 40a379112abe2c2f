"""GPT-style decoder language model (Radford et al. 2018/2019) in Flax Linen.

Token + learned position embeddings, a stack of pre-LayerNorm blocks with causal self-attention
and a GELU MLP, a final LayerNorm, and an output projection tied to the token embedding. The
parameter layout follows GPT-2 closely (fused qkv projection, `ln_1`/`ln_2`/`ln_f`) so that
`tl_jax.interop.gpt2` maps weights one to one.

Incremental decoding keeps keys and values in Flax's `"cache"` collection: call the model with
`decode=True` and `mutable=["cache"]`, giving explicit `positions` and a `key_mask` over all
cache slots (see `tl_jax.generate`).

    model = GPT(gpt_config("tiny", vocab_size=1000))
    params = model.init(rng, tokens)["params"]
    outputs, intermediates = model.apply({"params": params}, tokens)
    outputs["logits"]          # (B, T, vocab) float32
    intermediates["layer_2"]   # (B, T, embed), residual stream after block 2
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from tl_jax.models.layers import Dense, Dropout, Embed, float_dtype_name

# name -> (num_layers, embed_dim, num_heads, max_len). small and medium are GPT-2's shapes.
SIZES = {
    "tiny": (2, 64, 2, 128),
    "mini": (4, 256, 4, 256),
    "small": (12, 768, 12, 1024),
    "medium": (24, 1024, 16, 1024),
}


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """Hyperparameters of a GPT decoder. Hashable, so it can be a static jit argument."""

    vocab_size: int
    num_layers: int
    embed_dim: int
    num_heads: int
    max_len: int
    mlp_dim: int
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    dtype: str = "float32"  # compute dtype name; params are always float32

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    def __post_init__(self):
        # A string keeps the config JSON-serialisable (it is saved beside checkpoints).
        object.__setattr__(self, "dtype", float_dtype_name(self.dtype))
        # Positive first: num_heads=0 made the divisibility check a ZeroDivisionError.
        for name in ("vocab_size", "num_layers", "embed_dim", "num_heads", "max_len", "mlp_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"GPTConfig: {name} must be positive, got {getattr(self, name)}")
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"GPTConfig: embed_dim={self.embed_dim} is not divisible by "
                f"num_heads={self.num_heads}"
            )
        for name in ("dropout_rate", "attention_dropout_rate"):
            # 10 (for 10%) dropped every unit, so the model trained on zeros without a word.
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"GPTConfig: {name}={getattr(self, name)} must be in [0, 1): "
                                 "the probability of dropping a unit (0.1 drops 10%)")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    def flops_per_token(self, seq_len: int, logits: bool = True) -> float:
        """Training FLOPs (forward + backward = 3x forward) per token, as in the PaLM appendix:
        6N for the N matmul weights (qkv and output projections 4E^2, the MLP 2EM, the tied
        output projection VE; embedding lookups cost none) plus 12 L E T for the attention
        scores and weighted sum (the full T x T, causal mask or not). `logits=False` leaves out
        the output projection, which a classifier over the hidden states never computes."""
        e = self.embed_dim
        n = self.num_layers * (4 * e * e + 2 * e * self.mlp_dim)
        if logits:
            n += self.vocab_size * e
        attention = self.num_layers * 2 * seq_len * e
        return 6.0 * n + 6.0 * attention


def gpt_config(size: str, vocab_size: int, **overrides) -> GPTConfig:
    """The `GPTConfig` for a named size in `SIZES`, with any field overridden."""
    if size not in SIZES:
        raise ValueError(f"Unknown GPT size {size!r}; known sizes: {sorted(SIZES)}")
    layers, embed, heads, max_len = SIZES[size]
    fields = dict(
        vocab_size=vocab_size,
        num_layers=layers,
        embed_dim=embed,
        num_heads=heads,
        max_len=max_len,
        mlp_dim=4 * embed,
    )
    fields.update(overrides)
    return GPTConfig(**fields)


def check_tokens(tokens, config: GPTConfig, where: str = "tokens") -> None:
    """Raises a clear error for ids outside the vocabulary or sequences past the position table.

    JAX clamps out-of-range gathers silently, so this must run on host data before `apply`.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"{where}: expected a (batch, length) array, got shape {tokens.shape}")
    if tokens.shape[1] > config.max_len:
        raise ValueError(
            f"{where}: sequence length {tokens.shape[1]} exceeds the model's max_len "
            f"{config.max_len}"
        )
    if tokens.size and (tokens.min() < 0 or tokens.max() >= config.vocab_size):
        bad = tokens[(tokens < 0) | (tokens >= config.vocab_size)]
        raise ValueError(
            f"{where}: token id {int(bad[0])} is outside the vocabulary [0, {config.vocab_size})"
        )


# Fewest query positions per block of `query_blocks`, and most blocks.
MIN_QUERY_BLOCK = 64
MAX_QUERY_BLOCKS = 8


def query_blocks(length: int) -> int:
    """How many equal blocks the queries of a cache-free causal pass are taken in (a power of two).

    Block i of n is scored against the keys up to its own end, so the score and mixing matmuls
    do (n + 1) / 2n of the full ones' work: 3/4 with the two blocks of a 128-token sequence, 9/16
    with the eight of a 1024-token one. Blocks shorter than `MIN_QUERY_BLOCK` positions save less
    than their extra small matmuls cost. Measured on a 2-core CPU (Zen 4), one process
    alternating both forms, fp32 training steps: GPT-2 small at batch 2 x 1024 (eight blocks)
    2.27 -> 1.90 s; GPT-mini at 8 x 256 (four) 494 -> 463 ms and at 16 x 128 (two) 441 -> 429-436
    ms; tiny at 16 x 128 74.4 -> 72.1 ms. The outputs are the one-block pass's up to float32
    rounding (the sums run in another order); a left-padded row's padding positions, which
    attend to nothing, average over their block's keys instead of over all of them.
    """
    n = 1
    while (n < MAX_QUERY_BLOCKS and length % (2 * n) == 0
           and length // (2 * n) >= MIN_QUERY_BLOCK):
        n *= 2
    return n


def _dense_init(config: GPTConfig, scale: float = 1.0):
    return nn.initializers.normal(stddev=config.initializer_range * scale)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with an optional key/value cache for decoding."""

    config: GPTConfig

    @nn.compact
    def __call__(self, x, key_mask, decode: bool, train: bool):
        cfg = self.config
        batch, length, _ = x.shape
        qkv = Dense(
            features=(3, cfg.num_heads, cfg.head_dim),
            dtype=cfg.compute_dtype,
            kernel_init=nn.with_logical_partitioning(
                _dense_init(cfg), ("embed", None, "heads", "kv")
            ),
            bias_init=nn.with_logical_partitioning(
                nn.initializers.zeros, (None, "heads", "kv")
            ),
            name="qkv",
        )(x)  # (B, T, 3, H, D)
        query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # each (B, T, H, D)

        if decode:
            # Write this call's keys/values at cache_index and attend over the whole cache.
            initialized = self.has_variable("cache", "cached_key")
            cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
            cached_value = self.variable(
                "cache", "cached_value", jnp.zeros, value.shape, value.dtype
            )
            cache_index = self.variable(
                "cache", "cache_index", lambda: jnp.array(0, dtype=jnp.int32)
            )
            if initialized:
                index = cache_index.value
                key = jax.lax.dynamic_update_slice(cached_key.value, key, (0, index, 0, 0))
                value = jax.lax.dynamic_update_slice(cached_value.value, value, (0, index, 0, 0))
                cached_key.value, cached_value.value = key, value
                cache_index.value = index + length
                query_slots = index + jnp.arange(length)  # (T,)
            else:
                query_slots = jnp.arange(length)
        else:
            query_slots = jnp.arange(length)
        key_slots = jnp.arange(key.shape[1])  # (S,)

        causal = key_slots[None, :] <= query_slots[:, None]  # (T, S)
        mask = causal[None, None, :, :]  # (1, 1, T, S)
        if key_mask is not None:
            if key_mask.shape != (batch, key.shape[1]):
                raise ValueError(
                    f"key_mask has shape {key_mask.shape}; expected (batch, key length) = "
                    f"{(batch, key.shape[1])}"
                )
            mask = mask & key_mask[:, None, None, :].astype(bool)  # (B, 1, T, S)

        # Heads-first (B, H, T, D) operands for the two batched matmuls. Measured in the GPT-mini
        # train step on 2 CPU cores against contracting the (B, T, H, D) layout directly: ~5-9%
        # faster in fp32, ~11% in bf16; no change at tiny.
        query, key, value = (jnp.swapaxes(x, 1, 2) for x in (query, key, value))
        # Without a cache the queries are the keys' own positions, and a block of queries sees no
        # key past its own end: each block is scored against the keys up to there only, skipping
        # the masked scores above the diagonal (a quarter of them with two blocks).
        blocks = 1 if decode else query_blocks(length)
        query = query * jnp.asarray(1 / math.sqrt(cfg.head_dim), query.dtype)
        size = length // blocks
        outs = []
        for block in range(blocks):
            rows = slice(block * size, (block + 1) * size)
            end = key.shape[2] if blocks == 1 else (block + 1) * size
            scores = jnp.einsum("bhtd,bhsd->bhts", query[:, :, rows], key[:, :, :end])
            scores = scores.astype(jnp.float32)
            # A finite minimum (not -inf) keeps fully masked rows (left padding) free of NaNs.
            scores = jnp.where(mask[:, :, rows, :end], scores, jnp.finfo(jnp.float32).min)
            weights = jax.nn.softmax(scores, axis=-1).astype(cfg.compute_dtype)  # (B, H, t, s)
            weights = Dropout(cfg.attention_dropout_rate)(weights, deterministic=not train)
            outs.append(jnp.einsum("bhts,bhsd->bhtd", weights, value[:, :, :end]))
        out = outs[0] if blocks == 1 else jnp.concatenate(outs, axis=2)
        out = jnp.swapaxes(out, 1, 2)  # (B, T, H, D)
        out = Dense(
            features=cfg.embed_dim,
            in_axes=2,
            dtype=cfg.compute_dtype,
            kernel_init=nn.with_logical_partitioning(
                _dense_init(cfg, 1.0 / math.sqrt(2 * cfg.num_layers)), ("heads", "kv", "embed")
            ),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            name="out",
        )(out)  # (B, T, E)
        return out


class MLP(nn.Module):
    """Position-wise feed-forward block with GPT-2's tanh-approximated GELU."""

    config: GPTConfig

    @nn.compact
    def __call__(self, x, train: bool):
        cfg = self.config
        h = Dense(
            cfg.mlp_dim,
            dtype=cfg.compute_dtype,
            kernel_init=nn.with_logical_partitioning(_dense_init(cfg), ("embed", "mlp")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)),
            name="fc",
        )(x)
        h = nn.gelu(h, approximate=True)
        h = Dense(
            cfg.embed_dim,
            dtype=cfg.compute_dtype,
            kernel_init=nn.with_logical_partitioning(
                _dense_init(cfg, 1.0 / math.sqrt(2 * cfg.num_layers)), ("mlp", "embed")
            ),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            name="proj",
        )(h)
        return Dropout(cfg.dropout_rate)(h, deterministic=not train)


def _layer_norm(cfg: GPTConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=cfg.layer_norm_eps,
        dtype=cfg.compute_dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        name=name,
    )


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    config: GPTConfig

    @nn.compact
    def __call__(self, x, key_mask, decode: bool, train: bool):
        cfg = self.config
        h = CausalSelfAttention(cfg, name="attn")(_layer_norm(cfg, "ln_1")(x), key_mask, decode, train)
        x = x + Dropout(cfg.dropout_rate)(h, deterministic=not train)
        x = x + MLP(cfg, name="mlp")(_layer_norm(cfg, "ln_2")(x), train)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class GPT(nn.Module):
    """The decoder LM. Returns `(outputs, intermediates)`.

    Args (of `__call__`):
      tokens: (B, T) int token ids.
      positions: (B, T) position ids; defaults to `arange(T)`. Required with `decode=True`.
      key_mask: (B, S) bool, False for keys to ignore (padding); S = T, or the cache length when
        decoding.
      decode: use and update the `"cache"` collection (incremental decoding).
      train: enable dropout (needs a `"dropout"` rng).
      logits: compute the vocabulary projection; False skips it (classifier heads).

    Returns:
      outputs: {"logits": (B, T, V) float32 (if `logits`), "hidden": (B, T, E) after `ln_f`}.
      intermediates: {"embeddings", "layer_1", ..., "layer_N"}, each (B, T, E).
    """

    config: GPTConfig

    @nn.compact
    def __call__(self, tokens, positions=None, key_mask=None, decode: bool = False,
                 train: bool = False, logits: bool = True):
        cfg = self.config
        batch, length = tokens.shape
        if length > cfg.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len {cfg.max_len}")
        if positions is None:
            if decode and not self.is_initializing():
                raise ValueError("GPT: decode=True needs explicit positions (B, T)")
            positions = jnp.broadcast_to(jnp.arange(length), (batch, length))  # (B, T)
        # Embed: nn.Embed's parameter, with a lookup that keeps the activations split over the
        # batch on any mesh (see tl_jax.models.layers.Embed).
        wte = Embed(
            cfg.vocab_size,
            cfg.embed_dim,
            embedding_init=nn.with_logical_partitioning(_dense_init(cfg), ("vocab", "embed")),
            table_axes=("vocab", None),
            name="wte",
        )
        wpe = Embed(
            cfg.max_len,
            cfg.embed_dim,
            embedding_init=nn.with_logical_partitioning(
                nn.initializers.normal(stddev=0.01), (None, "embed")
            ),
            table_axes=(None, None),
            name="wpe",
        )
        x = wte(tokens) + wpe(positions)  # (B, T, E)
        x = x.astype(cfg.compute_dtype)
        x = Dropout(cfg.dropout_rate)(x, deterministic=not train)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        intermediates = {"embeddings": x}
        for i in range(cfg.num_layers):
            x = Block(cfg, name=f"h_{i}")(x, key_mask, decode, train)
            intermediates[f"layer_{i + 1}"] = x
        hidden = _layer_norm(cfg, "ln_f")(x)
        outputs = {"hidden": hidden}
        if logits:
            # Tied output embedding; logits in float32 for a stable softmax/loss.
            outputs["logits"] = wte.attend(hidden.astype(jnp.float32))  # (B, T, V)
        return outputs, intermediates


def init_cache(model: GPT, batch_size: int, cache_len: int):
    """A zeroed decoding cache for `batch_size` rows and `cache_len` slots (no params needed)."""
    if cache_len > model.config.max_len:
        raise ValueError(
            f"cache length {cache_len} (prompt + new tokens) exceeds max_len "
            f"{model.config.max_len}"
        )
    tokens = jnp.zeros((batch_size, cache_len), jnp.int32)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), tokens, decode=True, logits=False)
    )["cache"]
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def param_count(params) -> int:
    """Number of scalars in a (boxed or plain) parameter tree."""
    return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(nn.unbox(params)))

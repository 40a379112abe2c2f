"""BERT (Devlin et al., 2019) as Flax Linen modules: encoder, pooler, MLM and NSP heads.

Modules and what they return from `apply`, always `(outputs, intermediates)`:

* `BertEncoder`: embeddings + post-LN transformer layers. outputs: `sequence_output` (B, L, H).
* `BertModel`: the encoder plus a tanh pooler on [CLS]. adds `pooled_output` (B, H).
* `BertForPreTraining`: `BertModel` under `bert/` plus `mlm_head/` and `nsp_head/`. adds
  `mlm_logits` (B, P, V) at `masked_positions` (all L positions when None) and `nsp_logits`
  (B, 2), both float32, and `mlm_hidden` (B, P, H), the MLM transform's output that the tied
  decoder multiplies (the pretraining loss fuses that matmul into its softmax).

`intermediates` names every hidden state: `embeddings` (after LayerNorm, and after the
projection when the embeddings are factorised: the layers' input, HF's `hidden_states[0]`) and
`layer_1` ... `layer_N` (each layer's output, so `layer_N` is `sequence_output`).

Factorised embeddings (ALBERT, ELECTRA-Small): `embedding_size` > 0 and != `hidden_size` makes
the tables and their LayerNorm `embedding_size` wide, followed by a dense projection to
`hidden_size` (`bert/embeddings_project`, HF ELECTRA's `embeddings_project`, applied after the
embeddings' dropout). The MLM transform then maps H -> embedding_size, so the tied decoder
still multiplies by the word embeddings (as HF's `ElectraGeneratorPredictions`).

Parameter paths are stable and readable; transfer strategies select layers by regex on them:

    bert/embeddings/{word,position,token_type}_embeddings/embedding, bert/embeddings/norm/...
    bert/embeddings_project/{kernel,bias}                            only when factorised
    bert/encoder/layer_0/attention/{query,key,value}/{kernel,bias}   (E, heads, kv)
    bert/encoder/layer_0/attention/out/{kernel,bias}                 (heads, kv, E)
    bert/encoder/layer_0/attention_output_norm/{scale,bias}
    bert/encoder/layer_0/mlp/{intermediate,output}/{kernel,bias}
    bert/encoder/layer_0/mlp_output_norm/{scale,bias}
    bert/pooler/dense/{kernel,bias}
    mlm_head/transform/{kernel,bias}, mlm_head/transform_norm/{scale,bias}, mlm_head/output_bias
    nsp_head/dense/{kernel,bias}

`BertEncoder` and `BertModel` have the same names without the `bert/` prefix.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from tl_jax.models import layers

# name -> (num_layers, hidden_size, num_heads); intermediate_size is 4 * hidden_size.
SIZES = {
    "tiny": (2, 128, 2),
    "mini": (4, 256, 4),
    "small": (4, 512, 8),
    "medium": (8, 512, 8),
    "base": (12, 768, 12),
    "large": (24, 1024, 16),
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Shape and behaviour of a BERT model. Field names follow the BERT paper / HF config."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    hidden_act: str = "gelu"
    dtype: str = "float32"  # compute dtype; params are always float32
    adapter_size: int = 0  # > 0: Houlsby adapters in every layer
    lora_rank: int = 0  # > 0: LoRA on the query and value projections
    lora_alpha: float = 1.0
    # Width of the embedding tables; 0 = hidden_size. Another width adds `embeddings_project`.
    # A value equal to hidden_size is stored as 0, so one architecture has one config.
    embedding_size: int = 0

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                     "max_position_embeddings", "type_vocab_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"BertConfig.{name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"BertConfig.hidden_size={self.hidden_size} is not divisible by "
                f"num_heads={self.num_heads}"
            )
        if self.embedding_size < 0:
            raise ValueError(f"BertConfig.embedding_size must be >= 0 (0 = hidden_size), got "
                             f"{self.embedding_size}")
        if self.embedding_size == self.hidden_size:
            object.__setattr__(self, "embedding_size", 0)  # frozen dataclass: normalise in place
        if self.adapter_size < 0 or self.lora_rank < 0:
            raise ValueError("BertConfig.adapter_size and lora_rank must be >= 0")
        for name in ("dropout_rate", "attention_dropout_rate"):
            # 10 (for 10%) dropped every unit, so the model trained on zeros without a word.
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"BertConfig.{name}={getattr(self, name)} must be in [0, 1): "
                                 "the probability of dropping a unit (0.1 drops 10%)")
        layers.activation(self.hidden_act)  # fails early on an unknown activation name
        layers.float_dtype_name(self.dtype)

    @classmethod
    def from_size(cls, name: str, **overrides) -> "BertConfig":
        """A config from the size table (`tiny` ... `large`); `vocab_size` is usually an override."""
        if name not in SIZES:
            raise ValueError(f"Unknown BERT size {name!r}; known sizes: {list(SIZES)}")
        num_layers, hidden, heads = SIZES[name]
        fields = dict(
            vocab_size=30522,
            hidden_size=hidden,
            num_layers=num_layers,
            num_heads=heads,
            intermediate_size=4 * hidden,
        )
        fields.update(overrides)
        return cls(**fields)

    def replace(self, **changes) -> "BertConfig":
        return dataclasses.replace(self, **changes)

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def embedding_width(self) -> int:
        """The width of the embedding tables (and of the MLM transform's output)."""
        return self.embedding_size or self.hidden_size

    @property
    def factorised(self) -> bool:
        """True when narrower (or wider) embeddings are projected to hidden_size."""
        return self.embedding_size != 0


def validate_inputs(config: BertConfig, input_ids, segment_ids=None, input_mask=None,
                    masked_positions=None) -> None:
    """Checks a host-side batch before it reaches a compiled function.

    JAX clamps out-of-range gathers silently, so a wrong vocabulary or an over-long sequence
    would train on garbage instead of failing. Raises ValueError naming what is wrong.
    """
    input_ids = np.asarray(input_ids)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must have shape (batch, length), got {input_ids.shape}")
    if not np.issubdtype(input_ids.dtype, np.integer):
        raise ValueError(f"input_ids must be integers, got dtype {input_ids.dtype}")
    length = input_ids.shape[1]
    if length > config.max_position_embeddings:
        raise ValueError(
            f"sequence length {length} exceeds max_position_embeddings="
            f"{config.max_position_embeddings} of the model"
        )
    if input_ids.size and (input_ids.min() < 0 or input_ids.max() >= config.vocab_size):
        bad = input_ids[(input_ids < 0) | (input_ids >= config.vocab_size)]
        where = np.argwhere((input_ids < 0) | (input_ids >= config.vocab_size))[0].tolist()
        raise ValueError(
            f"token id {int(bad[0])} at (row, position) {tuple(where)} is outside the vocabulary "
            f"[0, {config.vocab_size}); {bad.size} ids out of range. Does the tokenizer match "
            f"the model's vocab_size?"
        )
    for name, value in (("segment_ids", segment_ids), ("input_mask", input_mask)):
        if value is not None and np.shape(value) != input_ids.shape:
            raise ValueError(f"{name} shape {np.shape(value)} != input_ids shape {input_ids.shape}")
    if segment_ids is not None:
        segment_ids = np.asarray(segment_ids)
        bad = (segment_ids < 0) | (segment_ids >= config.type_vocab_size)
        if bad.any():
            where = tuple(np.argwhere(bad)[0].tolist())
            raise ValueError(
                f"segment id {int(segment_ids[where])} at (row, position) {where} is outside "
                f"[0, {config.type_vocab_size}) (type_vocab_size)"
            )
    if masked_positions is not None:
        masked_positions = np.asarray(masked_positions)
        if masked_positions.ndim != 2 or masked_positions.shape[0] != input_ids.shape[0]:
            raise ValueError(f"masked_positions must have shape (batch={input_ids.shape[0]}, "
                             f"predictions), got {masked_positions.shape}")
        bad = (masked_positions < 0) | (masked_positions >= length)
        if bad.any():
            where = tuple(np.argwhere(bad)[0].tolist())
            raise ValueError(f"masked position {int(masked_positions[where])} at (row, slot) "
                             f"{where} is outside the sequence [0, {length})")


class BertEmbeddings(nn.Module):
    """Word + position + segment embeddings, summed, then LayerNorm and dropout.

    All `config.embedding_width` wide; `BertEncoder` projects them to hidden_size when they
    are factorised.
    """

    config: BertConfig

    def setup(self):
        c = self.config
        # layers.Embed: nn.Embed's parameter, with a lookup that keeps the activations split
        # over the batch on any mesh (see there).
        embed = lambda n, axes, out_axes: layers.Embed(  # noqa: E731
            n,
            c.embedding_width,
            dtype=c.compute_dtype,
            param_dtype=jnp.float32,
            embedding_init=layers.normal_init(c.initializer_range, axes),
            table_axes=(axes[0], None),
            out_axes=out_axes,
        )
        activation_axes = ("batch", "length", "embed")
        self.word_embeddings = embed(c.vocab_size, ("vocab", "embed"), activation_axes)
        # Looked up for (1, L) positions, broadcast over the batch: no batch axis to split.
        self.position_embeddings = embed(c.max_position_embeddings, (None, "embed"), None)
        self.token_type_embeddings = embed(c.type_vocab_size, (None, "embed"), activation_axes)
        self.norm = layers.layer_norm(c.layer_norm_eps, c.compute_dtype, None)
        self.dropout = layers.Dropout(c.dropout_rate)

    def __call__(self, input_ids, segment_ids, deterministic: bool):
        length = input_ids.shape[1]
        if length > self.config.max_position_embeddings:
            # Checked when traced (shapes are static): the positions past the table were
            # gathered as NaN, and every output was NaN without a word.
            raise ValueError(f"sequence length {length} exceeds max_position_embeddings="
                             f"{self.config.max_position_embeddings} of the model")
        positions = jnp.arange(length)[None, :]  # (1, L)
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)
            + self.token_type_embeddings(segment_ids)
        )  # (B, L, E)
        x = self.norm(x)
        return self.dropout(x, deterministic=deterministic)

    def attend(self, x):
        """Scores x (..., E) against every word embedding: the tied MLM decoder. (..., V)"""
        return self.word_embeddings.attend(x)


class BertLayer(nn.Module):
    """One post-LN transformer layer: attention, [adapter], add & norm, MLP, [adapter], add & norm."""

    config: BertConfig

    @nn.compact
    def __call__(self, x, attention_bias, deterministic: bool):
        c = self.config
        dtype = c.compute_dtype
        dropout = layers.Dropout(c.dropout_rate)
        h = layers.MultiHeadSelfAttention(
            c.num_heads,
            attention_dropout_rate=c.attention_dropout_rate,
            initializer_range=c.initializer_range,
            lora_rank=c.lora_rank,
            lora_alpha=c.lora_alpha,
            dtype=dtype,
            name="attention",
        )(x, attention_bias, deterministic)
        h = dropout(h, deterministic=deterministic)
        if c.adapter_size > 0:
            h = layers.Adapter(c.adapter_size, c.hidden_act, dtype, name="attention_adapter")(h)
        x = layers.layer_norm(c.layer_norm_eps, dtype, "attention_output_norm")(x + h)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))

        h = layers.Mlp(
            c.intermediate_size, c.hidden_act, c.initializer_range, dtype, name="mlp"
        )(x)
        h = dropout(h, deterministic=deterministic)
        if c.adapter_size > 0:
            h = layers.Adapter(c.adapter_size, c.hidden_act, dtype, name="mlp_adapter")(h)
        x = layers.layer_norm(c.layer_norm_eps, dtype, "mlp_output_norm")(x + h)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class BertLayerStack(nn.Module):
    """`num_layers` BertLayers named layer_0 ... (no nn.scan: per-layer paths are needed)."""

    config: BertConfig

    @nn.compact
    def __call__(self, x, attention_bias, deterministic: bool):
        hidden_states = []
        for i in range(self.config.num_layers):
            x = BertLayer(self.config, name=f"layer_{i}")(x, attention_bias, deterministic)
            hidden_states.append(x)
        return hidden_states


class BertEncoder(nn.Module):
    """Embeddings + transformer layers; returns ({sequence_output}, intermediates)."""

    config: BertConfig

    def setup(self):
        c = self.config
        self.embeddings = BertEmbeddings(c)
        if c.factorised:
            # (E, H); named by its attribute, `embeddings_project`, as in HF ELECTRA.
            self.embeddings_project = layers.dense(c.hidden_size, ("embed", None),
                                                   c.initializer_range, c.compute_dtype, None)
        self.encoder = BertLayerStack(c)

    def encode(self, input_ids, segment_ids=None, input_mask=None, deterministic=True):
        if segment_ids is None:
            segment_ids = jnp.zeros_like(input_ids)
        if input_mask is None:
            input_mask = jnp.ones_like(input_ids)
        # (B, 1, 1, L): broadcast over heads and query positions; padded keys get MASK_VALUE.
        attention_bias = jnp.where(input_mask[:, None, None, :] > 0, 0.0, layers.MASK_VALUE)
        attention_bias = attention_bias.astype(jnp.float32)
        x = self.embeddings(input_ids, segment_ids, deterministic)  # (B, L, E)
        if self.config.factorised:
            x = self.embeddings_project(x)  # (B, L, H)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        hidden_states = self.encoder(x, attention_bias, deterministic)
        intermediates = {"embeddings": x}
        for i, h in enumerate(hidden_states, start=1):
            intermediates[f"layer_{i}"] = h
        return {"sequence_output": hidden_states[-1]}, intermediates

    def __call__(self, input_ids, segment_ids=None, input_mask=None, masked_positions=None,
                 deterministic=True):
        del masked_positions  # accepted so every BERT module shares one call signature
        return self.encode(input_ids, segment_ids, input_mask, deterministic)

    def attend(self, x):
        return self.embeddings.attend(x)


class BertPooler(nn.Module):
    """tanh(dense(hidden state of [CLS]))."""

    config: BertConfig

    @nn.compact
    def __call__(self, sequence_output):
        c = self.config
        first = sequence_output[:, 0]  # (B, H)
        dense = layers.dense(c.hidden_size, ("embed", None), c.initializer_range,
                             c.compute_dtype, "dense")
        return jnp.tanh(dense(first))


class BertModel(BertEncoder):
    """BertEncoder plus the [CLS] pooler; outputs sequence_output and pooled_output."""

    def setup(self):
        super().setup()
        self.pooler = BertPooler(self.config)

    def __call__(self, input_ids, segment_ids=None, input_mask=None, masked_positions=None,
                 deterministic=True):
        del masked_positions
        outputs, intermediates = self.encode(input_ids, segment_ids, input_mask, deterministic)
        outputs["pooled_output"] = self.pooler(outputs["sequence_output"])
        return outputs, intermediates


class BertMlmHead(nn.Module):
    """Transform (dense, activation, LayerNorm), then the tied decoder plus an output bias.

    The transform maps H to the embedding width E (H itself unless factorised), the width of
    the tied word embeddings.
    """

    config: BertConfig

    @nn.compact
    def __call__(self, hidden, attend):
        """hidden: (B, P, H); attend: maps (..., E) to (..., V) with the word embeddings.

        Returns (transformed hidden (B, P, E), logits (B, P, V) float32).
        """
        c = self.config
        dtype = c.compute_dtype
        h = layers.dense(c.embedding_width, ("embed", None), c.initializer_range, dtype,
                         "transform")(hidden)
        h = layers.activation(c.hidden_act)(h)
        h = layers.layer_norm(c.layer_norm_eps, dtype, "transform_norm")(h)
        bias = self.param("output_bias", layers.zeros_init(("vocab",)), (c.vocab_size,),
                          jnp.float32)
        return h, attend(h).astype(jnp.float32) + bias  # (B, P, V) float32


class BertNspHead(nn.Module):
    """Two-way classifier on the pooled output: is segment B the real continuation of A?"""

    config: BertConfig

    @nn.compact
    def __call__(self, pooled):
        c = self.config
        dense = layers.dense(2, ("embed", None), c.initializer_range, c.compute_dtype, "dense")
        return dense(pooled).astype(jnp.float32)  # (B, 2)


class BertForPreTraining(nn.Module):
    """BERT with the masked-LM and next-sentence-prediction heads."""

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids, segment_ids=None, input_mask=None, masked_positions=None,
                 deterministic=True):
        c = self.config
        bert = BertModel(c, name="bert")
        outputs, intermediates = bert(input_ids, segment_ids, input_mask,
                                      deterministic=deterministic)
        sequence = outputs["sequence_output"]
        if masked_positions is not None:
            # Gather first: the vocabulary projection is the costliest matmul, and only ~15%
            # of positions have a label.
            index = jnp.asarray(masked_positions)[..., None]  # (B, P, 1)
            sequence = jnp.take_along_axis(sequence, index, axis=1)  # (B, P, H)
        # `mlm_hidden` lets a loss fuse the decoder into the softmax (tasks/bert_pretrain.py);
        # under jit the unused `mlm_logits` are then never computed.
        outputs["mlm_hidden"], outputs["mlm_logits"] = BertMlmHead(c, name="mlm_head")(
            sequence, bert.attend)
        outputs["nsp_logits"] = BertNspHead(c, name="nsp_head")(outputs["pooled_output"])
        return outputs, intermediates


def encoder_flops_per_token(config: BertConfig, seq_len: int) -> float:
    """Training FLOPs (forward + backward = 3x forward) per token for embeddings and layers.

    Counts matmuls only: Q, K, V and output projections (4 * 2H^2), the MLP (2 * 2HI) and the
    attention scores and weighted sum (2 * 2LH, which grows with the sequence length), plus the
    embeddings' projection (2EH) when they are factorised.
    """
    h, i = config.hidden_size, config.intermediate_size
    per_layer = 8 * h * h + 4 * h * i + 4 * seq_len * h
    project = 2 * config.embedding_width * h if config.factorised else 0
    return 3.0 * (config.num_layers * per_layer + project)


def mlm_flops_per_prediction(config: BertConfig) -> float:
    """Training FLOPs of the MLM head per predicted position: transform (2HE) + decoder (2EV)."""
    h, e = config.hidden_size, config.embedding_width
    return 3.0 * (2 * h * e + 2 * e * config.vocab_size)


def flops_per_token(config: BertConfig, seq_len: int) -> float:
    """Training FLOPs per token of the encoder; see `flops_per_example` for the heads."""
    return encoder_flops_per_token(config, seq_len)


def flops_per_example(config: BertConfig, seq_len: int, num_predictions: int) -> float:
    """Training FLOPs of one pretraining example: encoder, MLM at `num_predictions`, pooler, NSP."""
    h = config.hidden_size
    heads = 3.0 * (2 * h * h + 2 * h * 2)  # pooler + NSP, once per sequence
    return (seq_len * encoder_flops_per_token(config, seq_len)
            + num_predictions * mlm_flops_per_prediction(config) + heads)

"""Feature-based transfer: task heads over a frozen encoder's hidden states (BERT paper, 5.3).

The encoder's `intermediates` name every hidden state (`embeddings`, `layer_1` ... `layer_N`);
`stack_layers` puts them in order as one (B, N+1, T, H) array. A `FeatureProbe` then builds the
features the BERT paper's ablation (Table 7) compares, and two related ones:

    embeddings               the embedding output (layer 0)            Table 7: Embeddings
    last                     layer N                                   Last Hidden
    second_to_last           layer N-1                                 Second-to-Last Hidden
    weighted_sum_last_four   layers N-3 .. N, learned weighted sum     Weighted Sum Last Four Hidden
    concat_last_four         layers N-3 .. N concatenated (4H)         Concat Last Four Hidden
    weighted_sum_all_layers  layers 1 .. N (not the embeddings),       Weighted Sum All 12 Layers
                             learned weighted sum
    sum_last_four            layers N-3 .. N, plain (unweighted) sum   (not in the final table)
    scalar_mix               all N+1 layers, embeddings included       (ELMo's choice)

A learned weighted sum is an ELMo scalar mix (softmax weights, starting equal, times a learned
scale) over the layers named; the paper does not say how its weights were learned.

and feeds it to a head: `linear` (pool over tokens, then one dense layer) or `bilstm` (a small
bidirectional LSTM over the token features, its final states concatenated, then a dense layer;
the paper used two 768-d BiLSTM layers for NER). `ProbeClassifier` wraps a BertModel under
`bert/` (its gradient is stopped: nothing flows back into the encoder) and a FeatureProbe under
`head/`, so the usual `init_from` loading and a `('bert/.*', 'frozen')` rule apply unchanged.

Pooling is linear, so for the linear head with mean pooling (and no layer norm in the mix) the
probe gives the same logits from per-layer *pooled* features (B, N+1, H) as from the token-level
ones: that is what lets `tasks/probe.py` cache one small vector per layer and example.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from tl_jax.models import bert
from tl_jax.models.scalar_mix import ScalarMix

FEATURES = ("embeddings", "last", "second_to_last", "sum_last_four", "concat_last_four",
            "scalar_mix", "weighted_sum_last_four", "weighted_sum_all_layers")
# Features with learned mixing weights (the rest are a parameter-free choice of layers).
MIXED_FEATURES = ("scalar_mix", "weighted_sum_last_four", "weighted_sum_all_layers")


def layers_needed(feature: str) -> int:
    """The fewest encoder layers (not counting the embeddings) `feature` can be taken from."""
    if feature.endswith("_last_four"):
        return 4
    return 2 if feature == "second_to_last" else 1
HEADS = ("linear", "bilstm")
POOLINGS = ("mean", "cls")


def stack_layers(intermediates: dict) -> jax.Array:
    """`embeddings, layer_1 .. layer_N` from a BERT-style intermediates dict: (B, N+1, T, H)."""
    if "embeddings" not in intermediates:
        raise ValueError(f"intermediates have no 'embeddings' entry: {sorted(intermediates)}")
    n = 0
    while f"layer_{n + 1}" in intermediates:
        n += 1
    if n == 0:
        raise ValueError(f"intermediates have no 'layer_1': {sorted(intermediates)}")
    layers = [intermediates["embeddings"]] + [intermediates[f"layer_{i}"] for i in range(1, n + 1)]
    return jnp.stack(layers, axis=1)  # (B, N+1, T, H)


def pool(x: jax.Array, mask: Optional[jax.Array], pooling: str) -> jax.Array:
    """(B, ..., T, H) -> (B, ..., H): mean over unpadded tokens, or the first ([CLS]) token."""
    if pooling == "cls":
        return x[..., 0, :]
    if pooling != "mean":
        raise ValueError(f"pooling={pooling!r}; expected one of {POOLINGS}")
    if mask is None:
        return x.mean(axis=-2)
    # mask (B, T) -> (B, 1.., T, 1) to broadcast over any layer axes between batch and tokens.
    m = mask.astype(x.dtype).reshape(mask.shape[:1] + (1,) * (x.ndim - 3) + mask.shape[1:] + (1,))
    return (x * m).sum(axis=-2) / jnp.maximum(m.sum(axis=-2), 1.0)


class FeatureProbe(nn.Module):
    """A feature choice plus a linear or BiLSTM head.

    Call with `layers` of shape (B, N+1, T, H) and `mask` (B, T), or, for the linear head only,
    with per-layer pooled features (B, N+1, H) and `pooled=True`. Returns logits (B, C) float32.
    """

    num_labels: int
    feature: str = "last"
    head: str = "linear"
    pooling: str = "mean"          # linear head: how tokens become one vector
    lstm_hidden: int = 128
    mix_layer_norm: bool = False   # scalar mix: ELMo's per-layer normalisation
    dropout_rate: float = 0.1

    @nn.compact
    def __call__(self, layers: jax.Array, mask: Optional[jax.Array] = None, pooled: bool = False,
                 deterministic: bool = True, selected: bool = False) -> jax.Array:
        """`selected=True`: `layers` already is the chosen feature, (B, [T,] D) (a cache of it)."""
        if self.feature not in FEATURES:
            raise ValueError(f"probe feature={self.feature!r}; expected one of {FEATURES}")
        if self.head not in HEADS:
            raise ValueError(f"probe head={self.head!r}; expected one of {HEADS}")
        if pooled and (self.head != "linear" or self.mix_layer_norm):
            raise ValueError("pooled features work only with the linear head and no mix layer norm "
                             "(pooling commutes with the feature choice only then)")
        num = layers.shape[1]
        if selected:
            x = layers.astype(jnp.float32)  # (B, [T,] D)
        else:
            if num < 5 and self.feature in ("sum_last_four", "concat_last_four",
                                            "weighted_sum_last_four"):
                raise ValueError(f"feature {self.feature!r} needs 4 encoder layers; got {num - 1}")
            x = self._select(layers.astype(jnp.float32), mask, num)  # (B, [T,] D)
        if self.head == "linear":
            if not pooled:
                x = pool(x, mask, self.pooling)  # (B, D)
        else:
            lengths = (mask.sum(-1) if mask is not None
                       else jnp.full(x.shape[:1], x.shape[1])).astype(jnp.int32)  # (B,)
            # Cells made here are this module's children: params head/{forward,backward}_lstm/...
            bilstm = nn.Bidirectional(
                nn.RNN(nn.OptimizedLSTMCell(self.lstm_hidden, name="forward_lstm")),
                nn.RNN(nn.OptimizedLSTMCell(self.lstm_hidden, name="backward_lstm")),
                return_carry=True)
            (fwd_carry, bwd_carry), _ = bilstm(x, seq_lengths=lengths)
            # LSTM carries are (c, h); each direction's last hidden state has read the sentence.
            x = jnp.concatenate([fwd_carry[1], bwd_carry[1]], axis=-1)  # (B, 2 * lstm_hidden)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        return nn.Dense(self.num_labels, name="output")(x).astype(jnp.float32)  # (B, C)

    def _select(self, layers, mask, num):
        """(B, N+1, [T,] H) -> (B, [T,] D) for the chosen feature."""
        f = self.feature
        if f == "embeddings":
            return layers[:, 0]
        if f == "last":
            return layers[:, num - 1]
        if f == "second_to_last":
            if num < 3:  # layers[:, 0] would be the embeddings, not an encoder layer
                raise ValueError(f"feature 'second_to_last' needs 2 encoder layers; got {num - 1} "
                                 "(feature='embeddings' is the embedding output)")
            return layers[:, num - 2]
        if f == "sum_last_four":
            return layers[:, num - 4:].sum(axis=1)
        if f == "concat_last_four":
            last4 = layers[:, num - 4:]  # (B, 4, [T,] H)
            return jnp.concatenate([last4[:, i] for i in range(4)], axis=-1)  # (B, [T,] 4H)
        mixed = {"scalar_mix": range(num), "weighted_sum_last_four": range(num - 4, num),
                 "weighted_sum_all_layers": range(1, num)}[f]
        mix = ScalarMix(len(mixed), layer_norm=self.mix_layer_norm, name="scalar_mix")
        return mix([layers[:, i] for i in mixed], mask if layers.ndim == 4 else None)


class ProbeClassifier(nn.Module):
    """Frozen BERT encoder (under `bert/`) + FeatureProbe (under `head/`); (outputs, intermediates).

    The encoder output is wrapped in `stop_gradient`, so training computes no encoder gradients
    even in a trainer that differentiates every parameter; freeze `bert/.*` in the transfer rules
    as well so it gets no optimizer state either.
    """

    config: bert.BertConfig
    num_labels: int
    feature: str = "last"
    head_type: str = "linear"   # FeatureProbe.head
    pooling: str = "mean"
    lstm_hidden: int = 128
    mix_layer_norm: bool = False
    dropout_rate: float = 0.1

    def setup(self):
        self.bert = bert.BertModel(self.config)
        self.head = FeatureProbe(self.num_labels, self.feature, self.head_type, self.pooling,
                                 self.lstm_hidden, self.mix_layer_norm, self.dropout_rate)

    def encode(self, input_ids, segment_ids=None, input_mask=None):
        """The frozen encoder's stacked layers (B, N+1, T, H), always deterministic."""
        _, intermediates = self.bert(input_ids, segment_ids, input_mask, deterministic=True)
        return jax.lax.stop_gradient(stack_layers(intermediates)), intermediates

    def __call__(self, input_ids, segment_ids=None, input_mask=None, deterministic=True):
        layers, intermediates = self.encode(input_ids, segment_ids, input_mask)
        logits = self.head(layers, input_mask, deterministic=deterministic)
        return {"logits": logits}, intermediates

    def probe(self, features, input_mask=None, pooled=False, deterministic=True, selected=False):
        """Logits from precomputed features (the cached path); the encoder is not run."""
        return self.head(features, input_mask, pooled=pooled, deterministic=deterministic,
                         selected=selected)

    def select(self, layers, input_mask=None):
        """The parameter-free feature choice on stacked layers (not for `MIXED_FEATURES`)."""
        return self.head._select(layers, input_mask, layers.shape[1])

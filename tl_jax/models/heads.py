"""Downstream heads on top of `BertModel`: sequence classification, token tagging, extractive QA.

Each model holds the encoder under `bert/` (the same paths as `BertForPreTraining` and the Hugging
Face import, so `init_from` fills it by name) and a freshly initialised head:

    BertForSequenceClassification: head/dense (H, num_labels) on [CLS]   -> logits (B, C)
    BertForTokenClassification:    head/dense (H, num_labels) per token  -> logits (B, L, C)
    BertForQuestionAnswering:      head/dense (H, 2) per token           -> start_logits,
                                                                            end_logits (B, L)

`apply` returns `(outputs, intermediates)`: outputs add the head's logits (float32) to the
encoder's `sequence_output` / `pooled_output`; intermediates are the encoder's named hidden states.

Sequence classification reads either BERT's tanh pooler on [CLS] (`pooling="pooler"`, the BERT
paper's choice) or the mean of the unpadded last-layer states (`pooling="mean"`, which suits
encoders trained for sentence embeddings such as MiniLM, whose pooler was never trained).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from tl_jax.models import bert, layers

POOLINGS = ("pooler", "cls", "mean")


def _classifier(config: bert.BertConfig, num_labels: int, name: str = "dense") -> layers.Dense:
    return layers.dense(num_labels, ("embed", None), config.initializer_range,
                        config.compute_dtype, name)


class BertForSequenceClassification(nn.Module):
    """BERT + dropout + linear classifier on a pooled sentence vector."""

    config: bert.BertConfig
    num_labels: int
    pooling: str = "pooler"  # pooler | cls | mean (see module docstring)
    classifier_dropout: float = 0.1

    @nn.compact
    def __call__(self, input_ids, segment_ids=None, input_mask=None, deterministic=True):
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling={self.pooling!r}; expected one of {POOLINGS}")
        outputs, intermediates = bert.BertModel(self.config, name="bert")(
            input_ids, segment_ids, input_mask, deterministic=deterministic)
        if self.pooling == "pooler":
            pooled = outputs["pooled_output"]  # (B, H)
        elif self.pooling == "cls":
            pooled = outputs["sequence_output"][:, 0]  # (B, H)
        else:
            mask = (jnp.ones_like(input_ids) if input_mask is None else input_mask)
            mask = mask.astype(outputs["sequence_output"].dtype)[..., None]  # (B, L, 1)
            total = (outputs["sequence_output"] * mask).sum(axis=1)  # (B, H)
            pooled = total / jnp.maximum(mask.sum(axis=1), 1.0)
        pooled = layers.Dropout(self.classifier_dropout)(pooled, deterministic=deterministic)
        outputs["logits"] = _Head(self.config, self.num_labels, name="head")(pooled)  # (B, C)
        return outputs, intermediates


class BertForTokenClassification(nn.Module):
    """BERT + dropout + per-token linear classifier (labels live on first sub-tokens)."""

    config: bert.BertConfig
    num_labels: int
    classifier_dropout: float = 0.1

    @nn.compact
    def __call__(self, input_ids, segment_ids=None, input_mask=None, deterministic=True):
        outputs, intermediates = bert.BertModel(self.config, name="bert")(
            input_ids, segment_ids, input_mask, deterministic=deterministic)
        hidden = layers.Dropout(self.classifier_dropout)(outputs["sequence_output"],
                                                     deterministic=deterministic)
        outputs["logits"] = _Head(self.config, self.num_labels, name="head")(hidden)  # (B, L, C)
        return outputs, intermediates


class BertForQuestionAnswering(nn.Module):
    """BERT + a per-token linear layer giving answer-start and answer-end logits."""

    config: bert.BertConfig

    @nn.compact
    def __call__(self, input_ids, segment_ids=None, input_mask=None, deterministic=True):
        outputs, intermediates = bert.BertModel(self.config, name="bert")(
            input_ids, segment_ids, input_mask, deterministic=deterministic)
        logits = _Head(self.config, 2, name="head")(outputs["sequence_output"])  # (B, L, 2)
        outputs["start_logits"] = logits[..., 0]  # (B, L)
        outputs["end_logits"] = logits[..., 1]  # (B, L)
        return outputs, intermediates


class _Head(nn.Module):
    """The linear output layer, float32 logits (softmax and argmax want full precision)."""

    config: bert.BertConfig
    num_outputs: int

    @nn.compact
    def __call__(self, x):
        return _classifier(self.config, self.num_outputs)(x).astype(jnp.float32)

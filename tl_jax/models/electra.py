"""ELECTRA (Clark et al., 2020): a small MLM generator and a replaced-token-detection discriminator.

The generator fills the masked positions of a BERT-masked batch with tokens sampled from its own
softmax; the discriminator, a BERT encoder, reads the result and says for every token whether it
is the original or a replacement. Only the discriminator is kept for fine-tuning.

Modules and what they return from `apply`, always `(outputs, intermediates)`:

* `ElectraForPreTraining.__call__`: the whole forward pass. It samples with the `sample` rng
  stream (gradient stopped: the discriminator's loss does not reach the generator through the
  sample). outputs: `mlm_logits` (B, P, V) float32 and `mlm_hidden` (B, P, E) of the generator
  at `masked_positions`, `sampled_ids` (B, P), `fake_input_ids` (B, L) (the discriminator's
  input), `replaced` (B, L) bool (a sample equal to the original token is *not* replaced),
  `discriminator_logits` (B, L) float32 and the discriminator's `sequence_output` (B, L, H).
* `ElectraForPreTraining.generate` / `.discriminate` (via `apply(..., method=...)`): each half
  alone.

`intermediates` names the discriminator's hidden states as `BertEncoder` does (`embeddings`,
`layer_1` ... `layer_N`) and the generator's as `generator_embeddings` (the shared embeddings
projected to its width) and `generator_layer_1` ...

Embedding sharing: the generator reuses the discriminator's whole embedding block (word,
position and segment tables and their LayerNorm), as the original ELECTRA code does. Their width
E is the discriminator's `embedding_size`: its hidden size for Base and Large, 128 for the
paper's Small (256 hidden), whose discriminator then projects them to its width
(`bert/embeddings_project`, a `BertEncoder` with factorised embeddings, so it still fine-tunes
with every BERT task). A generator whose width differs from E has its own projection
(`generator/embeddings_project`), and its MLM transform maps back to E before the tied decoder;
this is HF's layout too (each of its two models has its `embeddings_project`).

Parameter paths (the discriminator is BERT's, under `bert/`, so `init_from` of the fine-tuning
tasks takes it as is; there is no pooler, ELECTRA does not train one):

    bert/embeddings/...                         shared by generator and discriminator (E wide)
    bert/embeddings_project/{kernel,bias}       only when E != the discriminator's width
    bert/encoder/layer_i/...                    the discriminator
    discriminator_head/{dense,output}/{kernel,bias}
    generator/embeddings_project/{kernel,bias}  only when E != the generator's width
    generator/encoder/layer_i/...
    generator/mlm_head/{transform,transform_norm,output_bias}
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from tl_jax.models import bert, layers

# name -> (num_layers, hidden_size, num_heads, generator fraction, embedding_size).
# intermediate_size is 4 * hidden_size; embedding_size 0 is hidden_size. The generator has the
# discriminator's depth and `fraction` of its width, heads and MLP (the paper's Table 6: 1/4 for
# Small and Large, 1/3 for Base; the released ELECTRA-Small checkpoint instead has a generator as
# wide as its discriminator, generator size 1 in ELECTRA's README: `generator_fraction=1.0`);
# Small's embeddings are 128 wide.
SIZES = {
    "tiny": (2, 128, 2, 0.25, 0),
    "mini": (4, 256, 4, 0.25, 0),
    "small": (12, 256, 4, 0.25, 128),
    "base": (12, 768, 12, 1 / 3, 0),
    "large": (24, 1024, 16, 0.25, 0),
}


@dataclasses.dataclass(frozen=True)
class ElectraConfig:
    """The discriminator's `BertConfig` and the generator's shape (same vocabulary, positions,
    segments, dropout and dtype as the discriminator)."""

    discriminator: bert.BertConfig
    generator_hidden_size: int
    generator_num_heads: int
    generator_intermediate_size: int
    generator_num_layers: int

    def __post_init__(self):
        d = self.discriminator
        for name in ("generator_hidden_size", "generator_num_heads",
                     "generator_intermediate_size", "generator_num_layers"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ElectraConfig.{name} must be positive, got "
                                 f"{getattr(self, name)}")
        # A generator stronger than the discriminator makes the detection task too hard (the
        # paper, section 3.2: 1/4-1/2 of the discriminator's size works best).
        for gen, disc in (("generator_hidden_size", "hidden_size"),
                          ("generator_num_layers", "num_layers"),
                          ("generator_intermediate_size", "intermediate_size")):
            if getattr(self, gen) > getattr(d, disc):
                raise ValueError(
                    f"the generator is bigger than the discriminator: {gen}={getattr(self, gen)} "
                    f"> the discriminator's {disc}={getattr(d, disc)}. ELECTRA wants a smaller "
                    "generator (1/4-1/2 of the discriminator's width).")
        if self.generator_hidden_size % self.generator_num_heads:
            raise ValueError(f"generator_hidden_size={self.generator_hidden_size} is not "
                             f"divisible by generator_num_heads={self.generator_num_heads}")

    @classmethod
    def from_fraction(cls, discriminator: bert.BertConfig, fraction: float,
                      num_layers: int = 0) -> "ElectraConfig":
        """A generator `fraction` as wide as the discriminator (width, heads, MLP), with
        `num_layers` layers (0: the discriminator's depth)."""
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"generator fraction must be in (0, 1], got {fraction}; a "
                             "generator bigger than the discriminator is not ELECTRA.")
        d = discriminator
        heads = max(1, round(d.num_heads * fraction))
        hidden = max(heads, round(d.hidden_size * fraction))
        hidden -= hidden % heads  # a whole number of dimensions per head
        return cls(discriminator=d, generator_hidden_size=hidden, generator_num_heads=heads,
                   generator_intermediate_size=max(1, round(d.intermediate_size * fraction)),
                   generator_num_layers=num_layers or d.num_layers)

    @classmethod
    def from_size(cls, name: str, generator_fraction: float = 0.0,
                  generator_num_layers: int = 0, **overrides) -> "ElectraConfig":
        """A config from the size table; `overrides` go to the discriminator's `BertConfig`
        (`vocab_size` usually; `embedding_size` replaces the table's), `generator_fraction` 0
        takes the table's."""
        if name not in SIZES:
            raise ValueError(f"Unknown ELECTRA size {name!r}; known sizes: {list(SIZES)}")
        num_layers, hidden, heads, fraction, embedding_size = SIZES[name]
        fields = dict(vocab_size=30522, hidden_size=hidden, num_layers=num_layers,
                      num_heads=heads, intermediate_size=4 * hidden,
                      embedding_size=embedding_size)
        fields.update(overrides)
        return cls.from_fraction(bert.BertConfig(**fields), generator_fraction or fraction,
                                 generator_num_layers)

    @property
    def generator(self) -> bert.BertConfig:
        """The generator as a `BertConfig`: its layers, and the shared embeddings' width as its
        `embedding_size` (factorised when that is not its hidden size)."""
        d = self.discriminator
        return d.replace(
            hidden_size=self.generator_hidden_size, num_heads=self.generator_num_heads,
            intermediate_size=self.generator_intermediate_size,
            num_layers=self.generator_num_layers, adapter_size=0, lora_rank=0,
            embedding_size=d.embedding_width)


def replace_tokens(input_ids, masked_positions, masked_weights, masked_ids, sampled_ids):
    """Writes the samples into the masked positions; marks which tokens were really replaced.

    Args:
      input_ids: (B, L) the masked input ([MASK], random or kept tokens at masked positions).
      masked_positions, masked_weights, masked_ids: (B, P) where the masks are, 1.0 for a real
        prediction slot (0.0 pads the slot list; its position is ignored), the original tokens.
      sampled_ids: (B, P) the generator's samples.

    Returns:
      (fake_input_ids (B, L), replaced (B, L) bool). A position is replaced when it is masked and
      its sample differs from the original token, so a generator that guesses right makes an
      "original" label, as in the paper.
    """
    length = input_ids.shape[1]
    # (B, P, L) one-hot of each real slot's position: no scatter, so padded slots (position 0,
    # weight 0) cannot collide with a real one, and the batch axis stays sharded.
    hit = (masked_positions[..., None] == jnp.arange(length)) & (masked_weights[..., None] > 0)
    masked = hit.any(axis=1)  # (B, L)
    hit = hit.astype(input_ids.dtype)
    sampled_at = (hit * sampled_ids[..., None].astype(input_ids.dtype)).sum(axis=1)  # (B, L)
    original_at = (hit * masked_ids[..., None].astype(input_ids.dtype)).sum(axis=1)  # (B, L)
    fake = jnp.where(masked, sampled_at, input_ids)
    replaced = masked & (sampled_at != original_at)
    return fake, replaced


class ElectraGenerator(nn.Module):
    """The generator's layers and MLM head on top of the shared (already computed) embeddings."""

    config: ElectraConfig

    @nn.compact
    def __call__(self, embedded, attention_bias, masked_positions, attend, deterministic: bool):
        """embedded: (B, L, E) shared embeddings; attend: (..., E) -> (..., V) tied decoder."""
        g, d = self.config.generator, self.config.discriminator
        x = embedded
        if g.factorised:  # the shared embeddings are not as wide as the generator
            x = layers.dense(g.hidden_size, ("embed", None), g.initializer_range,
                             g.compute_dtype, "embeddings_project")(x)  # (B, L, Hg)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        hidden_states = bert.BertLayerStack(g, name="encoder")(x, attention_bias, deterministic)
        intermediates = {"generator_embeddings": x}
        for i, h in enumerate(hidden_states, start=1):
            intermediates[f"generator_layer_{i}"] = h
        index = jnp.asarray(masked_positions)[..., None]  # (B, P, 1)
        sequence = jnp.take_along_axis(hidden_states[-1], index, axis=1)  # (B, P, Hg)
        # BertMlmHead with the discriminator's config: the transform maps Hg -> E, the width
        # of the tied word embeddings.
        mlm_hidden, mlm_logits = bert.BertMlmHead(d, name="mlm_head")(sequence, attend)
        return {"mlm_hidden": mlm_hidden, "mlm_logits": mlm_logits}, intermediates


class ElectraDiscriminatorHead(nn.Module):
    """dense, activation, then one logit per token: "this token was replaced"."""

    config: bert.BertConfig

    @nn.compact
    def __call__(self, sequence):
        c = self.config
        h = layers.dense(c.hidden_size, ("embed", None), c.initializer_range, c.compute_dtype,
                         "dense")(sequence)
        h = layers.activation(c.hidden_act)(h)
        logits = layers.dense(1, ("embed", None), c.initializer_range, c.compute_dtype,
                              "output")(h)  # (B, L, 1)
        return logits[..., 0].astype(jnp.float32)  # (B, L)


class ElectraForPreTraining(nn.Module):
    """Generator + discriminator with shared embeddings; see the module docstring."""

    config: ElectraConfig
    temperature: float = 1.0  # of the generator's softmax when sampling

    def setup(self):
        self.bert = bert.BertEncoder(self.config.discriminator)
        self.generator = ElectraGenerator(self.config)
        self.discriminator_head = ElectraDiscriminatorHead(self.config.discriminator)

    def generate(self, input_ids, segment_ids, input_mask, masked_positions, deterministic=True):
        """The generator's MLM outputs at `masked_positions`: ({mlm_logits, mlm_hidden}, ...)."""
        # (B, 1, 1, L), as in BertEncoder: padded keys get MASK_VALUE.
        attention_bias = jnp.where(input_mask[:, None, None, :] > 0, 0.0,
                                   layers.MASK_VALUE).astype(jnp.float32)
        embedded = self.bert.embeddings(input_ids, segment_ids, deterministic)
        embedded = nn.with_logical_constraint(embedded, ("batch", "length", "embed"))
        return self.generator(embedded, attention_bias, masked_positions, self.bert.attend,
                              deterministic)

    def discriminate(self, input_ids, segment_ids, input_mask, deterministic=True):
        """The discriminator: ({sequence_output, discriminator_logits (B, L)}, intermediates)."""
        outputs, intermediates = self.bert(input_ids, segment_ids, input_mask,
                                           deterministic=deterministic)
        outputs["discriminator_logits"] = self.discriminator_head(outputs["sequence_output"])
        return outputs, intermediates

    def __call__(self, input_ids, segment_ids, input_mask, masked_positions, masked_ids,
                 masked_weights, deterministic=True):
        gen_outputs, gen_intermediates = self.generate(input_ids, segment_ids, input_mask,
                                                       masked_positions, deterministic)
        # The sample is discrete, so no gradient could pass it anyway; stop_gradient says so and
        # keeps the sampling's softmax out of the backward pass.
        logits = jax.lax.stop_gradient(gen_outputs["mlm_logits"]) / self.temperature
        sampled = jax.random.categorical(self.make_rng("sample"), logits, axis=-1)  # (B, P)
        sampled = sampled.astype(input_ids.dtype)
        fake, replaced = replace_tokens(input_ids, masked_positions, masked_weights, masked_ids,
                                        sampled)
        outputs, intermediates = self.discriminate(fake, segment_ids, input_mask, deterministic)
        outputs.update(gen_outputs, sampled_ids=sampled, fake_input_ids=fake, replaced=replaced)
        intermediates.update(gen_intermediates)
        return outputs, intermediates


def flops_per_example(config: ElectraConfig, seq_len: int, num_predictions: int) -> float:
    """Training FLOPs (3x forward) of one example: both encoders over every token (each with
    its embeddings_project, if any), the generator's MLM head at the predictions, the
    discriminator's head."""
    d, g = config.discriminator, config.generator
    h, e = d.hidden_size, d.embedding_width
    per_token = (bert.encoder_flops_per_token(d, seq_len) + bert.encoder_flops_per_token(g, seq_len)
                 + 3.0 * (2 * h * h + 2 * h))  # discriminator head
    per_prediction = 3.0 * (2 * g.hidden_size * e + 2 * e * d.vocab_size)
    return seq_len * per_token + num_predictions * per_prediction

"""ELECTRA pretraining: generator MLM + replaced-token detection (Clark et al., 2020).

The data is BERT pretraining's (`tl_jax/data/pretraining.py`: tokenizer, segment pairs, 15%
masking with the 80/10/10 rule); the segment pairs stay, the NSP labels are not used. Generator
and discriminator are trained together, in one step of the one trainer, on

    loss = generator MLM cross-entropy (mean over masked positions)
           + discriminator_weight * binary cross-entropy (mean over every real, non-pad token)

where the discriminator reads the batch with every masked position filled by a token sampled
from the generator's softmax (`tl_jax/models/electra.py`). A sampled token equal to the
original counts as "original". `discriminator_weight` is the paper's lambda = 50.

Metrics, each a (sum, count) pair: `mlm_loss`, `mlm_accuracy` (generator, at the masked
positions), `disc_loss`, `disc_accuracy` (over real tokens), `disc_precision` and `disc_recall`
of the "replaced" class, `disc_baseline_accuracy` (what always answering "original" scores:
the discriminator has learnt something only above it) and `replaced_fraction`. With no token
predicted "replaced" in a pass, `disc_precision` has no count and is logged as nan (the
trainer's "not measured", `train.average`), not 0; `disc_recall` likewise with no token replaced.
"""
from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import optax

from tl_jax import checkpoint, paths, warm_start
from tl_jax.data import pretraining
from tl_jax.models import electra
from tl_jax.tasks import bert_pretrain, held_out_metrics, masked_lm_normalizers, normalized


def electra_config_from(model_cfg, vocab_size: int) -> electra.ElectraConfig:
    """The `ElectraConfig` from `config.model` and the tokenizer's vocabulary size."""
    if model_cfg.vocab_size and model_cfg.vocab_size < vocab_size:
        raise ValueError(
            f"model.vocab_size={model_cfg.vocab_size} is smaller than the tokenizer's vocabulary "
            f"({vocab_size} tokens): ids >= {model_cfg.vocab_size} would index past the "
            "embedding table. Set model.vocab_size=0 to take the tokenizer's size.")
    return electra.ElectraConfig.from_size(
        model_cfg.size,
        generator_fraction=model_cfg.generator_fraction,
        generator_num_layers=model_cfg.generator_num_layers,
        vocab_size=model_cfg.vocab_size or vocab_size,
        # 0 keeps the size's (ELECTRA-Small's 128; the hidden size otherwise).
        **({"embedding_size": model_cfg.embedding_size} if model_cfg.embedding_size else {}),
        max_position_embeddings=model_cfg.max_position_embeddings,
        type_vocab_size=model_cfg.type_vocab_size,
        dropout_rate=model_cfg.dropout_rate,
        attention_dropout_rate=model_cfg.attention_dropout_rate,
        dtype=model_cfg.dtype,
    )


class Task:
    """The `electra` task (see `tl_jax/tasks/__init__.py` for the contract)."""

    progress_keys = ("mlm_accuracy", "disc_accuracy")
    summary_keys = ("eval/mlm_accuracy", "eval/disc_accuracy", "eval/disc_baseline_accuracy",
                    "eval/disc_precision", "eval/disc_recall")

    def __init__(self, config, workdir):
        self.config = config
        data_cfg, model_cfg = config.data, config.model
        # The model config first: a bad size or generator fails before the corpus is read, and
        # a dropout rate of 10 (for 10%) is named by its key, not as BertConfig's field.
        from tl_jax.tasks import downstream
        downstream.check_dropout_rates(model_cfg)
        shape = electra_config_from(model_cfg, 1)
        bert_pretrain.check_two_segments(shape.discriminator.type_vocab_size)
        weight = config.electra.discriminator_weight
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"electra.discriminator_weight={weight} must be a finite number "
                             ">= 0.")
        # Written so that NaN fails too; inf is allowed: it samples uniformly.
        if not config.electra.temperature > 0:
            raise ValueError(f"electra.temperature={config.electra.temperature} must be > 0.")
        # '~/runs/electra' or '$VAR/...': the shell expands neither in a config value.
        self.init_from = paths.expand(config.init_from)
        if checkpoint.resumes_with_tokenizer(workdir):
            # The checkpoint holds every weight, the workdir the tokenizer, and the shape is a
            # size name's: init_from, read only when the run started, may be gone.
            bert_pretrain.say_sources_gone("electra", config, workdir, False)
        elif self.init_from:
            warm_start.require_source(self.init_from)
            bert_pretrain.check_init_from_architecture(
                self.init_from, shape.discriminator, workdir,
                f" (model.size={model_cfg.size}); pick the size whose discriminator it is, "
                f"one of {sorted(electra.SIZES)}.")
            data_cfg = bert_pretrain.with_init_from_tokenizer(data_cfg, self.init_from, "electra",
                                                              workdir)
        self.data = pretraining.build_pretraining_data(
            data_cfg, model_cfg.max_position_embeddings, workdir, config.seed,
            process_index=jax.process_index(), process_count=jax.process_count(),
            progress=bool(config.train.progress) and jax.process_index() == 0)
        self.tokenizer = self.data.tokenizer
        self.model_config = electra_config_from(model_cfg, self.tokenizer.vocab_size)
        self.model = electra.ElectraForPreTraining(self.model_config,
                                                   temperature=config.electra.temperature)
        seq, preds = data_cfg.max_seq_length, data_cfg.max_predictions_per_seq
        self.flops_per_example = electra.flops_per_example(self.model_config, seq, preds)
        self.tokens_per_example = seq

    # -- data -------------------------------------------------------------------------------

    def example_batch(self, batch_size):
        return self.data.example_batch(batch_size)

    def train_batches(self):
        if not hasattr(self, "_train"):
            self._train = bert_pretrain.ValidatedBatches(self.data.train,
                                                         self.model_config.discriminator)
        return self._train

    def eval_batches(self):
        return self.data.eval_batches()

    def save(self, workdir):
        self.tokenizer.save(os.path.join(workdir, "tokenizer"))

    # -- model ------------------------------------------------------------------------------

    def _inputs(self, batch):
        return (batch["input_ids"], batch["segment_ids"], batch["input_mask"],
                batch["masked_positions"], batch["masked_ids"], batch["masked_weights"])

    def init_variables(self, rng, batch):
        return self.model.init({"params": rng, "dropout": rng, "sample": rng},
                               *self._inputs(batch), deterministic=True)

    def init_params(self, params, rng):
        """`init_from` (an ELECTRA workdir to continue, or a BERT one for the discriminator)."""
        del rng
        if not self.init_from:
            return params
        return warm_start.warm_start(params, self.init_from,
                                     self.model_config.discriminator)

    def loss_normalizers(self, batch):
        return electra_normalizers(batch)

    def loss_fn(self, params, batch, rng, train, normalizers=None):
        dropout_rng, sample_rng = jax.random.split(rng)
        outputs, _ = self.model.apply(
            {"params": params}, *self._inputs(batch), deterministic=not train,
            rngs={"dropout": dropout_rng, "sample": sample_rng})
        return electra_loss(outputs, batch, self.config.electra.discriminator_weight,
                            normalizers)

    @staticmethod
    def eval_metric_names(config) -> tuple[str, ...]:
        """`electra_loss`'s metrics (`tasks.eval_metric_names`)."""
        return held_out_metrics(config, (
            "mlm_loss", "mlm_accuracy", "disc_loss", "disc_accuracy", "disc_precision",
            "disc_recall", "disc_baseline_accuracy", "replaced_fraction"))


# The counts its means divide by under gradient accumulation (`task.loss_normalizers`).
electra_normalizers = masked_lm_normalizers


def electra_loss(outputs, batch, discriminator_weight: float, normalizers=None):
    """Generator MLM loss + discriminator_weight * replaced-token BCE; metrics as (sum, count).

    The MLM loss is plain cross-entropy on the generator's logits: they exist anyway for the
    sampling, so BERT's fused tied-softmax loss would only compute them a second time.
    `normalizers` (`electra_normalizers` of the whole batch, under gradient accumulation): the
    means divide by its counts instead of this batch's.
    """
    weights = batch["masked_weights"].astype(jnp.float32)  # (B, P)
    n_pred = weights.sum()
    mlm_logits = outputs["mlm_logits"]  # (B, P, V)
    mlm_ce = optax.softmax_cross_entropy_with_integer_labels(mlm_logits, batch["masked_ids"])
    mlm_loss = normalized((mlm_ce * weights).sum(), n_pred, normalizers, "predictions")
    mlm_correct = (jnp.argmax(mlm_logits, -1) == batch["masked_ids"]) * weights

    tokens = (batch["input_mask"] > 0).astype(jnp.float32)  # (B, L); pads are not scored
    n_tok = tokens.sum()
    labels = outputs["replaced"].astype(jnp.float32)  # (B, L)
    logits = outputs["discriminator_logits"]  # (B, L)
    bce = optax.sigmoid_binary_cross_entropy(logits, labels)
    disc_loss = normalized((bce * tokens).sum(), n_tok, normalizers, "tokens")
    predicted = (logits > 0).astype(jnp.float32)
    correct = (predicted == labels) * tokens
    true_pos = predicted * labels * tokens
    n_predicted, n_replaced = (predicted * tokens).sum(), (labels * tokens).sum()

    loss = mlm_loss + discriminator_weight * disc_loss
    metrics = dict(
        mlm_loss=((mlm_ce * weights).sum(), n_pred),
        mlm_accuracy=(mlm_correct.sum(), n_pred),
        disc_loss=((bce * tokens).sum(), n_tok),
        disc_accuracy=(correct.sum(), n_tok),
        disc_precision=(true_pos.sum(), n_predicted),
        disc_recall=(true_pos.sum(), n_replaced),
        disc_baseline_accuracy=(n_tok - n_replaced, n_tok),
        replaced_fraction=(n_replaced, n_tok),
    )
    return loss, metrics


"""BERT pretraining: masked LM (at the masked positions only) + next-sentence prediction."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from tl_jax import checkpoint, paths, warm_start
from tl_jax.data import pretraining
from tl_jax.models import bert, losses
from tl_jax.tasks import held_out_metrics, normalized


def bert_config_from(model_cfg, vocab_size: int, tokenizer=None) -> bert.BertConfig:
    """The model's BertConfig from `config.model` and the tokenizer's vocabulary size.

    `model.size` is a size name, or a Hugging Face BERT directory / tl_jax workdir whose
    architecture (not weights) is copied, vocabulary and position table included: continued
    pretraining of a checkpoint outside the size table (`model.size` = `init_from` = MiniLM).
    `model.embedding_size` > 0 factorises a size's embeddings (ALBERT, ELECTRA-Small).
    """
    embedding_size = model_cfg.get("embedding_size", 0)
    if model_cfg.size not in bert.SIZES:
        # A directory may be written '~/models/x' or '$TL_JAX_DATA_DIR/models/x' (see paths).
        size = paths.expand(model_cfg.size)
        if embedding_size:
            raise ValueError(
                f"model.embedding_size={embedding_size} applies to a size name; "
                f"model.size={model_cfg.size} copies its architecture, embedding width included "
                "(set model.embedding_size=0)")
        from tl_jax.tasks import downstream
        source = downstream.architecture(size, tokenizer)
        if model_cfg.vocab_size:
            source = source.replace(vocab_size=model_cfg.vocab_size)
        if source.vocab_size < vocab_size:
            raise ValueError(
                f"model.size={model_cfg.size} has a {source.vocab_size}-token embedding table, "
                f"smaller than the tokenizer's vocabulary ({vocab_size} tokens); use its "
                "tokenizer (data.tokenizer) or set model.vocab_size.")
        return source.replace(dropout_rate=model_cfg.dropout_rate,
                              attention_dropout_rate=model_cfg.attention_dropout_rate,
                              dtype=model_cfg.dtype)
    if model_cfg.vocab_size and model_cfg.vocab_size < vocab_size:
        raise ValueError(
            f"model.vocab_size={model_cfg.vocab_size} is smaller than the tokenizer's vocabulary "
            f"({vocab_size} tokens): ids >= {model_cfg.vocab_size} would index past the "
            "embedding table. Set model.vocab_size=0 to take the tokenizer's size.")
    return bert.BertConfig.from_size(
        model_cfg.size,
        vocab_size=model_cfg.vocab_size or vocab_size,
        embedding_size=embedding_size,
        max_position_embeddings=model_cfg.max_position_embeddings,
        type_vocab_size=model_cfg.type_vocab_size,
        dropout_rate=model_cfg.dropout_rate,
        attention_dropout_rate=model_cfg.attention_dropout_rate,
        dtype=model_cfg.dtype,
    )


def check_init_from_architecture(init_from: str, model_config: bert.BertConfig,
                                 workdir: str | None, remedy: str = "") -> None:
    """A Hugging Face `init_from` whose encoder differs from the model's in shape is refused by
    the warm start, after the corpus is read, a tokenizer made and the text tokenised (minutes
    on a large corpus): the same refusal, from its config.json alone, before any of that; so is
    a `tl_jax convert` weights folder's (its config.json is tl_jax's own, without HF's
    model_type). A run resuming in `workdir` takes no weights from init_from and is not
    checked; tl_jax workdirs are matched tensor by tensor later, as before."""
    from tl_jax.checkpoint import has_saved_step

    if not warm_start.is_hf_directory(init_from) or (workdir and has_saved_step(workdir)):
        return
    from tl_jax import interop
    from tl_jax.interop import bert as hf_bert

    if warm_start.is_tl_weights(init_from):
        source = warm_start.bert_config(init_from)
    else:
        source = interop.encoder_family_of(init_from).read_hf_config(init_from)
    # The comparison the warm start's loader (`interop.*.load_flat_params`) makes later.
    diff = hf_bert.architecture_differences(model_config, source)
    if diff:
        raise ValueError(f"init_from={init_from}: checkpoint architecture differs from the "
                         f"model's: {'; '.join(diff)}{remedy}")


def check_two_segments(type_vocab_size: int, model_size: str | None = None) -> None:
    """Pretraining instances are sentence pairs, `[CLS] A [SEP] B [SEP]` with B in segment 1,
    in every instance and under every data option (ELECTRA's data keeps the pairs, without
    the NSP labels): a model with one segment embedding fails at the first training step's
    batch check, after the corpus is read and tokenised. Said here instead, before that.
    `model_size`: the directory `model.size` names, whose segment table the model copies."""
    if type_vocab_size >= 2:
        return
    if model_size:
        where = (f"model.size={model_size} has type_vocab_size={type_vocab_size} (copied with "
                 "its architecture; model.type_vocab_size does not apply)")
    else:
        where = f"model.type_vocab_size={type_vocab_size}"
    raise ValueError(
        f"{where}: pretraining needs 2 segment ids, because every instance is a sentence pair "
        "`[CLS] A [SEP] B [SEP]` (next-sentence prediction) whose B has segment id 1. "
        + ("Pretrain from a size name instead." if model_size
           else "Set model.type_vocab_size=2."))


class ValidatedBatches:
    """Wraps a batch iterator and checks every batch against the model before it is used."""

    def __init__(self, iterator, model_config: bert.BertConfig):
        self.iterator = iterator
        self.model_config = model_config

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.iterator)
        bert.validate_inputs(self.model_config, batch["input_ids"], batch["segment_ids"],
                             batch["input_mask"])
        return batch

    def get_state(self):
        return self.iterator.get_state()

    def set_state(self, state):
        self.iterator.set_state(state)


def resumed_shape(model_cfg, workdir: str | None) -> bert.BertConfig | None:
    """The shape a resumed run built from a `model.size` directory (its checkpoint's
    resolved_model, this run's dropout and dtype on it), else None (a size name, which needs no
    file; a new run; a checkpoint without one). The directory, read for its architecture when
    the run started (continued pretraining: model.size = init_from), may be gone since; a
    changed model config is still refused by the trainer's comparison with the checkpoint."""
    from tl_jax.tasks import downstream

    if model_cfg.size in bert.SIZES or not checkpoint.resumes_with_tokenizer(workdir):
        return None
    kept = downstream.resumed_model(workdir)
    return bert.BertConfig(**kept).replace(
        dropout_rate=model_cfg.dropout_rate,
        attention_dropout_rate=model_cfg.attention_dropout_rate,
        dtype=model_cfg.dtype) if kept else None


def say_sources_gone(task: str, config, workdir: str, shape_kept: bool) -> None:
    """On a resume: one line for `init_from` if it is gone (the checkpoint holds every weight,
    the workdir the vocabulary), and one for a `model.size` directory that is, when it is
    another path (`warm_start.say_source_gone`)."""
    vocabulary = f"its vocabulary from {os.path.join(workdir, 'tokenizer')}"
    shape = "the model's shape from its resolved_model, " if shape_kept else ""
    init_from = paths.expand(config.init_from)
    warm_start.say_source_gone(task, "init_from", init_from, shape + vocabulary)
    size = paths.expand(config.model.size) if shape_kept else ""
    if size and size != init_from:
        warm_start.say_source_gone(task, "model.size", size, "the model's shape from its "
                                   "resolved_model")


def with_init_from_tokenizer(data_cfg, init_from: str, task: str, workdir: str | None = None):
    """`data_cfg`, with `data.tokenizer` set to `init_from`'s own when it is empty: a vocabulary
    trained afresh (on another corpus, say) would give the embedding rows taken over from
    `init_from` other tokens to stand for, without any shape to tell. An explicit
    `data.tokenizer` wins, with a warning when it is another vocabulary. An `init_from` without
    a tokenizer (weights a `tl_jax convert` took from a folder that had none) is an error when
    there is no `data.tokenizer`, for the same reason: raised before the corpus is read.

    A run resuming in `workdir` keeps the tokenizer it was trained with (see
    `pretraining._get_tokenizer`): `data_cfg` is returned as it is, and nothing is said about
    init_from's tokenizer, which is not used."""
    from tl_jax.data.tokenizer import Tokenizer
    from tl_jax.tasks import downstream

    if checkpoint.resumes_with_tokenizer(workdir):
        return data_cfg
    if data_cfg.tokenizer:
        downstream.warn_if_not_init_from_vocabulary(
            Tokenizer.load(paths.expand(data_cfg.tokenizer)), init_from, task)
        return data_cfg
    path = downstream.tokenizer_path(init_from)
    if not any(os.path.isfile(os.path.join(path, name))
               for name in ("tokenizer.json", "vocab.txt")):
        # Was: a vocabulary trained afresh, whose ids the warm-started embedding rows never saw.
        if downstream.has_no_tokenizer(init_from):
            raise downstream.no_tokenizer_error("init_from", init_from)
        Tokenizer.load(path)  # the loader's error: where the folder's tokenizer is
    print(f"[{task}] tokenizer of init_from: {path}", flush=True)
    data_cfg = ml_collections.ConfigDict(data_cfg.to_dict())
    data_cfg.tokenizer = path
    return data_cfg


class Task:
    """The `bert_pretrain` task (see `tl_jax/tasks/__init__.py` for the contract)."""

    progress_keys = ("mlm_accuracy", "nsp_accuracy")
    summary_keys = ("eval/mlm_accuracy", "eval/nsp_accuracy")

    def __init__(self, config, workdir):
        self.config = config
        data_cfg = config.data
        # The model config first, as electra does: a bad model.size (a typo, a missing
        # directory) or a dropout rate of 10 fails before the corpus is read and a tokenizer
        # trained, naming the key.
        from tl_jax.tasks import downstream
        downstream.check_dropout_rates(config.model)
        # A resumed run needs neither init_from nor a model.size directory: its checkpoint
        # holds the weights and its shape, the workdir its tokenizer.
        resuming = checkpoint.resumes_with_tokenizer(workdir)
        kept = resumed_shape(config.model, workdir)
        shape = kept or bert_config_from(config.model, 1)
        check_two_segments(shape.type_vocab_size,
                           None if config.model.size in bert.SIZES else config.model.size)
        if data_cfg.max_seq_length > config.model.max_position_embeddings:
            raise ValueError(
                f"data.max_seq_length={data_cfg.max_seq_length} is longer than the position "
                f"table (model.max_position_embeddings={config.model.max_position_embeddings}).")
        # '~/runs/bert' or '$TL_JAX_DATA_DIR/models/...': the shell expands neither in a value.
        self.init_from = paths.expand(config.init_from)
        if resuming:
            say_sources_gone("bert_pretrain", config, workdir, kept is not None)
        elif self.init_from:
            warm_start.require_source(self.init_from)
            check_init_from_architecture(
                self.init_from, shape, workdir,
                f". To take its architecture, set model.size={config.init_from}.")
            data_cfg = with_init_from_tokenizer(data_cfg, self.init_from, "bert_pretrain",
                                                workdir)
        self.data = pretraining.build_pretraining_data(
            data_cfg, config.model.max_position_embeddings, workdir, config.seed,
            process_index=jax.process_index(), process_count=jax.process_count(),
            progress=bool(config.train.progress) and jax.process_index() == 0)
        self.tokenizer = self.data.tokenizer
        self.model_config = kept or bert_config_from(config.model, self.tokenizer.vocab_size,
                                                     self.tokenizer)
        if data_cfg.max_seq_length > self.model_config.max_position_embeddings:
            raise ValueError(
                f"data.max_seq_length={data_cfg.max_seq_length} is longer than the position "
                f"table of model.size={config.model.size} "
                f"({self.model_config.max_position_embeddings}).")
        self.model = bert.BertForPreTraining(self.model_config)
        seq, preds = data_cfg.max_seq_length, data_cfg.max_predictions_per_seq
        self.flops_per_example = bert.flops_per_example(self.model_config, seq, preds)
        self.tokens_per_example = seq

    # -- data -------------------------------------------------------------------------------

    def example_batch(self, batch_size):
        seq, preds = self.config.data.max_seq_length, self.config.data.max_predictions_per_seq
        return dict(
            input_ids=np.zeros((batch_size, seq), np.int32),
            segment_ids=np.zeros((batch_size, seq), np.int32),
            input_mask=np.ones((batch_size, seq), np.int32),
            masked_positions=np.zeros((batch_size, preds), np.int32),
            masked_ids=np.zeros((batch_size, preds), np.int32),
            masked_weights=np.zeros((batch_size, preds), np.float32),
            nsp_labels=np.zeros((batch_size,), np.int32),
        )

    def train_batches(self):
        if not hasattr(self, "_train"):
            self._train = ValidatedBatches(self.data.train, self.model_config)
        return self._train

    def eval_batches(self):
        batches = self.data.eval_batches
        return batches() if callable(batches) else batches

    def save(self, workdir):
        import os
        self.tokenizer.save(os.path.join(workdir, "tokenizer"))

    # -- model ------------------------------------------------------------------------------

    def init_variables(self, rng, batch):
        return self.model.init(
            {"params": rng, "dropout": rng}, batch["input_ids"], batch["segment_ids"],
            batch["input_mask"], masked_positions=batch["masked_positions"], deterministic=True)

    def init_params(self, params, rng):
        del rng
        if not self.init_from:
            return params
        return warm_start.warm_start(params, self.init_from, self.model_config)

    def loss_normalizers(self, batch):
        return pretraining_normalizers(batch)

    def loss_fn(self, params, batch, rng, train, normalizers=None):
        outputs, _ = self.model.apply(
            {"params": params}, batch["input_ids"], batch["segment_ids"], batch["input_mask"],
            masked_positions=batch["masked_positions"], deterministic=not train,
            rngs={"dropout": rng})
        return pretraining_loss(outputs, batch, params, normalizers)

    @staticmethod
    def eval_metric_names(config) -> tuple[str, ...]:
        """`pretraining_loss`'s metrics (`tasks.eval_metric_names`)."""
        return held_out_metrics(config, ("mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy"))


def _real_rows(batch):
    """1 for rows with real tokens, 0 for rows that only pad an eval batch. (B,)"""
    return (batch["input_mask"].sum(-1) > 0).astype(jnp.float32)


def pretraining_normalizers(batch):
    """The counts the MLM and NSP means divide by: masked predictions and real rows (see
    `task.loss_normalizers` in `tl_jax/tasks/__init__.py`). The micro-batches of one step hold
    different numbers of masked predictions, so the mean of their means is not the batch's."""
    return dict(predictions=batch["masked_weights"].astype(jnp.float32).sum(),
                rows=_real_rows(batch).sum())


def pretraining_loss(outputs, batch, params, normalizers=None):
    """MLM cross-entropy over real predictions + NSP cross-entropy; metrics as (sum, count).

    The MLM loss goes through `losses.tied_softmax_cross_entropy` on `outputs["mlm_hidden"]`,
    the tied word embeddings and the output bias: the logits are made and consumed in one place
    with a hand-written gradient, instead of autodiff through `outputs["mlm_logits"]` (a bias
    broadcast, a scatter of the target term, a column sum and a (V, predictions) transpose;
    ~190 ms of a ~1.4 s BERT-mini step on 2 cores). Values and gradients are the same as
    optax's cross-entropy on `mlm_logits`; MLM accuracy counts the target's logit being the
    largest (an exact tie counts as correct).

    `normalizers` (`pretraining_normalizers` of the whole batch, under gradient accumulation):
    the means divide by its counts instead of this batch's.
    """
    weights = batch["masked_weights"].astype(jnp.float32)  # (B, P)
    n_pred = weights.sum()
    mlm_ce, mlm_correct = losses.tied_softmax_cross_entropy(
        outputs["mlm_hidden"], params["bert"]["embeddings"]["word_embeddings"]["embedding"],
        batch["masked_ids"], bias=params["mlm_head"]["output_bias"],
        chunk_elements=None, recompute=False)
    mlm_correct = mlm_correct * weights
    mlm_loss = normalized((mlm_ce * weights).sum(), n_pred, normalizers, "predictions")

    # Rows that only pad an eval batch have no real tokens; they do not count for NSP either.
    rows = _real_rows(batch)  # (B,)
    nsp_logits = outputs["nsp_logits"]  # (B, 2)
    nsp_ce = optax.softmax_cross_entropy_with_integer_labels(nsp_logits, batch["nsp_labels"])
    n_rows = rows.sum()
    nsp_loss = normalized((nsp_ce * rows).sum(), n_rows, normalizers, "rows")
    nsp_correct = (jnp.argmax(nsp_logits, -1) == batch["nsp_labels"]) * rows

    loss = mlm_loss + nsp_loss
    metrics = dict(
        mlm_loss=((mlm_ce * weights).sum(), n_pred),
        mlm_accuracy=(mlm_correct.sum(), n_pred),
        nsp_loss=((nsp_ce * rows).sum(), n_rows),
        nsp_accuracy=(nsp_correct.sum(), n_rows),
    )
    return loss, metrics

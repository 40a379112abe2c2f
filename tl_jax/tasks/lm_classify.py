"""ULMFiT-style classification with a GPT: a classifier head on a (domain-adapted) decoder LM.

The recipe (Howard & Ruder 2018, with GPT in place of the AWD-LSTM):
  1. pretrain a GPT on general text            (`configs/gpt_pretrain.py`)
  2. fine-tune the LM on the target domain      (the same config with `init_from` = step 1 and
                                                 `data.corpus` = the task's text)
  3. put a classifier head on it and fine-tune  (this task, `configs/gpt_finetune_classify.py`)

Each text is encoded as its BPE ids followed by `<|endoftext|>`; the head reads the state at
that last token (`model.pooling="last"`, which under causal attention has seen the whole text),
the mean over the text's states (`"mean"`), or ULMFiT's concat pooling (`"concat"`, section 3.3:
`[h_T, maxpool(H), meanpool(H)]` over the text's states, as fastai's `masked_concat_pool`).
Sequences are right-padded: under causal attention padding after the text cannot change it.
The head itself is one linear layer (after dropout), not ULMFiT's two linear blocks with batch
norm.

The optimizer comes from `config.transfer` (`tl_jax/optim/transfer.py`): the layer groups are
the embeddings (`wte`, `wpe`), each block `h_<i>` and the head (classifier + final LayerNorm), so
ULMFiT's discriminative learning rates (`discriminative_decay=2.6`), slanted triangular schedule
(`schedule="stlr"`) and gradual unfreezing (`strategy="gradual_unfreezing"`) apply as they are.

Metrics as in `classify` (its `decode` and `score`): loss/accuracy in the step; accuracy, macro
F1 and MCC on the whole eval set after each eval pass, with predictions in
`WORKDIR/predictions/eval_step_N.jsonl`. `tl_jax predict` applies a finished run to a new file
(`Task.for_prediction`).
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from tl_jax import checkpoint, paths, warm_start
from tl_jax.data import bpe, features, readers
from tl_jax.models import gpt
from tl_jax.optim import optimizers, transfer
from tl_jax.tasks import classify, clm, downstream

POOLINGS = ("last", "mean", "concat")


class GPTClassifier(nn.Module):
    """GPT + pooling + dropout + linear head. Returns `({"logits", "pooled"}, intermediates)`."""

    config: gpt.GPTConfig
    num_labels: int
    pooling: str = "last"  # last | mean | concat (ULMFiT: [last, max, mean])
    classifier_dropout: float = 0.1

    @nn.compact
    def __call__(self, tokens, lengths, train: bool = False):
        if self.pooling not in POOLINGS:
            raise ValueError(f"GPTClassifier: pooling={self.pooling!r}; expected last, mean or "
                             "concat")
        length = tokens.shape[1]
        key_mask = jnp.arange(length)[None, :] < lengths[:, None]  # (B, T)
        outputs, intermediates = gpt.GPT(self.config, name="gpt")(
            tokens, key_mask=key_mask, train=train, logits=False)
        hidden = outputs["hidden"]  # (B, T, E)
        last_index = jnp.maximum(lengths - 1, 0)[:, None, None]  # (B, 1, 1)
        last = jnp.take_along_axis(hidden, last_index, axis=1)[:, 0]  # (B, E)
        weights = key_mask.astype(hidden.dtype)[..., None]  # (B, T, 1)
        mean = (hidden * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)  # (B, E)
        if self.pooling == "last":
            pooled = last
        elif self.pooling == "mean":
            pooled = mean
        else:
            # Max over the text's states only (padding excluded); a row with no text (an eval
            # padding row, length 0) gets 0 rather than the float minimum.
            masked = jnp.where(key_mask[..., None], hidden, jnp.finfo(hidden.dtype).min)
            maxed = jnp.where(lengths[:, None] > 0, masked.max(1), 0.0)  # (B, E)
            pooled = jnp.concatenate([last, maxed, mean], axis=-1)  # (B, 3E)
        pooled = nn.Dropout(self.classifier_dropout)(pooled, deterministic=not train)
        logits = nn.Dense(
            self.num_labels,
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.normal(self.config.initializer_range), ("embed", None)),
            name="head",
        )(pooled)
        return {"logits": logits.astype(jnp.float32), "pooled": pooled}, intermediates


def encode(tokenizer: bpe.BPETokenizer, records, label_map: dict, max_len: int,
           truncated: list | None = None) -> dict:
    """Arrays for the model: ids + EOS (texts cut to `max_len - 1` ids), lengths and labels.

    A label None (an unlabelled record, `tl_jax predict`) is `features.IGNORE`. The index of each
    record that had to be cut is appended to `truncated` when given.
    """
    ids = tokenizer.encode_batch([r["text"] for r in records])
    tokens = np.zeros((len(records), max_len), np.int32)
    lengths = np.zeros(len(records), np.int32)
    for i, row in enumerate(ids):
        if truncated is not None and len(row) > max_len - 1:
            truncated.append(i)
        row = row[:max_len - 1] + [tokenizer.eos_id]
        tokens[i, :len(row)] = row
        lengths[i] = len(row)
    labels = np.array([features.IGNORE if r["label"] is None else label_map[r["label"]]
                       for r in records], np.int32)
    return dict(input_ids=tokens, lengths=lengths, labels=labels)


def resolve_model(config, train_texts, resumed_tokenizer: str = "",
                  resumed_model: dict | None = None):
    """(tokenizer, GPTConfig) for `config.init_from`: a tl_jax LM workdir, a Hugging Face GPT-2
    directory, or "" for a model from scratch of `config.model.size`. `resumed_tokenizer`: the
    tokenizer a resumed run saved in its workdir, which wins over `data.tokenizer`;
    `resumed_model`: the shape it built (`downstream.resumed_model`), which wins over
    `init_from` and `model`, so that a resume reads no init_from (moved or deleted since, it
    stopped the resume with "does not exist"; the trainer still refuses a changed model config).
    `train_texts` (a BPE is trained on them) is read only with neither `init_from` nor a
    tokenizer: the task resolves the others before reading its files."""
    init_from, m, d = paths.expand(config.init_from), config.model, config.data
    tokenizer_dir = resumed_tokenizer or d.tokenizer
    if resumed_tokenizer and resumed_model:
        # The checkpoint holds every weight: this run's dropout and dtype on the run's shape.
        tokenizer = bpe.BPETokenizer.load(resumed_tokenizer)
        model_config = gpt.GPTConfig(**{
            **resumed_model, "dropout_rate": m.dropout_rate,
            "attention_dropout_rate": m.attention_dropout_rate, "dtype": m.dtype})
        warm_start.say_source_gone("lm_classify", "init_from", init_from,
                                   "the GPT's shape from its resolved_model, its vocabulary "
                                   f"from {resumed_tokenizer}")
    elif init_from and warm_start.is_tl_workdir(init_from):
        run = checkpoint.load_run_config(init_from)
        if run.get("task") != "clm":
            raise ValueError(
                f"init_from={init_from} was trained with task={run.get('task')!r}; lm_classify "
                "starts from a 'clm' (GPT language model) workdir or a Hugging Face GPT-2 "
                "directory (for a BERT-style encoder, use configs/finetune_classify.py)")
        saved = run.get("model") or {}
        tokenizer = bpe.BPETokenizer.load(tokenizer_dir or os.path.join(init_from, "tokenizer"))
        # The LM's own shape (its size and any shape fields it set), this run's dropout/dtype.
        model_config = clm.gpt_config_from(ml_collections.ConfigDict({
            **saved, "dropout_rate": m.dropout_rate,
            "attention_dropout_rate": m.attention_dropout_rate, "dtype": m.dtype}),
            tokenizer.vocab_size)
    elif init_from and warm_start.is_hf_directory(init_from):
        from tl_jax.interop import gpt2
        model_config = gpt.GPTConfig(**{
            **gpt2.load_config(init_from).__dict__, "dropout_rate": m.dropout_rate,
            "attention_dropout_rate": m.attention_dropout_rate, "dtype": m.dtype})
        tokenizer = bpe.BPETokenizer.load(tokenizer_dir or init_from)
    elif init_from:
        warm_start.require_source(init_from)
        raise warm_start.WarmStartError(
            f"init_from={init_from!r} is neither a tl_jax workdir (with checkpoints/) nor a "
            "Hugging Face GPT-2 directory (with config.json).")
    else:
        tokenizer = (bpe.BPETokenizer.load(tokenizer_dir) if tokenizer_dir else
                     bpe.BPETokenizer.train(train_texts, vocab_size=d.tokenizer_vocab_size,
                                            progress=bool(config.train.progress)
                                            and jax.process_index() == 0))
        model_config = clm.gpt_config_from(m, tokenizer.vocab_size)
    if init_from and d.tokenizer and not resumed_tokenizer:
        # As the clm task says: the LM's embedding rows stand for its own vocabulary's tokens.
        source = clm.init_from_tokenizer(init_from)
        if source and (bpe.BPETokenizer.load(source).hf_tokenizer.get_vocab()
                       != tokenizer.hf_tokenizer.get_vocab()):
            print(f"[lm_classify] warning: data.tokenizer={d.tokenizer!r} is not the vocabulary "
                  f"init_from's weights were trained with ({source}): embedding rows it takes "
                  "over will stand for other tokens.", flush=True)
    if tokenizer.vocab_size > model_config.vocab_size:
        raise ValueError(f"tokenizer {tokenizer.source} has {tokenizer.vocab_size} tokens but the "
                         f"model's vocab_size is {model_config.vocab_size}")
    if d.max_seq_length > model_config.max_len:
        raise ValueError(f"data.max_seq_length={d.max_seq_length} exceeds the model's max_len "
                         f"{model_config.max_len}")
    return tokenizer, model_config


def of_run(workdir: str, resolved_model: dict | None):
    """(tokenizer, GPTConfig) of a finished run in `workdir` (`tl_jax predict`): its saved
    tokenizer and the shape it built (`resolved_model` of its checkpoint's config); nothing is
    read from `init_from` (the checkpoint has it all)."""
    if not resolved_model:
        raise checkpoint.CheckpointError(
            f"the checkpoint of {workdir} does not record the model shape it was trained with "
            "(resolved_model); retrain it with this version of tl_jax")
    tokenizer = bpe.BPETokenizer.load(os.path.join(workdir, "tokenizer"))
    return tokenizer, gpt.GPTConfig(**resolved_model)


class Task(downstream.EvalPredictions):
    """The `lm_classify` task (contract: `tl_jax/tasks/__init__.py`)."""

    progress_keys = ("accuracy",)
    summary_keys = ("eval/accuracy", "eval/f1_macro", "eval/mcc")

    def __init__(self, config, workdir):
        self.config, d = config, config.data
        if config.model.pooling not in POOLINGS:  # before reading data or a tokenizer
            raise ValueError(f"lm_classify: model.pooling={config.model.pooling!r}; expected "
                             "last, mean or concat")
        transfer.check_config(config.transfer, config.optimizer)
        # Before any file is read, as the encoder tasks: a negative example cap would keep all
        # records but the last (records[:-1]), a dropout rate of 10 train on zeros.
        downstream.check_data_sizes(d)
        downstream.check_dropout_rates(config.model)
        if d.max_seq_length < 2:
            # 0 failed with a numpy broadcast error; 1 kept only <|endoftext|> of every text, so
            # the classifier never saw a word of it.
            raise ValueError(f"data.max_seq_length={d.max_seq_length} is too short: a text "
                             "needs at least one BPE token and <|endoftext|> (>= 2)")
        if not config.init_from and not d.tokenizer:  # a BPE is to be trained on the task's text
            clm.check_tokenizer_vocab_size(d)
        t = config.transfer
        if t.adapter_size or t.lora_rank:
            raise ValueError("transfer.adapter_size / transfer.lora_rank are not supported for "
                             "the GPT classifier (lm_classify); set them to 0")

        # A resumed run keeps the vocabulary it started with, whatever data.tokenizer says now
        # (the config is not changed: the resume would report the change as the user's).
        saved_tok = os.path.join(workdir, "tokenizer") if workdir else ""
        if not (saved_tok and os.path.isdir(saved_tok) and checkpoint.has_saved_step(workdir)):
            saved_tok = ""
        # The model, unless a BPE is to be trained on the texts, before the files are read: an
        # init_from of another task, or a max_seq_length beyond its positions, was named only
        # after the whole training file had been read.
        resolved = None
        kept = downstream.resumed_model(workdir) if saved_tok else None
        if config.init_from or d.tokenizer or saved_tok:
            resolved = resolve_model(config, None, saved_tok, kept)

        def read(spec, limit):
            records = readers.read_records(spec, "classification",
                                           text_field=d.text_field, label_field=d.label_field)
            return records[:limit] if limit else records

        self.train_records = read(d.train_file, d.max_train_examples)
        self.eval_records = read(d.eval_file, d.max_eval_examples)
        # As the files' labels: data.labels=0,1 arrives as numbers, the files give "0" and "1".
        labels = [readers.label_text(label) for label in d.labels] or sorted(
            {r["label"] for r in self.train_records})
        downstream.check_labels(labels, bool(d.labels), [
            (d.train_file, self.train_records), (d.eval_file, self.eval_records)])
        downstream.check_positive_label(d.positive_label, labels)
        if not d.labels:
            downstream.note_rare_labels(d.train_file, self.train_records, config.task)
        if resolved is None:  # a BPE trained on the training texts
            resolved = resolve_model(config, [r["text"] for r in self.train_records], saved_tok,
                                     kept)
        self._build(*resolved, labels)
        cut_train, cut_eval = [], []
        self.train_arrays = self.encode(self.train_records, cut_train)
        self.eval_arrays = self.encode(self.eval_records, cut_eval)
        downstream.note_truncated(config, cut_train, len(self.train_records), "training")
        downstream.note_truncated(config, cut_eval, len(self.eval_records), "eval")
        self.steps_per_epoch = downstream.fit_schedule(config, len(self.train_records))

    def _build(self, tokenizer, model_config, labels):
        """The classifier over a GPT of `model_config` with one output per label (training and
        `for_prediction`)."""
        self.tokenizer, self.model_config = tokenizer, model_config
        self.labels = list(labels)
        self.label_map = {label: i for i, label in enumerate(self.labels)}
        self.model = GPTClassifier(model_config, len(self.labels),
                                   pooling=self.config.model.pooling,
                                   classifier_dropout=self.config.model.classifier_dropout)
        seq = self.config.data.max_seq_length
        # The classifier reads the hidden states; the vocabulary projection never runs.
        self.flops_per_example = model_config.flops_per_token(seq, logits=False) * seq
        self.tokens_per_example = seq

    def encode(self, records, truncated=None):
        return encode(self.tokenizer, records, self.label_map, self.config.data.max_seq_length,
                      truncated)

    @classmethod
    def for_prediction(cls, config, run_model, labels, records, truncated=None):
        """The task of a finished run with `records` as its eval set (`tl_jax predict`), as
        `downstream.EncoderTask.for_prediction`: `run_model` is `of_run`'s (tokenizer,
        GPTConfig); no training data is read."""
        task = cls.__new__(cls)
        task.config = config
        task._build(*run_model, labels)
        task.train_records, task.eval_records = [], records
        task.eval_arrays = task.encode(records, truncated)
        task.steps_per_epoch = None  # nothing to train: see `make_optimizer`
        return task

    # -- data -------------------------------------------------------------------------------

    def example_batch(self, batch_size):
        seq = self.config.data.max_seq_length
        return dict(input_ids=np.zeros((batch_size, seq), np.int32),
                    lengths=np.ones((batch_size,), np.int32),
                    labels=np.zeros((batch_size,), np.int32))

    def train_batches(self):
        if not hasattr(self, "_train"):
            self._train = downstream.EpochBatches(self.train_arrays, self.config.data.batch_size,
                                                  self.config.seed)
        return self._train

    def eval_batches(self):
        return downstream.eval_batches(self.eval_arrays, self.config.data.batch_size)

    def save(self, workdir):
        downstream.write_labels(workdir, self.labels)  # first: it may refuse the workdir
        self.tokenizer.save(os.path.join(workdir, "tokenizer"))

    # -- model ------------------------------------------------------------------------------

    def init_variables(self, rng, batch):
        return self.model.init({"params": rng, "dropout": rng}, batch["input_ids"],
                               batch["lengths"])

    def init_params(self, params, rng):
        """Loads the LM from `init_from` into `gpt/`; the head (and the top
        `transfer.reinit_top_k` blocks) keep their fresh initialisation."""
        del rng
        fresh = params
        if self.config.init_from:
            params = clm.load_gpt_weights(params, self.config.init_from, self.model_config,
                                          prefix="gpt/")
        t = self.config.transfer
        return transfer.reinit_top_layers(params, fresh, t.reinit_top_k, t.layer_pattern)

    def make_optimizer(self, total_steps):
        """ULMFiT's tools from `config.transfer`: discriminative learning rates, slanted
        triangular schedule, gradual unfreezing / chain-thaw over the blocks `gpt/h_<i>`."""
        if self.steps_per_epoch is None:  # `for_prediction`: the trainer only takes the shapes
            return optimizers.make_optimizer(self.config.optimizer, total_steps)
        return transfer.make_task_optimizer(self, self.config, total_steps, self.steps_per_epoch)

    def _logits(self, params, batch, rng, train):
        outputs, _ = self.model.apply({"params": params}, batch["input_ids"], batch["lengths"],
                                      train=train, rngs={"dropout": rng})
        return outputs["logits"]  # (B, C)

    def loss_fn(self, params, batch, rng, train):
        logits = self._logits(params, batch, rng, train)
        # Eval padding rows have length 0; every training row has its EOS at least, so
        # accumulated micro-batches count the same rows: no `loss_normalizers` needed.
        weights = (batch["lengths"] > 0).astype(jnp.float32)
        ce_sum, n = downstream.weighted_cross_entropy(logits, batch["labels"], weights)
        correct = ((jnp.argmax(logits, -1) == batch["labels"]) * weights).sum()
        return ce_sum / jnp.maximum(n, 1.0), dict(loss=(ce_sum, n), accuracy=(correct, n))

    def predict_fn(self, params, batch):
        logits = self._logits(params, batch, jax.random.PRNGKey(0), False)
        return dict(probs=jax.nn.softmax(logits, -1), row=batch["row"])

    # -- decoding, scoring and writing the eval set's predictions (eval and `tl_jax predict`) --
    # The same outputs, labels and metrics as the BERT classifier's; only the rows differ (no
    # second text).

    decode = classify.Task.decode
    score = classify.Task.score
    eval_metric_names = staticmethod(classify.Task.eval_metric_names)

    def write_predictions(self, path, predictions) -> None:
        """jsonl: text, gold (None when unlabelled), predicted and probabilities per record."""
        records = self.eval_records
        downstream.write_jsonl(path, (
            {"row": int(r), "text": records[r]["text"], "gold": records[r]["label"],
             "predicted": p,
             "probs": {label: round(float(x), 5) for label, x in zip(self.labels, pr)}}
            for r, p, pr in zip(predictions["rows"], predictions["predicted"],
                                predictions["probs"])))

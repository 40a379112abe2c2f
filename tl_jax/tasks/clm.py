"""Causal language modelling (GPT pretraining, and ULMFiT's target-domain LM fine-tuning).

The target-domain stage is plain continued training with `config.optimizer` (warmup + decay,
one learning rate for every weight): ULMFiT's discriminative learning rates and slanted
triangular schedule are applied in the classifier stage (`lm_classify`, `config.transfer`) only,
whereas the paper uses them for LM fine-tuning too.

Next-token cross-entropy over packed windows of the corpus (`tl_jax.data.clm`), with token
accuracy, and held-out perplexity `exp(total NLL / total tokens)` computed exactly over the
eval batches (not an average of per-batch perplexities). Those are the first
`train.eval_batches` batches of the held-out windows, in corpus order: the start of the
held-out documents, not all of them, unless `train.eval_batches=0`. Eval batches with no token
to predict have no perplexity: it is NaN (with a note), as the step metrics nothing counted
towards are.
"""
from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tl_jax import checkpoint, paths, warm_start
from tl_jax.progress import phase
from tl_jax.data import bpe, clm as clm_data, tokenized
from tl_jax.models import gpt, losses
from tl_jax.tasks import held_out_metrics, normalized, note_undefined


def init_from_tokenizer(init_from: str) -> str:
    """The tokenizer that belongs to `init_from`'s weights ("" if it has none): a tl_jax
    workdir's `tokenizer/`, or a Hugging Face directory's vocab.json + merges.txt /
    tokenizer.json."""
    init_from = paths.expand(init_from or "")
    if not init_from:
        return ""
    if warm_start.is_tl_workdir(init_from):
        saved = os.path.join(init_from, "tokenizer")
        return saved if os.path.isdir(saved) else ""
    if warm_start.is_hf_directory(init_from):
        has_bpe = all(os.path.exists(os.path.join(init_from, f))
                      for f in ("vocab.json", "merges.txt"))
        if has_bpe or os.path.exists(os.path.join(init_from, "tokenizer.json")):
            return init_from
    return ""


def check_tokenizer_vocab_size(data_cfg) -> None:
    """`data.tokenizer_vocab_size` of a byte-level BPE to be trained, named by its key (the
    trainer's "vocab_size=100 must exceed ..." named none)."""
    size = data_cfg.tokenizer_vocab_size
    if size < 257:
        raise ValueError(f"data.tokenizer_vocab_size={size} is too small for a byte-level BPE "
                         f"vocabulary (the 256 byte symbols, {bpe.EOS} and the merges); "
                         "GPT-2's is 50257")


def load_tokenizer(data_cfg, workdir: str | None, documents=None,
                   init_from: str = "") -> bpe.BPETokenizer | None:
    """The run's tokenizer: the one saved in the workdir (a resumed run), the one named by
    `data.tokenizer`, the one `init_from`'s weights were trained with (a new vocabulary would
    give the warm-started embedding rows other meanings), or a new byte-level BPE trained on
    `documents`. With `documents=None`, None where one would be trained (after checking
    `data.tokenizer_vocab_size`): the task asks before reading the corpus, which is long."""
    saved = os.path.join(workdir, "tokenizer") if workdir else None
    if saved and os.path.isdir(saved) and checkpoint.has_saved_step(workdir):
        # Only a run that resumes keeps the vocabulary it saved: one left by a run that stopped
        # before its first checkpoint would silently override data.tokenizer / init_from.
        tokenizer = bpe.BPETokenizer.load(saved)
        print(f"[clm] resuming with the tokenizer saved in {saved} ({tokenizer.vocab_size} "
              "tokens); data.tokenizer, data.tokenizer_vocab_size and init_from's tokenizer "
              "apply to new runs only", flush=True)
        return tokenizer
    weights = paths.expand(init_from or "")
    # Another model family's weights are named as such here, before their tokenizer is read (a
    # BERT directory's WordPiece tokenizer.json only failed for lacking <|endoftext|>).
    if weights and warm_start.is_tl_workdir(weights) and os.path.isfile(
            os.path.join(weights, "config.json")):
        task = checkpoint.load_run_config(weights).get("task")
        if task not in ("clm", "lm_classify"):
            raise ValueError(f"init_from={init_from!r} was trained with task={task!r}; a clm "
                             "run warm-starts from a 'clm' or 'lm_classify' workdir or a "
                             "GPT-2-layout directory")
    elif weights and warm_start.is_hf_directory(weights):
        config_file = os.path.join(weights, "config.json")
        try:
            with open(config_file) as f:
                meta = json.load(f)
            # A `tl_jax convert` weights directory names its family instead ("bert", "gpt2").
            model_type = (meta.get("family") if warm_start.is_tl_weights(weights)
                          else None) or meta.get("model_type", "gpt2")
        except (ValueError, AttributeError):
            model_type = "gpt2"  # the weight loader names what is wrong with the file
        if model_type != "gpt2":
            raise ValueError(f"init_from={init_from!r} holds a {model_type!r} model "
                             f"({config_file}); a clm run warm-starts from GPT-2-layout weights "
                             "or a 'clm' / 'lm_classify' workdir")
    source = init_from_tokenizer(init_from)
    if weights and not source and not data_cfg.tokenizer and (
            warm_start.is_tl_workdir(weights) or warm_start.is_hf_directory(weights)):
        # A vocabulary trained here would give the warm-started embedding rows other tokens
        # (silently, when it happens to have as many tokens as the checkpoint).
        raise bpe.BPEError(
            f"init_from={init_from!r} has no tokenizer (vocab.json + merges.txt or "
            "tokenizer.json): name the one its weights were trained with as data.tokenizer")
    if data_cfg.tokenizer:
        tokenizer = bpe.BPETokenizer.load(paths.expand(data_cfg.tokenizer))
        if source and (bpe.BPETokenizer.load(source).hf_tokenizer.get_vocab()
                       != tokenizer.hf_tokenizer.get_vocab()):
            print(f"[clm] warning: data.tokenizer={data_cfg.tokenizer!r} is not the vocabulary "
                  f"init_from's weights were trained with ({source}): embedding rows it takes "
                  "over will stand for other tokens.", flush=True)
        return tokenizer
    if source:
        print(f"[clm] tokenizer of init_from: {source}", flush=True)
        return bpe.BPETokenizer.load(source)
    if documents is None:
        check_tokenizer_vocab_size(data_cfg)
        return None
    return train_tokenizer(data_cfg, documents)


def train_tokenizer(data_cfg, documents, progress: bool = True) -> bpe.BPETokenizer:
    """A byte-level BPE of `data.tokenizer_vocab_size` tokens trained on `documents`; the
    trainer's own progress bars on a terminal when `progress`."""
    check_tokenizer_vocab_size(data_cfg)
    return bpe.BPETokenizer.train(
        (unit for doc in documents for unit in doc), vocab_size=data_cfg.tokenizer_vocab_size,
        progress=progress)


# `config.model` fields that override the size table's shape when set (non-zero).
SHAPE_FIELDS = ("num_layers", "embed_dim", "num_heads", "mlp_dim", "max_len")


def gpt_config_from(model_cfg, vocab_size: int) -> gpt.GPTConfig:
    """The GPTConfig from `config.model` and the tokenizer's vocabulary size: `model.size`'s
    shape, with any of `SHAPE_FIELDS` that is set taking its place (configs written before a
    field existed simply lack it)."""
    if model_cfg.vocab_size and model_cfg.vocab_size < vocab_size:
        raise ValueError(
            f"model.vocab_size={model_cfg.vocab_size} is smaller than the tokenizer's vocabulary "
            f"({vocab_size}); set model.vocab_size=0 to take the tokenizer's size.")
    overrides = dict(
        dropout_rate=model_cfg.dropout_rate,
        attention_dropout_rate=model_cfg.attention_dropout_rate,
        dtype=model_cfg.dtype,
    )
    for field in SHAPE_FIELDS:
        if model_cfg.get(field):
            overrides[field] = model_cfg.get(field)
    if model_cfg.get("embed_dim") and not model_cfg.get("mlp_dim"):
        overrides["mlp_dim"] = 4 * model_cfg.embed_dim
    return gpt.gpt_config(model_cfg.size, model_cfg.vocab_size or vocab_size, **overrides)


def check_vocab_fits(init_from: str, source: gpt.GPTConfig, model_config: gpt.GPTConfig) -> None:
    """A GPT-2 directory's embedding rows must all find a row in the model."""
    if source.vocab_size > model_config.vocab_size:
        raise ValueError(
            f"init_from={init_from}: its vocabulary ({source.vocab_size}) is larger than "
            f"the model's ({model_config.vocab_size}); use its tokenizer as data.tokenizer")


def no_tensor_matches(init_from: str, source: gpt.GPTConfig,
                      model_config: gpt.GPTConfig) -> warm_start.WarmStartError:
    """The error for a checkpoint of which no tensor fits the model, with the shape to give."""
    return warm_start.WarmStartError(
        f"init_from={init_from!r}: no tensor matched this model by name and shape (the "
        f"checkpoint has {source.num_layers} layers of width {source.embed_dim} "
        f"and {source.max_len} positions; the model {model_config.num_layers} of "
        f"{model_config.embed_dim} and {model_config.max_len}); pick the matching size, "
        f"or give its shape: --config.model.num_layers={source.num_layers} "
        f"--config.model.embed_dim={source.embed_dim} "
        f"--config.model.num_heads={source.num_heads} "
        f"--config.model.mlp_dim={source.mlp_dim} "
        f"--config.model.max_len={source.max_len}")


def workdir_shape(workdir: str) -> gpt.GPTConfig | None:
    """The GPT shape a tl_jax workdir's checkpoints hold, from its configs alone: the newest
    checkpoint's `resolved_model`, else (a `clm` run) the model config.json names. None when
    neither tells (no checkpoint, an unreadable config): the weights' loader then says why."""
    try:
        steps = checkpoint.saved_steps(workdir)
        resolved = checkpoint.config_from_workdir(workdir, steps[-1]).get("resolved_model")
        if resolved:
            return gpt.GPTConfig(**resolved)
    except Exception:  # noqa: BLE001 - the warm start itself reports what is wrong
        return None
    try:
        run = checkpoint.load_run_config(workdir)
        if run.get("task") == "clm":  # an lm_classify run's shape came from its own init_from
            return gpt_config_from(ml_collections.ConfigDict(run["model"]), 1)
    except Exception:  # noqa: BLE001 - as above
        pass
    return None


def check_init_from_shape(init_from: str, model_config: gpt.GPTConfig) -> None:
    """What `load_gpt_weights` would refuse `init_from` for, found from its config alone (cheap):
    the task asks before the corpus is read and tokenised (minutes on a large corpus). Every GPT
    tensor has the width in its shape and the final LayerNorm matches at any depth, so a width
    other than the model's is exactly "no tensor matched"; a GPT-2 directory's vocabulary must
    also fit. Nothing else is refused here."""
    init_from = paths.expand(init_from or "")
    if not init_from:
        return
    if warm_start.is_hf_directory(init_from):
        from tl_jax.interop import gpt2
        try:
            source = gpt2.load_config(init_from)
        except Exception:  # noqa: BLE001 - the weights' loader names what is wrong, as before
            return
        check_vocab_fits(init_from, source, model_config)
    elif warm_start.is_tl_workdir(init_from):
        source = workdir_shape(init_from)
        if source is None:
            return
    else:
        return
    if source.embed_dim != model_config.embed_dim:
        raise no_tensor_matches(init_from, source, model_config)


def load_gpt_weights(params, init_from: str, model_config: gpt.GPTConfig, prefix: str = ""):
    """Warm start from a tl_jax workdir or a Hugging Face GPT-2 directory.

    `prefix` is where the GPT sits in `params` (e.g. "gpt/" inside a classifier).
    """
    init_from = paths.expand(init_from)
    if warm_start.is_hf_directory(init_from):
        from tl_jax.interop import gpt2
        hf_config, hf_params = gpt2.load_pretrained(init_from)
        check_vocab_fits(init_from, hf_config, model_config)
        flat, _ = jax.tree_util.tree_flatten_with_path(hf_params)
        source = {prefix + checkpoint.path_str(p): np.asarray(v) for p, v in flat}
        params, report = checkpoint.merge_matching(params, source)
        if not report["taken"]:
            raise no_tensor_matches(init_from, hf_config, model_config)
        for line in warm_start.report_lines(report, f"GPT-2 checkpoint {init_from}"):
            print(line, flush=True)
        return params
    prefix_map = {"": prefix} if prefix else None
    if warm_start.is_tl_workdir(init_from) and os.path.isfile(
            os.path.join(init_from, "config.json")) and checkpoint.load_run_config(
            init_from).get("task") == "lm_classify":
        # A GPT classifier's decoder sits under gpt/ (its head, under head/, has no place in
        # an LM and is reported unused): without the rename nothing matched.
        prefix_map = {"gpt/": prefix}
    return warm_start.warm_start(params, init_from, model_config, prefix_map=prefix_map)


# Logits up to this size (float32 bytes, whole batch) are kept from the forward pass for the
# backward one, see `recompute_logits`.
KEEP_LOGITS_MAX_BYTES = 256 << 20


def recompute_logits(hidden, vocab_size: int) -> bool:
    """Whether the LM loss recomputes each chunk's logits in its backward pass.

    Recomputing holds one chunk of logits at a time whatever the batch; keeping them skips a
    (tokens x width x vocabulary) matmul, a quarter of the head's work. They are kept when the
    whole batch's logits fit in `KEEP_LOGITS_MAX_BYTES` and the width is at least 128: below
    that the matmul costs less than storing and reloading the logits. Measured on 2 Zen 4
    cores, batch 16 x 128 tokens, 8,192 words: the GPT-mini train step (width 256) 558-566 ->
    525-531 ms keeping them, GPT tiny's (width 64) 89-93 -> 94-96 ms.
    """
    tokens = math.prod(hidden.shape[:-1])
    return hidden.shape[-1] < 128 or tokens * vocab_size * 4 > KEEP_LOGITS_MAX_BYTES


def lm_loss(params, hidden, targets, weights):
    """Summed next-token NLL, correct predictions and token count over weighted positions.

    The logits come from the tied embedding `params["wte"]["embedding"]`, chunk by chunk
    (`losses.tied_softmax_cross_entropy`); unless they are small (`recompute_logits`), the
    backward pass recomputes them chunk by chunk too, so the full (B, T, V) logits are never
    held in memory.
    """
    embedding = params["wte"]["embedding"]
    nll, correct = losses.tied_softmax_cross_entropy(
        hidden, embedding, targets,
        recompute=recompute_logits(hidden, embedding.shape[0]))  # (B, T) each
    return (nll * weights).sum(), (correct.astype(jnp.float32) * weights).sum(), weights.sum()


class Task:
    """The `clm` task (see `tl_jax/tasks/__init__.py` for the contract)."""

    progress_keys = ("accuracy",)
    summary_keys = ("eval/perplexity", "eval/accuracy")

    def __init__(self, config, workdir):
        self.config = config
        data_cfg = config.data
        for key in ("batch_size", "eval_batch_size"):
            # eval_batch_size=0 was met at the first eval only, train.eval_every steps into
            # the run (250 for `mini`), before any checkpoint: the steps trained were lost.
            if data_cfg[key] < 1:
                raise ValueError(f"data.{key}={data_cfg[key]} must be at least 1")
            if data_cfg[key] % jax.process_count():
                raise ValueError(f"data.{key}={data_cfg[key]} is not divisible by the process "
                                 f"count {jax.process_count()}")
        if not 0.0 <= data_cfg.eval_fraction < 1.0:  # (split_documents named no key)
            raise ValueError(f"data.eval_fraction={data_cfg.eval_fraction} must be in [0, 1): "
                             "the share of documents held out for perplexity")
        if data_cfg.max_documents < 0:  # documents[:-n] would silently drop the last n
            raise ValueError(f"data.max_documents={data_cfg.max_documents} must be >= 0 (0: all)")
        from tl_jax.tasks import downstream
        downstream.check_dropout_rates(config.model)  # before the corpus is read
        # The sequence length against the position table, before the corpus is read and a BPE
        # trained on it (minutes on a large corpus): the shape does not depend on the vocabulary.
        max_len = gpt_config_from(config.model, 1).max_len
        if not 1 <= data_cfg.seq_len <= max_len:
            raise ValueError(f"data.seq_len={data_cfg.seq_len} must be in [1, {max_len}] (the "
                             f"model's position table, model.max_len={max_len})")
        # The tokenizer too, unless one is to be trained on the corpus: a bad init_from or
        # data.tokenizer_vocab_size is named before the corpus is read.
        self.tokenizer = load_tokenizer(data_cfg, workdir, None, config.init_from)
        # And init_from's shape against the model's, from its config alone: a GPT-2 directory
        # of another width or a larger vocabulary was refused after the corpus was tokenised.
        # A resumed run takes no weights from init_from, nor its tokenizer (the workdir's):
        # init_from may be gone since.
        resuming = bool(workdir) and checkpoint.has_saved_step(workdir)
        saved = os.path.join(workdir or "", "tokenizer")
        if resuming and os.path.isdir(saved):
            warm_start.say_source_gone("clm", "init_from", paths.expand(config.init_from or ""),
                                       f"its vocabulary from {saved}")
        if self.tokenizer is not None and config.init_from and not resuming:
            check_init_from_shape(config.init_from,
                                  gpt_config_from(config.model, self.tokenizer.vocab_size))
        # Phase lines while the corpus is read, a BPE trained and the text tokenised: a large
        # corpus takes minutes before the training bar starts.
        show = bool(config.train.progress) and jax.process_index() == 0
        corpus_path = paths.expand(data_cfg.corpus)
        if tokenized.is_tokenized_corpus(corpus_path):
            self._open_tokenized(corpus_path, show)
        else:
            self._read_text(show)
        seq = data_cfg.seq_len
        self.flops_per_example = self.model_config.flops_per_token(seq) * seq
        self.tokens_per_example = seq
        self._process = (jax.process_index(), jax.process_count())

    def _read_text(self, show: bool) -> None:
        """The windows of a text corpus: read, split, a BPE trained on it where the run has
        none, and tokenised."""
        from tl_jax.data import sources

        data_cfg = self.config.data
        with phase(f"Reading {data_cfg.corpus}", show) as step:
            documents = sources.load_documents(
                paths.expand(data_cfg.corpus), data_cfg.text_field, data_cfg.group_field or None,
                key="data.corpus")
            step.result = f"{len(documents):,} documents"
        if data_cfg.max_documents:
            documents = documents[:data_cfg.max_documents]
        # The held-out documents do not depend on the run's seed: runs with different seeds
        # (an ablation's repeats) are scored on the same text, as in BERT pretraining.
        train_docs, eval_docs = clm_data.split_documents(documents, data_cfg.eval_fraction,
                                                         seed=clm_data.EVAL_SPLIT_SEED)
        del documents
        if self.tokenizer is None:
            with phase(f"Training a byte-level BPE of {data_cfg.tokenizer_vocab_size} tokens "
                       f"on {len(train_docs):,} documents", show) as step:
                self.tokenizer = train_tokenizer(data_cfg, train_docs, progress=show)
                step.result = f"{self.tokenizer.vocab_size:,} tokens"
        self._set_model()
        seq = data_cfg.seq_len
        with phase("Tokenising", show) as step:
            self.train_blocks = clm_data.make_blocks(
                clm_data.pack_documents(train_docs, self.tokenizer), seq)
            self.eval_blocks = clm_data.make_blocks(
                clm_data.pack_documents(eval_docs, self.tokenizer), seq) if eval_docs else None
            step.result = self._blocks_said()
        # Token ids come from our own tokenizer, but check once: a clamped gather is silent.
        gpt.check_tokens(self.train_blocks[0][:, :-1], self.model_config,
                         where="packed training data")

    def _open_tokenized(self, path: str, show: bool) -> None:
        """The windows of a corpus `tl_jax tokenize` wrote: split by the same draw as its text
        would be, and read into windows a chunk at a time; its tokenizer is the run's."""
        data_cfg = self.config.data
        with phase(f"Opening the tokenised corpus {data_cfg.corpus}", show) as step:
            corpus = tokenized.TokenizedCorpus.open(path)
            step.result = (f"{corpus.num_documents:,} documents, "
                           f"{len(corpus.tokens):,} tokens")
        if self.tokenizer is not None:
            corpus.check_vocabulary(self.tokenizer, f"from {self.tokenizer.source}: the "
                                    "workdir's on a resume, else data.tokenizer or init_from's")
        self.tokenizer = self.tokenizer or corpus.tokenizer
        n_documents = corpus.num_documents
        if data_cfg.max_documents:
            n_documents = min(n_documents, data_cfg.max_documents)
        train_docs, eval_docs = clm_data.split_indices(n_documents, data_cfg.eval_fraction,
                                                       seed=clm_data.EVAL_SPLIT_SEED)
        self._set_model()
        seq = data_cfg.seq_len
        with phase("Cutting it into windows", show) as step:
            # Every id is checked against the corpus's vocabulary as it is read; the model's
            # is never smaller (gpt_config_from).
            self.train_blocks = corpus.blocks(train_docs, seq)
            self.eval_blocks = corpus.blocks(eval_docs, seq) if len(eval_docs) else None
            step.result = self._blocks_said()

    def _set_model(self) -> None:
        self.model_config = gpt_config_from(self.config.model, self.tokenizer.vocab_size)
        self.model = gpt.GPT(self.model_config)

    def _blocks_said(self) -> str:
        return (f"{len(self.train_blocks[0]):,} training and "
                f"{len(self.eval_blocks[0]) if self.eval_blocks is not None else 0:,} held-out "
                f"blocks of {self.config.data.seq_len} tokens")

    # -- data -------------------------------------------------------------------------------

    def example_batch(self, batch_size):
        seq = self.config.data.seq_len
        return dict(inputs=np.zeros((batch_size, seq), np.int32),
                    targets=np.zeros((batch_size, seq), np.int32),
                    weights=np.ones((batch_size, seq), np.float32))

    def train_batches(self):
        if not hasattr(self, "_train"):
            self._train = clm_data.BlockIterator(
                *self.train_blocks, batch_size=self.config.data.batch_size, seed=self.config.seed,
                process_index=self._process[0], process_count=self._process[1])
        return self._train

    def eval_batches(self):
        if self.eval_blocks is None:
            return []
        return clm_data.eval_batches(
            *self.eval_blocks, batch_size=self.config.data.eval_batch_size,
            process_index=self._process[0], process_count=self._process[1],
            max_batches=self.config.train.eval_batches)

    def save(self, workdir):
        self.tokenizer.save(os.path.join(workdir, "tokenizer"))

    # -- model ------------------------------------------------------------------------------

    def init_variables(self, rng, batch):
        return self.model.init({"params": rng, "dropout": rng}, batch["inputs"])

    def init_params(self, params, rng):
        del rng
        if not self.config.init_from:
            return params
        return load_gpt_weights(params, self.config.init_from, self.model_config)

    def loss_normalizers(self, batch):
        """The predicted tokens the loss averages over. Packed windows are full but for the
        corpus's last one, so micro-batches differ only when a batch holds that one."""
        return {"tokens": batch["weights"].sum()}

    def loss_fn(self, params, batch, rng, train, normalizers=None):
        outputs, _ = self.model.apply({"params": params}, batch["inputs"], train=train,
                                      rngs={"dropout": rng}, logits=False)
        nll, correct, count = lm_loss(params, outputs["hidden"], batch["targets"],
                                      batch["weights"])
        loss = normalized(nll, count, normalizers, "tokens")
        return loss, dict(nll=(nll, count), accuracy=(correct, count))

    def predict_fn(self, params, batch):
        outputs, _ = self.model.apply({"params": params}, batch["inputs"], logits=False)
        nll, _ = losses.tied_softmax_cross_entropy(
            outputs["hidden"], params["wte"]["embedding"], batch["targets"])
        return dict(nll=(nll * batch["weights"]).sum(-1), tokens=batch["weights"].sum(-1))

    def evaluate(self, batches_and_outputs, workdir, step):
        del workdir, step
        nll = sum(float(np.sum(out["nll"])) for _, out in batches_and_outputs)
        tokens = sum(float(np.sum(out["tokens"])) for _, out in batches_and_outputs)
        if not tokens:  # 0/0: no perplexity; a missing key would read as a misspelt best_metric
            note_undefined(self, ["eval/perplexity"], "the eval batches hold no token to predict")
            return {"perplexity": math.nan}
        return {"perplexity": float(np.exp(nll / tokens))}

    @staticmethod
    def eval_metric_names(config) -> tuple[str, ...]:
        """`loss_fn`'s metrics and `evaluate`'s perplexity (`tasks.eval_metric_names`)."""
        return held_out_metrics(config, ("nll", "accuracy", "perplexity"))

"""What the fine-tuning tasks (`classify`, `tag`, `squad`) share: encoder set-up and batching.

* `Encoder.from_config(config, texts, workdir)`: the tokenizer and `BertConfig` for `config.init_from`:
  a tl_jax workdir (pretraining or fine-tuning: its checkpoint's shapes and `tokenizer/`), a
  Hugging Face BERT or ELECTRA discriminator directory (`config.json` + tokenizer + safetensors), or "" for a model from scratch whose
  shape is `config.model.size` (a size name, or a Hugging Face directory whose architecture, not
  weights, is copied), with `config.data.tokenizer` or else a WordPiece vocabulary trained on
  the task's own training text; a run that resumes keeps the tokenizer saved in its workdir,
  and the shape its checkpoint was built with (`resumed_model`): init_from need not exist then.
  `config.model.num_layers` > 0 keeps only that many bottom layers of `init_from` (from
  scratch: of `config.model.size`). `Encoder.load_weights` fills the `bert/` params from the source.
* `EpochBatches`: shuffled epochs over fixed-size feature arrays, resumable (`get_state`).
* `eval_batches`: the whole eval set in order, the last batch padded with rows whose `row` is -1.
* `EvalPredictions`: `evaluate` as `decode`, `score` and `write_predictions` (shared with the GPT
  classifier, whose predictions are the BERT classifier's).
* `EncoderTask`: the batching, init and forward methods the three tasks share.
* `fit_schedule`: turns `data.num_epochs` into `train.steps` (when that is 0), and evaluates and
  checkpoints once per epoch (when those are 0): "evaluate every epoch, keep the best".
"""
from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tl_jax import paths, warm_start
from tl_jax.data.shuffle import EpochOrder
from tl_jax.data.tokenizer import Tokenizer
from tl_jax.models import bert


class Encoder:
    """The tokenizer, encoder shape and weight source of a fine-tuning run."""

    # Whether the shape is the one a resumed run's checkpoint was built with (`from_config`),
    # not read from `init_from`: `load_weights` then checks init_from still has it.
    resumed = False

    def __init__(self, tokenizer: Tokenizer, model_config: bert.BertConfig, init_from: str):
        self.tokenizer, self.model_config, self.init_from = tokenizer, model_config, init_from

    @classmethod
    def from_config(cls, config, train_texts, workdir: str | None = None) -> "Encoder":
        """Resolves `config.init_from` / `config.model` / `config.data.tokenizer` (see module doc)."""
        m, d = config.model, config.data
        check_dropout_rates(m)
        # Paths may name environment variables ('$TL_JAX_DATA_DIR/models/...'), as the corpora,
        # data files and the GPT's init_from and tokenizer take them.
        init_from, tokenizer_spec = paths.expand(config.init_from), paths.expand(
            d.tokenizer)
        # (model.size is read only without init_from, whose architecture wins.)
        size = m.get("size", "")
        size = size if size in bert.SIZES else paths.expand(size)
        overrides = dict(dropout_rate=m.dropout_rate, attention_dropout_rate=m.attention_dropout_rate,
                         dtype=m.dtype)
        saved = resumed_tokenizer(workdir)
        # A resumed run's encoder is the checkpoint's: its shape is the one the run built, and
        # init_from (or a model.size directory), read for it when the run started, may be gone.
        # A probe's resolved_model is not the encoder's shape: it keeps that in its own file
        # (a workdir saved before that file has none, and its resume reads its sources again).
        kept, kept_in = None, "its resolved_model"
        if saved and config.get("task") in SAVES_ENCODER_SHAPE:
            kept = resumed_model(workdir)
        elif saved:
            kept, kept_in = kept_encoder(workdir), os.path.join(workdir or "", ENCODER_MODEL_FILE)
        if kept is not None:
            tokenizer = saved
            model_config = bert.BertConfig(**kept).replace(**overrides)
            task = config.get("task", "init_from")
            warm_start.say_source_gone(
                task, "init_from", init_from, f"the encoder's shape from {kept_in}, its "
                f"vocabulary from {os.path.join(workdir, 'tokenizer')}")
            if not init_from and size not in bert.SIZES:  # the architecture of a from-scratch run
                warm_start.say_source_gone(task, "model.size", size,
                                           f"the encoder's shape from {kept_in}")
        elif init_from:
            check_encoder_source(init_from)
            tokenizer = saved or (Tokenizer.load(tokenizer_spec) if tokenizer_spec
                                  else source_tokenizer(init_from))
            if tokenizer_spec and not saved:
                warn_if_not_init_from_vocabulary(tokenizer, init_from,
                                                 config.get("task", "init_from"))
            model_config = architecture(init_from, tokenizer).replace(**overrides)
        else:
            if saved:
                tokenizer = saved
            elif tokenizer_spec:
                tokenizer = Tokenizer.load(tokenizer_path(tokenizer_spec))
            else:
                if d.tokenizer_vocab_size < 6:  # the 5 special tokens and more
                    raise ValueError(f"data.tokenizer_vocab_size={d.tokenizer_vocab_size} is too "
                                     "small for a WordPiece vocabulary trained on the task's text")
                tokenizer = Tokenizer.train_wordpiece(
                    [list(train_texts)], d.tokenizer_vocab_size,
                    progress=bool(config.train.progress) and jax.process_index() == 0)
            if size in bert.SIZES:
                model_config = bert.BertConfig.from_size(
                    size, vocab_size=tokenizer.vocab_size,
                    max_position_embeddings=m.max_position_embeddings, **overrides)
            else:
                # The architecture of a checkpoint without its weights: the from-scratch
                # baseline of a transfer experiment.
                model_config = architecture(size, tokenizer).replace(**overrides)
        num_layers = m.get("num_layers", 0)
        if num_layers and kept is None:  # (a resumed run's shape has its layers cut already)
            # Keep the bottom layers only (as DistilBERT-style initialisation does): cheaper to
            # fine-tune, and the top layers' tensors are simply not used. From scratch too, so
            # that a transfer experiment's arms (init_from and the same shape from scratch,
            # sharing the overrides) have the same depth: the scratch arm kept them all.
            source = init_from or f"model.size={size}"
            if num_layers < 0 or num_layers > model_config.num_layers:
                raise ValueError(f"model.num_layers={num_layers} but {source} has "
                                 f"{model_config.num_layers} layers; give 1 to "
                                 f"{model_config.num_layers}, or 0 for all of them")
            if init_from and num_layers < model_config.num_layers:
                print(f"[init_from] model.num_layers={num_layers}: the bottom "
                      f"{num_layers} of the {model_config.num_layers} layers of "
                      f"{init_from} are used; the top "
                      f"{model_config.num_layers - num_layers} are left out.", flush=True)
            model_config = model_config.replace(num_layers=num_layers)
        if tokenizer.vocab_size > model_config.vocab_size:
            raise ValueError(f"tokenizer {tokenizer.source} has {tokenizer.vocab_size} tokens but "
                             f"the model's vocab_size is {model_config.vocab_size}")
        if d.max_seq_length > model_config.max_position_embeddings:
            raise ValueError(f"data.max_seq_length={d.max_seq_length} exceeds the model's "
                             f"max_position_embeddings={model_config.max_position_embeddings}")
        encoder = cls(tokenizer, model_config, init_from)
        encoder.resumed = kept is not None
        return encoder

    def load_weights(self, params, model_config: bert.BertConfig | None = None):
        """Fills `bert/...` from `init_from`; the head keeps its fresh initialisation.

        `model_config`: the model `params` are for, when it is not the encoder's own (a probe's
        `transfer.lora_rank`); a LoRA workdir's pairs that it has no same-shaped, same-scale
        LoRA for are folded into their kernels (`warm_start.fold_lora_for`)."""
        if not self.init_from:
            return params
        if self.resumed:
            self.check_resumed_source()
        if warm_start.is_hf_directory(self.init_from) and not warm_start.is_tl_weights(
                self.init_from):
            from tl_jax import interop
            hf_family = interop.encoder_family_of(self.init_from)  # BERT or ELECTRA
            params, report = hf_family.init_from_hf(params, self.init_from, warn=False)
            # The pooler is a head: ELECTRA trains none, some BERT exports drop it.
            missing = [p for p in report.missing
                       if p.startswith("bert/") and not p.startswith("bert/pooler/")]
            if missing:
                raise warm_start.WarmStartError(
                    f"init_from={self.init_from}: encoder params not in the checkpoint: {missing[:5]}")
            fresh = f"; fresh: {', '.join(report.missing)}" if report.missing else ""
            # Through the warm start's `say`: a cached probe's second load says nothing.
            warm_start.say(f"[init_from] Hugging Face checkpoint {self.init_from}: encoder "
                           f"loaded{fresh}")
            return params
        # Another task's (or label set's) head must not come along when its shapes fit.
        return warm_start.warm_start(params, self.init_from, model_config or self.model_config,
                                     only="bert/")

    def check_resumed_source(self) -> None:
        """Refuses an `init_from` that no longer holds the encoder a resumed run was built as.

        A resumed run takes its shape from its checkpoint and its weights from the checkpoint,
        so init_from is read again only where the checkpoint does not give them (a run whose
        checkpoints all turned out unusable starts afresh from it). A model of another shape
        put at the same path since would fill part of the encoder and leave the rest at random,
        with a few "NOT taken" lines; one that is gone says so."""
        check_encoder_source(self.init_from)
        source, mine = architecture(self.init_from, self.tokenizer), self.model_config
        free = ("dropout_rate", "attention_dropout_rate", "dtype", "num_layers")
        differ = [f"{f.name} {getattr(mine, f.name)!r} vs {getattr(source, f.name)!r}"
                  for f in dataclasses.fields(mine)
                  if f.name not in free and getattr(mine, f.name) != getattr(source, f.name)]
        if source.num_layers < mine.num_layers:  # (model.num_layers may keep fewer)
            differ.append(f"num_layers {mine.num_layers!r} vs {source.num_layers!r}")
        if differ:
            raise warm_start.WarmStartError(
                f"init_from={self.init_from!r} is not the model this run was started from: its "
                f"checkpoint's encoder vs init_from now: {'; '.join(differ)}. Point init_from "
                "at the model the run started from, or train in a new workdir.")

    def save(self, workdir: str) -> None:
        self.tokenizer.save(os.path.join(workdir, "tokenizer"))

    @classmethod
    def of_run(cls, config, workdir: str, resolved_model: dict | None) -> "Encoder":
        """The encoder a finished fine-tuning run in `workdir` trained: its saved tokenizer, and
        the shape it built (`resolved_model` of its checkpoint's config, else read from the
        checkpoint's shapes); nothing to load from `init_from` (the checkpoint has it all)."""
        tokenizer = Tokenizer.load(os.path.join(workdir, "tokenizer"))
        if resolved_model:
            model_config = bert.BertConfig(**resolved_model)
        else:
            model_config = architecture(workdir, tokenizer).replace(dtype=config.model.dtype)
        return cls(tokenizer, model_config, init_from="")


# The tasks whose checkpoints' resolved_model is the encoder `from_config` built. A probe's is
# not: its model adds transfer's LoRA and adapters to it, in place of the ones init_from trained.
# It saves the encoder's own shape beside its checkpoints instead (ENCODER_MODEL_FILE).
SAVES_ENCODER_SHAPE = ("classify", "tag", "squad")
ENCODER_MODEL_FILE = "encoder_model.json"

# Tasks whose workdirs hold no BERT-style encoder (a GPT, an ELMo-style biLM).
NOT_ENCODER_TASKS = {"clm": "a GPT language model", "lm_classify": "a GPT classifier",
                     "bilm": "an ELMo-style biLM"}


def check_encoder_source(source: str, what: str = "init_from") -> None:
    """A clear error for a weight source that holds no BERT-style encoder (a GPT or biLM
    workdir, static word vectors, a file, an empty directory), before its tokenizer is read."""
    warm_start.require_source(source, what)
    if warm_start.is_tl_workdir(source):
        if os.path.isfile(os.path.join(source, "config.json")):
            from tl_jax import checkpoint
            task = checkpoint.load_run_config(source).get("task")
            if task in NOT_ENCODER_TASKS:
                elmo = (" (A biLM's ELMo features are used from Python: load_elmo, ElmoEncoder "
                        "and ElmoClassifier in tl_jax.elmo_features.)" if task == "bilm" else "")
                raise warm_start.WarmStartError(
                    f"{what}={source} was trained with task={task!r} ({NOT_ENCODER_TASKS[task]}), "
                    "not a BERT-style encoder; start from a bert_pretrain, electra or fine-tuning "
                    f"workdir, tl_jax weights or a Hugging Face BERT directory.{elmo}")
        return
    if warm_start.is_tl_weights(source):
        return
    if warm_start.is_hf_directory(source):
        from tl_jax import interop
        interop.encoder_family_of(source)  # a GPT-2 directory is named by its model_type
        return
    if os.path.isfile(os.path.join(source, "static_config.json")):
        raise warm_start.WarmStartError(
            f"{what}={source} holds static word vectors (`tl_jax static`), not a BERT-style "
            "encoder.")
    if os.path.isdir(source) and not os.listdir(source):
        raise warm_start.WarmStartError(
            f"{what}={source!r} is an empty directory, not a model: give a tl_jax workdir, tl_jax "
            "weights or a Hugging Face BERT directory.")
    raise warm_start.WarmStartError(
        f"{what}={source!r} is neither a tl_jax workdir (with checkpoints/), nor tl_jax weights "
        "(with params.safetensors), nor a Hugging Face BERT directory (with config.json).")


def warn_if_not_init_from_vocabulary(tokenizer: Tokenizer, init_from: str, task: str) -> None:
    """A warning when an explicit `data.tokenizer` is not the vocabulary `init_from`'s weights
    were trained with: its ids select embedding rows that stand for other tokens, and when it
    is no larger than the model nothing else says so. Not an error: a new vocabulary over old
    weights can be the experiment. Nothing is said when `init_from` has no tokenizer of its
    own (data.tokenizer then names the one it lacks)."""
    from tl_jax.data.tokenizer import TokenizerError

    try:
        own = Tokenizer.load(tokenizer_path(init_from))
    except TokenizerError:
        return
    if own.hf_tokenizer.get_vocab() != tokenizer.hf_tokenizer.get_vocab():
        print(f"[{task}] warning: data.tokenizer={tokenizer.source} ({tokenizer.vocab_size} "
              f"tokens) is not the vocabulary init_from's weights were trained with "
              f"({own.source}, {own.vocab_size} tokens): the embedding rows its ids select "
              "stand for other tokens. Leave data.tokenizer empty to use init_from's.",
              flush=True)


def resumed_tokenizer(workdir: str | None) -> Tokenizer | None:
    """The tokenizer saved in `workdir` when a run there resumes (it has a checkpoint), else None.

    The checkpoint's embedding rows belong to that vocabulary. Rebuilt from the config instead, a
    vocabulary trained on the task's text changes with the data (another
    `data.max_train_examples`, an edited file) while its size stays the same: the run would go on
    with every token id meaning another word, and overwrite the saved tokenizer.
    """
    from tl_jax import checkpoint

    if checkpoint.resumes_with_tokenizer(workdir):
        return Tokenizer.load(os.path.join(workdir, "tokenizer"))
    return None


def resumed_model(workdir: str | None) -> dict | None:
    """The model shape a run that resumes in `workdir` built when it started: the
    `resolved_model` of its newest checkpoint whose config reads. None for a new run (no saved
    step), or a checkpoint saved without one; the task then builds the shape from the config.

    The checkpoint holds every weight a resumed run needs, so the source of its shape
    (`init_from`) is not read again: moved or deleted since, it stopped the resume with "does
    not exist". A config changed since the checkpoint is still refused (the trainer compares
    `model` and `resolved_model` with the checkpoint's)."""
    from tl_jax import checkpoint

    if not workdir or not checkpoint.has_saved_step(workdir):
        return None
    try:
        steps = checkpoint.saved_steps(workdir)
    except checkpoint.CheckpointError:
        return None
    for step in reversed(steps):
        try:
            return checkpoint.config_from_workdir(workdir, step).get("resolved_model") or None
        except checkpoint.CheckpointError:
            continue  # an unreadable config: the restore moves that checkpoint aside too
    return None


def kept_encoder(workdir: str | None) -> dict | None:
    """The encoder's shape a task saved as ENCODER_MODEL_FILE beside the checkpoints it resumes
    from in `workdir` (a probe: `Task.save`), else None (a new run; a workdir from before the
    file, whose resume reads init_from as it did)."""
    from tl_jax import checkpoint

    path = os.path.join(workdir or "", ENCODER_MODEL_FILE)
    if not workdir or not checkpoint.has_saved_step(workdir) or not os.path.isfile(path):
        return None
    return checkpoint.load_json(
        path, "the encoder's shape, saved when the run started (restore it from a copy of the "
        "workdir; deleted, the resume reads init_from for it)")


def tokenizer_path(source: str) -> str:
    """The tokenizer of a tl_jax workdir (`tokenizer/`), else `source` itself (file or HF dir)."""
    if warm_start.is_tl_workdir(source):
        return os.path.join(source, "tokenizer")
    return source


def has_no_tokenizer(source: str) -> bool:
    """Whether model folder `source` holds no tokenizer at all: no tokenizer.json or vocab.txt
    of its own, nor in a tokenizer/ beside its weights (as a `tl_jax convert` of a Hugging Face
    folder without tokenizer files leaves it). False for a file, or a folder that has one."""
    if not os.path.isdir(source):
        return False
    return not any(os.path.isfile(os.path.join(folder, name))
                   for folder in (source, os.path.join(source, "tokenizer"))
                   for name in ("tokenizer.json", "vocab.txt"))


def no_tokenizer_error(key: str, source: str, fix: str = "data.tokenizer"):
    """The error for `key`=`source`, a model without a tokenizer (`has_no_tokenizer`): the
    vocabulary its weights were trained with is not for a run to guess, so `fix` names it."""
    from tl_jax.data.tokenizer import TokenizerError

    return TokenizerError(
        f"{key}={source} has no tokenizer (neither tokenizer.json nor vocab.txt): pass "
        f"--config.{fix}=PATH, the tokenizer its weights were trained with")


def source_tokenizer(source: str, key: str = "init_from") -> Tokenizer:
    """The tokenizer of weight source `source` (`tokenizer_path`); one without any is an error
    naming `key` and data.tokenizer (`no_tokenizer_error`), not the tokenizer loader's."""
    if has_no_tokenizer(source):
        raise no_tokenizer_error(key, source)
    return Tokenizer.load(tokenizer_path(source))


def architecture(source: str, tokenizer: Tokenizer) -> bert.BertConfig:
    """The `BertConfig` of a tl_jax pretraining workdir or a Hugging Face BERT (or ELECTRA
    discriminator) directory."""
    if warm_start.is_tl_workdir(source):
        # From the checkpoint's shapes, not its config: a fine-tuning run's config has no
        # pretraining fields and names a size its init_from overrode (e.g. MiniLM's 6x384).
        from tl_jax import checkpoint
        from tl_jax.interop import bert as hf_bert
        shapes, step = checkpoint.param_shapes_from_workdir(source)
        stand_ins = {p: np.broadcast_to(np.zeros((), np.float32), s) for p, s in shapes.items()}
        return hf_bert.config_from_params(
            stand_ins, **checkpoint.unshaped_model_fields(source, step))
    if warm_start.is_tl_weights(source):
        return warm_start.bert_config(source)  # its config.json: the weights are read later
    if warm_start.is_hf_directory(source):
        from tl_jax import interop
        return interop.encoder_family_of(source).read_hf_config(source)  # BERT or ELECTRA
    raise warm_start.WarmStartError(
        f"{source!r} is neither a tl_jax workdir (with checkpoints/), nor tl_jax weights (with "
        "params.safetensors), nor a Hugging Face BERT directory (with config.json), nor a model "
        "size name.")


class EpochBatches:
    """Host-local batches over shuffled epochs of `arrays`, forever; resumable.

    Each epoch is a fresh permutation (seeded by `seed` and the epoch number); the rows that do
    not fill a last global batch are dropped for that epoch (a different tail each epoch).
    """

    def __init__(self, arrays: dict[str, np.ndarray], global_batch: int, seed: int):
        self.arrays, self.global_batch, self.seed = arrays, global_batch, seed
        self.n = len(next(iter(arrays.values())))
        self.steps_per_epoch = self.n // global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"{self.n} training examples cannot fill one batch of {global_batch}")
        self.local = global_batch // jax.process_count()
        self.epoch, self.position = 0, 0
        self._order = EpochOrder(self.n, seed)  # drawn once per epoch, not once per step

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        if self.position >= self.steps_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        order = self._order(self.epoch)
        start = self.position * self.global_batch + jax.process_index() * self.local
        rows = order[start:start + self.local]
        self.position += 1
        return {k: v[rows] for k, v in self.arrays.items()}

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def set_state(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def eval_batches(arrays: dict[str, np.ndarray], global_batch: int) -> Iterator[dict]:
    """Every row once, in order, as host-local batches; `row` is the global row index (-1: pad)."""
    n = len(next(iter(arrays.values())))
    arrays = dict(arrays, row=np.arange(n, dtype=np.int32))
    local = global_batch // jax.process_count()
    for start in range(0, n, global_batch):
        lo = start + jax.process_index() * local
        batch = {}
        for k, v in arrays.items():
            part = v[lo:lo + local]
            pad = local - len(part)
            if pad:
                filler = np.full((pad,) + v.shape[1:], -1 if k == "row" else 0, v.dtype)
                part = np.concatenate([part, filler])
            batch[k] = part
        yield batch


def check_labels(labels, configured: bool, splits, kind: str = "labels") -> None:
    """Raises, naming the file and line, when a split uses a label outside `labels`.

    `splits` is `[(file spec, its records), ...]`, training file first; `kind` is "labels"
    (classification records) or "tags" (tagging records). With `data.labels` set
    (`configured`), both files are checked against it; otherwise the label set comes from the
    training file and an eval label it never shows is the error.
    """
    repeated = sorted({label for label in labels if list(labels).count(label) > 1})
    if configured and repeated:  # two outputs for one label: one of them would never train
        raise ValueError(f"data.labels {list(labels)} lists {repeated} more than once")
    train_spec = splits[0][0]
    for spec, records in splits:
        unknown = sorted(set(labels_of(records, kind)) - set(labels))
        where = first_use(spec, records, unknown, kind)
        if unknown and configured:
            raise ValueError(f"{where}: {kind} {unknown} are not in data.labels {list(labels)}")
        if unknown:
            raise ValueError(f"{where}: {kind} {unknown} never occur in training data "
                             f"{train_spec} ({kind} {list(labels)}); set data.labels")


def note_rare_labels(spec: str, records, task: str) -> None:
    """With the label set taken from the training file, says which labels it uses only once or
    twice among 100 or more examples: a stray value (a typo, a boolean in a column of words)
    gets an output of its own that barely trains. `data.labels` fixes the set."""
    counts = collections.Counter(labels_of(records))
    if sum(counts.values()) < 100:
        return
    rare = sorted(label for label, n in counts.items() if n <= 2)
    if rare:
        shown = ", ".join(f"{label!r} ({counts[label]}x)" for label in rare[:5])
        print(f"[{task}] Note: {len(rare)} of the {len(counts)} labels of the training data "
              f"occur only once or twice among {sum(counts.values()):,} examples: {shown}, "
              f"first at {first_use(spec, records, rare)}. Each is a class of its own; set "
              "data.labels if they are stray values.", flush=True)


def labels_of(records, kind: str = "labels") -> list:
    """Every label ("labels": a classification record's, None when unlabelled) or tag ("tags":
    every token's of a tagging record) of `records`, in order."""
    if kind == "tags":
        return [t for r in records for t in r["tags"] or ()]
    return [r["label"] for r in records if r["label"] is not None]


def first_use(spec: str, records, values, kind: str = "labels") -> str:
    """`spec:LINE`, the line of the first record (or tag) of `records` (read from `spec`) that
    holds one of `values`; `spec` alone when there is none, or the data set has no lines."""
    from tl_jax.data import readers
    values = set(values)
    if not values:
        return spec
    if kind == "tags":
        found = next(((i, j) for i, r in enumerate(records) for j, t in enumerate(r["tags"] or ())
                      if t in values), None)
    else:
        found = next(((i, None) for i, r in enumerate(records) if r["label"] in values), None)
    lines = found and readers.record_lines(
        spec, "tagging" if kind == "tags" else "classification", tokens=kind == "tags")
    i, j = found or (None, None)
    if not lines or i >= len(lines) or (j is not None and j >= len(lines[i])):
        return spec  # (the file changed since it was read)
    return f"{spec}:{lines[i] if j is None else lines[i][j]}"


def note_truncated(config, truncated: list, n: int, where: str, spec: str = "",
                   records=None) -> None:
    """Says how many of `n` records `encode` had to cut (the indices in `truncated`), if any.

    `where`: "predict" (a `tl_jax predict` input), or "training" / "eval" (the run's files).
    A tagging file's `spec` and `records` name its longest sentence where that is surely
    several sentences run together."""
    if not truncated:
        return
    d = config.data
    if config.task == "squad":
        what, limit = "questions", f"data.max_query_length={d.max_query_length} sub-tokens"
        tail = " (contexts are split into windows, never cut)"
    elif config.task == "lm_classify":
        what = "inputs"
        limit = f"data.max_seq_length={d.max_seq_length} BPE tokens with <|endoftext|>"
        tail = ""
    else:
        what = "sentences" if config.task == "tag" else "inputs"
        limit = f"data.max_seq_length={d.max_seq_length} sub-tokens"
        tail = "; their words past the limit are tagged O" if config.task == "tag" else ""
    cut = "were cut" if config.task == "squad" else "were truncated"
    if where == "predict":
        print(f"[predict] Note: {len(truncated)} of {n} {what} are longer than {limit} and "
              f"{cut}, as in training{tail}.", flush=True)
    else:
        print(f"[{config.task}] Note: {len(truncated)} of {n} {where} {what} are longer than "
              f"{limit} and {cut}{tail}.", flush=True)
    if config.task == "tag" and records is not None:
        _note_run_together(config, truncated, where, spec, records)


def _note_run_together(config, truncated: list, where: str, spec: str, records) -> None:
    """Names the longest cut sentence of a CoNLL file when it has more tokens than a sentence
    does (`readers.LONG_SENTENCE`): blank lines are missing, and every word past the limit would
    be tagged O."""
    from tl_jax.data import readers
    long = [i for i in truncated if len(records[i]["tokens"]) > readers.LONG_SENTENCE]
    if not long:
        return
    longest = max(long, key=lambda i: len(records[i]["tokens"]))
    lines = readers.record_lines(spec, "tagging")
    at = (f"{spec}:{lines[longest]}" if lines and len(lines) > longest
          else f"sentence {longest + 1} of {spec}")
    others = f" ({len(long) - 1} more have over {readers.LONG_SENTENCE})" if len(long) > 1 else ""
    prefix = "predict" if where == "predict" else config.task
    print(f"[{prefix}] Note: the sentence at {at} has {len(records[longest]['tokens']):,} "
          f"tokens{others}: missing blank lines between sentences? CoNLL has a blank line "
          "after each sentence.", flush=True)


def check_dropout_rates(m) -> None:
    """`model.dropout_rate`, `attention_dropout_rate` and `classifier_dropout` are probabilities:
    10 (for 10%) dropped every unit, so the model trained on zeros without a word, and a
    negative rate scaled the units up instead."""
    for key in ("dropout_rate", "attention_dropout_rate", "classifier_dropout"):
        rate = m.get(key, 0.0)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"model.{key}={rate} must be in [0, 1): the probability of dropping "
                             "a unit (0.1 drops 10%)")


def check_data_sizes(d) -> None:
    """The data sizes of a fine-tuning config, checked before any file is read: a negative
    `data.max_train_examples` / `max_eval_examples` would keep all records but the last ones
    (a Python slice), a `data.batch_size` below 1 divide by zero."""
    for key in ("max_train_examples", "max_eval_examples"):
        if d.get(key, 0) < 0:
            raise ValueError(f"data.{key}={d[key]} must be >= 0 (0: all examples)")
    if d.batch_size < 1:
        raise ValueError(f"data.batch_size={d.batch_size} must be >= 1")
    if d.get("num_epochs", 0) < 0:
        raise ValueError(f"data.num_epochs={d.num_epochs} must be >= 0")


def fit_schedule(config, n_train: int) -> int:
    """Fills the schedule from the data: `train.steps` = 0 becomes `data.num_epochs` epochs, and
    `train.eval_every` / `train.checkpoint_every` = 0 become one epoch.

    Explicit values win, so `--config.train.steps=2` still runs two steps. Returns the steps per
    epoch. The config is locked against new keys, not against values; the trainer reads these
    fields after building the task and saves the result in config.json.
    """
    check_data_sizes(config.data)
    steps_per_epoch = n_train // config.data.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{n_train} training examples cannot fill one batch of "
                         f"data.batch_size={config.data.batch_size}")
    if config.train.steps == 0:
        if config.data.num_epochs <= 0:
            raise ValueError(f"train.steps=0 and data.num_epochs={config.data.num_epochs}: set "
                             "one of them to a positive number (train.steps=0 trains "
                             "data.num_epochs epochs)")
        config.train.steps = max(1, math.ceil(config.data.num_epochs * steps_per_epoch))
    if config.train.eval_every == 0:
        config.train.eval_every = steps_per_epoch
    if config.train.checkpoint_every == 0:
        config.train.checkpoint_every = steps_per_epoch
    return steps_per_epoch


def encoder_flops(model_config: bert.BertConfig, seq_len: int) -> float:
    """Training FLOPs of one sequence through the encoder (heads are negligible beside it)."""
    return seq_len * bert.encoder_flops_per_token(model_config, seq_len)


def weighted_cross_entropy(logits, labels, weights):
    """Sum of cross-entropy over positions with weight 1, and the number of such positions."""
    safe = jnp.where(weights > 0, labels, 0)  # IGNORE (-100) must not reach the gather.
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
    return (ce * weights).sum(), weights.sum()


def read_labels(workdir: str) -> list[str]:
    """The labels (output index -> label) `write_labels` saved in `workdir`."""
    path = os.path.join(workdir, "labels.jsonl")
    if not os.path.isfile(path):
        # A workdir copied without it (`tl_jax predict` elsewhere): say what the file is, not
        # only that it is missing; the output units' labels are in no other file.
        raise FileNotFoundError(
            f"{path} does not exist: a classification or tagging run's workdir keeps the label "
            "of each output unit there ({\"id\": 0, \"label\": ...} per line, written by "
            "`tl_jax train`); copy it along with the workdir")
    labels = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                labels.append(json.loads(line)["label"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{path}:{line_no}: expected an object with a \"label\", as "
                                 "`tl_jax train` writes it") from None
    return labels


def write_labels(workdir: str, labels) -> None:
    """Writes `WORKDIR/labels.jsonl` (output index -> label). A workdir whose checkpoints were
    trained with other labels is refused, not overwritten: resuming would give its trained
    output units other meanings (or, with another count, other shapes)."""
    from tl_jax import checkpoint

    path = os.path.join(workdir, "labels.jsonl")
    if os.path.exists(path) and checkpoint.has_saved_step(workdir):
        try:
            saved = read_labels(workdir)
        except ValueError as e:
            raise ValueError(f"{e}; the checkpoints in {workdir} were trained with the labels "
                             "it held. Restore it (it lists the label of output 0, 1, ... as "
                             "{\"id\": 0, \"label\": ...} per line), or delete it to have this "
                             "run's labels written there") from None
        if saved != list(labels):
            raise ValueError(
                f"{workdir} holds checkpoints trained with labels {saved} (labels.jsonl), but "
                f"this run's data gives {list(labels)}; use a new workdir, or set data.labels "
                "to the saved list")
    write_jsonl(path, [{"id": i, "label": label} for i, label in enumerate(labels)])


def check_positive_label(positive: str, labels) -> None:
    """`data.positive_label` (binary F1) must be one of the labels: else F1 is 0 silently."""
    if positive and positive not in labels:
        raise ValueError(f"data.positive_label={positive!r} is not one of the labels "
                         f"{list(labels)}")


def write_jsonl(path: str, rows) -> None:
    """Writes `rows` as JSON lines. The file is written under a temporary name and renamed, so
    an interrupted write (Ctrl-C, a full disk, a bad row) leaves the previous file whole."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with paths.atomic_open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


class EvalPredictions:
    """`evaluate` for a task whose eval set is decoded (`decode`), scored (`score`) and written
    (`write_predictions`) by the same methods `tl_jax predict` uses. Process 0 writes the
    predictions to `WORKDIR/predictions/eval_step_N` + `predictions_extension` (none when
    `workdir` is None)."""

    predictions_extension = ".jsonl"

    def evaluate(self, batches_and_outputs, workdir, step):
        predictions = self.decode(batches_and_outputs)
        report = self.score(predictions)
        if workdir is not None and jax.process_index() == 0:
            self.write_eval_predictions(os.path.join(workdir, "predictions"), step, predictions)
        return report

    def write_eval_predictions(self, directory, step, predictions) -> None:
        self.write_predictions(
            os.path.join(directory, f"eval_step_{step}{self.predictions_extension}"), predictions)


class EncoderTask(EvalPredictions):
    """Methods shared by the fine-tuning tasks. A subclass sets `config`, `encoder` (an
    `Encoder`), `model` (a head model taking input_ids, segment_ids, input_mask),
    `train_arrays` and `eval_arrays`."""

    def train_batches(self):
        if not hasattr(self, "_train"):
            self._train = EpochBatches(self.train_arrays, self.config.data.batch_size,
                                       self.config.seed)
        return self._train

    def eval_batches(self):
        return eval_batches(self.eval_arrays, self.config.data.batch_size)

    @classmethod
    def for_prediction(cls, config, encoder: Encoder, labels, records, truncated=None):
        """The task of a finished run with `records` as its eval set (`tl_jax predict`): built
        from the run's encoder and labels, reading no training data. The subclass's `_build`
        makes the model, and its `encode` the eval arrays (appending the index of each record
        it had to truncate to `truncated`)."""
        task = cls.__new__(cls)
        task.config = config
        task._build(encoder, labels)
        task.train_records, task.eval_records = [], records
        task.eval_arrays = task.encode(records, truncated)
        return task

    def save(self, workdir):
        self.encoder.save(workdir)

    def init_variables(self, rng, batch):
        return self.model.init({"params": rng, "dropout": rng}, batch["input_ids"],
                               batch["segment_ids"], batch["input_mask"], deterministic=True)

    def init_params(self, params, rng):
        del rng
        return self.encoder.load_weights(params)

    def _head_outputs(self, params, batch, rng, train) -> dict:
        outputs, _ = self.model.apply({"params": params}, batch["input_ids"], batch["segment_ids"],
                                      batch["input_mask"], deterministic=not train,
                                      rngs={"dropout": rng})
        return outputs

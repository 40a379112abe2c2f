"""Classification under a transfer strategy (`config.task = "probe"`): feature-based or fine-tuned.

The `classify` task (same data, loss, metrics, evaluation and predictions files) plus:

* the optimizer from `config.transfer` (`optim/transfer.py`): freezing rules, discriminative
  learning rates, STLR, gradual unfreezing, chain-thaw; through the trainer's `make_optimizer`
  hook, so `tl_jax train` runs every strategy unchanged;
* `transfer.adapter_size` / `lora_rank` add adapters / LoRA to the encoder (their weights start
  fresh, the rest comes from `init_from`); `transfer.reinit_top_k` re-initialises the top layers;
* `probe.feature` other than "none": feature-based transfer. The model becomes
  `models.probes.ProbeClassifier`: the encoder from `init_from` (or random, the baseline) is
  frozen, and the probe picks the feature (embeddings, last, second_to_last, sum_last_four,
  concat_last_four, scalar_mix, and the BERT paper's weighted_sum_last_four and
  weighted_sum_all_layers: `models/probes.py`) and the head (linear, bilstm). Freeze `bert/.*` in the rules too,
  so the encoder has no optimizer state (its gradient is stopped inside the model).

`probe.cache_features=True` runs the frozen encoder once over the train and eval sets when the task
is built, then trains the head on the stored features; nothing else changes (the same loss,
metrics, evaluation and predictions files). The encoder runs under the run's mesh (`config.mesh`):
its weights sharded as the trainer shards them, the rows split over the data-parallel devices,
each process feeding its own rows; every process keeps every row's features, as the token
arrays they replace. For the linear head it stores each layer's pooled
vector (N, L+1, H), from which every feature choice follows exactly (pooling is linear), so with
`probe.cache_dir` set one encoder pass serves a whole sweep of features and seeds. The BiLSTM head
needs token-level features and caches the chosen one in memory (float16).

`tl_jax predict` applies a finished run (`for_prediction`) with the weights of its checkpoint,
the frozen encoder's included; a cache-trained probe gets its features computed as the cache
computed them, in the same pass, and no cache is read or written.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from tl_jax import checkpoint, parallel, paths, progress, warm_start
from tl_jax.models import heads, probes
from tl_jax.optim import optimizers, transfer
from tl_jax.tasks import classify, downstream


# Parameters a pretrained BERT checkpoint does not have: they keep their fresh initialisation
# (unless init_from trained them: `Task._not_in_init_from`).
NEW_PARAMS = re.compile(r"(^|/)(attention_adapter|mlp_adapter|lora_a|lora_b)(/|$)")
ADAPTER_PARAMS = re.compile(r"(^|/)(attention_adapter|mlp_adapter)(/|$)")
LORA_PARAMS = re.compile(r"(^|/)(lora_a|lora_b)(/|$)")


class Task(classify.Task):
    """The `probe` task (contract: `tl_jax/tasks/__init__.py`)."""

    predicting = False  # `for_prediction`'s task: `tl_jax predict` on a finished run
    _init_from_reported = False  # `init_params` has loaded init_from and said what it took

    def __init__(self, config, workdir):
        transfer.check_config(config.transfer, config.optimizer)  # before reading any data
        p = config.probe
        check_config(p)
        self.workdir = workdir  # a resume whose init_from is gone reads its own checkpoint
        super().__init__(config, workdir)  # builds the model (`_build`)
        if p.cache_features and p.feature == "none":
            raise ValueError("probe.cache_features needs a frozen encoder: set probe.feature.")
        self.steps_per_epoch = len(self.train_records) // config.data.batch_size
        self.cached = bool(p.cache_features)
        if self.cached:
            self.train_arrays = self._cache(self.train_arrays, "train")
            self.eval_arrays = self._cache(self.eval_arrays, "eval")
            self.__dict__.pop("_frozen_encoder", None)  # its weights: the trainer loads its own
        if p.feature != "none":
            # The frozen encoder runs forward only (a third of its training FLOPs), and not at
            # all once its features are cached; the head trains on them.
            head_params = sum(np.prod(x.shape) for x in jax.tree.leaves(jax.eval_shape(
                lambda r: self.init_variables(r, self.example_batch(1))["params"]["head"],
                jax.random.PRNGKey(0))))
            self.flops_count_frozen = True  # the trainer must not discount them again
            encoder = 0.0 if self.cached else self.flops_per_example / 3
            self.flops_per_example = encoder + 6.0 * float(head_params) * (
                1 if self.pooled else config.data.max_seq_length)

    def _build(self, encoder, labels):
        """classify's, with `transfer`'s adapters / LoRA in the encoder and, for `probe.feature`,
        the probe model (training and `for_prediction`)."""
        super()._build(encoder, labels)
        p, t = self.config.probe, self.config.transfer
        # An init_from run that trained bottleneck adapters (configs/transfer_adapters.py): its
        # encoder is the one with them, and they cannot be folded into the kernels as LoRA is.
        # This model builds them (transfer.adapter_size 0 or the same size) and takes them.
        # Adapters of another size can take none of them, and would sit on the encoder beneath
        # them: refused here, before any data is encoded. (`tl_jax predict`: the run's size.)
        source_adapters = encoder.model_config.adapter_size
        if t.adapter_size and source_adapters and t.adapter_size != source_adapters:
            raise ValueError(
                f"transfer.adapter_size={t.adapter_size}, but init_from={encoder.init_from!r} "
                f"trained bottleneck adapters of size {source_adapters}, which cannot be folded "
                "into the kernels nor taken by adapters of another size (left out, the encoder "
                "would be the one beneath them): set transfer.adapter_size="
                f"{source_adapters} (or 0, the same: this probe then builds init_from's).")
        self.model_config = self.model_config.replace(
            adapter_size=t.adapter_size or source_adapters, lora_rank=t.lora_rank,
            lora_alpha=t.lora_alpha)
        width = self.model_config.hidden_size
        if t.lora_rank > width:
            # It trained without a word: A @ B, (width x r) @ (r x width), has rank at most
            # `width` whatever r is, so the extra rank added parameters and no capacity, and
            # the update's scale lora_alpha / lora_rank shrank with it.
            raise ValueError(
                f"transfer.lora_rank={t.lora_rank} is larger than the encoder's hidden_size="
                f"{width}: LoRA's update A @ B has rank at most {width} whatever the rank, so "
                "the excess adds parameters but nothing the update can learn (and shrinks its "
                f"scale lora_alpha / lora_rank); set transfer.lora_rank <= {width} (LoRA's "
                "paper: 1 to 64).")
        need = probes.layers_needed(p.feature) if p.feature != "none" else 1
        if self.model_config.num_layers < need:
            # The probe found it at its first call, after the data was tokenised (and with a
            # feature cache, encoded), naming no key.
            raise ValueError(f"probe.feature={p.feature!r} needs {need} encoder layers; the "
                             f"encoder has {self.model_config.num_layers} (model.num_layers or "
                             "init_from's depth): pick another feature, e.g. 'last'")
        if p.feature == "none":
            self.model = heads.BertForSequenceClassification(
                self.model_config, len(self.labels), pooling=self.config.model.pooling,
                classifier_dropout=self.config.model.classifier_dropout)
        else:
            self.model = probes.ProbeClassifier(
                self.model_config, len(self.labels), feature=p.feature, head_type=p.head,
                pooling=p.pooling, lstm_hidden=p.lstm_hidden, mix_layer_norm=p.mix_layer_norm,
                dropout_rate=self.config.model.classifier_dropout)
        # Pooled per-layer vectors suffice only where pooling commutes with the feature choice.
        self.pooled = p.head == "linear" and not p.mix_layer_norm
        self.selected = p.feature not in probes.MIXED_FEATURES

    @classmethod
    def for_prediction(cls, config, encoder, labels, records, truncated=None):
        """The task of a finished run with `records` as its eval set (`tl_jax predict`). Every
        weight, the frozen encoder's included, comes from the run's checkpoint. A probe trained
        on cached features gets them from that encoder in the same pass, computed as the cache
        computed them (`_features`); no feature cache is read or written."""
        task = super().for_prediction(config, encoder, labels, records, truncated)
        task.predicting, task.cached = True, False
        return task

    def init_params(self, params, rng):
        """Pretrained encoder from `init_from`; adapters, LoRA and the head stay fresh; then
        `transfer.reinit_top_k` layers (and the pooler) go back to their fresh values.

        An `init_from` run that trained LoRA (a configs/transfer_lora.py workdir) gives its
        pairs to this model's LoRA where they have the same rank and scale; else the warm start
        folds them into the kernels, so the encoder is the one that run trained, not the
        pretrained one beneath it (its lora_a / lora_b were left out as unused). One that
        trained adapters (configs/transfer_adapters.py) gives them to this model's, which
        `_build` made of their size: kept fresh, they were dropped the same way."""
        if self._from_own_checkpoint():
            # A resumed run's feature pass, init_from gone: the frozen encoder is the one its
            # checkpoint holds (the weights the trainer restores: unchanged since init_from,
            # the reinit_top_k layers and fresh adapters at the values it drew).
            try:
                source, step = checkpoint.load_params_from_workdir(self.workdir, only=("bert",))
            except checkpoint.CheckpointError as e:  # every checkpoint damaged: nothing holds it
                raise checkpoint.CheckpointError(
                    f"{e} With init_from={self.encoder.init_from} gone, the probe's frozen "
                    "encoder can only come from this workdir's checkpoints: put init_from back "
                    "(or the checkpoints, from a copy of the workdir) to resume it.") from None
            params, _ = checkpoint.merge_matching(params, source)
            if not self._init_from_reported:
                # (The line before said init_from is gone: `Encoder.from_config`.)
                warm_start.say(f"[init_from] the feature pass encodes with the frozen encoder "
                               f"of {self.workdir}'s checkpoint (step {step}).")
            self._init_from_reported = True
            return params
        fresh = params
        # The encoder's shape is init_from's: a LoRA rank there means its checkpoint holds
        # LoRA pairs, and this model's LoRA is offered to the warm start with the rest (taken
        # where the pairs fit it, fresh where they are folded); an adapter size, that it holds
        # adapters, which this model's take. What init_from lacks stays out, fresh.
        fresh_only = self._not_in_init_from()
        new, base = transfer.split_params(
            params, lambda path: bool(fresh_only and fresh_only.search(path)))
        # A probe with a feature cache loads init_from twice in a run, for the feature pass
        # (`_frozen_encoder`) and in the trainer (the weights its checkpoint keeps): the
        # warm start's report is printed at the first.
        reported = self._init_from_reported
        with warm_start.unreported() if reported else contextlib.nullcontext():
            params = transfer.merge_params(self.encoder.load_weights(base, self.model_config), new)
        self._init_from_reported = True
        k = self.config.transfer.reinit_top_k
        return transfer.reinit_top_layers(params, fresh, k, self.config.transfer.layer_pattern,
                                          quiet=reported)

    def _from_own_checkpoint(self) -> bool:
        """Whether the encoder's weights come from this run's checkpoint, not init_from: a
        resumed run (its encoder's shape from ENCODER_MODEL_FILE) whose init_from is gone. The
        trainer restores every weight; the feature cache's encoder pass, which runs before it,
        reads them here. (No checkpoint left: init_from is needed, and `load_weights` says so.)"""
        return bool(self.encoder.resumed and self.encoder.init_from
                    and not os.path.exists(self.encoder.init_from)
                    and getattr(self, "workdir", None)
                    and checkpoint.has_saved_step(self.workdir))

    def save(self, workdir):
        """classify's (labels, tokenizer), and the encoder's own shape (ENCODER_MODEL_FILE):
        this model's resolved_model adds transfer's adapters and LoRA to it. A resume takes the
        encoder's shape from it, so init_from may be gone by then (`Encoder.from_config`)."""
        super().save(workdir)
        checkpoint.save_json(os.path.join(workdir, downstream.ENCODER_MODEL_FILE),
                             dataclasses.asdict(self.encoder.model_config))

    def _not_in_init_from(self):
        """The pattern of this model's added parameters (adapters, LoRA) that `init_from` has
        none of, which keep their fresh initialisation; None where it has both."""
        source = self.encoder.model_config
        if source.adapter_size and source.lora_rank:
            return None
        if source.adapter_size:
            return LORA_PARAMS
        return ADAPTER_PARAMS if source.lora_rank else NEW_PARAMS

    def _trained_in_init_from(self):
        """The pattern of this model's added parameters that `init_from`'s trained ones fill
        (adapters: `_build` gave this model their size; LoRA pairs the warm start takes as they
        are, by its rule: `warm_start.lora_taken_as_is`), None where there are none."""
        source, t = self.encoder.model_config, self.config.transfer
        names = ["attention_adapter", "mlp_adapter"] if source.adapter_size else []
        if warm_start.lora_taken_as_is(t.lora_rank, t.lora_alpha, source.lora_rank,
                                       source.lora_alpha):
            names += ["lora_a", "lora_b"]
        return re.compile(rf"(^|/)({'|'.join(names)})(/|$)") if names else None

    def make_optimizer(self, total_steps):
        """The trainer's hook: the optimizer of `config.transfer` (freeze `bert/.*`)."""
        if self.predicting:  # no step is taken: no transfer plan to check, build and print
            return optimizers.make_optimizer(self.config.optimizer, total_steps)
        tx, schedule = transfer.make_task_optimizer(self, self.config, total_steps,
                                                    self.steps_per_epoch)
        feature = self.config.probe.feature
        plan = self.transfer_plan
        trained = [p for p in plan.paths if plan.optimizer_mask[p] and p.startswith("bert/")]
        if feature != "none" and trained:
            # Its gradient is stopped, but weight decay would still shrink the "frozen" encoder.
            rule = plan.rules[plan.info[trained[0]].rule][2]
            raise ValueError(
                f"probe.feature={feature!r} uses a frozen encoder, but transfer rule {rule!r} "
                f"trains {len(trained)} of its tensors (e.g. {trained[0]!r}), which weight decay "
                "would change; put (r'bert/.*', 'frozen') first in transfer.rules.")
        # Adapters or LoRA taken from init_from are trained ones: frozen, they still change
        # the encoder.
        taken = self._trained_in_init_from()
        added = [p for p in plan.paths if NEW_PARAMS.search(p)
                 and not (taken and taken.search(p))]
        if feature == "none" and added and not any(plan.optimizer_mask[p] for p in added):
            # Frozen at their fresh initialisation they change nothing: only the head trains.
            t = self.config.transfer
            rule = plan.rules[plan.info[added[0]].rule][2]
            raise ValueError(
                f"transfer.adapter_size={t.adapter_size} / lora_rank={t.lora_rank} add "
                f"{len(added)} fresh tensors (e.g. {added[0]!r}), but transfer rule {rule!r} "
                "freezes all of them, so they would never train; put their rule "
                "((r'.*_adapter/.*', 'train') or (r'.*/lora_[ab]', 'train')) before "
                "(r'bert/.*', 'frozen') in transfer.rules.")
        return tx, schedule

    # -- feature cache ----------------------------------------------------------------------

    def _cache_file(self, split: str) -> str:
        """Where a split's pooled features live on disk ("" when not cached to disk)."""
        c = self.config
        if not (c.probe.cache_dir and self.pooled) or self._from_own_checkpoint():
            # (Keyed by init_from's path and files, not by the checkpoint the encoder comes
            # from when init_from is gone: such a run encodes its features afresh.)
            return ""
        # The seed picks the encoder's random weights: all of them from scratch, the top
        # layers with reinit_top_k, the adapters' (near-identity) initialisation.
        # (Adapters init_from trained are taken, not drawn.)
        source = self.encoder.model_config
        seeded = not c.init_from or c.transfer.reinit_top_k or (
            c.transfer.adapter_size and not source.adapter_size)
        # Without init_from and data.tokenizer the vocabulary is trained on the training text:
        # the eval split's token ids (so its features) depend on the training data too.
        vocabulary = [] if c.init_from or c.data.tokenizer or split == "train" else [
            c.data.train_file, c.data.max_train_examples, _stamp(c.data.train_file)]
        # An init_from run that trained LoRA: its update is in this encoder (folded into the
        # kernels, or taken by its LoRA); caches written before it was hold the features of the
        # encoder beneath it, under a key without this entry. (None for other sources: their
        # keys are unchanged.) The same for a run that trained adapters, now taken, not fresh.
        trained = [["init_from LoRA rank", source.lora_rank]] if source.lora_rank else []
        if source.adapter_size:
            trained.append(["init_from adapter size", source.adapter_size])
        key = json.dumps([c.init_from, c.seed if seeded else None, c.model.size,
                          c.data.train_file if split == "train" else c.data.eval_file,
                          c.data.max_seq_length, c.data.max_train_examples if split == "train"
                          else c.data.max_eval_examples, c.probe.pooling, c.data.text_field,
                          c.data.text_b_field,
                          # Anything else that changes the encoder or its input ids.
                          c.model.num_layers, c.model.dtype, c.data.tokenizer,
                          c.data.tokenizer_vocab_size, c.transfer.reinit_top_k,
                          c.transfer.adapter_size, c.transfer.lora_rank,
                          # The same paths with other contents: an encoder trained further in
                          # its workdir, replaced weights, an edited data file.
                          _stamp(c.init_from), _stamp(c.data.tokenizer),
                          _stamp(c.data.train_file if split == "train" else c.data.eval_file),
                          *vocabulary, *trained],
                         sort_keys=True)
        digest = hashlib.sha1(key.encode()).hexdigest()[:16]
        return os.path.join(c.probe.cache_dir, f"probe_features_{split}_{digest}.npy")

    def _cache(self, arrays: dict, split: str) -> dict:
        """Replaces token arrays by encoder features: {features, labels, valid[, input_mask]}."""
        out = {"labels": arrays["labels"], "valid": np.ones(len(arrays["labels"]), np.int32)}
        path = self._cache_file(split)
        # Encoding runs collectives over every process: all of them read the file, or none.
        if path and _on_every_process(os.path.exists(path)):
            try:
                out["features"] = np.load(path)
            except (OSError, ValueError, EOFError) as e:
                # A damaged file (a full disk, a copy cut short) failed with numpy's traceback.
                raise ValueError(f"{path}: the cached {split} features do not read "
                                 f"({str(e).splitlines()[0]}); delete it (the next run encodes "
                                 "them again).") from None
            want = (len(arrays["labels"]), self.model_config.num_layers + 1,
                    self.model_config.hidden_size)
            if out["features"].shape != want:
                raise ValueError(f"{path}: cached features of shape {out['features'].shape}, "
                                 f"but this run's {split} set and encoder need {want}; "
                                 "delete it.")
            return out
        out["features"] = self._encode(arrays, split)
        if not self.pooled:
            out["input_mask"] = arrays["input_mask"]
        if path and jax.process_index() == 0:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = path + f".tmp{os.getpid()}.npy"
            np.save(tmp, out["features"])
            os.replace(tmp, path)  # atomic: parallel sweeps never read half a file
        return out

    def _encode(self, arrays: dict, split: str = "train") -> np.ndarray:
        """Runs the frozen encoder (the weights the trainer will load) over every example, under
        the run's mesh (`config.mesh`): the weights sharded as the trainer shards them, each
        chunk of rows split over the data-parallel devices (data x fsdp), so N devices each
        encode 1/N of it. In a multi-process run each process feeds its own rows of every chunk
        (as it feeds the trainer's batches), and every process gets the whole chunk's features
        back: the cached arrays are host arrays every process holds in full, as the token
        arrays they replace (the trainer's shuffled batches draw any row on any process, and
        process 0 writes the whole cache file). The features come out of the encoder split over
        the data-parallel devices as the rows went in (rows / shards a device), and reach every
        process's host through its own devices, split over them (`_rows_to_host`).

        A bar counts the split's examples (on process 0, with `train.progress`; plain lines off
        a terminal): the pass ran silent between the truncation notes and the transfer table,
        minutes for a large set or encoder on a CPU, a run that looked hung."""
        mesh, rules, params, features = self._frozen_encoder
        example = self.example_batch(1)
        keys = ("input_ids", "segment_ids", "input_mask")
        # One row's features, for the chunk's size (what one device holds of it).
        row = jax.eval_shape(self._features, params, *(example[k] for k in keys))
        shards = int(np.prod([mesh.shape[a] for a in parallel.BATCH_AXES]))
        bs = encode_chunk_rows(shards, jax.process_count(),
                               int(np.prod(row.shape[1:])) * row.dtype.itemsize,
                               local_devices=len(_process_devices(mesh)[0]))
        to_host = _rows_to_host(mesh)
        local = bs // jax.process_count()
        chunks, pending, n = [], None, len(arrays["labels"])
        shown = bool(self.config.train.progress) and jax.process_index() == 0 and n > bs
        # Counted by hand under `with`: Ctrl-C or an error ends a line-mode bar saying so.
        with parallel.mesh_context(mesh, rules), progress.bar(
                total=n, desc=f"probe features: {split}", unit="example", disable=not shown,
                leave=False) as bar:
            for start in range(0, n, bs):
                lo = start + jax.process_index() * local
                part = {}
                for k in keys:  # this process's rows, zeros past the end (one compiled shape)
                    a = arrays[k][lo:lo + local]
                    part[k] = np.concatenate([a, np.zeros((local - len(a),) + a.shape[1:],
                                                          a.dtype)]) if len(a) < local else a
                batch = parallel.host_batch_to_global(part, mesh)
                out = features(params, *(batch[k] for k in keys))
                if pending is not None:  # read the previous chunk while this one runs
                    chunks.append(to_host(pending[0])[:pending[1]])
                    bar.update(pending[1])
                pending = (out, min(bs, n - start))
            if pending is not None:
                chunks.append(to_host(pending[0])[:pending[1]])
                bar.update(pending[1])
        return np.concatenate(chunks)

    @functools.cached_property
    def _frozen_encoder(self):
        """`(mesh, rules, params, features)` for `_encode`: the run's mesh and rules, the weights
        the trainer will load, and the compiled feature pass. Made once for both splits (each
        split loaded `init_from` and compiled the pass again); dropped once they are cached."""
        import flax.linen as nn

        mesh, rules = self._mesh()
        example = self.example_batch(1)

        def init(rng):
            return self.init_variables(rng, example)["params"]

        rng = jax.random.PRNGKey(self.config.seed)  # the trainer's (`init_state`)
        boxed = jax.eval_shape(init, rng)
        shardings = parallel.logical_to_shardings(boxed, mesh, rules)
        # Initialised sharded (outside the mesh context: the one-row example batch would not
        # split over the batch axes; the values do not depend on either), then the pretrained
        # weights, as `train.build_trainer`'s `init_state` does.
        params = jax.jit(lambda r: nn.unbox(init(r)), out_shardings=shardings)(rng)
        params = jax.device_put(self.init_params(params, None), shardings)
        # The weights are an argument, not constants closed over: closed over, they were embedded
        # in the program (megabytes of constants per compile, one program per weight set).
        # The features stay split over the batch axes, as the rows came in.
        rows = parallel.batch_sharding(mesh)
        features = jax.jit(self._features, in_shardings=(shardings, rows, rows, rows),
                           out_shardings=rows)
        return mesh, rules, params, features

    def _mesh(self):
        """The run's mesh and logical-axis rules (`config.mesh`), as the trainer builds them."""
        return parallel.make_mesh(self.config.mesh), parallel.axis_rules(self.config.mesh)

    def _features(self, params, ids, segments, mask):
        """What the cache holds for a batch: the frozen encoder's pooled layers (B, N+1, H) for
        the linear head, else the chosen token-level feature (every layer, for a learned mix)
        in float16."""
        model = self.model
        layers, _ = model.apply({"params": params}, ids, segments, mask, method=model.encode)
        if self.pooled:
            return probes.pool(layers, mask, model.pooling)  # (B, N+1, H)
        if self.selected:
            layers = model.apply({"params": params}, layers, mask, method=model.select)
        return layers.astype(jnp.float16)  # (B, [N+1,] T, D)

    # -- batches and loss -------------------------------------------------------------------

    def example_batch(self, batch_size):
        batch = super().example_batch(batch_size)
        if getattr(self, "cached", False) and "features" in getattr(self, "train_arrays", {}):
            for k in ("features", "valid"):
                v = self.train_arrays[k]
                batch[k] = np.zeros((batch_size,) + v.shape[1:], v.dtype)
        return batch

    def _logits(self, params, batch, rng, train):
        if self.cached:
            features = batch["features"]
        elif self.predicting and self.config.probe.cache_features:
            # Trained (and evaluated) on cached features: the same features, from this batch.
            features = self._features(params, batch["input_ids"], batch["segment_ids"],
                                      batch["input_mask"])
        else:
            return super()._logits(params, batch, rng, train)
        mask = None if self.pooled else batch["input_mask"]
        return self.model.apply(
            {"params": params}, features, mask, pooled=self.pooled, deterministic=not train,
            selected=self.selected and not self.pooled, rngs={"dropout": rng},
            method=self.model.probe)

    def loss_fn(self, params, batch, rng, train):
        if not self.cached:
            return super().loss_fn(params, batch, rng, train)
        logits = self._logits(params, batch, rng, train)
        # 0 on rows padding an eval batch, 1 on every training row: accumulated micro-batches
        # count the same rows, as the classifier's (no `loss_normalizers` needed).
        weights = batch["valid"].astype(jnp.float32)
        ce_sum, n = downstream.weighted_cross_entropy(logits, batch["labels"], weights)
        correct = ((jnp.argmax(logits, -1) == batch["labels"]) * weights).sum()
        return ce_sum / jnp.maximum(n, 1.0), dict(loss=(ce_sum, n), accuracy=(correct, n))


# The feature cache's chunks (`encode_chunk_rows`): rows per data-parallel device, the fewest
# rows per chunk, and the most bytes of a chunk's features on one device.
ENCODE_ROWS_PER_SHARD = 8
ENCODE_MIN_ROWS = 64
ENCODE_MAX_DEVICE_BYTES = 256 * 2**20


def encode_chunk_rows(batch_shards: int, processes: int, row_bytes: int,
                      local_devices: int = 1,
                      rows_per_shard: int = ENCODE_ROWS_PER_SHARD,
                      min_rows: int = ENCODE_MIN_ROWS,
                      max_bytes: int = ENCODE_MAX_DEVICE_BYTES) -> int:
    """Rows per chunk of the feature cache's encoder pass: a multiple of the batch shards
    (data x fsdp, so every device gets whole rows), of the processes (each feeds an equal
    share) and, with more than one process, of the devices each process has (`local_devices`:
    each process's host receives the whole chunk through them, split evenly), aiming at
    `rows_per_shard` rows per device and at least `min_rows`.

    A fixed 64 rows gave each device 64 / shards rows: 1 on 64 data shards, so a pod paid a
    dispatch and a host round trip for every row each device encoded, on matmuls of one row's
    tokens. Eight rows per device (1,024 tokens at sequence length 128) amortise those, while
    the encoder's activations stay small (a forward pass: no gradients, no optimizer state).
    A choice by reasoning, not timed.

    The bound is the features one device holds, twice (the chunk read while the next one
    runs): the encoder's output is split over the batch shards, `rows / batch_shards` rows a
    device, and with more than one process each process's devices then hold the whole chunk
    between them on its way to the host, `rows / local_devices` rows each. Token-level
    features of every layer are megabytes per row (13 layers x 128 tokens x 768 x 2 bytes =
    2.5 MB for BERT-base), so the chunk is cut to `max_bytes` of features per device, though
    never below the smallest chunk allowed (the lcm above: one row per shard when the
    processes and their devices divide the shards). Every process's host holds the whole
    chunk for a moment, as it holds all of the cached features afterwards. Up to 8 data
    shards with small rows this is the 64 rows it always was.
    """
    for name, value in (("batch_shards", batch_shards), ("processes", processes),
                        ("row_bytes", row_bytes), ("local_devices", local_devices)):
        if value < 1:
            raise ValueError(f"encode_chunk_rows: {name}={value}; expected >= 1")
    split = batch_shards if processes == 1 else min(batch_shards, local_devices)
    unit = math.lcm(batch_shards, processes, local_devices if processes > 1 else 1)
    want = unit * -(-max(min_rows, rows_per_shard * batch_shards) // unit)  # rounded up
    fit = unit * max(1, max_bytes * split // row_bytes // unit)  # rounded down, at least one unit
    return min(want, fit)


def _process_devices(mesh) -> list:
    """The devices of `mesh`, one list per process (in process order, each in id order)."""
    groups = {}
    for device in mesh.devices.flat:
        groups.setdefault(device.process_index, []).append(device)
    out = [sorted(groups[p], key=lambda d: d.id) for p in sorted(groups)]
    if len({len(g) for g in out}) != 1:
        raise ValueError(f"probe feature cache: the processes hold unequal shares of mesh "
                         f"{dict(mesh.shape)}: {[len(g) for g in out]} devices")
    return out


def _rows_to_host(mesh):
    """A function from a chunk of features whose rows are split over the batch axes of `mesh`
    to all of its rows in this process's host memory, on every process.

    One process reads its devices' shards. With more, every process needs every row (the
    trainer's shuffled batches draw any row on any process, and process 0 writes the cache
    file), and the rows cross processes only on devices: the chunk is resharded to rows split
    over each process's own devices and repeated across the processes (`rows / local devices`
    a device: the whole chunk only where a process has one device), and each process reads its
    devices' shards. Not `multihost_utils.process_allgather`, which replicates a sharded array
    whole on every device."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    groups = _process_devices(mesh)
    spread = None
    if len(groups) > 1:
        spread = NamedSharding(Mesh(np.array(groups), ("processes", "local")),
                               PartitionSpec("local"))

    def to_host(x: jax.Array) -> np.ndarray:
        if spread is not None:
            x = jax.device_put(x, spread)
        out, seen, covered = np.empty(x.shape, x.dtype), set(), 0
        for shard in x.addressable_shards:  # replicas (tensor axis, processes) read once
            key = tuple((i.start, i.stop) for i in shard.index)
            if key not in seen:
                seen.add(key)
                out[shard.index] = np.asarray(shard.data)
                covered += shard.data.size
        if covered != out.size:  # a sharding that leaves rows on other processes' devices
            raise AssertionError(f"probe feature cache: this process's devices hold "
                                 f"{covered} of the {out.size} features of a chunk of shape "
                                 f"{x.shape} ({x.sharding})")
        return out

    return to_host


def check_config(p) -> None:
    """The `probe` settings that are wrong whatever the model and data, naming the key: checked
    by the task before it reads any data, and by a sweep for every run before the first trains
    (a misspelt feature failed as "probe feature='layer_3'; ..." at the model's first call,
    after the data was tokenised)."""
    for key, value, valid in (("feature", p.feature, ("none",) + probes.FEATURES),
                              ("head", p.head, probes.HEADS),
                              ("pooling", p.pooling, probes.POOLINGS)):
        if value not in valid:
            raise ValueError(f"probe.{key}={value!r}; expected one of {valid}")


def default_config():
    """The `probe` config section."""
    import ml_collections

    return ml_collections.ConfigDict(dict(
        feature="none",          # none (fine-tune) | embeddings | last | second_to_last |
                                 # sum_last_four | concat_last_four | scalar_mix |
                                 # weighted_sum_last_four | weighted_sum_all_layers
        head="linear",           # linear | bilstm
        pooling="mean",          # linear head: mean over tokens | cls
        lstm_hidden=128,
        mix_layer_norm=False,    # learned mixes (scalar_mix, weighted_sum_*): normalise
                                 # each layer first (ELMo's option)
        cache_features=False,    # run the frozen encoder once, train the head on stored features
        cache_dir="",            # linear head: keep pooled features here across runs
    ))


def _on_every_process(flag: bool) -> bool:
    """Whether `flag` holds on every process of the run (itself, in a single-process run). A
    cache file one process sees and another does not (a cache_dir that is not shared, a sweep
    writing it meanwhile) must not send one into the encoder's collectives alone."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils
    return bool(np.all(multihost_utils.process_allgather(np.int32(flag))))


def _stamp(path: str) -> list:
    """What tells one version of `path` from another without reading it: (name, size, mtime)
    of the file, or of each file in the directory and in its `checkpoints/` (a tl_jax workdir,
    whose newest checkpoint is the one loaded). Empty for "" and for sources that are not
    files (gensim:..., tfds:...)."""
    path = paths.expand(path or "")
    if os.path.isfile(path):
        return [[os.path.basename(path), os.path.getsize(path), os.stat(path).st_mtime_ns]]
    if not os.path.isdir(path):
        return []
    stamps = []
    for folder in (path, os.path.join(path, "checkpoints")):
        if os.path.isdir(folder):
            for name in sorted(os.listdir(folder)):
                st = os.stat(os.path.join(folder, name))
                stamps.append([name, st.st_size, st.st_mtime_ns])
    return stamps

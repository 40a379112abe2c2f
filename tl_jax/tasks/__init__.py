"""Objectives and downstream tasks: what the one trainer (`tl_jax/train.py`) trains.

A task is a plain Python object built by `build_task(config, workdir)`. The trainer relies on
these attributes only (the contract every task file implements):

    task.model : flax.linen.Module
        Returns `(outputs, intermediates)` from `apply`.
    task.example_batch(batch_size) -> dict[str, np.ndarray]
        A batch of the right shapes and dtypes (zeros are fine); used for `jax.eval_shape` init.
    task.init_variables(rng, batch) -> variables
        `self.model.init(...)` on an example batch (params still boxed with logical axis names);
        the trainer calls it under `jax.eval_shape` and under a jitted init with out_shardings.
    task.init_params(params, rng) -> params
        Hook called on the freshly initialised (unboxed, plain-pytree) params: e.g. load weights
        from `config.init_from`. Return `params` unchanged when there is nothing to load.
    task.loss_fn(params, batch, rng, train: bool) -> (loss, metrics)
        Pure and jittable. `metrics` maps a name to a `(sum, count)` pair of scalars so the
        trainer can average across micro-batches, devices and eval batches exactly.
    task.train_batches() -> iterator
        Yields host-local numpy batch dicts (this process's rows of the global batch, size
        `config.batch_size // jax.process_count()`), forever (epochs wrap). It also has
        `get_state() -> dict` (JSON-serialisable) and `set_state(dict)` so a restart continues
        exactly where it stopped.
    task.eval_batches() -> iterable of host-local numpy batch dicts (finite).
    task.flops_per_example : float
        Training FLOPs (forward + backward) per example, for MFU.
    task.tokens_per_example : int
        Tokens one example contributes to throughput figures: its padded length (every
        position the model runs, padding included), as the HF comparisons in benchmarks/ count.
    task.save(workdir)
        Writes what a user needs beside the checkpoint (tokenizer, label map, ...).
    Task.eval_metric_names(config) -> tuple[str, ...]      (a staticmethod of the class)
        The held-out metrics an eval reports, from the config alone (no data is read): the keys
        of `loss_fn`'s metrics and of `evaluate`'s result, which the trainer logs as eval/NAME;
        () when the config holds nothing out (data.eval_fraction=0). Read through
        `eval_metric_names` below, so that a misspelt `tl_jax sweep --metrics=eval/...` is
        refused before the first run trains. Tests run each task's eval and compare.

Optional:
    task.progress_keys / task.summary_keys : tuples of metric names shown in the progress bar
        and in the final summary line (e.g. ("mlm_accuracy",), ("eval/mlm_accuracy",)).
    task.make_optimizer(total_steps) -> (tx, schedule)
        Replaces the default `optim.optimizers.make_optimizer(config.optimizer, ...)`.
    task.loss_normalizers(batch) -> dict[str, scalar]
        For tasks whose loss is a mean over a count that depends on the batch's contents (masked
        predictions, real tokens, labelled sub-words): those counts, from the batch's weights
        alone (pure, jittable, no model call). With `optimizer.grad_accum_steps` > 1 the trainer
        computes them on the whole batch and calls `task.loss_fn(..., normalizers=...)` on each
        micro-batch, which must then divide its sums by these counts (`normalized`) instead of
        its own, so that the micro-batch losses and gradients SUM to the whole batch's: exactly
        one big batch, however the counts fall between micro-batches. Tasks without it are
        averaged over the micro-batches, which is exact only when every micro-batch holds the
        same count (one example per training row: classification, SQuAD windows).

Optional, for tasks whose evaluation needs decoding (SQuAD spans, BIO entities):
    task.predict_fn(params, batch) -> outputs           (pure, jittable)
    task.evaluate(batches_and_outputs, workdir, step) -> dict[str, float]
        Gets a list of `(None, outputs)` pairs, one per eval batch: predict_fn's outputs as
        numpy, with every process's rows on every process. The input batch is not gathered
        (the None), so predict_fn returns what decoding needs of it (`row`, ...). Writes
        predictions files under `workdir` (none when it is None: a rerun over a finished run)
        and returns metrics. When present the trainer calls it after each eval pass.

Tasks are picked by `config.task`. Adding a task means adding one file here and one line below.
"""
import importlib
import os

import jax
import jax.numpy as jnp

# config.task -> module path; each module defines `Task(config, workdir)`.
TASKS = {
    "bert_pretrain": "tl_jax.tasks.bert_pretrain",
    "electra": "tl_jax.tasks.electra",
    "clm": "tl_jax.tasks.clm",
    "lm_classify": "tl_jax.tasks.lm_classify",
    "classify": "tl_jax.tasks.classify",
    "tag": "tl_jax.tasks.tag",
    "squad": "tl_jax.tasks.squad",
    "bilm": "tl_jax.tasks.bilm",
    "probe": "tl_jax.tasks.probe",
    "distill": "tl_jax.tasks.distill",
}


# What `task.save` writes that a resumed run reads back rather than rebuilds: the vocabulary its
# checkpoints were trained with. Every other task saves a `tokenizer/` folder.
SAVED_VOCABULARY = {"bilm": "vocab.txt"}


def build_task(config, workdir):
    """Builds the task named by `config.task`."""
    name = config.task
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r} in config.task; known tasks: {sorted(TASKS)}")
    if workdir:
        check_saved_vocabulary(name, workdir)
    module = importlib.import_module(TASKS[name])
    return module.Task(config, workdir)


def eval_metric_names(config) -> tuple[str, ...]:
    """The held-out metrics a run of `config` reports at each eval, as the trainer logs them
    ("eval/accuracy", ...): its task's declaration (`Task.eval_metric_names`), without building
    the task or reading any data. Whether the run evaluates at all (train.eval_every) is the
    trainer's; this is what an eval gives when it runs. A name listed may still be missing
    where the held-out data decide it (SQuAD 2.0's HasAns_/NoAns_ figures need both kinds of
    question); one not listed is never reported."""
    name = config.task
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r} in config.task; known tasks: {sorted(TASKS)}")
    task_class = importlib.import_module(TASKS[name]).Task
    return tuple(f"eval/{metric}" for metric in task_class.eval_metric_names(config))


def held_out_metrics(config, names: tuple[str, ...]) -> tuple[str, ...]:
    """A pretraining task's eval metric names: `names`, or none when data.eval_fraction=0 holds
    none of its corpus out (the tasks that evaluate on a held-out fraction)."""
    return tuple(names) if config.data.eval_fraction > 0 else ()


def check_eval_metric(config, metric: str, key: str = "train.best_metric") -> None:
    """Refuses `metric` (the value of config key `key`, e.g. train.best_metric) when no eval of
    a run of `config` would report it: a misspelt name would otherwise be found only at the first
    eval, or never (no best checkpoint kept)."""
    names = eval_metric_names(config)
    if metric not in names:
        raise ValueError(
            f"{key}={metric!r} is not among the eval metrics of task {config.task!r}: "
            + (", ".join(names) if names else "it reports none with this config "
               "(data.eval_fraction=0 holds nothing out)"))


def check_saved_vocabulary(name: str, workdir: str) -> None:
    """A workdir with checkpoints must still hold the vocabulary they were trained with.

    Without it (deleted, or left behind when the workdir was copied) a task builds a new one from
    the config and the data, and the resumed weights would read every token id as another token:
    a new BPE or WordPiece vocabulary of the same size restores without any shape error."""
    from tl_jax import checkpoint

    if not checkpoint.has_saved_step(workdir):
        return
    saved = os.path.join(workdir, SAVED_VOCABULARY.get(name, "tokenizer"))
    if os.path.isfile(saved) or (os.path.isdir(saved) and os.listdir(saved)):
        return
    raise checkpoint.CheckpointError(
        f"{workdir} holds checkpoints but not {os.path.basename(saved)}"
        f"{'/' if name not in SAVED_VOCABULARY else ''}, the vocabulary they were trained with "
        "(deleted, or not copied with the workdir?). A new one would give every token id "
        f"another meaning. Put it back in {saved}, or train in a new workdir.")


def note_undefined(task, names, why: str) -> None:
    """Says once per task and metric (on process 0) that the host-side eval metrics `names`
    (e.g. "eval/perplexity") are NaN because their input is empty (`why`): like a step metric
    nothing counted towards (`train.average`), such a metric is undefined, and 0 (or a
    perplexity of 1) would read as a real score; a NaN never makes a checkpoint the best."""
    noted = task.__dict__.setdefault("_noted_undefined", set())
    new = [name for name in names if name not in noted]
    if new and jax.process_index() == 0:
        print(f"[eval] Note: {', '.join(new)} {'is' if len(new) == 1 else 'are'} logged as nan, "
              f"not a score: {why}. Such an eval never makes a checkpoint the best.", flush=True)
    noted.update(new)


def normalized(total, count, normalizers=None, name=None):
    """`total / count`, or `total / normalizers[name]` when `loss_fn` got the whole batch's
    counts (`task.loss_normalizers`, under gradient accumulation); a count of 0 divides by 1."""
    if normalizers is not None:
        count = normalizers[name]
    return total / jnp.maximum(count, 1.0)


def masked_lm_normalizers(batch):
    """The whole batch's masked predictions and real tokens: the counts of the losses that
    average over both (ELECTRA's generator MLM and replaced-token BCE; distillation's soft
    targets, MLM and cosine terms), as `task.loss_normalizers`. Both vary by sequence."""
    return dict(predictions=batch["masked_weights"].astype(jnp.float32).sum(),
                tokens=(batch["input_mask"] > 0).astype(jnp.float32).sum())

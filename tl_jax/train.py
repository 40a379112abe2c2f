"""The one trainer: init the state under the mesh, jitted sharded step, eval, checkpoints, logs.

Objectives plug in as tasks (see `tl_jax/tasks/__init__.py`); nothing here knows about BERT.

    summary = train_and_evaluate(config, workdir)

Read it top to bottom: set-up, state (abstract -> shardings -> jitted init or restore), the
train and eval steps, then the loop.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from tl_jax import checkpoint as ckpt_lib
from tl_jax import parallel, tasks, warm_start
from tl_jax.metrics_writer import MetricsWriter
from tl_jax.progress import bar as progress_bar, closed_on_error, write as progress_write
from tl_jax.optim import masks, optimizers, transfer

# optax.tree.norm replaces the deprecated optax.global_norm; older optax has only the latter.
_global_norm = getattr(getattr(optax, "tree", None), "norm", None) or optax.global_norm

log = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
    """A loss or gradient norm became NaN or Inf."""


# ================================================================================================
# Set-up
# ================================================================================================


@dataclasses.dataclass
class Trainer:
    """Everything the loop needs, built once by `build_trainer` (also handy in tests/Colab)."""

    config: ml_collections.ConfigDict
    workdir: str
    mesh: jax.sharding.Mesh
    rules: tuple
    task: Any
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    state_shardings: dict
    abstract_state: dict
    train_step: Any
    eval_step: Any
    predict_step: Any | None
    init_state: Any
    # Both in one compiled program, for tasks with a predict step: `eval_pass` runs it.
    eval_predict_step: Any | None = None
    # Eval metrics already said to have no example (`evaluate`), so each is named once.
    noted_empty: set = dataclasses.field(default_factory=set)


class _InMesh:
    """A jitted function that is always traced, whether called or lowered, under the trainer's
    mesh context (`parallel.mesh_context`), so the models' activation constraints apply no
    matter who calls it: the loop, a test, a notebook."""

    def __init__(self, fn, mesh, rules):
        self.fn, self.mesh, self.rules = fn, mesh, rules

    def __call__(self, *args, **kwargs):
        with parallel.mesh_context(self.mesh, self.rules):
            return self.fn(*args, **kwargs)

    def lower(self, *args, **kwargs):
        with parallel.mesh_context(self.mesh, self.rules):
            return self.fn.lower(*args, **kwargs)


def _replicated(mesh):
    return NamedSharding(mesh, P())


def check_train_config(tc: ml_collections.ConfigDict) -> None:
    """Refuses `config.train` values the loop cannot run with, before anything compiles: a
    `log_every` or `checkpoint_every` of 0 would fail at the first step (modulo by zero), a
    negative `train.steps` would "finish" at once, `keep_checkpoints=0` would delete every
    checkpoint as it is written, a misspelt `best_mode` would silently mean "max", and a
    `peak_flops` of 0 would fail at the first logged step (the MFU divides by it)."""
    positive = ("log_every", "checkpoint_every", "keep_checkpoints")
    non_negative = ("steps", "eval_every", "eval_batches")
    for key in positive + non_negative:
        if key not in tc:
            continue
        value = tc[key]
        least = 1 if key in positive else 0
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"train.{key}={value!r} must be an integer >= {least}"
                             + (" (0 = never)" if key in ("eval_every",) else "")
                             + (" (0 = the whole held-out set)" if key == "eval_batches" else ""))
    if "peak_flops" in tc:
        # The MFU's denominator: 0 (as if to turn MFU off) failed with ZeroDivisionError at the
        # first logged window, after the data was read and the step compiled.
        peak = tc.peak_flops
        if (isinstance(peak, bool) or not isinstance(peak, (int, float))
                or not math.isfinite(peak) or peak <= 0):
            raise ValueError(f"train.peak_flops={peak!r} must be a positive number: one "
                             "device's peak FLOP/s, which the MFU is measured against (e.g. "
                             "200e9; benchmarks/ measures yours).")
    check_train_choices(tc)


def check_train_choices(tc: ml_collections.ConfigDict) -> None:
    """The `config.train` keys that take one of a few words, which no task fills in: checked
    before the task reads its data too (`build_trainer`). `on_nonfinite` was checked only when
    the train step was built, after the corpus was read and tokenised; a sweep found a swept
    misspelling only at that run's turn."""
    if tc.get("best_mode", "max") not in ("max", "min"):
        raise ValueError(f"train.best_mode={tc.best_mode!r}; expected 'max' or 'min'.")
    if tc.get("on_nonfinite", "stop") not in ("stop", "skip"):
        raise ValueError(f"train.on_nonfinite={tc.on_nonfinite!r}; expected 'stop' or 'skip'.")


def check_best_metric(config: ml_collections.ConfigDict) -> None:
    """Refuses a `train.best_metric` that no eval of this run would report (a misspelt
    "eval/mlm_acuracy"), once the task is built (fine-tuning fills train.eval_every from its
    epochs) and before anything compiles: the run found it only at its first eval, and then
    kept no best checkpoint. Left to that first eval's note
    when the run does not evaluate or its task reports nothing with this config (a shipped
    config's best_metric with data.eval_fraction=0)."""
    tc = config.train
    if not tc.get("best_metric") or not tc.get("eval_every"):
        return
    if tasks.eval_metric_names(config):
        tasks.check_eval_metric(config, tc.best_metric)


def _transfer_count_getter(abstract_opt, plan_stages):
    """A function from the optimizer state to the count of the `TransferState` inside it (the
    plan's own state, or one wrapped by another transform), found in the state's shapes."""
    def is_state(x):
        return isinstance(x, transfer.TransferState)

    leaves = jax.tree_util.tree_leaves(abstract_opt, is_leaf=is_state)
    where = [i for i, x in enumerate(leaves) if is_state(x)]
    if len(where) != 1:
        raise ValueError(
            f"the task has a transfer plan with {len(plan_stages)} stages (task.transfer_plan), "
            f"but its optimizer state holds {len(where)} TransferStates, not one: the trainer "
            "reads the stage of each step from the count of the one plan.as_optax() keeps. "
            "Return plan.as_optax(), or a transform wrapping it, from the task's make_optimizer.")
    index = where[0]

    def count(opt_state):
        return jax.tree_util.tree_leaves(opt_state, is_leaf=is_state)[index].count

    return count


def frozen_flops_share(task, trainer: Trainer) -> float:
    """The share of `task.flops_per_example` (a full training step) a step does when a transfer
    plan keeps parameters frozen: no backward below the lowest trained group, no weight
    gradients for frozen matmuls (`TransferPlan.training_flops_fraction`). Tasks that count
    their frozen part themselves (`flops_count_frozen = True`: probes on frozen features,
    distillation's teacher) are left as they are.
    """
    plan = getattr(task, "transfer_plan", None)
    if plan is None or getattr(task, "flops_count_frozen", False):
        return 1.0
    return plan.training_flops_fraction(trainer.abstract_state["params"])


def mesh_and_rules(config: ml_collections.ConfigDict):
    """Starts jax.distributed if configured, builds `config.mesh` and checks the batch sizes
    against it, and the optimizer settings: `(mesh, logical axis rules)`. Nothing is read or
    compiled; `tl_jax sweep` runs it for every run before the first trains."""
    parallel.maybe_initialize_distributed(config.distributed)
    # The optimizer settings (name, decay, LAMB's option), checked before any data is read.
    optimizers.make_optimizer(config.optimizer, max(1, int(config.train.steps)))
    mesh = parallel.make_mesh(config.mesh)
    rules = parallel.axis_rules(config.mesh)
    global_batch = int(config.data.batch_size)
    accum = int(config.optimizer.grad_accum_steps)
    if accum < 1:
        raise ValueError(f"optimizer.grad_accum_steps={accum} must be >= 1 (1 = no accumulation).")
    if global_batch % accum:
        raise ValueError(
            f"data.batch_size={global_batch} must be a multiple of "
            f"optimizer.grad_accum_steps={accum}."
        )
    parallel.check_batch_size(
        global_batch // accum, mesh, name=f"data.batch_size={global_batch}" if accum == 1 else
        f"data.batch_size={global_batch} / optimizer.grad_accum_steps={accum}")
    if config.data.get("eval_batch_size"):
        # Checked now, not at the first eval: that comes after train.eval_every steps (hours
        # of them, on a real run), and failed with JAX's IndivisibleError before any save.
        parallel.check_batch_size(int(config.data.eval_batch_size), mesh,
                                  name=f"data.eval_batch_size={int(config.data.eval_batch_size)}")
    return mesh, rules


def build_trainer(config: ml_collections.ConfigDict, workdir: str, task=None) -> Trainer:
    """Builds mesh, task, optimizer, shardings and the jitted functions. Compiles nothing yet.

    `task` replaces the one `config.task` builds (`tl_jax predict` passes a finished run's task
    with the file to predict as its eval set)."""
    mesh, rules = mesh_and_rules(config)
    global_batch = int(config.data.batch_size)
    accum = int(config.optimizer.grad_accum_steps)

    training = task is None  # (predict's task evaluates a finished run: no best to keep)
    check_train_choices(config.train)  # before the task reads its data
    if training:
        task = tasks.build_task(config, workdir)  # tokenizer, data, input checks: before compiling
    check_train_config(config.train)  # after the task: fine-tuning fills 0s from its epochs
    if training:
        check_best_metric(config)
    total_steps = int(config.train.steps)
    if hasattr(task, "make_optimizer"):
        tx, schedule = task.make_optimizer(total_steps)
    else:
        tx, schedule = optimizers.make_optimizer(config.optimizer, total_steps)

    # -- State shapes and shardings, without materialising anything -------------------------
    example = task.example_batch(global_batch // accum)
    with parallel.mesh_context(mesh, rules):
        abstract_boxed = jax.eval_shape(
            lambda r: task.init_variables(r, example)["params"], jax.random.PRNGKey(0)
        )
    param_shardings = parallel.logical_to_shardings(abstract_boxed, mesh, rules)
    abstract_params = nn.unbox(abstract_boxed)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    opt_shardings = parallel.shardings_like_params(abstract_opt, param_shardings, mesh)
    replicated = _replicated(mesh)
    state_shardings = dict(step=replicated, params=param_shardings, opt_state=opt_shardings,
                           rng=replicated)
    abstract_state = dict(
        step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
        opt_state=abstract_opt, rng=jax.ShapeDtypeStruct((2,), jnp.uint32),
    )

    def init_params(rng):
        return nn.unbox(task.init_variables(rng, example)["params"])

    def init_state(rng):
        """Initialises params sharded from the start, lets the task load pretrained weights,
        then builds the optimizer state with matching shardings."""
        with parallel.mesh_context(mesh, rules):
            params = jax.jit(init_params, out_shardings=param_shardings)(rng)
        params = task.init_params(params, rng)
        params = jax.device_put(params, param_shardings)
        opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(params)
        # Every leaf carries its final sharding, so the first step compiles exactly once.
        return dict(step=jax.device_put(jnp.zeros((), jnp.int32), replicated), params=params,
                    opt_state=opt_state,
                    rng=jax.device_put(jax.random.PRNGKey(config.seed), replicated))

    batch_sharding = parallel.batch_sharding(mesh)
    on_nonfinite = config.train.on_nonfinite  # checked by check_train_config

    # ============================================================================================
    # Train step
    # ============================================================================================

    # Parameters no stage of a transfer plan ever trains (a frozen encoder under adapters, LoRA
    # or a probe) are closed over as constants: jax.grad computes no gradient for them, and no
    # backward pass at all below the lowest trainable parameter. One compile for the whole run.
    plan = getattr(task, "transfer_plan", None)
    static_mask = None
    if plan is not None and not all(plan.optimizer_mask.values()):
        static_mask = plan.optimizer_mask

    # A plan with stages computes gradients for the groups the current stage holds, and zeroes
    # them before it clips: `grad_norm` and the non-finite check cover what the stage trains,
    # the norm the plan clips. The stage is read from the plan's optimizer count.
    stage_count = None
    if plan is not None and len(plan.stages) > 1:
        stage_count = _transfer_count_getter(abstract_opt, plan.stages)

    # Under accumulation, tasks whose loss is a mean over a count that varies with the batch's
    # contents (masked predictions, real tokens, labelled sub-words) give the whole batch's
    # counts (`task.loss_normalizers`); each micro-batch's loss is then its sum over those
    # counts, and the micro-batch losses and gradients add up to exactly the whole batch's.
    # The other tasks' micro-batches are averaged, exact when each holds the same count.
    loss_normalizers = getattr(task, "loss_normalizers", None) if accum > 1 else None

    def grads_and_metrics(params, batch, rng, normalizers=None):
        extra = {} if normalizers is None else {"normalizers": normalizers}
        if static_mask is None:
            (loss, metrics), grads = jax.value_and_grad(task.loss_fn, has_aux=True)(
                params, batch, rng, True, **extra)
            return grads, loss, metrics
        trainable, frozen = masks.split_params(params, static_mask)
        (loss, metrics), grads = jax.value_and_grad(
            lambda t: task.loss_fn(masks.merge_params(t, frozen), batch, rng, True, **extra),
            has_aux=True)(trainable)
        zeros = jax.tree_util.tree_map(jnp.zeros_like, frozen)  # the optimizer ignores these
        return masks.merge_params(grads, zeros), loss, metrics

    def train_step(state, batch):
        rng = jax.random.fold_in(state["rng"], state["step"])
        params = state["params"]
        if accum == 1:
            grads, loss, metrics = grads_and_metrics(params, batch, rng)
        else:
            # (B, ...) -> (accum, B/accum, ...), taking every accum-th row so each micro-batch
            # stays spread over all data-parallel devices.
            def split(x):
                x = x.reshape((x.shape[0] // accum, accum) + x.shape[1:]).swapaxes(0, 1)
                return jax.lax.with_sharding_constraint(
                    x, NamedSharding(mesh, P(None, parallel.BATCH_AXES)))
            micro = jax.tree_util.tree_map(split, batch)
            norms = None if loss_normalizers is None else loss_normalizers(batch)

            def body(carry, xs):
                mb, i = xs
                g, l, m = grads_and_metrics(params, mb, jax.random.fold_in(rng, i), norms)
                acc_g, acc_l, acc_m = carry
                acc_g = jax.tree_util.tree_map(jnp.add, acc_g, g)
                acc_m = jax.tree_util.tree_map(jnp.add, acc_m, m)
                return (acc_g, acc_l + l, acc_m), None

            first = jax.tree_util.tree_map(lambda x: x[0], micro)
            zero_g = jax.tree_util.tree_map(jnp.zeros_like, params)
            m_shape = jax.eval_shape(lambda: grads_and_metrics(params, first, rng, norms)[2])
            zero_m = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), m_shape)
            (grads, loss, metrics), _ = jax.lax.scan(
                body, (zero_g, jnp.zeros((), jnp.float32), zero_m), (micro, jnp.arange(accum)))
            if norms is None:  # the mean of the micro-batch means
                grads = jax.tree_util.tree_map(lambda g: g / accum, grads)
                loss = loss / accum
            # (With norms, the micro-batch losses are parts of the batch's loss: their sum.)
            # The (sum, count) metrics add up over micro-batches exactly either way.

        if stage_count is None:
            grad_norm = _global_norm(grads)
        else:
            grad_norm = _global_norm(plan.stage_gradients(
                grads, stage_count(state["opt_state"])))
        updates, new_opt_state = tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        if on_nonfinite == "skip":
            keep = lambda new, old: jax.tree_util.tree_map(  # noqa: E731
                lambda a, b: jnp.where(finite, a, b), new, old)
            new_params = keep(new_params, params)
            new_opt_state = keep(new_opt_state, state["opt_state"])
        metrics = dict(metrics)
        metrics["loss"] = (loss, jnp.ones((), jnp.float32))
        metrics["grad_norm"] = (grad_norm, jnp.ones((), jnp.float32))
        metrics["nonfinite_steps"] = (1.0 - finite.astype(jnp.float32), jnp.zeros((), jnp.float32))
        new_state = dict(step=state["step"] + 1, params=new_params, opt_state=new_opt_state,
                         rng=state["rng"])
        return new_state, metrics

    def eval_step(params, batch):
        _, metrics = task.loss_fn(params, batch, jax.random.PRNGKey(0), False)
        return metrics

    jit_train = _InMesh(jax.jit(train_step, in_shardings=(state_shardings, batch_sharding),
                                out_shardings=(state_shardings, replicated),
                                donate_argnums=(0,)), mesh, rules)
    jit_eval = _InMesh(jax.jit(eval_step, in_shardings=(param_shardings, batch_sharding),
                               out_shardings=replicated), mesh, rules)
    jit_predict = jit_eval_predict = None
    if hasattr(task, "predict_fn"):
        jit_predict = _InMesh(jax.jit(task.predict_fn,
                                      in_shardings=(param_shardings, batch_sharding)), mesh, rules)

        # An eval of a task that decodes needs the metrics and the outputs of the same batch:
        # traced as one program, the model's forward pass the two share (the same params,
        # batch and deterministic mode) is one computation after XLA's common-subexpression
        # elimination, so each eval batch runs the model once, not twice (a test checks the
        # compiled FLOPs). The outputs keep the sharding XLA gives them (some tasks return
        # per-batch totals, not rows), as the predict step's do.
        def eval_predict_step(params, batch):
            metrics = jax.lax.with_sharding_constraint(eval_step(params, batch), replicated)
            return metrics, task.predict_fn(params, batch)

        jit_eval_predict = _InMesh(jax.jit(eval_predict_step,
                                           in_shardings=(param_shardings, batch_sharding)),
                                   mesh, rules)

    return Trainer(config=config, workdir=workdir, mesh=mesh, rules=rules, task=task, tx=tx,
                   schedule=schedule, state_shardings=state_shardings,
                   abstract_state=abstract_state, train_step=jit_train, eval_step=jit_eval,
                   predict_step=jit_predict, init_state=init_state,
                   eval_predict_step=jit_eval_predict)


# ================================================================================================
# Helpers for the loop
# ================================================================================================


# Metrics that are totals, summed over steps, not means (their counts are 0).
TOTALS = frozenset({"nonfinite_steps"})


def _sums_and_counts(metric_list: list[dict]) -> tuple[dict[str, float], dict[str, float]]:
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for metrics in jax.device_get(metric_list):
        for k, (s, c) in metrics.items():
            sums[k] = sums.get(k, 0.0) + float(s)
            counts[k] = counts.get(k, 0.0) + float(c)
    return sums, counts


def average(metric_list: list[dict]) -> dict[str, float]:
    """Averages `(sum, count)` metrics over steps or batches; `TOTALS` are summed.

    A metric nothing counted towards (its counts add up to 0: no masked prediction, no
    labelled row in these batches) is NaN: it has no value, and 0.0 would read as a perfect
    loss or a zero accuracy (`empty_metrics` names them)."""
    sums, counts = _sums_and_counts(metric_list)
    return {k: (sums[k] if k in TOTALS else sums[k] / counts[k] if counts[k] else math.nan)
            for k in sums}


def empty_metrics(metric_list: list[dict]) -> list[str]:
    """The metrics (not `TOTALS`) of `metric_list` whose counts add up to 0, sorted."""
    _, counts = _sums_and_counts(metric_list)
    return sorted(k for k, c in counts.items() if not c and k not in TOTALS)


def optimizer_count(opt_state, default: int) -> int:
    """How many updates the optimizer has applied: the largest scalar `count` in its state.

    optax's counters (Adam's, the schedule's, the transfer plan's global one) advance once per
    applied update; a step skipped under `train.on_nonfinite=skip` keeps the old optimizer
    state, so they lag the trainer's step by the steps skipped (also those of a run this one
    resumed). A group the transfer plan still holds frozen keeps its own, smaller count, hence
    the largest. `default` (the trainer's step) when the state has no counter (a constant rate).
    """
    counts = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(opt_state)[0]
              if path and getattr(path[-1], "name", None) == "count" and jnp.ndim(leaf) == 0]
    if not counts:
        return default
    return max(int(c) for c in jax.device_get(counts))


def first_nonfinite(metric_list: list[dict], first_step: int) -> tuple[int, str] | None:
    for i, metrics in enumerate(jax.device_get(metric_list)):
        for name in ("loss", "grad_norm"):
            if not math.isfinite(float(metrics[name][0])):
                return first_step + i, name
    return None


def _to_host(x) -> np.ndarray:
    """A global array as numpy on every process (gathered across hosts when needed).

    Every process gets every row, not process 0 alone: each process decodes the whole eval set
    and so computes the same metrics, which pick the best checkpoint (a decision all processes
    take together) and fill the summary; and an all-gather is the one way JAX moves a global
    array's rows between hosts."""
    if jax.process_count() > 1:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def _eval_total(trainer: Trainer, batches, limit: int) -> int | None:
    """How many batches an eval pass takes, for its bar's ETA: the length of the task's batches
    when it has one (a list; BERT's, ELECTRA's and distillation's `EvalBatches`), else counted
    from its `eval_arrays` (fine-tuning); at most `limit` (> 0), which alone bounds a stream of
    unknown length (a shorter one ends its bar early). None: unknown (the bar shows counts and
    rate only)."""
    total = None
    arrays = getattr(trainer.task, "eval_arrays", None)
    if hasattr(batches, "__len__"):
        total = len(batches)
    elif arrays:
        n = len(next(iter(arrays.values())))
        total = -(-n // int(trainer.config.data.batch_size))
    if limit:
        total = limit if total is None else min(total, limit)
    return total


def eval_pass(trainer: Trainer, params, limit: int = 0, with_loss: bool = True,
              progress: bool = False, desc: str = "predict",
              leave: bool = True) -> tuple[list[dict], list[tuple]]:
    """Runs the eval step (`with_loss`: the loss needs labels) and the predict step over the
    task's held-out batches (at most `limit` of them; 0 = all), as one compiled step when it
    runs both. Returns the step metrics and the `(None, outputs)` pairs the task decodes: the
    predict step's outputs as numpy, every process's rows on every process. The batches
    themselves are not gathered (the first of each pair is None): what decoding needs of them
    (`row` and the like) the predict step returns. `progress` shows a bar over the batches (on
    process 0), named `desc`, cleared at the end unless `leave`."""
    results, outputs = [], []
    batches = trainer.task.eval_batches()
    bar = None
    if progress and jax.process_index() == 0:
        bar = progress_bar(total=_eval_total(trainer, batches, limit), desc=desc, unit="batch",
                           dynamic_ncols=True, leave=leave)
    both = with_loss and trainer.eval_predict_step is not None
    # Counted by hand, so that an error in a step (Ctrl-C, out of memory) ends a line-mode bar
    # saying so: a bar iterated by the `for` is freed, and closed as merely stopped, first.
    with closed_on_error(bar):
        for i, batch in enumerate(batches):
            if limit and i >= limit:
                break
            gbatch = parallel.host_batch_to_global(batch, trainer.mesh)
            out = None
            if both:
                metrics, out = trainer.eval_predict_step(params, gbatch)
                results.append(metrics)
            elif with_loss:
                results.append(trainer.eval_step(params, gbatch))
            elif trainer.predict_step is not None:
                out = trainer.predict_step(params, gbatch)
            if out is not None:
                outputs.append((None, jax.tree_util.tree_map(_to_host, out)))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return results, outputs


def evaluate(trainer: Trainer, params, step: int, write: bool = True) -> dict[str, float]:
    """One pass over (at most `train.eval_batches` of) the held-out batches, with a bar under the
    training bar (cleared when done) unless train.progress=False: a whole eval set could take
    minutes on a CPU with the training bar standing still. `write=False`: the task writes no
    predictions file (`WORKDIR/predictions/eval_step_N...`)."""
    results, outputs = eval_pass(trainer, params, int(trainer.config.train.eval_batches),
                                 progress=bool(trainer.config.train.get("progress", False)),
                                 desc="eval", leave=False)
    if not results:
        return {}
    results = jax.device_get(results)  # read once for `average` and `empty_metrics`
    metrics = {f"eval/{k}": v for k, v in average(results).items()}
    empty = [k for k in empty_metrics(results) if k not in trainer.noted_empty]
    if empty and jax.process_index() == 0:
        names = ", ".join(f"eval/{k}" for k in empty)
        # (Above the training bar, on a terminal: a print would land on the bar's line.)
        progress_write(
            f"[eval] Note: nothing in the eval batches counts towards {names} at step {step} "
            "(its count is 0: no masked prediction, no labelled row, no predicted replacement "
            "for a precision, ...): logged as nan, not 0, and such an eval never makes a "
            "checkpoint the best.")
    trainer.noted_empty.update(empty)
    if trainer.predict_step is not None and hasattr(trainer.task, "evaluate"):
        extra = trainer.task.evaluate(outputs, trainer.workdir if write else None, step)
        metrics.update({f"eval/{k}": float(v) for k, v in extra.items()})
    return metrics


class _Preemption:
    """Turns SIGTERM into a stop at a step boundary (then the loop saves and exits).

    One process: a Python handler sets a flag, read at the next step boundary.

    Several processes must all stop at the same step: one that stopped alone (the signal may
    reach only some hosts, or reach them at different steps) went into the save, itself
    collective, while the others went on into the next step's collectives, and all of them
    waited there until killed. `jax.distributed.initialize` starts jax's preemption sync manager
    for this: its own SIGTERM handler (so none is installed here, which would replace it) tells
    the coordination service, and every process is given the same step to stop at, the one after
    the furthest any of them has reached. Asking whether this is that step takes no
    communication (about 10 us; nothing waits for the devices). Without the manager
    (`jax_enable_preemption_service` turned off, or several processes without
    `jax.distributed`), the processes instead all-gather their flags after every step: correct,
    but each step then waits for the one before it to finish (about 5 ms a step on two CPU
    processes on one machine, more where the hosts are far apart).
    On several processes a Ctrl-C (on any of them) stops them the same way. `stopped_by` names
    the signal that stopped the loop, for the lines that say so: "SIGINT" where a Ctrl-C did
    (on any process), which those lines called SIGTERM.
    """

    SIGNALS = ((1, "SIGTERM"), (2, "SIGINT"))  # the flags a process shares: which it got

    def __init__(self):
        self.requested = False  # set by this process's handler (one process; the all-gather)
        self.stopped_by = "SIGTERM"
        self._old = None
        self._old_int = None
        self._interrupted = False  # Ctrl-C on this process of several: noted at the next step
        self._got = 0  # the SIGNALS this process's handlers saw, as bits
        self._how = "local"  # or "jax": jax's sync manager; "allgather": flags every step

    def __enter__(self):
        if jax.process_count() > 1:
            # Ctrl-C too: a KeyboardInterrupt in one process left the others waiting in the
            # step's collectives, and it waiting for them to shut down, until killed. It now
            # stops them all after one step, saved, as SIGTERM does; a second Ctrl-C raises
            # KeyboardInterrupt here as before.
            # (Only over Python's own handler: an ignored SIGINT, as in a background job, stays
            # ignored.)
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                try:
                    self._old_int = signal.signal(signal.SIGINT, self._interrupt)
                except ValueError:  # not the main thread
                    self._old_int = None
            self._how = "allgather"
            if jax.distributed.is_initialized():
                try:
                    # Step 0 of this run: the loop's calls count from here, on every process.
                    multihost_utils.reached_preemption_sync_point(0)
                    self._how = "jax"
                    return self
                except RuntimeError:  # "Preemption sync manager has not been initialized"
                    pass
            if jax.process_index() == 0:
                # (The training bar is drawn by now: above it, not on its line.)
                progress_write(
                    "[train] Note: jax's preemption sync manager is not running (the "
                    "jax_enable_preemption_service option is off, or jax.distributed was not "
                    "started): the processes share whether one got SIGTERM after every step, "
                    "which makes each step wait for the one before it.")
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. some notebook runners)
            self._old = None
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True
        self._got |= 1

    def _interrupt(self, signum, frame):
        del signum, frame
        signal.signal(signal.SIGINT, self._old_int)  # the next Ctrl-C interrupts at once
        self._old_int = None
        self._interrupted = True
        self._got |= 2
        if self._how == "jax":
            os.kill(os.getpid(), signal.SIGTERM)  # to jax's handler: every process is told
        else:
            self.requested = True

    def stop_after(self, step: int, start_step: int) -> bool:
        """Whether to save and stop after `step`, the same answer on every process. Called once
        after every step of the loop (started after `start_step`), on every process."""
        if self._interrupted:  # (said here, not in the signal handler, which may cut a print)
            self._interrupted = False
            progress_write(
                f"[train] Ctrl-C on process {jax.process_index()} of {jax.process_count()}: "
                "every process stops after the same step and saves it, as for SIGTERM (a "
                "second Ctrl-C stops this process at once, leaving the others waiting).")
        if self._how == "jax":
            # Counted from this run's start, as on every process: a SIGTERM that came before the
            # first step (the manager then picks 1) stops a resumed run too, after its first.
            stop = multihost_utils.reached_preemption_sync_point(step - start_step)
            if stop:
                # Every process is at this step (the manager's point is the same for all), so
                # they can gather, once, which of them had a Ctrl-C: jax's manager only says
                # "stop". (A SIGTERM goes to jax's handler, not ours: it is what stopped the
                # loop wherever no Ctrl-C came.)
                got = multihost_utils.process_allgather(np.int32(self._got))
                self._name(int(np.bitwise_or.reduce(np.ravel(got))) or 1)
            return stop
        if self._how == "allgather":
            got = multihost_utils.process_allgather(np.int32(self._got))
            got = int(np.bitwise_or.reduce(np.ravel(got)))
            if got:
                self._name(got)
            return bool(got)
        return self.requested

    def _name(self, got: int) -> None:
        self.stopped_by = " and ".join(name for bit, name in self.SIGNALS if got & bit)

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
        if self._old_int is not None:
            signal.signal(signal.SIGINT, self._old_int)


@contextlib.contextmanager
def _finish_save_on_error(checkpointer: ckpt_lib.Checkpointer):
    """On Ctrl-C or an error that ends the loop (a non-finite loss, a failing eval), lets an
    asynchronous save still in flight finish before the exception goes on.

    Otherwise the interpreter shuts down under orbax's background thread: that checkpoint is
    left half-written (a `STEP.orbax-checkpoint-tmp` folder, removed at the next start), and
    the thread's failure prints pages of tracebacks (or "cannot schedule new futures after
    interpreter shutdown") after the one line that says the checkpoints are intact. Under
    `train.on_nonfinite=stop` the lost save was the last one before the divergence, the one to
    resume from. A second Ctrl-C stops the wait."""
    try:
        yield
    except KeyboardInterrupt:
        try:
            checkpointer.finish_after_interrupt()
        except ckpt_lib.CheckpointError as e:
            print(f"[checkpoint] {e}", flush=True)
        raise
    except Exception as error:
        try:
            checkpointer.wait()
        except ckpt_lib.CheckpointError as e:
            # The save failed too (or this error is its failure): the error in flight is the
            # one to report; this says what happened to the save, unless it is that error.
            if not isinstance(error, ckpt_lib.CheckpointError):
                print(f"[checkpoint] {e}", flush=True)
        raise


def _stage_starts(task) -> list[list] | None:
    """`[[stage name, start step], ...]` of a task's transfer plan of several stages, else None."""
    plan = getattr(task, "transfer_plan", None)
    if plan is None or len(plan.stages) < 2:
        return None
    return [[stage.name, int(stage.start_step)] for stage in plan.stages]


def restore_or_init(trainer: Trainer, checkpointer: ckpt_lib.Checkpointer):
    """Continues from the newest good checkpoint in the workdir, or initialises fresh."""
    config = trainer.config
    target = ckpt_lib.abstract_with_shardings(trainer.abstract_state, trainer.state_shardings)

    def check_config(saved_config, step):
        saved_task = saved_config.get("task")
        if saved_task and saved_task != config.task:
            # Another task's checkpoint: every model field would differ (a page of "checkpoint
            # has None"); say what it is instead.
            raise ckpt_lib.CheckpointError(
                f"The checkpoint at step {step} in {checkpointer.directory} was written by "
                f"a run of task `{saved_task}`; this config's task is `{config.task}`. Use a "
                "new workdir "
                "(with --config.init_from=<old workdir> to start from its weights); the "
                "checkpoint is left as it is.")
        current = config.to_dict()
        if dataclasses.is_dataclass(getattr(trainer.task, "model_config", None)):
            current["resolved_model"] = dataclasses.asdict(trainer.task.model_config)
        # Transfer rules and probe settings decide the parameter tree and the optimizer
        # state's layout (and the unfreezing schedule): a change would not restore, and the
        # checkpoint would be moved aside as corrupt. Caching the probe's features changes
        # neither.
        sections = ("model", "resolved_model") + tuple(
            s for s in ("transfer", "probe") if s in current)
        diffs = [d for d in ckpt_lib.config_differences(saved_config, current, sections=sections)
                 if not d.startswith(("probe.cache_features:", "probe.cache_dir:"))]
        # A task's own keys that decide what trains, so the optimizer state's layout
        # (`Task.state_config_keys`, e.g. distill.freeze_position_embeddings): a change failed
        # to restore as "other optimizer.* settings or transfer rules?", not naming the key.
        task_diffs = []
        for key in getattr(trainer.task, "state_config_keys", ()):
            section, name = key.split(".", 1)
            before, now = saved_config.get(section) or {}, current.get(section) or {}
            if name not in before and now.get(name) in (0, "", False, None):
                continue  # added since the checkpoint, at its neutral default: the same layout
            if before.get(name) != now.get(name):
                task_diffs.append(f"{key}: checkpoint has {before.get(name)!r}, config has "
                                  f"{now.get(name)!r}")
        diffs += task_diffs
        # Stages measured in epochs (transfer.stage_steps=0) start elsewhere once the batch
        # size or the number of examples changes: a resume that landed in another stage froze
        # again the layers that had started training (or thawed some early), without a word.
        # The stage the checkpoint's step is in must stay the one it was; later ones may move.
        saved_stages, stages = saved_config.get("resolved_stages"), _stage_starts(trainer.task)
        if saved_stages is not None and stages is not None:
            def stage_at(starts):
                return [name for name, start in starts if start <= step][-1:]

            if stage_at(saved_stages) != stage_at(stages):
                def show(starts):
                    return ", ".join(f"{name} from step {start}" for name, start in starts)
                diffs.append(f"transfer stages: checkpoint has {show(saved_stages)}; config has "
                             f"{show(stages)}, so step {step} would be in another stage (stages "
                             "measured in epochs move with the batch size and the number of "
                             "examples; transfer.stage_steps fixes their length)")
        seen["saved"] = saved_config
        if diffs:
            what = "model" if all(d.startswith(("model.", "resolved_model.")) for d in diffs) \
                else "model or transfer" if not task_diffs else "model, transfer or task"
            raise ckpt_lib.CheckpointError(
                f"The checkpoint at step {step} in {checkpointer.directory} was written with a "
                f"different {what} config:\n  " + "\n  ".join(diffs) + "\nUse a new workdir with "
                "--config.init_from=<old workdir> to warm-start from it instead.")

    seen = {}
    restored = checkpointer.restore_latest_good(target, check_config)
    if restored is None:
        if checkpointer.all_steps() == [] and os.path.isdir(checkpointer.directory + "_corrupt"):
            print("[checkpoint] No usable checkpoint left; starting from scratch.", flush=True)
        return trainer.init_state(jax.random.PRNGKey(config.seed)), None, None
    state, data_state, _, step = restored
    print(f"[checkpoint] Resuming from step {step} ({checkpointer.directory}).", flush=True)
    schedule_note = _schedule_change(seen.get("saved") or {}, trainer, step,
                                     optimizer_count(state["opt_state"], default=step))
    if schedule_note:
        print(schedule_note, flush=True)
    plan = getattr(trainer.task, "transfer_plan", None)
    if plan is not None and len(plan.stages) > 1 and jax.process_index() == 0:
        # Which stage the run continues in (read, as the step does, from the optimizer's count):
        # the stage table is printed at every start, but not where in it a resume lands.
        k = plan.stage_for_step(optimizer_count(state["opt_state"], default=step))
        stage = plan.stages[k]
        after = (f"; the next, {plan.stages[k + 1].name}, from step "
                 f"{plan.stages[k + 1].start_step}" if k + 1 < len(plan.stages) else "")
        print(f"[transfer] Resuming in stage {stage.name} (from step {stage.start_step}: "
              f"{' '.join(g for g in reversed(plan.groups) if g in stage.groups)}){after}.",
              flush=True)
    saved_from = (seen.get("saved") or {}).get("init_from") or ""
    if (config.get("init_from") or "") != saved_from and jax.process_index() == 0:
        # The weights come from the checkpoint: a new init_from changes nothing, which the
        # run should say rather than seem to have taken it.
        print(f"[checkpoint] Note: init_from changed since the checkpoint ({saved_from!r} -> "
              f"{config.get('init_from') or ''!r}); it is read only when a run starts, so this "
              "run continues from its own checkpoint. To start from the new weights, use a new "
              "workdir.", flush=True)
    return state, data_state, {"config": seen.get("saved") or {}, "step": step,
                               "directory": checkpointer.directory}


def restore_data_position(train_iter, data_state, resumed: dict, config) -> None:
    """Puts the training stream where the checkpoint left it.

    Data settings changed since the checkpoint are named: in a note when the position still
    fits (the stream continues in data built the new way, and held-out figures may not compare
    with earlier ones), in the error when it does not.
    """
    changed = ckpt_lib.config_differences(resumed["config"], config.to_dict(), sections=("data",))
    # A resumed run keeps the tokenizer saved in its workdir, whatever these say now: they
    # changed nothing, and "data built with this config" would suggest they did.
    kept = [line for line in changed if line.startswith(TOKENIZER_FIELDS)]
    changed = [line for line in changed if not line.startswith(TOKENIZER_FIELDS)]
    if kept and jax.process_index() == 0:
        tokenizer_dir = os.path.join(os.path.dirname(resumed["directory"]), "tokenizer")
        print("[checkpoint] Note: the run keeps the tokenizer it was trained with "
              f"({tokenizer_dir}); these changes since the checkpoint have no effect:\n  "
              + "\n  ".join(kept), flush=True)
    try:
        train_iter.set_state(data_state)
    except ValueError as e:
        why = ("data settings changed since the checkpoint:\n  " + "\n  ".join(changed)
               if changed else "the data it reads changed since the checkpoint")
        raise ckpt_lib.CheckpointError(
            f"The checkpoint at step {resumed['step']} in {resumed['directory']} cannot continue "
            f"its data stream: {why}\n({e})\nResume with the checkpoint's data settings, or "
            "train in a new workdir with --config.init_from=<old workdir>.") from None
    if changed and jax.process_index() == 0:
        print("[checkpoint] Note: data settings changed since the checkpoint:\n  "
              + "\n  ".join(changed) + "\nTraining continues from the saved position in the data "
              "built with this config; held-out figures may not compare with earlier ones.",
              flush=True)


TOKENIZER_FIELDS = ("data.tokenizer:", "data.tokenizer_vocab_size:", "data.lowercase:")
SCHEDULE_FIELDS = ("learning_rate", "warmup_steps", "decay", "end_lr_ratio", "power")


def _schedule_change(saved: dict, trainer: Trainer, step: int, updates: int | None = None) -> str:
    """A note when the resumed run's step count or learning-rate schedule differs from the
    checkpoint's: the schedule is rebuilt from this config, not continued (more train.steps
    stretches the decay, so the learning rate jumps at the resume step). `updates`: the
    optimizer's count, where the schedules are read (fewer than `step` by the non-finite steps
    skipped; default `step`)."""
    at = step if updates is None else updates
    config = trainer.config
    old_steps = (saved.get("train") or {}).get("steps")
    old_opt = saved.get("optimizer") or {}
    changed = []
    if old_steps is not None and old_steps != config.train.steps:
        changed.append(f"train.steps {old_steps} -> {config.train.steps}")
    # Under transfer.schedule=stlr the learning rate follows STLR's own rise and decay: the
    # optimizer's warm-up and decay settings do not shape it, its cut_frac and ratio do.
    old_transfer = saved.get("transfer") or {}
    transfer_cfg = config.get("transfer") or {}
    # (Only the tasks with their own make_optimizer, the probes and the GPT classifier, read it.)
    stlr = hasattr(trainer.task, "make_optimizer") and transfer_cfg.get("schedule") == "stlr"
    fields = [("optimizer", "learning_rate", old_opt, config.optimizer)]
    if stlr and old_transfer.get("schedule", "stlr") == "stlr":
        fields += [("transfer", f, old_transfer, transfer_cfg)
                   for f in ("stlr_cut_frac", "stlr_ratio")]
    else:
        fields = [("optimizer", f, old_opt, config.optimizer) for f in SCHEDULE_FIELDS]
        if "schedule" in old_transfer and old_transfer["schedule"] != transfer_cfg.get("schedule"):
            changed.append(f"transfer.schedule {old_transfer['schedule']} -> "
                           f"{transfer_cfg.get('schedule')}")
    for section, field, old, new in fields:
        if field in old and field in new and old[field] != new[field]:
            changed.append(f"{section}.{field} {old[field]} -> {new[field]}")
    if not changed:
        return ""
    new_lr = float(trainer.schedule(at))
    note = (f"[checkpoint] Note: {', '.join(changed)} since the checkpoint. The learning-rate "
            f"schedule is this config's, over {config.train.steps} steps, not a continuation: "
            f"at step {step} it is {new_lr:.3g}")
    if not hasattr(trainer.task, "make_optimizer") and old_steps is not None:
        try:
            old_cfg = ml_collections.ConfigDict({**config.optimizer.to_dict(), **old_opt})
            old_lr = float(optimizers.make_schedule(old_cfg, int(old_steps))(at))
            note += f" (the checkpoint's schedule: {old_lr:.3g})"
        except (ValueError, TypeError, KeyError):
            pass  # a checkpoint from an older config layout: the new figure alone
    return note + "."


# ================================================================================================
# The loop
# ================================================================================================


def check_workdir_task(workdir: str, task: str) -> None:
    """A workdir holds one run: one of another task (its config.json says which) is refused with
    what it is, as `restore_or_init` refuses another task's checkpoint, but before the trainer
    reads the workdir's tokenizer and fails on that instead ("a BPE tokenizer; BERT needs a
    WordPiece one"), or a run that left no checkpoint is overwritten. A config.json that does not
    read is left to the trainer, which resumes from the checkpoints and writes it again."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    try:
        saved = ckpt_lib.load_run_config(workdir).get("task")
    except (OSError, ValueError):
        return
    if saved and saved != task:
        raise ValueError(
            f"--workdir={workdir} holds a run of task `{saved}` ({path}); this config's task is "
            f"`{task}`. Use a new workdir (with --config.init_from={workdir} to start from its "
            "weights); the workdir is left as it is.")


def _save_run_config(workdir: str, config, resumed: dict | None, trains: bool) -> None:
    """Writes WORKDIR/config.json, the settings the run trains with (what predict, extract
    and convert read): not when a resumed run trains nothing (it said "nothing to train", yet
    a new best_metric or max_seq_length was recorded as if the checkpoints had them), unless
    the file does not read; and a resumed run's tokenizer settings and init_from stay the
    checkpoint's, since changing them has no effect (it keeps its tokenizer and weights)."""
    path = os.path.join(workdir, "config.json")
    if resumed is not None and not trains:
        try:
            ckpt_lib.load_run_config(workdir)
            return
        except (OSError, ValueError):
            pass  # rewritten, as below
    values = config.to_dict()
    saved = (resumed or {}).get("config") or {}
    if saved:
        if "init_from" in saved:
            values["init_from"] = saved["init_from"]
        for field in TOKENIZER_FIELDS:
            key = field[len("data."):-1]
            if key in saved.get("data", {}) and key in values.get("data", {}):
                values["data"][key] = saved["data"][key]
    ckpt_lib.save_json(path, values)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> "TrainResult":
    """Trains `config.task` for `config.train.steps` steps in `workdir`.

    Resumes from the workdir's newest good checkpoint if there is one; a workdir of static word
    vectors or of another task's run is refused first. Returns the summary
    (also written to `WORKDIR/summary.json`) and the final state.
    `config` is a loaded config (`config.load_config("configs/NAME.py[:arg]", overrides)`).
    """
    if isinstance(config, (str, os.PathLike)):
        # (It failed as "'str' object has no attribute 'task'".)
        raise TypeError(f"train_and_evaluate takes a loaded config, not {str(config)!r}: load "
                        "it first with tl_jax.config.load_config(spec, overrides)")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        # (os.makedirs below said only "[Errno 17] File exists: 'few.jsonl'".)
        raise ValueError(f"--workdir={workdir} is a file, not a folder: give a folder for the "
                         "run's checkpoints and logs")
    if os.path.exists(os.path.join(workdir, "static_config.json")):
        # Its vocab.txt (and, for some tasks, more) would be overwritten by this run's.
        raise ValueError(f"{workdir} holds static word vectors (`tl_jax static`); train in "
                         "another workdir")
    weights = warm_start.model_files(workdir)
    if weights:
        # Its config.json (and a fine-tune's vocab.txt) would be replaced by this run's: a
        # shared model wrecked by swapping --workdir and --config.init_from.
        raise ValueError(
            f"--workdir={workdir} holds a model ({', '.join(['config.json'] + weights)}), not a "
            "training run: training there would overwrite its config.json. Train in a new "
            f"workdir, with --config.init_from={workdir} to start from the model; the folder is "
            "left as it is.")
    check_workdir_task(workdir, config.task)
    made = not os.path.exists(workdir)
    os.makedirs(workdir, exist_ok=True)
    try:
        trainer = build_trainer(config, workdir)
    except BaseException:
        if made:  # a config the trainer refused leaves no empty workdir behind
            with contextlib.suppress(OSError):
                os.rmdir(workdir)  # only if nothing was written there
        raise
    task, mesh, tc = trainer.task, trainer.mesh, config.train
    is_main = jax.process_index() == 0
    checkpointer = ckpt_lib.Checkpointer(
        os.path.join(workdir, "checkpoints"), keep=tc.keep_checkpoints,
        best_metric=tc.best_metric, best_mode=tc.best_mode, async_save=tc.async_checkpoint)
    state, data_state, resumed = restore_or_init(trainer, checkpointer)
    train_iter = task.train_batches()
    if data_state is not None:
        restore_data_position(train_iter, data_state, resumed, config)
    start_step = int(jax.device_get(state["step"]))
    total_steps = int(tc.steps)
    if is_main:
        # Only now: a run refused for not fitting the workdir's checkpoints (another model,
        # other labels, data whose position cannot be restored) must leave the tokenizer and
        # config.json they were trained with.
        task.save(workdir)
        _save_run_config(workdir, config, resumed, trains=start_step < total_steps)
    global_batch = int(config.data.batch_size)
    tokens_per_step = task.tokens_per_example * global_batch
    flops_per_step = task.flops_per_example * global_batch * frozen_flops_share(task, trainer)
    peak = float(tc.peak_flops) * jax.device_count()
    config_dict = config.to_dict()
    if dataclasses.is_dataclass(getattr(task, "model_config", None)):
        # The shape actually built (vocab size from the tokenizer, etc.), checked on resume.
        config_dict["resolved_model"] = dataclasses.asdict(task.model_config)
    stage_starts = _stage_starts(task)
    if stage_starts is not None:
        config_dict["resolved_stages"] = stage_starts  # checked on resume

    nothing_to_train = start_step >= total_steps
    warmup_note = optimizers.warmup_note(config.optimizer, total_steps)
    if warmup_note and is_main and not nothing_to_train:
        print(warmup_note, flush=True)  # a short trial of a long config, say
    if nothing_to_train and is_main:
        if resumed is not None:
            print(f"[train] {workdir} is already at step {start_step} (train.steps="
                  f"{total_steps}): nothing to train; evaluating the restored model (the run's "
                  "summary.json and predictions are left as they are).", flush=True)
        else:  # train.steps=0 in a new workdir: no checkpoint, nothing restored
            print("[train] train.steps=0: nothing to train; evaluating the initial model ("
                  + (f"init_from={config.init_from}" if config.get("init_from") else
                     "randomly initialised") + "). No checkpoint is written.", flush=True)

    # (Before the bar: it may print that it set rows aside. Closed by the loop's `with`, however
    # the loop ends.)
    writer = MetricsWriter(workdir, start_step=start_step)
    bar = None
    if is_main and tc.progress:
        bar = progress_bar(total=total_steps, initial=start_step, desc=config.task, unit="step",
                           dynamic_ncols=True)

    pending: list[dict] = []
    last_eval: dict[str, float] = {}
    window_start, window_steps, timed_steps, timed_seconds = None, 0, 0, 0.0
    skipped_total = 0
    summary_rate = 0.0
    mfu_noted = False

    def save(step, metrics=None):
        checkpointer.save(step, state, train_iter.get_state(), config_dict, metrics=metrics)

    last_eval_step = None
    best_metric_missing = False

    def flush(step):
        """Logs the pending steps' metrics; stops on a non-finite value unless skipping."""
        nonlocal pending, window_start, window_steps, timed_steps, timed_seconds, summary_rate
        nonlocal skipped_total, mfu_noted
        if not pending:
            return
        if tc.on_nonfinite == "stop":
            bad = first_nonfinite(pending, step - len(pending) + 1)
            if bad is not None:
                raise NonFiniteError(
                    f"Non-finite {bad[1]} at step {bad[0]}. Stopping (the last checkpoint before "
                    "it is intact). Set --config.train.on_nonfinite=skip to skip such steps.")
        scalars = average(pending)
        # The rate of the row's own step (the window's last update), from the schedule on the
        # host, not a window mean from the step: a warm-up or STLR peak is not blunted in plots.
        # The schedule runs on the optimizer's count, which skipped non-finite steps did not
        # advance: the rate of its last applied update (before any: of its first).
        updates = optimizer_count(state["opt_state"], default=step)
        scalars["learning_rate"] = float(trainer.schedule(max(updates - 1, 0)))
        skipped_total += int(scalars.pop("nonfinite_steps", 0))
        elapsed = time.perf_counter() - window_start
        if window_steps:
            timed_steps += window_steps
            timed_seconds += elapsed
            rate = window_steps / elapsed
            scalars["steps_per_sec"] = rate
            scalars["tokens_per_sec"] = rate * tokens_per_step
            scalars["mfu"] = rate * flops_per_step / peak
            summary_rate = timed_steps / timed_seconds
            if scalars["mfu"] > 1 and not mfu_noted and is_main:
                # The configs' 200 GFLOP/s per device is a CPU estimate: a faster device
                # printed "MFU 132.6%" without a word on why.
                mfu_noted = True
                progress_write(
                    f"[train] Note: MFU {100 * scalars['mfu']:.0f}% is above 100%: "
                    f"train.peak_flops={float(tc.peak_flops):.3g} FLOP/s per device is below "
                    "what this device does; set it to the device's peak for a meaningful MFU "
                    "(benchmarks/bert_pretrain_vs_hf.py prints the measured matmul peak).")
        scalars["skipped_steps"] = skipped_total
        writer.write(step, scalars)
        if bar is not None:
            shown = {k: scalars[k] for k in getattr(task, "progress_keys", ()) if k in scalars}
            shown = {k: f"{v:.4g}" for k, v in shown.items()}
            shown["loss"] = f"{scalars['loss']:.4g}"
            if "tokens_per_sec" in scalars:  # 6,490 rather than 6490 or 1.234e+04
                shown["tok/s"] = f"{scalars['tokens_per_sec']:,.0f}"
            bar.set_postfix(shown, refresh=False)
        pending = []
        window_start, window_steps = time.perf_counter(), 0

    # closed_on_error: a run ended by an exception ends its log's progress lines with the
    # step it reached, and on a terminal closes the bar, so the error starts on a line of its
    # own (the bar is closed after the loop and the final save otherwise). The metrics writer
    # is closed on every way out, an exception's too: in a notebook the process lives on, and
    # tensorboardX would hold the logged steps' events unwritten for up to its two-minute
    # flush interval, with metrics.jsonl open.
    with _Preemption() as preemption, _finish_save_on_error(checkpointer), \
            closed_on_error(bar), contextlib.closing(writer):
        window_start = time.perf_counter()
        for step in range(start_step, total_steps):
            batch = parallel.host_batch_to_global(next(train_iter), mesh)
            state, metrics = trainer.train_step(state, batch)
            pending.append(metrics)
            done = step + 1
            if step == start_step:
                flush(done)  # waits for compilation; the throughput clock restarts after it
            else:
                window_steps += 1
            if bar is not None:
                bar.update(1)
            if done % tc.log_every == 0 or done == total_steps:
                flush(done)
            if tc.eval_every and (done % tc.eval_every == 0 or done == total_steps):
                flush(done)
                last_eval = evaluate(trainer, state["params"], done)
                last_eval_step = done
                writer.write(done, last_eval)
                if (tc.best_metric and last_eval and tc.best_metric not in last_eval
                        and not best_metric_missing and is_main):
                    best_metric_missing = True  # a misspelt name would silently keep no best
                    # progress_write: above the bar on a terminal, as the eval line below.
                    progress_write(
                        f"[checkpoint] Note: train.best_metric={tc.best_metric!r} is not "
                        f"among the eval metrics ({', '.join(sorted(last_eval))}): no best "
                        f"checkpoint is kept, only the last {tc.keep_checkpoints}.")
                window_start, window_steps = time.perf_counter(), 0
                if bar is not None and last_eval:
                    # A line of its own: above the bar on a terminal, between the progress
                    # lines in a log (progress.LineProgress).
                    bar.write(f"[eval] step {done}: " + ", ".join(
                        f"{k}={v:.4f}" for k, v in sorted(last_eval.items())))
            stop = preemption.stop_after(done, start_step)  # every step: all processes agree
            if done % tc.checkpoint_every == 0 or done == total_steps or stop:
                flush(done)
                # Metrics only for the weights they were measured on: a checkpoint between
                # evals carrying the last eval's score could be kept as "best" instead of it.
                save(done, last_eval if last_eval and last_eval_step == done else None)
                # Like an eval, a (synchronous part of a) save is not training time: it would
                # lower the next window's tokens/s and MFU and the summary's.
                window_start = time.perf_counter()
                if stop:
                    # (Above the bar, still drawn: it is closed after the final save.)
                    progress_write(f"[checkpoint] {preemption.stopped_by}: saved step {done}; "
                                   "exiting.")
                    break
        flush(int(jax.device_get(state["step"])))
    # The final save may still be in flight. Should it fail, the bar is closed saying so: in a
    # log, "stopped by CheckpointError" at the step reached, where no closing line came at all;
    # on a terminal, the error then starts on a line of its own, not on the bar's.
    with _finish_save_on_error(checkpointer), closed_on_error(bar):
        checkpointer.close()
    if bar is not None:
        bar.close()

    final_step = int(jax.device_get(state["step"]))
    # A rerun over a finished run evaluates it without rewriting the run's record: its
    # summary.json lost the training's tokens/s and MFU (0 for a run that trained nothing), and
    # its predictions file and summary came from this rerun's eval set while metrics.jsonl
    # kept the run's. (One is written where the run ended before writing its own.)
    summary_path = os.path.join(workdir, "summary.json")
    rerun = nothing_to_train and resumed is not None
    if nothing_to_train and tc.eval_every:
        last_eval = evaluate(trainer, state["params"], final_step, write=not rerun)
    summary = dict(step=final_step, tokens_per_sec=summary_rate * tokens_per_step,
                   mfu=summary_rate * flops_per_step / peak, skipped_steps=skipped_total,
                   **last_eval)
    if is_main:
        if not (rerun and os.path.exists(summary_path)):
            ckpt_lib.save_json(summary_path, summary)
        print(format_summary(summary, task, total_steps, preemption.stopped_by), flush=True)
    return TrainResult(summary=summary, state=state, trainer=trainer, total_steps=total_steps,
                       workdir=workdir, stopped_by=preemption.stopped_by)


class Stopped(RuntimeError):
    """A run saved and returned before `train.steps` (SIGTERM, or Ctrl-C on several processes):
    raised where a caller chains runs, and by `tl_jax train`, which then exits with status 143
    (`tl_jax.main.EXIT_STOPPED`)."""


@dataclasses.dataclass
class TrainResult:
    summary: dict
    state: dict     # the final train state (params, opt_state, step, rng), sharded
    trainer: Trainer
    total_steps: int = 0  # train.steps, as the task filled it
    workdir: str = ""     # where its checkpoints are
    stopped_by: str = "SIGTERM"  # the signal that stopped it early: SIGTERM, or SIGINT (Ctrl-C)

    @property
    def stopped(self) -> bool:
        """Whether the run saved and returned early (SIGTERM): its figures are not the run's."""
        return int(self.summary["step"]) < self.total_steps

    def check_finished(self, what: str) -> None:
        """For a caller that goes on to another run or reports this one's figures: a run
        stopped by SIGTERM stops the caller too, rather than record a half-trained run's scores
        or start the next run on a machine going away."""
        if self.stopped:
            saved = (f"saved in {os.path.join(self.workdir, 'checkpoints')}" if self.workdir
                     else "saved")
            raise Stopped(f"{what} stopped at step {self.summary['step']} of {self.total_steps} "
                          f"({self.stopped_by}; {saved}): run the same command again to resume "
                          "it.")


def format_summary(summary: dict, task, total_steps: int = 0, stopped_by: str = "") -> str:
    """The run's last line: `done: N steps | held-out ...`, or `stopped: N of M steps (SIGTERM)
    | ...` for a run a signal stopped before `total_steps` (a "done:" line read as a finished
    run in a log)."""
    if stopped_by and summary["step"] < total_steps:
        parts = [f"stopped: {summary['step']} of {total_steps} steps ({stopped_by})"]
    else:
        parts = [f"done: {summary['step']} steps"]
    for key in getattr(task, "summary_keys", ()):
        if key in summary:
            parts.append(f"held-out {key.removeprefix('eval/')} {summary[key]:.4f}")
    if summary["tokens_per_sec"]:  # 0 when this run trained no step (already complete)
        parts.append(f"{summary['tokens_per_sec']:,.0f} tokens/s")
        parts.append(f"MFU {100 * summary['mfu']:.1f}%")
    if summary.get("skipped_steps"):
        parts.append(f"{summary['skipped_steps']} non-finite steps skipped")
    return " | ".join(parts)

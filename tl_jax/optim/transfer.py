"""Transfer strategies as optax transforms over parameter-path masks.

Which weights to train, when, and how fast, all expressed as static masks over the `/`-joined
parameter paths (`bert/encoder/layer_3/attention/query/kernel`):

* **Rules**: a list of `(regex, setting)` pairs. The regex is matched with `re.fullmatch`
  against each path and the first matching rule wins. Every parameter must be covered. A setting
  is `"frozen"`, or trainable with a learning-rate multiplier and weight decay on/off, written as
  a short string: `"train"`, `"train,lr=0.1"`, `"train,no_wd"`, `"frozen"`.
* **Layer groups**: each path belongs to `embeddings`, `layer_<i>` (its encoder block) or `head`
  (everything else: pooler, task head, final norm). Groups give the depth used by discriminative
  learning rates (ULMFiT: `lr / 2.6` per layer down) and the units of gradual unfreezing and
  chain-thaw.
* **Stages**: gradual unfreezing (head first, then one more group per stage, top down) and
  chain-thaw (head, then each group alone from the bottom, then all) are a list of stages with
  static masks and start steps. The trainer uses `as_optax()`: one compile per run, the stage
  read from the step (`tx_for_stage` gives a transform per stage instead).

Design of the optimizer state (why it looks like this):

* Parameters frozen by a rule are not in the optimizer's tree at all: they have no optimizer
  state, no gradient accumulator and, when the trainer differentiates only the trainable subtree
  (`TransferPlan.split`), no gradient is ever computed for them.
* Parameters that some stage trains are in the optimizer's tree from step 0, so the state has ONE
  structure for the whole run: a checkpoint taken in any stage restores into the same target, and
  resuming mid-schedule needs no state surgery. A group frozen in the current stage is held: its
  update is -0.0 and its state does not change. Each label (layer group x weight decay on/off)
  has its own inner optimizer state, so a group thawed at step 1000 starts with a fresh Adam
  count; one shared count would apply step-1000 bias correction to zero moments and take a step
  of about `3 * lr * sign(g)`.
* Clipping is by the global norm of what the stage trains (as `optimizers.make_optimizer` does
  for the whole model; `stage_gradients` gives those gradients, whose norm the trainer logs);
  the learning-rate schedule and the per-path multipliers are applied after the per-label
  transforms with one global count, so the schedule spans the whole run.
* Two ways to run it, with identical state: `as_optax()` (one transform over the full tree, the
  stage read from the step at run time: one compile per run, drop-in for any trainer) and
  `tx_for_stage(k)` / `split` / `update` (the stage static: one compile per stage, and no
  gradients computed for anything the stage does not train).

Why not `optax.multi_transform` / `optax.masked`: they give each inner transform the whole tree
with `optax.MaskedNode()` in place of the other labels' leaves. A pytree-valued weight-decay mask
handed to an inner `adamw` no longer matches the tree it sees, `tree_map`s over the state need
`is_leaf=lambda x: isinstance(x, optax.MaskedNode)`, and the frozen labels' `set_to_zero` adds
+0.0 (flipping -0.0 weights). Here each label's state is built over that label's own subtree,
weight decay on/off is part of the label (the inner transforms take no mask), and frozen leaves
get -0.0 updates.
"""
from __future__ import annotations

import functools
import math
import numbers
import re
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from tl_jax.optim import optimizers, schedules
# The static masks live in masks.py; re-exported so `transfer.X` is the one import users need.
from tl_jax.optim.masks import (  # noqa: F401
    DEFAULT_EMBEDDINGS_PATTERN, DEFAULT_LAYER_PATTERN, EMBEDDINGS, HEAD, STRATEGIES, Setting,
    Stage, compile_rules, count_params, flat_params, group_depth, layer_groups, make_stages,
    match_rules, merge_params, num_elements, parse_setting, split_params, stage_for_step,
    tree_bytes, unflatten_paths)

Params = Any


# ----------------------------------------------------------------------------------------------
# Small optax transforms.
# ----------------------------------------------------------------------------------------------


def direction(cfg: ml_collections.ConfigDict, weight_decay: bool) -> optax.GradientTransformation:
    """The optimizer of `config.optimizer` without learning rate and clipping.

    AdamW and LAMB in optax are `chain(scale_by_adam, add_decayed_weights, [trust ratio],
    scale_by_learning_rate)`; the transfer plan applies one global learning rate after its
    per-group transforms, so each group gets the same chain minus the last element. This keeps
    `strategy='none'` with one rule numerically identical to `optimizers.make_optimizer`.
    """
    optimizers.check_lamb_option(cfg)
    parts = []
    if cfg.name in ("adamw", "lamb"):
        parts.append(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
        if weight_decay and cfg.weight_decay:
            parts.append(optax.add_decayed_weights(cfg.weight_decay))
        # The groups without weight decay (biases, LayerNorm) take no trust ratio under
        # lamb_exclude_from_adaptation, as in optimizers.lamb.
        if cfg.name == "lamb" and (weight_decay or not cfg.get("lamb_exclude_from_adaptation",
                                                               False)):
            parts.append(optax.scale_by_trust_ratio())
    elif cfg.name == "sgd":
        # As in optimizers.make_optimizer: weight decay added to the gradient, momentum = b1.
        if weight_decay and cfg.weight_decay:
            parts.append(optax.add_decayed_weights(cfg.weight_decay))
        if cfg.b1:
            parts.append(optax.trace(decay=cfg.b1))
    else:
        raise ValueError(f"optimizer.name={cfg.name!r}; expected adamw, lamb or sgd.")
    return optax.chain(*parts) if parts else optax.identity()  # optax.chain() needs one part


# ----------------------------------------------------------------------------------------------
# The plan: what the trainer uses.
# ----------------------------------------------------------------------------------------------


def default_config() -> ml_collections.ConfigDict:
    """The `transfer` config section (each config may change any field)."""
    return ml_collections.ConfigDict(dict(
        # (regex, setting) pairs, re.fullmatch on '/'-joined paths, first match wins.
        rules=((".*", "train"),),
        strategy="none",               # none | gradual_unfreezing | chain_thaw
        stage_epochs=1.0,              # length of each unfreezing stage, in epochs ...
        stage_steps=0,                 # ... or in steps when > 0
        discriminative_decay=1.0,      # lr of a layer = lr of the layer above / decay (ULMFiT: 2.6)
        schedule="optimizer",          # optimizer (config.optimizer's schedule) | stlr
        stlr_cut_frac=0.1,             # STLR: fraction of steps spent increasing
        stlr_ratio=32.0,               # STLR: peak lr / lowest lr
        reinit_top_k=0,                # re-initialise the top k encoder layers (and the pooler)
        adapter_size=0,                # > 0: bottleneck adapters after attention and the FFN
        lora_rank=0,                   # > 0: LoRA on the query and value projections
        lora_alpha=1.0,
        layer_pattern=DEFAULT_LAYER_PATTERN,
        embeddings_pattern=DEFAULT_EMBEDDINGS_PATTERN,
    ))


def check_config(transfer_cfg: ml_collections.ConfigDict,
                 optimizer_cfg: ml_collections.ConfigDict) -> None:
    """Settings of `config.transfer` that are wrong whatever the model: checked by the tasks
    before they read data or build a model, and by `TransferPlan`."""
    for section, cfg, known in (("transfer", transfer_cfg, default_config()),
                                ("optimizer", optimizer_cfg, optimizers.default_config())):
        # A config built in Python (default_config() is not locked) takes any key: a misspelt
        # one (`stage_step=25`) was added beside the real one and the plan used the default.
        unknown = sorted(set(cfg.keys()) - set(known.keys()))
        if unknown:
            import difflib

            close = difflib.get_close_matches(unknown[0], list(known.keys()), n=1)
            raise ValueError(f"{section}.{unknown[0]} is not a setting of the {section} section"
                             + (f"; did you mean {section}.{close[0]}?" if close else "")
                             + f" (the settings: {', '.join(sorted(known.keys()))})")
    # (Found when the plan was built, after the data was read and tokenised.)
    if transfer_cfg.strategy not in STRATEGIES:
        raise ValueError(f"transfer.strategy={transfer_cfg.strategy!r}; expected one of "
                         f"{STRATEGIES}.")
    if transfer_cfg.schedule not in ("optimizer", "stlr"):
        raise ValueError(f"transfer.schedule={transfer_cfg.schedule!r}; expected optimizer or "
                         "stlr.")
    if transfer_cfg.schedule == "stlr" and optimizer_cfg.warmup_steps:
        # STLR replaces the optimizer's schedule, warm-up included: the steps would do nothing.
        raise ValueError(
            f"transfer.schedule='stlr' with optimizer.warmup_steps={optimizer_cfg.warmup_steps}: "
            "STLR has its own warm-up (it rises over the first transfer.stlr_cut_frac="
            f"{transfer_cfg.stlr_cut_frac:g} of the steps) and ignores optimizer.warmup_steps; "
            "set optimizer.warmup_steps=0.")
    for key, what in (("adapter_size", "the adapters' bottleneck width"),
                      ("lora_rank", "the rank of LoRA's update"),
                      ("reinit_top_k", "how many top layers start fresh")):
        value = transfer_cfg[key]
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            # Before any data is read, naming the key (BertConfig refused a negative one only
            # after the probe task had read and tokenized its data).
            raise ValueError(f"transfer.{key}={value!r}: expected an integer >= 0 ({what}; "
                             "0 = off).")
    alpha = transfer_cfg.lora_alpha
    if transfer_cfg.lora_rank > 0 and not alpha:
        raise ValueError(f"transfer.lora_alpha={alpha} with lora_rank={transfer_cfg.lora_rank}: "
                         "LoRA's update is scaled by lora_alpha / lora_rank, so it would "
                         "change nothing (and its weights get no gradient).")
    if transfer_cfg.lora_rank > 0 and not math.isfinite(alpha):
        raise ValueError(f"transfer.lora_alpha={alpha} with lora_rank={transfer_cfg.lora_rank}: "
                         "LoRA's update is scaled by lora_alpha / lora_rank; expected a finite "
                         "number.")


class GroupInfo(NamedTuple):
    """Per-path facts the plan is built from."""

    rule: int          # index of the matching rule
    setting: Setting
    group: str         # layer group
    decay: bool        # weight decay applies (rule allows it and not a bias/LayerNorm)
    lr_mult: float     # rule multiplier * discriminative multiplier


class TransferPlan:
    """Static masks, stages and per-stage optax transforms for one training run.

    How the trainer uses it (`params` is the full parameter tree):

        plan = build_transfer_optimizer(params, config.transfer, config.optimizer,
                                        total_steps, steps_per_epoch)
        print(plan.summary())
        opt_state = plan.init(params)                       # same structure in every stage
        stage = plan.stage_for_step(step)                   # after a restore too
        # one jitted step per stage; `stage` is a Python int closed over (static):
        def train_step(params, opt_state, batch):
            trainable, rest = plan.split(params, stage)
            grads = jax.grad(lambda t: loss(plan.merge(t, rest), batch))(trainable)
            return plan.update(grads, opt_state, params, stage)   # -> (params, opt_state)

    At a stage boundary the trainer only re-jits the step for the new stage: the optimizer state
    carries over unchanged. A checkpoint needs nothing extra: the stage is a function of the step.

    Or, with no change to a trainer that differentiates every parameter: `tx = plan.as_optax()`
    (one compile for the whole run; see there). Both keep the same state, step for step.
    """

    def __init__(self, params: Params, cfg: ml_collections.ConfigDict,
                 optimizer_cfg: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: int):
        self.cfg, self.optimizer_cfg, self.total_steps = cfg, optimizer_cfg, int(total_steps)
        check_config(cfg, optimizer_cfg)
        flat = flat_params(params)
        self.paths = list(flat)
        self.sizes = {p: num_elements(x) for p, x in flat.items()}
        self.rules = compile_rules(cfg.rules)
        try:
            rule_of = match_rules(self.paths, cfg.rules)
        except ValueError as e:
            # A LoRA or adapters config run with its size at 0 builds none of the parameters
            # its rules name: the rule was said to match nothing, without the reason.
            off = [f"transfer.{key}=0 builds no {what}" for key, what, part in (
                ("lora_rank", "LoRA", "lora_"), ("adapter_size", "adapters", "adapter"))
                if not cfg[key] and part in str(e) and not any(part in p for p in self.paths)]
            if off and "match no parameter" in str(e):
                raise ValueError(f"{e} ({'; '.join(off)}: give it a size above 0, or use "
                                 "another config)") from None
            raise
        group_of, self.groups = layer_groups(self.paths, cfg.layer_pattern, cfg.embeddings_pattern)
        self.num_layers = sum(g.startswith("layer_") for g in self.groups)
        decay = cfg.discriminative_decay
        if not (math.isfinite(decay) and decay >= 1.0):
            # Below 1 the lower layers would train FASTER than the head (0.8: the embeddings at
            # 0.8**-(L+1) times the head's rate); NaN would make every rate NaN.
            raise ValueError(
                f"transfer.discriminative_decay={decay}: expected a finite number >= 1 (each "
                "layer's rate is the rate of the layer above DIVIDED by it; ULMFiT: 2.6, 1 = "
                "off). A layer-wise decay written as a multiplier below 1 (e.g. 0.8) is its "
                "inverse here (1 / 0.8 = 1.25).")
        if not self.num_layers and (cfg.strategy != "none" or decay != 1.0):
            # Without layer groups the layers would silently train as part of `head`.
            raise ValueError(
                f"transfer.layer_pattern={cfg.layer_pattern!r} finds no encoder layer in this "
                f"model's parameter paths (e.g. {self.paths[0]!r}), so "
                f"transfer.strategy={cfg.strategy!r} and discriminative_decay={decay:g} would "
                "see no layers; it needs one capture group for the layer index.")
        depth_mults = schedules.discriminative_multipliers(self.num_layers + 2,
                                                           cfg.discriminative_decay)
        decays = {optimizers.path_str(path): bool(d) for path, d in
                  jax.tree_util.tree_flatten_with_path(optimizers.decay_mask(params))[0]}
        self.info: dict[str, GroupInfo] = {}
        for path in self.paths:
            setting = self.rules[rule_of[path]][1]
            group = group_of[path]
            self.info[path] = GroupInfo(
                rule=rule_of[path], setting=setting, group=group,
                decay=setting.weight_decay and decays[path],
                lr_mult=setting.lr_mult * depth_mults[group_depth(group, self.num_layers)])

        if cfg.strategy != "none" and (cfg.stage_steps < 0 or (cfg.stage_steps == 0
                                                               and not cfg.stage_epochs > 0)):
            raise ValueError(
                f"transfer.strategy={cfg.strategy!r} needs stages of a positive length: "
                f"transfer.stage_steps={cfg.stage_steps} (> 0: steps per stage; 0: use "
                f"stage_epochs), transfer.stage_epochs={cfg.stage_epochs}.")
        steps = int(cfg.stage_steps) if cfg.stage_steps > 0 else \
            max(1, round(cfg.stage_epochs * steps_per_epoch))
        trainable_groups = [g for g in self.groups
                            if any(i.setting.trainable and i.group == g for i in self.info.values())]
        if not trainable_groups:
            raise ValueError("every parameter is frozen by the transfer rules; nothing to train.")
        self.stages = make_stages(cfg.strategy, trainable_groups, steps)
        if self.stages[-1].start_step >= self.total_steps:
            # Printed as the plan's summary is (it came through the root logger as
            # "WARNING root: transfer: ...", unlike every other note of the run).
            never = sum(s.start_step >= self.total_steps for s in self.stages)
            if jax.process_index() == 0:
                print(f"[transfer] warning: {len(self.stages)} stages of {steps} steps do not "
                      f"fit in {self.total_steps} training steps; the last {never} "
                      f"stage{'' if never == 1 else 's'} will never run.", flush=True)
        # Paths in the optimizer's tree: trainable by rule and in some stage's groups.
        staged = frozenset().union(*(s.groups for s in self.stages))
        self.optimizer_mask = {p: i.setting.trainable and i.group in staged
                               for p, i in self.info.items()}
        self.labels = {p: self._label(i) for p, i in self.info.items() if self.optimizer_mask[p]}
        if cfg.schedule == "stlr":
            self.schedule = schedules.slanted_triangular(
                optimizer_cfg.learning_rate, self.total_steps, cfg.stlr_cut_frac, cfg.stlr_ratio)
        elif cfg.schedule == "optimizer":
            self.schedule = optimizers.make_schedule(optimizer_cfg, self.total_steps)
        else:
            raise ValueError(f"transfer.schedule={cfg.schedule!r}; expected optimizer or stlr.")

    def training_flops_fraction(self, params: Params) -> float:
        """The share of a full training step's model FLOPs that a step of this plan does.

        The trainer differentiates only what some stage trains (`optimizer_mask`): a step runs
        the whole forward pass, the backward pass to the activations from the top down to the
        lowest group holding a trained parameter, and weight gradients for the trained matmuls.
        Each part is counted by matmul weights (leaves of two or more axes that are not an
        `embedding` lookup table; attention scores scale with the layers like them), against
        forward + activations + weights for every matmul: `(all + above + trained) / (3 all)`.
        A frozen encoder under a trained head gives about 1/3, full fine-tuning 1. (Groups that
        a stage holds still get gradients, so the share is the same in every stage.)
        `params`: the tree or its shapes (`jax.eval_shape`).
        """
        def matmul(path, leaf):
            return len(leaf.shape) >= 2 and not path.endswith("embedding")

        sizes = {p: num_elements(x) for p, x in flat_params(params).items() if matmul(p, x)}
        trained = [p for p, t in self.optimizer_mask.items() if t]
        if not sizes or not trained:
            return 1.0
        lowest = min(group_depth(self.info[p].group, self.num_layers) for p in trained)
        total = sum(sizes.values())
        above = sum(n for p, n in sizes.items()
                    if group_depth(self.info[p].group, self.num_layers) >= lowest)
        weights = sum(n for p, n in sizes.items() if self.optimizer_mask[p])
        return (total + above + weights) / (3.0 * total)

    @staticmethod
    def _label(info: GroupInfo) -> str:
        return info.group if info.decay else f"{info.group}/no_decay"

    # --- masks and stages ---------------------------------------------------------------------

    def stage_for_step(self, step: int) -> int:
        """Index of the stage that update number `step` (0-based) runs in."""
        return stage_for_step(self.stages, step)

    def trainable_mask(self, stage: int) -> dict[str, bool]:
        """`{path: trains in this stage}`."""
        groups = self.stages[stage].groups
        return {p: self.optimizer_mask[p] and self.info[p].group in groups for p in self.paths}

    @functools.cached_property
    def _stage_table(self):
        """`(groups, start steps, table)`: `table[k, i]` says whether stage k trains `groups[i]`,
        over the groups with a parameter in the optimizer's tree."""
        groups = sorted({self.info[p].group for p in self.labels})
        starts = np.array([s.start_step for s in self.stages])
        table = np.array([[g in s.groups for g in groups] for s in self.stages])
        return groups, starts, table

    def active_groups(self, stage: int | None = None, count=None) -> dict:
        """`{group: trained by this update}` over the groups in the optimizer's tree.

        With a static `stage`, Python bools. With `stage=None`, boolean arrays for the update at
        optimizer count `count` (`TransferState.count` before the update; traceable): its stage
        is the last one started by then, as `as_optax()` reads it.
        """
        groups, starts, table = self._stage_table
        if stage is None:
            k = jnp.sum(count >= starts) - 1  # stage index of this update
            return {g: jnp.asarray(table)[k, i] for i, g in enumerate(groups)}
        return {g: bool(table[stage, i]) for i, g in enumerate(groups)}

    def stage_gradients(self, grads: Params, count) -> Params:
        """`grads` with 0 in every leaf that the update at optimizer count `count` does not
        train (groups its stage holds, parameters no stage trains): their global norm is the
        norm `as_optax()` clips, and the one the trainer logs as `grad_norm`.

        `grads` is the full tree or any subtree of it (the same structure comes back); `count`
        is `TransferState.count` before the update, and may be traced.
        """
        active = self.active_groups(count=count)

        def keep(path, g):
            p = optimizers.path_str(path)
            if p not in self.info:
                raise ValueError(f"plan.stage_gradients: {p!r} is not a parameter of this plan.")
            if not self.optimizer_mask[p]:
                return jnp.zeros_like(g)
            return jnp.where(active[self.info[p].group], g, 0.0)  # as as_optax() zeroes them

        return jax.tree_util.tree_map_with_path(keep, grads)

    def split(self, params: Params, stage: int):
        """`(trainable in this stage, everything else)`; differentiate only the first."""
        return split_params(params, self.trainable_mask(stage))

    merge = staticmethod(merge_params)

    # --- optimizer ----------------------------------------------------------------------------

    def optimizer_params(self, params: Params) -> Params:
        """The subtree the optimizer state is built over (what some stage trains)."""
        return split_params(params, self.optimizer_mask)[0]

    def init(self, params: Params) -> "TransferState":
        """Optimizer state for the whole run, over the full tree or `optimizer_params`.

        Jittable and `jax.eval_shape`-able; the same structure for every stage.
        """
        return self.as_optax().init(params)

    @functools.lru_cache(maxsize=None)
    def tx_for_stage(self, stage: int) -> optax.GradientTransformation:
        """The transform with `stage` fixed at trace time.

        Accepts gradients for any superset of the stage's trainable paths (typically exactly
        `split(params, stage)[0]`) and returns updates for the same paths: -0.0 for paths this
        stage does not train. Its state is the same as `as_optax()`'s.
        """
        return _staged_transform(self, stage)

    @functools.lru_cache(maxsize=None)
    def as_optax(self) -> optax.GradientTransformation:
        """The whole schedule as ONE optax transform over the full parameter tree.

        The stage is read from the state's step count at run time, so the trainer compiles once
        for the entire run and resumes correctly from any checkpoint; the price is that gradients
        are computed for groups a stage holds (`split`/`update` avoid that; the trainer skips
        only what no stage trains, which keeps its one compile). Frozen and
        held parameters get updates of -0.0, which `optax.apply_updates` adds without changing a
        single bit (x + -0.0 == x for every x, including -0.0; x + 0.0 would turn -0.0 into 0.0).
        """
        return _staged_transform(self, None)

    def update(self, grads: Params, opt_state, params: Params, stage: int):
        """One optimizer step with the stage fixed. Returns `(new_params, new_opt_state)`.

        `grads` covers exactly `split(params, stage)[0]`. Every other leaf of `params` is
        returned as the same array, untouched.
        """
        train_mask = self.trainable_mask(stage)
        flat_g, flat_p = flat_params(grads), flat_params(params)
        expected = [p for p in self.paths if train_mask[p]]
        if sorted(flat_g) != expected:
            raise ValueError("plan.update: grads must cover exactly the paths trainable in stage "
                             f"{stage} ({self.stages[stage].name}); got {len(flat_g)} paths, "
                             f"expected {len(expected)}.")
        trainable = unflatten_paths({p: flat_p[p] for p in expected})
        updates, opt_state = self.tx_for_stage(stage).update(grads, opt_state, trainable)
        new = merge_params(optax.apply_updates(trainable, updates),
                           unflatten_paths({p: x for p, x in flat_p.items() if not train_mask[p]}))
        return new, opt_state

    # --- reporting ----------------------------------------------------------------------------

    def trainable_count(self, stage: int | None = None) -> int:
        """Parameters trained in `stage` (default: in any stage)."""
        mask = self.optimizer_mask if stage is None else self.trainable_mask(stage)
        return sum(self.sizes[p] for p in self.paths if mask[p])

    def summary(self) -> str:
        """Table of rules (matched tensors and parameters), groups and stages, for the log."""
        total = sum(self.sizes.values())
        lines = [f"transfer: {len(self.paths)} tensors, {total:,} parameters; "
                 f"strategy={self.cfg.strategy}, discriminative_decay={self.cfg.discriminative_decay:g}",
                 f"  {'rule':<48} {'setting':<18} {'tensors':>7} {'params':>12}"]
        for i, (_, setting, pattern) in enumerate(self.rules):
            paths = [p for p in self.paths if self.info[p].rule == i]
            n = sum(self.sizes[p] for p in paths)
            note = "" if paths else "   <- earlier rules take all it matches"
            lines.append(f"  {pattern:<48} {setting.describe():<18} {len(paths):>7} {n:>12,}{note}")
        lines.append(f"  {'group':<18} {'lr mult':>9} {'trainable params':>17}")
        for g in reversed(self.groups):
            paths = [p for p in self.paths if self.info[p].group == g]
            mults = sorted({self.info[p].lr_mult for p in paths if self.optimizer_mask[p]})
            n = sum(self.sizes[p] for p in paths if self.optimizer_mask[p])
            mult = ",".join(f"{m:.4g}" for m in mults) or "-"
            lines.append(f"  {g:<18} {mult:>9} {n:>17,}")
        lines.append(f"  {'stage':<12} {'from step':>9} {'trainable':>12}  groups")
        for k, s in enumerate(self.stages):
            groups = " ".join(g for g in reversed(self.groups) if g in s.groups)
            lines.append(f"  {s.name:<12} {s.start_step:>9} {self.trainable_count(k):>12,}  {groups}")
        return "\n".join(lines)


class TransferState(NamedTuple):
    """Optimizer state of a plan: the global step and one inner state per label.

    `inner[label]` is the direction's state over that label's parameters only (a nested dict of
    just those paths), so no `MaskedNode` placeholders appear and a leaf's path ends with its
    parameter's path (what `parallel.shardings_like_params` matches on).
    """

    count: jax.Array
    inner: dict


def _staged_transform(plan: "TransferPlan", stage: int | None) -> optax.GradientTransformation:
    """The plan's optimizer; `stage=None` selects the stage from the step count at run time."""
    labels = sorted(set(plan.labels.values()))
    label_paths = {lb: [p for p in plan.paths if plan.labels.get(p) == lb] for lb in labels}
    label_group = {lb: plan.info[label_paths[lb][0]].group for lb in labels}
    directions = {lb: direction(plan.optimizer_cfg, weight_decay=not lb.endswith("/no_decay"))
                  for lb in labels}
    clip = plan.optimizer_cfg.clip_norm

    def init_fn(params):
        flat = flat_params(params)
        return TransferState(
            count=jnp.zeros((), jnp.int32),
            inner={lb: directions[lb].init(unflatten_paths({p: flat[p] for p in label_paths[lb]}))
                   for lb in labels})

    def update_fn(updates, state, params=None):
        flat_u = flat_params(updates)
        flat_p = flat_params(params) if params is not None else {}
        active = plan.active_groups(stage, state.count)
        live = [lb for lb in labels if active[label_group[lb]] is not False]
        grads = {}
        for lb in live:
            for p in label_paths[lb]:
                if p not in flat_u:
                    raise ValueError(f"transfer: no gradient for {p!r}, which stage "
                                     f"{stage} trains.")
                grads[p] = flat_u[p]
        if stage is None and grads:
            # Run-time stage: held groups' gradients are zeroed so the clip norm is the norm of
            # what this stage trains, exactly as with the static stage. The same zeroing as the
            # trainer's logged grad_norm, so the two cannot drift apart.
            grads = flat_params(plan.stage_gradients(unflatten_paths(grads), state.count))
        if clip and clip > 0 and grads:
            grads = flat_params(optax.clip_by_global_norm(clip).update(
                unflatten_paths(grads), optax.EmptyState())[0])
        lr = plan.schedule(state.count)
        out = {p: jnp.full_like(u, -0.0) for p, u in flat_u.items()}
        inner = dict(state.inner)
        for lb in live:
            a = active[label_group[lb]]
            sub_p = unflatten_paths({p: flat_p[p] for p in label_paths[lb]}) if flat_p else None
            new_u, new_s = directions[lb].update(
                unflatten_paths({p: grads[p] for p in label_paths[lb]}), state.inner[lb], sub_p)
            new_u = flat_params(new_u)
            if stage is None:  # a held group keeps its state (its moments and its count)
                new_s = jax.tree_util.tree_map(lambda n, o: jnp.where(a, n, o), new_s,
                                               state.inner[lb])
            inner[lb] = new_s
            for p in label_paths[lb]:
                # Same order as optax.scale_by_learning_rate: (-lr * mult) * u; mult 1.0 is exact.
                step = jnp.asarray(-lr * plan.info[p].lr_mult, new_u[p].dtype) * new_u[p]
                out[p] = step if stage is not None else jnp.where(a, step, -0.0)
        return unflatten_paths(out), TransferState(count=state.count + 1, inner=inner)

    return optax.GradientTransformation(init_fn, update_fn)


def build_transfer_optimizer(params: Params, transfer_cfg: ml_collections.ConfigDict,
                             optimizer_cfg: ml_collections.ConfigDict, total_steps: int,
                             steps_per_epoch: int) -> TransferPlan:
    """Builds the plan for `config.transfer` over `params` (arrays or `ShapeDtypeStruct`s)."""
    return TransferPlan(params, transfer_cfg, optimizer_cfg, total_steps, steps_per_epoch)


def reinit_top_layers(params: Params, fresh: Params, k: int,
                      layer_pattern: str = DEFAULT_LAYER_PATTERN,
                      extra_pattern: str = r"(?:^|/)pooler(?:/|$)", quiet: bool = False) -> Params:
    """Takes the top `k` encoder layers (and paths matching `extra_pattern`) from `fresh`.

    Zhang et al. 2021 ("Revisiting few-sample BERT fine-tuning") re-initialise the pooler and
    the top layers before fine-tuning. `fresh` is the model's random initialisation (same tree).
    Says which tensors start fresh, unless `quiet` (a second call in one run, said once).
    """
    if k < 0:
        raise ValueError(f"reinit_top_k must be >= 0, got {k}.")
    if k == 0:
        return params
    flat, flat_fresh = flat_params(params), flat_params(fresh)
    if flat.keys() != flat_fresh.keys():
        raise ValueError("reinit_top_layers: `fresh` has different parameter paths from `params`.")
    group_of, groups = layer_groups(flat, layer_pattern)
    layers = [g for g in groups if g.startswith("layer_")]
    if k > len(layers):
        raise ValueError(f"reinit_top_k={k} but the model has {len(layers)} layers.")
    top = layers[len(layers) - k:]
    extra = re.compile(extra_pattern)
    again = {p for p in flat if group_of[p] in top or extra.search(p)}
    others = sorted({p.rsplit("/", 1)[0] for p in again if group_of[p] not in top})
    if not quiet:
        print(f"[transfer] reinit_top_k={k}: {', '.join(top)}"
              f"{' and ' + ', '.join(others) if others else ''} start from a fresh "
              f"initialisation ({count_params([flat[p] for p in again]):,} parameters).",
              flush=True)
    return unflatten_paths({p: flat_fresh[p] if p in again else x for p, x in flat.items()})


def make_task_optimizer(task, config, total_steps: int, steps_per_epoch: int):
    """`(tx, schedule)` from `config.transfer` for a task: the trainer's `make_optimizer` hook.

    Builds the plan over the task's abstract params (nothing is materialised), prints its
    summary table on process 0, sets `task.transfer_plan` (the trainer then computes no gradient
    for parameters no stage trains) and returns the single-compile `as_optax()` transform.
    """
    example = task.example_batch(1)
    abstract = nn.unbox(jax.eval_shape(lambda r: task.init_variables(r, example)["params"],
                                       jax.random.PRNGKey(0)))
    plan = build_transfer_optimizer(abstract, config.transfer, config.optimizer, total_steps,
                                    steps_per_epoch)
    if jax.process_index() == 0:
        print(plan.summary(), flush=True)
    # The trainer reads the plan's static mask and differentiates only what some stage trains.
    task.transfer_plan = plan
    return plan.as_optax(), plan.schedule

"""Path masks for transfer strategies: rules over parameter paths, layer groups and stages.

The static half of `optim/transfer.py` (which turns these into optax transforms):

* `flat_params` / `split_params` / `merge_params`: params as `{'/'-joined path: leaf}` and back.
* Rules: `[(regex, setting), ...]`, `re.fullmatch` on each path, first match wins, every
  parameter covered (else an error listing the uncovered paths). A setting is `"frozen"` or
  `"train[,lr=<mult>][,no_wd]"`.
* Layer groups: `embeddings`, `layer_<i>`, `head` (everything else), bottom to top; the depth
  for discriminative learning rates and the unit of gradual unfreezing and chain-thaw.
* Stages: `make_stages(strategy, groups, steps_per_stage)` and `stage_for_step`.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import numpy as np
from flax import traverse_util

Params = Any
HEAD = "head"
EMBEDDINGS = "embeddings"
STRATEGIES = ("none", "gradual_unfreezing", "chain_thaw")

# ----------------------------------------------------------------------------------------------
# Paths, split and merge.
# ----------------------------------------------------------------------------------------------


def flat_params(params: Params) -> dict[str, Any]:
    """`{path: leaf}` with `/`-joined paths, in sorted path order (the order jax flattens in)."""
    flat = traverse_util.flatten_dict(params, sep="/")
    return {k: flat[k] for k in sorted(flat)}


def unflatten_paths(flat: Mapping[str, Any]) -> Params:
    """Nested dicts from `{path: leaf}` (the inverse of `flat_params`)."""
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def split_params(params: Params, mask: Mapping[str, bool] | Callable[[str], bool]):
    """Splits `params` into `(selected, rest)` nested dicts by a path mask.

    `mask` maps every path to a bool (or is a predicate on paths). Both halves keep the nesting of
    `params` and contain only their own leaves, so `jax.grad` of a function of `selected` computes
    no gradient for `rest`. Inverse: `merge_params(selected, rest)`.
    """
    selected, rest = {}, {}
    for path, leaf in flat_params(params).items():
        take = mask(path) if callable(mask) else mask[path]
        (selected if take else rest)[path] = leaf
    return unflatten_paths(selected), unflatten_paths(rest)


def merge_params(*parts: Params) -> Params:
    """Merges nested dicts with disjoint paths (the inverse of `split_params`)."""
    merged: dict[str, Any] = {}
    for part in parts:
        for path, leaf in flat_params(part).items():
            if path in merged:
                raise ValueError(f"merge_params: path {path!r} appears in more than one part.")
            merged[path] = leaf
    return unflatten_paths(merged)


def num_elements(leaf) -> int:
    """Scalars in one leaf (array, ShapeDtypeStruct or flax Partitioned box)."""
    leaf = getattr(leaf, "value", leaf)  # flax Partitioned boxes carry the array in .value
    return int(math.prod(np.shape(leaf)))


def count_params(params: Params) -> int:
    """Number of scalar parameters in a tree (works on arrays and `jax.ShapeDtypeStruct`s)."""
    return sum(num_elements(x) for x in jax.tree_util.tree_leaves(params))


def tree_bytes(tree) -> int:
    """Bytes held by the array leaves of a tree, e.g. an optimizer state."""
    total = 0
    for leaf in jax.tree_util.tree_leaves(tree):
        leaf = getattr(leaf, "value", leaf)
        total += int(math.prod(np.shape(leaf))) * np.dtype(leaf.dtype).itemsize
    return total


# ----------------------------------------------------------------------------------------------
# Rules.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Setting:
    """What a rule does to the parameters it matches."""

    trainable: bool = True
    lr_mult: float = 1.0
    weight_decay: bool = True  # False turns decay off; True keeps the optimizer's default mask

    def describe(self) -> str:
        if not self.trainable:
            return "frozen"
        parts = ["train"]
        if self.lr_mult != 1.0:
            parts.append(f"lr={self.lr_mult:g}")
        if not self.weight_decay:
            parts.append("no_wd")
        return ",".join(parts)


def parse_setting(spec, where: str = "rule") -> Setting:
    """Parses `"frozen"`, `"train"`, `"train,lr=0.1,no_wd"`, a dict of Setting fields or a Setting.

    A dict is checked as a string is: `{"trainable": False}` alone is frozen; `lr_mult` is a
    finite number >= 0 and `trainable` / `weight_decay` are bools."""
    if isinstance(spec, Setting):
        return spec
    if isinstance(spec, Mapping):
        # Checked as the string form is: a dict reaches the same settings, and no others.
        unknown = set(spec) - {f.name for f in dataclasses.fields(Setting)}
        if unknown:
            raise ValueError(f"{where}: unknown setting keys {sorted(unknown)}; "
                             "valid: trainable, lr_mult, weight_decay.")
        if not spec:
            raise ValueError(f"{where}: empty setting.")
        for key in ("trainable", "weight_decay"):
            if key in spec and not isinstance(spec[key], bool):
                raise ValueError(f"{where}: {key}={spec[key]!r} in setting {spec!r}; expected "
                                 "True or False.")
        if not spec.get("trainable", True):
            if len(spec) > 1:  # as 'frozen' takes no 'lr=' or 'no_wd'
                raise ValueError(f"{where}: a frozen setting takes no other key, got {spec!r}; "
                                 "expected {'trainable': False} alone.")
            return Setting(trainable=False)
        lr_mult = spec.get("lr_mult", 1.0)
        if isinstance(lr_mult, bool) or not isinstance(lr_mult, (int, float)):
            raise ValueError(f"{where}: bad learning-rate multiplier lr_mult={lr_mult!r} in "
                             f"{spec!r}; expected a number.")
        _check_lr_mult(float(lr_mult), spec, where)
        return Setting(trainable=True, lr_mult=float(lr_mult),
                       weight_decay=spec.get("weight_decay", True))
    if not isinstance(spec, str):
        raise ValueError(f"{where}: setting must be a string like 'train,lr=0.1', got {spec!r}.")
    tokens = [t.strip() for t in spec.split(",") if t.strip()]
    if tokens == ["frozen"]:
        return Setting(trainable=False)
    if not tokens:
        raise ValueError(f"{where}: empty setting.")
    lr_mult, wd = 1.0, True
    for tok in tokens:
        if tok == "train":
            continue
        elif tok.startswith("lr="):
            try:
                lr_mult = float(tok[3:])
            except ValueError:
                raise ValueError(f"{where}: bad learning-rate multiplier in {spec!r}.") from None
            _check_lr_mult(lr_mult, spec, where)
        elif tok in ("no_wd", "wd=off"):
            wd = False
        elif tok == "wd=on":
            wd = True
        else:
            raise ValueError(f"{where}: unknown token {tok!r} in setting {spec!r}; expected "
                             "'frozen' or 'train' with optional 'lr=<float>', 'no_wd'/'wd=off'.")
    return Setting(trainable=True, lr_mult=lr_mult, weight_decay=wd)


def _check_lr_mult(lr_mult: float, spec, where: str) -> None:
    if lr_mult < 0:
        raise ValueError(f"{where}: negative learning-rate multiplier in {spec!r}.")
    if not math.isfinite(lr_mult):
        raise ValueError(f"{where}: learning-rate multiplier in {spec!r} is not finite.")


def compile_rules(rules: Iterable) -> list[tuple[re.Pattern, Setting, str]]:
    """Validates `[(regex, setting), ...]` and returns `[(compiled, Setting, regex)]`."""
    compiled = []
    for i, rule in enumerate(rules):
        if not isinstance(rule, (tuple, list)) or len(rule) != 2:
            raise ValueError(f"transfer rule {i}: expected a (regex, setting) pair, got {rule!r}.")
        pattern, spec = rule
        try:
            regex = re.compile(pattern)
        except re.error as e:
            raise ValueError(f"transfer rule {i}: bad regex {pattern!r}: {e}") from None
        compiled.append((regex, parse_setting(spec, where=f"transfer rule {i} ({pattern!r})"), pattern))
    if not compiled:
        raise ValueError("transfer rules are empty; use [('.*', 'train')] to train everything.")
    return compiled


def match_rules(paths: Iterable[str], rules: Iterable) -> dict[str, int]:
    """`{path: index of the first rule whose regex fullmatches it}`.

    Uncovered paths are an error, and so is a rule whose regex matches no path at all (a typo
    in a layer name); a rule matching only paths that earlier rules took is allowed.
    """
    compiled = compile_rules(rules)
    matched, uncovered = {}, []
    for path in paths:
        for i, (regex, _, _) in enumerate(compiled):
            if regex.fullmatch(path):
                matched[path] = i
                break
        else:
            uncovered.append(path)
    paths = list(matched) + uncovered
    unknown = [pattern for regex, _, pattern in compiled
               if not any(regex.fullmatch(path) for path in paths)]
    if unknown and paths:
        # A misspelt layer name must not silently leave that layer to the catch-all rule.
        raise ValueError(
            f"transfer rule(s) {unknown} match no parameter of this model (rules are matched "
            f"with re.fullmatch on paths like {paths[0]!r}); fix or remove them.")
    if uncovered:
        shown = "\n  ".join(uncovered[:20])
        more = f"\n  ... and {len(uncovered) - 20} more" if len(uncovered) > 20 else ""
        raise ValueError(
            f"{len(uncovered)} parameter(s) are not covered by any transfer rule (rules are "
            f"matched with re.fullmatch; end the list with ('.*', 'frozen') or ('.*', 'train') "
            f"to cover the rest):\n  {shown}{more}")
    return matched


# ----------------------------------------------------------------------------------------------
# Layer groups and stages.
# ----------------------------------------------------------------------------------------------

DEFAULT_LAYER_PATTERN = r"(?:^|/)(?:layer|h)_(\d+)(?:/|$)"
# `embeddings_project` (factorised embeddings, ELECTRA-Small) projects the embeddings to the
# layers' width: it is part of the embedding block, not a head.
DEFAULT_EMBEDDINGS_PATTERN = r"(?:^|/)(?:embeddings|embeddings_project|wte|wpe)(?:/|$)"


def layer_groups(paths: Iterable[str], layer_pattern: str = DEFAULT_LAYER_PATTERN,
                 embeddings_pattern: str = DEFAULT_EMBEDDINGS_PATTERN):
    """Assigns each path a layer group and returns `({path: group}, groups bottom-to-top)`.

    A path is `layer_<i>` when `layer_pattern` (one capture group, searched) finds index i, else
    `embeddings` when `embeddings_pattern` is found, else `head`. The returned order is
    embeddings, layer_0 .. layer_{L-1}, head, keeping only groups that have parameters.
    """
    layer_re, emb_re = re.compile(layer_pattern), re.compile(embeddings_pattern)
    if layer_re.groups != 1:
        raise ValueError(f"layer_pattern {layer_pattern!r} must have exactly one capture group.")
    assignment, layers = {}, set()
    for path in paths:
        m = layer_re.search(path)
        if m:
            assignment[path] = f"layer_{int(m.group(1))}"
            layers.add(int(m.group(1)))
        elif emb_re.search(path):
            assignment[path] = EMBEDDINGS
        else:
            assignment[path] = HEAD
    present = set(assignment.values())
    order = ([EMBEDDINGS] if EMBEDDINGS in present else []) + \
        [f"layer_{i}" for i in sorted(layers)] + ([HEAD] if HEAD in present else [])
    return assignment, order


def group_depth(group: str, num_layers: int) -> int:
    """Depth of a group: embeddings 0, layer_i i+1, head num_layers+1."""
    if group == EMBEDDINGS:
        return 0
    if group == HEAD:
        return num_layers + 1
    return int(group.split("_")[1]) + 1


@dataclasses.dataclass(frozen=True)
class Stage:
    """One phase of a schedule: from `start_step` on, exactly `groups` may train."""

    name: str
    start_step: int
    groups: frozenset


def make_stages(strategy: str, groups: Sequence[str], steps_per_stage: int) -> list[Stage]:
    """Stages for a strategy; `groups` are ordered bottom (embeddings) to top (head).

    * `none`: one stage, every group.
    * `gradual_unfreezing` (ULMFiT 3.3): the top group (head) first, then one more group per
      stage going down; the last stage trains everything until the end of training.
    * `chain_thaw` (Felbo et al. 2017): the head alone, then each other group alone from the
      bottom up, then all groups until the end.

    Stages have a fixed length here. The papers' own code differs: each ULMFiT stage (fastai)
    restarts its one-cycle schedule, and DeepMoji's chain-thaw trains each stage to convergence
    on a validation set (early stopping, best weights reloaded) with a new Adam per stage, at
    1e-3 for the new layer's stage and 1e-4 for every later one. `transfer.py` instead runs one
    schedule over the whole run and keeps each group's Adam state across stages.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"transfer.strategy={strategy!r}; expected one of {STRATEGIES}.")
    everything = frozenset(groups)
    if strategy == "none":
        return [Stage("all", 0, everything)]
    if steps_per_stage <= 0:
        raise ValueError(f"{strategy} needs a positive number of steps per stage, got {steps_per_stage}.")
    top_down = list(reversed(groups))
    if strategy == "gradual_unfreezing":
        sets = [(f"top_{k + 1}" if k + 1 < len(top_down) else "all", frozenset(top_down[:k + 1]))
                for k in range(len(top_down))]
    else:
        sets = [(HEAD, frozenset([HEAD]))] if HEAD in everything else []
        sets += [(g, frozenset([g])) for g in groups if g != HEAD]
        sets.append(("all", everything))
    return [Stage(name, k * steps_per_stage, gs) for k, (name, gs) in enumerate(sets)]


def stage_for_step(stages: Sequence[Stage], step: int) -> int:
    """Index of the stage that update number `step` (0-based) belongs to."""
    step = int(step)
    index = 0
    for i, stage in enumerate(stages):
        if stage.start_step <= step:
            index = i
    return index



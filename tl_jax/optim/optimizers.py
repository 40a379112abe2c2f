"""Optimizers and learning-rate schedules, built from `config.optimizer`.

Everything here is optax: AdamW and LAMB come from optax itself; this file only chooses and
chains them (warmup + decay schedule, weight-decay mask, clipping).

Where this differs from the reference implementations (deliberately; the recorded experiments
use it as it is):

* `optax.adamw` bias-corrects Adam's moments (as PyTorch/HF AdamW do); BERT's TF
  `AdamWeightDecayOptimizer` does not. With a warmup the difference is confined to the first
  steps, whose rate is near zero anyway.
* `optax.lamb` applies the layer-wise trust ratio to every parameter, biases and LayerNorm
  included, and that is the default here (`experiments/lamb_batch_scaling.md` was measured with
  it). TensorFlow Addons' LAMB, used for BERT's large-batch pretraining, leaves the parameters
  it does not decay out of the layer adaptation as well (`exclude_from_layer_adaptation`
  defaults to the weight-decay exclusions), so they take plain Adam steps.
  `optimizer.lamb_exclude_from_adaptation=True` does that: the parameters without weight decay
  (biases and LayerNorm, `NO_DECAY_PATTERN`) take no trust ratio. optax has no such option, so
  that LAMB is optax's own chain with the trust ratio masked (`lamb`).
"""
from __future__ import annotations

import math
import numbers
import re
from typing import Callable

import jax
import ml_collections
import optax

# Parameters matching this get no weight decay: biases (`bias`, `output_bias`, `b`), LayerNorm
# scales/offsets (as in BERT's AdamWeightDecayOptimizer) and ScalarMix's `gamma`, which scales a
# whole representation as a LayerNorm scale does (decay would pull it towards 0, not towards an
# even mix; the mixing `scalars` keep their decay, the pull towards equal weights that ELMo's
# paper adds as an L2 term).
NO_DECAY_PATTERN = re.compile(
    r"(^|/|_)(bias|scale)$|(^|/)b$|layer_?norm|LayerNorm|(^|/)norm/|(^|/)gamma$")


def path_str(path) -> str:
    """`/`-joined name of a pytree path from `jax.tree_util.tree_flatten_with_path`."""
    parts = []
    for key in path:
        if hasattr(key, "key"):
            parts.append(str(key.key))
        elif hasattr(key, "idx"):
            parts.append(str(key.idx))
        else:
            parts.append(str(key))
    return "/".join(parts)


def decay_mask(params):
    """True for parameters that get weight decay (kernels and embeddings)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not NO_DECAY_PATTERN.search(path_str(path)), params
    )


def make_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup to `learning_rate`, then linear, polynomial, cosine or constant decay.

    The warmup rises from 0 at step 0 to the peak at step `warmup_steps`; the decay then runs
    over the remaining `total_steps - warmup_steps` steps, from the peak to
    `peak * end_lr_ratio` (linear: `peak * (T - t) / (T - w)`, as HF's
    `get_linear_schedule_with_warmup`). BERT's TF code instead decays over all T steps from
    step 0 and lets the warmup override the start, so right after warmup its rate is
    `peak * (1 - w / T)` rather than the peak; the two agree when w << T.
    """
    check_schedule_config(cfg)
    peak = cfg.learning_rate
    warmup = int(cfg.warmup_steps)
    end = peak * cfg.end_lr_ratio
    decay_steps = max(1, total_steps - warmup)
    if cfg.decay == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    elif cfg.decay == "polynomial":
        decay = optax.polynomial_schedule(peak, end, cfg.power, decay_steps)
    elif cfg.decay == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.end_lr_ratio)
    elif cfg.decay == "constant":
        decay = optax.constant_schedule(peak)
    else:
        raise ValueError(
            f"optimizer.decay={cfg.decay!r}; expected linear, polynomial, cosine or constant."
        )
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def warmup_note(cfg: ml_collections.ConfigDict, total_steps: int) -> str:
    """A note when the warmup is as long as the run or longer, else "".

    The warmup reaches `learning_rate` only at step `warmup_steps`, and the last update of a run
    of `total_steps` uses step `total_steps - 1`: with `warmup_steps >= total_steps` the rate only
    climbs, and the peak (and any decay) never comes. Not an error (a short trial of a long
    config does it on purpose), but the rate it trains at is not the configured one.
    """
    warmup, total = int(cfg.warmup_steps), int(total_steps)
    if warmup <= 0 or total <= 0 or warmup < total:
        return ""
    highest = cfg.learning_rate * (total - 1) / warmup
    return (f"[optimizer] Note: optimizer.warmup_steps={warmup} is not shorter than the run "
            f"({total} steps): the learning rate only warms up and never reaches its peak "
            f"optimizer.learning_rate={cfg.learning_rate:.3g} (the last step's is {highest:.3g}); "
            f"set a warmup below {total} steps, or more train.steps.")


def check_schedule_config(cfg: ml_collections.ConfigDict) -> None:
    """Refuses schedule settings that optax would take without complaint and turn into another
    schedule: a negative `warmup_steps` shifted the decay that many steps along (the run started
    part-way down it), and a negative `learning_rate` or `end_lr_ratio` gave negative rates,
    which climb the loss instead of descending it."""
    warmup = cfg.warmup_steps
    if isinstance(warmup, bool) or not isinstance(warmup, numbers.Integral) or warmup < 0:
        raise ValueError(f"optimizer.warmup_steps={warmup!r} must be an integer >= 0 "
                         "(0 = no warmup).")
    for key in ("learning_rate", "end_lr_ratio"):
        value = cfg[key]
        if (isinstance(value, bool) or not isinstance(value, numbers.Real)
                or not math.isfinite(value) or value < 0):
            raise ValueError(f"optimizer.{key}={value!r} must be a number >= 0.")


def make_optimizer(
    cfg: ml_collections.ConfigDict,
    total_steps: int,
    weight_decay_mask: Callable | None = decay_mask,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Returns `(tx, schedule)` for `config.optimizer`.

    `tx` clips by global norm and applies AdamW, LAMB or SGD with the schedule. It does not
    accumulate: with `grad_accum_steps > 1` the trainer sums the micro-batches' gradients inside
    its jitted step and calls `tx` once per step (no extra optimizer state).
    """
    check_lamb_option(cfg)
    schedule = make_schedule(cfg, total_steps)
    if cfg.name == "adamw":
        opt = optax.adamw(
            schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
            weight_decay=cfg.weight_decay, mask=weight_decay_mask,
        )
    elif cfg.name == "lamb":
        opt = lamb(cfg, schedule, weight_decay_mask)
    elif cfg.name == "sgd":
        # optax.sgd has no weight decay: it is added to the gradient before the momentum, as
        # torch.optim.SGD(weight_decay=...) does (L2, with the same mask as AdamW's).
        opt = optax.chain(optax.add_decayed_weights(cfg.weight_decay, mask=weight_decay_mask),
                          optax.sgd(schedule, momentum=cfg.b1 or None))
    else:
        raise ValueError(f"optimizer.name={cfg.name!r}; expected adamw, lamb or sgd.")
    parts = []
    if cfg.clip_norm and cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    parts.append(opt)
    return optax.chain(*parts), schedule


def check_lamb_option(cfg: ml_collections.ConfigDict) -> None:
    """`lamb_exclude_from_adaptation` set for another optimizer would be silently ignored."""
    if cfg.get("lamb_exclude_from_adaptation", False) and cfg.name != "lamb":
        raise ValueError(f"optimizer.lamb_exclude_from_adaptation=True with optimizer.name="
                         f"{cfg.name!r}: it applies to LAMB's trust ratio only; set "
                         "optimizer.name=lamb, or leave it False")


def lamb(cfg: ml_collections.ConfigDict, schedule: optax.Schedule,
         weight_decay_mask: Callable | None = decay_mask) -> optax.GradientTransformation:
    """optax's LAMB; with `cfg.lamb_exclude_from_adaptation`, the same chain (`scale_by_adam`,
    `add_decayed_weights`, `scale_by_trust_ratio`, `scale_by_learning_rate`) with the trust
    ratio only on the parameters that get weight decay, as TensorFlow Addons' LAMB."""
    if not cfg.get("lamb_exclude_from_adaptation", False):
        return optax.lamb(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                          weight_decay=cfg.weight_decay, mask=weight_decay_mask)
    # As TF Addons: the parameters excluded from the trust ratio are those excluded from weight
    # decay, so with no mask (every parameter decays) every parameter takes the trust ratio.
    trust = optax.scale_by_trust_ratio()
    if weight_decay_mask is not None:
        trust = optax.masked(trust, weight_decay_mask)
    return optax.chain(
        optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
        optax.add_decayed_weights(cfg.weight_decay, mask=weight_decay_mask),
        trust,
        optax.scale_by_learning_rate(schedule))


def default_config() -> ml_collections.ConfigDict:
    """The `optimizer` section shared by configs (each config may change any field)."""
    return ml_collections.ConfigDict(dict(
        name="adamw",            # adamw | lamb | sgd
        learning_rate=1e-4,      # peak, after warmup
        warmup_steps=100,
        decay="linear",          # linear | polynomial | cosine | constant
        power=1.0,               # for polynomial decay
        end_lr_ratio=0.0,        # final lr / peak lr
        weight_decay=0.01,       # decoupled; never on biases or LayerNorm
        b1=0.9,
        b2=0.999,
        eps=1e-6,
        clip_norm=1.0,           # global-norm clipping; 0 disables
        grad_accum_steps=1,      # micro-batches per optimizer step
        # LAMB only. False: optax's LAMB, the trust ratio on every parameter. True: not on the
        # parameters without weight decay (biases, LayerNorm), as TF Addons' LAMB for BERT.
        lamb_exclude_from_adaptation=False,
    ))

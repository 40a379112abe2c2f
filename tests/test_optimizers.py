"""tl_jax.optim.optimizers: LAMB with and without the trust ratio on the undecayed parameters."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tl_jax.optim import optimizers, transfer


def params():
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    return {"bert": {"dense": {"kernel": jax.random.normal(k[0], (8, 4)) * 0.5,
                               "bias": jax.random.normal(k[1], (4,)) * 0.01},
                     "LayerNorm": {"scale": jnp.full((4,), 3.0), "bias": jnp.zeros((4,))}}}


def grads():
    return jax.tree_util.tree_map(lambda p: jnp.full(p.shape, 0.1) * (1 + jnp.arange(p.size)
                                                                      ).reshape(p.shape), params())


def lamb_config(exclude):
    cfg = optimizers.default_config()
    cfg.update(name="lamb", learning_rate=0.01, warmup_steps=0, decay="constant",
               clip_norm=0.0, weight_decay=0.01, lamb_exclude_from_adaptation=exclude)
    return cfg


def first_update(tx):
    return tx.update(grads(), tx.init(params()), params())[0]


def adam_first_step(g, eps=1e-6):
    # Adam's first bias-corrected step is g / (|g| + eps): +-1 up to eps.
    return g / (jnp.abs(g) + eps)


@pytest.mark.parametrize("exclude", [False, True])
def test_lamb_trust_ratio_on_undecayed_parameters(exclude):
    """Default: optax's LAMB (trust ratio ||w|| / ||step|| on every parameter). With
    lamb_exclude_from_adaptation (TF Addons' LAMB, used for BERT), biases and LayerNorm take the
    plain Adam step; kernels keep the trust ratio and the weight decay either way."""
    tx, _ = optimizers.make_optimizer(lamb_config(exclude), 10)
    up = first_update(tx)
    p, g = params(), grads()
    kernel_step = adam_first_step(g["bert"]["dense"]["kernel"]) + 0.01 * p["bert"]["dense"]["kernel"]
    ratio = jnp.linalg.norm(p["bert"]["dense"]["kernel"]) / jnp.linalg.norm(kernel_step)
    np.testing.assert_allclose(up["bert"]["dense"]["kernel"], -0.01 * ratio * kernel_step,
                               rtol=1e-5)
    scale_step = adam_first_step(g["bert"]["LayerNorm"]["scale"])  # no decay on LayerNorm
    scale_ratio = 1.0 if exclude else (jnp.linalg.norm(p["bert"]["LayerNorm"]["scale"])
                                       / jnp.linalg.norm(scale_step))
    np.testing.assert_allclose(up["bert"]["LayerNorm"]["scale"], -0.01 * scale_ratio * scale_step,
                               rtol=1e-5)
    # A zero bias: optax's trust ratio falls back to 1 for a zero-norm parameter, so excluded or
    # not it steps by Adam's.
    np.testing.assert_allclose(up["bert"]["LayerNorm"]["bias"],
                               -0.01 * adam_first_step(g["bert"]["LayerNorm"]["bias"]), rtol=1e-5)
    small_bias = p["bert"]["dense"]["bias"]
    bias_step = -0.01 * adam_first_step(g["bert"]["dense"]["bias"])
    if exclude:
        np.testing.assert_allclose(up["bert"]["dense"]["bias"], bias_step, rtol=1e-5)
    else:  # ||b|| / ||step|| is tiny: the bias barely moves
        expected = bias_step * jnp.linalg.norm(small_bias) / jnp.linalg.norm(bias_step / 0.01)
        np.testing.assert_allclose(up["bert"]["dense"]["bias"], expected, rtol=1e-5)


def test_lamb_exclusion_follows_a_weight_decay_mask_of_none():
    """`weight_decay_mask=None` decays every parameter, so lamb_exclude_from_adaptation (which
    leaves out of the trust ratio what takes no weight decay) leaves none out: the same steps as
    optax's LAMB with no mask. (It used to fall back to `decay_mask` for the trust ratio alone,
    so biases and LayerNorm were decayed but took no trust ratio.)"""
    tx, _ = optimizers.make_optimizer(lamb_config(True), 10, weight_decay_mask=None)
    ref = optax.lamb(0.01, eps=1e-6, weight_decay=0.01, mask=None)
    for got, want in zip(jax.tree.leaves(first_update(tx)), jax.tree.leaves(first_update(ref))):
        np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("exclude", [False, True])
def test_transfer_plan_lamb_matches_make_optimizer(exclude):
    """The transfer plan builds each group's chain itself: one 'train' rule must give the same
    LAMB as make_optimizer, with the option or without."""
    tc = transfer.default_config()
    cfg = lamb_config(exclude)
    plan = transfer.build_transfer_optimizer(params(), tc, cfg, 10, 5)
    stage = plan.stage_for_step(0)
    trainable_grads, _ = plan.split(grads(), stage)
    new, _ = plan.update(trainable_grads, plan.init(params()), params(), stage)
    ours = jax.tree_util.tree_map(lambda n, p: n - p, new, params())
    ref = first_update(optimizers.make_optimizer(cfg, 10)[0])
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(ref)[0],
                            jax.tree_util.tree_leaves(ours)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-8, err_msg=str(path))


def test_lamb_option_with_another_optimizer_is_an_error():
    cfg = lamb_config(True)
    cfg.name = "adamw"
    with pytest.raises(ValueError, match="lamb_exclude_from_adaptation=True with optimizer.name"):
        optimizers.make_optimizer(cfg, 10)
    with pytest.raises(ValueError, match="applies to LAMB"):
        transfer.direction(cfg, weight_decay=True)


def test_default_lamb_is_optax_lamb():
    """The default must stay optax's own LAMB: the recorded LAMB experiment used it."""
    cfg = lamb_config(False)
    ours = first_update(optimizers.make_optimizer(cfg, 10)[0])
    ref = first_update(optax.lamb(0.01, eps=1e-6, weight_decay=0.01,
                                  mask=optimizers.decay_mask))
    for a, b in zip(jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(ours)):
        np.testing.assert_array_equal(a, b)


def test_scalar_mix_gamma_is_not_decayed():
    """ScalarMix's gamma scales the whole mixed representation, like a LayerNorm scale: AdamW's
    decay must leave it alone (it would shrink the features towards 0), while the mixing scalars
    and ordinary kernels keep their decay."""
    from tl_jax.models.scalar_mix import ScalarMix

    layers = [jnp.ones((1, 2, 3))] * 3
    mix = ScalarMix(3, initial_scalars=(1.0, 2.0, 3.0), initial_gamma=2.0)
    params = {"mix": mix.init(jax.random.PRNGKey(0), layers)["params"],
              "dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))}}
    mask = optimizers.decay_mask(params)
    assert mask == {"mix": {"scalars": True, "gamma": False},
                    "dense": {"kernel": True, "bias": False}}

    # One AdamW step with zero gradients moves only the decayed parameters.
    tx = optax.adamw(0.1, weight_decay=0.5, mask=optimizers.decay_mask)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    assert float(new["mix"]["gamma"]) == 2.0
    np.testing.assert_allclose(new["mix"]["scalars"], np.array([1.0, 2.0, 3.0]) * 0.95, rtol=1e-6)
    np.testing.assert_allclose(new["dense"]["kernel"], 0.95)
    np.testing.assert_array_equal(new["dense"]["bias"], 1.0)


def test_sgd_applies_weight_decay_as_torch_does_and_the_transfer_plan_agrees():
    # optimizer.weight_decay (0.01 by default) was silently ignored under sgd.
    import torch

    cfg = optimizers.default_config()
    cfg.update(name="sgd", learning_rate=0.1, b1=0.9, warmup_steps=0, decay="constant",
               clip_norm=0.0, weight_decay=0.5)
    tx, _ = optimizers.make_optimizer(cfg, total_steps=10)
    p, state = params(), tx.init(params())
    for _ in range(3):
        updates, state = tx.update(grads(), state, p)
        p = optax.apply_updates(p, updates)
    # torch: decay on the kernel only (biases and LayerNorm masked off, as in AdamW).
    flat = {"/".join(k.key for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(params())[0]}
    tensors = {name: torch.tensor(np.asarray(v), requires_grad=True) for name, v in flat.items()}
    decayed = ["bert/dense/kernel"]
    opt = torch.optim.SGD(
        [{"params": [tensors[n] for n in decayed], "weight_decay": 0.5},
         {"params": [t for n, t in tensors.items() if n not in decayed], "weight_decay": 0.0}],
        lr=0.1, momentum=0.9)
    g = {"/".join(k.key for k in path): leaf
         for path, leaf in jax.tree_util.tree_flatten_with_path(grads())[0]}
    for _ in range(3):
        for name, t in tensors.items():
            t.grad = torch.tensor(np.asarray(g[name]))
        opt.step()
    got = {"/".join(k.key for k in path): leaf
           for path, leaf in jax.tree_util.tree_flatten_with_path(p)[0]}
    for name, t in tensors.items():
        np.testing.assert_allclose(got[name], t.detach().numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=name)
    # The transfer plan's per-group chain (strategy none) gives the same updates.
    plan = transfer.build_transfer_optimizer(params(), transfer.default_config(), cfg, 10, 5)
    stage = plan.stage_for_step(0)
    new, _ = plan.update(plan.split(grads(), stage)[0], plan.init(params()), params(), stage)
    ours = jax.tree_util.tree_map(lambda n, p: n - p, new, params())
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(first_update(tx))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("field,value,message", [
    # optax took it: the decay ran `warmup_steps` steps ahead, the first rate not 0 but lower
    # down the decay than the peak.
    ("warmup_steps", -3, r"optimizer.warmup_steps=-3 must be an integer >= 0"),
    # Negative rates climb the loss.
    ("learning_rate", -1e-3, r"optimizer.learning_rate=-0.001 must be a number >= 0"),
    ("end_lr_ratio", -0.5, r"optimizer.end_lr_ratio=-0.5 must be a number >= 0"),
])
def test_schedule_settings_that_would_change_the_schedule_are_refused(field, value, message):
    cfg = optimizers.default_config()
    cfg[field] = value
    with pytest.raises(ValueError, match=message):
        optimizers.make_optimizer(cfg, 100)


def test_schedule_warms_up_from_zero_to_the_peak_then_decays_to_the_end_ratio():
    cfg = optimizers.default_config()
    cfg.update(learning_rate=1e-3, warmup_steps=10, decay="linear", end_lr_ratio=0.1)
    schedule = optimizers.make_schedule(cfg, 110)
    np.testing.assert_allclose([float(schedule(s)) for s in (0, 5, 10, 60, 110)],
                               [0.0, 5e-4, 1e-3, 5.5e-4, 1e-4], rtol=1e-5)


def test_a_warmup_as_long_as_the_run_is_noted_with_the_rate_it_stops_at():
    # bert_pretrain.py:mini with --config.train.steps=20: warmup 60, the rate never peaks.
    cfg = optimizers.default_config()
    cfg.update(learning_rate=1e-3, warmup_steps=60)
    note = optimizers.warmup_note(cfg, 20)
    assert "optimizer.warmup_steps=60 is not shorter than the run (20 steps)" in note
    assert "never reaches its peak" in note
    # The figure it gives is the schedule's own rate at the last update (step 19).
    last = float(optimizers.make_schedule(cfg, 20)(19))
    assert f"the last step's is {last:.3g}" in note and last < 1e-3
    # Equal lengths: the peak would come at step 20, after the last update.
    assert optimizers.warmup_note(cfg, 60)
    # A warmup shorter than the run, no warmup, or nothing to train: no note.
    assert optimizers.warmup_note(cfg, 61) == ""
    assert optimizers.warmup_note(cfg, 0) == ""
    cfg.warmup_steps = 0
    assert optimizers.warmup_note(cfg, 20) == ""

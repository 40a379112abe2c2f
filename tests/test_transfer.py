"""Transfer strategies: rule coverage, freezing, optimizer-state size, discriminative LR, stages,
resume mid-schedule, adapters/LoRA on the real BERT, re-initialising the top layers."""
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tl_jax.models import bert
from tl_jax.optim import optimizers, transfer

NUM_LAYERS = 3


def toy_params(seed=0, hidden=6):
    """A BERT-shaped tree: embeddings, NUM_LAYERS encoder layers, pooler, head."""
    ks = iter(jax.random.split(jax.random.PRNGKey(seed), 20))
    layer = lambda: {"dense": {"kernel": jax.random.normal(next(ks), (hidden, hidden)),
                               "bias": jax.random.normal(next(ks), (hidden,))},
                     "norm": {"scale": jnp.ones(hidden)}}
    return {
        "bert": {"embeddings": {"word": {"embedding": jax.random.normal(next(ks), (10, hidden))}},
                 "encoder": {f"layer_{i}": layer() for i in range(NUM_LAYERS)},
                 "pooler": {"dense": {"kernel": jax.random.normal(next(ks), (hidden, hidden))}}},
        "head": {"dense": {"kernel": jax.random.normal(next(ks), (hidden, 2)),
                           "bias": jnp.zeros(2)}},
    }


def toy_loss(params, batch):
    h = params["bert"]["embeddings"]["word"]["embedding"][batch["ids"]]  # (B, H)
    for i in range(NUM_LAYERS):
        p = params["bert"]["encoder"][f"layer_{i}"]
        h = jnp.tanh(h @ p["dense"]["kernel"] + p["dense"]["bias"]) * p["norm"]["scale"]
    h = jnp.tanh(h @ params["bert"]["pooler"]["dense"]["kernel"])
    logits = h @ params["head"]["dense"]["kernel"] + params["head"]["dense"]["bias"]  # (B, 2)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()


def batch_for(step):
    rng = np.random.default_rng(step)
    return {"ids": rng.integers(0, 10, size=(8,)), "y": rng.integers(0, 2, size=(8,))}


def configs(**transfer_overrides):
    tc = transfer.default_config()
    tc.update(transfer_overrides)
    oc = optimizers.default_config()
    oc.warmup_steps = 0  # a zero first-step rate would hide which groups train at step 0
    oc.learning_rate = 0.05
    return tc, oc


class Runner:
    """The trainer's use of a plan: one jitted step per stage, counted."""

    def __init__(self, plan, loss=toy_loss):
        self.plan, self.loss, self.compiles, self._steps = plan, loss, 0, {}

    def step_fn(self, stage):
        if stage not in self._steps:
            plan, loss = self.plan, self.loss

            def train_step(params, opt_state, batch):
                self.compiles += 1  # runs once per trace
                trainable, rest = plan.split(params, stage)
                grads = jax.grad(lambda t: loss(plan.merge(t, rest), batch))(trainable)
                return plan.update(grads, opt_state, params, stage)

            self._steps[stage] = jax.jit(train_step)
        return self._steps[stage]

    def run(self, params, opt_state, start, stop, on_step=None):
        for step in range(start, stop):
            params, opt_state = self.step_fn(self.plan.stage_for_step(step))(
                params, opt_state, batch_for(step))
            if on_step:
                on_step(step, params)
        return params, opt_state


def flat(tree):
    return transfer.flat_params(jax.device_get(tree))


def test_uncovered_parameters_are_an_error_naming_them():
    params = toy_params()
    tc, oc = configs(rules=((r"bert/encoder/.*", "frozen"), (r"head/.*", "train")))
    with pytest.raises(ValueError) as err:
        transfer.build_transfer_optimizer(params, tc, oc, 10, 5)
    msg = str(err.value)
    assert "2 parameter(s) are not covered" in msg
    for path in ["bert/embeddings/word/embedding", "bert/pooler/dense/kernel"]:
        assert path in msg
    assert "layer_0" not in msg


def test_first_match_wins_and_settings_parse():
    paths = list(transfer.flat_params(toy_params()))
    rules = [(r".*layer_1/.*", "frozen"), (r"bert/encoder/.*", "train,lr=0.5,no_wd"), (".*", "train")]
    matched = transfer.match_rules(paths, rules)
    for path, rule in matched.items():
        if "layer_1/" in path:
            assert rule == 0
        elif path.startswith("bert/encoder/"):
            assert rule == 1
        else:
            assert rule == 2
    assert transfer.parse_setting("train,lr=0.5,no_wd") == transfer.Setting(True, 0.5, False)
    assert transfer.parse_setting("frozen") == transfer.Setting(trainable=False)
    with pytest.raises(ValueError, match="unknown token 'fast'"):
        transfer.parse_setting("train,fast")
    with pytest.raises(ValueError, match=r"transfer rule 1: bad regex"):
        transfer.compile_rules([(".*", "train"), ("(", "train")])


@pytest.mark.parametrize("spec", ["train,lr=nan", "train,lr=inf"])
def test_a_non_finite_lr_multiplier_is_an_error(spec):
    # It used to train into "Non-finite loss at step 2", naming no rule.
    with pytest.raises(ValueError, match=r"learning-rate multiplier in .* is not finite"):
        transfer.parse_setting(spec)


def test_settings_written_as_dicts_are_checked_as_strings_are():
    # The dict form went to Setting(**spec) unchecked: a negative or non-finite multiplier, a
    # multiplier or a flag of the wrong type and a frozen setting with options all passed.
    assert transfer.parse_setting({"lr_mult": 0.5, "weight_decay": False}) == \
        transfer.parse_setting("train,lr=0.5,no_wd")
    assert transfer.parse_setting({"lr_mult": 2}) == transfer.parse_setting("train,lr=2")
    assert transfer.parse_setting({"trainable": False}) == transfer.parse_setting("frozen")
    assert transfer.parse_setting({"trainable": True}) == transfer.parse_setting("train")
    for spec, message in [
            ({"lr_mult": -1.0}, r"negative learning-rate multiplier in \{'lr_mult': -1.0\}"),
            ({"lr_mult": float("nan")}, r"learning-rate multiplier in .*nan.* is not finite"),
            ({"lr_mult": float("inf")}, r"learning-rate multiplier in .*inf.* is not finite"),
            ({"lr_mult": "0.1"}, r"bad learning-rate multiplier lr_mult='0.1'"),
            ({"lr_mult": True}, r"bad learning-rate multiplier lr_mult=True"),
            ({"trainable": "no"}, r"trainable='no' in setting .*; expected True or False"),
            ({"weight_decay": "off"}, r"weight_decay='off' in setting .*; expected True or False"),
            ({"trainable": False, "lr_mult": 0.1}, r"a frozen setting takes no other key"),
            ({}, r"empty setting"),
            ({"lr": 0.1}, r"unknown setting keys \['lr'\]")]:
        with pytest.raises(ValueError, match=r"transfer rule 1 \('head/\.\*'\): " + message):
            transfer.compile_rules([(r"bert/.*", "train"), (r"head/.*", spec)])


def test_summary_lists_groups_with_counts():
    tc, oc = configs(rules=((r"bert/embeddings/.*", "frozen"), (".*", "train")))
    plan = transfer.build_transfer_optimizer(toy_params(), tc, oc, 10, 5)
    text = plan.summary()
    assert re.search(r"bert/embeddings/\.\*\s+frozen\s+1\s+60\b", text)
    total = transfer.count_params(toy_params())
    assert re.search(rf"\.\*\s+train\s+{len(plan.paths) - 1}\s+{total - 60:,}\b", text)


@pytest.mark.parametrize("rules", [
    ((r"bert/.*", "frozen"), (".*", "train")),                       # linear probe on the head
    ((r"bert/(embeddings|encoder/layer_[01])/.*", "frozen"), (".*", "train")),
    ((".*", "train"),),
])
def test_frozen_bit_identical_and_state_scales_with_trainable(rules):
    params = toy_params()
    # A -0.0 in a frozen tensor: adding a zero update would flip it to +0.0.
    params["bert"]["embeddings"]["word"]["embedding"] = \
        params["bert"]["embeddings"]["word"]["embedding"].at[0, 0].set(-0.0)
    tc, oc = configs(rules=rules)
    plan = transfer.build_transfer_optimizer(params, tc, oc, 20, 5)
    opt_state = plan.init(params)
    trainable = plan.trainable_count()
    # Adam keeps mu and nu (2 x float32) per trainable scalar; the rest is a few step counts.
    overhead = transfer.tree_bytes(opt_state) - 8 * trainable
    assert 0 <= overhead <= 64, overhead
    new, _ = Runner(plan).run(params, opt_state, 0, 5)
    before, after = flat(params), flat(new)
    for path in before:
        if plan.optimizer_mask[path]:
            assert not np.array_equal(before[path], after[path]), path
        else:
            assert before[path].tobytes() == after[path].tobytes(), path


def test_full_finetuning_matches_plain_optimizer():
    """strategy none + one 'train' rule is exactly optimizers.make_optimizer (AdamW + clip)."""
    params = toy_params()
    tc, oc = configs()
    oc.warmup_steps = 2
    plan = transfer.build_transfer_optimizer(params, tc, oc, 20, 5)
    ours, _ = Runner(plan).run(params, plan.init(params), 0, 6)
    tx, _ = optimizers.make_optimizer(oc, 20)

    @jax.jit
    def ref_step(p, state, batch):
        updates, state = tx.update(jax.grad(toy_loss)(p, batch), state, p)
        return optax.apply_updates(p, updates), state

    ref, state = params, tx.init(params)
    for step in range(6):
        ref, state = ref_step(ref, state, batch_for(step))
    for path, value in flat(ref).items():
        # Jitted vs eager: fusion changes the last bits.
        np.testing.assert_allclose(flat(ours)[path], value, rtol=1e-5, atol=1e-5, err_msg=path)


def test_discriminative_learning_rates_per_depth():
    params = toy_params()
    tc, oc = configs(discriminative_decay=2.6)
    oc.name, oc.b1, oc.weight_decay, oc.clip_norm = "sgd", 0.0, 0.0, 0.0
    oc.warmup_steps, oc.decay = 0, "constant"
    plan = transfer.build_transfer_optimizer(params, tc, oc, 10, 5)
    new, _ = Runner(plan).run(params, plan.init(params), 0, 1)
    grads = flat(jax.grad(toy_loss)(params, batch_for(0)))
    depth = {"bert/embeddings/word/embedding": 0, "bert/encoder/layer_1/dense/kernel": 2,
             "bert/encoder/layer_2/dense/bias": 3, "bert/pooler/dense/kernel": 4,
             "head/dense/kernel": 4}
    for path, d in depth.items():
        expected = flat(params)[path] - oc.learning_rate * 2.6 ** -(4 - d) * grads[path]
        np.testing.assert_allclose(flat(new)[path], expected, rtol=1e-5, atol=1e-7, err_msg=path)



def test_electra_layerwise_decay_recipe_of_the_docstring():
    # schedules.discriminative_multipliers: ELECTRA's head sits one depth above its top layer
    # (google-research/electra `_get_layer_lrs`: lr * decay ** (L + 2 - depth)); decay 1 / 0.8
    # plus an lr=0.8 rule on the encoder gives its rates.
    tc, oc = configs(discriminative_decay=1 / 0.8,
                     rules=(("bert/.*", "train,lr=0.8"), (".*", "train")))
    plan = transfer.build_transfer_optimizer(toy_params(), tc, oc, 10, 5)
    electra = {"bert/embeddings/word/embedding": 0.8 ** (NUM_LAYERS + 2),
               "head/dense/kernel": 1.0}
    electra.update({f"bert/encoder/layer_{i}/dense/kernel": 0.8 ** (NUM_LAYERS + 1 - i)
                    for i in range(NUM_LAYERS)})
    for path, mult in electra.items():
        np.testing.assert_allclose(plan.info[path].lr_mult, mult, rtol=1e-12, err_msg=path)


@pytest.mark.parametrize("decay", [0.0, 0.8, float("nan"), float("inf")])
def test_a_discriminative_decay_below_one_or_not_finite_is_an_error(decay):
    # 0.8 (a multiplier convention) would train the embeddings 0.8**-4 = 2.4x FASTER than the
    # head; NaN made every lower rate NaN, inf made it 0: all silently.
    tc, oc = configs(discriminative_decay=decay)
    with pytest.raises(ValueError, match=r"transfer.discriminative_decay=.*finite number >= 1"):
        transfer.build_transfer_optimizer(toy_params(), tc, oc, 10, 5)


@pytest.mark.parametrize("overrides", [dict(strategy="gradual_unfreezing", stage_steps=2),
                                       dict(discriminative_decay=2.6)])
def test_a_layer_pattern_that_finds_no_layer_is_an_error(overrides):
    # A typo put every layer in `head`: gradual unfreezing trained them all from step 0 and
    # discriminative rates gave them the head's rate, silently.
    tc, oc = configs(layer_pattern=r"(?:^|/)block_(\d+)(?:/|$)", **overrides)
    with pytest.raises(ValueError, match=r"transfer.layer_pattern=.*block_.*finds no encoder"):
        transfer.build_transfer_optimizer(toy_params(), tc, oc, 10, 5)
    tc, oc = configs(layer_pattern=r"(?:^|/)block_(\d+)(?:/|$)")  # unused: no error
    transfer.build_transfer_optimizer(toy_params(), tc, oc, 10, 5)


def _changed_groups(plan, before, after):
    """The groups with a tensor that changed in any bit (np.array_equal would take a -0.0 that
    became 0.0 for unchanged)."""
    return {plan.info[p].group for p in before
            if np.asarray(before[p]).tobytes() != np.asarray(after[p]).tobytes()}


def test_gradual_unfreezing_order_and_one_compile_per_stage():
    params = toy_params()
    tc, oc = configs(strategy="gradual_unfreezing", stage_steps=2)
    plan = transfer.build_transfer_optimizer(params, tc, oc, 12, 5)
    order = ["head", "layer_2", "layer_1", "layer_0", "embeddings"]
    assert [s.start_step for s in plan.stages] == [0, 2, 4, 6, 8]
    for k, stage in enumerate(plan.stages):
        assert stage.groups == frozenset(order[:k + 1])
    changed = {}
    last = [flat(params)]

    def record(step, new):
        changed[step] = _changed_groups(plan, last[0], flat(new))
        last[0] = flat(new)

    runner = Runner(plan)
    runner.run(params, plan.init(params), 0, 12, record)
    for step in range(12):
        assert changed[step] == set(order[:min(step // 2, 4) + 1]), step
    assert runner.compiles == len(plan.stages)


def test_chain_thaw_stages_train_one_group_at_a_time():
    params = toy_params()
    tc, oc = configs(strategy="chain_thaw", stage_steps=1)
    plan = transfer.build_transfer_optimizer(params, tc, oc, 8, 5)
    expected = [["head"], ["embeddings"], ["layer_0"], ["layer_1"], ["layer_2"],
                ["embeddings", "layer_0", "layer_1", "layer_2", "head"]]
    assert [sorted(s.groups) for s in plan.stages] == [sorted(e) for e in expected]
    changed = {}
    last = [flat(params)]

    def record(step, new):
        changed[step] = _changed_groups(plan, last[0], flat(new))
        last[0] = flat(new)

    Runner(plan).run(params, plan.init(params), 0, 7, record)
    for step in range(7):
        assert changed[step] == set(expected[min(step, 5)]), step


@pytest.mark.parametrize("length", [dict(stage_epochs=0.0), dict(stage_epochs=-1.0),
                                    dict(stage_steps=-3)])
def test_stages_of_no_or_negative_length_are_an_error(length):
    # They used to give stages of one step each (or fall back to stage_epochs) without a word.
    tc, oc = configs(strategy="gradual_unfreezing", **length)
    with pytest.raises(ValueError, match=r"needs stages of a positive length.*stage_steps"):
        transfer.build_transfer_optimizer(toy_params(), tc, oc, 12, 5)
    tc, oc = configs(strategy="none", **length)  # no stages: the lengths are not used
    transfer.build_transfer_optimizer(toy_params(), tc, oc, 12, 5)


def test_a_lora_or_adapters_rule_with_its_size_at_0_says_why_it_matches_nothing():
    # transfer_lora.py with transfer.lora_rank=0 said only that its rule matches no parameter.
    tc, oc = configs(rules=((r".*/lora_[ab]", "train"), (".*", "frozen")), lora_rank=0)
    with pytest.raises(ValueError, match=r"match no parameter .*\(transfer.lora_rank=0 builds "
                                         r"no LoRA: give it a size above 0"):
        transfer.build_transfer_optimizer(toy_params(), tc, oc, 12, 5)
    tc, oc = configs(rules=((r".*_adapter/.*", "train"), (".*", "frozen")))
    with pytest.raises(ValueError, match=r"\(transfer.adapter_size=0 builds no adapters"):
        transfer.build_transfer_optimizer(toy_params(), tc, oc, 12, 5)
    tc, oc = configs(rules=((r".*/layer_9/.*", "train"), (".*", "frozen")))
    with pytest.raises(ValueError, match=r"fix or remove them\.$"):  # a typo: no such note
        transfer.build_transfer_optimizer(toy_params(), tc, oc, 12, 5)


def test_check_config_names_a_misspelt_strategy_or_schedule():
    # The tasks call check_config before reading data: these were found only when the plan was
    # built, after the data was read and tokenised.
    tc, oc = configs(strategy="chain_thw")
    with pytest.raises(ValueError, match=r"transfer.strategy='chain_thw'; expected one of"):
        transfer.check_config(tc, oc)
    tc, oc = configs(schedule="slanted")
    with pytest.raises(ValueError, match=r"transfer.schedule='slanted'; expected optimizer or "
                                         r"stlr"):
        transfer.check_config(tc, oc)


def test_a_misspelt_transfer_or_optimizer_setting_is_an_error():
    # default_config() is not locked: `tc.update(stage_step=2)` added a key beside stage_steps,
    # and the plan ran with stages of one epoch, without a word.
    tc, oc = configs(strategy="gradual_unfreezing", stage_step=2)
    with pytest.raises(ValueError, match=r"transfer.stage_step is not a setting of the transfer "
                                         r"section; did you mean transfer.stage_steps\? \(the "
                                         r"settings: "):
        transfer.build_transfer_optimizer(toy_params(), tc, oc, 12, 5)
    tc, oc = configs()
    oc.learning_rat = 0.1
    with pytest.raises(ValueError, match=r"optimizer.learning_rat is not a setting of the "
                                         r"optimizer section; did you mean "
                                         r"optimizer.learning_rate\?"):
        transfer.build_transfer_optimizer(toy_params(), tc, oc, 12, 5)


def test_thawed_group_starts_with_fresh_adam_count():
    """A group thawed late takes Adam's first step (|update| = lr), not a bias-corrected blow-up."""
    params = toy_params()
    tc, oc = configs(strategy="gradual_unfreezing", stage_steps=3)
    oc.warmup_steps, oc.decay, oc.clip_norm, oc.weight_decay = 0, "constant", 0.0, 0.0
    plan = transfer.build_transfer_optimizer(params, tc, oc, 20, 5)
    runner = Runner(plan)
    mid, state = runner.run(params, plan.init(params), 0, 3)
    new, _ = runner.run(mid, state, 3, 4)  # first step of stage 1: layer_2 thaws
    delta = np.abs(flat(new)["bert/encoder/layer_2/dense/kernel"]
                   - flat(mid)["bert/encoder/layer_2/dense/kernel"])
    # Adam's first step is lr * g / (|g| + eps): lr up to eps. A count shared with the head (4 at
    # this step) would give about 0.58 * lr; at step 1000 about 3.2 * lr.
    np.testing.assert_allclose(delta, oc.learning_rate, rtol=1e-2)


def test_resume_mid_schedule_equals_uninterrupted_run():
    params = toy_params()
    tc, oc = configs(strategy="gradual_unfreezing", stage_steps=2, discriminative_decay=2.6,
                     schedule="stlr")
    plan = transfer.build_transfer_optimizer(params, tc, oc, 10, 5)
    runner = Runner(plan)  # shares the compiled per-stage steps between the runs (test speed)
    full, full_state = runner.run(params, plan.init(params), 0, 10)
    # Stop in the middle of stage 1 and round-trip everything through host numpy (a checkpoint).
    # A restarted process rebuilds the plan from the config; its state template must match.
    part, part_state = runner.run(params, plan.init(params), 0, 3)
    saved = jax.device_get((part, part_state))
    restarted = transfer.build_transfer_optimizer(params, tc, oc, 10, 5)
    assert restarted.stage_for_step(3) == 1
    template = jax.eval_shape(restarted.init, params)
    assert jax.tree.structure(template) == jax.tree.structure(saved[1])
    for t, s in zip(jax.tree.leaves(template), jax.tree.leaves(saved[1])):
        assert t.shape == np.shape(s) and t.dtype == np.asarray(s).dtype
    resumed, resumed_state = runner.run(saved[0], saved[1], 3, 10)
    for a, b in zip(jax.tree.leaves((full, full_state)), jax.tree.leaves((resumed, resumed_state))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_gradient_accumulation_composes():
    """optax.MultiSteps around a stage's transform: k micro-steps == one step on the mean grad."""
    params = toy_params()
    tc, oc = configs(rules=((r"bert/embeddings/.*", "frozen"), (".*", "train")))
    plan = transfer.build_transfer_optimizer(params, tc, oc, 10, 5)
    opt_params = plan.optimizer_params(params)
    multi = optax.MultiSteps(plan.tx_for_stage(0), every_k_schedule=2)
    state = multi.init(opt_params)
    grads = [jax.grad(lambda p: toy_loss(plan.merge(p, plan.split(params, 0)[1]), batch_for(s)))(
        opt_params) for s in range(2)]
    for g in grads:
        updates, state = multi.update(g, state, opt_params)
    mean = jax.tree.map(lambda a, b: (a + b) / 2, *grads)
    ref, _ = plan.tx_for_stage(0).update(mean, plan.tx_for_stage(0).init(opt_params), opt_params)
    for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)
    # The accumulator covers the trainable subtree only.
    assert transfer.count_params(state.acc_grads) == plan.trainable_count()


def test_reinit_top_layers(capsys):
    params, fresh = toy_params(0), toy_params(1)
    out = flat(transfer.reinit_top_layers(params, fresh, 2))
    # The run's log says what starts fresh.
    fresh_count = sum(np.size(v) for p, v in out.items()
                      if "layer_1/" in p or "layer_2/" in p or "pooler/" in p)
    line = capsys.readouterr().out.strip()
    assert line.startswith("[transfer] reinit_top_k=2: layer_1, layer_2 and ") and "pooler" in line
    assert f"({fresh_count:,} parameters)" in line
    for path, value in out.items():
        take_fresh = "layer_1/" in path or "layer_2/" in path or "pooler/" in path
        source = flat(fresh) if take_fresh else flat(params)
        np.testing.assert_array_equal(value, source[path], err_msg=path)
    with pytest.raises(ValueError, match="has 3 layers"):
        transfer.reinit_top_layers(params, fresh, 4)


def _tiny_bert(**kw):
    cfg = bert.BertConfig(vocab_size=30, hidden_size=16, num_layers=2, num_heads=2,
                          intermediate_size=32, max_position_embeddings=16, **kw)
    model = bert.BertModel(cfg)
    ids = jnp.ones((2, 8), jnp.int32)
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), ids))["params"]

    def loss(p, batch):
        outputs, _ = model.apply({"params": p}, batch["ids"])
        return jnp.mean((outputs["pooled_output"] - 0.5) ** 2)

    return params, loss


@pytest.mark.parametrize("kind,rules,pattern", [
    ("adapter", ((r".*_adapter/.*", "train"), (r".*norm/.*", "train"), (r".*pooler/.*", "train"),
                 (".*", "frozen")), r".*(_adapter/|norm/|pooler/).*"),
    ("lora", ((r".*/lora_[ab]", "train"), (".*", "frozen")), r".*/lora_[ab]"),
])
def test_adapters_and_lora_train_only_their_parameters(kind, rules, pattern):
    params, loss = _tiny_bert(**({"adapter_size": 4} if kind == "adapter" else {"lora_rank": 2}))
    tc, oc = configs(rules=rules)
    plan = transfer.build_transfer_optimizer(params, tc, oc, 10, 5)
    trained = {p for p in plan.paths if plan.optimizer_mask[p]}
    assert trained == {p for p in plan.paths if re.fullmatch(pattern, p)} and trained
    assert plan.trainable_count() < 0.3 * transfer.count_params(params)
    runner = Runner(plan, loss)
    step = runner.step_fn(0)
    new, state = params, plan.init(params)
    for s in range(3):
        new, state = step(new, state, {"ids": jnp.asarray(batch_for(s)["ids"]).reshape(2, 4)})
    before, after = flat(params), flat(new)
    changed = {p for p in before if not np.array_equal(before[p], after[p])}
    assert changed <= trained and changed  # (lora_a gets no gradient until lora_b moves)
    for p in set(before) - trained:
        assert before[p].tobytes() == after[p].tobytes(), p


def test_as_optax_single_compile_matches_static_stages():
    """One transform over the full tree, stage read from the step: same result as one jitted step
    per stage, one compile for the run, frozen leaves bit-identical through optax.apply_updates."""
    params = toy_params()
    params["bert"]["embeddings"]["word"]["embedding"] = \
        params["bert"]["embeddings"]["word"]["embedding"].at[0, 0].set(-0.0)
    tc, oc = configs(rules=((r"bert/embeddings/.*", "frozen"), (".*", "train")),
                     strategy="gradual_unfreezing", stage_steps=2, discriminative_decay=2.6,
                     schedule="stlr")
    plan = transfer.build_transfer_optimizer(params, tc, oc, 9, 5)
    static, static_state = Runner(plan).run(params, plan.init(params), 0, 9)

    tx, compiles = plan.as_optax(), []

    @jax.jit
    def step(p, state, batch):
        compiles.append(1)
        updates, state = tx.update(jax.grad(toy_loss)(p, batch), state, p)
        return optax.apply_updates(p, updates), state

    dynamic, state = params, tx.init(params)
    assert jax.tree.structure(state) == jax.tree.structure(static_state)
    for s in range(9):
        dynamic, state = step(dynamic, state, batch_for(s))
    assert len(compiles) == 1
    for path, value in flat(static).items():
        np.testing.assert_allclose(flat(dynamic)[path], value, rtol=1e-5, atol=1e-6, err_msg=path)
    frozen = "bert/embeddings/word/embedding"
    assert flat(dynamic)[frozen].tobytes() == flat(params)[frozen].tobytes()
    assert int(state.count) == 9


TINY_RUN = ["data.max_train_examples=64", "data.max_eval_examples=32", "data.max_seq_length=32",
            "data.batch_size=16", "data.num_epochs=1.0", "train.progress=False",
            "model.dropout_rate=0.0", "model.attention_dropout_rate=0.0"]


@pytest.mark.parametrize("name,extra", [
    ("transfer_ulmfit", ["transfer.stage_steps=1"]),
    ("transfer_adapters", []),
])
def test_transfer_configs_run_in_the_trainer(name, extra, data_dir, tmp_path):
    """The canonical trainer with the probe task's make_optimizer hook: the run finishes, the
    step count is in the state, and the adapter run leaves every frozen tensor bit-identical."""
    from tl_jax import config as config_lib, train

    config = config_lib.load_config(f"configs/{name}.py:tiny", TINY_RUN + extra)
    result = train.train_and_evaluate(config, str(tmp_path / name))
    assert result.summary["step"] == 4 and 0.0 <= result.summary["eval/accuracy"] <= 1.0
    state = result.state
    assert int(state["opt_state"].count) == 4
    initial = flat(result.trainer.init_state(jax.random.PRNGKey(config.seed))["params"])
    final = flat(state["params"])
    rules = transfer.compile_rules(config.transfer.rules)
    plan_paths = transfer.match_rules(final, config.transfer.rules)
    changed = {p for p in final if final[p].tobytes() != initial[p].tobytes()}
    frozen = {p for p, i in plan_paths.items() if not rules[i][1].trainable}
    assert not changed & frozen
    if name == "transfer_adapters":
        assert frozen and any("_adapter/" in p for p in changed)
    else:  # gradual unfreezing reached the embeddings in the last of its 4 stages
        assert any(p.startswith("bert/embeddings/") for p in changed)


def test_trainer_computes_no_gradients_for_frozen_parameters(data_dir, tmp_path):
    """With the encoder frozen (adapters), the compiled train step skips the encoder's weight
    gradients: XLA's FLOP count is well below the same model trained in full, and the frozen
    tensors' updates do not depend on the batch."""
    from tl_jax import config as config_lib, train

    def step_flops(rules):
        config = config_lib.load_config("configs/transfer_adapters.py:tiny", TINY_RUN)
        config.transfer.rules = rules
        trainer = train.build_trainer(config, str(tmp_path / str(len(rules))))
        batch = trainer.task.example_batch(int(config.data.batch_size))
        compiled = trainer.train_step.lower(trainer.abstract_state, batch).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost["flops"]), trainer

    frozen_flops, trainer = step_flops(
        config_lib.load_config("configs/transfer_adapters.py:tiny", TINY_RUN).transfer.rules)
    assert trainer.task.transfer_plan is not None
    assert not all(trainer.task.transfer_plan.optimizer_mask.values())
    full_flops, _ = step_flops(((".*", "train"),))
    assert frozen_flops < 0.85 * full_flops, (frozen_flops, full_flops)


def test_a_rule_naming_no_parameter_is_an_error():
    # A misspelt or out-of-range layer name would otherwise leave that layer to ('.*', 'train').
    paths = list(transfer.flat_params(toy_params()))
    with pytest.raises(ValueError, match=r"layer_9.*match no parameter"):
        transfer.match_rules(paths, [(r"bert/encoder/layer_9/.*", "frozen"), (".*", "train")])
    with pytest.raises(ValueError, match="embedings"):
        tc, oc = configs(rules=((r"bert/embedings/.*", "frozen"), (".*", "train")))
        transfer.build_transfer_optimizer(toy_params(), tc, oc, 10, 5)
    # A rule that earlier rules shadow still names parameters: allowed, and noted in the table.
    tc, oc = configs(rules=((r"bert/.*", "frozen"), (r"bert/embeddings/.*", "train"),
                            (".*", "train")))
    plan = transfer.build_transfer_optimizer(toy_params(), tc, oc, 10, 5)
    assert "earlier rules take all it matches" in plan.summary()


@pytest.mark.parametrize("name", ["transfer_ulmfit", "transfer_chain_thaw"])
def test_tiny_smoke_configs_reach_their_last_stage(data_dir, tmp_path, name):
    # A smoke test that never thaws anything below the head tests no unfreezing at all.
    from tl_jax import config as config_lib, train

    config = config_lib.load_config(f"configs/{name}.py:tiny", ["train.progress=False"])
    trainer = train.build_trainer(config, str(tmp_path))
    plan = trainer.task.transfer_plan
    assert plan.stages[-1].name == "all"
    assert plan.stages[-1].start_step < config.train.steps, (plan.stages, config.train.steps)


def test_chain_thaw_in_the_trainer_holds_other_groups_bit_identical(data_dir, tmp_path):
    """The trainer's own step (`as_optax`, stage read from the count) under chain-thaw, with
    weight decay on and Adam momentum left from earlier stages: in each stage the groups it does
    not train keep every bit of their parameters and of their optimizer state; the group it
    trains moves."""
    from tl_jax import config as config_lib, parallel, train

    config = config_lib.load_config("configs/transfer_chain_thaw.py:tiny", TINY_RUN + [
        "transfer.stage_steps=1", "train.steps=6", "optimizer.weight_decay=0.1",
        "optimizer.warmup_steps=0", "optimizer.learning_rate=1e-2"])
    trainer = train.build_trainer(config, str(tmp_path))
    plan = trainer.task.transfer_plan
    assert [sorted(s.groups) for s in plan.stages[:4]] == [
        ["head"], ["embeddings"], ["layer_0"], ["layer_1"]]
    state = trainer.init_state(jax.random.PRNGKey(config.seed))
    batches = trainer.task.train_batches()
    for step in range(6):  # stages head, embeddings, layer_0, layer_1, all, all
        before = jax.device_get(state)
        state, _ = trainer.train_step(state, parallel.host_batch_to_global(next(batches),
                                                                            trainer.mesh))
        after = jax.device_get(state)
        active = plan.stages[plan.stage_for_step(step)].groups
        old, new = flat(before["params"]), flat(after["params"])
        for p in old:
            held = plan.info[p].group not in active
            same = old[p].tobytes() == new[p].tobytes()
            if held:
                assert same, (step, p)
            elif p.endswith("kernel") or p.endswith("embedding"):
                assert not same, (step, p)  # weight decay alone moves them
        for label, inner in before["opt_state"].inner.items():
            same = all(np.asarray(a).tobytes() == np.asarray(b).tobytes() for a, b in zip(
                jax.tree.leaves(inner), jax.tree.leaves(after["opt_state"].inner[label])))
            assert same == (label.split("/")[0] not in active), (step, label)


def test_grad_norm_in_the_trainer_is_the_norm_of_what_the_stage_trains(data_dir, tmp_path):
    """Under chain-thaw the trainer computes gradients for every group, and the plan zeroes the
    held ones before it clips: the logged grad_norm (and so the non-finite check) is the norm
    of the groups the stage trains, not of every gradient the step computed."""
    import math

    from tl_jax import config as config_lib, parallel, train

    config = config_lib.load_config("configs/transfer_chain_thaw.py:tiny", TINY_RUN + [
        "transfer.stage_steps=1", "train.steps=5", "optimizer.warmup_steps=0",
        "optimizer.learning_rate=1e-2"])
    trainer = train.build_trainer(config, str(tmp_path))
    plan, task = trainer.task.transfer_plan, trainer.task
    assert all(plan.optimizer_mask.values())  # the step differentiates every parameter
    grad_fn = jax.jit(jax.grad(lambda p, b, r: task.loss_fn(p, b, r, True)[0]))
    state = trainer.init_state(jax.random.PRNGKey(config.seed))
    batches = task.train_batches()
    for step in range(5):  # stages head, embeddings, layer_0, layer_1, all
        batch = parallel.host_batch_to_global(next(batches), trainer.mesh)
        rng = jax.random.fold_in(state["rng"], state["step"])  # as the step draws it
        with parallel.mesh_context(trainer.mesh, trainer.rules):
            grads = flat(jax.device_get(grad_fn(state["params"], batch, rng)))
        state, metrics = trainer.train_step(state, batch)
        logged = float(metrics["grad_norm"][0])
        active = plan.stages[plan.stage_for_step(step)].groups

        def norm(paths):
            return math.sqrt(sum(np.sum(np.square(grads[p].astype(np.float64))) for p in paths))

        trained = norm([p for p in grads if plan.info[p].group in active])
        everything = norm(list(grads))
        np.testing.assert_allclose(logged, trained, rtol=1e-4, err_msg=f"step {step}")
        if active != frozenset(plan.groups):  # a held stage: the held groups' gradients count
            assert everything > 1.01 * trained, (step, everything, trained)
        else:
            np.testing.assert_allclose(logged, everything, rtol=1e-4, err_msg=f"step {step}")


def test_stage_gradients_give_the_norm_the_plan_clips():
    """`stage_gradients` over the optimizer's subtree: the held groups' leaves are 0, the trained
    ones untouched, and their norm is the one `as_optax()` clips by (plain SGD, so the clipped
    update is -lr * g * clip_norm / norm)."""
    params = toy_params()
    tc, oc = configs(strategy="chain_thaw", stage_steps=1,
                     rules=((r"bert/embeddings/.*", "frozen"), (".*", "train")))
    oc.name, oc.b1, oc.weight_decay, oc.decay, oc.clip_norm = "sgd", 0.0, 0.0, "constant", 1e-3
    plan = transfer.build_transfer_optimizer(params, tc, oc, 10, 5)
    tx = plan.as_optax()
    sub = plan.optimizer_params(params)  # no embeddings: the rule freezes them
    frozen = transfer.split_params(params, plan.optimizer_mask)[1]
    state = tx.init(sub)
    for step in range(len(plan.stages)):  # head, layer_0, layer_1, layer_2, all
        grads = jax.grad(lambda p: toy_loss(plan.merge(p, frozen), batch_for(step)))(sub)
        staged = plan.stage_gradients(grads, state.count)
        assert jax.tree.structure(staged) == jax.tree.structure(grads)
        active = plan.stages[plan.stage_for_step(step)].groups
        g, kept = flat(grads), flat(staged)
        for p in g:
            expected = g[p] if plan.info[p].group in active else np.zeros_like(g[p])
            assert np.asarray(kept[p]).tobytes() == np.asarray(expected).tobytes(), (step, p)
        norm = float(optax.tree.norm(staged))
        updates, state = tx.update(grads, state, sub)
        p = "head/dense/kernel" if "head" in active else \
            f"bert/encoder/layer_{step - 1}/dense/kernel"
        np.testing.assert_allclose(flat(updates)[p], -oc.learning_rate * g[p] * 1e-3 / norm,
                                   rtol=1e-5, err_msg=f"step {step}")


def test_the_run_time_stage_zeroes_held_gradients_through_stage_gradients(monkeypatch):
    """`as_optax()` zeroes held groups' gradients with `stage_gradients` itself, not a copy of
    its rule: the norm it clips and the trainer's logged grad_norm cannot drift apart."""
    params = toy_params()
    tc, oc = configs(strategy="chain_thaw", stage_steps=1)
    plan = transfer.build_transfer_optimizer(params, tc, oc, 10, 5)
    seen = []
    original = transfer.TransferPlan.stage_gradients

    def spy(self, grads, count):
        seen.append(sorted(flat(grads)))
        return original(self, grads, count)

    monkeypatch.setattr(transfer.TransferPlan, "stage_gradients", spy)
    tx = plan.as_optax()
    sub = plan.optimizer_params(params)
    tx.update(jax.tree.map(jnp.ones_like, sub), tx.init(sub), sub)
    assert seen == [sorted(plan.labels)]


def test_the_trainer_finds_the_plans_count_in_a_wrapped_optimizer_state():
    from tl_jax import train

    params = toy_params()
    tc, oc = configs(strategy="chain_thaw", stage_steps=1)
    plan = transfer.build_transfer_optimizer(params, tc, oc, 10, 5)
    wrapped = optax.MultiSteps(plan.as_optax(), every_k_schedule=2).init(params)
    wrapped = wrapped._replace(inner_opt_state=wrapped.inner_opt_state._replace(
        count=jnp.asarray(3, jnp.int32)))
    assert int(train._transfer_count_getter(jax.eval_shape(lambda: wrapped), plan.stages)(
        wrapped)) == 3
    with pytest.raises(ValueError, match=r"plan with 6 stages .* holds 0 TransferStates"):
        train._transfer_count_getter(optax.adam(1e-3).init(params), plan.stages)


def test_resume_with_changed_transfer_rules_is_refused_keeping_the_checkpoint(data_dir, tmp_path):
    # Other rules give the optimizer state another layout: the restore used to fail, and the
    # good checkpoint was moved to checkpoints_corrupt/ and training restarted from step 0.
    import os

    from tl_jax import config as config_lib, train

    run = ["train.steps=2", "train.eval_every=0"]
    config = config_lib.load_config("configs/transfer_full.py:tiny", TINY_RUN + run)
    train.train_and_evaluate(config, str(tmp_path))
    config = config_lib.load_config("configs/transfer_full.py:tiny", TINY_RUN + run + [
        "train.steps=4", "transfer.rules=((r'bert/embeddings/.*', 'frozen'), ('.*', 'train'))"])
    with pytest.raises(Exception, match=r"different model or transfer config:\n  transfer.rules"):
        train.train_and_evaluate(config, str(tmp_path))
    assert os.listdir(tmp_path / "checkpoints") == ["2"]
    assert not os.path.exists(tmp_path / "checkpoints_corrupt")


def test_a_resumed_staged_run_says_which_stage_it_continues_in(data_dir, tmp_path, capsys):
    # The stage table was printed at every start, but a resume did not say where in it it was.
    from tl_jax import config as config_lib, train

    run = ["train.eval_every=0", "data.num_epochs=0", "transfer.stage_steps=2"]
    config = config_lib.load_config("configs/transfer_ulmfit.py:tiny",
                                    TINY_RUN + run + ["train.steps=3"])
    train.train_and_evaluate(config, str(tmp_path))
    capsys.readouterr()
    config = config_lib.load_config("configs/transfer_ulmfit.py:tiny",
                                    TINY_RUN + run + ["train.steps=4"])
    train.train_and_evaluate(config, str(tmp_path))
    assert ("[transfer] Resuming in stage top_2 (from step 2: head layer_1); the next, top_3, "
            "from step 4.") in capsys.readouterr().out


def test_a_resume_that_would_land_in_another_stage_is_refused(data_dir, tmp_path):
    # Stages of one epoch: 4 steps at batch 16 (64 examples). At batch 8 an epoch is 8 steps,
    # so step 5, in stage top_2, fell back into the head's stage: layer_1 froze again, without a
    # word. A change that leaves step 5 in its stage (48 examples: top_2 from 3 to 6) resumes.
    from tl_jax import checkpoint as ckpt_lib, config as config_lib, train

    run = TINY_RUN + ["train.eval_every=0", "data.num_epochs=0", "transfer.stage_steps=0",
                      "transfer.stage_epochs=1.0", "train.checkpoint_every=5"]
    train.train_and_evaluate(config_lib.load_config(
        "configs/transfer_ulmfit.py:tiny", run + ["train.steps=5"]), str(tmp_path))
    config = config_lib.load_config("configs/transfer_ulmfit.py:tiny",
                                    run + ["train.steps=6", "data.batch_size=8"])
    with pytest.raises(ckpt_lib.CheckpointError,
                       match=r"transfer stages: checkpoint has top_1 from step 0, top_2 from step "
                             r"4, .*; config has top_1 from step 0, top_2 from step 8, .*, so "
                             r"step 5 would be in another stage"):
        train.train_and_evaluate(config, str(tmp_path))
    assert os.listdir(tmp_path / "checkpoints") == ["5"]
    resumed = train.train_and_evaluate(config_lib.load_config(
        "configs/transfer_ulmfit.py:tiny", run + ["train.steps=6",
                                                  "data.max_train_examples=48"]), str(tmp_path))
    assert resumed.summary["step"] == 6


def test_lora_alpha_zero_is_an_error(data_dir, tmp_path):
    # alpha / rank scales LoRA's update: with 0 the run trained only the head, without a word.
    from tl_jax import config as config_lib, tasks

    config = config_lib.load_config("configs/transfer_lora.py:tiny",
                                    TINY_RUN + ["transfer.lora_alpha=0.0"])
    with pytest.raises(ValueError, match=r"transfer.lora_alpha=0.0 with lora_rank="):
        tasks.build_task(config, str(tmp_path))


def test_stlr_with_an_optimizer_warmup_is_an_error(tmp_path):
    # STLR replaces the optimizer's schedule, its warm-up included: configs/gpt_finetune_classify.py
    # set 20 warm-up steps that did nothing.
    from tl_jax import config as config_lib, tasks

    tc, oc = configs(schedule="stlr")
    oc.warmup_steps = 20
    message = (r"transfer.schedule='stlr' with optimizer.warmup_steps=20: STLR has its own "
               r"warm-up .*stlr_cut_frac=0.1.* set optimizer.warmup_steps=0")
    with pytest.raises(ValueError, match=message):
        transfer.build_transfer_optimizer(toy_params(), tc, oc, 100, 10)
    oc.warmup_steps = 0
    transfer.build_transfer_optimizer(toy_params(), tc, oc, 100, 10)
    # The tasks that read config.transfer check it before reading data (these files are missing).
    missing = [f"data.train_file={tmp_path / 'none.jsonl'}",
               f"data.eval_file={tmp_path / 'none.jsonl'}", "optimizer.warmup_steps=20"]
    for name in ("transfer_ulmfit", "gpt_finetune_classify"):
        config = config_lib.load_config(f"configs/{name}.py:tiny", missing)
        with pytest.raises(ValueError, match=message):
            tasks.build_task(config, str(tmp_path / name))


@pytest.mark.parametrize("name, override, message", [
    ("transfer_adapters", "transfer.adapter_size=-1",
     r"transfer.adapter_size=-1: expected an integer >= 0"),
    ("transfer_lora", "transfer.lora_rank=-8", r"transfer.lora_rank=-8: expected an integer >= 0"),
    ("transfer_full", "transfer.lora_rank=-1", r"transfer.lora_rank=-1: expected an integer >= 0"),
    ("gpt_finetune_classify", "transfer.lora_rank=-1",
     r"transfer.lora_rank=-1: expected an integer >= 0"),
    ("gpt_finetune_classify", "transfer.adapter_size=-4",
     r"transfer.adapter_size=-4: expected an integer >= 0"),
    ("transfer_full", "transfer.reinit_top_k=-1",
     r"transfer.reinit_top_k=-1: expected an integer >= 0"),
    ("gpt_finetune_classify", "transfer.reinit_top_k=-2",
     r"transfer.reinit_top_k=-2: expected an integer >= 0"),
    ("transfer_lora", "transfer.lora_alpha=0.0", r"transfer.lora_alpha=0.0 with lora_rank=8"),
    ("transfer_lora", "transfer.lora_alpha=nan",
     r"transfer.lora_alpha=nan with lora_rank=8: .* expected a finite number"),
])
def test_bad_adapter_or_lora_settings_are_errors_before_the_data_is_read(name, override, message,
                                                                         tmp_path):
    # A negative size or rank failed only after the probe task had read and tokenized its data,
    # in BertConfig, naming no transfer key; the GPT classifier called it "not supported". A
    # negative reinit_top_k failed only when the weights were loaded, after the data.
    from tl_jax import config as config_lib, tasks

    missing = [f"data.train_file={tmp_path / 'none.jsonl'}",
               f"data.eval_file={tmp_path / 'none.jsonl'}"]  # never read: the settings fail first
    if override.endswith("=nan"):  # no Python literal for it
        config = config_lib.load_config(f"configs/{name}.py:tiny", missing)
        config.transfer.lora_alpha = float("nan")
    else:
        config = config_lib.load_config(f"configs/{name}.py:tiny", missing + [override])
    with pytest.raises(ValueError, match=message):
        tasks.build_task(config, str(tmp_path / "run"))
    with pytest.raises(ValueError, match=message):  # and a plan built directly
        transfer.build_transfer_optimizer(toy_params(), config.transfer, config.optimizer, 10, 5)


@pytest.mark.parametrize("name, rule", [("transfer_adapters", r".*_adapter/.*"),
                                        ("transfer_lora", r".*/lora_[ab]")])
def test_adapters_or_lora_frozen_by_an_earlier_rule_are_an_error(data_dir, tmp_path, name, rule):
    # (bert/.*, frozen) before the adapter rule froze the fresh adapters too: the run trained
    # only the head, and the summary's "earlier rules take all it matches" was the only sign.
    from tl_jax import config as config_lib, tasks

    rules = f"((r'bert/.*', 'frozen'), (r'{rule}', 'train'), ('.*', 'train'))"
    config = config_lib.load_config(f"configs/{name}.py:tiny",
                                    TINY_RUN + [f"transfer.rules={rules}"])
    task = tasks.build_task(config, str(tmp_path))
    with pytest.raises(ValueError, match=r"transfer rule 'bert/\.\*' freezes all of them"):
        task.make_optimizer(10)


@pytest.mark.parametrize("rules, share", [
    # toy matmuls: 3 layers x 36, pooler 36 and head 12 (the `head` group), 156 in all; the
    # embedding table is a lookup, not a matmul.
    (((r"bert/.*", "frozen"), (".*", "train")), (156 + 48 + 12) / 468),   # probe: head only
    (((r"bert/(embeddings|encoder/layer_[01])/.*", "frozen"), (".*", "train")),
     (156 + 84 + 84) / 468),                                              # top layer + head
    (((".*", "train"),), 1.0),
])
def test_mfu_counts_no_backward_below_the_lowest_trained_group(rules, share):
    """MFU with frozen layers: the step runs the forward pass, the backward pass down to the
    lowest trained group and weight gradients of trained matmuls only; counting a full training
    step overstated a frozen encoder's MFU about 3x."""
    import types

    from tl_jax import train
    params = toy_params()
    tc, oc = configs(rules=rules)
    plan = transfer.build_transfer_optimizer(params, tc, oc, 20, 5)
    assert plan.training_flops_fraction(jax.eval_shape(lambda: params)) == pytest.approx(share)
    task = types.SimpleNamespace(transfer_plan=plan)
    trainer = types.SimpleNamespace(abstract_state={"params": jax.eval_shape(lambda: params)})
    assert train.frozen_flops_share(task, trainer) == pytest.approx(share)
    task.flops_count_frozen = True  # the probes and distillation count their frozen part
    assert train.frozen_flops_share(task, trainer) == 1.0
    assert train.frozen_flops_share(types.SimpleNamespace(), trainer) == 1.0


def test_stages_past_the_last_step_are_a_transfer_note_not_a_root_logger_warning(capsys, caplog):
    """Stages that never run came out as `WARNING root: transfer: ...` (Python logging), unlike
    the `[transfer] ...` lines of the rest of the plan."""
    tc, oc = configs(strategy="gradual_unfreezing", stage_steps=5)
    with caplog.at_level("WARNING"):
        plan = transfer.build_transfer_optimizer(toy_params(), tc, oc, 12, 5)
    assert [s.start_step for s in plan.stages] == [0, 5, 10, 15, 20]
    assert not caplog.records
    assert capsys.readouterr().out == (
        "[transfer] warning: 5 stages of 5 steps do not fit in 12 training steps; the last 2 "
        "stages will never run.\n")
    transfer.build_transfer_optimizer(toy_params(), configs(
        strategy="gradual_unfreezing", stage_steps=2)[0], oc, 12, 5)
    assert capsys.readouterr().out == ""  # every stage runs: no word

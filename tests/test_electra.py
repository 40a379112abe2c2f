"""ELECTRA: the model (shared embeddings, replaced-token labels, gradients), the task through the
one trainer (learning on real text, sharding invariance) and fine-tuning from its workdir."""
import dataclasses
import json
import pathlib

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_micro_batch_losses_sum_to_the_batch

from tl_jax import config as config_lib
from tl_jax import parallel, train
from tl_jax.models import electra
from tl_jax.tasks import electra as electra_task

ROOT = pathlib.Path(__file__).resolve().parent.parent
ELECTRA = str(ROOT / "configs" / "electra_pretrain.py")

B, L, P, V = 2, 8, 3, 50


def tiny_model(**overrides):
    config = electra.ElectraConfig.from_size("tiny", vocab_size=V, max_position_embeddings=16,
                                             **overrides)
    return config, electra.ElectraForPreTraining(config)


def toy_batch():
    input_ids = np.array([[2, 4, 9, 11, 3, 0, 0, 0],    # [CLS] [MASK] w w [SEP] pad pad pad
                          [2, 12, 4, 13, 14, 4, 3, 0]], np.int32)
    return dict(
        input_ids=input_ids,
        segment_ids=np.zeros((B, L), np.int32),
        input_mask=(input_ids > 0).astype(np.int32),
        masked_positions=np.array([[1, 0, 0], [2, 5, 0]], np.int32),  # weight 0: padding slots
        masked_ids=np.array([[7, 0, 0], [20, 21, 0]], np.int32),
        masked_weights=np.array([[1, 0, 0], [1, 1, 0]], np.float32),
    )


def inputs(batch):
    return (batch["input_ids"], batch["segment_ids"], batch["input_mask"],
            batch["masked_positions"], batch["masked_ids"], batch["masked_weights"])


def flat(tree):
    return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")


@pytest.fixture(scope="module")
def tiny():
    config, model = tiny_model(dropout_rate=0.0, attention_dropout_rate=0.0)
    batch = toy_batch()
    key = jax.random.PRNGKey(0)
    init = jax.jit(lambda k: model.init({"params": k, "dropout": k, "sample": k}, *inputs(batch)))
    params = flax.linen.unbox(init(key)["params"])
    return config, model, params, batch


def test_shapes_and_shared_embeddings(tiny):
    config, model, params, batch = tiny
    assert config.generator.hidden_size == 32 and config.generator.num_heads == 1  # 1/4 of 128
    outputs, intermediates = jax.eval_shape(lambda p: model.apply(
        {"params": p}, *inputs(batch), rngs={"sample": jax.random.PRNGKey(1)}), params)
    assert outputs["mlm_logits"].shape == (B, P, V)
    assert outputs["sampled_ids"].shape == (B, P)
    assert outputs["discriminator_logits"].shape == (B, L)
    assert outputs["sequence_output"].shape == (B, L, 128)
    assert {"embeddings", "layer_2", "generator_embeddings", "generator_layer_2"} <= set(
        intermediates)
    assert intermediates["generator_layer_2"].shape == (B, L, 32)
    names = flat(params)
    # One embedding table, the discriminator's: the generator has none of its own (the MLM
    # loss reaching that table is checked in test_loss_is_finite_...).
    assert [n for n in names if "word_embeddings" in n] == [
        "bert/embeddings/word_embeddings/embedding"]
    assert not any(n.startswith("generator/embeddings/") for n in names)
    assert names["generator/embeddings_project/kernel"].shape == (128, 32)
    assert names["generator/mlm_head/transform/kernel"].shape == (32, 128)


def test_replaced_labels_count_only_real_changes():
    batch = toy_batch()
    # Row 0: the one real slot samples its original (7): not replaced. Slots 2-3 are padding
    # (position 0, weight 0) and sample 5 / 6: [CLS] must stay. Row 1: 20 -> 30 replaced,
    # 21 -> 21 not.
    sampled = np.array([[7, 5, 6], [30, 21, 9]], np.int32)
    fake, replaced = electra.replace_tokens(
        jnp.asarray(batch["input_ids"]), jnp.asarray(batch["masked_positions"]),
        jnp.asarray(batch["masked_weights"]), jnp.asarray(batch["masked_ids"]),
        jnp.asarray(sampled))
    np.testing.assert_array_equal(fake, [[2, 7, 9, 11, 3, 0, 0, 0],
                                         [2, 12, 30, 13, 14, 21, 3, 0]])
    expected = np.zeros((B, L), bool)
    expected[1, 2] = True
    np.testing.assert_array_equal(replaced, expected)

    # The loss scores every real token and no pad: counts are the non-pad tokens.
    outputs = dict(mlm_logits=jnp.zeros((B, P, V)), replaced=replaced,
                   discriminator_logits=jnp.full((B, L), -3.0))
    loss, metrics = electra_task.electra_loss(outputs, batch, 50.0)
    assert np.isfinite(loss)
    n_real = batch["input_mask"].sum()
    assert float(metrics["disc_accuracy"][1]) == n_real == 12
    assert float(metrics["disc_accuracy"][0]) == n_real - 1  # all "original": one miss
    assert float(metrics["disc_baseline_accuracy"][0]) == n_real - 1
    assert float(metrics["disc_recall"][0]) == 0 and float(metrics["disc_recall"][1]) == 1
    assert float(metrics["mlm_accuracy"][1]) == 3  # the real prediction slots only


def test_micro_batch_losses_over_the_whole_batchs_counts_add_up_to_its_loss():
    # Gradient accumulation: each micro-batch divides by the whole batch's masked predictions
    # and real tokens (task.loss_normalizers), so the micro-batch losses (and their gradients)
    # sum to the whole batch's, though the micro-batches hold different counts of both.
    rng = np.random.default_rng(0)
    b, length, preds, vocab = 4, 6, 3, 7
    mask = (np.arange(length)[None] < np.array([[6], [3], [5], [2]])).astype(np.int32)
    batch = dict(input_mask=mask, masked_ids=rng.integers(0, vocab, (b, preds)).astype(np.int32),
                 masked_weights=np.array([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 0, 0]],
                                         np.float32))
    outputs = dict(mlm_logits=jnp.asarray(rng.normal(size=(b, preds, vocab)), jnp.float32),
                   discriminator_logits=jnp.asarray(rng.normal(size=(b, length)), jnp.float32),
                   replaced=jnp.asarray(rng.random((b, length)) < 0.3, jnp.float32))

    def loss(out, i, normalizers=None):
        part = batch if i is None else jax.tree.map(lambda x: x[i::2], batch)
        return electra_task.electra_loss(out, part, 50.0, normalizers)[0]

    assert {float(batch["masked_weights"][i::2].sum()) for i in range(2)} == {5.0, 2.0}
    assert_micro_batch_losses_sum_to_the_batch(loss, outputs,
                                               electra_task.electra_normalizers(batch))


@pytest.fixture(scope="module")
def gradients(tiny):
    """(loss, gradients of the loss, of the MLM loss alone, of the discriminator's loss alone)."""
    _, model, params, batch = tiny

    def losses(p):
        outputs, _ = model.apply({"params": p}, *inputs(batch),
                                 rngs={"sample": jax.random.PRNGKey(3)})
        loss, metrics = electra_task.electra_loss(outputs, batch, 50.0)
        return (loss, metrics["mlm_loss"][0] / metrics["mlm_loss"][1],
                metrics["disc_loss"][0] / metrics["disc_loss"][1])

    @jax.jit
    def grads(p):
        loss, total = jax.value_and_grad(lambda q: losses(q)[0])(p)
        return (loss, total, jax.grad(lambda q: losses(q)[1])(p),
                jax.grad(lambda q: losses(q)[2])(p))
    return grads(params)


def _norms(grads, prefix):
    return [float(np.abs(np.asarray(g)).sum()) for n, g in flat(grads).items()
            if n.startswith(prefix)]


def test_loss_is_finite_and_its_gradient_reaches_both_models(gradients):
    loss, grads, mlm_grads, _ = gradients
    assert np.isfinite(loss) and loss > 0
    for prefix in ("generator/encoder/", "generator/mlm_head/", "generator/embeddings_project",
                   "bert/encoder/", "bert/embeddings/", "discriminator_head/"):
        assert sum(_norms(grads, prefix)) > 0, prefix
    # The generator's own loss trains the shared embeddings (it reads and decodes with them)
    # and leaves the discriminator's layers alone.
    assert sum(_norms(mlm_grads, "bert/embeddings/word_embeddings")) > 0
    assert sum(_norms(mlm_grads, "bert/embeddings/position_embeddings")) > 0
    assert max(_norms(mlm_grads, "bert/encoder/") + _norms(mlm_grads, "discriminator_head/")) == 0


def test_no_gradient_flows_through_the_sampling(gradients):
    grads = gradients[3]
    # The discriminator's loss trains the discriminator and the shared embeddings...
    assert sum(_norms(grads, "bert/encoder/")) > 0
    assert sum(_norms(grads, "bert/embeddings/")) > 0
    # ...and not one generator weight, whose only way there is the discrete sample.
    assert _norms(grads, "generator/") and max(_norms(grads, "generator/")) == 0.0


def test_bad_sizes_are_clear_errors(tiny_bert_overrides):
    with pytest.raises(ValueError, match="generator is bigger than the discriminator"):
        tiny_model(generator_num_layers=3)
    with pytest.raises(ValueError, match="bigger than the discriminator is not ELECTRA"):
        tiny_model(generator_fraction=1.5)
    with pytest.raises(ValueError, match="Unknown ELECTRA size 'huge'"):
        electra.ElectraConfig.from_size("huge")
    with pytest.raises(ValueError, match="Unknown size 'huge'"):
        config_lib.load_config(ELECTRA + ":huge")
    # Through the trainer, before any data is read or anything compiles.
    for override, message in (("model.generator_fraction=2.0", "not ELECTRA"),
                              ("model.size='medium'", "Unknown ELECTRA size"),
                              ("electra.temperature=0.0", "temperature"),
                              # 1e999 is inf: every loss would be NaN
                              ("electra.discriminator_weight=1e999",
                               "discriminator_weight=inf must be a finite")):
        config = config_lib.load_config(ELECTRA + ":tiny", tiny_bert_overrides + [override])
        with pytest.raises(ValueError, match=message):
            train.build_trainer(config, workdir=None)
    # NaN passed `<= 0` and `< 0` (the Python API can set what the command line cannot).
    for key in ("temperature", "discriminator_weight"):
        config = config_lib.load_config(ELECTRA + ":tiny", tiny_bert_overrides)
        config.electra[key] = float("nan")
        with pytest.raises(ValueError, match=f"electra.{key}=nan must be"):
            train.build_trainer(config, workdir=None)


@pytest.mark.parametrize("override", ["model.dropout_rate=10.0", "model.attention_dropout_rate=-0.1"])
def test_dropout_rates_are_named_by_their_key_before_the_corpus_is_read(tmp_path, override):
    """BertConfig refuses a rate outside [0, 1) but names its own field; the task names the
    config key, before the corpus (which does not exist here) is read."""
    config = config_lib.load_config(ELECTRA + ":tiny",
                                    [f"data.corpus={tmp_path / 'not_read.txt'}", override])
    key, value = override.split("=")
    with pytest.raises(ValueError, match=rf"^{key}={value} must be in \[0, 1\)"):
        electra_task.Task(config, str(tmp_path / "run"))


def _hf_bert_config_dir(path, type_vocab_size):
    """A folder holding only a small BERT's config.json (what `model.size=DIR` copies)."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps(dict(
        model_type="bert", vocab_size=120, hidden_size=48, num_hidden_layers=3,
        num_attention_heads=4, intermediate_size=96, max_position_embeddings=64,
        type_vocab_size=type_vocab_size)))
    return path


@pytest.mark.parametrize("spec", [ELECTRA, ELECTRA.replace("electra_pretrain", "bert_pretrain")])
def test_one_segment_embedding_is_refused_before_the_corpus_is_read(spec, tmp_path):
    """Every pretraining instance, BERT's and ELECTRA's, is a pair `[CLS] A [SEP] B [SEP]` with B
    in segment 1. model.type_vocab_size=1 failed only at the first training step ("segment id
    1 ... outside [0, 1)"), after the corpus was read; the corpus here does not exist."""
    from tl_jax.tasks import bert_pretrain

    task = electra_task if spec == ELECTRA else bert_pretrain
    corpus = f"data.corpus={tmp_path / 'not_read.txt'}"
    config = config_lib.load_config(spec + ":tiny", [corpus, "model.type_vocab_size=1"])
    with pytest.raises(ValueError, match=r"^model.type_vocab_size=1: pretraining needs 2 "
                                         r"segment ids.*sentence pair.*Set model.type_vocab_size=2"):
        task.Task(config, str(tmp_path / "run"))
    if task is bert_pretrain:
        # model.size=DIR takes the directory's segment table, whatever model.type_vocab_size says.
        hf = _hf_bert_config_dir(tmp_path / "hf_one_segment", type_vocab_size=1)
        config = config_lib.load_config(spec + ":tiny", [corpus, f"model.size={hf}",
                                                         "data.max_seq_length=64"])
        with pytest.raises(ValueError, match=rf"^model.size={hf} has type_vocab_size=1 .*"
                                             "pretraining needs 2 segment ids"):
            task.Task(config, str(tmp_path / "run"))


@pytest.mark.parametrize("spec", [ELECTRA, ELECTRA.replace("electra_pretrain", "bert_pretrain")])
def test_a_run_from_init_from_takes_its_tokenizer_not_a_new_vocabulary(spec, tiny_bert_overrides,
                                                                       data_dir, tmp_path):
    # Continuing an ELECTRA or BERT workdir on another corpus with data.tokenizer unset used to
    # train a new vocabulary of the same size (in either pretraining task), and the source's
    # embedding rows were then taken by shape for tokens they never stood for.
    from tl_jax import tasks
    from tl_jax.data import sources
    from tl_jax.data.tokenizer import Tokenizer

    source = tmp_path / "austen_run"
    (source / "checkpoints").mkdir(parents=True)
    austen = sources.load_documents(str(data_dir / "austen.jsonl"), text_field="text",
                                    group_field="book")
    Tokenizer.train_wordpiece([doc[:300] for doc in austen], vocab_size=500).save(
        str(source / "tokenizer"))
    overrides = [o for o in tiny_bert_overrides if not o.startswith("data.tokenizer=")]
    config = config_lib.load_config(spec + ":tiny", overrides + [f"init_from={source}"])
    task = tasks.build_task(config, None)
    assert (task.tokenizer.hf_tokenizer.get_vocab()
            == Tokenizer.load(str(source / "tokenizer")).hf_tokenizer.get_vocab())


@pytest.mark.parametrize("spec", [ELECTRA, ELECTRA.replace("electra_pretrain", "bert_pretrain")])
@pytest.mark.parametrize("written", ["$TL_JAX_TEST_RUNS/source_run", "~/source_run"])
def test_init_from_may_name_the_home_folder_or_an_environment_variable(
        spec, written, tiny_bert_overrides, data_dir, tmp_path, monkeypatch):
    # The README promises `--config.init_from=~/runs/bert` and `$VAR/...` (the shell expands
    # neither after '='); both pretraining tasks used the value as written and stopped with
    # "init_from='~/source_run' does not exist".
    from tl_jax import tasks
    from tl_jax.data.tokenizer import Tokenizer

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TL_JAX_TEST_RUNS", str(tmp_path))
    source = tmp_path / "source_run"
    (source / "checkpoints").mkdir(parents=True)
    docs = [["A first document. It has two sentences."], ["Another one, about cats."]]
    Tokenizer.train_wordpiece(docs, vocab_size=100).save(str(source / "tokenizer"))
    overrides = [o for o in tiny_bert_overrides if not o.startswith("data.tokenizer=")]
    config = config_lib.load_config(spec + ":tiny", overrides + [f"init_from={written}"])
    task = tasks.build_task(config, None)
    assert task.init_from == str(source)
    assert (task.tokenizer.hf_tokenizer.get_vocab()
            == Tokenizer.load(str(source / "tokenizer")).hf_tokenizer.get_vocab())


@pytest.mark.parametrize("spec", [ELECTRA, ELECTRA.replace("electra_pretrain", "bert_pretrain")])
def test_a_resumed_run_does_not_announce_init_from_s_tokenizer(spec, tiny_bert_overrides,
                                                                tmp_path, capsys):
    # Resuming printed "[task] tokenizer of init_from: ..." and then kept the run's own (as it
    # must): the log said the opposite of what happened.
    from tl_jax import tasks
    from tl_jax.data.tokenizer import Tokenizer

    source = tmp_path / "source_run"
    (source / "checkpoints").mkdir(parents=True)
    Tokenizer.train_wordpiece([["A first document about dogs."], ["Another, about cats."]],
                              vocab_size=100).save(str(source / "tokenizer"))
    run = tmp_path / "run"
    (run / "checkpoints" / "5").mkdir(parents=True)  # a saved step: the run resumes
    Tokenizer.train_wordpiece([["Quite other words here."], ["And more of them."]],
                              vocab_size=120).save(str(run / "tokenizer"))
    overrides = [o for o in tiny_bert_overrides if not o.startswith("data.tokenizer=")]
    config = config_lib.load_config(spec + ":tiny", overrides + [f"init_from={source}"])
    task = tasks.build_task(config, str(run))
    assert "tokenizer of init_from" not in capsys.readouterr().out
    assert (task.tokenizer.hf_tokenizer.get_vocab()
            == Tokenizer.load(str(run / "tokenizer")).hf_tokenizer.get_vocab())


@pytest.mark.parametrize("spec", [ELECTRA, ELECTRA.replace("electra_pretrain", "bert_pretrain")])
def test_an_init_from_without_a_tokenizer_is_refused_before_the_corpus_is_read(
        spec, tiny_bert_overrides, tmp_path):
    # Weights without their vocabulary (a `tl_jax convert` of a Hugging Face folder that had no
    # tokenizer files) as init_from, data.tokenizer unset: both pretraining tasks trained a new
    # vocabulary, whose ids the warm-started embedding rows never saw, without a word. Named
    # data.tokenizer, or a resumed run (its workdir keeps the vocabulary), go on.
    import flax.linen as nn

    from tl_jax.data.tokenizer import Tokenizer
    from tl_jax.interop import bert as hf_bert, convert
    from tl_jax.models import bert
    from tl_jax.tasks import bert_pretrain

    task = electra_task if spec == ELECTRA else bert_pretrain
    named = next(o for o in tiny_bert_overrides if o.startswith("data.tokenizer="))
    tokenizer = Tokenizer.load(named.split("=", 1)[1])
    overrides = [o for o in tiny_bert_overrides if o != named]
    model_cfg = config_lib.load_config(spec + ":tiny", overrides).model
    shape = (electra_task.electra_config_from(model_cfg, tokenizer.vocab_size).discriminator
             if task is electra_task else
             bert_pretrain.bert_config_from(model_cfg, tokenizer.vocab_size))
    params = nn.unbox(bert.BertModel(shape).init(jax.random.PRNGKey(0),
                                                 jnp.zeros((1, 4), jnp.int32))["params"])
    hf = str(hf_bert.export(jax.tree_util.tree_map(np.asarray, params), shape, tmp_path / "hf",
                            with_heads=False, tokenizer=None))
    tl = str(convert.convert(hf, tmp_path / "tl", "hf_to_tl"))
    not_read = f"data.corpus={tmp_path / 'not_read.txt'}"
    for folder in (hf, tl):
        config = config_lib.load_config(spec + ":tiny", overrides + [not_read,
                                                                      f"init_from={folder}"])
        with pytest.raises(ValueError) as error:
            task.Task(config, str(tmp_path / "run"))
        assert str(error.value) == (
            f"init_from={folder} has no tokenizer (neither tokenizer.json nor vocab.txt): pass "
            "--config.data.tokenizer=PATH, the tokenizer its weights were trained with")
    config = config_lib.load_config(spec + ":tiny", tiny_bert_overrides + [f"init_from={hf}"])
    built = task.Task(config, str(tmp_path / "named"))
    assert built.tokenizer.hf_tokenizer.get_vocab() == tokenizer.hf_tokenizer.get_vocab()
    run = tmp_path / "resumed"
    (run / "checkpoints" / "5").mkdir(parents=True)  # a saved step: the run resumes
    tokenizer.save(str(run / "tokenizer"))
    config = config_lib.load_config(spec + ":tiny", overrides + [f"init_from={hf}"])
    built = task.Task(config, str(run))
    assert built.tokenizer.hf_tokenizer.get_vocab() == tokenizer.hf_tokenizer.get_vocab()

def test_model_size_may_name_a_directory_under_the_home_folder(tmp_path, monkeypatch):
    # `model.size=DIR` copies a checkpoint's architecture (MiniLM's 6 x 384); '~/...' failed as
    # "neither a tl_jax workdir ... nor a model size name".
    from tl_jax.tasks import bert_pretrain

    monkeypatch.setenv("HOME", str(tmp_path))
    _hf_bert_config_dir(tmp_path / "hf_bert", type_vocab_size=2)
    model_cfg = config_lib.load_config(ELECTRA.replace("electra_pretrain", "bert_pretrain")
                                       + ":tiny", ["model.size=~/hf_bert"]).model
    got = bert_pretrain.bert_config_from(model_cfg, 100)
    assert (got.num_layers, got.hidden_size, got.vocab_size) == (3, 48, 120)


def one_step(overrides):
    config = config_lib.load_config(ELECTRA + ":tiny", overrides)
    trainer = train.build_trainer(config, workdir=None)
    state = trainer.init_state(jax.random.PRNGKey(0))
    batch = parallel.host_batch_to_global(next(trainer.task.train_batches()), trainer.mesh)
    state, metrics = trainer.train_step(state, batch)
    params = jax.tree_util.tree_map(np.asarray, jax.device_get(state["params"]))
    return {k: float(s) / max(float(c), 1.0) for k, (s, c) in
            jax.device_get(metrics).items()}, params, state


def test_one_step_is_the_same_unsharded_and_sharded(tiny_bert_overrides):
    ref, ref_params, _ = one_step(tiny_bert_overrides + ["mesh.num_devices=1"])
    got, params, state = one_step(tiny_bert_overrides + ["mesh.data=2", "mesh.fsdp=2",
                                                         "mesh.tensor=2"])
    # Same samples (same replaced fraction), same losses, same updated weights.
    for key in ("loss", "mlm_loss", "disc_loss", "replaced_fraction", "disc_accuracy"):
        assert got[key] == pytest.approx(ref[key], rel=1e-5), key
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6), params, ref_params)
    kernel = state["params"]["bert"]["encoder"]["layer_0"]["attention"]["query"]["kernel"]
    assert "tensor" in str(kernel.sharding.spec)
    emb = state["params"]["bert"]["embeddings"]["word_embeddings"]["embedding"]
    assert "fsdp" in str(emb.sharding.spec)


@pytest.fixture(scope="module")
def trained(tiny_bert_overrides, tmp_path_factory):
    # Sampling at a high temperature (near-uniform replacements). At temperature 1 the generator
    # learns unigram frequencies within ~20 steps, and its samples are then frequent words that
    # only knowledge of the language can spot: a tiny discriminator sits at the prior for its
    # first ~150 steps (measured: held-out BCE 0.368 vs the prior's 0.376 at step 200). Flat
    # samples are rare words out of place, which it learns to spot within a few dozen steps.
    # On one device: learning does not depend on the mesh (the sharded step is checked to be
    # the one-device step above), and 8 fake devices on a few cores make each step slower.
    workdir = tmp_path_factory.mktemp("electra")
    config = config_lib.load_config(ELECTRA + ":tiny", tiny_bert_overrides + [
        "mesh.num_devices=1", "train.steps=60", "train.log_every=10", "train.eval_every=60",
        "train.checkpoint_every=60", "optimizer.warmup_steps=6", "optimizer.learning_rate=2e-3",
        "train.eval_batches=4", "electra.temperature=1000.0"])
    return train.train_and_evaluate(config, str(workdir)), workdir


def test_electra_declares_the_eval_metrics_an_eval_reports(trained):
    """`tasks.eval_metric_names` (what `tl_jax sweep --metrics=eval/...` is checked against
    before any run trains) is the task's declaration from the config: the run's eval reported
    exactly those names."""
    from tl_jax import tasks

    result, _ = trained
    reported = [k for k in result.summary if k.startswith("eval/")]
    assert sorted(reported) == sorted(tasks.eval_metric_names(result.trainer.config))


def test_a_tiny_run_on_real_text_learns_to_detect_replacements(trained):
    result, workdir = trained
    summary = result.summary
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if "loss" in x]
    assert train_lines[-1]["loss"] < train_lines[0]["loss"] - 5.0, train_lines
    assert train_lines[-1]["mlm_loss"] < train_lines[0]["mlm_loss"] - 0.3
    # Held-out, the discriminator beats every constant answer in log-loss: the best constant
    # (the replaced fraction r) scores the entropy H(r). Its accuracy is at least the
    # all-"original" baseline (with 1 token in 8 replaced, few probabilities pass 0.5 this early).
    r = summary["eval/replaced_fraction"]
    prior = -(r * np.log(r) + (1 - r) * np.log(1 - r))
    assert 0.05 < r < 0.2
    assert summary["eval/disc_loss"] < prior - 0.02, (summary, prior)
    assert summary["eval/disc_accuracy"] >= summary["eval/disc_baseline_accuracy"] - 1e-3
    assert summary["step"] == 60 and (workdir / "tokenizer" / "vocab.txt").exists()


def test_a_finished_workdir_warm_starts_the_classifier(trained, polarity_classifier_config,
                                                       capsys):
    _, workdir = trained
    config = polarity_classifier_config(workdir)
    trainer = train.build_trainer(config, workdir=None)
    shape = trainer.task.model_config  # read from the checkpoint's shapes
    assert (shape.num_layers, shape.hidden_size, shape.num_heads, shape.vocab_size) == (2, 128, 2,
                                                                                       2000)
    state = trainer.init_state(jax.random.PRNGKey(0))
    printed = capsys.readouterr().out
    assert "took 37 tensors" in printed and "bert/pooler" in printed
    from tl_jax import checkpoint
    source, _ = checkpoint.load_params_from_workdir(str(workdir))
    got = flat(jax.device_get(state["params"]))
    encoder = [n for n in source if n.startswith("bert/")]
    assert len(encoder) == 37
    for name in encoder:  # every discriminator tensor, and no generator's
        np.testing.assert_array_equal(got[name], source[name])
    assert not any(n.startswith("generator") for n in got)



def test_fill_mask_reads_the_generator_of_an_electra_workdir(trained, capsys):
    from tl_jax import fill_mask
    result, workdir = trained
    model = fill_mask.FillMask.from_workdir(str(workdir))
    assert model.model_config == result.trainer.task.model_config
    assert sorted(model.params) == ["bert", "generator"]  # no discriminator head
    assert "ELECTRA generator" in model.description
    batch = next(iter(result.trainer.task.eval_batches()))
    row = {k: v[:1] for k, v in batch.items()}
    got = np.asarray(model._apply(model.params, row["input_ids"], row["segment_ids"],
                                  row["input_mask"], row["masked_positions"]))
    params = jax.device_get(result.state["params"])
    want, _ = result.trainer.task.model.apply(
        {"params": params}, row["input_ids"], row["segment_ids"], row["input_mask"],
        row["masked_positions"], method=electra.ElectraForPreTraining.generate)
    np.testing.assert_allclose(got, np.asarray(want["mlm_logits"]), rtol=1e-5, atol=1e-5)
    predictions = model.predict("the [MASK] of the city", top_k=4)
    assert len(predictions) == 1 and len(predictions[0]) == 4


def test_small_has_the_papers_factorised_embeddings_shared_by_both_halves():
    """ELECTRA-Small: 12 x 256 over 128-wide embeddings, a 64-wide generator; both project the
    one shared table to their own width (as HF's two models do)."""
    config = electra.ElectraConfig.from_size("small", vocab_size=V)
    d, g = config.discriminator, config.generator
    assert (d.num_layers, d.hidden_size, d.num_heads, d.embedding_size) == (12, 256, 4, 128)
    assert (g.hidden_size, g.num_heads, g.embedding_width) == (64, 1, 128)
    # The released ELECTRA-Small checkpoint's generator is as wide as its discriminator
    # (generator size 1, unlike the paper's Table 6): generator_fraction=1 is that layout.
    g = electra.ElectraConfig.from_size("small", generator_fraction=1.0, vocab_size=V).generator
    assert (g.hidden_size, g.num_heads, g.intermediate_size, g.embedding_width) == \
        (256, 4, 1024, 128)
    assert electra.ElectraConfig.from_size("base").discriminator.embedding_size == 0
    # The same layout at a testable size: 2 layers, embeddings 12, discriminator 16, generator 8.
    config = electra.ElectraConfig.from_size("tiny", vocab_size=V, max_position_embeddings=16,
                                             hidden_size=16, num_heads=2, intermediate_size=20,
                                             embedding_size=12, dropout_rate=0.0,
                                             attention_dropout_rate=0.0)
    model = electra.ElectraForPreTraining(config)
    batch = toy_batch()
    shapes = flax.linen.unbox(jax.eval_shape(
        lambda k: model.init({"params": k, "dropout": k, "sample": k}, *inputs(batch)),
        jax.random.PRNGKey(0))["params"])
    names = {n: s.shape for n, s in flat(shapes).items()}
    assert names["bert/embeddings/word_embeddings/embedding"] == (V, 12)
    assert names["bert/embeddings_project/kernel"] == (12, 16)
    assert names["generator/embeddings_project/kernel"] == (12, 4)
    assert names["generator/mlm_head/transform/kernel"] == (4, 12)
    assert names["discriminator_head/dense/kernel"] == (16, 16)
    outputs, intermediates = jax.eval_shape(lambda p: model.apply(
        {"params": p}, *inputs(batch), rngs={"sample": jax.random.PRNGKey(1)}), shapes)
    assert outputs["mlm_hidden"].shape == (B, P, 12) and outputs["mlm_logits"].shape == (B, P, V)
    assert intermediates["embeddings"].shape == (B, L, 16)
    assert intermediates["generator_embeddings"].shape == (B, L, 4)
    # A generator as wide as the embeddings has no projection of its own.
    same = dataclasses.replace(config, generator_hidden_size=12, generator_num_heads=2,
                               generator_intermediate_size=12)
    assert not same.generator.factorised and same.discriminator.factorised
    # Through the training config: model.embedding_size overrides the size's.
    model_cfg = config_lib.load_config(ELECTRA + ":small").model
    assert electra_task.electra_config_from(model_cfg, V).discriminator.embedding_size == 128
    model_cfg.embedding_size = 256  # = hidden_size: no factorisation
    assert not electra_task.electra_config_from(model_cfg, V).discriminator.factorised


def test_a_factorised_step_trains_both_projections_and_the_shared_table(tiny_bert_overrides):
    config = config_lib.load_config(ELECTRA + ":tiny", tiny_bert_overrides + [
        "mesh.num_devices=1", "model.embedding_size=64"])
    trainer = train.build_trainer(config, workdir=None)
    state = trainer.init_state(jax.random.PRNGKey(0))
    before = flat(jax.tree_util.tree_map(np.asarray, jax.device_get(state["params"])))
    assert before["bert/embeddings/word_embeddings/embedding"].shape == (2000, 64)
    assert before["bert/embeddings_project/kernel"].shape == (64, 128)
    assert before["generator/embeddings_project/kernel"].shape == (64, 32)
    batch = parallel.host_batch_to_global(next(trainer.task.train_batches()), trainer.mesh)
    for _ in range(2):  # the warmup's first learning rate is 0
        state, metrics = trainer.train_step(state, batch)
    after = flat(jax.tree_util.tree_map(np.asarray, jax.device_get(state["params"])))
    assert all(np.isfinite(float(s)) for s, _ in jax.device_get(metrics).values())
    for name in ("bert/embeddings/word_embeddings/embedding", "bert/embeddings_project/kernel",
                 "generator/embeddings_project/kernel", "generator/mlm_head/transform/kernel"):
        assert not np.array_equal(after[name], before[name]), name


@pytest.mark.parametrize("size,mask_rate", [("small", 0.15), ("base", 0.15), ("large", 0.25)])
def test_paper_sizes_mask_as_the_paper_and_the_cap_does_not_cut_it(size, mask_rate):
    # ELECTRA-Large masks 25% (the paper's Table 6; configure_pretraining.py's mask_prob 0.25);
    # it was 15% with an 80-prediction cap, which would have cut 25% of 512 tokens anyway.
    data = config_lib.load_config(f"{ELECTRA}:{size}").data
    assert data.masked_lm_prob == mask_rate
    # A full-length sequence's picks (every non-special token: seq - 3) fit under the cap.
    picks = round((data.max_seq_length - 3) * data.masked_lm_prob)
    assert data.max_predictions_per_seq >= picks


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_replacements_are_sampled_from_the_generators_softmax_not_its_argmax(tiny, temperature):
    # With the MLM transform zeroed its LayerNorm outputs 0, so the generator's logits are its
    # output bias exactly: a known distribution to sample from at every masked position.
    config, _, params, batch = tiny
    model = electra.ElectraForPreTraining(config, temperature=temperature)
    probs = np.zeros(V)
    probs[[7, 20, 33]] = [0.6, 0.3, 0.1]
    params = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
    for name in list(params):
        if name[:2] == ("generator", "mlm_head") and name[2] in ("transform", "transform_norm"):
            params[name] = jnp.zeros_like(params[name])
    params[("generator", "mlm_head", "output_bias")] = jnp.log(jnp.asarray(probs, jnp.float32))
    params = flax.traverse_util.unflatten_dict(params)

    @jax.jit
    def samples(keys):
        return jax.vmap(lambda k: model.apply({"params": params}, *inputs(batch),
                                              rngs={"sample": k})[0]["sampled_ids"])(keys)

    n = 2000
    drawn = np.asarray(samples(jax.random.split(jax.random.PRNGKey(0), n)))  # (n, B, P)
    want = probs ** (1.0 / temperature)
    want /= want.sum()
    for b, p in [(0, 0), (1, 0), (1, 1)]:  # the real prediction slots
        freq = np.bincount(drawn[:, b, p], minlength=V) / n
        # 4 binomial standard deviations at most; argmax would put all mass on token 7.
        np.testing.assert_allclose(freq, want, atol=4 * np.sqrt(0.25 / n))

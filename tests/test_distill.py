"""DistilBERT-style distillation (tl_jax/tasks/distill.py) through the one trainer."""
import json
import pathlib
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_micro_batch_losses_sum_to_the_batch

from tl_jax import checkpoint, config as config_lib, train, warm_start
from tl_jax.data import sources
from tl_jax.data.tokenizer import Tokenizer
from tl_jax.interop import bert as hf_bert
from tl_jax.models import bert
from tl_jax.optim import masks
from tl_jax.tasks import distill

ROOT = pathlib.Path(__file__).resolve().parent.parent
DISTILL = str(ROOT / "configs" / "distill.py") + ":tiny"
CLASSIFY = str(ROOT / "configs" / "finetune_classify.py") + ":tiny"


def random_bert_dir(path, tokenizer, num_layers, hidden, *, with_heads=True, seed=0,
                    with_tokenizer=True):
    """A Hugging Face BERT directory with random weights. Its MLM output bias is large and
    random, so the teacher's distribution is peaked (a target a student has to learn).
    `with_tokenizer=False`: of `tokenizer`'s size, without its files."""
    config = bert.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden,
                             num_layers=num_layers, num_heads=2, intermediate_size=2 * hidden,
                             max_position_embeddings=64)
    ids = jnp.zeros((1, 8), jnp.int32)
    model = bert.BertForPreTraining(config) if with_heads else bert.BertModel(config)
    params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(seed), ids)["params"])
    params = jax.tree_util.tree_map(np.asarray, params)
    if with_heads:
        params["mlm_head"]["output_bias"] = 3.0 * np.random.default_rng(seed).standard_normal(
            tokenizer.vocab_size).astype(np.float32)
    hf_bert.export(params, config, path, with_heads=with_heads,
                   tokenizer=tokenizer if with_tokenizer else None)
    return str(path)


@pytest.fixture(scope="module")
def corpus(data_dir):
    return str(data_dir / "enwiki_sample.jsonl")


@pytest.fixture(scope="module")
def tokenizer(corpus):
    docs = sources.load_documents(corpus, text_field="text", group_field="title")[:60]
    return Tokenizer.train_wordpiece(docs, vocab_size=1000, lowercase=True)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tokenizer):
    return random_bert_dir(tmp_path_factory.mktemp("teacher"), tokenizer, num_layers=2, hidden=32)


def distill_config(teacher, corpus, *overrides):
    return config_lib.load_config(DISTILL, [
        f"init_from={teacher}", f"data.corpus={corpus}", "train.progress=False",
        "data.batch_size=8", "data.eval_batch_size=8", "train.eval_batches=1", *overrides])


@pytest.fixture(scope="module")
def run(tmp_path_factory, teacher_dir, corpus):
    """A tiny distillation, data-parallel over 2 devices, the student from scratch (copied
    from a random teacher it would already agree with it): the state before training, the eval
    metrics before and after, and the finished workdir."""
    workdir = str(tmp_path_factory.mktemp("distill"))
    config = distill_config(teacher_dir, corpus, "student.init=scratch", "train.steps=10",
                            "train.eval_every=10", "train.checkpoint_every=10",
                            "optimizer.learning_rate=3e-3", "mesh.num_devices=2")
    result = train.train_and_evaluate(config, workdir)
    initial = result.trainer.init_state(jax.random.PRNGKey(config.seed))
    before = train.evaluate(result.trainer, initial["params"], 0)
    return dict(result=result, initial=initial, before=before, workdir=workdir)


# -- student shape and initialisation ------------------------------------------------------------


def test_student_layers_default_to_every_other_layer_and_lists_are_checked():
    assert distill.student_layer_indices(12, 0) == [0, 2, 4, 6, 8, 10]
    assert distill.student_layer_indices(6, 3) == [0, 2, 4]
    assert distill.student_layer_indices(4, 0, "1,3") == [1, 3]
    with pytest.raises(ValueError, match="deeper than the teacher"):
        distill.student_layer_indices(4, 5)
    with pytest.raises(ValueError, match="outside the teacher's layers"):
        distill.student_layer_indices(4, 0, "1,4")
    with pytest.raises(ValueError, match="names 2 layers but student.num_layers=3"):
        distill.student_layer_indices(4, 3, "1,3")
    with pytest.raises(ValueError, match="increasing"):
        distill.student_layer_indices(4, 0, "3,1")


def test_student_takes_exactly_the_chosen_teacher_layers(teacher_dir, corpus):
    task = distill.Task(distill_config(teacher_dir, corpus, "student.layers=1"), None)
    batch = task.example_batch(1)
    params = nn.unbox(jax.jit(lambda r: task.init_variables(r, batch))(jax.random.PRNGKey(0))[
        "params"])
    params = jax.device_get(task.init_params(params, None))
    source = hf_bert.load_flat_params(teacher_dir)  # the teacher as written, bert/... paths
    flat = masks.flat_params(params)
    assert task.model_config.num_layers == 1
    for path, value in source.items():
        np.testing.assert_array_equal(flat["teacher/" + path], value)  # the teacher, untouched
        if "/layer_0/" in path:
            continue  # not in the student
        np.testing.assert_array_equal(flat[path.replace("/layer_1/", "/layer_0/")], value,
                                      err_msg=path)
    student = [p for p in flat if not p.startswith("teacher/")]
    assert len(student) == len([p for p in source if "/layer_0/" not in p])


def test_teacher_student_and_tokenizer_paths_may_name_home_or_environment_variables(
        teacher_dir, corpus, tokenizer, tmp_path, monkeypatch):
    # '~/...' and '$VAR/...' in init_from, student.init and data.tokenizer (the shell expands
    # neither after '='): distill used them as written ("init_from='~/teacher' does not exist").
    home = pathlib.Path(teacher_dir).parent
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TL_JAX_TEST_TEACHER", teacher_dir)
    student_dir = random_bert_dir(tmp_path / "student", tokenizer, num_layers=1, hidden=32,
                                  seed=1)
    monkeypatch.setenv("TL_JAX_TEST_STUDENT", student_dir)
    name = pathlib.Path(teacher_dir).name
    task = distill.Task(distill_config(f"~/{name}", corpus, "student.init=$TL_JAX_TEST_STUDENT",
                                       "data.tokenizer=$TL_JAX_TEST_TEACHER"), None)
    assert (task.init_from, task.student_init) == (teacher_dir, student_dir)
    batch = task.example_batch(1)
    params = nn.unbox(jax.jit(lambda r: task.init_variables(r, batch))(jax.random.PRNGKey(0))[
        "params"])
    flat = masks.flat_params(jax.device_get(task.init_params(params, None)))
    for path, value in hf_bert.load_flat_params(teacher_dir).items():
        np.testing.assert_array_equal(flat["teacher/" + path], value)
    for path, value in hf_bert.load_flat_params(student_dir).items():
        np.testing.assert_array_equal(flat[path], value)


# -- loss pieces --------------------------------------------------------------------------------


def test_soft_cross_entropy_is_t_squared_kl_with_the_known_gradient():
    rng = np.random.default_rng(0)
    s, t = rng.standard_normal((3, 7)) * 2, rng.standard_normal((3, 7)) * 2
    temp = 2.0

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    p, log_q = np.exp(log_softmax(t / temp)), log_softmax(s / temp)
    soft_ce = -(p * log_q).sum(-1)                       # the paper's soft cross-entropy
    entropy = -(p * np.log(p)).sum(-1)
    got = np.asarray(distill.soft_cross_entropy(jnp.asarray(s), jnp.asarray(t), temp))
    np.testing.assert_allclose(got, temp ** 2 * (soft_ce - entropy), rtol=1e-5)
    # d/ds T^2 KL = T (softmax(s/T) - softmax(t/T)): the same gradient as the soft CE.
    grad = jax.grad(lambda x: distill.soft_cross_entropy(x, jnp.asarray(t), temp).sum())(
        jnp.asarray(s))
    np.testing.assert_allclose(grad, temp * (np.exp(log_q) - p), rtol=1e-5, atol=1e-7)
    assert np.allclose(distill.soft_cross_entropy(jnp.asarray(t), jnp.asarray(t), temp), 0,
                       atol=1e-6)


def test_cosine_loss_counts_real_tokens_only():
    rng = np.random.default_rng(1)
    s, t = rng.standard_normal((2, 5, 4)), rng.standard_normal((2, 5, 4))
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    total, count = distill.cosine_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(mask))
    cos = (s * t).sum(-1) / np.linalg.norm(s, axis=-1) / np.linalg.norm(t, axis=-1)
    assert float(count) == 7
    np.testing.assert_allclose(float(total), (1 - cos)[mask > 0].sum(), rtol=1e-5)
    s2 = s.copy()
    s2[mask == 0] = -100.0  # padding: anything at all
    total2, _ = distill.cosine_loss(jnp.asarray(s2), jnp.asarray(t), jnp.asarray(mask))
    np.testing.assert_allclose(float(total2), float(total), rtol=1e-6)


@pytest.mark.parametrize("restrict", [True, False])
def test_micro_batch_losses_over_the_whole_batchs_counts_add_up_to_its_loss(restrict):
    # Gradient accumulation: each micro-batch divides by the whole batch's masked predictions
    # and real tokens (task.loss_normalizers), so the micro-batch losses (and their gradients)
    # sum to the whole batch's, though the micro-batches hold different counts of both. With
    # restrict_ce_to_mask=False the KL averages over real tokens: the logits cover every one.
    import ml_collections

    rng = np.random.default_rng(2)
    b, length, preds, vocab, hidden = 4, 6, 3, 7, 5
    mask = (np.arange(length)[None] < np.array([[6], [3], [5], [2]])).astype(np.int32)
    batch = dict(input_mask=mask, masked_ids=rng.integers(0, vocab, (b, preds)).astype(np.int32),
                 masked_positions=np.tile(np.arange(preds, dtype=np.int32), (b, 1)),
                 masked_weights=np.array([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 0, 0]],
                                         np.float32))
    logit_positions = preds if restrict else length
    student = dict(
        mlm_logits=jnp.asarray(rng.normal(size=(b, logit_positions, vocab)), jnp.float32),
        sequence_output=jnp.asarray(rng.normal(size=(b, length, hidden)), jnp.float32))
    teacher = dict(
        mlm_logits=jnp.asarray(rng.normal(size=(b, logit_positions, vocab)), jnp.float32),
        sequence_output=jnp.asarray(rng.normal(size=(b, length, hidden)), jnp.float32))
    cfg = ml_collections.ConfigDict(dict(temperature=2.0, alpha_ce=5.0, alpha_mlm=2.0,
                                         alpha_cos=1.0, restrict_ce_to_mask=restrict))

    def rows(tree, i):  # micro-batch i of 2, as the trainer splits (None: the whole batch)
        return tree if i is None else jax.tree.map(lambda x: x[i::2], tree)

    def loss(out, i, normalizers=None):
        return distill.distillation_loss(out, rows(teacher, i), rows(batch, i), cfg,
                                         normalizers)[0]

    assert {float(batch["masked_weights"][i::2].sum()) for i in range(2)} == {5.0, 2.0}
    assert_micro_batch_losses_sum_to_the_batch(loss, student,
                                               distill.distillation_normalizers(batch))


def test_the_kl_can_cover_every_real_token_as_the_reference_script_does_by_default():
    import ml_collections
    rng = np.random.default_rng(2)
    B, L, V = 2, 5, 7
    s, t = rng.standard_normal((B, L, V)) * 2, rng.standard_normal((B, L, V)) * 2
    t[0, 1] = s[0, 1]  # the student already matches the teacher at the masked positions...
    t[1, 3] = s[1, 3]
    batch = dict(input_mask=np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]),
                 masked_positions=np.array([[1, 0], [3, 0]]),  # slot 2: padding
                 masked_weights=np.array([[1.0, 0.0], [1.0, 0.0]]),
                 masked_ids=np.array([[4, 0], [2, 0]]))
    cfg = ml_collections.ConfigDict(dict(temperature=2.0, alpha_ce=5.0, alpha_mlm=2.0,
                                         alpha_cos=0.0, restrict_ce_to_mask=True))
    hidden = jnp.ones((B, L, 3))

    def outputs(logits, positions):
        picked = np.take_along_axis(logits, positions[..., None], axis=1) if positions is not None \
            else logits
        return dict(mlm_logits=jnp.asarray(picked), sequence_output=hidden)

    at_masks = distill.distillation_loss(outputs(s, batch["masked_positions"]),
                                         outputs(t, batch["masked_positions"]), batch, cfg)[1]
    assert float(at_masks["distill_loss"][0]) == pytest.approx(0.0, abs=1e-6)
    assert float(at_masks["distill_loss"][1]) == 2
    cfg.restrict_ce_to_mask = False
    loss, everywhere = distill.distillation_loss(outputs(s, None), outputs(t, None), batch, cfg)
    # ...but not elsewhere: with every real token in, the KL is the mean over the 8 of them.
    kl = np.asarray(distill.soft_cross_entropy(jnp.asarray(s), jnp.asarray(t), 2.0))
    assert float(everywhere["distill_loss"][1]) == 8
    np.testing.assert_allclose(float(everywhere["distill_loss"][0]),
                               kl[batch["input_mask"] > 0].sum(), rtol=1e-5)
    # The student's MLM loss and accuracy stay at the masked positions.
    for key in ("mlm_loss", "mlm_accuracy", "agreement"):
        np.testing.assert_allclose(np.asarray(everywhere[key]), np.asarray(at_masks[key]),
                                   rtol=1e-6)
    np.testing.assert_allclose(float(loss), 5.0 * kl[batch["input_mask"] > 0].mean()
                               + 2.0 * float(at_masks["mlm_loss"][0]) / 2, rtol=1e-5)


def test_the_reference_command_s_settings_kl_everywhere_and_frozen_positions(teacher_dir,
                                                                              corpus):
    config = distill_config(teacher_dir, corpus, "distill.restrict_ce_to_mask=False",
                            "distill.freeze_position_embeddings=True")
    trainer = train.build_trainer(config, None)
    # --freeze_pos_embs: the student's position table gets no update; the rest of it trains.
    mask = trainer.task.transfer_plan.optimizer_mask
    assert not mask["bert/embeddings/position_embeddings/embedding"]
    assert mask["bert/embeddings/word_embeddings/embedding"] and mask["mlm_head/output_bias"]
    params = jax.device_get(trainer.init_state(jax.random.PRNGKey(0))["params"])
    batch = next(iter(trainer.task.eval_batches()))
    everywhere = jax.device_get(trainer.task.loss_fn(params, batch, jax.random.PRNGKey(0),
                                                     False)[1])
    config.distill.restrict_ce_to_mask = True
    at_masks = jax.device_get(trainer.task.loss_fn(params, batch, jax.random.PRNGKey(0),
                                                   False)[1])
    assert float(everywhere["distill_loss"][1]) == batch["input_mask"].sum()
    assert float(at_masks["distill_loss"][1]) == batch["masked_weights"].sum()
    np.testing.assert_allclose(float(everywhere["mlm_loss"][0]), float(at_masks["mlm_loss"][0]),
                               rtol=1e-4)


# -- the run ------------------------------------------------------------------------------------


def test_distillation_declares_the_eval_metrics_an_eval_reports(run):
    """`tasks.eval_metric_names` (what `tl_jax sweep --metrics=eval/...` is checked against
    before any run trains) is the task's declaration from the config: an eval reports exactly
    those names, before training and at the end of the run."""
    from tl_jax import tasks

    declared = sorted(tasks.eval_metric_names(run["result"].trainer.config))
    assert sorted(run["before"]) == declared
    assert sorted(k for k in run["result"].summary if k.startswith("eval/")) == declared


def test_a_tiny_run_reduces_the_distillation_loss(run):
    before, after = run["before"], run["result"].summary
    assert after["step"] == 10
    assert after["eval/distill_loss"] < 0.85 * before["eval/distill_loss"], (before, after)
    assert after["eval/cos_loss"] < before["eval/cos_loss"]
    def total(m):  # the config's weights: 5 / 2 / 1
        return 5.0 * m["eval/distill_loss"] + 2.0 * m["eval/mlm_loss"] + m["eval/cos_loss"]
    assert total(after) < total(before)
    # The teacher is the same model before and after: its accuracy does not move.
    assert after["eval/teacher_mlm_accuracy"] == pytest.approx(
        before["eval/teacher_mlm_accuracy"])


def test_the_teacher_gets_no_gradient_no_optimizer_state_and_does_not_change(run):
    result, initial = run["result"], run["initial"]
    task = result.trainer.task
    params = jax.device_get(result.state["params"])
    teacher_paths = [p for p in masks.flat_params(params) if p.startswith("teacher/")]
    assert teacher_paths and not any(task.transfer_plan.optimizer_mask[p] for p in teacher_paths)
    opt_paths = [checkpoint.path_str(p) for p, _ in
                 jax.tree_util.tree_flatten_with_path(result.state["opt_state"])[0]]
    assert opt_paths and not any("teacher" in p for p in opt_paths)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params["teacher"],
                           jax.device_get(initial["params"]["teacher"]))
    # ... while the student moved.
    assert not np.array_equal(params["mlm_head"]["output_bias"],
                              np.asarray(initial["params"]["mlm_head"]["output_bias"]))
    # Differentiating the loss with respect to everything gives the teacher exactly zero.
    batch = next(iter(task.eval_batches()))
    grads = jax.jit(jax.grad(lambda p: task.loss_fn(p, batch, jax.random.PRNGKey(0), True)[0]))(
        params)
    assert all(not np.any(g) for g in jax.tree_util.tree_leaves(grads["teacher"]))
    assert any(np.any(g) for g in jax.tree_util.tree_leaves(grads["bert"]))


def test_the_finished_workdir_warm_starts_fine_tuning_with_the_student(run, tmp_path, capsys):
    workdir = run["workdir"]
    saved, _ = checkpoint.load_params_from_workdir(workdir)
    config = config_lib.load_config(CLASSIFY, [f"init_from={workdir}", "train.progress=False"])
    trainer = train.build_trainer(config, str(tmp_path / "ft"))
    assert trainer.task.encoder.model_config.num_layers == 1  # the student's depth, not 2
    params = masks.flat_params(jax.device_get(trainer.init_state(jax.random.PRNGKey(0))["params"]))
    encoder = [p for p in params if p.startswith("bert/")]
    assert encoder
    for path in encoder:
        np.testing.assert_array_equal(params[path], saved[path], err_msg=path)
    word = "bert/embeddings/word_embeddings/embedding"
    assert not np.array_equal(params[word], saved["teacher/" + word])

    # `tl_jax convert` exports the student (with its MLM head), not the teacher.
    from tl_jax.interop import convert
    capsys.readouterr()
    out = convert.convert(workdir, tmp_path / "hf", "tl_to_hf")
    said = capsys.readouterr().out
    # It said "its task head has no place in ... BertModel ...; `tl_jax predict` uses the
    # workdir": a distill run has no task head, and predict refuses it.
    assert "the student of a distill run; its frozen teacher is not exported" in said, said
    assert "task head" not in said and "predict" not in said, said
    hf_config = json.loads((out / "config.json").read_text())
    assert hf_config["num_hidden_layers"] == 1
    exported = hf_bert.load_flat_params(out)
    np.testing.assert_array_equal(exported["mlm_head/output_bias"], saved["mlm_head/output_bias"])


def test_a_distillation_workdir_gives_its_student_and_names_its_teacher_once(run, corpus,
                                                                             capsys):
    # As the teacher (init_from) and as the student (student.init), a distillation workdir
    # gives its student; its own teacher is left out in one line, not listed tensor by tensor
    # among "unused source tensors" (46 names for this 2-layer teacher).
    workdir = run["workdir"]
    saved, _ = checkpoint.load_params_from_workdir(workdir)
    task = distill.Task(distill_config(workdir, corpus, f"student.init={workdir}"), None)
    batch = task.example_batch(1)
    params = nn.unbox(jax.jit(lambda r: task.init_variables(r, batch))(jax.random.PRNGKey(0))[
        "params"])
    capsys.readouterr()
    flat = masks.flat_params(jax.device_get(task.init_params(params, None)))
    out = capsys.readouterr().out
    student = {p: v for p, v in saved.items() if not p.startswith("teacher/")}
    assert set(flat) == set(student) | {"teacher/" + p for p in student}
    for path, value in student.items():
        np.testing.assert_array_equal(flat["teacher/" + path], value, err_msg=path)
        np.testing.assert_array_equal(flat[path], value, err_msg=path)
    assert "unused source tensors" not in out and "source_teacher" not in out, out
    left = len(saved) - len(student)
    assert out.count(f"is a distillation run: its student is this run's teacher; its "
                     f"teacher ({left} tensors) is left behind.") == 1, out
    assert out.count("its student is this run's student") == 1, out


# -- errors -------------------------------------------------------------------------------------


def test_bad_set_ups_are_clear_errors(teacher_dir, corpus, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="distill needs a teacher"):
        train.build_trainer(distill_config("", corpus), None)
    with pytest.raises(warm_start.WarmStartError, match="does not exist"):
        train.build_trainer(distill_config(str(tmp_path / "nowhere"), corpus), None)
    with pytest.raises(ValueError, match="deeper than the teacher"):
        train.build_trainer(distill_config(teacher_dir, corpus, "student.num_layers=3"), None)

    # An empty directory, or a file, is not a model: said so, not a complaint about tokenizers.
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(warm_start.WarmStartError, match="init_from=.*empty.* is an empty directory"):
        train.build_trainer(distill_config(str(empty), corpus), None)
    with pytest.raises(warm_start.WarmStartError, match="student.init=.*empty.* is an empty dir"):
        train.build_trainer(distill_config(teacher_dir, corpus, f"student.init={empty}"), None)
    with pytest.raises(warm_start.WarmStartError, match="init_from=.* is neither a tl_jax workdir"):
        train.build_trainer(distill_config(corpus, corpus), None)

    other_vocab = tmp_path / "other_tokenizer"
    docs = sources.load_documents(corpus, text_field="text", group_field="title")[:60]
    other_tokenizer = Tokenizer.train_wordpiece(docs, vocab_size=500, lowercase=True)
    other_tokenizer.save(str(other_vocab))
    with pytest.raises(ValueError, match="not the teacher's vocabulary.*Leave data.tokenizer "
                                         "empty to use the teacher's"):
        train.build_trainer(distill_config(teacher_dir, corpus,
                                           f"data.tokenizer={other_vocab}"), None)
    # A student source of another vocabulary: the remedy is another student.init (the hint
    # about data.tokenizer, which was not set, sent the user to the wrong key).
    other_student = random_bert_dir(tmp_path / "other_student", other_tokenizer, num_layers=1,
                                    hidden=32)
    with pytest.raises(ValueError, match="student.init=.*not the teacher's vocabulary") as error:
        train.build_trainer(distill_config(teacher_dir, corpus, f"student.init={other_student}"),
                            None)
    assert "data.tokenizer" not in str(error.value)
    assert "Set student.init to a BERT of the teacher's vocabulary" in str(error.value)

    narrow = random_bert_dir(tmp_path / "narrow", tokenizer, num_layers=1, hidden=16)
    with pytest.raises(ValueError, match="16 wide .* the teacher is 32 wide"):
        train.build_trainer(distill_config(teacher_dir, corpus, f"student.init={narrow}"), None)

    headless = random_bert_dir(tmp_path / "headless", tokenizer, num_layers=1, hidden=32,
                               with_heads=False)
    with pytest.raises(warm_start.WarmStartError, match="has no MLM head"):
        train.build_trainer(distill_config(headless, corpus), None)


def test_a_teacher_or_student_without_a_tokenizer_names_the_key_that_gives_one(
        tokenizer, teacher_dir, corpus, tmp_path):
    """A teacher folder with weights but no tokenizer (a `tl_jax convert` of a Hugging Face
    folder that had none) failed with the tokenizer loader's "Directory X holds a model
    (config.json) but no tokenizer", naming neither init_from nor data.tokenizer, and
    data.tokenizer did not help: the teacher's tokenizer was read from init_from alone. A
    student.init without one is refused naming student.init (no key gives a student's
    vocabulary: it must be the teacher's)."""
    from tl_jax.interop import convert

    bare = random_bert_dir(tmp_path / "bare", tokenizer, num_layers=2, hidden=32,
                           with_tokenizer=False)
    converted = str(convert.convert(bare, tmp_path / "converted", "hf_to_tl"))
    for folder in (bare, converted):
        with pytest.raises(ValueError) as error:
            distill.Task(distill_config(folder, corpus), None)
        assert str(error.value) == (
            f"init_from={folder} has no tokenizer (neither tokenizer.json nor vocab.txt): pass "
            "--config.data.tokenizer=PATH, the tokenizer its weights were trained with")
    tokenizer.save(str(tmp_path / "vocabulary"))
    task = distill.Task(distill_config(bare, corpus, f"data.tokenizer={tmp_path / 'vocabulary'}"),
                        None)
    assert task.teacher_config.vocab_size == task.tokenizer.vocab_size == tokenizer.vocab_size

    student = random_bert_dir(tmp_path / "student", tokenizer, num_layers=1, hidden=32,
                              with_tokenizer=False)
    with pytest.raises(ValueError, match=rf"^student.init={student} has no tokenizer \(neither "
                                         r"tokenizer.json nor vocab.txt\) to show its vocabulary "
                                         r"is the teacher's: .* set student.init to teacher or "
                                         r"scratch$"):
        distill.Task(distill_config(teacher_dir, corpus, f"student.init={student}"), None)


@pytest.mark.parametrize("override,message", [
    ("distill.temperature=0.0", r"distill.temperature=0.0 must be a finite number > 0"),
    ("distill.temperature=-2.0", r"distill.temperature=-2.0 must be a finite number > 0"),
    ("distill.temperature=1e999", r"distill.temperature=inf must be a finite number > 0"),
    ("distill.alpha_ce=-5.0", r"distill.alpha_ce=-5.0 must be a finite number >= 0"),
    ("distill.alpha_cos=1e999", r"distill.alpha_cos=inf must be a finite number >= 0"),
])
def test_bad_loss_settings_are_refused_before_the_teacher_is_read(tmp_path, override, message):
    # Temperature 0 made every loss NaN after compiling; a negative weight trained the student
    # away from the teacher without a word.
    config = distill_config(str(tmp_path / "not_read"), "unused", override)
    with pytest.raises(ValueError, match=message):
        distill.Task(config, None)
    config.distill.temperature = float("nan")  # the Python API can set what the CLI cannot
    with pytest.raises(ValueError, match=r"distill.temperature=nan must be a finite number"):
        distill.Task(config, None)


def test_all_loss_weights_zero_is_refused(tmp_path):
    config = distill_config(str(tmp_path / "not_read"), "unused", "distill.alpha_ce=0.0",
                            "distill.alpha_mlm=0.0", "distill.alpha_cos=0.0")
    with pytest.raises(ValueError, match="all three .* are 0: nothing would train"):
        distill.Task(config, None)


def test_a_teacher_workdir_without_an_mlm_head_is_named_by_its_task(tmp_path, monkeypatch):
    # An ELECTRA run's encoder (the discriminator) has no MLM head; the refusal says what the
    # workdir is instead of guessing "a sentence-embedding or task model?".
    workdir = tmp_path / "electra_run"
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps({"task": "electra"}))
    shapes = {"bert/embeddings/word_embeddings/embedding": (100, 32),
              "generator_mlm_head/output_bias": (100,)}
    monkeypatch.setattr(checkpoint, "param_shapes_from_workdir", lambda _: (shapes, 3))
    with pytest.raises(warm_start.WarmStartError, match="no MLM head \\(an ELECTRA run") as e:
        distill.check_mlm_head(str(workdir), None)
    assert "sentence-embedding" not in str(e.value)
    # The command it suggests reads the workdir's tokenizer/, not the workdir (which has none).
    assert f"--config.data.tokenizer={workdir / 'tokenizer'} " in str(e.value)
    (workdir / "config.json").write_text(json.dumps({"task": "classify"}))
    with pytest.raises(warm_start.WarmStartError, match="no MLM head \\(a `classify` run\\)"):
        distill.check_mlm_head(str(workdir), None)


# -- resume -------------------------------------------------------------------------------------


def test_a_stopped_run_resumes_from_its_checkpoint_as_if_uninterrupted(teacher_dir, corpus,
                                                                      tmp_path, capsys):
    """Stopped after 3 of 6 steps and started again: the step count, the student, its optimizer
    state and the data position continue from the checkpoint, the teacher stays the teacher,
    and the end is bit-identical to an uninterrupted run (same devices). A constant learning
    rate: the 3-step run's schedule would otherwise differ from the 6-step one's."""
    common = ["train.log_every=1", "train.eval_every=0", "train.checkpoint_every=3",
              "optimizer.decay=constant", "optimizer.learning_rate=3e-3", "mesh.num_devices=2"]

    def config(steps):
        return distill_config(teacher_dir, corpus, *common, f"train.steps={steps}")

    full = train.train_and_evaluate(config(6), str(tmp_path / "full"))
    split = str(tmp_path / "split")
    first = train.train_and_evaluate(config(3), split)
    assert first.summary["step"] == 3
    saved = jax.device_get(first.state)

    # What the second start restores (the same call the trainer makes).
    trainer = train.build_trainer(config(6), split)
    checkpointer = checkpoint.Checkpointer(str(tmp_path / "split" / "checkpoints"))
    restored, data_state, _ = train.restore_or_init(trainer, checkpointer)
    checkpointer.close()
    restored = jax.device_get(restored)
    assert int(restored["step"]) == 3 and data_state is not None
    jax.tree_util.tree_map(np.testing.assert_array_equal, restored["params"], saved["params"])
    jax.tree_util.tree_map(np.testing.assert_array_equal, restored["opt_state"],
                           saved["opt_state"])
    capsys.readouterr()

    resumed = train.train_and_evaluate(config(6), split)
    assert "Resuming from step 3" in capsys.readouterr().out
    assert resumed.summary["step"] == 6
    rows = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    full_rows = [json.loads(x) for x in
                 (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in rows if "loss" in r}
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    assert losses == {r["step"]: r["loss"] for r in full_rows if "loss" in r}
    params = jax.device_get(resumed.state["params"])
    jax.tree_util.tree_map(np.testing.assert_array_equal, params,
                           jax.device_get(full.state["params"]))
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(resumed.state["opt_state"]),
                           jax.device_get(full.state["opt_state"]))
    # The teacher is still exactly the one in teacher_dir; the student trained on.
    flat = masks.flat_params(params)
    for path, value in hf_bert.load_flat_params(teacher_dir).items():
        np.testing.assert_array_equal(flat["teacher/" + path], value, err_msg=path)
    assert not np.array_equal(params["mlm_head"]["output_bias"],
                              saved["params"]["mlm_head"]["output_bias"])


@pytest.mark.parametrize("student", ["teacher", "directory"])
def test_a_stopped_run_resumes_after_its_teacher_directory_is_gone(teacher_dir, corpus,
                                                                   tokenizer, tmp_path, capsys,
                                                                   student):
    """The checkpoint holds the teacher; its shape (teacher_model.json) and vocabulary
    (tokenizer/) are saved beside it, so a resume does not read init_from: one gone stopped it
    with "init_from=... does not exist.", and one replaced by a model of another depth (the
    same student) with an error about optimizer settings or transfer rules. A new run still
    reads it. The same for a student.init directory (its shape: the checkpoint's resolved_model)."""
    teacher = tmp_path / "teacher"
    shutil.copytree(teacher_dir, teacher)
    workdir = str(tmp_path / "run")
    student_dir = tmp_path / "student"
    overrides = []
    if student == "directory":
        random_bert_dir(student_dir, tokenizer, num_layers=1, hidden=32, seed=2)
        overrides = [f"student.init={student_dir}"]

    def config(steps):
        return distill_config(str(teacher), corpus, f"train.steps={steps}",
                              "train.eval_every=0", "train.checkpoint_every=2", *overrides)

    train.train_and_evaluate(config(2), workdir)
    shutil.rmtree(teacher)
    if student == "directory":
        shutil.rmtree(student_dir)
    capsys.readouterr()
    resumed = train.train_and_evaluate(config(4), workdir)
    out = capsys.readouterr().out
    assert "Resuming from step 2" in out and f"init_from={teacher} is gone" in out, out
    assert (f"student.init={student_dir} is gone" in out) == (student == "directory"), out
    assert resumed.summary["step"] == 4
    random_bert_dir(teacher, tokenizer, num_layers=1, hidden=32, seed=1)  # another teacher
    resumed = train.train_and_evaluate(config(6), workdir)
    assert resumed.summary["step"] == 6
    flat = masks.flat_params(jax.device_get(resumed.state["params"]))
    for path, value in hf_bert.load_flat_params(teacher_dir).items():
        np.testing.assert_array_equal(flat["teacher/" + path], value, err_msg=path)
    shutil.rmtree(teacher)
    with pytest.raises(warm_start.WarmStartError, match="does not exist"):
        train.build_trainer(config(4), str(tmp_path / "new"))


def test_a_resume_with_other_frozen_position_embeddings_names_the_key(teacher_dir, corpus,
                                                                       tmp_path):
    # It decides what trains, so the optimizer state: the resume was refused asking whether the
    # run had "other optimizer.* settings or transfer rules", naming neither this key nor its
    # values. The checkpoint is kept.
    workdir = str(tmp_path / "run")

    def config(*overrides):
        return distill_config(teacher_dir, corpus, "train.steps=2", "train.eval_every=0",
                              "train.checkpoint_every=2", *overrides)

    train.train_and_evaluate(config(), workdir)
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"distill.freeze_position_embeddings: checkpoint has False, config "
                             r"has True"):
        train.train_and_evaluate(config("distill.freeze_position_embeddings=True",
                                        "train.steps=4"), workdir)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["2"]


# -- fill_mask ----------------------------------------------------------------------------------


def test_fill_mask_predicts_with_the_student_not_the_teacher(run, capsys):
    from tl_jax import fill_mask, main
    workdir, result = run["workdir"], run["result"]
    model = fill_mask.FillMask.from_workdir(workdir)
    assert model.model_config == result.trainer.task.model_config  # 1 layer, not the teacher's 2
    assert "teacher" not in model.params  # not even read from the checkpoint
    assert "distilled student" in model.description

    tok = model.tokenizer
    ids = np.asarray([[tok.cls_id] + tok.encode("the first") + [tok.mask_id, tok.sep_id]],
                     np.int32)
    positions = np.asarray([[ids.shape[1] - 2]], np.int32)
    got = np.asarray(model._apply(model.params, ids, np.zeros_like(ids), np.ones_like(ids),
                                  positions))
    params = jax.device_get(result.state["params"])
    task = result.trainer.task

    def logits(module, p):
        return np.asarray(module.apply({"params": p}, ids, np.zeros_like(ids), np.ones_like(ids),
                                       masked_positions=positions)[0]["mlm_logits"])
    np.testing.assert_allclose(
        got, logits(task.model, {k: v for k, v in params.items() if k != "teacher"}),
        rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, logits(task.teacher, params["teacher"]), atol=1e-3)

    capsys.readouterr()
    main.main(["fill_mask", f"--model={workdir}", "--text=the [MASK] of the [MASK]",
               "--top_k=3"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("[fill_mask] predicting with the distilled student of " + workdir)
    assert [line.split("\t")[1].split(":")[0] for line in out[1:]] == ["[MASK] 1", "[MASK] 2"]
    assert all(len(line.split(": ", 1)[1].split()) == 3 for line in out[1:])


def test_a_tl_weights_teacher_is_checked_for_an_mlm_head_from_its_header(tmp_path, monkeypatch):
    """tl_jax weights (`tl_jax convert`) are checked for an MLM head by their tensor names,
    read from the safetensors header: the whole folder was read (a BERT-large's 1.3 GB) just to
    list them."""
    from tl_jax.interop import convert, safetensors_io

    config = bert.BertConfig(vocab_size=30, hidden_size=8, num_layers=1, num_heads=2,
                             intermediate_size=16, max_position_embeddings=8)
    ids = jnp.zeros((1, 4), jnp.int32)
    with_head = nn.unbox(bert.BertForPreTraining(config).init(
        jax.random.PRNGKey(0), ids, None, None, masked_positions=jnp.zeros((1, 1), jnp.int32),
        deterministic=True)["params"])
    headless = nn.unbox(bert.BertModel(config).init(jax.random.PRNGKey(0), ids)["params"])
    convert.save_tl_params(tmp_path / "pretrained", config, with_head, "bert")
    convert.save_tl_params(tmp_path / "encoder", config, headless, "bert")

    def no_tensor_reads(*args, **kwargs):
        raise AssertionError("a tensor was read to list the names")

    monkeypatch.setattr(safetensors_io, "read_safetensors", no_tensor_reads)
    distill.check_mlm_head(str(tmp_path / "pretrained"), config)
    with pytest.raises(warm_start.WarmStartError, match="has no MLM head"):
        distill.check_mlm_head(str(tmp_path / "encoder"), config)


def test_a_hugging_face_teacher_is_checked_for_an_mlm_head_from_its_tensor_names(
        tokenizer, tmp_path, monkeypatch):
    """A Hugging Face BERT directory is checked for an MLM head from its tensor names: a
    safetensors file's header, or a sharded checkpoint's index. All its weights were read, and
    converted, just to list them. Only a pytorch_model.bin, which has no header, is still read
    whole."""
    import shutil

    import torch
    from safetensors.numpy import load_file

    from tl_jax.interop import safetensors_io

    pretrained = random_bert_dir(tmp_path / "pretrained", tokenizer, num_layers=1, hidden=16)
    headless = random_bert_dir(tmp_path / "headless", tokenizer, num_layers=1, hidden=16,
                               with_heads=False)
    config = hf_bert.read_hf_config(pretrained)

    # Sharded, its head named only by a TF-era name in the index: the names are the loader's,
    # after its renaming.
    sharded = tmp_path / "sharded"
    shutil.copytree(pretrained, sharded)
    tensors = load_file(str(sharded / "model.safetensors"))
    assert "cls.predictions.transform.LayerNorm.weight" in tensors
    (sharded / "model.safetensors").rename(sharded / "model-00001-of-00001.safetensors")
    head_only = {"cls.predictions.transform.LayerNorm.gamma"}
    weight_map = {name: "model-00001-of-00001.safetensors"
                  for name in tensors if not name.startswith("cls.")}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(dict(
        metadata={}, weight_map=dict(weight_map, **dict.fromkeys(
            head_only, "model-00001-of-00001.safetensors")))))
    sharded_headless = tmp_path / "sharded_headless"
    shutil.copytree(sharded, sharded_headless)
    (sharded_headless / "model.safetensors.index.json").write_text(json.dumps(dict(
        metadata={}, weight_map=weight_map)))

    def no_tensor_reads(*args, **kwargs):
        raise AssertionError("a tensor was read to list the names")

    monkeypatch.setattr(safetensors_io, "_read_safetensors", no_tensor_reads)
    monkeypatch.setattr(safetensors_io, "read_hf_tensors", no_tensor_reads)
    monkeypatch.setattr(hf_bert, "load_flat_params", no_tensor_reads)
    for with_head, without in ((pretrained, headless), (sharded, sharded_headless)):
        distill.check_mlm_head(str(with_head), config)
        with pytest.raises(warm_start.WarmStartError, match="has no MLM head") as e:
            distill.check_mlm_head(str(without), config)
        assert f"init_from={without} has no MLM head" in str(e.value)
    monkeypatch.undo()

    # A pytorch_model.bin: no header, so read whole (its tensors give the names).
    for source, name in ((pretrained, "torch"), (headless, "torch_headless")):
        shutil.copytree(source, tmp_path / name)
        weights = tmp_path / name / "model.safetensors"
        torch.save({k: torch.from_numpy(v) for k, v in load_file(str(weights)).items()},
                   str(tmp_path / name / "pytorch_model.bin"))
        weights.unlink()
    distill.check_mlm_head(str(tmp_path / "torch"), config)
    with pytest.raises(warm_start.WarmStartError, match="has no MLM head"):
        distill.check_mlm_head(str(tmp_path / "torch_headless"), config)

"""The trainer on BERT pretraining: sharding invariance, learning on real text, the CLI."""
import io
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from tl_jax import config as config_lib
from tl_jax import parallel, train

ROOT = pathlib.Path(__file__).resolve().parent.parent
BERT = str(ROOT / "configs" / "bert_pretrain.py")


def one_step(overrides, mesh_overrides):
    config = config_lib.load_config(BERT + ":tiny", overrides + mesh_overrides)
    trainer = train.build_trainer(config, workdir=None)
    state = trainer.init_state(jax.random.PRNGKey(0))
    batch = next(trainer.task.train_batches())
    gbatch = parallel.host_batch_to_global(batch, trainer.mesh)
    state, metrics = trainer.train_step(state, gbatch)
    params = jax.tree_util.tree_map(np.asarray, jax.device_get(state["params"]))
    return float(metrics["loss"][0]), params, state


def test_one_step_is_the_same_unsharded_and_on_every_mesh(tiny_bert_overrides):
    ref_loss, ref_params, _ = one_step(tiny_bert_overrides, ["mesh.num_devices=1"])
    # tiny has 2 heads: on a tensor axis of 2 each device holds one head (as mini's 4 heads on
    # a tensor axis of 4), so the tensor axis really splits them, without a second model size
    # and its own one-device reference to compile.
    for mesh in (["mesh.data=8"], ["mesh.data=4", "mesh.fsdp=2"],
                 ["mesh.data=4", "mesh.tensor=2"]):
        loss, params, state = one_step(tiny_bert_overrides, mesh)
        assert loss == pytest.approx(ref_loss, rel=1e-5), mesh
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6), params,
            ref_params)
        if "mesh.tensor=2" in mesh:
            kernel = state["params"]["bert"]["encoder"]["layer_0"]["attention"]["query"]["kernel"]
            assert "tensor" in str(kernel.sharding.spec)
        if "mesh.fsdp=2" in mesh:
            emb = state["params"]["bert"]["embeddings"]["word_embeddings"]["embedding"]
            assert "fsdp" in str(emb.sharding.spec)


def test_mixed_precision_step_runs_and_agrees_on_every_mesh(tiny_bert_overrides):
    # bf16 compute under sharding: the hand-written backward passes (row-major weight
    # gradients, the tied head) compile and run on each mesh, and the loss is the one-device one.
    # (Their gradient values are checked against float32 in test_layers / test_losses.)
    # tiny's 2 heads on a tensor axis of 2: one head per device, as in the float32 test.
    low = tiny_bert_overrides + ["model.dtype=bfloat16", "optimizer.warmup_steps=0"]
    ref_loss, ref_params, _ = one_step(low, ["mesh.num_devices=1"])
    for mesh in (["mesh.data=4", "mesh.fsdp=2"], ["mesh.data=4", "mesh.tensor=2"]):
        loss, params, _ = one_step(low, mesh)
        assert np.isfinite(loss) and loss == pytest.approx(ref_loss, rel=1e-2), mesh
        # Adam's first step moves every weight by about the learning rate (1e-3) either way.
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=2.5e-3), params,
            ref_params)


def test_train_step_applies_the_activation_constraints_whoever_calls_it(tiny_bert_overrides):
    # The models constrain activations by logical axis names. Those constraints only take effect
    # when the step is traced under the mesh, so the trainer's step must bring its own mesh
    # context, even when lowered outside any (as here).
    config = config_lib.load_config(BERT + ":tiny",
                                    tiny_bert_overrides + ["mesh.data=4", "mesh.fsdp=2"])
    trainer = train.build_trainer(config, workdir=None)
    batch = trainer.task.example_batch(int(config.data.batch_size))
    text = trainer.train_step.lower(trainer.abstract_state, batch).as_text()
    assert "sharding_constraint" in text or "@Sharding" in text


# Plain SGD at a learning rate of 1 without clipping or decay: one step moves each weight by
# exactly minus its gradient, so comparing weights compares gradients (Adam's first step would
# move each by about the learning rate whatever the gradient's scale).
SGD_STEP = ["mesh.num_devices=1", "model.dropout_rate=0.0", "optimizer.name=sgd",
            "optimizer.b1=0.0", "optimizer.learning_rate=1.0", "optimizer.warmup_steps=0",
            "optimizer.decay=constant", "optimizer.clip_norm=0.0", "optimizer.weight_decay=0.0"]
EXACT_STEP = SGD_STEP + ["model.attention_dropout_rate=0.0"]  # BERT-like models


def one_step_metrics(overrides, config_spec=BERT + ":tiny", edit=None):
    """One train step from the initial state, on the first training batch (changed in place by
    `edit` if given): (metrics as floats, params, the batch)."""
    config = config_lib.load_config(config_spec, overrides)
    trainer = train.build_trainer(config, workdir=None)
    state = trainer.init_state(jax.random.PRNGKey(0))
    batch = next(trainer.task.train_batches())
    if edit is not None:
        edit(batch)
    state, metrics = trainer.train_step(state, parallel.host_batch_to_global(batch, trainer.mesh))
    metrics = {k: (float(s), float(c)) for k, (s, c) in jax.device_get(metrics).items()}
    return metrics, jax.tree_util.tree_map(np.asarray, jax.device_get(state["params"])), batch


def assert_same_step(got, want):
    """Loss, every (sum, count) metric and every weight of one step, to float32 round-off."""
    (m_got, p_got), (m_want, p_want) = got, want
    for key in m_want:
        if key != "learning_rate":
            np.testing.assert_allclose(m_got[key], m_want[key], rtol=1e-5, atol=1e-6,
                                       err_msg=key)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), p_got, p_want)


def test_gradient_accumulation_is_exactly_one_big_batch(tiny_bert_overrides):
    # The MLM loss is a mean over masked predictions, and micro-batches hold different numbers
    # of them: the mean of their means is not the batch's. Each micro-batch's loss divides by
    # the whole batch's count instead (task.loss_normalizers) and the trainer adds them up.
    # At this tiny length every instance is full and has 4 predictions; with 128 tokens and
    # short_seq_prob the counts vary by sequence. Give the even rows one prediction each (as a
    # short sequence would have).
    def short_even_rows(batch):
        batch["masked_weights"][::2, 1:] = 0.0

    overrides = tiny_bert_overrides + EXACT_STEP
    whole, params, batch = one_step_metrics(overrides, edit=short_even_rows)
    for accum in (2, 4):
        # The trainer's micro-batch i is rows i, i + accum, ...
        counts = {float(batch["masked_weights"][i::accum].sum()) for i in range(accum)}
        assert len(counts) > 1, (accum, counts)
        got, got_params, _ = one_step_metrics(
            overrides + [f"optimizer.grad_accum_steps={accum}"], edit=short_even_rows)
        assert_same_step((got, got_params), (whole, params))
        # The counts too: the logged means are the whole batch's.
        assert got["mlm_loss"][1] == whole["mlm_loss"][1] == batch["masked_weights"].sum()


def test_gradient_accumulation_is_exactly_one_big_batch_for_tagging(tmp_path):
    # Tagging averages over labelled first sub-words: as many as the sentences have words, so
    # micro-batches of sentences of different lengths hold different counts.
    words = "emma smiled at mr knightley in highbury before the ball began".split()
    conll = tmp_path / "train.conll"
    conll.write_text("".join(
        "".join(f"{w} {'B-PER' if w in ('emma', 'knightley') else 'O'}\n"
                for w in words[:1 + (3 * i) % len(words)]) + "\n" for i in range(32)))
    overrides = EXACT_STEP + [f"data.train_file={conll}", f"data.eval_file={conll}",
                              "data.max_seq_length=16", "data.batch_size=16",
                              "model.classifier_dropout=0.0", "train.progress=False"]
    spec = str(ROOT / "configs" / "finetune_tag.py") + ":tiny"
    whole, params, batch = one_step_metrics(overrides, spec)
    labelled = (batch["labels"] != -100) & (batch["input_mask"] > 0)
    for accum in (2, 4):
        assert len({int(labelled[i::accum].sum()) for i in range(accum)}) > 1, accum
        got, got_params, _ = one_step_metrics(overrides + [f"optimizer.grad_accum_steps={accum}"],
                                              spec)
        assert_same_step((got, got_params), (whole, params))


def test_gradient_accumulation_is_exactly_one_big_batch_for_language_models(data_dir):
    # The biLM averages over predicted tokens, as many as its sentences have words (tiny's
    # 16-word windows are all full: row 0 gets a short sentence); the GPT LM's packed windows
    # are full but for the corpus's last one (given here to row 0).
    def short_sentence(batch):
        batch["mask"][0, 5:] = 0

    def last_window(batch):
        batch["weights"][0, 4:] = 0.0

    for spec, overrides, weights, edit in [
            (ROOT / "configs" / "elmo_pretrain.py", ["data.max_units=300"],
             lambda b: b["mask"][:, 1:], short_sentence),
            (ROOT / "configs" / "gpt_pretrain.py",
             ["data.max_documents=40", "data.tokenizer_vocab_size=300", "data.seq_len=32",
              "model.attention_dropout_rate=0.0"],
             lambda b: b["weights"], last_window)]:
        spec = f"{spec}:tiny"
        overrides = SGD_STEP + overrides + ["train.progress=False"]
        whole, params, batch = one_step_metrics(overrides, spec, edit)
        assert len({float(weights(batch)[i::2].sum()) for i in range(2)}) > 1, spec
        got, got_params, _ = one_step_metrics(overrides + ["optimizer.grad_accum_steps=2"], spec,
                                              edit)
        assert_same_step((got, got_params), (whole, params))


def test_a_few_hundred_steps_on_real_text_learn(tiny_bert_overrides, tmp_path):
    # On one device: learning does not depend on the mesh (the sharded step is checked to be
    # the one-device step above), and 8 fake devices on a few cores make each step slower.
    config = config_lib.load_config(BERT + ":tiny", tiny_bert_overrides + [
        "mesh.num_devices=1", "train.steps=300", "train.log_every=25", "train.eval_every=300",
        "train.checkpoint_every=300", "optimizer.warmup_steps=30",
        "optimizer.learning_rate=2e-3"])
    result = train.train_and_evaluate(config, str(tmp_path))
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    mlm = [x["mlm_loss"] for x in lines if "mlm_loss" in x]
    assert mlm[0] > 7.0  # ~ln(2000) at init
    # From uniform over the vocabulary to (at least) the unigram distribution: more than a nat,
    # and held-out accuracy ~100x chance (1/2000).
    assert mlm[-1] < mlm[0] - 1.0, mlm
    assert result.summary["eval/mlm_accuracy"] > 0.03
    assert result.summary["step"] == 300
    assert (tmp_path / "tokenizer" / "vocab.txt").exists()
    assert list((tmp_path / "tensorboard").iterdir())
    assert {"step", "loss", "learning_rate", "grad_norm", "tokens_per_sec", "mfu"} <= set(lines[-2])


def test_cli_reports_unknown_config_key_before_doing_anything(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "tl_jax.main", "train", f"--config={BERT}:tiny",
         f"--workdir={tmp_path}", "--config.optimizer.lr=1e-3"],
        capture_output=True, text=True, cwd=ROOT)
    assert out.returncode != 0
    assert "Unknown config key 'optimizer.lr'" in out.stderr
    assert "learning_rate" in out.stderr
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("override,message", [
    ("data.max_seq_length=600", "max_position_embeddings"),
    ("mesh.data=3", "multiply to"),
    # Not at the first eval, after train.eval_every steps, in a JAX IndivisibleError.
    ("data.eval_batch_size=12", r"data.eval_batch_size=12 is not divisible by the 8 "
                                "data-parallel shards"),
    # The error names the config keys (it said "Global batch size 12").
    ("data.batch_size=12", r"data.batch_size=12 is not divisible by the 8 data-parallel shards"),
    ("optimizer.grad_accum_steps=4", r"data.batch_size=16 / optimizer.grad_accum_steps=4 is not "
                                     "divisible by the 8 data-parallel shards"),
    # Was "data.batch_size=16 must be a multiple of optimizer.grad_accum_steps=0".
    ("optimizer.grad_accum_steps=0", r"optimizer.grad_accum_steps=0 must be >= 1"),
    ("model.vocab_size=100", "smaller than the tokenizer"),
    ("data.corpus=/nonexistent/*.txt", "nonexistent"),
    ("train.log_every=0", r"train.log_every=0 must be an integer >= 1"),
    ("train.checkpoint_every=0", r"train.checkpoint_every=0 must be an integer >= 1"),
    ("train.keep_checkpoints=0", r"train.keep_checkpoints=0 must be an integer >= 1"),
    ("train.steps=-5", r"train.steps=-5 must be an integer >= 0"),
    ("train.eval_every=-1", r"train.eval_every=-1 must be an integer >= 0"),
    ("train.best_mode='maximum'", "expected 'max' or 'min'"),
    # Was a ZeroDivisionError in the MFU at the first logged window, after compiling.
    ("train.peak_flops=0", r"train.peak_flops=0.0 must be a positive number"),
    ("train.peak_flops=-1e9", r"train.peak_flops=-1000000000.0 must be a positive number"),
])
def test_bad_setups_fail_before_compiling(tiny_bert_overrides, override, message):
    config = config_lib.load_config(BERT + ":tiny", tiny_bert_overrides + [override])
    with pytest.raises(Exception, match=message):
        train.build_trainer(config, workdir=None)


def test_bad_model_size_fails_before_the_corpus_is_read(tiny_bert_overrides, tmp_path):
    # The corpus does not exist: reading it (and training a tokenizer) would fail first.
    config = config_lib.load_config(BERT + ":tiny", tiny_bert_overrides + [
        f"data.corpus={tmp_path / 'unread.txt'}", "model.size='mini2'"])
    with pytest.raises(ValueError, match="'mini2' is neither a tl_jax workdir"):
        train.build_trainer(config, workdir=None)


@pytest.mark.parametrize("override, message", [
    ("train.on_nonfinite='skp'", r"train.on_nonfinite='skp'; expected 'stop' or 'skip'"),
    ("train.best_mode='mx'", r"train.best_mode='mx'; expected 'max' or 'min'"),
])
def test_a_misspelt_train_choice_fails_before_the_corpus_is_read(tiny_bert_overrides, tmp_path,
                                                                 override, message):
    # train.on_nonfinite was checked when the train step was built, after the corpus was read
    # and tokenised (here it does not exist: reading it would fail first).
    config = config_lib.load_config(BERT + ":tiny", tiny_bert_overrides + [
        f"data.corpus={tmp_path / 'unread.txt'}", override])
    with pytest.raises(ValueError, match=message):
        train.build_trainer(config, workdir=None)


def test_a_workdir_that_is_a_file_is_named_as_such(tmp_path, monkeypatch):
    # os.makedirs said only "[Errno 17] File exists: 'few.jsonl'".
    path = tmp_path / "few.jsonl"
    path.write_text("{}\n")
    monkeypatch.setattr(train, "build_trainer", lambda *a: pytest.fail("built a trainer"))
    config = config_lib.load_config(BERT + ":tiny")
    with pytest.raises(ValueError, match=rf"^--workdir={path} is a file, not a folder"):
        train.train_and_evaluate(config, str(path))
    assert path.read_text() == "{}\n"


def test_empty_corpus_is_a_clear_error(tiny_bert_overrides, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    config = config_lib.load_config(BERT + ":tiny", tiny_bert_overrides + [f"data.corpus={empty}"])
    with pytest.raises(ValueError, match="empty"):
        train.build_trainer(config, workdir=None)


def test_a_workdir_of_another_task_is_refused_before_anything_is_read(tmp_path, monkeypatch):
    """Checked by train_and_evaluate, not only `tl_jax train`: a sweep or a script given a GPT
    workdir for a BERT config failed on its tokenizer, as if data.tokenizer were wrong."""
    (tmp_path / "config.json").write_text(json.dumps({"task": "clm", "model": {}}))
    monkeypatch.setattr(train, "build_trainer", lambda *a: pytest.fail("built a trainer"))
    config = config_lib.load_config(BERT + ":tiny")
    with pytest.raises(ValueError) as e:
        train.train_and_evaluate(config, str(tmp_path))
    assert str(e.value) == (
        f"--workdir={tmp_path} holds a run of task `clm` ({tmp_path / 'config.json'}); this "
        f"config's task is `bert_pretrain`. Use a new workdir (with --config.init_from={tmp_path} "
        "to start from its weights); the workdir is left as it is.")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_evaluation_shows_a_bar_unless_train_progress_is_off(tiny_bert_overrides, tmp_path,
                                                           capsys):
    """An evaluation ran with no output while the training bar stood still: 150 s per eval of
    the 1,000 food reviews (finetune_classify.py:scratch) on a shared laptop CPU. It now has a
    bar of its own (`eval`, cleared when done; off a terminal, as here, its lines);
    train.progress=False shows none."""
    for progress in (True, False):
        config = config_lib.load_config(BERT + ":tiny", tiny_bert_overrides + [
            "train.steps=0", f"train.progress={progress}"])
        capsys.readouterr()
        train.train_and_evaluate(config, str(tmp_path / str(progress)))
        assert ("[eval] batch 2/2 (100%) | done in " in capsys.readouterr().err) == progress


def test_a_pretraining_eval_bar_has_a_total_when_the_pass_is_bounded(tiny_bert_overrides,
                                                                    capsys):
    """The eval bar of a pretraining task had no total (counts and rate, no ETA): its batches
    came from a stream, not from `eval_arrays`. BERT's masked pairs are still a stream of
    unknown length, but train.eval_batches bounds the pass; the biLM's batches are a list,
    whose length is the pass's. (Off a terminal, as here, the bar is lines: the total is in
    the last.)"""

    config = config_lib.load_config(BERT + ":tiny", tiny_bert_overrides + [
        "train.eval_batches=2", "mesh.num_devices=1"])
    trainer = train.build_trainer(config, workdir=None)
    params = trainer.init_state(jax.random.PRNGKey(0))["params"]
    capsys.readouterr()
    train.eval_pass(trainer, params, limit=2, progress=True, desc="eval")
    assert "[eval] batch 2/2 (100%) | done in " in capsys.readouterr().err

    config = config_lib.load_config(str(ROOT / "configs" / "elmo_pretrain.py") + ":tiny", [
        "data.max_units=300", "train.eval_batches=0", "mesh.num_devices=1"])
    trainer = train.build_trainer(config, workdir=None)
    params = trainer.init_state(jax.random.PRNGKey(0))["params"]
    n = len(trainer.task.eval_batches())
    capsys.readouterr()
    train.eval_pass(trainer, params, progress=True, desc="eval")
    assert f"[eval] batch {n}/{n} (100%) | done in " in capsys.readouterr().err


def test_a_run_logged_to_a_file_shows_step_and_eval_lines(tiny_bert_overrides, tmp_path,
                                                          capsys, monkeypatch):
    """Off a terminal (`nohup ... > log 2>&1`, CI, here capsys) tqdm's redraws made one long
    line of carriage returns, with the loss and tokens/s only in the bar's postfix: the run
    now prints plain lines with them (here one per step: TL_JAX_PROGRESS_SECONDS=0), each
    eval's results on a line of their own, and a last line; train.progress=False none."""
    import re

    monkeypatch.setenv("TL_JAX_PROGRESS_SECONDS", "0")
    for progress in (True, False):
        config = config_lib.load_config(BERT + ":tiny", tiny_bert_overrides + [
            "mesh.num_devices=1", "train.steps=3", "train.log_every=1", "train.eval_every=2",
            f"train.progress={progress}"])
        capsys.readouterr()
        train.train_and_evaluate(config, str(tmp_path / str(progress)))
        out, err = capsys.readouterr()
        if not progress:
            assert err == "" and "[eval] step" not in out
            continue
        assert "\r" not in err + out and err.endswith("\n")
        steps = [line for line in err.splitlines() if line.startswith("[bert_pretrain] ")]
        number = r"[\d.e+-]+"
        for i, line in enumerate(steps[:3], 1):
            assert re.fullmatch(rf"\[bert_pretrain\] step {i}/3 \({100 * i // 3}%\) "
                                rf".*loss={number}.* \| .* elapsed, ~.* left", line), line
        assert "tok/s=" in steps[2]  # measured from the second step on
        assert re.fullmatch(r"\[bert_pretrain\] step 3/3 \(100%\) .*loss=.* tok/s=[\d,]+ "
                            r"\| done in .*", steps[3]) and len(steps) == 4
        # The eval passes' own lines, and their results as lines of their own.
        assert sum(line.startswith("[eval] batch 2/2 (100%) | done in ")
                   for line in err.splitlines()) == 2
        evals = [line for line in out.splitlines() if line.startswith("[eval] step ")]
        assert [line.split(":")[0] for line in evals] == ["[eval] step 2", "[eval] step 3"]
        assert re.search(r"eval/mlm_loss=\d+\.\d{4}", evals[0])


def test_a_failing_final_save_ends_the_progress_output_saying_so(tiny_bert_overrides, tmp_path,
                                                                capsys, monkeypatch):
    """The final save, finished as the trainer closes the checkpointer (an asynchronous one
    still in flight), can fail (a full disk). Its bar was then never closed: a log had no
    closing line (its last progress line up to $TL_JAX_PROGRESS_SECONDS old, here none at all),
    and on a terminal the error started on the bar's line. Now the log's last line says the
    run was stopped by the failed save, never "done"; a terminal's bar ends its line."""
    import os

    from tl_jax import checkpoint as ckpt_lib

    real_close = ckpt_lib.Checkpointer.close

    def failing_close(self):
        real_close(self)
        raise self._write_failed(OSError(28, "No space left on device"))

    monkeypatch.setattr(ckpt_lib.Checkpointer, "close", failing_close)
    monkeypatch.setenv("TL_JAX_PROGRESS_SECONDS", "3600")  # only the closing line
    config = config_lib.load_config(BERT + ":tiny", tiny_bert_overrides + [
        "mesh.num_devices=1", "train.steps=2", "train.eval_every=0", "train.progress=True"])
    with pytest.raises(ckpt_lib.CheckpointError, match="No space left on device"):
        train.train_and_evaluate(config, str(tmp_path / "log"))
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("[bert_pretrain]")]
    assert len(lines) == 1 and lines[0].startswith("[bert_pretrain] step 2/2 (100%) "), lines
    assert " | stopped by CheckpointError after " in lines[0]

    class Terminal(io.StringIO):  # stderr on a terminal: tqdm's bar
        def isatty(self):
            return True

        def fileno(self):
            return 2

    monkeypatch.setattr(sys, "stderr", terminal := Terminal())
    monkeypatch.setattr(os, "get_terminal_size", lambda fd=None: os.terminal_size((80, 24)))
    # Held as an uncaught error's traceback is while it prints (freed, tqdm's bar closes
    # itself, too late: after the error).
    with pytest.raises(ckpt_lib.CheckpointError, match="No space left on device") as error:
        train.train_and_evaluate(config, str(tmp_path / "terminal"))
    drawn = terminal.getvalue()
    assert error.traceback  # (still held)
    last_drawn = drawn[drawn.rindex("\rbert_pretrain:"):]
    # Left drawn at the step reached, and its line ended.
    assert last_drawn.startswith("\rbert_pretrain: 100%|") and "\n" in last_drawn, last_drawn


def test_zero_steps_in_a_new_workdir_evaluates_the_initial_model_and_says_so(
        tiny_bert_overrides, tmp_path, capsys):
    config = config_lib.load_config(BERT + ":tiny", tiny_bert_overrides + [
        "train.steps=0", "train.eval_every=1"])
    result = train.train_and_evaluate(config, str(tmp_path))
    out = capsys.readouterr().out
    assert "restored" not in out
    assert "train.steps=0: nothing to train; evaluating the initial model (randomly " in out
    assert result.summary["step"] == 0 and "eval/mlm_accuracy" in result.summary
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]


def test_an_mfu_above_100_percent_says_peak_flops_is_too_low_once(tiny_bert_overrides, tmp_path,
                                                                  capsys):
    # The configs' peak_flops is a CPU estimate: a faster CPU printed "MFU 132.6%", unexplained.
    outs = {}
    for peak in ("1.0", "1e30"):
        config = config_lib.load_config(BERT + ":tiny", tiny_bert_overrides + [
            "train.steps=4", "train.log_every=1", "train.eval_every=0",
            f"train.peak_flops={peak}"])
        train.train_and_evaluate(config, str(tmp_path / peak))
        outs[peak] = capsys.readouterr().out
    assert outs["1.0"].count("[train] Note: MFU ") == 1, outs["1.0"]
    assert ("% is above 100%: train.peak_flops=1 FLOP/s per device is below what this device "
            "does; set it to the device's peak for a meaningful MFU") in outs["1.0"]
    assert "[train] Note: MFU" not in outs["1e30"]


def test_throughput_leaves_out_checkpoint_saves(tiny_bert_overrides, tmp_path, monkeypatch):
    """tokens/s and MFU time the training steps: like an eval, a checkpoint save (here one that
    takes 2 s) between two logging windows is not counted in the next one."""
    from tl_jax import checkpoint as ckpt_lib
    import time as time_lib

    original = ckpt_lib.Checkpointer.save

    def slow_save(self, *args, **kwargs):
        original(self, *args, **kwargs)
        time_lib.sleep(2.0)

    monkeypatch.setattr(ckpt_lib.Checkpointer, "save", slow_save)
    config = config_lib.load_config(BERT + ":tiny", tiny_bert_overrides + [
        "mesh.num_devices=1", "train.steps=3", "train.log_every=1", "train.eval_every=0",
        "train.checkpoint_every=1", "train.async_checkpoint=False"])
    result = train.train_and_evaluate(config, str(tmp_path))
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rates = [x["steps_per_sec"] for x in lines if "steps_per_sec" in x]
    assert len(rates) == 2 and min(rates) > 1.0, rates  # a tiny step takes well under 1 s
    tokens_per_step = 16 * 32
    assert result.summary["tokens_per_sec"] > tokens_per_step


def test_logged_learning_rate_is_the_rows_step_not_the_windows_mean(tiny_bert_overrides,
                                                                     tmp_path):
    # Warm-up over 8 steps, a row every 4: step 4's row holds the rate of update 4 (index 3).
    config = config_lib.load_config(BERT + ":tiny", tiny_bert_overrides + [
        "mesh.num_devices=1", "train.steps=4", "train.log_every=4", "train.eval_every=0",
        "train.checkpoint_every=4", "optimizer.warmup_steps=8", "optimizer.learning_rate=1e-3"])
    result = train.train_and_evaluate(config, str(tmp_path))
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    row = [x for x in lines if x["step"] == 4 and "learning_rate" in x][-1]
    schedule = result.trainer.schedule
    assert row["learning_rate"] == pytest.approx(float(schedule(3)))
    assert float(schedule(3)) > float(schedule(2))  # so a window mean would differ


def test_logged_learning_rate_is_the_optimizers_after_a_skipped_step(tiny_bert_overrides,
                                                                     tmp_path, monkeypatch):
    """A step skipped under on_nonfinite=skip leaves the optimizer's count (and so its place in
    the schedule) where it was: the logged rate follows the optimizer, not the trainer's step."""
    from conftest import nan_loss_at_batch

    nan_loss_at_batch(monkeypatch, 3)  # step 3's loss is NaN
    config = config_lib.load_config(BERT + ":tiny", tiny_bert_overrides + [
        "mesh.num_devices=1", "train.steps=5", "train.log_every=1", "train.eval_every=0",
        "train.checkpoint_every=5", "optimizer.warmup_steps=8", "optimizer.learning_rate=1e-3",
        "train.on_nonfinite=skip"])
    result = train.train_and_evaluate(config, str(tmp_path))
    assert result.summary["skipped_steps"] == 1
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rates = {x["step"]: x["learning_rate"] for x in rows if "learning_rate" in x}
    schedule = result.trainer.schedule
    # Updates 0 and 1 at steps 1 and 2; step 3 applies none (its row: update 1's rate again);
    # steps 4 and 5 apply updates 2 and 3.
    expected = {1: 0, 2: 1, 3: 1, 4: 2, 5: 3}
    for step, update in expected.items():
        assert rates[step] == pytest.approx(float(schedule(update))), (step, rates)
    assert train.optimizer_count(result.state["opt_state"], default=-1) == 4


def test_a_metric_nothing_counted_towards_is_nan_not_zero():
    steps = [dict(loss=(np.float32(2.0), np.float32(1.0)), mlm_loss=(0.0, 0.0),
                  accuracy=(np.float32(1.0), np.float32(4.0)), nonfinite_steps=(1.0, 0.0)),
             dict(loss=(np.float32(4.0), np.float32(1.0)), mlm_loss=(0.0, 0.0),
                  accuracy=(np.float32(2.0), np.float32(4.0)), nonfinite_steps=(1.0, 0.0))]
    means = train.average(steps)
    assert means["loss"] == 3.0 and means["accuracy"] == 3.0 / 8
    assert np.isnan(means["mlm_loss"])  # was 0.0: a "perfect" loss
    assert means["nonfinite_steps"] == 2.0  # a total, summed
    assert train.empty_metrics(steps) == ["mlm_loss"]


def test_a_non_finite_stop_keeps_the_checkpoint_still_being_written(tiny_bert_overrides,
                                                                   tmp_path):
    """`train.on_nonfinite=stop` says the last checkpoint before the divergence is intact. It
    was still being written in the background when the error left the loop, and the
    interpreter shut down under it: a `1.orbax-checkpoint-tmp` folder (deleted at the next
    start) and "cannot schedule new futures after interpreter shutdown", no step 1 to resume."""
    overrides = tiny_bert_overrides + [
        "train.steps=10", "train.eval_every=0", "train.log_every=1", "train.checkpoint_every=1",
        "train.async_checkpoint=True", "optimizer.learning_rate=1e9", "optimizer.clip_norm=0.0",
        "optimizer.warmup_steps=0"]
    out = subprocess.run(
        [sys.executable, "-m", "tl_jax.main", "train", f"--config={BERT}:tiny",
         f"--workdir={tmp_path}"] + [f"--config.{o}" for o in overrides],
        capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "Non-finite loss at step 2" in out.stderr
    assert "cannot schedule new futures" not in out.stdout + out.stderr
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]


@pytest.mark.parametrize("held_out", ["0.1", "0"])
def test_bert_pretraining_declares_the_eval_metrics_an_eval_reports(tiny_bert_overrides,
                                                                     tmp_path, held_out):
    """`tasks.eval_metric_names` (what `tl_jax sweep --metrics=eval/...` is checked against
    before any run trains) is the task's declaration from the config: an eval reports exactly
    those names (none when data.eval_fraction=0 holds nothing out)."""
    from tl_jax import tasks

    config = config_lib.load_config(BERT + ":tiny", tiny_bert_overrides + [
        "mesh.num_devices=1", f"data.eval_fraction={held_out}"])
    trainer = train.build_trainer(config, str(tmp_path))
    params = trainer.init_state(jax.random.PRNGKey(0))["params"]
    reported = train.evaluate(trainer, params, 0)
    assert sorted(reported) == sorted(tasks.eval_metric_names(config))
    assert bool(reported) == (held_out != "0")


def test_every_task_declares_its_eval_metrics_and_a_name_outside_them_is_refused():
    """Every registered task declares its eval metrics from the config (the tests beside each
    task's eval check the names); `tasks.check_eval_metric` refuses a name outside them, e.g. a
    misspelt train.best_metric, before anything is built."""
    import importlib

    from tl_jax import tasks

    missing = [name for name, module in tasks.TASKS.items()
               if not callable(getattr(importlib.import_module(module).Task,
                                       "eval_metric_names", None))]
    assert not missing, missing
    config = config_lib.load_config(BERT + ":tiny")
    tasks.check_eval_metric(config, "eval/mlm_accuracy")
    with pytest.raises(ValueError, match=r"^train.best_metric='eval/mlm_acuracy' is not among "
                       r"the eval metrics of task 'bert_pretrain': eval/mlm_loss, "
                       r"eval/mlm_accuracy, eval/nsp_loss, eval/nsp_accuracy$"):
        tasks.check_eval_metric(config, "eval/mlm_acuracy")
    config.data.eval_fraction = 0.0
    with pytest.raises(ValueError, match=r"it reports none with this config"):
        tasks.check_eval_metric(config, "eval/mlm_accuracy")
    config.task = "bert_pretrian"
    with pytest.raises(ValueError, match=r"Unknown task 'bert_pretrian' in config.task"):
        tasks.eval_metric_names(config)


def test_a_run_stopped_by_an_error_leaves_its_tensorboard_events_on_disk(tiny_bert_overrides,
                                                                         tmp_path, monkeypatch):
    """A run ended by an exception (here a NaN loss under on_nonfinite=stop) still closes its
    metrics writer: in a notebook the process lives on, and tensorboardX would hold the logged
    steps' events in memory for up to two minutes (its flush interval), with the file open."""
    from conftest import nan_loss_at_batch
    from test_metrics_writer import read_events

    nan_loss_at_batch(monkeypatch, 3)  # step 3's loss is NaN
    config = config_lib.load_config(BERT + ":tiny", tiny_bert_overrides + [
        "mesh.num_devices=1", "train.steps=5", "train.log_every=1", "train.eval_every=0",
        "train.checkpoint_every=5", "train.on_nonfinite=stop"])
    with pytest.raises(train.NonFiniteError, match="step 3"):
        train.train_and_evaluate(config, str(tmp_path))
    steps = sorted({step for tag, step, _ in read_events(tmp_path / "tensorboard")
                    if tag == "loss"})
    assert steps == [1, 2]


@pytest.mark.parametrize("ctrl_c_on", [0, 1])
def test_a_ctrl_c_stop_of_several_processes_is_named_sigint_not_sigterm(monkeypatch, ctrl_c_on):
    # On several processes a Ctrl-C stops them all after one step, saved, as SIGTERM does; the
    # lines that said so ("[checkpoint] SIGTERM: saved step N", "... stopped at step N of M
    # (SIGTERM; saved in ...)") named SIGTERM, on the process that had the Ctrl-C too. Here
    # the processes share their flags every step (no jax.distributed): process 0 of two, with
    # the Ctrl-C on it or on the other one.
    import os
    import signal

    from jax.experimental import multihost_utils

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    other = {"flags": 0}
    monkeypatch.setattr(multihost_utils, "process_allgather",
                        lambda x: np.asarray([x, np.int32(other["flags"])]))
    old = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    try:
        with train._Preemption() as preemption:
            assert not preemption.stop_after(1, 0)
            if ctrl_c_on == 0:
                os.kill(os.getpid(), signal.SIGINT)  # handled: no KeyboardInterrupt
            else:
                other["flags"] = 2  # the other process's Ctrl-C, as it shares it
            assert preemption.stop_after(2, 0)
        assert preemption.stopped_by == "SIGINT"
        # A Ctrl-C here and a SIGTERM on the other process: both named.
        other["flags"] = 1
        with train._Preemption() as both:
            os.kill(os.getpid(), signal.SIGINT)
            assert both.stop_after(1, 0)
        assert both.stopped_by == "SIGTERM and SIGINT"
    finally:
        signal.signal(signal.SIGINT, old)
    result = train.TrainResult(summary={"step": 2}, state={}, trainer=None, total_steps=5,
                               workdir="w", stopped_by=preemption.stopped_by)
    with pytest.raises(train.Stopped, match=r"^Training stopped at step 2 of 5 \(SIGINT; saved in "
                                            r"w/checkpoints\)"):
        result.check_finished("Training")


def test_a_config_spec_given_for_the_loaded_config_is_named(tmp_path):
    """`train_and_evaluate("configs/gpt_pretrain.py:tiny", workdir)`, as on the command line,
    failed as "'str' object has no attribute 'task'"; nothing is written."""
    for spec in ("configs/gpt_pretrain.py:tiny", pathlib.Path("configs/gpt_pretrain.py")):
        with pytest.raises(TypeError, match=r"train_and_evaluate takes a loaded config, not "
                                            r"'configs/gpt_pretrain.py.*': load it first with "
                                            r"tl_jax.config.load_config\(spec, overrides\)"):
            train.train_and_evaluate(spec, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()

"""Interrupt, restart and move: exact resume, kill -9 mid-save, corruption, topology, faults."""
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tl_jax import checkpoint as ckpt_lib
from tl_jax import config as config_lib
from tl_jax import train, warm_start
from tl_jax.tasks import bert_pretrain

ROOT = pathlib.Path(__file__).resolve().parent.parent
BERT = str(ROOT / "configs" / "bert_pretrain.py")
WORKER = str(ROOT / "tests" / "workers" / "train_worker.py")


def cfg(overrides, *more):
    return config_lib.load_config(BERT + ":tiny", list(overrides) + list(more))


def run(overrides, workdir, *more):
    return train.train_and_evaluate(cfg(overrides, *more), str(workdir))


def metric_rows(workdir, name="metrics.jsonl"):
    return [json.loads(x) for x in (pathlib.Path(workdir) / name).read_text().splitlines() if x]


def losses(workdir):
    return {x["step"]: x["loss"] for x in metric_rows(workdir) if "loss" in x}


def saved_steps(workdir):
    return sorted(int(p.name) for p in (pathlib.Path(workdir) / "checkpoints").iterdir()
                  if p.name.isdigit())


def evals(workdir, metric):
    return {x["step"]: x[metric] for x in metric_rows(workdir) if metric in x}


def params_of(result):
    return jax.tree_util.tree_map(np.asarray, jax.device_get(result.state["params"]))


def assert_trees_equal(a, b):
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def worker(args, env_extra=None, **kw):
    env = dict(os.environ, **(env_extra or {}))
    env.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, WORKER] + args, env=env, cwd=ROOT,
                          capture_output=True, text=True, **kw)


STEPS = ["train.log_every=1", "train.eval_every=0", "train.checkpoint_every=3"]


def test_resume_is_bit_exact(tiny_bert_overrides, tmp_path):
    full = run(tiny_bert_overrides, tmp_path / "full", *STEPS, "train.steps=6")
    run(tiny_bert_overrides, tmp_path / "split", *STEPS, "train.steps=3")
    resumed = run(tiny_bert_overrides, tmp_path / "split", *STEPS, "train.steps=6")
    assert resumed.summary["step"] == 6
    assert_trees_equal(params_of(full), params_of(resumed))
    assert_trees_equal(jax.device_get(full.state["opt_state"]),
                       jax.device_get(resumed.state["opt_state"]))
    assert losses(tmp_path / "full") == losses(tmp_path / "split")


def test_resume_sets_aside_the_rows_logged_after_the_last_checkpoint(tiny_bert_overrides,
                                                                    tmp_path, capsys):
    def rows(name):
        return metric_rows(tmp_path, name)

    run(tiny_bert_overrides, tmp_path, *STEPS, "train.steps=5")  # saves steps 3 and 5
    # As if killed after logging step 5 but before saving it: the resumed run trains 4 and 5
    # again, and metrics.jsonl must not hold two rows for each.
    ckpt = tmp_path / "checkpoints"
    for name in os.listdir(ckpt):
        if name.startswith("5"):
            subprocess.run(["rm", "-r", str(ckpt / name)], check=True)
    first = {r["step"]: r["loss"] for r in rows("metrics.jsonl")}
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')  # a line cut short by the kill
    capsys.readouterr()
    run(tiny_bert_overrides, tmp_path, *STEPS, "train.steps=6")
    assert ("2 row(s) of " + str(tmp_path / "metrics.jsonl") + " logged after step 3 (past the "
            "checkpoint this run starts from) and 1 line(s) of it with no step (cut short or not "
            "JSON) moved" in capsys.readouterr().out)
    assert [r["step"] for r in rows("metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    set_aside = (tmp_path / "metrics.discarded.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in set_aside[:2]] == [4, 5]
    # The resumed run retraced the same steps (resume is exact).
    assert {r["step"]: r["loss"] for r in rows("metrics.jsonl")[:5]} == first


def test_rerunning_a_finished_run_trains_nothing_and_reports_held_out_metrics(
        tiny_bert_overrides, tmp_path, capsys):
    first = run(tiny_bert_overrides, tmp_path, *STEPS, "train.steps=3")
    saved_config = (tmp_path / "config.json").read_text()
    capsys.readouterr()
    again = run(tiny_bert_overrides, tmp_path, *STEPS, "train.steps=3", "train.eval_every=3")
    out = capsys.readouterr().out
    assert "already at step 3" in out and "nothing to train" in out
    # The run's config.json stays what it trained with: a rerun that trains nothing recorded
    # its own settings (a best_metric, a max_seq_length) as if the checkpoints had them.
    assert (tmp_path / "config.json").read_text() == saved_config
    assert again.summary["step"] == 3 and "eval/mlm_accuracy" in again.summary
    assert "held-out mlm_accuracy" in out and "tokens/s" not in out.splitlines()[-1]
    assert_trees_equal(params_of(first), params_of(again))


def test_resuming_with_more_steps_says_the_schedule_is_rebuilt(tiny_bert_overrides, tmp_path,
                                                               capsys):
    sched = ["optimizer.warmup_steps=0", "optimizer.decay=linear", "optimizer.end_lr_ratio=0.0",
             "optimizer.learning_rate=0.01"]
    run(tiny_bert_overrides, tmp_path, *STEPS, *sched, "train.steps=3")
    assert "Note:" not in capsys.readouterr().out
    resumed = run(tiny_bert_overrides, tmp_path, *STEPS, *sched, "train.steps=6")
    out = capsys.readouterr().out
    # Linear decay to 0: at step 3 the 3-step schedule had reached 0, the 6-step one is at half.
    assert ("Note: train.steps 3 -> 6 since the checkpoint. The learning-rate schedule is this "
            "config's, over 6 steps, not a continuation: at step 3 it is 0.005 (the checkpoint's "
            "schedule: 0)." in out), out
    assert resumed.summary["step"] == 6


def test_schedule_note_under_stlr_names_only_what_shapes_stlr():
    """Under transfer.schedule=stlr the optimizer's warm-up and decay do not shape the learning
    rate: a checkpoint saved with warmup_steps=20 (from before STLR refused a warm-up) resumed
    with 0 got a note that the schedule had changed though it had not. A changed stlr_ratio, or a
    switch to STLR, is still named."""
    import types

    import ml_collections

    from tl_jax import train as train_lib

    from tl_jax.optim import optimizers

    optimizer = optimizers.default_config()
    optimizer.update(learning_rate=1e-3, warmup_steps=0)
    config = ml_collections.ConfigDict({
        "train": {"steps": 10}, "transfer": {"schedule": "stlr", "stlr_cut_frac": 0.1,
                                             "stlr_ratio": 32.0}, "optimizer": optimizer})
    trainer = types.SimpleNamespace(config=config, schedule=lambda step: 5e-4,
                                    task=types.SimpleNamespace(make_optimizer=None))
    saved = {"train": {"steps": 10}, "transfer": {"schedule": "stlr", "stlr_cut_frac": 0.1,
                                                  "stlr_ratio": 32.0},
             "optimizer": {"learning_rate": 1e-3, "warmup_steps": 20, "decay": "linear"}}
    assert train_lib._schedule_change(saved, trainer, 4) == ""
    saved["transfer"]["stlr_ratio"] = 16.0
    assert "transfer.stlr_ratio 16.0 -> 32.0" in train_lib._schedule_change(saved, trainer, 4)
    saved["transfer"] = {"schedule": "optimizer"}
    note = train_lib._schedule_change(saved, trainer, 4)
    assert "transfer.schedule optimizer -> stlr" in note and "warmup_steps 20 -> 0" in note
    # A task that does not read config.transfer follows the optimizer's schedule.
    trainer.task = types.SimpleNamespace()
    saved["transfer"] = {"schedule": "stlr"}
    assert "optimizer.warmup_steps 20 -> 0" in train_lib._schedule_change(saved, trainer, 4)


def test_keeps_last_n_and_the_best(tiny_bert_overrides, tmp_path):
    run(tiny_bert_overrides, tmp_path, "train.steps=8", "train.checkpoint_every=1",
        "train.eval_every=1", "train.keep_checkpoints=2", "train.log_every=1",
        "train.best_metric=eval/mlm_loss", "train.best_mode=min")
    scores = evals(tmp_path, "eval/mlm_loss")
    best = min(scores, key=scores.get)
    kept = saved_steps(tmp_path)
    assert kept == sorted({7, 8, best})


def test_the_best_checkpoint_is_one_that_was_evaluated(tiny_bert_overrides, tmp_path):
    # Checkpoints every step, evals every 4th: steps 5-7 used to be saved with step 4's score,
    # and step 7 (never evaluated) was kept as "best" in place of step 4. best_mode=max on the
    # loss makes the early eval the best one.
    run(tiny_bert_overrides, tmp_path, "train.steps=8", "train.checkpoint_every=1",
        "train.eval_every=4", "train.keep_checkpoints=1", "train.log_every=1",
        "train.best_metric=eval/mlm_loss", "train.best_mode=max")
    scores = evals(tmp_path, "eval/mlm_loss")
    assert sorted(scores) == [4, 8] and scores[4] > scores[8]
    kept = saved_steps(tmp_path)
    assert kept == [4, 8]


def test_a_resumed_run_keeps_the_best_checkpoint_of_before_the_restart(tiny_bert_overrides,
                                                                       tmp_path):
    # The scores lived only in the checkpoint manager's memory: after a restart the best
    # checkpoint had none, and the first save deleted it.
    keep_best = ["train.checkpoint_every=1", "train.eval_every=4", "train.keep_checkpoints=1",
                 "train.log_every=1", "train.best_metric=eval/mlm_loss", "train.best_mode=max"]
    run(tiny_bert_overrides, tmp_path, "train.steps=4", *keep_best)
    # As a workdir of before orbax kept the scores: they come from its metrics.jsonl.
    shutil.rmtree(tmp_path / "checkpoints" / "4" / "metrics")
    run(tiny_bert_overrides, tmp_path, "train.steps=6", *keep_best)
    run(tiny_bert_overrides, tmp_path, "train.steps=8", *keep_best)
    scores = evals(tmp_path, "eval/mlm_loss")  # the last step of each run is evaluated too
    assert sorted(scores) == [4, 6, 8] and scores[4] > max(scores[6], scores[8])
    assert saved_steps(tmp_path) == [4, 8]


def test_a_misspelt_best_metric_is_refused_before_training(tiny_bert_overrides, tmp_path):
    # It was found at the first eval, after the steps before it had trained, and no best
    # checkpoint was kept.
    with pytest.raises(ValueError, match=r"^train.best_metric='eval/mlm_acc' is not among the "
                       r"eval metrics of task 'bert_pretrain': eval/mlm_loss, eval/mlm_accuracy"):
        run(tiny_bert_overrides, tmp_path, "train.steps=4", "train.eval_every=2",
            "train.best_metric=eval/mlm_acc")
    assert not (tmp_path / "checkpoints").exists()
    # Without evals the name is never looked up: not refused.
    run(tiny_bert_overrides, tmp_path / "no_eval", "train.steps=1", "train.eval_every=0",
        "train.best_metric=eval/mlm_acc")


def test_a_best_metric_that_eval_never_reports_is_named_once(tiny_bert_overrides, tmp_path,
                                                             capsys, monkeypatch):
    # A name the task declares but an eval does not report (SQuAD 2.0's HasAns_ figures when
    # the held-out questions are of one kind) is named at the first eval that lacks it.
    declared = bert_pretrain.Task.eval_metric_names
    monkeypatch.setattr(bert_pretrain.Task, "eval_metric_names",
                        staticmethod(lambda config: declared(config) + ("mlm_acc",)))
    run(tiny_bert_overrides, tmp_path, "train.steps=4", "train.checkpoint_every=2",
        "train.eval_every=2", "train.keep_checkpoints=1", "train.log_every=2",
        "train.best_metric=eval/mlm_acc")
    out = capsys.readouterr().out
    assert out.count("train.best_metric='eval/mlm_acc' is not among the eval metrics") == 1
    assert "eval/mlm_accuracy" in out and "no best checkpoint is kept, only the last 1" in out
    assert saved_steps(tmp_path) == [4]


def test_an_eval_nothing_counted_towards_is_nan_and_never_the_best(tiny_bert_overrides,
                                                                    tmp_path, monkeypatch,
                                                                    capsys):
    # The second eval's batches hold no masked prediction: its eval/mlm_loss was 0.0, the
    # "best" loss under best_mode=min, and its checkpoint was kept as the best one.
    original = bert_pretrain.Task.eval_batches
    calls = {"n": 0}

    def eval_batches(self):
        calls["n"] += 1
        for batch in original(self):
            if calls["n"] == 2:
                batch = dict(batch, masked_weights=np.zeros_like(batch["masked_weights"]))
            yield batch

    monkeypatch.setattr(bert_pretrain.Task, "eval_batches", eval_batches)
    result = run(tiny_bert_overrides, tmp_path, "train.steps=3", "train.checkpoint_every=1",
                 "train.eval_every=1", "train.keep_checkpoints=1", "train.log_every=1",
                 "train.best_metric=eval/mlm_loss", "train.best_mode=min")
    assert 2 not in saved_steps(tmp_path)
    assert ckpt_lib.best_step(str(tmp_path), "eval/mlm_loss", "min")[0] != 2
    rows = {x["step"]: x for x in metric_rows(tmp_path) if "eval/mlm_loss" in x}
    assert rows[2]["eval/mlm_loss"] == "nan" and rows[2]["eval/mlm_accuracy"] == "nan"
    assert isinstance(rows[2]["eval/nsp_loss"], float)  # the rows still count for NSP
    out = capsys.readouterr().out
    assert out.count("nothing in the eval batches counts towards eval/mlm_accuracy, "
                     "eval/mlm_loss at step 2") == 1
    assert np.isfinite(result.summary["eval/mlm_loss"])


def test_kill_9_during_a_save_keeps_the_previous_checkpoint(tiny_bert_overrides, tmp_path):
    args = ["train", f"--config={BERT}:tiny", f"--workdir={tmp_path}"] + [
        f"--config.{o}" for o in tiny_bert_overrides + STEPS + ["train.steps=9",
                                                                 "train.async_checkpoint=False"]]
    killed = worker(args, {"WORKER_KILL_IN_SAVE": "6"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    names = os.listdir(tmp_path / "checkpoints")
    assert "3" in names and "6" not in names
    resumed = worker(args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "incomplete checkpoint" in resumed.stdout
    assert "Resuming from step 3" in resumed.stdout
    assert sorted(int(n) for n in os.listdir(tmp_path / "checkpoints") if n.isdigit())[-1] == 9


@pytest.mark.parametrize("step", ["6", "9"], ids=["during_training", "the_final_save"])
def test_ctrl_c_during_an_async_save_finishes_it_and_prints_one_line(step, tiny_bert_overrides,
                                                                     tmp_path):
    # The interpreter used to shut down under orbax's background thread: the checkpoint in
    # flight was left as a temporary directory, and ~90 lines of "cannot schedule new futures
    # after shutdown" tracebacks followed the one line saying the checkpoints are intact.
    args = ["train", f"--config={BERT}:tiny", f"--workdir={tmp_path}"] + [
        f"--config.{o}" for o in tiny_bert_overrides + STEPS + ["train.steps=9"]]
    interrupted = worker(args, {"WORKER_CTRL_C_IN_SAVE": step}, timeout=600)
    assert interrupted.returncode == 130, interrupted.stderr[-3000:]
    assert "Traceback" not in interrupted.stderr, interrupted.stderr[-3000:]
    assert interrupted.stderr.strip().splitlines()[-1].startswith("tl_jax: interrupted (Ctrl-C)")
    # The interrupted save is finished, complete, and the run stopped there.
    assert sorted(os.listdir(tmp_path / "checkpoints")) == (["3", "6"] if step == "6"
                                                            else ["3", "6", "9"])


def test_corrupt_checkpoint_falls_back_to_the_previous_one(tiny_bert_overrides, tmp_path, capsys):
    run(tiny_bert_overrides, tmp_path, *STEPS, "train.steps=6")
    step_dir = tmp_path / "checkpoints" / "6" / "state"
    files = sorted((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: -p.stat().st_size)
    for f in files[:3]:  # truncate the biggest array files
        f.write_bytes(f.read_bytes()[: max(1, f.stat().st_size // 3)])
    capsys.readouterr()
    resumed = run(tiny_bert_overrides, tmp_path, *STEPS, "train.steps=6")
    out = capsys.readouterr().out
    assert "Checkpoint at step 6 is corrupt" in out
    # The reason names the broken file, not orbax's "<bound method ... spec of TensorStore({".
    assert "TensorStore details" not in out and "bound method" not in out, out
    assert "Resuming from step 3" in out
    assert (tmp_path / "checkpoints_corrupt" / "6").exists()  # moved aside, not deleted
    assert resumed.summary["step"] == 6


def test_a_checkpoint_with_every_array_damaged_is_reported_in_one_line(tiny_bert_overrides,
                                                                        tmp_path):
    # With every array file cut, each of the other failed reads printed its own traceback with
    # tensorstore's spec after the one-line report: ~8,700 lines on stderr for BERT-tiny.
    run(tiny_bert_overrides, tmp_path, *STEPS, "train.steps=6")
    data = [p for p in (tmp_path / "checkpoints" / "6" / "state").rglob("*")
            if p.is_file() and p.parent.name == "d" and p.parent.parent.name.startswith("ocdbt")]
    assert data
    for f in data:
        f.write_bytes(f.read_bytes()[: max(1, f.stat().st_size // 3)])
    args = ["train", f"--config={BERT}:tiny", f"--workdir={tmp_path}"] + [
        f"--config.{o}" for o in tiny_bert_overrides + STEPS + ["train.steps=6"]]
    resumed = worker(args, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reports = [line for line in resumed.stdout.splitlines() if "is corrupt" in line]
    assert len(reports) == 1 and "Checkpoint at step 6" in reports[0], resumed.stdout
    assert "Resuming from step 3" in resumed.stdout
    assert "TensorStore" not in resumed.stderr and "read" not in resumed.stderr, \
        resumed.stderr[:3000]
    assert len(resumed.stderr.splitlines()) < 10, resumed.stderr[:3000]


def test_every_checkpoint_corrupt_is_reported_not_silently_restarted(tiny_bert_overrides, tmp_path,
                                                                    capsys):
    run(tiny_bert_overrides, tmp_path, *STEPS, "train.steps=3")
    for f in (tmp_path / "checkpoints" / "3" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    run(tiny_bert_overrides, tmp_path, *STEPS, "train.steps=3")
    out = capsys.readouterr().out
    assert "Checkpoint at step 3 is corrupt" in out
    assert "No usable checkpoint left; starting from scratch" in out


def test_reading_params_skips_a_broken_checkpoint_quietly_and_leaves_it(tiny_bert_overrides,
                                                                        tmp_path, capsys):
    # The read-only path (generate, convert, extract, init_from): one line per broken step, not
    # tensorstore's spec nor hundreds of "Event loop is closed" tracebacks; nothing is moved.
    run(tiny_bert_overrides, tmp_path, *STEPS, "train.steps=6")
    shapes, _ = ckpt_lib.param_shapes_from_workdir(str(tmp_path))
    for f in (p for p in (tmp_path / "checkpoints" / "6" / "state").rglob("*") if p.is_file()):
        f.write_bytes(f.read_bytes()[: max(1, f.stat().st_size // 3)])
    capsys.readouterr()
    params, step = ckpt_lib.load_params_from_workdir(str(tmp_path))
    import gc
    gc.collect()
    time.sleep(1)  # reads still in flight finish into orbax's closed loop
    captured = capsys.readouterr()
    assert step == 3 and {k: v.shape for k, v in params.items()} == shapes  # params only
    lines = [line for line in captured.out.splitlines() if line.startswith("[checkpoint]")]
    # (Every file was cut, state/_METADATA first among them: named as such.)
    assert len(lines) == 1 and "step 6 in" in lines[0] and "state/_METADATA" in lines[0], \
        captured.out
    assert "tensorstore_spec" not in captured.out
    assert "Event loop is closed" not in captured.err, captured.err[-2000:]
    assert (tmp_path / "checkpoints" / "6").exists()


def test_a_failed_array_read_is_reported_by_the_error_it_wraps():
    cause = ValueError('OUT_OF_RANGE: Error reading "params.w/0.0" in OCDBT database at local '
                       'file "/w/checkpoints/6/state/": Requested byte range [0, 9) is not valid')
    wrapper = Exception("Encountered error while reading array index: (slice(0, 4, 1),). See "
                        "full TensorStore details: <bound method spec of TensorStore({\n  'a': 1")
    wrapper.__cause__ = cause
    short = ckpt_lib._short(wrapper)
    assert "bound method" not in short and "TensorStore details" not in short
    assert 'OUT_OF_RANGE: Error reading "params.w/0.0"' in short and "/6/state/" in short


def test_a_truncated_manifest_is_reported_without_the_tensorstore_spec():
    # The error of a cut manifest.ocdbt names its spec as `tensorstore_spec[1]=`, and the
    # whole kilobyte-long JSON spec was printed in the "corrupt or incomplete" line.
    error = ValueError(
        'DATA_LOSS: Error opening "cast" driver: Error reading "opt_state.1.0.count/.zarray" in '
        'OCDBT database at local file "/w/checkpoints/12/state/": Error decoding manifest: '
        "Encoded length (5) is less than minimum length (16) [tensorstore_spec[1]='{\"base\":"
        '{\"driver\":\"zarr\"}}\']')
    short = ckpt_lib._short(error)
    assert short.endswith("Encoded length (5) is less than minimum length (16)"), short


def test_the_closed_loop_filter_passes_every_other_unraisable(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    ckpt_lib._drop_closed_loop_noise()
    ckpt_lib._drop_closed_loop_noise()  # installs once
    for error in (RuntimeError("Event loop is closed"), RuntimeError("other"), ValueError("x")):
        sys.unraisablehook(types.SimpleNamespace(exc_value=error, object=None))

    async def _read_array_index_and_device_put():  # orbax's array read, by name
        pass

    async def another_coroutine():
        pass

    for coroutine in (_read_array_index_and_device_put(), another_coroutine()):
        sys.unraisablehook(types.SimpleNamespace(exc_value=Exception("read failed"),
                                                 object=coroutine))
        coroutine.close()
    assert [str(u.exc_value) for u in seen] == ["other", "x", "read failed"]
    assert seen[-1].object.cr_code.co_name == "another_coroutine"


def test_saving_replicated_arrays_on_a_multi_device_cpu_compiles_nothing(tmp_path, monkeypatch):
    # orbax's default handler would compile a slicing program per array and device here (the
    # cost of a process's first save on the tests' 8 fake devices); start from that default.
    import orbax.checkpoint as ocp
    ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(),
                                            override=True)
    monkeypatch.setattr(ckpt_lib, "_CPU_HANDLER_REGISTERED", False)
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    values = {"w": np.arange(64 * 48, dtype=np.float32).reshape(64, 48),
              "b": np.linspace(-1, 1, 7, dtype=np.float32)}
    state = {k: jax.device_put(v, replicated) for k, v in values.items()}
    compiles = []
    listener = lambda name, *_, **__: compiles.append(name) if "backend_compile" in name else None  # noqa: E731
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        checkpointer = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
        assert checkpointer.save(1, state, {"epoch": 0}, {"task": "x"})
        checkpointer.manager.wait_until_finished()
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiles == []
    restored = checkpointer.manager.restore(1, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state))))
    for name, value in values.items():
        np.testing.assert_array_equal(np.asarray(restored["state"][name]), value)


def test_checkpoint_from_8_devices_restores_on_1_and_on_4x2(tiny_bert_overrides, tmp_path):
    # tiny's 2 heads on a tensor axis of 2: each device holds one head, so the restore really
    # reshards the data-parallel checkpoint across heads (as mini's 4 heads on 2x4 did).
    base = tiny_bert_overrides + ["train.eval_every=0", "train.log_every=1",
                                  "train.checkpoint_every=2"]
    run(base, tmp_path / "eight", "mesh.data=8", "train.steps=2")
    ref = run(base, tmp_path / "eight", "mesh.data=8", "train.steps=4")
    for name, mesh in (("one", ["mesh.num_devices=1"]), ("4x2", ["mesh.data=4", "mesh.tensor=2"])):
        target = tmp_path / name
        os.makedirs(target / "checkpoints")
        os.symlink(tmp_path / "eight" / "tokenizer", target / "tokenizer")
        shutil.copytree(tmp_path / "eight" / "checkpoints" / "2", target / "checkpoints" / "2")
        moved = run(base, target, *mesh, "train.steps=4")
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                               params_of(ref), params_of(moved))
        for step in (3, 4):
            assert losses(target)[step] == pytest.approx(losses(tmp_path / "eight")[step], rel=1e-5)


def _device_arrays_made_by_restores(monkeypatch):
    """A list that gets, after each orbax restore, the device arrays it made that are still
    alive when it returns (what it restored as jax.Arrays), as {device id: bytes}."""
    import orbax.checkpoint as ocp
    made, original = [], ocp.CheckpointManager.restore

    def restore(self, *args, **kwargs):
        before = {id(a) for a in jax.live_arrays()}
        out = original(self, *args, **kwargs)
        held = {}
        for array in jax.live_arrays():
            if id(array) not in before:
                for shard in array.addressable_shards:
                    held[shard.device.id] = held.get(shard.device.id, 0) + shard.data.nbytes
        made.append(held)
        return out
    monkeypatch.setattr(ocp.CheckpointManager, "restore", restore)
    return made


def test_params_of_a_sharded_run_are_read_into_host_memory_bit_for_bit(tiny_bert_overrides,
                                                                       tmp_path, monkeypatch):
    # Warm starts, predict, generate, convert and the distillation teacher read a workdir's
    # params. They were restored onto one device first, so a model that only fits sharded could
    # not be read at all; they are read into numpy, no device holding any of them.
    result = run(tiny_bert_overrides, tmp_path, "mesh.fsdp=4", "mesh.tensor=2", "train.steps=2",
                 "train.eval_every=0", "train.checkpoint_every=2")
    trained = params_of(result)
    kernel = result.state["params"]["bert"]["encoder"]["layer_0"]["mlp"]["output"]["kernel"]
    assert len(kernel.sharding.device_set) == 8 and not kernel.sharding.is_fully_replicated
    del result, kernel
    made = _device_arrays_made_by_restores(monkeypatch)
    flat, step = ckpt_lib.load_params_from_workdir(str(tmp_path))
    assert step == 2 and made == [{}]
    expected = {"/".join(str(k.key) for k in path): value for path, value in
                jax.tree_util.tree_flatten_with_path(trained)[0]}
    assert sorted(flat) == sorted(expected)
    for name, value in flat.items():
        assert type(value) is np.ndarray and value.dtype == expected[name].dtype, name
        assert value.tobytes() == expected[name].tobytes(), name
    # A partial read (fill_mask's, the teacher's): those subtrees only, still on no device.
    only, _ = ckpt_lib.load_params_from_workdir(str(tmp_path), only=("mlm_head",))
    assert made[1] == {} and sorted(only) == sorted(n for n in flat if n.startswith("mlm_head/"))
    for name, value in only.items():
        assert value.tobytes() == flat[name].tobytes(), name


def test_params_are_read_in_the_dtype_they_were_saved_in(tmp_path, monkeypatch):
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("fsdp",))
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp"))
    values = {"w": np.linspace(-3, 3, 16 * 3, dtype=np.float32).reshape(16, 3),
              "half": np.linspace(-3, 3, 8, dtype=np.float32).astype(jnp.bfloat16),
              "ids": np.arange(-8, 8, dtype=np.int32)}
    state = {"params": {k: jax.device_put(v, split) for k, v in values.items()},
             "step": jnp.asarray(5)}
    ckpt = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
    ckpt.save(5, state, {"epoch": 0}, {"model": {}})
    ckpt.close()
    made = _device_arrays_made_by_restores(monkeypatch)
    flat, step = ckpt_lib.load_params_from_workdir(str(tmp_path), step=5)
    assert step == 5 and made == [{}] and sorted(flat) == sorted(values)
    for name, value in values.items():
        assert type(flat[name]) is np.ndarray and flat[name].dtype == value.dtype, name
        assert flat[name].tobytes() == value.tobytes(), name


def test_changed_model_on_resume_is_an_error_naming_the_fields(tiny_bert_overrides, tmp_path):
    run(tiny_bert_overrides, tmp_path, *STEPS, "train.steps=3")
    with pytest.raises(ckpt_lib.CheckpointError) as e:
        run(tiny_bert_overrides, tmp_path, *STEPS, "train.steps=6", "model.type_vocab_size=3")
    assert "model.type_vocab_size: checkpoint has 2, config has 3" in str(e.value)
    assert "init_from" in str(e.value)


def test_a_checkpoint_of_another_task_is_named_by_its_task(tiny_bert_overrides):
    trainer = types.SimpleNamespace(config=cfg(tiny_bert_overrides), abstract_state={},
                                    state_shardings={}, task=types.SimpleNamespace())

    class Checkpointer:
        directory = "/runs/electra/checkpoints"

        def restore_latest_good(self, target, check_config):
            check_config({"task": "electra", "model": {"size": "tiny"}}, 20)

    with pytest.raises(ckpt_lib.CheckpointError) as e:
        train.restore_or_init(trainer, Checkpointer())
    assert ("step 20 in /runs/electra/checkpoints was written by a run of task `electra`; "
            "this config's task is `bert_pretrain`" in str(e.value))
    assert "checkpoint has None" not in str(e.value)


@pytest.mark.parametrize("override", ["optimizer.name=sgd", "optimizer.clip_norm=0"])
def test_another_optimizer_on_resume_is_an_error_and_the_checkpoint_stays(
        tiny_bert_overrides, tmp_path, override):
    # Another optimizer state tree used to fail the restore, so the good checkpoint was moved to
    # checkpoints_corrupt/ and the run started again from step 0.
    run(tiny_bert_overrides, tmp_path, *STEPS, "train.steps=2")
    with pytest.raises(ckpt_lib.CheckpointError,
                       match=r"step 2 .* holds another optimizer state layout than this run "
                             r"builds \(only in the checkpoint: opt_state/.*optimizer\.\* "
                             r"settings.*the checkpoint is left as it is"):
        run(tiny_bert_overrides, tmp_path, *STEPS, "train.steps=3", override)
    assert saved_steps(tmp_path) == [2]
    assert not (tmp_path / "checkpoints_corrupt").exists()
    # The optimizer it was trained with resumes it; another beta only changes a value.
    resumed = run(tiny_bert_overrides, tmp_path, *STEPS, "train.steps=3", "optimizer.b1=0.8")
    assert resumed.summary["step"] == 3 and saved_steps(tmp_path) == [2, 3]
    assert not (tmp_path / "checkpoints_corrupt").exists()


def test_changed_data_on_resume_is_named_and_the_workdir_kept(tiny_bert_overrides, tmp_path,
                                                              capsys):
    run(tiny_bert_overrides, tmp_path, *STEPS, "train.steps=3")
    saved_config = (tmp_path / "config.json").read_text()
    # Fewer documents: the saved position cannot be restored. The error used to be the data
    # iterator's alone (naming no setting), raised after config.json had been overwritten.
    with pytest.raises(ckpt_lib.CheckpointError) as e:
        run(tiny_bert_overrides, tmp_path, *STEPS, "train.steps=6", "data.max_documents=10")
    assert "cannot continue its data stream" in str(e.value)
    assert "data.max_documents: checkpoint has 40, config has 10" in str(e.value)
    assert "init_from" in str(e.value)
    assert (tmp_path / "config.json").read_text() == saved_config
    # A change the position survives is named in a note, and the run goes on.
    capsys.readouterr()
    resumed = run(tiny_bert_overrides, tmp_path, *STEPS, "train.steps=6",
                  "data.eval_batch_size=8", "data.lowercase=False")
    out = capsys.readouterr().out
    assert ("Note: data settings changed since the checkpoint:\n  data.eval_batch_size: "
            "checkpoint has 16, config has 8\nTraining continues" in out), out
    # The workdir's tokenizer is kept on resume: a tokenizer setting is said to change nothing,
    # not listed among the settings the data is "built with".
    assert ("keeps the tokenizer it was trained with (" + str(tmp_path / "tokenizer") + "); "
            "these changes since the checkpoint have no effect:\n  data.lowercase: checkpoint "
            "has True, config has False" in out), out
    assert resumed.summary["step"] == 6
    # config.json records what the run trained with: the new eval batch, the old tokenizer
    # setting (it said "data.lowercase: True" after this run, which kept a lowercasing one).
    data = json.loads((tmp_path / "config.json").read_text())["data"]
    assert data["eval_batch_size"] == 8 and data["lowercase"] is True


def test_warm_start_takes_matching_weights_and_reports_the_rest(tiny_bert_overrides, tmp_path,
                                                                capsys, monkeypatch):
    first = run(tiny_bert_overrides, tmp_path / "a", *STEPS, "train.steps=3")
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)  # a relative init_from, as the quickstart passes it
    config = cfg(tiny_bert_overrides, *STEPS, "train.steps=1", "model.type_vocab_size=3",
                 "init_from=a", "optimizer.learning_rate=0.0",
                 "optimizer.weight_decay=0.0")
    trainer = train.build_trainer(config, str(tmp_path / "b"))
    state = trainer.init_state(jax.random.PRNGKey(1))
    out = capsys.readouterr().out
    assert "shape differs: bert/embeddings/token_type_embeddings/embedding" in out
    np.testing.assert_array_equal(
        np.asarray(state["params"]["bert"]["encoder"]["layer_1"]["mlp"]["output"]["kernel"]),
        params_of(first)["bert"]["encoder"]["layer_1"]["mlp"]["output"]["kernel"])
    with pytest.raises(warm_start.WarmStartError, match="does not exist"):
        warm_start.warm_start(state["params"], str(tmp_path / "missing"))


def test_nonfinite_loss_stops_the_run_naming_the_step(tiny_bert_overrides, tmp_path, monkeypatch):
    from conftest import nan_loss_at_batch

    poison_at = 4
    calls = nan_loss_at_batch(monkeypatch, poison_at)
    with pytest.raises(train.NonFiniteError, match=f"Non-finite loss at step {poison_at}"):
        run(tiny_bert_overrides, tmp_path / "stop", *STEPS, "train.steps=6")

    calls["n"] = 0
    result = run(tiny_bert_overrides, tmp_path / "skip", *STEPS, "train.steps=6",
                 "train.on_nonfinite=skip")
    assert result.summary["skipped_steps"] == 1
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(params_of(result)))


def test_out_of_vocabulary_ids_are_caught_before_the_step(tiny_bert_overrides):
    config = cfg(tiny_bert_overrides)
    trainer = train.build_trainer(config, None)
    it = trainer.task.train_batches()
    real = next(it.iterator)
    it.iterator = iter([dict(real, input_ids=real["input_ids"] + 5000)])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        next(it)


def test_sigterm_saves_and_exits_then_resumes(tiny_bert_overrides, tmp_path):
    args = ["train", f"--config={BERT}:tiny", f"--workdir={tmp_path}"] + [
        f"--config.{o}" for o in tiny_bert_overrides + [
            "train.log_every=1", "train.eval_every=0", "train.checkpoint_every=100000",
            "train.steps=100000"]]
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    proc = subprocess.Popen([sys.executable, WORKER] + args, env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and
                                          len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]  # stopped, not finished (tests/test_main.py)
    assert "SIGTERM: saved step" in out
    saved = [int(n) for n in os.listdir(tmp_path / "checkpoints") if n.isdigit()]
    assert len(saved) == 1 and saved[0] >= 3


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_train_checkpoint_resume_and_match_one_process(tiny_bert_overrides,
                                                                     tmp_path):
    common = ["train.log_every=1", "train.eval_every=0", "train.checkpoint_every=2",
              "model.dropout_rate=0.0", "model.attention_dropout_rate=0.0"]

    def args(workdir, steps):
        return ["train", f"--config={BERT}:tiny", f"--workdir={workdir}"] + [
            f"--config.{o}" for o in tiny_bert_overrides + common + [f"train.steps={steps}"]]

    def two_processes(workdir, steps):
        port = _free_port()
        procs = [subprocess.Popen(
            [sys.executable, WORKER] + args(workdir, steps), cwd=ROOT,
            env=dict({k: v for k, v in os.environ.items() if k != "XLA_FLAGS"},
                     WORKER_DEVICES="4", TL_JAX_COORDINATOR=f"localhost:{port}",
                     TL_JAX_NUM_PROCESSES="2", TL_JAX_PROCESS_ID=str(i)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
        outs = [p.communicate(timeout=600) for p in procs]
        for p, (out, err) in zip(procs, outs):
            assert p.returncode == 0, err[-3000:]
        return outs

    two_processes(tmp_path / "multi", 2)
    outs = two_processes(tmp_path / "multi", 4)
    assert "Resuming from step 2" in outs[0][0]
    # The one-process reference runs in this process (8 devices, as the worker's): the same
    # config, without another interpreter start-up and import of jax, flax and orbax.
    run(tiny_bert_overrides, tmp_path / "single", *common, "train.steps=4")
    multi_params, step_m = ckpt_lib.load_params_from_workdir(str(tmp_path / "multi"))
    single_params, step_s = ckpt_lib.load_params_from_workdir(str(tmp_path / "single"))
    assert step_m == step_s == 4
    for name in single_params:
        np.testing.assert_allclose(multi_params[name], single_params[name], rtol=1e-4, atol=1e-5)
    l_multi, l_single = losses(tmp_path / "multi"), losses(tmp_path / "single")
    for step in (1, 2, 3, 4):
        assert l_multi[step] == pytest.approx(l_single[step], rel=1e-5)


def test_a_warm_start_over_two_processes_places_each_shard_from_host_memory(tmp_path):
    # Each device gets its own slice of a warm-started tensor from the host. `jax.device_put`
    # of a host array onto devices of several processes first all-gathers it to check that
    # every process passed the same value: every device held the whole tensor once per process.
    ckpt = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
    params = {"w": np.arange(48, dtype=np.float32).reshape(8, 6) / 7,
              "b": np.linspace(-1, 1, 6, dtype=np.float32)}
    ckpt.save(3, {"params": params, "step": jnp.asarray(3)}, {"epoch": 0}, {"model": {}})
    ckpt.close()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "workers" / "warm_start_worker.py"), str(tmp_path),
         str(i), str(port)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for i in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        assert "[init_from] " + str(tmp_path) + " (step 3): took 2 tensors." in out
        assert json.loads(out.splitlines()[-1]) == {"gathers": [], "right": True}, out


def test_opening_a_workdir_read_only_does_not_warn(caplog):
    # Orbax logs "Given directory is read only" for every read-only manager: each generate,
    # convert, extract and init_from printed it. Other absl warnings still show.
    import logging

    from absl import logging as absl_logging
    with caplog.at_level(logging.WARNING):
        absl_logging.warning("Given directory is read only=%s", "/w/checkpoints")
        # On every resume: reading a checkpoint's config alone left "data" and "state" out.
        absl_logging.warning('Item "state" was found in the checkpoint, but could not be '
                             'restored. Please provide a `CheckpointHandlerRegistry`, ...')
        # On every save between evals (a SIGTERM's): the checkpoint has no score on purpose.
        absl_logging.warning("Requested `tracked_metric`; did not provide metrics.")
        absl_logging.warning("a real warning")
    assert "read only" not in caplog.text and "a real warning" in caplog.text
    assert "tracked_metric" not in caplog.text
    assert "could not be restored" not in caplog.text


def test_a_config_field_added_after_the_checkpoint_is_no_difference_at_its_default():
    saved = {"model": {"size": "tiny", "max_len": 0}}
    assert ckpt_lib.config_differences(saved, {"model": {"size": "tiny", "max_len": 0,
                                                         "num_layers": 0}}) == []
    assert ckpt_lib.config_differences(saved, {"model": {"size": "tiny", "max_len": 0,
                                                         "num_layers": 3}}) == [
        "model.num_layers: checkpoint has None, config has 3"]


def test_a_checkpoint_of_other_shapes_is_an_error_not_corruption(tmp_path):
    # E.g. a classifier resumed with another number of labels: the healthy checkpoint used to
    # be moved aside as corrupt, and the run restarted from scratch.
    ckpt = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
    state = {"params": {"head": {"kernel": jnp.ones((4, 2))}}, "step": jnp.asarray(3)}
    ckpt.save(3, state, {"epoch": 0}, {"model": {}})
    ckpt.wait()
    wider = jax.eval_shape(lambda: {"params": {"head": {"kernel": jnp.ones((4, 3))}},
                                    "step": jnp.asarray(3)})
    with pytest.raises(ckpt_lib.CheckpointError,
                       match=r"step 3 .* another model: params/head/kernel: checkpoint \(4, 2\), "
                             r"this run \(4, 3\)"):
        ckpt.restore_latest_good(wider)
    assert ckpt.all_steps() == [3] and not (tmp_path / "checkpoints_corrupt").exists()
    restored = ckpt.restore_latest_good(jax.eval_shape(lambda: state))
    assert restored[3] == 3


def test_a_step_metadata_file_that_does_not_read_is_reset_and_the_step_restores(tmp_path,
                                                                               capsys, caplog):
    # orbax logged "ERROR absl: Failed to json parse Metadata file" twice on every start.
    ckpt = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
    state = {"params": {"w": jnp.ones((4, 2))}, "step": jnp.asarray(3)}
    ckpt.save(3, state, {"epoch": 0}, {"model": {}})
    ckpt.close()
    meta = tmp_path / "checkpoints" / "3" / "_CHECKPOINT_METADATA"
    meta.write_text("garbage{\n")
    capsys.readouterr()
    caplog.clear()
    ckpt = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
    assert capsys.readouterr().out == (
        f"[checkpoint] {meta} (orbax's timestamps for the step) did not read as JSON; it was "
        "reset to {}. The checkpoint's arrays are not in it and are used as before.\n")
    restored = ckpt.restore_latest_good(jax.eval_shape(lambda: state))
    assert restored[3] == 3
    np.testing.assert_array_equal(restored[0]["params"]["w"], np.ones((4, 2)))
    assert not [r for r in caplog.records if "Metadata file" in r.getMessage()]
    ckpt.close()


def test_a_checkpoint_without_its_state_metadata_is_named(tmp_path, capsys):
    # A workdir copied without state/_METADATA (orbax's index of the arrays) was "'NoneType'
    # object is not subscriptable" as init_from or in predict; an empty one "Expecting value".
    ckpt = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
    state = {"params": {"w": jnp.ones((4, 2))}, "step": jnp.asarray(3)}
    for step in (3, 6):
        ckpt.save(step, dict(state, step=jnp.asarray(step)), {"epoch": 0}, {"model": {}})
    ckpt.wait()
    directory = tmp_path / "checkpoints"
    metadata = directory / "6" / "state" / "_METADATA"
    metadata.rename(tmp_path / "_METADATA")
    missing = (rf"Checkpoint at step 6 in {directory} is missing state/_METADATA, orbax's index "
               r"of its arrays: it cannot be read \(copied or written in part\?\)")
    with pytest.raises(ckpt_lib.CheckpointError, match=missing):  # predict's: this step
        ckpt_lib.load_params_from_workdir(str(tmp_path), step=6)
    # Without a step, the older checkpoint is used, and the newer one named.
    assert ckpt_lib.param_shapes_from_workdir(str(tmp_path)) == ({"w": (4, 2)}, 3)
    assert ckpt_lib.load_params_from_workdir(str(tmp_path))[1] == 3
    assert capsys.readouterr().out.count("is missing state/_METADATA") == 2
    only = tmp_path / "only"  # the only checkpoint: the error is this one's
    shutil.copytree(directory / "6", only / "checkpoints" / "6")
    for read in (ckpt_lib.param_shapes_from_workdir, ckpt_lib.load_params_from_workdir):
        with pytest.raises(ckpt_lib.CheckpointError,
                           match=missing.replace(str(directory), str(only / "checkpoints"))):
            read(str(only))
    metadata.write_text("")
    with pytest.raises(ckpt_lib.CheckpointError, match=r"Checkpoint at step 6 in .* has an "
                                                       r"unreadable state/_METADATA \(JSONDecode"):
        ckpt_lib.load_params_from_workdir(str(tmp_path), step=6)
    # Resuming moves it aside (nothing is deleted), saying why.
    metadata.unlink()
    assert ckpt.restore_latest_good(jax.eval_shape(lambda: state))[3] == 3
    assert ("Checkpoint at step 6 is corrupt or incomplete (it is missing state/_METADATA, "
            "orbax's index of its arrays). Moved it to") in capsys.readouterr().out
    assert (tmp_path / "checkpoints_corrupt" / "6" / "state").is_dir()


def test_reading_params_tries_older_after_any_error_and_names_it(tmp_path, monkeypatch, capsys):
    # param_shapes_from_workdir and load_params_from_workdir share the "trying older" handling.
    ckpt = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
    state = {"params": {"w": jnp.ones((4, 2))}, "step": jnp.asarray(3)}
    for step in (3, 6):
        ckpt.save(step, dict(state, step=jnp.asarray(step)), {"epoch": 0}, {"model": {}})
    ckpt.close()
    original = ckpt_lib._state_metadata
    broken = {6}

    def state_metadata(directory, step):
        if step in broken:
            raise RuntimeError(f"step {step} is broken")
        return original(directory, step)

    monkeypatch.setattr(ckpt_lib, "_state_metadata", state_metadata)
    directory = tmp_path / "checkpoints"
    escaped = re.escape(str(directory))
    assert ckpt_lib.param_shapes_from_workdir(str(tmp_path)) == ({"w": (4, 2)}, 3)
    params, step = ckpt_lib.load_params_from_workdir(str(tmp_path))
    assert step == 3 and params["w"].shape == (4, 2)
    assert capsys.readouterr().out.splitlines() == [
        f"[checkpoint] {directory}/6 has unreadable metadata (step 6 is broken); trying older.",
        f"[checkpoint] {directory}/6 does not restore (step 6 is broken); trying older."]
    with pytest.raises(ckpt_lib.CheckpointError,
                       match=rf"^No restorable checkpoint in {escaped} at step 6\.$"):
        ckpt_lib.load_params_from_workdir(str(tmp_path), step=6)
    broken.add(3)
    with pytest.raises(ckpt_lib.CheckpointError, match=rf"^No readable checkpoint in {escaped}\.$"):
        ckpt_lib.param_shapes_from_workdir(str(tmp_path))
    with pytest.raises(ckpt_lib.CheckpointError,
                       match=rf"^No restorable checkpoint in {escaped}\.$"):
        ckpt_lib.load_params_from_workdir(str(tmp_path))
    assert sorted(os.listdir(directory)) == ["3", "6"]  # nothing moved


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("RESOURCE_EXHAUSTED: Out of memory "
                                                               "allocating 4294967296 bytes"),
                                   OSError(24, "Too many open files")])
def test_a_restore_out_of_memory_leaves_the_checkpoint_and_stops(tmp_path, monkeypatch, error):
    # Any failed restore counted as corruption: a sound checkpoint was moved aside and the run
    # started from scratch when the host or device was short of memory for a moment.
    ckpt = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
    state = {"params": {"w": jnp.ones((4, 2))}, "step": jnp.asarray(3)}
    ckpt.save(3, state, {"epoch": 0}, {"model": {}})
    ckpt.wait()

    def short_of_resources(*args, **kwargs):
        raise error
    monkeypatch.setattr(ckpt, "restore", short_of_resources)
    with pytest.raises(ckpt_lib.CheckpointError,
                       match=r"Restoring the checkpoint at step 3 in .*checkpoints ran out of "
                             r"resources \(.*\); the checkpoint is left where it is"):
        ckpt.restore_latest_good(jax.eval_shape(lambda: state))
    monkeypatch.undo()
    assert ckpt.all_steps() == [3] and not (tmp_path / "checkpoints_corrupt").exists()
    assert ckpt.restore_latest_good(jax.eval_shape(lambda: state))[3] == 3


def test_a_save_that_cannot_be_written_is_one_error_and_the_earlier_checkpoint_stays(
        tmp_path, capfd, caplog):
    # A full disk: orbax's background thread failed, and the next save (or the end of the run)
    # raised its ValueError with two pages of orbax traceback; before it, orbax's threads
    # logged the same traceback four times (~330 lines). A file size limit makes the writes fail
    # the same way (EFBIG instead of ENOSPC), without a small file system.
    import resource
    ckpt = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), async_save=True)
    state = {"params": {"w": jax.random.normal(jax.random.PRNGKey(0), (256, 256))},
             "step": jnp.asarray(1)}
    ckpt.save(1, state, {"epoch": 0}, {"model": {}})
    ckpt.wait()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, hard))
    try:
        ckpt.save(2, dict(state, step=jnp.asarray(2)), {"epoch": 0}, {"model": {}})
        with pytest.raises(ckpt_lib.CheckpointError,
                           match=r"Writing a checkpoint to .*checkpoints failed .*File too large"
                                 r".* saved there before are intact"):
            ckpt.close()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    # Shown once, on one line, when it happened; none of orbax's records with the traceback.
    out, err = capfd.readouterr()
    assert out.count("[checkpoint] A checkpoint save failed in the background (ValueError: ") == 1
    assert "Traceback" not in out + err
    assert not [r for r in caplog.records if r.exc_info]
    assert "1" in os.listdir(tmp_path / "checkpoints")
    restored = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints")).restore_latest_good(
        jax.eval_shape(lambda: state))
    assert restored[3] == 1


def test_a_background_save_failure_is_shown_above_the_training_bar(tmp_path, monkeypatch):
    # On a terminal stdout and stderr are one screen. The line for a save that failed in
    # orbax's background thread was printed wherever the cursor was: at the end of the
    # training bar's line, which the bar's next redraw then overwrote in part. It now goes
    # through `progress.write`, which clears the bar, writes the line and redraws the bar under
    # it, as the trainer's other notes do.
    import io
    import resource

    from tl_jax import progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(os, "get_terminal_size", lambda fd=None: os.terminal_size((80, 24)))
    ckpt = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), async_save=True)
    state = {"params": {"w": jax.random.normal(jax.random.PRNGKey(0), (256, 256))},
             "step": jnp.asarray(1)}
    bar = progress.bar(total=3, desc="bert_pretrain", unit="step", mininterval=0)
    bar.update(1)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, hard))
    try:
        ckpt.save(1, state, {"epoch": 0}, {"model": {}})
        with pytest.raises(ckpt_lib.CheckpointError, match="File too large"):
            ckpt.close()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        bar.close()
    drawn = terminal.getvalue()
    at = drawn.find("[checkpoint] A checkpoint save failed in the background")
    assert at > 0, drawn
    # A line of its own: the bar was cleared ("\r" + blanks + "\r") before it, not extended.
    assert drawn[at - 1] in "\r\n", repr(drawn[max(at - 80, 0):at + 20])
    assert drawn.index("\n", at) < drawn.find("bert_pretrain", at)  # the bar redrawn under it

def test_summaries_are_strict_json_even_with_nan(tmp_path):
    # summary.json / scores.json are read by jq and JSON.parse, which reject bare NaN.
    path = str(tmp_path / "summary.json")
    ckpt_lib.save_json(path, {"eval/loss": float("nan"), "acc": np.float32(0.5),
                              "rows": [np.float64("-inf"), 2]})

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    assert json.loads(open(path).read(), parse_constant=refuse) == {
        "eval/loss": "nan", "acc": 0.5, "rows": ["-inf", 2]}


def test_a_workdir_whose_tokenizer_is_gone_is_refused_and_left_as_it_was(tiny_bert_overrides,
                                                                           tmp_path):
    # Deleted, or not copied with the workdir: the run trained a new vocabulary (BERT and GPT
    # alike) and resumed the checkpoint with it, every token id now meaning another token; a
    # BERT run then failed on its data position, having already written the new tokenizer/.
    own_vocabulary = ["data.tokenizer=", "data.tokenizer_vocab_size=500"]  # trained on the data
    train.train_and_evaluate(cfg(tiny_bert_overrides, "train.steps=2", *own_vocabulary),
                             str(tmp_path))
    shutil.rmtree(tmp_path / "tokenizer")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    with pytest.raises(ckpt_lib.CheckpointError,
                       match=rf"{tmp_path} holds checkpoints but not tokenizer/, the vocabulary "
                             r"they were trained with .* Put it back in .*tokenizer"):
        train.train_and_evaluate(cfg(tiny_bert_overrides, "train.steps=4", *own_vocabulary,
                                     "data.max_documents=30"), str(tmp_path))
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


def test_an_elmo_workdir_without_its_vocab_txt_is_refused(tmp_path):
    from tl_jax import tasks
    (tmp_path / "checkpoints" / "5").mkdir(parents=True)
    with pytest.raises(ckpt_lib.CheckpointError, match=r"holds checkpoints but not vocab\.txt,"):
        tasks.check_saved_vocabulary("bilm", str(tmp_path))
    (tmp_path / "vocab.txt").write_text("<pad>\n")
    tasks.check_saved_vocabulary("bilm", str(tmp_path))
    # Before the first checkpoint there is nothing to keep.
    tasks.check_saved_vocabulary("clm", str(tmp_path / "new"))


def test_a_source_that_matches_nothing_names_a_few_tensors_of_each_side(tmp_path, monkeypatch):
    """No tensor matched: the error listed every name of the model (hundreds for BERT-base or
    GPT-2), and none of the source's, which is what shows how the two namings differ."""
    (tmp_path / "src" / "checkpoints").mkdir(parents=True)
    source = {f"transformer/h.{i}/w": np.zeros((2, 2), np.float32) for i in range(200)}
    source["embed"] = np.zeros((3,), np.float32)
    monkeypatch.setattr(ckpt_lib, "load_params_from_workdir", lambda path: (source, 9))
    params = {f"layer_{i}": {"kernel": np.zeros((2, 2), np.float32)} for i in range(300)}
    params["embed"] = np.zeros((4,), np.float32)
    with pytest.raises(warm_start.WarmStartError) as e:
        warm_start.warm_start(params, str(tmp_path / "src"))
    message = str(e.value)
    assert "no tensor matched this model by name and shape" in message
    assert "the source's: transformer/h.0/w, " in message and "and 197 more" in message
    assert "and 297 more" in message  # the model's 300 layers and embed, four shown
    assert "embed model (4,) vs source (3,)" in message
    assert len(message) < 1000, len(message)


def test_the_best_checkpoint_is_named_with_its_score_as_precise_as_the_eval_lines(tmp_path):
    # The reason `tl_jax predict` prints read "max: 30.7" for an eval logged as 30.7029, and
    # two checkpoints whose scores differ in the third decimal looked tied.
    ckpt = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
    for step in (2, 4):
        ckpt.save(step, {"params": {"w": jnp.ones(2)}, "step": jnp.asarray(step)},
                  {"epoch": 0}, {"model": {}})
    ckpt.close()
    rows = [{"step": 2, "eval/accuracy": 30.7029}, {"step": 4, "eval/accuracy": 30.6981}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    step, why = ckpt_lib.best_step(str(tmp_path), "eval/accuracy", "max")
    assert step == 2
    assert why == "the best kept checkpoint by eval/accuracy (max: 30.7029); the newest is step 4"


def test_a_damaged_saved_score_is_taken_again_from_the_metrics_and_readers_ignore_it(tmp_path,
                                                                                    capsys):
    # orbax keeps each checkpoint's eval score in STEP/metrics/metrics and reads them all when
    # it opens the folder: one such file cut short (a full disk, a workdir copied in part) made
    # every resume, predict, init_from, convert and extract a JSONDecodeError traceback.
    directory = tmp_path / "checkpoints"
    ckpt = ckpt_lib.Checkpointer(str(directory), keep=1, best_metric="eval/accuracy",
                                 async_save=False)
    rows = {2: 0.9, 4: 0.5}
    for step, score in rows.items():
        ckpt.save(step, {"params": {"w": jnp.full((4, 2), step)}, "step": jnp.asarray(step)},
                  {"epoch": 0}, {"model": {}}, metrics={"eval/accuracy": score})
    ckpt.close()
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "eval/accuracy": v}) + "\n" for s, v in rows.items()))
    (directory / "2" / "metrics" / "metrics").write_text('{"eval/accur')
    (directory / "4" / "metrics" / "metrics").write_text("[]")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))

    # Readers take no score from there: they read the checkpoint and leave the workdir as is.
    params, step = ckpt_lib.load_params_from_workdir(str(tmp_path))
    assert step == 4 and params["w"].tolist() == [[4, 4]] * 4
    assert ckpt_lib.param_shapes_from_workdir(str(tmp_path)) == ({"w": (4, 2)}, 4)
    assert ckpt_lib.config_from_workdir(str(tmp_path), 2) == {"model": {}}
    assert ckpt_lib.best_step(str(tmp_path), "eval/accuracy")[0] == 2
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before

    # A resume says which, scores them again from metrics.jsonl, and still keeps the best.
    ckpt = ckpt_lib.Checkpointer(str(directory), keep=1, best_metric="eval/accuracy",
                                 async_save=False)
    out = capsys.readouterr().out
    assert (f"[checkpoint] The eval score saved with the checkpoint at step 2 "
            f"({directory}/2/metrics/metrics) is unreadable (JSONDecodeError: ") in out
    assert ("at step 4 ({}/4/metrics/metrics) holds a JSON list, not the scores; it was removed "
            "and taken again from metrics.jsonl.".format(directory)) in out
    assert json.loads((directory / "2" / "metrics" / "metrics").read_text()) == {
        "eval/accuracy": 0.9}
    restored = ckpt.restore_latest_good(jax.eval_shape(
        lambda: {"params": {"w": jnp.ones((4, 2), jnp.int32)}, "step": jnp.asarray(0)}))
    assert restored[3] == 4
    ckpt.save(6, {"params": {"w": jnp.full((4, 2), 6)}, "step": jnp.asarray(6)}, {"epoch": 0},
              {"model": {}}, metrics={"eval/accuracy": 0.7})
    ckpt.close()
    assert saved_steps(tmp_path) == [2, 6]
    assert not (tmp_path / "checkpoints_corrupt").exists()


def test_a_checkpoint_whose_config_does_not_read_is_named(tmp_path):
    # predict and fill_mask read the config a checkpoint was saved with (its resolved_model);
    # a damaged config/metadata was a JSONDecodeError traceback.
    ckpt = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
    ckpt.save(3, {"params": {"w": jnp.ones(2)}, "step": jnp.asarray(3)}, {"epoch": 0},
              {"model": {}, "resolved_model": {"hidden_size": 8}})
    ckpt.close()
    assert ckpt_lib.config_from_workdir(str(tmp_path), 3)["resolved_model"] == {"hidden_size": 8}
    (tmp_path / "checkpoints" / "3" / "config" / "metadata").write_text('{"model": {')
    directory = re.escape(str(tmp_path / "checkpoints"))
    with pytest.raises(ckpt_lib.CheckpointError,
                       match=rf"^Checkpoint at step 3 in {directory} has an unreadable "
                             r"config/metadata, the config it was saved with \(JSONDecodeError: "
                             r".*\): it cannot be read \(copied or written in part\?\)$"):
        ckpt_lib.config_from_workdir(str(tmp_path), 3)


# Continued pretraining resumed after its init_from was moved or deleted: (config, the source's
# overrides, the run's overrides, a model config change the resume must still refuse). SRC is
# the source's path. BERT's run copies the source's architecture (model.size = init_from, as
# for MiniLM), which the resume takes from its checkpoint's resolved_model.
_GPT_DATA = ["data.batch_size=8", "data.eval_batch_size=8", "data.seq_len=16"]
CONTINUED_PRETRAINING = {
    "bert_pretrain": (BERT, ["model.size=mini"], ["model.size=SRC"], "model.vocab_size=5000"),
    "electra": (str(ROOT / "configs" / "electra_pretrain.py"), [], [], "model.vocab_size=5000"),
    "clm": (str(ROOT / "configs" / "gpt_pretrain.py"), _GPT_DATA, _GPT_DATA,
            "model.vocab_size=5000"),
    "bilm": (str(ROOT / "configs" / "elmo_pretrain.py"), ["data.max_units=300"],
             ["data.max_units=300"], "model.max_chars=30"),
}


@pytest.mark.parametrize("task", sorted(CONTINUED_PRETRAINING))
def test_continued_pretraining_resumes_without_its_init_from(task, tiny_bert_overrides, data_dir,
                                                            tmp_path, capsys):
    """A continued-pretraining run (init_from set) stopped with "init_from=... does not exist"
    when resumed after its source was moved or deleted (BERT and ELECTRA), though its
    checkpoint holds every weight, the workdir its vocabulary, and its shape is the config's
    or (a model.size directory) its resolved_model. The run resumes and says so in one line; a
    changed model config is still refused, and a new run still needs init_from."""
    spec, source_overrides, run_overrides, changed = CONTINUED_PRETRAINING[task]
    common = ["train.progress=False", "mesh.num_devices=1", "train.eval_every=0"]
    if task in ("bert_pretrain", "electra"):
        common += [o for o in tiny_bert_overrides if not o.startswith((
            "data.tokenizer=", "model.max_position_embeddings=") if task == "bert_pretrain"
            else "data.tokenizer=")]
    elif task == "clm":
        common.append(f"data.corpus={data_dir / 'polarity_sentences.jsonl'}")
    source, workdir = tmp_path / "source", str(tmp_path / "run")
    train.train_and_evaluate(config_lib.load_config(
        spec + ":tiny", common + source_overrides + ["train.steps=1"]), str(source))

    def config(steps, *more):
        return config_lib.load_config(spec + ":tiny", common + [
            o.replace("SRC", str(source)) for o in run_overrides] + [
            f"init_from={source}", "train.checkpoint_every=2", f"train.steps={steps}", *more])

    built = train.train_and_evaluate(config(2), workdir).trainer.task.model_config
    shutil.move(source, tmp_path / "moved")
    capsys.readouterr()
    resumed = train.train_and_evaluate(config(4), workdir)
    out = capsys.readouterr().out
    assert "Resuming from step 2" in out, out
    assert f"[{task}] init_from={source} is gone: the run resumes from its checkpoint" in out, out
    assert resumed.summary["step"] == 4 and resumed.trainer.task.model_config == built
    with pytest.raises(ckpt_lib.CheckpointError, match=re.escape(changed.split("=")[0])):
        train.train_and_evaluate(config(6, changed), workdir)
    # (BERT's model.size names the source too, and is read first.)
    with pytest.raises(Exception, match=r"source' (does not exist|is neither a tl_jax workdir)"):
        train.train_and_evaluate(config(2), str(tmp_path / "new"))


def test_a_damaged_saved_shape_file_is_one_error_naming_it(tmp_path):
    # A probe keeps its encoder's shape (encoder_model.json), distillation its teacher's
    # (teacher_model.json), for a resume whose source is gone. Cut short by an interrupted copy
    # of the workdir, either stopped the resume with a bare JSONDecodeError traceback.
    from tl_jax.tasks import distill, downstream

    (tmp_path / "checkpoints" / "2").mkdir(parents=True)
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "tokenizer.json").write_text("{}")
    for name, read, what in [(downstream.ENCODER_MODEL_FILE, downstream.kept_encoder,
                              "the encoder's shape"),
                             (distill.TEACHER_MODEL_FILE, distill.kept_teacher,
                              "the teacher's shape")]:
        (tmp_path / name).write_text('{"hidden_size": 32, "num_la')
        with pytest.raises(ValueError, match=rf"{name}:1: invalid JSON .*; {what}, saved when"):
            read(str(tmp_path))

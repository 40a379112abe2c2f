"""`tl_jax sweep`: the run plan, the result tables and plots, skipping finished runs, failures."""
import csv
import json
import pathlib

import pytest

from tl_jax import config as config_lib
from tl_jax import main as cli
from tl_jax import sweep, train

ROOT = pathlib.Path(__file__).resolve().parent.parent
BERT = str(ROOT / "configs" / "bert_pretrain.py") + ":tiny"


def test_plan_is_the_product_of_the_grid_the_zipped_group_and_the_seeds():
    runs = sweep.plan(["data.masked_lm_prob=0.1,0.3"],
                      ["data.batch_size=16,64", "optimizer.learning_rate=1e-3,2e-3"], [0, 1])
    assert len(runs) == 8
    settings = {r.setting for r in runs}
    assert (("data.masked_lm_prob", "0.3"), ("data.batch_size", "64"),
            ("optimizer.learning_rate", "2e-3")) in settings
    # Zipped axes move together: batch 16 never meets lr 2e-3.
    assert not any(dict(s)["data.batch_size"] == "16" and dict(s)["optimizer.learning_rate"]
                   == "2e-3" for s in settings)
    assert runs[0].name == "masked_lm_prob=0.1__batch_size=16__learning_rate=1e-3__seed=0"
    assert runs[0].overrides == ["data.masked_lm_prob=0.1", "data.batch_size=16",
                                 "optimizer.learning_rate=1e-3", "seed=0"]
    # A zipped value may repeat, as long as the settings differ.
    runs = sweep.plan([], ["optimizer.name=adamw,adamw,lamb", "data.batch_size=16,64,16"])
    assert [dict(r.setting)["optimizer.name"] for r in runs] == ["adamw", "adamw", "lamb"]
    # Commas inside brackets or quotes belong to a value.
    key, values = sweep.parse_axis("model.filters=((1, 8), (2, 8)),((1, 4),),'a,b'", "grid")
    assert values == ["((1, 8), (2, 8))", "((1, 4),)", "'a,b'"]
    # Seeds alone are a sweep too (one setting's spread over seeds); it was "nothing to sweep".
    runs = sweep.plan([], [], [0, 1, 2])
    assert [(r.name, r.setting, r.overrides) for r in runs] == [
        (f"seed={s}", (), [f"seed={s}"]) for s in (0, 1, 2)]


@pytest.mark.parametrize("grid, zipped, seeds, message", [
    ([], [], [0], r"nothing to sweep \(give --grid and/or --zip, or two or more --seeds\)"),
    (["data.batch_size"], [], [0], "expected KEY=V1,V2"),
    (["data.batch_size=16,,32"], [], [0], "an empty value"),
    (["data.batch_size=16,16"], [], [0], "a value repeats"),
    (["data.batch_size=16,32", "data.batch_size=8,4"], [], [0], "swept twice"),
    (["seed=1,2"], [], [0], "--seeds"),
    ([], ["data.batch_size=16,32", "optimizer.learning_rate=1e-3"], [0], "one length"),
    (["data.batch_size=16,32"], [], [1, 1], "distinct"),
    (["data.batch_size=16,32"], [], [], r"no seeds given; --seeds takes comma-separated"),
    ([], ["data.batch_size=16,16", "optimizer.name=lamb,lamb"], [0], "repeat a setting"),
    (["a.x=1/2,1_2"], [], [0], "same run name"),
])
def test_bad_sweeps_are_refused(grid, zipped, seeds, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        sweep.plan(grid, zipped, seeds)


def _fake_training(calls, fail=(), stop_at=None, bug=(), stopped_by="SIGTERM"):
    """Stands in for train.train_and_evaluate: writes what a run writes, from the config."""
    def fake(config, workdir):
        name = pathlib.Path(workdir).name
        calls.append(name)
        if any(f in name for f in fail):
            raise ValueError(f"broken run {name}")
        if any(f in name for f in bug):
            raise KeyError(f"a bug in {name}")
        work = pathlib.Path(workdir)
        work.mkdir(parents=True, exist_ok=True)
        score = config.data.masked_lm_prob + config.seed / 100
        rows = [{"step": 1, "loss": 5.0}, {"step": 2, "loss": 4.0 - score},
                {"step": 2, "eval/mlm_accuracy": score / 2},
                {"step": 4, "eval/mlm_accuracy": score}]
        (work / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        step = stop_at if stop_at and name.startswith("masked_lm_prob=0.3") else config.train.steps
        summary = {"step": step, "eval/mlm_accuracy": score}
        (work / "summary.json").write_text(json.dumps(summary))
        return train.TrainResult(summary=summary, state={}, trainer=None,
                                 stopped_by=stopped_by)
    return fake


def test_sweep_tables_plots_and_a_rerun_that_skips_finished_runs(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(train, "train_and_evaluate", _fake_training(calls))
    args = dict(grid=["data.masked_lm_prob=0.1,0.3"], overrides=["train.steps=4"])
    sweep.run(BERT, str(tmp_path), seeds=[0], **args)
    assert calls == ["masked_lm_prob=0.1__seed=0", "masked_lm_prob=0.3__seed=0"]
    # More seeds later: only the new runs train.
    sweep.run(BERT, str(tmp_path), seeds=[0, 1], **args)
    assert calls[2:] == ["masked_lm_prob=0.1__seed=1", "masked_lm_prob=0.3__seed=1"]
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [r["run"] for r in rows] == ["masked_lm_prob=0.1__seed=0", "masked_lm_prob=0.1__seed=1",
                                        "masked_lm_prob=0.3__seed=0", "masked_lm_prob=0.3__seed=1"]
    assert float(rows[1]["eval/mlm_accuracy"]) == pytest.approx(0.11)
    assert float(rows[1]["train/loss"]) == pytest.approx(4.0 - 0.11)
    table = (tmp_path / "results.md").read_text()
    # Mean and population std over the two seeds: 0.1 and 0.11 -> 0.105 +- 0.005.
    assert "| 0.1 | 2 | 0.1050 ± 0.0050 |" in table, table
    assert "| 0.3 | 2 | 0.3050 ± 0.0050 |" in table
    saved = json.loads((tmp_path / "results.json").read_text())
    curve = saved["settings"][0]["curves"]["eval/mlm_accuracy"]
    assert [s for s, _ in curve] == [2, 4]
    assert [v for _, v in curve] == pytest.approx([0.0525, 0.105])
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert (tmp_path / "final.png").stat().st_size > 1000
    # A run whose steps changed is not "finished": it trains (resumes) again.
    sweep.run(BERT, str(tmp_path), seeds=[0], grid=args["grid"], overrides=["train.steps=6"])
    assert calls[4:] == ["masked_lm_prob=0.1__seed=0", "masked_lm_prob=0.3__seed=0"]
    # A metric the task declares (so not refused up front) that no run's summary holds.
    with pytest.raises(ValueError, match=r"no run reports the metric 'eval/nsp_accuracy'.*"
                       r"mlm_accuracy"):
        sweep.run(BERT, str(tmp_path), seeds=[0], metrics=["eval/nsp_accuracy"],
                  grid=args["grid"], overrides=["train.steps=6"])


def test_only_process_0_writes_the_tables_and_plots(tmp_path, monkeypatch, capsys):
    """Every process of a multi-process sweep wrote results.* and the plots into the one shared
    workdir; the others now compute the same result and leave the files to process 0."""
    import jax

    calls = []
    monkeypatch.setattr(train, "train_and_evaluate", _fake_training(calls))
    args = dict(grid=["data.masked_lm_prob=0.1,0.3"], seeds=[0, 1], overrides=["train.steps=4"])
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    other = sweep.run(BERT, str(tmp_path / "other"), **args)
    assert len(calls) == 4  # it trained its part of every run
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["runs"]
    assert "results" not in capsys.readouterr().out  # nor printed the table
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    first = sweep.run(BERT, str(tmp_path / "first"), **args)
    assert first == other  # the same figures on both
    assert {"results.csv", "results.md", "results.json"} <= {
        p.name for p in (tmp_path / "first").iterdir()}
    assert "[sweep] results.md, results.csv, results.json" in capsys.readouterr().out


def test_only_process_0_prints_the_sweep_lines(tmp_path, monkeypatch, capsys):
    """Every process of a train sweep trains each run together; each also printed the plan,
    every run's line, the failures, the notes and a bug's traceback, so a sweep on N processes
    said everything N times. Process 0 alone says it; the others return the same result."""
    import jax

    calls = []
    args = dict(grid=["data.masked_lm_prob=0.1,0.2,0.05"], seeds=[0, 1],
                overrides=["train.steps=4", "train.eval_every=0"])
    outputs, results = {}, {}
    for index in (1, 0):
        monkeypatch.setattr(jax, "process_index", lambda index=index: index)
        workdir = tmp_path / str(index)
        monkeypatch.setattr(train, "train_and_evaluate",
                            _fake_training(calls, fail=["0.2"], bug=["0.05"]))
        dry = sweep.run(BERT, str(workdir), dry_run=True, **args)
        first = sweep.run(BERT, str(workdir), **args)
        again = sweep.run(BERT, str(workdir), **args)  # the finished runs are skipped
        monkeypatch.setattr(train, "train_and_evaluate", _fake_training(calls, stop_at=2))
        stopped = sweep.run(BERT, str(workdir / "stopped"), grid=["data.masked_lm_prob=0.3"],
                            overrides=["train.steps=4"])
        results[index] = (dry, first, again, stopped)
        captured = capsys.readouterr()
        outputs[index] = captured.out + captured.err
    assert results[1] == results[0]  # the same return value on every process
    assert results[1][3]["stopped"] == "masked_lm_prob=0.3__seed=0"
    assert [f["run"] for f in results[1][1]["failed"]] == [
        "masked_lm_prob=0.2__seed=0", "masked_lm_prob=0.2__seed=1",
        "masked_lm_prob=0.05__seed=0", "masked_lm_prob=0.05__seed=1"]
    for line in ["[sweep] Note: train.eval_every=0", "[sweep] 6 runs (3 settings x 2 seeds)",
                 "  masked_lm_prob=0.1__seed=0: --config.data.masked_lm_prob=0.1",
                 "[sweep] 1/6 masked_lm_prob=0.1__seed=0\n",
                 "[sweep] 1/6 masked_lm_prob=0.1__seed=0: finished before, skipped",
                 "[sweep] masked_lm_prob=0.2__seed=0 failed: ValueError: broken run",
                 "Traceback", "[sweep] 4 of 6 runs failed",
                 "[sweep] masked_lm_prob=0.3__seed=0 stopped at step 2 of 4"]:
        assert line in outputs[0], line
    assert "[sweep]" not in outputs[1] and "masked_lm_prob" not in outputs[1], outputs[1]
    assert "Traceback" not in outputs[1]


def test_a_static_sweep_runs_on_process_0_alone_under_a_multi_process_launch(
        tmp_path, data_dir, monkeypatch, capsys):
    """A static sweep starts no jax.distributed, so under a multi-process launch every process
    took itself for process 0: each trained the same runs into the same folders (racing) and
    wrote the tables. Like `tl_jax static`, process 0 does the work; the others say so in one
    line and exit 0."""
    from tl_jax import static_train

    trained = []
    real = static_train.run
    monkeypatch.setattr(static_train, "run",
                        lambda config, workdir: trained.append(workdir) or real(config, workdir))
    workdir = tmp_path / "sweep"
    argv = ["sweep", f"--config={ROOT / 'configs' / 'word2vec.py'}:tiny", f"--workdir={workdir}",
            "--grid=window=2", f"--config.eval_dir={data_dir}"]
    for name in ("TL_JAX_COORDINATOR", "TL_JAX_AUTO_DISTRIBUTED", "TL_JAX_TRACEBACK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TL_JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("TL_JAX_COORDINATOR", "localhost:1234")  # never contacted
    monkeypatch.setenv("TL_JAX_PROCESS_ID", "1")
    cli.main(argv)  # returns: exit status 0
    assert trained == [] and not workdir.exists()
    out = capsys.readouterr().out
    assert out.strip().splitlines() == [
        "tl_jax sweep of a `tl_jax static` config runs in one process: process 0 does the work "
        "and writes the output; process 1 of 2 has nothing to do."]
    # Which process this is must be known; otherwise every process would do the work.
    monkeypatch.delenv("TL_JAX_PROCESS_ID")
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert "TL_JAX_PROCESS_ID is not set" in str(e.value.code) and not workdir.exists()
    monkeypatch.setenv("TL_JAX_PROCESS_ID", "0")
    cli.main(argv)
    assert trained == [str(workdir / "runs" / "window=2__seed=0")]
    assert (workdir / "results.md").exists()
    assert "[sweep] 1/1 window=2__seed=0" in capsys.readouterr().out


def test_a_failed_run_is_reported_and_the_others_go_on(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(train, "train_and_evaluate", _fake_training(calls, fail=["0.2"]))
    with pytest.raises(SystemExit, match="1 sweep run"):
        cli.main(["sweep", f"--config={BERT}", f"--workdir={tmp_path}",
                  "--grid=data.masked_lm_prob=0.1,0.2,0.3", "--config.train.steps=4"])
    assert len(calls) == 3
    out = capsys.readouterr().out
    assert "masked_lm_prob=0.2__seed=0 failed: ValueError: broken run" in out
    table = (tmp_path / "results.md").read_text()
    assert "| 0.2 | 0 | - |" in table and "Failed runs:" in table


def test_a_run_that_hits_a_bug_is_reported_in_full_and_the_others_go_on(tmp_path, monkeypatch,
                                                                         capsys):
    # Only input errors were caught: a KeyError in one run stopped the sweep before its tables.
    calls = []
    monkeypatch.setattr(train, "train_and_evaluate", _fake_training(calls, bug=["0.1"]))
    result = sweep.run(BERT, str(tmp_path), seeds=[0], grid=["data.masked_lm_prob=0.1,0.3"],
                       overrides=["train.steps=4"])
    assert len(calls) == 2 and [f["run"] for f in result["failed"]] == [
        "masked_lm_prob=0.1__seed=0"]
    captured = capsys.readouterr()
    assert "Traceback" in captured.err and "KeyError: 'a bug in masked_lm_prob=0.1" in captured.err
    assert "masked_lm_prob=0.1__seed=0 failed: KeyError" in captured.out
    assert "| 0.3 | 1 |" in (tmp_path / "results.md").read_text()


def test_a_run_stopped_by_sigterm_stops_the_sweep(tmp_path, monkeypatch, capsys):
    # The trainer saves and returns early on SIGTERM; the sweep used to start the next run.
    # It exits 143, like `tl_jax train` stopped so (it was 1, like a failed run).
    calls = []
    monkeypatch.setattr(train, "train_and_evaluate", _fake_training(calls, stop_at=2))
    with pytest.raises(SystemExit) as e:
        cli.main(["sweep", f"--config={BERT}", f"--workdir={tmp_path}",
                  "--grid=data.masked_lm_prob=0.1,0.3,0.25", "--config.train.steps=4"])
    assert e.value.code == cli.EXIT_STOPPED == 143
    run = "masked_lm_prob=0.3__seed=0"
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"tl_jax: The sweep stopped during run {run} (SIGTERM; saved in "
        f"{tmp_path / 'runs' / run / 'checkpoints'}): run the same command again to resume it.")
    assert calls == ["masked_lm_prob=0.1__seed=0", "masked_lm_prob=0.3__seed=0"]


def test_a_sweep_stopped_by_ctrl_c_on_several_processes_says_sigint(tmp_path, monkeypatch, capsys):
    # A Ctrl-C on a run of several processes stops it saved, as SIGTERM does; the sweep's last
    # line named SIGTERM whatever stopped it.
    monkeypatch.setattr(train, "train_and_evaluate",
                        _fake_training([], stop_at=2, stopped_by="SIGINT"))
    with pytest.raises(SystemExit) as e:
        cli.main(["sweep", f"--config={BERT}", f"--workdir={tmp_path}",
                  "--grid=data.masked_lm_prob=0.1,0.3", "--config.train.steps=4"])
    assert e.value.code == cli.EXIT_STOPPED
    assert "stopped during run masked_lm_prob=0.3__seed=0 (SIGINT; saved in " in (
        capsys.readouterr().err)


def test_a_rerun_with_fewer_steps_is_refused_not_reported_as_the_shorter_runs(
        tmp_path, monkeypatch, capsys):
    # Like the trainer: a workdir already past train.steps trains nothing and reports the step
    # its checkpoint is at. The sweep took that for a SIGTERM and stopped at the first run;
    # then it reported the longer runs' figures under the shorter train.steps, averaged with
    # any new seed trained for the shorter one. It is refused before anything trains.
    calls = []

    def fake(config, workdir):
        calls.append(pathlib.Path(workdir).name)
        work = pathlib.Path(workdir)
        work.mkdir(parents=True, exist_ok=True)
        done = work / "summary.json"
        before = json.loads(done.read_text())["step"] if done.exists() else 0
        summary = {"step": max(before, config.train.steps), "eval/mlm_accuracy": 0.5}
        done.write_text(json.dumps(summary))
        return train.TrainResult(summary=summary, state={}, trainer=None)

    monkeypatch.setattr(train, "train_and_evaluate", fake)
    grid = ["data.masked_lm_prob=0.1,0.3"]
    sweep.run(BERT, str(tmp_path), grid=grid, overrides=["train.steps=6"])
    with pytest.raises(config_lib.ConfigError, match=r"2 run\(s\) of this sweep already trained "
                       r"past train.steps=4 \(masked_lm_prob=0.1__seed=0 at step 6, "):
        sweep.run(BERT, str(tmp_path), grid=grid, seeds=[0, 1], overrides=["train.steps=4"])
    assert calls == ["masked_lm_prob=0.1__seed=0", "masked_lm_prob=0.3__seed=0"]
    # A run interrupted past the new value (a checkpoint, no summary yet) counts too.
    run_dir = tmp_path / "runs" / "masked_lm_prob=0.1__seed=0"
    (run_dir / "summary.json").unlink()
    (run_dir / "checkpoints" / "5").mkdir(parents=True)
    with pytest.raises(config_lib.ConfigError, match=r"0.1__seed=0 at step 5, masked_lm_prob"):
        sweep.run(BERT, str(tmp_path), grid=grid, overrides=["train.steps=4"])
    # The steps they were trained for report them; more trains on.
    result = sweep.run(BERT, str(tmp_path), grid=grid, overrides=["train.steps=6"])
    assert "stopped" not in result and "the sweep stops here" not in capsys.readouterr().out
    assert [r["step"] for r in result["runs"]] == [6, 6]


def test_every_config_is_checked_before_the_first_run(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "train_and_evaluate", lambda *a: pytest.fail("trained"))
    # The second setting's value is bad: found before the first run trains.
    with pytest.raises(config_lib.ConfigError, match=r"run masked_lm_prob=abc__seed=0: "):
        sweep.run(BERT, str(tmp_path), grid=["data.masked_lm_prob=0.1,abc"])
    with pytest.raises(config_lib.ConfigError, match=r"run masked_lm_prob=0.1__seed=0: .*nope"):
        sweep.run(BERT, str(tmp_path), grid=["data.masked_lm_prob=0.1,0.3"],
                  overrides=["data.nope=1"])
    other = tmp_path / "other.py"
    other.write_text("import ml_collections\n\ndef get_config(arg=None):\n"
                     "    return ml_collections.ConfigDict(dict(seed=0, dim=8))\n")
    with pytest.raises(config_lib.ConfigError, match="neither a `tl_jax train` config"):
        sweep.run(str(other), str(tmp_path), grid=["dim=8,16"])


def test_a_batch_size_the_devices_do_not_divide_is_refused_before_the_first_run(
        tmp_path, monkeypatch):
    # LAMB's batch scaling sweeps the batch: a size the 8 devices do not divide failed only
    # when its turn came, after the runs before it had trained.
    monkeypatch.setattr(train, "train_and_evaluate", lambda *a: pytest.fail("trained"))
    with pytest.raises(ValueError, match=r"sweep run batch_size=12__seed=0: data.batch_size=12 "
                                         r"is not divisible by the 8 data-parallel shards"):
        sweep.run(BERT, str(tmp_path), grid=["data.batch_size=16,12"])
    assert not (tmp_path / "runs").exists()
    # So is a value the optimizer does not know (it failed after the runs before it).
    with pytest.raises(ValueError, match=r"sweep run name=adam__seed=0: optimizer.name='adam'; "
                                         r"expected adamw, lamb or sgd"):
        sweep.run(BERT, str(tmp_path), grid=["optimizer.name=adamw,adam"])
    assert not (tmp_path / "runs").exists()


def test_a_static_size_below_its_minimum_is_refused_before_the_first_run(tmp_path, monkeypatch):
    # `tl_jax static` refuses window=0 before reading its corpus, but in a sweep it failed only
    # when its turn came, after the runs before it had trained.
    from tl_jax import static_train

    monkeypatch.setattr(static_train, "run", lambda *a: pytest.fail("trained"))
    path = str(ROOT / "configs" / "word2vec.py") + ":tiny"
    with pytest.raises(ValueError, match=r"sweep run window=0__seed=0: config.window=0: "
                                         r"must be >= 1"):
        sweep.run(path, str(tmp_path), grid=["window=2,0"])
    with pytest.raises(ValueError, match=r"sweep run save_formats=.*unknown format"):
        sweep.run(str(ROOT / "configs" / "glove.py") + ":tiny", str(tmp_path),
                  grid=["save_formats=('glove_text',),('glove',)"])
    assert not (tmp_path / "runs").exists()


def test_an_override_of_a_swept_key_is_refused(tmp_path, monkeypatch):
    # The run's own value used to win, dropping the --config.* override without a word.
    monkeypatch.setattr(train, "train_and_evaluate", lambda *a: pytest.fail("trained"))
    with pytest.raises(config_lib.ConfigError,
                       match=r"--config.data.masked_lm_prob would be replaced by each run's own"):
        sweep.run(BERT, str(tmp_path), grid=["data.masked_lm_prob=0.1,0.3"],
                  overrides=["train.steps=4", "data.masked_lm_prob=0.2"])
    with pytest.raises(config_lib.ConfigError, match=r"--config.seed would be .*--seeds"):
        sweep.run(BERT, str(tmp_path), grid=["data.masked_lm_prob=0.1,0.3"],
                  overrides=["seed=3"])


def test_a_real_sweep_trains_each_run_in_its_own_workdir(tiny_bert_overrides, tmp_path):
    overrides = list(tiny_bert_overrides) + ["train.steps=2", "train.eval_every=2",
                                             "train.eval_batches=1", "train.log_every=1",
                                             "data.max_predictions_per_seq=9"]  # 0.3 uncapped
    result = sweep.run(BERT, str(tmp_path), grid=["data.masked_lm_prob=0.15,0.3"],
                       overrides=overrides)
    assert [r["step"] for r in result["runs"]] == [2, 2]
    for rec in result["runs"]:
        run_dir = tmp_path / "runs" / rec["run"]
        saved = json.loads((run_dir / "config.json").read_text())
        assert str(saved["data"]["masked_lm_prob"]) == rec["setting"]["data.masked_lm_prob"]
        assert 0.0 <= rec["eval/mlm_accuracy"] <= 1.0 and rec["train/loss"] > 0
    assert "eval/mlm_accuracy" in result["metrics"] and "eval/nsp_accuracy" in result["metrics"]


def test_runs_trained_with_other_settings_are_refused_not_reported(tmp_path, monkeypatch):
    # A rerun with another --config.* override used to skip the finished runs and report
    # their results as the new settings'.
    calls = []
    monkeypatch.setattr(train, "train_and_evaluate", _fake_training(calls))
    grid = ["data.masked_lm_prob=0.1,0.3"]
    sweep.run(BERT, str(tmp_path), grid=grid, overrides=["train.steps=4"])
    for name in calls:  # what the trainer writes at the start of a run
        config = config_lib.load_config(BERT, ["train.steps=4", f"data.masked_lm_prob={name[15:18]}",
                                               "seed=0"])
        (tmp_path / "runs" / name / "config.json").write_text(json.dumps(config.to_dict()))
    with pytest.raises(config_lib.ConfigError, match=r"masked_lm_prob=0.1__seed=0 was trained "
                       r"with other settings:\n  optimizer.learning_rate: 0.001 there, 0.01 now"):
        sweep.run(BERT, str(tmp_path), grid=grid,
                  overrides=["train.steps=4", "optimizer.learning_rate=0.01"])
    assert len(calls) == 2
    # What only changes how a run logs, or how long it trains, is not another setting.
    sweep.run(BERT, str(tmp_path), grid=grid, overrides=["train.steps=4", "train.log_every=1"])
    assert len(calls) == 2
    # A run's config.json that is not JSON is named (file and line), not a JSON traceback.
    broken = tmp_path / "runs" / calls[0] / "config.json"
    broken.write_text('{"seed": 0,')
    with pytest.raises(ValueError, match=f"{broken}:1: invalid JSON \\(.*\\); the config of an "
                                         "earlier run of this sweep"):
        sweep.run(BERT, str(tmp_path), grid=grid, overrides=["train.steps=4"])


def test_a_static_vectors_sweep(tmp_path, data_dir):
    path = str(ROOT / "configs" / "word2vec.py") + ":tiny"
    result = sweep.run(path, str(tmp_path), grid=["window=2,5"],
                       overrides=[f"eval_dir={data_dir}"])
    assert [r["run"] for r in result["runs"]] == ["window=2__seed=0", "window=5__seed=0"]
    assert result["metrics"] == ["wordsim353_spearman", "simlex999_spearman", "analogy_accuracy",
                                 "final_loss"]
    for rec in result["runs"]:
        saved = json.loads((tmp_path / "runs" / rec["run"] / "scores.json").read_text())
        assert rec["wordsim353_spearman"] == saved["wordsim353_spearman"]
        assert (tmp_path / "runs" / rec["run"] / "static_config.json").exists()
    table = (tmp_path / "results.md").read_text()
    assert table.startswith("| window | seeds | wordsim353_spearman |"), table
    again = sweep.run(path, str(tmp_path), grid=["window=2,5"], overrides=[f"eval_dir={data_dir}"])
    assert again["runs"][0]["final_loss"] == result["runs"][0]["final_loss"]


def test_a_static_run_saved_before_glove_adagrad_existed_is_not_refused(tmp_path, monkeypatch):
    # `tl_jax static` takes such a run for glove.adagrad='optax' (what trained it); the sweep
    # refused it as "trained with other settings: glove.adagrad: '(absent)' there".
    from tl_jax import static_train

    path = str(ROOT / "configs" / "glove.py") + ":tiny"
    run_dir = tmp_path / "runs" / "window=2__seed=0"
    run_dir.mkdir(parents=True)
    earlier = config_lib.load_config(path, ["window=2", "seed=0"]).to_dict()
    del earlier["glove"]["adagrad"], earlier["progress"]  # progress: a later key too
    (run_dir / "static_config.json").write_text(json.dumps(earlier))
    (run_dir / "scores.json").write_text(json.dumps({"final_loss": 0.5}))
    monkeypatch.setattr(static_train, "run", lambda *a: pytest.fail("retrained a finished run"))
    result = sweep.run(path, str(tmp_path), grid=["window=2"])
    assert [r["final_loss"] for r in result["runs"]] == [0.5]
    # Nor is one that showed no progress bars (how a run reports is no setting of what it
    # learns).
    (run_dir / "static_config.json").write_text(json.dumps(dict(earlier, progress=False)))
    result = sweep.run(path, str(tmp_path), grid=["window=2"])
    assert [r["final_loss"] for r in result["runs"]] == [0.5]
    # A run trained with the other rule is still refused.
    earlier["glove"]["adagrad"] = "glove_c"
    (run_dir / "static_config.json").write_text(json.dumps(earlier))
    with pytest.raises(config_lib.ConfigError, match=r"glove.adagrad: 'glove_c' there, 'optax'"):
        sweep.run(path, str(tmp_path), grid=["window=2"])


def test_a_misspelt_metric_of_a_static_sweep_is_refused_before_any_run_trains(
        tmp_path, monkeypatch, data_dir):
    """The scores a static run writes are known from its config: a misspelt --metrics name
    was refused only after every run had trained (and no table was written)."""
    from tl_jax import static_train

    path = str(ROOT / "configs" / "word2vec.py") + ":tiny"
    monkeypatch.setattr(static_train, "run", lambda *a: pytest.fail("trained a run"))
    with pytest.raises(config_lib.ConfigError, match=r"--metrics=wordsim_spearman: run "
                       r"window=2__seed=0 would not report it; it reports \['train_seconds', "
                       r"'final_loss', 'words_per_sec', 'wordsim353_spearman'"):
        sweep.run(path, str(tmp_path), grid=["window=2,5"], metrics=["wordsim_spearman"],
                  overrides=[f"eval_dir={data_dir}"])
    # An evaluation score without the evaluation files is refused too, saying why.
    empty = tmp_path / "no_evals"
    empty.mkdir()
    with pytest.raises(config_lib.ConfigError, match=r"--metrics=simlex999_spearman: .*would not "
                       r"report it \(the evaluation scores need config.eval_dir"):
        sweep.run(path, str(tmp_path), grid=["window=2,5"],
                  metrics=["final_loss", "simlex999_spearman"], overrides=[f"eval_dir={empty}"])
    assert not (tmp_path / "runs").exists()


def test_a_misspelt_metric_of_a_train_sweep_is_refused_before_any_run_trains(tmp_path,
                                                                              monkeypatch):
    """A train run reports train/loss and the eval/ metrics its task declares from the config:
    any other name, or an eval/ one where nothing is evaluated, is refused up front."""
    monkeypatch.setattr(train, "train_and_evaluate", lambda *a: pytest.fail("trained a run"))
    grid = ["data.masked_lm_prob=0.1,0.3"]
    with pytest.raises(config_lib.ConfigError, match=r"--metrics=train_loss: no run reports it; "
                       r"a train run reports train/loss and its held-out metrics eval/mlm_loss, "
                       r"eval/mlm_accuracy, eval/nsp_loss, eval/nsp_accuracy$"):
        sweep.run(BERT, str(tmp_path), grid=grid, metrics=["eval/mlm_accuracy", "train_loss"],
                  overrides=["train.steps=4"])
    with pytest.raises(config_lib.ConfigError, match=r"--metrics=eval/mlm_accuracy: no run "
                       r"reports it; .*no held-out metrics here \(train.eval_every=0\)"):
        sweep.run(BERT, str(tmp_path), grid=grid, metrics=["eval/mlm_accuracy"],
                  overrides=["train.steps=4", "train.eval_every=0"])
    with pytest.raises(config_lib.ConfigError, match=r"--metrics=eval/mlm_accuracy: no run "
                       r"reports it; .*\(data.eval_fraction=0 holds nothing out\)"):
        sweep.run(BERT, str(tmp_path), grid=grid, metrics=["eval/mlm_accuracy"],
                  overrides=["train.steps=4", "data.eval_fraction=0"])
    # One run of the grid would not evaluate: it is named.
    with pytest.raises(config_lib.ConfigError, match=r"--metrics=eval/mlm_accuracy: run "
                       r"eval_every=0__seed=0 would not report it; it reports train/loss and no "
                       r"held-out metrics here \(train.eval_every=0\)"):
        sweep.run(BERT, str(tmp_path), grid=["train.eval_every=2,0"],
                  metrics=["eval/mlm_accuracy"], overrides=["train.steps=4"])
    assert not (tmp_path / "runs").exists()


def test_a_misspelt_eval_metric_is_refused_before_any_run_trains(tmp_path, monkeypatch):
    """`--metrics=eval/acuracy` was accepted by its form (any eval/NAME), and refused only once
    every run had trained. The task declares its eval metrics from the config, so the name is
    refused up front, the message naming the ones the runs report; a right name runs."""
    config_path = str(ROOT / "configs" / "finetune_classify.py") + ":tiny"
    calls = []

    def fake(config, workdir):
        calls.append(pathlib.Path(workdir).name)
        work = pathlib.Path(workdir)
        work.mkdir(parents=True, exist_ok=True)
        summary = {"step": int(config.train.steps), "eval/accuracy": 0.75, "eval/f1": 0.5}
        (work / "summary.json").write_text(json.dumps(summary))
        return train.TrainResult(summary=summary, state={}, trainer=None)

    monkeypatch.setattr(train, "train_and_evaluate", fake)
    args = dict(grid=["optimizer.learning_rate=1e-3,2e-3"], overrides=["train.steps=4"])
    with pytest.raises(config_lib.ConfigError, match=r"--metrics=eval/acuracy: no run reports "
                       r"it; a train run reports train/loss and its held-out metrics eval/loss, "
                       r"eval/accuracy, eval/f1_macro, eval/mcc$"):
        sweep.run(config_path, str(tmp_path), metrics=["eval/accuracy", "eval/acuracy"], **args)
    # Binary F1 is reported with data.positive_label only.
    with pytest.raises(config_lib.ConfigError, match=r"--metrics=eval/f1: no run reports it"):
        sweep.run(config_path, str(tmp_path), metrics=["eval/f1"], **args)
    assert calls == [] and not (tmp_path / "runs").exists()
    result = sweep.run(config_path, str(tmp_path), metrics=["eval/accuracy"], **args)
    assert len(calls) == 2 and result["metrics"] == ["eval/accuracy"]
    assert [row["eval/accuracy"][0] for row in result["settings"]] == [0.75, 0.75]
    result = sweep.run(config_path, str(tmp_path / "binary"), metrics=["eval/f1"],
                       grid=args["grid"], overrides=args["overrides"] + [
                           "data.positive_label=pos"])
    assert [row["eval/f1"][0] for row in result["settings"]] == [0.5, 0.5]


def test_a_static_run_trained_without_the_evaluation_files_is_scored_on_a_rerun(
        tmp_path, monkeypatch, data_dir):
    """A rerun skips trained runs; one trained while eval_dir lacked the files was skipped
    unscored on every rerun. Its saved vectors are now scored, without training again, to the
    figures the run would have had."""
    from tl_jax import static_train

    path = str(ROOT / "configs" / "word2vec.py") + ":tiny"
    empty = tmp_path / "no_evals"
    empty.mkdir()
    small = ["max_sentences=2000"]
    first = sweep.run(path, str(tmp_path / "sweep"), grid=["window=2"],
                      overrides=small + [f"eval_dir={empty}"])
    assert "wordsim353_spearman" not in first["runs"][0]
    fresh = sweep.run(path, str(tmp_path / "fresh"), grid=["window=2"],
                      overrides=small + [f"eval_dir={data_dir}"])["runs"][0]
    monkeypatch.setattr(static_train, "run", lambda *a: pytest.fail("retrained a finished run"))
    # A rewrite of scores.json cut short leaves the one there whole (it was truncated, and the
    # run then looked unfinished).
    scores_file = tmp_path / "sweep" / "runs" / "window=2__seed=0" / "scores.json"
    before = scores_file.read_text()
    config = config_lib.load_config(path, small + [f"eval_dir={data_dir}", "window=2"])
    with monkeypatch.context() as m:
        m.setattr(static_train, "json_safe", lambda scores: {**scores, "z": object()})
        with pytest.raises(TypeError):
            static_train.score_saved(config, str(scores_file.parent), first["runs"][0])
    assert scores_file.read_text() == before
    assert [p.name for p in scores_file.parent.iterdir() if ".tmp" in p.name] == []
    again = sweep.run(path, str(tmp_path / "sweep"), grid=["window=2"],
                      overrides=small + [f"eval_dir={data_dir}"])
    rec = again["runs"][0]
    for name in ("wordsim353_spearman", "simlex999_spearman", "analogy_accuracy"):
        assert rec[name] == pytest.approx(fresh[name]), name
    assert rec["final_loss"] == first["runs"][0]["final_loss"]
    saved = json.loads((tmp_path / "sweep" / "runs" / "window=2__seed=0" / "scores.json")
                       .read_text())
    assert saved["wordsim353_spearman"] == pytest.approx(fresh["wordsim353_spearman"])
    assert "| window | seeds | wordsim353_spearman |" in (tmp_path / "sweep" / "results.md")\
        .read_text()


def test_a_seed_left_out_of_a_mean_is_named_in_the_table(tmp_path):
    """A diverged seed (NaN) is left out of the mean and std; the cell says over how many seeds
    they are instead of passing the survivors' mean off as all three's. The training loss is
    the run's last, even when that one is NaN."""
    setting = (("optimizer.name", "lamb"),)
    runs = [sweep.Run(setting, s, f"lamb__seed={s}") for s in range(3)]
    records = [{"run": r.name, "setting": dict(setting), "seed": r.seed, "curves": {},
                "eval/mlm_accuracy": v, "train/loss": 2.0}
               for r, v in zip(runs, [0.1, float("nan"), 0.2])]
    table = sweep.markdown_table(sweep.summarize(records, runs))
    assert "| lamb | 3 | 0.1500 ± 0.0500 (2 of 3 seeds) | 2.0000 ± 0.0000 |" in table, table
    one = sweep.markdown_table(sweep.summarize(records[:2], runs[:2]))
    assert "| lamb | 2 | 0.1000 (1 of 2 seeds) |" in one, one

    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 1, "loss": 3.0}\n{"step": 2, "loss": "nan"}\n')
    _, last_loss = sweep._curves(str(tmp_path))
    assert last_loss != last_loss  # NaN, not the 3.0 before it


def test_a_rerun_of_a_fine_tuning_sweep_is_not_refused_for_its_filled_schedule(
        tmp_path, monkeypatch, capsys):
    # Fine-tuning configs leave train.steps / eval_every / checkpoint_every at 0 ("from the
    # epochs"); the task fills them and config.json holds the filled values. Every rerun of such
    # a sweep (the feature-based vs fine-tuning table) was refused: "train.eval_every: 12
    # there, 0 now". And the sweep said these runs would report no held-out metrics.
    config_path = str(ROOT / "configs" / "finetune_classify.py") + ":tiny"
    calls = []

    def fake(config, workdir):  # like the trainer after downstream.fit_schedule
        calls.append(pathlib.Path(workdir).name)
        config.train.steps, config.train.eval_every, config.train.checkpoint_every = 6, 3, 3
        work = pathlib.Path(workdir)
        work.mkdir(parents=True, exist_ok=True)
        (work / "config.json").write_text(json.dumps(config.to_dict()))
        summary = {"step": 6, "eval/accuracy": 0.75}
        (work / "summary.json").write_text(json.dumps(summary))
        return train.TrainResult(summary=summary, state={}, trainer=None)

    monkeypatch.setattr(train, "train_and_evaluate", fake)
    grid = ["optimizer.learning_rate=1e-3,2e-3"]
    sweep.run(config_path, str(tmp_path), grid=grid)
    assert "report no held-out metrics" not in capsys.readouterr().out
    result = sweep.run(config_path, str(tmp_path), grid=grid)
    assert [r["eval/accuracy"] for r in result["runs"]] == [0.75, 0.75]
    # Other epochs are another setting, still refused.
    with pytest.raises(config_lib.ConfigError, match=r"data.num_epochs: .* there, 5.0 now"):
        sweep.run(config_path, str(tmp_path), grid=grid, overrides=["data.num_epochs=5.0"])


def test_a_swept_masking_ratio_that_the_prediction_cap_cuts_is_refused(tmp_path, monkeypatch):
    # BERT tiny: 64 tokens, at most 20 predictions. The README's masking sweep ran 0.5 as ~0.33
    # (20 of 61 tokens) and labelled its row 0.5.
    monkeypatch.setattr(train, "train_and_evaluate", lambda *a: pytest.fail("trained"))
    with pytest.raises(config_lib.ConfigError, match=r"caps the masking of 0.5 \(wants 30 of 61\)"
                       r".*max_predictions_per_seq \(to 30 or more\)"):
        sweep.run(BERT, str(tmp_path), grid=["data.masked_lm_prob=0.15,0.3,0.5"])
    result = sweep.run(BERT, str(tmp_path), grid=["data.masked_lm_prob=0.15,0.3,0.5"],
                       overrides=["data.max_predictions_per_seq=32"], dry_run=True)
    assert result["runs"] == []


def test_a_run_saved_before_a_config_key_existed_is_not_refused_at_its_default(tmp_path,
                                                                              monkeypatch):
    # A key added to the config file since the runs were trained (data.mask_token_prob, new
    # with the masking every earlier run had) made every earlier run "trained with other
    # settings: data.mask_token_prob: '(absent)' there, 0.8 now": a sweep could not be given
    # another seed after an update.
    calls = []
    monkeypatch.setattr(train, "train_and_evaluate", _fake_training(calls))
    grid = ["data.masked_lm_prob=0.1"]
    sweep.run(BERT, str(tmp_path), grid=grid, overrides=["train.steps=4"])
    run_dir = tmp_path / "runs" / calls[0]
    earlier = config_lib.load_config(BERT, ["train.steps=4", "data.masked_lm_prob=0.1",
                                            "seed=0"]).to_dict()
    del earlier["data"]["mask_token_prob"], earlier["model"]["embedding_size"]
    (run_dir / "config.json").write_text(json.dumps(earlier))
    result = sweep.run(BERT, str(tmp_path), grid=grid, seeds=[0, 1], overrides=["train.steps=4"])
    assert calls == [calls[0], "masked_lm_prob=0.1__seed=1"]  # the first one skipped
    assert len(result["runs"]) == 2
    # Set to something else now, the new key is another setting than the run had.
    with pytest.raises(config_lib.ConfigError, match=r"masked_lm_prob=0.1__seed=0 was trained "
                       r"with other settings:\n  data.mask_token_prob: '\(absent\)' there, "
                       r"0.85 now"):
        sweep.run(BERT, str(tmp_path), grid=grid,
                  overrides=["train.steps=4", "data.mask_token_prob=0.85"])


def test_train_settings_are_checked_before_the_first_run(tmp_path, monkeypatch):
    # The trainer refuses these once a run's data is read: in a sweep, a bad value in the
    # second setting failed only after the first had trained, and a misspelt best_metric
    # given to every run failed each of them in turn.
    monkeypatch.setattr(train, "train_and_evaluate", lambda *a: pytest.fail("trained"))
    with pytest.raises(ValueError, match=r"sweep run best_mode=mx__seed=0: train.best_mode='mx'; "
                                         r"expected 'max' or 'min'"):
        sweep.run(BERT, str(tmp_path), grid=["train.best_mode=max,mx"])
    with pytest.raises(ValueError, match=r"sweep run log_every=0__seed=0: train.log_every=0 must "
                                         r"be an integer >= 1"):
        sweep.run(BERT, str(tmp_path), grid=["train.log_every=5,0"])
    with pytest.raises(ValueError, match=r"sweep run masked_lm_prob=0.1__seed=0: "
                                         r"train.best_metric='eval/mlm_acc' is not among the "
                                         r"eval metrics of task 'bert_pretrain': .*mlm_accuracy"):
        sweep.run(BERT, str(tmp_path), grid=["data.masked_lm_prob=0.1,0.15"],
                  overrides=["train.best_metric=eval/mlm_acc"])
    assert not (tmp_path / "runs").exists()
    # A fine-tuning config's steps and intervals, 0 until its task fills them from the
    # epochs, are not refused here.
    classify = str(ROOT / "configs" / "finetune_classify.py") + ":tiny"
    assert sweep.run(classify, str(tmp_path), grid=["optimizer.learning_rate=1e-4,2e-4"],
                     overrides=["train.steps=0"], dry_run=True)["failed"] == []


def test_transfer_settings_are_checked_before_the_first_run(tmp_path, monkeypatch):
    # A sweep over strategies with one misspelt failed only when that run's turn came, after
    # the runs before it had trained (and its data had been read).
    monkeypatch.setattr(train, "train_and_evaluate", lambda *a: pytest.fail("trained"))
    ulmfit = str(ROOT / "configs" / "transfer_ulmfit.py") + ":tiny"
    with pytest.raises(ValueError, match=r"sweep run strategy=chain_thw__seed=0: "
                                         r"transfer.strategy='chain_thw'; expected one of"):
        sweep.run(ulmfit, str(tmp_path), grid=["transfer.strategy=none,chain_thw"])
    with pytest.raises(ValueError, match=r"sweep run schedule=slanted__seed=0: "
                                         r"transfer.schedule='slanted'"):
        sweep.run(ulmfit, str(tmp_path), grid=["transfer.schedule=stlr,slanted"])
    with pytest.raises(ValueError, match=r"sweep run seed=0: .*unknown token 'freeze'"):
        sweep.run(ulmfit, str(tmp_path), seeds=[0, 1],
                  overrides=["transfer.rules=(('.*', 'freeze'),)"])
    with pytest.raises(ValueError, match=r"sweep run warmup_steps=5__seed=0: "
                                         r"transfer.schedule='stlr' with optimizer.warmup_steps=5"):
        sweep.run(ulmfit, str(tmp_path), grid=["optimizer.warmup_steps=0,5"])
    feature = str(ROOT / "configs" / "transfer_feature.py") + ":tiny"
    with pytest.raises(ValueError, match=r"sweep run feature=layer_3__seed=0: "
                                         r"probe.feature='layer_3'; expected one of"):
        sweep.run(feature, str(tmp_path), grid=["probe.feature=last,layer_3"])
    assert not (tmp_path / "runs").exists()
    # Valid settings pass (the tiny configs' stage plans are the runs' to check).
    assert sweep.run(ulmfit, str(tmp_path), grid=["transfer.strategy=none,chain_thaw"],
                     dry_run=True)["failed"] == []


def test_a_second_sweep_in_the_same_workdir_is_refused_while_the_first_runs(tmp_path,
                                                                          monkeypatch, capsys):
    # Two sweeps started in one workdir at once trained the same runs twice, into the same
    # folders, and wrote the same tables. The second is now refused in one line naming the
    # first; the first goes on, and leaves no lock behind.
    import os
    import socket

    calls, refusals = [], []
    train_one = _fake_training(calls)
    args = dict(grid=["data.masked_lm_prob=0.1,0.3"], overrides=["train.steps=4"])

    def train_and_start_another(config, workdir):
        if not refusals:  # while the first run trains, the same sweep is started again
            with pytest.raises(RuntimeError) as e:
                sweep.run(BERT, str(tmp_path), **args)
            refusals.append(str(e.value))
        return train_one(config, workdir)

    monkeypatch.setattr(train, "train_and_evaluate", train_and_start_another)
    lock = tmp_path / "sweep.lock"
    result = sweep.run(BERT, str(tmp_path), **args)
    assert calls == ["masked_lm_prob=0.1__seed=0", "masked_lm_prob=0.3__seed=0"]  # once each
    assert not result["failed"] and len(result["runs"]) == 2
    assert refusals and refusals[0].startswith(
        f"sweep: another sweep is running in {tmp_path} (pid {os.getpid()} on "
        f"{socket.gethostname()}, started "), refusals
    assert f"its lock is {lock}" in refusals[0] and "\n" not in refusals[0]
    assert not lock.exists()
    # On the command line: one error line, nothing trained.
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                "started": "2026-01-01 00:00:00 UTC"}))
    calls.clear()
    with pytest.raises(SystemExit) as e:
        cli.main(["sweep", f"--config={BERT}", f"--workdir={tmp_path}",
                  "--grid=data.masked_lm_prob=0.1,0.3", "--config.train.steps=6"])
    assert e.value.code.splitlines()[0] == (
        f"tl_jax: error: sweep: another sweep is running in {tmp_path} (pid {os.getpid()} on "
        f"{socket.gethostname()}, started 2026-01-01 00:00:00 UTC; its lock is {lock}). Wait for "
        f"it to end, or use another workdir; if it is no longer running (its machine went away), "
        f"delete {lock}.")
    assert calls == [] and lock.exists()  # the other sweep's lock is left to it
    # A dry run only looks: it is not refused.
    sweep.run(BERT, str(tmp_path), dry_run=True, **args)
    assert lock.exists()


def test_a_lock_left_by_a_sweep_that_died_is_taken_over(tmp_path, monkeypatch, capsys):
    # A sweep killed outright (kill -9, a SIGTERM between runs) leaves its lock: on the same
    # host, where its process is seen to be gone, the next sweep takes it over and says so.
    # One from another host cannot be checked, and stays held.
    import socket
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid now names no process
    lock = tmp_path / "sweep.lock"
    lock.write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(),
                                "started": "2026-01-01 00:00:00 UTC"}))
    calls = []
    monkeypatch.setattr(train, "train_and_evaluate", _fake_training(calls))
    args = dict(grid=["data.masked_lm_prob=0.1,0.3"], overrides=["train.steps=4"])
    sweep.run(BERT, str(tmp_path), **args)
    assert len(calls) == 2 and not lock.exists()
    assert (f"[sweep] Note: taking over {lock}, left by a sweep that is no longer running "
            f"(pid {gone.pid} on {socket.gethostname()}, started 2026-01-01 00:00:00 UTC)."
            in capsys.readouterr().out)
    lock.write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname() + "-elsewhere",
                                "started": "2026-01-01 00:00:00 UTC"}))
    with pytest.raises(RuntimeError, match=r"another sweep is running in .*-elsewhere"):
        sweep.run(BERT, str(tmp_path), **args)
    assert lock.exists()


def test_of_two_sweeps_taking_over_the_same_stale_lock_one_is_refused(tmp_path, monkeypatch):
    # Both read the dead sweep's lock; the first takes it over and writes its own before the
    # second acts on what it read. The second removed the first's lock and ran beside it; now
    # it sees that the lock is no longer the stale one, leaves it, and is refused.
    import os
    import socket
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock = tmp_path / "sweep.lock"
    stale = {"pid": gone.pid, "host": socket.gethostname(), "started": "2026-01-01 00:00:00 UTC"}
    first = {"pid": os.getpid(), "host": socket.gethostname(), "started": "2026-01-02 00:00:00 UTC"}
    lock.write_text(json.dumps(stale))
    notes, judged = [], []
    lock_is_stale = sweep._lock_is_stale

    def stale_then_taken(holder):  # the second sweep judges; meanwhile the first takes over
        judged.append(holder)
        verdict = lock_is_stale(holder)
        if len(judged) == 1:
            lock.unlink()
            lock.write_text(json.dumps(first))
        return verdict

    monkeypatch.setattr(sweep, "_lock_is_stale", stale_then_taken)
    with pytest.raises(RuntimeError, match=r"another sweep is running in .*started 2026-01-02"):
        with sweep._workdir_lock(str(tmp_path), 0, lambda line, **k: notes.append(line)):
            pass
    # The refused sweep says nothing of taking the lock over.
    assert json.loads(lock.read_text()) == first and notes == [] and len(judged) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.lock"]  # nothing left aside
    # With no other sweep in the way the stale lock is taken over, held, and released.
    lock.write_text(json.dumps(stale))
    with sweep._workdir_lock(str(tmp_path), 0, lambda line, **k: notes.append(line)) as held:
        assert held == str(lock) and json.loads(lock.read_text())["pid"] == os.getpid()
    assert list(tmp_path.iterdir()) == []
    assert len(notes) == 1 and notes[0].startswith(f"[sweep] Note: taking over {lock}")


@pytest.mark.parametrize("stop", [KeyboardInterrupt, ValueError])
def test_the_sweep_lock_is_released_on_ctrl_c_and_on_an_error(tmp_path, monkeypatch, stop):
    def interrupted(config, workdir):
        raise stop("stopped")

    monkeypatch.setattr(train, "train_and_evaluate", interrupted)
    monkeypatch.setattr(sweep, "write_outputs", lambda *a: (_ for _ in ()).throw(stop("stop")))
    with pytest.raises(stop):
        sweep.run(BERT, str(tmp_path), grid=["data.masked_lm_prob=0.1"],
                  overrides=["train.steps=4"])
    assert not (tmp_path / "sweep.lock").exists()

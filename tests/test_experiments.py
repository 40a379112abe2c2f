"""The scripts in experiments/: what a user sees when the data or the workdir is not there."""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from tl_jax import experiment_results

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPTS = {
    "transfer_strategies.py": ["--measure_only", "--only=LoRA"],
    "transfer_food_reviews.py": ["--seeds=0", "--train_examples=8", "--eval_examples=8"],
}


def run_script(name, args, env_updates):
    env = {k: v for k, v in os.environ.items() if k != "TL_JAX_DATA_DIR"}
    env.update(env_updates, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / "experiments" / name), *args], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
@pytest.mark.parametrize("problem", ["no_data_dir", "empty_data_dir", "workdir_under_a_file"])
def test_input_problems_are_one_line_errors(name, problem, tmp_path, data_dir):
    env = {"TL_JAX_DATA_DIR": str(data_dir)}
    workdir = tmp_path / "work"
    if problem == "no_data_dir":
        env = {}
    elif problem == "empty_data_dir":
        (tmp_path / "empty").mkdir()
        env = {"TL_JAX_DATA_DIR": str(tmp_path / "empty")}
    else:
        (tmp_path / "a_file").write_text("")
        workdir = tmp_path / "a_file" / "work"
    result = run_script(name, [f"--workdir={workdir}", *SCRIPTS[name]], env)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    message = result.stderr.strip().splitlines()[-1]
    expected = {"no_data_dir": "TL_JAX_DATA_DIR", "empty_data_dir": "does not exist",
                "workdir_under_a_file": "Not a directory"}[problem]
    assert expected in message, result.stderr
    if problem == "empty_data_dir":
        # Nothing is created before the data is found: no run folder left empty.
        assert not workdir.exists() or not any(workdir.iterdir()), list(workdir.iterdir())


def load_script(name):
    spec = importlib.util.spec_from_file_location(name[:-3], ROOT / "experiments" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_transfer_strategies_interrupted_while_saving_keeps_the_saved_results(
        tmp_path, data_dir, monkeypatch):
    """Ctrl-C while results.json is written must not leave it cut short: the next run could not
    read it, and every finished run's result would be lost."""
    script = load_script("transfer_strategies.py")
    saved = {"full fine-tuning": {"runs": {"0": {"accuracy": 0.8}}, "trainable": 10,
                                  "total_params": 10, "opt_bytes": 80, "stages": 1}}
    (tmp_path / "results.json").write_text(json.dumps(saved))

    def interrupted_dump(obj, f, **kw):
        f.write(json.dumps(obj)[:20])
        raise KeyboardInterrupt

    monkeypatch.setenv("TL_JAX_DATA_DIR", str(data_dir))
    monkeypatch.setattr(experiment_results.json, "dump", interrupted_dump)
    monkeypatch.setattr(script, "measure", lambda config: dict(
        total_params=10, trainable=1, opt_bytes=8, stages=1))
    monkeypatch.setattr(sys, "argv", ["transfer_strategies.py", f"--workdir={tmp_path}",
                                      "--measure_only", "--only=LoRA"])
    with pytest.raises(KeyboardInterrupt):
        script.main()
    assert json.loads((tmp_path / "results.json").read_text()) == saved


def test_transfer_strategies_rerun_with_other_settings_is_refused(tmp_path, data_dir):
    """results.json's runs are skipped on a rerun: with another --epochs they would be reported
    in the new table as if run with it."""
    (tmp_path / "results.json").write_text(json.dumps({
        "_settings": {"train_examples": 640, "eval_examples": 400, "seq_len": 64,
                      "batch_size": 32, "epochs": 1.0, "feature_epochs": 10.0,
                      "feature_lr": 3e-3, "finetune_lr": 2e-4},
        "LoRA (r=8)": {"runs": {"0": {"accuracy": 0.7}}, "trainable": 10, "total_params": 10,
                       "opt_bytes": 80, "stages": 1}}))
    common = [f"--workdir={tmp_path}", "--only=LoRA", "--seeds=0"]
    result = run_script("transfer_strategies.py", [*common, "--epochs=3"],
                        {"TL_JAX_DATA_DIR": str(data_dir)})
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert "--epochs=1.0 -> 3.0" in result.stderr.strip().splitlines()[-1]
    # The same settings: the saved run is reported, nothing is trained.
    result = run_script("transfer_strategies.py", common, {"TL_JAX_DATA_DIR": str(data_dir)})
    assert result.returncode == 0, result.stderr
    assert "| LoRA (r=8) | 10 (100.00%) | 0.00 MiB | 0.7000 ± 0.0000 | 1 |" in result.stdout
    # Sizes do not depend on the settings: measuring another strategy with any is fine, and
    # leaves the saved runs' settings.
    result = run_script("transfer_strategies.py", [
        f"--workdir={tmp_path}", "--only=adapters", "--measure_only", "--epochs=3"],
        {"TL_JAX_DATA_DIR": str(data_dir)})
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "results.json").read_text())["_settings"]["epochs"] == 1.0


def test_transfer_food_reviews_rerun_with_other_settings_is_refused(tmp_path, data_dir):
    """Its finished runs are only evaluated on a rerun: with another --learning_rate they would be
    reported as trained with it."""
    settings = {"init_from": str(data_dir / "models" / "all-MiniLM-L6-v2"),
                "workdir": str(tmp_path), "seeds": "0", "train_examples": 512,
                "eval_examples": 500, "max_seq_length": 64, "epochs": 2.0,
                "learning_rate": 1e-4, "warmup_steps": 4, "batch_size": 32}
    (tmp_path / "transfer_results.json").write_text(json.dumps({"settings": settings}))
    result = run_script("transfer_food_reviews.py",
                        [f"--workdir={tmp_path}", "--seeds=0,1", "--learning_rate=3e-4"],
                        {"TL_JAX_DATA_DIR": str(data_dir)})
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert "--learning_rate=0.0001 -> 0.0003" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "pretrained_seed0").exists()


RESULTS_FILE = {"transfer_strategies.py": "results.json",
                "transfer_food_reviews.py": "transfer_results.json"}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
@pytest.mark.parametrize("content", ['{"LoRA (r=8)": {"runs": {"0": {"accur', "[1, 2]"])
def test_unreadable_results_file_is_one_line_and_kept(name, content, tmp_path, data_dir):
    """A results file cut short (by a crash of a version that wrote it in place) or not a JSON
    object gave a JSON traceback; it is named in one line and left as it was."""
    path = tmp_path / RESULTS_FILE[name]
    path.write_text(content)
    result = run_script(name, [f"--workdir={tmp_path}", *SCRIPTS[name]],
                        {"TL_JAX_DATA_DIR": str(data_dir)})
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert str(path) in message and "move it aside" in message.lower(), message
    assert path.read_text() == content


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_ctrl_c_is_one_line_that_says_what_was_kept(name, monkeypatch, capsys):
    """Ctrl-C printed a page of traceback from wherever the run was; like `tl_jax`, the scripts
    now say in one line that what was saved stays, and exit with 130."""
    from tl_jax import main as tl_main

    script = load_script(name)

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.delenv("TL_JAX_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        tl_main.run_script(interrupted, name)
    assert exit_info.value.code == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{name}: interrupted (Ctrl-C).")
    assert "run the same command again" in err[0]
    # The script's entry point is this one.
    source = (ROOT / "experiments" / name).read_text()
    assert f'run_script(main, "{name}")' in source.split('if __name__ == "__main__":')[1]
    assert script.main  # the entry point it passes exists


def test_transfer_strategies_run_stopped_by_sigterm_is_not_recorded_as_finished(
        tmp_path, data_dir, monkeypatch, capsys):
    """On SIGTERM the trainer saves and returns early with the last epoch's scores; the script
    recorded them as that seed's result, so the table showed a half-trained accuracy and a rerun
    skipped the run instead of resuming it."""
    from tl_jax import train
    from tl_jax.main import run_script as run_script_here

    script = load_script("transfer_strategies.py")
    stop_at = [7]

    def fake(config, workdir):
        config.train.steps = 20  # as downstream.fit_schedule fills it from the epochs
        step = stop_at[0] or 20
        return train.TrainResult(summary={"step": step, "eval/accuracy": 0.5 + step / 100},
                                 state={}, trainer=None)

    monkeypatch.setenv("TL_JAX_DATA_DIR", str(data_dir))
    monkeypatch.setattr(train, "train_and_evaluate", fake)
    monkeypatch.setattr(script, "measure", lambda config: dict(
        total_params=10, trainable=1, opt_bytes=8, stages=1))
    monkeypatch.setattr(sys, "argv", ["transfer_strategies.py", f"--workdir={tmp_path}",
                                      "--only=LoRA", "--seeds=0"])
    with pytest.raises(SystemExit) as e:  # as every training command: 143, one line
        run_script_here(script.main, "transfer_strategies.py")
    assert e.value.code == 143
    assert capsys.readouterr().err.splitlines()[-1] == (
        "transfer_strategies.py: [LoRA (r=8) seed 0] stopped at step 7 of 20 (SIGTERM; saved in "
        f"{tmp_path / 'LoRA__r_8__seed0' / 'checkpoints'}): run the same command again to resume "
        "it. The table above holds the finished runs only.")
    assert json.loads((tmp_path / "results.json").read_text())["LoRA (r=8)"]["runs"] == {}
    stop_at[0] = None  # the rerun resumes it to the end
    script.main()
    runs = json.loads((tmp_path / "results.json").read_text())["LoRA (r=8)"]["runs"]
    assert runs["0"]["accuracy"] == pytest.approx(0.7)


def test_transfer_food_reviews_run_stopped_by_sigterm_exits_143(tmp_path, data_dir, monkeypatch,
                                                                 capsys):
    """Its runs go through classify.transfer_comparison, whose check_finished raises
    train.Stopped: the same status as every training command, and nothing recorded."""
    from tl_jax import train
    from tl_jax.main import run_script as run_script_here

    script = load_script("transfer_food_reviews.py")
    monkeypatch.setenv("TL_JAX_DATA_DIR", str(data_dir))
    monkeypatch.setattr(train, "train_and_evaluate", lambda config, workdir: train.TrainResult(
        summary={"step": 3, "eval/accuracy": 0.5}, state={}, trainer=None, total_steps=16,
        workdir=workdir))
    monkeypatch.setattr(sys, "argv", ["transfer_food_reviews.py", f"--workdir={tmp_path}",
                                      "--seeds=0"])
    with pytest.raises(SystemExit) as e:
        run_script_here(script.main, "transfer_food_reviews.py")
    assert e.value.code == 143
    assert capsys.readouterr().err.splitlines()[-1] == (
        "transfer_food_reviews.py: The pretrained arm's seed 0 stopped at step 3 of 16 (SIGTERM; "
        f"saved in {tmp_path / 'pretrained_seed0' / 'checkpoints'}): run the same command again "
        "to resume it.")
    assert not (tmp_path / "transfer_results.json").exists()


def test_path_flags_starting_with_a_tilde_are_in_the_home_folder(tmp_path, data_dir,
                                                                  monkeypatch):
    """The shell leaves '~' after '--workdir=' as it is: the runs went to a folder named '~'."""
    from tl_jax import train

    home = tmp_path / "home"
    home.mkdir()
    (home / "minilm").symlink_to(data_dir / "models" / "all-MiniLM-L6-v2")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TL_JAX_DATA_DIR", str(data_dir))
    monkeypatch.chdir(tmp_path)
    seen = []

    def fake(config, workdir):
        seen.append((workdir, config.init_from))
        return train.TrainResult(summary={"step": 1, "eval/accuracy": 0.5, "eval/f1_macro": 0.5,
                                          "eval/mcc": 0.0}, state={}, trainer=None)

    monkeypatch.setattr(train, "train_and_evaluate", fake)
    script = load_script("transfer_food_reviews.py")
    monkeypatch.setattr(sys, "argv", ["transfer_food_reviews.py", "--workdir=~/food",
                                      "--init_from=~/minilm", "--seeds=0"])
    script.main()
    assert seen[0] == (str(home / "food" / "pretrained_seed0"), str(home / "minilm"))
    assert (home / "food" / "transfer_results.json").is_file()
    script = load_script("transfer_strategies.py")
    monkeypatch.setattr(script, "measure", lambda config: dict(
        total_params=10, trainable=1, opt_bytes=8, stages=1))
    monkeypatch.setattr(sys, "argv", ["transfer_strategies.py", "--workdir=~/strategies",
                                      "--only=LoRA", "--seeds=0", "--epochs=0"])
    script.main()
    assert seen[-1][0] == str(home / "strategies" / "LoRA__r_8__seed0")
    assert (home / "strategies" / "results.json").is_file() and not (tmp_path / "~").exists()

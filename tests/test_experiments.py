"""The scripts in experiments/: what a user sees when the data or the workdir is not there."""
import os
import pathlib
import subprocess
import sys

import pytest

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

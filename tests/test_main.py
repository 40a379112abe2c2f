"""The `tl_jax` command line: every command parses, and flags reach the package functions."""
import pytest

from tl_jax import main


@pytest.mark.parametrize("command", sorted(main.COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main.main([command, "--help"])
    assert e.value.code == 0
    assert "usage: tl_jax " + command in capsys.readouterr().out


@pytest.mark.parametrize("command, spec", [("train", "configs/bert_pretrain.py:tiny"),
                                           ("sweep", "configs/finetune_classify.py:tiny"),
                                           ("static", "configs/word2vec.py"),
                                           ("static", "configs/glove.py"),
                                           ("quickstart", "configs/bert_pretrain.py:mini")])
def test_the_override_examples_in_each_commands_help_are_keys_its_configs_have(command, spec,
                                                                               capsys):
    # `tl_jax static --help` showed --config.train.steps=1000, which no static config has.
    import re

    from tl_jax import config as config_lib

    with pytest.raises(SystemExit):
        main.main([command, "--help"])
    examples = re.findall(r"--config\.([\w.]+=\S+)", capsys.readouterr().out.replace("\n", " "))
    examples = [e.rstrip(";") for e in examples if not e.startswith("KEY=")]
    assert examples
    config_lib.load_config(spec, examples)  # an unknown key raises


def test_generate_flags_map_onto_run_generate(monkeypatch):
    from tl_jax import generate
    seen = {}
    monkeypatch.setattr(generate, "run_generate", lambda **kw: seen.update(kw))
    main.main(["generate", "--model=m", "--mode=score", "--prompt=a", "--prompt=b",
               "--choice= x", "--choice= y", "--labels=pos,neg", "--top_p=0.9"])
    assert seen["prompts"] == ["a", "b"] and seen["choices"] == [" x", " y"]
    assert seen["labels"] == ["pos", "neg"] and seen["top_p"] == 0.9 and seen["mode"] == "score"
    # Flags left out reach run_generate as None ("not given"), which score mode accepts and
    # complete mode fills with its defaults.
    assert seen["seed"] is None and seen["stop_at_eos"] is None and seen["temperature"] is None
    main.main(["generate", "--model=m", "--prompt=a", "--seed=3", "--no_stop_at_eos"])
    assert seen["seed"] == 3 and seen["stop_at_eos"] is False and seen["mode"] == "complete"


@pytest.mark.parametrize("command", sorted(main.COMMANDS))
def test_path_flags_starting_with_a_tilde_are_in_the_home_folder(command, monkeypatch):
    """The shell leaves '~' after '--workdir=' as it is: `tl_jax train --workdir=~/x` made a
    folder named '~' in the current one."""
    monkeypatch.setenv("HOME", "/home/someone")
    parser = main.build_parser()
    flags = [a for a in parser.commands[command]._actions if a.dest in main.PATH_FLAGS]
    assert flags, f"`tl_jax {command}` has no path flag"
    args = parser.parse_args([command] + [f"--{a.dest}=~/{a.dest}" for a in flags])
    for a in flags:
        assert getattr(args, a.dest) == f"/home/someone/{a.dest}", (command, a.dest)


def test_train_workdir_with_a_tilde_is_in_the_home_folder(tmp_path, monkeypatch):
    from tl_jax import train
    seen = []
    monkeypatch.setattr(train, "train_and_evaluate", lambda config, workdir: seen.append(
        workdir) or train.TrainResult(summary={"step": 0}, state={}, trainer=None))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    main.main(["train", "--config=configs/bert_pretrain.py:tiny", "--workdir=~/run"])
    assert seen == [str(tmp_path / "home" / "run")] and not (tmp_path / "~").exists()


def test_missing_required_flag_is_an_error(capsys):
    with pytest.raises(SystemExit) as e:
        main.main(["train", "--config=configs/bert_pretrain.py:tiny"])
    assert e.value.code == 2
    assert "--workdir" in capsys.readouterr().err


def test_an_unknown_flag_gets_the_commands_usage_and_the_override_syntax(capsys):
    with pytest.raises(SystemExit) as e:
        main.main(["train", "--config=configs/bert_pretrain.py:tiny", "--workdir=w", "--steps=10"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: tl_jax train ")
    assert ("tl_jax train: error: unrecognized arguments: --steps=10; config fields are set "
            "with --config.KEY=VALUE, e.g. --config.train.steps=1000") in err
    with pytest.raises(SystemExit) as e:  # a command without a config: no override hint
        main.main(["predict", "--workdir=w", "--input=i", "--output=o", "--bach_size=4"])
    err = capsys.readouterr().err
    assert err.startswith("usage: tl_jax predict ") and "--config" not in err
    assert err.rstrip().endswith("error: unrecognized arguments: --bach_size=4")


def test_training_in_a_workdir_of_another_task_is_refused_naming_both(tmp_path, monkeypatch):
    # A GPT workdir given to a BERT config failed on its tokenizer ("is a BPE tokenizer; BERT
    # needs a WordPiece one"), as if data.tokenizer were wrong.
    import json

    from tl_jax import train

    class Reached(Exception):
        """The check passed: train_and_evaluate went on to build the trainer."""

    trained = []

    def build_trainer(config, workdir):
        trained.append(config.task)
        raise Reached

    # The check is train_and_evaluate's (so sweeps and scripts have it too); stubbed after it.
    monkeypatch.setattr(train, "build_trainer", build_trainer)
    monkeypatch.delenv("TL_JAX_TRACEBACK", raising=False)
    (tmp_path / "config.json").write_text(json.dumps({"task": "clm", "model": {}}))
    argv = ["train", "--config=configs/bert_pretrain.py:tiny", f"--workdir={tmp_path}"]
    with pytest.raises(SystemExit) as e:
        main.main(argv)
    assert str(e.value.code).splitlines()[0] == (
        f"tl_jax: error: --workdir={tmp_path} holds a run of task `clm` "
        f"({tmp_path / 'config.json'}); this config's task is `bert_pretrain`. Use a new workdir "
        f"(with --config.init_from={tmp_path} to start from its weights); the workdir is left as "
        "it is.")
    assert trained == []
    # The same task resumes; a config.json that does not read is left to the trainer.
    (tmp_path / "config.json").write_text(json.dumps({"task": "bert_pretrain"}))
    with pytest.raises(Reached):
        main.main(argv)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(Reached):
        main.main(argv)
    assert trained == ["bert_pretrain", "bert_pretrain"]


def test_a_config_the_trainer_refuses_leaves_no_empty_workdir(tmp_path, capsys, monkeypatch):
    # A transfer rule that names no layer, say: the run was refused and an empty folder stayed.
    monkeypatch.delenv("TL_JAX_TRACEBACK", raising=False)
    workdir = tmp_path / "runs" / "new"
    argv = ["train", "--config=configs/transfer_feature.py:tiny", f"--workdir={workdir}",
            "--config.transfer.rules=(('nosuch/.*', 'frozen'),)"]
    with pytest.raises(SystemExit) as e:
        main.main(argv)
    assert str(e.value.code).startswith("tl_jax: "), e.value.code
    assert not workdir.exists() and (tmp_path / "runs").exists()
    # A workdir that was there stays, empty or not.
    workdir.mkdir()
    with pytest.raises(SystemExit):
        main.main(argv)
    assert workdir.is_dir()


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin",
                                     "params.safetensors"])
def test_a_model_folder_given_as_workdir_is_left_as_it_is(weights, tmp_path, monkeypatch):
    # `train` replaced a Hugging Face model's (or `tl_jax convert` output's) config.json with the
    # run's, and `static` its vocab.txt: --workdir and --config.init_from swapped by mistake.
    from tl_jax import train

    monkeypatch.setattr(train, "build_trainer", lambda *a: pytest.fail("the run started"))
    monkeypatch.delenv("TL_JAX_TRACEBACK", raising=False)
    model = tmp_path / "model"
    model.mkdir()
    files = {"config.json": '{"model_type": "bert"}', weights: "weights", "vocab.txt": "[PAD]\n"}
    for name, text in files.items():
        (model / name).write_text(text)
    for argv, said in (
            (["train", "--config=configs/finetune_classify.py:tiny"],
             f"--workdir={model} holds a model (config.json, {weights}), not a training run: "
             "training there would overwrite its config.json. Train in a new workdir, with "
             f"--config.init_from={model} to start from the model; the folder is left as it is."),
            (["static", "--config=configs/word2vec.py:tiny"],
             f"{model} holds a model (config.json, {weights}): static vectors would overwrite "
             "its vocab.txt; use another workdir")):
        with pytest.raises(SystemExit) as e:
            main.main(argv + [f"--workdir={model}"])
        assert str(e.value.code).splitlines()[0] == f"tl_jax: error: {said}"
        assert {p.name: p.read_text() for p in model.iterdir()} == files


@pytest.mark.parametrize("argv, said", [
    (["train", "--config=configs/word2vec.py", "--config.train.steps=3"],
     "--config=configs/word2vec.py is a `tl_jax static` config (method='word2vec': static word "
     "vectors); run it with `tl_jax static --config=configs/word2vec.py --workdir=...`"),
    (["static", "--config=configs/bert_pretrain.py:tiny"],
     "--config=configs/bert_pretrain.py:tiny is a `tl_jax train` config (task='bert_pretrain'); "
     "run it with `tl_jax train --config=configs/bert_pretrain.py:tiny --workdir=...`; "
     "`tl_jax static` takes configs/word2vec.py or configs/glove.py"),
])
def test_the_other_commands_config_is_named_as_such(argv, said, tmp_path, capsys, monkeypatch):
    # Both were a traceback ending in "AttributeError: 'task'" or "'method'"; with an override
    # of the command's own sections, "<top level> has no field 'train'".
    monkeypatch.delenv("TL_JAX_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as e:
        main.main(argv + [f"--workdir={tmp_path / 'w'}"])
    assert str(e.value.code) == f"tl_jax: config error: {said}"
    assert "Traceback" not in capsys.readouterr().err and not (tmp_path / "w").exists()


def test_input_errors_are_one_line_and_library_errors_keep_their_traceback(tmp_path, capsys,
                                                                          monkeypatch):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    argv = ["train", "--config=configs/bert_pretrain.py:tiny", f"--workdir={tmp_path / 'w'}",
            f"--config.data.corpus={empty}"]
    monkeypatch.delenv("TL_JAX_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as e:
        main.main(argv)
    message = str(e.value.code)
    assert message.startswith("tl_jax: error: ") and str(empty) in message
    # Asked for, the traceback is there.
    monkeypatch.setenv("TL_JAX_TRACEBACK", "1")
    with pytest.raises(ValueError, match="empty"):
        main.main(argv)
    # A ValueError raised inside a library is not taken for an input check.
    monkeypatch.delenv("TL_JAX_TRACEBACK")

    def broken(args, overrides):
        import numpy as np
        np.zeros(3).reshape(2, 2)

    monkeypatch.setitem(main.COMMANDS, "train", (main.COMMANDS["train"][0], broken))
    with pytest.raises(ValueError, match="reshape"):
        main.main(argv)


def test_ctrl_c_in_generate_with_output_says_the_results_so_far_are_kept(tmp_path, capsys,
                                                                          monkeypatch):
    # generate writes --output one result at a time, so an interrupted run keeps those printed.
    def interrupted(args, overrides):
        raise KeyboardInterrupt

    monkeypatch.delenv("TL_JAX_TRACEBACK", raising=False)
    monkeypatch.setitem(main.COMMANDS, "generate", (main.COMMANDS["generate"][0], interrupted))
    out = tmp_path / "out.jsonl"
    for extra, said in (([f"--output={out}"], True), ([], False)):
        with pytest.raises(SystemExit) as e:
            main.main(["generate", f"--model={tmp_path}", "--prompt=Hello", *extra])
        assert e.value.code == 130
        err = capsys.readouterr().err
        assert err.startswith("tl_jax: interrupted (Ctrl-C).")
        assert (f"The results printed so far are in {out}." in err) == said
        assert len(err.strip().splitlines()) == 1


def test_ctrl_c_is_one_line_saying_the_checkpoints_are_intact(tmp_path, capsys, monkeypatch):
    def interrupted(args, overrides):
        raise KeyboardInterrupt

    monkeypatch.delenv("TL_JAX_TRACEBACK", raising=False)
    monkeypatch.setitem(main.COMMANDS, "train", (main.COMMANDS["train"][0], interrupted))
    with pytest.raises(SystemExit) as e:
        main.main(["train", "--config=configs/bert_pretrain.py:tiny", f"--workdir={tmp_path}"])
    assert e.value.code == 130
    err = capsys.readouterr().err
    assert err.startswith("tl_jax: interrupted (Ctrl-C). Checkpoints already written are intact")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    monkeypatch.setenv("TL_JAX_TRACEBACK", "1")
    with pytest.raises(KeyboardInterrupt):
        main.main(["train", "--config=configs/bert_pretrain.py:tiny", f"--workdir={tmp_path}"])


def test_only_deliberate_checks_and_file_errors_count_as_input_errors(monkeypatch):
    import linecache
    import os

    def raised_in_package(source, name):
        """What `source` raises when it runs as a module of the tl_jax package."""
        path = os.path.join(os.path.dirname(main.__file__), f"_not_a_module_{name}.py")
        monkeypatch.setitem(linecache.cache, path, (len(source), None, source.splitlines(True), path))
        with pytest.raises(Exception) as e:
            exec(compile(source, path, "exec"), {})
        return e.value

    monkeypatch.delenv("TL_JAX_TRACEBACK", raising=False)
    assert main._is_input_error(raised_in_package(
        "n = 0\nraise ValueError(\n    f'--batch_size={n} must be at least 1')\n", "check"))
    assert main._is_input_error(raised_in_package("open('/no/such/file.txt')\n", "open"))
    # A builtin or numpy failing in tl_jax's own code is a bug to show, not a message.
    assert not main._is_input_error(raised_in_package("range(0, 5, 0)\n", "range"))
    assert not main._is_input_error(raised_in_package(
        "import numpy as np\na = np.zeros(1)\na[:] = [1, 2]\n", "numpy"))


def test_a_workdir_that_cannot_be_created_is_one_line(tmp_path, capsys, monkeypatch):
    # A workdir on a read-only (or full) disk: os.makedirs raised from the standard library,
    # and the run ended in a traceback instead of the message naming the path.
    import errno
    import os

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)

    monkeypatch.delenv("TL_JAX_TRACEBACK", raising=False)
    monkeypatch.setattr(os, "makedirs", read_only)
    workdir = str(tmp_path / "w")
    with pytest.raises(SystemExit) as e:
        main.main(["train", "--config=configs/bert_pretrain.py:tiny", f"--workdir={workdir}"])
    message = str(e.value.code)
    assert message.startswith("tl_jax: error: ") and "Read-only file system" in message
    assert workdir in message


@pytest.mark.parametrize("argv", [
    ["train", "--config=configs/finetune_classify.py", "--config.init_from={missing}"],
    ["train", "--config=configs/gpt_finetune_classify.py", "--config.init_from={missing}"],
    ["extract", "--init_from={missing}", "--input=README.md", "--output={tmp}/f.npz"],
    ["generate", "--model={missing}", "--prompt=hi"],
    ["fill_mask", "--model={missing}", "--text=a [MASK]"],
], ids=["finetune", "gpt_finetune", "extract", "generate", "fill_mask"])
def test_a_missing_weight_source_is_named_as_missing(argv, tmp_path, capsys, monkeypatch):
    # Not "Tokenizer file not found" or "is neither a workdir nor ...": the path is not there.
    monkeypatch.delenv("TL_JAX_TRACEBACK", raising=False)
    missing = str(tmp_path / "no_such_run")
    argv = [a.format(missing=missing, tmp=tmp_path) for a in argv]
    if argv[0] == "train":
        argv.append(f"--workdir={tmp_path / 'w'}")
    with pytest.raises(SystemExit) as e:
        main.main(argv)
    message = str(e.value.code)
    assert message.startswith("tl_jax: error: ") and "does not exist" in message
    assert missing in message
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())


def test_a_missing_extract_input_is_named_by_its_flag(tmp_path, monkeypatch):
    # It was the bare "[Errno 2] No such file or directory: '...'", without the flag.
    monkeypatch.delenv("TL_JAX_TRACEBACK", raising=False)
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(SystemExit) as e:
        main.main(["extract", f"--init_from={tmp_path}", f"--input={missing}",
                   f"--output={tmp_path}/f.npz"])
    assert str(e.value.code).splitlines()[0] == f"tl_jax: error: --input={missing} does not exist"


def test_commands_turn_on_the_persistent_compilation_cache(tmp_path, monkeypatch):
    """Every command points jax's compilation cache at ~/.cache/tl_jax/jax (under
    XDG_CACHE_HOME), or at TL_JAX_COMPILATION_CACHE; "0" turns it off; a
    JAX_COMPILATION_CACHE_DIR the user set wins."""
    import jax
    before = jax.config.jax_compilation_cache_dir
    for name in ("JAX_COMPILATION_CACHE_DIR", "TL_JAX_COMPILATION_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    try:
        default = str(tmp_path / "xdg" / "tl_jax" / "jax")
        assert main.use_compilation_cache() == default
        assert jax.config.jax_compilation_cache_dir == default
        monkeypatch.setenv("TL_JAX_COMPILATION_CACHE", str(tmp_path / "mine"))
        assert main.use_compilation_cache() == str(tmp_path / "mine")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "mine")
        jax.config.update("jax_compilation_cache_dir", before)
        monkeypatch.setenv("TL_JAX_COMPILATION_CACHE", "0")
        assert main.use_compilation_cache() is None
        assert jax.config.jax_compilation_cache_dir == before
        monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "users"))
        assert main.use_compilation_cache() == str(tmp_path / "users")
        assert jax.config.jax_compilation_cache_dir == before  # jax reads its own variable
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


@pytest.mark.parametrize("command", main.SINGLE_PROCESS)
def test_one_process_commands_run_on_process_0_alone_under_a_multi_process_launch(
        command, tmp_path, capsys, monkeypatch):
    """A pod or SLURM job starts the same command on every host; generate, extract, fill_mask,
    convert, static and build_tasks then run on process 0 only (each process used to compute
    the same thing and write the same file)."""
    ran = []
    monkeypatch.setitem(main.COMMANDS, command,
                        (main.COMMANDS[command][0], lambda args, overrides: ran.append(command)))
    argv = {"convert": ["--input=a", "--output=b"], "generate": ["--model=m", "--prompt=p"],
            "extract": ["--init_from=m", "--input=a", "--output=b.npz"],
            "fill_mask": ["--model=m", "--text=a [MASK]"], "build_tasks": ["--out_dir=o"],
            "static": ["--config=configs/word2vec.py", "--workdir=w"],
            "tokenize": ["--corpus=c.txt", "--tokenizer=t", "--output=o"]}[command]
    for name in ("TL_JAX_COORDINATOR", "TL_JAX_AUTO_DISTRIBUTED", "TL_JAX_TRACEBACK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TL_JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("TL_JAX_COORDINATOR", "localhost:1234")  # never contacted
    monkeypatch.setenv("TL_JAX_PROCESS_ID", "1")
    main.main([command] + argv)
    assert ran == [] and "process 1 of 2 has nothing to do" in capsys.readouterr().out
    monkeypatch.setenv("TL_JAX_PROCESS_ID", "0")
    main.main([command] + argv)
    assert ran == [command]
    # Which process this is must be known; otherwise every process would do the work.
    for env, said in [({"TL_JAX_PROCESS_ID": None}, "TL_JAX_PROCESS_ID is not set"),
                      ({"TL_JAX_PROCESS_ID": "2"}, "not below TL_JAX_NUM_PROCESSES=2"),
                      ({"TL_JAX_PROCESS_ID": None, "TL_JAX_NUM_PROCESSES": None,
                        "TL_JAX_AUTO_DISTRIBUTED": "1"}, "cannot tell which process")]:
        for name, value in env.items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        with pytest.raises(SystemExit) as e:
            main.main([command] + argv)
        assert said in str(e.value.code) and ran == [command]
        monkeypatch.setenv("TL_JAX_NUM_PROCESSES", "2")
        monkeypatch.setenv("TL_JAX_PROCESS_ID", "0")
        monkeypatch.delenv("TL_JAX_AUTO_DISTRIBUTED", raising=False)


def test_a_run_stopped_by_sigterm_exits_143_and_the_same_command_resumes_it_to_0(
        tiny_bert_overrides, tmp_path):
    """`tl_jax train` stopped by SIGTERM (a preemption) saves and used to exit 0, so
    `tl_jax train ... && tl_jax train --config.init_from=...` fine-tuned a half-pretrained
    encoder and a scheduler saw success. It exits 143 with a line naming the checkpoint; the
    same command resumes from it and exits 0 once the run is finished."""
    import json
    import os
    import pathlib
    import signal
    import subprocess
    import sys
    import time

    root = pathlib.Path(__file__).resolve().parent.parent
    steps = 100  # ~10 steps a second: the signal lands long before the end
    argv = [sys.executable, str(root / "tests" / "workers" / "train_worker.py"), "train",
            f"--config={root / 'configs' / 'bert_pretrain.py'}:tiny", f"--workdir={tmp_path}"]
    argv += [f"--config.{o}" for o in tiny_bert_overrides + [
        "train.log_every=1", "train.eval_every=0", "train.checkpoint_every=100000",
        f"train.steps={steps}"]]
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "TL_JAX_TRACEBACK")}
    proc = subprocess.Popen(argv, env=env, cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and
                                          len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.1)
    started = time.time()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    saved = [int(n) for n in os.listdir(tmp_path / "checkpoints") if n.isdigit()]
    assert len(saved) == 1 and 3 <= saved[0] < steps, (saved, time.time() - started)
    assert f"SIGTERM: saved step {saved[0]}; exiting." in out
    # Its last line says where it stopped, not "done: N steps", which reads as a finished run.
    assert out.strip().splitlines()[-1].startswith(
        f"stopped: {saved[0]} of {steps} steps (SIGTERM) | "), out[-2000:]
    assert "done:" not in out
    assert err.strip().splitlines()[-1] == (
        f"tl_jax: Training stopped at step {saved[0]} of {steps} (SIGTERM; saved in "
        f"{tmp_path / 'checkpoints'}): run the same command again to resume it.")

    rerun = subprocess.run(argv, env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"Resuming from step {saved[0]} " in rerun.stdout
    assert rerun.stdout.strip().splitlines()[-1].startswith(f"done: {steps} steps | ")
    assert json.loads((tmp_path / "summary.json").read_text())["step"] == steps
    assert "stopped" not in rerun.stderr


@pytest.mark.parametrize("skip_finetune", [False, True])
def test_a_quickstart_stopped_by_sigterm_exits_143(skip_finetune, tmp_path, capsys, monkeypatch):
    # With --skip_finetune a stopped stage 1 went unchecked: the quickstart exited 0. Without it
    # the stop was an error (exit 1), not the status every stopped training command has.
    from tl_jax import quickstart_finetune, train

    def stopped(config, workdir):
        return train.TrainResult(summary={"step": 3}, state={}, trainer=None,
                                 total_steps=int(config.train.steps), workdir=workdir)

    monkeypatch.setattr(train, "train_and_evaluate", stopped)
    monkeypatch.setattr(quickstart_finetune, "run", lambda *a, **k: pytest.fail("stage 2 ran"))
    argv = ["quickstart", f"--workdir={tmp_path}"] + ["--skip_finetune"] * skip_finetune
    with pytest.raises(SystemExit) as e:
        main.main(argv)
    assert e.value.code == main.EXIT_STOPPED == 143
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"tl_jax: Stage 1 (pretraining) stopped at step 3 of 300 (SIGTERM; saved in "
        f"{tmp_path / 'pretrain' / 'checkpoints'}): run the same command again to resume it.")


def test_an_override_without_a_value_is_a_usage_error_and_an_unknown_key_a_config_error(
        capsys, monkeypatch):
    """`--config.KEY` with no value is a malformed flag: exit 2 with the command's usage, as
    argparse does for its own flags (it exited 1, with no usage). A key the config lacks is
    found once the config is loaded, and stays a config error (exit 1), as the README says."""
    monkeypatch.delenv("TL_JAX_TRACEBACK", raising=False)
    base = ["train", "--config=configs/bert_pretrain.py:tiny", "--workdir=w"]
    with pytest.raises(SystemExit) as e:
        main.main(base + ["--config.train.steps"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: tl_jax train ")
    assert err.rstrip().endswith(
        "tl_jax train: error: --config.train.steps needs a value: --config.train.steps=VALUE or "
        "--config.train.steps VALUE")
    with pytest.raises(SystemExit) as e:
        main.main(base + ["--config.seed", "--workdir=v"])
    assert e.value.code == 2
    assert "error: --config.seed needs a value, but the next argument is the flag --workdir=v" \
        in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main.main(base + ["--config.train.stepz=3"])
    assert str(e.value.code).startswith("tl_jax: config error: Unknown config key 'train.stepz'")


@pytest.mark.parametrize("command", sorted(set(main.COMMANDS) - set(main.CONFIG_COMMANDS)))
def test_an_override_given_to_a_command_without_a_config_is_a_usage_error(command, capsys,
                                                                         monkeypatch):
    """`tl_jax predict --config.train.steps=3`: the command has no config, so the flag is one it
    does not have: exit 2 with its usage and one line naming the flag (it was a config error,
    exit 1, found only once the command had started, and on process 0 alone)."""
    ran = []
    monkeypatch.setitem(main.COMMANDS, command,
                        (main.COMMANDS[command][0], lambda args, overrides: ran.append(command)))
    parser = main.build_parser()
    required = [f"--{a.dest}=x" for a in parser.commands[command]._actions if a.required]
    with pytest.raises(SystemExit) as e:
        main.main([command, "--config.train.steps=3"] + required + ["--config.seed", "1"])
    assert e.value.code == 2 and ran == []
    err = capsys.readouterr().err
    assert err.startswith(f"usage: tl_jax {command} ")
    assert err.rstrip().splitlines()[-1] == (
        f"tl_jax {command}: error: unrecognized arguments: --config.train.steps=3 --config.seed=1 "
        f"(`tl_jax {command}` takes no config, so no --config.KEY=VALUE overrides)")
    with pytest.raises(SystemExit) as e:  # with a flag it does not have: both named
        main.main([command, "--config.train.steps=3", "--stepz=3"] + required)
    assert e.value.code == 2
    assert ("unrecognized arguments: --stepz=3 --config.train.steps=3 (`tl_jax "
            f"{command}` takes no config") in capsys.readouterr().err


@pytest.mark.parametrize("ends_at_once", [False, True])
def test_ctrl_c_raised_in_a_gc_callback_still_stops_the_command(ends_at_once, capsys,
                                                                 monkeypatch):
    # Python only reports an exception raised in a garbage-collection callback ("Exception
    # ignored in ..."): Ctrl-C landing in jax's, as it did in 7 of 10 tries during `tl_jax
    # tokenize`, was lost and the command ran to its end with exit 0.
    import gc
    import signal
    import time

    monkeypatch.delenv("TL_JAX_TRACEBACK", raising=False)
    old_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    done = []

    def ctrl_c_once(phase, info):
        if phase == "start" and not done:
            done.append("interrupted")
            raise KeyboardInterrupt

    def command():
        gc.callbacks.append(ctrl_c_once)
        try:
            gc.collect()
        finally:
            gc.callbacks.remove(ctrl_c_once)
        assert done == ["interrupted"]
        for _ in range(0 if ends_at_once else 200):
            time.sleep(0.01)
        done.append("ran to its end")

    try:
        with pytest.raises(SystemExit) as e:
            main.run_script(command, "tl_jax")
    finally:
        signal.signal(signal.SIGINT, old_handler)
    assert e.value.code == 130
    assert capsys.readouterr().err.startswith("tl_jax: interrupted (Ctrl-C).")
    assert done == ["interrupted"] + (["ran to its end"] if ends_at_once else [])

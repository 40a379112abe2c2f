"""The benchmark scripts' command lines (the benchmarks themselves are never run by the tests).

A size or count the scripts cannot use is refused while parsing, naming the flag: before, `--steps
0` or `--repeats 0` divided by zero (or read an unbound variable) after minutes of building and
compiling both models, and `--sizes=tiny,huge` failed only after timing tiny.
"""
import argparse
import importlib
import pathlib

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = ["bert_pretrain_vs_hf", "finetune_vs_hf", "gpt_train_and_generate", "word2vec_vs_gensim"]


def script(name: str, monkeypatch):
    """Imports a benchmark script as a module (they import each other by file name, as they do
    when run as `python benchmarks/NAME.py`)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module(name)


@pytest.mark.parametrize("name, argv, message", [
    ("bert_pretrain_vs_hf", ["--steps", "0"], "argument --steps: must be at least 1, got 0"),
    ("bert_pretrain_vs_hf", ["--repeats", "-1"], "argument --repeats: must be at least 1"),
    ("finetune_vs_hf", ["--batch", "0"], "argument --batch: must be at least 1"),
    ("finetune_vs_hf", ["--seq", "12.5"], "argument --seq: expected a whole number, got '12.5'"),
    ("finetune_vs_hf", ["--repeats", "0"], "argument --repeats: must be at least 1"),
    ("finetune_vs_hf", ["--seq", "600"], "argument --seq: MiniLM has 512 positions, got 600"),
    ("gpt_train_and_generate", ["--sizes", "tiny,huge"],
     "argument --sizes: unknown GPT size(s) ['huge']; choose from tiny, mini"),
    ("gpt_train_and_generate", ["--sizes", ","], "argument --sizes: unknown GPT size(s) ','"),
    ("gpt_train_and_generate", ["--steps", "0"], "argument --steps: must be at least 1"),
    ("gpt_train_and_generate", ["--new_tokens", "0"], "argument --new_tokens: must be at least"),
    ("gpt_train_and_generate", ["--prompt_len", "0"], "argument --prompt_len: must be at least"),
    ("word2vec_vs_gensim", ["--epochs", "0"], "argument --epochs: must be at least 1"),
    ("word2vec_vs_gensim", ["--repeats", "0"], "argument --repeats: must be at least 1"),
    ("word2vec_vs_gensim", ["--shared-negatives", "16,x"],
     "argument --shared-negatives: expected comma-separated whole numbers"),
    ("word2vec_vs_gensim", ["--shared-negatives", "-1"],
     "argument --shared-negatives: must be 0 or more, got '-1'"),
    ("word2vec_vs_gensim", ["--lr", "0"], "argument --lr: must be above 0"),
    ("word2vec_vs_gensim", ["--sample", "nan"], "argument --sample: must be 0 or more"),
])
def test_bad_arguments_are_refused_naming_the_flag(name, argv, message, monkeypatch, capsys):
    module = script(name, monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_corpus_that_does_not_read_is_one_line(monkeypatch, tmp_path, data_dir):
    # It was a traceback ending in SourceError, where every bad flag is one line.
    module = script("word2vec_vs_gensim", monkeypatch)
    monkeypatch.setenv("TL_JAX_DATA_DIR", str(data_dir))
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--corpus", str(tmp_path / "none.txt")])
    assert str(exit_info.value.code) == (
        f"word2vec_vs_gensim.py: --corpus: Corpus file not found: {tmp_path / 'none.txt'}")


def test_defaults_and_good_arguments_parse(monkeypatch):
    assert script("bert_pretrain_vs_hf", monkeypatch).parse_args([]).steps == 10
    assert script("finetune_vs_hf", monkeypatch).parse_args(["--batch", "4"]).batch == 4
    gpt = script("gpt_train_and_generate", monkeypatch)
    assert gpt.parse_args([]).sizes == ["tiny", "mini"]
    assert gpt.parse_args(["--sizes=small"]).sizes == ["small"]
    w2v = script("word2vec_vs_gensim", monkeypatch).parse_args(["--shared-negatives", "0,16"])
    assert w2v.shared_negatives == [0, 16] and w2v.sample == 1e-3


def test_bert_benchmark_runs_the_cpu_settings_by_default(monkeypatch):
    """As its docstring says, "mini and base": the GPU-sized base_b128 (BERT-base at batch 128,
    16 times base's step) had joined the default, which added over an hour on 2 CPU cores (~55 s
    a step at the README's 312 tokens/s, 32 steps a side) to the documented command."""
    bert = script("bert_pretrain_vs_hf", monkeypatch)
    assert bert.parse_args([]).settings == ["mini", "base"]
    assert bert.parse_args(["--settings", "base_b128"]).settings == ["base_b128"]


def test_gpt_benchmark_refuses_the_tests_fake_devices(monkeypatch):
    """Its docstring says not to run it under the tests' 8-fake-device flag (it splits the CPU),
    but it timed both sides under it all the same; the BERT and fine-tuning scripts refuse."""
    gpt = script("gpt_train_and_generate", monkeypatch)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

    def must_not_run(*args, **kwargs):
        raise AssertionError("timed under the fake-device flag")

    monkeypatch.setattr(gpt, "jax_train", must_not_run)
    monkeypatch.setattr(gpt, "generation", must_not_run)
    with pytest.raises(SystemExit, match="xla_force_host_platform_device_count"):
        gpt.main(["--sizes", "tiny"])


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_says_what_the_script_compares_and_what_each_flag_does(name, monkeypatch, capsys):
    """`--help` opens with the docstring's whole first paragraph (two scripts stopped
    mid-sentence: "... vs Hugging Face"), and every option has a help line (most had none)."""
    module = script(name, monkeypatch)
    parsers = []
    parse = argparse.ArgumentParser.parse_args

    def recording_parse(self, *args, **kwargs):
        parsers.append(self)
        return parse(self, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", recording_parse)
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args(["--help"])
    assert exit_info.value.code == 0
    help_text = "".join(capsys.readouterr().out.split())  # argparse rewraps (and hyphenates)
    assert "".join(module.__doc__.split("\n\n")[0].split()) in help_text
    assert [a.option_strings for a in parsers[0]._actions if not a.help] == []


def test_gpu_check_starts_each_pass_with_fresh_workdirs(tmp_path):
    """gpu_check.sh on a machine without a GPU, `python3` and `nvidia-smi` replaced by stubs that
    log their arguments and whether each --workdir already existed. Its workdirs were fixed paths
    in /tmp: a second pass found the quickstart and the BERT run finished ("nothing to train"),
    so it timed nothing and its resume check resumed nothing. A relative OUT_DIR was taken from
    the repository root rather than from where the script is run."""
    import os
    import subprocess

    stubs = tmp_path / "bin"
    stubs.mkdir()
    log = tmp_path / "calls.log"
    (stubs / "python3").write_text(
        "#!/bin/bash\n"
        f'echo "python3 $*" >> {log}\n'
        'for a in "$@"; do case "$a" in --workdir=*) d="${a#--workdir=}"\n'
        f'  if [ -e "$d" ]; then echo "  existing $d" >> {log}; else echo "  fresh $d" >> {log}; fi\n'
        '  mkdir -p "$d";; esac; done\n')
    (stubs / "nvidia-smi").write_text("#!/bin/bash\necho 'GPU 0: stub'\n")
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    env = dict(os.environ, PATH=f"{stubs}:{os.environ['PATH']}", TMPDIR=str(tmp_path / "tmp"))
    env.pop("OUT", None)
    for _ in range(2):
        log.write_text("")
        subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh"), "out"], cwd=tmp_path, env=env,
                       check=True, capture_output=True, timeout=60)
        workdirs = [line.split()[0] for line in log.read_text().splitlines()
                    if line.startswith("  ")]
        # The quickstart and the first BERT run start fresh; the second BERT run resumes.
        assert workdirs == ["fresh", "fresh", "existing"], log.read_text()
    assert (tmp_path / "out" / "env.log").read_text().startswith("GPU 0: stub")

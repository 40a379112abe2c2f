"""Config loading: sizes, overrides, locking and the errors a user sees."""
import os
import pathlib

import pytest

from tl_jax import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent
BERT = str(ROOT / "configs" / "bert_pretrain.py")


def test_size_argument_and_overrides():
    c = config_lib.load_config(BERT + ":tiny", ["train.steps=7", "optimizer.name=lamb",
                                                "optimizer.learning_rate=3e-4",
                                                "data.whole_word_masking=True"])
    assert c.model.size == "tiny"
    assert c.train.steps == 7
    assert c.optimizer.name == "lamb"
    assert c.optimizer.learning_rate == pytest.approx(3e-4)
    assert c.data.whole_word_masking is True


def test_overrides_given_as_one_string_are_refused_as_such():
    """A string is iterable: its first character was read as an override ("Override 't' must
    look like key=value.", for a string that does look like key=value)."""
    with pytest.raises(config_lib.ConfigError,
                       match=r"overrides='train.steps=7' is a string; give a list of key=value "
                             r"strings \(\['train.steps=7'\]\)"):
        config_lib.load_config(BERT + ":tiny", "train.steps=7")


def test_int_override_of_float_field_and_string_that_looks_numeric():
    c = config_lib.load_config(BERT + ":tiny", ["optimizer.learning_rate=1", "data.corpus=123"])
    assert isinstance(c.optimizer.learning_rate, float)
    assert c.data.corpus == "123"


def test_a_tuple_of_strings_takes_a_comma_list_or_a_literal():
    classify = str(ROOT / "configs" / "finetune_classify.py") + ":tiny"
    for text in ("negative,positive", "negative, positive", "['negative', 'positive']",
                 "('negative', 'positive')"):
        c = config_lib.load_config(classify, [f"data.labels={text}"])
        assert c.data.labels == ("negative", "positive"), text
    assert config_lib.load_config(classify, ["data.labels=neutral"]).data.labels == ("neutral",)
    assert config_lib.load_config(classify, ["data.labels="]).data.labels == ()
    # A tuple of pairs (transfer rules) is not split: a bare string there stays an error.
    with pytest.raises(config_lib.ConfigError):
        config_lib.load_config(str(ROOT / "configs" / "transfer_full.py") + ":tiny",
                               ["transfer.rules=frozen"])


def test_unknown_key_names_valid_keys():
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.load_config(BERT + ":tiny", ["optimizer.learning_rat=1e-3"])
    msg = str(e.value)
    assert "learning_rat" in msg and "learning_rate" in msg and "optimizer" in msg


@pytest.mark.parametrize("override, meant", [
    ("optimizer.lr=1e-3", "'optimizer.learning_rate'"),  # initials
    ("data.max_seq_len=32", "'data.max_seq_length'"),  # spelt alike
    ("trian.steps=3", "'train.steps'"),  # a section spelt alike
    ("train.batch_size=8", "'data.batch_size'"),  # the field of another section
    ("steps=3", "'train.steps'"),
    ("optimizer.steps=3", "'optimizer.eps' or 'train.steps'"),
])
def test_an_unknown_key_suggests_the_key_meant(override, meant):
    with pytest.raises(config_lib.ConfigError, match=rf"Did you mean {meant}\? Valid keys there"):
        config_lib.load_config(BERT + ":tiny", [override])


def test_an_unknown_key_with_nothing_like_it_suggests_nothing_and_a_value_is_no_section():
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.load_config(BERT + ":tiny", ["data.xyz=1"])
    assert "Did you mean" not in str(e.value) and "Valid keys there: ['batch_size'" in str(e.value)
    # It listed "Valid keys there: []", as if seed were an empty section.
    with pytest.raises(config_lib.ConfigError, match=r"Unknown config key 'seed.x': seed is a "
                                                     r"value \(0\), not a section with fields"):
        config_lib.load_config(BERT + ":tiny", ["seed.x=1"])


def test_unknown_section_and_type_mismatch():
    with pytest.raises(config_lib.ConfigError, match="no field 'trian'"):
        config_lib.load_config(BERT + ":tiny", ["trian.steps=3"])
    with pytest.raises(config_lib.ConfigError, match="train.steps"):
        config_lib.load_config(BERT + ":tiny", ["train.steps=abc"])


def test_none_is_refused_for_a_typed_field():
    # It used to be accepted and fail later as a numpy TypeError traceback (seed=None).
    with pytest.raises(config_lib.ConfigError, match="Cannot set seed to None: the field is of type int"):
        config_lib.load_config(BERT + ":tiny", ["seed=None"])
    with pytest.raises(config_lib.ConfigError, match="train.steps to None"):
        config_lib.load_config(BERT + ":tiny", ["train.steps=None"])
    assert config_lib.load_config(BERT + ":tiny", ["init_from=None"]).init_from == "None"


def test_a_boolean_is_refused_for_a_number_field():
    # bool is an int subclass: steps=True used to run a one-step training.
    with pytest.raises(config_lib.ConfigError, match="Cannot set train.steps to True: the field is a number"):
        config_lib.load_config(BERT + ":tiny", ["train.steps=True"])
    with pytest.raises(config_lib.ConfigError, match="optimizer.learning_rate to False"):
        config_lib.load_config(BERT + ":tiny", ["optimizer.learning_rate=False"])
    assert config_lib.load_config(BERT + ":tiny", ["train.steps=7"]).train.steps == 7


def test_a_section_given_a_value_is_one_line_naming_its_fields():
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.load_config(BERT + ":tiny", ["train=5"])
    assert str(e.value).startswith("train is a section, not a value")
    assert "'steps'" in str(e.value) and "\n" not in str(e.value)


def test_config_is_locked_against_new_keys():
    c = config_lib.load_config(BERT + ":tiny")
    with pytest.raises(AttributeError):
        c.train.stepz = 3


def test_unknown_size_and_missing_file():
    with pytest.raises(ValueError, match="Unknown size"):
        config_lib.load_config(BERT + ":huge")
    with pytest.raises(config_lib.ConfigError, match="not found"):
        config_lib.load_config("configs/nope.py")
    # A folder, or a file that is not Python: an AttributeError from importlib before.
    for spec in (str(ROOT / "configs"), str(ROOT / "README.md") + ":tiny"):
        with pytest.raises(config_lib.ConfigError, match="is not a Python file"):
            config_lib.load_config(spec)


@pytest.mark.parametrize("spec", ["bert_pretrain.py:huge", "transfer_lora.py:mini"])
def test_a_wrong_config_argument_is_a_one_line_config_error(spec, tmp_path, capsys):
    # The argument checks in configs/*.py are input checks too (transfer_lora's is in
    # finetune_classify.py, which it loads): one line, like an unknown key, not a traceback.
    from tl_jax import main
    with pytest.raises(SystemExit) as e:
        main.main(["train", f"--config={ROOT / 'configs' / spec}", f"--workdir={tmp_path}"])
    message = str(e.value.code)
    assert message.startswith("tl_jax: config error: ") and "Unknown" in message, message
    assert "\n" not in message and "Traceback" not in capsys.readouterr().err


def test_split_overrides_from_argv():
    overrides, rest = config_lib.split_overrides(
        ["--config=x.py", "--config.train.steps=3", "--workdir", "w", "--config.seed", "4"])
    assert overrides == ["train.steps=3", "seed=4"]
    assert rest == ["--config=x.py", "--workdir", "w"]
    # A value may be negative, or given after '=' when it starts with "--".
    assert config_lib.split_overrides(["--config.seed", "-1", "--config.data.corpus=--x"])[0] == \
        ["seed=-1", "data.corpus=--x"]


@pytest.mark.parametrize("argv", [["--config.data.text_field", "--config.train.steps=2"],
                                  ["--config.train.steps", "--workdir=/tmp/w"]])
def test_an_override_without_its_value_does_not_take_the_next_flag(argv):
    """It did: data.text_field became '--config.train.steps=2' (the steps override was lost and
    the data reader said the file had no such field), or --workdir vanished and argparse said
    it was required."""
    with pytest.raises(config_lib.ConfigError, match=rf"{argv[0]} needs a value, but the next "
                                                     rf"argument is the flag {argv[1]}"):
        config_lib.split_overrides(argv)


@pytest.mark.parametrize("dtype", ["flot16", "int8"])
def test_a_wrong_model_dtype_is_one_line_naming_the_field(dtype, tiny_bert_overrides, tmp_path,
                                                          monkeypatch):
    # --config.model.dtype=flot16 ended in numpy's "TypeError: data type 'flot16' not
    # understood" with a traceback (and a sweep over model.dtype stopped at that run).
    from tl_jax import main
    from tl_jax.models import gpt
    monkeypatch.delenv("TL_JAX_TRACEBACK", raising=False)
    argv = ["train", f"--config={BERT}:tiny", f"--workdir={tmp_path}"] + [
        f"--config.{o}" for o in tiny_bert_overrides] + [f"--config.model.dtype={dtype}"]
    with pytest.raises(SystemExit) as e:
        main.main(argv)
    message = str(e.value.code)
    assert message.startswith("tl_jax: error: model.dtype=") and dtype in message, message
    with pytest.raises(ValueError, match="model.dtype"):
        gpt.gpt_config("tiny", vocab_size=10, dtype=dtype)


def test_a_plain_install_ships_the_configs_and_finds_them_from_anywhere(tmp_path):
    # `pip install git+...` (Colab) installs a wheel, not the checkout: `configs/NAME.py` must
    # resolve without the repository (it failed with "Config file not found: .../site-packages/
    # configs/bert_pretrain.py"). Built from a copy, so the checkout stays clean.
    import shutil
    import subprocess
    import sys

    root = pathlib.Path(config_lib.__file__).resolve().parent.parent
    src = tmp_path / "src"
    for name in ("tl_jax", "configs"):
        shutil.copytree(root / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(root / "setup.py", src / "setup.py")
    run = dict(check=True, capture_output=True, text=True)
    # build_py lays out the packages exactly as the wheel does (no network, no `wheel` needed).
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib",
                    str(tmp_path / "site")], cwd=src, **run)
    shutil.rmtree(src)
    probe = ("import tl_jax.config as c\n"
             "print(c.load_config('configs/transfer_ulmfit.py').task)\n"
             "print(c.load_config('configs/gpt_pretrain.py:tiny').task)\n"
             "print(c._resolve_path('configs/bert_pretrain.py'))")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, **run).stdout
    assert out.split() == ["probe", "clm",
                           str(tmp_path / "site" / "tl_jax" / "configs" / "bert_pretrain.py")]

"""The `tl_jax` command line: every command parses, and flags reach the package functions."""
import pytest

from tl_jax import main


@pytest.mark.parametrize("command", sorted(main.COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main.main([command, "--help"])
    assert e.value.code == 0
    assert "usage: tl_jax " + command in capsys.readouterr().out


def test_generate_flags_map_onto_run_generate(monkeypatch):
    from tl_jax import generate
    seen = {}
    monkeypatch.setattr(generate, "run_generate", lambda **kw: seen.update(kw))
    main.main(["generate", "--model=m", "--mode=score", "--prompt=a", "--prompt=b",
               "--choice= x", "--choice= y", "--labels=pos,neg", "--top_p=0.9"])
    assert seen["prompts"] == ["a", "b"] and seen["choices"] == [" x", " y"]
    assert seen["labels"] == ["pos", "neg"] and seen["top_p"] == 0.9 and seen["mode"] == "score"


def test_missing_required_flag_is_an_error(capsys):
    with pytest.raises(SystemExit) as e:
        main.main(["train", "--config=configs/bert_pretrain.py:tiny"])
    assert e.value.code == 2
    assert "--workdir" in capsys.readouterr().err

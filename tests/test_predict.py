"""`tl_jax predict`: a fine-tuned workdir applied to a new file.

Tiny runs on real polarity sentences (classify from scratch, the GPT classifier from a tiny GPT
LM), a tagging task made from them and a small SQuAD set; predictions must be exactly the run's
own eval predictions on the same file, from the best checkpoint the run kept.
"""
import json
import shutil

import numpy as np
import pytest
from conftest import write_polarity_files

from tl_jax import main, predict, train

EVAL_ROWS = 21  # not a multiple of the batch size (16): the last batch is partial


def _train(config, workdir):
    return train.train_and_evaluate(config, str(workdir)).summary


def _eval_rows(workdir, step, suffix):
    return (workdir / "predictions" / f"eval_step_{step}{suffix}").read_text()


def _metrics_at(workdir, step):
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    return next(r for r in rows if r["step"] == step and any(k.startswith("eval/") for k in r))


@pytest.fixture(scope="module")
def polarity_files(data_dir, tmp_path_factory):
    """Train and eval jsonl files alternating neg/pos sentences (the real file is sorted)."""
    return write_polarity_files(data_dir, tmp_path_factory.mktemp("polarity"), EVAL_ROWS)


@pytest.fixture(scope="module")
def classify_run(polarity_files, tmp_path_factory):
    """Three epochs, one eval each; the best kept by `eval/loss` *max* is the first epoch's
    (the loss falls), so the newest checkpoint is not the best one."""
    from tl_jax import config as config_lib
    workdir = tmp_path_factory.mktemp("classify")
    config = config_lib.load_config("configs/finetune_classify.py:tiny", [
        "train.progress=False", "mesh.num_devices=1", "data.max_seq_length=32",
        f"data.train_file={polarity_files / 'train.jsonl'}",
        f"data.eval_file={polarity_files / 'eval.jsonl'}", "data.max_train_examples=0",
        "data.max_eval_examples=0", "data.num_epochs=3.0", "train.keep_checkpoints=1",
        "train.best_metric=eval/loss", "train.best_mode=max"])
    _train(config, workdir)
    return workdir


def _assert_predicts_as_its_best_eval(workdir, eval_file, tmp_path, last_step):
    """A run kept its best checkpoint by eval/loss (max mode: an earlier one) beside its last,
    and predict on the run's own eval file picks it, writing that eval's predictions file
    byte for byte and reporting its metrics."""
    from tl_jax import checkpoint
    losses = {s: _metrics_at(workdir, s)["eval/loss"]
              for s in checkpoint.saved_steps(str(workdir))}
    best = max(losses, key=losses.get)
    assert sorted(losses) == [best, last_step] and best < last_step, losses
    out = tmp_path / "predictions.jsonl"
    result = predict.run(str(workdir), str(eval_file), str(out))
    assert result["step"] == best and "best kept checkpoint by eval/loss" in result["why"]
    assert out.read_text() == _eval_rows(workdir, best, ".jsonl")
    expected = _metrics_at(workdir, best)
    assert set(result["metrics"]) == {k for k in expected if k.startswith("eval/")}
    for key, value in result["metrics"].items():
        assert value == pytest.approx(expected[key], abs=1e-6), key


def test_classify_predicts_with_the_best_checkpoint_as_its_own_eval(classify_run,
                                                                    polarity_files, tmp_path):
    _assert_predicts_as_its_best_eval(classify_run, polarity_files / "eval.jsonl", tmp_path,
                                      last_step=12)


def test_unlabelled_input_gets_predictions_only(classify_run, polarity_files, tmp_path, capsys):
    out = tmp_path / "predictions.jsonl"
    result = predict.run(str(classify_run), str(polarity_files / "unlabelled.jsonl"), str(out),
                         batch_size=8)  # another batch size: the same predictions
    assert result["metrics"] == {} and result["labelled"] == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    gold = [json.loads(line) for line in _eval_rows(classify_run, result["step"],
                                                    ".jsonl").splitlines()]
    assert len(rows) == EVAL_ROWS and all(r["gold"] is None for r in rows)
    assert [r["predicted"] for r in rows] == [g["predicted"] for g in gold]
    for r, g in zip(rows, gold):
        assert r["probs"] == pytest.approx(g["probs"], abs=2e-5)
    printed = capsys.readouterr().out
    assert "Metrics" not in printed
    assert "longer than data.max_seq_length=32 sub-tokens and were truncated" in printed


def test_paths_starting_with_a_tilde_are_in_the_home_folder(classify_run, polarity_files,
                                                            tmp_path, monkeypatch):
    """The shell does not expand '~' in '--output=~/x': the predictions went to ./~/x."""
    import shutil

    home = tmp_path / "home"
    shutil.copytree(classify_run, home / "run")
    shutil.copy(polarity_files / "unlabelled.jsonl", home / "new.jsonl")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    result = predict.run("~/run", "~/new.jsonl", "~/out/new.pred.jsonl")
    assert (home / "out" / "new.pred.jsonl").is_file() and not (tmp_path / "~").exists()
    assert result["examples"] == EVAL_ROWS


def test_a_run_trained_on_more_devices_predicts_on_the_devices_here(classify_run,
                                                                     polarity_files, tmp_path,
                                                                     capsys):
    # Fine-tuned on a 16-device slice (data=8 x tensor=2), applied on this 8-device machine.
    workdir = tmp_path / "from_a_pod"
    shutil.copytree(classify_run, workdir)
    saved = json.loads((workdir / "config.json").read_text())
    saved["mesh"].update(num_devices=0, data=8, fsdp=1, tensor=2)
    (workdir / "config.json").write_text(json.dumps(saved))
    out = tmp_path / "predictions.jsonl"
    result = predict.run(str(workdir), str(polarity_files / "eval.jsonl"), str(out))
    printed = capsys.readouterr().out
    assert ("[predict] The run's mesh (data=8, fsdp=1, tensor=2) does not fit the 8 devices "
            "here; predicting with data parallelism over all 8 of them.\n") in printed, printed
    assert "Set mesh" not in printed  # training's advice: predict picks its own mesh
    assert out.read_text() == _eval_rows(classify_run, result["step"], ".jsonl")


def test_the_runs_gradient_accumulation_does_not_constrain_the_prediction_batch(
        classify_run, polarity_files, tmp_path, capsys):
    # Fine-tuned with optimizer.grad_accum_steps=2, applied on 8 devices in batches of 8: that
    # was refused as "data.batch_size=8 / optimizer.grad_accum_steps=2 is not divisible by the 8
    # data-parallel shards", naming settings predict neither uses nor takes.
    workdir = tmp_path / "accumulated"
    shutil.copytree(classify_run, workdir)
    saved = json.loads((workdir / "config.json").read_text())
    saved["mesh"].update(num_devices=0, data=-1, fsdp=1, tensor=1)
    saved["optimizer"]["grad_accum_steps"] = 2
    (workdir / "config.json").write_text(json.dumps(saved))
    out = tmp_path / "predictions.jsonl"
    result = predict.run(str(workdir), str(polarity_files / "eval.jsonl"), str(out),
                         batch_size=8)
    assert out.read_text() == _eval_rows(classify_run, result["step"], ".jsonl")
    # A batch the devices do not divide is named as the flag that set it.
    with pytest.raises(ValueError, match=r"--batch_size=3 is not divisible by the 8 "
                                         r"data-parallel shards.* Pass a --batch_size"):
        predict.run(str(workdir), str(polarity_files / "eval.jsonl"), str(out), batch_size=3)
    # The run's own batch size is fitted to the devices here, with a note (it was refused just
    # after the note that predict runs with data parallelism over them).
    saved["data"]["batch_size"] = 12
    (workdir / "config.json").write_text(json.dumps(saved))
    capsys.readouterr()
    result = predict.run(str(workdir), str(polarity_files / "eval.jsonl"), str(out))
    assert ("[predict] The run's data.batch_size=12 does not divide over the 8 data-parallel "
            "shards here; predicting in batches of 8 (--batch_size sets another).\n"
            in capsys.readouterr().out)
    assert out.read_text() == _eval_rows(classify_run, result["step"], ".jsonl")


def test_a_coordinator_saved_by_a_multi_process_run_is_not_reused(classify_run, polarity_files,
                                                                   tmp_path):
    # Trained as 2 processes with the coordinator in the config: config.json keeps process 0's
    # distributed section. Predict runs as this one process, not as process 0 of the old run
    # (which made it start jax.distributed after touching the devices: a RuntimeError; on a
    # fresh host, a wait for a coordinator long gone).
    workdir = tmp_path / "from_two_processes"
    shutil.copytree(classify_run, workdir)
    saved = json.loads((workdir / "config.json").read_text())
    saved["distributed"].update(coordinator_address="10.0.0.1:1234", num_processes=2,
                                process_id=0)
    (workdir / "config.json").write_text(json.dumps(saved))
    out = tmp_path / "predictions.jsonl"
    result = predict.run(str(workdir), str(polarity_files / "eval.jsonl"), str(out))
    assert out.read_text() == _eval_rows(classify_run, result["step"], ".jsonl")


@pytest.fixture(scope="module")
def gpt_classify_run(data_dir, polarity_files, tmp_path_factory):
    """The GPT classifier (lm_classify) fine-tuned from a tiny GPT LM, a few steps each (ULMFiT's
    chain); the LM's workdir is then deleted: the classifier's holds all predict needs."""
    from tl_jax import config as config_lib
    folder = tmp_path_factory.mktemp("gpt")
    lm = folder / "lm"
    _train(config_lib.load_config("configs/gpt_pretrain.py:tiny", [
        f"data.corpus={data_dir / 'polarity_sentences.jsonl'}", "train.steps=2",
        "data.batch_size=8", "data.eval_batch_size=8", "train.eval_every=2",
        "train.checkpoint_every=2", "train.progress=False", "data.tokenizer_vocab_size=400",
        "data.seq_len=32", "mesh.num_devices=1"]), lm)
    workdir = folder / "run"
    _train(config_lib.load_config("configs/gpt_finetune_classify.py:tiny", [
        f"init_from={lm}", "train.progress=False", "mesh.num_devices=1",
        "data.max_seq_length=32", f"data.train_file={polarity_files / 'train.jsonl'}",
        f"data.eval_file={polarity_files / 'eval.jsonl'}", "data.max_train_examples=0",
        "data.max_eval_examples=0", "data.num_epochs=2.0", "train.keep_checkpoints=1",
        "train.best_metric=eval/loss", "train.best_mode=max"]), workdir)
    shutil.rmtree(lm)
    return workdir


def test_gpt_classifier_predicts_with_the_best_checkpoint_as_its_own_eval(
        gpt_classify_run, polarity_files, tmp_path, capsys):
    _assert_predicts_as_its_best_eval(gpt_classify_run, polarity_files / "eval.jsonl", tmp_path,
                                      last_step=8)
    printed = capsys.readouterr().out
    assert "Metrics on" in printed
    assert ("longer than data.max_seq_length=32 BPE tokens with <|endoftext|> and were "
            "truncated") in printed


def test_gpt_classifier_unlabelled_input_gets_predictions_only(gpt_classify_run, polarity_files,
                                                               tmp_path, capsys):
    out = tmp_path / "predictions.jsonl"
    result = predict.run(str(gpt_classify_run), str(polarity_files / "unlabelled.jsonl"),
                         str(out), batch_size=8)  # another batch size: the same predictions
    assert result["metrics"] == {} and result["labelled"] == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    gold = [json.loads(line) for line in _eval_rows(gpt_classify_run, result["step"],
                                                    ".jsonl").splitlines()]
    assert len(rows) == EVAL_ROWS and all(r["gold"] is None for r in rows)
    assert [r["text"] for r in rows] == [g["text"] for g in gold]
    assert [r["predicted"] for r in rows] == [g["predicted"] for g in gold]
    for r, g in zip(rows, gold):
        assert r["probs"] == pytest.approx(g["probs"], abs=2e-5)
    assert "Metrics" not in capsys.readouterr().out


# Probe runs (task=probe): a frozen encoder + a head; feature, head, cache, transfer settings.
PROBES = {
    # Features from a tl_jax workdir's encoder (a copy, deleted after training), cached in
    # probe.cache_dir: predict reads neither.
    "last_cached": ("configs/transfer_feature.py:tiny", [
        "probe.feature=last", "probe.cache_features=True"]),
    "last": ("configs/transfer_feature.py:tiny", [
        "probe.feature=last", "probe.cache_features=False"]),
    # Token-level cached features (float16) of every layer, mixed by the head's learned weights.
    "scalar_mix_bilstm_cached": ("configs/transfer_feature.py:tiny", [
        "probe.feature=scalar_mix", "probe.head=bilstm", "probe.lstm_hidden=16",
        "probe.cache_features=True"]),
    "adapters": ("configs/transfer_adapters.py:tiny", []),
}


@pytest.fixture(scope="module", params=sorted(PROBES))
def probe_run(request, classify_run, polarity_files, tmp_path_factory):
    """`(workdir, name)` of a probe trained 2 epochs on the polarity files."""
    from tl_jax import config as config_lib
    name = request.param
    spec, overrides = PROBES[name]
    folder = tmp_path_factory.mktemp(f"probe_{name}")
    if name == "last_cached":
        encoder = folder / "encoder"
        shutil.copytree(classify_run, encoder)
        overrides = overrides + [f"init_from={encoder}", f"probe.cache_dir={folder / 'cache'}"]
    workdir = folder / "run"
    _train(config_lib.load_config(spec, [
        *overrides, "train.progress=False", "mesh.num_devices=1", "data.max_seq_length=32",
        f"data.train_file={polarity_files / 'train.jsonl'}",
        f"data.eval_file={polarity_files / 'eval.jsonl'}", "data.max_train_examples=0",
        "data.max_eval_examples=0", "data.num_epochs=2.0"]), workdir)
    if name == "last_cached":
        shutil.rmtree(folder / "encoder")
    return workdir, name


def test_a_probe_predicts_as_its_own_eval(probe_run, polarity_files, tmp_path, capsys):
    workdir, name = probe_run
    cache = workdir.parent / "cache"
    if name == "last_cached":
        # A stale cache (here: zeros) would give other predictions, were it read.
        files = sorted(cache.glob("*.npy"))
        assert len(files) == 2
        for f in files:
            np.save(f, np.zeros_like(np.load(f)))
    out = tmp_path / "predictions.jsonl"
    result = predict.run(str(workdir), str(polarity_files / "eval.jsonl"), str(out))
    step = result["step"]
    assert out.read_text() == _eval_rows(workdir, step, ".jsonl")
    assert len(out.read_text().splitlines()) == result["examples"] == EVAL_ROWS
    expected = _metrics_at(workdir, step)
    assert set(result["metrics"]) == {k for k in expected if k.startswith("eval/")}
    for key, value in result["metrics"].items():
        assert value == pytest.approx(expected[key], abs=1e-6), key
    printed = capsys.readouterr().out
    assert f"[predict] Metrics on {polarity_files / 'eval.jsonl'}: accuracy " in printed
    if name == "last_cached":  # nothing written to the cache either
        assert sorted(cache.glob("*")) == files
    # Unlabelled, in other batches: the same predictions, one per row, no metrics.
    out2 = tmp_path / "unlabelled.jsonl"
    result = predict.run(str(workdir), str(polarity_files / "unlabelled.jsonl"), str(out2),
                         batch_size=8)
    assert result["metrics"] == {}
    rows = [json.loads(line) for line in out2.read_text().splitlines()]
    gold = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == EVAL_ROWS and all(r["gold"] is None for r in rows)
    assert [r["predicted"] for r in rows] == [g["predicted"] for g in gold]


def _conll(path, sentences, with_tags=True):
    path.write_text("".join(
        "".join(f"{w} {t}\n" if with_tags else f"{w}\n" for w, t in zip(*s)) + "\n"
        for s in sentences))


@pytest.fixture(scope="module")
def tag_run(data_dir, tmp_path_factory):
    """Tagging from real sentences: `film`/`movie` are B-THING, the word after them I-THING."""
    texts = [json.loads(line)["text"] for line in open(data_dir / "polarity_sentences.jsonl")]
    sentences = []
    for text in texts[::2]:
        words = text.split()[:40]
        tags = ["O"] * len(words)
        for i, w in enumerate(words):
            if w in ("film", "movie"):
                tags[i] = "B-THING"
                if i + 1 < len(words):
                    tags[i + 1] = "I-THING"
        sentences.append((words, tags))
    folder = tmp_path_factory.mktemp("tag")
    _conll(folder / "train.conll", sentences[:64])
    _conll(folder / "eval.conll", sentences[64:64 + EVAL_ROWS])
    _conll(folder / "unlabelled.conll", sentences[64:64 + EVAL_ROWS], with_tags=False)
    from tl_jax import config as config_lib
    workdir = folder / "run"
    config = config_lib.load_config("configs/finetune_tag.py:tiny", [
        "train.progress=False", "mesh.num_devices=1", "data.max_seq_length=32",
        f"data.train_file={folder / 'train.conll'}", f"data.eval_file={folder / 'eval.conll'}",
        "data.max_train_examples=0", "data.max_eval_examples=0", "data.num_epochs=2.0"])
    _train(config, workdir)
    return folder, workdir


def test_tag_predictions_are_the_runs_own_eval(tag_run, tmp_path, capsys):
    folder, workdir = tag_run
    out = tmp_path / "predictions.conll"
    result = predict.run(str(workdir), str(folder / "eval.conll"), str(out))
    assert out.read_text() == _eval_rows(workdir, result["step"], ".conll")
    expected = _metrics_at(workdir, result["step"])
    for key, value in result["metrics"].items():
        assert value == pytest.approx(expected[key], abs=1e-6), key
    assert "eval/span_f1" in result["metrics"]
    assert "their words past the limit are tagged O" in capsys.readouterr().out
    # Tokens only: `word predicted`, the same predictions.
    out2 = tmp_path / "unlabelled.conll"
    result = predict.run(str(workdir), str(folder / "unlabelled.conll"), str(out2))
    assert result["metrics"] == {}
    first_last = lambda text: [line.split()[::len(line.split()) - 1] if line else []  # noqa: E731
                               for line in text.splitlines()]
    assert first_last(out2.read_text()) == first_last(out.read_text())


def test_tags_the_model_lacks_are_named_by_file_and_line(tag_run, tmp_path):
    folder, workdir = tag_run
    unknown = tmp_path / "unknown.conll"
    unknown.write_text("a O\nfilm B-THING\n\nin O\nParis B-LOC\n")
    with pytest.raises(ValueError, match=rf"{unknown}:5: tags \['B-LOC'\] are not among the 3 "):
        predict.run(str(workdir), str(unknown), str(tmp_path / "out.conll"))


def test_tag_loss_and_accuracy_do_not_count_the_rows_padding_the_last_batch(tag_run, tmp_path):
    # 21 sentences: batches of 16 pad the last one with 11 empty rows, of 21 with none. Padding
    # rows have labels 0 ("O"), not IGNORE: counted, they pushed accuracy towards 1 and changed
    # the loss with the batch size.
    folder, workdir = tag_run
    exact = predict.run(str(workdir), str(folder / "eval.conll"), str(tmp_path / "a.conll"),
                        batch_size=EVAL_ROWS)["metrics"]
    padded = predict.run(str(workdir), str(folder / "eval.conll"), str(tmp_path / "b.conll"),
                         batch_size=16)["metrics"]
    for key in ("eval/accuracy", "eval/loss"):
        assert padded[key] == pytest.approx(exact[key], abs=1e-5), key


def test_an_interrupted_tag_or_squad_write_leaves_the_previous_file_whole(tmp_path):
    """Tag's CoNLL and squad's JSON files were written in place: Ctrl-C or an error part way
    left a file of whole-looking sentences that stopped short (or a JSON cut mid-answer) where
    the previous predictions were. classify's jsonl was already written atomically."""
    from tl_jax.tasks import squad, tag

    tagger = tag.Task.__new__(tag.Task)  # what write_predictions reads of a built task
    tagger.eval_records = [dict(tokens=["a", "film"], tags=None), dict(tokens=["b"], tags=None)]

    def rows():  # the user presses Ctrl-C after the first sentence
        yield 0
        raise KeyboardInterrupt

    out = tmp_path / "tags.conll"
    out.write_text("previous predictions\n")
    with pytest.raises(KeyboardInterrupt):
        tagger.write_predictions(str(out), dict(rows=rows(), predicted=[["O", "B-X"], ["O"]]))
    assert out.read_text() == "previous predictions\n"
    tagger.write_predictions(str(out), dict(rows=[0, 1], predicted=[["O", "B-X"], ["O"]]))
    assert out.read_text() == "a O\nfilm B-X\n\nb O\n\n"

    reader = squad.Task.__new__(squad.Task)
    out, nbest = tmp_path / "answers.json", tmp_path / "answers.nbest.json"
    out.write_text('{"q0": "old"}')
    nbest.write_text('{"q0": []}')
    for broken in ("answers", "nbest"):  # json.dump fails half-way through one of the files
        predictions = dict(answers={"q1": "Emma", "q2": "Elinor"},
                           nbest={"q1": [{"text": "Emma"}], "q2": [{"text": "Elinor"}]})
        predictions[broken]["q2"] = object() if broken == "answers" else [object()]
        with pytest.raises(TypeError, match="not JSON serializable"):
            reader.write_predictions(str(out), predictions, str(nbest))
        # Neither file changes, nor is left half-written: the pair stays the previous one.
        assert out.read_text() == '{"q0": "old"}' and nbest.read_text() == '{"q0": []}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers.json", "answers.nbest.json",
                                                         "tags.conll"]  # no temporary files


def _error(capsys, *argv):
    with pytest.raises(SystemExit) as e:
        main.main(["predict", *argv])
    return str(e.value)


def test_errors_are_one_line(classify_run, polarity_files, tmp_path, capsys):
    good = ["--workdir", str(classify_run), "--output", str(tmp_path / "out.jsonl")]
    inputs = ["--input", str(polarity_files / "eval.jsonl")]
    assert "does not exist" in _error(capsys, "--workdir", str(tmp_path / "none"), *inputs,
                                      "--output", str(tmp_path / "o.jsonl"))
    assert "no config.json: not a workdir" in _error(
        capsys, "--workdir", str(tmp_path), *inputs, "--output", str(tmp_path / "o.jsonl"))
    pretrain = tmp_path / "pretrain"
    pretrain.mkdir()
    (pretrain / "config.json").write_text(json.dumps({"task": "bert_pretrain"}))
    message = _error(capsys, "--workdir", str(pretrain), *inputs, "--output",
                     str(tmp_path / "o.jsonl"))
    assert ("task='bert_pretrain', not a fine-tuned classify, probe, tag, squad or lm_classify "
            "run" in message)
    assert "fill_mask" in message
    empty = tmp_path / "no_checkpoint"
    shutil.copytree(classify_run, empty, ignore=shutil.ignore_patterns("[0-9]*"))
    assert "has no checkpoint" in _error(capsys, "--workdir", str(empty), *inputs, "--output",
                                         str(tmp_path / "o.jsonl"))
    assert "does not exist" in _error(capsys, *good, "--input", str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": \n')
    assert f"{bad}:2: invalid JSON" in _error(capsys, *good, "--input", str(bad))
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text('{"text": "fine", "label": "pos"}\n{"text": "so so", "label": "meh"}\n')
    message = _error(capsys, *good, "--input", str(unknown))
    assert f"{unknown}:2: labels ['meh'] are not among the 2 the model" in message
    assert "is the input file" in _error(capsys, "--workdir", str(classify_run), *inputs,
                                         "--output", str(polarity_files / "eval.jsonl"))
    assert "checkpoint manager owns" in _error(
        capsys, "--workdir", str(classify_run), *inputs, "--output",
        str(classify_run / "checkpoints" / "p.jsonl"))
    # The run's own files (which predict reads) are not replaced either.
    for name in ("config.json", "labels.jsonl", "metrics.jsonl"):
        before = (classify_run / name).read_bytes()
        assert "which the run in" in _error(capsys, "--workdir", str(classify_run), *inputs,
                                            "--output", str(classify_run / name))
        assert (classify_run / name).read_bytes() == before
    for message in capsys.readouterr().err.splitlines():
        assert "Traceback" not in message


def test_a_workdir_copied_without_its_labels_is_named_as_such(classify_run, polarity_files,
                                                              tmp_path, capsys):
    """A workdir copied without labels.jsonl failed with a bare `[Errno 2] No such file or
    directory`; the error now says what the file holds and who writes it."""
    copy = tmp_path / "copied"
    shutil.copytree(classify_run, copy, ignore=shutil.ignore_patterns("labels.jsonl"))
    message = _error(capsys, "--workdir", str(copy), "--input",
                     str(polarity_files / "eval.jsonl"), "--output", str(tmp_path / "o.jsonl"))
    assert f"{copy / 'labels.jsonl'} does not exist" in message
    assert "label of each output unit" in message and "`tl_jax train`" in message
    assert "Errno" not in message


def test_a_negative_batch_size_is_refused_before_the_workdir_is_read(classify_run,
                                                                     polarity_files, tmp_path,
                                                                     capsys):
    # It went on to build the model and failed in numpy ("negative dimensions are not allowed").
    argv = ["--input", str(polarity_files / "eval.jsonl"), "--output", str(tmp_path / "o.jsonl"),
            "--batch_size=-3"]
    expected = "--batch_size=-3 must be at least 1 (or 0 for the run's data.batch_size)"
    assert expected in _error(capsys, "--workdir", str(classify_run), *argv)
    assert expected in _error(capsys, "--workdir", str(tmp_path / "none"), *argv)
    assert not (tmp_path / "o.jsonl").exists()
    assert "Traceback" not in capsys.readouterr().err


def test_help_lists_predict():
    assert "predict" in main.build_parser().format_help()
    assert "tl_jax predict --workdir" in main.__doc__


def test_squad_predictions_are_the_runs_own_eval(tmp_path, capsys):
    from tl_jax import config as config_lib
    from tl_jax.data import readers
    contexts = ["Emma lived at Hartfield with her father near the village of Highbury in Surrey.",
                "Elinor and Marianne moved to Barton Cottage in Devonshire after their father "
                "died."]
    records = [dict(id=f"q{i}", title="t", question=f"who lived there {i}?",
                    context=contexts[i % 2], is_impossible=False,
                    answers=[dict(text=contexts[i % 2].split()[0], answer_start=0)])
               for i in range(40)]
    readers.write_squad(tmp_path / "train.json", records[:32])
    readers.write_squad(tmp_path / "eval.json", records[32:])
    readers.write_squad(tmp_path / "unlabelled.json", [dict(r, answers=[]) for r in records[32:]])
    workdir = tmp_path / "run"
    config = config_lib.load_config("configs/finetune_squad.py:tiny", [
        "train.progress=False", "mesh.num_devices=1", "data.max_seq_length=32",
        "data.doc_stride=8", "data.max_query_length=8", "data.batch_size=8",
        f"data.train_file={tmp_path / 'train.json'}", f"data.eval_file={tmp_path / 'eval.json'}",
        "data.max_train_examples=0", "data.max_eval_examples=0", "data.num_epochs=2.0"])
    _train(config, workdir)  # contexts longer than a window: several windows per question
    result = predict.run(str(workdir), str(tmp_path / "eval.json"), str(tmp_path / "out.json"))
    step = result["step"]
    assert (tmp_path / "out.json").read_text() == _eval_rows(workdir, step, ".json")
    assert (tmp_path / "out.nbest.json").read_text() == \
        (workdir / "predictions" / f"nbest_step_{step}.json").read_text()
    expected = _metrics_at(workdir, step)
    assert result["metrics"] == pytest.approx({k: v for k, v in expected.items() if k != "step"})
    result = predict.run(str(workdir), str(tmp_path / "unlabelled.json"),
                         str(tmp_path / "out2.json"))
    assert result["metrics"] == {}
    assert (tmp_path / "out2.json").read_text() == (tmp_path / "out.json").read_text()
    # A SQuAD 2.0 file given to this v1.1 run: its unanswerable questions score 0, and it says so.
    readers.write_squad(tmp_path / "v2.json", records[32:34] + [
        dict(records[34], is_impossible=True, answers=[])], version="2.0")
    capsys.readouterr()
    predict.run(str(workdir), str(tmp_path / "v2.json"), str(tmp_path / "out3.json"))
    assert ("Note: 1 of 3 questions in " in capsys.readouterr().out)
    # OUT.nbest.json is checked as OUT is: an input named so was overwritten with n-best spans.
    own_input = tmp_path / "questions.nbest.json"
    shutil.copy(tmp_path / "eval.json", own_input)
    before = own_input.read_bytes()
    with pytest.raises(ValueError, match=r"questions.json's n-best file .*questions.nbest.json "
                                         "is the input file"):
        predict.run(str(workdir), str(own_input), str(tmp_path / "questions.json"))
    assert own_input.read_bytes() == before and not (tmp_path / "questions.json").exists()
    (tmp_path / "folder.nbest.json").mkdir()
    with pytest.raises(ValueError, match="n-best file .*folder.nbest.json is a directory"):
        predict.run(str(workdir), str(tmp_path / "eval.json"), str(tmp_path / "folder"))


def test_a_mesh_that_does_not_fit_one_device_says_only_what_predict_does(monkeypatch, capsys):
    """A run trained on a 2x2 mesh, predicted on 1 device: the note gave training's advice
    ("Set mesh.data/fsdp/tensor so that they multiply to 1 (or use -1 for one axis).")."""
    import jax
    import ml_collections

    from tl_jax import parallel

    one = jax.devices()[:1]
    monkeypatch.setattr(jax, "devices", lambda *a: one)
    monkeypatch.setattr(jax, "device_count", lambda *a: 1)
    config = ml_collections.ConfigDict({"mesh": parallel.default_config()})
    config.mesh.update(data=2, fsdp=2)
    mesh = predict.fit_mesh(config)
    assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
    assert capsys.readouterr().out == (
        "[predict] The run's mesh (data=2, fsdp=2, tensor=1) does not fit the 1 device here; "
        "predicting on that one device.\n")

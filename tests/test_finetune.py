"""Short real fine-tuning runs, one per task, through the canonical trainer: each must learn.

To be fast on a CPU they fine-tune the bottom layer of the imported MiniLM (embeddings + 1 of 6
layers; `model.num_layers=1`) on small slices of the real tasks, and must beat the trivial
baseline: the majority class (classification: which source, Austen or Wikipedia, a paragraph
comes from; the food reviews need the whole encoder, see experiments/), predicting no entity (tagging: span F1 0), and the
empty answer (QA: EM/F1 0) by a clear margin.
"""
import collections
import dataclasses
import json
import os

import numpy as np
import pytest

from tl_jax import config as config_lib, extract, train
from tl_jax.data import features, readers, task_builders

FAST = ["train.progress=False", "model.num_layers=1", "data.batch_size=16", "mesh.num_devices=1",
        "data.num_epochs=2.0", "optimizer.warmup_steps=2", "optimizer.learning_rate=1e-3"]


@pytest.fixture(scope="module")
def silver(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("silver")
    task_builders.build_all(out, data_dir, names_caps=(192, 64, 1), qa_caps=(160, 40, 1))
    return out


def _run(spec, workdir, overrides):
    config = config_lib.load_config(spec, FAST + overrides)
    return train.train_and_evaluate(config, str(workdir)).summary, config


def _source_task(data_dir, tmp_path):
    """Austen vs Wikipedia paragraphs (real text, balanced), as CSV: learnable in a few steps."""
    import csv

    rows = []
    for name, label in (("austen.jsonl", "austen"), ("enwiki_sample.jsonl", "wikipedia")):
        with open(data_dir / name) as f:
            texts = [json.loads(line)["text"] for line in f]
        texts = [t for t in texts if len(t.split()) >= 12][100:300]  # skip title pages
        rows += [(t, label) for t in texts]
    rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    paths = []
    for split, part in (("train", rows[:240]), ("test", rows[240:336])):
        path = tmp_path / f"{split}.csv"
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["paragraph", "source"])
            writer.writerows(part)
        paths.append(path)
    return paths


def test_classify_beats_majority_class(data_dir, tmp_path, capsys):
    train_file, eval_file = _source_task(data_dir, tmp_path)
    summary, config = _run("configs/finetune_classify.py:minilm", tmp_path / "run", [
        f"data.train_file={train_file}", f"data.eval_file={eval_file}",
        "data.text_field=paragraph", "data.label_field=source", "data.positive_label=austen",
        "data.max_seq_length=32", "optimizer.learning_rate=5e-4"])
    # model.num_layers keeps MiniLM's bottom layer, and the log says so (it said "loaded").
    assert (f"[init_from] model.num_layers=1: the bottom 1 of the 6 layers of {config.init_from}"
            " are used; the top 5 are left out.") in capsys.readouterr().out
    assert summary["step"] == config.train.steps == 30  # 2 epochs of 240 // 16 steps
    gold = [r["label"] for r in readers.read_records(str(eval_file), "classification",
                                                     text_field="paragraph", label_field="source")]
    majority = max(collections.Counter(gold).values()) / len(gold)
    assert summary["eval/accuracy"] > max(0.8, majority + 0.2), (summary, majority)
    assert summary["eval/mcc"] > 0.5
    workdir = tmp_path / "run"
    rows = [json.loads(line) for line in open(workdir / "predictions" / "eval_step_30.jsonl")]
    assert len(rows) == 96 and [r["gold"] for r in rows] == gold
    assert sum(r["gold"] == r["predicted"] for r in rows) / 96 == pytest.approx(summary["eval/accuracy"])
    assert os.path.isdir(workdir / "checkpoints") and os.path.exists(workdir / "tokenizer")
    # The fine-tuned workdir is itself a source (intermediate-task transfer, features): its
    # architecture is MiniLM's bottom layer, not the `tiny` its config's model.size names (and
    # reading that config for pretraining fields was a KeyError).
    tokens, feats = extract.extract(str(workdir), ["Elinor walked to Barton."], layers="all")
    assert feats[0].shape == (2, len(tokens[0]), 384)  # embeddings + 1 layer, MiniLM's width


def test_tag_beats_no_entity_baseline(silver, tmp_path):
    summary, config = _run("configs/finetune_tag.py:minilm", tmp_path, [
        f"data.train_file={silver / 'names' / 'train.conll'}",
        f"data.eval_file={silver / 'names' / 'dev.conll'}", "data.max_seq_length=48"])
    assert summary["step"] == 24
    assert summary["eval/span_f1"] > 0.4, summary  # predicting no entity scores 0
    lines = [line.split() for line in open(tmp_path / "predictions" / "eval_step_24.conll")]
    gold = readers.read_conll(silver / "names" / "dev.conll")
    assert [l[1] for l in lines if l] == [t for s in gold for t in s["tags"]]


def test_squad_beats_empty_answer_baseline(silver, tmp_path):
    summary, config = _run("configs/finetune_squad.py:minilm", tmp_path, [
        f"data.train_file={silver / 'cloze_qa' / 'train.json'}",
        f"data.eval_file={silver / 'cloze_qa' / 'dev.json'}", "data.max_seq_length=128",
        "data.doc_stride=48", "data.max_query_length=48"])
    # The empty answer scores EM = F1 = 0 on answerable questions.
    assert summary["eval/exact"] > 10.0 and summary["eval/f1"] > 15.0, summary
    predictions = json.load(open(tmp_path / "predictions" / f"eval_step_{summary['step']}.json"))
    assert len(predictions) == 40


def test_labels_outside_the_label_set_name_the_file_and_line(tmp_path):
    from tl_jax.tasks import classify, lm_classify, tag

    def jsonl(name, labels):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"text": f"text {i}", "label": label}) + "\n"
                                for i, label in enumerate(labels)))
        return str(path)

    train_file, eval_file = jsonl("train.jsonl", ["a", "b", "a"]), jsonl("eval.jsonl", ["a", "c"])
    base = [f"data.train_file={train_file}", f"data.eval_file={train_file}"]
    config = config_lib.load_config("configs/finetune_classify.py:tiny", base[:1] + [
        f"data.eval_file={eval_file}"])
    with pytest.raises(ValueError, match=r"eval.jsonl:2: labels \['c'\] never occur in training"):
        classify.Task(config, str(tmp_path))
    # With data.labels, a training label outside it is named with its file too (it was
    # "record 1: label 'b' not in label map", and the eval check blamed the training data).
    config = config_lib.load_config("configs/finetune_classify.py:tiny", base + [
        "data.labels=['a']"])
    with pytest.raises(ValueError, match=r"train.jsonl:2: labels \['b'\] are not in data.labels"):
        classify.Task(config, str(tmp_path))
    config = config_lib.load_config("configs/finetune_classify.py:tiny", base + [
        "data.labels=['a', 'b', 'a']"])
    with pytest.raises(ValueError, match=r"data.labels \['a', 'b', 'a'\] lists \['a'\] more "):
        classify.Task(config, str(tmp_path))
    conll = tmp_path / "train.conll"
    conll.write_text("Emma B-PER\nsmiled O\n\nin O\nHighbury B-LOC\n")
    config = config_lib.load_config("configs/finetune_tag.py:tiny", [
        f"data.train_file={conll}", f"data.eval_file={conll}", "data.labels=['O', 'B-PER', 'I-PER']"])
    with pytest.raises(ValueError, match=r"train.conll:5: tags \['B-LOC'\] are not in data.labels"):
        tag.Task(config, str(tmp_path))
    # An eval tag the training file lacks: the line is the tag's own, whatever comes between.
    clean, tagged = tmp_path / "clean.conll", tmp_path / "eval.conll"
    clean.write_text("Emma B-PER\nsmiled O\n")
    tagged.write_text("-DOCSTART- O\n\nEmma B-PER\n\n\nsmiled O\n-DOCSTART- O\nat O\n"
                      "Highbury B-LOC\n")
    config = config_lib.load_config("configs/finetune_tag.py:tiny", [
        f"data.train_file={clean}", f"data.eval_file={tagged}"])
    with pytest.raises(ValueError, match=r"eval.conll:9: tags \['B-LOC'\] never occur in "
                                         r"training data .*clean.conll"):
        tag.Task(config, str(tmp_path))
    # The GPT classifier checks its files the same way.
    config = config_lib.load_config("configs/gpt_finetune_classify.py:tiny", base + [
        "data.labels=['a']"])
    with pytest.raises(ValueError, match=r"train.jsonl:2: labels \['b'\] are not in data.labels"):
        lm_classify.Task(config, str(tmp_path))


def test_a_label_the_training_data_uses_once_or_twice_is_noted(tmp_path, capsys):
    # A stray value (a boolean in a column of words, a typo) silently became a class of its own.
    from tl_jax.tasks import classify

    path = tmp_path / "train.jsonl"
    rows = [{"text": f"review number {i}", "label": "pos" if i % 2 else "neg"} for i in range(120)]
    rows[7]["label"], rows[50]["label"] = True, "pso"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = [f"data.train_file={path}", f"data.eval_file={path}"]
    classify.Task(config_lib.load_config("configs/finetune_classify.py:tiny", base),
                  str(tmp_path / "run"))
    assert (f"[classify] Note: 2 of the 4 labels of the training data occur only once or twice "
            f"among 120 examples: 'pso' (1x), 'true' (1x), first at {path}:8. Each is a class "
            "of its own; set data.labels if they are stray values.") in capsys.readouterr().out
    rows[7]["label"], rows[50]["label"] = "pos", "neg"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    classify.Task(config_lib.load_config("configs/finetune_classify.py:tiny", base),
                  str(tmp_path / "run2"))
    assert "only once or twice" not in capsys.readouterr().out


def test_numeric_labels_in_the_config_are_the_files_labels(tmp_path):
    # data.labels=1,0 on the command line arrives as numbers; the files' labels are strings
    # ("1", "0"), so every label of the file was "not in data.labels [1, 0]".
    from tl_jax.tasks import classify, lm_classify

    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": f"review number {i}", "label": i % 2}) + "\n"
                            for i in range(32)))
    base = [f"data.train_file={path}", f"data.eval_file={path}"]
    config = config_lib.load_config("configs/finetune_classify.py:tiny", base + ["data.labels=1,0"])
    task = classify.Task(config, str(tmp_path / "run"))
    assert task.labels == ["1", "0"]
    assert list(task.train_arrays["labels"][:4]) == [1, 0, 1, 0]
    config = config_lib.load_config("configs/gpt_finetune_classify.py:tiny", base + [
        "data.labels=(0,)"])
    with pytest.raises(ValueError, match=r"labels \['1'\] are not in data.labels \['0'\]"):
        lm_classify.Task(config, str(tmp_path / "gpt"))


def test_training_says_how_many_examples_were_truncated(tmp_path, capsys):
    from tl_jax.tasks import classify, lm_classify, tag

    path = tmp_path / "train.jsonl"
    texts = ["short one", "a much longer review that goes on and on about the food here"] * 8
    path.write_text("".join(json.dumps({"text": t, "label": i % 2}) + "\n"
                            for i, t in enumerate(texts)))
    files = [f"data.train_file={path}", f"data.eval_file={path}", "data.max_seq_length=8"]
    classify.Task(config_lib.load_config("configs/finetune_classify.py:tiny", files),
                  str(tmp_path / "run"))
    out = capsys.readouterr().out
    for split in ("training", "eval"):
        assert (f"[classify] Note: 8 of 16 {split} inputs are longer than "
                "data.max_seq_length=8 sub-tokens and were truncated." in out), out
    lm_classify.Task(config_lib.load_config("configs/gpt_finetune_classify.py:tiny", files + [
        "data.tokenizer_vocab_size=300"]), str(tmp_path / "gpt"))
    assert "[lm_classify] Note: 8 of 16 training inputs are longer than" in capsys.readouterr().out
    conll = tmp_path / "train.conll"
    conll.write_text("a B-PER\nb O\n\n" * 15 + "".join(f"{c} O\n" for c in "cdefghijklmn"))
    tag.Task(config_lib.load_config("configs/finetune_tag.py:tiny", [
        f"data.train_file={conll}", f"data.eval_file={conll}", "data.max_seq_length=8"]),
        str(tmp_path / "tag"))
    assert ("[tag] Note: 1 of 16 training sentences are longer than data.max_seq_length=8 "
            "sub-tokens and were truncated; their words past the limit are tagged O."
            in capsys.readouterr().out)
    # Short enough: no note.
    classify.Task(config_lib.load_config("configs/finetune_classify.py:tiny", files[:2]),
                  str(tmp_path / "run2"))
    assert "Note:" not in capsys.readouterr().out


def test_a_tagging_file_with_missing_blank_lines_is_named_by_line(tmp_path, capsys):
    # Sentences run together were only "1 of 16 training sentences are longer than ...", and a
    # file that is one sentence failed as "1 training examples cannot fill one batch".
    from tl_jax.tasks import tag

    conll = tmp_path / "train.conll"
    run_together = "".join(f"w{i} O\n" for i in range(300))
    conll.write_text("a B-PER\nb O\n\n" * 5 + run_together + "\n" + "a B-PER\nb O\n\n" * 10)
    tag.Task(config_lib.load_config("configs/finetune_tag.py:tiny", [
        f"data.train_file={conll}", f"data.eval_file={conll}", "data.max_seq_length=8"]),
        str(tmp_path / "tag"))
    out = capsys.readouterr().out
    note = f"[tag] Note: the sentence at {conll}:16 has 300 tokens: missing blank lines between"
    assert out.count(note) == 2, out  # the training and the eval file
    one = tmp_path / "one.conll"
    one.write_text("a B-PER\nb O\n" + run_together)
    with pytest.raises(ValueError, match=rf"{one}:1: the whole file is one sentence of 302 "
                                         r"tokens \(lines 1-302\): missing blank lines"):
        tag.Task(config_lib.load_config("configs/finetune_tag.py:tiny", [
            f"data.train_file={one}", f"data.eval_file={conll}"]), str(tmp_path / "tag2"))


def test_tagged_words_the_tokenizer_drops_are_noted_naming_the_file(tmp_path, capsys):
    # A lone U+00A0 tagged B-PER has no sub-token: always predicted O. The note names the file.
    from tl_jax.tasks import tag

    train, dev = tmp_path / "train.conll", tmp_path / "dev.conll"
    train.write_text("a B-PER\nb O\n\n" * 15 + "\u00a0 B-PER\nb O\n\n")
    dev.write_text("a B-PER\nb O\n\n" * 4)
    tag.Task(config_lib.load_config("configs/finetune_tag.py:tiny", [
        f"data.train_file={train}", f"data.eval_file={dev}"]), str(tmp_path / "tag"))
    out = capsys.readouterr().out
    assert f"[tag] Note: 1 word in {train} with a tag other than O is reduced to nothing" in out
    assert str(dev) not in out, out


def test_gpt_classifier_settings_are_checked_before_data_and_tokenizer(tmp_path):
    from tl_jax.tasks import lm_classify

    missing = [f"data.train_file={tmp_path / 'none.jsonl'}",
               f"data.eval_file={tmp_path / 'none.jsonl'}"]  # never read: the settings fail first
    for override, message in [("model.pooling=cls", "model.pooling='cls'; expected last, mean or concat"),
                              ("transfer.lora_rank=4", "lora_rank are not supported")]:
        config = config_lib.load_config("configs/gpt_finetune_classify.py:tiny",
                                        missing + [override])
        with pytest.raises(ValueError, match=message):
            lm_classify.Task(config, str(tmp_path / "run"))


def test_squad_version_must_match_the_data(tmp_path):
    # data.version=2.0 on data without an unanswerable question (the default silver:cloze_qa is
    # built as v1.1) trained silently without ever learning "no answer"; v1.1 on v2.0 data
    # dropped the unanswerable questions from training and scored them 0.
    from tl_jax.tasks import squad

    context = "Elizabeth walked to Netherfield with Jane."
    answerable = {"id": "a", "title": "t", "question": "Who walked with ____?", "context": context,
                  "answers": [{"text": "Jane", "answer_start": context.index("Jane")}],
                  "is_impossible": False}
    impossible = {"id": "b", "title": "t", "question": "Who met ____?", "context": context,
                  "answers": [], "is_impossible": True}
    v1, v2 = tmp_path / "v1.json", tmp_path / "v2.json"
    readers.write_squad(v1, [answerable])
    readers.write_squad(v2, [answerable, impossible], version="2.0")

    def task(version, train_file, eval_file):
        config = config_lib.load_config("configs/finetune_squad.py:tiny", [
            f"data.version={version}", f"data.train_file={train_file}",
            f"data.eval_file={eval_file}"])
        return squad.Task(config, str(tmp_path / "run"))

    with pytest.raises(ValueError, match=r"data.version='2.0' but the training data .*v1.json "
                                         r"has no unanswerable question.*--qa_version=2.0"):
        task("2.0", v1, v2)
    with pytest.raises(ValueError, match=r"data.version='1.1' but .*v2.json has 1 unanswerable"):
        task("1.1", v1, v2)
    with pytest.raises(ValueError, match=r"data.version='1.1' but .*v2.json has 1 unanswerable"):
        task("1.1", v2, v1)


def test_squad_answers_no_window_holds_are_counted(tmp_path, capsys):
    # An answer longer than a window (or across a boundary the windows overlap less than it is
    # long) is in no window whole: v1.1 training dropped the question without a word.
    from tl_jax.tasks import squad

    words = "Emma walked to Hartfield with her father and met Mr. Knightley by the old gate".split()
    context = " ".join(words * 3)
    long_answer = " ".join(words * 2)
    records = [{"id": f"q{i}", "title": "t", "question": f"Who walked {i}?", "context": context,
                "answers": [{"text": "Hartfield", "answer_start": 15}], "is_impossible": False}
               for i in range(3)]
    records.append(dict(records[0], id="long", answers=[{"text": long_answer, "answer_start": 0}]))
    path = tmp_path / "qa.json"
    readers.write_squad(path, records)

    def task(*overrides):
        config = config_lib.load_config("configs/finetune_squad.py:tiny", [
            f"data.train_file={path}", f"data.eval_file={path}", "data.max_seq_length=24",
            "data.max_query_length=8", "data.doc_stride=4", "data.batch_size=2", *overrides])
        return squad.Task(config, str(tmp_path / "run"))

    kept = task()
    assert ("1 of 4 answerable training questions have their answer in no window whole, so they "
            "are trained as unanswerable") in capsys.readouterr().out
    skipped = task("data.skip_windows_without_answer=True")
    assert ("1 of 4 answerable training questions have their answer in no window whole, so they "
            "are skipped") in capsys.readouterr().out
    # v1.1 trains on the windows that miss the answer, pointing at [CLS], as BERT's run_squad.py
    # does (they were dropped, so the model never learned to score spans low in them); the
    # option drops them.
    starts = kept.train_arrays["start_positions"]
    n_windows = len(features.encode_squad(
        kept.encoder.tokenizer, kept.train_records, 24, 4, 8)["input_ids"])
    assert len(starts) == n_windows == 36 and (starts > 0).sum() == 3
    assert (skipped.train_arrays["start_positions"] > 0).all()
    assert len(skipped.train_arrays["start_positions"]) == 3
    with pytest.raises(ValueError, match="skip_windows_without_answer=True is for data.version"):
        task("data.skip_windows_without_answer=True", "data.version=2.0")


def test_squad_eval_scores_only_the_questions_it_reached(tmp_path):
    # With train.eval_batches > 0 the eval pass stops early; the questions it never reached were
    # scored as wrong (tiny config on cloze_qa: EM 2.1 with eval_batches=1 instead of 33.3 on
    # the three questions it saw).
    from tl_jax.tasks import squad

    context = "Elizabeth walked to Netherfield with Jane and met Mr. Bingley there."
    records = [{"id": f"q{i}", "title": "t", "question": f"Who walked with ____ {i}?",
                "context": context, "answers": [{"text": "Jane", "answer_start": 37}],
                "is_impossible": False} for i in range(4)]
    path = tmp_path / "qa.json"
    readers.write_squad(path, records)
    config = config_lib.load_config("configs/finetune_squad.py:tiny", [
        f"data.train_file={path}", f"data.eval_file={path}", "data.max_seq_length=48",
        "data.max_query_length=16", "data.doc_stride=8", "data.batch_size=2"])
    task = squad.Task(config, str(tmp_path / "run"))
    example_of = task.eval_host["example_index"]
    assert (np.bincount(example_of) > 1).all()  # several windows per question
    # Logits that point every window of questions 0 and 1 at "Jane"; question 2 is cut off
    # after its first window, question 3 is never reached.
    rows = np.nonzero(example_of <= 1)[0].tolist() + [int(np.nonzero(example_of == 2)[0][0])]
    n, length = len(rows), config.data.max_seq_length
    start, end = np.zeros((n, length)), np.zeros((n, length))
    for k, row in enumerate(rows):
        offsets = task.eval_host["offsets"][row]
        start[k] = np.where(offsets[:, 0] == 37, 10.0, 0.0)
        end[k] = np.where(offsets[:, 1] == 41, 10.0, 0.0)
    out = {"row": np.array(rows), "start_logits": start, "end_logits": end}
    report = task.evaluate([(None, out)], str(tmp_path / "run"), 7)
    assert report["exact"] == report["f1"] == 100.0, report
    predictions = json.load(open(tmp_path / "run" / "predictions" / "eval_step_7.json"))
    assert predictions == {"q0": "Jane", "q1": "Jane"}
    # Starts follow BERT's max-context rule: the mask stays host-side, out of the batches, and
    # decoding skips starts of 25 on every context sub-token outside its max-context window.
    assert "max_context" not in task.eval_arrays and "max_context" not in task.train_arrays
    host = {k: v[rows] for k, v in task.eval_host.items()}
    outside = (host["offsets"][..., 0] >= 0) & (host["max_context"] == 0)
    assert outside.any()
    task.evaluate([(None, dict(out, start_logits=np.where(outside, 25.0, start)))],
                  str(tmp_path / "run"), 8)
    predictions = json.load(open(tmp_path / "run" / "predictions" / "eval_step_8.json"))
    assert predictions == {"q0": "Jane", "q1": "Jane"}


def test_squad_predictions_are_utf8_whatever_the_locale(tmp_path, monkeypatch):
    # The prediction files were opened in the locale's encoding; under an ASCII locale the first
    # eval with a non-ASCII answer raised UnicodeEncodeError and ended the run.
    import builtins

    from tl_jax.tasks import squad

    context = "Zoë walked to Netherfield with José and met Mr. Bingley there."
    path = tmp_path / "qa.json"
    readers.write_squad(path, [{"id": "q", "title": "t", "question": "Who walked with ____?",
                                "context": context, "is_impossible": False,
                                "answers": [{"text": "José", "answer_start": 31}]}])
    config = config_lib.load_config("configs/finetune_squad.py:tiny", [
        f"data.train_file={path}", f"data.eval_file={path}", "data.batch_size=1"])
    task = squad.Task(config, str(tmp_path / "run"))
    offsets = task.eval_host["offsets"][0]
    start = np.where(offsets[:, 0] == 31, 10.0, 0.0)[None]
    end = np.where(offsets[:, 1] == 35, 10.0, 0.0)[None]
    ascii_open = lambda *a, encoding=None, **k: builtins.open(*a, encoding=encoding or "ascii", **k)  # noqa: E731
    monkeypatch.setattr(squad, "open", ascii_open, raising=False)
    report = task.evaluate([(None, {"row": np.array([0]), "start_logits": start,
                                    "end_logits": end})], str(tmp_path / "run"), 1)
    assert report["exact"] == 100.0
    text = (tmp_path / "run" / "predictions" / "eval_step_1.json").read_text(encoding="utf-8")
    assert json.loads(text) == {"q": "José"}


def test_squad_settings_that_can_never_answer_are_errors(tmp_path):
    # data.max_answer_length=0 (or n_best=0) trained and then silently scored EM = F1 = 0.
    from tl_jax.tasks import squad

    context = "Elizabeth walked to Netherfield with Jane."
    path = tmp_path / "qa.json"
    readers.write_squad(path, [{"id": "q", "title": "t", "question": "Who?", "context": context,
                                "answers": [{"text": "Jane", "answer_start": 37}],
                                "is_impossible": False}])
    for key in ("max_answer_length", "n_best"):
        config = config_lib.load_config("configs/finetune_squad.py:tiny", [
            f"data.train_file={path}", f"data.eval_file={path}", f"data.{key}=0"])
        with pytest.raises(ValueError, match=rf"data.{key}=0 must be >= 1"):
            squad.Task(config, str(tmp_path / "run"))

    # A stride past a window's context was clamped to it, silently: windows without overlap.
    base = [f"data.train_file={path}", f"data.eval_file={path}", "data.max_seq_length=96",
            "data.max_query_length=32", "data.batch_size=1"]
    config = config_lib.load_config("configs/finetune_squad.py:tiny", base + ["data.doc_stride=62"])
    with pytest.raises(ValueError, match=r"data.doc_stride=62 is larger than .* "
                                         r"data.max_seq_length=96 - data.max_query_length=32 - 3 "
                                         r"= 61 sub-tokens"):
        squad.Task(config, str(tmp_path / "run"))
    config = config_lib.load_config("configs/finetune_squad.py:tiny", base + ["data.doc_stride=61"])
    squad.Task(config, str(tmp_path / "run2"))  # windows that just do not overlap


def test_labels_of_a_workdir_and_of_init_from_are_not_mixed_up(tmp_path, capsys):
    """Resuming with another label set is refused (it continued silently, or moved a healthy
    checkpoint aside as corrupt); warm-starting from a fine-tuned workdir takes its encoder,
    never its head, even when the head's shape fits; a positive_label that is no label is an
    error, not an F1 of 0."""
    from tl_jax.tasks import classify

    def data(name, labels):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"text": f"review number {i} was {labels[i % 2]}",
                                            "label": labels[i % 2]}) + "\n" for i in range(32)))
        return str(path)

    ab, cd = data("ab.jsonl", ["a", "b"]), data("cd.jsonl", ["c", "d"])
    tiny = ["train.progress=False", "train.steps=2", "train.eval_every=0",
            "mesh.num_devices=1", "data.batch_size=8"]

    def run(workdir, train_file, *more):
        config = config_lib.load_config("configs/finetune_classify.py:tiny", tiny + [
            f"data.train_file={train_file}", f"data.eval_file={train_file}", *more])
        return train.train_and_evaluate(config, str(workdir))

    first = run(tmp_path / "ab", ab)
    kept = {name: (tmp_path / "ab" / name).read_bytes()
            for name in ("config.json", "labels.jsonl", "tokenizer/tokenizer.json")}
    # The resumed run keeps the workdir's tokenizer (one trained on c/d would differ), so the
    # labels are what does not fit, named whatever tokenizer is asked for.
    with pytest.raises(ValueError, match=r"trained with labels \['a', 'b'\].*gives \['c', 'd'\]"):
        run(tmp_path / "ab", cd, "train.steps=4")
    with pytest.raises(ValueError, match=r"trained with labels \['a', 'b'\].*gives \['c', 'd'\]"):
        run(tmp_path / "ab", cd, "train.steps=4", f"data.tokenizer={tmp_path / 'ab' / 'tokenizer'}")
    assert os.listdir(tmp_path / "ab" / "checkpoints") == ["2"]
    assert {name: (tmp_path / "ab" / name).read_bytes() for name in kept} == kept  # untouched
    assert not (tmp_path / "ab" / "checkpoints_corrupt").exists()

    capsys.readouterr()
    run(tmp_path / "cd", cd, f"init_from={tmp_path / 'ab'}",
        f"data.tokenizer={tmp_path / 'ab' / 'tokenizer'}")
    out = capsys.readouterr().out
    fresh = next(line for line in out.splitlines() if "freshly initialised" in line)
    assert "head/" in fresh and "bert/" not in fresh, out
    assert first.summary["step"] == 2
    # The tiny config warms up over 2 steps: a 2-step run never reaches its peak rate, and says so.
    assert "optimizer.warmup_steps=2 is not shorter than the run (2 steps)" in out, out

    # A resume reads its own checkpoint, never init_from: a changed init_from is said to do
    # nothing (it was taken in silence, as if the run had started from it); the same one is not.
    run(tmp_path / "cd", cd, f"init_from={tmp_path / 'ab'}",
        f"data.tokenizer={tmp_path / 'ab' / 'tokenizer'}", "train.steps=3")
    out = capsys.readouterr().out
    assert "Resuming from step 2" in out and "init_from changed" not in out
    assert "warmup_steps" not in out  # 3 steps: the warmup ends inside the run
    run(tmp_path / "ab", ab, "train.steps=3", f"init_from={tmp_path / 'cd'}")
    out = capsys.readouterr().out
    assert "Resuming from step 2" in out
    assert f"init_from changed since the checkpoint ('' -> '{tmp_path / 'cd'}')" in out, out

    config = config_lib.load_config("configs/finetune_classify.py:tiny", tiny + [
        f"data.train_file={ab}", f"data.eval_file={ab}", "data.positive_label=positive"])
    with pytest.raises(ValueError, match=r"positive_label='positive' is not one of the labels"):
        classify.Task(config, str(tmp_path / "pos"))


def test_a_resumed_run_keeps_the_tokenizer_of_its_checkpoint(data_dir, tmp_path):
    # From scratch, the vocabulary is trained on the task's text. A resume with other data
    # (here fewer training examples) retrained it, same size but other ids, went on training the
    # checkpoint's embedding rows under the new meanings and overwrote WORKDIR/tokenizer.
    sentences = data_dir / "polarity_sentences.jsonl"
    base = ["train.progress=False", "mesh.num_devices=1", "data.batch_size=16",
            "data.max_seq_length=32", f"data.train_file={sentences}",
            f"data.eval_file={sentences}", "data.max_eval_examples=16", "train.eval_every=0"]
    workdir = tmp_path / "run"

    def run(steps, n_train):
        config = config_lib.load_config("configs/finetune_classify.py:tiny", base + [
            f"train.steps={steps}", f"data.max_train_examples={n_train}"])
        return train.train_and_evaluate(config, str(workdir))

    run(2, 160)
    vocab = (workdir / "tokenizer" / "vocab.txt").read_text()
    result = run(4, 128)
    assert result.summary["step"] == 4
    assert (workdir / "tokenizer" / "vocab.txt").read_text() == vocab
    assert result.trainer.task.encoder.tokenizer.hf_tokenizer.get_vocab() == \
        {token: i for i, token in enumerate(vocab.splitlines())}


def test_a_resumed_gpt_classifier_reports_no_tokenizer_change_it_did_not_make(tmp_path, capsys):
    # The task wrote the saved tokenizer into config.data.tokenizer, and the resume then said
    # "data.tokenizer: checkpoint has '', config has '<workdir>/tokenizer' ... have no effect".
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": f"review number {i} was {'good' if i % 2 else 'bad'}",
                                        "label": i % 2}) + "\n" for i in range(32)))
    base = ["train.progress=False", "mesh.num_devices=1", f"data.train_file={path}",
            f"data.eval_file={path}", "train.steps=2"]
    config = config_lib.load_config("configs/gpt_finetune_classify.py:tiny", base)
    train.train_and_evaluate(config, str(tmp_path / "run"))
    capsys.readouterr()
    config = config_lib.load_config("configs/gpt_finetune_classify.py:tiny",
                                    base[:-1] + ["train.steps=3"])
    train.train_and_evaluate(config, str(tmp_path / "run"))
    out = capsys.readouterr().out
    assert "Resuming from step 2" in out and "have no effect" not in out


def _resume_with_init_from_gone(source, config, workdir, built, capsys):
    """Deletes `source` (the run's init_from), resumes the run stopped at step 2 in `workdir`
    to step 4, and checks it says so and keeps the model config it `built`."""
    import shutil

    shutil.rmtree(source)
    capsys.readouterr()
    resumed = train.train_and_evaluate(config, workdir)
    out = capsys.readouterr().out
    assert "Resuming from step 2" in out and f"init_from={source} is gone" in out, out
    assert resumed.summary["step"] == 4 and resumed.trainer.task.model_config == built
    return resumed


def test_a_resumed_run_needs_no_init_from_and_keeps_its_own_encoder(polarity_classifier_config,
                                                                    tmp_path, capsys):
    """The checkpoint holds every weight a resumed run needs, and the encoder's shape is its
    resolved_model: an init_from moved or deleted since the run started stopped the resume
    with "init_from=... does not exist.", and one replaced by a model of another shape with a
    model config error. A changed model config is still refused, and a new run still needs
    init_from."""
    import shutil

    from tl_jax import checkpoint, warm_start
    from tl_jax.tasks import downstream

    source = tmp_path / "source"

    def make_source(*shape):  # a tiny classifier from scratch: a tl_jax workdir with an encoder
        train.train_and_evaluate(polarity_classifier_config(
            "", "train.steps=1", "train.eval_every=0", *shape), str(source))

    def config(steps, *more):  # the bottom layer of the source's two
        return polarity_classifier_config(str(source), f"train.steps={steps}",
                                          "train.eval_every=0", "train.checkpoint_every=2",
                                          "model.num_layers=1", *more)

    make_source()
    workdir = str(tmp_path / "run")
    first = train.train_and_evaluate(config(2), workdir)
    built = first.trainer.task.model_config
    assert (built.num_layers, built.hidden_size) == (1, 128)
    params = first.state["params"]
    # Where a resumed run reads init_from's weights again (a probe's feature pass, no usable
    # checkpoint left), the model it started from fits the checkpoint's shape.
    encoder = downstream.Encoder.from_config(config(4), [], workdir)
    assert encoder.resumed and encoder.model_config == built
    encoder.load_weights(params)
    resumed = _resume_with_init_from_gone(source, config(4), workdir, built, capsys)
    with pytest.raises(warm_start.WarmStartError, match="does not exist"):
        resumed.trainer.task.encoder.load_weights(params)

    # Another model at the same path (4 layers 256 wide, cut to 1) is not read either; where
    # its weights would be, it is refused rather than taken in part.
    make_source("model.size=mini")
    capsys.readouterr()
    resumed = train.train_and_evaluate(config(6), workdir)
    out = capsys.readouterr().out
    assert "Resuming from step 4" in out and "is gone" not in out, out
    assert resumed.summary["step"] == 6 and resumed.trainer.task.model_config == built
    with pytest.raises(warm_start.WarmStartError,
                       match=r"not the model this run was started from.*hidden_size 128 vs 256"):
        resumed.trainer.task.encoder.load_weights(params)

    # What the checkpoint does not hold may not change: another model config is refused.
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"model\.num_layers: checkpoint has 1, config has 2"):
        train.train_and_evaluate(config(8, "model.num_layers=2"), workdir)
    # A new run takes its weights from init_from: it must be there.
    shutil.rmtree(source)
    with pytest.raises(warm_start.WarmStartError, match=r"init_from='.*source' does not exist"):
        train.train_and_evaluate(config(2), str(tmp_path / "new"))


def test_a_resumed_probe_takes_the_encoder_of_init_from_not_its_own_adapters(data_dir, tmp_path):
    """A probe's checkpoint holds its model: init_from's encoder with transfer's adapters added.
    Taken as the encoder's shape on a resume, it said init_from had trained those adapters."""
    overrides = ["data.max_train_examples=32", "data.max_eval_examples=16",
                 "data.max_seq_length=32", "data.batch_size=16", "train.progress=False",
                 "mesh.num_devices=1", "model.num_layers=1", "train.eval_every=0",
                 "train.checkpoint_every=2"]
    runs = [train.train_and_evaluate(config_lib.load_config(
        "configs/transfer_adapters.py:tiny", overrides + [f"train.steps={steps}"]),
        str(tmp_path / "run")) for steps in (2, 3)]
    assert runs[1].summary["step"] == 3
    for run in runs:
        task = run.trainer.task
        # (The resume's encoder shape is the one the probe saved, encoder_model.json.)
        assert task.encoder.model_config.adapter_size == 0
        assert task.encoder.resumed == (run is runs[1])
        assert task.model_config.adapter_size == 8


def test_a_resumed_gpt_classifier_needs_no_init_from(data_dir, tmp_path, capsys):
    """As the encoder tasks: the GPT's shape comes from the checkpoint's resolved_model, so a
    resume does not stop because the language model it started from is gone."""

    from tl_jax import checkpoint, warm_start

    lm = tmp_path / "lm"
    train.train_and_evaluate(config_lib.load_config("configs/gpt_pretrain.py:tiny", [
        f"data.corpus={data_dir}/polarity_sentences.jsonl", "train.steps=1", "data.batch_size=8",
        "data.eval_batch_size=8", "data.seq_len=16", "train.eval_every=0",
        "train.progress=False", "mesh.num_devices=1"]), str(lm))
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": f"review number {i} was {'good' if i % 2 else 'bad'}",
                                        "label": i % 2}) + "\n" for i in range(32)))

    def config(steps, *more):
        return config_lib.load_config("configs/gpt_finetune_classify.py:tiny", [
            f"init_from={lm}", "train.progress=False", "mesh.num_devices=1",
            f"data.train_file={path}", f"data.eval_file={path}", "data.max_seq_length=16",
            "train.eval_every=0", "train.checkpoint_every=2", f"train.steps={steps}", *more])

    workdir = str(tmp_path / "run")
    built = train.train_and_evaluate(config(2), workdir).trainer.task.model_config
    _resume_with_init_from_gone(lm, config(4), workdir, built, capsys)
    with pytest.raises(checkpoint.CheckpointError, match=r"model\.max_len: checkpoint has 0"):
        train.train_and_evaluate(config(6, "model.max_len=16"), workdir)
    with pytest.raises(warm_start.WarmStartError, match=r"init_from='.*lm' does not exist"):
        train.train_and_evaluate(config(2), str(tmp_path / "new"))


def test_tag_eval_with_no_entity_on_either_side_is_nan_and_noted_once(capsys):
    # Eval sentences with no gold entity, where the model predicts none: span F1 is 0/0, not
    # the 0.0 of a model that misses every entity; logged as nan, said once.
    import math

    from tl_jax.tasks import tag

    task = tag.Task.__new__(tag.Task)
    task.eval_records = [{"tokens": ["a", "b"], "tags": ["O", "O"]},
                         {"tokens": ["Jane"], "tags": ["B-PER"]}]
    empty = {"rows": [0], "predicted": [["O", "O"]]}
    for _ in range(2):
        report = task.score(empty)
        assert set(report) == {"span_f1", "span_precision", "span_recall"}
        assert all(math.isnan(v) for v in report.values()), report
    out = capsys.readouterr().out
    assert out.count("eval/span_f1, eval/span_precision, eval/span_recall are logged as nan") == 1
    assert "1 scored sentences hold no gold entity" in out
    # An entity the model misses is a real 0, and no note.
    missed = task.score({"rows": [0, 1], "predicted": [["O", "O"], ["O"]]})
    assert missed == {"span_f1": 0.0, "span_precision": 0.0, "span_recall": 0.0}
    assert capsys.readouterr().out == ""


def test_classify_eval_without_the_positive_label_has_nan_f1_noted_once(capsys):
    # data.positive_label in no scored record and never predicted: binary F1 is 0/0, not 0.
    import math

    import ml_collections

    from tl_jax.tasks import classify

    task = classify.Task.__new__(classify.Task)
    task.config = ml_collections.ConfigDict({"data": {"positive_label": "pos"}})
    task.eval_records = [{"label": "neg"}, {"label": "neg"}, {"label": "pos"}]
    for _ in range(2):
        report = task.score({"rows": [0, 1], "predicted": ["neg", "neg"]})
        assert math.isnan(report["f1"]) and report["accuracy"] == 1.0, report
    out = capsys.readouterr().out
    assert out.count("eval/f1 is logged as nan") == 1, out
    assert "none of the 2 scored records has the label data.positive_label='pos'" in out
    # A positive the model misses is a real 0, and no note.
    assert task.score({"rows": [0, 2], "predicted": ["neg", "neg"]})["f1"] == 0.0
    assert capsys.readouterr().out == ""


def test_a_damaged_labels_file_of_a_resumed_run_is_named_and_kept(tmp_path, monkeypatch):
    """A resumed run reads its labels.jsonl back to compare: a damaged one (cut short) is named
    by file and line, not a JSONDecodeError's traceback, and left as it is. Writing is atomic:
    a write that fails leaves the previous file whole (it was truncated)."""
    from tl_jax import checkpoint
    from tl_jax.tasks import downstream

    monkeypatch.setattr(checkpoint, "has_saved_step", lambda workdir: True)
    path = tmp_path / "labels.jsonl"
    damaged = '{"id": 0, "label": "a"}\n{"id": 1, "lab'
    path.write_text(damaged)
    with pytest.raises(ValueError, match=r"labels\.jsonl:2: expected an object with a \"label\".*"
                                         r"Restore it.*or delete it"):
        downstream.write_labels(str(tmp_path), ["a", "b"])
    assert path.read_text() == damaged

    out = tmp_path / "rows.jsonl"
    downstream.write_jsonl(str(out), [{"a": 1}])
    with pytest.raises(TypeError):  # a row json cannot write, after one it can
        downstream.write_jsonl(str(out), iter([{"a": 2}, {"a": object()}]))
    assert out.read_text() == '{"a": 1}\n'
    assert sorted(os.listdir(tmp_path)) == ["labels.jsonl", "rows.jsonl"]  # no temporary left


@pytest.mark.parametrize("override, message", [
    ("data.max_train_examples=-1", r"data\.max_train_examples=-1 must be >= 0"),
    ("data.max_eval_examples=-5", r"data\.max_eval_examples=-5 must be >= 0"),
    ("data.batch_size=0", r"data\.batch_size=0 must be >= 1"),
    ("data.num_epochs=-1.0", r"data\.num_epochs=-1\.0 must be >= 0"),
])
def test_fine_tuning_data_sizes_are_checked_before_the_data_is_read(tmp_path, override, message):
    """A negative example cap kept all records but the last (records[:-1]), a batch size of 0
    was a ZeroDivisionError; both are named before any file is read (these do not exist)."""
    from tl_jax.tasks import classify, lm_classify, squad, tag

    for spec, task in (("configs/finetune_classify.py:tiny", classify),
                       ("configs/finetune_tag.py:tiny", tag),
                       ("configs/finetune_squad.py:tiny", squad),
                       ("configs/gpt_finetune_classify.py:tiny", lm_classify)):
        config = config_lib.load_config(spec, [
            "train.progress=False", "mesh.num_devices=1", override,
            f"data.train_file={tmp_path / 'missing_train'}",
            f"data.eval_file={tmp_path / 'missing_eval'}"])
        with pytest.raises(ValueError, match=message):
            task.Task(config, str(tmp_path / "run"))


def test_a_negative_epoch_count_is_named_as_it_is():
    from tl_jax.tasks import downstream

    config = config_lib.load_config("configs/finetune_classify.py:tiny", ["data.num_epochs=0.0"])
    with pytest.raises(ValueError, match=r"train\.steps=0 and data\.num_epochs=0\.0: set one of "
                                         r"them to a positive number"):
        downstream.fit_schedule(config, 64)


def test_model_num_layers_applies_from_scratch_too(tmp_path):
    """model.num_layers was ignored without init_from: a transfer experiment's scratch arm
    (MiniLM's shape from random weights, sharing the pretrained arm's overrides) kept all 6
    layers while the pretrained arm had 1. Out of range is an error naming the key; a negative
    count printed "the bottom -2 of the 6 layers ... the top 8 are left out" first."""
    from tl_jax.tasks import downstream

    texts = ["Elinor walked to Barton with Marianne."] * 20
    for spec, layers in (("configs/finetune_classify.py:tiny", 1),
                         ("configs/finetune_classify.py:scratch", 2),
                         ("configs/finetune_classify.py:minilm", 2)):
        config = config_lib.load_config(spec, [f"model.num_layers={layers}"])
        assert downstream.Encoder.from_config(config, texts).model_config.num_layers == layers
    for spec, layers, has in (("configs/finetune_classify.py:tiny", 3, r"model.size=tiny has 2"),
                              ("configs/finetune_classify.py:minilm", -2, r"all-MiniLM-L6-v2 has 6")):
        config = config_lib.load_config(spec, [f"model.num_layers={layers}"])
        with pytest.raises(ValueError, match=rf"model.num_layers={layers} but .*{has} layers; "
                                             r"give 1 to \d, or 0 for all of them"):
            downstream.Encoder.from_config(config, texts)


def test_encoder_paths_may_name_environment_variables(data_dir, monkeypatch):
    """init_from, data.tokenizer and a model.size directory written as '$VAR/...' (as README
    writes corpora, and the GPT classifier took its init_from) were not found."""
    from tl_jax.tasks import downstream

    monkeypatch.setenv("TL_JAX_TEST_MODELS", str(data_dir / "models"))
    minilm = "$TL_JAX_TEST_MODELS/all-MiniLM-L6-v2"
    texts = ["Elinor walked to Barton with Marianne."] * 20
    for spec, overrides in (("configs/finetune_classify.py:minilm", [f"init_from={minilm}"]),
                            ("configs/finetune_classify.py:tiny", [f"data.tokenizer={minilm}"]),
                            ("configs/finetune_classify.py:tiny", [f"model.size={minilm}",
                                                                   f"data.tokenizer={minilm}"])):
        config = config_lib.load_config(spec, overrides + ["model.num_layers=1"])
        encoder = downstream.Encoder.from_config(config, texts)
        assert encoder.tokenizer.vocab_size == 30522 and encoder.model_config.num_layers == 1
        assert encoder.init_from == (str(data_dir / "models" / "all-MiniLM-L6-v2")
                                     if "minilm" in spec else "")
    assert "hidden_size=384" in repr(encoder.model_config)  # MiniLM's shape, from scratch


@pytest.mark.parametrize("override", ["model.dropout_rate=10.0", "model.attention_dropout_rate=1.0",
                                      "model.classifier_dropout=-0.1"])
def test_dropout_rates_outside_zero_to_one_are_errors(override):
    """A rate of 1 or more dropped every unit (the model trained on zeros), a negative one
    scaled units up; both trained without a word."""
    from tl_jax.tasks import downstream

    config = config_lib.load_config("configs/finetune_classify.py:tiny", [override])
    key, value = override.split("=")
    with pytest.raises(ValueError, match=rf"{key}={value} must be in \[0, 1\)"):
        downstream.Encoder.from_config(config, ["some text"] * 10)


@pytest.mark.parametrize("override", ["model.dropout_rate=10.0", "model.attention_dropout_rate=1.0",
                                      "model.classifier_dropout=-0.1"])
def test_gpt_classifier_dropout_rates_are_checked_before_the_data_is_read(tmp_path, override):
    """The GPT classifier (lm_classify) took them as they were; the files do not exist."""
    from tl_jax.tasks import lm_classify

    config = config_lib.load_config("configs/gpt_finetune_classify.py:tiny", [
        override, f"data.train_file={tmp_path / 'missing_train'}",
        f"data.eval_file={tmp_path / 'missing_eval'}"])
    key, value = override.split("=")
    with pytest.raises(ValueError, match=rf"{key}={value} must be in \[0, 1\)"):
        lm_classify.Task(config, str(tmp_path / "run"))


def test_a_fine_tuning_tokenizer_vocab_size_too_small_names_the_key():
    from tl_jax.tasks import downstream

    config = config_lib.load_config("configs/finetune_classify.py:tiny",
                                    ["data.tokenizer_vocab_size=3"])
    with pytest.raises(ValueError, match=r"data.tokenizer_vocab_size=3 is too small"):
        downstream.Encoder.from_config(config, ["some text"] * 10)



def _tokenizerless_bert(directory, tokenizer):
    """A Hugging Face BERT folder of `tokenizer`'s vocabulary size with random weights and no
    tokenizer files (as `tl_jax convert` leaves one whose source had none)."""
    import flax.linen as nn
    import jax

    from tl_jax.interop import bert as hf_bert
    from tl_jax.models import bert

    config = bert.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=8, num_layers=1,
                             num_heads=2, intermediate_size=8, max_position_embeddings=64)
    params = nn.unbox(bert.BertModel(config).init(
        jax.random.PRNGKey(0), np.zeros((1, 4), np.int32))["params"])
    hf_bert.export(jax.tree_util.tree_map(np.asarray, params), config, directory,
                   with_heads=False, tokenizer=None)
    return str(directory)


def test_an_init_from_without_a_tokenizer_names_data_tokenizer(tmp_path):
    """init_from, a model folder with weights but no tokenizer (a `tl_jax convert` of a Hugging
    Face folder that had none), failed with the tokenizer loader's "Directory X holds a model
    (config.json) but no tokenizer", naming neither init_from nor the key that fixes it. Given
    data.tokenizer, the run goes on with it."""
    from tl_jax.data.tokenizer import Tokenizer
    from tl_jax.interop import convert
    from tl_jax.tasks import downstream

    texts = ["Elinor walked to Barton with Marianne.", "The cottage was small."] * 10
    tokenizer = Tokenizer.train_wordpiece([texts], 60)
    tokenizer.save(str(tmp_path / "tokenizer"))
    hf = _tokenizerless_bert(tmp_path / "hf", tokenizer)
    tl = str(convert.convert(hf, tmp_path / "tl", "hf_to_tl"))
    for folder in (hf, tl):
        config = config_lib.load_config("configs/finetune_classify.py:tiny",
                                        [f"init_from={folder}"])
        with pytest.raises(ValueError) as error:
            downstream.Encoder.from_config(config, texts)
        assert str(error.value) == (
            f"init_from={folder} has no tokenizer (neither tokenizer.json nor vocab.txt): pass "
            "--config.data.tokenizer=PATH, the tokenizer its weights were trained with")
        config.data.tokenizer = str(tmp_path / "tokenizer")
        encoder = downstream.Encoder.from_config(config, texts)
        assert encoder.tokenizer.vocab_size == tokenizer.vocab_size
        assert encoder.model_config.hidden_size == 8

def _old_epoch_batches(arrays, global_batch, seed, state, steps, process_index=0, processes=1):
    """The batches `EpochBatches` gave before it kept each epoch's order: the permutation
    redrawn on every step, from `state` on."""
    n = len(next(iter(arrays.values())))
    epoch, position, local = state["epoch"], state["position"], global_batch // processes
    out = []
    for _ in range(steps):
        if position >= n // global_batch:
            epoch, position = epoch + 1, 0
        order = np.random.default_rng([seed, epoch]).permutation(n)
        start = position * global_batch + process_index * local
        rows = order[start:start + local]
        position += 1
        out.append({k: v[rows] for k, v in arrays.items()})
    return out


@pytest.mark.parametrize("process_index", [0, 1])
def test_epoch_batches_draw_each_epochs_order_once_and_give_the_same_batches(monkeypatch,
                                                                            process_index):
    """The order was redrawn (O(n)) on every step; now once per epoch, with the same batches
    over epoch boundaries and after a resume (mid-epoch, and at an epoch's end)."""
    import jax

    from tl_jax.tasks import downstream

    arrays = {"input_ids": np.arange(103 * 3, dtype=np.int32).reshape(103, 3),
              "label": np.arange(103, dtype=np.int32) % 7}
    batch, seed, steps = 10, 5, 45  # 10 steps per epoch (3 rows dropped): 4.5 epochs
    processes = 2 if process_index else 1
    reference = _old_epoch_batches(arrays, batch, seed, {"epoch": 0, "position": 0}, steps,
                                   process_index, processes)
    monkeypatch.setattr(jax, "process_count", lambda: processes)
    monkeypatch.setattr(jax, "process_index", lambda: process_index)
    draws = []
    real_rng = np.random.default_rng
    monkeypatch.setattr(np.random, "default_rng", lambda s=None: draws.append(s) or real_rng(s))

    it = downstream.EpochBatches(arrays, batch, seed)
    got = [next(it) for _ in range(steps)]
    assert len(got) == len(reference)
    for mine, theirs in zip(got, reference):
        assert mine.keys() == theirs.keys()
        for k in mine:
            np.testing.assert_array_equal(mine[k], theirs[k])
    assert draws == [[seed, e] for e in range(5)]  # once per epoch, not once per step

    for stop in (13, 20, 30):  # mid-epoch; at the end of an epoch (twice)
        first = downstream.EpochBatches(arrays, batch, seed)
        for _ in range(stop):
            next(first)
        state = json.loads(json.dumps(first.get_state()))
        resumed = downstream.EpochBatches(arrays, batch, seed)
        resumed.set_state(state)
        for mine, theirs in zip([next(resumed) for _ in range(steps - stop)], reference[stop:]):
            for k in mine:
                np.testing.assert_array_equal(mine[k], theirs[k])
        # set_state on an iterator that already holds another epoch's order draws the new one
        first.set_state({"epoch": 0, "position": 3})
        np.testing.assert_array_equal(next(first)["label"], reference[3]["label"])


# -- The eval pass: one forward pass per batch, no input batch gathered ----------------------


def _eval_trainer(kind, data_dir, tmp_path, overrides=()):
    """A trainer (random weights, all 8 devices) and its params for an eval of `kind`: a
    classifier on polarity sentences (21 rows: a partial last batch), a tagger, a QA model
    whose contexts take several windows each."""
    import jax
    from conftest import write_polarity_files

    if kind == "classify":
        files = write_polarity_files(data_dir, tmp_path, 21)
        spec, data = "configs/finetune_classify.py:tiny", [
            f"data.train_file={files / 'train.jsonl'}", f"data.eval_file={files / 'eval.jsonl'}",
            "data.max_seq_length=32", "data.batch_size=16"]
    elif kind == "tag":
        words = "emma smiled at mr knightley in highbury before the ball began".split()
        conll = tmp_path / "tags.conll"
        conll.write_text("".join(
            "".join(f"{w} {'B-PER' if w in ('emma', 'knightley') else 'O'}\n"
                    for w in words[:1 + (3 * i) % len(words)]) + "\n" for i in range(40)))
        spec, data = "configs/finetune_tag.py:tiny", [
            f"data.train_file={conll}", f"data.eval_file={conll}", "data.max_seq_length=16",
            "data.batch_size=16"]
    else:
        contexts = ["Emma lived at Hartfield with her father near the village of Highbury.",
                    "Elinor and Marianne moved to Barton Cottage in Devonshire after their "
                    "father died."]
        records = [dict(id=f"q{i}", title="t", question=f"who lived there {i}?",
                        context=contexts[i % 2], is_impossible=False,
                        answers=[dict(text=contexts[i % 2].split()[0], answer_start=0)])
                   for i in range(24)]
        readers.write_squad(tmp_path / "qa.json", records)
        spec, data = "configs/finetune_squad.py:tiny", [
            f"data.train_file={tmp_path / 'qa.json'}", f"data.eval_file={tmp_path / 'qa.json'}",
            "data.max_seq_length=32", "data.doc_stride=8", "data.max_query_length=8",
            "data.batch_size=8"]
    config = config_lib.load_config(spec, ["train.progress=False", "data.max_train_examples=0",
                                           "data.max_eval_examples=0", *data, *overrides])
    trainer = train.build_trainer(config, str(tmp_path / "run"))
    return trainer, trainer.init_state(jax.random.PRNGKey(0))["params"]


@pytest.mark.parametrize("kind", ["classify", "tag", "squad"])
def test_an_eval_runs_one_compiled_step_per_batch_with_the_same_metrics(kind, data_dir,
                                                                       tmp_path):
    """The eval step (loss, accuracy) and the predict step (what the task decodes) ran one
    after the other on every eval batch: two forward passes of the model. One compiled step
    now gives both, with the metrics of the two steps bit for bit, and compiles to one forward
    pass: XLA computes the part the two share once."""
    import jax

    from tl_jax import parallel

    trainer, params = _eval_trainer(kind, data_dir, tmp_path)
    batches = list(trainer.task.eval_batches())
    assert len(batches) >= 2

    # The two steps, apart, as the eval ran them before.
    results, pairs = [], []
    for batch in batches:
        gbatch = parallel.host_batch_to_global(batch, trainer.mesh)
        results.append(trainer.eval_step(params, gbatch))
        pairs.append((None, jax.tree_util.tree_map(np.asarray,
                                                   trainer.predict_step(params, gbatch))))
    apart = {f"eval/{k}": v for k, v in train.average(jax.device_get(results)).items()}
    apart.update({f"eval/{k}": float(v)
                  for k, v in trainer.task.evaluate(pairs, trainer.workdir, 0).items()})

    calls = collections.Counter()

    def counted(name, step):
        def call(*args):
            calls[name] += 1
            return step(*args)
        return call

    steps = {name: getattr(trainer, name, None)
             for name in ("eval_step", "predict_step", "eval_predict_step")}
    counting = dataclasses.replace(trainer, **{name: counted(name, step)
                                               for name, step in steps.items() if step})
    assert train.evaluate(counting, params, 0) == apart
    assert sum(calls.values()) == len(batches), calls

    # One forward pass: the combined step's FLOPs are the eval step's, not twice them.
    gbatch = parallel.host_batch_to_global(batches[0], trainer.mesh)

    def flops(step):
        cost = step.lower(params, gbatch).compile().cost_analysis()
        return (cost[0] if isinstance(cost, list) else cost)["flops"]

    assert flops(trainer.eval_predict_step) < 1.05 * flops(trainer.eval_step)


def test_an_eval_on_several_processes_gathers_the_outputs_not_the_input_batches(
        data_dir, tmp_path, monkeypatch):
    """On several processes every eval batch was gathered whole to every host (input ids,
    masks, labels: more than the outputs the task decodes) beside the predict step's outputs.
    The trainer's view of the process count says 2 here, and the all-gather records what it
    gathers: the predict outputs alone (a classifier's probabilities and rows), and the metrics
    do not change."""
    import types

    import jax

    trainer, params = _eval_trainer("classify", data_dir, tmp_path, ["mesh.num_devices=1"])
    alone = train.evaluate(trainer, params, 0)
    gathered = []

    def allgather(x, tiled):
        assert tiled
        gathered.append((x.shape, str(x.dtype)))
        return np.asarray(x)

    view = {k: getattr(jax, k) for k in dir(jax) if not k.startswith("__")}
    monkeypatch.setattr(train, "jax", types.SimpleNamespace(**dict(view, process_count=lambda: 2)))
    monkeypatch.setattr(train, "multihost_utils", types.SimpleNamespace(
        process_allgather=allgather))
    assert train.evaluate(trainer, params, 0) == alone
    n_batches, n_labels = 2, len(trainer.task.labels)
    assert sorted(gathered) == sorted([((16, n_labels), "float32"), ((16,), "int32")]
                                      * n_batches), gathered


@pytest.mark.parametrize("kind,overrides", [
    ("classify", []), ("classify", ["data.positive_label=pos"]), ("tag", []), ("squad", []),
    ("squad", ["data.version=2.0"])])
def test_fine_tuning_tasks_declare_the_eval_metrics_an_eval_reports(kind, overrides, data_dir,
                                                                     tmp_path):
    """`tasks.eval_metric_names` (what `tl_jax sweep --metrics=eval/...` is checked against
    before any run trains) is each task's declaration from the config: an eval reports exactly
    those names. Binary F1 comes with data.positive_label; SQuAD 2.0's HasAns_/NoAns_ figures
    where the eval set holds both kinds of question (here it does)."""
    import jax

    from tl_jax import tasks

    if kind == "squad" and overrides:
        contexts = ["Emma lived at Hartfield with her father near the village of Highbury.",
                    "Elinor and Marianne moved to Barton Cottage in Devonshire after their "
                    "father died."]
        records = [dict(id=f"q{i}", title="t", question=f"who lived there {i}?",
                        context=contexts[i % 2], is_impossible=i % 3 == 0,
                        answers=[] if i % 3 == 0 else [
                            dict(text=contexts[i % 2].split()[0], answer_start=0)])
                   for i in range(12)]
        readers.write_squad(tmp_path / "qa2.json", records, version="2.0")
        config = config_lib.load_config("configs/finetune_squad.py:tiny", [
            "train.progress=False", f"data.train_file={tmp_path / 'qa2.json'}",
            f"data.eval_file={tmp_path / 'qa2.json'}", "data.max_seq_length=32",
            "data.doc_stride=8", "data.max_query_length=8", "data.batch_size=8",
            "data.max_train_examples=0", "data.max_eval_examples=0", "mesh.num_devices=1",
            *overrides])
        trainer = train.build_trainer(config, str(tmp_path / "run"))
        params = trainer.init_state(jax.random.PRNGKey(0))["params"]
    else:
        trainer, params = _eval_trainer(kind, data_dir, tmp_path,
                                        ["mesh.num_devices=1", *overrides])
    reported = train.evaluate(trainer, params, 0)
    assert sorted(reported) == sorted(tasks.eval_metric_names(trainer.config))


def test_rerunning_a_finished_run_leaves_its_summary_and_predictions(polarity_classifier_config,
                                                                     tmp_path, capsys):
    """A rerun that trains nothing evaluates the restored model and says so, but the run's
    record stays the run's: summary.json lost its tokens/s and MFU (0: nothing trained), and it
    and the predictions file took this rerun's eval set (8 rows here) while metrics.jsonl kept
    the run's."""
    workdir = tmp_path / "run"
    steps = ("train.steps=2", "train.eval_every=2")
    train.train_and_evaluate(polarity_classifier_config("", *steps), str(workdir))
    summary = (workdir / "summary.json").read_text()
    predictions = (workdir / "predictions" / "eval_step_2.jsonl").read_text()
    assert json.loads(summary)["tokens_per_sec"] > 0 and len(predictions.splitlines()) == 16
    capsys.readouterr()
    again = train.train_and_evaluate(
        polarity_classifier_config("", *steps, "data.max_eval_examples=8"), str(workdir))
    assert "the run's summary.json and predictions are left as they are" in capsys.readouterr().out
    assert (workdir / "summary.json").read_text() == summary
    assert (workdir / "predictions" / "eval_step_2.jsonl").read_text() == predictions
    assert again.summary["step"] == 2 and "eval/accuracy" in again.summary

"""The quickstart's second stage: its zero-setup task and a classifier that learns something."""
import pathlib

import pytest

from tl_jax import config as config_lib
from tl_jax import quickstart_finetune, train
from tl_jax.data import readers

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_newsgroups_split_is_stratified_disjoint_and_drops_the_headers():
    train_records = readers.read_records("gensim:newsgroups:train", "classification")
    test_records = readers.read_records("gensim:newsgroups:test", "classification")
    assert len(train_records) == 160 and len(test_records) == 40
    for records, n in ((train_records, 80), (test_records, 20)):
        assert sorted({r["label"] for r in records}) == ["alt.atheism", "sci.space"]
        assert sum(r["label"] == "sci.space" for r in records) == n
    assert not {r["text"] for r in train_records} & {r["text"] for r in test_records}
    # The header block names the group; only bodies remain.
    assert not any(r["text"].startswith(("Newsgroups:", "From:", "Path:")) for r in train_records)


def test_stage_two_beats_the_majority_class(tiny_bert_overrides, tmp_path):
    """Stage 2's own settings on its real task, shrunk only in the encoder (a tiny BERT pretrained
    for 3 steps) and the sequence length: the classifier must not predict one class for all."""
    pretrain = tmp_path / "pretrain"
    train.train_and_evaluate(config_lib.load_config(
        str(ROOT / "configs" / "bert_pretrain.py") + ":tiny",
        [*tiny_bert_overrides, "train.steps=3", "train.eval_every=0"]), str(pretrain))
    scores = quickstart_finetune.run(str(pretrain), str(tmp_path / "finetune"),
                                     overrides=["data.max_seq_length=64"])
    assert scores["num_eval"] == 40 and scores["majority_baseline"] == 0.5
    best = max(("pretrained", "scratch"), key=lambda arm: scores[arm])
    assert scores["predicted_classes"][best] == [2], scores
    assert scores[best] >= 0.6, scores  # 0.650-0.750 measured over seeds 0-3 (0.5 if degenerate)


def test_rerun_after_more_pretraining_does_not_report_the_old_fine_tuning(
        tiny_bert_overrides, tmp_path, monkeypatch):
    """Stage 2's runs resume from their checkpoints: after a rerun that pretrained further, they
    would print the old encoder's fine-tuned accuracies as the new one's. That is refused."""
    from tl_jax import quickstart
    monkeypatch.setattr(quickstart, "CONFIG", str(ROOT / "configs" / "bert_pretrain.py") + ":tiny")
    monkeypatch.setattr(quickstart, "QUICK_OVERRIDES", [*tiny_bert_overrides, "train.eval_every=0"])
    stage_two = []
    monkeypatch.setattr(quickstart_finetune, "run", lambda pre, fine: stage_two.append(fine))
    quickstart.run(str(tmp_path), overrides=["train.steps=2"])
    quickstart.run(str(tmp_path), overrides=["train.steps=2"])  # the same: stage 2 resumes
    assert len(stage_two) == 2
    with pytest.raises(ValueError, match="stage 1 at step 2, but stage 1 is now at step 3"):
        quickstart.run(str(tmp_path), overrides=["train.steps=3"])
    assert len(stage_two) == 2


def _stopping_training(calls, stop_first):
    """`train.train_and_evaluate` as a SIGTERM leaves it: saved and returned at step 3 of 10."""
    def fake(config, workdir):
        calls.append(workdir)
        step = 3 if stop_first and len(calls) == 1 else 10
        return train.TrainResult(summary={"step": step, "eval/accuracy": 0.5}, state={},
                                 trainer=None, total_steps=10)
    return fake


def test_a_sigterm_in_stage_one_stops_the_quickstart_before_stage_two(tmp_path, monkeypatch):
    # It used to fine-tune the half-pretrained encoder and report it as the quickstart's figures.
    from tl_jax import quickstart
    calls = []
    monkeypatch.setattr(train, "train_and_evaluate", _stopping_training(calls, stop_first=True))
    monkeypatch.setattr(quickstart_finetune, "run", lambda *a, **k: calls.append("stage 2"))
    with pytest.raises(train.Stopped, match=r"Stage 1 \(pretraining\) stopped at step 3 of 10"):
        quickstart.run(str(tmp_path))
    assert calls == [str(tmp_path / "pretrain")]


def test_a_sigterm_stops_the_transfer_comparison_without_recording_the_run(
        tmp_path, monkeypatch):
    # It used to record the stopped arm's last-epoch accuracy and go on to train the next arm.
    from tl_jax.tasks import classify
    calls = []
    monkeypatch.setattr(train, "train_and_evaluate", _stopping_training(calls, stop_first=True))
    with pytest.raises(train.Stopped, match="pretrained arm's seed 0 stopped at step 3 of 10"):
        classify.transfer_comparison(str(tmp_path / "encoder"), str(tmp_path), seeds=(0,))
    assert len(calls) == 1
    calls.clear()
    monkeypatch.setattr(train, "train_and_evaluate", _stopping_training(calls, stop_first=False))
    results = classify.transfer_comparison(str(tmp_path / "encoder"), str(tmp_path), seeds=(0,))
    assert len(calls) == 2 and results["pretrained_accuracy"] == (0.5, 0.0)

"""BERT pretraining data: NSP instances, MLM masking statistics, and the resumable iterator."""
import json
import re

import ml_collections
import numpy as np
import pytest

from tl_jax.data.masking import Masker
from tl_jax.data.pretraining import (
    PretrainingInstances,
    build_pretraining_data,
    create_instances,
    describe,
    tokenize_documents,
    truncate_seq_pair,
)
from tl_jax.data.pretraining_iterator import BATCH_KEYS, PretrainingIterator, eval_batches
from tl_jax.data.sources import SourceError, load_documents
from tl_jax.data.tokenizer import Tokenizer

L = 64  # max_seq_length for the module's instances


@pytest.fixture(scope="module")
def tokenizer(data_dir):
    return Tokenizer.load(str(data_dir / "models" / "all-MiniLM-L6-v2" / "vocab.txt"))


@pytest.fixture(scope="module")
def documents(data_dir, tokenizer):
    texts = load_documents(str(data_dir / "enwiki_sample.jsonl"))[:30]
    return tokenize_documents(texts, tokenizer, progress=False)


@pytest.fixture(scope="module")
def instances(documents, tokenizer):
    return create_instances(documents, L, 0.1, seed=0, cls_id=tokenizer.cls_id,
                            sep_id=tokenizer.sep_id)


def _one_epoch(instances, masker, batch_size=64, **kw):
    it = PretrainingIterator(instances, masker, L, batch_size, seed=0, **kw)
    return [next(it) for _ in range(it.batches_per_epoch)]


def _originals(batch):
    """Input ids with the masked positions restored to their original tokens."""
    original = batch["input_ids"].copy()
    for r in range(len(original)):
        k = int(batch["masked_weights"][r].sum())
        original[r, batch["masked_positions"][r, :k]] = batch["masked_ids"][r, :k]
    return original


def test_instance_layout_lengths_and_segments(instances, tokenizer):
    assert len(instances) > 1500
    lengths = np.diff(instances.offsets)
    assert lengths.max() <= L
    for i in range(len(instances)):
        tokens, num_a = instances.tokens_of(i), instances.num_a[i]
        assert tokens[0] == tokenizer.cls_id and tokens[num_a - 1] == tokenizer.sep_id
        assert tokens[-1] == tokenizer.sep_id and 3 <= num_a <= len(tokens) - 2
        assert np.isin(tokens[1:-1], [tokenizer.cls_id, tokenizer.pad_id]).sum() == 0
        assert (tokens[1:-1] == tokenizer.sep_id).sum() == 1
    # Most instances fill the budget; short_seq_prob=0.1 makes some clearly shorter.
    assert 0.03 < np.mean(lengths < L - 8) < 0.2


def test_truncate_seq_pair_matches_token_by_token_trimming():
    def reference(a, b, max_num_tokens, draws):
        while len(a) + len(b) > max_num_tokens:
            longer = a if len(a) > len(b) else b
            if next(draws) < 0.5:
                del longer[0]
            else:
                longer.pop()

    rng = np.random.default_rng(0)
    for _ in range(300):
        na, nb, limit = (int(x) for x in rng.integers(1, 60, 3))
        seed = int(rng.integers(1 << 30))
        a, b = list(range(na)), list(range(100, 100 + nb))
        truncate_seq_pair(a, b, limit, np.random.default_rng(seed))
        ra, rb = list(range(na)), list(range(100, 100 + nb))
        reference(ra, rb, limit, iter(np.random.default_rng(seed).random(max(0, na + nb - limit))))
        assert (a, b) == (ra, rb) and len(a) + len(b) == min(limit, na + nb)


def test_short_seq_prob_controls_short_instances(documents, tokenizer):
    def short_share(prob):
        inst = create_instances(documents, L, prob, 0, tokenizer.cls_id, tokenizer.sep_id)
        return np.mean(np.diff(inst.offsets) < L - 8)
    assert short_share(0.0) < 0.02 < short_share(0.1) < short_share(0.5) < short_share(1.0)


def test_nsp_labels_balanced(instances, tokenizer):
    assert 0.46 < instances.nsp_labels.mean() < 0.54
    # Short documents (news articles of ~10 sentences) are where a lone last sentence used to
    # force extra "random next" pairs (58% random in the original algorithm).
    lee = tokenize_documents(load_documents("gensim:lee"), tokenizer, progress=False)
    labels = np.concatenate([create_instances(lee, 128, 0.1, seed, tokenizer.cls_id,
                                              tokenizer.sep_id).nsp_labels for seed in range(4)])
    assert len(labels) > 3000 and 0.47 < labels.mean() < 0.53


def test_actual_next_follows_and_random_next_is_from_another_document():
    # Token ids encode (document, position), so provenance is readable from the ids alone.
    rng = np.random.default_rng(0)
    docs = []
    for d in range(40):
        pos, sentences = 0, []
        for _ in range(rng.integers(1, 12)):
            n = int(rng.integers(1, 30))
            sentences.append(list(range(10 + 1000 * d + pos, 10 + 1000 * d + pos + n)))
            pos += n
        docs.append(sentences)
    inst = create_instances(docs, 32, 0.2, seed=3, cls_id=2, sep_id=3)
    assert len(inst) > 100
    doc_of = lambda t: (t - 10) // 1000  # noqa: E731
    seen = {0: 0, 1: 0}
    for i in range(len(inst)):
        tokens, num_a, label = inst.tokens_of(i), inst.num_a[i], inst.nsp_labels[i]
        a, b = tokens[1:num_a - 1], tokens[num_a:-1]
        assert len(a) and len(b) and len(tokens) <= 32
        assert len(set(doc_of(a))) == 1 and len(set(doc_of(b))) == 1
        assert np.all(np.diff(a) == 1) and np.all(np.diff(b) == 1)  # contiguous text
        if label == 0:
            assert doc_of(b[0]) == doc_of(a[0]) and b[0] > a[-1]
        else:
            assert doc_of(b[0]) != doc_of(a[0])
        seen[int(label)] += 1
    assert min(seen.values()) > 0.3 * len(inst)


def test_masking_statistics_15_percent_and_80_10_10(instances, tokenizer):
    masker = Masker(tokenizer, masked_lm_prob=0.15, max_predictions_per_seq=L)
    picked = maskable = n_mask = n_same = n_random = 0
    random_ids = []
    for batch in _one_epoch(instances, masker):
        original = _originals(batch)
        for r in range(len(original)):
            k = int(batch["masked_weights"][r].sum())
            pos = batch["masked_positions"][r, :k]
            n = int(batch["input_mask"][r].sum())
            maskable += int((~tokenizer.is_special(original[r, :n])).sum())
            picked += k
            new = batch["input_ids"][r, pos]
            n_mask += int((new == tokenizer.mask_id).sum())
            same = new == batch["masked_ids"][r, :k]
            n_same += int(same.sum())
            rand = (new != tokenizer.mask_id) & ~same
            n_random += int(rand.sum())
            random_ids.extend(new[rand].tolist())
    assert picked > 20_000
    assert abs(picked / maskable - 0.15) < 0.005
    assert abs(n_mask / picked - 0.8) < 0.015
    assert abs(n_same / picked - 0.1) < 0.01
    assert abs(n_random / picked - 0.1) < 0.01
    # Random replacements are uniform over non-special ids: never special, widely spread.
    assert not tokenizer.is_special(random_ids).any()
    assert len(set(random_ids)) > 0.8 * len(random_ids)


def test_special_tokens_never_masked_and_batch_format(instances, tokenizer):
    P = 5
    masker = Masker(tokenizer, 0.15, P)
    for batch in _one_epoch(instances, masker, batch_size=32)[:20]:
        assert set(batch) == set(BATCH_KEYS)
        assert batch["input_ids"].shape == batch["segment_ids"].shape == (32, L)
        assert batch["masked_positions"].shape == batch["masked_weights"].shape == (32, P)
        assert batch["masked_weights"].dtype == np.float32 and batch["input_ids"].dtype == np.int32
        original = _originals(batch)
        for r in range(32):
            n = int(batch["input_mask"][r].sum())
            k = int(batch["masked_weights"][r].sum())
            pos = batch["masked_positions"][r, :k]
            maskable = int((~tokenizer.is_special(original[r, :n])).sum())
            assert k == min(P, max(1, round(0.15 * maskable)))  # capped, at least 1
            assert np.all(np.diff(pos) > 0) and pos.max() < n
            assert not tokenizer.is_special(batch["masked_ids"][r, :k]).any()
            # Every [CLS]/[SEP] is still in place; padding is zero everywhere.
            assert original[r, 0] == batch["input_ids"][r, 0] == tokenizer.cls_id
            seps = np.flatnonzero(original[r, :n] == tokenizer.sep_id)
            assert np.all(batch["input_ids"][r, seps] == tokenizer.sep_id) and len(seps) == 2
            assert np.all(batch["segment_ids"][r, :seps[0] + 1] == 0)
            assert np.all(batch["segment_ids"][r, seps[0] + 1:n] == 1)
            assert not batch["input_ids"][r, n:].any() and not batch["segment_ids"][r, n:].any()
            assert not batch["masked_positions"][r, k:].any()
            assert batch["nsp_weights"][r] == 1.0


def test_special_tokens_written_in_the_corpus_are_text(tokenizer):
    # Text about BERT: "[MASK]" or "[SEP]" in a sentence are characters, not a real [PAD] inside
    # a segment (input_mask 1), a separator, or a [MASK] the model is never asked to fill.
    docs = tokenize_documents([["Replace a word by [MASK] or [PAD], then add [SEP] and [CLS]."]],
                              tokenizer, progress=False)
    assert not tokenizer.is_special(docs[0][0]).any()
    assert "[ mask ]" in tokenizer.decode(docs[0][0])
    assert tokenizer.encode("a [MASK]")[-1] == tokenizer.mask_id  # fill_mask's text unchanged


def test_rows_without_maskable_tokens_get_no_predictions(tokenizer):
    unk, cls, sep = tokenizer.unk_id, tokenizer.cls_id, tokenizer.sep_id
    only_unk = [cls, unk, sep, unk, unk, sep]
    rows = [(only_unk, 3, 1), ([cls, 2000, sep, 2001, sep], 3, 0)]
    inst = PretrainingInstances.from_rows(rows)
    for whole_word in (False, True):
        it = PretrainingIterator(inst, Masker(tokenizer, whole_word=whole_word), 8, 2, 0)
        batch = next(it)
        for r in range(2):
            if batch["nsp_labels"][r] == 1:  # the [UNK]-only row: nothing to predict, no crash
                assert batch["masked_weights"][r].sum() == 0
                assert batch["input_ids"][r, :6].tolist() == only_unk
            else:
                assert batch["masked_weights"][r].sum() == 1  # at least one when possible


def _whole_word_violations(batch, tokenizer):
    original = _originals(batch)
    violations = 0
    for r in range(len(original)):
        k = int(batch["masked_weights"][r].sum())
        picked = set(batch["masked_positions"][r, :k].tolist())
        n = int(batch["input_mask"][r].sum())
        piece = ~tokenizer.word_starts(original[r, :n]) & ~tokenizer.is_special(original[r, :n])
        for p in picked:
            # The next token continues this word, or this token continues the previous one.
            if p + 1 < n and piece[p + 1] and p + 1 not in picked:
                violations += 1
            if piece[p] and not tokenizer.is_special(original[r, p - 1]) and p - 1 not in picked:
                violations += 1
    return violations


def test_whole_word_masking_masks_whole_words(instances, tokenizer):
    wwm = Masker(tokenizer, 0.15, 20, whole_word=True)
    batches = _one_epoch(instances, wwm)
    assert sum(_whole_word_violations(b, tokenizer) for b in batches) == 0
    rate = sum(b["masked_weights"].sum() for b in batches) / sum(
        (b["input_mask"].sum(1) - 3).sum() for b in batches)
    assert 0.13 < rate < 0.16
    # The same check catches token-level masking, so it is not vacuous.
    plain = _one_epoch(instances, Masker(tokenizer, 0.15, 20), batch_size=64)
    assert sum(_whole_word_violations(b, tokenizer) for b in plain[:5]) > 20


def _masks_by_instance(it, epoch):
    out = {}
    for index in range(it.batches_per_epoch):
        batch = next(it)
        for r, i in enumerate(it.global_rows(epoch, index)):
            out[int(i)] = (tuple(batch["masked_positions"][r]), tuple(batch["input_ids"][r]))
    return out


@pytest.mark.parametrize("dynamic", [True, False])
def test_dynamic_masks_change_every_epoch_static_do_not(instances, tokenizer, dynamic):
    subset = instances.select(range(96))
    it = PretrainingIterator(subset, Masker(tokenizer), L, 32, seed=1, dynamic_masking=dynamic)
    epochs = [_masks_by_instance(it, e) for e in range(3)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(96))  # every instance once
    same = np.mean([epochs[0][i] == epochs[1][i] for i in range(96)])
    assert same < 0.1 if dynamic else same == 1.0
    assert not np.array_equal(it.epoch_order(0), it.epoch_order(1))  # reshuffled either way


def _batches(it, n):
    return [next(it) for _ in range(n)]


def _same(a, b):
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in BATCH_KEYS) and len(a) == len(b)


def test_deterministic_given_seed(instances, tokenizer):
    make = lambda seed: PretrainingIterator(instances, Masker(tokenizer), L, 16, seed)  # noqa: E731
    assert _same(_batches(make(5), 4), _batches(make(5), 4))
    assert not np.array_equal(next(make(5))["input_ids"], next(make(6))["input_ids"])


def test_resume_from_saved_state_reproduces_batches(instances, tokenizer):
    subset = instances.select(range(100))
    make = lambda: PretrainingIterator(subset, Masker(tokenizer), L, 16, seed=2)  # noqa: E731
    it = make()
    assert it.batches_per_epoch == 6
    _batches(it, 8)  # into the second epoch
    state = json.loads(json.dumps(it.get_state()))
    assert state["epoch"] == 1 and state["index"] == 2
    expected = _batches(it, 9)  # crosses into the third epoch
    resumed = make()
    resumed.set_state(state)
    assert _same(_batches(resumed, 9), expected)
    with pytest.raises(ValueError, match="num_instances=100 but this iterator has 99"):
        PretrainingIterator(instances.select(range(99)), Masker(tokenizer), L, 16, 2).set_state(state)
    with pytest.raises(ValueError, match="lacks 'index'"):
        make().set_state({"epoch": 0})


@pytest.mark.parametrize("count", [2, 4])
def test_processes_together_see_the_single_process_batch(instances, tokenizer, count):
    subset = instances.select(range(70))
    single = _batches(PretrainingIterator(subset, Masker(tokenizer), L, 16, seed=4), 6)
    parts = [_batches(PretrainingIterator(subset, Masker(tokenizer), L, 16, seed=4,
                                          process_index=p, process_count=count), 6)
             for p in range(count)]
    for step in range(6):
        assert all(parts[p][step]["input_ids"].shape[0] == 16 // count for p in range(count))
        joined = {k: np.concatenate([parts[p][step][k] for p in range(count)]) for k in BATCH_KEYS}
        assert _same([joined], [single[step]])
    with pytest.raises(ValueError, match="not divisible by the process count 3"):
        PretrainingIterator(subset, Masker(tokenizer), L, 16, 0, process_count=3)


def test_remainder_and_eval_batches(instances, tokenizer):
    subset = instances.select(range(50))
    masker = Masker(tokenizer)
    kept = PretrainingIterator(subset, masker, L, 16, seed=0, drop_remainder=False)
    assert kept.batches_per_epoch == 4
    last = _batches(kept, 4)[-1]
    assert last["nsp_weights"].tolist() == [1.0] * 2 + [0.0] * 14
    assert not last["input_mask"][2:].any() and not last["masked_weights"][2:].any()
    assert PretrainingIterator(subset, masker, L, 16, seed=0).batches_per_epoch == 3

    first = list(eval_batches(subset, masker, L, 16, seed=0))
    assert _same(first, list(eval_batches(subset, masker, L, 16, seed=0)))  # fixed masks
    assert len(first) == 4 and sum(b["nsp_weights"].sum() for b in first) == 50
    assert np.array_equal(np.concatenate([b["nsp_labels"] for b in first])[:50], subset.nsp_labels)
    halves = [list(eval_batches(subset, masker, L, 16, 0, process_index=p, process_count=2))
              for p in range(2)]
    joined = [{k: np.concatenate([halves[0][i][k], halves[1][i][k]]) for k in BATCH_KEYS}
              for i in range(4)]
    assert _same(joined, first)
    # The pass knows its length (the eval bar's total), on every process, before it runs.
    for size, n in ((16, 50), (10, 50), (64, 50), (16, 0)):
        passes = [eval_batches(instances.select(range(n)), masker, L, size, 0, process_index=p,
                               process_count=2) for p in range(2)]
        assert [len(batches) for batches in passes] == [len(list(batches)) for batches in passes]
        assert len(passes[0]) == -(-n // size)


def _data_config(corpus, **overrides):
    c = ml_collections.ConfigDict(dict(
        corpus=corpus, text_field="text", group_field="", tokenizer="",
        tokenizer_vocab_size=1000, lowercase=True, max_seq_length=64,
        max_predictions_per_seq=10, masked_lm_prob=0.15, short_seq_prob=0.1,
        whole_word_masking=False, dynamic_masking=True, dupe_factor=3, eval_fraction=0.1,
        batch_size=8, eval_batch_size=8, max_documents=0))
    c.update(overrides)
    return c


@pytest.fixture(scope="module")
def small_corpus(data_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "wiki.jsonl"
    with open(data_dir / "enwiki_sample.jsonl", encoding="utf-8") as f:
        path.write_text("".join(line for _, line in zip(range(600), f)), encoding="utf-8")
    return str(path)


class _Terminal:
    """A stand-in for sys.stderr that is a terminal and keeps nothing written to it."""

    def isatty(self):
        return True

    def write(self, text):
        return len(text)

    def flush(self):
        pass


@pytest.mark.parametrize("progress", [True, False])
def test_wordpiece_trainer_draws_its_bars_only_with_progress(progress, small_corpus,
                                                             monkeypatch):
    """BERT, ELECTRA and distillation pass `train.progress and process 0` as `progress`: with
    it False the tokenizers trainer drew its own bars on a terminal all the same (every
    process of a multi-process run, and a run that asked for quiet)."""
    import sys

    from tl_jax.data import tokenizer as wordpiece

    asked = []
    trainer_class = wordpiece.trainers.WordPieceTrainer

    def recording(**kwargs):
        asked.append(kwargs["show_progress"])
        return trainer_class(**kwargs)

    monkeypatch.setattr(wordpiece.trainers, "WordPieceTrainer", recording)
    monkeypatch.setattr(sys, "stderr", _Terminal())
    build_pretraining_data(_data_config(small_corpus, max_documents=20), 128, None, seed=0,
                           progress=progress)
    assert asked == [progress]


def test_build_saves_and_reuses_tokenizer(small_corpus, tmp_path, capsys):
    config = _data_config(small_corpus)
    data = build_pretraining_data(config, 128, str(tmp_path), seed=0)
    assert "instances" in capsys.readouterr().err  # the progress bar
    assert (tmp_path / "tokenizer" / "vocab.txt").exists()
    assert data.tokenizer.vocab_size == 1000
    batch = next(data.train)
    example = data.example_batch(8)
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        k: (v.shape, v.dtype) for k, v in example.items()}
    assert batch["input_ids"].max() < data.tokenizer.vocab_size
    evals = list(data.eval_batches())
    assert sum(b["nsp_weights"].sum() for b in evals) == data.num_eval_instances > 0
    # A restart (even with a changed vocabulary size) keeps the saved vocabulary.
    (tmp_path / "checkpoints" / "10").mkdir(parents=True)
    again = build_pretraining_data(_data_config(small_corpus, tokenizer_vocab_size=500), 128,
                                   str(tmp_path), seed=0)
    assert again.tokenizer.vocab_size == 1000
    assert _same([next(again.train)], [batch])
    # Without a checkpoint there is nothing to resume: the tokenizer a run left behind when it
    # stopped before its first save does not override the config.
    (tmp_path / "checkpoints" / "10").rmdir()
    fresh = build_pretraining_data(_data_config(small_corpus, tokenizer_vocab_size=500), 128,
                                   str(tmp_path), seed=0)
    assert fresh.tokenizer.vocab_size == 500
    # Another seed trains on other pairs and masks but is scored on the same held-out batches.
    capsys.readouterr()
    other = build_pretraining_data(config, 128, str(tmp_path), seed=1, progress=False)
    assert capsys.readouterr().err == ""  # train.progress=False: no bars
    assert _same(list(other.eval_batches()), evals)
    assert not np.array_equal(next(other.train)["input_ids"], batch["input_ids"])
    summary = describe(data, num_examples=2)
    assert "NSP 'random next' share" in summary and summary.count("predict [(") == 2
    assert data.train.get_state()["index"] == 1  # describe left the real iterator alone
    static = build_pretraining_data(_data_config(small_corpus, dynamic_masking=False), 128,
                                    str(tmp_path), seed=0)
    assert static.num_train_instances > 2.5 * data.num_train_instances  # dupe_factor copies


def test_build_expands_environment_variables_in_paths(small_corpus, data_dir, monkeypatch):
    monkeypatch.setenv("MY_CORPUS", small_corpus)
    monkeypatch.setenv("MY_DATA", str(data_dir))
    data = build_pretraining_data(
        _data_config("$MY_CORPUS", tokenizer="$MY_DATA/models/all-MiniLM-L6-v2/vocab.txt",
                     max_documents=20, eval_fraction=0.0, batch_size=2),
        128, None, seed=0, progress=False)
    assert data.tokenizer.vocab_size == 30522 and data.num_train_instances >= 2


def test_build_quickstart_default_corpus(tmp_path):
    data = build_pretraining_data(
        _data_config("gensim:enwiki,gensim:lee", max_seq_length=128, max_predictions_per_seq=20,
                     tokenizer_vocab_size=8192, batch_size=32, eval_batch_size=32, eval_fraction=0.05),
        512, None, seed=0)
    assert data.num_train_instances > 5000 and data.num_eval_instances > 100
    assert 0.46 < data.train.instances.nsp_labels.mean() < 0.54
    assert not (tmp_path / "tokenizer").exists()


def test_build_errors_before_any_work(small_corpus, tmp_path):
    with pytest.raises(ValueError, match="max_seq_length=64 exceeds the model's max_position_embeddings=32"):
        build_pretraining_data(_data_config(small_corpus), 32, None, 0)
    # Masking settings are refused before the corpus is read or a tokenizer trained.
    missing = str(tmp_path / "not_read.jsonl")
    for key, value in (("masked_lm_prob", 0.0), ("masked_lm_prob", 1.5),
                       ("max_predictions_per_seq", 0), ("max_documents", -1)):
        with pytest.raises(ValueError, match=rf"data.{key}={value} must be"):
            build_pretraining_data(_data_config(missing, **{key: value}), 128, None, 0)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(SourceError, match="empty.jsonl contains no text"):
        build_pretraining_data(_data_config(str(empty)), 128, None, 0)
    one = tmp_path / "one.txt"
    one.write_text("A single document. It has two sentences.", encoding="utf-8")
    with pytest.raises(ValueError, match="NSP needs at least 2"):
        build_pretraining_data(_data_config(str(one), eval_fraction=0.0), 128, None, 0)
    # With held-out documents too: the error says what a document is, rather than suggesting
    # data.eval_fraction=0 (which only leads to the error above).
    with pytest.raises(ValueError, match="holds 1 document; NSP needs at least 2 documents.*"
                                         "a blank line ends a document") as e:
        build_pretraining_data(_data_config(str(one)), 128, None, 0)
    assert "eval_fraction" not in str(e.value)
    # A jsonl file whose lines all share one title is one document (grouped by 'title' with
    # data.group_field unset); the error said "each line is one", which the file contradicts.
    titled = tmp_path / "one_title.jsonl"
    titled.write_text("".join(json.dumps({"title": "Cats", "text": f"Paragraph {i}. More."})
                              + "\n" for i in range(5)), encoding="utf-8")
    with pytest.raises(ValueError, match="holds 1 document.*sharing the first of 'title', "
                                         "'book', 'doc_id' .*data.group_field names another"):
        build_pretraining_data(_data_config(str(titled)), 128, None, 0)
    with pytest.raises(ValueError, match="sharing data.group_field='title'"):
        build_pretraining_data(_data_config(str(titled), group_field="title"), 128, None, 0)
    # data.max_documents=1 of a larger corpus: the limit is named, not the corpus blamed.
    with pytest.raises(ValueError, match=r"keeps 1 document of the 5 read \(data.max_documents=1\)"):
        build_pretraining_data(_data_config(str(titled), group_field="text", max_documents=1),
                               128, None, 0)
    few = tmp_path / "few.txt"
    few.write_text("First doc here. And more.\n\nSecond doc here. And more.", encoding="utf-8")
    with pytest.raises(ValueError, match="fewer than one batch"):
        build_pretraining_data(_data_config(str(few), eval_fraction=0.0), 128, None, 0)
    with pytest.raises(ValueError, match="too few to hold out"):
        build_pretraining_data(_data_config(str(few)), 128, None, 0)
    with pytest.raises(ValueError, match="batch_size=6 must be a positive multiple of the process count 4"):
        build_pretraining_data(_data_config(small_corpus, batch_size=6), 128, None, 0, 0, 4)
    with pytest.raises(ValueError, match="lacks key"):
        build_pretraining_data(ml_collections.ConfigDict({"corpus": small_corpus}), 128, None, 0)


@pytest.mark.parametrize("name", ["bert_pretrain", "electra_pretrain", "distill"])
def test_static_masking_makes_bert_s_ten_copies_by_default(name):
    # create_pretraining_data.py's dupe_factor is 10; the configs had 5, so a run with
    # data.dynamic_masking=False saw each instance under half as many masks as BERT's.
    import pathlib

    from tl_jax import config as config_lib
    root = pathlib.Path(__file__).resolve().parent.parent
    assert config_lib.load_config(str(root / "configs" / f"{name}.py")).data.dupe_factor == 10


def test_electra_s_85_15_replacement_rule_is_an_option(instances, tokenizer, small_corpus,
                                                       data_dir):
    # ELECTRA's code shows 85% of the picked tokens as [MASK] and keeps 15%, no random tokens.
    masker = Masker(tokenizer, 0.15, L, mask_token_prob=0.85, random_token_prob=0.0)
    picked = n_mask = n_same = 0
    for i in range(len(instances)):
        out = masker.mask(instances.tokens_of(i), np.random.default_rng(i))
        new = out.input_ids[out.positions]
        picked += len(new)
        n_mask += int((new == tokenizer.mask_id).sum())
        n_same += int((new == out.labels).sum())
    assert picked > 2_000 and n_mask + n_same == picked  # nothing random
    assert abs(n_mask / picked - 0.85) < 0.03
    # Through the data config (optional keys), checked before the corpus is read.
    vocab = str(data_dir / "models" / "all-MiniLM-L6-v2" / "vocab.txt")
    data = build_pretraining_data(
        _data_config(small_corpus, tokenizer=vocab, max_documents=20, eval_fraction=0.0,
                     batch_size=2, mask_token_prob=0.85, random_token_prob=0.0),
        128, None, seed=0, progress=False)
    assert (data.train.masker.mask_token_prob, data.train.masker.random_token_prob) == (0.85, 0.0)
    with pytest.raises(ValueError, match="data.mask_token_prob=0.9 and random_token_prob=0.2"):
        build_pretraining_data(_data_config("/nowhere", mask_token_prob=0.9,
                                            random_token_prob=0.2), 128, None, seed=0)


def test_random_next_share_is_an_option_and_zero_keeps_b_the_continuation(documents, tokenizer,
                                                                          small_corpus):
    # ELECTRA trains on BERT's pairs here, but its own data never takes B from another
    # document: data.random_next_prob=0 gives that (one-sentence documents excepted).
    def share(prob):
        inst = create_instances(documents, L, 0.1, 0, tokenizer.cls_id, tokenizer.sep_id,
                                random_next_prob=prob)
        return inst.nsp_labels.mean(), len(inst)
    assert share(0.0)[0] < 0.03 and 0.46 < share(0.5)[0] < 0.54 and share(1.0)[0] == 1.0
    assert share(0.0)[1] < share(0.5)[1]  # no sentences put back for later pairs
    with pytest.raises(ValueError, match="data.random_next_prob=1.5 must be in"):
        build_pretraining_data(_data_config(small_corpus, random_next_prob=1.5), 128, None,
                               seed=0)


def test_a_tokenizer_vocab_size_too_small_is_named_before_the_corpus_is_read():
    """It was 'vocab_size=-5 is too small' from the tokenizer trainer, naming no key, once the
    whole corpus had been read (here the corpus does not exist)."""
    with pytest.raises(ValueError, match=r"data.tokenizer_vocab_size=-5 is too small"):
        build_pretraining_data(_data_config("/nowhere", tokenizer_vocab_size=-5), 128, None,
                               seed=0)



def test_the_steps_before_the_bars_say_what_they_do(small_corpus, tmp_path, capsys):
    """Reading the corpus, training WordPiece and tokenising ran with no output (11 s for
    `bert_pretrain.py:tiny`, minutes on a real corpus) before the first bar: each says when it
    starts and what it made; `progress=False` (train.progress=False, processes but 0) is silent."""
    capsys.readouterr()
    build_pretraining_data(_data_config(small_corpus), 128, str(tmp_path / "a"), seed=0,
                           progress=True)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"[data] Reading {small_corpus}..."
    assert re.fullmatch(rf"\[data\] Reading {re.escape(small_corpus)}: [\d,]+ documents "
                        r"\(\d+\.\ds\)", out[1])
    assert out[2].startswith("[data] Training a WordPiece vocabulary of 1000 tokens on ")
    assert re.fullmatch(r"\[data\] Training a WordPiece .*: 1,000 tokens \(\d+\.\ds\)", out[3])
    assert out[4] == "[data] Tokenising..."
    assert re.fullmatch(r"\[data\] Tokenising: [\d,]+ training and [\d,]+ held-out sentences "
                        r"\(\d+\.\ds\)", out[5])
    build_pretraining_data(_data_config(small_corpus), 128, str(tmp_path / "b"), seed=0,
                           progress=False)
    assert capsys.readouterr() == ("", "")


# ------------------------------------------------ corpus memory: flat int32 arrays, same pairs


def _reference_tokenize(documents, tokenizer):
    """tokenize_documents as it was before the corpus was kept in arrays: lists of sentences of
    Python ints (about 36 bytes a token)."""
    from tl_jax.data.sources import split_sentences
    out = [[] for _ in documents]
    for d, document in enumerate(documents):
        sentences = [s for unit in document for s in split_sentences(unit)]
        for ids in tokenizer.encode_batch(sentences, special_tokens_as_text=True):
            if ids:
                out[d].append(ids)
    return [doc for doc in out if doc]


def _reference_instances(documents, max_seq_length, short_seq_prob, seed, cls_id, sep_id,
                         copy=0, random_next_prob=0.5):
    """create_instances as it was (rows of Python lists, from lists of sentences): the
    reference the flat version must equal bit for bit."""
    rows = []
    max_num_tokens = max_seq_length - 3
    for d, document in enumerate(documents):
        rng = np.random.default_rng([seed, 11, copy, d])

        def draw_target():
            if rng.random() < short_seq_prob:
                return int(rng.integers(2, max_num_tokens + 1))
            return max_num_tokens

        target, chunk, chunk_length, i = draw_target(), [], 0, 0
        while i < len(document):
            chunk.append(document[i])
            chunk_length += len(document[i])
            last = len(document) - 1
            if i == last or (chunk_length >= target and len(chunk) >= 2 and i < last - 1):
                if len(chunk) == 1 and len(document) > 1:
                    break
                a_end = 1 if len(chunk) < 2 else int(rng.integers(1, len(chunk)))
                tokens_a = [t for sentence in chunk[:a_end] for t in sentence]
                tokens_b = []
                if len(chunk) == 1 or rng.random() < random_next_prob:
                    label, target_b = 1, target - len(tokens_a)
                    other = int(rng.integers(0, len(documents) - 1))
                    other += other >= d
                    random_document = documents[other]
                    start = int(rng.integers(0, len(random_document)))
                    for sentence in random_document[start:]:
                        tokens_b.extend(sentence)
                        if len(tokens_b) >= target_b:
                            break
                    i -= len(chunk) - a_end
                else:
                    label = 0
                    tokens_b = [t for sentence in chunk[a_end:] for t in sentence]
                while len(tokens_a) + len(tokens_b) > max_num_tokens:  # the original, one by one
                    trunc = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
                    del trunc[0 if rng.random() < 0.5 else -1]
                if tokens_a and tokens_b:
                    rows.append(([cls_id, *tokens_a, sep_id, *tokens_b, sep_id],
                                 len(tokens_a) + 2, label))
                chunk, chunk_length, target = [], 0, draw_target()
            i += 1
    return PretrainingInstances.from_rows(rows) if rows else PretrainingInstances.empty()


def test_tokenised_real_text_and_its_pairs_are_the_same_as_before(data_dir, tokenizer):
    """Wikipedia articles and part of an Austen novel (one long document), with sentences that
    tokenise to nothing and an empty document: the same documents and the same instances,
    array for array, as the list-based code for several settings."""
    texts = (load_documents(str(data_dir / "enwiki_sample.jsonl"))[:25]
             + [load_documents(str(data_dir / "austen.jsonl"))[0][:200]]
             + [["   ", "\u200b"], ["One. Two words.", " "]])
    reference = _reference_tokenize(texts, tokenizer)
    docs = tokenize_documents(texts, tokenizer, chunk_size=700, progress=False)
    assert docs.tokens.dtype == np.int32 and len(docs) == len(reference) == len(texts) - 1
    assert [docs[d] for d in range(len(docs))] == reference
    assert docs.num_sentences == sum(map(len, reference))
    for length, short, random_next, seed, copy in [(64, 0.1, 0.5, 0, 0), (128, 0.5, 0.3, 1, 2),
                                                   (512, 0.0, 1.0, 2, 0), (8, 1.0, 0.0, 3, 1)]:
        want = _reference_instances(reference, length, short, seed, tokenizer.cls_id,
                                    tokenizer.sep_id, copy, random_next)
        for source in (docs, reference):  # the arrays, or documents given as lists
            got = create_instances(source, length, short, seed, tokenizer.cls_id,
                                   tokenizer.sep_id, copy=copy, random_next_prob=random_next)
            for key in ("tokens", "offsets", "num_a", "nsp_labels"):
                assert getattr(got, key).dtype == getattr(want, key).dtype
                np.testing.assert_array_equal(getattr(got, key), getattr(want, key))


def test_the_tokenised_corpus_costs_a_few_bytes_a_token(data_dir, tokenizer):
    """Tokenising and pairing held every token as a Python int in lists (about 36 bytes, and
    again in the instance rows): a corpus of a few GB did not fit in host memory. Python's
    allocations (numpy's included) at their peak now stay within a few bytes a token."""
    import tracemalloc
    texts = load_documents(str(data_dir / "enwiki_sample.jsonl"))[:20]
    tracemalloc.start()
    try:
        docs = tokenize_documents(texts, tokenizer, chunk_size=500, progress=False)
        tokenised_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        instances = create_instances(docs, 128, 0.1, 0, tokenizer.cls_id, tokenizer.sep_id)
        pairing_peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    n = len(docs.tokens)
    assert n > 100_000
    # The batches' arrays and their concatenation, offsets, and one batch of lists in flight.
    assert tokenised_peak < 12 * n, (tokenised_peak, n)
    # The instances' own arrays (about the corpus again), and no rows of lists.
    assert pairing_peak < 2 * instances.tokens.nbytes + 4 * n, (pairing_peak, n)


def test_an_error_while_tokenising_ends_the_line_mode_bar_with_where_it_stopped(
        tokenizer, capsys, monkeypatch):
    """The tokenize bar was closed by a plain `bar.close()` after the loop: an error in a
    batch (or Ctrl-C) left it without a closing line where stderr is no terminal (nohup, CI),
    so the log did not say how far tokenising had got. It now ends with a `stopped by` line."""
    monkeypatch.setenv("TL_JAX_PROGRESS_SECONDS", "3600")  # only the closing line
    calls = []

    def encode_batch(texts, special_tokens_as_text=False):
        calls.append(len(texts))
        if len(calls) == 2:
            raise MemoryError("out of host memory")
        return Tokenizer.encode_batch(tokenizer, texts, special_tokens_as_text)

    monkeypatch.setattr(tokenizer, "encode_batch", encode_batch)
    texts = [[f"Sentence number {i} of document {d}." for i in range(10)] for d in range(10)]
    with pytest.raises(MemoryError, match="out of host memory"):
        tokenize_documents(texts, tokenizer, chunk_size=40)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("[tokenize] unit "), lines
    assert " | stopped by MemoryError after " in lines[0], lines


def test_an_error_while_pairing_ends_the_line_mode_instances_bar_with_where_it_stopped(
        capsys, monkeypatch):
    """The same for the instances bar, iterated by a `for` whose body raised: the bar was
    closed when its generator was freed, as 'stopped after', without the error."""
    from tl_jax.data import pretraining

    monkeypatch.setenv("TL_JAX_PROGRESS_SECONDS", "3600")  # only the closing line
    real = pretraining.create_instances_from_document

    def failing(documents, d, *args):
        if d == 3:
            raise MemoryError("out of host memory")
        return real(documents, d, *args)

    monkeypatch.setattr(pretraining, "create_instances_from_document", failing)
    documents = [[[5 + d, 6, 7, 8], [9, 10, 11]] for d in range(6)]
    with pytest.raises(MemoryError, match="out of host memory"):
        create_instances(documents, 16, 0.1, seed=0, cls_id=1, sep_id=2, progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("[instances] doc 3/6 "), lines
    assert " | stopped by MemoryError after " in lines[0], lines


def test_the_tokenize_bar_counts_units_up_to_its_total(tokenizer, capsys, monkeypatch):
    """The bar's total is the corpus's units (paragraphs, lines) but it was advanced by the
    sentences of each batch, so a log read `unit 4,780/1,188 (402%)`. It now counts units and
    ends at its total, trailing units that hold no sentence included."""
    monkeypatch.setenv("TL_JAX_PROGRESS_SECONDS", "0")  # a line at every update
    texts = [[f"First sentence {i}. Second one {i}. A third {i}." for i in range(30)]
             for _ in range(4)] + [["   ", ""]]
    docs = tokenize_documents(texts, tokenizer, chunk_size=25)
    assert docs.num_sentences == 4 * 30 * 3
    lines = capsys.readouterr().err.splitlines()
    counts = [re.match(r"\[tokenize\] unit ([\d,]+)/122 ", line) for line in lines]
    assert all(counts), lines
    counts = [int(m.group(1).replace(",", "")) for m in counts]
    assert counts == sorted(counts) and counts[-1] == 122, lines
    assert "done in" in lines[-1], lines


def test_a_prediction_cap_below_the_masking_rate_is_noted_before_the_corpus_is_read(
        small_corpus, capsys, monkeypatch):
    # A longer max_seq_length with the config's max_predictions_per_seq=20 (BERT's for 128
    # tokens) masked 20 of 509 tokens (3.9%) at 512, not 15%, without a word.
    from tl_jax.data import pretraining

    def read(*args, **kwargs):
        raise RuntimeError("corpus read")

    monkeypatch.setattr(pretraining, "load_documents", read)
    with pytest.raises(RuntimeError, match="corpus read"):
        build_pretraining_data(_data_config(small_corpus, max_seq_length=512,
                                            max_predictions_per_seq=20), 512, None, 0)
    assert ("[data] Note: data.max_predictions_per_seq=20 caps the masking: a full-length "
            "instance (509 maskable tokens) gets 20 predictions (3.9%), not the 76 of "
            "data.masked_lm_prob=0.15. Raise data.max_predictions_per_seq to 76 or more"
            in capsys.readouterr().out)
    # At the cap the default configs keep (19 of 125 at 128 tokens), nothing is said.
    with pytest.raises(RuntimeError, match="corpus read"):
        build_pretraining_data(_data_config(small_corpus, max_seq_length=128,
                                            max_predictions_per_seq=20), 512, None, 0)
    assert "caps the masking" not in capsys.readouterr().out


def test_an_unknown_tfds_corpus_is_named_by_its_key(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))  # nothing is prepared there
    with pytest.raises(SourceError, match=r"^data.corpus: unknown tfds dataset 'imdb_reviewz' "
                                          r"\(did you mean 'imdb_reviews'\?\)") as e:
        build_pretraining_data(_data_config("tfds:imdb_reviewz"), 128, None, 0)
    assert "\n" not in str(e.value)

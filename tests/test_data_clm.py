"""Byte-level BPE and causal-LM packing/iteration."""
import json

import numpy as np
import pytest

from tl_jax.data import clm
from tl_jax.data.bpe import EOS, BPEError, BPETokenizer


@pytest.fixture(scope="module")
def austen(data_dir):
    with open(data_dir / "austen.jsonl") as f:
        return [json.loads(line)["text"] for _, line in zip(range(1500), f)]


@pytest.fixture(scope="module")
def tok(austen):
    return BPETokenizer.train(austen, vocab_size=600)


WEIRD = ["It is a truth universally acknowledged", "  two  spaces\n\nand\ttabs ",
         "naïve café — “quotes” 😀 日本語", "", "<|endoftext|>", "x" * 300, "\x00\x7f\u200b"]


def test_bpe_round_trips_any_text(tok):
    rng = np.random.default_rng(0)
    randoms = ["".join(chr(c) for c in rng.integers(1, 0x2FFF, size=rng.integers(1, 40)))
               for _ in range(50)]
    for text in WEIRD + randoms:
        assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size == 600
    assert all(0 <= i < tok.vocab_size for t in randoms for i in tok.encode(t))


def test_bpe_learns_merges_and_keeps_eos_whole(tok, austen):
    text = " ".join(austen[:200])
    assert len(tok.encode(text)) < len(text.encode("utf-8")) / 2  # merges compress real text
    assert tok.encode(EOS) == [tok.eos_id]
    assert tok.encode("a" + EOS + "b")[1] == tok.eos_id


def test_bpe_save_load_gives_same_ids(tok, tmp_path, austen):
    tok.save(str(tmp_path / "tok"))
    assert (tmp_path / "tok" / "vocab.json").exists() and (tmp_path / "tok" / "merges.txt").exists()
    from_files = BPETokenizer.from_files(str(tmp_path / "tok" / "vocab.json"),
                                         str(tmp_path / "tok" / "merges.txt"))
    from_json = BPETokenizer.load(str(tmp_path / "tok" / "tokenizer.json"))
    for text in austen[:50] + WEIRD:
        assert from_files.encode(text) == tok.encode(text) == from_json.encode(text)
    assert from_files.eos_id == tok.eos_id and from_files.vocab_size == tok.vocab_size
    with pytest.raises(BPEError, match="does not exist"):
        BPETokenizer.load(str(tmp_path / "nope.json"))


def test_an_interrupted_save_keeps_the_saved_tokenizer(tok, austen, tmp_path, monkeypatch):
    """A run saves its tokenizer each time it starts; vocab.json was truncated and written again
    in place, so an interruption there (a preemption) left a workdir whose tokenizer would not
    load. The files are now renamed into place whole."""
    folder = tmp_path / "tok"
    tok.save(str(folder))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    other = BPETokenizer.train(austen[:200], vocab_size=300)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dump", interrupted)
    with pytest.raises(KeyboardInterrupt):
        other.save(str(folder))
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing else left
    assert BPETokenizer.load(str(folder)).encode(austen[0]) == tok.encode(austen[0])
    other.save(str(folder))
    assert BPETokenizer.load(str(folder)).encode(austen[0]) == other.encode(austen[0])


def test_unreadable_bpe_files_are_named(tok, tmp_path):
    """A broken tokenizer.json, vocab.json or merges.txt is a BPEError naming the file."""
    tok.save(str(tmp_path / "tok"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{not json")
    with pytest.raises(BPEError, match=r"could not read .*broken/tokenizer.json as a Hugging"):
        BPETokenizer.load(str(broken))
    with pytest.raises(BPEError, match=r"could not read .*merges.txt as a Hugging"):
        BPETokenizer.load(str(tmp_path / "tok" / "merges.txt"))  # not a tokenizer.json
    merges = (tmp_path / "tok" / "merges.txt").read_text().splitlines()
    # A bad line is named by its line in the file: tokenizers' message counted from the line
    # after "#version" (one too few) or, for unknown tokens, named no line.
    (tmp_path / "tok" / "merges.txt").write_text("\n".join(merges[:4] + ["a b c"]) + "\n")
    with pytest.raises(BPEError, match=r"merges.txt:5: expected a merge of two tokens separated "
                                       r"by one space, got 'a b c'"):
        BPETokenizer.load(str(tmp_path / "tok"))
    (tmp_path / "tok" / "merges.txt").write_text("\n".join(merges[:4] + ["zz qq"]) + "\n")
    with pytest.raises(BPEError, match=r"merges.txt:5: merge 'zz qq' needs token 'zz', which "
                                       r".*vocab.json does not have"):
        BPETokenizer.load(str(tmp_path / "tok"))
    # Both tokens known but not their merge: tokenizers panicked (a PyO3 PanicException, which
    # `except Exception` does not catch), with a Rust backtrace.
    a, b = merges[1].split(" ")
    (tmp_path / "tok" / "merges.txt").write_text(f"#version: 0.2\n{b} {a}\n")
    with pytest.raises(BPEError, match=rf"merges.txt:2: merge '{b} {a}' needs token '{b}{a}'"):
        BPETokenizer.load(str(tmp_path / "tok"))


def test_an_empty_merges_file_is_an_error(tok, tmp_path):
    """merges.txt emptied (a failed copy) would split every word into bytes: not silently."""
    tok.save(str(tmp_path / "tok"))
    for text in ("", "#version: 0.2\n"):
        (tmp_path / "tok" / "merges.txt").write_text(text)
        with pytest.raises(BPEError, match=r"merges.txt has no merges, but .*vocab.json has "
                           rf"{tok.vocab_size} tokens"):
            BPETokenizer.load(str(tmp_path / "tok"))


def test_a_merges_file_cut_short_is_an_error(tok, tmp_path):
    """The end of merges.txt missing (an interrupted copy, cut at a line end) loaded, and split
    every word that needed the lost merges into other tokens than the model saw."""
    tok.save(str(tmp_path / "tok"))
    (tmp_path / "tok" / "tokenizer.json").unlink()  # as a GPT-2 download has it
    merges = (tmp_path / "tok" / "merges.txt").read_text().splitlines()
    kept = len(merges) // 2
    (tmp_path / "tok" / "merges.txt").write_text("\n".join(merges[:kept]) + "\n")
    lost = tok.vocab_size - 257 - (kept - 1)
    with pytest.raises(BPEError, match=rf"merges.txt makes none of {lost} tokens of .*vocab.json "
                                       rf"\(e.g. .*\); it has {kept - 1} merges, its last on line "
                                       rf"{kept}. Is it cut short"):
        BPETokenizer.load(str(tmp_path / "tok"))
    (tmp_path / "tok" / "merges.txt").write_text("\n".join(merges) + "\n")
    assert BPETokenizer.load(str(tmp_path / "tok")).hf_tokenizer.get_vocab() == \
        tok.hf_tokenizer.get_vocab()
    # Special tokens beside the merges (a tokenizer trained with a pad token) are no sign of
    # lost merges.
    vocab = json.loads((tmp_path / "tok" / "vocab.json").read_text(encoding="utf-8"))
    vocab.update({"[PAD]": len(vocab), "<pad>": len(vocab) + 1})
    (tmp_path / "tok" / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    assert BPETokenizer.load(str(tmp_path / "tok")).vocab_size == tok.vocab_size + 2


def test_bpe_files_with_a_byte_order_mark_load(tok, tmp_path, austen):
    """A vocab.json or merges.txt saved with a UTF-8 byte-order mark (Windows editors) was
    refused: vocab.json as "expected value at line 1 column 1", merges.txt as a merge of a token
    vocab.json lacks ("files of two different tokenizers?"). Both now load as without it; a
    vocab.json that is no JSON is named by file and line."""
    tok.save(str(tmp_path / "tok"))
    (tmp_path / "tok" / "tokenizer.json").unlink()
    for name in ("vocab.json", "merges.txt"):
        path = tmp_path / "tok" / name
        path.write_text("\ufeff" + path.read_text(encoding="utf-8"), encoding="utf-8")
    loaded = BPETokenizer.load(str(tmp_path / "tok"))
    text = " ".join(austen[:20])
    assert loaded.encode(text) == tok.encode(text)
    tok.save(str(tmp_path / "json"))  # a tokenizer.json with one
    path = tmp_path / "json" / "tokenizer.json"
    path.write_text("\ufeff" + path.read_text(encoding="utf-8"), encoding="utf-8")
    assert BPETokenizer.load(str(path)).encode(text) == tok.encode(text)
    (tmp_path / "tok" / "vocab.json").write_text('{"a": 0,\n "b": }')
    with pytest.raises(BPEError, match=r"vocab.json:2: invalid JSON \(Expecting value at column "
                                       r"7\)"):
        BPETokenizer.load(str(tmp_path / "tok"))


def test_a_vocabulary_without_every_byte_symbol_is_an_error(tok, tmp_path):
    """A byte missing from vocab.json would be dropped from any text holding it."""
    tok.save(str(tmp_path / "tok"))
    vocab = json.loads((tmp_path / "tok" / "vocab.json").read_text())
    gone = "Ã"  # the first byte of "é" in UTF-8
    kept = sorted((t for t in vocab if gone not in t), key=vocab.get)
    (tmp_path / "tok" / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(kept)}))
    merges = (tmp_path / "tok" / "merges.txt").read_text().splitlines()
    (tmp_path / "tok" / "merges.txt").write_text("\n".join(m for m in merges if gone not in m))
    with pytest.raises(BPEError, match=r"lacks 1 of the 256 byte-level symbols \(e.g. 'Ã'\)"):
        BPETokenizer.load(str(tmp_path / "tok"))


def test_pack_documents_separates_documents_with_eos(tok):
    docs = [["First para.", "Second para."], ["Another doc."], ["Third", "doc", "here"]]
    stream = clm.pack_documents(docs, tok)
    assert (stream == tok.eos_id).sum() == len(docs)
    assert stream[-1] == tok.eos_id
    assert tok.decode(stream.tolist()) == "".join("\n".join(d) + EOS for d in docs)


@pytest.mark.parametrize("n,seq_len", [(2, 1), (10, 3), (13, 4), (100, 7), (9, 8)])
def test_blocks_make_every_token_a_target_exactly_once(n, seq_len):
    stream = np.arange(1, n + 1, dtype=np.int32)
    blocks, lengths = clm.make_blocks(stream, seq_len)
    batch = clm.blocks_to_batch(blocks, lengths)
    w = batch["weights"].astype(bool)
    np.testing.assert_array_equal(batch["targets"][w], stream[1:])
    np.testing.assert_array_equal(batch["inputs"][w], stream[:-1])
    # targets are inputs shifted by one within a window
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
    assert batch["inputs"].shape == (len(blocks), seq_len)


def make_iterator(batch_size=4, **kw):
    blocks, lengths = clm.make_blocks(np.arange(1, 203, dtype=np.int32), 5)  # 41 windows
    return clm.BlockIterator(blocks, lengths, batch_size=batch_size, seed=3, **kw)


def test_iterator_resumes_exactly():
    it = make_iterator()
    for _ in range(13):  # past an epoch boundary (10 batches per epoch)
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # JSON-serialisable
    want = [next(it) for _ in range(12)]
    resumed = make_iterator()
    resumed.set_state(state)
    for a, b in zip(want, (next(resumed) for _ in range(12))):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    with pytest.raises(ValueError, match="does not fit"):
        resumed.set_state({"epoch": 0, "batch": 99})


def test_iterator_epochs_are_permutations_that_differ():
    it = make_iterator()
    epochs = []
    for _ in range(2):
        rows = np.concatenate([next(it)["inputs"][:, 0] for _ in range(it.batches_per_epoch)])
        assert len(set(rows.tolist())) == len(rows)  # no window twice within an epoch
        epochs.append(rows)
    assert not np.array_equal(epochs[0], epochs[1])


def test_host_slices_partition_the_global_batch():
    whole = make_iterator(batch_size=8)
    hosts = [make_iterator(batch_size=8, process_index=p, process_count=4) for p in range(4)]
    for _ in range(7):
        full = next(whole)
        parts = [next(h) for h in hosts]
        for k in full:
            np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), full[k])
    with pytest.raises(ValueError, match="divisible"):
        make_iterator(batch_size=6, process_count=4)


@pytest.mark.parametrize("batch_size", [0, -8])
def test_a_batch_size_below_one_is_named(batch_size):
    """data.batch_size=0 was a ZeroDivisionError traceback once the corpus was tokenised."""
    with pytest.raises(ValueError, match=rf"batch_size {batch_size} \(data.batch_size\) must be "
                                         "at least 1"):
        make_iterator(batch_size=batch_size)
    blocks, lengths = clm.make_blocks(np.arange(1, 95, dtype=np.int32), 6)
    with pytest.raises(ValueError, match=rf"eval batch_size {batch_size} "
                                         r"\(data.eval_batch_size\) must be at least 1"):
        clm.eval_batches(blocks, lengths, batch_size=batch_size)


def test_a_batch_larger_than_the_corpus_names_the_config_keys():
    """The error said "use ... a smaller batch_size or a shorter seq_len", naming no key of
    the config that sets them."""
    blocks, lengths = clm.make_blocks(np.arange(1, 95, dtype=np.int32), 6)  # 16 windows
    with pytest.raises(ValueError, match=r"only 16 packed sequences for a global batch of 32 "
                                         r"\(data.batch_size\); use more text, a smaller "
                                         r"data.batch_size or a shorter data.seq_len"):
        clm.BlockIterator(blocks, lengths, batch_size=32)


def test_eval_batches_cover_every_token_once():
    stream = np.arange(1, 95, dtype=np.int32)
    blocks, lengths = clm.make_blocks(stream, 6)
    batches = clm.eval_batches(blocks, lengths, batch_size=4)
    targets = np.concatenate([b["targets"][b["weights"].astype(bool)] for b in batches])
    np.testing.assert_array_equal(targets, stream[1:])
    host = [clm.eval_batches(blocks, lengths, 4, process_index=p, process_count=2)
            for p in range(2)]
    merged = np.concatenate([np.concatenate([h[i]["targets"][h[i]["weights"] > 0] for h in host])
                             for i in range(len(batches))])
    np.testing.assert_array_equal(merged, stream[1:])


def test_eval_batches_are_made_as_they_are_read():
    """The whole list of eval batches was built up front (inputs, targets and weights: three
    times the windows' bytes) at every eval of a whole held-out set (train.eval_batches=0).
    They are made one at a time now, with a length for the eval bar, and the same contents."""
    import tracemalloc

    blocks, lengths = clm.make_blocks(np.arange(1, 20_000 * 128 + 2, dtype=np.int32) % 1000,
                                      128)  # 20,000 windows, 10 MB
    tracemalloc.start()
    try:
        batches = clm.eval_batches(blocks, lengths, batch_size=64)
        peak_building = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        for _ in batches:
            pass
        peak_reading = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak_building < blocks.nbytes / 100, peak_building
    assert peak_reading < blocks.nbytes / 20, peak_reading  # one batch at a time (~100 kB)
    assert len(batches) == 313 and len(clm.eval_batches(blocks, lengths, 64, max_batches=5)) == 5
    last = batches[-1]
    np.testing.assert_array_equal(last["inputs"][:32], blocks[-32:, :-1])
    assert not last["weights"][32:].any()
    with pytest.raises(IndexError):
        batches[313]


def test_split_documents_is_seeded_and_disjoint():
    docs = [[f"doc {i}"] for i in range(20)]
    train, held = clm.split_documents(docs, 0.25, seed=1)
    assert len(held) == 5 and len(train) == 15
    assert sorted(map(tuple, train + held)) == sorted(map(tuple, docs))
    assert clm.split_documents(docs, 0.25, seed=1) == (train, held)
    with pytest.raises(ValueError, match="eval_fraction"):
        clm.split_documents(docs, 1.5)


# ------------------------------------------------------------- corpus memory (packing, blocks)


def _reference_pack_documents(documents, tokenizer, separator="\n", batch_size=1024):
    """pack_documents as it was before the corpus was kept in int32 arrays from tokenisation
    on: the reference the packed stream must equal bit for bit."""
    texts = [separator.join(doc) for doc in documents]
    pieces = []
    eos = np.array([tokenizer.eos_id], np.int32)
    for start in range(0, len(texts), batch_size):
        for ids in tokenizer.encode_batch(texts[start:start + batch_size]):
            pieces.append(np.asarray(ids, np.int32))
            pieces.append(eos)
    return np.concatenate(pieces)


def _reference_make_blocks(stream, seq_len, pad_id=0):
    """make_blocks as it was (a padded copy of the stream and an (N, T + 1) index): the
    reference the blocks must equal bit for bit."""
    stream = np.asarray(stream, np.int32)
    n = -(-(len(stream) - 1) // seq_len)
    padded = np.full(n * seq_len + 1, pad_id, np.int32)
    padded[:len(stream)] = stream
    index = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    lengths = np.minimum(len(stream) - np.arange(n) * seq_len, seq_len + 1).astype(np.int32)
    return padded[index], lengths


def test_packed_blocks_of_real_text_are_the_same_as_before(data_dir, tok):
    """Part of an Austen novel (one long document) and Wikipedia articles, in batches cut by
    characters as well as by count: the same stream and blocks as the old list-based packing."""
    from tl_jax.data.sources import load_documents
    docs = ([load_documents(str(data_dir / "austen.jsonl"))[0][:300]]
            + load_documents(str(data_dir / "enwiki_sample.jsonl"))[:30] + [[""], ["", ""]])
    reference = _reference_pack_documents(docs, tok)
    for kw in ({}, {"batch_size": 7, "batch_chars": 20_000}):
        stream = clm.pack_documents(docs, tok, **kw)
        assert stream.dtype == np.int32
        np.testing.assert_array_equal(stream, reference)
    for seq_len in (1, 2, 5, 128, len(reference) - 2, len(reference) - 1, len(reference)):
        for cut in {2, 3, max(2, seq_len), seq_len + 1, seq_len + 2, len(reference)}:
            want = _reference_make_blocks(reference[:cut], seq_len, pad_id=7)
            got = clm.make_blocks(reference[:cut], seq_len, pad_id=7)
            assert got[0].dtype == np.int32 and got[1].dtype == np.int32
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])


def test_make_blocks_makes_one_copy_of_the_stream():
    """The blocks are the only full-size array made: the old padded stream plus an int64 index
    of every block position (16 more bytes a token) made a large corpus run out of memory."""
    import tracemalloc
    stream = np.random.default_rng(0).integers(0, 50_000, 1_000_003).astype(np.int32)
    tracemalloc.start()
    try:
        blocks, _ = clm.make_blocks(stream, 128)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.2 * blocks.nbytes, (peak, blocks.nbytes)


class _CountingTokenizer:
    """A stand-in tokenizer (one id per character) that records each batch it encodes."""
    eos_id = 0

    def __init__(self):
        self.batches = []

    def encode_batch(self, texts):
        self.batches.append(list(texts))
        return [[1 + ord(c) % 200 for c in text] for text in texts]


def test_pack_documents_encodes_long_documents_a_few_at_a_time():
    """A corpus of books (one document each) went to the tokenizer in one batch of up to 1,024
    documents: the encodings (about 160 bytes a token) of the whole corpus at once."""
    docs = [["x" * 300_000] * 2 for _ in range(6)] + [["short"]] * 10  # 3.6M characters
    counting = _CountingTokenizer()
    stream = clm.pack_documents(docs, counting)
    assert len(counting.batches) > 1
    # Up to the batch's character budget (1M by default), and one document beyond it.
    assert max(sum(map(len, b)) for b in counting.batches) <= 1_000_000 + 600_001
    assert [t for b in counting.batches for t in b] == ["\n".join(d) for d in docs]
    assert len(stream) == sum(len("\n".join(d)) + 1 for d in docs)

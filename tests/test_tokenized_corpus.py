"""Tokenised corpora (`tl_jax tokenize`): written once, memory-mapped by clm runs, with the
same windows and held-out documents as the text; damaged folders named."""
import functools
import json
import os
import shutil

import numpy as np
import pytest
from tqdm.std import tqdm

from tl_jax import config as config_lib, main
from tl_jax.data import bpe, clm as clm_data, sources, tokenized
from tl_jax.tasks import clm


@pytest.fixture(scope="module")
def tokenizer(data_dir):
    docs = sources.load_documents(str(data_dir / "polarity_sentences.jsonl"))
    return bpe.BPETokenizer.train((u for d in docs[:500] for u in d), vocab_size=300,
                                  progress=False)


@pytest.fixture()
def corpus_files(tmp_path):
    """Two jsonl files of short documents (grouped rows) and a plain-text one."""
    rng = np.random.default_rng(0)
    words = "the a an of to and in it was she he Emma Elizabeth said very much".split()
    folder = tmp_path / "text"
    folder.mkdir()
    for name, n in (("a.jsonl", 30), ("b.jsonl", 25)):
        with open(folder / name, "w") as f:
            for d in range(n):
                for _ in range(int(rng.integers(1, 4))):
                    text = " ".join(rng.choice(words, int(rng.integers(1, 30))))
                    f.write(json.dumps({"title": f"{name}-{d}", "text": text}) + "\n")
    (folder / "c.txt").write_text("One paragraph.\nAnother one.\n\nA second document.\n")
    return folder


def spec_of(folder):
    return f"{folder}/*.jsonl,{folder}/c.txt"


def test_document_blocks_are_make_blocks_of_the_documents_packed(tokenizer):
    """The windows of some documents cut from the packed stream equal those of their text
    packed on its own, for any subset and length (a last window full, short, of one token),
    read in chunks that cut documents anywhere."""
    rng = np.random.default_rng(1)
    docs = [[" ".join(rng.choice(["x", "yy", "zzz", "Emma"], int(rng.integers(1, 20))))]
            for _ in range(40)]
    stream = clm_data.pack_documents(docs, tokenizer)
    ends = np.cumsum([len(clm_data.pack_documents([d], tokenizer)) for d in docs])
    assert ends[-1] == len(stream)
    for take in (np.arange(40), np.array([3]), np.sort(rng.choice(40, 17, replace=False))):
        for seq_len, chunk in ((1, 3), (5, 1 << 22), (16, 7), (64, 50)):
            want = clm_data.make_blocks(clm_data.pack_documents([docs[i] for i in take],
                                                                tokenizer), seq_len)
            got = clm_data.document_blocks(stream, ends, take, seq_len, chunk=chunk)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
            assert not got[0].flags.writeable  # a view of the stream: rows are copied out
    with pytest.raises(ValueError, match="nothing to predict"):
        clm_data.document_blocks(np.array([0], np.int32), np.array([1]), np.array([0]), 4)


def test_split_indices_draw_what_split_documents_draws():
    docs = [[f"d{i}"] for i in range(50)]
    train, held = clm_data.split_documents(docs, 0.2, seed=0)
    train_i, held_i = clm_data.split_indices(50, 0.2, seed=0)
    assert [docs[i] for i in train_i] == train and [docs[i] for i in held_i] == held
    assert len(held_i) == 10 and not set(train_i) & set(held_i)
    with pytest.raises(ValueError, match="3 document"):
        clm_data.split_indices(3, 0.9)


def test_a_written_corpus_is_the_text_packed_with_its_tokenizer(tmp_path, tokenizer,
                                                               corpus_files):
    spec = spec_of(corpus_files)
    out = tmp_path / "corpus.tok"
    meta = tokenized.write(spec, tokenizer, str(out), progress=False)
    documents = sources.load_documents(spec)
    assert meta["documents"] == len(documents) == 30 + 25 + 2
    assert [s["documents"] for s in meta["sources"]] == [30, 25, 2]
    corpus = tokenized.TokenizedCorpus.open(str(out))
    np.testing.assert_array_equal(corpus.tokens, clm_data.pack_documents(documents, tokenizer))
    lengths = [len(clm_data.pack_documents([d], tokenizer)) for d in documents]
    np.testing.assert_array_equal(corpus.doc_ends, np.cumsum(lengths))
    assert corpus.tokenizer.hf_tokenizer.get_vocab() == tokenizer.hf_tokenizer.get_vocab()
    assert sorted(os.listdir(tmp_path)) == ["corpus.tok", "text"]  # no .partial left
    with pytest.raises(tokenized.TokenizedCorpusError, match="already exists"):
        tokenized.write(spec, tokenizer, str(out), progress=False)


def test_a_failed_write_leaves_no_folder(tmp_path, tokenizer, corpus_files):
    (corpus_files / "b.jsonl").write_text('{"text": "fine"}\n{"text": broken\n')
    out = tmp_path / "corpus.tok"
    with pytest.raises(sources.SourceError, match="b.jsonl"):
        tokenized.write(spec_of(corpus_files), tokenizer, str(out), progress=False)
    assert sorted(os.listdir(tmp_path)) == ["text"]


@pytest.mark.parametrize("words", [False, True])
def test_a_corpus_with_nothing_to_train_on_is_refused_and_no_folder_made(tmp_path, words):
    """A single token (one sentence of WordPiece, one biLM word; a BPE document has its
    end-of-text too) is refused by `tokenize`, not written for every run to refuse."""
    from tl_jax.data.tokenizer import Tokenizer
    (tmp_path / "one.txt").write_text("!\n")
    vocabulary = None if words else Tokenizer.train_wordpiece([["a b c !"]], vocab_size=50,
                                                                min_frequency=1, progress=False)
    with pytest.raises(tokenized.TokenizedCorpusError, match=r"one.txt gives 1 token\(s\): "
                       "nothing to train on"):
        tokenized.write(str(tmp_path / "one.txt"), vocabulary, str(tmp_path / "one.tok"),
                        progress=False)
    assert sorted(os.listdir(tmp_path)) == ["one.txt"]


@pytest.fixture()
def written(tmp_path, tokenizer, corpus_files):
    out = tmp_path / "corpus.tok"
    tokenized.write(spec_of(corpus_files), tokenizer, str(out), progress=False)
    return out


def _meta(path):
    return json.loads((path / "corpus.json").read_text())


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / "tokens.int32").write_bytes((p / "tokens.int32").read_bytes()[:-8]),
     r"tokens.int32 has [\d,]+ bytes, but corpus.json counts [\d,]+ tokens .*truncated"),
    (lambda p: os.remove(p / "tokens.int32"), "tokens.int32 is missing"),
    (lambda p: os.remove(p / "doc_ends.npy"), "doc_ends.npy cannot be read"),
    (lambda p: (p / "corpus.json").write_text("{not json"), "corpus.json is not JSON"),
    (lambda p: (p / "corpus.json").write_text('{"format": "other"}'),
     "does not describe a tokenised corpus"),
    (lambda p: (p / "corpus.json").write_text(json.dumps(dict(_meta(p), documents=3))),
     "not the 3 document ends"),
    (lambda p: np.save(p / "doc_ends.npy", np.load(p / "doc_ends.npy")[::-1].copy()),
     "its ends must rise"),
    (lambda p: shutil.rmtree(p / "tokenizer"), "its tokenizer cannot be read"),
])
def test_a_damaged_corpus_is_named_with_what_is_wrong(written, damage, message):
    damage(written)
    with pytest.raises(tokenized.TokenizedCorpusError, match=message) as e:
        tokenized.TokenizedCorpus.open(str(written))
    assert str(written) in str(e.value) and "tl_jax tokenize" in str(e.value)


def test_a_corpus_of_a_newer_format_asks_for_a_newer_tl_jax(written):
    (written / "corpus.json").write_text(json.dumps(dict(_meta(written), version=99)))
    with pytest.raises(tokenized.TokenizedCorpusError, match="format version 99; this tl_jax "
                       "reads version 1 and older"):
        tokenized.TokenizedCorpus.open(str(written))


@pytest.mark.parametrize("chunk", [7, 1 << 22])
def test_a_stream_that_does_not_fit_its_documents_or_vocabulary_is_found_as_it_is_read(
        written, chunk, monkeypatch):
    """A stream shifted by a token (same size: the documents' ends no longer hold EOS), or with
    an id outside the vocabulary, fails when the windows are cut, naming the token."""
    tokens = np.fromfile(written / "tokens.int32", "<i4")
    corpus = tokenized.TokenizedCorpus.open(str(written))
    everything = np.arange(corpus.num_documents)
    monkeypatch.setattr(clm_data.document_blocks, "__defaults__", (0, None, chunk))
    want = clm_data.make_blocks(tokens, 16)
    got = corpus.blocks(everything, 16)
    np.testing.assert_array_equal(got[0], want[0])
    np.concatenate([tokens[1:], tokens[:1]]).tofile(written / "tokens.int32")
    with pytest.raises(tokenized.TokenizedCorpusError,
                       match=r"document 0 does not end with <\|endoftext\|> \(id 0\) at token "):
        corpus.blocks(everything, 16)
    bad = tokens.copy()
    bad[9] = 300
    bad.tofile(written / "tokens.int32")
    with pytest.raises(tokenized.TokenizedCorpusError, match="token 9 has id 300, outside its "
                       "vocabulary of 300"):
        corpus.blocks(everything, 16)


def gpt_config(corpus, *extra):
    return config_lib.load_config("configs/gpt_pretrain.py:tiny", [
        f"data.corpus={corpus}", "data.seq_len=16", "model.max_len=16",
        "data.eval_fraction=0.2", "train.progress=False", *extra])


@pytest.mark.parametrize("extra", [(), ("data.max_documents=40",)])
def test_a_clm_run_on_the_tokenised_corpus_gets_the_windows_of_its_text(
        tmp_path, tokenizer, corpus_files, written, extra):
    """Same tokenizer, same held-out documents, same windows: a run on the tokenised corpus
    trains on exactly what the run on its text would."""
    saved = tmp_path / "bpe"
    tokenizer.save(str(saved))
    text = clm.Task(gpt_config(spec_of(corpus_files), f"data.tokenizer={saved}", *extra), None)
    tok = clm.Task(gpt_config(written, *extra), None)
    assert tok.tokenizer.hf_tokenizer.get_vocab() == tokenizer.hf_tokenizer.get_vocab()
    assert tok.model_config == text.model_config
    for a, b in ((tok.train_blocks, text.train_blocks), (tok.eval_blocks, text.eval_blocks)):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    batch = next(iter(tok.train_batches()))
    want = next(iter(text.train_batches()))
    for key in want:
        np.testing.assert_array_equal(batch[key], want[key])


def test_a_run_with_another_vocabulary_is_refused(tmp_path, data_dir, written):
    docs = sources.load_documents(str(data_dir / "polarity_sentences.jsonl"))
    other = bpe.BPETokenizer.train((u for d in docs[500:900] for u in d), vocab_size=300,
                                   progress=False)
    other.save(str(tmp_path / "other"))
    with pytest.raises(tokenized.TokenizedCorpusError, match=r"was tokenised with another "
                       r"vocabulary \(300 tokens, .*corpus.tok/tokenizer\) than this run's"):
        clm.Task(gpt_config(written, f"data.tokenizer={tmp_path / 'other'}"), None)
    # Its own tokenizer named as data.tokenizer is no conflict.
    clm.Task(gpt_config(written, f"data.tokenizer={written / 'tokenizer'}"), None)


def test_a_tokenised_corpus_given_to_a_text_reader_is_named(written):
    with pytest.raises(sources.SourceError, match="is a tokenised corpus .*GPT, BERT, ELECTRA, "
                       "distillation and biLM runs read one given alone as data.corpus"):
        sources.load_documents(f"{written},{written}")


def test_the_tokenize_command_writes_a_corpus_a_clm_workdir_trains_on(
        tmp_path, tokenizer, corpus_files, capsys, monkeypatch):
    """`tl_jax tokenize` with a clm workdir as its tokenizer (its tokenizer/ is taken), then
    its errors: one line each."""
    monkeypatch.delenv("TL_JAX_TRACEBACK", raising=False)
    workdir = tmp_path / "lm"
    (workdir / "checkpoints").mkdir(parents=True)
    tokenizer.save(str(workdir / "tokenizer"))
    out = tmp_path / "out.tok"
    main.main(["tokenize", f"--corpus={spec_of(corpus_files)}", f"--tokenizer={workdir}",
               f"--output={out}"])
    said = capsys.readouterr().out
    assert f"tokenizer: {workdir}/tokenizer (300 tokens, byte-level BPE: for GPT)" in said
    assert "57 documents" in said and f"--config.data.corpus={out}" in said
    corpus = tokenized.TokenizedCorpus.open(str(out))
    assert corpus.num_documents == 57
    for argv, message in (
            ([f"--tokenizer={workdir}", f"--output={out}"], "already exists"),
            ([f"--tokenizer={tmp_path / 'none'}", f"--output={tmp_path / 'o2'}"],
             "no such file or folder"),
            ([f"--tokenizer={workdir}", f"--output={tmp_path / 'o3'}", "--text_field=body"],
             "body")):
        with pytest.raises(SystemExit) as e:
            main.main(["tokenize", f"--corpus={spec_of(corpus_files)}"] + argv)
        assert str(e.value.code).startswith("tl_jax: error: ") and message in str(e.value.code)
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()
    assert not (tmp_path / "o3.partial").exists()



def test_the_tokenize_command_trains_a_bpe_on_the_corpus_without_a_tokenizer(
        tmp_path, corpus_files, capsys, monkeypatch):
    """--vocab_size=N in place of --tokenizer: a byte-level BPE of N tokens trained on the whole
    corpus, saved with it; the stream decodes back to the text. Neither or both is an error,
    as is a vocabulary too small for the bytes, named before the corpus is read."""
    one_of = ("give one of --tokenizer=PATH (a vocabulary to tokenise with, for GPT or BERT), "
              "--vocab_size=N (train a byte-level BPE of N tokens on the corpus, for GPT, or "
              "with --wordpiece a WordPiece vocabulary, for BERT) or --words (the ELMo biLM's "
              "words), not ")
    monkeypatch.delenv("TL_JAX_TRACEBACK", raising=False)
    out = tmp_path / "out.tok"
    main.main(["tokenize", f"--corpus={spec_of(corpus_files)}", "--vocab_size=280",
               f"--output={out}"])
    assert "Training a byte-level BPE of 280 tokens" in capsys.readouterr().out
    corpus = tokenized.TokenizedCorpus.open(str(out))
    assert corpus.tokenizer.vocab_size == 280
    documents = sources.load_documents(spec_of(corpus_files))
    starts = np.concatenate([[0], corpus.doc_ends[:-1]])
    for i in (0, 31, len(documents) - 1):
        ids = corpus.tokens[starts[i]:corpus.doc_ends[i] - 1]
        assert corpus.tokenizer.decode(ids) == "\n".join(documents[i])
    for argv, message in (
            ([], one_of + "none"),
            ([f"--tokenizer={out / 'tokenizer'}", "--vocab_size=300"],
             one_of + "--tokenizer and --vocab_size"),
            (["--vocab_size=300", "--words"], one_of + "--vocab_size and --words"),
            (["--vocab_size=100"], "--vocab_size=100 is too small for a byte-level BPE"),
            (["--vocab_size=5", "--wordpiece"],
             "--vocab_size=5 is too small for a WordPiece vocabulary"),
            ([f"--tokenizer={out / 'tokenizer'}", "--wordpiece"], "--wordpiece trains a "
             "WordPiece vocabulary of --vocab_size=N tokens: give the size"),
            (["--wordpiece"], "--wordpiece trains a WordPiece vocabulary of --vocab_size=N "
             "tokens: give the size"),  # not "give one of --tokenizer=PATH, ... not none"
            (["--vocab_size=0", "--wordpiece"], "--vocab_size=0 must be a number of tokens, at "
             "least 1"),  # as above, though it was given
            (["--vocab_size=0"], "--vocab_size=0 must be a number of tokens, at least 1"),
            ([f"--tokenizer={tmp_path / 'config.json'}"], f"--tokenizer={tmp_path}/config.json:"
             f" {tmp_path}/config.json is not a tokenizer.json (it names no tokenizer model; a "
             "model's config.json?)"),
            (["--vocab_size=300", "--cased"], "--cased keeps the case of a WordPiece "
             "vocabulary trained with --vocab_size=N --wordpiece")):
        (tmp_path / "config.json").write_text('{"model_type": "bert", "hidden_size": 8}')
        with pytest.raises(SystemExit) as e:
            main.main(["tokenize", "--corpus=/no/such/corpus.txt", f"--output={tmp_path / 'o'}"]
                      + argv)
        assert str(e.value.code).startswith(f"tl_jax: error: {message}")
    assert not (tmp_path / "o").exists()


def test_sources_are_read_one_file_at_a_time(corpus_files, monkeypatch):
    """`stream_sources` opens a file only when its documents are taken, after the one
    before has been read to its end; `load_documents` is their concatenation."""
    opened = []
    open_text = sources._open_text
    monkeypatch.setattr(sources, "_open_text",
                        lambda path, *a: opened.append(os.path.basename(path)) or
                        open_text(path, *a))
    seen = []
    for source, _, documents in sources.stream_sources(spec_of(corpus_files)):
        assert opened == seen  # nothing opened ahead, not even this source
        seen.append(os.path.basename(source))
        assert next(documents, None) is not None and opened == seen
        list(documents)  # read to its end before the next source is asked for
    assert seen == ["a.jsonl", "b.jsonl", "c.txt"]
    assert [d for _, _, docs in sources.stream_sources(spec_of(corpus_files)) for d, _ in docs] \
        == sources.load_documents(spec_of(corpus_files))
    (corpus_files / "empty.txt").write_text("\n\n")
    with pytest.raises(sources.SourceError, match="contains no text"):
        sources.load_documents(str(corpus_files / "empty.txt"))


@pytest.mark.parametrize("layout", ["documents", "sentences", "words"])
def test_a_corpus_is_tokenised_as_it_is_read_a_batch_at_a_time(tmp_path, tokenizer, data_dir,
                                                               corpus_files, monkeypatch, layout):
    """`write` reads a batch of documents (about `batch_chars` characters) at a time and
    writes its ids before reading on: the first batch is tokenised long before the file's end,
    so a corpus of one huge file is never held as text. Small batches write the same folder as
    one batch of everything."""
    from tl_jax.data import tokenizer as wordpiece

    vocabulary = {"documents": tokenizer, "words": None,
                  "sentences": wordpiece.Tokenizer.train_wordpiece(
                      sources.load_documents(spec_of(corpus_files)), vocab_size=200,
                      progress=False)}[layout]
    spec = f"{data_dir}/enwiki_sample.jsonl,{spec_of(corpus_files)}"
    stream_sources, done = sources.stream_sources, []

    def recorded(*args, **kwargs):  # what has been read of each source so far
        for source, size, documents in stream_sources(*args, **kwargs):
            done.append([0, size])
            yield source, size, (done[-1].__setitem__(0, pair[1]) or pair for pair in documents)

    read_at_batches = []
    real_batches = tokenized._document_batches
    monkeypatch.setattr(sources, "stream_sources", recorded)
    monkeypatch.setattr(tokenized, "_document_batches", lambda documents, batch_chars: (
        read_at_batches.append(tuple(done[-1])) or batch
        for batch in real_batches(documents, batch_chars)))
    tokenized.write(spec, vocabulary, str(tmp_path / "small"), progress=False,
                    batch_chars=100_000)
    enwiki_size = os.path.getsize(data_dir / "enwiki_sample.jsonl")
    enwiki = [read for read, size in read_at_batches if size == enwiki_size]
    assert len(enwiki) > 10 and enwiki[0] < enwiki_size / 10 and enwiki[-1] == enwiki_size
    assert enwiki == sorted(enwiki)
    tokenized.write(spec, vocabulary, str(tmp_path / "whole"), progress=False,
                    batch_chars=1 << 40)
    for name in sorted(os.listdir(tmp_path / "whole")):
        if name != "tokenizer":
            assert (tmp_path / "small" / name).read_bytes() == \
                (tmp_path / "whole" / name).read_bytes(), name


@pytest.fixture()
def austen_documents(tmp_path, data_dir):
    """60 documents of a few Austen paragraphs each (several sentences: NSP pairs of both
    kinds), as jsonl grouped by a doc_id."""
    rows = [json.loads(line)["text"] for _, line in zip(range(240), open(data_dir / "austen.jsonl"))]
    path = tmp_path / "austen60.jsonl"
    path.write_text("".join(json.dumps({"doc_id": i // 4, "text": t}) + "\n"
                            for i, t in enumerate(rows)))
    return path


def bert_data(corpus, *extra):
    from tl_jax.data import pretraining
    config = config_lib.load_config("configs/bert_pretrain.py:tiny", [
        f"data.corpus={corpus}", "data.max_seq_length=32", "data.batch_size=8",
        "data.eval_batch_size=8", "data.eval_fraction=0.1", *extra])
    return pretraining.build_pretraining_data(config.data, 64, None, seed=0, progress=False)


@pytest.mark.parametrize("extra", [(), ("data.max_documents=40",)])
def test_a_bert_run_on_the_tokenised_corpus_gets_the_instances_of_its_text(
        tmp_path, austen_documents, extra):
    """WordPiece: the folder keeps sentences and documents, and a BERT run on it has the
    training and held-out instances, and so the batches, of a run on the text."""
    from tl_jax.data import tokenizer as wordpiece
    docs = sources.load_documents(str(austen_documents))
    vocab = wordpiece.Tokenizer.train_wordpiece(docs, vocab_size=400, progress=False)
    vocab.save(str(tmp_path / "wp"))
    out = tmp_path / "austen.tok"
    meta = tokenized.write(str(austen_documents), vocab, str(out), progress=False)
    assert meta["layout"] == "sentences" and meta["documents"] == 60
    text = bert_data(austen_documents, f"data.tokenizer={tmp_path / 'wp'}", *extra)
    tok = bert_data(out, *extra)
    assert tok.tokenizer.hf_tokenizer.get_vocab() == vocab.hf_tokenizer.get_vocab()
    assert (tok.num_train_instances, tok.num_eval_instances) == (
        text.num_train_instances, text.num_eval_instances) and text.num_eval_instances > 0
    for a, b in ((next(tok.train), next(text.train)), (next(iter(tok.eval_batches())),
                                                       next(iter(text.eval_batches())))):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    other = wordpiece.Tokenizer.train_wordpiece(docs[:20], vocab_size=300, progress=False)
    other.save(str(tmp_path / "other"))
    with pytest.raises(ValueError, match=r"was tokenised with another vocabulary \(\d+ tokens"):
        bert_data(out, f"data.tokenizer={tmp_path / 'other'}")


def test_a_corpus_tokenised_for_the_other_model_is_named(tmp_path, written, austen_documents):
    from tl_jax.data import tokenizer as wordpiece
    docs = sources.load_documents(str(austen_documents))
    wordpiece.Tokenizer.train_wordpiece(docs, vocab_size=300, progress=False).save(
        str(tmp_path / "wp"))
    main.main(["tokenize", f"--corpus={austen_documents}", f"--tokenizer={tmp_path / 'wp'}",
               f"--output={tmp_path / 'bert.tok'}"])
    with pytest.raises(tokenized.TokenizedCorpusError, match=r"was made for GPT \(`clm`\) "
                       r"runs, with a byte-level BPE; this run reads one made for BERT"):
        bert_data(written)
    with pytest.raises(tokenized.TokenizedCorpusError, match="was made for BERT, ELECTRA and "
                       "distillation runs, with a WordPiece vocabulary; this run reads one "
                       "made for GPT"):
        clm.Task(gpt_config(tmp_path / "bert.tok"), None)


def test_a_damaged_bert_corpus_is_named(tmp_path, austen_documents):
    from tl_jax.data import tokenizer as wordpiece
    docs = sources.load_documents(str(austen_documents))
    vocab = wordpiece.Tokenizer.train_wordpiece(docs, vocab_size=300, progress=False)
    out = tmp_path / "bert.tok"
    tokenized.write(str(austen_documents), vocab, str(out), progress=False)
    ends = np.load(out / "doc_sentence_ends.npy")
    np.save(out / "doc_sentence_ends.npy", ends[:-1])
    with pytest.raises(tokenized.TokenizedCorpusError, match="doc_sentence_ends.npy holds "
                       r"int64 \(59,\), not the 60 document ends"):
        tokenized.TokenizedCorpus.open(str(out), layout="sentences")
    np.save(out / "doc_sentence_ends.npy", ends)
    tokens = np.fromfile(out / "tokens.int32", "<i4")
    tokens[7] = 300
    tokens.tofile(out / "tokens.int32")
    corpus = tokenized.TokenizedCorpus.open(str(out), layout="sentences")
    with pytest.raises(tokenized.TokenizedCorpusError, match="token 7 has id 300, outside its "
                       "vocabulary of 300"):
        corpus.sentence_documents()


def test_selected_sentence_documents_are_those_documents_alone():
    """`TokenizedDocuments.select`: the documents asked for, in that order, each with its own
    sentences; one left without a sentence (kept, empty, in a tokenised corpus) is dropped, as
    `tokenize_documents` of the text drops it."""
    from tl_jax.data.pretraining import TokenizedDocuments
    every = TokenizedDocuments.from_lists([[[1, 2]], [], [[3], [4, 5]], [[6, 7, 8], [9]]])
    assert len(every) == 4
    for take, want in (([0, 1, 2], [[[1, 2]], [[3], [4, 5]]]),
                       ([3, 0], [[[6, 7, 8], [9]], [[1, 2]]]),
                       ([1], [])):
        got = every.select(take)
        expected = TokenizedDocuments.from_lists(want)
        for field in ("tokens", "sentence_offsets", "document_offsets"):
            np.testing.assert_array_equal(getattr(got, field), getattr(expected, field), field)


# -- the biLM's words (`tl_jax tokenize --words`) -------------------------------------------

def bilm_task(corpus, *extra):
    from tl_jax.tasks import bilm
    config = config_lib.load_config("configs/elmo_pretrain.py:tiny", [
        f"data.corpus={corpus}", "train.progress=False", *extra])
    return bilm.Task(config, workdir=None)


@pytest.fixture()
def words_written(tmp_path, austen_documents):
    out = tmp_path / "words.tok"
    tokenized.write(str(austen_documents), None, str(out), progress=False)
    return out


@pytest.mark.parametrize("max_len", [3, 7, 16, 200])
def test_word_pieces_are_the_units_of_the_text_framed(words_written, austen_documents, max_len):
    """Each unit's words, cut at every max_len - 2 and framed by <S> ... </S>, as
    `encode_units` frames the text: pieces, their order and their spellings, whole and for the
    first units alone (a cut that ends within a document)."""
    from tl_jax.tasks import bilm
    units = [u for d in sources.load_documents(str(austen_documents)) for u in d]
    corpus = tokenized.TokenizedCorpus.open(str(words_written), layout="words")
    assert corpus.meta["units"] == len(units) == 240
    for max_units in (0, 1, 37):
        want_spellings, want = bilm.encode_units(units[:max_units] if max_units else units,
                                                 max_len)
        spellings, types = corpus.word_pieces(max_len, max_units)
        assert types.shape == want.shape and types.dtype == np.int32
        np.testing.assert_array_equal(np.asarray(spellings, object)[types],
                                      np.asarray(want_spellings, object)[want])
    with pytest.raises(ValueError, match="data.max_len must be >= 3"):
        corpus.word_pieces(2)


@pytest.mark.parametrize("extra", [(), ("data.max_units=50", "data.eval_fraction=0.2")])
def test_a_bilm_run_on_the_words_corpus_gets_the_data_of_its_text(
        words_written, austen_documents, extra):
    """The vocabulary (counted by the run: min_count, max_vocab), the training and held-out
    pieces and the first batches are the text's."""
    text, tok = bilm_task(austen_documents, *extra), bilm_task(words_written, *extra)
    assert tok.vocab == text.vocab and len(text.vocab) > 100
    assert len(tok.train_data) == len(text.train_data) and text.eval_data is not None
    for a, b in ((tok.train_data, text.train_data), (tok.eval_data, text.eval_data)):
        for field in ("types", "type_words", "type_chars", "lengths"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), field)
    for a, b in ((next(tok.train_batches()), next(text.train_batches())),
                 (tok.eval_batches()[-1], text.eval_batches()[-1])):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    smaller = bilm_task(words_written, "data.max_vocab=50", "data.min_count=1", *extra)
    assert smaller.vocab == text.vocab[:50]


def _replace_line(path, n, line):
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[n] = line
    path.write_text("\n".join(lines), encoding="utf-8")


@pytest.mark.parametrize("damage, message", [
    (lambda p: _replace_line(p / "spellings.txt", 10, p.joinpath("spellings.txt").read_text(
        encoding="utf-8").split("\n")[11]), "spellings.txt does not start with <pad>, <S>, "
     "</S> or holds a spelling twice"),
    (lambda p: _replace_line(p / "spellings.txt", 0, "<unk>"), "does not start with <pad>"),
    (lambda p: (p / "spellings.txt").write_text("<pad>\n<S>\n</S>\nthe\n"),
     r"spellings.txt has 4 lines, but the ids were written with [\d,]+ spellings"),
    (lambda p: os.remove(p / "spellings.txt"), "spellings.txt cannot be read"),
    (lambda p: os.remove(p / "unit_ends.npy"), "unit_ends.npy cannot be read"),
    (lambda p: np.save(p / "unit_ends.npy", np.load(p / "unit_ends.npy")[:-1]),
     r"unit_ends.npy holds int64 \(239,\), not the 240 unit ends"),
    (lambda p: (p / "corpus.json").write_text(json.dumps(
        {k: v for k, v in _meta(p).items() if k != "units"})), "has no valid 'units'"),
])
def test_a_damaged_words_corpus_is_named(words_written, damage, message):
    damage(words_written)
    with pytest.raises(tokenized.TokenizedCorpusError, match=message) as e:
        bilm_task(words_written)
    assert str(words_written) in str(e.value) and "tl_jax tokenize" in str(e.value)


def test_words_outside_the_spellings_are_found_as_they_are_read(words_written):
    n = _meta(words_written)["vocab_size"]
    tokens = np.fromfile(words_written / "tokens.int32", "<i4")
    tokens[123] = n
    tokens.tofile(words_written / "tokens.int32")
    with pytest.raises(tokenized.TokenizedCorpusError, match=f"token 123 has id {n}, outside "
                       f"its {n:,} spellings"):
        bilm_task(words_written)


def test_a_words_corpus_and_a_gpt_or_bert_one_are_not_mistaken(tmp_path, written,
                                                               words_written):
    with pytest.raises(tokenized.TokenizedCorpusError, match=r"was made for GPT \(`clm`\) runs, "
                       r"with a byte-level BPE; this run reads one made for ELMo biLM \(`bilm`\) "
                       r"runs, as cased words and punctuation: tokenise the text again with "
                       r"`tl_jax tokenize --words`"):
        bilm_task(written)
    with pytest.raises(tokenized.TokenizedCorpusError, match=r"was made for ELMo biLM .* this "
                       r"run reads one made for GPT .*`tl_jax tokenize --tokenizer=` a "
                       r"byte-level BPE"):
        clm.Task(gpt_config(words_written), None)
    with pytest.raises(tokenized.TokenizedCorpusError, match=r"was made for ELMo biLM .* this "
                       r"run reads one made for BERT"):
        bert_data(words_written)


def test_the_tokenize_command_writes_words_a_bilm_reads(tmp_path, austen_documents, capsys):
    """`tl_jax tokenize --words`: the folder a biLM config reads as the text (training on it,
    through `tl_jax train`, is tested in test_multiprocess.py, two processes against one on the
    text)."""
    out = tmp_path / "words.tok"
    main.main(["tokenize", f"--corpus={austen_documents}", "--words", f"--output={out}"])
    said, bars = capsys.readouterr()
    # Off a terminal, the bar of the file's bytes read closes with a line.
    size = tqdm.format_sizeof(os.path.getsize(austen_documents)) + "B"  # e.g. 51.2kB
    assert f"[tokenising {austen_documents}] {size}/{size} (100%) | done in " in bars
    assert "[tokenize] words: cased words and punctuation, for the ELMo biLM" in said
    assert "60 documents" in said and "distinct spellings" in said
    assert f"--config.data.corpus={out} (an elmo_pretrain config)" in said
    assert bilm_task(out).vocab == bilm_task(austen_documents).vocab


@pytest.mark.parametrize("cased", [False, True])
def test_the_tokenize_command_trains_a_wordpiece_vocabulary_a_bert_run_takes(
        tmp_path, austen_documents, capsys, monkeypatch, cased):
    """--vocab_size=N --wordpiece: the vocabulary `train_wordpiece` makes of the whole corpus
    (the same pieces; lower-cased unless --cased), trained on its files read afresh, saved with
    the sentences a BERT run then reads with it."""
    from tl_jax.data import tokenizer as wordpiece
    reads = []
    for name in ("stream_sources", "iter_documents"):
        monkeypatch.setattr(sources, name, functools.partial(
            lambda read, name, *a, **k: reads.append(name) or read(*a, **k),
            getattr(sources, name), name))
    out = tmp_path / "bert.tok"
    main.main(["tokenize", f"--corpus={austen_documents}", "--vocab_size=400", "--wordpiece",
               f"--output={out}"] + (["--cased"] if cased else []))
    said = capsys.readouterr().out
    assert (f"Training a {'cased' if cased else 'lower-cased'} WordPiece vocabulary of 400 "
            "tokens") in said and "(a bert_pretrain, electra_pretrain or distill config)" in said
    # Two passes to train (`iter_documents`, which reads through `stream_sources`) and one to
    # tokenise, each a document at a time.
    assert reads == ["iter_documents", "stream_sources"] * 2 + ["stream_sources"]
    corpus = tokenized.TokenizedCorpus.open(str(out), layout="sentences")
    want = wordpiece.Tokenizer.train_wordpiece(sources.load_documents(str(austen_documents)),
                                               vocab_size=400, lowercase=not cased,
                                               progress=False)
    assert corpus.tokenizer.hf_tokenizer.get_vocab() == want.hf_tokenizer.get_vocab()
    assert corpus.tokenizer.encode("Emma Woodhouse") == want.encode("Emma Woodhouse")
    assert any(t.lstrip("#")[:1].isupper() for t in corpus.tokenizer.hf_tokenizer.get_vocab()
               if not t.startswith("[")) == cased
    data = bert_data(out)
    assert data.num_train_instances > 0 and data.tokenizer.vocab_size == 400

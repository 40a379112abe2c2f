"""WordPiece tokenizer: id parity with transformers, save/load round trip, word starts, errors."""
import json
import shutil

import numpy as np
import pytest
import tokenizers

from tl_jax.data.tokenizer import SPECIAL_TOKENS, Tokenizer, TokenizerError


@pytest.fixture(scope="module")
def texts(data_dir):
    """Real paragraphs: Austen (quotes, dashes, old spelling) and Wikipedia (accents, digits)."""
    out = []
    for name, count in (("austen.jsonl", 150), ("enwiki_sample.jsonl", 150)):
        with open(data_dir / name, encoding="utf-8") as f:
            for _, line in zip(range(count), f):
                out.append(json.loads(line)["text"])
    out += ["Naïve café in Zürich – 東京 😀 ", "", "   ", "UPPER lower MiXeD", "a" * 150,
            "a [MASK] and [SEP] in text"]
    return out


@pytest.fixture(scope="module")
def minilm_dir(data_dir):
    return data_dir / "models" / "all-MiniLM-L6-v2"


def _hf_ids(vocab_dir, texts):
    from transformers import BertTokenizerFast

    hf = BertTokenizerFast.from_pretrained(str(vocab_dir))
    return hf(texts, add_special_tokens=False)["input_ids"]


def test_ids_match_hf_bert_tokenizer_on_real_text(texts, minilm_dir, tmp_path):
    shutil.copy(minilm_dir / "vocab.txt", tmp_path / "vocab.txt")
    expected = _hf_ids(tmp_path, texts)
    from_vocab = Tokenizer.load(str(minilm_dir / "vocab.txt"))
    assert from_vocab.encode_batch(texts) == expected
    assert [from_vocab.encode(t) for t in texts[:20]] == expected[:20]
    assert from_vocab.vocab_size == 30522
    assert from_vocab.special_ids == [0, 100, 101, 102, 103]
    assert (from_vocab.pad_id, from_vocab.unk_id, from_vocab.cls_id, from_vocab.sep_id,
            from_vocab.mask_id) == (0, 100, 101, 102, 103)


def test_tokenizer_json_padding_and_truncation_are_disabled(texts, minilm_dir):
    # This tokenizer.json pads and truncates to 128; for pretraining that would corrupt segments.
    tok = Tokenizer.load(str(minilm_dir / "tokenizer.json"))
    from_vocab = Tokenizer.load(str(minilm_dir / "vocab.txt"))
    long_text = " ".join(texts[:5])
    ids = tok.encode(long_text)
    assert len(ids) > 128 and 0 not in ids
    assert ids == from_vocab.encode(long_text)
    assert tok.encode("short") == from_vocab.encode("short")
    # A directory prefers its tokenizer.json.
    assert Tokenizer.load(str(minilm_dir)).source.endswith("tokenizer.json")


def test_train_save_load_round_trip_and_hf_reads_it(texts, tmp_path):
    documents = [texts[i:i + 10] for i in range(0, len(texts), 10)]
    tok = Tokenizer.train_wordpiece(documents, vocab_size=1200)
    assert 600 < tok.vocab_size <= 1200
    assert tok.special_ids == [0, 1, 2, 3, 4]
    tok.save(str(tmp_path / "tok"))
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["tokenizer.json", "vocab.txt"]
    vocab_lines = (tmp_path / "tok" / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert vocab_lines[:5] == list(SPECIAL_TOKENS) and len(vocab_lines) == tok.vocab_size
    assert [tok.token_to_id(t) for t in vocab_lines] == list(range(tok.vocab_size))
    expected = tok.encode_batch(texts)
    for path in ("tok", "tok/tokenizer.json", "tok/vocab.txt"):
        loaded = Tokenizer.load(str(tmp_path / path))
        assert loaded.vocab_size == tok.vocab_size
        assert loaded.encode_batch(texts) == expected, path
    # Our vocab.txt is a standard BERT vocabulary: transformers gives the same ids.
    (tmp_path / "tok" / "tokenizer.json").unlink()
    assert _hf_ids(tmp_path / "tok", texts) == expected
    # The saved pipeline adds the BERT layout for downstream users.
    pair = tok.hf_tokenizer.encode("a b", "c")
    assert pair.ids[0] == tok.cls_id and pair.ids.count(tok.sep_id) == 2
    assert pair.type_ids == [0] * (pair.ids.index(tok.sep_id) + 1) + [1] * (
        len(pair.ids) - pair.ids.index(tok.sep_id) - 1)


def test_lowercase_option(texts):
    documents = [texts[:100]]
    cased = Tokenizer.train_wordpiece(documents, vocab_size=800, lowercase=False)
    uncased = Tokenizer.train_wordpiece(documents, vocab_size=800, lowercase=True)
    assert cased.decode(cased.encode("The The")) == "The The"
    assert uncased.decode(uncased.encode("The The")) == "the the"
    assert cased.encode("The") != cased.encode("the")


def test_a_cased_vocab_txt_is_not_lowercased(texts, tmp_path, capsys):
    # A Hugging Face directory with a cased vocab.txt and no tokenizer.json (bert-base-cased's
    # layout): `do_lower_case: false` was ignored, so fine-tuning from it lowercased every word
    # ("Paris" -> "paris", or [UNK]) unlike transformers' BertTokenizer.
    from transformers import BertTokenizer

    from tl_jax.data import pretraining
    cased = Tokenizer.train_wordpiece([texts[:100]], vocab_size=800, lowercase=False)
    hf_dir = tmp_path / "cased"
    cased.save(str(hf_dir))
    (hf_dir / "tokenizer.json").unlink()
    (hf_dir / "tokenizer_config.json").write_text('{"do_lower_case": false}')
    text = "Elizabeth said THE The the"
    expected = BertTokenizer.from_pretrained(str(hf_dir))(text, add_special_tokens=False)
    loaded = Tokenizer.load(str(hf_dir))
    assert loaded.encode(text) == expected["input_ids"]
    assert loaded.decode(loaded.encode(text)) == text
    # An explicit setting still wins (a bare vocab.txt has no other source).
    forced = Tokenizer.load(str(hf_dir), lowercase=True)
    assert forced.decode(forced.encode("The THE")) == "the the"
    # Pretraining from it follows the file, and says so when data.lowercase disagrees.
    data_cfg = type("D", (), dict(tokenizer=str(hf_dir), lowercase=True))
    got = pretraining._get_tokenizer(data_cfg, [], None, 0)
    assert got.encode(text) == expected["input_ids"]
    assert "comes with do_lower_case=False (its tokenizer_config.json)" in capsys.readouterr().out
    (hf_dir / "tokenizer_config.json").write_text('{"do_lower_case": "no"}')
    with pytest.raises(TokenizerError, match=r"tokenizer_config.json: do_lower_case must be "
                                             r"true or false, got \"no\""):
        Tokenizer.load(str(hf_dir))


@pytest.mark.parametrize("settings", [
    {"do_lower_case": True, "strip_accents": False},
    {"do_lower_case": False, "strip_accents": True},
    {"do_lower_case": True, "tokenize_chinese_chars": False},
])
def test_vocab_txt_follows_strip_accents_and_chinese_chars_of_its_config(settings, minilm_dir,
                                                                         tmp_path):
    # A vocab.txt + tokenizer_config.json directory (no tokenizer.json): only do_lower_case was
    # read, so an uncased model with `strip_accents: false` (its "é" pieces) had its accents
    # stripped, a cased one with `strip_accents: true` kept them, and `tokenize_chinese_chars:
    # false` still split CJK characters: ids silently unlike BertTokenizerFast's.
    from transformers import BertTokenizerFast

    shutil.copy(minilm_dir / "vocab.txt", tmp_path / "vocab.txt")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(settings))
    texts = ["Héllo Wörld café naïve résumé", "ÀÉÎÕÜ àéîõü", "e\u0301 combining",
             "日本語のテキスト、ひらがな", "hello中国world 東京"]
    expected = BertTokenizerFast.from_pretrained(str(tmp_path))(
        texts, add_special_tokens=False)["input_ids"]
    default = Tokenizer.load(str(minilm_dir / "vocab.txt"),
                             lowercase=settings["do_lower_case"])
    assert [default.encode(t) for t in texts] != expected  # the settings matter for these texts
    assert [Tokenizer.load(str(tmp_path)).encode(t) for t in texts] == expected
    assert [Tokenizer.load(str(tmp_path / "vocab.txt")).encode(t) for t in texts] == expected
    (tmp_path / "tokenizer_config.json").write_text('{"strip_accents": "yes"}')
    with pytest.raises(TokenizerError, match=r"strip_accents must be true, false or null"):
        Tokenizer.load(str(tmp_path))


@pytest.mark.parametrize("settings", [
    {"do_lower_case": False}, {"strip_accents": False}, {"tokenize_chinese_chars": False},
])
def test_tokenizer_config_settings_win_over_tokenizer_json_normaliser(settings, minilm_dir,
                                                                      tmp_path):
    # transformers' BertTokenizerFast.from_pretrained builds the normaliser from
    # tokenizer_config.json's do_lower_case / strip_accents / tokenize_chinese_chars, whatever
    # tokenizer.json stores; Tokenizer.load read tokenizer.json's only: other ids, silently.
    from transformers import BertTokenizerFast

    for name in ("vocab.txt", "tokenizer.json"):
        shutil.copy(minilm_dir / name, tmp_path / name)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        dict(settings, tokenizer_class="BertTokenizer")))
    texts = ["Héllo WORLD café naïve", "Ångström résumé", "hello中国world 東京"]
    expected = BertTokenizerFast.from_pretrained(str(tmp_path))(
        texts, add_special_tokens=False)["input_ids"]
    stored = Tokenizer.load(str(minilm_dir / "tokenizer.json"))
    assert [stored.encode(t) for t in texts] != expected  # the settings matter for these texts
    for path in (tmp_path, tmp_path / "tokenizer.json"):
        assert [Tokenizer.load(str(path)).encode(t) for t in texts] == expected


def test_word_starts_agree_with_pretokenizer_words(texts, minilm_dir):
    tok = Tokenizer.load(str(minilm_dir / "vocab.txt"))
    pieces = 0
    for text in texts:
        ids, word_ids = tok.encode_with_word_ids(text)
        starts = tok.word_starts(ids)
        # A token starts a word exactly when its pre-tokenised word differs from the previous
        # token's; an [UNK] word is one token, so it starts a word too.
        expected = [i == 0 or word_ids[i] != word_ids[i - 1] for i in range(len(ids))]
        assert starts.tolist() == expected
        pieces += int((~starts).sum())
    assert pieces > 100  # the property was exercised on real '##' pieces
    assert tok.is_special(tok.special_ids).all()
    pool = tok.non_special_ids()
    assert len(pool) == tok.vocab_size - 5 and not np.isin(tok.special_ids, pool).any()


def test_decode_inverts_encode_on_plain_text(minilm_dir):
    tok = Tokenizer.load(str(minilm_dir / "vocab.txt"))
    text = "the quick brown fox jumps over the lazy dog, said elizabeth."
    assert tok.encode("a [MASK] b")[1] == tok.mask_id
    assert tok.decode(tok.encode(text)) == text
    ids = [tok.cls_id] + tok.encode("hello") + [tok.sep_id]
    assert tok.decode(ids) == "hello"
    assert tok.decode(ids, skip_special_tokens=False) == "[CLS] hello [SEP]"


def test_errors(tmp_path):
    (tmp_path / "v1.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"lacks the special token\(s\) \['\[MASK\]'\]"):
        Tokenizer.load(str(tmp_path / "v1.txt"))
    (tmp_path / "v2.txt").write_text("[UNK]\n[PAD]\n[CLS]\n[SEP]\n[MASK]\nhi\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"\[PAD\] at id 1; it must be 0"):
        Tokenizer.load(str(tmp_path / "v2.txt"))
    (tmp_path / "v3.txt").write_text("[PAD]\n[CLS]\n[SEP]\n[MASK]\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"lacks the special token\(s\) \['\[UNK\]'\]"):
        Tokenizer.load(str(tmp_path / "v3.txt"))
    (tmp_path / "v4.txt").write_text("[PAD]\n[UNK]\n[UNK]\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"v4.txt:3: duplicate token"):
        Tokenizer.load(str(tmp_path / "v4.txt"))
    # A byte-order mark (Windows editors) is not part of the first token.
    (tmp_path / "v5.txt").write_bytes(b"\xef\xbb\xbf[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhi\n")
    assert Tokenizer.load(str(tmp_path / "v5.txt")).pad_id == 0
    (tmp_path / "v6.txt").write_bytes(b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\ncaf\xe9\n")
    with pytest.raises(TokenizerError, match=r"v6.txt:6: not UTF-8 text \(byte b'\\xe9'"):
        Tokenizer.load(str(tmp_path / "v6.txt"))
    with pytest.raises(TokenizerError, match="Tokenizer file not found"):
        Tokenizer.load(str(tmp_path / "missing.txt"))
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(TokenizerError, match="neither tokenizer.json nor vocab.txt"):
        Tokenizer.load(str(tmp_path / "emptydir"))
    # A BPE tokenizer.json (GPT-2, RoBERTa), even one holding BERT's special tokens.
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE(
        vocab={"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "a": 5, "b": 6,
               "ab": 7}, merges=[("a", "b")], unk_token="[UNK]"))
    bpe.save(str(tmp_path / "bpe.json"))
    with pytest.raises(TokenizerError, match=r"bpe.json is a BPE tokenizer; BERT needs a WordPiece"):
        Tokenizer.load(str(tmp_path / "bpe.json"))
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(TokenizerError, match="Cannot read tokenizer file"):
        Tokenizer.load(str(tmp_path / "bad.json"))


def test_tokenizer_files_with_a_byte_order_mark_load(texts, minilm_dir, tmp_path):
    """tokenizer.json with a byte-order mark failed as "expected value at line 1 column 1", a
    tokenizer_config.json with one as "Unexpected UTF-8 BOM"; vocab.txt already took one."""
    folder = tmp_path / "bom"
    folder.mkdir()
    text = (minilm_dir / "tokenizer.json").read_text(encoding="utf-8")
    (folder / "tokenizer.json").write_text("\ufeff" + text, encoding="utf-8")
    # A cased setting, so that reading it shows: it wins over tokenizer.json's normaliser.
    (folder / "tokenizer_config.json").write_text('\ufeff{"do_lower_case": false}',
                                                  encoding="utf-8")
    loaded = Tokenizer.load(str(folder))
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "tokenizer.json").write_text(text, encoding="utf-8")
    (tmp_path / "plain" / "tokenizer_config.json").write_text('{"do_lower_case": false}')
    plain = Tokenizer.load(str(tmp_path / "plain"))
    assert [loaded.encode(t) for t in texts] == [plain.encode(t) for t in texts]
    assert loaded.encode("Emma") != Tokenizer.load(str(minilm_dir)).encode("Emma")  # cased


def test_training_is_deterministic(texts):
    # tokenizers numbers its trained alphabet in hash-map order, which changes on every run;
    # our ids must not, or a resumed run or a second host would disagree with the first.
    # Its `##` pieces are numbered that way too and break ties between merges, so on this
    # corpus and size the vocabulary itself came out one of two ways, about half the time
    # each (tokenizers#1794): 8 equal draws by chance would be a 1-in-128 event.
    documents = [texts[i:i + 10] for i in range(0, len(texts), 10)]
    vocabs = [Tokenizer.train_wordpiece(documents, vocab_size=1500).hf_tokenizer.get_vocab()
              for _ in range(8)]
    assert all(v == vocabs[0] for v in vocabs)
    assert len(vocabs[0]) == 1500


class _Stderr:
    """A stand-in for sys.stderr that says whether it is a terminal."""

    def __init__(self, tty):
        self.tty = tty

    def isatty(self):
        return self.tty

    def write(self, text):
        return len(text)

    def flush(self):
        pass


@pytest.fixture
def trainer_requests(monkeypatch):
    """The `show_progress` each tokenizers trainer is built with, in order."""
    from tl_jax.data import bpe
    from tl_jax.data import tokenizer as wordpiece

    asked = []

    def recording(trainer_class):
        def make(**kwargs):
            asked.append(kwargs["show_progress"])
            return trainer_class(**kwargs)
        return make

    # Each module's own `trainers`: once transformers has imported the `tokenizers.trainers`
    # submodule, `from tokenizers import trainers` gives another module object than theirs.
    monkeypatch.setattr(wordpiece.trainers, "WordPieceTrainer",
                        recording(wordpiece.trainers.WordPieceTrainer))
    monkeypatch.setattr(bpe.trainers, "BpeTrainer", recording(bpe.trainers.BpeTrainer))
    return asked


@pytest.mark.parametrize("tty", [True, False])
@pytest.mark.parametrize("progress", [True, False, None])
def test_tokenizer_trainers_show_their_progress_on_a_terminal_only(tty, progress, texts,
                                                                   trainer_requests, monkeypatch):
    """Training a vocabulary on a large corpus takes minutes: on a terminal the tokenizers
    trainer shows its own progress bars (it printed nothing between the start and end lines);
    in a log file, CI or a test's captured output it stays quiet, and so it does when the
    caller says progress=False (a run with train.progress=False, a process other than 0), which
    drew the bars anyway. None: the argument left out, as a script would."""
    import sys

    from tl_jax.data import bpe

    monkeypatch.setattr(sys, "stderr", _Stderr(tty))
    given = {} if progress is None else {"progress": progress}
    Tokenizer.train_wordpiece([texts[:20]], vocab_size=300, **given)
    bpe.BPETokenizer.train(texts[:20], vocab_size=300, **given)
    shown = tty and progress is not False
    assert trainer_requests == [shown, shown]


def _config(spec, tmp_path, texts, progress):
    """`spec` with train.progress=`progress`, reading a corpus of 10 small documents (for the
    GPT) and training its own vocabulary."""
    corpus = tmp_path / "corpus.jsonl"
    lines = [t for t in texts if t.strip()][:200]
    corpus.write_text("".join(json.dumps({"book": f"b{i // 20}", "text": t}) + "\n"
                              for i, t in enumerate(lines)), encoding="utf-8")
    overrides = [f"train.progress={progress}"]
    if spec.startswith("configs/gpt_pretrain.py"):
        overrides += [f"data.corpus={corpus}", "data.tokenizer_vocab_size=300"]
    else:
        overrides += ["data.tokenizer=", "data.tokenizer_vocab_size=300"]
    from tl_jax import config as config_lib

    return config_lib.load_config(spec, overrides)


@pytest.mark.parametrize("progress", [True, False])
def test_tasks_pass_train_progress_to_the_tokenizer_trainers(progress, texts, trainer_requests,
                                                            tmp_path, monkeypatch, capsys):
    """The GPT (clm), the GPT classifier and the BERT fine-tuning tasks train a vocabulary of
    their own with train.progress=False too: the trainer drew its bars on a terminal all the
    same. (BERT, ELECTRA and distillation pretraining: test_data_pretraining.py.)"""
    import sys

    from tl_jax.tasks import clm, downstream, lm_classify

    monkeypatch.setattr(sys, "stderr", _Stderr(True))
    clm.Task(_config("configs/gpt_pretrain.py:tiny", tmp_path, texts, progress), None)
    lm_classify.resolve_model(
        _config("configs/gpt_finetune_classify.py:tiny", tmp_path, texts, progress), texts[:50])
    downstream.Encoder.from_config(
        _config("configs/finetune_classify.py:tiny", tmp_path, texts, progress), texts[:50])
    assert trainer_requests == [progress] * 3


# Text the BERT normaliser and pre-tokeniser treat with care: characters it drops (control
# characters Python takes for whitespace, a zero-width space, U+FFFD), so joining the words
# beside them; whitespace other than spaces (NBSP, ideographic space, tabs); CJK characters it
# spaces out; letters whose lower case is two characters (İ) or depends on the end of a word
# (Σ); combining marks it strips or reorders at the start of a word (U+1D16D, U+1D165: spacing
# marks that NFD reorders and keeps); ASCII symbols it counts as punctuation; astral
# characters; runs of spaces.
_AWKWARD_UNITS = [
    "İstanbul İİ ıI", "q\x0bж x\x1fю c\u200bщ e\ufffdf g\x00h", "x\u00a0y z\u3000w\ttab\r\nline",
    "東京大学で学ぶ 東x", "ΟΔΟΣ ΟΔΟΣ. ὈΔΥΣΣΕΎΣ", " \U0001D16D\U0001D165x \u0301\u0316y Zu\u0308rich",
    "don't x--y $5 a^b c|d e~f `g` <h>", "😀😀 a😀 😀b", "  lots   of   spaces  ", "", " ",
    "ＦＵＬＬ ｗｉｄｔｈ ß ﬁne Ⅻ", "Naïve café Zürich – é e\u0301", "ا\u064bلعربية हिन्दी",
]


def _old_continuation_characters(units, tok):
    """The `##` characters as train_wordpiece collected them before it was made faster (a
    Python pass over every unit's words): the reference the fast version must equal."""
    continuation = set()
    for unit in units:
        normalized = tok.normalizer.normalize_str(unit)
        for word, _ in tok.pre_tokenizer.pre_tokenize_str(normalized):
            continuation.update(word[1:])
    return sorted(continuation)


def _old_train_wordpiece_vocab(documents, vocab_size, lowercase):
    """train_wordpiece's vocabulary as it was trained before its `##` pass was made faster."""
    from tokenizers import models, trainers

    from tl_jax.data.tokenizer import CONTINUATION_PREFIX, UNK, _bert_pipeline

    tok = _bert_pipeline(models.WordPiece(unk_token=UNK, max_input_chars_per_word=100), lowercase)
    units = [unit for document in documents for unit in document]
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=2, continuing_subword_prefix=CONTINUATION_PREFIX,
        show_progress=False, special_tokens=list(SPECIAL_TOKENS) + [
            CONTINUATION_PREFIX + ch for ch in _old_continuation_characters(units, tok)])
    tok.train_from_iterator(iter(units), trainer=trainer, length=len(units))
    trained = tok.get_vocab(with_added_tokens=True)
    ordered = list(SPECIAL_TOKENS) + sorted(t for t in trained if t not in SPECIAL_TOKENS)
    return {t: i for i, t in enumerate(ordered)}


@pytest.fixture(scope="module")
def corpus_sample(data_dir):
    """A quarter of austen + enwiki_sample (every 4th document, 1.6M characters) and the
    awkward units as a document of their own."""
    from tl_jax.data.sources import load_documents

    documents = load_documents(f"{data_dir / 'austen.jsonl'},{data_dir / 'enwiki_sample.jsonl'}")
    return documents[::4] + [_AWKWARD_UNITS]


@pytest.mark.parametrize("lowercase,strip_accents", [(True, None), (False, None), (False, True)])
def test_continuation_characters_are_those_of_a_pass_over_every_word(
        lowercase, strip_accents, corpus_sample):
    """The fast `##` pass (distinct pieces normalised once, characters classified once) finds
    exactly the characters the per-word Python pass found, on real text and on text the
    normaliser changes in awkward ways, cased and uncased, with and without accent stripping."""
    from tokenizers import models

    from tl_jax.data.tokenizer import UNK, _bert_pipeline, _continuation_characters

    tok = _bert_pipeline(models.WordPiece(unk_token=UNK), lowercase, strip_accents)
    units = [unit for document in corpus_sample for unit in document]
    expected = _old_continuation_characters(units, tok)
    assert _continuation_characters(iter(units), tok) == expected
    assert _continuation_characters(_AWKWARD_UNITS, tok) == _old_continuation_characters(
        _AWKWARD_UNITS, tok)
    assert _continuation_characters([], tok) == []


@pytest.mark.parametrize("lowercase", [True, False])
def test_trained_vocabulary_is_the_one_trained_before_the_faster_pass(lowercase, corpus_sample):
    """Making the `##` pass faster changed no trained vocabulary (tokens and ids)."""
    new = Tokenizer.train_wordpiece(corpus_sample, vocab_size=8192, lowercase=lowercase)
    assert new.hf_tokenizer.get_vocab() == _old_train_wordpiece_vocab(corpus_sample, 8192,
                                                                      lowercase)


def test_batched_ids_are_the_offset_computing_paths_ids(texts, minilm_dir):
    """`batch_ids` (tokenizers' encode_batch_fast, which skips offsets) gives the ids
    `encode_batch` and `encode` give, for WordPiece and byte-level BPE, with special tokens in
    the text taken as text or not; without encode_batch_fast (tokenizers < 0.20) it falls back
    to encode_batch."""
    from tl_jax.data import bpe
    from tl_jax.data.tokenizer import batch_ids

    class Old:  # a tokenizers.Tokenizer before encode_batch_fast
        def __init__(self, tok):
            self.encode_batch = tok.encode_batch

    wordpiece = Tokenizer.load(str(minilm_dir / "vocab.txt"))._tok
    gpt = bpe.BPETokenizer.train(texts, vocab_size=400, progress=False)._tok
    for tok in (wordpiece, gpt):
        assert hasattr(tok, "encode_batch_fast")  # the tested path: tokenizers >= 0.20 here
        for as_text in (False, True):
            tok.encode_special_tokens = as_text
            want = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
            assert batch_ids(tok, texts) == want == batch_ids(Old(tok), texts)
            assert want[:30] == [tok.encode(t, add_special_tokens=False).ids for t in texts[:30]]
            assert any(want)
        tok.encode_special_tokens = False


def test_a_workdir_gives_its_saved_tokenizer_and_a_config_json_is_named(minilm_dir, tmp_path):
    """data.tokenizer=WORKDIR reads WORKDIR/tokenizer/, as `tl_jax tokenize --tokenizer=`
    does; a folder whose tokenizer/ is not a workdir's is pointed to it; a model's config.json
    (JSON, but no tokenizer) is named as such, not as tokenizers' parse error."""
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    with pytest.raises(TokenizerError) as e:
        Tokenizer.load(str(workdir))
    assert str(e.value) == (f"Directory {workdir} holds neither tokenizer.json nor vocab.txt "
                            "(it is a tl_jax workdir without a saved tokenizer/).")
    Tokenizer.load(str(minilm_dir)).save(str(workdir / "tokenizer"))
    loaded = Tokenizer.load(str(workdir))
    assert loaded.source == str(workdir / "tokenizer" / "tokenizer.json")
    assert loaded.encode("Emma went") == Tokenizer.load(str(minilm_dir)).encode("Emma went")
    shutil.rmtree(workdir / "checkpoints")  # a folder with a tokenizer/, not a workdir
    with pytest.raises(TokenizerError) as e:
        Tokenizer.load(str(workdir))
    assert str(e.value) == (f"Directory {workdir} holds neither tokenizer.json nor vocab.txt; "
                            f"its tokenizer/ holds one: name {workdir / 'tokenizer'}.")
    config = tmp_path / "model" / "config.json"
    config.parent.mkdir()
    shutil.copy(minilm_dir / "config.json", config)
    with pytest.raises(TokenizerError) as e:
        Tokenizer.load(str(config))
    assert str(e.value) == (f"{config} is not a tokenizer file (a tokenizers tokenizer.json or "
                            "a WordPiece vocab.txt) but JSON of another kind, such as a model's "
                            "config.json; name the tokenizer the weights were trained with, or "
                            "the folder holding it")
    shutil.copy(minilm_dir / "vocab.txt", config.parent / "vocab.txt")
    with pytest.raises(TokenizerError, match=r"config.json is not a tokenizer file .* name the "
                                             r"folder that holds the tokenizer, .*model$"):
        Tokenizer.load(str(config))
    (tmp_path / "run.json").write_text('{"model": {"size": "mini"}}')  # a run's config
    with pytest.raises(TokenizerError, match=r"run.json is not a tokenizer file"):
        Tokenizer.load(str(tmp_path / "run.json"))


def test_model_weights_without_a_tokenizer_are_named(tmp_path):
    """A `tl_jax convert` output of a Hugging Face folder without tokenizer files: weights and
    config.json, no vocabulary. It said only "holds neither tokenizer.json nor vocab.txt"."""
    weights = tmp_path / "notok_tl"
    weights.mkdir()
    (weights / "config.json").write_text('{"vocab_size": 30522}')
    (weights / "params.safetensors").write_bytes(b"")
    with pytest.raises(TokenizerError) as e:
        Tokenizer.load(str(weights))
    assert str(e.value) == (f"Directory {weights} holds a model (config.json) but no tokenizer "
                            "(neither tokenizer.json nor vocab.txt): name the tokenizer its "
                            "weights were trained with (a tokenizer.json, a vocab.txt or the "
                            "folder holding one)")

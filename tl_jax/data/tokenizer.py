"""BERT WordPiece tokenizer: train on a corpus, or load a `vocab.txt` / `tokenizer.json`.

A thin wrapper around Hugging Face `tokenizers.Tokenizer` with the BERT pipeline (BERT
normaliser with optional lower-casing, BERT pre-tokeniser, WordPiece with `##` continuation
pieces). Ids match `transformers.BertTokenizerFast` on the same vocabulary.

    tok = Tokenizer.train_wordpiece(documents, vocab_size=8192)
    tok.save("workdir/tokenizer")            # tokenizer.json + vocab.txt
    tok = Tokenizer.load("workdir/tokenizer")
    ids = tok.encode("Hello world")          # no [CLS]/[SEP]; the example builder adds them
    starts = tok.word_starts(ids)            # False on '##' pieces: for whole-word masking

The five special tokens [PAD] [UNK] [CLS] [SEP] [MASK] must exist, and [PAD] must be id 0
because batches are padded with zeros.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Callable, Iterable, Sequence

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from tl_jax.progress import on_terminal

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
CONTINUATION_PREFIX = "##"


def vocab_lowercase(path: str) -> bool | None:
    """`do_lower_case` of the `tokenizer_config.json` beside the `vocab.txt` that `Tokenizer.load`
    would read from `path` (a file or a directory); None when it reads a `tokenizer.json` (which
    carries its own normaliser) or there is no such setting."""
    return _vocab_settings(path).get("do_lower_case")


# tokenizer_config.json settings that shape BertTokenizer(Fast)'s normaliser, and their types.
_NORMALIZER_SETTINGS = {"do_lower_case": (bool,), "strip_accents": (bool, type(None)),
                        "tokenize_chinese_chars": (bool,)}


def _vocab_settings(path: str) -> dict:
    """The normaliser settings (`_NORMALIZER_SETTINGS`) given in the `tokenizer_config.json`
    beside the `vocab.txt` that `Tokenizer.load` would read from `path`; empty when it reads a
    `tokenizer.json` or there is no such file. A key is present only when the file sets it."""
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "tokenizer.json")):
        return {}
    if path.endswith(".json"):
        return {}
    return normalizer_settings(directory)


def normalizer_settings(directory: str) -> dict:
    """The normaliser settings the `tokenizer_config.json` in `directory` sets (see
    `_vocab_settings`)."""
    config_file = os.path.join(directory, "tokenizer_config.json")
    if not os.path.isfile(config_file):
        return {}
    try:
        with open(config_file, encoding="utf-8-sig") as f:  # a byte-order mark is no error
            settings = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise TokenizerError(f"Cannot read {config_file}: {e}") from None
    if not isinstance(settings, dict):
        return {}
    found = {}
    for key, types in _NORMALIZER_SETTINGS.items():
        if key not in settings:
            continue
        value = settings[key]
        if key != "strip_accents" and value is None:
            continue  # null: transformers' default
        if not isinstance(value, types):
            allowed = "true, false or null" if key == "strip_accents" else "true or false"
            raise TokenizerError(f"{config_file}: {key} must be {allowed}, got "
                                 f"{json.dumps(value)}")
        found[key] = value
    return found


def apply_normalizer_settings(tok: tokenizers.Tokenizer, settings: dict) -> None:
    """Overrides the BERT normaliser of a `tokenizer.json` with the settings its
    `tokenizer_config.json` states, as transformers' BertTokenizer(Fast).from_pretrained does
    (the config's do_lower_case / strip_accents / tokenize_chinese_chars win over the
    normaliser stored in tokenizer.json). Settings the config leaves out keep tokenizer.json's
    value (transformers would put its defaults there; a config that leaves them out and a
    tokenizer.json that disagrees with those defaults is taken to mean tokenizer.json)."""
    normalizer = tok.normalizer
    if not settings or not isinstance(normalizer, normalizers.BertNormalizer):
        return
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=normalizer.clean_text,
        handle_chinese_chars=settings.get("tokenize_chinese_chars",
                                          normalizer.handle_chinese_chars),
        strip_accents=settings.get("strip_accents", normalizer.strip_accents),
        lowercase=settings.get("do_lower_case", normalizer.lowercase))


def read_json_text(path: str) -> str:
    """The text of a tokenizer's JSON file without a byte-order mark, which tokenizers' own
    reader takes for malformed JSON ("expected value at line 1 column 1")."""
    with open(path, encoding="utf-8-sig") as f:
        return f.read()


def batch_ids(tok: tokenizers.Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """The ids of each of `texts` (no special tokens added), through tokenizers' batched path.

    `encode_batch_fast` (tokenizers >= 0.20) gives the same ids without working out each
    token's offsets in the text: on the Austen text it took half the time and 1/6 less memory
    (which grows with the batch: ~180 bytes a character). Older versions use `encode_batch`.
    """
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    return [e.ids for e in encode(list(texts), add_special_tokens=False)]


class TokenizerError(ValueError):
    """A tokenizer file is missing or unusable for BERT pretraining."""


def _unreadable_json_message(path: str, error: Exception) -> str:
    """Why tokenizers could not read the .json file `path`: other JSON (a model's config.json,
    whose first key tokenizers' reader trips over) is named as not a tokenizer at all."""
    try:
        data = json.loads(read_json_text(path))
    except ValueError:  # not JSON: tokenizers' own words say where
        return f"Cannot read tokenizer file {path}: {error}"
    model = data.get("model") if isinstance(data, dict) else None
    if isinstance(model, dict) and "vocab" in model:  # a tokenizer.json tokenizers rejects
        return f"Cannot read tokenizer file {path}: {error}"
    folder = os.path.dirname(path) or "."
    where = (f"name the folder that holds the tokenizer, {folder}" if any(
        os.path.isfile(os.path.join(folder, *n)) for n in (
            ("tokenizer.json",), ("vocab.txt",), ("tokenizer", "tokenizer.json")))
        else "name the tokenizer the weights were trained with, or the folder holding it")
    return (f"{path} is not a tokenizer file (a tokenizers tokenizer.json or a WordPiece "
            f"vocab.txt) but JSON of another kind, such as a model's config.json; {where}")


def _bert_pipeline(model: models.Model, lowercase: bool, strip_accents: bool | None = None,
                   tokenize_chinese_chars: bool = True) -> tokenizers.Tokenizer:
    tok = tokenizers.Tokenizer(model)
    # strip_accents=None follows `lowercase`, as in BertTokenizerFast(do_lower_case=...).
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=tokenize_chinese_chars,
        strip_accents=strip_accents, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix=CONTINUATION_PREFIX)
    return tok


def _continuation_characters(units: Iterable[str], tok: tokenizers.Tokenizer) -> list[str]:
    """The characters, sorted, that follow another character inside a word of `units` once
    `tok`'s BERT normaliser and pre-tokeniser have run: those the WordPiece trainer makes a
    `##` piece of.

    Asking the normaliser and the pre-tokeniser about each unit, and walking its words in
    Python, took half the time a vocabulary of austen + enwiki_sample (7M characters) took to
    train, before the trainer showed anything. The same set comes from much less work (0.6 s
    there instead of 3.5 s):

    * Each distinct space-separated piece of the text is normalised once (a corpus repeats its
      words: 98k distinct pieces of 1.4M). That is what normalising the whole unit gives:
      BertNormalizer maps each character on its own (cleaning, spacing out CJK characters,
      lower-casing, stripping accents) and a space to a space, and the canonical reordering of
      accent stripping's NFD moves combining marks only within a run of them, which a space
      ends.
    * BertPreTokenizer splits at whitespace (dropped) and isolates punctuation, judging each
      character on its own; asked about each distinct character ("cc" is one word, two or
      none), it says which ones make words. A word character right after another word
      character is a continuation one: numpy finds them over the code points.
    """
    pieces = set()
    for unit in units:
        pieces.update(unit.split(" "))
    # Spaces between the pieces keep their words apart, as the spaces they were cut at did.
    text = " ".join([tok.normalizer.normalize_str(piece) for piece in pieces])
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    in_words = np.zeros(sys.maxunicode + 1, dtype=bool)
    for code in np.unique(codes):
        char = chr(code)
        in_words[code] = len(tok.pre_tokenizer.pre_tokenize_str(char + char)) == 1
    in_word = in_words[codes]
    following = codes[1:][in_word[1:] & in_word[:-1]]
    return [chr(code) for code in np.unique(following)]


class Tokenizer:
    """BERT WordPiece tokenizer with the ids the pretraining pipeline needs.

    Build it with `train_wordpiece` or `load`; the constructor takes a ready
    `tokenizers.Tokenizer` (which it changes in place: padding and truncation off, the five
    special tokens registered) and validates its special tokens.
    """

    def __init__(self, hf_tokenizer: tokenizers.Tokenizer, source: str = "<in memory>"):
        # Encoding for pretraining wants raw ids: a tokenizer.json made for inference (e.g.
        # sentence-transformers) pads/truncates to 128 and would silently corrupt segments.
        hf_tokenizer.no_truncation()
        hf_tokenizer.no_padding()
        self._tok = hf_tokenizer
        self.source = source
        if not isinstance(hf_tokenizer.model, models.WordPiece):
            # A GPT-2/RoBERTa BPE (or a Unigram) tokenizer.json: its word starts are not marked
            # by '##' pieces, so even with BERT's special tokens it would mask and decode wrongly.
            raise TokenizerError(f"Tokenizer {source} is a {type(hf_tokenizer.model).__name__} "
                                 "tokenizer; BERT needs a WordPiece one (a BERT vocab.txt or "
                                 "tokenizer.json).")
        missing = [t for t in SPECIAL_TOKENS if hf_tokenizer.token_to_id(t) is None]
        if missing:
            raise TokenizerError(f"Tokenizer {source} lacks the special token(s) {missing}; BERT "
                                 f"pretraining needs all of {list(SPECIAL_TOKENS)}.")
        if self.pad_id != 0:
            raise TokenizerError(f"Tokenizer {source} has [PAD] at id {self.pad_id}; it must be 0 "
                                 "because batches are zero-padded.")
        # Registered as special (ids unchanged, they are in the vocabulary), as
        # BertTokenizerFast does: "[MASK]" in text stays one token, and decode can skip them.
        hf_tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
        self._vocab_size = hf_tokenizer.get_vocab_size(with_added_tokens=True)
        ids = sorted(hf_tokenizer.get_vocab(with_added_tokens=True).values())
        if ids != list(range(len(ids))):
            raise TokenizerError(f"Tokenizer {source} has non-contiguous ids (expected 0..{len(ids) - 1}).")
        prefix = getattr(hf_tokenizer.model, "continuing_subword_prefix", None) or CONTINUATION_PREFIX
        # Per-id flags, so word starts and maskable ids are one numpy gather per example.
        tokens = [hf_tokenizer.id_to_token(i) for i in range(self._vocab_size)]
        self._is_continuation = np.array([t.startswith(prefix) for t in tokens], dtype=bool)
        self._is_special = np.zeros(self._vocab_size, dtype=bool)
        self._is_special[self.special_ids] = True
        if hf_tokenizer.post_processor is None:
            # Our own encode() adds no special tokens, but a saved tokenizer.json should give
            # downstream users (fine-tuning, transformers) the standard BERT layout.
            hf_tokenizer.post_processor = processors.TemplateProcessing(
                single=f"{CLS}:0 $A:0 {SEP}:0",
                pair=f"{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",
                special_tokens=[(CLS, self.cls_id), (SEP, self.sep_id)],
            )

    # ---------------------------------------------------------------- construction

    @classmethod
    def train_wordpiece(
        cls,
        documents: Iterable[Sequence[str]],
        vocab_size: int,
        lowercase: bool = True,
        min_frequency: int = 2,
        progress: bool = True,
    ) -> "Tokenizer":
        """Trains a WordPiece vocabulary of at most `vocab_size` entries on the documents' text.

        `progress`: let the tokenizers trainer draw its progress bars on stderr, which it does
        when stderr is a terminal only. A script or notebook gets them by default; the tasks
        pass `train.progress` and whether they are process 0, so that a run with
        `train.progress=False` and the other processes of a multi-process run draw none."""
        documents = list(documents)
        return cls.train_wordpiece_on(lambda: (unit for document in documents
                                               for unit in document),
                                      vocab_size, lowercase, min_frequency, progress)

    @classmethod
    def train_wordpiece_on(
        cls,
        units: Callable[[], Iterable[str]],
        vocab_size: int,
        lowercase: bool = True,
        min_frequency: int = 2,
        progress: bool = True,
    ) -> "Tokenizer":
        """`train_wordpiece` on the text units that each call of `units()` gives afresh: it
        is called twice, so a corpus too large to hold can be read from its files each time
        (`tl_jax tokenize --vocab_size --wordpiece`)."""
        if vocab_size < len(SPECIAL_TOKENS) + 1:
            raise TokenizerError(f"vocab_size={vocab_size} is too small for a WordPiece vocabulary.")
        tok = _bert_pipeline(models.WordPiece(unk_token=UNK, max_input_chars_per_word=100), lowercase)
        # The trainer creates a `##c` piece for every character c it meets inside a word, with
        # ids in hash-map order, and breaks ties between equally frequent merges by those ids:
        # the vocabulary itself (not just its numbering) changed from run to run and process to
        # process (huggingface/tokenizers#1794). Registering the same pieces up front, sorted,
        # gives them fixed ids and so a deterministic vocabulary; the set of pieces is the
        # one the trainer would have created.
        count = [0]

        def counted():
            for unit in units():
                count[0] += 1
                yield unit

        continuation = _continuation_characters(counted(), tok)
        continuation_pieces = [CONTINUATION_PREFIX + ch for ch in continuation]
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            # In this order, so [PAD] is 0 (the pieces are renumbered below anyway).
            special_tokens=list(SPECIAL_TOKENS) + continuation_pieces,
            continuing_subword_prefix=CONTINUATION_PREFIX,
            # Its own progress bars (on stderr) on a terminal only: a large corpus takes minutes.
            show_progress=progress and on_terminal(),
        )
        tok.train_from_iterator(units(), trainer=trainer, length=count[0])
        # The trainer's vocabulary is deterministic as a set, but the ids of its initial
        # alphabet follow a hash-map order that changes from run to run (and process to
        # process). Ids must not depend on that: a resumed run, or a second host building its
        # own copy, has to agree with the first. WordPiece matching only looks at the set, so
        # renumbering (specials first, then sorted) changes no tokenisation.
        trained = tok.get_vocab(with_added_tokens=True)
        ordered = list(SPECIAL_TOKENS) + sorted(t for t in trained if t not in SPECIAL_TOKENS)
        model = models.WordPiece({t: i for i, t in enumerate(ordered)}, unk_token=UNK,
                                 max_input_chars_per_word=100)
        return cls(_bert_pipeline(model, lowercase),
                   source=f"<trained WordPiece, vocab_size={vocab_size}>")

    @classmethod
    def from_vocab(cls, vocab_path: str, lowercase: bool = True, strip_accents: bool | None = None,
                   tokenize_chinese_chars: bool = True) -> "Tokenizer":
        """Builds the BERT pipeline around a `vocab.txt` (one token per line, id = line index).

        `lowercase`, `strip_accents` (None: follow `lowercase`) and `tokenize_chinese_chars` are
        BertTokenizer's `do_lower_case`, `strip_accents` and `tokenize_chinese_chars`."""
        vocab = {}
        try:
            # utf-8-sig: a byte-order mark would be read as part of [PAD], which then goes missing.
            with open(vocab_path, encoding="utf-8-sig") as f:
                for index, line in enumerate(f):
                    token = line.rstrip("\n")
                    if token in vocab:
                        raise TokenizerError(
                            f"{vocab_path}:{index + 1}: duplicate token {token!r}.")
                    vocab[token] = index
        except UnicodeDecodeError as e:
            from tl_jax.data.sources import non_utf8_message

            raise TokenizerError(non_utf8_message(vocab_path, e)) from None
        if not vocab:
            raise TokenizerError(f"Vocabulary file {vocab_path} is empty.")
        if UNK not in vocab:
            raise TokenizerError(f"Tokenizer {vocab_path} lacks the special token(s) ['{UNK}']; "
                                 f"BERT pretraining needs all of {list(SPECIAL_TOKENS)}.")
        model = models.WordPiece(vocab, unk_token=UNK, max_input_chars_per_word=100)
        return cls(_bert_pipeline(model, lowercase, strip_accents, tokenize_chinese_chars),
                   source=vocab_path)

    @classmethod
    def load(cls, path: str, lowercase: bool | None = None) -> "Tokenizer":
        """Loads a `tokenizer.json`, a `vocab.txt`, or a directory holding one of them.

        A directory's `tokenizer.json` wins over its `vocab.txt` (it carries the normaliser
        settings, but the settings a `tokenizer_config.json` beside it states win over its BERT
        normaliser's, as in transformers' BertTokenizerFast.from_pretrained). `lowercase`
        applies to `vocab.txt` only; None (the default) takes `do_lower_case` from the
        `tokenizer_config.json` beside it, as transformers' BertTokenizer does (a cased model's
        vocabulary lowercased would turn capitalised words into other ids or [UNK]), and
        lowercases when there is none. Its `strip_accents` and `tokenize_chinese_chars` are
        followed too, as BertTokenizerFast.from_pretrained does (an uncased vocabulary with
        `strip_accents: false` keeps "é" as its own piece).
        """
        if os.path.isdir(path):
            for name in ("tokenizer.json", "vocab.txt"):
                if os.path.exists(os.path.join(path, name)):
                    return cls.load(os.path.join(path, name), lowercase)
            saved = os.path.join(path, "tokenizer")
            has_saved = any(os.path.isfile(os.path.join(saved, name))
                            for name in ("tokenizer.json", "vocab.txt"))
            workdir = os.path.isdir(os.path.join(path, "checkpoints"))
            if has_saved and workdir:
                # A tl_jax workdir: the tokenizer its weights were trained with, as `tl_jax
                # tokenize --tokenizer=WORKDIR` and fine-tuning's data.tokenizer take it.
                return cls.load(saved, lowercase)
            hint = (f"; its tokenizer/ holds one: name {saved}" if has_saved else
                    " (it is a tl_jax workdir without a saved tokenizer/)" if workdir else "")
            if not hint and os.path.isfile(os.path.join(path, "config.json")):
                # Weights without their vocabulary (a `tl_jax convert` of a Hugging Face
                # folder that had no tokenizer files): which tokenizer fits is not for us to say.
                raise TokenizerError(
                    f"Directory {path} holds a model (config.json) but no tokenizer (neither "
                    "tokenizer.json nor vocab.txt): name the tokenizer its weights were trained "
                    "with (a tokenizer.json, a vocab.txt or the folder holding one)")
            raise TokenizerError(
                f"Directory {path} holds neither tokenizer.json nor vocab.txt{hint}.")
        settings = {} if path.endswith(".json") else _vocab_settings(path)
        if lowercase is None and not path.endswith(".json"):
            lowercase = settings.get("do_lower_case", True)
        if not os.path.exists(path):
            raise TokenizerError(f"Tokenizer file not found: {path}")
        if path.endswith(".json"):
            try:
                tok = tokenizers.Tokenizer.from_str(read_json_text(path))
            except Exception as e:  # tokenizers raises a bare Exception on bad JSON.
                raise TokenizerError(_unreadable_json_message(path, e)) from None
            apply_normalizer_settings(tok, normalizer_settings(os.path.dirname(path)))
            return cls(tok, source=path)
        return cls.from_vocab(path, lowercase, strip_accents=settings.get("strip_accents"),
                              tokenize_chinese_chars=settings.get("tokenize_chinese_chars", True))

    def save(self, directory: str) -> None:
        """Writes `tokenizer.json` and `vocab.txt` (readable by `load` and by transformers)."""
        os.makedirs(directory, exist_ok=True)
        # Written under a temporary name and renamed, so a reader (a restarted run, another
        # host) never sees half a file.
        vocab_tmp = os.path.join(directory, f"vocab.txt.tmp{os.getpid()}")
        with open(vocab_tmp, "w", encoding="utf-8") as f:
            for i in range(self._vocab_size):
                f.write(self._tok.id_to_token(i) + "\n")
        os.replace(vocab_tmp, os.path.join(directory, "vocab.txt"))
        json_tmp = os.path.join(directory, f"tokenizer.json.tmp{os.getpid()}")
        self._tok.save(json_tmp)
        os.replace(json_tmp, os.path.join(directory, "tokenizer.json"))

    # ---------------------------------------------------------------- ids

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def pad_id(self) -> int:
        return self._tok.token_to_id(PAD)

    @property
    def unk_id(self) -> int:
        return self._tok.token_to_id(UNK)

    @property
    def cls_id(self) -> int:
        return self._tok.token_to_id(CLS)

    @property
    def sep_id(self) -> int:
        return self._tok.token_to_id(SEP)

    @property
    def mask_id(self) -> int:
        return self._tok.token_to_id(MASK)

    @property
    def special_ids(self) -> list[int]:
        """Ids of [PAD] [UNK] [CLS] [SEP] [MASK], in that order."""
        return [self._tok.token_to_id(t) for t in SPECIAL_TOKENS]

    @property
    def hf_tokenizer(self) -> tokenizers.Tokenizer:
        """The underlying `tokenizers.Tokenizer` (no padding/truncation)."""
        return self._tok

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, index: int) -> str | None:
        return self._tok.id_to_token(index)

    def non_special_ids(self) -> np.ndarray:
        """All ids except the special tokens: the pool for MLM's random replacements."""
        return np.flatnonzero(~self._is_special).astype(np.int32)

    # ---------------------------------------------------------------- encoding

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without [CLS]/[SEP]."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], special_tokens_as_text: bool = False
                     ) -> list[list[int]]:
        """`encode` over many texts at once (tokenizers' batched, native path).

        `special_tokens_as_text`: "[MASK]", "[SEP]", "[PAD]"... written in the text are ordinary
        text ("[", "mask", "]"), as for BERT's own pretraining data, rather than special tokens.
        """
        if not special_tokens_as_text:
            return batch_ids(self._tok, texts)
        self._tok.encode_special_tokens = True
        try:
            return batch_ids(self._tok, texts)
        finally:
            self._tok.encode_special_tokens = False

    def encode_with_word_ids(self, text: str) -> tuple[list[int], list[int]]:
        """Token ids and, per token, the index of the pre-tokenised word it came from."""
        encoding = self._tok.encode(text, add_special_tokens=False)
        return encoding.ids, list(encoding.word_ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def word_starts(self, ids) -> np.ndarray:
        """Bool array: True where a token begins a word (not a `##` piece), as BERT's
        whole-word masking defines words. Special tokens count as word starts."""
        ids = np.asarray(ids, dtype=np.int64)
        return ~self._is_continuation[ids]

    def is_special(self, ids) -> np.ndarray:
        """Bool array: True where the id is one of the five special tokens."""
        return self._is_special[np.asarray(ids, dtype=np.int64)]

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, source={self.source!r})"

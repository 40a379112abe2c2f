"""Tokenised corpora: a corpus tokenised once (`tl_jax tokenize`), read by each run as ids.

A pretraining run given a text corpus reads the whole text and tokenises it on every start and
on every process of a pod, holding the text as Python strings meanwhile (about 3 bytes a byte
of text, and ~40 minutes a host for 10 GB on two cores). A tokenised corpus is a folder:

    corpus.json     what it is: the format, its version and layout, the source spec, the
                    counts, and the tokenizer's size
    tokens.int32    the token ids, little-endian int32
    tokenizer/      the tokenizer they were made with, which becomes the run's

and, by layout (which the tokenizer decides):

  * "documents" (a byte-level BPE, for GPT / `clm`): the tokens are the stream a text run
    packs (each document's units joined by newlines, then <|endoftext|>), and `doc_ends.npy`
    (int64) says where each document ends in it, after its end-of-text;
  * "sentences" (WordPiece, for BERT, ELECTRA and distillation): the tokens are every sentence's
    ids, as `pretraining.tokenize_documents` splits and tokenises the text; `sentence_ends.npy`
    says where each sentence ends in them and `doc_sentence_ends.npy` where each document ends
    in the sentences (a document left without a sentence keeps its number, empty);
  * "words" (`tl_jax tokenize --words`, for the ELMo biLM): the tokens are every text unit's
    cased words and punctuation as `bilm.tokenize` splits them, each an id into
    `spellings.txt` (one spelling a line; the first three are <pad>, <S> and </S>), and
    `unit_ends.npy` says where each unit ends (a unit without a word keeps its number, empty).
    There is no vocabulary yet: each run counts its own from the ids (data.min_count,
    data.max_vocab), so one folder serves every biLM config.

A run names the folder as `data.corpus`, and gets the same held-out documents and the same
data as the text would give; the text is never read again. A GPT run reads the stream a chunk
at a time, checked as it is read, and keeps only its windows (`clm_data.document_blocks`);
BERT's and the biLM's read the ids whole, as they hold them anyway. `tokens` is also a
read-only memory map of the ids, for a look at them.

    write("books/*.jsonl", tokenizer, "books.tok")     # tl_jax tokenize
    corpus = TokenizedCorpus.open("books.tok", layout="documents")
    corpus.tokens, corpus.doc_ends, corpus.tokenizer
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np

from tl_jax.data import bpe, clm as clm_data, sources

FORMAT = "tl_jax.tokenized_corpus"
VERSION = 1
META_FILE = "corpus.json"
TOKENS_FILE = "tokens.int32"
ENDS_FILE = "doc_ends.npy"
SENTENCE_ENDS_FILE = "sentence_ends.npy"
DOC_SENTENCE_ENDS_FILE = "doc_sentence_ends.npy"
TOKENIZER_DIR = "tokenizer"
UNIT_ENDS_FILE = "unit_ends.npy"
SPELLINGS_FILE = "spellings.txt"
# What each layout is for, as errors say it.
LAYOUTS = {"documents": "GPT (`clm`) runs, with a byte-level BPE",
           "sentences": "BERT, ELECTRA and distillation runs, with a WordPiece vocabulary",
           "words": "ELMo biLM (`bilm`) runs, as cased words and punctuation"}
# How `tl_jax tokenize` makes a corpus of each layout, as errors say it.
HOW = {"documents": "`tl_jax tokenize --tokenizer=` a byte-level BPE",
       "sentences": "`tl_jax tokenize --tokenizer=` a WordPiece vocabulary",
       "words": "`tl_jax tokenize --words`"}


class TokenizedCorpusError(ValueError):
    """A tokenised corpus folder is incomplete, damaged or does not fit the run."""


def is_tokenized_corpus(path: str) -> bool:
    """Whether `path` is a folder `write` made (it has a corpus.json)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, META_FILE))


def layout_of(tokenizer) -> str:
    """"documents" for a byte-level BPE (GPT), "sentences" for WordPiece (BERT), "words" for
    None (the biLM's words, which need no vocabulary)."""
    if tokenizer is None:
        return "words"
    return "documents" if isinstance(tokenizer, bpe.BPETokenizer) else "sentences"


def write(spec: str, tokenizer, output: str, text_field: str = "text",
          group_field: str | None = None, progress: bool = True,
          batch_chars: int = 4_000_000) -> dict:
    """Tokenises the corpus `spec` names (as `data.corpus` would read it) with `tokenizer` (a
    `bpe.BPETokenizer`, a WordPiece `tokenizer.Tokenizer`, or None for the biLM's words:
    `layout_of`) into the folder `output`; returns its corpus.json.

    The text is read a batch of documents at a time (about `batch_chars` characters; a gensim
    corpus comes whole), and each batch's ids are appended to the file as they are made: a
    corpus of one huge file or dataset is never held as text. A bar per source shows how much
    of it has been read (bytes of a file, records of a tfds dataset). Everything is written
    into `output.partial` first and renamed into place at the end, so an interrupted or failed
    run leaves no folder a training run could mistake for a whole corpus. `output` must not
    exist (or be an empty folder): a corpus is never overwritten.
    """
    from tl_jax import progress as progress_lib
    from tl_jax.data import pretraining

    output = os.path.abspath(output)
    check_output(output)
    partial = output.rstrip(os.sep) + ".partial"
    if os.path.exists(partial):  # left by an interrupted run of this command
        shutil.rmtree(partial)
    os.makedirs(partial)
    layout = layout_of(tokenizer)
    n_documents = n_tokens = n_sentences = 0
    ends, sentence_ends, files = [], [], []
    spellings = {"<pad>": 0, "<S>": 1, "</S>": 2}  # "words": each spelling's id
    try:
        with open(os.path.join(partial, TOKENS_FILE), "wb") as stream:
            for source, size, documents in sources.stream_sources(spec, text_field, group_field,
                                                                  key="--corpus"):
                in_file = os.path.isfile(source)  # else a tfds or gensim source: documents
                bar = progress_lib.bar(total=size, desc=f"tokenising {source}",
                                       unit="B" if in_file else "doc", unit_scale=in_file,
                                       disable=not progress)
                n_source = 0
                with progress_lib.closed_on_error(bar):
                    for batch, done in _document_batches(documents, batch_chars):
                        if layout == "documents":
                            for ids, lengths in clm_data.packed_batches(batch, tokenizer):
                                stream.write(ids.astype("<i4", copy=False).tobytes())
                                ends.append(n_tokens + np.cumsum(lengths))
                                n_tokens += int(lengths.sum())
                        elif layout == "words":
                            ids, unit_ends = _word_ids(batch, spellings)
                            stream.write(ids.astype("<i4", copy=False).tobytes())
                            ends.append(n_tokens + unit_ends)
                            n_tokens += len(ids)
                        else:
                            tokens = pretraining.tokenize_documents(
                                batch, tokenizer, progress=False, keep_empty=True)
                            stream.write(tokens.tokens.astype("<i4", copy=False).tobytes())
                            sentence_ends.append(n_tokens + tokens.sentence_offsets[1:])
                            ends.append(n_sentences + tokens.document_offsets[1:])
                            n_tokens += len(tokens.tokens)
                            n_sentences += tokens.num_sentences
                        n_source += len(batch)
                        bar.update(done - bar.n)
                bar.close()
                n_documents += n_source
                files.append({"source": source, "documents": n_source})
        if n_tokens < 2:  # as `open` would refuse it, before a folder no run can use is made
            raise TokenizedCorpusError(f"--corpus={spec} gives {n_tokens} token(s): nothing to "
                                       "train on")
        meta = {"format": FORMAT, "version": VERSION, "layout": layout, "corpus": spec,
                "text_field": text_field, "group_field": group_field or "", "sources": files,
                "documents": n_documents, "tokens": n_tokens,
                "vocab_size": tokenizer.vocab_size if tokenizer is not None else len(spellings)}
        if layout == "documents":
            np.save(os.path.join(partial, ENDS_FILE), np.concatenate(ends).astype(np.int64))
            meta["eos_id"] = tokenizer.eos_id
        elif layout == "words":
            unit_ends = np.concatenate(ends).astype(np.int64)
            np.save(os.path.join(partial, UNIT_ENDS_FILE), unit_ends)
            meta["units"] = len(unit_ends)
            with open(os.path.join(partial, SPELLINGS_FILE), "w", encoding="utf-8") as f:
                f.write("\n".join(spellings) + "\n")
        else:
            np.save(os.path.join(partial, SENTENCE_ENDS_FILE),
                    np.concatenate(sentence_ends).astype(np.int64))
            np.save(os.path.join(partial, DOC_SENTENCE_ENDS_FILE),
                    np.concatenate(ends).astype(np.int64))
            meta["sentences"] = n_sentences
        if tokenizer is not None:
            tokenizer.save(os.path.join(partial, TOKENIZER_DIR))
        with open(os.path.join(partial, META_FILE), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
            f.write("\n")
        if os.path.isdir(output):  # an empty folder, checked above
            os.rmdir(output)
        os.replace(partial, output)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return meta


def _document_batches(documents, batch_chars: int):
    """`(documents, done)` for `sources.stream_sources`' `(document, done)` pairs, a batch at a
    time: documents until they hold `batch_chars` characters (a longer one alone), and the
    `done` of the last."""
    batch, chars, done = [], 0, 0
    for document, done in documents:
        batch.append(document)
        chars += sum(map(len, document))
        if chars >= batch_chars:
            yield batch, done
            batch, chars = [], 0
    if batch:
        yield batch, done


def _word_ids(documents, spellings: dict):
    """The biLM's words of every text unit of `documents` as ids into `spellings` (extended
    with the new ones), and where each unit ends in them: (ids int32, ends int64)."""
    import array

    from tl_jax.tasks.bilm import tokenize

    ids, ends = array.array("i"), array.array("q")
    for document in documents:
        for unit in document:
            ids.extend(spellings.setdefault(t, len(spellings)) for t in tokenize(unit))
            ends.append(len(ids))
    return np.frombuffer(ids, np.int32), np.frombuffer(ends, np.int64)


def check_output(output: str) -> None:
    """A tokenised corpus goes into a new (or empty) folder, never over anything."""
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
        raise TokenizedCorpusError(
            f"--output={output} already exists: remove it or name a new folder (a tokenised "
            "corpus is never overwritten)")


class TokenizedCorpus:
    """A folder `write` made, its description checked (`open`). "documents" layout: its stream
    read by `read` / `blocks`; "sentences": `sentence_documents`."""

    def __init__(self, path: str, meta: dict, tokens: np.ndarray, doc_ends: np.ndarray,
                 tokenizer, sentence_ends: np.ndarray | None = None):
        self.path, self.meta = path, meta
        self.tokens, self.doc_ends, self.tokenizer = tokens, doc_ends, tokenizer
        self.sentence_ends = sentence_ends  # "sentences" layout: doc_ends count sentences

    @property
    def num_documents(self) -> int:
        return len(self.doc_ends)

    @classmethod
    def open(cls, path: str, layout: str = "documents") -> "TokenizedCorpus":
        """Reads corpus.json, the ends and the tokenizer, and maps the ids. Every part is
        checked against corpus.json, so a damaged or half-copied folder is named with what is
        wrong, not read as a shorter corpus or with another vocabulary; a folder of the other
        `layout` (tokenised for GPT, given to BERT) is named as such."""
        meta_file = os.path.join(path, META_FILE)

        def broken(what: str) -> TokenizedCorpusError:
            return TokenizedCorpusError(
                f"tokenised corpus {path}: {what}; tokenise the corpus again with "
                "`tl_jax tokenize`")

        try:
            with open(meta_file, encoding="utf-8") as f:
                meta = json.load(f)
        except ValueError as e:
            raise broken(f"{META_FILE} is not JSON ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise broken(f"{META_FILE} does not describe a tokenised corpus (no "
                         f"\"format\": \"{FORMAT}\")")
        if not isinstance(meta.get("version"), int) or meta["version"] > VERSION:
            raise TokenizedCorpusError(
                f"tokenised corpus {path} has format version {meta.get('version')!r}; this "
                f"tl_jax reads version {VERSION} and older: update tl_jax, or tokenise again")
        if meta.get("layout") not in LAYOUTS:
            raise broken(f"{META_FILE} has no valid \"layout\" (one of {sorted(LAYOUTS)})")
        if meta["layout"] != layout:
            raise TokenizedCorpusError(
                f"tokenised corpus {path} was made for {LAYOUTS[meta['layout']]}; this run "
                f"reads one made for {LAYOUTS[layout]}: tokenise the text again with "
                f"{HOW[layout]}")
        counts = ("documents", "tokens", "vocab_size") + {
            "documents": ("eos_id",), "sentences": ("sentences",), "words": ("units",)}[layout]
        for key in counts:
            if not isinstance(meta.get(key), int) or meta[key] < 0:
                raise broken(f"{META_FILE} has no valid {key!r}")
        tokens_file = os.path.join(path, TOKENS_FILE)
        if not os.path.isfile(tokens_file):
            raise broken(f"{TOKENS_FILE} is missing")
        size = os.path.getsize(tokens_file)
        if size != 4 * meta["tokens"]:
            raise broken(f"{TOKENS_FILE} has {size:,} bytes, but {META_FILE} counts "
                         f"{meta['tokens']:,} tokens ({4 * meta['tokens']:,} bytes): it is "
                         "truncated or from another corpus")
        if meta["tokens"] < 2:
            raise broken(f"it holds {meta['tokens']} token(s): nothing to train on")
        tokens = np.memmap(tokens_file, dtype="<i4", mode="r", shape=(meta["tokens"],))

        def ends(name: str, count: int, total: int, what: str, of: str,
                 empty: bool) -> np.ndarray:
            """The int64 ends in `name`: `count` of them, cutting `total` `of` into `what`s:
            rising (or staying, where parts may be `empty`) and finishing at `total`."""
            try:
                values = np.load(os.path.join(path, name), allow_pickle=False)
            except (OSError, ValueError) as e:
                raise broken(f"{name} cannot be read ({e})") from None
            if values.ndim != 1 or values.dtype.kind not in "iu" or len(values) != count:
                raise broken(f"{name} holds {values.dtype} {values.shape}, not the {count:,} "
                             f"{what} ends {META_FILE} counts")
            values = values.astype(np.int64, copy=False)
            if (len(values) == 0 or values[-1] != total
                    or np.any(np.diff(values, prepend=0) < (0 if empty else 1))):
                raise broken(f"{name} does not cut the {total:,} {of} into {what}s (its ends "
                             "must rise and finish at the last one)")
            return values

        sentence_ends = None
        if layout == "documents":
            doc_ends = ends(ENDS_FILE, meta["documents"], meta["tokens"], "document", "tokens",
                            False)
        elif layout == "sentences":
            sentence_ends = ends(SENTENCE_ENDS_FILE, meta["sentences"], meta["tokens"],
                                 "sentence", "tokens", False)
            doc_ends = ends(DOC_SENTENCE_ENDS_FILE, meta["documents"], meta["sentences"],
                            "document", "sentences", True)
        else:
            # The units' ends, for there are no documents left: the biLM reads the units of
            # every document one after another.
            doc_ends = ends(UNIT_ENDS_FILE, meta["units"], meta["tokens"], "unit", "tokens",
                            True)
            return cls(path, meta, tokens, doc_ends, _read_spellings(path, meta, broken))
        tokenizer_dir = os.path.join(path, TOKENIZER_DIR)
        try:
            if layout == "documents":
                tokenizer = bpe.BPETokenizer.load(tokenizer_dir)
            else:
                from tl_jax.data.tokenizer import Tokenizer
                tokenizer = Tokenizer.load(tokenizer_dir)
        except ValueError as e:  # BPEError, TokenizerError
            raise broken(f"its tokenizer cannot be read ({e})") from None
        if tokenizer.vocab_size != meta["vocab_size"]:
            raise broken(f"its tokenizer has {tokenizer.vocab_size} tokens, but the ids were "
                         f"written with {meta['vocab_size']}")
        if layout == "documents" and tokenizer.eos_id != meta["eos_id"]:
            raise broken(f"its tokenizer's end-of-text id is {tokenizer.eos_id}, but the stream "
                         f"was written with {meta['eos_id']}")
        return cls(path, meta, tokens, doc_ends, tokenizer, sentence_ends)

    @property
    def unit_ends(self) -> np.ndarray:
        """"words" layout: where each text unit ends in the tokens."""
        return self.doc_ends

    @property
    def spellings(self) -> list[str]:
        """"words" layout: each id's spelling (what stands where the other layouts have a
        tokenizer)."""
        return self.tokenizer

    def word_pieces(self, max_len: int, max_units: int = 0) -> tuple[list[str], np.ndarray]:
        """"words" layout: `bilm.encode_units` of the first `max_units` units (0: all) read
        from the ids: (the spellings, types (N, max_len) int32), each unit cut into pieces of
        at most max_len - 2 words framed by <S> (1) and </S> (2), 0 after a piece's end. The
        ids are read whole (checked against the spellings); the pieces hold them anyway."""
        from tl_jax.tasks.bilm import check_max_len

        check_max_len(max_len)
        ends = self.unit_ends[:max_units] if max_units else self.unit_ends
        ids = self._read_ids(0, int(ends[-1]) if len(ends) else 0)
        starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
        width = max_len - 2
        n_pieces = -(-(ends - starts) // width)  # a unit without a word has none
        unit = np.repeat(np.arange(len(ends)), n_pieces)
        first = np.repeat(np.cumsum(n_pieces) - n_pieces, n_pieces)
        piece_start = starts[unit] + (np.arange(len(unit)) - first) * width
        piece_len = np.minimum(width, ends[unit] - piece_start)
        types = np.zeros((len(unit), max_len), np.int32)
        types[:, 0] = 1  # <S>
        for j in range(width):  # column j + 1 holds each piece's word j, where it has one
            rows = np.flatnonzero(piece_len > j)
            types[rows, j + 1] = ids[piece_start[rows] + j]
        types[np.arange(len(unit)), piece_len + 1] = 2  # </S>
        return self.spellings, types

    def sentence_documents(self):
        """"sentences" layout: every document as `pretraining.TokenizedDocuments` (those
        without a sentence kept, empty, so that indices are the text's documents), its ids read
        whole and checked against the vocabulary."""
        from tl_jax.data import pretraining

        tokens = self._read_ids(0, self.meta["tokens"])
        return pretraining.TokenizedDocuments(
            tokens, np.concatenate([[0], self.sentence_ends]),
            np.concatenate([[0], self.doc_ends]))

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens `[start, stop)` read from the file (not through the memory map, whose pages
        would count in the process's resident memory), checked: each id within the vocabulary,
        and end-of-text where each document ends. A stream cut, shifted or overwritten fails
        here, with where, rather than training on ids that mean nothing."""
        part = self._read_ids(start, stop)
        lo, hi = np.searchsorted(self.doc_ends, [start + 1, stop], side="left")
        hi += int(hi < len(self.doc_ends) and self.doc_ends[hi] == stop)
        ends = self.doc_ends[lo:hi] - 1 - start
        wrong = np.flatnonzero(part[ends] != self.meta["eos_id"])
        if len(wrong):
            document = lo + int(wrong[0])
            raise self._broken(
                f"document {document} does not end with <|endoftext|> (id "
                f"{self.meta['eos_id']}) at token {int(self.doc_ends[document]) - 1:,}: "
                f"{TOKENS_FILE} and {ENDS_FILE} do not belong together")
        return part

    def _read_ids(self, start: int, stop: int) -> np.ndarray:
        """Ids `[start, stop)` from the file, each checked to lie within the vocabulary."""
        part = np.fromfile(os.path.join(self.path, TOKENS_FILE), dtype="<i4",
                           count=stop - start, offset=4 * start)
        if len(part) != stop - start:
            raise self._broken(f"{TOKENS_FILE} ended at token {start + len(part):,}")
        bad = np.flatnonzero((part < 0) | (part >= self.meta["vocab_size"]))
        if len(bad):
            n = self.meta["vocab_size"]
            raise self._broken(f"token {start + int(bad[0]):,} has id {int(part[bad[0]])}, "
                               "outside " + (f"its {n:,} spellings" if self.meta["layout"] ==
                                             "words" else f"its vocabulary of {n}"))
        return part.astype(np.int32, copy=False)

    def check_vocabulary(self, tokenizer, source: str) -> None:
        """The run's `tokenizer` (from `source`, said in the error) must be the corpus's own
        vocabulary: its ids are fixed, and under another one they would stand for other
        tokens."""
        if tokenizer.hf_tokenizer.get_vocab() != self.tokenizer.hf_tokenizer.get_vocab():
            raise TokenizedCorpusError(
                f"data.corpus={self.path!r} was tokenised with another vocabulary "
                f"({self.tokenizer.vocab_size:,} tokens, {self.path}/{TOKENIZER_DIR}) than this "
                f"run's ({tokenizer.vocab_size:,} tokens, {source}): tokenise the text again "
                "with `tl_jax tokenize --tokenizer=` that one")

    def _broken(self, what: str) -> TokenizedCorpusError:
        return TokenizedCorpusError(f"tokenised corpus {self.path}: {what}; tokenise the corpus "
                                    "again with `tl_jax tokenize`")

    def blocks(self, documents: np.ndarray, seq_len: int):
        """`clm_data.make_blocks` of the documents `documents` (indices, in order) packed: the
        stream is read a chunk at a time (`read`, which checks it) and only their tokens kept."""
        return clm_data.document_blocks(self.tokens, self.doc_ends, documents, seq_len,
                                        read=self.read)


def _read_spellings(path: str, meta: dict, broken) -> list[str]:
    """"words" layout: spellings.txt, checked against corpus.json (a count) and itself (the
    markers first, no spelling twice: the runs count words by spelling)."""
    try:
        with open(os.path.join(path, SPELLINGS_FILE), encoding="utf-8") as f:
            spellings = f.read().split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise broken(f"{SPELLINGS_FILE} cannot be read ({e})") from None
    if spellings and spellings[-1] == "":
        spellings.pop()
    if len(spellings) != meta["vocab_size"]:
        raise broken(f"{SPELLINGS_FILE} has {len(spellings):,} lines, but the ids were written "
                     f"with {meta['vocab_size']:,} spellings")
    if spellings[:3] != ["<pad>", "<S>", "</S>"] or len(set(spellings)) != len(spellings):
        raise broken(f"{SPELLINGS_FILE} does not start with <pad>, <S>, </S> or holds a "
                     "spelling twice")
    return spellings


def load_tokenizer(path: str, flag: str):
    """(where it was read, the tokenizer) for `tl_jax tokenize --tokenizer=PATH`: a byte-level
    BPE (vocab.json + merges.txt, or a tokenizer.json of a BPE model) or a WordPiece vocabulary
    (vocab.txt, or a tokenizer.json of a WordPiece model), in a folder or named as a file; a
    tl_jax workdir gives its saved tokenizer/ (the one its weights were trained with)."""
    from tl_jax import warm_start
    from tl_jax.data.tokenizer import Tokenizer

    if not os.path.exists(path):
        raise TokenizedCorpusError(f"{flag}: no such file or folder")
    if warm_start.is_tl_workdir(path):
        if not os.path.isdir(os.path.join(path, TOKENIZER_DIR)):
            raise TokenizedCorpusError(f"{flag} is a tl_jax workdir without a saved tokenizer/")
        path = os.path.join(path, TOKENIZER_DIR)
    folder = path if os.path.isdir(path) else None
    if folder and all(os.path.isfile(os.path.join(folder, f))
                      for f in ("vocab.json", "merges.txt")):
        return path, bpe.BPETokenizer.load(path)
    json_file = os.path.join(folder, "tokenizer.json") if folder else path
    if os.path.isfile(json_file) and json_file.endswith(".json"):
        try:
            with open(json_file, encoding="utf-8-sig") as f:
                kind = (json.load(f).get("model") or {}).get("type")
        except (ValueError, AttributeError) as e:
            raise TokenizedCorpusError(
                f"{flag}: {json_file} is not a tokenizer.json ({e})") from None
        if kind == "BPE":
            return path, bpe.BPETokenizer.load(path)
        if kind == "WordPiece":
            return path, Tokenizer.load(path)
        if kind is None:  # valid JSON of another kind: a model's config.json, say
            raise TokenizedCorpusError(
                f"{flag}: {json_file} is not a tokenizer.json (it names no tokenizer model; a "
                "model's config.json?): name the tokenizer file, or the folder that holds it")
        raise TokenizedCorpusError(f"{flag}: {json_file} holds a {kind!r} model; tl_jax "
                                   "tokenises with a byte-level BPE (GPT) or WordPiece (BERT)")
    if os.path.isfile(os.path.join(folder, "vocab.txt") if folder else path):
        return path, Tokenizer.load(path)
    raise TokenizedCorpusError(f"{flag}: {path} holds no tokenizer (vocab.json + merges.txt, "
                               "tokenizer.json or vocab.txt)")


def run(corpus: str, tokenizer: str, output: str, text_field: str = "text",
        group_field: str = "", vocab_size: int | None = None, words: bool = False,
        wordpiece: bool = False, cased: bool = False) -> dict:
    """`tl_jax tokenize`: tokenise `corpus` with `tokenizer` into the folder `output`.

    `tokenizer` is a byte-level BPE (GPT) or a WordPiece vocabulary (BERT): see
    `load_tokenizer`. Without one, `vocab_size` > 0 trains a byte-level BPE of
    that many tokens on the whole corpus first (read a document at a time, then read again
    to tokenise): a clm run on text trains its BPE on the training documents only, so here the
    held-out documents' text is seen by the tokenizer, as GPT-2's BPE saw all of WebText.
    With `wordpiece` it trains a WordPiece vocabulary instead, as a bert_pretrain run does
    (lower-cased unless `cased`), reading the corpus twice more for it. `words` splits the
    text into the biLM's cased words (no vocabulary: each biLM run counts its own)."""
    from tl_jax import paths
    from tl_jax.data.tokenizer import SPECIAL_TOKENS, Tokenizer
    from tl_jax.progress import on_terminal, phase

    if vocab_size is not None and vocab_size < 1:  # given, as 0: not "give one of ..."
        raise ValueError(f"--vocab_size={vocab_size} must be a number of tokens, at least 1 "
                         "(for a byte-level BPE at least 257)")
    vocab_size = vocab_size or 0
    given = [flag for flag, value in (("--tokenizer", tokenizer), ("--vocab_size", vocab_size),
                                      ("--words", words)) if value]
    if wordpiece and not vocab_size:  # before "give one of ...": --wordpiece is half of one
        raise ValueError("--wordpiece trains a WordPiece vocabulary of --vocab_size=N tokens: "
                         "give the size (a vocabulary you have is --tokenizer=PATH)")
    if len(given) != 1:
        raise ValueError("give one of --tokenizer=PATH (a vocabulary to tokenise with, for GPT "
                         "or BERT), --vocab_size=N (train a byte-level BPE of N tokens on the "
                         "corpus, for GPT, or with --wordpiece a WordPiece vocabulary, for "
                         "BERT) or --words (the ELMo biLM's words), not "
                         + (" and ".join(given) if given else "none"))
    if cased and not wordpiece:
        raise ValueError("--cased keeps the case of a WordPiece vocabulary trained with "
                         "--vocab_size=N --wordpiece (a given one has its own casing; a "
                         "byte-level BPE and the biLM's words are always cased)")
    if wordpiece and vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"--vocab_size={vocab_size} is too small for a WordPiece vocabulary "
                         f"(its {len(SPECIAL_TOKENS)} special tokens and the pieces); "
                         "bert-base-uncased's is 30522")
    if vocab_size and not wordpiece and vocab_size < 257:
        raise ValueError(f"--vocab_size={vocab_size} is too small for a byte-level BPE "
                         f"vocabulary (the 256 byte symbols, {bpe.EOS} and the merges); GPT-2's "
                         "is 50257")
    check_output(os.path.abspath(paths.expand(output)))  # before anything is read
    spec, group_field = paths.expand(corpus), group_field or None
    if words:
        vocabulary = None
        print("[tokenize] words: cased words and punctuation, for the ELMo biLM", flush=True)
    elif tokenizer:
        source, vocabulary = load_tokenizer(paths.expand(tokenizer), f"--tokenizer={tokenizer}")
        kind = ("byte-level BPE: for GPT" if layout_of(vocabulary) == "documents" else
                "WordPiece: for BERT, ELECTRA and distillation")
        print(f"[tokenize] tokenizer: {source} ({vocabulary.vocab_size:,} tokens, {kind})",
              flush=True)
    else:
        def units():  # one document's text held at a time
            return (unit for document in sources.iter_documents(
                spec, text_field, group_field, key="--corpus") for unit in document)

        kind = (("a cased" if cased else "a lower-cased") + " WordPiece vocabulary"
                if wordpiece else "a byte-level BPE")
        with phase(f"Training {kind} of {vocab_size:,} tokens on {corpus}", True,
                   prefix="[tokenize]") as step:
            if wordpiece:
                vocabulary = Tokenizer.train_wordpiece_on(units, vocab_size, lowercase=not cased,
                                                          progress=on_terminal())
            else:
                vocabulary = bpe.BPETokenizer.train(units(), vocab_size=vocab_size,
                                                    progress=on_terminal())
            step.result = f"{vocabulary.vocab_size:,} tokens"
    with phase(f"Tokenising {corpus} into {output}", True, prefix="[tokenize]") as step:
        meta = write(spec, vocabulary, paths.expand(output), text_field, group_field)
        step.result = (f"{meta['documents']:,} documents, {meta['tokens']:,} tokens from "
                       f"{len(meta['sources'])} source(s)")
        if words:
            step.result += f", {meta['vocab_size']:,} distinct spellings"
    configs = {"documents": "a gpt_pretrain config",
               "sentences": "a bert_pretrain, electra_pretrain or distill config",
               "words": "an elmo_pretrain config"}[meta["layout"]]
    print(f"[tokenize] train on it with --config.data.corpus={output} ({configs})"
          + ("" if words else "; its tokenizer comes with it"), flush=True)
    return meta

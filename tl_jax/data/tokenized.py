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
    in the sentences (a document left without a sentence keeps its number, empty).

A run names the folder as `data.corpus`, and gets the same held-out documents and the same
data as the text would give; the text is never read again. A GPT run reads the stream a chunk
at a time, checked as it is read, and keeps only its windows (`clm_data.document_blocks`);
BERT's reads the ids whole, as it holds them anyway. `tokens` is also a read-only memory map of
the ids, for a look at them.

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
# What each layout is for, as errors say it.
LAYOUTS = {"documents": "GPT (`clm`) runs, with a byte-level BPE",
           "sentences": "BERT, ELECTRA and distillation runs, with a WordPiece vocabulary"}


class TokenizedCorpusError(ValueError):
    """A tokenised corpus folder is incomplete, damaged or does not fit the run."""


def is_tokenized_corpus(path: str) -> bool:
    """Whether `path` is a folder `write` made (it has a corpus.json)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, META_FILE))


def layout_of(tokenizer) -> str:
    """"documents" for a byte-level BPE (GPT), "sentences" for WordPiece (BERT)."""
    return "documents" if isinstance(tokenizer, bpe.BPETokenizer) else "sentences"


def write(spec: str, tokenizer, output: str, text_field: str = "text",
          group_field: str | None = None, progress: bool = True) -> dict:
    """Tokenises the corpus `spec` names (as `data.corpus` would read it) with `tokenizer` (a
    `bpe.BPETokenizer` or a WordPiece `tokenizer.Tokenizer`: `layout_of`) into the folder
    `output`; returns its corpus.json.

    One file (or dataset) of the corpus is held as text at a time, and its ids are appended to
    the file as they are made. Everything is written into `output.partial` first and renamed
    into place at the end, so an interrupted or failed run leaves no folder a training run
    could mistake for a whole corpus. `output` must not exist (or be an empty folder): a
    corpus is never overwritten.
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
    try:
        with open(os.path.join(partial, TOKENS_FILE), "wb") as stream:
            for source, documents in sources.iter_sources(spec, text_field, group_field,
                                                         key="--corpus"):
                if layout == "documents":
                    with progress_lib.bar(total=len(documents), desc=f"tokenising {source}",
                                          unit="doc", disable=not progress) as bar:
                        for ids, lengths in clm_data.packed_batches(documents, tokenizer):
                            stream.write(ids.astype("<i4", copy=False).tobytes())
                            ends.append(n_tokens + np.cumsum(lengths))
                            n_tokens += int(lengths.sum())
                            bar.update(len(lengths))
                else:
                    tokens = pretraining.tokenize_documents(documents, tokenizer,
                                                            progress=progress, keep_empty=True)
                    stream.write(tokens.tokens.astype("<i4", copy=False).tobytes())
                    sentence_ends.append(n_tokens + tokens.sentence_offsets[1:])
                    ends.append(n_sentences + tokens.document_offsets[1:])
                    n_tokens += len(tokens.tokens)
                    n_sentences += tokens.num_sentences
                    del tokens
                n_documents += len(documents)
                files.append({"source": source, "documents": len(documents)})
                del documents
        meta = {"format": FORMAT, "version": VERSION, "layout": layout, "corpus": spec,
                "text_field": text_field, "group_field": group_field or "", "sources": files,
                "documents": n_documents, "tokens": n_tokens,
                "vocab_size": tokenizer.vocab_size}
        if layout == "documents":
            np.save(os.path.join(partial, ENDS_FILE), np.concatenate(ends).astype(np.int64))
            meta["eos_id"] = tokenizer.eos_id
        else:
            np.save(os.path.join(partial, SENTENCE_ENDS_FILE),
                    np.concatenate(sentence_ends).astype(np.int64))
            np.save(os.path.join(partial, DOC_SENTENCE_ENDS_FILE),
                    np.concatenate(ends).astype(np.int64))
            meta["sentences"] = n_sentences
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
                "`tl_jax tokenize --tokenizer=` such a vocabulary")
        counts = ("documents", "tokens", "vocab_size") + (
            ("eos_id",) if layout == "documents" else ("sentences",))
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

        def ends(name: str, count: int, total: int, what: str, empty: bool) -> np.ndarray:
            """The int64 ends in `name`: `count` of them, rising (or staying, where parts may
            be `empty`) and finishing at `total`."""
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
                unit = "sentences" if empty else "tokens"
                raise broken(f"{name} does not cut the {total:,} {unit} into {what}s (its ends "
                             "must rise and finish at the last one)")
            return values

        sentence_ends = None
        if layout == "documents":
            doc_ends = ends(ENDS_FILE, meta["documents"], meta["tokens"], "document", False)
        else:
            sentence_ends = ends(SENTENCE_ENDS_FILE, meta["sentences"], meta["tokens"],
                                 "sentence", False)
            doc_ends = ends(DOC_SENTENCE_ENDS_FILE, meta["documents"], meta["sentences"],
                            "document", True)
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
            raise self._broken(f"token {start + int(bad[0]):,} has id {int(part[bad[0]])}, "
                               f"outside its vocabulary of {self.meta['vocab_size']}")
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
        raise TokenizedCorpusError(f"{flag}: {json_file} holds a {kind!r} model; tl_jax "
                                   "tokenises with a byte-level BPE (GPT) or WordPiece (BERT)")
    if os.path.isfile(os.path.join(folder, "vocab.txt") if folder else path):
        return path, Tokenizer.load(path)
    raise TokenizedCorpusError(f"{flag}: {path} holds no tokenizer (vocab.json + merges.txt, "
                               "tokenizer.json or vocab.txt)")


def run(corpus: str, tokenizer: str, output: str, text_field: str = "text",
        group_field: str = "", vocab_size: int = 0) -> dict:
    """`tl_jax tokenize`: tokenise `corpus` with `tokenizer` into the folder `output`.

    `tokenizer` is a byte-level BPE (GPT) or a WordPiece vocabulary (BERT): see
    `load_tokenizer`. Without one, `vocab_size` > 0 trains a byte-level BPE of
    that many tokens on the whole corpus first (read one file at a time, then read again to
    tokenise): a clm run on text trains its BPE on the training documents only, so here the
    held-out documents' text is seen by the tokenizer, as GPT-2's BPE saw all of WebText."""
    from tl_jax import paths
    from tl_jax.progress import on_terminal, phase

    if bool(tokenizer) == bool(vocab_size):
        raise ValueError("give --tokenizer=PATH (a vocabulary to tokenise with) or "
                         "--vocab_size=N (train one of N tokens on the corpus), not "
                         + ("both" if tokenizer else "neither"))
    if vocab_size and vocab_size < 257:
        raise ValueError(f"--vocab_size={vocab_size} is too small for a byte-level BPE "
                         f"vocabulary (the 256 byte symbols, {bpe.EOS} and the merges); GPT-2's "
                         "is 50257")
    check_output(os.path.abspath(paths.expand(output)))  # before anything is read
    spec, group_field = paths.expand(corpus), group_field or None
    if tokenizer:
        source, vocabulary = load_tokenizer(paths.expand(tokenizer), f"--tokenizer={tokenizer}")
        kind = ("byte-level BPE: for GPT" if layout_of(vocabulary) == "documents" else
                "WordPiece: for BERT, ELECTRA and distillation")
        print(f"[tokenize] tokenizer: {source} ({vocabulary.vocab_size:,} tokens, {kind})",
              flush=True)
    else:
        with phase(f"Training a byte-level BPE of {vocab_size:,} tokens on {corpus}", True,
                   prefix="[tokenize]") as step:
            units = (unit for _, documents in sources.iter_sources(
                spec, text_field, group_field, key="--corpus")
                for document in documents for unit in document)
            vocabulary = bpe.BPETokenizer.train(units, vocab_size=vocab_size,
                                                progress=on_terminal())
            step.result = f"{vocabulary.vocab_size:,} tokens"
    with phase(f"Tokenising {corpus} into {output}", True, prefix="[tokenize]") as step:
        meta = write(spec, vocabulary, paths.expand(output), text_field, group_field)
        step.result = (f"{meta['documents']:,} documents, {meta['tokens']:,} tokens from "
                       f"{len(meta['sources'])} source(s)")
    configs = ("a gpt_pretrain config" if meta["layout"] == "documents" else
               "a bert_pretrain, electra_pretrain or distill config")
    print(f"[tokenize] train on it with --config.data.corpus={output} ({configs}); its "
          "tokenizer comes with it", flush=True)
    return meta

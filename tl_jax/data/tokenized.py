"""Tokenised corpora: a GPT corpus tokenised once (`tl_jax tokenize`), read by each run as ids.

A `clm` run given a text corpus reads the whole text and tokenises it on every start and on
every process of a pod, holding the text as Python strings meanwhile (about 3 bytes a byte of
text, and ~40 minutes a host for 10 GB on two cores). A tokenised corpus is a folder:

    corpus.json     what it is: the format and its version, the source spec, the counts, and
                    the tokenizer's size and end-of-text id
    tokens.int32    the token stream, little-endian int32: each document's ids (its units joined
                    by newlines), then <|endoftext|>; exactly what a text run packs
    doc_ends.npy    int64, where each document ends in the stream (after its end-of-text)
    tokenizer/      the byte-level BPE it was tokenised with (vocab.json, merges.txt,
                    tokenizer.json), which becomes the run's tokenizer

A run names the folder as `data.corpus`. The stream is read a chunk at a time, checked as it
is read, and only the run's windows are kept (4 bytes a token), with the same held-out documents
and the same windows as the text would give (`clm_data.document_blocks`); the text is never read
again. `tokens` is also a read-only memory map of the stream, for a look at it.

    write("books/*.jsonl", tokenizer, "books.tok")     # tl_jax tokenize
    corpus = TokenizedCorpus.open("books.tok")
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
TOKENIZER_DIR = "tokenizer"


class TokenizedCorpusError(ValueError):
    """A tokenised corpus folder is incomplete, damaged or does not fit the run."""


def is_tokenized_corpus(path: str) -> bool:
    """Whether `path` is a folder `write` made (it has a corpus.json)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, META_FILE))


def write(spec: str, tokenizer: bpe.BPETokenizer, output: str, text_field: str = "text",
          group_field: str | None = None, progress: bool = True) -> dict:
    """Tokenises the corpus `spec` names (as `data.corpus` would read it) into the folder
    `output`; returns its corpus.json.

    One file (or dataset) of the corpus is held as text at a time, and its ids are appended to
    the stream on disk as each batch of documents is tokenised. Everything is written into
    `output.partial` first and renamed into place at the end, so an interrupted or failed run
    leaves no folder a training run could mistake for a whole corpus. `output` must not exist
    (or be an empty folder): a corpus is never overwritten.
    """
    output = os.path.abspath(output)
    check_output(output)
    partial = output.rstrip(os.sep) + ".partial"
    if os.path.exists(partial):  # left by an interrupted run of this command
        shutil.rmtree(partial)
    os.makedirs(partial)
    from tl_jax import progress as progress_lib
    n_documents = n_tokens = 0
    ends = []
    files = []
    try:
        with open(os.path.join(partial, TOKENS_FILE), "wb") as stream:
            for source, documents in sources.iter_sources(spec, text_field, group_field,
                                                         key="--corpus"):
                with progress_lib.bar(total=len(documents), desc=f"tokenising {source}",
                                      unit="doc", disable=not progress) as bar:
                    for ids, lengths in clm_data.packed_batches(documents, tokenizer):
                        stream.write(ids.astype("<i4", copy=False).tobytes())
                        ends.append(n_tokens + np.cumsum(lengths))
                        n_tokens += int(lengths.sum())
                        bar.update(len(lengths))
                n_documents += len(documents)
                files.append({"source": source, "documents": len(documents)})
                del documents
        np.save(os.path.join(partial, ENDS_FILE), np.concatenate(ends).astype(np.int64))
        tokenizer.save(os.path.join(partial, TOKENIZER_DIR))
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "corpus": spec,
            "text_field": text_field,
            "group_field": group_field or "",
            "sources": files,
            "documents": n_documents,
            "tokens": n_tokens,
            "vocab_size": tokenizer.vocab_size,
            "eos_id": tokenizer.eos_id,
        }
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
    """A folder `write` made, its description checked (`open`); its stream read by `read`."""

    def __init__(self, path: str, meta: dict, tokens: np.ndarray, doc_ends: np.ndarray,
                 tokenizer: bpe.BPETokenizer):
        self.path, self.meta = path, meta
        self.tokens, self.doc_ends, self.tokenizer = tokens, doc_ends, tokenizer

    @property
    def num_documents(self) -> int:
        return len(self.doc_ends)

    @classmethod
    def open(cls, path: str) -> "TokenizedCorpus":
        """Reads corpus.json, the document ends and the tokenizer, and maps the stream. Every
        part is checked against corpus.json, so a damaged or half-copied folder is named with
        what is wrong, not read as a shorter corpus or with another vocabulary."""
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
        for key in ("documents", "tokens", "vocab_size", "eos_id"):
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
        ends_file = os.path.join(path, ENDS_FILE)
        try:
            doc_ends = np.load(ends_file, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise broken(f"{ENDS_FILE} cannot be read ({e})") from None
        if (doc_ends.ndim != 1 or doc_ends.dtype.kind not in "iu"
                or len(doc_ends) != meta["documents"]):
            raise broken(f"{ENDS_FILE} holds {doc_ends.dtype} {doc_ends.shape}, not the "
                         f"{meta['documents']:,} document ends {META_FILE} counts")
        doc_ends = doc_ends.astype(np.int64, copy=False)
        if (len(doc_ends) == 0 or doc_ends[-1] != meta["tokens"]
                or np.any(np.diff(doc_ends, prepend=0) < 1)):
            raise broken(f"{ENDS_FILE} does not cut the {meta['tokens']:,} tokens into "
                         "documents (its ends must rise and finish at the last token)")
        try:
            tokenizer = bpe.BPETokenizer.load(os.path.join(path, TOKENIZER_DIR))
        except bpe.BPEError as e:
            raise broken(f"its tokenizer cannot be read ({e})") from None
        if (tokenizer.vocab_size, tokenizer.eos_id) != (meta["vocab_size"], meta["eos_id"]):
            raise broken(f"its tokenizer has {tokenizer.vocab_size} tokens and end-of-text "
                         f"id {tokenizer.eos_id}, but the stream was written with "
                         f"{meta['vocab_size']} and {meta['eos_id']}")
        return cls(path, meta, tokens, doc_ends, tokenizer)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens `[start, stop)` read from the file (not through the memory map, whose pages
        would count in the process's resident memory), checked: each id within the vocabulary,
        and end-of-text where each document ends. A stream cut, shifted or overwritten fails
        here, with where, rather than training on ids that mean nothing."""
        part = np.fromfile(os.path.join(self.path, TOKENS_FILE), dtype="<i4",
                           count=stop - start, offset=4 * start)
        if len(part) != stop - start:
            raise self._broken(f"{TOKENS_FILE} ended at token {start + len(part):,}")
        bad = np.flatnonzero((part < 0) | (part >= self.meta["vocab_size"]))
        if len(bad):
            at = start + int(bad[0])
            raise self._broken(f"token {at:,} has id {int(part[bad[0]])}, outside its "
                               f"vocabulary of {self.meta['vocab_size']}")
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

    def _broken(self, what: str) -> TokenizedCorpusError:
        return TokenizedCorpusError(f"tokenised corpus {self.path}: {what}; tokenise the corpus "
                                    "again with `tl_jax tokenize`")

    def blocks(self, documents: np.ndarray, seq_len: int):
        """`clm_data.make_blocks` of the documents `documents` (indices, in order) packed: the
        stream is read a chunk at a time (`read`, which checks it) and only their tokens kept."""
        return clm_data.document_blocks(self.tokens, self.doc_ends, documents, seq_len,
                                        read=self.read)


def run(corpus: str, tokenizer: str, output: str, text_field: str = "text",
        group_field: str = "", vocab_size: int = 0) -> dict:
    """`tl_jax tokenize`: tokenise `corpus` with `tokenizer` into the folder `output`.

    `tokenizer` is a byte-level BPE: a folder with vocab.json + merges.txt (a GPT-2 directory),
    a tokenizer.json, or a clm / lm_classify workdir, whose saved tokenizer/ is taken (the one
    its weights were trained with). Without one, `vocab_size` > 0 trains a byte-level BPE of
    that many tokens on the whole corpus first (read one file at a time, then read again to
    tokenise): a clm run on text trains its BPE on the training documents only, so here the
    held-out documents' text is seen by the tokenizer, as GPT-2's BPE saw all of WebText."""
    from tl_jax import paths
    from tl_jax.progress import on_terminal, phase
    from tl_jax.tasks import clm as clm_task

    if bool(tokenizer) == bool(vocab_size):
        raise ValueError("give --tokenizer=PATH (a byte-level BPE to tokenise with) or "
                         "--vocab_size=N (train one of N tokens on the corpus), not "
                         + ("both" if tokenizer else "neither"))
    if vocab_size and vocab_size < 257:
        raise ValueError(f"--vocab_size={vocab_size} is too small for a byte-level BPE "
                         f"vocabulary (the 256 byte symbols, {bpe.EOS} and the merges); GPT-2's "
                         "is 50257")
    check_output(os.path.abspath(paths.expand(output)))  # before anything is read
    spec, group_field = paths.expand(corpus), group_field or None
    if tokenizer:
        tokenizer_path = paths.expand(tokenizer)
        source = clm_task.init_from_tokenizer(tokenizer_path) or tokenizer_path
        if not os.path.exists(source):
            raise bpe.BPEError(f"--tokenizer={tokenizer}: no such file or folder")
        bpe_tokenizer = bpe.BPETokenizer.load(source)
        print(f"[tokenize] tokenizer: {source} ({bpe_tokenizer.vocab_size:,} tokens)",
              flush=True)
    else:
        with phase(f"Training a byte-level BPE of {vocab_size:,} tokens on {corpus}", True,
                   prefix="[tokenize]") as step:
            units = (unit for _, documents in sources.iter_sources(
                spec, text_field, group_field, key="--corpus")
                for document in documents for unit in document)
            bpe_tokenizer = bpe.BPETokenizer.train(units, vocab_size=vocab_size,
                                                   progress=on_terminal())
            step.result = f"{bpe_tokenizer.vocab_size:,} tokens"
    with phase(f"Tokenising {corpus} into {output}", True, prefix="[tokenize]") as step:
        meta = write(spec, bpe_tokenizer, paths.expand(output), text_field, group_field)
        step.result = (f"{meta['documents']:,} documents, {meta['tokens']:,} tokens from "
                       f"{len(meta['sources'])} source(s)")
    print(f"[tokenize] train on it with --config.data.corpus={output} (a clm config); its "
          "tokenizer comes with it", flush=True)
    return meta

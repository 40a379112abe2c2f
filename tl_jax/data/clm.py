"""Causal LM data: documents packed into fixed-length sequences, and a resumable batch iterator.

Each document (a list of text units) is tokenised as its units joined by newlines, followed by
the end-of-text token, and all documents are concatenated into one token stream (GPT-2 style:
attention may cross a document boundary; the separator tells the model where one ends). The
stream is cut into windows of `seq_len + 1` tokens with stride `seq_len`, so every token is a
prediction target exactly once: `inputs = w[:-1]`, `targets = w[1:]`. The last, short window
is padded and its padding has weight 0.

    stream = pack_documents(documents, tokenizer)
    blocks = make_blocks(stream, seq_len=128)                 # (N, 129) int32 + lengths
    it = BlockIterator(blocks, batch_size=32, seed=0)         # global batch 32
    batch = next(it)   # {"inputs": (32, 128), "targets": (32, 128), "weights": (32, 128)}
    state = it.get_state(); it2 = BlockIterator(...); it2.set_state(state)  # same next batch

With several processes, each host yields only its rows (`process_index`) of every global batch;
the global order is the same on every host because it depends only on the seed and epoch.
"""
from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np

from tl_jax.data.shuffle import EpochOrder


def pack_documents(documents: Sequence[Sequence[str]], tokenizer, separator: str = "\n",
                   batch_size: int = 1024, batch_chars: int = 1_000_000) -> np.ndarray:
    """One int32 token stream: each document's units joined by `separator`, then EOS.

    Documents are joined and tokenised a batch at a time (`packed_batches`), and each batch's
    ids go straight into an int32 array (4 bytes a token).
    """
    if not documents:
        raise ValueError("pack_documents: no documents to pack")
    return np.concatenate([ids for ids, _ in packed_batches(
        documents, tokenizer, separator, batch_size, batch_chars)])


def packed_batches(documents: Sequence[Sequence[str]], tokenizer, separator: str = "\n",
                   batch_size: int = 1024, batch_chars: int = 1_000_000):
    """Yields `(ids, lengths)` a batch of documents at a time: the batch's int32 token stream
    (each document's units joined by `separator`, then EOS) and each document's length in it,
    its EOS included. `pack_documents` is their concatenation.

    A batch is at most `batch_size` documents, and no more than one beyond `batch_chars`
    characters. The tokenizer's encodings cost far more than the ids (about 160 bytes a token
    with their offsets and token strings): a batch of documents counted only by number held
    them for a whole corpus of long documents (books) at once.
    """
    start = 0
    while start < len(documents):
        texts, chars = [], 0
        while start < len(documents) and len(texts) < batch_size and chars < batch_chars:
            texts.append(separator.join(documents[start]))
            chars += len(texts[-1])
            start += 1
        encoded = tokenizer.encode_batch(texts)
        lengths = np.fromiter(map(len, encoded), np.int64, count=len(encoded))
        ids = np.fromiter(itertools.chain.from_iterable(encoded), np.int32,
                          count=int(lengths.sum()))
        # An EOS after each document: at the end of its ids in the batch's flat array.
        yield np.insert(ids, np.cumsum(lengths), np.int32(tokenizer.eos_id)), lengths + 1


def make_blocks(stream: np.ndarray, seq_len: int, pad_id: int = 0):
    """Windows of `seq_len + 1` tokens with stride `seq_len`.

    Returns (blocks (N, seq_len + 1) int32, lengths (N,) int32: real tokens per window).
    Window i is `stream[i * seq_len : (i + 1) * seq_len + 1]`, padded with `pad_id`; the
    blocks are the only copy made (about 4 bytes a token), with no padded stream or index.
    """
    if seq_len < 1:
        raise ValueError(f"make_blocks: seq_len must be >= 1, got {seq_len}")
    stream = np.asarray(stream, np.int32)
    if len(stream) < 2:
        raise ValueError(f"make_blocks: a stream of {len(stream)} token(s) has nothing to predict")
    n = -(-(len(stream) - 1) // seq_len)  # windows needed to cover every target once
    blocks = np.full((n, seq_len + 1), pad_id, np.int32)
    # The first seq_len tokens of window i are stream[i * seq_len:(i + 1) * seq_len]: whole
    # rows up to the last full one, then what is left.
    full = min(n, len(stream) // seq_len)
    blocks[:full, :seq_len] = stream[:full * seq_len].reshape(full, seq_len)
    rest = stream[full * seq_len:]
    if full < n:
        blocks[full, :len(rest)] = rest
    # Its last token is the first of window i + 1: stream[(i + 1) * seq_len], where there is one.
    last = stream[seq_len::seq_len]
    blocks[:len(last), seq_len] = last[:n]
    lengths = np.minimum(len(stream) - np.arange(n) * seq_len, seq_len + 1).astype(np.int32)
    return blocks, lengths


def blocks_to_batch(blocks: np.ndarray, lengths: np.ndarray) -> dict:
    """The model batch for some windows: inputs, targets and per-target weights."""
    seq_len = blocks.shape[1] - 1
    weights = (np.arange(seq_len)[None, :] < (lengths[:, None] - 1)).astype(np.float32)  # (B, T)
    return {
        "inputs": blocks[:, :-1].astype(np.int32),
        "targets": blocks[:, 1:].astype(np.int32),
        "weights": weights,
    }


class BlockIterator:
    """Shuffled, endless, resumable batches of packed windows.

    Each epoch visits the windows in a permutation drawn from `(seed, epoch)`; a global batch is
    `batch_size` consecutive entries of it (a trailing partial batch is dropped so every step
    sees the same number of rows). This process yields rows
    `[process_index * b, (process_index + 1) * b)` of each global batch, `b = batch_size /
    process_count`. The state is `{"epoch", "batch"}`: the next global batch to produce.
    """

    def __init__(self, blocks: np.ndarray, lengths: np.ndarray, batch_size: int, seed: int = 0,
                 process_index: int = 0, process_count: int = 1, shuffle: bool = True):
        if batch_size < 1:  # (0 divided by zero below, a negative one reversed the slices)
            raise ValueError(f"batch_size {batch_size} (data.batch_size) must be at least 1")
        if batch_size % process_count:
            raise ValueError(
                f"batch_size {batch_size} is not divisible by the process count {process_count}"
            )
        if len(blocks) < batch_size:
            raise ValueError(
                f"only {len(blocks)} packed sequences for a global batch of {batch_size} "
                "(data.batch_size); use more text, a smaller data.batch_size or a shorter "
                "data.seq_len"
            )
        self.blocks, self.lengths = blocks, lengths
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.local = batch_size // process_count
        self.offset = process_index * self.local
        self.batches_per_epoch = len(blocks) // batch_size
        self.epoch, self.batch = 0, 0
        self._order = EpochOrder(len(blocks), seed, shuffle)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        order = self._order(self.epoch)
        start = self.batch * self.batch_size + self.offset
        rows = order[start:start + self.local]
        self.batch += 1
        if self.batch == self.batches_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
        return blocks_to_batch(self.blocks[rows], self.lengths[rows])

    def get_state(self) -> dict:
        return {"epoch": int(self.epoch), "batch": int(self.batch)}

    def set_state(self, state: dict) -> None:
        epoch, batch = int(state["epoch"]), int(state["batch"])
        if not 0 <= batch < self.batches_per_epoch or epoch < 0:
            raise ValueError(
                f"BlockIterator.set_state: {state} does not fit this data "
                f"({self.batches_per_epoch} batches per epoch)"
            )
        self.epoch, self.batch = epoch, batch


def eval_batches(blocks: np.ndarray, lengths: np.ndarray, batch_size: int,
                 process_index: int = 0, process_count: int = 1, max_batches: int = 0):
    """Finite, ordered host-local eval batches covering every window once (`EvalBatches`).

    The last global batch is padded with zero-weight rows, so metrics count each token once.
    """
    if batch_size < 1:
        raise ValueError(f"eval batch_size {batch_size} (data.eval_batch_size) must be at least 1")
    if batch_size % process_count:
        raise ValueError(
            f"eval batch_size {batch_size} is not divisible by the process count {process_count}"
        )
    n_batches = -(-len(blocks) // batch_size)
    if max_batches:
        n_batches = min(n_batches, max_batches)
    return EvalBatches(blocks, lengths, batch_size, process_index, process_count, n_batches)


class EvalBatches:
    """The eval batches as a sequence (a length for the eval bar, indexing, iteration), each
    made from the windows when it is read. The whole list was built up front: inputs, targets
    and float32 weights, 12 bytes a token beside the windows' 4, for the whole held-out set at
    `train.eval_batches=0`, at every eval."""

    def __init__(self, blocks, lengths, batch_size, process_index, process_count, n_batches):
        self.blocks, self.lengths, self.n_batches = blocks, lengths, n_batches
        self.local = batch_size // process_count
        self.batch_size, self.offset = batch_size, process_index * self.local

    def __len__(self) -> int:
        return self.n_batches

    def __getitem__(self, i: int) -> dict:
        if not -self.n_batches <= i < self.n_batches:
            raise IndexError(f"eval batch {i} of {self.n_batches}")
        i %= self.n_batches
        start = i * self.batch_size + self.offset
        rows = np.arange(start, start + self.local)
        real = rows < len(self.blocks)
        rows = np.where(real, rows, 0)
        return blocks_to_batch(self.blocks[rows], np.where(real, self.lengths[rows], 1))

    def __iter__(self):
        return (self[i] for i in range(self.n_batches))


# The held-out draw of the causal and bidirectional LMs: the same for every run, not the run's
# seed, so that runs with different seeds are scored on the same text.
EVAL_SPLIT_SEED = 0


def split_documents(documents: list, eval_fraction: float, seed: int = 0):
    """(train, eval) documents: a seeded random `eval_fraction` of documents is held out."""
    train, held = split_indices(len(documents), eval_fraction, seed)
    return [documents[i] for i in train], [documents[i] for i in held]


def split_indices(n_documents: int, eval_fraction: float, seed: int = 0):
    """(train, eval) document indices, each in corpus order: `split_documents`' draw, for a
    corpus known only by its number of documents (a tokenised one)."""
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    n_eval = int(round(n_documents * eval_fraction))
    if eval_fraction > 0 and n_eval == 0:
        n_eval = 1
    if n_eval >= n_documents:
        raise ValueError(
            f"{n_documents} document(s) cannot be split with data.eval_fraction="
            f"{eval_fraction}: perplexity is measured on whole held-out documents. Give more "
            "documents (in a plain-text corpus a blank line ends one; in jsonl each row is one, "
            "unless data.group_field or a book/title field groups rows), or set "
            "data.eval_fraction=0 to train without a held-out set")
    order = np.random.default_rng(seed).permutation(n_documents)
    held = np.zeros(n_documents, bool)
    held[order[:n_eval]] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


def document_blocks(tokens: np.ndarray, doc_ends: np.ndarray, documents: np.ndarray,
                    seq_len: int, pad_id: int = 0, read=None, chunk: int = 1 << 22):
    """`make_blocks` of the stream of some documents of a packed corpus, without building it.

    `tokens` is the corpus's stream, `doc_ends` where each document ends in it (after its EOS),
    `documents` the indices of those to take, in order. `read(start, stop)`, if given, returns
    `tokens[start:stop]` in its place (a tokenised corpus reads its file). The documents'
    tokens are copied a `chunk` of the stream at a time into one stream with room for the last
    window's padding, and the windows are a read-only view of it (overlapping by one token):
    4 bytes a token, and nothing else the size of the corpus.
    """
    if seq_len < 1:
        raise ValueError(f"document_blocks: seq_len must be >= 1, got {seq_len}")
    read = read or (lambda start, stop: tokens[start:stop])
    doc_ends = np.asarray(doc_ends, np.int64)
    doc_starts = np.concatenate([[0], doc_ends[:-1]])
    take = np.zeros(len(doc_ends), bool)
    take[np.asarray(documents, np.int64)] = True
    total = int((doc_ends - doc_starts)[take].sum())
    if total < 2:
        raise ValueError(f"document_blocks: a stream of {total} token(s) has nothing to predict")
    n = -(-(total - 1) // seq_len)
    stream = np.full(n * seq_len + 1, pad_id, np.int32)
    end, at = (int(doc_ends[-1]) if len(doc_ends) else 0), 0
    for start in range(0, end, chunk):
        stop = min(end, start + chunk)
        # The documents this chunk overlaps, and how much of each lies in it.
        first = int(np.searchsorted(doc_ends, start, side="right"))
        last = int(np.searchsorted(doc_ends, stop, side="left"))
        if not take[first:last + 1].any():
            continue
        part = np.asarray(read(start, stop), np.int32)
        begins = np.maximum(doc_starts[first:last + 1], start)
        inside = np.minimum(doc_ends[first:last + 1], stop) - begins
        kept = part[np.repeat(take[first:last + 1], inside)]
        stream[at:at + len(kept)] = kept
        at += len(kept)
    assert at == total, (at, total)
    return windows(stream, total, seq_len)


def windows(stream: np.ndarray, length: int, seq_len: int):
    """The windows of `make_blocks` as a read-only view of `stream`: its first `length` tokens
    are the text, and it runs on with padding to `n * seq_len + 1` tokens for n windows."""
    n = -(-(length - 1) // seq_len)
    if len(stream) != n * seq_len + 1:
        raise ValueError(f"windows: a stream of {len(stream)} tokens, expected {n * seq_len + 1}")
    blocks = np.lib.stride_tricks.as_strided(
        stream, shape=(n, seq_len + 1), strides=(seq_len * stream.itemsize, stream.itemsize),
        writeable=False)
    lengths = np.minimum(length - np.arange(n) * seq_len, seq_len + 1).astype(np.int32)
    return blocks, lengths

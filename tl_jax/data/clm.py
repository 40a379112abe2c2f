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

    Documents are joined and tokenised a batch at a time (at most `batch_size` documents, and
    no more than one beyond `batch_chars` characters), and each batch's ids go straight into
    an int32 array (4 bytes a token). The tokenizer's encodings cost far more (about 160 bytes
    a token with their offsets and token strings): a batch of documents counted only by number
    held them for a whole corpus of long documents (books) at once.
    """
    if not documents:
        raise ValueError("pack_documents: no documents to pack")
    pieces = []
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
        pieces.append(np.insert(ids, np.cumsum(lengths), np.int32(tokenizer.eos_id)))
    return np.concatenate(pieces)


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
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    n_eval = int(round(len(documents) * eval_fraction))
    if eval_fraction > 0 and n_eval == 0:
        n_eval = 1
    if n_eval >= len(documents):
        raise ValueError(
            f"{len(documents)} document(s) cannot be split with data.eval_fraction="
            f"{eval_fraction}: perplexity is measured on whole held-out documents. Give more "
            "documents (in a plain-text corpus a blank line ends one; in jsonl each row is one, "
            "unless data.group_field or a book/title field groups rows), or set "
            "data.eval_fraction=0 to train without a held-out set")
    order = np.random.default_rng(seed).permutation(len(documents))
    held = set(order[:n_eval].tolist())
    train = [d for i, d in enumerate(documents) if i not in held]
    evals = [d for i, d in enumerate(documents) if i in held]
    return train, evals

"""Training data for static word embeddings: vocabulary, word2vec examples, GloVe co-occurrences.

Everything here is vectorised numpy over a whole encoded corpus (a flat array of word ids plus a
parallel array of sentence ids), so one epoch of skip-gram pairs for a million-word corpus is built
in well under a second, without Python loops over tokens.

The statistics follow the original word2vec C code (Mikolov et al., 2013) and GloVe (Pennington et
al., 2014):

* `min_count` vocabulary, sorted by frequency (ties broken alphabetically, so it is deterministic);
* subsampling of frequent words, keep probability `(sqrt(f / t) + 1) * t / f` with `f` the word's
  relative frequency and `t` the `sample` threshold (the formula of word2vec.c and gensim);
* a dynamic window: each centre word draws its window size `b` uniformly from `1..window`;
* negatives drawn from the unigram distribution raised to 0.75, through a precomputed table;
* GloVe co-occurrence counts within a symmetric window, each pair weighted by `1 / distance`.
"""
from __future__ import annotations

import collections
import dataclasses
import pathlib
import re
from typing import Iterable, Iterator, Sequence

import numpy as np
import scipy.sparse

from tl_jax import paths

# Lowercase words: letters/digits, keeping inner apostrophes and hyphens ("don't", "well-known").
_WORD_RE = re.compile(r"[a-z0-9]+(?:['\-][a-z0-9]+)*")


def tokenize(text: str) -> list[str]:
    """The simple lowercase word tokenizer used for static embeddings (punctuation dropped)."""
    return _WORD_RE.findall(text.lower().replace("\u2019", "'"))


def _check_tokenised(i: int, sentence) -> None:
    # A string is a sequence of strings too: its characters would silently count as words.
    if isinstance(sentence, str):
        raise ValueError(f"sentence {i} is a string ({sentence[:30]!r}), not a list of words: "
                         f"tokenize it first (tl_jax.data.word_vectors.tokenize)")


@dataclasses.dataclass
class Vocab:
    """Words sorted by decreasing count, with their corpus counts."""

    words: list[str]
    counts: np.ndarray  # (V,) int64

    def __post_init__(self):
        self.counts = np.asarray(self.counts, dtype=np.int64)
        if len(self.words) != len(self.counts):
            raise ValueError(f"Vocab has {len(self.words)} words but {len(self.counts)} counts")
        self.index = {w: i for i, w in enumerate(self.words)}
        if len(self.index) != len(self.words):
            raise ValueError("Vocab words must be unique")

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.index

    @classmethod
    def build(cls, sentences: Iterable[Sequence[str]], min_count: int = 5,
              max_size: int | None = None) -> "Vocab":
        """Counts words and keeps those seen at least `min_count` times (at most `max_size`)."""
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        counter = collections.Counter()
        for i, sentence in enumerate(sentences):
            _check_tokenised(i, sentence)
            counter.update(sentence)
        items = sorted(((w, c) for w, c in counter.items() if c >= min_count),
                       key=lambda wc: (-wc[1], wc[0]))
        if max_size is not None:
            items = items[:max_size]
        if not items:
            raise ValueError(f"No word occurs at least min_count={min_count} times in the corpus")
        return cls([w for w, _ in items], np.array([c for _, c in items], dtype=np.int64))

    def encode(self, tokens: Sequence[str]) -> np.ndarray:
        """Word ids of the in-vocabulary tokens (out-of-vocabulary tokens are dropped)."""
        index = self.index
        return np.fromiter((index[t] for t in tokens if t in index), dtype=np.int32)

    def save(self, path) -> None:
        """Writes `word count` lines (the format of word2vec's -save-vocab)."""
        with open(path, "w", encoding="utf-8") as f:
            for w, c in zip(self.words, self.counts):
                f.write(f"{w} {c}\n")

    @classmethod
    def load(cls, path) -> "Vocab":
        """Reads a file written by `save`; malformed lines raise with file and line number."""
        words, counts = [], []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                parts = line.split()
                if len(parts) != 2 or not parts[1].isdigit():
                    raise ValueError(
                        f"{path}:{lineno}: expected 'word count', got {line.strip()!r}")
                words.append(parts[0])
                counts.append(int(parts[1]))
        if not words:
            raise ValueError(f"{path}: empty vocabulary file")
        return cls(words, np.array(counts))


@dataclasses.dataclass
class EncodedCorpus:
    """A corpus as one flat id array; `sentence_ids` tells which sentence each token is in."""

    ids: np.ndarray  # (N,) int32
    sentence_ids: np.ndarray  # (N,) int32, non-decreasing

    def __len__(self) -> int:
        return len(self.ids)


def encode_corpus(sentences: Iterable[Sequence[str]], vocab: Vocab) -> EncodedCorpus:
    """Encodes tokenised sentences; out-of-vocabulary words are removed before windowing."""
    chunks, sent = [], []
    for i, sentence in enumerate(sentences):
        _check_tokenised(i, sentence)
        ids = vocab.encode(sentence)
        if len(ids):
            chunks.append(ids)
            sent.append(np.full(len(ids), i, dtype=np.int32))
    if not chunks:
        raise ValueError("The corpus has no in-vocabulary words")
    return EncodedCorpus(np.concatenate(chunks), np.concatenate(sent))


def subsample_keep_prob(counts: np.ndarray, sample: float) -> np.ndarray:
    """Probability of keeping each word under frequent-word subsampling.

    keep(w) = min(1, (sqrt(f(w) / t) + 1) * t / f(w)),  f(w) = count(w) / total count.
    `sample <= 0` disables subsampling (every word kept).
    """
    counts = np.asarray(counts, dtype=np.float64)
    if sample <= 0:
        return np.ones_like(counts)
    f = counts / counts.sum()
    return np.minimum(1.0, (np.sqrt(f / sample) + 1.0) * sample / f)


def negative_distribution(counts: np.ndarray, power: float = 0.75) -> np.ndarray:
    """The negative-sampling distribution: count^power, normalised."""
    p = np.asarray(counts, dtype=np.float64) ** power
    return p / p.sum()


def negative_table(counts: np.ndarray, power: float = 0.75, size: int = 10_000_000) -> np.ndarray:
    """A table where word w fills a share `negative_distribution(w)` of the slots.

    Drawing a uniform slot is then one random integer per negative (word2vec.c's unigram table).
    Slot boundaries are rounded cumulative probabilities, so the error per word is < 1 / size.
    """
    probs = negative_distribution(counts, power)
    bounds = np.round(np.cumsum(probs) * size).astype(np.int64)
    return np.repeat(np.arange(len(probs), dtype=np.int32), np.diff(bounds, prepend=0))


def _subsample(corpus: EncodedCorpus, keep_prob: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    keep = rng.random(len(corpus.ids)) < keep_prob[corpus.ids]
    return corpus.ids[keep], corpus.sentence_ids[keep]


def _context_matrix(ids: np.ndarray, sent: np.ndarray, window: int,
                    rng: np.random.Generator) -> np.ndarray:
    """(N, 2W) context ids of every token under a dynamic window; -1 marks an empty slot.

    Token i draws b_i ~ U{1..window} and sees the words at distance d <= b_i in its sentence.
    Slot order is [-1, +1, -2, +2, ...].
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    n = len(ids)
    reach = rng.integers(1, window + 1, size=n)  # b_i, per centre word
    context = np.full((n, 2 * window), -1, dtype=np.int32)  # (N, 2W)
    for d in range(1, min(window, n - 1) + 1):
        same = sent[:-d] == sent[d:]
        # The left neighbour at distance d of token i + d is token i, and vice versa.
        ok = same & (reach[d:] >= d)
        context[d:, 2 * d - 2][ok] = ids[:-d][ok]
        ok = same & (reach[:-d] >= d)
        context[:-d, 2 * d - 1][ok] = ids[d:][ok]
    return context


def skipgram_pairs(corpus: EncodedCorpus, window: int, keep_prob: np.ndarray,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(centre, context) pairs of one epoch, after subsampling, with a dynamic window.

    Pairs come out in corpus order (all pairs of token i, then of token i + 1), the order in
    which word2vec.c and gensim visit them; with a linearly decaying rate no global shuffle is
    needed, and skipping it saves a random permutation of every pair each epoch.
    """
    ids, sent = _subsample(corpus, keep_prob, rng)
    context = _context_matrix(ids, sent, window, rng)  # (N, 2W)
    valid = context >= 0
    centres = np.broadcast_to(ids[:, None], context.shape)[valid]
    return centres, context[valid]


def cbow_examples(corpus: EncodedCorpus, window: int, keep_prob: np.ndarray,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """CBOW examples of one epoch: (target (M,), context (M, 2 * window) padded with -1).

    Slots beyond the drawn window or the sentence are -1; targets with no context are dropped.
    """
    ids, sent = _subsample(corpus, keep_prob, rng)
    context = _context_matrix(ids, sent, window, rng)  # (N, 2W)
    has_context = (context >= 0).any(axis=1)
    return ids[has_context], context[has_context]


class Word2VecBatches:
    """Builds fixed-size batches of word2vec examples, epoch after epoch.

    Each batch is a dict of int32 arrays:
      skip-gram: centre (B,), context (B,), negatives (B, K)
      CBOW:      centre (B,) (the target), context (B, 2W) (-1 = empty slot), negatives (B, K)
    The last partial batch of an epoch is dropped.
    """

    def __init__(self, corpus: EncodedCorpus, vocab: Vocab, *, batch_size: int, window: int,
                 negatives: int, sample: float = 1e-3, cbow: bool = False, seed: int = 0,
                 power: float = 0.75, table_size: int | None = None):
        self.corpus, self.vocab = corpus, vocab
        self.batch_size, self.window = batch_size, window
        self.negatives, self.cbow = negatives, cbow
        self.keep_prob = subsample_keep_prob(vocab.counts, sample)
        # 100 slots per word (at least 1e6) keeps the table cache-friendly for small vocabularies
        # while every word's share stays within 1e-6 of its probability.
        table_size = table_size or max(1_000_000, 100 * len(vocab))
        self.table = negative_table(vocab.counts, power, table_size)
        self.rng = np.random.default_rng(seed)
        self.epoch = 0

    def sample_negatives(self, shape) -> np.ndarray:
        """Word ids drawn from the unigram^power distribution (through the table)."""
        return self.table[self.rng.integers(0, len(self.table), size=shape, dtype=np.int32)]

    def epoch_arrays(self, with_negatives: bool = True) -> dict[str, np.ndarray]:
        """One epoch as arrays stacked (n_batches, B, ...), in corpus order.

        The last partial batch is dropped. Without negatives the caller samples them itself
        (the trainer does so on the device, from `self.table`).
        """
        make = cbow_examples if self.cbow else skipgram_pairs
        centre, context = make(self.corpus, self.window, self.keep_prob, self.rng)
        n_batches, b = len(centre) // self.batch_size, self.batch_size
        if n_batches == 0:
            raise ValueError(f"The corpus gives {len(centre)} examples per epoch, fewer than "
                             f"batch_size={b}")
        out = {"centre": centre[:n_batches * b].reshape(n_batches, b),  # (S, B)
               "context": context[:n_batches * b].reshape((n_batches, b) + context.shape[1:])}
        if with_negatives:
            out["negatives"] = self.sample_negatives((n_batches, b, self.negatives))  # (S, B, K)
        self.epoch += 1
        return out

    def epoch_batches(self) -> Iterator[dict[str, np.ndarray]]:
        """One epoch of batch dicts: centre (B,), context (B,) or (B, 2W), negatives (B, K)."""
        arrays = self.epoch_arrays()
        for i in range(len(arrays["centre"])):
            yield {k: v[i] for k, v in arrays.items()}


def cooccurrence_matrix(corpus: EncodedCorpus, vocab_size: int, window: int,
                        symmetric: bool = True) -> scipy.sparse.coo_matrix:
    """GloVe co-occurrence counts X[i, j] = sum over pairs within `window` of 1 / distance.

    Pairs never cross sentence boundaries. With `symmetric`, both (i, j) and (j, i) count.
    Returns a COO matrix with summed duplicates (float64), shape (V, V).
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    ids, sent = corpus.ids, corpus.sentence_ids
    total = None
    for d in range(1, min(window, len(ids) - 1) + 1):
        same = sent[:-d] == sent[d:]
        rows, cols = ids[:-d][same], ids[d:][same]
        if symmetric:
            rows, cols = np.concatenate([rows, cols]), np.concatenate([cols, rows])
        part = scipy.sparse.csr_matrix(
            (np.full(len(rows), 1.0 / d), (rows, cols)), shape=(vocab_size, vocab_size))
        # Summing per distance keeps memory at one distance's pairs at a time.
        total = part if total is None else total + part
    if total is None or total.nnz == 0:
        # No two in-vocabulary words share a sentence (e.g. one-word text units).
        raise ValueError(f"The corpus has no co-occurrences: no two in-vocabulary words are "
                         f"within window={window} of each other in one sentence")
    coo = total.tocoo()
    coo.sum_duplicates()
    return coo


def load_sentences(spec: str, text_field: str = "text",
                   key: str | None = None) -> list[list[str]]:
    """Tokenised text units of a corpus named by `spec` (see `tl_jax.data.sources`); `key`:
    the config key that named it, for errors to name.

    Environment variables in the spec are expanded, so configs can name
    `$TL_JAX_DATA_DIR/austen.jsonl` without hard-coding the data folder.

    One source file's text is held at a time, and every occurrence of a word is the same string
    object: a token is then an 8-byte reference in its sentence, not a string of its own (~55
    bytes). The Austen file 10 times over (7.2 M words) peaked at 0.61 GB read whole with a
    string a token, 0.17 GB this way.
    """
    from tl_jax.data import sources

    sentences, words = [], {}
    for _, documents in sources.iter_sources(paths.expand(spec), text_field=text_field, key=key):
        for document in documents:
            for unit in document:
                sentence = [words.setdefault(w, w) for w in tokenize(unit)]
                if sentence:
                    sentences.append(sentence)
        del documents
    if not sentences:
        raise ValueError(f"Corpus {spec!r} has no words")
    return sentences


def data_path(name: str) -> pathlib.Path:
    """A file in the shared data folder, `$TL_JAX_DATA_DIR/name`, with a clear error if unset."""
    import os

    root = os.environ.get("TL_JAX_DATA_DIR")
    if not root:
        raise ValueError(f"TL_JAX_DATA_DIR is not set; it is needed to find {name!r}")
    return pathlib.Path(root) / name

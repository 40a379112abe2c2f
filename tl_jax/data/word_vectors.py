"""Training data for static word embeddings: vocabulary, word2vec examples, GloVe co-occurrences.

Everything here is vectorised numpy over an encoded corpus (a flat array of word ids plus a
parallel array of sentence ids), without Python loops over tokens; an epoch's examples are built
from a block of the corpus at a time (a million-word block in well under a second), so an epoch
never exists whole.

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

import array
import collections
import concurrent.futures
import dataclasses
import functools
import pathlib
import re
import sys
import unicodedata
from typing import Iterable, Iterator, Sequence

import numpy as np
import scipy.sparse

from tl_jax import paths

# Lowercase words: letters/digits, keeping inner apostrophes and hyphens ("don't", "well-known").
# This one is for ASCII text; `_unicode_word_re` gives the same for any other.
_WORD_RE = re.compile(r"[a-z0-9]+(?:['\-][a-z0-9]+)*")


@functools.cache
def combining_marks() -> str:
    """A regex character-class body of every combining mark (Unicode category M), which `\\w`
    does not match: the accent of a decomposed "e\u0301", and the vowel signs of scripts such as
    Devanagari. A word that stopped at them was cut in pieces."""
    marks = [c for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c))[0] == "M"]
    ranges, start = [], marks[0]
    for previous, c in zip(marks, marks[1:] + [None]):
        if c != previous + 1:
            ranges.append(f"{chr(start)}-{chr(previous)}" if previous > start else chr(start))
            start = c
    return "".join(ranges)


@functools.cache
def _unicode_word_re() -> re.Pattern:
    """`_WORD_RE` for any script: a letter or digit of any alphabet, each followed by its
    combining marks ("café", "zürich", Devanagari "हिन्दी" are one word each)."""
    # Letters and digits, runs of marks among them (not at the start): twice as fast as the
    # same words written (?:[^\W_][marks]*)+.
    marks = combining_marks()
    piece = rf"[^\W_]+(?:[{marks}]+[^\W_]*)*"
    return re.compile(rf"{piece}(?:['\-]{piece})*")


def tokenize(text: str) -> list[str]:
    """The simple lowercase word tokenizer used for static embeddings (punctuation dropped).

    Words are runs of letters and digits of any script (with their accents: text is put in NFC
    form first, so a decomposed "cafe\u0301" and "café" are one word), keeping inner apostrophes
    and hyphens. Text written without spaces (Chinese, Japanese) needs segmenting first: a run of
    its characters is one word."""
    text = text.lower().replace("\u2019", "'")
    if text.isascii():
        return _WORD_RE.findall(text)
    # (Only ASCII letters were words: "café" was "caf", "Zürich" the two words "z" and "rich".)
    return _unicode_word_re().findall(unicodedata.normalize("NFC", text))


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
        return cls.from_counts(counter.items(), min_count, max_size)

    @classmethod
    def from_counts(cls, word_counts: Iterable[tuple[str, int]], min_count: int = 5,
                    max_size: int | None = None) -> "Vocab":
        """The words counted at least `min_count` times (at most `max_size`, the most frequent),
        by decreasing count, ties alphabetically; `word_counts`: (word, count) pairs."""
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        items = sorted(((w, c) for w, c in word_counts if c >= min_count),
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
    """A corpus as one flat id array, cut into sentences by their lengths.

    The sentences are those with an in-vocabulary word, in order; which sentence a token is in
    is worked out for a block of tokens at a time (`sentence_ids_of`), not stored: 4 bytes a
    token less, for a whole run."""

    ids: np.ndarray  # (N,) int32
    lengths: np.ndarray  # (S,) int64, tokens in each sentence (none 0), summing to N
    n_words: int = 0  # tokens of the text, out-of-vocabulary ones too (0: N)

    def __post_init__(self):
        self.n_words = self.n_words or len(self.ids)
        self.ends = np.cumsum(self.lengths, dtype=np.int64)  # (S,) where each sentence ends
        if (self.ends[-1] if len(self.ends) else 0) != len(self.ids) or (self.lengths < 1).any():
            raise ValueError(f"sentence lengths summing to {int(self.lengths.sum())} (none 0) "
                             f"must cut the {len(self.ids)} ids")

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_sentence_ids(cls, ids: np.ndarray, sentence_ids: np.ndarray) -> "EncodedCorpus":
        """From each token's sentence (non-decreasing: equal for tokens of one sentence)."""
        starts = np.flatnonzero(np.r_[True, sentence_ids[1:] != sentence_ids[:-1]]) \
            if len(ids) else np.zeros(0, np.int64)
        return cls(ids, np.diff(np.r_[starts, len(ids)]).astype(np.int64))

    def sentence_ids_of(self, start: int, stop: int) -> np.ndarray:
        """(stop - start,) int32: the sentence (0, 1, ...) of each of tokens start..stop-1."""
        if stop <= start:
            return np.zeros(0, np.int32)
        first, last = np.searchsorted(self.ends, [start, stop - 1], side="right")
        ends = self.ends[first:last + 1]
        counts = np.minimum(ends, stop) - np.maximum(ends - self.lengths[first:last + 1], start)
        return np.repeat(np.arange(first, last + 1, dtype=np.int32), counts)

    @property
    def sentence_ids(self) -> np.ndarray:
        """(N,) int32: every token's sentence (the whole corpus's at once)."""
        return np.repeat(np.arange(len(self.lengths), dtype=np.int32), self.lengths)


def encode_corpus(sentences: Iterable[Sequence[str]], vocab: Vocab) -> EncodedCorpus:
    """Encodes tokenised sentences; out-of-vocabulary words are removed before windowing."""
    chunks, lengths, n_words = [], [], 0
    for i, sentence in enumerate(sentences):
        _check_tokenised(i, sentence)
        ids = vocab.encode(sentence)
        n_words += len(sentence)
        if len(ids):
            chunks.append(ids)
            lengths.append(len(ids))
    if not chunks:
        raise ValueError("The corpus has no in-vocabulary words")
    return EncodedCorpus(np.concatenate(chunks), np.array(lengths, np.int64), n_words)


@dataclasses.dataclass
class WordCorpus:
    """A tokenised corpus read once into integers: its distinct words in the order first seen,
    how often each occurs, every token as an index into `words`, and each sentence's length.

    About 4 bytes a token, where sentences as lists of words took about 24 (an 8-byte reference
    a token, plus a list a sentence), and it is all a vocabulary and an `EncodedCorpus` need:
    `vocab` and `encode` give what `Vocab.build` and `encode_corpus` give for its sentences.
    """

    words: list[str]
    counts: np.ndarray  # (W,) int64
    ids: np.ndarray  # (N,) int32 indices into `words`
    lengths: np.ndarray  # (S,) int32, tokens in each sentence (none empty)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_sentences(self) -> int:
        return len(self.lengths)

    @classmethod
    def from_sentences(cls, sentences: Iterable[Sequence[str]],
                       max_sentences: int = 0) -> "WordCorpus":
        """Reads tokenised sentences (empty ones dropped), the first `max_sentences` non-empty
        ones when that is > 0, consuming no more of `sentences` than that."""
        index: dict[str, int] = {}
        ids, lengths = array.array("i"), array.array("i")
        for i, sentence in enumerate(sentences):
            _check_tokenised(i, sentence)
            if not sentence:
                continue
            ids.extend([index.setdefault(w, len(index)) for w in sentence])
            lengths.append(len(sentence))
            if len(lengths) == max_sentences:
                break
        ids = np.frombuffer(ids, dtype=np.int32) if ids else np.zeros(0, np.int32)
        counts = np.zeros(len(index), np.int64)
        for a in range(0, len(ids), EPOCH_BLOCK_TOKENS):  # bincount copies its input to int64
            counts += np.bincount(ids[a:a + EPOCH_BLOCK_TOKENS], minlength=len(index))
        return cls(list(index), counts, ids,
                   np.frombuffer(lengths, dtype=np.int32) if lengths else np.zeros(0, np.int32))

    def vocab(self, min_count: int = 5, max_size: int | None = None) -> Vocab:
        """The `Vocab.build` of its sentences."""
        return Vocab.from_counts(zip(self.words, self.counts.tolist()), min_count, max_size)

    def encode(self, vocab: Vocab) -> EncodedCorpus:
        """The `encode_corpus` of its sentences: out-of-vocabulary tokens removed, and the
        sentences left without a word."""
        to_vocab = np.array([vocab.index.get(w, -1) for w in self.words], dtype=np.int32)
        ids = to_vocab[self.ids]
        known = ids >= 0
        if not known.any():
            raise ValueError("The corpus has no in-vocabulary words")
        starts = np.r_[0, np.cumsum(self.lengths[:-1], dtype=np.int64)]
        lengths = np.add.reduceat(known, starts, dtype=np.int64)  # known words a sentence
        return EncodedCorpus(ids[known], lengths[lengths > 0], len(self))


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


# Corpus tokens an epoch's examples are built from at a time (`Word2VecBatches.epoch_chunks`).
EPOCH_BLOCK_TOKENS = 1 << 20


def _subsample(corpus: EncodedCorpus, keep_prob: np.ndarray, rng) -> EncodedCorpus:
    """The tokens an epoch keeps (each with probability `keep_prob` of its word), in their
    sentences (those left without a token dropped)."""
    # Drawn a block at a time: a float64 draw is one generator output, so the blocks draw
    # exactly what one call for the whole corpus would, without its 8 bytes a token at once.
    keep = np.empty(len(corpus.ids), bool)
    for a in range(0, len(keep), EPOCH_BLOCK_TOKENS):
        ids = corpus.ids[a:a + EPOCH_BLOCK_TOKENS]
        keep[a:a + len(ids)] = rng.random(len(ids)) < keep_prob[ids]
    lengths = np.add.reduceat(keep, corpus.ends - corpus.lengths, dtype=np.int64)
    return EncodedCorpus(corpus.ids[keep], lengths[lengths > 0])


def _draw_reach(n: int, window: int, rng: np.random.Generator) -> np.ndarray:
    """b_i ~ U{1..window} for each of `n` centre words (one call: bounded integer draws are
    buffered within a call, so blocks of calls would draw other numbers)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    return rng.integers(1, window + 1, size=n).astype(np.min_scalar_type(window))


def _context_matrix(ids: np.ndarray, sent: np.ndarray, window: int,
                    reach: np.ndarray) -> np.ndarray:
    """(N, 2W) context ids of every token under a dynamic window; -1 marks an empty slot.

    Token i, with `reach[i]` = b_i in 1..window, sees the words at distance d <= b_i in its
    sentence. Slot order is [-1, +1, -2, +2, ...].
    """
    n = len(ids)
    context = np.full((n, 2 * window), -1, dtype=np.int32)  # (N, 2W)
    for d in range(1, min(window, n - 1) + 1):
        same = sent[:-d] == sent[d:]
        # The left neighbour at distance d of token i + d is token i, and vice versa.
        ok = same & (reach[d:] >= d)
        context[d:, 2 * d - 2][ok] = ids[:-d][ok]
        ok = same & (reach[:-d] >= d)
        context[:-d, 2 * d - 1][ok] = ids[d:][ok]
    return context


def _examples_per_token(sent: np.ndarray, reach: np.ndarray, cbow: bool) -> np.ndarray:
    """How many examples each (kept) token gives: skip-gram, its context words on either side
    within its reach and sentence; CBOW, 1 if it has any. Computed from the sentence positions,
    without building the contexts."""
    n = len(sent)
    starts = np.flatnonzero(np.r_[True, sent[1:] != sent[:-1]])
    lengths = np.diff(np.r_[starts, n])
    length = np.repeat(lengths, lengths)  # of each token's sentence
    if cbow:
        return (length > 1).astype(np.int64)
    pos = np.arange(n) - np.repeat(starts, lengths)  # position in its sentence
    after = length - 1 - pos
    reach = reach.astype(np.int64)
    return np.minimum(reach, pos) + np.minimum(reach, after)


def skipgram_pairs(corpus: EncodedCorpus, window: int, keep_prob: np.ndarray,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(centre, context) pairs of one epoch, after subsampling, with a dynamic window.

    Pairs come out in corpus order (all pairs of token i, then of token i + 1), the order in
    which word2vec.c and gensim visit them; with a linearly decaying rate no global shuffle is
    needed, and skipping it saves a random permutation of every pair each epoch.
    """
    kept = _subsample(corpus, keep_prob, rng)
    ids, sent = kept.ids, kept.sentence_ids
    context = _context_matrix(ids, sent, window, _draw_reach(len(ids), window, rng))  # (N, 2W)
    valid = context >= 0
    centres = np.broadcast_to(ids[:, None], context.shape)[valid]
    return centres, context[valid]


def cbow_examples(corpus: EncodedCorpus, window: int, keep_prob: np.ndarray,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """CBOW examples of one epoch: (target (M,), context (M, 2 * window) padded with -1).

    Slots beyond the drawn window or the sentence are -1; targets with no context are dropped.
    """
    kept = _subsample(corpus, keep_prob, rng)
    ids, sent = kept.ids, kept.sentence_ids
    context = _context_matrix(ids, sent, window, _draw_reach(len(ids), window, rng))  # (N, 2W)
    has_context = (context >= 0).any(axis=1)
    return ids[has_context], context[has_context]


class Word2VecBatches:
    """Builds fixed-size batches of word2vec examples, epoch after epoch.

    Each batch is a dict of int32 arrays:
      skip-gram: centre (B,), context (B,), negatives (B, K)
      CBOW:      centre (B,) (the target), context (B, 2W) (-1 = empty slot), negatives (B, K)
    The last partial batch of an epoch is dropped.

    `epoch_chunks` gives an epoch's steps a chunk at a time, built from `EPOCH_BLOCK_TOKENS`
    tokens at a time, so an epoch never exists whole (its examples took ~100 bytes a corpus
    word at window 5, and the trainer held two epochs at once).
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

    def epoch_chunks(self, steps_per_chunk: int) -> tuple[int, Iterator[dict[str, np.ndarray]]]:
        """`(n_steps, chunks)`: the next epoch's number of steps, and its steps in corpus order
        as dicts of arrays stacked (S, B, ...) with S = `steps_per_chunk` (the last chunk may
        have fewer), without negatives (the trainer samples them on the device).

        The epoch's random draws (subsampling, each centre's window) are made here, in the order
        `skipgram_pairs` / `cbow_examples` make them, so the steps are theirs; the examples are
        built as the chunks are read, a block of tokens at a time.
        """
        if steps_per_chunk < 1:
            raise ValueError(f"steps_per_chunk must be >= 1, got {steps_per_chunk}")
        kept = _subsample(self.corpus, self.keep_prob, self.rng)
        reach = _draw_reach(len(kept), self.window, self.rng)
        total = sum(int(self._block_count(kept, reach, a))
                    for a in range(0, len(kept), EPOCH_BLOCK_TOKENS))
        b = self.batch_size
        n_steps = total // b
        if n_steps == 0:
            raise ValueError(f"The corpus gives {total} examples per epoch, fewer than "
                             f"batch_size={b}")
        self.epoch += 1
        # The first block is built from now on, on a thread, the next while a block's chunks
        # are given and trained on (numpy releases the GIL in its array loops).
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        first = pool.submit(self._block, kept, reach, 0)
        return n_steps, self._chunks(kept, reach, n_steps, steps_per_chunk, pool, first)

    def _block_span(self, n, a):
        """(z, lo, hi): kept tokens a..z-1 form the block starting at `a`; lo..hi-1 adds its
        `window` neighbours each side (a centre's examples depend on nothing further away)."""
        z = min(a + EPOCH_BLOCK_TOKENS, n)
        return z, max(0, a - self.window), min(n, z + self.window)

    def _block_count(self, kept, reach, a):
        """How many examples the block of kept tokens starting at `a` gives."""
        z, lo, hi = self._block_span(len(kept), a)
        return _examples_per_token(kept.sentence_ids_of(lo, hi), reach[lo:hi],
                                   self.cbow)[a - lo:z - lo].sum()

    def _block(self, kept, reach, a):
        """The examples (centres, contexts) of the block of kept tokens starting at `a`."""
        z, lo, hi = self._block_span(len(kept), a)
        ids = kept.ids
        context = _context_matrix(ids[lo:hi], kept.sentence_ids_of(lo, hi), self.window,
                                  reach[lo:hi])[a - lo:z - lo]
        if self.cbow:
            has = (context >= 0).any(axis=1)
            return ids[a:z][has], context[has]
        valid = context >= 0
        return np.broadcast_to(ids[a:z, None], context.shape)[valid], context[valid]

    def _chunks(self, kept, reach, n_steps, steps_per_chunk, pool, upcoming):
        b = self.batch_size
        want = steps_per_chunk * b  # examples a chunk
        centre = context = None  # examples built and not yet given, from `start` on
        start, done = 0, 0  # done: steps given

        def give(n):
            steps = n // b
            return {"centre": centre[start:start + n].reshape(steps, b),
                    "context": context[start:start + n].reshape((steps, b) + context.shape[1:])}

        blocks = range(0, len(kept), EPOCH_BLOCK_TOKENS)
        with pool:  # giving a chunk only slices
            for i in range(len(blocks)):
                new_centre, new_context = upcoming.result()
                if i + 1 < len(blocks):
                    upcoming = pool.submit(self._block, kept, reach, blocks[i + 1])
                if centre is None:
                    centre, context = new_centre, new_context
                else:  # the rest of the last block, then this one (never changed once given)
                    centre = np.concatenate([centre[start:], new_centre])
                    context = np.concatenate([context[start:], new_context])
                start = 0
                while len(centre) - start >= want and done + steps_per_chunk <= n_steps:
                    yield give(want)
                    start += want
                    done += steps_per_chunk
        if done < n_steps:
            yield give((n_steps - done) * b)

    def epoch_arrays(self, with_negatives: bool = True) -> dict[str, np.ndarray]:
        """One epoch as arrays stacked (n_batches, B, ...), in corpus order (the whole epoch at
        once; the trainer reads it in chunks through `epoch_chunks`).

        The last partial batch is dropped. Without negatives the caller samples them itself
        (the trainer does so on the device, from `self.table`).
        """
        n_steps, chunks = self.epoch_chunks(1 << 30)
        (out,) = chunks
        if with_negatives:
            out["negatives"] = self.sample_negatives((n_steps, self.batch_size,
                                                      self.negatives))  # (S, B, K)
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
    ids = corpus.ids
    n, total = len(ids), None
    for d in range(1, min(window, n - 1) + 1):
        # Pairs a block at a time (a distance's pairs over the whole corpus took ~40 bytes a
        # token), counted in integers, so the blocks add exactly; weighted once per distance.
        count = None
        for a in range(0, n - d, EPOCH_BLOCK_TOKENS):
            z = min(a + EPOCH_BLOCK_TOKENS, n - d)
            sent = corpus.sentence_ids_of(a, z + d)
            same = sent[:z - a] == sent[d:]
            rows, cols = ids[a:z][same], ids[a + d:z + d][same]
            if symmetric:
                rows, cols = np.concatenate([rows, cols]), np.concatenate([cols, rows])
            part = scipy.sparse.csr_matrix((np.ones(len(rows), np.int64), (rows, cols)),
                                           shape=(vocab_size, vocab_size))
            count = part if count is None else count + part
        # Summing per distance keeps memory at one distance's counts at a time.
        part = count.astype(np.float64) * (1.0 / d)
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

    The files are read as their documents are tokenised, and every occurrence of a word is the
    same string object: a token is then an 8-byte reference in its sentence, not a string of
    its own (~55 bytes). The Austen file 10 times over (7.2 M words) peaked at 0.61 GB read
    whole with a string a token, 0.17 GB with one a word. (`read_corpus` holds 4 bytes a token.)
    """
    from tl_jax.data import sources

    sentences, words = [], {}
    for document in sources.iter_documents(paths.expand(spec), text_field=text_field, key=key):
        for unit in document:
            sentence = [words.setdefault(w, w) for w in tokenize(unit)]
            if sentence:
                sentences.append(sentence)
    if not sentences:
        raise ValueError(f"Corpus {spec!r} has no words")
    return sentences


def read_corpus(spec: str, text_field: str = "text", key: str | None = None,
                max_sentences: int = 0) -> WordCorpus:
    """The corpus named by `spec` as a `WordCorpus`: the text units `load_sentences` gives, the
    first `max_sentences` of them when that is > 0 (the text after those is not read).

    The files are read a document at a time, and each text unit's words turned into integers
    as it is tokenised, so the corpus is never held as text or as lists of words (on the Austen
    file 50 times over, 36 M words: 145 MB of ids where the lists took ~320 MB, with the 220 MB
    file read whole beside them).
    """
    from tl_jax.data import sources

    units = (tokenize(unit) for document in sources.iter_documents(
        paths.expand(spec), text_field=text_field, key=key) for unit in document)
    corpus = WordCorpus.from_sentences(units, max_sentences)
    if not len(corpus):
        raise ValueError(f"Corpus {spec!r} has no words")
    return corpus


def data_path(name: str) -> pathlib.Path:
    """A file in the shared data folder, `$TL_JAX_DATA_DIR/name`, with a clear error if unset."""
    import os

    root = os.environ.get("TL_JAX_DATA_DIR")
    if not root:
        raise ValueError(f"TL_JAX_DATA_DIR is not set; it is needed to find {name!r}")
    return pathlib.Path(root) / name

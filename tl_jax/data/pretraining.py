"""BERT pretraining data: sentence-pair (NSP) instances from documents, and the one entry point.

Instances follow the original `create_pretraining_data.py` (google-research/bert):

* documents are lists of tokenised sentences; sentences are packed into a chunk until it reaches
  a target length of `max_seq_length - 3` tokens (with probability `short_seq_prob` a random
  shorter target in [2, max_seq_length - 3], so the model also sees inputs as short as
  fine-tuning ones);
* the chunk is cut at a random sentence boundary into A and B. With probability 0.5
  (`data.random_next_prob`; and always when the document is a single sentence) B is instead
  taken from a random position in another document (label 1, "random next"); the unused
  sentences are put back for the next chunk. ELECTRA's data has no such pairs (its B always
  continues A): `data.random_next_prob=0`;
* `truncate_seq_pair` trims the longer of A and B one token at a time, from the front or the
  back at random, until the pair fits;
* the layout is `[CLS] A [SEP] B [SEP]` with segment ids 0 for `[CLS] A [SEP]` and 1 after.

Three deliberate differences:

* the original retried 10 times to draw a random document different from the current one and
  then used whatever it got; here the random document is drawn from the other documents
  directly, so a "random next" segment never comes from the same document;
* the original closed a chunk as soon as it reached the target, even with a single sentence
  in it, and such a chunk can only make a "random next" pair: that put the random share at
  54% (max_seq_length 64, Wikipedia; 58% on the short Lee news articles). Here a chunk takes
  a second sentence before it closes (truncation then trims the pair to fit), it never leaves
  the document's last sentence alone, and a last sentence left alone anyway (put back after a
  "random next" pair) is dropped. Only one-sentence documents still make "random next" pairs
  only; the labels are balanced (49-51% on Wikipedia, Lee and Austen);
* the original drew the short target once per document, so a corpus of few long documents
  (six novels) got either no short instances or a whole novel of them; here it is drawn for
  every instance, so `short_seq_prob` is the fraction of instances with a short target.

Every random choice comes from `np.random.default_rng([seed, stream, copy, document])`, so
instances depend only on the seed and the corpus, not on processing order.

The tokenised corpus is held flat (`TokenizedDocuments`: one int32 token array and offsets),
and an instance is written straight from slices of it, never as lists of Python ints.

`build_pretraining_data(data_config, ...)` turns a config into a tokenizer, a resumable training
iterator and an eval pass (see `tl_jax/data/pretraining_iterator.py`).
"""
from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Callable, Iterable, Sequence

import numpy as np

from tl_jax import paths
from tl_jax.checkpoint import has_saved_step
from tl_jax.progress import bar as progress_bar, phase
from tl_jax.data.masking import Masker, check_replacement_probs
from tl_jax.data.pretraining_iterator import (
    PretrainingIterator,
    eval_batches,
    zero_batch,
)
from tl_jax.data.sources import AUTO_GROUP_FIELDS, load_documents, split_sentences
from tl_jax.data.tokenizer import SPECIAL_TOKENS, Tokenizer, vocab_lowercase

# Stream tags in the rng seeds, so instance creation and the eval split draw independent numbers.
_CREATE_STREAM = 11
# The held-out set (documents, pairs, masks) does not depend on the run's seed, so runs with
# different seeds (ablations) are scored on the same examples.
_EVAL_SPLIT_SEED = 20190524

TokenizedDocument = list[list[int]]  # sentences of token ids


@dataclasses.dataclass
class TokenizedDocuments:
    """Documents of tokenised sentences, held flat: one int32 array of every token (4 bytes a
    token, where lists of Python ints cost about 36) and two offset arrays.

    Sentence s is `tokens[sentence_offsets[s]:sentence_offsets[s + 1]]`; document d is
    sentences `document_offsets[d]` up to `document_offsets[d + 1]`. A document's sentences
    are consecutive, so any run of them is one slice of `tokens`.
    """

    tokens: np.ndarray  # (total_tokens,) int32
    sentence_offsets: np.ndarray  # (S + 1,) int64
    document_offsets: np.ndarray  # (D + 1,) int64

    def __len__(self) -> int:
        return len(self.document_offsets) - 1

    @property
    def num_sentences(self) -> int:
        return len(self.sentence_offsets) - 1

    def __getitem__(self, d: int) -> TokenizedDocument:
        """Document d as lists of ids (for a look at one document; instances use the arrays)."""
        if not 0 <= d < len(self):
            raise IndexError(f"document {d} of {len(self)}")
        first, end = self.document_offsets[d], self.document_offsets[d + 1]
        so = self.sentence_offsets
        return [self.tokens[so[s]:so[s + 1]].tolist() for s in range(first, end)]

    def select(self, documents) -> "TokenizedDocuments":
        """The documents `documents` (indices, in order), those without a sentence dropped, as
        `tokenize_documents` of their text would give them."""
        documents = np.asarray(documents, np.int64)
        first, end = self.document_offsets[documents], self.document_offsets[documents + 1]
        keep = end > first
        first, end = first[keep], end[keep]
        counts = end - first
        document_offsets = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(counts, out=document_offsets[1:])
        # The sentences taken, then their tokens: one slice of each document's.
        sentences = (np.repeat(first - document_offsets[:-1], counts)
                     + np.arange(document_offsets[-1]))
        so = self.sentence_offsets
        lengths = so[sentences + 1] - so[sentences]
        sentence_offsets = np.zeros(len(sentences) + 1, np.int64)
        np.cumsum(lengths, out=sentence_offsets[1:])
        starts = so[first]
        token_counts = so[end] - starts
        tokens = np.empty(int(sentence_offsets[-1]), np.int32)
        at = 0
        for start, n in zip(starts.tolist(), token_counts.tolist()):
            tokens[at:at + n] = self.tokens[start:start + n]
            at += n
        return TokenizedDocuments(tokens, sentence_offsets, document_offsets)

    @classmethod
    def from_lists(cls, documents: Sequence[TokenizedDocument]) -> "TokenizedDocuments":
        """From documents given as lists of sentences of ids, kept as they are."""
        sentence_lengths = [len(sentence) for doc in documents for sentence in doc]
        sentence_offsets = np.zeros(len(sentence_lengths) + 1, np.int64)
        np.cumsum(sentence_lengths, out=sentence_offsets[1:])
        document_offsets = np.zeros(len(documents) + 1, np.int64)
        np.cumsum([len(doc) for doc in documents], out=document_offsets[1:])
        tokens = np.fromiter((t for doc in documents for sentence in doc for t in sentence),
                             np.int32, count=int(sentence_offsets[-1]))
        return cls(tokens, sentence_offsets, document_offsets)


@dataclasses.dataclass
class PretrainingInstances:
    """Packed NSP instances: token rows stored back to back, so millions fit in a few arrays."""

    tokens: np.ndarray  # (total_tokens,) int32: each instance's [CLS] A [SEP] B [SEP]
    offsets: np.ndarray  # (N + 1,) int64: instance i is tokens[offsets[i]:offsets[i + 1]]
    num_a: np.ndarray  # (N,) int32: length of the segment-0 prefix `[CLS] A [SEP]`
    nsp_labels: np.ndarray  # (N,) int32: 0 = B is the actual next segment, 1 = random

    def __len__(self) -> int:
        return len(self.num_a)

    def tokens_of(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]

    def select(self, indices) -> "PretrainingInstances":
        """The instances at `indices`, in that order (e.g. a subset for a quick run)."""
        return PretrainingInstances.from_rows(
            [(self.tokens_of(i).tolist(), int(self.num_a[i]), int(self.nsp_labels[i]))
             for i in indices])

    @classmethod
    def empty(cls) -> "PretrainingInstances":
        return cls(np.zeros(0, np.int32), np.zeros(1, np.int64), np.zeros(0, np.int32),
                   np.zeros(0, np.int32))

    @classmethod
    def from_rows(cls, rows: Sequence[tuple[list[int], int, int]]) -> "PretrainingInstances":
        """From `(tokens, num_a, nsp_label)` rows."""
        lengths = np.array([len(r[0]) for r in rows], dtype=np.int64)
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        tokens = np.fromiter((t for r in rows for t in r[0]), dtype=np.int32, count=int(offsets[-1]))
        return cls(
            tokens=tokens,
            offsets=offsets,
            num_a=np.array([r[1] for r in rows], dtype=np.int32),
            nsp_labels=np.array([r[2] for r in rows], dtype=np.int32),
        )

    @classmethod
    def concatenate(cls, parts: Sequence["PretrainingInstances"]) -> "PretrainingInstances":
        offsets = [np.zeros(1, dtype=np.int64)]
        start = 0
        for p in parts:
            offsets.append(p.offsets[1:] + start)
            start += int(p.offsets[-1])
        return cls(
            tokens=np.concatenate([p.tokens for p in parts]).astype(np.int32),
            offsets=np.concatenate(offsets),
            num_a=np.concatenate([p.num_a for p in parts]).astype(np.int32),
            nsp_labels=np.concatenate([p.nsp_labels for p in parts]).astype(np.int32),
        )


def _truncation(len_a: int, len_b: int, max_num_tokens: int, rng) -> tuple[int, int, int, int]:
    """(front cut of A, kept length of A, front cut of B, kept length of B) after trimming the
    longer segment one token at a time, from the front or the back at random, until both fit.

    Same decisions as trimming token by token, but counted first and cut once (deleting list
    heads one at a time is quadratic on long chunks). Draws nothing when the pair fits.
    """
    excess = len_a + len_b - max_num_tokens
    if excess <= 0:
        return 0, len_a, 0, len_b
    front_a = front_b = 0
    sides = rng.random(excess) < 0.5
    for from_front in sides:
        if len_a > len_b:
            len_a -= 1
            front_a += int(from_front)
        else:
            len_b -= 1
            front_b += int(from_front)
    return front_a, len_a, front_b, len_b


def truncate_seq_pair(tokens_a: list, tokens_b: list, max_num_tokens: int, rng) -> None:
    """Trims the longer list in place, one token at a time from the front or the back at
    random (so the model does not always see sentence ends, as in BERT), until both fit."""
    cut_a, len_a, cut_b, len_b = _truncation(len(tokens_a), len(tokens_b), max_num_tokens, rng)
    tokens_a[:] = tokens_a[cut_a:cut_a + len_a]
    tokens_b[:] = tokens_b[cut_b:cut_b + len_b]


# The columns of the instance specs `create_instances_from_document` returns: A is
# tokens[a_start:a_start + a_length] of the corpus, B likewise, and the NSP label.
_SPEC_COLUMNS = ("a_start", "a_length", "b_start", "b_length", "nsp_label")


def create_instances_from_document(
    documents: TokenizedDocuments,
    document_index: int,
    max_seq_length: int,
    short_seq_prob: float,
    rng: np.random.Generator,
    random_next_prob: float = 0.5,
) -> np.ndarray:
    """NSP instances from one document, as an (N, 5) int64 array of `_SPEC_COLUMNS`: where in
    `documents.tokens` A and B lie (each is one run of consecutive sentences, truncated), and
    the label. `_assemble` lays them out as `[CLS] A [SEP] B [SEP]`.

    `random_next_prob`: the share of B segments drawn from another document (BERT's 0.5; 0
    keeps B the actual continuation, as ELECTRA's data, except for one-sentence documents).
    """
    so = documents.sentence_offsets
    first = int(documents.document_offsets[document_index])  # the document's first sentence
    num_sentences = int(documents.document_offsets[document_index + 1]) - first
    max_num_tokens = max_seq_length - 3  # room for [CLS], [SEP], [SEP]

    def draw_target() -> int:
        if rng.random() < short_seq_prob:
            return int(rng.integers(2, max_num_tokens + 1))
        return max_num_tokens

    target_seq_length = draw_target()
    specs = []
    chunk_start, chunk_size = first, 0  # the chunk: sentences [chunk_start, + chunk_size)
    chunk_length = 0
    i = 0
    while i < num_sentences:
        if chunk_size == 0:
            chunk_start = first + i
        chunk_size += 1
        chunk_length += int(so[first + i + 1] - so[first + i])
        # A chunk takes at least two sentences, and never leaves the document's last sentence
        # alone for the next chunk (see the module docstring): one sentence alone could only
        # make a "random next" pair.
        last = num_sentences - 1
        if i == last or (chunk_length >= target_seq_length and chunk_size >= 2 and i < last - 1):
            if chunk_size == 1 and num_sentences > 1:
                break  # A lone last sentence put back by a "random next" pair: dropped.
            a_end = 1 if chunk_size < 2 else int(rng.integers(1, chunk_size))
            a_start = int(so[chunk_start])
            a_length = int(so[chunk_start + a_end]) - a_start
            if chunk_size == 1 or rng.random() < random_next_prob:
                is_random_next = 1
                target_b_length = target_seq_length - a_length
                # Any document but this one: draw from n - 1 and skip over our own index.
                other = int(rng.integers(0, len(documents) - 1))
                other += other >= document_index
                other_first = int(documents.document_offsets[other])
                other_end = int(documents.document_offsets[other + 1])
                start = other_first + int(rng.integers(0, other_end - other_first))
                # Sentences from `start` on, up to the first that brings B to its target
                # length (at least one), or to the document's end.
                b_start = int(so[start])
                ends = so[start + 1:other_end + 1]
                k = int(np.searchsorted(ends, b_start + target_b_length, side="left"))
                b_length = int(ends[min(k, len(ends) - 1)]) - b_start
                # The sentences after A were not used: put them back for the next chunk.
                i -= chunk_size - a_end
            else:
                is_random_next = 0
                b_start = int(so[chunk_start + a_end])
                b_length = int(so[chunk_start + chunk_size]) - b_start
            cut_a, a_length, cut_b, b_length = _truncation(a_length, b_length, max_num_tokens,
                                                           rng)
            if a_length and b_length:
                specs.append((a_start + cut_a, a_length, b_start + cut_b, b_length,
                              is_random_next))
            chunk_size = 0
            chunk_length = 0
            target_seq_length = draw_target()
        i += 1
    return np.array(specs, np.int64).reshape(-1, len(_SPEC_COLUMNS))


def _assemble(documents: TokenizedDocuments, specs: np.ndarray, cls_id: int,
              sep_id: int) -> PretrainingInstances:
    """`[CLS] A [SEP] B [SEP]` rows from instance specs, written straight into the packed
    token array (no per-instance lists)."""
    if not len(specs):
        return PretrainingInstances.empty()
    a_start, a_length, b_start, b_length, labels = specs.T
    offsets = np.zeros(len(specs) + 1, np.int64)
    np.cumsum(a_length + b_length + 3, out=offsets[1:])
    tokens = np.empty(int(offsets[-1]), np.int32)
    source = documents.tokens
    tokens[offsets[:-1]] = cls_id
    tokens[offsets[:-1] + a_length + 1] = sep_id
    tokens[offsets[1:] - 1] = sep_id
    for o, sa, la, sb, lb in zip(offsets[:-1].tolist(), a_start.tolist(), a_length.tolist(),
                                 b_start.tolist(), b_length.tolist()):
        tokens[o + 1:o + 1 + la] = source[sa:sa + la]
        tokens[o + 2 + la:o + 2 + la + lb] = source[sb:sb + lb]
    return PretrainingInstances(tokens=tokens, offsets=offsets,
                                num_a=(a_length + 2).astype(np.int32),
                                nsp_labels=labels.astype(np.int32))


def create_instances(
    documents: TokenizedDocuments | Sequence[TokenizedDocument],
    max_seq_length: int,
    short_seq_prob: float,
    seed: int,
    cls_id: int,
    sep_id: int,
    copy: int = 0,
    progress: bool = False,
    random_next_prob: float = 0.5,
) -> PretrainingInstances:
    """NSP instances from all documents (one pass; `copy` varies the draws between passes).

    `documents`: `tokenize_documents`' result, or documents as lists of sentences of ids."""
    if not isinstance(documents, TokenizedDocuments):
        documents = TokenizedDocuments.from_lists(documents)
    if len(documents) < 2:
        raise ValueError(f"NSP needs at least 2 non-empty documents to draw random next segments "
                         f"from; got {len(documents)}.")
    if max_seq_length < 5:
        raise ValueError(f"max_seq_length={max_seq_length} leaves no room for `[CLS] A [SEP] B [SEP]`.")
    specs = []
    # Counted by hand under `with`, so that an error in the loop ends a line-mode bar saying so
    # (a bar iterated by the `for` is freed, and closed as merely stopped, before `with` sees it).
    with progress_bar(total=len(documents), desc="instances", unit="doc",
                      disable=not progress, leave=False) as bar:
        for d in range(len(documents)):
            rng = np.random.default_rng([seed, _CREATE_STREAM, copy, d])
            specs.append(create_instances_from_document(
                documents, d, max_seq_length, short_seq_prob, rng, random_next_prob))
            bar.update(1)
    return _assemble(documents, np.concatenate(specs), cls_id, sep_id)


def tokenize_documents(
    documents: Sequence[Sequence[str]], tokenizer: Tokenizer, chunk_size: int = 20_000,
    progress: bool = True, keep_empty: bool = False,
) -> TokenizedDocuments:
    """Splits units into sentences and tokenises them in batches; drops empty ones, and the
    documents left without a sentence unless `keep_empty` (a tokenised corpus keeps them, so
    that its documents are numbered as the text's).

    Sentences are split and tokenised `chunk_size` at a time and each batch's ids go straight
    into an int32 array, so neither the sentence texts nor the tokenizer's Python lists are
    ever held for the whole corpus.
    """
    pieces, lengths, owners = [], [], []  # per batch: ids, sentence lengths, their documents
    batch_sentences, batch_owners = [], []
    batch_units = 0  # the units (paragraphs, lines) whose sentences are in the batch

    def flush():
        nonlocal batch_units
        # A corpus that writes "[MASK]" or "[PAD]" (text about BERT) must not put a real [PAD]
        # or [SEP] inside a segment, nor an unlabelled [MASK].
        encoded = tokenizer.encode_batch(batch_sentences, special_tokens_as_text=True)
        n = np.fromiter(map(len, encoded), np.int64, count=len(encoded))
        pieces.append(np.fromiter(itertools.chain.from_iterable(encoded), np.int32,
                                  count=int(n.sum())))
        kept = n > 0  # empty sentences (nothing but spaces) are dropped
        lengths.append(n[kept])
        owners.append(np.asarray(batch_owners, np.int64)[kept])
        bar.update(batch_units)  # the bar counts units, as its total does, not sentences
        batch_units = 0
        batch_sentences.clear()
        batch_owners.clear()

    num_units = sum(map(len, documents))
    # As a context manager, so that an error while tokenising (or Ctrl-C) ends a line-mode bar
    # with a line that says where it stopped and why.
    with progress_bar(total=num_units, desc="tokenize", unit="unit",
                      disable=not progress or num_units < chunk_size, leave=False) as bar:
        for d, document in enumerate(documents):
            for unit in document:
                for sentence in split_sentences(unit):
                    batch_sentences.append(sentence)
                    batch_owners.append(d)
                batch_units += 1
                if len(batch_sentences) >= chunk_size:
                    flush()
        if batch_sentences:
            flush()
        bar.update(batch_units)  # trailing units without a sentence
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
    lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    sentence_offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=sentence_offsets[1:])
    # Sentences come in document order; documents left without any are dropped.
    counts = np.bincount(np.concatenate(owners) if owners else np.zeros(0, np.int64),
                         minlength=len(documents))
    if not keep_empty:
        counts = counts[counts > 0]
    document_offsets = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=document_offsets[1:])
    return TokenizedDocuments(tokens, sentence_offsets, document_offsets)


# ------------------------------------------------------------------ the entry point


@dataclasses.dataclass
class PretrainingData:
    """What the BERT pretraining task needs from the data side."""

    tokenizer: Tokenizer
    train: PretrainingIterator
    eval_batches: Callable[[], Iterable[dict]]  # a fresh finite pass (with a len) on every call
    num_train_instances: int
    num_eval_instances: int
    max_seq_length: int
    max_predictions_per_seq: int

    def example_batch(self, batch_size: int) -> dict:
        """An all-zero batch with the right shapes and dtypes (for `jax.eval_shape` init)."""
        return zero_batch(batch_size, self.max_seq_length, self.max_predictions_per_seq)


DATA_CONFIG_KEYS = (
    "corpus", "text_field", "group_field", "tokenizer", "tokenizer_vocab_size", "lowercase",
    "max_seq_length", "max_predictions_per_seq", "masked_lm_prob", "short_seq_prob",
    "whole_word_masking", "dynamic_masking", "dupe_factor", "eval_fraction", "batch_size",
    "eval_batch_size", "max_documents",
)


def _replacement_probs(config) -> tuple[float, float]:
    """`data.mask_token_prob`, `data.random_token_prob`: BERT's 0.8 / 0.1 when a config lacks
    them (they are optional, unlike `DATA_CONFIG_KEYS`)."""
    return (float(config.get("mask_token_prob", 0.8)),
            float(config.get("random_token_prob", 0.1)))


def _random_next_prob(config) -> float:
    """`data.random_next_prob`: BERT's 0.5 when a config lacks it (optional, as above)."""
    return float(config.get("random_next_prob", 0.5))


def _validate(config, max_position_embeddings: int, process_count: int) -> None:
    missing = [k for k in DATA_CONFIG_KEYS if k not in config]
    if missing:
        raise ValueError(f"Data config lacks key(s) {missing}; expected all of {list(DATA_CONFIG_KEYS)}.")
    if config.max_seq_length > max_position_embeddings:
        raise ValueError(f"data.max_seq_length={config.max_seq_length} exceeds the model's "
                         f"max_position_embeddings={max_position_embeddings}; lower the one or "
                         "raise the other.")
    if config.max_seq_length < 5:
        raise ValueError(f"data.max_seq_length={config.max_seq_length} is too short for "
                         "`[CLS] A [SEP] B [SEP]` (need >= 5).")
    # Checked here too (the Masker says so as well): that one is built after the tokenizer is
    # trained and the corpus tokenised, which takes long on a real corpus.
    if not 0.0 < config.masked_lm_prob <= 1.0:
        raise ValueError(f"data.masked_lm_prob={config.masked_lm_prob} must be in (0, 1].")
    if config.max_predictions_per_seq < 1:
        raise ValueError(f"data.max_predictions_per_seq={config.max_predictions_per_seq} must "
                         "be >= 1.")
    try:
        check_replacement_probs(*_replacement_probs(config))
    except ValueError as e:
        raise ValueError(f"data.{e}") from None
    if not 0.0 <= _random_next_prob(config) <= 1.0:
        raise ValueError(f"data.random_next_prob={_random_next_prob(config)} must be in [0, 1].")
    if not 0.0 <= config.short_seq_prob <= 1.0:
        raise ValueError(f"data.short_seq_prob={config.short_seq_prob} must be in [0, 1].")
    if not 0.0 <= config.eval_fraction < 1.0:
        raise ValueError(f"data.eval_fraction={config.eval_fraction} must be in [0, 1).")
    if not config.tokenizer and config.tokenizer_vocab_size < len(SPECIAL_TOKENS) + 1:
        # Said before the corpus is read (the tokenizer is trained after that, which is long).
        raise ValueError(f"data.tokenizer_vocab_size={config.tokenizer_vocab_size} is too small "
                         "for a WordPiece vocabulary (the 5 special tokens and more); BERT's is "
                         "30522.")
    if config.max_documents < 0:  # documents[:-n] would silently drop the last n
        raise ValueError(f"data.max_documents={config.max_documents} must be >= 0 (0: all).")
    if config.dupe_factor < 1:
        raise ValueError(f"data.dupe_factor={config.dupe_factor} must be >= 1.")
    for key in ("batch_size", "eval_batch_size"):
        size = config[key]
        if size < 1 or size % process_count:
            raise ValueError(f"data.{key}={size} must be a positive multiple of the process "
                             f"count {process_count} (each process feeds an equal slice).")


def _note_capped_masking(config) -> None:
    """Says so when `max_predictions_per_seq` masks a full-length instance less than
    `masked_lm_prob` asks: the masker picks min(cap, round(prob x maskable tokens)), so a longer
    `max_seq_length` with the default cap of 20 (BERT's for 128 tokens) masks 4% at 512."""
    maskable = config.max_seq_length - 3  # [CLS] A [SEP] B [SEP]
    wanted = int(round(maskable * config.masked_lm_prob))
    cap = config.max_predictions_per_seq
    if wanted > cap:
        print(f"[data] Note: data.max_predictions_per_seq={cap} caps the masking: a "
              f"full-length instance ({maskable} maskable tokens) gets {cap} predictions "
              f"({cap / maskable:.1%}), not the {wanted} of data.masked_lm_prob="
              f"{config.masked_lm_prob}. Raise data.max_predictions_per_seq to {wanted} or more "
              "(BERT: 20 for 128 tokens, 80 for 512).", flush=True)


def split_eval_documents(num_documents: int, eval_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, eval) document indices. At least 2 eval documents when eval_fraction > 0, because
    random-next segments for eval instances come from other eval documents only (no leakage)."""
    if eval_fraction <= 0:
        return np.arange(num_documents), np.zeros(0, dtype=np.int64)
    num_eval = max(2, int(round(num_documents * eval_fraction)))
    if num_documents - num_eval < 2:
        raise ValueError(f"The corpus has {num_documents} documents: too few to hold out "
                         f"{num_eval} for eval (eval_fraction={eval_fraction}) and keep 2 for "
                         "training. Add documents or set data.eval_fraction=0.")
    order = np.random.default_rng(_EVAL_SPLIT_SEED).permutation(num_documents)
    return np.sort(order[num_eval:]), np.sort(order[:num_eval])


def _get_tokenizer(config, train_documents, workdir: str | None, process_index: int,
                   progress: bool = False) -> Tokenizer:
    saved = os.path.join(workdir, "tokenizer") if workdir else None
    if saved and os.path.exists(os.path.join(saved, "tokenizer.json")) and has_saved_step(workdir):
        # A resumed run must keep its vocabulary, whatever the config says now. Without a
        # checkpoint there is nothing to resume: a tokenizer left by a run that stopped before
        # its first save (a bad batch size, Ctrl-C) would silently override the config.
        return Tokenizer.load(saved)
    if config.tokenizer:
        path = paths.expand(config.tokenizer)
        own = vocab_lowercase(path)
        if own is not None and own != config.lowercase and process_index == 0:
            print(f"[data] Note: {path} comes with do_lower_case={own} (its "
                  f"tokenizer_config.json), and is used that way; data.lowercase="
                  f"{config.lowercase} applies to a vocabulary trained here or a bare vocab.txt.",
                  flush=True)
        tokenizer = Tokenizer.load(path, lowercase=config.lowercase if own is None else own)
    else:
        with phase(f"Training a WordPiece vocabulary of {config.tokenizer_vocab_size} tokens on "
                   f"{len(train_documents):,} documents", progress) as step:
            tokenizer = Tokenizer.train_wordpiece(
                train_documents, vocab_size=config.tokenizer_vocab_size,
                lowercase=config.lowercase, progress=progress)
            step.result = f"{tokenizer.vocab_size:,} tokens"
    # Every process builds the same vocabulary (training is deterministic); one writes it.
    if saved and process_index == 0:
        tokenizer.save(saved)
    return tokenizer


def _tokenised_corpus_tokenizer(config, corpus, workdir: str | None,
                                process_index: int) -> Tokenizer:
    """A tokenised corpus's vocabulary is the run's: a resumed workdir's tokenizer or
    `data.tokenizer` of another vocabulary is an error (its ids would stand for other words)."""
    saved = os.path.join(workdir, "tokenizer") if workdir else None
    other = ""
    if saved and os.path.exists(os.path.join(saved, "tokenizer.json")) and has_saved_step(workdir):
        other = saved
    elif config.tokenizer:
        other = paths.expand(config.tokenizer)
    if other:
        corpus.check_vocabulary(Tokenizer.load(other), f"from {other}: the workdir's on a "
                                "resume, else data.tokenizer")
    if saved and process_index == 0:
        corpus.tokenizer.save(saved)
    return corpus.tokenizer


def build_pretraining_data(
    data_config,
    max_position_embeddings: int,
    workdir: str | None,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    progress: bool = True,
) -> PretrainingData:
    """Corpus -> tokenizer -> NSP instances -> masked batches, all from `data_config`.

    Args:
      data_config: ConfigDict with the keys in `DATA_CONFIG_KEYS` (see configs/bert_pretrain.py).
      max_position_embeddings: the model's position table size; `max_seq_length` must fit.
      workdir: where the tokenizer is saved (`workdir/tokenizer/`) and reused on restart.
      seed: drives training instance creation, shuffling and masking. The held-out set (which
        documents, their pairs and masks) does not depend on it.
      process_index, process_count: this process's slice of every global batch.
      progress: show progress bars while tokenising and building instances (big corpora).

    Raises:
      ValueError (or SourceError/TokenizerError, both ValueErrors) before any compilation:
      an empty corpus, `max_seq_length > max_position_embeddings`, a corpus too small to make
      an instance or a batch, bad sizes.
    """
    c = data_config
    _validate(c, max_position_embeddings, process_count)
    if process_index == 0:
        _note_capped_masking(c)
    # '$TL_JAX_DATA_DIR/...' in a config, as the GPT, biLM and fine-tuning data paths take.
    from tl_jax.data import tokenized
    corpus_path = paths.expand(c.corpus)
    corpus = None
    if tokenized.is_tokenized_corpus(corpus_path):
        with phase(f"Opening the tokenised corpus {c.corpus}", progress) as step:
            corpus = tokenized.TokenizedCorpus.open(corpus_path, layout="sentences")
            every = corpus.sentence_documents()
            step.result = (f"{corpus.num_documents:,} documents, {every.num_sentences:,} "
                           f"sentences, {len(every.tokens):,} tokens")
        num_read = corpus.num_documents
    else:
        with phase(f"Reading {c.corpus}", progress) as step:
            documents = load_documents(corpus_path, text_field=c.text_field,
                                       group_field=c.group_field or None, key="data.corpus")
            step.result = f"{len(documents):,} documents"
        num_read = len(documents)
    num_documents = min(num_read, c.max_documents or num_read)
    if num_documents < 2:
        # Said before the eval split, whose "set data.eval_fraction=0" would not help.
        if num_documents < num_read:
            held = (f"keeps {num_documents} document of the {num_read:,} read "
                    f"(data.max_documents={c.max_documents})")
        else:
            held = f"holds {num_documents} document"
        # Without data.group_field, jsonl lines are grouped by a key they all may share (one
        # 'title' for a whole file): say so, or "each line is one" contradicts what was read.
        grouping = (f"consecutive lines sharing data.group_field={c.group_field!r}"
                    if c.group_field else
                    "consecutive lines sharing the first of "
                    + ", ".join(repr(k) for k in AUTO_GROUP_FIELDS)
                    + " that a file's first line has, unless data.group_field names another key")
        raise ValueError(
            f"Corpus {c.corpus!r} {held}; NSP needs at least 2 documents to draw random next "
            "segments from. In a text file a blank line ends a document; in a .jsonl file "
            f"each line is one, or {grouping}.")
    train_index, eval_index = split_eval_documents(num_documents, c.eval_fraction)
    if corpus is not None:
        # Its ids are fixed, and so is its vocabulary: the same documents and sentences as
        # `tokenize_documents` of the text with it.
        tokenizer = _tokenised_corpus_tokenizer(c, corpus, workdir, process_index)
        train_docs, eval_docs = every.select(train_index), every.select(eval_index)
        del every
    else:
        train_texts = [documents[i] for i in train_index]
        eval_texts = [documents[i] for i in eval_index]
        del documents
        tokenizer = _get_tokenizer(c, train_texts, workdir, process_index, progress)
        with phase("Tokenising", progress) as step:
            train_docs = tokenize_documents(train_texts, tokenizer, progress=progress)
            eval_docs = tokenize_documents(eval_texts, tokenizer, progress=progress)
            step.result = (f"{train_docs.num_sentences:,} training and "
                           f"{eval_docs.num_sentences:,} held-out sentences")
    if len(train_docs) < 2:
        raise ValueError(f"Corpus {c.corpus!r} has {len(train_docs)} non-empty training "
                         "document(s) after tokenisation; NSP needs at least 2.")

    copies = 1 if c.dynamic_masking else c.dupe_factor
    train = PretrainingInstances.concatenate([
        create_instances(train_docs, c.max_seq_length, c.short_seq_prob, seed,
                         tokenizer.cls_id, tokenizer.sep_id, copy=k, progress=progress,
                         random_next_prob=_random_next_prob(c))
        for k in range(copies)])
    if len(train) < c.batch_size:
        raise ValueError(f"Corpus {c.corpus!r} gives only {len(train)} training instances, fewer "
                         f"than one batch (data.batch_size={c.batch_size}); use a larger corpus "
                         "or a smaller batch.")
    masker = Masker(tokenizer, c.masked_lm_prob, c.max_predictions_per_seq, c.whole_word_masking,
                    *_replacement_probs(c))
    iterator = PretrainingIterator(
        train, masker, c.max_seq_length, c.batch_size, seed,
        dynamic_masking=c.dynamic_masking, process_index=process_index,
        process_count=process_count, drop_remainder=True)

    if len(eval_docs) >= 2:
        # Seed-free, like the split: runs with different seeds are scored on the same pairs
        # and masks, so their eval metrics compare without extra noise.
        evals = create_instances(eval_docs, c.max_seq_length, c.short_seq_prob,
                                 _EVAL_SPLIT_SEED, tokenizer.cls_id, tokenizer.sep_id,
                                 random_next_prob=_random_next_prob(c))
    else:
        evals = PretrainingInstances.empty()

    def eval_pass():
        return eval_batches(evals, masker, c.max_seq_length, c.eval_batch_size, _EVAL_SPLIT_SEED,
                            process_index=process_index, process_count=process_count)

    return PretrainingData(
        tokenizer=tokenizer,
        train=iterator,
        eval_batches=eval_pass,
        num_train_instances=len(train),
        num_eval_instances=len(evals),
        max_seq_length=c.max_seq_length,
        max_predictions_per_seq=c.max_predictions_per_seq,
    )


def describe(data: PretrainingData, num_examples: int = 2) -> str:
    """A readable summary: sizes, label balance, and a few masked training examples decoded.

    For a look at the data before training (CLI, notebooks); draws from a fresh copy of the
    training iterator so the real one's position is untouched.
    """
    train = data.train
    inst = train.instances
    lengths = np.diff(inst.offsets)
    lines = [
        f"tokenizer: {data.tokenizer}",
        f"train instances: {data.num_train_instances:,} ({train.batches_per_epoch:,} batches of "
        f"{train.global_batch_size} per epoch), eval instances: {data.num_eval_instances:,}",
        f"tokens per instance: mean {lengths.mean():.1f}, max {lengths.max()} "
        f"(max_seq_length {data.max_seq_length})",
        f"NSP 'random next' share: {inst.nsp_labels.mean():.3f}",
        f"masking: {'dynamic' if train.dynamic_masking else 'static'}, "
        f"whole-word {train.masker.whole_word}, p={train.masker.masked_lm_prob}, "
        f"max {train.masker.max_predictions} predictions",
    ]
    fresh = PretrainingIterator(inst, train.masker, train.max_seq_length,
                                train.global_batch_size, train.seed, train.dynamic_masking)
    batch = next(fresh)
    tok = data.tokenizer
    for r in range(min(num_examples, len(batch["input_ids"]))):
        n = int(batch["input_mask"][r].sum())
        k = int(batch["masked_weights"][r].sum())
        shown = [tok.id_to_token(int(t)) for t in batch["input_ids"][r, :n]]
        targets = [tok.id_to_token(int(t)) for t in batch["masked_ids"][r, :k]]
        label = "random next" if batch["nsp_labels"][r] else "actual next"
        lines.append(f"example {r} ({label}): {' '.join(shown)}")
        lines.append(f"  predict {list(zip(batch['masked_positions'][r, :k].tolist(), targets))}")
    return "\n".join(lines)

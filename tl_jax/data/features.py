"""Feature conversion for downstream tasks: records -> fixed-length numpy arrays for BERT inputs.

Every encoder returns a dict of numpy arrays with a leading example axis `N` and sequence axis
`T = max_seq_length`, BERT style: `[CLS] a [SEP] (b [SEP])`, then padding.

* `encode_classification`: `input_ids`, `segment_ids`, `input_mask` `(N, T)`, `labels` `(N,)`.
  Pairs are truncated longest-first, as in BERT's `run_classifier.py` (`_truncate_seq_pair`:
  a token comes off the end of the longer sentence, off the second one when they are equal).
* `encode_tagging`: the same inputs plus `labels` `(N, T)` with the word's tag id on its *first*
  sub-token and `IGNORE` (-100) on every other position (later sub-tokens, specials, padding),
  and `word_index` `(N, T)`: which word a first sub-token starts (-1 elsewhere), to map
  predictions back onto words.
* `encode_squad`: question + context windows. Contexts longer than the room left after the
  question are split into overlapping windows `doc_stride` sub-tokens apart. Each window has
  `start_positions` / `end_positions` (sub-token index of the first gold answer wholly inside
  the window; 0 = [CLS] when none is, or the question has none), `offsets` `(N, T, 2)` with
  each context sub-token's character span in the context (`-1` elsewhere), `max_context`
  `(N, T)` (1 on the context sub-tokens for which this window is their max-context window, 0
  elsewhere: question, specials, padding, and context sub-tokens better centred in another
  window) and `example_index` `(N,)`. The max-context window of a sub-token is BERT's
  (`run_squad.py`, `_check_is_max_context`): of the windows holding it, the one with the
  highest `min(sub-tokens to its left, sub-tokens to its right) + 0.01 * window length`, the
  first on ties. Each context sub-token is max-context in exactly one window, and decoding
  only starts answers there.

Sub-token offsets come from the Hugging Face `tokenizers` encoding (`Encoding.offsets` and
`word_ids`), so they map exactly back to the original characters, accents and case included; in
`encode_squad` a sub-token's span also takes the combining marks right after it that an
accent-stripping tokenizer dropped (decomposed text: "e" + U+0301), so an answer ends with them.
"""
from __future__ import annotations

import unicodedata
from typing import Sequence

import numpy as np
import tokenizers

from tl_jax.data.tokenizer import batch_ids

IGNORE = -100  # Label id the losses skip: non-first sub-tokens, special tokens, padding.


def hf_tokenizer(tokenizer) -> tokenizers.Tokenizer:
    """The underlying `tokenizers.Tokenizer`, copied with truncation and padding switched off.

    Accepts a `tokenizers.Tokenizer` or an object wrapping one (tl_jax's `Tokenizer`). The copy
    matters: a tokenizer.json may carry its own truncation/padding (MiniLM's pads to 128) which
    would silently break window arithmetic here.
    """
    inner = tokenizer
    if not isinstance(inner, tokenizers.Tokenizer):
        wrapped = (getattr(tokenizer, a, None) for a in ("hf_tokenizer", "tokenizer", "_tokenizer"))
        inner = next((w for w in wrapped if isinstance(w, tokenizers.Tokenizer)), None)
    if not isinstance(inner, tokenizers.Tokenizer):
        raise TypeError(f"expected a tokenizers.Tokenizer or a wrapper of one, got {type(tokenizer)}")
    copy = tokenizers.Tokenizer.from_str(inner.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


class _Specials:
    """Ids of [CLS], [SEP] and [PAD] in a WordPiece vocabulary."""

    def __init__(self, tok: tokenizers.Tokenizer):
        ids = {name: tok.token_to_id(name) for name in ("[CLS]", "[SEP]", "[PAD]")}
        missing = [name for name, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"tokenizer vocabulary lacks special tokens {missing}")
        self.cls, self.sep, self.pad = ids["[CLS]"], ids["[SEP]"], ids["[PAD]"]


def _pack(specials: _Specials, a: Sequence[int], b: Sequence[int] | None, max_seq_length: int):
    """`[CLS] a [SEP] (b [SEP])` padded to `max_seq_length`: (ids, segments, mask) int32 rows."""
    ids = [specials.cls, *a, specials.sep]
    segments = [0] * len(ids)
    if b is not None:
        ids += [*b, specials.sep]
        segments += [1] * (len(b) + 1)
    if len(ids) > max_seq_length:
        raise ValueError(f"packed length {len(ids)} exceeds max_seq_length {max_seq_length}")
    pad = max_seq_length - len(ids)
    return (np.array(ids + [specials.pad] * pad, np.int32), np.array(segments + [0] * pad, np.int32),
            np.array([1] * (max_seq_length - pad) + [0] * pad, np.int32))


def _check_length(max_seq_length: int, minimum: int) -> None:
    if max_seq_length < minimum:
        raise ValueError(f"max_seq_length={max_seq_length} is too short (needs >= {minimum})")


def encode_classification(tokenizer, records: Sequence[dict], label_map: dict[str, int],
                          max_seq_length: int, truncated: list | None = None
                          ) -> dict[str, np.ndarray]:
    """Encodes `{"text", "text_b", "label"}` records; unknown labels are an error, a label None
    (an unlabelled record, `tl_jax predict`) is `IGNORE`. The index of each record that had to
    be truncated is appended to `truncated` when given."""
    tok, has_pair = hf_tokenizer(tokenizer), any(r.get("text_b") is not None for r in records)
    specials = _Specials(tok)
    _check_length(max_seq_length, 4 if has_pair else 3)
    firsts = batch_ids(tok, [r["text"] for r in records])
    seconds = (batch_ids(tok, [r["text_b"] or "" for r in records]) if has_pair
               else [None] * len(records))
    rows = []
    for i, (record, a, b) in enumerate(zip(records, firsts, seconds)):
        room = max_seq_length - (3 if b is not None else 2)
        if truncated is not None and len(a) + (len(b) if b is not None else 0) > room:
            truncated.append(i)
        while len(a) + (len(b) if b is not None else 0) > room:
            # Longest-first truncation keeps both sentences of a pair represented; on a tie the
            # second sentence loses the token, as BERT's `_truncate_seq_pair` does.
            if b is not None and len(b) >= len(a):
                b.pop()
            else:
                a.pop()
        label = record["label"]
        if label is None:
            rows.append((*_pack(specials, a, b, max_seq_length), IGNORE))
            continue
        if label not in label_map:
            raise ValueError(f"record {i}: label {label!r} not in label map {sorted(label_map)}")
        rows.append((*_pack(specials, a, b, max_seq_length), label_map[label]))
    ids, segments, mask, labels = zip(*rows)
    return {"input_ids": np.stack(ids), "segment_ids": np.stack(segments),
            "input_mask": np.stack(mask), "labels": np.array(labels, np.int32)}


def encode_tagging(tokenizer, records: Sequence[dict], label_map: dict[str, int],
                   max_seq_length: int, truncated: list | None = None,
                   source: str = "") -> dict[str, np.ndarray]:
    """Encodes `{"tokens", "tags"}` sentences with labels on each word's first sub-token.

    Words past `max_seq_length - 2` sub-tokens are cut off (their `word_index` never appears, so
    decoding predicts `O` for them and span F1 counts the loss honestly). A sentence whose tags
    are None (unlabelled, `tl_jax predict`) gets `IGNORE` labels only. The index of each sentence
    that was cut is appended to `truncated` when given.

    A word the tokenizer reduces to nothing (a lone U+00A0 or control character) has no
    sub-token either, so it too is predicted `O`, as in Hugging Face's token classification;
    when such words have gold tags other than `O` a note says how many, in `source` (the file),
    since every one is an entity span F1 counts as missed.
    """
    tok = hf_tokenizer(tokenizer)
    specials = _Specials(tok)
    _check_length(max_seq_length, 3)
    encodings = tok.encode_batch([list(r["tokens"]) for r in records], is_pretokenized=True,
                                 add_special_tokens=False)
    out = {k: [] for k in ("input_ids", "segment_ids", "input_mask", "labels", "word_index")}
    vanished = []  # (sentence, word) of each tagged word that has no sub-token
    for i, (record, enc) in enumerate(zip(records, encodings)):
        tags = record["tags"]
        unknown = [t for t in tags or () if t not in label_map]
        if unknown:
            raise ValueError(f"sentence {i}: tags {sorted(set(unknown))} not in {sorted(label_map)}")
        if tags is not None:
            kept = set(enc.word_ids)
            vanished += [(i, w) for w, tag in enumerate(tags) if tag != "O" and w not in kept]
        if truncated is not None and len(enc.ids) > max_seq_length - 2:
            truncated.append(i)
        ids, word_ids = list(enc.ids)[: max_seq_length - 2], list(enc.word_ids)[: max_seq_length - 2]
        labels = np.full(max_seq_length, IGNORE, np.int32)
        word_index = np.full(max_seq_length, -1, np.int32)
        previous = None
        for position, word in enumerate(word_ids, start=1):  # +1: [CLS] is position 0.
            if word is not None and word != previous:
                if tags is not None:
                    labels[position] = label_map[tags[word]]
                word_index[position] = word
            previous = word
        input_ids, segments, mask = _pack(specials, ids, None, max_seq_length)
        for key, value in (("input_ids", input_ids), ("segment_ids", segments), ("input_mask", mask),
                           ("labels", labels), ("word_index", word_index)):
            out[key].append(value)
    if vanished:
        _note_vanished_words(records, vanished, source)
    return {k: np.stack(v) for k, v in out.items()}


def _note_vanished_words(records: Sequence[dict], vanished: list, source: str) -> None:
    """Says once per encoded file that its tagged words the tokenizer drops cap recall."""
    i, w = vanished[0]
    word, tag = records[i]["tokens"][w], records[i]["tags"][w]
    where = f"in {source}" if source else "in the tagging data"
    n = len(vanished)
    print(f"[tag] Note: {n} word{'s' if n > 1 else ''} {where} with a tag other than O "
          f"{'are' if n > 1 else 'is'} reduced to nothing by the tokenizer (the first: "
          f"{word!r}, tagged {tag}, word {w + 1} of sentence {i + 1}), so "
          f"{'they are' if n > 1 else 'it is'} always predicted O and counted as missed in the "
          "span F1: recall cannot reach 1 (Hugging Face's token classification drops such "
          "words the same way).", flush=True)


def tags_from_predictions(pred_ids: np.ndarray, word_index: np.ndarray, n_words: int,
                          id_to_tag: Sequence[str]) -> list[str]:
    """Word-level tags from one row of sub-token predictions (first sub-token of each word).

    Words that were truncated away get `O`.
    """
    tags = ["O"] * n_words
    for position in np.nonzero(word_index >= 0)[0]:
        tags[word_index[position]] = id_to_tag[int(pred_ids[position])]
    return tags


def encode_squad(tokenizer, records: Sequence[dict], max_seq_length: int = 384,
                 doc_stride: int = 128, max_query_length: int = 64,
                 truncated: list | None = None) -> dict[str, np.ndarray]:
    """Encodes SQuAD records into question+context windows (see module docstring).

    Each window points at the first gold answer it holds whole (SQuAD training sets have one;
    the silver cloze_qa lists every occurrence of the name); a window holding none, or a question
    without answers, points at [CLS]. Long contexts are windowed, never cut; the index of each
    record whose question was cut to `max_query_length` is appended to `truncated` when given.
    """
    tok = hf_tokenizer(tokenizer)
    specials = _Specials(tok)
    if max_seq_length < max_query_length + 4:
        raise ValueError(f"max_seq_length={max_seq_length} is too short for max_query_length="
                         f"{max_query_length}: [CLS] question [SEP] context [SEP] needs >= "
                         f"{max_query_length + 4}")
    if not 0 < doc_stride:
        raise ValueError(f"doc_stride must be positive, got {doc_stride}")
    questions = tok.encode_batch([r["question"] for r in records], add_special_tokens=False)
    contexts = tok.encode_batch([r["context"] for r in records], add_special_tokens=False)
    out = {k: [] for k in ("input_ids", "segment_ids", "input_mask", "start_positions",
                           "end_positions", "offsets", "max_context", "example_index")}
    for index, (record, question, context) in enumerate(zip(records, questions, contexts)):
        if truncated is not None and len(question.ids) > max_query_length:
            truncated.append(index)
        q_ids = list(question.ids)[:max_query_length]
        c_ids, c_offsets = list(context.ids), _with_trailing_marks(record["context"],
                                                                   context.offsets)
        room = max_seq_length - len(q_ids) - 3  # [CLS] q [SEP] window [SEP]
        # Sub-tokens overlapping each gold answer's characters, in the order of the answers.
        coverings = []
        for answer in record["answers"] or ():  # None: unlabelled (`tl_jax predict`)
            a_start = answer["answer_start"]
            a_end = a_start + len(answer["text"])
            covering = [t for t, (s, e) in enumerate(c_offsets) if s < a_end and e > a_start]
            if covering:
                coverings.append(covering)
        windows = _squad_windows(len(c_ids), room, doc_stride)
        best_window = _max_context_windows(windows, len(c_ids))
        for w, window in enumerate(windows):
            ids, segments, mask = _pack(specials, q_ids, [c_ids[t] for t in window], max_seq_length)
            offsets = np.full((max_seq_length, 2), -1, np.int32)
            max_context = np.zeros(max_seq_length, np.int32)
            first = len(q_ids) + 2  # Position of the window's first sub-token.
            for k, t in enumerate(window):
                offsets[first + k] = c_offsets[t]
                max_context[first + k] = best_window[t] == w
            start = end = 0
            # The first gold answer wholly inside the window: a window holding any of them is
            # not a "no answer" window (silver cloze_qa lists every occurrence of the name).
            inside = [c for c in coverings if c[0] >= window.start and c[-1] < window.stop]
            if inside:
                start = first + inside[0][0] - window.start
                end = first + inside[0][-1] - window.start
            for key, value in (("input_ids", ids), ("segment_ids", segments), ("input_mask", mask),
                               ("start_positions", start), ("end_positions", end),
                               ("offsets", offsets), ("max_context", max_context),
                               ("example_index", index)):
                out[key].append(value)
    per_token = ("input_ids", "segment_ids", "input_mask", "offsets", "max_context")
    return {k: np.asarray(np.stack(v) if k in per_token else v, np.int32) for k, v in out.items()}


def _with_trailing_marks(context: str, offsets) -> list[tuple[int, int]]:
    """Sub-token character spans, each end moved past the combining marks right after it that
    no sub-token covers. An uncased (accent-stripping) tokenizer drops the marks of decomposed
    text (NFD: "e" + U+0301 for "é"), so a word's last sub-token ended before them and an
    answer "Cafe\u0301" came back as "Cafe": not the context's characters, and no exact match."""
    spans = [tuple(span) for span in offsets]
    for t, (start, end) in enumerate(spans):
        stop = spans[t + 1][0] if t + 1 < len(spans) else len(context)
        while end < stop and unicodedata.category(context[end]).startswith("M"):
            end += 1
        spans[t] = (start, end)
    return spans


def _squad_windows(n_context: int, room: int, doc_stride: int) -> list[range]:
    """The context sub-token ranges of the windows: `room` long, `doc_stride` apart (at most
    `room`, so no sub-token is skipped), the last one ending at the context's end. An empty
    context has one empty window."""
    windows, start = [], 0
    while True:
        windows.append(range(start, min(start + room, n_context)))
        if windows[-1].stop >= n_context:
            return windows
        start += min(doc_stride, room)


def _max_context_windows(windows: Sequence[range], n_context: int) -> np.ndarray:
    """`(n_context,)`: the index of each context sub-token's max-context window, as BERT's
    `_check_is_max_context`: of the windows holding the sub-token, the one with the highest
    `min(left, right) + 0.01 * len(window)` (`left`/`right`: sub-tokens of the window before and
    after it), the first one on ties."""
    best_score = np.full(n_context, -np.inf)
    best_window = np.full(n_context, -1, np.int64)
    for w, window in enumerate(windows):
        t = np.arange(window.start, window.stop)
        score = np.minimum(t - window.start, window.stop - 1 - t) + 0.01 * len(window)
        better = score > best_score[t]  # strictly: the first window wins ties
        best_score[t[better]] = score[better]
        best_window[t[better]] = w
    return best_window

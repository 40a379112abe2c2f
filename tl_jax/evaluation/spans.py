"""Entity-level span precision, recall and F1 with the semantics of CoNLL's `conlleval` script.

A chunk is a maximal run of tags of one type that `conlleval` would group: it starts at `B-X`, at
an `I-X` after `O`, or at any tag whose type differs from the previous tag's; it ends before the
next start or `O`. (So a stray `I-X` with no `B-X` still counts as an entity, as in conlleval;
IOB1 and IOB2 files score the same.) A predicted chunk is correct only when its type, start and
end all match a gold chunk. Sentence boundaries end every chunk.

One deliberate difference: sentences with no gold and no predicted entity at all have no
precision, recall or F1 (0/0; scikit-learn calls such an F-score ill-defined). conlleval prints
its default 0.00 for all three (beside "found: 0 phrases; correct: 0"); `span_f1` gives NaN,
which neither reads as a real score nor makes a checkpoint the best. When only one side has
entities F1 is 0, a real score, and the precision (no predicted entity) or recall (no gold
entity) that is 0/0 is 0, as in conlleval.
"""
from __future__ import annotations

import math
from typing import Sequence


def _split(tag: str) -> tuple[str, str]:
    """'B-PER' -> ('B', 'PER'); 'O' -> ('O', '')."""
    if tag == "O" or tag == "":
        return "O", ""
    prefix, _, kind = tag.partition("-")
    if prefix not in ("B", "I", "E", "S") or not kind:
        raise ValueError(f"tag {tag!r} is not O, B-X, I-X (or IOBES E-X, S-X)")
    return prefix, kind


def _starts(prev_prefix, prefix, prev_kind, kind) -> bool:
    # conlleval's startOfChunk.
    if prefix in ("B", "S"):
        return True
    if prefix in ("I", "E") and prev_prefix in ("E", "S", "O"):
        return True
    return prefix != "O" and kind != prev_kind


def _ends(prev_prefix, prefix, prev_kind, kind) -> bool:
    # conlleval's endOfChunk.
    if prev_prefix in ("E", "S"):
        return True
    if prev_prefix in ("B", "I") and prefix in ("B", "S", "O"):
        return True
    return prev_prefix != "O" and prev_kind != kind


def chunks(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entities in one sentence as `(type, start, end_inclusive)` triples."""
    found, start = [], None
    prev_prefix, prev_kind = "O", ""
    for i, tag in enumerate(list(tags) + ["O"]):  # A trailing O closes the last chunk.
        prefix, kind = _split(tag)
        if start is not None and _ends(prev_prefix, prefix, prev_kind, kind):
            found.append((prev_kind, start, i - 1))
            start = None
        if _starts(prev_prefix, prefix, prev_kind, kind):
            start = i
        prev_prefix, prev_kind = prefix, kind
    return found


def span_f1(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity-level precision, recall and F1 over a corpus of tagged sentences.

    Args:
      gold, predicted: lists of sentences, each a list of tags of the same length.
    Returns:
      `{"precision", "recall", "f1", "n_gold", "n_predicted", "n_correct"}`, plus per-type
      `f1/<TYPE>`; fractions in [0, 1] (conlleval prints percentages). NaN precision, recall
      and F1 when neither side has an entity (`n_gold == n_predicted == 0`).
    Raises:
      ValueError: no sentences, or gold and predicted that do not line up.
    """
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold sentences but {len(predicted)} predicted")
    if not gold:
        raise ValueError("span_f1 needs at least one sentence")
    n_gold = n_pred = n_correct = 0
    per_type: dict[str, list[int]] = {}
    for i, (g, p) in enumerate(zip(gold, predicted)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted")
        g_chunks, p_chunks = set(chunks(g)), set(chunks(p))
        n_gold, n_pred = n_gold + len(g_chunks), n_pred + len(p_chunks)
        n_correct += len(g_chunks & p_chunks)
        for kind, *_ in g_chunks | p_chunks:
            per_type.setdefault(kind, [0, 0, 0])
        for kind, *_ in g_chunks:
            per_type[kind][0] += 1
        for kind, *_ in p_chunks:
            per_type[kind][1] += 1
        for kind, *_ in g_chunks & p_chunks:
            per_type[kind][2] += 1
    report = _prf(n_gold, n_pred, n_correct)
    report.update(n_gold=n_gold, n_predicted=n_pred, n_correct=n_correct)
    for kind, (g_n, p_n, c_n) in sorted(per_type.items()):
        report[f"f1/{kind}"] = _prf(g_n, p_n, c_n)["f1"]
    return report


def _prf(n_gold: int, n_pred: int, n_correct: int) -> dict[str, float]:
    if not n_gold and not n_pred:  # nothing to find and nothing found: undefined, not 0
        return {"precision": math.nan, "recall": math.nan, "f1": math.nan}
    precision = n_correct / n_pred if n_pred else 0.0
    recall = n_correct / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}

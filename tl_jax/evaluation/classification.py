"""Classification metrics: accuracy, F1 (binary and macro) and Matthews correlation.

All functions take two equal-length, non-empty sequences of labels (ints or strings; empty ones
are a ValueError) and return floats in the usual units (fractions, not percentages); an F1 with
nothing to find and nothing predicted is NaN, not 0. They are plain numpy, exact, and host-side: the
trainer sums (correct, count) pairs inside `jit`; these run on the collected predictions.
"""
from __future__ import annotations

import math
from typing import Hashable, Sequence

import numpy as np


def _check(y_true: Sequence, y_pred: Sequence) -> None:
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} labels but y_pred has {len(y_pred)}")
    if len(y_true) == 0:
        raise ValueError("metrics need at least one example")


def accuracy(y_true: Sequence, y_pred: Sequence) -> float:
    """Fraction of predictions equal to the gold label."""
    _check(y_true, y_pred)
    return float(np.mean([t == p for t, p in zip(y_true, y_pred)]))


def f1_binary(y_true: Sequence, y_pred: Sequence, positive: Hashable = 1) -> float:
    """F1 of the `positive` class: 2PR/(P+R) = 2TP/(2TP+FP+FN); 0 when there are no true
    positives. NaN when `positive` is in neither list (TP+FP+FN = 0, where scikit-learn calls
    the F-score ill-defined and warns): no positive to find and none predicted is not a score
    of 0."""
    _check(y_true, y_pred)
    tp = sum(t == positive and p == positive for t, p in zip(y_true, y_pred))
    fp = sum(t != positive and p == positive for t, p in zip(y_true, y_pred))
    fn = sum(t == positive and p != positive for t, p in zip(y_true, y_pred))
    if tp + fp + fn == 0:
        return math.nan
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def f1_macro(y_true: Sequence, y_pred: Sequence, labels: Sequence | None = None) -> float:
    """Unweighted mean of per-class F1 over `labels` (default: every label seen in either list).

    A label of `labels` in neither list has no F1 (`f1_binary`) and is left out of the mean,
    as scikit-learn's `zero_division=np.nan` does; NaN when no label has one."""
    _check(y_true, y_pred)
    if labels is None:
        labels = sorted(set(y_true) | set(y_pred), key=str)
    scores = [f1_binary(y_true, y_pred, positive=c) for c in labels]
    scores = [f for f in scores if not math.isnan(f)]
    return float(np.mean(scores)) if scores else math.nan


def matthews_corrcoef(y_true: Sequence, y_pred: Sequence) -> float:
    """Matthews correlation coefficient, multi-class form (Gorodkin 2004); 0 when undefined.

        MCC = (c*s - sum_k p_k t_k) / sqrt((s^2 - sum_k p_k^2) (s^2 - sum_k t_k^2))

    with c correct predictions, s examples, p_k / t_k the predicted / true counts of class k.
    For two classes this equals (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)).
    """
    _check(y_true, y_pred)
    classes = sorted(set(y_true) | set(y_pred), key=str)
    index = {c: i for i, c in enumerate(classes)}
    confusion = np.zeros((len(classes), len(classes)), dtype=np.float64)
    for t, p in zip(y_true, y_pred):
        confusion[index[t], index[p]] += 1
    t_k, p_k = confusion.sum(axis=1), confusion.sum(axis=0)
    c, s = np.trace(confusion), confusion.sum()
    denominator = np.sqrt((s * s - p_k @ p_k) * (s * s - t_k @ t_k))
    return 0.0 if denominator == 0 else float((c * s - t_k @ p_k) / denominator)


def classification_report(y_true: Sequence, y_pred: Sequence, positive: Hashable | None = None
                          ) -> dict[str, float]:
    """Accuracy, macro F1 and MCC; plus binary F1 of `positive` when it is given."""
    report = {"accuracy": accuracy(y_true, y_pred), "f1_macro": f1_macro(y_true, y_pred),
              "mcc": matthews_corrcoef(y_true, y_pred)}
    if positive is not None:
        report["f1"] = f1_binary(y_true, y_pred, positive=positive)
    return report

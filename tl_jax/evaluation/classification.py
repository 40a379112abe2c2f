"""Classification metrics: accuracy, F1 (binary and macro) and Matthews correlation.

All functions take two equal-length sequences of labels (ints or strings) and return floats in
the usual units (fractions, not percentages). They are plain numpy, exact, and host-side: the
trainer sums (correct, count) pairs inside `jit`; these run on the collected predictions.
"""
from __future__ import annotations

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
    """F1 of the `positive` class: 2PR/(P+R); 0 when there are no true positives."""
    _check(y_true, y_pred)
    tp = sum(t == positive and p == positive for t, p in zip(y_true, y_pred))
    fp = sum(t != positive and p == positive for t, p in zip(y_true, y_pred))
    fn = sum(t == positive and p != positive for t, p in zip(y_true, y_pred))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def f1_macro(y_true: Sequence, y_pred: Sequence, labels: Sequence | None = None) -> float:
    """Unweighted mean of per-class F1 over `labels` (default: every label seen in either list)."""
    _check(y_true, y_pred)
    if labels is None:
        labels = sorted(set(y_true) | set(y_pred), key=str)
    return float(np.mean([f1_binary(y_true, y_pred, positive=c) for c in labels]))


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

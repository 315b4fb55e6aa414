"""Classification metrics over the 37 breeds: accuracy, macro-F1, per-class P/R/F1, confusion, Wilson CI.

Pure Python + numpy. Unknown predictions (None) count as wrong for accuracy and recall, never as a class: macro-F1
equals scikit-learn's `f1_score(y_true, y_pred, labels=range(37), average="macro", zero_division=0)` with unknowns
mapped to an id outside the 37.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from trainer.labels import LABELS


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval for a proportion; well-behaved at 0 %, 100 % and small n."""
    if n == 0:
        return (0.0, 0.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def classification_report(y_true: Sequence[int], y_pred: Sequence[int | None]) -> dict:
    """The REPORT dict of metrics.json for one eval pass."""
    k = len(LABELS)
    n = len(y_true)
    confusion = np.zeros((k, k), dtype=np.int64)  # rows = true, cols = predicted; unknowns excluded
    for t, p in zip(y_true, y_pred, strict=True):
        if p is not None:
            confusion[t, p] += 1
    support = np.bincount(np.asarray(y_true, dtype=np.int64), minlength=k)
    tp = np.diag(confusion)
    predicted = confusion.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    correct = int(tp.sum())
    unknown = sum(p is None for p in y_pred)
    lo, hi = wilson_interval(correct, n)
    return {
        "accuracy": correct / n if n else 0.0,
        "macro_f1": float(f1.mean()),
        "n": n,
        "unknown": unknown,
        "unknown_rate": unknown / n if n else 0.0,
        "accuracy_ci95": [lo, hi],
        "labels": list(LABELS),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(support[i])}
            for i, name in enumerate(LABELS)
        },
        "confusion": confusion.tolist(),
    }

"""Segmentation scores from a confusion matrix.

The confusion matrix has one row per true class and one column per predicted
class (``cm[t, p]`` pixels of class ``t`` predicted as ``p``). Pixels without a
label, or without a prediction, are never counted. A score whose denominator
is zero (a class neither present nor predicted) is ``None``, not 0 or 1.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

#: Class-index value meaning 'no label' / 'no prediction'.
IGNORE = 255


def confusion(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion matrix of two class-index arrays; pixels where either is >= ``n_classes`` are skipped."""
    t = np.asarray(truth).ravel().astype("int64")
    p = np.asarray(pred).ravel().astype("int64")
    if t.shape != p.shape:
        raise ValueError(f"truth and prediction differ in size: {t.size} vs {p.size}")
    keep = (t < n_classes) & (p < n_classes) & (t >= 0) & (p >= 0)
    return np.bincount(t[keep] * n_classes + p[keep], minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else float(num) / float(den)


def scores(cm: np.ndarray, class_names: Sequence[str]) -> dict:
    """Per-class IoU, F1, precision, recall and support, plus pooled figures.

    Returns a JSON-ready dict: ``per_class`` (name -> scores), ``confusion``
    (rows true, columns predicted), ``pixels``, ``accuracy``, ``mean_iou`` and
    ``mean_f1`` (over classes whose score is defined).
    """
    cm = np.asarray(cm, dtype="int64")
    n = len(class_names)
    if cm.shape != (n, n):
        raise ValueError(f"confusion matrix is {cm.shape}, expected {(n, n)}")
    per = {}
    for i, name in enumerate(class_names):
        tp = int(cm[i, i])
        fp = int(cm[:, i].sum() - tp)
        fn = int(cm[i, :].sum() - tp)
        per[name] = {
            "iou": _ratio(tp, tp + fp + fn),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn),
            "support": int(cm[i, :].sum()),
            "predicted": int(cm[:, i].sum()),
            "tp": tp, "fp": fp, "fn": fn,
        }
    total = int(cm.sum())
    ious = [v["iou"] for v in per.values() if v["iou"] is not None]
    f1s = [v["f1"] for v in per.values() if v["f1"] is not None]
    return {
        "per_class": per,
        "confusion": cm.tolist(),
        "pixels": total,
        "accuracy": _ratio(np.trace(cm), total),
        "mean_iou": float(np.mean(ious)) if ious else None,
        "mean_f1": float(np.mean(f1s)) if f1s else None,
    }


def monitor_value(s: dict, monitor: str) -> float:
    """The figure ``monitor`` names ('miou', 'f1:CLASS', 'iou:CLASS') from :func:`scores`; undefined -> 0."""
    if monitor == "miou":
        v = s["mean_iou"]
    else:
        kind, _, name = monitor.partition(":")
        v = s["per_class"][name][kind]
    return 0.0 if v is None else float(v)

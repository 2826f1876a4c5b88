"""Classification metrics (scikit-learn) in an R-readable form: scalars and plain arrays."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn import metrics as skm


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, classes) -> dict:
    """Accuracy, balanced accuracy, macro precision/recall/F1, per class, confusion, AUROC.

    ``y_true`` are integer codes into ``classes``; ``proba`` is ``(n, n_classes)``. AUROC is the
    binary AUROC for two classes, else the macro mean of one-vs-rest AUROCs over the classes
    present in ``y_true``.
    """
    labels = np.arange(len(classes))
    y_pred = proba.argmax(axis=1)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    with warnings.catch_warnings():
        # a class predicted but absent from the test labels is expected (e.g. held-out fates)
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        balanced = float(skm.balanced_accuracy_score(y_true, y_pred))
    out = {
        "n": int(len(y_true)),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": balanced,
        "precision_macro": float(precision[support > 0].mean()) if (support > 0).any() else 0.0,
        "recall_macro": float(recall[support > 0].mean()) if (support > 0).any() else 0.0,
        "f1_macro": float(f1[support > 0].mean()) if (support > 0).any() else 0.0,
        "auroc": auroc(y_true, proba),
        "per_class_precision": precision.astype(np.float64),
        "per_class_recall": recall.astype(np.float64),
        "per_class_f1": f1.astype(np.float64),
        "per_class_support": support.astype(np.int32),
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=labels).astype(np.int32),
    }
    return out


def auroc(y_true: np.ndarray, proba: np.ndarray) -> float:
    if proba.shape[1] == 2:
        if len(np.unique(y_true)) < 2:
            return float("nan")
        return float(skm.roc_auc_score(y_true, proba[:, 1]))
    scores = [
        skm.roc_auc_score(y_true == c, proba[:, c])
        for c in range(proba.shape[1])
        if 0 < (y_true == c).sum() < len(y_true)
    ]
    return float(np.mean(scores)) if scores else float("nan")


SUMMARY_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "auroc",
)

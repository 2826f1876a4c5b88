"""Metrics (scikit-learn) in an R-readable form: scalars and plain arrays.

Classification, regression (forecasts) and clustering against known labels.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd


def _sklearn_metrics():
    """scikit-learn's metrics, imported when a metric is computed (not by ``import
    anndata_rnn``: a prediction without labels never loads scikit-learn)."""
    from sklearn import metrics

    return metrics


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, classes) -> dict:
    """Accuracy, balanced accuracy, macro precision/recall/F1, per class, confusion, AUROC.

    ``y_true`` are integer codes into ``classes``; ``proba`` is ``(n, n_classes)``. AUROC is the
    binary AUROC for two classes, else the macro mean of one-vs-rest AUROCs over the classes
    present in ``y_true``.
    """
    labels = np.arange(len(classes))
    y_pred = proba.argmax(axis=1)
    precision, recall, f1, support = _sklearn_metrics().precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    with warnings.catch_warnings():
        # a class predicted but absent from the test labels is expected (e.g. held-out fates)
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        balanced = float(_sklearn_metrics().balanced_accuracy_score(y_true, y_pred))
    out = {
        "n": int(len(y_true)),
        "accuracy": float(_sklearn_metrics().accuracy_score(y_true, y_pred)),
        "balanced_accuracy": balanced,
        "precision_macro": float(precision[support > 0].mean()) if (support > 0).any() else 0.0,
        "recall_macro": float(recall[support > 0].mean()) if (support > 0).any() else 0.0,
        "f1_macro": float(f1[support > 0].mean()) if (support > 0).any() else 0.0,
        "auroc": auroc(y_true, proba),
        "per_class_precision": precision.astype(np.float64),
        "per_class_recall": recall.astype(np.float64),
        "per_class_f1": f1.astype(np.float64),
        "per_class_support": support.astype(np.int32),
        "confusion_matrix": _sklearn_metrics()
        .confusion_matrix(y_true, y_pred, labels=labels)
        .astype(np.int32),
    }
    return out


def auroc(y_true: np.ndarray, proba: np.ndarray) -> float:
    if proba.shape[1] == 2:
        if len(np.unique(y_true)) < 2:
            return float("nan")
        return float(_sklearn_metrics().roc_auc_score(y_true, proba[:, 1]))
    scores = [
        _sklearn_metrics().roc_auc_score(y_true == c, proba[:, c])
        for c in range(proba.shape[1])
        if 0 < (y_true == c).sum() < len(y_true)
    ]
    return float(np.mean(scores)) if scores else float("nan")


SILHOUETTE_SAMPLE = 5000
#: test metrics resting on fewer units than this, or on fewer than MIN_TEST_PER_CLASS units of
#: some class, are unreliable (a caution of the run and a warning of the report)
MIN_TEST_UNITS = 10
MIN_TEST_PER_CLASS = 2

SUMMARY_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "auroc",
)


def regression_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, observed: np.ndarray, gene: np.ndarray
) -> dict:
    """MSE, MAE, R² and the mean per-gene Pearson r over the observed entries.

    All arrays have one entry per scored value; ``gene`` says which gene each belongs to.
    R² is ``1 - SSE / SST`` with SST around each gene's mean (sklearn's variance-weighted R²).
    A gene's Pearson r needs >= 3 values and non-constant truth and prediction, else it is NaN
    (persistence over held-out steps predicts a constant, so its r is NaN there).
    """
    t = y_true[observed].astype(np.float64)
    p = y_pred[observed].astype(np.float64)
    g = np.unique(gene[observed], return_inverse=True)[1]
    if not len(t):
        nan = np.nan
        return {
            "mse": nan,
            "mae": nan,
            "r2": nan,
            "pearson_r": nan,
            "n_genes_pearson": 0,
            "n_values": 0,
        }
    err = t - p
    n_g = np.bincount(g).astype(np.float64)

    def gsum(v):
        return np.bincount(g, weights=v, minlength=len(n_g))

    mean_t, mean_p = gsum(t) / n_g, gsum(p) / n_g
    dt, dp = t - mean_t[g], p - mean_p[g]
    sst = float((dt**2).sum())
    var_t, var_p, cov = gsum(dt**2), gsum(dp**2), gsum(dt * dp)
    ok = (n_g >= 3) & (var_t > 1e-12 * n_g) & (var_p > 1e-12 * n_g)
    r = np.full(len(n_g), np.nan)
    r[ok] = cov[ok] / np.sqrt(var_t[ok] * var_p[ok])
    return {
        "mse": float(_sklearn_metrics().mean_squared_error(t, p)),
        "mae": float(_sklearn_metrics().mean_absolute_error(t, p)),
        "r2": float(1 - (err**2).sum() / sst) if sst > 0 else np.nan,
        "pearson_r": float(np.mean(r[ok])) if ok.any() else np.nan,
        "n_genes_pearson": int(ok.sum()),
        "n_values": int(len(t)),
    }


def silhouette(x: np.ndarray, codes: np.ndarray, seed: int) -> float:
    """Silhouette of a clustering (sampled above ``SILHOUETTE_SAMPLE`` rows); NaN for k < 2."""
    k = len(np.unique(codes))
    if k < 2 or k >= len(codes):
        return float("nan")
    sample = SILHOUETTE_SAMPLE if len(codes) > SILHOUETTE_SAMPLE else None
    return float(
        _sklearn_metrics().silhouette_score(x, codes, sample_size=sample, random_state=seed)
    )


def cluster_report(codes: np.ndarray, truth: np.ndarray, classes: np.ndarray) -> dict:
    """Per cluster: size, fraction of each label class, enrichment over the overall fraction."""
    labelled = truth >= 0
    k = int(codes.max()) + 1
    sizes = np.bincount(codes, minlength=k)
    counts = (
        pd.crosstab(codes[labelled], truth[labelled])
        .reindex(index=range(k), columns=range(len(classes)), fill_value=0)
        .to_numpy(dtype=np.float64)
    )
    n_labelled = counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = counts / n_labelled[:, None]
        overall = counts.sum(axis=0) / counts.sum()
        enrichment = fraction / overall[None, :]
    return {
        "clusters": np.asarray([str(c) for c in range(k)], dtype=object),
        "classes": np.asarray([str(c) for c in classes], dtype=object),
        "size": sizes.astype(np.int64),
        "n_labelled": n_labelled.astype(np.int64),
        "overall_fraction": overall,
        "fraction": fraction,
        "enrichment": enrichment,
    }


def reconstruction_metrics(errors: np.ndarray, sequence_ids: np.ndarray) -> dict:
    """Mean reconstruction error (an autoencoder's per-sequence MSE) over ``sequence_ids``."""
    return {"reconstruction_mse": float(errors[sequence_ids].mean())}


def clustering_metrics(x, codes, truth, classes, seed) -> tuple[dict, dict | None]:
    """Silhouette and, with known labels ``truth`` (codes, -1 = unlabelled), ARI, NMI and the
    per-cluster report."""
    out = {
        "n": int(len(codes)),
        "n_clusters": int(len(np.unique(codes))),
        "silhouette": silhouette(x, codes, seed),
    }
    report = None
    if truth is not None:
        labelled = truth >= 0
        out["n_labelled"] = int(labelled.sum())
        out["ari"] = float(_sklearn_metrics().adjusted_rand_score(truth[labelled], codes[labelled]))
        out["nmi"] = float(
            _sklearn_metrics().normalized_mutual_info_score(truth[labelled], codes[labelled])
        )
        report = cluster_report(codes, truth, classes)
        enrichment = report["enrichment"]
        out["max_enrichment"] = (
            float(np.nanmax(enrichment)) if np.isfinite(enrichment).any() else float("nan")
        )
    return out, report


def cv_summary(
    fold_metrics: list[dict], reference: str = "baseline", test_train_ratio: float | None = None
) -> dict:
    """Cross-validation summary: per model and scalar metric the mean and sd over folds, and
    for every other model the paired difference to ``reference``: mean, sd and a 95 %
    interval over the folds where both are defined (``n``; folds with NaN are counted in
    ``n_dropped``).

    The interval is Nadeau & Bengio's (2003) corrected resampled t: the folds share most of
    their training units, so their differences are correlated and the plain t interval
    (standard error ``sd / sqrt(n)``) is too narrow; the standard error is ``sd * sqrt(1/n +
    n_test/n_train)`` instead, with ``test_train_ratio`` = ``n_test/n_train`` (default
    ``1/(K-1)``, K-fold), on ``n - 1`` degrees of freedom.
    """
    from scipy import stats

    models = list(fold_metrics[0])
    k = len(fold_metrics)
    ratio = float(test_train_ratio) if test_train_ratio is not None else 1 / max(k - 1, 1)
    summary: dict = {
        "n_folds": k,
        "interval": "corrected resampled t (Nadeau & Bengio 2003)",
        "test_train_ratio": ratio,
        "mean": {},
        "sd": {},
        "difference": {},
    }
    for model in models:
        names = [
            name
            for name, value in fold_metrics[0][model].items()
            if np.ndim(value) == 0 and not isinstance(value, str)
        ]
        table = {n: np.array([float(f[model][n]) for f in fold_metrics]) for n in names}
        summary["mean"][model] = {n: float(np.nanmean(v)) for n, v in table.items()}
        summary["sd"][model] = {n: float(np.nanstd(v, ddof=1)) for n, v in table.items()}
        if model == reference or reference not in models:
            continue
        difference = {}
        for n in SUMMARY_METRICS:
            if n not in table or n not in fold_metrics[0][reference]:
                continue
            d = table[n] - np.array([float(f[reference][n]) for f in fold_metrics])
            d = d[np.isfinite(d)]
            if len(d) < 2:
                continue
            se = d.std(ddof=1) * np.sqrt(1 / len(d) + ratio)
            half = stats.t.ppf(0.975, len(d) - 1) * se
            difference[n] = {
                "mean": float(d.mean()),
                "sd": float(d.std(ddof=1)),
                "ci95_low": float(d.mean() - half),
                "ci95_high": float(d.mean() + half),
                "n": len(d),
                "n_dropped": k - len(d),
            }
        summary["difference"][f"{model} - {reference}"] = difference
    return summary

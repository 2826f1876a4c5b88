"""Plots of what a run stored in the output AnnData (``obs``/``var``, ``obsm``/``varm``,
``layers`` and ``uns[key]``).

Every function reads only the output AnnData, so it works on a file written by the command line
as well as on an object annotated in Python. The backend is left alone: in a notebook the
figures show inline, on a server set ``MPLBACKEND=Agg`` (the command line does).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from ..errors import InputError
from ..metrics import SUMMARY_METRICS
from ..sequences import OBS_SERIES, Layout

#: metrics that are counts, not scores (left out of the bar charts)
COUNT_METRICS = {"n", "n_values", "n_genes_pearson", "n_labelled", "n_clusters", "n_units"}
#: the order of the models in tables and charts (others follow in stored order)
MODEL_ORDER = (
    "rnn",
    "linear_path",
    "linear",
    "pca",
    "baseline",
    "nearest_neighbour",
    "persistence",
    "linear_ar",
)
#: colours: the RNN blue, baselines grey / orange, further entries from the default cycle
MODEL_COLORS = {
    "rnn": "#1f77b4",
    "baseline": "#7f7f7f",
    "nearest_neighbour": "#8c564b",
    "linear_path": "#2ca02c",
    "linear": "#17becf",
    "persistence": "#bcbd22",
    "linear_ar": "#ff7f0e",
}


# ---------------------------------------------------------------------------------- helpers --
def _run(adata: AnnData, key: str) -> dict:
    if key not in adata.uns:
        raise InputError(
            f"uns has no {key!r}: run an anndata_rnn.tl function with key_added={key!r}"
        )
    return adata.uns[key]


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def model_entries(metrics: dict) -> list[str]:
    """The model entries of ``uns[key]["metrics"]`` (rnn, baseline, linear, ...), RNN first."""
    models = [m for m, v in metrics.items() if isinstance(v, dict)]
    ordered = [m for m in MODEL_ORDER if m in models]
    return ordered + [m for m in models if m not in ordered]


#: the order of the metrics in tables and charts (others follow alphabetically)
METRIC_ORDER = (
    "n",
    *SUMMARY_METRICS,
    "mse",
    "mae",
    "r2",
    "pearson_r",
    "reconstruction_mse",
    "silhouette",
    "ari",
    "nmi",
    "max_enrichment",
)


def metric_order(names) -> list[str]:
    """``names`` in the conventional order (counts and summary scores first)."""
    names = list(dict.fromkeys(names))
    known = [m for m in METRIC_ORDER if m in names]
    return known + sorted(m for m in names if m not in known)


def model_label(name: str) -> str:
    """How a model entry is named in plots and tables."""
    return {
        "rnn": "RNN",
        "baseline": "baseline",
        "nearest_neighbour": "1-NN",
        "linear_path": "linear path alone",
        "linear": "linear (ablation)",
        "persistence": "persistence",
        "linear_ar": "linear AR",
        "pca": "PCA",
    }.get(name, str(name))


def _color(name: str, i: int) -> str:
    return MODEL_COLORS.get(name, f"C{(i + 3) % 10}")


def _is_score(value) -> bool:
    return value is not None and np.ndim(value) == 0 and not isinstance(value, str | bytes)


def _finish(obj, show: bool | None, save):
    """Save (``save`` = a file path) and show the figure; return ``obj`` unless shown."""
    fig = obj if isinstance(obj, _pyplot().Figure) else obj.figure
    if save:
        fig.savefig(Path(save), dpi=150, bbox_inches="tight")
    if show:
        _pyplot().show()
        return None
    return obj


def _pyplot():
    """matplotlib.pyplot, imported when a plot is drawn (``import anndata_rnn`` stays free of
    it: pyplot picks a GUI backend and registers global state)."""
    import matplotlib.pyplot as plt

    return plt


def _unit_axis(adata: AnnData, key: str) -> str:
    """``"var"`` when the run's units are genes (var-series), else ``"obs"``."""
    layout = Layout.get(_text(_run(adata, key).get("layout", "")))
    return layout.unit_axis if layout is not None else "obs"


# ---------------------------------------------------------------------------------- history --
def training_history(
    adata: AnnData, *, key: str = "rnn", ax=None, show: bool | None = None, save=None
):
    """Training and validation loss per epoch, the best epoch marked.

    Parameters
    ----------
    adata
        AnnData annotated by a training function (``tl.classify``, ``tl.forecast``,
        ``tl.embed``).
    key
        The ``key_added`` of that run.
    ax
        Matplotlib axes to draw into (default: a new figure).
    show
        Show the figure (``plt.show()``) and return ``None``.
    save
        Also save the figure to this file (the format follows its suffix, e.g. ``.png``).

    Returns
    -------
    matplotlib.axes.Axes
        The axes, unless ``show``.
    """
    history = _run(adata, key).get("history", {})
    if "train_loss" not in history:
        raise InputError(f"uns[{key!r}] has no training history (was it a predict run?)")
    ax = ax or _pyplot().figure(figsize=(5, 3.4)).add_subplot()
    _draw_curves(ax, history, "loss")
    ax.set_title("Training history")
    return _finish(ax, show, save)


def _draw_curves(ax, history: dict, what: str) -> None:
    if what == "loss":
        train = np.asarray(history["train_loss"], dtype=float)
        val = np.asarray(history.get("val_loss", []), dtype=float)
        ylabel = "loss"
    else:
        train = np.asarray(history.get(f"train_{what}", []), dtype=float)
        val = np.asarray(history.get(f"val_{what}", []), dtype=float)
        ylabel = what.replace("_", " ")
    if len(train):
        ax.plot(np.arange(1, len(train) + 1), train, marker=".", label="train")
    if len(val):
        ax.plot(np.arange(1, len(val) + 1), val, marker=".", label="validation")
    best = int(history.get("best_epoch", 0) or 0)
    if best > 0 and (len(val) or len(train)):
        ax.axvline(best, color="grey", ls=":", label=f"best epoch ({best})")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def history(adata: AnnData, *, key: str = "rnn", show: bool | None = None, save=None):
    """Loss and validation metric per epoch (train and validation), the best epoch marked.

    Parameters
    ----------
    adata
        AnnData annotated by a training function.
    key
        The ``key_added`` of that run.
    show, save
        As in :func:`training_history`.

    Returns
    -------
    matplotlib.figure.Figure
        One panel for the loss and one per metric stored in the history (e.g. validation
        accuracy), unless ``show``.
    """
    record = _run(adata, key).get("history", {})
    if "train_loss" not in record:
        raise InputError(f"uns[{key!r}] has no training history (was it a predict run?)")
    names = sorted(
        {
            k.split("_", 1)[1]
            for k in record
            if k.startswith(("val_", "train_")) and k not in ("train_loss", "val_loss")
        }
    )
    panels = ["loss", *names]
    fig, axes = _pyplot().subplots(
        1, len(panels), figsize=(5.2 * len(panels), 3.4), squeeze=False, layout="constrained"
    )
    for ax, what in zip(axes[0], panels, strict=True):
        _draw_curves(ax, record, what)
        ax.set_title(f"{what.replace('_', ' ')} per epoch")
    fig.suptitle("Training history")
    return _finish(fig, show, save)


# ---------------------------------------------------------------------------------- metrics --
def metrics(
    adata: AnnData,
    *,
    key: str = "rnn",
    metrics: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    source: str = "metrics",
    ax=None,
    show: bool | None = None,
    save=None,
):
    """Horizontal bar chart of the stored test metrics, one bar per model and metric.

    Every model entry of ``uns[key]["metrics"]`` is drawn: the RNN, its baseline(s)
    (``baseline``; ``persistence`` and ``linear_ar`` for forecasts) and any other entry such as
    the linear-path ablation ``linear``. Bars carry their values; the legend sits outside the
    axes.

    Parameters
    ----------
    adata
        AnnData annotated by a training function (or by ``tl.predict`` on labelled data).
    key
        The ``key_added`` of that run.
    metrics
        Which metrics (default: every scalar score, counts such as ``n`` left out).
    models
        Which model entries (default: all, RNN first).
    source
        The ``uns[key]`` entry to read: ``"metrics"`` or, after predict, ``"training_metrics"``.
    ax
        Matplotlib axes to draw into.
    show, save
        As in :func:`training_history`.

    Returns
    -------
    matplotlib.axes.Axes
        The axes, unless ``show``.
    """
    stored = _run(adata, key).get(source, {})
    models = list(models) if models is not None else model_entries(stored)
    models = [m for m in models if isinstance(stored.get(m), dict)]
    if not models:
        raise InputError(f"uns[{key!r}][{source!r}] has no metrics (no test split?)")
    if metrics is None:
        metrics = []
        for m in models:
            for name, value in stored[m].items():
                if _is_score(value) and name not in COUNT_METRICS and name not in metrics:
                    metrics.append(name)
        metrics = metric_order(metrics)
    metrics = list(metrics)
    if not metrics:
        raise InputError(f"uns[{key!r}][{source!r}] has no scalar metrics to draw")
    height = 0.8 / len(models)
    if ax is None:
        fig = _pyplot().figure(figsize=(6.4, 0.9 + 0.32 * len(metrics) * len(models) + 0.2))
        ax = fig.add_subplot()
    values_all = []
    for i, name in enumerate(models):
        values = [
            float(stored[name][m]) if _is_score(stored[name].get(m, None)) else np.nan
            for m in metrics
        ]
        values_all.extend(v for v in values if np.isfinite(v))
        y = np.arange(len(metrics)) + i * height
        bars = ax.barh(
            y, np.nan_to_num(values), height, label=model_label(name), color=_color(name, i)
        )
        for bar, value in zip(bars, values, strict=True):
            text = "n/a" if not np.isfinite(value) else f"{value:.3g}"
            ax.annotate(
                text,
                (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                xytext=(3 if value >= 0 or not np.isfinite(value) else -3, 0),
                textcoords="offset points",
                ha="left" if value >= 0 or not np.isfinite(value) else "right",
                va="center",
                fontsize=7,
            )
    ax.set_yticks(
        np.arange(len(metrics)) + 0.4 - height / 2, [m.replace("_", " ") for m in metrics]
    )
    ax.invert_yaxis()
    low = min([0.0, *values_all])
    high = max([0.0, *values_all])
    span = (high - low) or 1.0
    ax.set_xlim(low - (0.15 * span if low < 0 else 0), high + 0.15 * span)
    if low < 0:
        ax.axvline(0, color="black", lw=0.6)
    ax.set_xlabel("value on the test split" if source == "metrics" else "value")
    ax.set_title("Test metrics: RNN vs baseline" if "baseline" in models else "Test metrics")
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return _finish(ax, show, save)


#: the earlier name of :func:`metrics`
baseline_comparison = metrics


# -------------------------------------------------------------------------------- confusion --
def confusion(
    adata: AnnData,
    *,
    key: str = "rnn",
    models: Sequence[str] | None = None,
    normalize: bool = True,
    source: str = "metrics",
    show: bool | None = None,
    save=None,
):
    """Confusion matrices on the test split, one per model, side by side.

    Parameters
    ----------
    adata
        AnnData annotated by ``tl.classify`` (or ``tl.predict`` on labelled data).
    key
        The ``key_added`` of that run.
    models
        Which model entries of ``uns[key]["metrics"]`` (default: every entry with a
        ``confusion_matrix``, RNN first).
    normalize
        Divide each row (true class) by its total, so a cell is the fraction of that class
        predicted as the column's class; the counts are printed in the cells either way.
    source
        ``"metrics"`` or ``"training_metrics"`` (after predict).
    show, save
        As in :func:`training_history`.

    Returns
    -------
    matplotlib.figure.Figure
        The figure, unless ``show``.
    """
    record = _run(adata, key)
    stored = record.get(source, {})
    available = [m for m in model_entries(stored) if "confusion_matrix" in stored[m]]
    models = [m for m in (models if models is not None else available) if m in available]
    if not models:
        raise InputError(f"uns[{key!r}][{source!r}] holds no confusion matrix (not a classifier?)")
    classes = [_text(c) for c in record.get("classes", [])]
    n = np.asarray(stored[models[0]]["confusion_matrix"]).shape[0]
    if len(classes) != n:
        classes = [str(i) for i in range(n)]
    longest = max(len(c) for c in classes)
    size = 1.2 + 0.55 * n + 0.07 * longest
    fig, axes = _pyplot().subplots(
        1,
        len(models),
        figsize=(size * len(models) + 1.2, size + 0.8),
        squeeze=False,
        layout="constrained",
    )
    image = None
    for ax, name in zip(axes[0], models, strict=True):
        counts = np.asarray(stored[name]["confusion_matrix"], dtype=float)
        totals = counts.sum(axis=1, keepdims=True)
        shown = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
        shown = shown if normalize else counts
        image = ax.imshow(
            shown, cmap="Blues", vmin=0, vmax=1 if normalize else max(counts.max(), 1)
        )
        limit = 0.5 * (1 if normalize else max(counts.max(), 1))
        for i in range(n):
            for j in range(n):
                label = (
                    f"{shown[i, j]:.2f}\n({int(counts[i, j])})"
                    if normalize
                    else f"{int(counts[i, j])}"
                )
                ax.text(
                    j,
                    i,
                    label,
                    ha="center",
                    va="center",
                    fontsize=7 if n > 6 else 8,
                    color="white" if shown[i, j] > limit else "black",
                )
        ax.set_xticks(
            range(n), classes, rotation=45 if n > 2 else 0, ha="right" if n > 2 else "center"
        )
        ax.set_yticks(range(n), classes)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(model_label(name))
    fig.colorbar(
        image,
        ax=axes[0].tolist(),
        shrink=0.8,
        label="fraction of the true class" if normalize else "count",
    )
    fig.suptitle("Confusion matrices (test split)" + (", rows normalized" if normalize else ""))
    return _finish(fig, show, save)


# --------------------------------------------------------------------------------- forecast --
def _matrix(adata: AnnData, record: dict) -> tuple[np.ndarray, np.ndarray]:
    """The values the run read (X or its layer), dense, and the feature names."""
    params = record.get("params", {})
    layer = params.get("layer")
    x = adata.layers[_text(layer)] if layer else adata.X
    if hasattr(x, "toarray"):
        x = x.toarray()
    return np.asarray(x, dtype=float), np.asarray(adata.var_names, dtype=object)


def _series_order(adata: AnnData, record: dict, series: str | None) -> np.ndarray:
    """Row positions of one series' observations, ordered by time."""
    params = record.get("params", {})
    series_key, time_key = params.get("series_key"), params.get("time_key")
    rows = np.arange(adata.n_obs)
    if series_key and series is not None:
        rows = rows[adata.obs[_text(series_key)].astype(str).to_numpy() == str(series)]
    if time_key:
        rows = rows[np.argsort(adata.obs[_text(time_key)].to_numpy()[rows], kind="stable")]
    return rows


def _times(adata: AnnData, record: dict, rows: np.ndarray) -> np.ndarray:
    time_key = record.get("params", {}).get("time_key")
    if time_key:
        return adata.obs[_text(time_key)].to_numpy(dtype=float)[rows]
    return np.arange(len(rows), dtype=float)


def _default_pick(values: np.ndarray, names: np.ndarray, prefer: np.ndarray, n: int) -> list:
    """The ``n`` most variable of the preferred names with (nearly) complete values."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        spread = np.nanvar(values, axis=0) if values.size else np.zeros(len(names))
        complete = np.isfinite(values).mean(axis=0) if values.size else np.ones(len(names))
    spread = np.where(np.isfinite(spread), spread, -1)
    # preferred and complete first, then complete, then the rest; each by variance
    rank = np.where(complete >= 0.9, 0, 2) + np.where(prefer, 0, 1)
    order = np.lexsort((-spread, rank))
    return [names[i] for i in order[:n]]


def forecast(
    adata: AnnData,
    *,
    key: str = "rnn",
    genes: Sequence[str] | None = None,
    series: Sequence[str] | None = None,
    n_genes: int = 3,
    n_series: int = 2,
    show: bool | None = None,
    save=None,
):
    """Observed and predicted trajectories: one panel per gene and series.

    Draws the observed values, the one-step-ahead forecasts (``layers[f"{key}_forecast"]``),
    the rollout of held-out last steps (``varm[f"{key}_forecast"]`` for var-series,
    ``uns[key]["holdout"]`` for obs-series) with the persistence baseline (the last observed
    value before them), and the forecasts beyond the end (``uns[key]["future"]``). The held-out
    window is shaded. Linear-AR forecasts are drawn when stored (as
    ``layers``/``varm[f"{key}_forecast_linear_ar"]``); otherwise only its metrics are kept.

    Parameters
    ----------
    adata
        AnnData annotated by ``tl.forecast`` (or ``tl.predict`` with a forecaster).
    key
        The ``key_added`` of that run.
    genes
        Genes to draw (var names). Default: the most variable test genes (var-series) or genes.
    series
        Series to draw. Default: the run's ``series_subset`` (var-series) or the most variable
        test series (obs-series).
    n_genes, n_series
        How many genes / series to pick when they are not given.
    show, save
        As in :func:`training_history`.

    Returns
    -------
    matplotlib.figure.Figure
        The figure, unless ``show``.
    """
    record = _run(adata, key)
    if _text(record.get("task", "")) != "forecast":
        raise InputError(f"uns[{key!r}] is not a forecast run (task {record.get('task')!r})")
    params = record.get("params", {})
    layout = _text(params.get("layout", record.get("layout", OBS_SERIES.name)))
    values, names = _matrix(adata, record)
    units = _text(record.get("preprocessing", {}).get("units", "input"))
    if units != "input":
        # the forecasts are in log1p(normalize_total) units: bring the observed counts there
        # (with the median total of all observations; the run used its training median)
        totals = np.nansum(values, axis=1, keepdims=True)
        target = np.median(totals[totals > 0]) if (totals > 0).any() else 1.0
        values = np.log1p(
            np.divide(values * target, totals, where=totals > 0, out=np.zeros_like(values))
        )
    one_step = adata.layers.get(f"{key}_forecast")
    one_step = None if one_step is None else np.asarray(one_step, dtype=float)
    ar_step = adata.layers.get(f"{key}_forecast_linear_ar")
    split_column = f"{key}_split"
    series_key = params.get("series_key")
    all_series = list(pd.unique(adata.obs[_text(series_key)].astype(str))) if series_key else [None]
    if Layout.of(layout).one_feature:
        if series is None:
            subset = [_text(s) for s in np.atleast_1d(params.get("series_subset", []))]
            series = (subset or all_series)[:n_series]
        if genes is None:
            split = (
                adata.var[split_column].astype(str).to_numpy()
                if split_column in adata.var
                else None
            )
            prefer = split == "test" if split is not None else np.ones(len(names), bool)
            rows = np.concatenate([_series_order(adata, record, s) for s in series])
            genes = _default_pick(values[rows], names, prefer, n_genes)
    else:
        if genes is None:
            genes = _default_pick(values, names, np.ones(len(names), bool), n_genes)
        if series is None:
            split = (
                adata.obs[split_column].astype(str).to_numpy()
                if split_column in adata.obs
                else np.full(adata.n_obs, "test")
            )
            tested = [
                s
                for s in all_series
                if s is None
                or (split[adata.obs[_text(series_key)].astype(str) == s] == "test").any()
            ]
            series = (tested or all_series)[:n_series]
    genes, series = list(genes), list(series)
    missing = [g for g in genes if g not in set(names)]
    if missing:
        raise InputError(f"genes not in var_names: {', '.join(map(str, missing[:5]))}")
    holdout = _holdout(adata, record, key, layout)
    future = record.get("future")
    fig, axes = _pyplot().subplots(
        len(genes),
        len(series),
        figsize=(4.6 * len(series), 2.6 * len(genes) + 0.6),
        squeeze=False,
        sharex="col",
        layout="constrained",
    )
    position = {g: i for i, g in enumerate(names)}
    for r, gene in enumerate(genes):
        j = position[gene]
        for c, name in enumerate(series):
            ax = axes[r, c]
            rows = _series_order(adata, record, name)
            t = _times(adata, record, rows)
            observed = values[rows, j]
            ax.plot(t, observed, color="black", marker="o", ms=3, lw=1.2, label="observed")
            if one_step is not None:
                ax.plot(
                    t,
                    one_step[rows, j],
                    color=MODEL_COLORS["rnn"],
                    ls="--",
                    lw=1,
                    alpha=0.8,
                    label="RNN, one step ahead",
                )
            if ar_step is not None:
                ax.plot(
                    t,
                    np.asarray(ar_step, float)[rows, j],
                    color=MODEL_COLORS["linear_ar"],
                    ls="--",
                    lw=1,
                    label="linear AR, one step ahead",
                )
            held = holdout(name, gene, j) if holdout else None
            if held is not None:
                h_t, h_v = held
                ax.axvspan(
                    h_t.min(), h_t.max(), color="orange", alpha=0.12, lw=0, label="held-out steps"
                )
                before = (t < h_t.min()) & np.isfinite(observed)
                if before.any():
                    last_t, last_v = t[before][-1], observed[before][-1]
                    ax.plot(
                        [last_t, *h_t],
                        [last_v] * (len(h_t) + 1),
                        color=MODEL_COLORS["persistence"],
                        ls=":",
                        lw=1.5,
                        label="persistence",
                    )
                    ax.plot(
                        [last_t, *h_t],
                        [last_v, *h_v],
                        color=MODEL_COLORS["rnn"],
                        marker="s",
                        ms=3,
                        lw=1.6,
                        label="RNN rollout (held out)",
                    )
                else:
                    ax.plot(
                        h_t,
                        h_v,
                        color=MODEL_COLORS["rnn"],
                        marker="s",
                        ms=3,
                        lw=1.6,
                        label="RNN rollout (held out)",
                    )
            ahead = _future(future, layout, name, gene, j)
            if ahead is not None:
                ax.plot(
                    *ahead,
                    color=MODEL_COLORS["rnn"],
                    ls=":",
                    marker="^",
                    ms=3,
                    label="RNN beyond the end",
                )
            title = str(gene) if name is None else f"{gene}, series {name}"
            ax.set_title(title, fontsize=9)
            if c == 0:
                ax.set_ylabel("expression" if units == "input" else units)
            if r == len(genes) - 1:
                ax.set_xlabel(_text(params.get("time_key", "step")))
    handles, labels = {}, []
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in handles:
                handles[label] = handle
                labels.append(label)
    fig.legend(
        [handles[label] for label in labels],
        labels,
        loc="outside lower center",
        ncol=min(len(labels), 3),
        frameon=False,
        fontsize=8,
    )
    fig.suptitle("Forecasts: observed and predicted trajectories")
    return _finish(fig, show, save)


def _holdout(adata: AnnData, record: dict, key: str, layout: str):
    """A function (series, gene, position) -> (times, values) of the held-out rollout, or None."""
    if (
        Layout.of(layout).one_feature
        and f"{key}_forecast" in adata.varm
        and "holdout_columns" in record
    ):
        matrix = np.asarray(adata.varm[f"{key}_forecast"], dtype=float)
        columns = record["holdout_columns"]
        col_series = np.asarray([_text(s) for s in columns["series"]])
        col_time = np.asarray(columns["time"], dtype=float)
        gene_row = {g: i for i, g in enumerate(adata.var_names)}

        def var_series(series, gene, _j):
            keep = col_series == str(series) if series is not None else np.ones(len(col_time), bool)
            if not keep.any():
                return None
            return col_time[keep], matrix[gene_row[gene], keep]

        return var_series
    held = record.get("holdout")
    if not Layout.of(layout).one_feature and isinstance(held, dict) and "values" in held:
        unit = np.asarray([_text(s) for s in held["unit"]])
        times = np.asarray(held["time"], dtype=float)
        table = np.asarray(held["values"], dtype=float)
        features = [_text(f) for f in held["features"]]
        column = {f: i for i, f in enumerate(features)}

        def obs_series(series, gene, _j):
            keep = unit == str(series)
            if not keep.any() or str(gene) not in column:
                return None
            order = np.argsort(times[keep], kind="stable")
            return times[keep][order], table[keep, column[str(gene)]][order]

        return obs_series
    return None


def _future(future, layout: str, series, gene, j):
    if not isinstance(future, dict) or "values" not in future:
        return None
    table = np.asarray(future["values"], dtype=float)
    units = np.asarray([_text(u) for u in future["unit"]])
    seqs = np.asarray([_text(s) for s in future["series"]])
    times = np.asarray(future["time"], dtype=float)
    if Layout.of(layout).one_feature:
        keep = (units == str(gene)) & (seqs == str(series))
        column = 0
    else:
        keep = units == str(series)
        features = [_text(f) for f in future["features"]]
        if str(gene) not in features:
            return None
        column = features.index(str(gene))
    if not keep.any():
        return None
    order = np.argsort(times[keep], kind="stable")
    return times[keep][order], table[keep, column][order]


# ------------------------------------------------------------------------------- importance --
def importance(
    adata: AnnData,
    *,
    key: str = "rnn",
    classes: Sequence[str] | None = None,
    n_genes: int = 10,
    show: bool | None = None,
    save=None,
):
    """What drives the predictions (``tl.explain``): top genes per class and step importance.

    Parameters
    ----------
    adata
        AnnData annotated by ``tl.explain``.
    key
        The ``key_added`` of that run.
    classes
        Classes (or forecast targets) to draw (default: every explained one).
    n_genes
        Genes per class, by signed mean attribution (positive = pushes toward the class).
    show, save
        As in :func:`training_history`.

    Returns
    -------
    matplotlib.figure.Figure
        One bar panel per class with the top genes (``varm[f"{key}_importance"]``; absent for
        var-series models, which attribute time points only) and one panel with the importance
        of each time step (``uns[key]["step_importance"]``), unless ``show``.
    """
    record = _run(adata, key)
    if "explain" not in record:
        raise InputError(f"uns[{key!r}] holds no explanation: run explain first")
    columns = [_text(c) for c in record["explain"]["columns"]]
    counts = np.asarray(record["explain"].get("n_explained", np.ones(len(columns))))
    wanted = [
        c
        for i, c in enumerate(columns)
        if (classes is None and counts[i] > 0) or (classes is not None and c in classes)
    ]
    matrix, names = None, None
    if f"{key}_importance" in adata.varm:
        matrix = np.asarray(adata.varm[f"{key}_importance"], dtype=float)
        names = np.asarray(adata.var_names, dtype=object)
    elif "feature_importance" in record:
        matrix = np.asarray(record["feature_importance"], dtype=float)
        names = np.asarray([_text(f) for f in record["features"]], dtype=object)
    steps = record.get("step_importance")
    gene_panels = wanted if matrix is not None else []
    n_panels = len(gene_panels) + (steps is not None)
    if n_panels == 0:
        raise InputError(f"uns[{key!r}] has no importance to draw")
    ncols = min(n_panels, 3)
    nrows = int(np.ceil(n_panels / ncols))
    fig, axes = _pyplot().subplots(
        nrows,
        ncols,
        figsize=(4.4 * ncols, max(2.8, 0.26 * n_genes + 1.0) * nrows),
        squeeze=False,
        layout="constrained",
    )
    flat = list(axes.flat)
    for ax, name in zip(flat, gene_panels, strict=False):
        scores = matrix[:, columns.index(name)]
        valid = np.flatnonzero(np.isfinite(scores))
        order = valid[np.argsort(-scores[valid], kind="stable")][:n_genes]
        ax.barh(
            range(len(order)),
            scores[order],
            color=np.where(scores[order] >= 0, "#1f77b4", "#d62728"),
        )
        ax.set_yticks(range(len(order)), [str(names[i]) for i in order], fontsize=8)
        ax.invert_yaxis()
        ax.axvline(0, color="black", lw=0.6)
        ax.set_xlabel("mean attribution")
        ax.set_title(f"top genes: {name}", fontsize=9)
    if steps is not None:
        ax = flat[len(gene_panels)]
        steps = np.asarray(steps, dtype=float)
        times = np.asarray(record.get("step_times", np.arange(steps.shape[0])), dtype=float)
        for i, name in enumerate(columns):
            if name in wanted and np.isfinite(steps[:, i]).any():
                ax.plot(times[: steps.shape[0]], steps[:, i], marker=".", label=name)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xlabel(_text(record.get("params", {}).get("time_key", "step")))
        ax.set_ylabel("mean attribution")
        ax.set_title("importance of each time step", fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(
                frameon=False,
                fontsize=7,
                loc="upper left",
                bbox_to_anchor=(1.01, 1.0),
                borderaxespad=0,
            )
    for ax in flat[n_panels:]:
        ax.set_axis_off()
    fig.suptitle(f"What drives the predictions ({_text(record['explain'].get('method', ''))})")
    return _finish(fig, show, save)


# --------------------------------------------------------------------------------- clusters --
def cluster_table(adata: AnnData, *, key: str = "rnn", label: str | None = None) -> pd.DataFrame:
    """Counts of each label in each cluster (``pandas.crosstab``), one row per clustered unit.

    Parameters
    ----------
    adata
        AnnData annotated by ``tl.embed`` (or ``tl.cluster``) with ``{key}_cluster``.
    key
        The ``key_added`` of that run.
    label
        Column (obs, or var for var-series) to compare with (default: the run's ``eval_label``).

    Returns
    -------
    pandas.DataFrame
        Clusters × labels counts. In obs-series runs clustered per series, each series counts
        once.
    """
    record = adata.uns.get(key, {})
    column = f"{key}_cluster"
    frame = adata.var if column in adata.var else adata.obs
    if column not in frame:
        raise InputError(f"no {column!r} column in obs or var: cluster first (tl.embed, cluster=)")
    label = label if label is not None else record.get("eval_label")
    if label is None:
        raise InputError("give label= (the run has no eval_label)")
    label = _text(label)
    if label not in frame:
        raise InputError(f"no {label!r} column beside {column!r}")
    data = frame[[column, label]].dropna()
    series_key = record.get("params", {}).get("series_key")
    level = _text(record.get("cluster", {}).get("level", ""))
    if frame is adata.obs and level == "series" and series_key and _text(series_key) in adata.obs:
        data = data.assign(_series=adata.obs.loc[data.index, _text(series_key)].astype(str))
        data = data.drop_duplicates("_series").drop(columns="_series")
    return pd.crosstab(data[column].astype(str), data[label].astype(str))


def clusters(
    adata: AnnData,
    *,
    key: str = "rnn",
    label: str | None = None,
    normalize: bool = True,
    ax=None,
    show: bool | None = None,
    save=None,
):
    """Cluster composition against a label: one stacked bar per cluster.

    Parameters
    ----------
    adata
        AnnData annotated by ``tl.embed`` (or ``tl.cluster``).
    key
        The ``key_added`` of that run.
    label
        The column to compare with (default: the run's ``eval_label``).
    normalize
        Bars show fractions of each cluster (sizes in the tick labels); else counts.
    ax
        Matplotlib axes to draw into.
    show, save
        As in :func:`training_history`.

    Returns
    -------
    matplotlib.axes.Axes
        The axes, unless ``show``.
    """
    table = cluster_table(adata, key=key, label=label)
    label = label if label is not None else _text(adata.uns[key].get("eval_label"))
    sizes = table.sum(axis=1)
    shown = table.div(sizes.replace(0, 1), axis=0) if normalize else table
    if ax is None:
        ax = _pyplot().figure(figsize=(1.6 + 0.45 * len(table), 3.6)).add_subplot()
    bottom = np.zeros(len(table))
    x = np.arange(len(table))
    for i, name in enumerate(table.columns):
        ax.bar(x, shown[name].to_numpy(), 0.8, bottom=bottom, label=str(name), color=f"C{i % 10}")
        bottom += shown[name].to_numpy()
    ax.set_xticks(
        x, [f"{c}\n(n={int(s)})" for c, s in zip(table.index, sizes, strict=True)], fontsize=8
    )
    ax.set_xlabel("cluster")
    ax.set_ylabel("fraction of the cluster" if normalize else "count")
    ax.set_title(f"Cluster composition by {label}")
    ax.legend(
        title=str(label),
        frameon=False,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        borderaxespad=0,
        fontsize=8,
    )
    return _finish(ax, show, save)


# -------------------------------------------------------------------------------- embedding --
def latent_pca(
    adata: AnnData,
    *,
    key: str = "rnn",
    color: str | None = None,
    ax=None,
    show: bool | None = None,
    save=None,
):
    """The first two principal components of the embedding ``X_{key}`` (obsm or varm).

    For a UMAP use scanpy: ``sc.pp.neighbors(adata, use_rep="X_rnn"); sc.tl.umap(adata);
    sc.pl.embedding(adata, basis="umap")`` (for var-series, whose embedding is in ``varm``,
    on ``adata.T``); ``sc.pl.embedding(adata, basis="rnn")`` draws its first two dimensions.

    Parameters
    ----------
    adata
        AnnData with ``obsm``/``varm[f"X_{key}"]``.
    key
        The ``key_added`` of that run.
    color
        Column (obs, or var for var-series) colouring the points (default: the cluster, else
        the prediction, else the label column).
    ax, show, save
        As in :func:`clusters`.

    Returns
    -------
    matplotlib.axes.Axes
        The axes, unless ``show``.
    """
    name = f"X_{key}"
    if name in adata.obsm:
        rep, frame = np.asarray(adata.obsm[name], dtype=float), adata.obs
    elif name in adata.varm:
        rep, frame = np.asarray(adata.varm[name], dtype=float), adata.var
    else:
        raise InputError(f"no {name!r} in obsm or varm")
    record = adata.uns.get(key, {})
    if color is None:
        for candidate in (
            f"{key}_cluster",
            record.get("label_key"),
            record.get("eval_label"),
            f"{key}_pred",
        ):
            if candidate is not None and _text(candidate) in frame:
                color = _text(candidate)
                break
    keep = np.isfinite(rep).all(axis=1)
    rep = rep[keep]
    if len(rep) < 3:
        raise InputError(f"{name!r} has fewer than 3 finite rows")
    centred = rep - rep.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    coords = centred @ vt[:2].T
    if coords.shape[1] == 1:
        coords = np.column_stack([coords[:, 0], np.zeros(len(coords))])
    if ax is None:
        ax = _pyplot().figure(figsize=(5.2, 4)).add_subplot()
    if color is not None:
        values = frame[color].to_numpy()[keep]
        groups = pd.Series(values).astype(str)
        for i, group in enumerate(pd.unique(groups)):
            sel = (groups == group).to_numpy()
            ax.scatter(
                coords[sel, 0],
                coords[sel, 1],
                s=6,
                alpha=0.7,
                label=str(group),
                color=f"C{i % 10}",
                rasterized=True,
            )
        if groups.nunique() <= 20:
            ax.legend(
                title=color,
                frameon=False,
                loc="upper left",
                bbox_to_anchor=(1.01, 1.0),
                borderaxespad=0,
                fontsize=7,
                markerscale=2,
            )
    else:
        ax.scatter(coords[:, 0], coords[:, 1], s=6, alpha=0.7, rasterized=True)
    ax.set_xlabel(f"{name} PC1")
    ax.set_ylabel(f"{name} PC2")
    ax.set_title(f"Embedding {name} (first two principal components)")
    return _finish(ax, show, save)

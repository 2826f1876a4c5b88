"""Plots of what a run stored in ``uns[key]``."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from anndata import AnnData  # noqa: E402

from ..errors import InputError  # noqa: E402


def _run(adata: AnnData, key: str) -> dict:
    if key not in adata.uns:
        raise InputError(
            f"uns has no {key!r}: run an anndata_rnn.tl function with key_added={key!r}"
        )
    return adata.uns[key]


def training_history(
    adata: AnnData, *, key: str = "rnn", ax=None, show: bool | None = None, save=None
):
    """Training and validation loss per epoch, the best epoch marked.

    Parameters
    ----------
    adata
        AnnData annotated by a training function.
    key
        The ``key_added`` of that run.
    ax
        Matplotlib axes to draw into.
    show, save
        Show the figure, or save it to this path.

    Returns
    -------
    The axes (when not shown).
    """
    history = _run(adata, key).get("history", {})
    if "train_loss" not in history:
        raise InputError(f"uns[{key!r}] has no training history (was it a predict run?)")
    ax = ax or plt.figure(figsize=(4.5, 3.2)).add_subplot()
    train = np.asarray(history["train_loss"])
    ax.plot(np.arange(1, len(train) + 1), train, label="train")
    val = np.asarray(history.get("val_loss", []))
    if len(val):
        ax.plot(np.arange(1, len(val) + 1), val, label="validation")
        ax.axvline(int(history["best_epoch"]), color="grey", ls=":", label="best epoch")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(frameon=False)
    return _finish(ax, show, save)


def baseline_comparison(
    adata: AnnData, *, key: str = "rnn", metrics=None, ax=None, show: bool | None = None, save=None
):
    """Bar chart of the test metrics of the RNN beside its baseline(s).

    Parameters
    ----------
    adata
        AnnData annotated by a training function.
    key
        The ``key_added`` of that run.
    metrics
        Which metrics (default: every scalar metric the models share).
    ax, show, save
        As in :func:`training_history`.
    """
    stored = _run(adata, key).get("metrics", {})
    models = [m for m in stored if isinstance(stored[m], dict)]
    if not models:
        raise InputError(f"uns[{key!r}] has no metrics (no test split?)")
    if metrics is None:
        shared = set.intersection(
            *(
                {k for k, v in stored[m].items() if np.ndim(v) == 0 and not isinstance(v, str)}
                for m in models
            )
        )
        metrics = sorted(shared - {"n"})
    ax = ax or plt.figure(figsize=(1.2 + 0.9 * len(metrics), 3.2)).add_subplot()
    width = 0.8 / len(models)
    for i, name in enumerate(models):
        heights = [float(stored[name][m]) for m in metrics]
        ax.bar(np.arange(len(metrics)) + i * width, heights, width, label=name)
    ax.set_xticks(np.arange(len(metrics)) + 0.4 - width / 2, metrics, rotation=30, ha="right")
    ax.legend(frameon=False)
    return _finish(ax, show, save)


def _finish(ax, show, save):
    if save:
        ax.figure.tight_layout()
        ax.figure.savefig(save, dpi=150)
    if show:
        plt.show()
        return None
    return ax

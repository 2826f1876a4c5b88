"""Plots (matplotlib) of a run's output AnnData, scanpy-style.

Every function takes the AnnData first and keyword-only options, draws from what the run stored
(``obs``/``var``, ``obsm``/``varm``, ``layers``, ``uns[key]``), and takes ``show=`` / ``save=``.

- :func:`history` (and the loss-only :func:`training_history`): loss and metric per epoch;
- :func:`metrics` (alias :func:`baseline_comparison`): every model entry's test metrics;
- :func:`confusion`: normalized confusion matrices, RNN and baseline side by side;
- :func:`forecast`: observed and predicted trajectories;
- :func:`importance`: top genes per class and step importance (after ``tl.explain``);
- :func:`clusters` (:func:`cluster_table`): cluster composition against a label;
- :func:`latent_pca`: the embedding's first two principal components. For UMAPs use scanpy:
  ``sc.pl.embedding(adata, basis="rnn")`` after ``sc.pp.neighbors(adata, use_rep="X_rnn")``.
"""

from ._plots import (
    baseline_comparison,
    cluster_table,
    clusters,
    confusion,
    forecast,
    history,
    importance,
    latent_pca,
    metrics,
    training_history,
)

__all__ = [
    "baseline_comparison",
    "cluster_table",
    "clusters",
    "confusion",
    "forecast",
    "history",
    "importance",
    "latent_pca",
    "metrics",
    "training_history",
]

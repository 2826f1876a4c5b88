"""Clustering of embeddings: k-means (scikit-learn) or Leiden (scanpy's graph + igraph)."""

from __future__ import annotations

import logging

import numpy as np
from anndata import AnnData

from .errors import InputError
from .metrics import silhouette
from .sequences import Labels, Layout, SequenceIndex, broadcast_to_rows, pool_units

log = logging.getLogger("anndata_rnn")

CLUSTER_METHODS = ("kmeans", "leiden")
#: k tried when k-means gets no n_clusters and no evaluation label (best silhouette wins)
AUTO_K = range(2, 11)
#: what obs-series embeddings cluster: whole series, or observations (per-step latents)
CLUSTER_LEVELS = ("auto", "series", "step")


def check_method(method: str) -> str:
    """``method`` if it is a known clustering method, else an input error."""
    if method not in CLUSTER_METHODS:
        raise InputError(
            f"cluster method must be one of {', '.join(CLUSTER_METHODS)}, got {method!r}"
        )
    return method


def _by_size(codes: np.ndarray, centers: np.ndarray | None):
    """Renumber clusters by decreasing size (0 = largest), as scanpy's leiden does."""
    values, counts = np.unique(codes, return_counts=True)
    order = values[np.lexsort((values, -counts))]
    lookup = np.zeros(codes.max() + 1, dtype=np.int64)
    lookup[order] = np.arange(len(order))
    if centers is not None:
        centers = centers[order]
    return lookup[codes], centers


def check_settings(method: str | None, n_clusters: int | None, resolution: float) -> None:
    """Settings checked before any training: the method (if any) and its parameters."""
    if method is not None:
        check_method(method)
    if method == "leiden" and n_clusters is not None:
        raise InputError(
            "n_clusters applies to k-means; Leiden finds the number of clusters itself: set "
            "resolution (higher = more clusters) instead"
        )
    if not resolution > 0:
        raise InputError(f"resolution must be > 0, got {resolution}")


def check_count(method: str | None, n_clusters: int | None, n_items: int) -> None:
    """k-means cannot make more clusters than there are units (checked before training)."""
    if method == "kmeans" and n_clusters is not None and not 1 <= n_clusters <= n_items:
        raise InputError(
            f"n_clusters must be in 1..{n_items} (the units clustered), got {n_clusters}"
        )


def cluster_matrix(
    x: np.ndarray,
    *,
    method: str = "kmeans",
    n_clusters: int | None = None,
    resolution: float = 1.0,
    n_neighbors: int = 15,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Cluster the rows of ``x``: ``(codes 0..k-1 by decreasing size, k-means centres or None)``.

    k-means (scikit-learn, 10 initialisations); without ``n_clusters`` the k in 2..10 with the
    best silhouette. Leiden (igraph) on scanpy's neighbour graph of ``x`` at ``resolution``.
    """
    check_method(method)
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n < 2:
        raise InputError(f"only {n} row(s) to cluster: need at least 2")
    if method == "kmeans":
        from sklearn.cluster import KMeans

        if n_clusters is not None and not 1 <= n_clusters <= n:
            raise InputError(f"n_clusters must be in 1..{n} (the rows clustered), got {n_clusters}")
        if n_clusters is None:
            best = None
            for k in [k for k in AUTO_K if k < n]:
                fitted = KMeans(k, n_init=10, random_state=seed).fit(x)
                score = silhouette(x, fitted.labels_, seed)
                if best is None or score > best[0]:
                    best = (score, fitted)
            fitted = best[1]
            log.info(
                "k-means: chose k=%d by the best silhouette (%.3f)", fitted.n_clusters, best[0]
            )
        else:
            fitted = KMeans(n_clusters, n_init=10, random_state=seed).fit(x)
        return _by_size(fitted.labels_, fitted.cluster_centers_)
    check_settings("leiden", n_clusters, resolution)
    import scanpy as sc

    tmp = AnnData(x.astype(np.float32))
    sc.pp.neighbors(
        tmp, n_neighbors=max(2, min(n_neighbors, n - 1)), use_rep="X", random_state=seed
    )
    sc.tl.leiden(
        tmp,
        resolution=resolution,
        random_state=seed,
        flavor="igraph",
        n_iterations=2,
        directed=False,
    )
    codes = tmp.obs["leiden"].astype(int).to_numpy()
    return _by_size(codes, None)


def resolve_level(layout: str, cluster_level: str, labels: Labels | None) -> str:
    """``"unit"`` (series / gene / observation) or ``"step"`` (obs-series observations)."""
    if cluster_level not in CLUSTER_LEVELS:
        raise InputError(f"cluster_level must be one of {', '.join(CLUSTER_LEVELS)}")
    if not Layout.of(layout).steps_are_observations:
        if cluster_level == "step":
            raise InputError("cluster_level='step' applies to layout obs-series only")
        return "unit"
    if cluster_level == "auto":
        return "step" if labels is not None and labels.level == "step" else "unit"
    if cluster_level == "series" and labels is not None and labels.level == "step":
        raise InputError(
            f"the evaluation label {labels.key!r} varies within series: use cluster_level='step' "
            "(cluster observations) or a label constant within each series"
        )
    return "unit" if cluster_level == "series" else "step"


def level_name(layout: str, level: str) -> str:
    """What is clustered, in words (for the log)."""
    if level == "step":
        return "observations"
    return Layout.of(layout).units_name


def clustered_members(index: SequenceIndex, level: str, usable, latent, step_latent):
    """What is clustered: the members (units, or obs rows at step level), their (sequence,
    step) positions at step level (else None) and their latents."""
    if level == "unit":
        members = np.flatnonzero(usable)
        return members, None, pool_units(index, latent)[members]
    rows, seq, pos = index.step_rows(index.sequences_of_units(np.flatnonzero(usable)))
    return rows, (seq, pos), step_latent[seq, pos]


def clustered_truth(labels: Labels, index: SequenceIndex, members, steps) -> np.ndarray:
    """Label codes of the clustered members: units, or obs rows at (sequence, step) positions
    ``steps`` (a per-series label repeats on its steps)."""
    if steps is None:
        return labels.codes[members]
    return labels.codes[members] if labels.level == "step" else labels.codes[index.unit[steps[0]]]


def write_clusters(target, index: SequenceIndex, level, codes, members, n_clusters, key):
    """Clusters of units (broadcast to rows) or of obs rows (step level) -> a categorical."""
    names = np.array([str(c) for c in codes], dtype=object)
    if level == "unit":
        per_unit = np.full(index.n_units, None, dtype=object)
        per_unit[members] = names
        rows = broadcast_to_rows(index, per_unit)
    else:
        rows = np.full(index.n_obs, None, dtype=object)
        rows[members] = names
    categories = [str(c) for c in range(n_clusters)]
    return index.write_column(target, f"{key}_cluster", rows, categories=categories)


def nearest_centre(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the nearest k-means centre of each row (assigning new data to clusters)."""
    return ((x[:, None, :] - centers[None, :, :]) ** 2).sum(axis=-1).argmin(axis=1)

"""Clustering an embedding that is already in the AnnData (``tl.cluster``)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from anndata import AnnData

from ..clustering import cluster_matrix
from ..errors import InputError
from ..features import resolve_rep
from ..runs import TaskResult, check_keys_free, store_uns, target_of, task_api
from ..sequences import check_output_key, set_column

log = logging.getLogger("anndata_rnn")


@task_api
def cluster(
    adata: AnnData,
    *,
    use_rep: str = "X_rnn",
    method: str = "kmeans",
    n_clusters: int | None = None,
    resolution: float = 1.0,
    n_neighbors: int = 15,
    groupby: str | None = None,
    seed: int = 0,
    key_added: str = "rnn_cluster",
    overwrite: bool = False,
    copy: bool = False,
):
    """Cluster an embedding: k-means or Leiden; obs (obsm embeddings) or genes (varm).

    Parameters
    ----------
    adata
        AnnData with the embedding in ``obsm`` (clusters observations) or ``varm`` (clusters
        genes, e.g. the var-series output of :func:`embed`).
    use_rep
        Key of the embedding (``"X_rnn"`` and ``"rnn"`` are both accepted).
    method
        ``"kmeans"`` (scikit-learn) or ``"leiden"`` (scanpy neighbour graph + igraph Leiden).
    n_clusters
        k-means only; ``None`` picks k in 2..10 by the best silhouette.
    resolution, n_neighbors
        Leiden only: resolution (higher = more clusters) and neighbours of the kNN graph.
    groupby
        obs column: cluster the mean embedding of each group (e.g. ``"series"`` with
        ``use_rep="X_rnn_series"``) and give every row its group's cluster.
    seed
        Random state of k-means / the graph / Leiden.
    key_added
        obs (or var) column of the clusters (categorical "0", "1", ... by decreasing size) and
        ``uns[key_added]`` with the parameters.
    overwrite, copy
        Replace existing keys; work on a copy and return it.

    Rows with NaN in the embedding (observations outside every sequence) get no cluster.
    """
    check_output_key(key_added)
    target = target_of(adata, copy)
    if use_rep in target.obsm or any(
        c in target.obsm for c in (f"X_{use_rep}", use_rep.removeprefix("X_"))
    ):
        rep = resolve_rep(target, use_rep)
        matrix, frame, where = np.asarray(target.obsm[rep], dtype=np.float64), target.obs, "obs"
    else:
        rep = next(
            (c for c in (use_rep, f"X_{use_rep}", use_rep.removeprefix("X_")) if c in target.varm),
            None,
        )
        if rep is None:
            available = ", ".join([*target.obsm.keys(), *target.varm.keys()]) or "none"
            raise InputError(f"no embedding {use_rep!r} in obsm or varm; available: {available}")
        matrix, frame, where = np.asarray(target.varm[rep], dtype=np.float64), target.var, "var"
    check_keys_free(target, [(where, key_added), ("uns", key_added)], overwrite)
    valid = np.isfinite(matrix).all(axis=1)
    if groupby is not None:
        if where != "obs":
            raise InputError("groupby applies to obsm embeddings (observations), not to genes")
        if groupby not in target.obs.columns:
            raise InputError(f"obs has no column {groupby!r} (groupby)")
        groups = target.obs[groupby].astype(str).to_numpy(dtype=object)
        names = pd.unique(groups[valid])
        pooled = np.stack([matrix[valid & (groups == g)].mean(axis=0) for g in names])
        codes, _ = cluster_matrix(
            pooled,
            method=method,
            n_clusters=n_clusters,
            resolution=resolution,
            n_neighbors=n_neighbors,
            seed=seed,
        )
        lookup = dict(zip(names, codes, strict=True))
        row_codes = np.array(
            [lookup.get(g, -1) if v else -1 for g, v in zip(groups, valid, strict=True)]
        )
    else:
        codes, _ = cluster_matrix(
            matrix[valid],
            method=method,
            n_clusters=n_clusters,
            resolution=resolution,
            n_neighbors=n_neighbors,
            seed=seed,
        )
        row_codes = np.full(len(matrix), -1, dtype=np.int64)
        row_codes[valid] = codes
    k = int(row_codes.max()) + 1
    labels = np.array([str(c) if c >= 0 else None for c in row_codes], dtype=object)
    set_column(frame, key_added, labels, categories=[str(c) for c in range(k)])
    store_uns(
        target,
        key_added,
        {
            "params": {
                "use_rep": rep,
                "where": f"{'obsm' if where == 'obs' else 'varm'}",
                "method": method,
                "n_clusters": k,
                "resolution": resolution if method == "leiden" else None,
                "n_neighbors": n_neighbors if method == "leiden" else None,
                "groupby": groupby,
                "seed": seed,
            }
        },
    )
    log.info("%s: %d clusters written to %s[%r]", method, k, where, key_added)
    return TaskResult(
        target, key_added, target.uns[key_added], copy=copy, written=[f"{where}/{key_added}"]
    )

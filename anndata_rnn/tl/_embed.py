"""Unsupervised sequence embeddings (RNN autoencoder) and clustering, beside PCA + k-means.

What is written where (``key`` = ``key_added``):

``obs-series``
    ``obsm["X_{key}"]``: per-step latent — the encoder's state after each observation, projected
    into the latent space (an observation-level representation for ``sc.pp.neighbors``,
    ``sc.tl.umap``, ``sc.pl.embedding(basis=key)``). ``obsm["X_{key}_series"]``: the latent of
    the whole series, broadcast to each of its observations (the per-series embedding).
    ``obs["{key}_cluster"]``: the cluster of the series (``cluster_level="series"``) or of each
    observation (``"step"``).
``var-series``
    ``varm["X_{key}"]``: one latent per gene (mean over its series); ``var["{key}_cluster"]``.
``profile``
    ``obsm["X_{key}"]``: one latent per observation; ``obs["{key}_cluster"]``.

Every layout also gets ``{key}_split`` (train / val / unused) in obs (var) and ``uns[key]``
with the parameters, the training history and, with clustering, the metrics of the RNN
clusters and of the baseline (PCA with as many components as the latent + k-means with the same
number of clusters, on the same preprocessed inputs), plus a per-cluster label report.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from sklearn import metrics as skm
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from ..errors import InputError
from ..model import Model
from ..networks import build_module
from ..networks.autoencoder import masked_mse
from ..preprocessing import FeatureSource, Preprocessor, resolve_rep
from ..sequences import (
    Labels,
    SequenceIndex,
    broadcast_to_rows,
    check_layout,
    pool_units,
    read_labels,
    scatter_steps,
)
from ..training import fit
from ._common import (
    build_sequences,
    check_keys_free,
    encode_sequences,
    fit_preprocessor,
    make_split,
    sequence_keys,
    set_column,
    split_from_column,
    store_uns,
    target_of,
    training_index,
    training_setup,
    versions,
)

log = logging.getLogger("anndata_rnn")

CLUSTER_METHODS = ("kmeans", "leiden")
CLUSTER_LEVELS = ("auto", "series", "step")
#: k tried when k-means gets no n_clusters and no evaluation label (best silhouette wins)
AUTO_K = range(2, 11)
SILHOUETTE_SAMPLE = 5000


# ---------------------------------------------------------------------------------------------
# clustering (shared by embed and cluster)


def _check_method(method: str) -> str:
    if method not in CLUSTER_METHODS:
        raise InputError(
            f"cluster method must be one of {', '.join(CLUSTER_METHODS)}, got {method!r}"
        )
    return method


def _silhouette(x: np.ndarray, codes: np.ndarray, seed: int) -> float:
    k = len(np.unique(codes))
    if k < 2 or k >= len(codes):
        return float("nan")
    sample = SILHOUETTE_SAMPLE if len(codes) > SILHOUETTE_SAMPLE else None
    return float(skm.silhouette_score(x, codes, sample_size=sample, random_state=seed))


def _by_size(codes: np.ndarray, centers: np.ndarray | None):
    """Renumber clusters by decreasing size (0 = largest), as scanpy's leiden does."""
    values, counts = np.unique(codes, return_counts=True)
    order = values[np.lexsort((values, -counts))]
    lookup = np.zeros(codes.max() + 1, dtype=np.int64)
    lookup[order] = np.arange(len(order))
    if centers is not None:
        centers = centers[order]
    return lookup[codes], centers


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
    _check_method(method)
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n < 2:
        raise InputError(f"only {n} row(s) to cluster: need at least 2")
    if method == "kmeans":
        if n_clusters is not None and not 1 <= n_clusters <= n:
            raise InputError(f"n_clusters must be in 1..{n} (the rows clustered), got {n_clusters}")
        if n_clusters is None:
            best = None
            for k in [k for k in AUTO_K if k < n]:
                fitted = KMeans(k, n_init=10, random_state=seed).fit(x)
                score = _silhouette(x, fitted.labels_, seed)
                if best is None or score > best[0]:
                    best = (score, fitted)
            fitted = best[1]
            log.info(
                "k-means: chose k=%d by the best silhouette (%.3f)", fitted.n_clusters, best[0]
            )
        else:
            fitted = KMeans(n_clusters, n_init=10, random_state=seed).fit(x)
        return _by_size(fitted.labels_, fitted.cluster_centers_)
    if n_clusters is not None:
        raise InputError(
            "n_clusters applies to k-means; Leiden finds the number of clusters itself: set "
            "resolution (higher = more clusters) instead"
        )
    if not resolution > 0:
        raise InputError(f"resolution must be > 0, got {resolution}")
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
    return target if copy else None


# ---------------------------------------------------------------------------------------------
# evaluation


def _cluster_report(codes: np.ndarray, truth: np.ndarray, classes: np.ndarray) -> dict:
    """Per cluster: size, fraction of each label class, enrichment over the overall fraction."""
    labelled = truth >= 0
    k = int(codes.max()) + 1
    sizes = np.bincount(codes, minlength=k)
    counts = np.zeros((k, len(classes)))
    np.add.at(counts, (codes[labelled], truth[labelled]), 1)
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


def _evaluate(x, codes, truth, classes, seed) -> tuple[dict, dict | None]:
    out = {
        "n": int(len(codes)),
        "n_clusters": int(len(np.unique(codes))),
        "silhouette": _silhouette(x, codes, seed),
    }
    report = None
    if truth is not None:
        labelled = truth >= 0
        out["n_labelled"] = int(labelled.sum())
        out["ari"] = float(skm.adjusted_rand_score(truth[labelled], codes[labelled]))
        out["nmi"] = float(skm.normalized_mutual_info_score(truth[labelled], codes[labelled]))
        report = _cluster_report(codes, truth, classes)
        enrichment = report["enrichment"]
        out["max_enrichment"] = (
            float(np.nanmax(enrichment)) if np.isfinite(enrichment).any() else float("nan")
        )
    return out, report


def _pca_baseline(features: np.ndarray, n_components: int, n_clusters: int, seed: int):
    """z-scored features -> PCA (as many components as the latent) -> k-means."""
    scaled = StandardScaler().fit_transform(np.asarray(features, dtype=np.float64))
    n_components = max(1, min(n_components, *scaled.shape))
    pca = PCA(n_components=n_components, random_state=seed)
    scores = pca.fit_transform(scaled)
    codes, _ = cluster_matrix(scores, method="kmeans", n_clusters=n_clusters, seed=seed)
    return scores, codes, n_components, float(pca.explained_variance_ratio_.sum())


# ---------------------------------------------------------------------------------------------
# encoding and running the network


def _encode_with_missing(index, source, prep, sequence_ids):
    """Like ``_common.encode`` plus the fraction of missing values of each sequence."""
    values, lengths, n_missing = encode_sequences(index, source, prep, sequence_ids)
    n_features = 1 if prep.layout == "var-series" else len(prep.features)
    fraction = n_missing / np.maximum(lengths.numpy() * n_features, 1)
    return values, lengths, fraction, int(n_missing.sum())


@torch.no_grad()
def run_autoencoder(module, values, lengths, device, batch_size=512, steps: bool = False):
    """``(sequence latent, per-step latent or None, per-sequence reconstruction MSE)``."""
    module.eval()
    module.to(device)
    latents, step_latents, errors = [], [], []
    for start in range(0, len(values), batch_size):
        x = values[start : start + batch_size].to(device)
        n = lengths[start : start + batch_size]
        per_step, z = module.encode_steps(x, n)
        reconstruction = module.decode(z, x)
        mask = (torch.arange(x.shape[1], device=device)[None, :] < n.to(device)[:, None]).float()
        squared = ((reconstruction - x[..., : reconstruction.shape[-1]]) ** 2).mean(dim=-1)
        errors.append(((squared * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)).cpu().numpy())
        latents.append(z.cpu().numpy())
        if steps:
            step_latents.append(per_step.cpu().numpy())
    return (
        np.concatenate(latents),
        np.concatenate(step_latents) if steps else None,
        np.concatenate(errors),
    )


def _unit_features(index: SequenceIndex, values: np.ndarray) -> np.ndarray:
    """Flattened preprocessed inputs per unit (a gene's sequences over its series concatenated)."""
    order = np.argsort(index.unit, kind="stable")
    counts = np.bincount(index.unit, minlength=index.n_units)
    flat = values.reshape(len(values), -1)[order]
    if (counts == counts[0]).all():
        return flat.reshape(index.n_units, -1)
    return pool_units(index, values.reshape(len(values), -1))  # unequal: mean over sequences


def _step_truth(labels: Labels, index: SequenceIndex, rows, seq) -> np.ndarray:
    """Label codes of clustered observations (a per-series label repeats on its steps)."""
    return labels.codes[rows] if labels.level == "step" else labels.codes[index.unit[seq]]


def _step_rows(index: SequenceIndex, sequence_ids: np.ndarray):
    """obs rows of the real steps of some sequences, and their (sequence, step) positions."""
    steps = index.steps[sequence_ids]
    seq, pos = np.nonzero(steps >= 0)
    return steps[seq, pos], sequence_ids[seq], pos


# ---------------------------------------------------------------------------------------------
# embed


def _resolve_level(layout: str, cluster_level: str, labels: Labels | None) -> str:
    """``"unit"`` (series / gene / observation) or ``"step"`` (obs-series observations)."""
    if cluster_level not in CLUSTER_LEVELS:
        raise InputError(f"cluster_level must be one of {', '.join(CLUSTER_LEVELS)}")
    if layout != "obs-series":
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


def output_targets(layout: str, key: str) -> list[tuple[str, str]]:
    rows, mats = ("var", "varm") if layout == "var-series" else ("obs", "obsm")
    out = [(mats, f"X_{key}")]
    if layout == "obs-series":
        out.append((mats, f"X_{key}_series"))
    return [*out, (rows, f"{key}_cluster"), (rows, f"{key}_split"), ("uns", key)]


def _write_embedding(target, index, latent, step_latent, key) -> list[str]:
    unit_latent = pool_units(index, latent)
    if index.layout == "var-series":
        target.varm[f"X_{key}"] = broadcast_to_rows(index, unit_latent).astype(np.float32)
        return [f"varm/X_{key}"]
    if index.layout == "obs-series":
        target.obsm[f"X_{key}"] = scatter_steps(index, step_latent).astype(np.float32)
        target.obsm[f"X_{key}_series"] = broadcast_to_rows(index, unit_latent).astype(np.float32)
        return [f"obsm/X_{key}", f"obsm/X_{key}_series"]
    target.obsm[f"X_{key}"] = broadcast_to_rows(index, unit_latent).astype(np.float32)
    return [f"obsm/X_{key}"]


def _write_clusters(target, index, level, codes, units_or_rows, n_clusters, key) -> str:
    """Clusters of units (broadcast to rows) or of obs rows (step level) -> a categorical."""
    if level == "unit":
        per_unit = np.full(index.n_units, None, dtype=object)
        per_unit[units_or_rows] = np.array([str(c) for c in codes], dtype=object)
        rows = broadcast_to_rows(index, per_unit)
    else:
        rows = np.full(index.n_obs, None, dtype=object)
        rows[units_or_rows] = np.array([str(c) for c in codes], dtype=object)
    where = "var" if index.layout == "var-series" else "obs"
    frame = target.var if where == "var" else target.obs
    set_column(frame, f"{key}_cluster", rows, categories=[str(c) for c in range(n_clusters)])
    return f"{where}/{key}_cluster"


def embed(
    adata: AnnData,
    *,
    layout: str = "obs-series",
    series_key: str | None = None,
    time_key: str | None = None,
    series_subset: list[str] | None = None,
    order_key: str | None = None,
    chunk_size: int = 32,
    layer: str | None = None,
    use_rep: str | None = None,
    normalize: str = "auto",
    n_top_genes: int | None = None,
    gene_subset: str | None = None,
    scale: str = "feature",
    max_missing: float = 0.5,
    n_latent: int = 16,
    hidden=(64,),
    cell: str = "lstm",
    bidirectional: bool = False,
    dropout: float = 0.0,
    max_epochs: int = 100,
    batch_size: int = 64,
    lr: float = 1e-3,
    patience: int = 10,
    val_fraction: float = 0.1,
    split_key: str | None = None,
    cluster: str | None = None,
    n_clusters: int | None = None,
    resolution: float = 1.0,
    cluster_level: str = "auto",
    eval_label: str | None = None,
    seed: int = 0,
    device: str = "auto",
    key_added: str = "rnn",
    overwrite: bool = False,
    quiet: bool = False,
    copy: bool = False,
):
    """Train an unsupervised RNN autoencoder, write the latent embedding, optionally cluster it.

    The encoder (LSTM/GRU) compresses each standardized sequence into ``n_latent`` numbers; a
    decoder reconstructs the sequence from them (mean squared error on real steps only; padding
    and the time-gap input channel are not reconstructed). The latent is a representation for
    scanpy: ``sc.pp.neighbors(adata, use_rep="X_rnn")``, ``sc.tl.umap``,
    ``sc.pl.embedding(adata, basis="rnn")``.

    Parameters
    ----------
    adata
        The AnnData (not modified when ``copy=True``).
    layout, series_key, time_key, series_subset, order_key, chunk_size, layer, use_rep, \
normalize, n_top_genes, gene_subset
        How sequences are built and which matrix is read, as in
        :func:`anndata_rnn.tl.classify`.
    scale
        ``"feature"``: standardize each feature with training statistics; ``"sequence"``:
        z-score every sequence on its own, so clusters follow the temporal shape only (usual for
        gene expression profiles).
    max_missing
        Units (series, genes, observations) whose sequences miss more than this fraction of
        values (before imputation) are neither trained on nor clustered; they still get an
        embedding from their imputed values.
    n_latent
        Dimension of the latent embedding.
    hidden, cell, bidirectional, dropout
        Encoder layers (the decoder is one layer of the size of the last encoder layer).
    max_epochs, batch_size, lr, patience, val_fraction, split_key
        Adam on the reconstruction error; early stopping on the validation units' loss
        (``val_fraction=0`` trains all ``max_epochs`` on every unit). Units are split, never
        steps of one sequence; every unit is embedded and clustered.
    cluster
        ``"kmeans"``, ``"leiden"`` or ``None`` (no clustering).
    n_clusters, resolution
        k-means: number of clusters (default: the number of classes of ``eval_label``, else
        the k in 2..10 with the best silhouette). Leiden: resolution.
    cluster_level
        obs-series only: ``"series"`` clusters whole series, ``"step"`` clusters observations
        (per-step embeddings); ``"auto"`` = series, or step when ``eval_label`` varies within
        series.
    eval_label
        obs/var column with known groups: ARI and NMI of the clusters against it, silhouette,
        and a per-cluster report (fraction of each class, enrichment over the overall fraction),
        for the RNN and for the baseline (PCA with ``n_latent`` components of the z-scored
        preprocessed inputs + k-means with the same number of clusters).
    seed, device, key_added, overwrite, quiet, copy
        As in :func:`anndata_rnn.tl.classify`.

    Returns
    -------
    The fitted :class:`~anndata_rnn.Model` (apply it to new data with
    :func:`anndata_rnn.tl.predict`); with ``copy=True`` a tuple ``(model, adata_copy)``.
    Writes ``X_{key}`` to obsm (varm for var-series; obs-series also ``X_{key}_series``),
    ``{key}_cluster`` and ``{key}_split`` to obs (var), and ``uns[key]`` with ``metrics``
    (``rnn``, ``baseline``), ``cluster_report`` (with ``eval_label``) and ``history``.
    """
    target = target_of(adata, copy)
    key = key_added
    check_layout(layout)
    if cluster is not None:
        _check_method(cluster)
    if cluster == "leiden" and n_clusters is not None:
        raise InputError(
            "n_clusters applies to k-means; Leiden finds the number of clusters itself: set "
            "resolution (higher = more clusters) instead"
        )
    if not resolution > 0:
        raise InputError(f"resolution must be > 0, got {resolution}")
    if n_latent < 1:
        raise InputError(f"n_latent must be >= 1, got {n_latent}")
    if not 0 <= max_missing <= 1:
        raise InputError(f"max_missing must be in [0, 1], got {max_missing}")
    if eval_label is not None and cluster is None:
        cluster = "kmeans"
    arch, train_config, torch_device = training_setup(
        hidden=hidden,
        cell=cell,
        dropout=dropout,
        bidirectional=bidirectional,
        max_epochs=max_epochs,
        batch_size=batch_size,
        lr=lr,
        patience=patience,
        seed=seed,
        device=device,
    )
    keys = sequence_keys(
        layout=layout,
        series_key=series_key,
        time_key=time_key,
        series_subset=series_subset,
        order_key=order_key,
        chunk_size=chunk_size,
        layer=layer,
        use_rep=use_rep,
        key_added=key,
        eval_label=eval_label,
    )
    source = FeatureSource(target, layer=layer, use_rep=use_rep)
    index = training_index(target, keys, gene_subset)
    labels = None
    if eval_label is not None:
        labels = read_labels(target, index, eval_label, max_missing_fraction=1.0)
        for note in labels.notes:
            log.info(note)
    level = _resolve_level(layout, cluster_level, labels)
    check_keys_free(target, output_targets(layout, key), overwrite)

    if split_key is not None:
        split = split_from_column(target, index, split_key)
        if (split == "test").any():
            log.info("embed uses no test split: units marked test are embedded, not trained on")
            split = np.where(split == "test", "unused", split)
    else:
        split = make_split(
            index.n_units,
            usable=np.ones(index.n_units, dtype=bool),
            strata=None,
            val_fraction=val_fraction,
            test_fraction=0.0,
            seed=seed,
        )
    prep = Preprocessor(
        layout=layout, scale=scale, use_time=time_key is not None and layout != "profile"
    )
    fit_preprocessor(
        prep,
        target,
        source,
        index,
        index.sequences_of_units(np.flatnonzero(split == "train")),
        normalize=normalize,
        n_top_genes=n_top_genes,
        gene_subset=gene_subset,
        order_key=order_key,
    )
    if layout == "profile":
        index = build_sequences(target, keys, n_features=len(prep.features))

    all_ids = np.arange(index.n_sequences)
    values, lengths, missing, imputed = _encode_with_missing(index, source, prep, all_ids)
    if imputed:
        log.info(
            "imputed %d missing values (interpolation along time, then training mean)", imputed
        )
    unit_missing = pool_units(index, missing)
    usable = unit_missing <= max_missing
    if not usable.all():
        log.info(
            "%d of %d units miss more than %.0f%% of their values: embedded but not trained on "
            "or clustered (max_missing)",
            int((~usable).sum()),
            index.n_units,
            100 * max_missing,
        )
    split = np.where(usable, split, "unused")
    ids = {
        name: index.sequences_of_units(np.flatnonzero(split == name)) for name in ("train", "val")
    }
    if len(ids["train"]) == 0:
        raise InputError(
            "no training sequences left (all units miss too many values or are not in the "
            "training split): raise max_missing or check the split"
        )
    n_outputs = int(values.shape[-1]) - int(prep.use_time)
    arch = {
        **arch,
        "n_latent": int(n_latent),
        "n_outputs": n_outputs,
        "time_channel": prep.use_time,
    }
    config = {
        "task": "embed",
        "layout": layout,
        "keys": keys,
        "architecture": arch,
        "n_inputs": int(values.shape[-1]),
        "train": {
            **train_config.to_dict(),
            "val_fraction": val_fraction,
            "split_key": split_key,
        },
        "max_missing": float(max_missing),
        "seed": seed,
    }
    module = build_module("embed", config["n_inputs"], config)

    def loss_fn(net, batch):
        x, n = batch
        reconstruction, _ = net(x, n)
        return masked_mse(reconstruction, x, n)

    log.info(
        "embed: %d train, %d val sequences, %d features, latent %d",
        len(ids["train"]),
        len(ids["val"]),
        n_outputs,
        n_latent,
    )
    history = fit(
        module,
        loss_fn,
        (values[ids["train"]], lengths[ids["train"]]),
        (values[ids["val"]], lengths[ids["val"]]) if len(ids["val"]) else None,
        train_config,
        device=torch_device,
        seed=seed,
        quiet=quiet,
        description=f"embed ({layout})",
    )
    latent, step_latent, errors = run_autoencoder(
        module, values, lengths, torch_device, steps=layout == "obs-series"
    )
    written = _write_embedding(target, index, latent, step_latent, key)
    split_rows = broadcast_to_rows(index, np.asarray(split, dtype=object))
    frame = target.var if layout == "var-series" else target.obs
    set_column(frame, f"{key}_split", split_rows, categories=["train", "val", "unused"])
    written.append(f"{'var' if layout == 'var-series' else 'obs'}/{key}_split")

    metrics: dict = {}
    reports: dict = {}
    arrays: dict = {}
    usable_ids = index.sequences_of_units(np.flatnonzero(usable))
    metrics["rnn"] = {"reconstruction_mse": float(errors[usable_ids].mean())}
    cluster_info = None
    if cluster is not None:
        if level == "unit":
            members = np.flatnonzero(usable)
            rnn_x = pool_units(index, latent)[members]
            base_x = _unit_features(index, values.numpy())[members]
            truth = None if labels is None else labels.codes[members]
        else:
            rows, seq, pos = _step_rows(index, usable_ids)
            members = rows
            rnn_x = step_latent[seq, pos]
            base_x = values.numpy()[seq, pos]
            truth = None if labels is None else _step_truth(labels, index, rows, seq)
        k = n_clusters
        if k is None and cluster == "kmeans" and labels is not None:
            k = len(labels.classes)
        codes, centers = cluster_matrix(
            rnn_x, method=cluster, n_clusters=k, resolution=resolution, seed=seed
        )
        n_found = int(codes.max()) + 1
        written.append(_write_clusters(target, index, level, codes, members, n_found, key))
        classes = None if labels is None else labels.classes
        scores, base_codes, n_components, explained = _pca_baseline(base_x, n_latent, n_found, seed)
        rnn_metrics, rnn_report = _evaluate(rnn_x, codes, truth, classes, seed)
        base_metrics, base_report = _evaluate(scores, base_codes, truth, classes, seed)
        metrics["rnn"].update(rnn_metrics)
        metrics["baseline"] = {
            **base_metrics,
            "explained_variance": explained,
            "model": f"PCA ({n_components} components of the z-scored inputs) + k-means (sklearn)",
        }
        if rnn_report is not None:
            reports = {"rnn": rnn_report, "baseline": base_report}
        cluster_info = {
            "method": cluster,
            "level": "series" if (level == "unit" and layout == "obs-series") else level,
            "n_clusters": n_found,
            "resolution": float(resolution),
        }
        if centers is not None:
            arrays["cluster_centers"] = centers.astype(np.float64)
        log.info(
            "%s: %d clusters of %d %s", cluster, n_found, len(codes), _level_name(layout, level)
        )
    config["cluster"] = cluster_info or {}
    config["metrics"] = {
        name: {m: v for m, v in values_.items() if np.ndim(v) == 0 and not isinstance(v, str)}
        for name, values_ in metrics.items()
    }
    config["versions"] = versions()
    config["device"] = str(torch_device)
    store_uns(
        target,
        key,
        {
            "task": "embed",
            "layout": layout,
            "eval_label": eval_label,
            "cluster": cluster_info,
            "params": {
                **{k_: v for k_, v in keys.items() if v is not None},
                **{k_: v for k_, v in arch.items() if k_ != "time_channel"},
                **config["train"],
                "normalize": normalize,
                "n_top_genes": n_top_genes,
                "gene_subset": gene_subset,
                "scale": scale,
                "max_missing": max_missing,
                "cluster": cluster,
                "n_clusters": n_clusters,
                "resolution": resolution,
                "cluster_level": cluster_level,
            },
            "preprocessing": {
                "normalized": prep.normalize,
                "n_features": len(prep.features),
                "n_imputed": imputed,
                "n_units_excluded": int((~usable).sum()),
            },
            "metrics": metrics,
            "cluster_report": reports,
            "history": {
                k_: np.asarray(v) if isinstance(v, list) else v for k_, v in history.items()
            },
            "written": written,
            "seed": seed,
            "device": str(torch_device),
            "versions": config["versions"],
            "notes": index.notes + (labels.notes if labels is not None else []),
        },
    )
    model = Model(config, prep, module.cpu(), arrays=arrays)
    return (model, target) if copy else model


def _level_name(layout: str, level: str) -> str:
    if level == "step":
        return "observations"
    return {"obs-series": "series", "var-series": "genes", "profile": "observations"}[layout]


def apply_embedding(
    target: AnnData,
    model: Model,
    *,
    key: str,
    source: FeatureSource,
    index: SequenceIndex,
    device,
    batch_size: int,
) -> dict:
    """Embed new data with a saved autoencoder; k-means models also assign clusters.

    Each unit (or observation, for step-level clusters) goes to the nearest training k-means
    centre; units missing more than the model's ``max_missing`` get no cluster. With the
    training ``eval_label`` present in the data, ARI and NMI are reported.
    """
    all_ids = np.arange(index.n_sequences)
    values, lengths, missing, imputed = _encode_with_missing(
        index, source, model.preprocessor, all_ids
    )
    latent, step_latent, errors = run_autoencoder(
        model.module, values, lengths, device, batch_size, steps=model.layout == "obs-series"
    )
    written = _write_embedding(target, index, latent, step_latent, key)
    usable = pool_units(index, missing) <= float(model.config.get("max_missing", 1.0))
    usable_ids = index.sequences_of_units(np.flatnonzero(usable))
    out = {
        "written": written,
        "n_imputed": imputed,
        "metrics": {"rnn": {"reconstruction_mse": float(errors[usable_ids].mean())}},
    }
    info = model.config.get("cluster") or {}
    centers = model.arrays.get("cluster_centers")
    if info.get("method") != "kmeans" or centers is None:
        return out
    level = "step" if info.get("level") == "step" else "unit"
    seq = None
    if level == "unit":
        members = np.flatnonzero(usable)
        x = pool_units(index, latent)[members]
    else:
        members, seq, pos = _step_rows(index, usable_ids)
        x = step_latent[seq, pos]
    distances = ((x[:, None, :] - centers[None, :, :]) ** 2).sum(axis=-1)
    codes = distances.argmin(axis=1)
    written.append(_write_clusters(target, index, level, codes, members, len(centers), key))
    label_key = model.config["keys"].get("eval_label")
    frame = target.var if model.layout == "var-series" else target.obs
    if label_key and label_key in frame.columns and len(codes):
        try:
            labels = read_labels(target, index, label_key, max_missing_fraction=1.0)
        except InputError:
            return out
        if level == "unit" and labels.level == "step":
            return out
        truth = (
            labels.codes[members] if level == "unit" else _step_truth(labels, index, members, seq)
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rnn_metrics, report = _evaluate(x, codes, truth, labels.classes, 0)
        out["metrics"]["rnn"].update(rnn_metrics)
        out["cluster_report"] = {"rnn": report}
    return out

"""Unsupervised sequence embeddings (RNN autoencoder) and clustering, beside PCA + k-means
(what is written where: :func:`embed`)."""

from __future__ import annotations

import logging

import torch
from anndata import AnnData

from ..clustering import (
    check_count,
    check_settings,
    resolve_level,
)
from ..embedding import (
    cluster_embedding,
    embed_config,
    eval_labels,
    fit_embedding,
    output_targets,
    write_embedding,
)
from ..errors import InputError
from ..networks import architecture
from ..options import DEFAULTS, DOCS, doc_params
from ..preprocessing import Preprocessor
from ..runs import check_keys_free, start_training, task_api
from ..sequences import (
    Layout,
    SequenceSpec,
    pool_units,
)
from ..streaming import should_stream
from ..training import TrainConfig

log = logging.getLogger("anndata_rnn")

#: the defaults of embed (:mod:`anndata_rnn.options`: the command line has the same)
DEFAULT = DEFAULTS["embed"]


@task_api
@doc_params(**DOCS)
def embed(
    adata: AnnData,
    *,
    layout: str = DEFAULT.layout,
    series_key: str | None = DEFAULT.series_key,
    time_key: str | None = DEFAULT.time_key,
    series_subset: list[str] | None = DEFAULT.series_subset,
    order_key: str | None = DEFAULT.order_key,
    chunk_size: int = DEFAULT.chunk_size,
    layer: str | None = DEFAULT.layer,
    use_rep: str | None = DEFAULT.use_rep,
    normalize: str = DEFAULT.normalize,
    n_top_genes: int | str | None = DEFAULT.n_top_genes,
    gene_subset: str | None = DEFAULT.gene_subset,
    scale: str = DEFAULT.scale,
    max_missing: float = DEFAULT.max_missing,
    n_latent: int = DEFAULT.n_latent,
    linear_path: bool = DEFAULT.linear_path,
    hidden=DEFAULT.hidden,
    cell: str = DEFAULT.cell,
    bidirectional: bool = DEFAULT.bidirectional,
    dropout: float = DEFAULT.dropout,
    max_epochs: int = DEFAULT.max_epochs,
    batch_size: int = DEFAULT.batch_size,
    lr: float = DEFAULT.lr,
    patience: int = DEFAULT.patience,
    val_fraction: float = DEFAULT.val_fraction,
    test_fraction: float = DEFAULT.test_fraction,
    split_key: str | None = DEFAULT.split_key,
    cluster: str | None = DEFAULT.cluster,
    n_clusters: int | None = DEFAULT.n_clusters,
    resolution: float = DEFAULT.resolution,
    cluster_level: str = DEFAULT.cluster_level,
    eval_label: str | None = DEFAULT.eval_label,
    stream: bool | str = DEFAULT.stream,
    chunk_rows: int = DEFAULT.chunk_rows,
    seed: int = DEFAULT.seed,
    device: str = DEFAULT.device,
    amp: bool = DEFAULT.amp,
    key_added: str = DEFAULT.key_added,
    overwrite: bool = DEFAULT.overwrite,
    quiet: bool = DEFAULT.quiet,
    copy: bool = DEFAULT.copy,
):
    """Train an unsupervised RNN autoencoder, write the latent embedding, optionally cluster it.

    The encoder (LSTM/GRU) compresses each standardized sequence into ``n_latent`` numbers; a
    decoder reconstructs the sequence from them (mean squared error on real steps only; padding
    and the time-gap input channel are not reconstructed). The latent is a representation for
    scanpy: ``sc.pp.neighbors(adata, use_rep="X_rnn")``, ``sc.tl.umap``,
    ``sc.pl.embedding(adata, basis="rnn")``.

    The autoencoder starts at PCA: a linear path (latent = W·x, reconstruction = Wᵀ·z + mean of
    the flattened sequence ``x``) at the loadings ``W`` of a PCA with ``n_latent`` components of
    the training units, the recurrent encoder and decoder on top starting at zero, so that step
    0 reconstructs as PCA. The start is kept unless training beats it on the validation units.
    Beside the model, ``metrics`` hold the linear path alone trained the same way from the same
    start (``linear_path``) and the PCA (``pca``), scored on the same held-out test units.

    Parameters
    ----------
    adata
        The AnnData (not modified when ``copy=True``).
    {doc_sequences}
    {doc_profile}
    {doc_reading}
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
    linear_path
        Start at PCA (default); ``False``: the recurrent autoencoder alone, from a random start
        (the linear path alone and PCA are still reported). The flattened sequence: all its
        steps' features, zero-padded to the longest (profile: a cell's genes; var-series: a
        gene's values in one series; obs-series: a series' genes × time points).
    hidden, cell, bidirectional, dropout
        Encoder layers (the decoder is one layer of the size of the last encoder layer).
    max_epochs, batch_size, lr, patience, val_fraction, test_fraction, split_key
        Adam on the reconstruction error; early stopping on the validation units' loss
        (``val_fraction=0`` trains all ``max_epochs`` on every unit). The test units are never
        trained on, nor used to stop or to choose the start: the reconstruction errors of
        ``metrics`` are theirs (without test units: the validation units', else the training
        units'; ``uns[key]["reconstruction"]`` says which). Units are split, never steps of one
        sequence; every unit is embedded and clustered.
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
    stream, chunk_rows
        Large profile data, as in :func:`anndata_rnn.tl.classify`; the PCA + k-means baseline
        is then fitted on a seeded random 20,000 cells and applied to every cell.
    {doc_run}

    Returns
    -------
    The fitted :class:`~anndata_rnn.Model` (apply it to new data with
    :func:`anndata_rnn.tl.predict`); with ``copy=True`` a tuple ``(model, adata_copy)``.
    Writes (``key`` = ``key_added``): obs-series: ``obsm["X_{key}"]``, the per-step latent (the
    encoder's state after each observation, for ``sc.pp.neighbors`` / ``sc.pl.embedding``) and
    ``obsm["X_{key}_series"]``, the latent of the whole series on each of its observations;
    var-series: ``varm["X_{key}"]``, one latent per gene (mean over its series); profile:
    ``obsm["X_{key}"]``. ``{key}_cluster`` (of series, observations or genes) and
    ``{key}_split`` (train / val / test / unused) go to obs (var); ``uns[key]`` holds ``metrics``
    (``rnn``, ``linear_path`` and ``pca``: ``reconstruction_mse`` on the held-out units and
    ``train_reconstruction_mse``; with clustering also ``baseline``, PCA + k-means),
    ``reconstruction`` (the units scored and the warm start: which weights were kept and the
    validation loss start → best, per model), ``cluster_report`` (with ``eval_label``), params
    and ``history``.
    """
    check_settings(cluster, n_clusters, resolution)
    if n_latent < 1:
        raise InputError(f"n_latent must be >= 1, got {n_latent}")
    if not 0 <= max_missing <= 1:
        raise InputError(f"max_missing must be in [0, 1], got {max_missing}")
    if eval_label is not None and cluster is None:
        cluster = "kmeans"
    spec = SequenceSpec(
        layout,
        series_key,
        time_key,
        series_subset,
        order_key,
        chunk_size,
        layer,
        use_rep,
        key_added,
        extra=(("eval_label", eval_label),),
    )
    run = start_training(
        adata,
        spec,
        architecture=architecture(hidden, cell, dropout, bidirectional),
        train_config=TrainConfig(max_epochs, batch_size, lr, patience, amp=amp),
        seed=seed,
        device=device,
        copy=copy,
        gene_subset=gene_subset,
    )
    target, key = run.target, run.key
    labels = eval_labels(target, run.index, eval_label)
    level = resolve_level(layout, cluster_level, labels)
    check_keys_free(target, output_targets(layout, key), overwrite)
    check_count(cluster, n_clusters, run.index.n_units if level == "unit" else run.index.n_obs)
    split = run.choose_split(
        split_key=split_key, val_fraction=val_fraction, test_fraction=test_fraction
    )
    prep = Preprocessor(
        layout=layout,
        scale=scale,
        use_time=time_key is not None and Layout.of(layout).is_time_series,
    )
    streamed = should_stream(run.index, len(run.source.feature_names), stream)
    enc = run.prepare(
        split,
        prep,
        normalize=normalize,
        n_top_genes=n_top_genes,
        gene_subset=gene_subset,
        order_key=order_key,
        stream=streamed,
        chunk_rows=chunk_rows,
    )
    index = run.index
    values = enc.count_missing() if streamed else torch.from_numpy(enc.values)
    lengths = torch.from_numpy(enc.lengths)
    usable = pool_units(index, enc.missing_fraction(prep)) <= max_missing
    run.exclude_units(
        usable, f"miss more than {100 * max_missing:.0f}% of their values (max_missing)"
    )
    ids = run.ids
    config = embed_config(
        run, spec, values, prep, n_latent, linear_path, max_missing,
        val_fraction, test_fraction, split_key, seed,
    )  # fmt: skip
    # PCA of the flattened sequences (training units) is the baseline and the start
    fitted = fit_embedding(
        config, values, lengths, ids, run.train_config, device=run.device, seed=seed,
        quiet=quiet, steps=Layout.of(layout).steps_are_observations,
    )  # fmt: skip
    module, history, latent, step_latent = fitted.module, fitted.history, *fitted.latents
    written = [*write_embedding(target, index, latent, step_latent, key), run.write_split()]
    metrics, notes, scored_on = fitted.metrics, fitted.notes, fitted.record["scored_on"]
    reports, arrays, cluster_info = {}, {}, None
    if cluster is not None:
        clusters = cluster_embedding(
            target, index, level, usable, fitted, labels, enc.values, cluster, n_clusters,
            resolution, n_latent, seed, key,
        )  # fmt: skip
        written.append(clusters.written)
        metrics["rnn"].update(clusters.rnn_metrics)
        metrics["baseline"], reports = clusters.baseline_metrics, clusters.reports
        cluster_info, arrays = clusters.info, clusters.arrays
    config["cluster"] = cluster_info or {}
    return run.finish(
        config,
        module,
        head={"eval_label": eval_label, "cluster": cluster_info},
        params={
            "normalize": normalize,
            "n_top_genes": n_top_genes,
            "gene_subset": gene_subset,
            "scale": scale,
            "max_missing": max_missing,
            "cluster": cluster,
            "n_clusters": n_clusters,
            "resolution": resolution,
            "cluster_level": cluster_level,
            "linear_path": linear_path,
            **run.stream_params(stream, chunk_rows, run.train_config.batch_size),
        },
        preprocessing=run.preprocessing_record(enc.imputed, n_units_excluded=int((~usable).sum())),
        metrics=metrics,
        written=written,
        history=history,
        tail={"reconstruction": fitted.record, "cluster_report": reports},
        text_in_config=False,
        cautions=["the autoencoder did not learn: raise --epochs"] * bool(history["failed_fit"])
        + [f"no test units: the reconstruction errors are those of the {scored_on} units"]
        * (scored_on != "test"),
        notes=(labels.notes if labels is not None else []) + notes,
        arrays=arrays,
        title=f"{scored_on} units (reconstruction)" + (" and clustered units" * bool(cluster)),
    )

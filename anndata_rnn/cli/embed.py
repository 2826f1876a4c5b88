"""``anndata-rnn embed``."""

from __future__ import annotations

import click

from ._common import (
    amp_option,
    common_options,
    device_options,
    report_option,
    train_and_write,
)
from ._training_options import (
    reads_lazily,
    sequence_kwargs,
    sequence_options,
    stream_kwargs,
    stream_options,
    training_options,
)


def embed_network_options(func):
    """Autoencoder architecture and optimisation (embedding defaults: one 64-unit layer)."""
    func = training_options(
        hidden="64",
        dropout=0.0,
        val_fraction=0.1,
        val_help="Units held out for early stopping (0: train all epochs on every unit).",
        test_fraction=0.1,
        test_help="Units never trained on: the reconstruction errors of the model, the linear "
        "path alone and PCA are theirs.",
        layers_help="Sizes of the stacked encoder layers, comma separated.",
        supervised=False,
    )(func)
    func = click.option(
        "--linear-path/--no-linear-path",
        default=True,
        show_default=True,
        help="Start at PCA: a linear encoder/decoder initialized at the PCA loadings, the "
        "recurrent part added on top from zero; the start is kept unless training beats it on "
        "the validation units. The linear path alone and PCA are always reported beside it.",
    )(func)
    return click.option(
        "--n-latent",
        type=click.IntRange(1, 1_024),
        default=16,
        show_default=True,
        help="Dimension of the latent embedding.",
    )(func)


@click.command(
    epilog="""Examples (cluster yeast genes by the shape of their cdc15 time course; compare the
clusters with Spellman's cell-cycle genes; embed the cells of simulated trajectories):

\b
  anndata-rnn embed spellman.h5ad --layout var-series --series-key series \\
      --time-key time --series-subset cdc15 --scale sequence --cluster kmeans \\
      --n-clusters 8 --eval-label cell_cycle_800 --output embedded.h5ad --model-out model.h5
  anndata-rnn embed krumsiek.h5ad --series-key series --time-key time \\
      --output embedded.h5ad --model-out model.h5
"""
)
@click.argument("input", type=click.Path(dir_okay=False))
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="Output .h5ad.")
@sequence_options
@embed_network_options
@click.option(
    "--scale",
    type=click.Choice(["feature", "sequence"]),
    default="feature",
    show_default=True,
    help="feature: standardize with training statistics; sequence: z-score each sequence "
    "(cluster by temporal shape only).",
)
@click.option(
    "--max-missing",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Units missing more than this fraction of values are not trained on or clustered.",
)
@click.option(
    "--cluster",
    type=click.Choice(["none", "kmeans", "leiden"]),
    default="none",
    show_default=True,
    help="Cluster the embedding (--eval-label implies kmeans).",
)
@click.option(
    "--n-clusters",
    type=click.IntRange(1, 10_000),
    help="k-means: number of clusters (default: classes of --eval-label, else best silhouette "
    "in 2..10).",
)
@click.option(
    "--resolution",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Leiden resolution (higher = more clusters).",
)
@click.option(
    "--cluster-level",
    type=click.Choice(["auto", "series", "step"]),
    default="auto",
    show_default=True,
    help="obs-series: cluster whole series or observations (auto: series, or observations "
    "when --eval-label varies within series).",
)
@click.option(
    "--eval-label",
    help="Column (obs or var) with known groups: ARI, NMI, silhouette and per-cluster "
    "enrichment, RNN vs PCA + k-means.",
)
@stream_options
@device_options
@amp_option
@report_option
@common_options
def embed(
    input,
    output,
    model_out,
    metrics_table,
    n_latent,
    hidden,
    cell,
    bidirectional,
    dropout,
    epochs,
    batch_size,
    lr,
    patience,
    val_fraction,
    test_fraction,
    split_key,
    linear_path,
    scale,
    max_missing,
    cluster,
    n_clusters,
    resolution,
    cluster_level,
    eval_label,
    seed,
    device,
    amp,
    overwrite,
    quiet,
    **kw,
):
    """Train an LSTM/GRU autoencoder, write the latent embedding, optionally cluster it.

    Results go to obsm (varm for --layout var-series): X_{key} (obs-series: per observation;
    also X_{key}_series, the latent of each observation's series); obs (var): {key}_cluster,
    {key}_split; uns[{key}]: parameters, training history, the reconstruction error on the
    test units of the model (started at PCA), the linear path alone and PCA with as many
    components, and, with clustering, the metrics of the RNN clusters and of PCA + k-means on
    the same inputs. Use the embedding in scanpy:
    sc.pp.neighbors(adata, use_rep="X_rnn"); sc.tl.umap(adata).
    """
    from .. import tl

    train_and_write(
        input,
        output,
        model_out,
        metrics_table,
        lambda adata: tl.embed.run(
            adata,
            scale=scale,
            max_missing=max_missing,
            n_latent=n_latent,
            hidden=hidden,
            cell=cell,
            bidirectional=bidirectional,
            dropout=dropout,
            max_epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            patience=patience,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            split_key=split_key,
            linear_path=linear_path,
            cluster=None if cluster == "none" else cluster,
            n_clusters=n_clusters,
            resolution=resolution,
            cluster_level=cluster_level,
            eval_label=eval_label,
            seed=seed,
            device=device,
            amp=amp,
            overwrite=overwrite,
            quiet=quiet,
            **sequence_kwargs(kw),
            **stream_kwargs(kw),
        ),
        # profile data can be far larger than memory: X stays in the file
        lazy=reads_lazily(kw),
    )

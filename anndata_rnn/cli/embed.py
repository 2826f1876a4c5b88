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
    TASK_GROUPS,
    api_kwargs,
    model_file_options,
    reads_lazily,
    table_options,
)


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
@table_options("embed", *TASK_GROUPS)
@model_file_options
@device_options
@amp_option
@report_option
@common_options
def embed(input, output, model_out, metrics_table, **kw):
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
        lambda adata: tl.embed.run(adata, **api_kwargs("embed", kw)),
        # profile data can be far larger than memory: X stays in the file
        lazy=reads_lazily(kw),
    )

"""``anndata-rnn classify``."""

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
    epilog="""Example (yeast genes' expression over the cdc15 time course; is the gene cell-cycle
regulated?):

\b
  anndata-rnn classify spellman.h5ad --layout var-series --series-key series \\
      --time-key time --series-subset cdc15 --label cell_cycle_800 \\
      --output classified.h5ad --model-out model.h5
"""
)
@click.argument("input", type=click.Path(dir_okay=False))
@click.option("--label", "label_key", required=True, help="Column (obs or var) with the classes.")
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="Output .h5ad.")
@table_options("classify", *TASK_GROUPS)
@model_file_options
@device_options
@amp_option
@report_option
@common_options
def classify(input, output, model_out, metrics_table, label_key, **kw):
    """Train an LSTM/GRU classifier and write labels, probabilities and embeddings.

    Results go to obs (var for --layout var-series): {key}_pred, {key}_conf, {key}_split;
    obsm (varm): {key}_proba, X_{key}; uns[{key}]: parameters, classes, metrics of the RNN and
    of a logistic-regression baseline on the same split, training history.
    """
    from .. import tl

    train_and_write(
        input,
        output,
        model_out,
        metrics_table,
        lambda adata: tl.classify.run(adata, label_key=label_key, **api_kwargs("classify", kw)),
        # profile data can be far larger than memory: X stays in the file
        lazy=reads_lazily(kw),
    )

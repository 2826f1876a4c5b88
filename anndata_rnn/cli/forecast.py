"""``anndata-rnn forecast``."""

from __future__ import annotations

import click

from ..errors import InputError
from ..sequences import Layout
from ._common import (
    amp_option,
    common_options,
    device_options,
    report_option,
    train_and_write,
)
from ._training_options import TASK_GROUPS, api_kwargs, model_file_options, table_options


@click.command(
    epilog="""Examples (yeast cdc15 time course: forecast each gene's last 4 time points from
its first 20, on 30 % held-out genes; then series of cells or samples over time):

\b
  anndata-rnn forecast spellman.h5ad --layout var-series --series-key series \\
      --time-key time --series-subset cdc15 --holdout-steps 4 --test-fraction 0.3 \\
      --output forecast.h5ad --model-out forecaster.h5
\b
  anndata-rnn forecast timecourse.h5ad --series-key subject --time-key hours \\
      --horizon 3 --output forecast.h5ad --model-out forecaster.h5
"""
)
@click.argument("input", type=click.Path(dir_okay=False))
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="Output .h5ad.")
@table_options("forecast", *TASK_GROUPS)
@model_file_options
@device_options
@amp_option
@report_option
@common_options
def forecast(input, output, model_out, metrics_table, **kw):
    """Train an LSTM/GRU forecaster of time-course expression, beside persistence and a
    linear autoregression.

    Each sequence is trained one step ahead with teacher forcing; time gaps are an input, so
    irregular sampling is handled. Results: layers[{key}_forecast] (every value predicted from
    the steps before it; obsm with --use-rep); var-series with --holdout-steps:
    varm[{key}_forecast] (rollout of each gene's last K time points); obsm/varm X_{key};
    obs/var {key}_split; uns[{key}]: metrics (MSE, MAE, R², mean per-gene Pearson r) of the
    RNN, persistence and the linear AR on the same held-out data, future forecasts, history.
    """
    from .. import tl

    if Layout.of(kw["layout"]).steps_are_gene_chunks:
        raise InputError("--layout profile is not a time course: use obs-series or var-series")
    train_and_write(
        input,
        output,
        model_out,
        metrics_table,
        lambda adata: tl.forecast.run(adata, **api_kwargs("forecast", kw)),
    )

"""``anndata-rnn forecast``."""

from __future__ import annotations

import click

from ..errors import InputError
from ._common import (
    amp_option,
    common_options,
    device_options,
    report_option,
    train_and_write,
)
from ._training_options import (
    forecast_network_options,
    network_kwargs,
    sequence_kwargs,
    sequence_options,
)


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
@sequence_options
@forecast_network_options
@click.option(
    "--horizon",
    type=click.IntRange(0, 1_000),
    default=None,
    help="Steps to forecast beyond the end of every series (rollout) into uns[KEY]['future']. "
    "Default 1, or the number of --future-times.",
)
@click.option(
    "--future-times",
    help="Time points of those future steps, comma separated (after every series' end). "
    "Default: each series' last time plus multiples of its median time gap.",
)
@click.option(
    "--holdout-steps",
    type=click.IntRange(0, 1_000),
    default=0,
    show_default=True,
    help="Forecast the last K steps by rollout and score them (of the test units; of all units "
    "with --test-fraction 0). 0: score one-step-ahead forecasts of the test units.",
)
@click.option(
    "--loss",
    type=click.Choice(["mse", "huber"]),
    default="mse",
    show_default=True,
    help="Training loss on standardized values (huber is robust to outliers).",
)
@click.option(
    "--ar-lags",
    type=click.IntRange(1, 100),
    default=3,
    show_default=True,
    help="Steps seen by the linear autoregression baseline.",
)
@click.option(
    "--no-residual",
    is_flag=True,
    help="Predict the next value directly instead of the change from the current one.",
)
@device_options
@amp_option
@report_option
@common_options
def forecast(
    input,
    output,
    model_out,
    metrics_table,
    horizon,
    future_times,
    holdout_steps,
    loss,
    ar_lags,
    no_residual,
    seed,
    device,
    amp,
    overwrite,
    quiet,
    **kw,
):
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

    if kw["layout"] == "profile":
        raise InputError("--layout profile is not a time course: use obs-series or var-series")
    if kw["order_key"] is not None:
        raise InputError(
            "--order-key applies to --layout profile only, which forecast does not use"
        )
    arguments = sequence_kwargs(kw)
    del arguments["order_key"], arguments["chunk_size"]
    train_and_write(
        input,
        output,
        model_out,
        metrics_table,
        lambda adata: tl.forecast.run(
            adata,
            horizon=horizon,
            future_times=future_times,
            holdout_steps=holdout_steps,
            loss=loss,
            ar_lags=ar_lags,
            residual=not no_residual,
            seed=seed,
            device=device,
            amp=amp,
            overwrite=overwrite,
            quiet=quiet,
            **arguments,
            **network_kwargs(kw),
        ),
    )

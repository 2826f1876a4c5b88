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
    network_kwargs,
    network_options,
    reads_lazily,
    sequence_kwargs,
    sequence_options,
    stream_kwargs,
    stream_options,
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
@sequence_options
@network_options
@click.option("--class-weights", is_flag=True, help="Balanced class weights (imbalanced labels).")
@click.option(
    "--cv",
    type=click.IntRange(2, 100),
    help="K-fold cross-validation by unit: per-fold metrics, mean ± sd and the paired "
    "difference RNN − baseline with a 95% interval; out-of-fold predictions are written, and {key}_fold says which fold tested each unit.",
)
@click.option(
    "--group-key",
    help="Column (obs or var) naming each unit's group (donor, sample, batch): the units of one "
    "group go to one part of the split and are tested in one --cv fold.",
)
@click.option(
    "--scale",
    type=click.Choice(["auto", "feature", "sequence"]),
    default="auto",
    show_default=True,
    help="feature: standardize with training statistics; sequence: z-score each sequence; "
    "auto: sequence for a univariate shape problem (one label per series, more than 64 steps, "
    "one channel), else feature.",
)
@click.option(
    "--conv",
    default="auto",
    show_default=True,
    help="Convolutional branch beside the recurrence (LSTM-FCN), one label per series: 1 to 3 "
    "channel sizes like 64,64,64, none, or auto (64,64,64 for a shape problem, else none).",
)
@stream_options
@device_options
@amp_option
@report_option
@common_options
def classify(
    input,
    output,
    model_out,
    metrics_table,
    label_key,
    class_weights,
    cv,
    group_key,
    scale,
    conv,
    seed,
    device,
    amp,
    overwrite,
    quiet,
    **kw,
):
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
        lambda adata: tl.classify.run(
            adata,
            label_key=label_key,
            class_weights=class_weights,
            cv=cv,
            group_key=group_key,
            scale=scale,
            conv=conv,
            seed=seed,
            device=device,
            amp=amp,
            overwrite=overwrite,
            quiet=quiet,
            **sequence_kwargs(kw),
            **network_kwargs(kw),
            **stream_kwargs(kw),
        ),
        # profile data can be far larger than memory: X stays in the file
        lazy=reads_lazily(kw),
    )

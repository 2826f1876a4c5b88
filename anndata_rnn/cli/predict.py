"""``anndata-rnn predict``."""

from __future__ import annotations

import click

from ..io import read_h5ad, write_h5ad
from ._common import (
    Outputs,
    apply_model_arguments,
    common_options,
    device_options,
    echo_written,
    print_metrics,
    report_option,
    split_list,
)


@click.command(
    epilog="""Example:

\b
  anndata-rnn predict new_data.h5ad --model model.h5 --output predicted.h5ad
"""
)
@apply_model_arguments
@click.option("--key-added", default=None, help="Prefix of the output keys (default: the model's).")
@click.option("--gene-symbols", help="var column with the gene identifiers to match.")
@click.option(
    "--min-gene-overlap",
    type=float,
    default=0.8,
    show_default=True,
    help="Stop when fewer of the model's genes are present.",
)
@click.option(
    "--series-subset",
    help="Series of the new data to use, comma separated (default: the training run's subset).",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=512, show_default=True)
@device_options
@report_option
@common_options
def predict(
    input,
    model_path,
    output,
    key_added,
    gene_symbols,
    min_gene_overlap,
    series_subset,
    batch_size,
    seed,
    device,
    overwrite,
    quiet,
):
    """Apply a saved model (classifier, forecaster or embedding) to new data.

    Genes are matched by var_names (or --gene-symbols), reordered, and missing genes are filled
    with the training mean (with a warning); below --min-gene-overlap it stops.
    """
    from .. import tl
    from ..model import Model

    with Outputs(inputs=(input, model_path)) as outputs:
        out_tmp = outputs.add(output)
        model = Model.load(model_path)
        result = tl.predict.run(
            read_h5ad(input),
            model,
            key_added=key_added,
            gene_symbols=gene_symbols,
            min_gene_overlap=min_gene_overlap,
            series_subset=split_list(series_subset),
            batch_size=batch_size,
            seed=seed,
            device=device,
            overwrite=overwrite,
            quiet=quiet,
        )
        write_h5ad(result.adata, out_tmp, atomic=False)
        outputs.write_report(result.adata, result.key)
        outputs.commit()
    echo_written(result.written + [f"uns/{result.key}"], output)
    if "metrics" in result.record:
        print_metrics(result.metrics, title=result.title)

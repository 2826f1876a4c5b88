"""``anndata-rnn predict``."""

from __future__ import annotations

import contextlib
import os

import click

from ..streaming import DEFAULT_CHUNK_ROWS, open_lazy, scratch_file, write_new_elements
from ._common import (
    Outputs,
    amp_option,
    apply_model_arguments,
    common_options,
    device_options,
    echo_written,
    print_metrics,
    record_timings,
    report_option,
    split_list,
)
from ._training_options import output_key


@click.command(
    epilog="""Example:

\b
  anndata-rnn predict new_data.h5ad --model model.h5 --output predicted.h5ad
"""
)
@apply_model_arguments
@click.option(
    "--key-added",
    default=None,
    callback=output_key,
    help="Prefix of the output keys (default: the model's).",
)
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
@click.option("--batch-size", type=click.IntRange(1, 16_384), default=512, show_default=True)
@click.option(
    "--chunk-rows",
    type=click.IntRange(1, 10_000_000),
    default=DEFAULT_CHUNK_ROWS,
    show_default=True,
    help="Observations read and encoded at a time (bounds memory; lower it on a small machine).",
)
@device_options
@amp_option
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
    chunk_rows,
    seed,
    device,
    amp,
    overwrite,
    quiet,
):
    """Apply a saved model (classifier, forecaster or embedding) to new data.

    Genes are matched by var_names (or --gene-symbols), reordered, and missing genes are filled
    with the training mean (with a warning); below --min-gene-overlap it stops. X stays on
    disk and is read --chunk-rows observations at a time; the output is a copy of the input
    plus the new elements (README, "Large files").
    """
    from .. import timing, tl
    from ..model import load_model

    with Outputs(inputs=(input, model_path)) as outputs, contextlib.ExitStack() as stack:
        out_tmp = outputs.add(output)
        with timing.phase("reading"):
            model = load_model(model_path)
            adata = stack.enter_context(open_lazy(input))
        # the embedding goes to a scratch file beside the output, not to memory
        scratch = stack.enter_context(scratch_file(os.path.dirname(os.path.abspath(output))))
        result = tl.predict.run(
            adata,
            model,
            key_added=key_added,
            gene_symbols=gene_symbols,
            min_gene_overlap=min_gene_overlap,
            series_subset=split_list(series_subset),
            batch_size=batch_size,
            chunk_rows=chunk_rows,
            scratch=scratch,
            seed=seed,
            device=device,
            amp=amp,
            overwrite=overwrite,
            quiet=quiet,
        )
        with timing.phase("writing"):
            write_new_elements(input, out_tmp, result.adata, result.elements)
        record_timings(out_tmp, result.adata, result.key, result.record)
        outputs.write_report(result.adata, result.key)
        outputs.commit()
    echo_written(result.elements, output)
    if "metrics" in result.record:
        print_metrics(result.metrics, title=result.title)

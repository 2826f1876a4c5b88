"""``anndata-rnn explain``."""

from __future__ import annotations

import click
import numpy as np

from ..errors import InputError
from ..io import write_table
from ..sequences import Layout
from ..streaming import open_lazy, write_new_elements
from ._common import (
    Outputs,
    apply_model_arguments,
    common_options,
    device_options,
    echo_written,
    record_timings,
    report_option,
)
from ._training_options import TASK_GROUPS, api_kwargs, table_options


@click.command(
    epilog="""Example (which genes make the classifier call a cell a CD14+ monocyte?):

\b
  anndata-rnn explain classified.h5ad --model model.h5 --output explained.h5ad \\
      --target "CD14+ Monocyte" --top 50 --table top_genes.tsv
"""
)
@apply_model_arguments
@table_options("explain", *TASK_GROUPS)
@click.option(
    "--top",
    type=click.IntRange(1, 100_000),
    default=50,
    show_default=True,
    help="Genes per class in --table.",
)
@click.option(
    "--table",
    type=click.Path(dir_okay=False),
    help="Write the top genes per class as a TSV (class, rank, gene, importance).",
)
@device_options
@report_option
@common_options
def explain(input, model_path, output, top, table, **kw):
    """Which genes and which time steps drive a saved model's predictions.

    Integrated gradients (captum) attribute each sequence's prediction to its input values
    against a baseline (the training mean). Writes var/varm {key}_importance (overall and per
    class), obsm {key}_step_importance (time-series layouts) and uns[{key}]: classes,
    step_importance (steps × classes), step_times and explain (method, completeness check).
    """
    from .. import timing, tl
    from ..model import load_model
    from ..tl import importance_table

    # X stays in the file (read chunk by chunk for the predictions, then only the explained
    # sequences); the output is a copy of the input plus the new elements, as predict writes it
    with Outputs(inputs=(input, model_path)) as outputs, open_lazy(input) as adata:
        out_tmp = outputs.add(output)
        table_tmp = outputs.add(table)
        with timing.phase("reading"):
            model = load_model(model_path)
        if table_tmp and Layout.of(model.layout).one_feature:
            raise InputError(
                "--table lists genes by importance, but a var-series model's genes are its "
                "sequences (it attributes time points): leave out --table and read "
                "uns[key]['step_importance'] / obsm[key_step_importance]"
            )
        result = tl.explain.run(adata, model, **api_kwargs("explain", kw))
        adata, record, key = result.adata, result.record, result.key
        has_genes = f"{key}_importance" in adata.varm or "feature_importance" in record
        ranked = importance_table(adata, key, top) if has_genes else None
        with timing.phase("writing"):
            if table_tmp and ranked is not None:
                write_table(ranked, table_tmp, atomic=False)
            write_new_elements(input, out_tmp, adata, result.elements)
        record_timings(out_tmp, adata, key, record)
        outputs.write_report(adata, key)
        outputs.commit()
    echo_written(result.elements, output)
    if table:
        click.echo(f"wrote {table}")
    _print_summary(record, ranked, kw["target"])


def _print_summary(record, ranked, target) -> None:
    explained = record["explain"]
    columns = [str(c) for c in explained["columns"]]
    counts = np.asarray(explained["n_explained"])
    completeness = explained.get("completeness", {})
    click.echo(f"\nExplained ({explained['method']}, baseline {explained['baseline']}):")
    steps = np.asarray(record["step_importance"], dtype=np.float64)
    times = np.asarray(record["step_times"], dtype=np.float64)
    for j, column in enumerate(columns):
        line = f"  {column}: {int(counts[j])} sequences"
        if counts[j] == 0:
            if target:  # classes left out on purpose are not listed
                continue
            click.echo(line + " (none assigned to it)")
            continue
        if np.isfinite(steps[:, j]).any():
            peak = int(np.nanargmax(steps[:, j]))
            line += f"; peak step {peak} (time {times[peak]:g})"
        if ranked is not None:
            genes = ranked.loc[ranked["class"] == column, "gene"].head(5).tolist()
            line += f"; top genes {', '.join(genes)}"
        click.echo(line)
    if completeness:
        click.echo(
            "Completeness: mean |sum of attributions - (f(x) - f(baseline))| = "
            f"{completeness['mean_abs_delta']:.3g}, {100 * completeness['relative_delta']:.2g}% "
            f"of mean |f(x) - f(baseline)| = {completeness['mean_abs_difference']:.3g}; "
            f"{100 * completeness['fraction_within_5_percent']:.0f}% of the sequences within 5%"
            + (
                f" (raise --n-steps, e.g. to {4 * int(explained['n_steps'])})"
                if completeness["relative_delta"] > 0.05
                else " (good)"
            )
        )

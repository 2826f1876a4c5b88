"""``anndata-rnn predict``."""

from __future__ import annotations

import contextlib
import os

import click

from ..streaming import open_lazy, scratch_file, write_new_elements
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
)
from ._training_options import TASK_GROUPS, api_kwargs, table_options


@click.command(
    epilog="""Example:

\b
  anndata-rnn predict new_data.h5ad --model model.h5 --output predicted.h5ad
"""
)
@apply_model_arguments
@table_options("predict", *TASK_GROUPS)
@device_options
@amp_option
@report_option
@common_options
def predict(input, model_path, output, **kw):
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
        result = tl.predict.run(adata, model, scratch=scratch, **api_kwargs("predict", kw))
        with timing.phase("writing"):
            write_new_elements(input, out_tmp, result.adata, result.elements)
        record_timings(out_tmp, result.adata, result.key, result.record)
        outputs.write_report(result.adata, result.key)
        outputs.commit()
    echo_written(result.elements, output)
    if "metrics" in result.record:
        print_metrics(result.metrics, title=result.title)

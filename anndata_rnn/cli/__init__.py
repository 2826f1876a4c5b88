"""The ``anndata-rnn`` command line (click); each command is a thin layer over ``anndata_rnn.tl``."""

from __future__ import annotations

import click

from .classify import classify
from .demo import demo
from .embed import embed
from .explain import explain
from .forecast import forecast
from .inspect_cmd import inspect
from .predict import predict

#: one entry per command, in the order ``--help`` lists them
COMMANDS = [classify, forecast, embed, predict, explain, inspect, demo]


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Run 'anndata-rnn COMMAND --help' for a command's options and an example.",
)
@click.version_option(package_name="anndata-rnn")
def main():
    """Recurrent neural networks (LSTM, GRU) on AnnData .h5ad files.

    Every command reads an .h5ad, never modifies it, and writes a new .h5ad with the results
    (plus a model file for training commands), always beside an honest baseline.
    """
    import matplotlib

    matplotlib.use("Agg")  # plots are written to files (reports), never shown


for _command in COMMANDS:
    main.add_command(_command)

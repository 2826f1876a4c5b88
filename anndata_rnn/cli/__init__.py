"""The ``anndata-rnn`` command line (click); each command is a thin layer over ``anndata_rnn.tl``."""

from __future__ import annotations

import importlib

import click

#: (module in this package, command object name); one entry per command
COMMANDS = [
    ("classify", "classify"),
    ("forecast", "forecast"),
    ("embed", "embed"),
    ("predict", "predict"),
    ("explain", "explain"),
    ("inspect_cmd", "inspect"),
    ("demo", "demo"),
]


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


for _module, _name in COMMANDS:
    main.add_command(getattr(importlib.import_module(f".{_module}", __name__), _name))

"""The ``anndata-rnn`` command line (click); each command is a thin layer over ``anndata_rnn.tl``."""

from __future__ import annotations

import os
import sys

import click

from ._common import error_line
from .classify import classify
from .demo import demo
from .embed import embed
from .explain import explain
from .forecast import forecast
from .inspect_cmd import inspect
from .predict import predict

#: one entry per command, in the order ``--help`` lists them
COMMANDS = [classify, forecast, embed, predict, explain, inspect, demo]


class OneLineErrors(click.Group):
    """Usage errors (a missing option, a value out of range) as one ``Error:`` line, like every
    other error of the tool, instead of click's three-line usage block."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            path = exc.ctx.command_path if exc.ctx is not None else "anndata-rnn"
            error_line(exc.format_message(), suffix=f" (see '{path} --help')")
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            error_line(exc.format_message())
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


@click.group(
    cls=OneLineErrors,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Run 'anndata-rnn COMMAND --help' for a command's options and an example.",
)
@click.version_option(package_name="anndata-rnn")
def main():
    """Recurrent neural networks (LSTM, GRU) on AnnData .h5ad files.

    Every command reads an .h5ad, never modifies it, and writes a new .h5ad with the results
    (plus a model file for training commands), always beside an honest baseline.
    """
    # plots are written to files (reports), never shown; through the environment, so a command
    # that draws nothing does not pay matplotlib's import (0.1 s)
    if "matplotlib" in sys.modules:
        sys.modules["matplotlib"].use("Agg")
    else:
        os.environ["MPLBACKEND"] = "Agg"


for _command in COMMANDS:
    main.add_command(_command)

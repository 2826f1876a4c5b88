"""The click options of the task commands, made from :mod:`anndata_rnn.options`.

Every option of ``classify``, ``forecast``, ``embed``, ``predict`` and ``explain`` is declared
once, in that table;
:func:`table_options` turns a task's options into click options, and :func:`api_kwargs` turns
the values click parsed back into the keyword arguments of the ``tl`` function.
"""

from __future__ import annotations

import click

from ..options import MAX_TOP_GENES, STREAM_CHOICES, Option, options_of
from ..sequences import Layout


def click_option(option: Option, task: str):
    """The click option of ``option`` for ``anndata-rnn <task>`` (same value, CLI form)."""
    default = option.cli_default_for(task)
    help_text = option.help_for(task) or None
    if option.name in _CALLBACKS:
        return click.option(
            option.cli_flag,
            option.name,
            default=default,
            show_default=True,
            callback=_CALLBACKS[option.name],
            help=help_text,
        )
    if option.type is bool:
        if "/" in option.cli_flag:  # --linear-path/--no-linear-path
            return click.option(
                option.cli_flag, option.name, default=default, show_default=True, help=help_text
            )
        # a flag sets the opposite of the default (--no-residual: residual=False)
        return click.option(
            option.cli_flag,
            option.name,
            is_flag=True,
            flag_value=not option.default_for(task),
            default=option.default_for(task),
            help=help_text,
        )
    kind = None
    if option.choices_for(task) is not None:
        kind = click.Choice(list(option.choices_for(task)))
    elif option.type in (int, float):
        bounded = option.click_range and (option.low is not None or option.high is not None)
        if not bounded:
            kind = option.type
        elif option.type is int:
            kind = click.IntRange(option.low, option.high)
        else:
            kind = click.FloatRange(
                option.low, option.high, min_open=option.low_open, max_open=option.high_open
            )
    return click.option(
        option.cli_flag,
        option.name,
        type=kind,
        default=default,
        show_default=default is not None,
        help=help_text,
    )


def table_options(task: str, *groups: str):
    """A decorator adding ``task``'s command-line options of ``groups`` (table order)."""
    options = [o for o in options_of(task, *groups) if o.on_command_line(task)]

    def decorate(func):
        for option in reversed(options):
            func = click_option(option, task)(func)
        return func

    return decorate


#: the groups of a task command's own options (the "run" group is every command's:
#: :mod:`anndata_rnn.cli._common`)
TASK_GROUPS = ("sequences", "preprocessing", "architecture", "training", "apply", "output")


def model_file_options(func):
    """``--model-out`` and ``--metrics-table``: where a training command writes its model file
    and metrics table (outputs of the command line, not settings of the task)."""
    func = click.option(
        "--metrics-table",
        type=click.Path(dir_okay=False),
        help="Also write the metrics as a TSV (metric, rnn, baseline...).",
    )(func)
    return click.option(
        "--model-out",
        required=True,
        type=click.Path(dir_okay=False),
        help="Where to write the model file (HDF5).",
    )(func)


def api_kwargs(task: str, kw: dict) -> dict:
    """The values click parsed for ``task``'s table options -> ``tl`` keyword arguments."""
    from ._common import split_list

    out = {}
    for option in options_of(task):
        if option.name not in kw:
            continue
        value = kw[option.name]
        if option.name == "series_subset":
            value = split_list(value)
        elif option.name == "stream":
            value = STREAM_CHOICES[value]
        elif option.name == "cluster":
            value = None if value == "none" else value
        out[option.name] = value
    return out


def _top_genes(ctx, param, value):
    """``auto``, ``0`` (every gene) or a positive number of genes."""
    if value is None or value == "auto":
        return value
    try:
        number = int(value)
    except ValueError:
        raise click.BadParameter("give auto, 0 (every gene) or a number of genes") from None
    if not 0 <= number <= MAX_TOP_GENES:
        raise click.BadParameter(
            f"give auto, 0 (every gene) or a number of genes up to {MAX_TOP_GENES:,}"
        )
    return number


def output_key(ctx, param, value):
    """``--key-added``: a plain name (it becomes obs/var column and uns keys, never a path)."""
    if value is None:
        return value
    from ..errors import InputError
    from ..sequences import check_output_key

    try:
        return check_output_key(value, "--key-added")
    except InputError as exc:
        raise click.BadParameter(str(exc).removeprefix("--key-added ")) from None


def reads_lazily(kw: dict) -> bool:
    """Whether the command leaves X in the file: profile data, unless ``--stream never``."""
    return Layout.of(kw["layout"]).steps_are_gene_chunks and kw["stream"] != "never"


_CALLBACKS = {"n_top_genes": _top_genes, "key_added": output_key}

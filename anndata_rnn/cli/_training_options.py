"""Options shared by the commands that build sequences and train a network."""

from __future__ import annotations

import click

#: upper bound of --n-top-genes (more genes than any genome has)
MAX_TOP_GENES = 1_000_000


def sequence_options(func):
    """How the AnnData becomes sequences (layout and keys) and which matrix is read."""
    options = [
        click.option(
            "--layout",
            type=click.Choice(["obs-series", "var-series", "profile"]),
            default="obs-series",
            show_default=True,
            help="obs-series: observations of a series over time; var-series: each gene's "
            "profile over time; profile: each observation read across its genes.",
        ),
        click.option("--series-key", help="obs column naming the series (subject, trajectory)."),
        click.option("--time-key", help="obs column with numeric time points."),
        click.option("--series-subset", help="Only these series, comma separated (e.g. cdc15)."),
        click.option("--order-key", help="profile: var column giving the gene order."),
        click.option(
            "--chunk-size",
            type=click.IntRange(1, 100_000),
            default=32,
            show_default=True,
            help="profile: genes per step.",
        ),
        click.option("--layer", help="Read this layer instead of X."),
        click.option("--use-rep", help="Read this obsm representation (e.g. X_pca) instead of X."),
        click.option(
            "--normalize",
            type=click.Choice(["auto", "always", "never"]),
            default="auto",
            show_default=True,
            help="normalize_total + log1p: auto = only when the matrix looks like raw counts.",
        ),
        click.option(
            "--n-top-genes",
            callback=_top_genes,
            default="auto",
            show_default=True,
            help="Use the N most variable genes (training rows); auto = 2,000 in a wide "
            "profile (> 4,000 genes or > 128 steps), else all; 0 = all genes.",
        ),
        click.option("--gene-subset", help="Boolean var column selecting the genes to use."),
        click.option(
            "--key-added",
            default="rnn",
            show_default=True,
            callback=output_key,
            help="Prefix of the output keys (letters, digits, '_' and '-').",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


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


def training_options(
    *,
    hidden: str = "128,64",
    dropout: float = 0.2,
    val_fraction: float = 0.15,
    val_help: str | None = None,
    with_test: bool = True,
    test_fraction: float = 0.15,
    test_help: str | None = None,
    layers_help: str = "Sizes of the stacked recurrent layers, comma separated.",
    bidirectional: bool = True,
    supervised: bool = True,
):
    """Architecture, optimisation and model-file options, with a task's own defaults.

    ``supervised`` adds the linear path and the step schedule's minimum (classify, forecast)."""
    split_values = "train/val/test" if with_test else "train/val"
    options = [
        click.option("--hidden", default=hidden, show_default=True, help=layers_help),
        click.option(
            "--cell", type=click.Choice(["lstm", "gru"]), default="lstm", show_default=True
        ),
        *(
            [click.option("--bidirectional", is_flag=True, help="Bidirectional recurrent layers.")]
            if bidirectional
            else []
        ),
        click.option("--dropout", type=float, default=dropout, show_default=True),
        click.option(
            "--epochs",
            type=click.IntRange(1, 1_000_000),
            default=100,
            show_default=True,
            help="Maximum number of epochs.",
        ),
        click.option("--batch-size", type=click.IntRange(1, 16_384), default=64, show_default=True),
        click.option("--lr", type=float, default=1e-3, show_default=True, help="Learning rate."),
        click.option(
            "--patience",
            type=click.IntRange(1, 1_000_000),
            default=10,
            show_default=True,
            help="Early stopping: epochs without validation improvement.",
        ),
        *(
            [
                click.option(
                    "--min-steps",
                    type=click.IntRange(0, 1_000_000),
                    default=None,
                    help="Train at least this many optimizer steps, however small the data "
                    "[default: 600, or the environment's ANNDATA_RNN_MIN_STEPS].",
                ),
                click.option(
                    "--linear-path/--no-linear-path",
                    default=True,
                    show_default=True,
                    help="A linear path beside the recurrence (logistic / autoregressive), "
                    "trained jointly; the linear path alone is always reported beside it.",
                ),
            ]
            if supervised
            else []
        ),
        click.option(
            "--val-fraction", type=float, default=val_fraction, show_default=True, help=val_help
        ),
        *(
            [
                click.option(
                    "--test-fraction",
                    type=float,
                    default=test_fraction,
                    show_default=True,
                    help=test_help,
                )
            ]
            if with_test
            else []
        ),
        click.option("--split-key", help=f"Column (obs or var) holding {split_values}."),
        click.option(
            "--model-out",
            required=True,
            type=click.Path(dir_okay=False),
            help="Where to write the model file (HDF5).",
        ),
        click.option(
            "--metrics-table",
            type=click.Path(dir_okay=False),
            help="Also write the metrics as a TSV (metric, rnn, baseline...).",
        ),
    ]

    def decorate(func):
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


#: the defaults of the supervised tasks; a forecaster must be causal, so no --bidirectional
network_options = training_options()
forecast_network_options = training_options(bidirectional=False)


def sequence_kwargs(kw: dict) -> dict:
    """CLI values -> keyword arguments of the tl functions (sequence part)."""
    from ._common import split_list

    return {
        "layout": kw["layout"],
        "series_key": kw["series_key"],
        "time_key": kw["time_key"],
        "series_subset": split_list(kw["series_subset"]),
        "order_key": kw["order_key"],
        "chunk_size": kw["chunk_size"],
        "layer": kw["layer"],
        "use_rep": kw["use_rep"],
        "normalize": kw["normalize"],
        "n_top_genes": kw["n_top_genes"],
        "gene_subset": kw["gene_subset"],
        "key_added": kw["key_added"],
    }


def network_kwargs(kw: dict) -> dict:
    """CLI values -> keyword arguments of the tl functions (network/training part)."""
    return {
        "hidden": kw["hidden"],
        "cell": kw["cell"],
        "bidirectional": kw.get("bidirectional", False),
        "dropout": kw["dropout"],
        "max_epochs": kw["epochs"],
        "batch_size": kw["batch_size"],
        "lr": kw["lr"],
        "patience": kw["patience"],
        "val_fraction": kw["val_fraction"],
        "test_fraction": kw["test_fraction"],
        "split_key": kw["split_key"],
        "min_steps": kw["min_steps"],
        "linear_path": kw["linear_path"],
    }


def stream_options(func):
    """``--stream`` and ``--chunk-rows``: training on profile data larger than memory."""
    from ..streaming import DEFAULT_CHUNK_ROWS

    func = click.option(
        "--chunk-rows",
        type=click.IntRange(1, 10_000_000),
        default=DEFAULT_CHUNK_ROWS,
        show_default=True,
        help="Streamed training: cells read from the file and shuffled together (bounds memory).",
    )(func)
    return click.option(
        "--stream",
        type=click.Choice(["auto", "always", "never"]),
        default="auto",
        show_default=True,
        help="profile: train without holding the cells in memory: X stays in the file and "
        "batches are read and encoded as needed; auto = when the encoded cells would exceed "
        "1 GiB; never = read the whole file into memory.",
    )(func)


def stream_kwargs(kw: dict) -> dict:
    """CLI values -> ``stream`` / ``chunk_rows`` of the tl functions."""
    return {
        "stream": {"auto": "auto", "always": True, "never": False}[kw["stream"]],
        "chunk_rows": kw["chunk_rows"],
    }


def reads_lazily(kw: dict) -> bool:
    """Whether the command leaves X in the file: profile data, unless ``--stream never``."""
    return kw["layout"] == "profile" and kw["stream"] != "never"

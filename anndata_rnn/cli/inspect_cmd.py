"""``anndata-rnn inspect``: what is in an .h5ad or a model file."""

from __future__ import annotations

import json

import click
import h5py
import pandas as pd

from ..errors import InputError


@click.command(
    name="inspect",
    epilog="""Examples:

\b
  anndata-rnn inspect data.h5ad
  anndata-rnn inspect model.h5
""",
)
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--quiet", is_flag=True, help="Accepted for uniformity; inspect prints only facts.")
@click.option("--debug", is_flag=True, help="Show the full traceback on errors.")
def inspect(path, quiet, debug):
    """Describe an .h5ad (shape, columns with types and levels, layers, obsm) or a model file."""
    from ._common import _setup_logging, error_line

    _setup_logging(True)
    try:
        kind = _kind(path)
        if kind == "model":
            _inspect_model(path)
        else:
            _inspect_h5ad(path)
    except InputError as exc:
        if debug:
            raise
        error_line(str(exc))
        raise SystemExit(exc.exit_code) from None


def _kind(path) -> str:
    from pathlib import Path

    if not Path(path).exists():
        raise InputError(f"{path!r} does not exist")
    try:
        with h5py.File(path, "r") as f:
            if "format" in f.attrs:
                return "model"
            if "obs" in f and "var" in f:
                return "h5ad"
    except OSError:
        raise InputError(f"{path!r} is not an HDF5 file or is truncated") from None
    raise InputError(f"{path!r} is an HDF5 file but neither an .h5ad nor an anndata-rnn model")


def _inspect_model(path) -> None:
    from ..model import load_model

    model = load_model(path)
    click.echo(f"anndata-rnn model: {path}")
    click.echo(f"  {model!r}")
    config = dict(model.config)
    click.echo(json.dumps(config, indent=2, sort_keys=True, default=str))


def _describe_column(series: pd.Series) -> str:
    if isinstance(series.dtype, pd.CategoricalDtype):
        levels = list(series.cat.categories)
        shown = ", ".join(map(str, levels[:8])) + (", ..." if len(levels) > 8 else "")
        return f"categorical, {len(levels)} levels: {shown}"
    if pd.api.types.is_bool_dtype(series):
        return f"bool ({int(series.sum())} True)"
    if pd.api.types.is_numeric_dtype(series):
        return f"{series.dtype}, range {series.min():.4g} .. {series.max():.4g}, {int(series.isna().sum())} NaN"
    levels = series.astype(str).unique()
    return f"{series.dtype}, {len(levels)} distinct values (e.g. {', '.join(map(str, levels[:3]))})"


def _inspect_h5ad(path) -> None:
    from ..io import read_h5ad

    adata = read_h5ad(path, backed=True)
    try:
        click.echo(f"AnnData: {path}")
        x = adata.X
        dtype = getattr(x, "dtype", "none")
        click.echo(f"  {adata.n_obs} obs × {adata.n_vars} vars, X: {type(x).__name__} {dtype}")
        for name, frame in (("obs", adata.obs), ("var", adata.var)):
            click.echo(f"  {name} columns ({len(frame.columns)}):")
            for column in frame.columns:
                click.echo(f"    {column}: {_describe_column(frame[column])}")
        for name in ("layers", "obsm", "varm", "obsp", "varp"):
            mapping = getattr(adata, name)
            keys = list(mapping.keys())
            if keys:
                click.echo(
                    f"  {name}: " + ", ".join(f"{k} {tuple(mapping[k].shape)}" for k in keys)
                )
        if adata.uns:
            click.echo("  uns: " + ", ".join(adata.uns.keys()))
    finally:
        adata.file.close()

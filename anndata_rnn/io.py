"""Reading inputs with clear errors; writing outputs atomically (temporary name, then rename)."""

from __future__ import annotations

import contextlib
import os
import platform
import stat
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
from anndata import AnnData

from .errors import InputError
from .h5check import check_self_contained


def read_h5ad(path: str | os.PathLike, *, backed: bool = False) -> AnnData:
    """Read an ``.h5ad`` file; a missing, non-HDF5 or damaged file is an :class:`InputError`.

    The file must be self-contained (:func:`~anndata_rnn.h5check.check_self_contained`): one with
    external links, external raw storage, virtual datasets or non-standard filters is refused
    before anything reads its data.
    """
    path = check_h5ad(path)
    try:
        adata = ad.read_h5ad(path, backed="r" if backed else None)
    except Exception as exc:
        raise unreadable(path, exc) from None
    return adata


def unreadable(path, exc: Exception) -> InputError:
    """The one-line error for an HDF5 file anndata cannot read."""
    first = str(exc).splitlines()[0][:150] if str(exc) else ""
    return InputError(
        f"{str(path)!r} could not be read as AnnData ({type(exc).__name__}: {first}): the file "
        "may be damaged or written by an incompatible anndata"
    )


def check_h5ad(path: str | os.PathLike) -> Path:
    """The checks of :func:`read_h5ad` without reading: an existing, self-contained HDF5 file
    with obs and var (else an :class:`InputError`)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"input file {str(path)!r} does not exist")
    if path.is_dir():
        raise InputError(f"input {str(path)!r} is a directory, not an .h5ad file")
    try:
        with h5py.File(path, "r") as f:
            if "obs" not in f or "var" not in f:
                raise InputError(
                    f"{str(path)!r} is an HDF5 file but not an AnnData .h5ad (no obs/var): "
                    "give an .h5ad written by anndata/scanpy"
                )
            check_self_contained(path, handle=f)
    except InputError:
        raise
    except Exception:
        raise InputError(
            f"{str(path)!r} is not an HDF5 file or is truncated: give a complete .h5ad file"
        ) from None
    return path


def check_output_path(output: str | os.PathLike, *, inputs: tuple = ()):
    """Refuse output paths that equal an input, that exist as anything but a regular file (a
    device, a symbolic link, a pipe), or whose directory is missing / not writable.

    The directory is checked as the operating system resolves the path given (``nodir/../o``
    needs ``nodir``), before any work starts.
    """
    output = Path(output)
    for item in inputs:
        if item is None:
            continue
        item = Path(item)
        if output.resolve() == item.resolve() or (
            output.exists() and item.exists() and os.path.samefile(output, item)
        ):
            raise InputError(
                f"output path {_shown(output)} is the input file: write to a new file "
                "(the input is never modified)"
            )
    parent = os.path.dirname(os.fspath(output)) or "."
    if not os.path.isdir(parent):
        raise InputError(f"output directory {_shown(parent)} does not exist: create it first")
    if not os.access(parent, os.W_OK):
        raise InputError(
            f"output directory {_shown(parent)} is not writable: choose another output directory "
            "or fix its permissions"
        )
    if output.is_dir():
        raise InputError(f"output path {_shown(output)} is a directory: give a file name")
    try:
        mode = os.lstat(output).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
        raise InputError(
            f"output path {_shown(output)} exists and is {kind}: give the name of a new or "
            "regular file (outputs replace the path, they never write through it)"
        )


def _shown(path) -> str:
    """A path for a one-line message: quoted, and cut in the middle when very long."""
    text = os.fspath(path)
    if len(text) > 120:
        text = text[:50] + "…" + text[-50:]
    return repr(text)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; renamed to ``path`` only if the block succeeds.

    The one way every output (h5ad, model file, table, report) is written: a failure or Ctrl-C
    leaves no partial file behind.
    """
    path = Path(path)
    check_output_path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def temporary_name(path: Path) -> Path:
    """A new, empty file with an unpredictable hidden name in the same directory (same file
    system, so the rename is atomic). Created exclusively (``O_EXCL``): a link planted in the
    directory is never followed."""
    handle, name = tempfile.mkstemp(
        prefix=f".{path.stem[:64]}.partial-",
        suffix=path.suffix,
        dir=os.path.dirname(os.fspath(path)) or ".",
    )
    os.close(handle)
    return Path(name)


def write_h5ad(adata: AnnData, path: str | os.PathLike, *, atomic: bool = True) -> None:
    """Write an AnnData (atomically, unless the caller already stages ``path``).

    Nullable string columns and indices (``nullable-string-array``, what anndata writes for
    pandas' string dtype) are written back as they were read, so every input element keeps its
    encoding; the keys anndata-rnn adds are categoricals, numbers and plain string arrays.
    """
    with atomic_path(path) if atomic else contextlib.nullcontext(path) as target:
        with _nullable_strings_allowed():
            adata.write_h5ad(target)


def _nullable_strings_allowed():
    """anndata >= 0.11 refuses to write pandas string arrays unless this setting is on; older
    versions have no such setting (nothing to switch)."""
    settings = ad.settings
    if not hasattr(settings, "allow_write_nullable_strings"):
        return contextlib.nullcontext()
    return settings.override(allow_write_nullable_strings=True)


def write_table(frame: pd.DataFrame, path: str | os.PathLike, *, atomic: bool = True) -> None:
    """Write a TSV (atomically, unless the caller already stages ``path``)."""
    with atomic_path(path) if atomic else contextlib.nullcontext(path) as target:
        frame.to_csv(target, sep="\t", index=False)


def versions() -> dict:
    """Versions of Python and the packages a result depends on (stored with every result)."""
    out = {"python": platform.python_version()}
    for package in ("anndata-rnn", "anndata", "scanpy", "torch", "numpy", "scikit-learn", "h5py"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "unknown"
    return out


def uns_safe(value):
    """Make a value storable in ``uns`` and readable from R: no None/null, no bools, no pickles.

    None -> "" , bool -> int, tuples -> lists/arrays, numpy scalars -> python scalars,
    object arrays -> string arrays.
    """
    if isinstance(value, dict):
        return {str(k): uns_safe(v) for k, v in value.items() if v is not None}
    if value is None:
        return ""
    if isinstance(value, bool | np.bool_):
        return int(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        if value.dtype == bool:
            return value.astype(np.int32)
        if value.dtype == object:
            return np.asarray([str(v) for v in value.ravel()], dtype=object).reshape(value.shape)
        return value
    if isinstance(value, list | tuple):
        if all(isinstance(v, str) for v in value):
            return np.asarray(value, dtype=object) if value else np.zeros(0, dtype=object)
        if all(isinstance(v, int | float | np.number) and not isinstance(v, bool) for v in value):
            return np.asarray(value)
        return {str(i): uns_safe(v) for i, v in enumerate(value)}
    return value

"""Refuse HDF5 files that are not self-contained, before anything reads them.

An HDF5 file can point outside itself: an external link opens another file, a dataset can keep
its raw bytes in another file (external storage) or assemble them from other files (a virtual
dataset), and a dataset filter that is not built in loads a plugin library. Reading such a file
reads (or runs) whatever the job can reach, and its bytes can end up in our outputs. Inputs and
model files must therefore hold everything themselves: only hard links (and soft links that stay
inside the file), and datasets stored inside the file, contiguous, compact or chunked with the
standard filters.

:func:`check_self_contained` walks the metadata only (link tables and dataset creation property
lists), visits each object once (hard-linked cycles end) and never follows an external link, so it
is cheap on large files.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
from h5py import h5d, h5g, h5l, h5o, h5z

from .errors import InputError

#: filters HDF5 and h5py provide themselves (no plugin library is loaded for them)
STANDARD_FILTERS = {
    h5z.FILTER_DEFLATE: "deflate",
    h5z.FILTER_SHUFFLE: "shuffle",
    h5z.FILTER_FLETCHER32: "fletcher32",
    h5z.FILTER_SZIP: "szip",
    h5z.FILTER_NBIT: "nbit",
    h5z.FILTER_SCALEOFFSET: "scaleoffset",
    h5z.FILTER_LZF: "lzf",
}

#: HDF5 follows at most this many soft links in one path (H5L_NUM_LINKS)
_MAX_SOFT = 16

_FIX = "give a self-contained file (rewrite it with anndata, or h5repack it into one file)"


class _Refused(Exception):
    """Internal: ``(object path, what is wrong)``; turned into the caller's error type."""


def check_self_contained(
    path: str | os.PathLike,
    *,
    error: type[InputError] = InputError,
    what: str = "input",
    handle: h5py.File | None = None,
) -> None:
    """Refuse an HDF5 file that reaches outside itself.

    Parameters
    ----------
    path
        The file (named in the message; opened read-only unless ``handle`` is given).
    error
        Exception raised on refusal (:class:`~anndata_rnn.errors.InputError` for inputs,
        :class:`~anndata_rnn.errors.ModelFileError` for model files).
    what
        How the message names the file ("input", "model file").
    handle
        An already open ``h5py.File`` of ``path`` (avoids opening it twice).

    Raises
    ------
    error
        One line naming the object (its path inside the file) and the problem: an external
        link, a soft link leaving the file or pointing nowhere, external raw storage, a virtual
        dataset, or a filter that is not standard.
    """
    try:
        if handle is not None:
            _walk(handle.id)
        else:
            with h5py.File(path, "r") as f:
                _walk(f.id)
    except _Refused as refused:
        obj, problem = refused.args
        raise error(f"{what} {str(Path(path))!r}: {obj!r} {problem}: {_FIX}") from None
    except Exception as exc:  # metadata HDF5 itself cannot read: nothing else could read it either
        detail = str(exc).splitlines()[0][:120] if str(exc) else ""
        raise error(
            f"{what} {str(Path(path))!r} is damaged (its HDF5 metadata cannot be read: "
            f"{type(exc).__name__}: {detail}): restore or rewrite the file"
        ) from None


def _join(base: str, name: bytes) -> str:
    return f"{base.rstrip('/')}/{name.decode('utf-8', 'replace')}"


def _walk(root: h5g.GroupID) -> None:
    seen = {h5o.get_info(root).addr}
    stack = [(root, "/")]
    while stack:
        group, where = stack.pop()
        for name in list(group):  # link names of this group, read from its link table
            child = _join(where, name)
            info = group.links.get_info(name)
            if info.type == h5l.TYPE_EXTERNAL:
                filename, target = group.links.get_val(name)
                raise _Refused(
                    child,
                    f"is an external link to {filename.decode('utf-8', 'replace')!r}"
                    f":{target.decode('utf-8', 'replace')}",
                )
            if info.type == h5l.TYPE_SOFT:
                # the target is reached through hard links too (and checked there) or not at all
                _resolve_soft(root, group, group.links.get_val(name), child, 0)
                continue
            if info.type != h5l.TYPE_HARD:  # user-defined link classes
                raise _Refused(child, f"is a link of unsupported type {info.type}")
            if info.u in seen:  # the same object under a second name (or a cycle)
                continue
            seen.add(info.u)
            obj = h5o.open(group, name)
            if isinstance(obj, h5g.GroupID):
                stack.append((obj, child))
            elif isinstance(obj, h5d.DatasetID):
                _check_dataset(obj, child)


def _check_dataset(dataset: h5d.DatasetID, where: str) -> None:
    dcpl = dataset.get_create_plist()
    if dcpl.get_layout() == h5d.VIRTUAL:
        raise _Refused(where, "is a virtual dataset (its data comes from other files)")
    if dcpl.get_external_count() > 0:
        filename = dcpl.get_external(0)[0].decode("utf-8", "replace")
        raise _Refused(where, f"keeps its data in an external file ({filename!r})")
    for i in range(dcpl.get_nfilters()):
        code, _flags, _values, label = dcpl.get_filter(i)
        if code not in STANDARD_FILTERS:
            name = label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)
            raise _Refused(where, f"uses the non-standard HDF5 filter {code} ({name or 'unnamed'})")


def _resolve_soft(root, group, target: bytes, where: str, depth: int) -> None:
    """Follow a soft link's path one component at a time without leaving the file."""
    if depth >= _MAX_SOFT:
        raise _Refused(where, "is a soft link in a loop of soft links")
    text = target.decode("utf-8", "replace")
    current = root if target.startswith(b"/") else group
    parts = [p for p in target.split(b"/") if p and p != b"."]
    for i, part in enumerate(parts):
        if not isinstance(current, h5g.GroupID) or not current.links.exists(part):
            raise _Refused(where, f"is a soft link to {text!r}, which does not exist")
        info = current.links.get_info(part)
        if info.type == h5l.TYPE_EXTERNAL:
            raise _Refused(where, f"is a soft link to {text!r}, which leaves the file")
        if info.type == h5l.TYPE_SOFT:
            if i == len(parts) - 1:
                _resolve_soft(root, current, current.links.get_val(part), where, depth + 1)
                return
            # an intermediate soft link: resolve it, then continue from the group it names
            inner = current.links.get_val(part)
            _resolve_soft(root, current, inner, where, depth + 1)
            current = h5o.open(current, part)
            continue
        if info.type != h5l.TYPE_HARD:
            raise _Refused(where, f"is a soft link through a link of unsupported type {info.type}")
        current = h5o.open(current, part)

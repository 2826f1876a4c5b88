"""Bounded memory on large ``.h5ad`` files: streamed encoding and inference, lazy reading and
writing the new elements into a copy of the input.

- :func:`open_lazy` opens an ``.h5ad`` whose X stays on disk (read by row blocks) while obs, var,
  obsm, varm and uns are in memory, so a tool annotates it like any in-memory AnnData;
- :func:`sequence_chunks` cuts the sequences into chunks that each read at most ``chunk_rows``
  obs rows, along the layout's own axis (profile: rows; obs-series: whole series, so a series
  is never cut; var-series: the matrix whole, logged);
- :func:`stream_apply` encodes chunk by chunk and runs the network over batches of exactly
  ``batch_size`` sequences (the batches of the in-memory path, hence bit-identical results),
  keeping only the outputs;
- :func:`write_new_elements` copies the input file and writes only the new obs/var columns,
  obsm/varm/layers matrices and ``uns[key]`` with anndata's element writer: every input element
  stays bit-identical by construction;
- :func:`scratch_file` is where a streamed pass spills outputs that would otherwise grow with the
  data (a classifier's embedding), so the command line's memory stays flat.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import h5py
import numpy as np
from anndata import AnnData
from anndata.io import read_elem, sparse_dataset, write_elem

from . import distributed, heap
from .errors import InputError
from .features import READ_BUDGET_BYTES, FeatureSource
from .io import check_h5ad, unreadable
from .options import DEFAULT_CHUNK_ROWS
from .preprocessing import Preprocessor, encode, imputed_count, missing_fraction_of
from .sequences import SequenceIndex

log = logging.getLogger("anndata_rnn")

#: streamed training: the encoded sequences would take more than this many bytes in memory
STREAM_ABOVE_BYTES = 1 << 30
#: streamed training: the preprocessing and the logistic baseline are fitted on at most this many
#: training sequences (a seeded random subset; 20,000 × 2,000 genes is 160 MB of float32)
STREAM_FIT_SEQUENCES = 20_000
#: streamed training from a file: shuffled batches come from blocks of this many consecutive
#: sequences (rounded up to whole batches), as many blocks as fit in ``chunk_rows`` read and
#: shuffled together
STREAM_BLOCK = 256


def bounded_chunk_rows(chunk_rows: int, source: FeatureSource) -> int:
    """``chunk_rows``, lowered so that one read of that many rows stays within
    :data:`READ_BUDGET_BYTES` of dense float32 (logged when it is lowered)."""
    width = max(1, len(source.feature_names))
    limit = max(1, READ_BUDGET_BYTES // (4 * width))
    if chunk_rows > limit:
        log.info(
            "reading %d rows at a time instead of %d: %d genes per row (at most %d MiB a read)",
            limit,
            chunk_rows,
            width,
            READ_BUDGET_BYTES >> 20,
        )
        return limit
    return chunk_rows


@contextlib.contextmanager
def open_lazy(path) -> Iterator[AnnData]:
    """An AnnData whose X and layers stay on disk; obs, var, obsm, varm and uns are in memory.

    Unlike a backed AnnData (which the tools refuse without ``copy=True``, so that nobody
    expects results written to the file), the result is an ordinary AnnData: a tool writes its
    results into its obs/obsm/uns in memory, while X and the layers are read only by row blocks
    (:class:`~anndata_rnn.features.FeatureSource`; sparse ones through anndata's
    ``sparse_dataset``). obsp and varp are not read (the output is a copy of the input file, so
    they are kept there). The file is closed on leaving the ``with`` block.
    """
    path = check_h5ad(path)  # self-contained HDF5 with obs and var
    with h5py.File(path, "r") as f:

        def in_memory(name):
            return read_elem(f[name]) if name in f else {}

        try:
            adata = AnnData(
                X=_on_disk(f["X"]) if "X" in f else None,
                obs=read_elem(f["obs"]),
                var=read_elem(f["var"]),
                obsm=in_memory("obsm"),
                varm=in_memory("varm"),
                layers={k: _on_disk(v) for k, v in f["layers"].items()} if "layers" in f else {},
                uns=in_memory("uns"),
            )
        except Exception as exc:
            raise unreadable(path, exc) from None
        yield adata


def _on_disk(element):
    """A matrix element left on disk: a sparse dataset (CSR/CSC group) or the HDF5 dataset."""
    return sparse_dataset(element) if isinstance(element, h5py.Group) else element


# ---------------------------------------------------------------------------------------------
# chunks of sequences


def sequence_chunks(
    index: SequenceIndex,
    sequence_ids: np.ndarray,
    chunk_rows: int,
    batch_size: int = 1,
) -> Iterator[np.ndarray]:
    """Consecutive runs of ``sequence_ids`` that each need at most ``chunk_rows`` obs rows.

    profile: ``chunk_rows`` rows, rounded down to a multiple of ``batch_size`` (at least one
    batch). obs-series: whole series, as many as fit (a series longer than ``chunk_rows`` is a
    chunk of its own). var-series: one chunk (every sequence reads every observation).
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    n = len(sequence_ids)
    if index.layout_kind.one_feature:
        if n:
            yield sequence_ids
        return
    if index.layout_kind.steps_are_gene_chunks:
        size = max(batch_size, chunk_rows // batch_size * batch_size)
        for start in range(0, n, size):
            yield sequence_ids[start : start + size]
        return
    rows = (index.steps[sequence_ids] >= 0).sum(axis=1)
    start, used = 0, 0
    for i, r in enumerate(rows):
        if i > start and used + r > chunk_rows:
            yield sequence_ids[start:i]
            start, used = i, 0
        used += int(r)
    if start < n:
        yield sequence_ids[start:]


def sub_index(index: SequenceIndex, ids: np.ndarray) -> SequenceIndex:
    """The index of some sequences only (same obs rows, units and width)."""
    return replace(
        index,
        unit=index.unit[ids],
        sequence_series=index.sequence_series[ids],
        steps=np.ascontiguousarray(index.steps[ids]),
        times=np.ascontiguousarray(index.times[ids]),
        notes=[],
    )


def progress_bar(total: int, unit: str, enabled: bool):
    """A tqdm bar on stderr (a no-op object when disabled)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, disable=not enabled, file=sys.stderr, leave=False)


# ---------------------------------------------------------------------------------------------
# streamed training: sequences encoded a batch at a time


def should_stream(index: SequenceIndex, n_features: int, stream: str | bool) -> bool:
    """Whether a training run streams: ``True``/``False``, or ``"auto"``: profile data whose
    encoded sequences (``n_sequences × steps × features`` float32) would exceed
    :data:`STREAM_ABOVE_BYTES`. Other layouts always encode in memory."""
    if stream not in (True, False, "auto"):
        raise InputError(f"stream must be True, False or 'auto', got {stream!r}")
    if index.layout_kind.is_time_series:
        if stream is True:
            log.info("streamed training is for the profile layout; %s encodes in memory",
                     index.layout)  # fmt: skip
        return False
    if stream != "auto":
        return bool(stream)
    size = index.n_sequences * n_features * 4
    if size > STREAM_ABOVE_BYTES:
        log.info(
            "streamed training: the encoded sequences would take %.1f GB; they are read and "
            "encoded a batch at a time (stream=False to hold them in memory)",
            size / 1e9,
        )
    return size > STREAM_ABOVE_BYTES


class LazyEncoded:
    """Encoded sequences built on demand, a batch at a time, never all at once.

    Stands in for :class:`~anndata_rnn.preprocessing.Encoded` (``values``, ``lengths``,
    ``n_missing``, ``imputed``) in a training run whose encoded sequences would not fit in memory:
    ``values[positions]`` reads the rows of those sequences from the source (X stays sparse
    until then) and encodes them exactly as :func:`~anndata_rnn.preprocessing.encode` does for
    the whole data, so a batch holds the same numbers either way and training sees the same
    batches (:func:`anndata_rnn.training.make_loader`). ``take(positions)`` is a lazy subset.
    Imputation counts fill in as sequences get encoded (all of them after a pass over the data,
    or after :meth:`count_missing`). When the source is a file (``read_blocks``, default: when
    X is on disk), training draws its shuffled batches from blocks read ahead into a buffer of
    ``chunk_rows`` sequences (:class:`~anndata_rnn.training.BufferedBlocks` calls
    :meth:`prefetch`), since rows read one by one from a file are slow.
    """

    def __init__(
        self,
        index: SequenceIndex,
        source: FeatureSource,
        prep: Preprocessor,
        *,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        read_blocks: bool | None = None,
    ):
        # its batches of a few MB would fragment a heap that keeps them (anndata_rnn/heap.py)
        heap.set_for_streamed_training()
        chunk_rows = bounded_chunk_rows(chunk_rows, source)
        self.index, self.source, self.prep, self.chunk_rows = index, source, prep, chunk_rows
        self._set_ids(np.arange(index.n_sequences))
        probe = encode(index, source, prep, self.ids[:1], chunk=1)
        self.shape = (len(self.ids), *probe.values.shape[1:])
        self.n_features = probe.n_features
        self._missing = np.full(index.n_sequences, -1, dtype=np.int64)  # -1: not encoded yet
        if read_blocks is None:  # a file is read fast by contiguous blocks, not row by row
            read_blocks = source.on_disk
        #: (block, buffer) in sequences for :class:`~anndata_rnn.training.BufferedBlocks`
        self.read_blocks = (STREAM_BLOCK, chunk_rows) if read_blocks else None
        self._buffer_ids = np.zeros(0, dtype=np.int64)  # sorted ids of the read-ahead buffer
        self._buffer = None

    def _set_ids(self, ids: np.ndarray) -> None:
        self.ids = np.asarray(ids, dtype=np.int64)
        self.lengths = self.index.lengths[self.ids].astype(np.int64)

    values = property(lambda self: self)
    n_missing = property(lambda self: np.maximum(self._missing[self.ids], 0))
    imputed = property(lambda self: imputed_count(self))
    missing_fraction = missing_fraction_of

    def __len__(self) -> int:
        return len(self.ids)

    def _positions(self, positions) -> np.ndarray:
        if isinstance(positions, slice):
            return np.arange(len(self.ids))[positions]
        return np.asarray(positions, dtype=np.int64)

    def take(self, positions) -> LazyEncoded:
        view = copy.copy(self)  # shares the source, the preprocessing and the counts
        view._set_ids(self.ids[self._positions(positions)])
        view.shape = (len(view.ids), *self.shape[1:])
        return view

    def count_missing(self) -> LazyEncoded:
        """Encode every sequence once, ``chunk_rows`` at a time, keeping only the counts of
        missing values (what ``missing_fraction`` needs before training); returns ``self``."""
        log.info("streamed training: counting missing values (one pass over the data)")
        for start in range(0, len(self.ids), self.chunk_rows):
            self._encode(self.ids[start : start + self.chunk_rows])
        return self

    def prefetch(self, positions: np.ndarray) -> None:
        """Read and encode the sequences at ``positions`` now, in file order (a few slices of
        the file); the batches indexed next are served from them."""
        self._buffer = None  # the previous buffer's memory is free before the next one is read
        ids = np.sort(self.ids[self._positions(positions)])
        self._buffer = self._encode(ids)
        self._buffer_ids = ids

    def __getitem__(self, positions) -> np.ndarray:
        ids = self.ids[self._positions(positions)]
        if self._buffer is not None:
            where = np.minimum(np.searchsorted(self._buffer_ids, ids), len(self._buffer_ids) - 1)
            if np.array_equal(self._buffer_ids[where], ids):
                return self._buffer[where]
        return self._encode(ids)

    def _encode(self, ids: np.ndarray) -> np.ndarray:
        enc = encode(self.index, self.source, self.prep, ids)
        self._missing[ids] = enc.n_missing
        return enc.values


# ---------------------------------------------------------------------------------------------
# streamed inference


@dataclass
class Streamed:
    """What a streamed pass keeps: the network's outputs and the imputation counts."""

    outputs: tuple[np.ndarray, ...]
    n_missing: np.ndarray
    lengths: np.ndarray

    imputed = property(lambda self: imputed_count(self))
    missing_fraction = missing_fraction_of


def stream_apply(
    index: SequenceIndex,
    source: FeatureSource,
    prep: Preprocessor,
    run: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, ...]],
    *,
    batch_size: int,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: bool = False,
    sequence_ids: np.ndarray | None = None,
    spill: dict[int, str] | None = None,
    scratch: h5py.Group | None = None,
) -> Streamed:
    """Encode ``sequence_ids`` chunk by chunk and call ``run(values, lengths)`` on each batch.

    Batches hold exactly ``batch_size`` sequences in order (the last one fewer), whatever the
    chunks, so the network sees the same batches as on the whole encoded array. Only ``run``'s
    outputs (concatenated; an output that is ``None`` stays ``None``) and the imputation counts
    are kept. With a writable ``scratch`` group, the outputs at the positions of ``spill`` (e.g.
    ``{1: "embedding"}``) are appended batch by batch to datasets of that name in it and
    returned as those ``h5py.Dataset`` s, so memory does not grow with them.
    """
    spilled = {i: _Spilled(scratch, name) for i, name in (spill or {}).items()} if scratch else {}
    chunk_rows = bounded_chunk_rows(chunk_rows, source)
    if sequence_ids is None:
        sequence_ids = np.arange(index.n_sequences)
    if distributed.sharding():  # torchrun: each rank streams its own row range
        return _stream_ranges(
            index, source, prep, run, batch_size, chunk_rows, progress, sequence_ids
        )
    if index.layout_kind.one_feature and len(sequence_ids):
        log.info(
            "var-series: reading the whole matrix (%d obs × %d vars) at once; each sequence "
            "(a gene) needs every observation",
            index.n_obs,
            index.n_vars,
        )
    pending_x: list[np.ndarray] = []
    pending_n: list[np.ndarray] = []
    parts: list[list[np.ndarray]] = []
    missing, lengths = [], []

    def flush(final: bool) -> None:
        x, n = np.concatenate(pending_x), np.concatenate(pending_n)
        pending_x.clear()
        pending_n.clear()
        cut = len(x) if final else len(x) // batch_size * batch_size
        for start in range(0, cut, batch_size):
            outputs = run(x[start : start + batch_size], n[start : start + batch_size])
            if not parts:
                parts.extend([] for _ in outputs)
            for i, (collected, output) in enumerate(zip(parts, outputs, strict=True)):
                if i in spilled and output is not None:
                    spilled[i].append(output)
                    output = spilled[i].dataset
                collected.append(output)
        if cut < len(x):
            pending_x.append(x[cut:])
            pending_n.append(n[cut:])

    bar = progress_bar(len(sequence_ids), "seq", progress)
    try:
        for ids in sequence_chunks(index, sequence_ids, chunk_rows, batch_size):
            enc = encode(sub_index(index, ids), source, prep, chunk=len(ids))
            missing.append(enc.n_missing)
            lengths.append(enc.lengths)
            pending_x.append(enc.values)
            pending_n.append(enc.lengths)
            del enc
            if sum(len(x) for x in pending_x) >= batch_size:
                flush(final=False)
            bar.update(len(ids))
        if pending_x:
            flush(final=True)
    finally:
        bar.close()
    outputs = tuple(
        p[0] if isinstance(p[0], h5py.Dataset) else None if p[0] is None else np.concatenate(p)
        for p in parts
    )
    return Streamed(
        outputs=outputs,
        n_missing=np.concatenate(missing) if missing else np.zeros(0, dtype=np.int64),
        lengths=np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64),
    )


@contextlib.contextmanager
def scratch_file(directory) -> Iterator[h5py.File]:
    """A writable HDF5 file in ``directory`` (next to the output: same disk), always deleted."""
    handle, path = tempfile.mkstemp(prefix=".anndata-rnn-scratch-", suffix=".h5", dir=directory)
    os.close(handle)
    try:
        with h5py.File(path, "w") as f:
            yield f
    finally:
        os.unlink(path)


def _stream_ranges(index, source, prep, run, batch_size, chunk_rows, progress, sequence_ids):
    """Under torchrun: this rank streams its contiguous share of the sequences; the shares are
    gathered in rank order, so every rank returns the whole result (rank 0 writes it). Nothing
    is spilled (the shares travel between processes in memory)."""
    mine = sequence_ids[distributed.row_range(len(sequence_ids))]
    with distributed.this_rank_only():
        part = stream_apply(
            index,
            source,
            prep,
            run,
            batch_size=batch_size,
            chunk_rows=chunk_rows,
            progress=progress and distributed.is_main(),
            sequence_ids=mine,
        )
    shares = distributed.gather_ranges((part.outputs, part.n_missing, part.lengths))
    outputs = tuple(
        None if pieces[0] is None else np.concatenate(pieces)
        for pieces in zip(*[share[0] for share in shares if share[0]], strict=True)
    )
    return Streamed(
        outputs=outputs,
        n_missing=np.concatenate([share[1] for share in shares]),
        lengths=np.concatenate([share[2] for share in shares]),
    )


class _Spilled:
    """A growing dataset of ``scratch`` that batches of one output are appended to."""

    def __init__(self, scratch: h5py.Group, name: str):
        self.scratch, self.name, self.dataset = scratch, name, None

    def append(self, batch: np.ndarray) -> None:
        if self.dataset is None:
            if self.name in self.scratch:
                del self.scratch[self.name]
            self.dataset = self.scratch.create_dataset(
                self.name,
                shape=(0, *batch.shape[1:]),
                maxshape=(None, *batch.shape[1:]),
                dtype=batch.dtype,
                chunks=(max(1, min(4096, 2**20 // max(batch[0].nbytes, 1))), *batch.shape[1:]),
            )
        start = len(self.dataset)
        self.dataset.resize(start + len(batch), axis=0)
        self.dataset[start:] = batch


# ---------------------------------------------------------------------------------------------
# writing: a copy of the input plus the new elements


def write_new_elements(source_path, dest_path, adata: AnnData, paths: list[str]) -> None:
    """Copy ``source_path`` to ``dest_path`` and write the elements ``paths`` of ``adata``.

    ``paths`` are ``"obs/<column>"``, ``"var/<column>"``, ``"obsm/<key>"``, ``"varm/<key>"``,
    ``"layers/<key>"`` or ``"uns/<key>"``; an element already in the file is replaced. Nothing
    else of the input is read or rewritten. The caller stages ``dest_path`` (a temporary name).
    """
    shutil.copyfile(source_path, dest_path)
    with h5py.File(dest_path, "r+") as f:
        for path in paths:
            attr, name = path.split("/", 1)
            if attr in ("obs", "var"):
                _write_column(f, attr, name, getattr(adata, attr)[name])
                continue
            mapping = adata.uns if attr == "uns" else getattr(adata, attr)
            group = _group(f, attr)
            if name in group:
                del group[name]
            if isinstance(mapping[name], h5py.Dataset):  # spilled: copied by HDF5, not loaded
                group.copy(mapping[name], name)
                group[name].attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
            else:
                write_elem(group, name, mapping[name])


def _group(f: h5py.File, name: str) -> h5py.Group:
    if name not in f:
        write_elem(f, name, {})
    return f[name]


def _write_column(f: h5py.File, attr: str, column: str, values) -> None:
    group = f[attr]
    if column in (group.attrs.get("_index"), "__categories"):
        raise ValueError(f"cannot write the column {column!r} of {attr}: reserved name")
    if column in group:
        del group[column]
    write_elem(group, column, values.values)
    order = [str(c) for c in group.attrs.get("column-order", [])]
    if column not in order:
        order.append(column)
        group.attrs["column-order"] = np.asarray(order, dtype=object)

"""Reading the features a model sees from an AnnData: X, a layer or an obsm representation, in
memory, sparse or in a file, a block of rows at a time.

Everything a file declares is checked before it sizes an allocation or reaches scipy's C code
(:func:`check_sparse_structure`, :data:`READ_BUDGET_BYTES`); the preprocessing fitted on those
rows is :mod:`.preprocessing`.
"""

from __future__ import annotations

import logging

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from anndata.abc import CSCDataset, CSRDataset

from .errors import InputError

log = logging.getLogger("anndata_rnn")

#: the preprocessing fit reads at most this many bytes of dense float32 (a seeded subset of the
#: training sequences beyond it), and one streamed read at most :data:`READ_BUDGET_BYTES`: what
#: a file declares (10⁵ × 10⁵ through fill values or compression) cannot size the allocations
FIT_BUDGET_BYTES = 512 << 20
READ_BUDGET_BYTES = 256 << 20


def resolve_rep(adata: AnnData, use_rep: str) -> str:
    """Accept both spellings of a representation (``X_pca`` / ``pca``)."""
    for candidate in (use_rep, f"X_{use_rep}", use_rep.removeprefix("X_")):
        if candidate in adata.obsm:
            return candidate
    available = ", ".join(adata.obsm.keys()) or "none"
    raise InputError(f"obsm has no representation {use_rep!r}; available: {available}")


class FeatureSource:
    """The matrix a model reads: X, ``layers[layer]`` or ``obsm[use_rep]``, by row blocks.

    Works on in-memory and backed AnnData; only the requested rows are read.
    """

    def __init__(
        self,
        adata: AnnData,
        *,
        layer: str | None = None,
        use_rep: str | None = None,
        gene_symbols: str | None = None,
    ):
        if layer is not None and use_rep is not None:
            raise InputError("give either layer or use_rep, not both")
        self.layer = layer
        self.use_rep = None
        self.names_from = "var_names"  # what the gene names are read from (for messages)
        if use_rep is not None:
            self.use_rep = resolve_rep(adata, use_rep)
            self.matrix = adata.obsm[self.use_rep]
            self.feature_names = np.asarray(
                [f"{self.use_rep}_{i}" for i in range(self.matrix.shape[1])], dtype=object
            )
            self.description = f"obsm[{self.use_rep!r}]"
        else:
            if layer is not None:
                if layer not in adata.layers:
                    available = ", ".join(adata.layers.keys()) or "none"
                    raise InputError(f"no layer {layer!r}; available layers: {available}")
                self.matrix = adata.layers[layer]
                self.description = f"layers[{layer!r}]"
            else:
                if adata.X is None:
                    raise InputError("the AnnData has no X: give --layer or --use-rep")
                self.matrix = adata.X
                self.description = "X"
            if gene_symbols is not None:
                if gene_symbols not in adata.var.columns:
                    raise InputError(
                        f"var has no column {gene_symbols!r} (gene_symbols); available: "
                        + ", ".join(map(str, adata.var.columns))
                    )
                self.feature_names = adata.var[gene_symbols].astype(str).to_numpy(dtype=object)
                self.names_from = f"var[{gene_symbols!r}]"
            else:
                self.feature_names = np.asarray(adata.var_names, dtype=object)
                self.names_from = "var_names"
        check_sparse_structure(self.matrix, self.description)
        self.matrix = _same_index_dtypes(self.matrix)
        if isinstance(self.matrix, CSCDataset):
            log.warning(
                "%s is stored by column (CSC) in the file: every read of cells goes through the "
                "whole matrix, slow on large files; store it by row (adata.X = adata.X.tocsr(), "
                "then write_h5ad)",
                self.description,
            )
        self.n_rows = adata.n_obs
        if adata.n_obs == 0 or len(self.feature_names) == 0:
            raise InputError(
                f"the AnnData is empty ({adata.n_obs} obs × {len(self.feature_names)} features): "
                "give a file with observations and genes"
            )

    @property
    def on_disk(self) -> bool:
        """Whether the matrix is read from the file (an HDF5 dataset or anndata's sparse
        dataset, as in :func:`anndata_rnn.streaming.open_lazy` or a backed AnnData)."""
        return isinstance(self.matrix, h5py.Dataset | CSRDataset | CSCDataset)

    @property
    def kind(self) -> str:
        return "rep" if self.use_rep else ("layer" if self.layer else "X")

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """Dense float32 block of the given (sorted, unique) rows; rejects ±inf."""
        block = self._rows(rows)
        if sp.issparse(block):
            block = block.toarray()
        block = np.asarray(block)
        if block.dtype.kind == "f" and block.dtype.itemsize > 4:
            _check_float32_range(block, self.description)
        block = block.astype(np.float32, copy=False)
        if np.isinf(block).any():
            raise InputError(
                f"{self.description} contains {int(np.isinf(block).sum())} infinite values: "
                "replace them (e.g. with NaN, which is imputed) before training"
            )
        if self.use_rep is not None and np.isnan(block).any():
            raise InputError(
                f"{self.description} contains {int(np.isnan(block).sum())} NaN values: "
                "recompute the representation on complete data"
            )
        return block

    def read_sparse_rows(self, rows: np.ndarray) -> sp.csr_matrix | None:
        """The given (sorted, unique) rows as a canonical float32 CSR block, when the matrix is
        stored sparse by row and its stored values are finite; ``None`` otherwise (read them
        with :meth:`read_rows`, which reports what is wrong). Predict's profile encoding works
        on the stored values only (a sixth of a count matrix's entries)."""
        if self.use_rep is not None or not (
            (sp.issparse(self.matrix) and self.matrix.format == "csr")
            or isinstance(self.matrix, CSRDataset)
        ):
            return None
        block = self._rows(rows)
        if not sp.issparse(block) or block.format != "csr":
            return None
        if block.data.dtype.kind == "f" and block.data.dtype.itemsize > 4:
            with np.errstate(invalid="ignore"):
                if (np.abs(block.data) > np.finfo(np.float32).max).any():
                    return None
        block = sp.csr_matrix(block, dtype=np.float32, copy=False)
        if not np.isfinite(block.data).all():
            return None
        if not block.has_canonical_format:
            block = block.copy()
            block.sum_duplicates()
        return block

    def _rows(self, rows: np.ndarray):
        """The given (sorted, unique) rows as stored: dense, or sparse in memory with the
        indices of a file's rows checked."""
        rows = np.asarray(rows, dtype=np.int64)
        matrix = self.matrix
        if hasattr(matrix, "iloc"):  # obsm may hold a DataFrame
            block = matrix.iloc[rows].to_numpy()
        elif len(rows) == self.n_rows and not _is_backed(matrix):
            block = matrix
        elif len(rows) and rows[-1] - rows[0] + 1 == len(rows):
            block = matrix[int(rows[0]) : int(rows[-1]) + 1]  # a run of rows: read as a slice
        elif _is_backed(matrix) and len(rows):
            block = _read_spans(matrix, rows)
        else:
            block = matrix[rows]
        if sp.issparse(block) or hasattr(block, "to_memory"):
            block = block.to_memory() if hasattr(block, "to_memory") else block
            if sp.issparse(block) and _is_backed(matrix):
                # the file's indptr was checked when it was opened; the indices of the rows read
                # are checked here, chunk by chunk, before scipy's C code dereferences them
                minor = block.shape[0] if block.format == "csc" else block.shape[1]
                _check_minor_indices(block.indices, minor, self.description)
            return block if sp.issparse(block) else np.asarray(block)
        return block


#: entries of a sparse matrix's ``indices`` checked per read (bounds the memory of the check)
INDEX_CHECK_CHUNK = 1 << 22


def check_sparse_structure(matrix, description: str) -> None:
    """Refuse a CSR/CSC matrix whose arrays do not describe a valid matrix.

    scipy trusts ``indptr`` and ``indices``: an index outside the matrix or a decreasing
    ``indptr`` makes its C code write outside its arrays (a crash) or put a value in another
    cell (silent corruption). In memory every array is checked; in a file ``indptr`` (one entry
    per row) is checked here and ``indices`` per block read (:meth:`FeatureSource.read_rows`),
    except for CSC, whose row reads go through the whole matrix: its indices are checked here in
    chunks of :data:`INDEX_CHECK_CHUNK`.
    """
    if sp.issparse(matrix):
        if matrix.format not in ("csr", "csc"):
            return
        indptr, indices, n_data = matrix.indptr, matrix.indices, matrix.data.shape[0]
        by_column = matrix.format == "csc"
    elif isinstance(matrix, CSRDataset | CSCDataset):
        group = matrix.group
        try:
            indptr = group["indptr"][()]
            indices, n_data = group["indices"], group["data"].shape[0]
        except Exception as exc:
            raise _bad_sparse(
                description, f"its arrays cannot be read ({type(exc).__name__})"
            ) from None
        by_column = isinstance(matrix, CSCDataset)
    else:
        return
    shape = tuple(int(n) for n in matrix.shape)
    major, minor = (shape[1], shape[0]) if by_column else shape
    if indptr.ndim != 1 or indptr.shape[0] != major + 1:
        raise _bad_sparse(
            description,
            f"indptr has {indptr.shape[0] if indptr.ndim == 1 else indptr.shape} entries "
            f"for {major} {'columns' if by_column else 'rows'} (needs {major + 1})",
        )
    if indptr.dtype.kind not in "iu" or getattr(indices, "dtype", np.int64).kind not in "iu":
        raise _bad_sparse(description, "indptr and indices must be integers")
    if indptr[0] != 0 or np.any(np.diff(indptr) < 0):
        raise _bad_sparse(description, "indptr must start at 0 and never decrease")
    if int(indptr[-1]) != n_data or indices.shape[0] != n_data:
        raise _bad_sparse(
            description,
            f"indptr ends at {int(indptr[-1])} but there are {indices.shape[0]} indices and "
            f"{n_data} values",
        )
    if sp.issparse(matrix) or by_column:
        for start in range(0, n_data, INDEX_CHECK_CHUNK):
            _check_minor_indices(indices[start : start + INDEX_CHECK_CHUNK], minor, description)


def _check_minor_indices(indices: np.ndarray, n: int, description: str) -> None:
    if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= n):
        raise _bad_sparse(
            description,
            f"indices outside 0..{n - 1} (found {int(indices.min())}..{int(indices.max())})",
        )


def _bad_sparse(description: str, problem: str) -> InputError:
    return InputError(
        f"{description} is a damaged sparse matrix: {problem}; rewrite the file with anndata "
        "(e.g. adata.X = scipy.sparse.csr_matrix(adata.X); adata.write_h5ad(...))"
    )


def _check_float32_range(block: np.ndarray, description: str) -> None:
    """Refuse finite values that float32 (what the network computes in) cannot hold; casting
    would silently turn them into ±inf (and numpy would print a raw overflow warning)."""
    limit = np.finfo(np.float32).max
    with np.errstate(invalid="ignore"):
        beyond = np.isfinite(block) & (np.abs(block) > limit)
    if beyond.any():
        largest = float(np.abs(block[beyond]).max())
        raise InputError(
            f"{description} has {int(beyond.sum())} values beyond float32's range (largest "
            f"{largest:.3g}, float32 holds up to {float(limit):.3g}): rescale the data (e.g. "
            "log1p) or fix those entries"
        )


def duplicated_names(names: np.ndarray, limit: int = 3) -> str:
    """'' when ``names`` are unique, else a short list like "'g0' (2×), 'g7' (3×)"."""
    counts = pd.Series(np.asarray(names, dtype=object)).value_counts(sort=False)
    repeated = counts[counts > 1]
    if repeated.empty:
        return ""
    shown = ", ".join(f"{name!r} ({n}×)" for name, n in repeated.iloc[:limit].items())
    more = f" and {len(repeated) - limit} more" if len(repeated) > limit else ""
    return shown + more


def _same_index_dtypes(matrix):
    """A CSR/CSC matrix whose ``indptr`` and ``indices`` share one dtype (sharing the arrays).

    anndata writes ``indptr`` as int64 and ``indices`` as int32; scipy then converts the whole
    ``indices`` array to int64 on every row selection (a copy of the matrix's size per batch).
    """
    if not sp.issparse(matrix) or matrix.format not in ("csr", "csc"):
        return matrix
    if matrix.indptr.dtype == matrix.indices.dtype:
        return matrix
    if matrix.nnz < np.iinfo(np.int32).max and max(matrix.shape) < np.iinfo(np.int32).max:
        indptr, indices = (
            matrix.indptr.astype(np.int32),
            matrix.indices.astype(np.int32, copy=False),
        )
    else:
        indptr, indices = matrix.indptr.astype(np.int64), matrix.indices.astype(np.int64)
    return type(matrix)((matrix.data, indices, indptr), shape=matrix.shape, copy=False)


def _is_backed(matrix) -> bool:
    return not isinstance(matrix, np.ndarray | sp.spmatrix | sp.sparray)


#: a matrix on disk is read in slices of at most this many rows (32 MB of 2,000 float32 genes)
SLICE_ROWS = 4096
#: a slice is read whole (the rows not asked for are dropped) when at least 1 in this many of its
#: rows is asked for: a slice costs ~2 µs a row, a row read on its own ~250 µs (CSR on disk)
SLICE_DENSITY = 64


def _read_spans(matrix, rows: np.ndarray):
    """``matrix[rows]`` of a matrix on disk (sorted, unique ``rows``), read in slices.

    Measured on a 100,000 × 2,000 CSR file: 256 scattered rows 65 ms one by one, 8,192
    consecutive rows 18 ms as one slice. Rows are taken in groups spanning at most
    :data:`SLICE_ROWS` rows; a group dense enough is read as one slice, the other rows in one
    row-by-row read per run of sparse groups (each read of anndata's costs ~5 ms on its own).
    """
    reads: list[tuple[bool, np.ndarray]] = []  # (as a slice, rows)
    start = 0
    while start < len(rows):
        stop = int(np.searchsorted(rows, rows[start] + SLICE_ROWS, side="left"))
        group = rows[start:stop]
        whole = len(group) * SLICE_DENSITY >= group[-1] - group[0] + 1
        if not whole and reads and not reads[-1][0]:
            reads[-1] = (False, np.concatenate([reads[-1][1], group]))
        else:
            reads.append((whole, group))
        start = stop
    blocks = []
    for whole, group in reads:
        first = int(group[0])
        block = matrix[first : int(group[-1]) + 1] if whole else matrix[group]
        block = block.to_memory() if hasattr(block, "to_memory") else block
        if whole and len(group) < block.shape[0]:
            block = block[group - first]
        blocks.append(block)
    if len(blocks) == 1:
        return blocks[0]
    if sp.issparse(blocks[0]):
        return sp.vstack(blocks, format="csr")
    return np.concatenate([np.asarray(b) for b in blocks])

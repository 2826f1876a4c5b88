"""Reading features and the preprocessing that is fitted on the training split only.

Order of operations (the same at training and at prediction time):

1. read a block of obs rows from X, a layer or an obsm representation (:class:`FeatureSource`);
2. raw counts -> ``normalize_total`` + ``log1p`` (scanpy), with the training median total;
3. select / reorder the model's genes (highly variable genes or a var column at training time,
   matching by name at prediction time; missing genes become NaN);
4. assemble sequences (:mod:`.sequences`);
5. impute NaN (linear interpolation along time within a sequence, then the training mean);
6. standardize each feature with training statistics; append the standardized time gap.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from anndata.abc import CSCDataset, CSRDataset

from . import timing
from .errors import InputError
from .sequences import Layout, SequenceIndex, assemble

log = logging.getLogger("anndata_rnn")

NORMALIZE_CHOICES = ("auto", "always", "never")
SCALE_CHOICES = ("feature", "sequence")
#: how missing values inside a sequence are filled: linear interpolation along time (sees later
#: steps; classify, embed) or the last observed value (causal; forecast)
IMPUTATION_CHOICES = ("interpolate", "causal")
#: sequences encoded per chunk (bounds the memory of one read)
CHUNK_SEQUENCES = 4096
#: the preprocessing fit reads at most this many bytes of dense float32 (a seeded subset of the
#: training sequences beyond it), and one streamed read at most :data:`READ_BUDGET_BYTES`: what
#: a file declares (10⁵ × 10⁵ through fill values or compression) cannot size the allocations
FIT_BUDGET_BYTES = 512 << 20
READ_BUDGET_BYTES = 256 << 20
#: columns whose training statistics are computed together (bounds the float64 copies)
STATISTICS_COLUMNS = 64


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
            block = block.toarray() if sp.issparse(block) else np.asarray(block)
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


def looks_like_counts(block: np.ndarray) -> tuple[bool, str]:
    """Whether a block looks like raw counts, and a phrase saying what was found."""
    values = block[np.isfinite(block)]
    if values.size == 0:
        return False, "no finite values"
    vmin, vmax = float(values.min()), float(values.max())
    integer = bool(np.all(values == np.round(values)))
    found = f"min {vmin:.3g}, max {vmax:.3g}, {'integers' if integer else 'non-integers'}"
    return (vmin >= 0 and integer and vmax > 30), found


def looks_like_levels(block: np.ndarray) -> tuple[bool, str]:
    """Whether a block looks like unlogged expression levels (FPKM, TPM, CPM, RPKM...):
    non-negative, not all integers, and heavy-tailed, i.e. a maximum above 50 (log-scale values
    rarely pass ~20) and a 99th percentile of the positive values at least 10 times their median.
    Returns the answer and a phrase saying what was found."""
    values = block[np.isfinite(block)]
    if values.size == 0:
        return False, "no finite values"
    vmin, vmax = float(values.min()), float(values.max())
    positive = values[values > 0]
    if vmin < 0 or positive.size == 0:
        return False, f"min {vmin:.3g}, max {vmax:.3g}"
    if positive.size > 1_000_000:  # a fixed subsample keeps the check cheap on big blocks
        positive = np.random.default_rng(0).choice(positive, 1_000_000, replace=False)
    median, q99 = (float(v) for v in np.quantile(positive, [0.5, 0.99]))
    ratio = q99 / median if median > 0 else np.inf
    integer = bool(np.all(values == np.round(values)))
    found = (
        f"min {vmin:.3g}, max {vmax:.3g}, {'integers' if integer else 'non-integers'}, "
        f"99th percentile of the positive values {ratio:.3g} × their median"
    )
    return (not integer and vmax > 50 and ratio >= 10), found


#: profile layout: with more genes than this (or more steps than PROFILE_MAX_STEPS), the
#: default ``n_top_genes="auto"`` selects PROFILE_TOP_GENES highly variable genes
PROFILE_MAX_GENES = 4000
PROFILE_MAX_STEPS = 128
PROFILE_TOP_GENES = 2000


def resolve_n_top_genes(
    n_top_genes, layout: str, n_genes: int, chunk_size: int | None
) -> tuple[int | None, str | None]:
    """``"auto"`` -> 2,000 genes for a wide profile (> 4,000 genes or > 128 steps), else None;
    ``None`` or 0 -> no selection; an integer -> that many. Returns ``(n, reason)``."""
    if n_top_genes is None or (isinstance(n_top_genes, int | np.integer) and n_top_genes == 0):
        return None, None
    if isinstance(n_top_genes, str):
        if n_top_genes != "auto":
            raise InputError(f"n_top_genes must be an integer, 0 or 'auto', got {n_top_genes!r}")
        steps = -(-n_genes // chunk_size) if chunk_size else 0
        wide = n_genes > PROFILE_MAX_GENES or steps > PROFILE_MAX_STEPS
        if Layout.of(layout).steps_are_gene_chunks and wide and n_genes > PROFILE_TOP_GENES:
            reason = (
                f"{n_genes} genes"
                + (f" ({steps} steps of {chunk_size})" if chunk_size else "")
                + f" in the profile layout: selecting the {PROFILE_TOP_GENES} most highly "
                "variable genes of the training rows (scanpy); give n_top_genes=0 "
                "(--n-top-genes 0) to keep every gene or another number"
            )
            return PROFILE_TOP_GENES, reason
        return None, None
    if int(n_top_genes) < 0:
        raise InputError(f"n_top_genes must be >= 0, got {n_top_genes}")
    return int(n_top_genes), None


@dataclass
class Preprocessor:
    """Preprocessing fitted on the training split; stored in the model file."""

    layout: str
    source_kind: str = "X"
    source_name: str = ""
    normalize: bool = False
    log1p: bool = False
    target_sum: float = 0.0
    features: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    std: np.ndarray = field(default_factory=lambda: np.zeros(0))
    use_time: bool = True
    dt_mean: float = 0.0
    dt_std: float = 1.0
    scale: str = "feature"
    imputation: str = "interpolate"

    # -- configuration ----------------------------------------------------------------------
    def config(self) -> dict:
        return {
            "layout": self.layout,
            "source_kind": self.source_kind,
            "source_name": self.source_name,
            "normalize": self.normalize,
            "log1p": self.log1p,
            "target_sum": self.target_sum,
            "use_time": self.use_time,
            "dt_mean": self.dt_mean,
            "dt_std": self.dt_std,
            "scale": self.scale,
            "imputation": self.imputation,
        }

    def arrays(self) -> dict[str, np.ndarray]:
        return {"features": self.features, "mean": self.mean, "std": self.std}

    @classmethod
    def from_stored(cls, config: dict, arrays: dict[str, np.ndarray]) -> Preprocessor:
        return cls(
            layout=config["layout"],
            source_kind=config["source_kind"],
            source_name=config["source_name"],
            normalize=bool(config["normalize"]),
            log1p=bool(config.get("log1p", False)),
            target_sum=float(config["target_sum"]),
            features=np.asarray(arrays["features"], dtype=object),
            mean=np.asarray(arrays["mean"], dtype=np.float64),
            std=np.asarray(arrays["std"], dtype=np.float64),
            use_time=bool(config["use_time"]),
            dt_mean=float(config["dt_mean"]),
            dt_std=float(config["dt_std"]),
            scale=config["scale"],
            imputation=config.get("imputation", "interpolate"),
        )

    def missing_features(self, data_features: np.ndarray) -> np.ndarray:
        """Model features absent from the data.

        Raises
        ------
        InputError
            When a model gene appears more than once in the data: which column to use would be
            a guess (genes the model does not use may repeat).
        """
        data_features = np.asarray(data_features, dtype=object)
        used = data_features[np.isin(data_features, self.features)]
        repeated = duplicated_names(used)
        if repeated:
            raise InputError(
                f"the data has duplicated names for genes the model uses: {repeated}; the match "
                "would be ambiguous: make the names unique (adata.var_names_make_unique(), or a "
                "unique --gene-symbols column)"
            )
        return np.setdiff1d(self.features, data_features)

    # -- fitting ------------------------------------------------------------------------------
    def fit(
        self,
        source: FeatureSource,
        index: SequenceIndex,
        train_ids: np.ndarray,
        *,
        normalize: str = "auto",
        n_top_genes: int | str | None = None,
        gene_subset: np.ndarray | None = None,
        gene_order: np.ndarray | None = None,
        chunk_size: int | None = None,
    ) -> Preprocessor:
        """Fit on the training sequences ``train_ids``.

        ``normalize="auto"``: raw counts -> normalize_total + log1p; unlogged non-integer levels
        (FPKM/TPM/CPM-like, :func:`looks_like_levels`) -> log1p only; anything else as it is.
        ``n_top_genes``: an integer selects that many highly variable genes (training rows);
        ``"auto"`` selects 2,000 in a wide profile (see :func:`resolve_n_top_genes`; needs
        ``chunk_size`` to count steps); None or 0 keeps every gene.
        """
        if normalize not in NORMALIZE_CHOICES:
            raise InputError(f"normalize must be one of {NORMALIZE_CHOICES}, got {normalize!r}")
        if self.scale not in SCALE_CHOICES:
            raise InputError(f"scale must be one of {SCALE_CHOICES}, got {self.scale!r}")
        self.source_kind = source.kind
        self.source_name = source.use_rep or source.layer or ""
        rows = index.obs_rows(train_ids)
        block = source.read_rows(rows)
        is_counts, found = looks_like_counts(block)
        if source.kind == "rep":
            self.normalize = False
        elif normalize == "always":
            if np.nanmin(block) < 0:
                raise InputError(
                    f"{source.description} has negative values ({found}) but normalize='always' "
                    "expects raw counts: give the counts layer (--layer counts) or --normalize never"
                )
            self.normalize = True
        else:
            self.normalize = normalize == "auto" and is_counts
        self.log1p = False
        if source.kind != "rep" and normalize == "auto" and not self.normalize:
            self.log1p, found_levels = looks_like_levels(block)
            if self.log1p:
                found = (
                    f"{found_levels}: non-negative, non-integer, heavy-tailed, like FPKM/TPM/CPM"
                )
        if source.kind != "rep":
            if self.normalize:
                action = "applying normalize_total + log1p (scanpy)"
            elif self.log1p:
                action = "applying log1p only (give --normalize never to keep the values)"
            else:
                action = "using the values as they are"
            log.info(
                "checked %s on %d training rows: %s -> %s",
                source.description,
                len(rows),
                found,
                action,
            )
        if self.normalize:
            totals = np.nansum(block, axis=1)
            self.target_sum = float(np.median(totals[totals > 0])) if (totals > 0).any() else 1.0
            block = self._normalize(block)
        elif self.log1p:
            block = self._log1p(block)

        names = source.feature_names
        if not Layout.of(self.layout).one_feature and source.kind != "rep":
            if gene_subset is None:
                n_top_genes, reason = resolve_n_top_genes(
                    n_top_genes, self.layout, len(names), chunk_size
                )
                if reason:
                    log.info(reason)
            if gene_subset is not None:
                keep = np.asarray(gene_subset, dtype=bool)
            elif n_top_genes is not None:
                if n_top_genes < 1:
                    raise InputError(f"n_top_genes must be >= 1, got {n_top_genes}")
                if n_top_genes >= len(names):
                    log.info(
                        "n_top_genes=%d is not below the %d genes: all genes are used",
                        n_top_genes,
                        len(names),
                    )
                keep = _highly_variable(block, n_top_genes)
            else:
                keep = np.ones(len(names), dtype=bool)
            if keep.sum() == 0:
                raise InputError("gene selection kept no genes: check the gene subset column")
            if keep.sum() < len(names):
                log.info("selected %d of %d genes", int(keep.sum()), len(names))
            columns = np.flatnonzero(keep)
            if gene_order is not None:  # profile: genes read in the order of a var column
                columns = columns[np.argsort(np.asarray(gene_order)[columns], kind="stable")]
            self.features = np.asarray(names[columns], dtype=object)
            block = block[:, columns]
        else:
            self.features = np.asarray(names, dtype=object)
        if source.kind != "rep":
            repeated = duplicated_names(self.features)
            if repeated:
                fix = (
                    "make them unique first (adata.var_names_make_unique())"
                    if source.names_from == "var_names"
                    else "give a column of unique gene names"
                )
                raise InputError(
                    f"{source.names_from} has duplicated gene names: {repeated}; a model needs "
                    f"one column per gene name: {fix}"
                )

        if Layout.of(self.layout).steps_are_gene_chunks:
            # a profile step mixes genes, so genes are standardized per row before chunking
            self._fit_statistics(block[:, None, :], np.zeros((len(block), 1)))
        else:
            values = assemble(index, train_ids, rows, block)
            self._fit_statistics(values, index.times[train_ids])
        return self

    def _fit_statistics(self, values: np.ndarray, times: np.ndarray) -> None:
        # float64: a constant float32 column otherwise gets a std of ~1e-8 instead of 0, and
        # standardizing by it blows any later deviation up by 1e8
        # (a block of columns at a time: a float64 copy of the whole block would take several
        # times its memory)
        flat = values.reshape(-1, values.shape[-1])
        mean, std = np.empty(flat.shape[1]), np.empty(flat.shape[1])
        # a feature without any value in the training rows gives numpy's "mean of empty slice"
        # warnings: reported below as one line instead
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            for start in range(0, flat.shape[1], STATISTICS_COLUMNS):
                columns = slice(start, start + STATISTICS_COLUMNS)
                part = flat[:, columns].astype(np.float64)
                mean[columns] = np.nanmean(part, axis=0)
                std[columns] = np.nanstd(part, axis=0)
        empty = ~np.isfinite(mean)
        if (
            empty.any()
            and not Layout.of(self.layout).one_feature
            and len(self.features) == len(mean)
        ):
            log.warning(
                "%d genes have no value in the training rows (e.g. %s): they are filled with 0 "
                "and carry no information",
                int(empty.sum()),
                ", ".join(map(str, self.features[empty][:3])),
            )
        mean = np.where(np.isfinite(mean), mean, 0.0)
        constant = ~np.isfinite(std) | (std <= 1e-6 * np.maximum(1.0, np.abs(mean)))
        std = np.where(constant, 1.0, std)
        self.mean, self.std = mean.astype(np.float64), std.astype(np.float64)
        if self.use_time and Layout.of(self.layout).is_time_series:
            # a sequence's first step has no gap before it: only real gaps enter the statistics
            dt = _time_gaps(times)[:, 1:]
            valid = np.isfinite(times[:, 1:])
            if not valid.any():
                dt, valid = _time_gaps(times), np.isfinite(times)
            self.dt_mean = float(dt[valid].mean())
            sd = float(dt[valid].std())
            self.dt_std = sd if sd > 1e-8 else 1.0

    def _normalize(self, block: np.ndarray) -> np.ndarray:
        if np.nanmin(block) < 0:
            raise InputError(
                "negative values in a matrix this model normalizes as raw counts: give the raw "
                "counts (the same kind of matrix the model was trained on)"
            )
        missing = np.isnan(block)  # (no ±inf: refused)
        tmp = AnnData(np.where(missing, np.float32(0), block))
        import scanpy as sc  # lazy: scanpy loads matplotlib.pyplot

        sc.pp.normalize_total(tmp, target_sum=self.target_sum)
        sc.pp.log1p(tmp)
        out = np.asarray(tmp.X, dtype=np.float32)
        out[missing] = np.nan
        return out

    def _log1p(self, block: np.ndarray) -> np.ndarray:
        if np.nanmin(block) < 0:
            raise InputError(
                "negative values in a matrix this model log-transforms (it was trained on "
                "unlogged levels such as FPKM/TPM): give the same kind of matrix as at training"
            )
        return np.log1p(block).astype(np.float32)

    # -- applying -------------------------------------------------------------------------------
    def transform_rows(self, block: np.ndarray, data_features: np.ndarray) -> np.ndarray:
        """Normalize a raw row block and put its columns in the model's feature order."""
        if self.normalize:
            block = self._normalize(block)
        elif self.log1p:
            block = self._log1p(block)
        if Layout.of(self.layout).one_feature:
            return block
        if not (
            len(data_features) == len(self.features)
            and np.array_equal(data_features, self.features)
        ):
            lookup = {name: i for i, name in enumerate(data_features)}
            out = np.full((block.shape[0], len(self.features)), np.nan, dtype=np.float32)
            source_cols = np.array([lookup.get(f, -1) for f in self.features])
            present = source_cols >= 0
            out[:, present] = block[:, source_cols[present]]
            block = out
        if Layout.of(self.layout).steps_are_gene_chunks:
            block = np.where(np.isnan(block), self.mean.astype(np.float32), block)
            block = (block - self.mean.astype(np.float32)) / self.std.astype(np.float32)
        return block

    def transform_sequences(self, values: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Impute, standardize and add the time-gap channel; padding becomes 0."""
        if Layout.of(self.layout).steps_are_gene_chunks:  # already imputed and standardized per row
            return _padding_to_zero(values)
        valid = np.isfinite(times)
        values = values.copy()
        if (np.isnan(values) & valid[..., None]).any():
            _interpolate_along_time(values, times, valid)
        filled = np.isnan(values) & valid[..., None]
        if filled.any():
            values = np.where(filled, self.mean.astype(np.float32), values)
        if self.scale == "sequence":
            values = _zscore_within(values, valid)
        else:
            values = (values - self.mean.astype(np.float32)) / self.std.astype(np.float32)
        values[~valid] = 0.0
        if self.use_time and Layout.of(self.layout).is_time_series:
            dt = gap_channel(self, _time_gaps(times))
            # no gap before the first step: the standardized mean (0), not an extreme value
            # that says nothing (on regular sampling a first gap of 0 standardizes to ~ -1/cv)
            dt[:, 0] = 0.0
            dt[~valid] = 0.0
            values = np.concatenate([values, dt[..., None]], axis=-1)
        return values.astype(np.float32)

    def inverse_values(self, standardized: np.ndarray) -> np.ndarray:
        """Standardized feature values -> the model's input units (forecasts)."""
        return standardized * self.std + self.mean


def _padding_to_zero(values: np.ndarray) -> np.ndarray:
    """``np.nan_to_num(values, nan=0.0).astype(np.float32)`` bit for bit, in two passes over the
    values instead of five (predict encodes every cell through it; issue 21)."""
    out = values.astype(np.float32)  # a new array, as nan_to_num's
    np.copyto(out, np.float32(0), where=np.isnan(out))
    if values.dtype == np.float32 and np.isinf(out).any():  # nan_to_num clips ±inf to ±max
        return np.nan_to_num(values, nan=0.0).astype(np.float32)
    return out


def _highly_variable(block: np.ndarray, n_top_genes: int) -> np.ndarray:
    tmp = AnnData(np.nan_to_num(block, nan=0.0))
    n = min(n_top_genes, block.shape[1])
    import scanpy as sc  # lazy: scanpy loads matplotlib.pyplot

    sc.pp.highly_variable_genes(tmp, n_top_genes=n, flavor="seurat", inplace=True)
    return tmp.var["highly_variable"].to_numpy(dtype=bool)


def _time_gaps(times: np.ndarray) -> np.ndarray:
    dt = np.zeros_like(times, dtype=np.float64)
    dt[:, 1:] = np.diff(times, axis=1)
    dt[~np.isfinite(dt)] = 0.0
    return dt


def _interpolate_along_time(values: np.ndarray, times: np.ndarray, valid: np.ndarray) -> None:
    """Linear interpolation of NaN along time, in place; ends take the nearest value."""
    seqs, feats = np.nonzero(np.isnan(values).any(axis=1) & valid.any(axis=1)[:, None])
    for s, f in zip(seqs, feats, strict=True):
        t = times[s, valid[s]]
        v = values[s, valid[s], f]
        known = ~np.isnan(v)
        if known.sum() == 0:
            continue  # left for the training mean
        v[~known] = np.interp(t[~known], t[known], v[known])
        values[s, valid[s], f] = v


def _zscore_within(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    weights = valid[..., None].astype(np.float32)
    count = np.maximum(weights.sum(axis=1, keepdims=True), 1.0)
    vals = np.where(valid[..., None], values, 0.0)
    mean = vals.sum(axis=1, keepdims=True) / count
    var = (((vals - mean) * weights) ** 2).sum(axis=1, keepdims=True) / count
    std = np.sqrt(var)
    std = np.where(std > 1e-8, std, 1.0)
    return ((vals - mean) / std).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# encoding: the one path from a sequence index to standardized network inputs


def imputed_count(encoded) -> int:
    """Values imputed over all sequences (``encoded.n_missing`` summed)."""
    return int(encoded.n_missing.sum())


def missing_fraction_of(encoded, prep: Preprocessor) -> np.ndarray:
    """Fraction of each sequence's values that were missing before imputation."""
    n_features = 1 if Layout.of(prep.layout).one_feature else len(prep.features)
    return encoded.n_missing / np.maximum(encoded.lengths * n_features, 1)


@dataclass
class Encoded:
    """Standardized sequences and what was really observed (imputed values are never targets).

    ``values`` ``(n, steps, n_features [+ 1 time-gap channel])`` float32, 0 on padding;
    ``observed`` ``(n, steps, n_features)`` bool, True where a real step had a value;
    ``n_missing`` ``(n,)`` values of each sequence that were missing and imputed.
    """

    values: np.ndarray
    observed: np.ndarray
    lengths: np.ndarray
    times: np.ndarray
    n_features: int
    n_missing: np.ndarray

    imputed = property(lambda self: imputed_count(self))
    missing_fraction = missing_fraction_of


@timing.timed("preprocessing")
def encode(
    index: SequenceIndex,
    source: FeatureSource,
    prep: Preprocessor,
    sequence_ids: np.ndarray | None = None,
    *,
    chunk: int = CHUNK_SEQUENCES,
) -> Encoded:
    """Read, transform, assemble, impute and standardize sequences, chunk by chunk.

    Only the obs rows a chunk needs are read; missing values are filled as ``prep.imputation``
    says (interpolation along time, or the last observed value), then with the training mean.
    """
    if sequence_ids is None:
        sequence_ids = np.arange(index.n_sequences)
    if not index.layout_kind.one_feature:  # (var-series: every sequence reads every row anyway)
        rows = 1 if index.layout_kind.steps_are_gene_chunks else max(1, int(index.steps.shape[1]))
        row_bytes = 4 * len(source.feature_names) * rows
        chunk = max(1, min(chunk, READ_BUDGET_BYTES // row_bytes))
    parts, observed, missing = [], [], []
    for start in range(0, len(sequence_ids), chunk):
        ids = sequence_ids[start : start + chunk]
        rows = index.obs_rows(ids)
        with timing.phase("reading"):
            read = source.read_rows(rows)
        block = prep.transform_rows(read, source.feature_names)
        raw = assemble(index, ids, rows, block)
        real = (index.steps[ids] >= 0)[..., None]  # these sequences' steps only (not index.mask)
        seen = ~np.isnan(raw) & real
        observed.append(seen)
        missing.append((~seen & real).sum(axis=(1, 2)))
        if prep.imputation == "causal":
            raw = causal_fill(raw, ~np.isnan(raw), prep.mean)
        parts.append(prep.transform_sequences(raw, index.times[ids]))
    n_inputs = len(prep.mean) + int(prep.use_time and Layout.of(prep.layout).is_time_series)
    width = index.chunk_size if index.layout_kind.steps_are_gene_chunks else n_inputs
    return Encoded(
        values=np.concatenate(parts)
        if parts
        else np.zeros((0, index.max_steps, width), np.float32),
        observed=np.concatenate(observed) if observed else np.zeros((0, index.max_steps, 0), bool),
        lengths=(index.steps[sequence_ids] >= 0).sum(axis=1).astype(np.int64),
        times=index.times[sequence_ids],
        n_features=len(prep.mean),
        n_missing=np.concatenate(missing) if missing else np.zeros(0, dtype=np.int64),
    )


def causal_fill(raw: np.ndarray, seen: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Missing values -> the last observed value of the same sequence and feature, else the
    training mean: no input ever carries information from a later step."""
    if seen.all():
        return raw
    steps = np.arange(raw.shape[1])[None, :, None]
    last_seen = np.maximum.accumulate(np.where(seen, steps, -1), axis=1)
    n, _, f = raw.shape
    filled = raw[np.arange(n)[:, None, None], np.maximum(last_seen, 0), np.arange(f)[None, None, :]]
    filled = np.where(last_seen >= 0, filled, mean.astype(np.float32))
    return np.where(seen, raw, filled).astype(np.float32)


def gap_channel(prep: Preprocessor, gaps: np.ndarray) -> np.ndarray:
    """Raw time gaps -> the standardized time-gap input channel."""
    return ((np.nan_to_num(gaps, nan=0.0) - prep.dt_mean) / prep.dt_std).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# forecaster inputs: each step carries the time gap to the step it predicts


def network_inputs(
    enc: Encoded, prep: Preprocessor, ids: np.ndarray, last_gap: np.ndarray | None = None
) -> np.ndarray:
    """Inputs ``(n, steps, n_inputs)``: features of step t and the time gap to step t + 1.

    ``last_gap`` is the raw gap from each sequence's last step to the step forecast after it.
    """
    x = enc.values[ids].copy()
    if not prep.use_time:
        return x
    lengths = enc.lengths[ids]
    gap = x[..., -1].copy()
    gap[:, :-1] = x[:, 1:, -1]  # the gap to the next step is the next step's own gap channel
    last = np.zeros(len(ids)) if last_gap is None else np.asarray(last_gap, dtype=np.float64)
    gap[np.arange(len(ids)), lengths - 1] = gap_channel(prep, last)
    gap[np.arange(x.shape[1])[None, :] >= lengths[:, None]] = 0.0
    x[..., -1] = gap
    return x


def teacher_forcing(enc: Encoded, prep: Preprocessor, ids: np.ndarray):
    """Inputs, next-step targets and the mask of targets really observed."""
    x = network_inputs(enc, prep, ids)
    f = enc.n_features
    y = np.zeros((len(ids), x.shape[1], f), dtype=np.float32)
    observed = np.zeros((len(ids), x.shape[1], f), dtype=bool)
    y[:, :-1] = enc.values[ids, 1:, :f]
    observed[:, :-1] = enc.observed[ids, 1:]
    return x, y, observed


def future_gaps(enc: Encoded, future_times, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Times ``(n, horizon)`` of the future steps of every sequence and the gaps between them."""
    n = len(enc.lengths)
    last = enc.times[np.arange(n), enc.lengths - 1]
    if future_times is not None:
        times = np.tile(np.asarray(future_times, dtype=np.float64), (n, 1))
    else:
        dt = np.diff(enc.times, axis=1)
        with np.errstate(all="ignore"):
            median = np.nanmedian(np.where(np.isfinite(dt), dt, np.nan), axis=1)
        median = np.where(np.isfinite(median) & (median > 0), median, 1.0)
        times = last[:, None] + median[:, None] * np.arange(1, horizon + 1)[None, :]
    gaps = np.diff(np.concatenate([last[:, None], times], axis=1), axis=1)
    return times, gaps


def holdout_gaps(full: Encoded, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Times ``(n, k)`` of the held-out last steps and the gaps leading to each."""
    n = len(full.lengths)
    cols = full.lengths[:, None] - k + np.arange(k)[None, :]
    times = full.times[np.arange(n)[:, None], cols]
    before = full.times[np.arange(n)[:, None], cols - 1]
    return times, times - before

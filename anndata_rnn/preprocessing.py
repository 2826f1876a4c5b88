"""The preprocessing fitted on the training split only, and the one ``encode``.

Order of operations (the same at training and at prediction time):

1. read a block of obs rows from X, a layer or an obsm representation
   (:class:`~anndata_rnn.features.FeatureSource`);
2. raw counts -> ``normalize_total`` + ``log1p`` (scanpy), with the training median total;
3. select / reorder the model's genes (highly variable genes or a var column at training time,
   matching by name at prediction time; missing genes become NaN);
4. assemble sequences (:mod:`.sequences`);
5. impute NaN (linear interpolation along time within a sequence, then the training mean);
6. standardize each feature with training statistics; append the standardized time gap.

The inputs of a forecaster (each step carrying the gap to the step it predicts) are built from
the encoded sequences in :mod:`.forecast_inputs`.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from . import timing
from .errors import InputError
from .features import READ_BUDGET_BYTES, FeatureSource, duplicated_names
from .sequences import Layout, SequenceIndex, assemble

log = logging.getLogger("anndata_rnn")

NORMALIZE_CHOICES = ("auto", "always", "never")
SCALE_CHOICES = ("feature", "sequence")
#: how missing values inside a sequence are filled: linear interpolation along time (sees later
#: steps; classify, embed) or the last observed value (causal; forecast)
IMPUTATION_CHOICES = ("interpolate", "causal")
#: sequences encoded per chunk (bounds the memory of one read)
CHUNK_SEQUENCES = 4096
#: columns whose training statistics are computed together (bounds the float64 copies)
STATISTICS_COLUMNS = 64


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
        """The settings stored in the model file (``config["preprocessing"]``); the layout is
        the model config's own (stored once) and given back to :meth:`from_stored`."""
        return {
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
    def from_stored(
        cls, config: dict, arrays: dict[str, np.ndarray], *, layout: str
    ) -> Preprocessor:
        """The preprocessor a model file stores (:meth:`config`, :meth:`arrays`) for a model of
        ``layout``."""
        return cls(
            layout=layout,
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
    # profiles of a sparse matrix are encoded from the stored values (bit for bit the same)
    sparse_profile = index.layout_kind.steps_are_gene_chunks
    for start in range(0, len(sequence_ids), chunk):
        ids = sequence_ids[start : start + chunk]
        rows = index.obs_rows(ids)
        stored = values = None
        if sparse_profile:
            with timing.phase("reading"):
                stored = source.read_sparse_rows(rows)
            # (not stored sparse, or non-finite values: read densely, which reports them)
            sparse_profile = stored is not None
        if stored is not None:
            values = sparse_profile_values(index, ids, rows, stored, prep, source.feature_names)
        if values is not None:
            observed.append(np.broadcast_to((index.steps[ids] >= 0)[..., None], values.shape))
            missing.append(np.zeros(len(ids), dtype=np.int64))
            parts.append(values)
            continue
        if stored is not None:  # finite values the dense path must handle (e.g. non-integers)
            read = stored.toarray()
        else:
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
        values=_joined(parts, np.zeros((0, index.max_steps, width), np.float32)),
        observed=_joined(observed, np.zeros((0, index.max_steps, 0), bool)),
        lengths=(index.steps[sequence_ids] >= 0).sum(axis=1).astype(np.int64),
        times=index.times[sequence_ids],
        n_features=len(prep.mean),
        n_missing=np.concatenate(missing) if missing else np.zeros(0, dtype=np.int64),
    )


def _joined(parts: list[np.ndarray], empty: np.ndarray) -> np.ndarray:
    """The chunks as one array; a single chunk as it is (a streamed batch is one chunk: no copy
    of it, and its observed mask stays a broadcast view)."""
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if parts else empty


#: row totals of float32 counts are exact below this in any order of summation
EXACT_FLOAT32_INTEGERS = 2**24


def sparse_profile_values(
    index: SequenceIndex,
    sequence_ids: np.ndarray,
    rows: np.ndarray,
    block: sp.csr_matrix,
    prep: Preprocessor,
    data_features: np.ndarray,
) -> np.ndarray | None:
    """The encoded profiles ``(n, steps, chunk_size)`` of a CSR block, computed on its stored
    values only: bit for bit what the dense path (:meth:`Preprocessor.transform_rows`,
    :func:`~anndata_rnn.sequences.assemble`, :meth:`Preprocessor.transform_sequences`) gives.

    Every entry the block does not store is a zero count, whose encoded value depends on its
    gene only; a row starts as those values and the stored entries are written over them. The
    arithmetic per value is the dense path's (float32 ``x / (total / target_sum)``, ``log1p``,
    ``(x - mean) / std``), and the totals are the same: the values are whole numbers whose
    totals stay below 2²⁴, where float32 sums are exact in any order. ``None`` when that does not
    hold (non-integer or negative values to normalize): the dense path handles those (and
    reports negative ones).
    """
    data = block.data
    if (prep.normalize or prep.log1p) and data.size and data.min() < 0:
        return None
    n = len(sequence_ids)
    per_row = np.diff(block.indptr)
    entries = np.repeat(np.arange(block.shape[0]), per_row)  # the row of each stored value
    if prep.normalize:
        if not np.array_equal(data, np.floor(data)):
            return None
        totals = np.bincount(entries, data, block.shape[0])
        if totals.size and totals.max() >= EXACT_FLOAT32_INTEGERS:
            return None
        scale = totals.astype(np.float32) / prep.target_sum  # scanpy's normalize_total
        scale = scale + (scale == 0)
        data = np.log1p(data / np.repeat(scale, per_row))
    elif prep.log1p:
        data = np.log1p(data)
    mean, std = prep.mean.astype(np.float32), prep.std.astype(np.float32)
    # model feature k sits at padded position position[k]; data column j feeds feature_of[j]
    order = index.gene_order
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order))
    if len(data_features) == len(prep.features) and np.array_equal(data_features, prep.features):
        source_cols = np.arange(len(prep.features))
    else:
        lookup = {name: i for i, name in enumerate(data_features)}
        source_cols = np.array([lookup.get(f, -1) for f in prep.features], dtype=np.int64)
    present = source_cols >= 0
    feature_of = np.full(block.shape[1], -1, dtype=np.int64)
    feature_of[source_cols[present]] = np.flatnonzero(present)
    width = index.max_steps * index.chunk_size
    # a zero count of a present gene, standardized; an absent gene is its training mean (0)
    template = np.zeros(width, dtype=np.float32)
    template[position[present]] = (np.float32(0) - mean[present]) / std[present]
    values = np.empty((n, width), dtype=np.float32)
    values[:] = template
    local = np.searchsorted(rows, index.unit_rows[index.unit[sequence_ids]])
    # per data column (a few thousand): its feature's standardization and padded position, so
    # each stored value needs one gather per quantity through the block's own column indices
    column_used = feature_of >= 0
    used_features = feature_of[column_used]
    column_mean = np.zeros(block.shape[1], dtype=np.float32)
    column_std = np.ones(block.shape[1], dtype=np.float32)
    column_position = np.zeros(block.shape[1], dtype=np.int64)
    column_mean[column_used] = mean[used_features]
    column_std[column_used] = std[used_features]
    column_position[column_used] = position[used_features]
    columns = block.indices
    keep = None if column_used.all() else column_used[columns]
    if not np.array_equal(local, np.arange(block.shape[0])):
        # sequences take their rows in their own order (a row may serve several)
        slot = np.full(block.shape[0], -1, dtype=np.int64)
        if len(np.unique(local)) != len(local):
            return None
        slot[local] = np.arange(n)
        entries = slot[entries]
        keep = entries >= 0 if keep is None else keep & (entries >= 0)
    if keep is not None:  # values of genes the model lacks, or of rows no sequence takes
        columns, entries, data = columns[keep], entries[keep], data[keep]
    standardized = (data - column_mean[columns]) / column_std[columns]
    values.reshape(-1)[entries * width + column_position[columns]] = standardized
    return values.reshape(n, index.max_steps, index.chunk_size)


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

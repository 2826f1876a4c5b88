"""AnnData <-> padded sequence tensors, masks and the index back to obs/var rows.

This module is the only place that knows how an AnnData becomes sequences, and writing results
back is its exact inverse. Array layout (as in sktime/tslearn, documented once here):

``values``: ``(n_sequences, max_steps, n_features)`` float32, NaN where a value is missing or the
step is padding; ``mask``: ``(n_sequences, max_steps)`` bool, True on real steps.

Three layouts:

``obs-series``
    One sequence = the observations sharing ``series_key``, ordered by ``time_key``. Features of
    a step = the genes of that observation (or ``use_rep`` columns). The *unit* (what is split and
    labelled) is the series.
``var-series``
    One sequence = one gene over the observations of one series, ordered by time; one feature
    (the gene's value). The unit is the gene (var row): with several series a gene has several
    sequences and its outputs pool over them.
``profile``
    One sequence = one observation read across its genes, ``chunk_size`` genes per step, in var
    order or ordered by ``order_key``. The unit is the observation.

Sequences are assembled from a row block of the feature matrix, so a caller can stream rows of a
backed file in chunks (:meth:`SequenceIndex.obs_rows`, :func:`assemble`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import h5py
import numpy as np
import pandas as pd
from anndata import AnnData

from .errors import InputError, listed

LAYOUTS = ("obs-series", "var-series", "profile")


@dataclass(frozen=True)
class Layout:
    """What a layout means for the rest of the package, derived once from its name.

    Every module asks a ``Layout`` (``Layout.of(name)``) instead of comparing layout names;
    adding a layout means adding one here and teaching :func:`build_index` to build it.

    Attributes
    ----------
    name
        The name stored in model files and records (one of :data:`LAYOUTS`).
    unit_axis
        ``"obs"`` or ``"var"``: the axis whose rows are the units (what is split, labelled and
        gets one output row); unit-level columns go to ``unit_axis``, matrices to
        ``unit_axis + "m"``.
    unit_name, units_name
        What one unit is called in messages and reports ("gene" / "genes").
    is_time_series
        Steps are time points (a time gap input, forecasting); profile steps are gene chunks.
    steps_are_observations
        Each step is one observation (obs-series): per-step outputs go to obs rows.
    one_feature
        A sequence has one feature (var-series: a gene's values); its statistics are one
        number, its sequences read every observation row.
    """

    name: str
    unit_axis: str
    unit_name: str
    units_name: str
    is_time_series: bool
    steps_are_observations: bool
    one_feature: bool

    @property
    def unit_matrices(self) -> str:
        """``"obsm"`` or ``"varm"``: where unit-level matrices go."""
        return self.unit_axis + "m"

    @property
    def steps_are_gene_chunks(self) -> bool:
        """Each step is a chunk of a cell's genes (profile)."""
        return not self.is_time_series

    @staticmethod
    def of(name) -> Layout:
        """The layout called ``name`` (an input error for an unknown name)."""
        if isinstance(name, Layout):
            return name
        if not isinstance(name, str) or name not in _BY_NAME:
            raise InputError(f"unknown layout {name!r}: use one of {', '.join(LAYOUTS)}")
        return _BY_NAME[name]

    @staticmethod
    def get(name) -> Layout | None:
        """The layout called ``name``, or None (a record read back from a file that does not
        say, e.g. for plots that fall back to obs)."""
        return _BY_NAME.get(name) if isinstance(name, str) else None

    def __str__(self) -> str:
        return self.name


OBS_SERIES = Layout("obs-series", "obs", "series", "series", True, True, False)
VAR_SERIES = Layout("var-series", "var", "gene", "genes", True, False, True)
PROFILE = Layout("profile", "obs", "observation", "observations", False, False, False)
_BY_NAME = {layout.name: layout for layout in (OBS_SERIES, VAR_SERIES, PROFILE)}
#: the layouts that are time courses (forecast takes only these)
TIME_SERIES_LAYOUTS = tuple(name for name in LAYOUTS if _BY_NAME[name].is_time_series)


#: an output key (``key_added``): a name, never an HDF5 path ("/X", ".", "a/b" would write into
#: or over other elements of the output file)
KEY_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
KEY_MAX_LENGTH = 64


def check_output_key(key, what: str = "key_added") -> str:
    """Refuse an output key that is not a plain name: letters, digits, '_' and '-', starting
    with a letter or '_', at most :data:`KEY_MAX_LENGTH` characters."""
    if not isinstance(key, str) or not key:
        raise InputError(f"{what} is empty: give a name such as 'rnn'")
    if len(key) > KEY_MAX_LENGTH or not KEY_PATTERN.fullmatch(key):
        shown = key if len(key) <= 40 else key[:40] + "…"
        raise InputError(
            f"{what} {shown!r} is not a plain name: use at most {KEY_MAX_LENGTH} letters, digits, "
            "'_' and '-', starting with a letter or '_' (e.g. 'rnn')"
        )
    return key


def check_layout(layout: str) -> str:
    return Layout.of(layout).name


def _column(frame: pd.DataFrame, key: str, where: str, other: pd.DataFrame | None = None):
    if key not in frame.columns:
        hint = ""
        if other is not None and key in other.columns:
            other_name = "var" if where == "obs" else "obs"
            hint = f" (it is a column of {other_name}, not {where}: check --layout)"
        available = ", ".join(map(str, frame.columns)) or "none"
        raise InputError(f"{where} has no column {key!r}{hint}; available columns: {available}")
    return frame[key]


#: largest magnitude of a time point (milliseconds since 1970 are ~1.7e12); beyond it the time
#: gaps the network reads lose their precision or overflow
MAX_TIME = 1e15


def numeric_times(adata: AnnData, time_key: str | None) -> np.ndarray:
    """Numeric time of every observation (row order when no ``time_key``)."""
    if time_key is None:
        return np.arange(adata.n_obs, dtype=np.float64)
    column = _column(adata.obs, time_key, "obs", adata.var)
    try:
        times = pd.to_numeric(column, errors="raise").to_numpy(dtype=np.float64)
    except (ValueError, TypeError):
        raise InputError(
            f"obs[{time_key!r}] is not numeric (e.g. {column.iloc[0]!r}): give a column of numeric "
            "time points (hours, minutes, pseudotime)"
        ) from None
    if np.isnan(times).any():
        raise InputError(
            f"obs[{time_key!r}] has {int(np.isnan(times).sum())} missing time points: fill or drop "
            "those observations first"
        )
    if not np.isfinite(times).all():
        raise InputError(f"obs[{time_key!r}] has infinite time points: fix them first")
    if len(times) and np.abs(times).max() > MAX_TIME:
        raise InputError(
            f"obs[{time_key!r}] has time points beyond ±{MAX_TIME:g} (largest "
            f"{np.abs(times).max():.3g}): give times in a unit such as hours or days"
        )
    return times


def series_labels(adata: AnnData, series_key: str | None) -> np.ndarray:
    if series_key is None:
        return np.full(adata.n_obs, "all", dtype=object)
    column = _column(adata.obs, series_key, "obs", adata.var)
    if column.isna().any():
        raise InputError(
            f"obs[{series_key!r}] has {int(column.isna().sum())} missing values: every observation "
            "needs a series"
        )
    return column.astype(str).to_numpy(dtype=object)


@dataclass
class SequenceIndex:
    """Which rows form each sequence, in which order; everything needed to map results back.

    Attributes
    ----------
    layout
        One of :data:`LAYOUTS`.
    unit
        ``(n_sequences,)`` position of each sequence's unit in ``unit_names``.
    unit_names
        Names of the units: series (obs-series), var names (var-series), obs names (profile).
    unit_rows
        For var-series / profile: the var / obs row of each unit. For obs-series: ``None``.
    sequence_series
        ``(n_sequences,)`` series name of each sequence ("" for profile).
    steps
        ``(n_sequences, max_steps)`` obs rows of each step (obs-series, var-series) or chunk number
        (profile); -1 on padding.
    times
        ``(n_sequences, max_steps)`` time of each step, NaN on padding.
    """

    layout: str
    unit: np.ndarray
    unit_names: np.ndarray
    unit_rows: np.ndarray | None
    sequence_series: np.ndarray
    steps: np.ndarray
    times: np.ndarray
    n_obs: int
    n_vars: int
    chunk_size: int = 0
    gene_order: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def n_sequences(self) -> int:
        return len(self.unit)

    @property
    def n_units(self) -> int:
        return len(self.unit_names)

    @property
    def mask(self) -> np.ndarray:
        return self.steps >= 0

    @property
    def lengths(self) -> np.ndarray:
        return self.mask.sum(axis=1)

    @property
    def max_steps(self) -> int:
        return self.steps.shape[1]

    def sequences_of_units(self, units: np.ndarray) -> np.ndarray:
        """Sequence ids whose unit is in ``units`` (a split is made of units, never of steps)."""
        return np.flatnonzero(np.isin(self.unit, units))

    @property
    def layout_kind(self) -> Layout:
        """The :class:`Layout` of :attr:`layout` (its name)."""
        return Layout.of(self.layout)

    @property
    def where(self) -> str:
        """The axis whose rows are the units: ``"var"`` for var-series, else ``"obs"``."""
        return self.layout_kind.unit_axis

    def frame(self, adata: AnnData) -> pd.DataFrame:
        """``adata.var`` or ``adata.obs``: where unit-level columns live."""
        return adata.var if self.where == "var" else adata.obs

    def write_column(self, adata: AnnData, key: str, rows: np.ndarray, categories=None) -> str:
        """One value per obs (var) row into ``obs[key]`` (``var``); returns its path."""
        set_column(self.frame(adata), key, rows, categories)
        return f"{self.where}/{key}"

    def write_matrix(self, adata: AnnData, key: str, rows: np.ndarray) -> str:
        """One row per obs (var) into ``obsm[key]`` (``varm``); returns its path."""
        getattr(adata, f"{self.where}m")[key] = rows
        return f"{self.where}m/{key}"

    def truncate(self, k: int) -> SequenceIndex:
        """The same sequences without their last ``k`` steps (held out from every fit)."""
        if k <= 0:
            return self
        steps, times, lengths = self.steps.copy(), self.times.copy(), self.lengths
        for s in range(self.n_sequences):
            steps[s, lengths[s] - k : lengths[s]] = -1
            times[s, lengths[s] - k : lengths[s]] = np.nan
        return replace(self, steps=steps, times=times, notes=[])

    def with_width(self, n_features: int) -> SequenceIndex:
        """profile: the steps for ``n_features`` selected genes, ``chunk_size`` per step."""
        n_chunks = int(np.ceil(n_features / self.chunk_size))
        steps, times = _profile_steps(self.n_sequences, n_chunks)
        return replace(self, steps=steps, times=times, gene_order=np.arange(n_features))

    def step_rows(self, sequence_ids: np.ndarray):
        """obs rows of the real steps of some sequences, and their (sequence, step) positions."""
        steps = self.steps[sequence_ids]
        seq, pos = np.nonzero(steps >= 0)
        return steps[seq, pos], sequence_ids[seq], pos

    def check_future_after(self, future_times) -> None:
        """Future time points must come after every series' last time point."""
        if future_times is None or not len(future_times):
            return
        last = np.nanmax(self.times, axis=1)
        late = last >= future_times[0]
        if late.any():
            s = int(np.flatnonzero(late)[0])
            raise InputError(
                f"future time {future_times[0]:g} is not after the last time point "
                f"{last[s]:g} of series {self.sequence_series[s]!r}: give future time points "
                "after every series' end (or leave them out to use each series' median time gap)"
            )

    def check_holdout(self, k: int) -> None:
        """Holding out the last ``k`` steps must leave at least 2 in every sequence."""
        short = self.lengths < k + 2
        if short.any():
            s = int(np.flatnonzero(short)[0])
            raise InputError(
                f"holdout_steps={k} leaves fewer than 2 steps in series "
                f"{self.sequence_series[s]!r} ({self.lengths[s]} time points): lower "
                "--holdout-steps or drop short series (--series-subset)"
            )

    def obs_rows(self, sequence_ids: np.ndarray) -> np.ndarray:
        """Sorted obs rows needed to assemble these sequences (the read request for a chunk)."""
        if self.layout == "profile":
            return np.sort(self.unit_rows[self.unit[sequence_ids]])
        rows = self.steps[sequence_ids]
        return np.unique(rows[rows >= 0])


def _profile_steps(n: int, n_chunks: int) -> tuple[np.ndarray, np.ndarray]:
    """profile steps and times: every row the same, so read-only broadcast views (no memory
    that grows with the number of cells; indexing them makes ordinary arrays)."""
    steps = np.broadcast_to(np.arange(n_chunks), (n, n_chunks))
    return steps, np.broadcast_to(np.arange(n_chunks, dtype=np.float64), (n, n_chunks))


def _ordered_groups(series: np.ndarray, times: np.ndarray, key_names: tuple[str, str]):
    """Obs rows of each series ordered by time; drops series of length 1 (with a note)."""
    groups: dict[str, np.ndarray] = {}
    for name in pd.unique(series):
        rows = np.flatnonzero(series == name)
        rows = rows[np.argsort(times[rows], kind="stable")]
        t = times[rows]
        if len(t) > 1 and (np.diff(t) == 0).any():
            dup = t[1:][np.diff(t) == 0][0]
            raise InputError(
                f"series {name!r} has duplicate time points (time {dup:g} appears twice in "
                f"obs[{key_names[1]!r}]): average replicates or give each replicate its own "
                f"series in obs[{key_names[0]!r}]"
            )
        groups[str(name)] = rows
    return groups


def _refuse_repeated_obs_names(adata: AnnData, series: np.ndarray, keep, series_key) -> None:
    """An observation name must not repeat inside one series (a sign of concatenated replicates
    or a broken merge): which row is which step would be a guess."""
    pairs = pd.DataFrame(
        {"series": series[keep], "name": np.asarray(adata.obs_names, dtype=object)[keep]}
    )
    repeated = pairs.duplicated(keep=False)
    if repeated.any():
        first = pairs[repeated].iloc[0]
        n = int(((pairs["series"] == first["series"]) & (pairs["name"] == first["name"])).sum())
        where = f"series {first['series']!r}" if series_key else "the data (one series)"
        raise InputError(
            f"obs name {first['name']!r} appears {n} times in {where} "
            f"({int(repeated.sum())} rows with repeated names): make obs names unique "
            "(adata.obs_names_make_unique()) or give each replicate its own series"
        )


def build_index(
    adata: AnnData,
    *,
    layout: str,
    series_key: str | None = None,
    time_key: str | None = None,
    series_subset: list[str] | None = None,
    chunk_size: int = 32,
    n_features: int | None = None,
    var_mask: np.ndarray | None = None,
) -> SequenceIndex:
    """Describe how ``adata`` splits into sequences (reads only obs/var, never X).

    ``n_features`` is the width of the (selected, ordered) feature matrix for ``profile``
    (defaults to ``n_vars``);
    ``var_mask`` restricts which genes become sequences in ``var-series``.
    """
    check_layout(layout)
    notes: list[str] = []
    if layout == "profile":
        if chunk_size < 1:
            raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
        # genes arrive already selected and ordered (by order_key) from the preprocessing
        width = adata.n_vars if n_features is None else n_features
        gene_order = np.arange(width)
        n_chunks = int(np.ceil(width / chunk_size))
        n = adata.n_obs
        steps, times = _profile_steps(n, n_chunks)
        return SequenceIndex(
            layout=layout,
            unit=np.arange(n),
            unit_names=np.asarray(adata.obs_names, dtype=object),
            unit_rows=np.arange(n),
            sequence_series=np.full(n, "", dtype=object),
            steps=steps,
            times=times,
            n_obs=adata.n_obs,
            n_vars=adata.n_vars,
            chunk_size=chunk_size,
            gene_order=gene_order,
        )

    series = series_labels(adata, series_key)
    times = numeric_times(adata, time_key)
    keep = np.ones(adata.n_obs, dtype=bool)
    if series_subset:
        keep = np.isin(series, list(series_subset))
        missing = sorted(set(series_subset) - set(series[keep]))
        if missing:
            levels = listed(sorted(set(series)), 20)
            raise InputError(
                f"series {listed(missing)} not found in obs[{series_key!r}]; available: "
                f"{levels} (when applying a model, choose the series with --series-subset)"
            )
    absolute = np.flatnonzero(keep)
    _refuse_repeated_obs_names(adata, series, keep, series_key)
    groups = _ordered_groups(series[keep], times[keep], (series_key, time_key))
    groups = {name: absolute[rows] for name, rows in groups.items()}
    short = [name for name, rows in groups.items() if len(rows) < 2]
    if short:
        notes.append(f"skipped {len(short)} series with a single time point")
        groups = {name: rows for name, rows in groups.items() if len(rows) >= 2}
    if not groups:
        raise InputError(
            "no series with at least 2 time points: check --series-key / --time-key "
            f"(series_key={series_key!r}, time_key={time_key!r})"
        )
    max_len = max(len(rows) for rows in groups.values())
    names = list(groups)

    def padded(rows_list):
        steps = np.full((len(rows_list), max_len), -1, dtype=np.int64)
        step_times = np.full((len(rows_list), max_len), np.nan)
        for i, rows in enumerate(rows_list):
            steps[i, : len(rows)] = rows
            step_times[i, : len(rows)] = times[rows]
        return steps, step_times

    if layout == "obs-series":
        steps, step_times = padded([groups[n] for n in names])
        return SequenceIndex(
            layout=layout,
            unit=np.arange(len(names)),
            unit_names=np.asarray(names, dtype=object),
            unit_rows=None,
            sequence_series=np.asarray(names, dtype=object),
            steps=steps,
            times=step_times,
            n_obs=adata.n_obs,
            n_vars=adata.n_vars,
            notes=notes,
        )

    # var-series: one sequence per (gene, series)
    genes = np.arange(adata.n_vars) if var_mask is None else np.flatnonzero(var_mask)
    series_steps, series_times = padded([groups[n] for n in names])
    n_series = len(names)
    unit = np.repeat(np.arange(len(genes)), n_series)
    return SequenceIndex(
        layout=layout,
        unit=unit,
        unit_names=np.asarray(adata.var_names[genes], dtype=object),
        unit_rows=genes,
        sequence_series=np.tile(np.asarray(names, dtype=object), len(genes)),
        steps=np.tile(series_steps, (len(genes), 1)),
        times=np.tile(series_times, (len(genes), 1)),
        n_obs=adata.n_obs,
        n_vars=adata.n_vars,
        notes=notes,
    )


@dataclass(frozen=True)
class SequenceSpec:
    """How an AnnData becomes sequences: the keys a model records and replays on new data.

    Validated once on construction; :meth:`keys` is what a run records of it
    (``uns[key]["params"]``), :meth:`model_keys` the dict stored in the model config and
    :meth:`from_keys` reads that back. ``extra`` holds task keys recorded in the same dict
    (``label_key``, ``eval_label``).
    """

    layout: str
    series_key: str | None = None
    time_key: str | None = None
    series_subset: tuple[str, ...] | None = None
    order_key: str | None = None
    chunk_size: int = 32
    layer: str | None = None
    use_rep: str | None = None
    key_added: str = "rnn"
    extra: tuple[tuple[str, object], ...] = ()

    def __post_init__(self):
        check_layout(self.layout)
        check_output_key(self.key_added)
        if self.series_subset is not None:
            object.__setattr__(self, "series_subset", tuple(self.series_subset) or None)

    def keys(self) -> dict:
        """The layout and every key, as a run records them in ``uns[key]["params"]``."""
        return {"layout": self.layout, **self.model_keys()}

    def model_keys(self) -> dict:
        """The keys a model file stores under ``config["keys"]``: everything but the layout,
        which the model config stores once, as its own ``layout``."""
        return {
            **dict(self.extra),
            "series_key": self.series_key,
            "time_key": self.time_key,
            "series_subset": list(self.series_subset) if self.series_subset else None,
            "order_key": self.order_key,
            "chunk_size": self.chunk_size,
            "layer": self.layer,
            "use_rep": self.use_rep,
            "key_added": self.key_added,
        }

    @classmethod
    def from_keys(cls, keys: dict, *, layout: str, series_subset=None) -> SequenceSpec:
        """The spec a model's stored keys describe, on its ``layout`` (``series_subset``
        overrides the stored one). A ``"layout"`` among the keys (files written by 0.3.0 and
        before, checked equal on loading) is not read."""
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        subset = series_subset if series_subset is not None else keys.get("series_subset")
        return cls(
            layout=layout,
            series_key=keys.get("series_key"),
            time_key=keys.get("time_key"),
            series_subset=subset,
            order_key=keys.get("order_key"),
            chunk_size=int(keys.get("chunk_size") or 32),
            layer=keys.get("layer"),
            use_rep=keys.get("use_rep"),
            key_added=keys.get("key_added") or "rnn",
            extra=tuple((k, v) for k, v in keys.items() if k not in known),
        )

    def get(self, name: str):
        return dict(self.extra).get(name)

    def index(
        self, adata: AnnData, *, n_features: int | None = None, var_mask=None
    ) -> SequenceIndex:
        """The sequence index of ``adata`` (reads only obs/var, never X)."""
        if self.layout == "obs-series" and self.series_key is None:
            raise InputError(
                "layout obs-series needs series_key (the obs column naming each subject/series)"
            )
        if self.layout == "var-series" and self.time_key is None:
            raise InputError("layout var-series needs time_key (the obs column of time points)")
        return build_index(
            adata,
            layout=self.layout,
            series_key=self.series_key,
            time_key=self.time_key,
            series_subset=list(self.series_subset) if self.series_subset else None,
            chunk_size=self.chunk_size,
            n_features=n_features,
            var_mask=var_mask,
        )


def bool_column(frame: pd.DataFrame, key: str, where: str) -> np.ndarray:
    """A boolean selection column (e.g. ``gene_subset``); NaN counts as False."""
    if key not in frame.columns:
        raise InputError(f"{where} has no column {key!r}; available: {', '.join(frame.columns)}")
    column = frame[key]
    if column.dtype != bool and not set(column.dropna().unique()) <= {0, 1}:
        raise InputError(f"{where}[{key!r}] must be boolean to select genes")
    return column.fillna(False).to_numpy(dtype=bool)


def assemble(
    index: SequenceIndex, sequence_ids: np.ndarray, rows: np.ndarray, block: np.ndarray
) -> np.ndarray:
    """Padded ``(n, max_steps, n_features)`` values of some sequences from a row block.

    ``block`` holds the (already transformed) feature matrix for the obs ``rows`` (sorted, as
    returned by :meth:`SequenceIndex.obs_rows`). Padding is NaN.
    """
    rows = np.asarray(rows)
    # positions in the block of obs rows that are all in ``rows`` (sorted): no per-call array
    # over every obs (a streamed batch would otherwise fill one of n_obs entries)
    if index.layout == "profile":
        cs = index.chunk_size
        n_chunks = index.max_steps
        order = index.gene_order
        local = np.searchsorted(rows, index.unit_rows[index.unit[sequence_ids]])
        taken = block if np.array_equal(local, np.arange(len(block))) else block[local]
        if not np.array_equal(order, np.arange(taken.shape[1])):
            taken = taken[:, order]
        values = np.zeros((len(sequence_ids), n_chunks * cs), dtype=np.float32)
        values[:, : len(order)] = taken
        return values.reshape(len(sequence_ids), n_chunks, cs)

    steps = index.steps[sequence_ids]
    valid = steps >= 0
    local = np.where(valid, np.searchsorted(rows, np.where(valid, steps, 0)), 0)
    if index.layout == "obs-series":
        values = block[local].astype(np.float32, copy=False)
    else:  # var-series: the gene's value at each step
        genes = index.unit_rows[index.unit[sequence_ids]]
        values = block[local, genes[:, None]][..., None].astype(np.float32, copy=False)
    values = np.array(values, dtype=np.float32)
    values[~valid] = np.nan
    return values


# ---------------------------------------------------------------------------------------------
# labels


@dataclass
class Labels:
    """Integer-coded labels. ``level`` is "unit" (one per unit) or "step" (one per obs row)."""

    key: str
    level: str
    classes: np.ndarray
    codes: np.ndarray  # per unit (level "unit") or per obs row (level "step"); -1 = missing
    notes: list[str] = field(default_factory=list)

    def recode(self, classes) -> Labels:
        """The same labels coded in a model's class order (classes it lacks become -1)."""
        classes = np.asarray(classes, dtype=object)
        remap = {c: i for i, c in enumerate(classes)}
        codes = np.array([remap.get(str(c), -1) for c in self.classes])
        recoded = np.where(self.codes >= 0, codes[self.codes], -1)
        return Labels(self.key, self.level, classes, recoded, self.notes)

    def sequence_targets(self, index: SequenceIndex, sequence_ids: np.ndarray) -> np.ndarray:
        """Targets for some sequences: ``(n,)`` for unit labels, ``(n, max_steps)`` for steps."""
        if self.level == "unit":
            return self.codes[index.unit[sequence_ids]]
        steps = index.steps[sequence_ids]
        return np.where(steps >= 0, self.codes[np.where(steps >= 0, steps, 0)], -1)


#: longest class name accepted (names go into columns, the model file and every message)
MAX_CLASS_NAME = 200


def read_labels(
    adata: AnnData, index: SequenceIndex, label_key: str, *, max_missing_fraction: float = 0.5
) -> Labels:
    """Read and validate labels for ``index``'s layout; decide unit vs step level."""
    if index.layout == "var-series":
        column = _column(adata.var, label_key, "var", adata.obs)
        column = column.iloc[index.unit_rows]
    else:
        column = _column(adata.obs, label_key, "obs", adata.var)
    if pd.api.types.is_float_dtype(column) and not _integer_like(column):
        raise InputError(
            f"label column {label_key!r} holds continuous values: classification needs classes "
            "(a categorical, string, boolean or integer column)"
        )
    values = column.astype("object").where(column.notna(), None).to_numpy()
    text = np.array([None if v is None else str(v) for v in values], dtype=object)
    present = text != None  # noqa: E711
    notes = []
    n_missing = int((~present).sum())
    if n_missing:
        fraction = n_missing / len(text)
        if fraction > max_missing_fraction:
            raise InputError(
                f"label column {label_key!r} is missing for {n_missing} of {len(text)} entries "
                f"({fraction:.0%}): fill it or subset the data to the labelled entries"
            )
        notes.append(f"dropped {n_missing} entries with a missing label {label_key!r}")
    if isinstance(column.dtype, pd.CategoricalDtype):
        classes = [str(c) for c in column.cat.categories if str(c) in set(text[present])]
    else:
        classes = sorted(set(text[present]))
    classes = np.asarray(classes, dtype=object)
    long_names = [c for c in classes if len(c) > MAX_CLASS_NAME]
    if long_names:
        raise InputError(
            f"label column {label_key!r} has class names longer than {MAX_CLASS_NAME} characters "
            f"({listed(long_names, 1)}, {len(long_names[0]):,} characters): shorten them"
        )
    if len(classes) < 2:
        raise InputError(
            f"label column {label_key!r} has a single class ({classes[0] if len(classes) else 'none'}):"
            " classification needs at least 2 classes"
        )
    lookup = {c: i for i, c in enumerate(classes)}
    codes = np.array([lookup[t] if t is not None else -1 for t in text], dtype=np.int64)

    if index.layout == "var-series" or index.layout == "profile":
        return Labels(label_key, "unit", classes, codes, notes)
    # obs-series: per-series labels when constant within every series, else per step
    step_codes = index.steps
    constant = True
    unit_codes = np.full(index.n_units, -1, dtype=np.int64)
    for s in range(index.n_sequences):
        rows = step_codes[s][step_codes[s] >= 0]
        c = codes[rows]
        c = c[c >= 0]
        if len(np.unique(c)) > 1:
            constant = False
            break
        if len(c):
            unit_codes[index.unit[s]] = c[0]
    if constant:
        return Labels(label_key, "unit", classes, unit_codes, notes)
    return Labels(label_key, "step", classes, codes, notes)


def _integer_like(column: pd.Series) -> bool:
    values = column.dropna().to_numpy(dtype=np.float64)
    return bool(np.all(values == np.round(values)))


# ---------------------------------------------------------------------------------------------
# writing back: the inverse of build_index


def broadcast_to_rows(index: SequenceIndex, per_unit: np.ndarray) -> np.ndarray:
    """Per-unit values -> one row per obs (obs-series, profile) or var (var-series).

    Rows that belong to no sequence get NaN (floats) or None (objects).
    """
    n_rows = index.n_vars if index.layout == "var-series" else index.n_obs
    on_disk = isinstance(per_unit, h5py.Dataset)  # spilled by a streamed pass
    if (
        index.layout == "profile"
        and (per_unit.dtype == np.float64 or on_disk)
        and len(per_unit) == n_rows
        and np.array_equal(index.unit_rows, np.arange(n_rows))
    ):
        return per_unit  # every obs row is its own unit, in order: nothing to spread
    per_unit = np.asarray(per_unit)
    fill = None if per_unit.dtype == object else np.nan
    dtype = object if per_unit.dtype == object else np.float64
    out = np.full((n_rows, *per_unit.shape[1:]), fill, dtype=dtype)
    if index.layout == "obs-series":
        for s in range(index.n_sequences):
            rows = index.steps[s][index.steps[s] >= 0]
            out[rows] = per_unit[index.unit[s]]
    else:
        out[index.unit_rows] = per_unit
    return out


def as_float32(rows):
    """``rows`` as float32; a float32 dataset spilled to disk stays there (not loaded)."""
    if isinstance(rows, h5py.Dataset) and rows.dtype == np.float32:
        return rows
    return np.asarray(rows).astype(np.float32)


def scatter_steps(index: SequenceIndex, per_step: np.ndarray) -> np.ndarray:
    """Per-step values ``(n_sequences, max_steps, ...)`` -> one row per obs (obs-series)."""
    per_step = np.asarray(per_step)  # a dataset spilled to disk is read here
    fill = None if per_step.dtype == object else np.nan
    dtype = object if per_step.dtype == object else np.float64
    out = np.full((index.n_obs, *per_step.shape[2:]), fill, dtype=dtype)
    valid = index.steps >= 0
    out[index.steps[valid]] = per_step[valid]
    return out


def pool_units(index: SequenceIndex, per_sequence: np.ndarray) -> np.ndarray:
    """Mean over the sequences of each unit (var-series genes seen in several series)."""
    if index.n_sequences == index.n_units and np.array_equal(index.unit, np.arange(index.n_units)):
        if isinstance(per_sequence, h5py.Dataset):
            return per_sequence  # spilled to disk by a streamed pass: stays there
        return per_sequence.astype(np.float64)  # one sequence per unit: the mean is itself
    per_sequence = np.asarray(per_sequence)
    out = np.zeros((index.n_units, *per_sequence.shape[1:]), dtype=np.float64)
    counts = np.bincount(index.unit, minlength=index.n_units).astype(np.float64)
    np.add.at(out, index.unit, per_sequence)
    with np.errstate(invalid="ignore", divide="ignore"):
        out /= counts.reshape(-1, *([1] * (per_sequence.ndim - 1)))
    return out


def set_column(frame: pd.DataFrame, key: str, values: np.ndarray, categories=None) -> None:
    """Write one result column; object values become a categorical with string categories."""
    if categories is not None:
        frame[key] = pd.Categorical(
            [None if v is None else str(v) for v in values], categories=[str(c) for c in categories]
        )
    else:
        frame[key] = np.asarray(values, dtype=np.float64)

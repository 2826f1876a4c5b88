"""Pieces every task composes: splits, encoding sequences in chunks, writing results back."""

from __future__ import annotations

import logging
import platform
import warnings
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from sklearn.model_selection import train_test_split

from ..errors import InputError
from ..io import uns_safe
from ..networks import CELLS
from ..preprocessing import FeatureSource, Preprocessor
from ..sequences import SequenceIndex, assemble, build_index, check_layout
from ..training import TrainConfig, resolve_device, seed_everything

log = logging.getLogger("anndata_rnn")

SPLIT_NAMES = ("train", "val", "test")
CHUNK_SEQUENCES = 4096


def parse_hidden(hidden) -> tuple[int, ...]:
    """``"128,64"`` or ``(128, 64)`` -> ``(128, 64)``; every size must be >= 1."""
    if isinstance(hidden, str):
        try:
            hidden = tuple(int(h) for h in hidden.split(",") if h.strip())
        except ValueError:
            raise InputError(f"hidden sizes must be integers like 128,64, got {hidden!r}") from None
    hidden = tuple(int(h) for h in np.atleast_1d(hidden))
    if not hidden or min(hidden) < 1:
        raise InputError(f"hidden layer sizes must be >= 1, got {hidden}")
    return hidden


def architecture(hidden, cell: str, dropout: float, bidirectional: bool) -> dict:
    if cell not in CELLS:
        raise InputError(f"cell must be one of {', '.join(CELLS)}, got {cell!r}")
    if not 0 <= dropout < 1:
        raise InputError(f"dropout must be in [0, 1), got {dropout}")
    return {
        "hidden": list(parse_hidden(hidden)),
        "cell": cell,
        "dropout": float(dropout),
        "bidirectional": bool(bidirectional),
    }


def build_sequences(adata: AnnData, keys: dict, *, n_features: int | None = None):
    """The sequence index a model's keys describe (used at training and prediction)."""
    layout = check_layout(keys["layout"])
    if layout != "profile" and keys.get("series_key") is None and layout == "obs-series":
        raise InputError(
            "layout obs-series needs series_key (the obs column naming each subject/series)"
        )
    if layout == "var-series" and keys.get("time_key") is None:
        raise InputError("layout var-series needs time_key (the obs column of time points)")
    return build_index(
        adata,
        layout=layout,
        series_key=keys.get("series_key"),
        time_key=keys.get("time_key"),
        series_subset=keys.get("series_subset"),
        chunk_size=int(keys.get("chunk_size") or 32),
        n_features=n_features,
    )


def bool_column(frame, key: str, where: str) -> np.ndarray:
    if key not in frame.columns:
        raise InputError(f"{where} has no column {key!r}; available: {', '.join(frame.columns)}")
    column = frame[key]
    if column.dtype != bool and not set(column.dropna().unique()) <= {0, 1}:
        raise InputError(f"{where}[{key!r}] must be boolean to select genes")
    return column.fillna(False).to_numpy(dtype=bool)


def training_setup(
    *, hidden, cell, dropout, bidirectional, max_epochs, batch_size, lr, patience, seed, device
) -> tuple[dict, TrainConfig, torch.device]:
    """Validate the architecture and optimisation settings, seed everything, pick the device."""
    arch = architecture(hidden, cell, dropout, bidirectional)
    train_config = TrainConfig(max_epochs, batch_size, lr, patience)
    train_config.validate()
    seed_everything(seed)
    return arch, train_config, resolve_device(device)


def sequence_keys(
    *,
    layout: str,
    series_key=None,
    time_key=None,
    series_subset=None,
    order_key=None,
    chunk_size: int = 32,
    layer=None,
    use_rep=None,
    key_added: str = "rnn",
    **extra,
) -> dict:
    """The keys a model records to rebuild its sequences on new data."""
    check_layout(layout)
    return {
        "layout": layout,
        **extra,
        "series_key": series_key,
        "time_key": time_key,
        "series_subset": list(series_subset) if series_subset else None,
        "order_key": order_key,
        "chunk_size": chunk_size,
        "layer": layer,
        "use_rep": use_rep,
        "key_added": key_added,
    }


def training_index(adata: AnnData, keys: dict, gene_subset: str | None) -> SequenceIndex:
    """The sequence index of a training run; in var-series ``gene_subset`` picks the genes."""
    index = build_sequences(adata, keys)
    if keys["layout"] == "var-series" and gene_subset is not None:
        index = build_index(
            adata,
            layout="var-series",
            series_key=keys["series_key"],
            time_key=keys["time_key"],
            series_subset=keys["series_subset"],
            var_mask=bool_column(adata.var, gene_subset, "var"),
        )
    for note in index.notes:
        log.info(note)
    return index


def fit_preprocessor(
    prep: Preprocessor,
    adata: AnnData,
    source: FeatureSource,
    index: SequenceIndex,
    train_ids: np.ndarray,
    *,
    normalize: str,
    n_top_genes: int | None,
    gene_subset: str | None,
    order_key: str | None = None,
) -> Preprocessor:
    """Fit ``prep`` on the training sequences (gene selection and profile gene order included)."""
    layout = index.layout
    if layout == "profile" and order_key is not None and order_key not in adata.var.columns:
        raise InputError(f"var has no column {order_key!r} (order_key)")
    return prep.fit(
        source,
        index,
        train_ids,
        normalize=normalize,
        n_top_genes=n_top_genes,
        gene_subset=(
            bool_column(adata.var, gene_subset, "var")
            if (gene_subset is not None and layout != "var-series")
            else None
        ),
        gene_order=(
            adata.var[order_key].to_numpy() if (layout == "profile" and order_key) else None
        ),
    )


def log_split(layout: str, split: np.ndarray) -> None:
    unit = {"obs-series": "series", "var-series": "gene", "profile": "observation"}[layout]
    log.info(
        "split by %s: %d train, %d val, %d test",
        unit,
        *(int((split == name).sum()) for name in ("train", "val", "test")),
    )


def versions() -> dict:
    out = {"python": platform.python_version()}
    for package in ("anndata-rnn", "anndata", "scanpy", "torch", "numpy", "scikit-learn", "h5py"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "unknown"
    return out


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise InputError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1:
        raise InputError(
            f"val_fraction + test_fraction = {val_fraction + test_fraction:g} leaves no training "
            "data: make their sum < 1"
        )


def split_from_column(adata: AnnData, index: SequenceIndex, split_key: str) -> np.ndarray:
    """Per-unit split names from a user column (train / val / test) in obs or var."""
    frame = adata.var if index.layout == "var-series" else adata.obs
    where = "var" if index.layout == "var-series" else "obs"
    if split_key not in frame.columns:
        raise InputError(
            f"{where} has no split column {split_key!r}; available: {', '.join(frame.columns)}"
        )
    column = frame[split_key].astype(str).str.lower().replace({"validation": "val", "valid": "val"})
    values = column.to_numpy(dtype=object)
    bad = sorted(set(values) - set(SPLIT_NAMES))
    if bad:
        raise InputError(
            f"{where}[{split_key!r}] has values {bad[:5]}: use only train, val and test"
        )
    if index.layout == "var-series":
        return values[index.unit_rows]
    if index.layout == "profile":
        return values
    out = np.empty(index.n_units, dtype=object)
    for s in range(index.n_sequences):
        rows = index.steps[s][index.steps[s] >= 0]
        levels = set(values[rows])
        if len(levels) > 1:
            raise InputError(
                f"series {index.unit_names[index.unit[s]]!r} has several split values "
                f"{sorted(levels)} in obs[{split_key!r}]: a series must stay in one split"
            )
        out[index.unit[s]] = levels.pop()
    return out


def make_split(
    n_units: int,
    *,
    usable: np.ndarray,
    strata: np.ndarray | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> np.ndarray:
    """Seeded split of units into train/val/test, stratified when the labels allow it."""
    check_fractions(val_fraction, test_fraction)
    units = np.flatnonzero(usable)
    if len(units) < 2:
        raise InputError(f"only {len(units)} usable sequence(s): need at least 2 to train")
    split = np.full(n_units, "unused", dtype=object)

    def cut(pool, fraction, rng_seed):
        if fraction <= 0 or len(pool) < 2:
            return pool, pool[:0]
        size = max(1, int(round(fraction * len(pool))))
        if size >= len(pool):
            size = len(pool) - 1
        stratify = None if strata is None else strata[pool]
        try:
            return train_test_split(pool, test_size=size, random_state=rng_seed, stratify=stratify)
        except ValueError:  # a class too small to stratify: plain seeded split
            return train_test_split(pool, test_size=size, random_state=rng_seed)

    rest, test = cut(units, test_fraction, seed)
    val_share = val_fraction / (1 - test_fraction) if test_fraction < 1 else 0
    train, val = cut(rest, val_share, seed + 1)
    split[train], split[val], split[test] = "train", "val", "test"
    return split


def iter_encoded(
    index: SequenceIndex,
    source: FeatureSource,
    prep: Preprocessor,
    sequence_ids: np.ndarray,
    chunk: int = CHUNK_SEQUENCES,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(ids, values, lengths, n_missing)`` chunk by chunk, reading only the rows each
    chunk needs; ``n_missing`` counts each sequence's missing values before imputation."""
    for start in range(0, len(sequence_ids), chunk):
        ids = sequence_ids[start : start + chunk]
        rows = index.obs_rows(ids)
        block = prep.transform_rows(source.read_rows(rows), source.feature_names)
        raw = assemble(index, ids, rows, block)
        n_missing = (np.isnan(raw) & index.mask[ids][..., None]).sum(axis=(1, 2))
        yield ids, prep.transform_sequences(raw, index.times[ids]), index.lengths[ids], n_missing


def encode_sequences(index, source, prep, sequence_ids):
    """All requested sequences as tensors ``(values, lengths)`` plus, per sequence, the number
    of values that were missing (and imputed)."""
    parts, lengths, missing = [], [], []
    for _, values, length, n_missing in iter_encoded(index, source, prep, sequence_ids):
        parts.append(values)
        lengths.append(length)
        missing.append(n_missing)
    values = np.concatenate(parts) if parts else np.zeros((0, index.max_steps, 1), np.float32)
    length = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
    n_missing = np.concatenate(missing) if missing else np.zeros(0, dtype=np.int64)
    return torch.from_numpy(values), torch.from_numpy(length.astype(np.int64)), n_missing


def encode(index, source, prep, sequence_ids) -> tuple[torch.Tensor, torch.Tensor, int]:
    """All requested sequences as tensors ``(values, lengths)`` plus the number imputed."""
    values, lengths, n_missing = encode_sequences(index, source, prep, sequence_ids)
    return values, lengths, int(n_missing.sum())


def check_gene_overlap(prep: Preprocessor, source: FeatureSource, min_gene_overlap: float) -> dict:
    """Match the data's features to the model's; error below ``min_gene_overlap``, warn on gaps."""
    if prep.layout == "var-series":
        return {"n_model_features": 1, "n_missing": 0, "overlap": 1.0}
    if prep.source_kind == "rep":
        if len(source.feature_names) != len(prep.features):
            raise InputError(
                f"the model reads {len(prep.features)} columns of obsm[{prep.source_name!r}] but "
                f"the data has {len(source.feature_names)}: compute the representation the same "
                "way as for training"
            )
        return {"n_model_features": len(prep.features), "n_missing": 0, "overlap": 1.0}
    missing = prep.missing_features(source.feature_names)
    overlap = 1 - len(missing) / len(prep.features)
    if overlap < min_gene_overlap:
        raise InputError(
            f"only {len(prep.features) - len(missing)} of the model's {len(prep.features)} genes "
            f"({overlap:.0%}) are in the data, below min_gene_overlap={min_gene_overlap:g}: "
            "check that var_names use the same gene identifiers as at training (or give "
            "--gene-symbols COLUMN)"
        )
    if len(missing):
        message = (
            f"{len(missing)} of the model's {len(prep.features)} genes are missing from the data "
            f"(overlap {overlap:.1%}); they are filled with the training mean"
        )
        warnings.warn(message, UserWarning, stacklevel=3)
        log.warning(message)
    else:
        log.info("all %d model genes found in the data", len(prep.features))
    return {
        "n_model_features": len(prep.features),
        "n_missing": len(missing),
        "overlap": overlap,
    }


def check_keys_free(adata: AnnData, targets: list[tuple[str, str]], overwrite: bool) -> None:
    """Refuse to overwrite existing result keys unless asked to."""
    if overwrite:
        return
    taken = [f"{attr}[{key!r}]" for attr, key in targets if key in _mapping(adata, attr)]
    if taken:
        raise InputError(
            f"the output keys {', '.join(taken)} already exist: choose another key_added "
            "(--key-added) or pass --overwrite"
        )


def _mapping(adata: AnnData, attr: str):
    if attr in ("obs", "var"):
        return getattr(adata, attr).columns
    return getattr(adata, attr).keys()


def set_column(frame: pd.DataFrame, key: str, values: np.ndarray, categories=None) -> None:
    """Write one result column; object values become a categorical with string categories."""
    if categories is not None:
        frame[key] = pd.Categorical(
            [None if v is None else str(v) for v in values], categories=[str(c) for c in categories]
        )
    else:
        frame[key] = np.asarray(values, dtype=np.float64)


def store_uns(adata: AnnData, key: str, content: dict) -> None:
    adata.uns[key] = uns_safe(content)


def target_of(adata: AnnData, copy: bool) -> AnnData:
    if adata.isbacked and not copy:
        raise InputError(
            "the AnnData is opened backed (read-only on disk): pass copy=True to get the results "
            "in memory"
        )
    return adata.copy() if copy else adata

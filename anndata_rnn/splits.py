"""Splitting units (series, genes or observations) into train / val / test, never steps."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from anndata import AnnData

from .errors import InputError, listed
from .sequences import Layout, SequenceIndex

log = logging.getLogger("anndata_rnn")

SPLIT_NAMES = ("train", "val", "test")


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """Both fractions in [0, 1) and leaving training data."""
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
    frame, where = index.frame(adata), index.where
    if split_key not in frame.columns:
        raise InputError(
            f"{where} has no split column {split_key!r}; available: {listed(frame.columns, 20)}"
        )
    column = frame[split_key].astype(str).str.lower().replace({"validation": "val", "valid": "val"})
    values = column.to_numpy(dtype=object)
    bad = sorted(set(values) - set(SPLIT_NAMES))
    if bad:
        raise InputError(
            f"{where}[{split_key!r}] has values {listed(map(repr, bad))}: use only train, val and test"
        )
    return _per_unit(index, values, split_key, "split values", "a series must stay in one split")


def groups_from_column(adata: AnnData, index: SequenceIndex, group_key: str) -> np.ndarray:
    """Per-unit group codes (donor, sample, batch) from a column in obs or var: the units of one
    group are kept together in one part of the split and in one cross-validation fold."""
    frame, where = index.frame(adata), index.where
    if group_key not in frame.columns:
        raise InputError(
            f"{where} has no group column {group_key!r}; available: {listed(frame.columns, 20)}"
        )
    column = frame[group_key]
    if column.isna().any():
        raise InputError(
            f"{where}[{group_key!r}] is missing for {int(column.isna().sum())} entries: every "
            "unit needs a group (fill them, e.g. with their own names)"
        )
    codes = pd.factorize(column.astype(str))[0]
    log.info("group_key %r: the units of each of its %d groups stay together", group_key,
             len(np.unique(codes)))  # fmt: skip
    return _per_unit(index, codes, group_key, "groups", "a series belongs to one group")


def _per_unit(index: SequenceIndex, values: np.ndarray, key: str, what: str, rule: str):
    """Values of the layout's frame (obs or var) as one value per unit."""
    if index.layout_kind.one_feature:
        return values[index.unit_rows]
    if index.layout_kind.steps_are_gene_chunks:
        return values
    out = np.empty(index.n_units, dtype=values.dtype)
    for s in range(index.n_sequences):
        rows = index.steps[s][index.steps[s] >= 0]
        levels = set(values[rows].tolist())
        if len(levels) > 1:
            raise InputError(
                f"series {index.unit_names[index.unit[s]]!r} has several {what} "
                f"{listed(sorted(map(str, levels)))} in obs[{key!r}]: {rule}"
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
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Seeded split of units into train/val/test, stratified when the labels allow it.

    With ``groups`` (one code per unit), whole groups go to each part: the fractions are of
    groups, stratified by each group's most common stratum where possible.
    """
    check_fractions(val_fraction, test_fraction)
    units = np.flatnonzero(usable)
    if len(units) < 2:
        raise InputError(f"only {len(units)} usable sequence(s): need at least 2 to train")
    split = np.full(n_units, "unused", dtype=object)

    def cut(pool, fraction, rng_seed):
        if groups is not None:
            return _cut_groups(pool, fraction, rng_seed, groups, strata)
        if fraction <= 0 or len(pool) < 2:
            return pool, pool[:0]
        size = max(1, int(round(fraction * len(pool))))
        if size >= len(pool):
            size = len(pool) - 1
        stratify = None if strata is None else strata[pool]
        from sklearn.model_selection import train_test_split

        try:
            return train_test_split(pool, test_size=size, random_state=rng_seed, stratify=stratify)
        except ValueError:  # a class too small to stratify: plain seeded split
            return train_test_split(pool, test_size=size, random_state=rng_seed)

    rest, test = cut(units, test_fraction, seed)
    val_share = val_fraction / (1 - test_fraction) if test_fraction < 1 else 0
    train, val = cut(rest, val_share, seed + 1)
    split[train], split[val], split[test] = "train", "val", "test"
    return split


def _cut_groups(pool, fraction, rng_seed, groups, strata):
    """``cut`` of :func:`make_split` by whole groups."""
    from sklearn.model_selection import train_test_split

    names = np.unique(groups[pool])
    if fraction <= 0 or len(names) < 2:
        return pool, pool[:0]
    size = min(max(1, int(round(fraction * len(names)))), len(names) - 1)
    stratify = None
    if strata is not None:  # a group's stratum: its most common one
        stratify = np.array([np.bincount(strata[pool[groups[pool] == g]]).argmax() for g in names])
    try:
        _, held = train_test_split(names, test_size=size, random_state=rng_seed, stratify=stratify)
    except ValueError:  # a stratum too small to stratify: plain seeded split of the groups
        _, held = train_test_split(names, test_size=size, random_state=rng_seed)
    out = np.isin(groups[pool], held)
    return pool[~out], pool[out]


def log_split(layout: str, split: np.ndarray) -> None:
    """Log the number of units in each part of the split."""
    unit = Layout.of(layout).unit_name
    log.info(
        "split by %s: %d train, %d val, %d test",
        unit,
        *(int((split == name).sum()) for name in ("train", "val", "test")),
    )


class Folds(list):
    """The splits of a cross-validation (a list of per-unit split arrays) and how they were
    drawn (``scheme``: the scikit-learn splitter that chose each fold's test units)."""

    def __init__(self, splits, scheme: str):
        super().__init__(splits)
        self.scheme = scheme


def make_folds(
    n_units: int,
    *,
    k: int,
    usable: np.ndarray,
    strata: np.ndarray | None,
    val_fraction: float,
    seed: int,
    groups: np.ndarray | None = None,
) -> Folds:
    """``k`` splits for cross-validation: each usable unit is tested in exactly one fold; the
    rest of a fold is split into train / val (for early stopping), stratified where possible.
    With ``groups``, the units of one group are tested in the same fold and kept together in
    its train / val split (scikit-learn's ``StratifiedGroupKFold``)."""
    from sklearn.model_selection import KFold, StratifiedGroupKFold, StratifiedKFold

    units = np.flatnonzero(usable)
    if k < 2:
        raise InputError(f"cv must be >= 2 folds, got {k}")
    if len(units) < k:
        raise InputError(f"cv={k} folds need at least {k} labelled units; there are {len(units)}")
    if groups is not None:
        n_groups = len(np.unique(groups[units]))
        if n_groups < k:
            raise InputError(
                f"cv={k} folds need at least {k} groups; the labelled units form {n_groups}"
            )
        y = strata[units] if strata is not None else np.zeros(len(units), dtype=int)
        splitter = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
        folds = splitter.split(units, y, groups[units])
    elif strata is not None and np.bincount(strata[units]).min(initial=k) >= k:
        splitter = StratifiedKFold(k, shuffle=True, random_state=seed)
        folds = splitter.split(units, strata[units])
    else:
        if strata is not None:
            log.warning("a class has fewer than %d units: the %d folds are not stratified", k, k)
        splitter = KFold(k, shuffle=True, random_state=seed)
        folds = splitter.split(units)
    splits = []
    for fold, (rest, test) in enumerate(folds):
        inner = np.zeros(n_units, dtype=bool)
        inner[units[rest]] = True
        split = make_split(
            n_units,
            usable=inner,
            strata=strata,
            val_fraction=val_fraction,
            test_fraction=0.0,
            seed=seed + fold,
            groups=groups,
        )
        split[units[test]] = "test"
        splits.append(split)
    return Folds(splits, type(splitter).__name__)


def tested_in(folds: list[np.ndarray]) -> np.ndarray:
    """Per unit, the fold (1..K) whose test part holds it; 0 for a unit no fold tested."""
    fold_of = np.zeros(len(folds[0]), dtype=int)
    for number, split in enumerate(folds, start=1):
        fold_of[split == "test"] = number
    return fold_of


def test_train_ratio(folds: list[np.ndarray]) -> float:
    """Mean over cross-validation folds of test units / training units (the correction of the
    CV interval, :func:`~anndata_rnn.metrics.cv_summary`)."""
    return float(np.mean([(s == "test").sum() / max((s == "train").sum(), 1) for s in folds]))


def random_subset(ids: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """At most ``limit`` of ``ids``, drawn without replacement (seeded), in their order."""
    ids = np.asarray(ids)
    if len(ids) <= limit:
        return ids
    rng = np.random.default_rng(seed)
    return ids[np.sort(rng.choice(len(ids), limit, replace=False))]

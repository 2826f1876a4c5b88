"""Groups (donors, samples) stay together: in the plain split and in every cross-validation
fold, the units of one group are in one part only."""

from __future__ import annotations

import numpy as np
import pytest

from anndata_rnn.errors import InputError
from anndata_rnn.splits import make_folds, make_split


def _units(n_groups=12, per_group=5, seed=0):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_groups), per_group)
    strata = np.repeat(rng.permutation(np.arange(n_groups) % 2), per_group)
    return groups, strata


def _parts_of_each_group(split, groups):
    return {g: set(split[groups == g]) for g in np.unique(groups)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_group_stays_in_one_part_of_the_split(seed):
    groups, strata = _units()
    split = make_split(
        len(groups), usable=np.ones(len(groups), bool), strata=strata, val_fraction=0.2,
        test_fraction=0.25, seed=seed, groups=groups,
    )  # fmt: skip
    parts = _parts_of_each_group(split, groups)
    assert all(len(p) == 1 for p in parts.values()), parts
    counts = {name: sum(p == {name} for p in parts.values()) for name in ("train", "val", "test")}
    assert counts == {"train": 7, "val": 2, "test": 3}  # 25 % of 12 groups, then 20 % of all
    # without groups the same call splits groups across parts
    plain = make_split(
        len(groups), usable=np.ones(len(groups), bool), strata=strata, val_fraction=0.2,
        test_fraction=0.25, seed=seed,
    )  # fmt: skip
    assert any(len(p) > 1 for p in _parts_of_each_group(plain, groups).values())


def test_every_group_is_tested_in_exactly_one_fold_and_trained_together():
    groups, strata = _units()
    folds = make_folds(
        len(groups), k=4, usable=np.ones(len(groups), bool), strata=strata, val_fraction=0.2,
        seed=0, groups=groups,
    )  # fmt: skip
    tested = np.zeros(len(groups), int)
    for split in folds:
        tested += split == "test"
        assert all(len(p) == 1 for p in _parts_of_each_group(split, groups).values())
    assert np.all(tested == 1)


def test_fewer_groups_than_folds_is_refused():
    groups, strata = _units(n_groups=3)
    with pytest.raises(InputError, match="need at least 4 groups"):
        make_folds(
            len(groups), k=4, usable=np.ones(len(groups), bool), strata=strata,
            val_fraction=0.2, seed=0, groups=groups,
        )  # fmt: skip

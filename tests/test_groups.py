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


def _donor_cells(n_donors=8, per_donor=12, seed=0):
    """Profile data: cells of 8 donors, two cell types present in every donor."""
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(seed)
    n = n_donors * per_donor
    kind = np.tile(np.arange(2), n // 2)
    x = rng.normal(size=(n, 10)).astype(np.float32)
    x[:, 0] += 2.0 * kind
    obs = pd.DataFrame(
        {
            "donor": pd.Categorical(np.repeat([f"d{i}" for i in range(n_donors)], per_donor)),
            "cell_type": pd.Categorical(np.where(kind == 1, "B", "T")),
        },
        index=[f"c{i}" for i in range(n)],
    )
    return ad.AnnData(x, obs=obs)


def test_classify_keeps_a_donors_cells_in_one_fold_and_one_part():
    """--group-key through the tool: every donor is tested in one cross-validation fold
    (rnn_fold), lies in one part of the saved model's split, and the record names the key."""
    import anndata_rnn as ar

    adata = _donor_cells()
    result = ar.tl.classify.run(
        adata, label_key="cell_type", layout="profile", group_key="donor", cv=4, max_epochs=2,
        seed=0, quiet=True,
    )  # fmt: skip
    by_donor = adata.obs.groupby("donor", observed=True)
    assert (by_donor["rnn_fold"].nunique() == 1).all()
    assert (by_donor["rnn_split"].nunique() == 1).all()
    assert adata.obs["rnn_fold"].nunique() == 4
    assert result.record["cv"]["scheme"] == "StratifiedGroupKFold"
    assert result.record["cv"]["group_key"] == "donor"
    assert result.model.config["train"]["group_key"] == "donor"
    # the plain split keeps donors together too; without the key it mixes them
    plain = _donor_cells()
    ar.tl.classify.run(
        plain, label_key="cell_type", layout="profile", group_key="donor", max_epochs=2, seed=0,
        quiet=True,
    )  # fmt: skip
    assert (plain.obs.groupby("donor", observed=True)["rnn_split"].nunique() == 1).all()
    assert set(plain.obs["rnn_split"]) == {"train", "val", "test"}
    mixed = _donor_cells()
    ar.tl.classify.run(mixed, label_key="cell_type", layout="profile", max_epochs=2, quiet=True)
    assert (mixed.obs.groupby("donor", observed=True)["rnn_split"].nunique() > 1).any()


def test_a_missing_group_column_is_one_clear_error():
    import anndata_rnn as ar

    with pytest.raises(InputError, match="obs has no group column 'patient'"):
        ar.tl.classify.run(
            _donor_cells(), label_key="cell_type", layout="profile", group_key="patient",
            max_epochs=1, quiet=True,
        )  # fmt: skip

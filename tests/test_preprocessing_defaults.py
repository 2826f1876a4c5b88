"""normalize="auto" on unlogged levels (FPKM/TPM-like) and the wide-profile gene selection."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from anndata_rnn import InputError
from anndata_rnn.features import FeatureSource
from anndata_rnn.preprocessing import (
    Preprocessor,
    looks_like_counts,
    looks_like_levels,
    resolve_n_top_genes,
)
from anndata_rnn.sequences import build_index


def levels(n_obs=60, n_genes=50, seed=0):
    """Lognormal FPKM-like values with dropouts: non-negative, non-integer, heavy-tailed."""
    rng = np.random.default_rng(seed)
    x = np.exp(rng.normal(1.0, 2.0, size=(n_obs, n_genes)))
    x[rng.random(x.shape) < 0.3] = 0.0
    return x.astype(np.float32)


def test_levels_are_recognised_and_others_are_not():
    rng = np.random.default_rng(0)
    assert looks_like_levels(levels())[0]
    assert not looks_like_levels(np.log1p(levels()))[0]  # already logged
    assert not looks_like_levels(rng.normal(size=(50, 20)))[0]  # negative (scaled)
    counts = rng.poisson(5, size=(50, 20)).astype(np.float32) * 20
    assert not looks_like_levels(counts)[0] and looks_like_counts(counts)[0]


def fit_profile(x, caplog, **kwargs):
    obs = pd.DataFrame(index=[f"c{i}" for i in range(x.shape[0])])
    var = pd.DataFrame(index=[f"g{i}" for i in range(x.shape[1])])
    adata = ad.AnnData(x, obs=obs, var=var)
    index = build_index(adata, layout="profile", chunk_size=8, n_features=x.shape[1])
    prep = Preprocessor(layout="profile", use_time=False)
    with caplog.at_level(logging.INFO, logger="anndata_rnn"):
        prep.fit(FeatureSource(adata), index, np.arange(x.shape[0]), **kwargs)
    return prep, adata


def test_auto_applies_log1p_only_and_says_so(caplog):
    x = levels()
    prep, _ = fit_profile(x, caplog)
    assert prep.log1p and not prep.normalize
    assert "log1p only" in caplog.text and "FPKM" in caplog.text
    np.testing.assert_allclose(prep.mean, np.log1p(x.astype(np.float64)).mean(0), rtol=1e-4)
    stored = Preprocessor.from_stored(prep.config(), prep.arrays(), layout=prep.layout)
    assert stored.log1p
    # an old config (no "log1p" key) reads as before: no transform
    old = prep.config()
    del old["log1p"]
    assert not Preprocessor.from_stored(old, prep.arrays(), layout=prep.layout).log1p
    with pytest.raises(InputError):
        prep.transform_rows(-x, np.asarray([f"g{i}" for i in range(x.shape[1])], dtype=object))


def test_never_keeps_levels(caplog):
    prep, _ = fit_profile(levels(), caplog, normalize="never")
    assert not prep.log1p and not prep.normalize


def test_auto_gene_selection_for_wide_profiles(caplog):
    assert resolve_n_top_genes("auto", "profile", 5000, 32)[0] == 2000
    assert resolve_n_top_genes("auto", "profile", 3000, 16)[0] == 2000  # 188 steps
    assert resolve_n_top_genes("auto", "profile", 3000, 32)[0] is None
    assert resolve_n_top_genes("auto", "obs-series", 9000, None)[0] is None
    assert resolve_n_top_genes(0, "profile", 9000, 32)[0] is None
    assert resolve_n_top_genes(500, "profile", 9000, 32)[0] == 500
    with pytest.raises(InputError):
        resolve_n_top_genes("many", "profile", 9000, 32)
    assert resolve_n_top_genes("auto", "profile", 1500, 8)[0] is None  # nothing to drop
    # 2,400 genes read 16 at a time = 150 steps > 128: 2,000 highly variable genes, logged
    prep, _ = fit_profile(np.log1p(levels(80, 2400)), caplog, n_top_genes="auto", chunk_size=16)
    assert "highly variable" in caplog.text and len(prep.features) == 2000

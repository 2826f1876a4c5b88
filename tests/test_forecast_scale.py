"""Forecasting many genes, the pure temporal holdout and failed fits (issue 25, items 3, 4, 6).

Fast: small synthetic data, a few hundred genes at most; the 4,000-gene timing is
``benchmarks/forecast_scale.py`` (not a test).
"""

from __future__ import annotations

import dataclasses

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge

from anndata_rnn import Model, ModelFileError, tl
from anndata_rnn.baselines import (
    DENSE_AR_MAX_GENES,
    GeneRidgeAR,
    _lag_design,
    ar_parameters,
    resolve_ar_form,
)
from anndata_rnn.networks import build_module

torch.set_num_threads(1)
KEY = "rnn"
FAST = dict(hidden=(8,), max_epochs=2, batch_size=16, patience=2, seed=0, quiet=True)


def time_course(n_series=10, n_steps=8, n_genes=20, seed=0, kind="ar") -> ad.AnnData:
    """obs-series: per-gene AR(1) around a per-gene mean (``kind="ar"``), white noise
    (``"noise"``: nothing beyond the mean to learn) at irregular times."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n_series, n_steps, n_genes))
    x[:, 0] = rng.normal(size=(n_series, n_genes))
    phi = 0.8 if kind == "ar" else 0.0
    for t in range(1, n_steps):
        x[:, t] = phi * x[:, t - 1] + rng.normal(size=(n_series, n_genes))
    x += rng.uniform(2, 5, n_genes)
    times = np.concatenate(
        [np.zeros((n_series, 1)), rng.uniform(0.5, 1.5, (n_series, n_steps - 1)).cumsum(1)], 1
    )
    obs = pd.DataFrame(
        {
            "series": np.repeat([f"s{i}" for i in range(n_series)], n_steps),
            "time": np.round(times, 3).ravel(),
        },
        index=[f"o{i}" for i in range(n_series * n_steps)],
    )
    return ad.AnnData(
        x.reshape(-1, n_genes).astype(np.float32),
        obs=obs,
        var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]),
    )


# ------------------------------------------------------------------------ per-gene AR --
def test_per_gene_ar_parameters_are_linear_in_genes():
    """At 4,000 genes the AR path is per gene: 7 parameters a gene (3 value lags, 3 gap lags,
    an intercept) instead of the dense layer's 12,004 (48 M in all)."""
    assert resolve_ar_form("auto", 4000) == "per_gene"
    assert resolve_ar_form("auto", DENSE_AR_MAX_GENES) == "dense"
    counts = {}
    for genes in (1000, 4000):
        config = {
            "architecture": {
                "hidden": [8],
                "cell": "lstm",
                "dropout": 0.0,
                "bidirectional": False,
                "linear_path": True,
                "ar_form": "per_gene",
            },
            "n_outputs": genes,
            "residual": True,
            "ar_lags": 3,
        }
        module = build_module("forecast", genes + 1, config)
        counts[genes] = sum(p.numel() for p in module.ar.parameters())
        assert counts[genes] == ar_parameters("per_gene", 3, genes + 1, genes) == 7 * genes
        # and the recurrent input and output layers: linear in the genes as well
        total = sum(p.numel() for p in module.parameters())
        assert total < 60 * genes
    assert counts[4000] == 4 * counts[1000]
    assert ar_parameters("dense", 3, 4001, 4000) == 48_016_000


@pytest.mark.parametrize("rank", [0, 3])
def test_gene_ridge_is_a_ridge_per_gene_and_the_network_starts_at_it(rank):
    """Each gene's coefficients are scikit-learn's Ridge on that gene's own lags, the gaps and
    (rank > 0) the lags' scores on the principal axes, at the chosen penalty, which has the least
    brute-force leave-one-out error; the per-gene AR path started there predicts the same."""
    rng = np.random.default_rng(0)
    n, steps, f, lags = 9, 7, 6, 3
    x = rng.normal(size=(n, steps, f + 1)).astype(np.float32)
    positions = np.nonzero(np.ones((n, steps - 1), dtype=bool))
    change = rng.normal(size=(len(positions[0]), f)) + x[positions][:, :f]
    ar = GeneRidgeAR(lags, f + 1, f, ranks=(rank,)).fit(x, positions, change)
    design = _lag_design(x, positions, lags).astype(np.float64)
    assert ar.rank_ == rank and ar.loadings_.shape == (f, rank)
    if rank:  # the principal axes of the training inputs
        pca = PCA(n_components=rank, svd_solver="full").fit(x[positions][:, :f])
        np.testing.assert_allclose(np.abs(ar.loadings_), np.abs(pca.components_.T), atol=1e-5)

    def features(g):
        blocks = []
        for j in range(lags):
            step = design[:, j * (f + 1) : (j + 1) * (f + 1)]
            blocks += [step[:, [g, f]], step[:, :f] @ ar.loadings_]
        return np.concatenate(blocks, axis=1)

    for g in range(f):
        ridge = Ridge(alpha=ar.alpha_).fit(features(g), change[:, g])
        np.testing.assert_allclose(ar.coef_[g], ridge.coef_, atol=1e-7)
        assert ar.intercept_[g] == pytest.approx(ridge.intercept_, abs=1e-7)
    brute = np.zeros(len(ar.alphas))
    for a, alpha in enumerate(ar.alphas):
        for g in range(f):
            for i in range(len(change)):
                keep = np.arange(len(change)) != i
                fit = Ridge(alpha=alpha).fit(features(g)[keep], change[keep, g])
                brute[a] += (fit.predict(features(g)[i : i + 1])[0] - change[i, g]) ** 2
    assert ar.alpha_ == ar.alphas[int(np.argmin(brute))]
    np.testing.assert_allclose(ar.loo_error_ * len(change) * f, brute, rtol=1e-6)

    config = {
        "architecture": {
            "hidden": [4],
            "cell": "gru",
            "dropout": 0.0,
            "bidirectional": False,
            "linear_path": True,
            "recurrent": False,
            "ar_form": "per_gene",
            "ar_rank": rank,
        },
        "n_outputs": f,
        "residual": True,
        "ar_lags": lags,
    }
    module = build_module("forecast", f + 1, config).eval()
    module.init_linear_ar(ar.coef_, ar.intercept_, ar.loadings_)
    n_parameters = sum(p.numel() for p in module.parameters())
    assert n_parameters == ar_parameters("per_gene", lags, f + 1, f, rank)
    with torch.no_grad():
        prediction, _, _ = module(torch.from_numpy(x), torch.full((n,), steps))
    every = np.nonzero(np.ones((n, steps), dtype=bool))
    expected = x[..., :f].reshape(-1, f) + ar.predict(_lag_design(x, every, lags))
    np.testing.assert_allclose(prediction.numpy().reshape(-1, f), expected, atol=1e-4)


def test_the_cross_gene_rank_is_chosen_by_the_data():
    """Genes driven by 2 shared factors get a cross-gene term; independent genes get none."""
    rng = np.random.default_rng(1)
    n, steps, f, lags = 30, 10, 40, 2
    shared = np.cumsum(rng.normal(size=(n, steps, 2)), axis=1) @ rng.normal(size=(2, f))
    for x, expected in ((shared, True), (np.zeros_like(shared), False)):
        x = x + 0.3 * rng.normal(size=x.shape)
        x = np.concatenate([x, np.zeros((n, steps, 1))], axis=2).astype(np.float32)
        positions = np.nonzero(np.ones((n, steps - 1), dtype=bool))
        seq, t = positions
        change = x[seq, t + 1, :f] - x[seq, t, :f]
        ar = GeneRidgeAR(lags, f + 1, f).fit(x, positions, change)
        assert (ar.rank_ > 0) == expected, ar.rank_


def test_many_genes_use_the_per_gene_ar_and_say_so(tmp_path):
    """Above DENSE_AR_MAX_GENES genes the default is per gene: in params, the config, the
    metrics' description and the table title; the model file rebuilds it."""
    genes = DENSE_AR_MAX_GENES + 44
    adata = time_course(n_series=12, n_steps=6, n_genes=genes)
    model = tl.forecast(adata, series_key="series", time_key="time", **FAST)
    record = adata.uns[KEY]
    assert record["params"]["ar_form_used"] == "per_gene"
    rank = int(record["params"]["ar_rank"])
    assert record["params"]["ar_parameters"] == (3 * (2 + rank) + rank + 1) * genes
    assert model.config["architecture"]["ar_form"] == "per_gene"
    assert model.config["architecture"]["ar_rank"] == rank
    n_ar = sum(p.numel() for p in model.module.ar.parameters())
    assert n_ar == record["params"]["ar_parameters"]
    assert "per-gene" in record["metrics"]["linear_ar"]["model"]
    model.save(tmp_path / "m.h5")
    again = time_course(n_series=12, n_steps=6, n_genes=genes)
    tl.predict(again, Model.load(tmp_path / "m.h5"))
    np.testing.assert_array_equal(again.layers[f"{KEY}_forecast"], adata.layers[f"{KEY}_forecast"])

    # a stranger's file with an unknown AR form is refused at load
    with h5py.File(tmp_path / "m.h5", "r+") as f:
        text = f.attrs["config"]
        f.attrs["config"] = text.replace('"ar_form": "per_gene"', '"ar_form": "sparse"')
    with pytest.raises(ModelFileError, match="ar_form"):
        Model.load(tmp_path / "m.h5")


def test_few_genes_keep_the_dense_ar():
    adata = time_course(n_genes=5)
    model = tl.forecast(adata, series_key="series", time_key="time", **FAST)
    assert adata.uns[KEY]["params"]["ar_form_used"] == "dense"
    assert isinstance(model.module.ar, torch.nn.Linear)
    # and the form can be chosen
    tl.forecast(
        adata, series_key="series", time_key="time", ar_form="per_gene", overwrite=True, **FAST
    )
    params = adata.uns[KEY]["params"]
    assert params["ar_form_used"] == "per_gene"
    assert params["ar_parameters"] == (3 * (2 + params["ar_rank"]) + params["ar_rank"] + 1) * 5


# ---------------------------------------------------------------- temporal holdout --
@pytest.mark.parametrize("test_fraction", [0.3, 0.0])
def test_held_out_steps_are_seen_by_no_fit(test_fraction):
    """With a test split (the case that used to leak) and without: the last K time points of
    every series are shifted by +50; the fitted statistics and the training targets (the
    persistence loss on the training steps) show no trace of them."""
    k = 2
    adata = time_course(n_series=12, n_steps=9, n_genes=4, seed=3)
    order = adata.obs.groupby("series", observed=True)["time"].rank(ascending=False)
    late = (order <= k).to_numpy()
    adata.X[late] += 50.0
    model = tl.forecast(
        adata,
        series_key="series",
        time_key="time",
        holdout_steps=k,
        test_fraction=test_fraction,
        **FAST,
    )
    split = adata.obs[f"{KEY}_split"].to_numpy()
    train = (split == "train") & ~late
    x = np.asarray(adata.X)
    prep = model.preprocessor
    np.testing.assert_allclose(prep.mean, x[train].mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(prep.std, x[train].std(axis=0), rtol=1e-4)
    # the persistence loss of the training targets: one-step changes within the first steps
    changes = []
    for name in adata.obs.loc[split == "train", "series"].unique():
        rows = np.flatnonzero((adata.obs["series"] == name).to_numpy() & ~late)
        rows = rows[np.argsort(adata.obs["time"].to_numpy()[rows])]
        changes.append(np.diff((x[rows] - prep.mean) / prep.std, axis=0))
    expected = float(np.mean(np.concatenate(changes) ** 2))
    assert adata.uns[KEY]["history"]["persistence_loss"] == pytest.approx(expected, rel=1e-4)
    evaluation = adata.uns[KEY]["evaluation"]
    assert evaluation["kind"] == "rollout of the held-out last steps"
    assert evaluation["units"] == ("test" if test_fraction else "all")


# ---------------------------------------------------------------------- failed fits --
def test_a_forecaster_that_learns_nothing_is_flagged():
    """White noise: a network that cannot move (lr 1e-9) stays at persistence (no warm start)
    or at its ridge start (with the AR path); both are flagged and cautioned, and the ridge start
    is kept (the trained weights would have to be 1 % better on validation)."""
    adata = time_course(n_series=16, n_steps=8, n_genes=5, kind="noise")
    settings = dict(FAST, lr=1e-9, min_steps=20)
    tl.forecast(adata, series_key="series", time_key="time", linear_path=False, **settings)
    history = adata.uns[KEY]["history"]
    assert history["failed_fit"] and "persistence" in list(history["failed_against"])
    assert any("did not learn more than persistence" in c for c in adata.uns[KEY]["cautions"])

    tl.forecast(adata, series_key="series", time_key="time", overwrite=True, **settings)
    history = adata.uns[KEY]["history"]
    # the ridge start beats persistence on white noise, but training added nothing to it
    assert list(history["failed_against"]) == ["warm start"]
    assert history["final_loss"] >= 0.99 * history["warm_start_loss"]
    assert any("did not improve on its ridge start" in c for c in adata.uns[KEY]["cautions"])
    # and the start is kept: the network forecasts exactly like the linear AR
    assert history["kept"] == "warm start"
    metrics = adata.uns[KEY]["metrics"]
    assert metrics["rnn"]["mse"] == pytest.approx(metrics["linear_ar"]["mse"], rel=1e-5)


def test_validation_rollout_is_the_ar_rollout_of_the_training_window():
    """The rollout check scores the validation units' last K steps of the training window (the
    task's held-out steps already cut off): for the AR path alone started at the ridge fit it
    equals the ridge's own rollout of those steps, recomputed with the baseline's code."""
    from anndata_rnn.baselines import ar_forecast, fit_linear_ar
    from anndata_rnn.features import FeatureSource
    from anndata_rnn.forecast_inputs import holdout_gaps, network_inputs
    from anndata_rnn.forecasting import validation_rollout
    from anndata_rnn.preprocessing import Preprocessor, encode
    from anndata_rnn.sequences import build_index

    adata = time_course(n_series=10, n_steps=9, n_genes=4, seed=5)
    source = FeatureSource(adata)
    index = build_index(adata, layout="obs-series", series_key="series", time_key="time")
    prep = Preprocessor(layout="obs-series", scale="feature", use_time=True, imputation="causal")
    ids = np.arange(index.n_sequences)
    prep.fit(source, index, ids[:7], normalize="never")
    enc = encode(index, source, prep)
    k, lags = 3, 3
    ar = fit_linear_ar(enc, prep, ids[:7], lags, "per_gene")
    config = {
        "architecture": {
            "hidden": [4],
            "cell": "gru",
            "dropout": 0.0,
            "bidirectional": False,
            "linear_path": True,
            "recurrent": False,
            "ar_form": "per_gene",
            "ar_rank": ar.rank_,
        },
        "n_outputs": 4,
        "residual": True,
        "ar_lags": lags,
    }
    module = build_module("forecast", 5, config).eval()
    module.init_linear_ar(ar.coef_, ar.intercept_, ar.loadings_)
    val = ids[7:]
    got = validation_rollout(module, enc, prep, val, k, torch.device("cpu"))
    sub = dataclasses.replace(
        enc,
        values=enc.values[val],
        observed=enc.observed[val],
        lengths=enc.lengths[val],
        times=enc.times[val],
        n_missing=enc.n_missing[val],
    )
    context = dataclasses.replace(sub, lengths=sub.lengths - k)
    _, gaps = holdout_gaps(sub, k)
    x = network_inputs(context, prep, np.arange(len(val)), last_gap=gaps[:, 0])
    _, rolled = ar_forecast(ar, x, context.lengths, gaps[:, 1:], prep, lags)
    truth = sub.values[:, -k:, :4]
    assert got == pytest.approx(float(np.mean((rolled - truth) ** 2)), rel=1e-4)


def test_the_cross_gene_rank_is_chosen_on_later_time_points():
    """Leave-one-out over single time points picks the largest cross-gene rank; the temporal
    holdout inside the training window (refit without the last 3 training steps, roll them out)
    picks a smaller one, which rolls the truly held-out last 3 steps out better. Measured on the
    benchmark's simulation (200 genes, 20 series × 15 steps, 14 training series): leave-one-out
    rank 16, held-out rollout MSE 1.354; temporal choice rank 4, 0.778."""
    import importlib.util
    from pathlib import Path

    from anndata_rnn.baselines import fit_linear_ar
    from anndata_rnn.features import FeatureSource
    from anndata_rnn.forecasting import ar_validation_rollout, choose_ar_rank
    from anndata_rnn.preprocessing import Preprocessor, encode
    from anndata_rnn.sequences import build_index

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "forecast_scale.py"
    spec = importlib.util.spec_from_file_location("forecast_scale_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    adata = bench.simulate(20, 15, 200, 0)
    index = build_index(adata, layout="obs-series", series_key="series", time_key="time")
    source = FeatureSource(adata)
    ids = np.arange(20)
    split = {"train": ids[:14], "val": ids[14:17], "test": ids[17:]}
    window = index.truncate(3)
    prep = Preprocessor(layout="obs-series", scale="feature", use_time=True, imputation="causal")
    prep.fit(source, window, split["train"], normalize="never")
    train_enc, full_enc = encode(window, source, prep), encode(index, source, prep)
    loo = fit_linear_ar(train_enc, prep, split["train"], 3, "per_gene")
    chosen, errors = choose_ar_rank(train_enc, prep, split, 3, 3, loo)
    assert sorted(errors) == [0, 2, 4, 8, 16]
    assert chosen.rank_ == min(errors, key=errors.get) < loo.rank_
    held_out = {
        name: ar_validation_rollout(fit, full_enc, prep, ids, 3, 3)
        for name, fit in (("loo", loo), ("chosen", chosen))
    }
    assert held_out["chosen"] < 0.8 * held_out["loo"], held_out

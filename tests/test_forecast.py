"""Forecasting (tl.forecast, the forecast command, applying a saved forecaster).

Thresholds are measurements with a margin (CPU, one thread, seed 0); the measured values are
in the comments next to each assertion.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.linear_model import Ridge

from anndata_rnn import InputError, Model, tl
from anndata_rnn.cli import main
from anndata_rnn.metrics import regression_metrics
from anndata_rnn.preprocessing import causal_fill

KEY = "rnn"


# ---------------------------------------------------------------------------------- data --
def repressilator(n_series=120, n_steps=25, seed=0, noise=0.05) -> ad.AnnData:
    """A noisy nonlinear gene network: the repressilator (Elowitz & Leibler 2000).

    Three mRNAs and their proteins (6 genes, log1p scale, Gaussian measurement noise) from
    random initial states, sampled at irregular times (gaps uniform in 0.3-1.5).
    """
    rng = np.random.default_rng(seed)
    alpha, alpha0, hill, beta = 216.0, 0.216, 2.0, 5.0

    def deriv(y):
        m, p = y[:, :3], y[:, 3:]
        dm = -m + alpha / (1 + p[:, [2, 0, 1]] ** hill) + alpha0
        return np.concatenate([dm, -beta * (p - m)], axis=1)

    y = rng.uniform(0, 60, size=(n_series, 6))
    gaps = rng.uniform(0.3, 1.5, size=(n_series, n_steps - 1))
    h = 0.01
    grid_index = np.round(np.concatenate([np.zeros((n_series, 1)), gaps.cumsum(1)], 1) / h)
    grid_index = grid_index.astype(int)
    states = np.zeros((grid_index.max() + 1, n_series, 6))
    for i in range(len(states)):  # RK4
        states[i] = y
        k1 = deriv(y)
        k2 = deriv(y + h / 2 * k1)
        k3 = deriv(y + h / 2 * k2)
        k4 = deriv(y + h * k3)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    values = states[grid_index, np.arange(n_series)[:, None]]  # (series, steps, 6)
    x = np.log1p(np.maximum(values, 0)) + rng.normal(0, noise, values.shape)
    obs = pd.DataFrame(
        {
            "series": np.repeat([f"s{i}" for i in range(n_series)], n_steps),
            "time": np.round(grid_index * h, 2).ravel(),
        },
        index=[f"obs{i}" for i in range(n_series * n_steps)],
    )
    var = pd.DataFrame(index=["m1", "m2", "m3", "p1", "p2", "p3"])
    return ad.AnnData(x.reshape(-1, 6).astype(np.float32), obs=obs, var=var)


@pytest.fixture(scope="module")
def small():
    return repressilator(n_series=30, n_steps=12, seed=1)


FAST = dict(hidden=(8,), max_epochs=2, batch_size=16, patience=2, seed=0, quiet=True)


def series_rows(adata, name):
    rows = np.flatnonzero(adata.obs["series"].astype(str).to_numpy() == name)
    return rows[np.argsort(adata.obs["time"].to_numpy()[rows])]


# ----------------------------------------------------------------------- done-when tests --
def test_yeast_var_series_rollout_beats_baselines(spellman, tmp_path):
    """cdc15, complete genes, 30 % genes held out: last 4 time points from the first 20.

    A pure temporal holdout: no gene's last 4 points are seen by the preprocessing, the network
    or the AR (before, the training genes' were, and the RNN measured 0.093 against the AR's
    0.191). Measured now (MSE of the rollout on the test genes): seed 0: RNN 0.145, linear AR
    0.193, plain AR 0.190, persistence 0.401; seed 1: RNN 0.206, linear AR 0.188, plain AR 0.184,
    persistence 0.401. The RNN is within about 10 % of the linear AR either way and far below
    persistence; the bounds are what holds for both seeds, slightly loosened (the test runs
    seed 0)."""
    adata = spellman[spellman.obs["series"] == "cdc15"].copy()
    complete = ~np.isnan(np.asarray(adata.X)).any(axis=0)
    adata = adata[:, complete].copy()  # 4381 genes × 24 time points
    model = tl.forecast(
        adata,
        layout="var-series",
        series_key="series",
        time_key="time",
        holdout_steps=4,
        test_fraction=0.3,
        hidden=(32,),
        max_epochs=30,
        batch_size=128,
        seed=0,
        quiet=True,
    )
    path = tmp_path / "yeast_forecast.h5ad"
    adata.write_h5ad(path)
    out = ad.read_h5ad(path)

    order = np.argsort(out.obs["time"].to_numpy())
    x = np.asarray(out.X)[order].T  # genes × 24, in time order
    test = (out.var[f"{KEY}_split"] == "test").to_numpy()
    train = (out.var[f"{KEY}_split"] == "train").to_numpy()
    assert test.sum() == round(0.3 * out.n_vars)
    forecast = out.varm[f"{KEY}_forecast"]
    assert forecast.shape == (out.n_vars, 4)
    columns = out.uns[KEY]["holdout_columns"]
    np.testing.assert_array_equal(columns["time"], [240.0, 250.0, 270.0, 290.0])

    truth = x[test, 20:]
    rnn_mse = float(np.mean((forecast[test] - truth) ** 2))
    persistence_mse = float(np.mean((x[test, 19:20] - truth) ** 2))
    metrics = out.uns[KEY]["metrics"]
    assert out.uns[KEY]["evaluation"]["kind"] == "rollout of the held-out last steps"
    # what the file reports is what the test recomputes from its arrays
    assert rnn_mse == pytest.approx(metrics["rnn"]["mse"], rel=1e-4)
    assert persistence_mse == pytest.approx(metrics["persistence"]["mse"], rel=1e-4)

    # an independent linear AR (ridge on the last 3 values, rolled out), trained on the
    # training genes' first 20 time points (the last 4 are held out from every fit): the
    # package's AR must not be weaker than this plain one
    lags = 3
    design = np.concatenate([x[train, t - lags : t] for t in range(lags, 20)])
    target = np.concatenate([x[train, t] for t in range(lags, 20)])
    ridge = Ridge(alpha=1.0).fit(design, target)
    window = x[test, 20 - lags : 20].copy()
    rolled = []
    for _ in range(4):
        step = ridge.predict(window)
        rolled.append(step)
        window = np.concatenate([window[:, 1:], step[:, None]], axis=1)
    plain_ar_mse = float(np.mean((np.stack(rolled, 1) - truth) ** 2))

    ar_mse = metrics["linear_ar"]["mse"]
    print({"plain_ar": plain_ar_mse, **{m: metrics[m]["mse"] for m in metrics}})
    # measured (docstring): AR / plain AR 1.016 (seed 1: 1.022); RNN / AR 0.75 (1.09); RNN /
    # persistence 0.36 (0.51)
    assert ar_mse < plain_ar_mse * 1.05
    assert rnn_mse < 1.15 * ar_mse
    assert rnn_mse <= 0.55 * persistence_mse
    # no fit saw the held-out points: the preprocessing mean is that of the first 20 points
    # of the training genes
    assert float(model.preprocessor.mean[0]) == pytest.approx(float(x[train, :20].mean()), 1e-4)
    assert float(model.preprocessor.std[0]) == pytest.approx(float(x[train, :20].std()), 1e-4)


def test_synthetic_network_one_step_beats_baselines():
    """120 repressilator series, irregular sampling: one step ahead on held-out series."""
    adata = repressilator()
    tl.forecast(
        adata,
        series_key="series",
        time_key="time",
        hidden=(32,),
        max_epochs=60,
        batch_size=16,
        patience=10,
        seed=0,
        quiet=True,
    )
    metrics = adata.uns[KEY]["metrics"]
    assert adata.uns[KEY]["evaluation"]["kind"] == "one step ahead"
    rnn, persistence, ar = (metrics[m]["mse"] for m in ("rnn", "persistence", "linear_ar"))
    # measured: RNN 0.045, linear AR 0.111, persistence 0.505
    assert rnn < 0.7 * ar
    assert rnn < 0.2 * persistence
    assert metrics["rnn"]["r2"] > 0.9  # measured 0.949
    # a fit that learned: better than persistence and than its ridge start, so not flagged
    history = adata.uns[KEY]["history"]
    assert not history["failed_fit"] and not len(history["failed_against"])
    assert history["final_loss"] < 0.99 * history["warm_start_loss"]

    # the layer holds exactly what was scored: recompute the RNN's MSE on the test series
    test_series = adata.obs.loc[adata.obs[f"{KEY}_split"] == "test", "series"].unique()
    layer = adata.layers[f"{KEY}_forecast"]
    errors = []
    for name in test_series:
        rows = series_rows(adata, name)
        assert np.isnan(layer[rows[0]]).all()  # no forecast for a series' first step
        errors.append(layer[rows[1:]] - adata.X[rows[1:]])
    assert np.mean(np.concatenate(errors) ** 2) == pytest.approx(rnn, rel=1e-4)


def test_krumsiek_reports_all_three_models_honestly(krumsiek):
    """4 realizations, each a different fate: one fate is held out, the report is truthful."""
    raw = krumsiek.copy()
    tl.forecast(
        krumsiek,
        series_key="series",
        time_key="time",
        hidden=(32,),
        max_epochs=50,
        seed=0,
        quiet=True,
    )
    layer = krumsiek.layers[f"{KEY}_forecast"]
    assert layer.shape == krumsiek.shape
    first = krumsiek.obs["time"].to_numpy() == 0
    assert np.isnan(layer[first]).all() and np.isfinite(layer[~first]).all()
    assert krumsiek.obsm[f"X_{KEY}"].shape == (krumsiek.n_obs, 32)

    metrics = krumsiek.uns[KEY]["metrics"]
    assert set(metrics) == {"rnn", "linear_path", "persistence", "linear_ar"}
    for name in metrics:
        for m in ("mse", "mae", "r2", "pearson_r"):
            assert np.isfinite(metrics[name][m]), (name, m)
    # recompute persistence and the RNN on the held-out fate from the data itself
    (test_fate,) = krumsiek.obs.loc[krumsiek.obs[f"{KEY}_split"] == "test", "series"].unique()
    rows = series_rows(krumsiek, test_fate)
    x = np.asarray(raw.X)[rows]
    assert np.mean((x[1:] - x[:-1]) ** 2) == pytest.approx(metrics["persistence"]["mse"], 1e-4)
    assert np.mean((layer[rows[1:]] - x[1:]) ** 2) == pytest.approx(metrics["rnn"]["mse"], 1e-4)
    # measured on the held-out fate (MSE): RNN 9.5e-5, persistence 1.18e-4, linear AR 1.34e-3.
    # The smooth trajectories make persistence hard to beat: the RNN starts at persistence (its
    # residual head is zero at initialisation) and only just beats it; with a randomly
    # initialised head it lost (2.5e-3), and the linear AR, fitted on two other fates, loses.
    # No ranking is asserted: the point is that the reported numbers are the true ones.
    print({name: metrics[name]["mse"] for name in metrics})
    # the input was not modified except for the added keys
    np.testing.assert_array_equal(np.asarray(krumsiek.X), np.asarray(raw.X))
    assert set(krumsiek.obs.columns) - set(raw.obs.columns) == {f"{KEY}_split"}


def test_multi_step_rollout_future(small):
    adata = small.copy()
    tl.forecast(adata, series_key="series", time_key="time", horizon=3, **FAST)
    future = adata.uns[KEY]["future"]
    n_series = adata.obs["series"].nunique()
    assert future["values"].shape == (n_series * 3, adata.n_vars)
    assert np.isfinite(future["values"]).all()
    assert list(future["features"]) == list(adata.var_names)
    np.testing.assert_array_equal(future["step"], np.tile([1, 2, 3], n_series))
    for i, name in enumerate(future["series"][::3]):
        t = adata.obs.loc[adata.obs["series"] == name, "time"].sort_values().to_numpy()
        expected = t[-1] + np.median(np.diff(t)) * np.arange(1, 4)
        np.testing.assert_allclose(future["time"][3 * i : 3 * i + 3], expected)
        assert (future["time"][3 * i : 3 * i + 3] > t[-1]).all()

    # explicit future time points (after every series' end) set the horizon
    end = adata.obs["time"].max()
    other = small.copy()
    tl.forecast(
        other, series_key="series", time_key="time", future_times=[end + 1, end + 4], **FAST
    )
    future = other.uns[KEY]["future"]
    assert future["values"].shape == (n_series * 2, other.n_vars)
    np.testing.assert_allclose(future["time"], np.tile([end + 1, end + 4], n_series))
    with pytest.raises(InputError, match="not after the last time point"):
        tl.forecast(small.copy(), series_key="series", time_key="time", future_times=[1.0], **FAST)


def test_saved_forecaster_reproduces_training_forecasts(small, tmp_path):
    adata = small.copy()
    model = tl.forecast(
        adata, series_key="series", time_key="time", horizon=2, holdout_steps=2, **FAST
    )
    model.save(tmp_path / "forecaster.h5")
    loaded = Model.load(tmp_path / "forecaster.h5")
    assert loaded.task == "forecast"

    again = small.copy()
    tl.predict(again, loaded)
    np.testing.assert_array_equal(again.layers[f"{KEY}_forecast"], adata.layers[f"{KEY}_forecast"])
    np.testing.assert_array_equal(again.obsm[f"X_{KEY}"], adata.obsm[f"X_{KEY}"])
    for part in ("future", "holdout"):
        for field in ("values", "time"):
            np.testing.assert_array_equal(again.uns[KEY][part][field], adata.uns[KEY][part][field])
    assert set(again.uns[KEY]["metrics"]) == {"rnn", "persistence"}

    # new data: a few of the series, in another row order -> the same forecasts for them
    keep = adata.obs["series"].isin(["s3", "s11", "s20"]).to_numpy()
    new = small[keep].copy()
    new = new[::-1].copy()
    tl.predict(new, loaded)
    np.testing.assert_array_equal(
        new.layers[f"{KEY}_forecast"], adata[new.obs_names].layers[f"{KEY}_forecast"]
    )

    # causality: changing the last observation of each series changes no forecast
    changed = small.copy()
    last = (
        changed.obs.groupby("series", observed=True)["time"].transform("max") == changed.obs["time"]
    )
    changed.X[last.to_numpy()] += 5.0
    tl.predict(changed, loaded)
    np.testing.assert_array_equal(
        changed.layers[f"{KEY}_forecast"], adata.layers[f"{KEY}_forecast"]
    )


def test_saved_var_series_forecaster_reproduces_varm(spellman, tmp_path):
    adata = spellman[spellman.obs["series"] == "cdc15", :300].copy()  # with missing values
    model = tl.forecast(
        adata, layout="var-series", series_key="series", time_key="time", holdout_steps=3, **FAST
    )
    assert adata.varm[f"{KEY}_forecast"].shape == (300, 3)
    model.save(tmp_path / "m.h5")
    again = spellman[spellman.obs["series"] == "cdc15", :300].copy()
    tl.predict(again, Model.load(tmp_path / "m.h5"))
    for attr in ("varm", "layers"):
        np.testing.assert_array_equal(
            getattr(again, attr)[f"{KEY}_forecast"], getattr(adata, attr)[f"{KEY}_forecast"]
        )
    # missing values are never scored: n_values counts the observed held-out values only
    x = np.asarray(adata.X)[np.argsort(adata.obs["time"].to_numpy())]
    test = (adata.var[f"{KEY}_split"] == "test").to_numpy()
    assert adata.uns[KEY]["metrics"]["rnn"]["n_values"] == int(np.isfinite(x[-3:, test]).sum())


# ------------------------------------------------------------------------------ details --
def test_use_rep_goes_to_obsm_and_huber(small):
    adata = small.copy()
    adata.obsm["X_pca"] = np.asarray(adata.X[:, :4]) * 2.0
    tl.forecast(adata, series_key="series", time_key="time", use_rep="X_pca", loss="huber", **FAST)
    assert f"{KEY}_forecast" not in adata.layers
    assert adata.obsm[f"{KEY}_forecast"].shape == (adata.n_obs, 4)
    assert list(adata.uns[KEY]["future"]["features"]) == [f"X_pca_{i}" for i in range(4)]


def test_refusals(small):
    with pytest.raises(InputError, match="causal"):
        tl.forecast(small.copy(), series_key="series", time_key="time", bidirectional=True)
    with pytest.raises(InputError, match="profile"):
        tl.forecast(small.copy(), layout="profile")
    with pytest.raises(InputError, match="time_key"):
        tl.forecast(small.copy(), series_key="series")
    with pytest.raises(InputError, match="holdout_steps=11"):
        tl.forecast(small.copy(), series_key="series", time_key="time", holdout_steps=11)
    done = small.copy()
    tl.forecast(done, series_key="series", time_key="time", **FAST)
    with pytest.raises(InputError, match="already exist"):
        tl.forecast(done, series_key="series", time_key="time", **FAST)


def test_causal_fill_and_metrics():
    raw = np.array([[[np.nan], [1.0], [np.nan], [3.0]]], dtype=np.float32)
    filled = causal_fill(raw, ~np.isnan(raw), np.array([7.0]))
    np.testing.assert_array_equal(filled[0, :, 0], [7.0, 1.0, 1.0, 3.0])
    y = np.array([[1.0], [2.0], [3.0], [4.0]])
    seen = np.ones_like(y, dtype=bool)
    genes = np.zeros_like(y, dtype=int)
    m = regression_metrics(y, y + 1, seen, genes)
    assert m["mse"] == 1 and m["mae"] == 1 and m["pearson_r"] == pytest.approx(1.0)
    assert m["r2"] == pytest.approx(1 - 4 / 5)
    assert np.isnan(regression_metrics(y, np.ones_like(y), seen, genes)["pearson_r"])


# ----------------------------------------------------------------------------------- CLI --
def test_cli_forecast_and_predict_end_to_end(small, write, tmp_path):
    path = write(small)
    out, model, table = tmp_path / "out.h5ad", tmp_path / "model.h5", tmp_path / "metrics.tsv"
    runner = CliRunner()
    base = ["forecast", str(path), "--series-key", "series", "--time-key", "time"]
    base += ["--hidden", "8", "--epochs", "2", "--threads", "1", "--quiet"]
    args = [*base, "--horizon", "2"]
    result = runner.invoke(main, [*args, "--output", str(out), "--model-out", str(model),
                                  "--metrics-table", str(table)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "RNN" in result.output and "persistence" in result.output
    assert "linear_ar" in result.output and "one step ahead" in result.output
    frame = pd.read_csv(table, sep="\t")
    assert list(frame.columns) == ["metric", "rnn", "linear_path", "persistence", "linear_ar"]
    written = ad.read_h5ad(out)
    assert f"{KEY}_forecast" in written.layers
    assert written.uns[KEY]["future"]["values"].shape == (2 * small.obs["series"].nunique(), 6)

    predicted = tmp_path / "predicted.h5ad"
    result = runner.invoke(main, ["predict", str(path), "--model", str(model), "--output",
                                  str(predicted), "--threads", "1", "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(
        ad.read_h5ad(predicted).layers[f"{KEY}_forecast"], written.layers[f"{KEY}_forecast"]
    )

    # usage errors: one line, exit code 2, nothing written
    bad = runner.invoke(main, [*args, "--bidirectional", "--output", str(tmp_path / "x.h5ad"),
                               "--model-out", str(tmp_path / "x.h5")])  # fmt: skip
    # a forecaster must be causal: the CLI does not offer --bidirectional at all
    assert bad.exit_code == 2 and "No such option '--bidirectional'" in bad.output
    assert not (tmp_path / "x.h5ad").exists()
    bad = runner.invoke(main, [*base, "--future-times", "0.5", "--output",
                               str(tmp_path / "x.h5ad"), "--model-out", str(tmp_path / "x.h5")])  # fmt: skip
    assert bad.exit_code == 2 and "not after the last time point" in bad.output

    help_text = runner.invoke(main, ["forecast", "--help"]).output
    assert "Example" in help_text and "--holdout-steps" in help_text

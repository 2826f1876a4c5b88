"""Interpretability: which genes and which time steps drive a prediction (``explain``)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from click.testing import CliRunner

import anndata_rnn as ar
from anndata_rnn.cli import main
from anndata_rnn.errors import InputError

SIGNAL_STEPS = range(8, 13)
TINY = dict(hidden=(8,), max_epochs=2, patience=2, seed=0, quiet=True)


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def synthetic(seed, n_series=600, n_steps=20, n_genes=200, delta=2.0):
    """N(0, 1) noise; class "signal" adds ``delta`` to 5 genes at steps 8-12 only."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n_series)
    x = rng.normal(size=(n_series, n_steps, n_genes)).astype(np.float32)
    genes = rng.choice(n_genes, 5, replace=False)
    x[np.ix_(labels == 1, np.asarray(SIGNAL_STEPS), genes)] += delta
    obs = pd.DataFrame(
        {
            "series": np.repeat([f"s{i:03d}" for i in range(n_series)], n_steps),
            "time": np.tile(np.arange(n_steps, dtype=float), n_series),
            "label": pd.Categorical(np.repeat(np.where(labels == 1, "signal", "noise"), n_steps)),
        },
        index=[f"o{i}" for i in range(n_series * n_steps)],
    )
    var = pd.DataFrame(index=[f"g{i:03d}" for i in range(n_genes)])
    return ad.AnnData(x.reshape(-1, n_genes), obs=obs, var=var), set(var.index[genes])


def krumsiek_series(krumsiek):
    """krumsiek11 cut into 13 series of 20-40 steps, two per-series classes."""
    adata = krumsiek[np.r_[0:60, 160:260, 320:640]].copy()
    adata.obs["label"] = pd.Categorical(np.where(adata.obs["series"].isin(["0", "2"]), "A", "B"))
    block = (adata.obs["time"] // 40).astype(int).astype(str)
    adata.obs["series"] = pd.Categorical(adata.obs["series"].astype(str) + "_" + block)
    return adata


# --------------------------------------------------------------------------------------------
# the acceptance numbers


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synthetic_signal_genes_and_steps_are_found(seed):
    """600 series × 20 steps × 200 genes; 5 genes carry the class at steps 8-12.

    Measured (1 thread, LSTM 128,64, 50 signal sequences explained): test accuracy 0.967 / 1.0
    / 0.967, 5 / 5 / 5 signal genes in the top 10, step-importance peak at step 8 for every
    seed; about 10-20 s training + 5-10 s explaining per seed.
    """
    adata, signal = synthetic(seed)
    model = ar.tl.classify(
        adata,
        label_key="label",
        series_key="series",
        time_key="time",
        max_epochs=40,
        patience=5,
        seed=seed,
        quiet=True,
    )
    assert adata.uns["rnn"]["metrics"]["rnn"]["accuracy"] >= 0.93
    ar.tl.explain(adata, model, target="signal", max_per_class=50, seed=seed)
    top = ar.tl.importance_table(adata, top=10)
    assert set(top["class"]) == {"signal"} and list(top["rank"]) == list(range(1, 11))
    assert len(set(top["gene"]) & signal) >= 4
    uns = adata.uns["rnn"]
    classes = list(uns["classes"])
    step = uns["step_importance"][:, classes.index("signal")]
    assert int(np.argmax(step)) in SIGNAL_STEPS
    np.testing.assert_array_equal(uns["step_times"], np.arange(20.0))
    assert uns["explain"]["n_explained"].tolist() == [0, 50]
    # the explained class is filled, the class left out is NaN
    importance = adata.varm["rnn_importance"]
    assert importance.shape == (200, 2)
    assert np.isnan(importance[:, classes.index("noise")]).all()
    assert np.isfinite(importance[:, classes.index("signal")]).all()


@pytest.fixture(scope="module")
def pbmc_explained(tmp_path_factory):
    """pbmc68k_reduced, profile layout: classify then explain, both through the CLI."""
    tmp = tmp_path_factory.mktemp("explain")
    source = tmp / "pbmc.h5ad"
    sc.datasets.pbmc68k_reduced().write_h5ad(source)
    trained = run_cli(
        "classify",
        source,
        "--layout",
        "profile",
        "--label",
        "bulk_labels",
        "--chunk-size",
        32,
        "--epochs",
        40,
        "--patience",
        5,
        "--output",
        tmp / "classified.h5ad",
        "--model-out",
        tmp / "model.h5",
        "--quiet",
    )
    assert trained.exit_code == 0, trained.output
    before = (tmp / "classified.h5ad").read_bytes()
    result = run_cli(
        "explain",
        tmp / "classified.h5ad",
        "--model",
        tmp / "model.h5",
        "--output",
        tmp / "explained.h5ad",
        "--target",
        "CD14+ Monocyte",
        "--top",
        20,
        "--table",
        tmp / "top.tsv",
    )
    assert result.exit_code == 0, result.output
    assert (tmp / "classified.h5ad").read_bytes() == before
    return {"dir": tmp, "stdout": result.output}


def test_pbmc_monocyte_genes_agree_with_wilcoxon(pbmc_explained):
    """Top 20 genes by signed importance for CD14+ Monocyte vs scanpy's wilcoxon top 20.

    Measured (LSTM 128,64, seeds 0/1/2): 9 / 7 / 10 shared genes; a random top 20 shares
    about 0.5.
    """
    reference = sc.datasets.pbmc68k_reduced()
    sc.tl.rank_genes_groups(reference, "bulk_labels", method="wilcoxon")
    wilcoxon = set(reference.uns["rank_genes_groups"]["names"]["CD14+ Monocyte"][:20])
    table = pd.read_csv(pbmc_explained["dir"] / "top.tsv", sep="\t")
    assert list(table.columns) == ["class", "rank", "gene", "importance"]
    assert set(table["class"]) == {"CD14+ Monocyte"} and len(table) == 20
    assert table["importance"].is_monotonic_decreasing
    assert len(set(table["gene"]) & wilcoxon) >= 4


def test_cli_writes_the_documented_keys(pbmc_explained):
    out = ad.read_h5ad(pbmc_explained["dir"] / "explained.h5ad")
    uns = out.uns["rnn"]
    classes = list(uns["classes"])
    assert len(classes) == 10
    assert out.varm["rnn_importance"].shape == (out.n_vars, 10)
    assert out.var["rnn_importance"].dtype == np.float64
    assert (out.var["rnn_importance"] >= 0).all()
    assert uns["step_importance"].shape == (24, 10)  # ceil(765 / 32) chunks
    assert len(uns["step_times"]) == 24
    monocyte = classes.index("CD14+ Monocyte")
    assert np.isfinite(out.varm["rnn_importance"][:, monocyte]).all()
    explained = uns["explain"]
    assert explained["method"] == "integrated_gradients" and explained["n_steps"] == 50
    assert explained["n_explained"][monocyte] > 50
    completeness = explained["completeness"]
    assert completeness["relative_delta"] < 0.05  # measured 8e-5 on this model
    assert completeness["mean_abs_delta"] >= 0 and completeness["mean_abs_difference"] > 0
    # the training record of the model is kept beside the explanation
    assert "metrics" in uns and uns["task"] == "classify"
    # the TSV's numbers are the varm column
    table = pd.read_csv(pbmc_explained["dir"] / "top.tsv", sep="\t")
    column = pd.Series(out.varm["rnn_importance"][:, monocyte], index=out.var_names)
    np.testing.assert_allclose(table["importance"], column[table["gene"]].to_numpy())
    assert table["gene"].tolist() == column.sort_values(ascending=False).index[:20].tolist()
    assert "Completeness" in pbmc_explained["stdout"]
    assert "CD14+ Monocyte" in pbmc_explained["stdout"]


# --------------------------------------------------------------------------------------------
# correctness of the mapping back


def test_padded_batches_give_the_same_attributions(krumsiek):
    """Packed sequences of different lengths, expanded by captum: batching changes nothing."""
    adata = krumsiek_series(krumsiek)
    model = ar.tl.classify(
        adata,
        label_key="label",
        series_key="series",
        time_key="time",
        val_fraction=0.2,
        test_fraction=0.2,
        **TINY,
    )
    results = []
    for batch_size in (1, 5):
        out = adata.copy()
        ar.tl.explain(out, model, batch_size=batch_size, n_steps=30, overwrite=True)
        results.append(out.obsm["rnn_step_importance"])
        assert out.uns["rnn"]["explain"]["completeness"]["relative_delta"] < 1e-3
    np.testing.assert_allclose(results[0], results[1], atol=1e-6)
    # every observation is one step of one explained series: one class column is filled
    assert (np.isfinite(results[0]).sum(axis=1) == 1).all()
    # series differ in their time points: step_times are positions, and it is said
    assert "positions" in out.uns["rnn"]["explain"]["step_times"]


def test_profile_importance_follows_gene_names_not_positions(pbmc):
    """Genes reach var rows through the model's feature order, whatever the data's order."""
    pbmc.var["use"] = np.arange(pbmc.n_vars) % 3 != 0
    model = ar.tl.classify(
        pbmc, label_key="bulk_labels", layout="profile", chunk_size=32, gene_subset="use", **TINY
    )
    first = pbmc.copy()
    ar.tl.explain(first, model, max_per_class=10, n_steps=10, overwrite=True)
    order = np.random.default_rng(0).permutation(pbmc.n_vars)
    permuted = pbmc[:, order].copy()
    ar.tl.explain(permuted, model, max_per_class=10, n_steps=10, overwrite=True)
    a = pd.DataFrame(first.varm["rnn_importance"], index=first.var_names)
    b = pd.DataFrame(permuted.varm["rnn_importance"], index=permuted.var_names)
    np.testing.assert_allclose(a.loc[b.index].to_numpy(), b.to_numpy(), atol=1e-6)
    # genes the model does not read have no importance
    unused = ~pbmc.var["use"].to_numpy()
    assert np.isnan(first.varm["rnn_importance"][unused]).all()
    assert np.isnan(first.var["rnn_importance"].to_numpy()[unused]).all()
    assert np.isfinite(first.var["rnn_importance"].to_numpy()[~unused]).all()


def test_time_gap_channel_is_never_attributed(krumsiek):
    """The baseline differs from the input in expression only; gene and step sums agree."""
    import torch

    from anndata_rnn.attribution import baseline_values
    from anndata_rnn.features import FeatureSource
    from anndata_rnn.preprocessing import encode
    from anndata_rnn.sequences import SequenceSpec

    adata = krumsiek_series(krumsiek)
    adata = adata[adata.obs["series"] != "0_1"].copy()  # one series shorter than the rest
    model = ar.tl.classify(
        adata,
        label_key="label",
        series_key="series",
        time_key="time",
        val_fraction=0.2,
        test_fraction=0.2,
        **TINY,
    )
    index = SequenceSpec.from_keys(model.config["keys"], layout=model.layout).index(adata)
    source = FeatureSource(adata)
    encoded = encode(index, source, model.preprocessor)
    values, lengths = torch.from_numpy(encoded.values), torch.from_numpy(encoded.lengths)
    assert values.shape[-1] == 12  # 11 genes + the time gap
    for baseline in ("mean", "zero"):
        base = baseline_values(values, lengths, model.preprocessor, baseline, 11, "obs-series")
        np.testing.assert_array_equal(base[..., 11], values[..., 11])
        padding = ~index.mask
        np.testing.assert_array_equal(base[padding], values[padding])
    assert (base[index.mask][:, :11] != 0).any() and (base[index.mask][:, :11] < 0).all()

    out = adata.copy()
    ar.tl.explain(out, model, n_steps=100, overwrite=True)
    assert out.varm["rnn_importance"].shape == (11, 2)
    assert out.uns["rnn"]["explain"]["completeness"]["relative_delta"] < 1e-3
    # per step and per gene sums are two views of the same attributions
    steps = np.nansum(out.obsm["rnn_step_importance"])
    counts = out.uns["rnn"]["explain"]["n_explained"]
    genes = np.nansum(out.varm["rnn_importance"] * counts[None, :])
    np.testing.assert_allclose(steps, genes, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# the other model kinds


def test_per_step_labels_and_var_series(krumsiek, spellman):
    # obs-series with one label per step (cell type along the trajectory)
    adata = krumsiek.copy()
    model = ar.tl.classify(
        adata,
        label_key="cell_type",
        series_key="series",
        time_key="time",
        val_fraction=0.25,
        test_fraction=0.25,
        **TINY,
    )
    assert model.config["label_level"] == "step"
    ar.tl.explain(adata, model, n_steps=20)
    uns = adata.uns["rnn"]
    assert uns["step_importance"].shape == (160, len(model.classes))
    assert uns["explain"]["completeness"]["relative_delta"] < 1e-2
    # var-series: genes are the sequences, so time points are attributed, not genes
    adata = spellman[:, :300].copy()
    model = ar.tl.classify(
        adata,
        label_key="cell_cycle_800",
        layout="var-series",
        series_key="series",
        time_key="time",
        series_subset=["cdc15"],
        **TINY,
    )
    ar.tl.explain(adata, model, n_steps=20)
    assert "rnn_importance" not in adata.varm and "rnn_importance" not in adata.var
    rows = adata.obsm["rnn_step_importance"]
    cdc15 = (adata.obs["series"] == "cdc15").to_numpy()
    assert rows.shape == (adata.n_obs, 2)
    assert np.isfinite(rows[cdc15]).any(axis=1).all() and np.isnan(rows[~cdc15]).all()
    times = adata.obs["time"][cdc15].sort_values().to_numpy()
    np.testing.assert_array_equal(adata.uns["rnn"]["step_times"], times)
    with pytest.raises(InputError, match="var-series"):
        ar.tl.importance_table(adata)


def test_forecaster_target_gene(krumsiek):
    adata = krumsiek.copy()
    model = ar.tl.forecast(adata, series_key="series", time_key="time", **TINY)
    with pytest.raises(InputError, match="needs target"):
        ar.tl.explain(adata, model)
    ar.tl.explain(adata, model, target="Gata1", n_steps=20)
    uns = adata.uns["rnn"]
    assert list(uns["targets"]) == ["Gata1"]
    assert adata.varm["rnn_importance"].shape == (11, 1)
    assert uns["explain"]["completeness"]["relative_delta"] < 1e-2
    # the forecast of the step after the end depends on the last steps, not the first
    step = np.abs(uns["step_importance"][:, 0])
    assert step[-1] > step[0]
    table = ar.tl.importance_table(adata, top=3)
    assert table["class"].tolist() == ["Gata1"] * 3


# --------------------------------------------------------------------------------------------
# options and errors


def test_options_and_clear_errors(krumsiek):
    adata = krumsiek_series(krumsiek)
    model = ar.tl.classify(
        adata,
        label_key="label",
        series_key="series",
        time_key="time",
        val_fraction=0.2,
        test_fraction=0.2,
        scale="sequence",
        **TINY,
    )
    with pytest.raises(InputError, match="unknown class C"):
        ar.tl.explain(adata, model, target="C")
    with pytest.raises(InputError, match="baseline 'zero'"):
        ar.tl.explain(adata, model, baseline="zero")
    with pytest.raises(InputError, match="method must be"):
        ar.tl.explain(adata, model, method="shap")
    out = ar.tl.explain(adata, model, method="input_x_gradient", use_labels=True, copy=True)
    assert "rnn_importance" not in adata.varm  # copy=True leaves the input alone
    assert out.uns["rnn"]["explain"]["grouped_by"] == "label"
    assert np.isfinite(out.varm["rnn_importance"]).all()
    with pytest.raises(InputError, match="already exist"):
        ar.tl.explain(out, model)
    # an uns entry of another model is never merged into
    other = adata.copy()
    other.uns["rnn"] = {"task": "classify", "layout": "obs-series", "classes": ["x", "y"]}
    with pytest.raises(InputError, match="another model"):
        ar.tl.explain(other, model)


def test_gpu_gradient_mode_trains_rnns_only():
    """cuDNN RNNs need train mode for a backward pass: only they switch, dropout stays off."""
    import torch

    from anndata_rnn.attribution import gradient_mode
    from anndata_rnn.networks import build_module

    config = {
        "architecture": {"hidden": [8, 4], "cell": "lstm", "dropout": 0.5, "bidirectional": False},
        "classes": ["a", "b"],
        "label_level": "unit",
    }
    module = build_module("classify", 3, config)
    rnns = [m for m in module.modules() if isinstance(m, torch.nn.RNNBase)]
    dropouts = [m for m in module.modules() if isinstance(m, torch.nn.Dropout)]
    with gradient_mode(module, torch.device("cuda")):
        assert all(m.training for m in rnns) and not any(m.training for m in dropouts)
    assert not any(m.training for m in module.modules())
    with gradient_mode(module, torch.device("cpu")):
        assert not any(m.training for m in module.modules())

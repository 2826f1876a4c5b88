"""Unsupervised RNN embeddings and clusters (tl.embed, tl.cluster, ``anndata-rnn embed``)."""

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

# Settings of the synthetic benchmark, chosen for speed on 2 CPU cores (see the report in
# test_rnn_clusters_temporal_shapes_better_than_pca): a GRU reaches the calibrated LSTM's
# ARI in 30 epochs at lr 2e-3.
BENCHMARK = dict(hidden="64", cell="gru", n_latent=16, lr=2e-3, max_epochs=30, batch_size=64)


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def temporal_shapes(seed: int, n_per_class: int = 200, n_steps: int = 48, n_genes: int = 3):
    """Series that differ only in temporal shape (obs-series: one series = n_steps obs).

    4 shapes (early peak, late peak, sustained rise, oscillation), each shifted by
    s ~ U(-0.2, 0.2); every gene = shape × U(0.5, 2) + U(-1, 1) + N(0, 0.2²).
    """
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, n_steps)
    shapes = {
        "early_peak": lambda s: np.exp(-0.5 * ((t - 0.25 - s) / 0.07) ** 2),
        "late_peak": lambda s: np.exp(-0.5 * ((t - 0.75 - s) / 0.07) ** 2),
        "rise": lambda s: 1 / (1 + np.exp(-(t - 0.5 - s) / 0.05)),
        "oscillation": lambda s: 0.5 + 0.5 * np.sin(2 * np.pi * 1.5 * (t - s)),
    }
    blocks, classes = [], []
    for name, shape in shapes.items():
        for _ in range(n_per_class):
            profile = shape(rng.uniform(-0.2, 0.2))[:, None]
            genes = profile * rng.uniform(0.5, 2, n_genes) + rng.uniform(-1, 1, n_genes)
            blocks.append(genes + rng.normal(0, 0.2, (n_steps, n_genes)))
            classes.append(name)
    n_series = len(blocks)
    adata = ad.AnnData(np.concatenate(blocks).astype(np.float32))
    adata.obs_names = [f"s{i}_t{j}" for i in range(n_series) for j in range(n_steps)]
    adata.var_names = [f"gene{g}" for g in range(n_genes)]
    adata.obs["series"] = pd.Categorical(np.repeat([f"s{i}" for i in range(n_series)], n_steps))
    adata.obs["time"] = np.tile(t, n_series)
    adata.obs["shape"] = pd.Categorical(np.repeat(classes, n_steps))
    return adata


# --------------------------------------------------------------------------------------------
# the synthetic benchmark: clusters that differ only in temporal shape


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rnn_clusters_temporal_shapes_better_than_pca(seed, write, tmp_path):
    """RNN ARI >= 0.55 and >= PCA + k-means ARI + 0.12, read back from the output file.

    Measured (GRU 64, latent 16, 30 epochs, lr 2e-3, scale="sequence"): RNN ARI
    0.77 / 0.73 / 0.65, PCA (16 components) + k-means 0.40 / 0.41 / 0.44 for seeds 0 / 1 / 2.
    """
    adata = temporal_shapes(seed)
    ar.tl.embed(
        adata,
        series_key="series",
        time_key="time",
        scale="sequence",
        eval_label="shape",
        seed=seed,
        quiet=True,
        **BENCHMARK,
    )
    path = write(adata, "benchmark.h5ad")
    back = ad.read_h5ad(path)
    metrics = back.uns["rnn"]["metrics"]
    rnn, baseline = metrics["rnn"]["ari"], metrics["baseline"]["ari"]
    assert metrics["rnn"]["n_clusters"] == 4 and metrics["baseline"]["n_clusters"] == 4
    assert rnn >= 0.55, (rnn, baseline)
    assert rnn >= baseline + 0.12, (rnn, baseline)
    # series-level clusters broadcast to every observation of the series
    clusters = back.obs["rnn_cluster"]
    assert clusters.notna().all()
    assert (back.obs.groupby("series", observed=True)["rnn_cluster"].nunique() == 1).all()
    # per-step and per-series embeddings
    assert back.obsm["X_rnn"].shape == (adata.n_obs, 16)
    series_latent = back.obsm["X_rnn_series"]
    assert np.allclose(series_latent[:48], series_latent[0])
    for name in ("ari", "nmi", "silhouette"):
        assert np.isfinite(metrics["rnn"][name]) and np.isfinite(metrics["baseline"][name])


# --------------------------------------------------------------------------------------------
# real data


def test_yeast_cdc15_clusters_enrich_cell_cycle_genes(spellman):
    """k = 8 clusters of cdc15 gene profiles; per-cluster fraction of cell_cycle_800 genes.

    Measured (seed 0): best cluster SPELLMAN_RNN× over the fraction among the clustered genes
    for the RNN, SPELLMAN_PCA× for PCA + k-means.
    """
    adata = spellman.copy()
    ar.tl.embed(
        adata,
        layout="var-series",
        series_key="series",
        time_key="time",
        series_subset=["cdc15"],
        scale="sequence",
        cluster="kmeans",
        n_clusters=8,
        eval_label="cell_cycle_800",
        quiet=True,
        **SPELLMAN,
    )
    run = adata.uns["rnn"]
    report = run["cluster_report"]
    for model in ("rnn", "baseline"):
        part = report[model]
        positive = list(part["classes"]).index("True")
        assert part["fraction"].shape == (8, 2)
        clustered = adata.var["rnn_cluster"].notna().to_numpy()
        overall = adata.var["cell_cycle_800"].to_numpy()[clustered].mean()
        assert part["overall_fraction"][positive] == pytest.approx(overall)
        assert np.nanmax(part["enrichment"][:, positive]) >= 3.0, (model, part["enrichment"])
    assert run["metrics"]["rnn"]["n_clusters"] == 8
    assert adata.varm["X_rnn"].shape == (adata.n_vars, 16)
    # genes missing more than half of their cdc15 values are embedded but not clustered
    assert run["preprocessing"]["n_units_excluded"] == 505
    assert adata.var["rnn_cluster"].isna().sum() == 505


def test_krumsiek_per_step_embedding_works_in_scanpy(krumsiek, tmp_path):
    adata = krumsiek.copy()
    ar.tl.embed(
        adata,
        series_key="series",
        time_key="time",
        n_latent=8,
        hidden="32",
        max_epochs=20,
        val_fraction=0.25,
        quiet=True,
    )
    assert adata.obsm["X_rnn"].shape == (640, 8)
    assert np.isfinite(adata.obsm["X_rnn"]).all()
    # per-step states change along a series; the series latent is constant within it
    assert np.abs(np.diff(adata.obsm["X_rnn"][:160], axis=0)).sum() > 0
    assert np.allclose(adata.obsm["X_rnn_series"][:160], adata.obsm["X_rnn_series"][0])
    sc.pp.neighbors(adata, use_rep="X_rnn")
    sc.tl.umap(adata)
    ax = sc.pl.embedding(adata, basis="rnn", color="cell_type", show=False)
    ax.figure.savefig(tmp_path / "rnn.png")
    assert (tmp_path / "rnn.png").stat().st_size > 0
    assert adata.obsm["X_umap"].shape == (640, 2)

#!/usr/bin/env python
"""Regenerate the small ``test-data/galaxy_*`` inputs used by ``galaxy_tool.xml``.

Usage (from the repository root)::

    python .ci/galaxy/make_test_data.py            # inputs + model (needs the anndata-rnn CLI)
    python .ci/galaxy/make_test_data.py --inputs-only

    python .ci/galaxy/make_test_data.py --model-only --only pbmc_classifier

The inputs are deterministic subsets of data sets that ship with scanpy or with
this repository.  The model files (inputs of the ``predict`` and ``explain`` tests:
``galaxy_krumsiek11_model.h5``, ``galaxy_krumsiek11_forecaster.h5``,
``galaxy_pbmc_model.h5``) are trained with the real CLI, so rerun this script whenever
the model file format of anndata-rnn changes (``tests/test_galaxy_tool.py`` fails with
a hint when a committed model no longer loads).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
TEST_DATA = ROOT / "test-data"

KRUMSIEK = TEST_DATA / "galaxy_krumsiek11_series.h5ad"
RENAMED = TEST_DATA / "galaxy_krumsiek11_renamed.h5ad"
YEAST = TEST_DATA / "galaxy_yeast_spellman_small.h5ad"
PBMC = TEST_DATA / "galaxy_pbmc_small.h5ad"
MODEL = TEST_DATA / "galaxy_krumsiek11_model.h5"
# the classify output that came with MODEL (already holds rnn_* keys: input of a predict --overwrite test)
CLASSIFIED = TEST_DATA / "galaxy_krumsiek11_classified.h5ad"
# a forecaster of the krumsiek11 series (explain --target GENE) and a profile classifier of the PBMC
# cells (explain --target "CD14+ Monocyte,...": class names with '+', '/' and spaces)
FORECASTER = TEST_DATA / "galaxy_krumsiek11_forecaster.h5"
PBMC_MODEL = TEST_DATA / "galaxy_pbmc_model.h5"

_FAST = ["--seed", "0", "--threads", "1", "--device", "cpu", "--quiet"]

# the command that trains MODEL (kept in one place so the tests can reuse it)
MODEL_ARGS = [
    "classify",
    str(KRUMSIEK),
    "--label",
    "cell_type",
    "--layout",
    "obs-series",
    "--series-key",
    "series",
    "--time-key",
    "time",
    "--hidden",
    "8",
    "--epochs",
    "2",
    "--patience",
    "2",
    "--seed",
    "0",
    "--threads",
    "1",
    "--device",
    "cpu",
    "--quiet",
]


def _write(adata, path: Path) -> None:
    adata.write_h5ad(path, compression="gzip")
    size = path.stat().st_size
    print(f"wrote {path.relative_to(ROOT)} ({size / 1024:.0f} KiB, {adata.n_obs} x {adata.n_vars})")
    if size > 300 * 1024:
        raise SystemExit(f"{path} is larger than 300 KiB")


def make_krumsiek() -> None:
    """krumsiek11 (640 x 11): its 4 simulated trajectories cut into 32 series of 20 steps."""
    import scanpy as sc

    adata = sc.datasets.krumsiek11()
    adata.obs_names_make_unique()
    n_series, steps = 32, 20
    adata.obs["series"] = np.repeat(np.arange(n_series), steps).astype(str)
    adata.obs["time"] = np.tile(np.arange(steps), n_series).astype(float)
    # predefined split by series: in every trajectory (8 series: 4 progenitor, 4 terminal)
    # 2 + 2 series train, 1 + 1 val, 1 + 1 test, so each class is in every set
    pattern = np.array(["train", "train", "val", "test"] * 2)
    adata.obs["split"] = np.repeat(np.tile(pattern, n_series // 8), steps)
    # integer pseudo-counts in a layer to exercise --layer (and --normalize always)
    adata.layers["counts"] = np.rint(np.clip(np.asarray(adata.X), 0, None) * 100).astype(np.float32)
    adata.X = np.asarray(adata.X, dtype=np.float32)
    # a boolean var column to exercise --gene-subset (all genes but two)
    adata.var["selected"] = np.arange(adata.n_vars) >= 2
    adata.uns = {}
    _write(adata, KRUMSIEK)

    # input of the predict tests: the last trajectory (8 series), genes renamed gene0..gene10 with the
    # original names in var['symbol'] (--gene-symbols symbol matches them, var names do not)
    renamed = adata[adata.obs["series"].astype(int) >= 24].copy()
    del renamed.layers["counts"]
    renamed.var["symbol"] = renamed.var_names.astype(str)
    renamed.var_names = [f"gene{i}" for i in range(renamed.n_vars)]
    _write(renamed, RENAMED)


def make_yeast() -> None:
    """Spellman 1998 yeast cell cycle, all 77 arrays x 400 genes (150 periodic, 250 not)."""
    import anndata as ad

    adata = ad.read_h5ad(TEST_DATA / "yeast_cellcycle_spellman1998.h5ad")
    rng = np.random.default_rng(0)
    periodic = np.flatnonzero(adata.var["cell_cycle_800"].to_numpy())
    other = np.flatnonzero(~adata.var["cell_cycle_800"].to_numpy())
    keep = np.sort(
        np.concatenate(
            [rng.choice(periodic, 150, replace=False), rng.choice(other, 250, replace=False)]
        )
    )
    small = adata[:, keep].copy()
    small.X = np.asarray(small.X, dtype=np.float32)
    _write(small, YEAST)


def make_pbmc() -> None:
    """pbmc68k_reduced subset: 5 largest bulk_labels x 48 cells, 96 most variable genes, X_pca."""
    import scanpy as sc

    adata = sc.datasets.pbmc68k_reduced()
    labels = adata.obs["bulk_labels"].value_counts().index[:5]
    rng = np.random.default_rng(0)
    cells = np.sort(
        np.concatenate(
            [
                rng.choice(np.flatnonzero(adata.obs["bulk_labels"] == lab), 48, replace=False)
                for lab in labels
            ]
        )
    )
    genes = np.argsort(-adata.var["dispersions_norm"].to_numpy())[:96]
    small = adata[cells][:, np.sort(genes)].copy()
    small.raw = None
    small.obs["bulk_labels"] = small.obs["bulk_labels"].cat.remove_unused_categories()
    small.obs = small.obs[["bulk_labels", "n_counts"]]
    small.var = small.var[["means", "dispersions_norm"]]
    small.obsm = {"X_pca": np.asarray(small.obsm["X_pca"][:, :20], dtype=np.float32)}
    small.varm = {}
    small.obsp = {}
    small.uns = {}
    small.X = np.asarray(small.X, dtype=np.float32)
    _write(small, PBMC)


# name -> (CLI arguments, model file, where to keep the output .h5ad or None)
MODELS = {
    "krumsiek_classifier": (MODEL_ARGS, MODEL, CLASSIFIED),
    "krumsiek_forecaster": (
        ["forecast", str(KRUMSIEK), "--series-key", "series", "--time-key", "time"]
        + ["--hidden", "8", "--epochs", "3", "--patience", "2"]
        + _FAST,
        FORECASTER,
        None,
    ),
    "pbmc_classifier": (
        ["classify", str(PBMC), "--label", "bulk_labels", "--layout", "profile"]
        + ["--chunk-size", "16", "--hidden", "8", "--epochs", "3", "--patience", "2"]
        + _FAST,
        PBMC_MODEL,
        None,
    ),
}


def make_model(name: str) -> None:
    args, model_path, output_path = MODELS[name]
    exe = shutil.which("anndata-rnn")
    cmd = [exe] if exe else [sys.executable, "-m", "anndata_rnn.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.h5ad"
        model = Path(tmp) / "model.h5"
        subprocess.run(cmd + args + ["--output", str(out), "--model-out", str(model)], check=True)
        shutil.copyfile(model, model_path)
        if output_path is not None:
            import anndata as ad

            _write(ad.read_h5ad(out), output_path)
    size = model_path.stat().st_size
    print(f"wrote {model_path.relative_to(ROOT)} ({size / 1024:.0f} KiB)")
    if size > 300 * 1024:
        raise SystemExit(f"{model_path} is larger than 300 KiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs-only", action="store_true", help="do not train the model file")
    parser.add_argument("--model-only", action="store_true", help="only retrain the model files")
    parser.add_argument(
        "--only",
        choices=sorted(MODELS),
        action="append",
        help="retrain only this model (repeatable)",
    )
    args = parser.parse_args()
    if not args.model_only:
        make_krumsiek()
        make_yeast()
        make_pbmc()
    if not args.inputs_only:
        for name in args.only or MODELS:
            make_model(name)


if __name__ == "__main__":
    main()

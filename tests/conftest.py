"""Shared fixtures. Small recurrent nets run fastest on one CPU thread (and deterministically)."""

from __future__ import annotations

import hashlib
import os

os.environ.setdefault("MPLBACKEND", "Agg")
# tiny test runs need no step floor (the default 600 steps would make the suite ten times
# slower); the accuracy tests that claim default-option numbers lift this (default_schedule)
os.environ.setdefault("ANNDATA_RNN_MIN_STEPS", "0")
# the command line's thread policy (anndata_rnn.threads) reads it: commands run in this process
# keep the one thread set below unless a test passes --threads
os.environ.setdefault("OMP_NUM_THREADS", "1")

import anndata as ad  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def _sha256(path) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


@pytest.fixture(scope="session")
def file_hash():
    """sha256 of a file's bytes (to prove an input was not modified)."""
    return _sha256


@pytest.fixture
def krumsiek():
    """scanpy's bundled krumsiek11 (640 × 11) with the series and time columns it lacks."""
    import scanpy as sc

    adata = sc.datasets.krumsiek11()
    adata.obs_names = [f"cell{i}" for i in range(adata.n_obs)]  # the bundled names repeat
    adata.obs["series"] = pd.Categorical(np.repeat(np.arange(4), 160).astype(str))
    adata.obs["time"] = np.tile(np.arange(160, dtype=float), 4)
    # the bundled uns["highlights"] has integer keys, which h5ad cannot store
    adata.uns["highlights"] = {str(k): v for k, v in adata.uns["highlights"].items()}
    return adata


@pytest.fixture(scope="session")
def spellman():
    from anndata_rnn.datasets import spellman1998

    return spellman1998()


@pytest.fixture
def pbmc():
    import scanpy as sc

    return sc.datasets.pbmc68k_reduced()


@pytest.fixture
def write(tmp_path):
    """Write an AnnData to tmp_path and return the path."""

    def _write(adata: ad.AnnData, name: str = "input.h5ad"):
        path = tmp_path / name
        adata.write_h5ad(path)
        return path

    return _write


@pytest.fixture
def default_schedule(monkeypatch):
    """The step schedule's real default floor (600 steps), as a user gets it."""
    monkeypatch.delenv("ANNDATA_RNN_MIN_STEPS", raising=False)

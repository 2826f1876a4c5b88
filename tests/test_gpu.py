"""CUDA checks (``pytest -m gpu``; run by benchmarks/gpu_check.sh). Skipped without a GPU.

Tolerance: class probabilities from the same saved model on the CPU and on CUDA (cuDNN's LSTM,
fp32, TF32 left at torch's default) agree within 1e-4 absolute.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

import anndata_rnn as ar

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

PROBA_ATOL = 1e-4


def _data(n_cells=400, n_genes=96, seed=0) -> ad.AnnData:
    """Counts with three classes, each with its own marker genes."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(3, size=n_cells)
    rate = np.full((3, n_genes), 0.5)
    for c in range(3):
        rate[c, c * 10 : (c + 1) * 10] = 4.0
    x = rng.poisson(rate[labels]).astype(np.float32)
    obs = pd.DataFrame(
        {"label": pd.Categorical([f"type{c}" for c in labels])},
        index=[f"cell{i}" for i in range(n_cells)],
    )
    return ad.AnnData(x, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]))


def _classify(adata, device):
    return ar.tl.classify(
        adata, label_key="label", layout="profile", chunk_size=16, max_epochs=3, seed=0,
        device=device, quiet=True,
    )  # fmt: skip


def test_cpu_and_cuda_predictions_agree(tmp_path):
    adata = _data()
    model = _classify(adata, "cpu")
    model.save(tmp_path / "model.h5")
    loaded = ar.Model.load(tmp_path / "model.h5")
    new = _data(seed=1)
    on_cpu = ar.tl.predict(new, loaded, device="cpu", copy=True)
    on_cuda = ar.tl.predict(new, loaded, device="cuda", copy=True)
    assert str(on_cuda.uns["rnn"]["device"]).startswith("cuda")
    p_cpu, p_cuda = on_cpu.obsm["rnn_proba"], on_cuda.obsm["rnn_proba"]
    np.testing.assert_allclose(p_cuda, p_cpu, atol=PROBA_ATOL, rtol=0)
    np.testing.assert_allclose(on_cuda.obsm["X_rnn"], on_cpu.obsm["X_rnn"], atol=1e-4, rtol=0)
    clear = np.sort(p_cpu, axis=1)[:, -1] - np.sort(p_cpu, axis=1)[:, -2] > 2 * PROBA_ATOL
    assert (on_cpu.obs["rnn_pred"][clear] == on_cuda.obs["rnn_pred"][clear]).all()


def test_training_runs_on_cuda(tmp_path):
    adata = _data()
    model = _classify(adata, "cuda")
    info = adata.uns["rnn"]
    assert str(info["device"]).startswith("cuda")
    assert np.isfinite(info["history"]["train_loss"]).all()
    assert info["metrics"]["rnn"]["accuracy"] > 0.5  # markers make this easy
    model.save(tmp_path / "model.h5")  # weights come back to the host for saving
    ar.tl.predict(_data(seed=1), ar.Model.load(tmp_path / "model.h5"), device="cpu")


def test_benchmark_tiny_on_cuda(tmp_path):
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"
    spec = importlib.util.spec_from_file_location("anndata_rnn_benchmarks_run", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    out = tmp_path / "out"
    code = bench.main(["--tiny", "--device", "cuda", "--out", str(out)])
    result = json.loads((out / "benchmark.json").read_text())
    assert code == 0, result["errors"]
    assert result["environment"]["device"].startswith("cuda")


#: mixed precision against float32 on the same saved model: bf16 keeps 8 bits of mantissa, so
#: probabilities agree to a few 1e-2 (fp16 is closer; the stated bound covers both)
AMP_PROBA_ATOL = 0.05


def test_amp_training_and_prediction_on_cuda(tmp_path):
    adata = _data()
    model = ar.tl.classify(
        adata, label_key="label", layout="profile", chunk_size=16, max_epochs=3, seed=0,
        device="cuda", amp=True, quiet=True,
    )  # fmt: skip
    info = adata.uns["rnn"]
    assert info["params"]["amp"]
    assert np.isfinite(info["history"]["train_loss"]).all()
    assert info["metrics"]["rnn"]["accuracy"] > 0.5
    model.save(tmp_path / "model.h5")
    loaded = ar.Model.load(tmp_path / "model.h5")
    new = _data(seed=1)
    full = ar.tl.predict(new, loaded, device="cuda", copy=True)
    mixed = ar.tl.predict(new, loaded, device="cuda", amp=True, copy=True)
    assert mixed.obsm["rnn_proba"].dtype == np.float64  # results leave in full precision
    np.testing.assert_allclose(
        mixed.obsm["rnn_proba"], full.obsm["rnn_proba"], atol=AMP_PROBA_ATOL, rtol=0
    )

"""torch.distributed: ``torchrun --nproc_per_node=2`` (gloo, CPU) trains one model, rank 0 writes."""

from __future__ import annotations

import os
import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest


def _data(path):
    rng = np.random.default_rng(0)
    n, g = 240, 64
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, g)).astype(np.float32)
    x[:, :8] += y[:, None] * 1.5
    obs = pd.DataFrame(
        {"label": pd.Categorical(np.where(y == 1, "a", "b"))}, index=[f"c{i}" for i in range(n)]
    )
    ad.AnnData(x, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(g)])).write_h5ad(path)


ARGS = [
    "classify",
    "--layout",
    "profile",
    "--chunk-size",
    "8",
    "--label",
    "label",
    "--epochs",
    "3",
    "--min-steps",
    "40",
    "--threads",
    "1",
    "--quiet",
]


def _run(prefix, folder, name):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        *prefix,
        ARGS[0],
        str(folder / "in.h5ad"),
        *ARGS[1:],
        "--output",
        str(folder / name / "out.h5ad"),
        "--model-out",
        str(folder / name / "model.h5"),
    ]
    (folder / name).mkdir()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return ad.read_h5ad(folder / name / "out.h5ad").uns["rnn"]["metrics"]


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is tested on Linux")
def test_torchrun_two_processes_write_one_output_and_match_one_process(tmp_path):
    _data(tmp_path / "in.h5ad")
    single = _run([sys.executable, "-m", "anndata_rnn"], tmp_path, "single")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    double = _run([*torchrun, "-m", "anndata_rnn"], tmp_path, "ddp")
    # exactly one output and one model: rank 1 wrote nothing, not even a temporary file
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["model.h5", "out.h5ad"]
    for model in ("rnn", "baseline"):
        assert abs(single[model]["accuracy"] - double[model]["accuracy"]) <= 0.1
        assert double[model]["auroc"] >= 0.95


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is tested on Linux")
def test_torchrun_predict_shares_the_cells_and_writes_one_output(tmp_path):
    _data(tmp_path / "in.h5ad")
    _run([sys.executable, "-m", "anndata_rnn"], tmp_path, "trained")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    outputs = {}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    for name, prefix in (("one", [sys.executable]), ("two", torchrun)):
        (tmp_path / name).mkdir()
        command = [
            *prefix, "-m", "anndata_rnn", "predict", str(tmp_path / "in.h5ad"),
            "--model", str(tmp_path / "trained" / "model.h5"),
            "--output", str(tmp_path / name / "out.h5ad"),
            "--batch-size", "16", "--chunk-rows", "50", "--threads", "1",
        ]  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs[name] = ad.read_h5ad(tmp_path / name / "out.h5ad")
    # one output from the two ranks (no temporary or scratch file left by rank 1)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["out.h5ad"]
    one, two = outputs["one"], outputs["two"]
    assert "2 processes" in done.stderr  # the ranks really joined one process group
    np.testing.assert_allclose(two.obsm["rnn_proba"], one.obsm["rnn_proba"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(two.obsm["X_rnn"], one.obsm["X_rnn"], atol=1e-6, rtol=0)
    assert (two.obs["rnn_pred"] == one.obs["rnn_pred"]).all()

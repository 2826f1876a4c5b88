"""``amp`` (mixed precision) on a machine without CUDA: ignored with a log line, results
unchanged. The CUDA side is in tests/test_gpu.py (run by benchmarks/gpu_check.sh)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_gpu import _data

import anndata_rnn as ar
from anndata_rnn.cli import main
from anndata_rnn.training import amp_dtype, precision


def test_amp_dtype_is_none_without_amp_or_on_cpu(caplog):
    assert amp_dtype(False, "cpu") is None
    assert amp_dtype(False, "cuda") is None
    with caplog.at_level(logging.INFO, logger="anndata_rnn"):
        assert amp_dtype(True, "cpu") is None
    assert "CUDA GPUs only" in caplog.text
    with precision("cpu", True) as dtype:
        assert dtype is None
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_amp_on_cpu_gives_the_float32_results(caplog):
    plain, mixed = _data(200), _data(200)
    kw = dict(label_key="label", layout="profile", chunk_size=16, max_epochs=2, seed=0)
    ar.tl.classify(plain, **kw, quiet=True)
    with caplog.at_level(logging.INFO, logger="anndata_rnn"):
        ar.tl.classify(mixed, **kw, amp=True, quiet=True)
    assert "CUDA GPUs only" in caplog.text
    assert mixed.uns["rnn"]["params"]["amp"] and not plain.uns["rnn"]["params"]["amp"]
    np.testing.assert_array_equal(mixed.obsm["rnn_proba"], plain.obsm["rnn_proba"])


def test_cli_amp_flag_reaches_the_run(tmp_path):
    path = tmp_path / "in.h5ad"
    _data(120).write_h5ad(path)
    out = tmp_path / "out.h5ad"
    result = CliRunner().invoke(
        main,
        ["classify", str(path), "--label", "label", "--layout", "profile",
         "--chunk-size", "16", "--epochs", "1", "--amp", "--device", "cpu",
         "--output", str(out), "--model-out", str(tmp_path / "m.h5"), "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    import anndata as ad

    assert bool(ad.read_h5ad(out).uns["rnn"]["params"]["amp"])

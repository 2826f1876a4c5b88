"""The library leaves the process as it found it: torch's determinism settings are scoped to a
run, and importing the package loads no plotting (issue 22)."""

from __future__ import annotations

import os
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
import torch
import torch.utils.deterministic

from anndata_rnn import tl
from anndata_rnn.runs import TaskResult, task_api
from anndata_rnn.training import CUBLAS_WORKSPACE, deterministic


@pytest.fixture
def torch_settings():
    """The settings as they are, restored after the test whatever it did."""
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        torch.utils.deterministic.fill_uninitialized_memory,
    )
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.utils.deterministic.fill_uninitialized_memory = saved[3]
    if saved[2] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[2]


def test_a_run_is_deterministic_and_restores_the_settings(torch_settings, monkeypatch):
    torch.use_deterministic_algorithms(False)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    seen = []

    @task_api
    def probe(adata, **kwargs):
        seen.append(
            (
                torch.are_deterministic_algorithms_enabled(),
                os.environ["CUBLAS_WORKSPACE_CONFIG"],
                torch.utils.deterministic.fill_uninitialized_memory,
            )
        )
        return TaskResult(ad.AnnData(np.zeros((1, 1), dtype=np.float32)), "probe", {})

    torch.utils.deterministic.fill_uninitialized_memory = True
    assert isinstance(probe.run(None), TaskResult)
    # deterministic kernels, without the NaN fill of new tensors (7 % of a CPU training step)
    assert seen == [(True, CUBLAS_WORKSPACE, False)]
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.utils.deterministic.fill_uninitialized_memory
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


def test_the_settings_come_back_after_an_error_and_a_users_own_are_kept(
    torch_settings, monkeypatch
):
    torch.use_deterministic_algorithms(True, warn_only=False)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    with pytest.raises(RuntimeError, match="boom"), deterministic():
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
        raise RuntimeError("boom")
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


@pytest.mark.parametrize("name", tl.__all__)
def test_every_tool_runs_in_the_scope(name):
    """Every tool that runs a network is a task_api tool (the scope is entered there)."""
    tool = getattr(tl, name)
    assert name == "importance_table" or callable(getattr(tool, "run", None)), name


def test_import_loads_no_plotting():
    """Nor scikit-learn (a second of every command's start, issue 21): it loads when a baseline
    or a metric is computed."""
    code = (
        "import sys, anndata_rnn; "
        "import anndata_rnn.cli; "
        "print(sorted(m for m in ('matplotlib', 'matplotlib.pyplot', 'scanpy', 'sklearn', "
        "'scipy.stats') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]", out

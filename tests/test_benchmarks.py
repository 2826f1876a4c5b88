"""The benchmark script works: its --tiny mode end to end (seconds), and its pieces."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    """benchmarks/run.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("anndata_rnn_benchmarks_run", BENCH / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_synthetic_file_reads_back(tmp_path, bench):
    synthetic = bench._synthetic
    spec = synthetic.Spec(n_genes=64)
    info = synthetic.write_h5ad(tmp_path / "x.h5ad", 250, spec, chunk_rows=100)
    adata = ad.read_h5ad(tmp_path / "x.h5ad")
    assert adata.shape == (250, 64)
    assert adata.X.format == "csr" and adata.X.nnz == info["nnz"]
    values = adata.X.data
    assert (values >= 1).all() and np.array_equal(values, np.round(values))  # counts
    assert 0.1 < info["nnz"] / (250 * 64) < 0.4


def test_flop_count_and_skip_rule(bench):
    # one LSTM layer, 2 inputs, 3 hidden, 5 steps: 2 * 4 * (2 + 3) * 3 * 5
    assert bench.lstm_flops_per_sequence(2, (3,), steps=5) == 600
    gib = bench.GIB
    runs = [
        {"cells": 100_000, "peak_rss_bytes": 2.6 * gib, "returncode": 0},
        {"cells": 300_000, "peak_rss_bytes": 6.5 * gib, "returncode": 0},
    ]
    reason = bench._skip_reason(runs, 1_000_000, 8.0)
    assert reason and "extrapolates to 20.1 GiB" in reason
    flat = [dict(r, peak_rss_bytes=2.0 * gib) for r in runs]  # streamed: flat memory
    assert bench._skip_reason(flat, 1_000_000, 8.0) is None


def test_tiny_run_writes_json_and_table(tmp_path, bench, monkeypatch):
    out = tmp_path / "out"
    # two rounds of (bare, predict, bare) at the ratio's size, as --quick runs them
    monkeypatch.setitem(bench.MODES["tiny"], "predict_rounds", 2)
    code = bench.main(["--tiny", "--out", str(out), "--work-dir", str(tmp_path / "work")])
    result = json.loads((out / "benchmark.json").read_text())
    assert code == 0, result["errors"]
    summary = result["summary"]
    for key in ("train_ratio", "predict_ratio", "gemm_gflops", "lstm_train_fraction_of_gemm"):
        assert summary[key] is not None and summary[key] > 0 and math.isfinite(summary[key]), key
    assert summary["peak_rss_gib"]["1000"] > 0
    # the bare loop again under the command's glibc heap thresholds (a child process)
    same_heap = result["predict"]["bare_same_heap"]
    assert same_heap["cells"] == 1_024 and same_heap["cells_per_s"] > 0
    assert same_heap["env"]["MALLOC_MMAP_THRESHOLD_"] == str(256 << 20)
    assert summary["predict_ratio_same_heap"] > 0
    rv = result["train"]["rnn_vs_baseline"]
    assert {"rnn", "baseline_package", "baseline_sklearn"} <= set(rv)
    assert rv["baseline_sklearn"]["fit_seconds"] > 0
    assert result["train"]["package_timing"] in ("log", "difference")
    # one (bare, package, bare) round in --tiny; --quick pools three
    rounds = result["train"]["rounds"]
    assert len(rounds) == 1 and len(result["train"]["bare_runs"]) == 2
    assert rounds[0]["train_ratio"] is None or rounds[0]["train_ratio"] > 0
    assert bench.MODES["quick"]["train_rounds"] == 3
    # the phases the package records (uns["rnn"]["timings"]) reach the JSON and the table
    assert result["train"]["package_timings"]["training"] > 0
    predicted = [r for r in result["predict"]["runs"] if "cells_per_s" in r]
    repeats = predicted[0]["repeats"]
    assert len(repeats) == 2 and len(result["predict"]["bare_runs"]) == 3
    assert predicted[0]["seconds"] == pytest.approx(sum(r["seconds"] for r in repeats) / 2)
    assert predicted[0]["cells_per_s"] == pytest.approx(1_000 / predicted[0]["seconds"])
    assert predicted and {"reading", "inference", "writing", "total"} <= set(
        predicted[0]["timings"]
    )
    env = result["environment"]
    assert {"device", "torch", "torch_threads", "cpu_count", "date"} <= set(env)
    table = (out / "benchmark.md").read_text()
    assert "`train_ratio`" in table and "`predict_ratio`" in table and "fp32 GEMM" in table
    assert "`predict_ratio_same_heap`" in table
    assert "Where the time went" in table


def test_training_time_from_log(bench):
    records = [(1.0, "split"), (2.0, "checked X"), (9.5, "classify (profile): 3 epochs, best 3")]
    assert bench.training_seconds_from_log(records, 3) == 7.5
    assert bench.training_seconds_from_log(records, 4) is None  # falls back to the difference
    # the loop's own start record, when the package logs it, opens the window
    records = [
        (2.0, "checked X"),
        (3.0, "classify (profile): training loop starts (at most 66 steps)"),
        (3.5, "a note"),
        (9.5, "classify (profile): 66 steps (batch 64, 22 per epoch), best step 66"),
        (10.0, "linear path alone: training loop starts (at most 66 steps)"),
        (11.0, "linear path alone: 66 steps (batch 64, 22 per epoch), best step 22"),
    ]
    assert bench.training_seconds_from_log(records, 3) == 6.5


def test_archive_problems_become_obs_series_with_the_archive_split(tmp_path):
    """benchmarks/accuracy/timeseries_archive.py reads the archive's .ts format (univariate and
    multivariate) and keeps its train/test split, a stratified part of training as validation."""
    spec = importlib.util.spec_from_file_location(
        "anndata_rnn_benchmarks_archive", BENCH / "accuracy" / "timeseries_archive.py"
    )
    archive = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(archive)
    folder = tmp_path / "Toy"
    folder.mkdir()
    header = "# a comment\n@problemName Toy\n@univariate false\n@classLabel true a b\n@data\n"
    train = [f"{i},{i + 1},{i + 2}:{i + 3},{i + 4},{i + 5}:{'ab'[i % 2]}" for i in range(8)]
    (folder / "Toy_TRAIN.ts").write_text(header + "\n".join(train) + "\n")
    (folder / "Toy_TEST.ts").write_text(header + "9,9,9:8,8,8:a\n7,7,7:6,6,6:b\n")
    adata = archive.problem_adata(tmp_path, "Toy", val_fraction=0.25, seed=0)
    assert adata.shape == (10 * 3, 2)  # 10 series × 3 steps, 2 channels
    series = adata.obs.groupby("series", observed=True).first()
    assert list(series["split"].value_counts().sort_index()) == [2, 6, 2]  # test, train, val
    assert (series[series["split"] == "val"]["label"].value_counts() == 1).all()  # stratified
    first = adata[adata.obs["series"] == "s1"]
    assert first.X[:, 0].tolist() == [1, 2, 3] and first.X[:, 1].tolist() == [4, 5, 6]
    assert adata.uns["archive"] == {
        "problem": "Toy", "n_train": 8, "n_test": 2, "steps": 3, "channels": 2, "classes": 2,
    }  # fmt: skip


def test_gpu_check_runs_every_step_on_the_cpu(tmp_path):
    """benchmarks/gpu_check.sh --cpu: the script's every command (argument handling, both
    benchmark runs, fp32 and --amp, the ratio summary) with the GPU parts skipped, so the GPU
    run works on its first try."""
    import os
    import subprocess

    out = tmp_path / "gpu_check"
    env = {**os.environ, "PYTHON": sys.executable, "BENCH_ARGS": "--threads 1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH.parent), env.get("PYTHONPATH")) if p)
    run = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh"), "--cpu", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "[1/3] python -m pytest -m gpu: skipped (--cpu)" in run.stdout
    for name in ("benchmark", "benchmark_amp"):
        result = json.loads((out / name / "benchmark.json").read_text())
        assert result["environment"]["amp"] is (name == "benchmark_amp")
        assert result["summary"]["train_ratio"] > 0 and result["summary"]["predict_ratio"] > 0
        assert f"gpu_check: {name}: train_ratio" in run.stdout
    assert "gpu_check: passed" in run.stdout


def test_side_by_side_variants_and_records(tmp_path):
    """benchmarks/side_by_side.py: its variant syntax and what it reads back from an output."""
    spec = importlib.util.spec_from_file_location(
        "anndata_rnn_benchmarks_side", BENCH / "side_by_side.py"
    )
    side = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(side)
    assert side.parse_variant(
        'both="--threads 2 env:OMP_WAIT_POLICY=PASSIVE"'.replace('"', "")
    ) == (
        "both",
        ["--threads", "2"],
        {"OMP_WAIT_POLICY": "PASSIVE"},
    )
    assert [side.parse_variant(v)[0] for v in side.COMPARED] == ["spin", "threads1"]
    adata = ad.AnnData(np.zeros((2, 2), dtype=np.float32))
    adata.uns["rnn"] = {
        "timings": {"training": 1.5, "total": 2.0},
        "threads": {"intra_op": 2, "chosen_by": "--threads"},
    }
    adata.write_h5ad(tmp_path / "x.h5ad")
    record = side.read_record(tmp_path / "x.h5ad")
    assert record["timings"] == {"training": 1.5, "total": 2.0}
    assert record["threads"]["intra_op"] == 2

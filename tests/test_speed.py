"""Time per phase in every run (``uns[key]["timings"]``) and the thread policy (issue 21).

No timing is asserted: the speed goals live in ``benchmarks/`` (run.py, side_by_side.py).
"""

from __future__ import annotations

import logging
import time

import anndata as ad
import h5py
import numpy as np
import pytest
import torch
from anndata.io import read_elem
from click.testing import CliRunner
from fixtures_rich import rich_adata

import anndata_rnn as ar
from anndata_rnn import threads, timing
from anndata_rnn.cli import main as cli

SMALL = {"max_epochs": 2, "seed": 0, "quiet": True, "hidden": "8"}
SERIES = {"series_key": "series", "time_key": "time", "layout": "obs-series"}
CLI_SERIES = ["--layout", "obs-series", "--series-key", "series", "--time-key", "time"]
CLI_SMALL = ["--epochs", "2", "--hidden", "8", "--seed", "0", "--quiet", "--threads", "1"]


def check_timings(timings: dict, expected: set[str], wall: float | None = None) -> None:
    assert expected <= set(timings), (expected, timings)
    assert {"other", "total"} <= set(timings)
    for name, value in timings.items():
        assert type(value) is float, (name, type(value))  # plain floats (R readers, h5ad)
        assert value >= 0.0, (name, value)
    phases = sum(v for k, v in timings.items() if k != "total")
    assert phases <= timings["total"] + 1e-5
    if wall is not None:
        assert timings["total"] <= wall + 1e-3


# ------------------------------------------------------------------------------ recorder --
def test_nested_phases_count_once():
    with timing.recording() as rec:
        with timing.phase("preprocessing"):
            time.sleep(0.01)
            with timing.phase("reading"):
                time.sleep(0.02)
            time.sleep(0.01)
        out = rec.as_dict()
    assert out["reading"] >= 0.02
    assert 0.02 <= out["preprocessing"] < 0.02 + out["reading"]
    assert out["reading"] + out["preprocessing"] + out["other"] == pytest.approx(out["total"])
    assert list(out)[:2] == ["reading", "preprocessing"]  # in PHASES order


def test_phase_outside_a_recording_records_nothing():
    with timing.phase("training"):
        pass
    assert timing.current() is None


# ------------------------------------------------------------------------ every task: API --
@pytest.fixture(scope="module")
def api_runs():
    classified = rich_adata(sparse=False, counts=False)
    t0 = time.perf_counter()
    model = ar.tl.classify(classified, label_key="label", **SERIES, **SMALL)
    classify_wall = time.perf_counter() - t0
    forecast = rich_adata(sparse=False, counts=False)
    ar.tl.forecast(forecast, holdout_steps=2, **SERIES, **SMALL)
    embedded = rich_adata(sparse=False, counts=False)
    ar.tl.embed(embedded, cluster="kmeans", n_clusters=2, **SERIES, **SMALL)
    explained = classified.copy()
    ar.tl.explain(explained, model, n_steps=4, quiet=True, key_added="ex")
    predicted = rich_adata(sparse=False, counts=False)
    ar.tl.predict(predicted, model, quiet=True)
    return {
        "classify": (classified, "rnn", classify_wall),
        "forecast": (forecast, "rnn", None),
        "embed": (embedded, "rnn", None),
        "explain": (explained, "ex", None),
        "predict": (predicted, "rnn", None),
    }


EXPECTED = {
    "classify": {"preprocessing", "baselines", "training", "inference"},
    "forecast": {"preprocessing", "baselines", "training", "inference"},
    "embed": {"preprocessing", "baselines", "training", "inference"},
    "explain": {"preprocessing", "attribution"},
    "predict": {"preprocessing", "inference"},
}


@pytest.mark.parametrize("task", list(EXPECTED))
def test_every_task_records_its_phases(api_runs, task):
    adata, key, wall = api_runs[task]
    check_timings(adata.uns[key]["timings"], EXPECTED[task], wall)
    record = adata.uns[key]["threads"]
    assert record["intra_op"] == torch.get_num_threads()
    assert isinstance(record["chosen_by"], str)


# ------------------------------------------------------------------------ command line --
def read_uns(path, key, name):
    with h5py.File(path, "r") as f:
        return read_elem(f[f"uns/{key}/{name}"])


def test_command_line_records_reading_and_writing(tmp_path):
    source = tmp_path / "in.h5ad"
    rich_adata(sparse=True, counts=True).write_h5ad(source)
    out, model, report = tmp_path / "c.h5ad", tmp_path / "m.h5", tmp_path / "c.html"
    t0 = time.perf_counter()
    result = CliRunner().invoke(
        cli,
        ["classify", str(source), *CLI_SERIES, "--label", "label", *CLI_SMALL,
         "--output", str(out), "--model-out", str(model), "--report", str(report)],
    )  # fmt: skip
    wall = time.perf_counter() - t0
    assert result.exit_code == 0, result.output
    timings = read_uns(out, "rnn", "timings")
    check_timings(
        {k: float(v) for k, v in timings.items()},
        {"reading", "preprocessing", "baselines", "training", "inference", "writing"},
        wall,
    )
    with h5py.File(out, "r") as f:  # plain float64 scalars, as anndata writes a float
        for name in timings:
            dataset = f[f"uns/rnn/timings/{name}"]
            assert dataset.shape == () and dataset.dtype == np.float64
    assert read_uns(out, "rnn", "threads")["chosen_by"] == "--threads"
    html = report.read_text(encoding="utf-8")
    assert "Time per phase" in html and "writing" in html and "Torch threads: 1" in html
    # the output still reads back, and predict records its own phases
    predicted = tmp_path / "p.h5ad"
    result = CliRunner().invoke(
        cli,
        ["predict", str(source), "--model", str(model), "--output", str(predicted),
         "--quiet", "--threads", "1", "--overwrite"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    timings = read_uns(predicted, "rnn", "timings")
    check_timings(
        {k: float(v) for k, v in timings.items()},
        {"reading", "preprocessing", "inference", "writing"},
    )
    assert ad.read_h5ad(predicted).uns["rnn"]["timings"]["writing"] >= 0


# -------------------------------------------------------------------------- thread policy --
def test_explicit_threads_win():
    env = {"OMP_NUM_THREADS": "3", "GALAXY_SLOTS": "5", "SLURM_CPUS_PER_TASK": "6"}
    assert threads.choose(7, env, cpus=2) == (7, "--threads")


def test_omp_num_threads_then_job_managers():
    env = {"OMP_NUM_THREADS": "3", "GALAXY_SLOTS": "5", "SLURM_CPUS_PER_TASK": "6"}
    assert threads.choose(None, env, cpus=8) == (3, "OMP_NUM_THREADS=3")
    del env["OMP_NUM_THREADS"]
    assert threads.choose(None, env, cpus=8) == (5, "GALAXY_SLOTS=5")
    del env["GALAXY_SLOTS"]
    assert threads.choose(None, env, cpus=8) == (6, "SLURM_CPUS_PER_TASK=6")


def test_job_manager_slots_capped_at_the_cpus_we_may_use():
    n, why = threads.choose(None, {"GALAXY_SLOTS": "16"}, cpus=2)
    assert n == 2 and "capped" in why


@pytest.mark.parametrize("value", ["", "0", "-2", "four"])
def test_unusable_values_are_skipped(value):
    n, why = threads.choose(None, {"OMP_NUM_THREADS": value, "GALAXY_SLOTS": value}, cpus=3)
    assert n == 3 and why.startswith("default")


def test_default_follows_the_affinity_mask(monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert threads.available_cpus() == 3
    assert threads.choose(None, {}) == (3, "default: 3 CPUs this process may use")
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    n, why = threads.choose(None, {})
    assert n == threads.MAX_DEFAULT_THREADS and "at most" in why


def test_apply_sets_torch_and_logs_one_line(monkeypatch, caplog):
    before = torch.get_num_threads()
    monkeypatch.setenv("GALAXY_SLOTS", "1")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        with caplog.at_level(logging.INFO, logger="anndata_rnn"):
            assert threads.apply(None) == (1, "GALAXY_SLOTS=1")
            assert not caplog.records  # logged once the run has read its input
            threads.log_choice()
            threads.log_choice()
        lines = [r.getMessage() for r in caplog.records if "torch threads" in r.getMessage()]
        assert len(lines) == 1 and "GALAXY_SLOTS=1" in lines[0]
        assert torch.get_num_threads() == 1
        assert threads.record()["chosen_by"] == "GALAXY_SLOTS=1"
    finally:
        torch.set_num_threads(before)


def test_wait_policy_only_for_the_command_line():
    env: dict = {}
    threads.set_cli_wait_policy(env, command_line=False)
    assert env == {}
    env = {"GOMP_SPINCOUNT": "300000"}  # the caller's own setting is kept
    threads.set_cli_wait_policy(env, command_line=True)
    assert "OMP_WAIT_POLICY" not in env
    assert threads.wait_policy(env)["omp_wait_policy"] == "GOMP_SPINCOUNT=300000"
    assert threads.is_command_line(["/usr/bin/anndata-rnn"], [])
    assert threads.is_command_line(["-m"], ["python", "-u", "-m", "anndata_rnn", "classify"])
    assert not threads.is_command_line(["pytest"], ["python", "-m", "pytest"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_padding_to_zero_is_nan_to_num_bit_for_bit(dtype):
    from anndata_rnn.preprocessing import _padding_to_zero

    rng = np.random.default_rng(0)
    values = rng.normal(size=(50, 7, 5)).astype(dtype)
    values[rng.random(values.shape) < 0.2] = np.nan
    for extra in (None, np.inf, -np.inf, 1e300 if dtype == np.float64 else None):
        case = values.copy()
        if extra is not None:
            case[0, 0, 0] = extra
        expected = np.nan_to_num(case, nan=0.0).astype(np.float32)
        got = _padding_to_zero(case)
        assert got.dtype == np.float32 and got is not case
        assert got.tobytes() == expected.tobytes()


def test_validation_runs_one_forward_pass_per_batch(monkeypatch):
    """The validation loss and accuracy come from one forward pass of each validation batch
    (they used to take two: a tenth of a training epoch's time at the default split)."""
    from anndata_rnn import training

    calls = {"eval_batches": 0, "eval_forwards": 0}
    evaluate = training.evaluate_loss

    def counting_evaluate(module, loss_fn, loader, device, val_metric=None):
        forward = type(module).forward

        def counted(self, *args, **kwargs):
            calls["eval_forwards"] += 1
            return forward(self, *args, **kwargs)

        calls["eval_batches"] += len(loader)
        with monkeypatch.context() as m:
            m.setattr(type(module), "forward", counted)
            return evaluate(module, loss_fn, loader, device, val_metric)

    monkeypatch.setattr(training, "evaluate_loss", counting_evaluate)
    adata = rich_adata()
    ar.tl.classify(adata, label_key="label", layout="profile", linear_path=False, **SMALL)
    assert calls["eval_batches"] > 0
    assert calls["eval_forwards"] == calls["eval_batches"]
    history = adata.uns["rnn"]["history"]
    assert len(history["val_accuracy"]) == len(history["val_loss"]) > 0

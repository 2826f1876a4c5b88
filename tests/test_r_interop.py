"""Bioconductor interoperability: R reads what anndata-rnn writes (and anndata-rnn reads R's),
and the R package ``r/anndataRnn`` runs anndata-rnn from R.

The R code is the package's (one R code path): it is installed once per session with
``R CMD INSTALL`` into a temporary library (what users get: its NAMESPACE, its imports,
compiled documentation), and the scripts under ``tests/r/`` call it. Every case runs the
real anndata-rnn Python API on small data, writes the .h5ad / model file, exports the
expected values from Python (reading the written file back with anndata) and runs real R
(``Rscript``, rhdf5 + SingleCellExperiment, installed by ``.ci/install_r.sh``) on it:

- ``tests/r/read_output.R`` builds a SingleCellExperiment from the .h5ad and, in check mode,
  compares predictions, probabilities, embeddings, forecasts, clusters and ``uns[key]``
  with the CSV files exported here; ``--strict`` also fails when an anndata-rnn output uses
  an encoding that trips R readers (bool HDF5 enums, uint8, nullable strings, null, unsorted
  sparse indices).
- ``tests/r/read_model.R`` reads the model file (attributes, JSON config, feature names,
  weights).
- ``tests/r/write_input.R`` writes an .h5ad from R that anndata-rnn must train on.
- ``tests/r/round_trip.R`` runs ``rnnClassify`` / ``rnnPredict`` from R on a
  SingleCellExperiment (dgCMatrix counts, a factor label with NA, integers with NA); the
  same commands run here from Python on the .h5ad the package wrote must give the same
  predictions.
- The R functions' arguments are the click options of their commands.

Skipped only when ``Rscript`` or an R package it needs is not installed (an error instead when the environment sets
``ANNDATA_RNN_REQUIRE_R=1``, as CI does after ``.ci/install_r.sh``).
"""

from __future__ import annotations

import atexit
import functools
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest

RSCRIPT = shutil.which("Rscript")
R_DIR = Path(__file__).resolve().parent / "r"
R_PACKAGE = Path(__file__).resolve().parent.parent / "r" / "anndataRnn"
KEY = "rnn"

#: the R packages the package anndataRnn imports (its DESCRIPTION), all from Debian
R_PACKAGES = (
    "rhdf5",
    "hdf5r",
    "Matrix",
    "jsonlite",
    "S4Vectors",
    "SummarizedExperiment",
    "SingleCellExperiment",
)


def _missing_r() -> str:
    """What is missing for these tests: '' when R and every package it needs load."""
    if RSCRIPT is None:
        return "Rscript not installed"
    probe = (
        f"for (p in c({', '.join(repr(p) for p in R_PACKAGES)})) "
        "if (!requireNamespace(p, quietly = TRUE)) cat(p, '')"
    )
    try:
        done = subprocess.run(
            [RSCRIPT, "--vanilla", "-e", probe], capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"Rscript does not run ({type(exc).__name__})"
    missing = done.stdout.split()
    if done.returncode != 0:
        return f"Rscript failed: {done.stderr.strip()[:200]}"
    return f"R packages not installed: {', '.join(missing)}" if missing else ""


MISSING_R = _missing_r()
if MISSING_R and os.environ.get("ANNDATA_RNN_REQUIRE_R", "") not in ("", "0"):
    # CI sets ANNDATA_RNN_REQUIRE_R=1 after .ci/install_r.sh: a missing R is an error there
    pytest.fail(f"ANNDATA_RNN_REQUIRE_R is set but {MISSING_R}", pytrace=False)
pytestmark = pytest.mark.skipif(bool(MISSING_R), reason=f"{MISSING_R} (run .ci/install_r.sh)")

# small, fast training everywhere
FAST = dict(hidden=(8,), max_epochs=2, batch_size=32, patience=2, seed=0, quiet=True)


# ------------------------------------------------------------------------------- helpers --
@functools.cache
def r_library() -> str:
    """Install r/anndataRnn once into a temporary R library; its path (for R_LIBS)."""
    lib = tempfile.mkdtemp(prefix="anndataRnn_lib_")
    atexit.register(shutil.rmtree, lib, ignore_errors=True)
    proc = subprocess.run(
        ["R", "CMD", "INSTALL", "--no-test-load", "-l", lib, str(R_PACKAGE)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        pytest.fail(f"R CMD INSTALL r/anndataRnn failed:\n{proc.stdout}\n{proc.stderr}")
    return lib


def r_env(**extra: str) -> dict[str, str]:
    """The environment of an R process: the package's library first; the rnn* functions run
    this Python's anndata-rnn (``python -m anndata_rnn``, this checkout)."""
    env = dict(os.environ)
    env["R_LIBS"] = os.pathsep.join(filter(None, [r_library(), env.get("R_LIBS", "")]))
    env["ANNDATA_RNN_EXECUTABLE"] = f"{sys.executable} -m anndata_rnn"
    root = str(R_PACKAGE.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


def run_r(script: str, *args, timeout: int = 240) -> subprocess.CompletedProcess:
    cmd = [RSCRIPT, "--vanilla", str(R_DIR / script), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=r_env())


def r_output(proc: subprocess.CompletedProcess) -> str:
    return f"$ {' '.join(proc.args)}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"


def _num(value) -> str:
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Inf" if value > 0 else "-Inf"
    return repr(value)


def flatten_uns(value, path: str = "") -> list[tuple[str, int, str, str]]:
    """Every leaf of an uns entry as (path, index, kind, value), arrays in C order."""
    rows: list[tuple[str, int, str, str]] = []
    if value is None:
        rows.append((path, 0, "null", ""))
    elif isinstance(value, Mapping):
        for k, v in value.items():
            rows += flatten_uns(v, f"{path}/{k}" if path else str(k))
    elif isinstance(value, pd.DataFrame):
        for c in value.columns:
            rows += flatten_uns(value[c].to_numpy(), f"{path}/{c}")
    elif isinstance(value, (str, bytes)):
        rows.append((path, 0, "str", value.decode() if isinstance(value, bytes) else value))
    elif isinstance(value, (bool, np.bool_)):
        rows.append((path, 0, "bool", str(bool(value)).upper()))
    elif isinstance(value, (int, float, np.number)):
        rows.append((path, 0, "num", _num(value)))
    else:
        arr = np.asarray(value)
        flat = arr.ravel(order="C")
        if arr.dtype.kind == "b":
            rows += [(path, i, "bool", str(bool(v)).upper()) for i, v in enumerate(flat)]
        elif arr.dtype.kind in "iuf":
            rows += [(path, i, "num", _num(v)) for i, v in enumerate(flat)]
        else:
            rows += [
                (
                    path,
                    i,
                    "str",
                    "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v),
                )
                for i, v in enumerate(flat)
            ]
    return rows


def _vector_csv(names, values, path: Path) -> None:
    values = pd.Series(values)
    if isinstance(values.dtype, pd.CategoricalDtype) or values.dtype == object:
        out = (
            values.astype(object)
            .where(values.notna(), None)
            .map(lambda v: None if v is None else str(v))
        )
    elif values.dtype == bool:
        out = values.map(lambda v: str(bool(v)).upper())
    else:
        out = values.astype(np.float64).map(_num)
    pd.DataFrame({"name": list(names), "value": out.to_numpy()}).to_csv(path, index=False)


def _matrix_csv(names, matrix, path: Path, columns=None) -> None:
    matrix = np.asarray(
        matrix.toarray() if hasattr(matrix, "toarray") else matrix, dtype=np.float64
    )
    if matrix.ndim == 1:
        matrix = matrix[:, None]
    columns = list(columns) if columns is not None else [f"c{i}" for i in range(matrix.shape[1])]
    frame = pd.DataFrame(np.vectorize(_num, otypes=[object])(matrix), columns=columns)
    frame.insert(0, "name", list(names))
    frame.to_csv(path, index=False)


def export_expected(
    h5ad: Path, out: Path, key: str = KEY, assays: tuple[str, ...] = ()
) -> dict[str, list[str]]:
    """Read the written .h5ad back with anndata and export the values R must see.

    ``assays`` adds whole matrices ("X" or layer names). Returns what was exported, e.g.
    {"obs": ["rnn_pred", ...], "obsm": [...], ...}.
    """
    out.mkdir(parents=True, exist_ok=True)
    adata = ad.read_h5ad(h5ad)
    pd.DataFrame({"n_obs": [adata.n_obs], "n_vars": [adata.n_vars]}).to_csv(
        out / "dims.csv", index=False
    )
    pd.DataFrame({"name": adata.obs_names}).to_csv(out / "obs_names.csv", index=False)
    pd.DataFrame({"name": adata.var_names}).to_csv(out / "var_names.csv", index=False)
    exported: dict[str, list[str]] = {}

    def ours(name: str) -> bool:  # every output key of anndata-rnn: <key>_*, X_<key>, X_<key>_*
        return name.startswith(f"{key}_") or name == f"X_{key}" or name.startswith(f"X_{key}_")

    for axis, frame, names in (
        ("obs", adata.obs, adata.obs_names),
        ("var", adata.var, adata.var_names),
    ):
        for col in filter(ours, frame.columns):
            _vector_csv(names, frame[col], out / f"{axis}__{col}.csv")
            exported.setdefault(axis, []).append(col)
    for slot, mats, names in (
        ("obsm", adata.obsm, adata.obs_names),
        ("varm", adata.varm, adata.var_names),
    ):
        for name in sorted(filter(ours, mats.keys())):
            _matrix_csv(names, mats[name], out / f"{slot}__{name}.csv")
            exported.setdefault(slot, []).append(name)
    for name in sorted(filter(ours, adata.layers.keys())):
        _matrix_csv(
            adata.obs_names,
            adata.layers[name],
            out / f"layers__{name}.csv",
            columns=adata.var_names,
        )
        exported.setdefault("layers", []).append(name)
    for name in assays:
        matrix = adata.X if name == "X" else adata.layers[name]
        slot = "X" if name == "X" else "layers"
        _matrix_csv(adata.obs_names, matrix, out / f"{slot}__{name}.csv", columns=adata.var_names)
        exported.setdefault(slot, []).append(name)
    if key in adata.uns:
        rows = flatten_uns(adata.uns[key])
        pd.DataFrame(rows, columns=["path", "index", "kind", "value"]).to_csv(
            out / f"uns__{key}.csv", index=False
        )
        exported["uns"] = [key]
    return exported


# ---------------------------------------------------------------------------- test data --
def krumsiek_series(n_series: int = 32):
    """krumsiek11 (640 x 11, bundled with scanpy) cut into time series along obs."""
    import scanpy as sc

    with warnings.catch_warnings():  # its obs names repeat; made unique below
        warnings.simplefilter("ignore", UserWarning)
        adata = sc.datasets.krumsiek11()
    adata.uns.clear()  # uns["highlights"] has int keys, which .h5ad cannot store
    adata.obs_names_make_unique()
    steps = adata.n_obs // n_series
    adata = adata[: steps * n_series].copy()
    adata.obs["series"] = np.repeat(np.arange(n_series), steps).astype(str)
    adata.obs["time"] = np.tile(np.arange(steps, dtype=float), n_series)
    return adata


def gene_series(n_genes: int = 60, n_times: int = 24, seed: int = 0):
    """Genes as sequences over time (var-series): three phase classes of oscillating genes."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_times, dtype=float)
    phase = np.tile(["early", "mid", "late"], n_genes // 3 + 1)[:n_genes]
    shift = pd.Series(phase).map({"early": 0.0, "mid": 2.1, "late": 4.2}).to_numpy()
    x = np.sin(t[:, None] / 3.0 + shift[None, :]) + rng.normal(0, 0.2, (n_times, n_genes))
    adata = ad.AnnData(
        x.astype(np.float32),
        obs=pd.DataFrame({"series": "s1", "time": t}, index=[f"t{i}" for i in range(n_times)]),
        var=pd.DataFrame(
            {"phase": pd.Categorical(phase)}, index=[f"gene{i}" for i in range(n_genes)]
        ),
    )
    return adata


def tl():
    from anndata_rnn import tl as tools

    return tools


class Missing(Exception):
    """An anndata-rnn tool that does not exist yet (its test is skipped)."""


def tool(name: str):
    """tl.forecast / tl.embed / tl.cluster arrive after tl.classify: skip until they exist."""
    try:
        return getattr(tl(), name)
    except AttributeError:
        raise Missing(f"anndata_rnn.tl.{name} is not implemented yet") from None


# ---------------------------------------------------------------- cases checked in R --
# Every case writes its .h5ad files and expected values first; then ONE R process checks
# them all (loading SingleCellExperiment costs ~5 s of CPU per R process).
def case_classify(tmp: Path) -> dict:
    """(a) obs-series (obs/obsm, krumsiek11) and var-series (var/varm) classifiers."""
    adata = krumsiek_series()
    model = tl().classify(
        adata,
        label_key="cell_type",
        layout="obs-series",
        series_key="series",
        time_key="time",
        key_added=KEY,
        **FAST,
    )
    obs_h5ad = tmp / "classify_obs_series.h5ad"
    adata.write_h5ad(obs_h5ad)
    model_path = tmp / "classifier.h5"
    model.save(model_path)

    genes = gene_series()
    tl().classify(
        genes,
        label_key="phase",
        layout="var-series",
        series_key="series",
        time_key="time",
        key_added=KEY,
        **FAST,
    )
    var_h5ad = tmp / "classify_var_series.h5ad"
    genes.write_h5ad(var_h5ad)
    return {
        "jobs": [
            {"label": "classify_obs", "h5ad": obs_h5ad, "expected": tmp / "exp_obs"},
            {"label": "classify_var", "h5ad": var_h5ad, "expected": tmp / "exp_var"},
        ],
        "model": model,
        "model_path": model_path,
    }


def case_forecast(tmp: Path) -> dict:
    """(b) obs-series forecaster (layers/<key>_forecast, uns/<key>/future) and var-series
    forecaster with a holdout rollout (varm/<key>_forecast)."""
    forecast = tool("forecast")
    adata = krumsiek_series()
    forecast(
        adata,
        layout="obs-series",
        series_key="series",
        time_key="time",
        horizon=2,
        key_added=KEY,
        **FAST,
    )
    obs_h5ad = tmp / "forecast_obs_series.h5ad"
    adata.write_h5ad(obs_h5ad)

    genes = gene_series()
    forecast(
        genes,
        layout="var-series",
        series_key="series",
        time_key="time",
        holdout_steps=3,
        key_added=KEY,
        **FAST,
    )
    var_h5ad = tmp / "forecast_var_series.h5ad"
    genes.write_h5ad(var_h5ad)
    return {
        "jobs": [
            {"label": "forecast_obs", "h5ad": obs_h5ad, "expected": tmp / "exp_obs"},
            {"label": "forecast_var", "h5ad": var_h5ad, "expected": tmp / "exp_var"},
        ]
    }


def case_embed(tmp: Path) -> dict:
    """(c) embeddings (obsm/X_<key>, varm/X_<key>) and their clusters (tl.cluster:
    obs/<key>_cluster, var/<key>_cluster)."""
    embed = tool("embed")
    cluster = tool("cluster")
    adata = krumsiek_series()
    embed(
        adata,
        layout="obs-series",
        series_key="series",
        time_key="time",
        n_latent=4,
        key_added=KEY,
        **FAST,
    )
    cluster(adata, use_rep=f"X_{KEY}", n_clusters=3, key_added=f"{KEY}_cluster", seed=0)
    obs_h5ad = tmp / "embed_obs_series.h5ad"
    adata.write_h5ad(obs_h5ad)

    genes = gene_series()
    embed(
        genes,
        layout="var-series",
        series_key="series",
        time_key="time",
        n_latent=3,
        key_added=KEY,
        **FAST,
    )
    cluster(genes, use_rep=f"X_{KEY}", n_clusters=3, key_added=f"{KEY}_cluster", seed=0)
    var_h5ad = tmp / "embed_var_series.h5ad"
    genes.write_h5ad(var_h5ad)
    return {
        "jobs": [
            {"label": "embed_obs", "h5ad": obs_h5ad, "expected": tmp / "exp_obs"},
            {"label": "embed_var", "h5ad": var_h5ad, "expected": tmp / "exp_var"},
        ]
    }


def case_checker(tmp: Path) -> dict:
    """The R checker itself: a correct file passes, wrong expected values fail (status 1),
    R-unfriendly encodings in the anndata-rnn keys fail --strict (status 3)."""
    good = tmp / "good.h5ad"
    _synthetic_output(good)
    export_expected(good, tmp / "exp_good", assays=("X", "counts"))

    # expected values that disagree with the file in three places
    tampered = tmp / "exp_bad"
    shutil.copytree(tmp / "exp_good", tampered)
    pred = pd.read_csv(tampered / f"obs__{KEY}_pred.csv", keep_default_na=False)
    pred.loc[0, "value"] = "c" if pred.loc[0, "value"] != "c" else "a"
    pred.to_csv(tampered / f"obs__{KEY}_pred.csv", index=False)
    proba = pd.read_csv(tampered / f"obsm__{KEY}_proba.csv")
    proba.loc[4, "c1"] += 0.01
    proba.to_csv(tampered / f"obsm__{KEY}_proba.csv", index=False)
    uns = pd.read_csv(tampered / f"uns__{KEY}.csv", keep_default_na=False)
    uns.loc[uns["path"] == "history/train_loss", "value"] = "9.0"
    uns.to_csv(tampered / f"uns__{KEY}.csv", index=False)

    # encodings that trip R readers, inside the anndata-rnn keys
    bad = tmp / "bad_encodings.h5ad"
    adata = ad.read_h5ad(good)
    adata.obs[f"{KEY}_flag"] = np.arange(adata.n_obs) % 2 == 0  # numpy bool -> HDF5 enum
    adata.obs[f"{KEY}_code"] = np.arange(adata.n_obs, dtype=np.uint8)  # -> R raw
    adata.uns[KEY]["params"]["quiet"] = True
    adata.layers[f"{KEY}_forecast"] = adata.X.copy()
    adata.write_h5ad(bad)
    with h5py.File(bad, "r+") as f:  # reverse the column indices inside one stored row
        g = f[f"layers/{KEY}_forecast"]
        indptr = g["indptr"][:]
        row = next(i for i in range(len(indptr) - 1) if indptr[i + 1] - indptr[i] > 1)
        lo, hi = indptr[row], indptr[row + 1]
        g["indices"][lo:hi] = g["indices"][lo:hi][::-1]
        g["data"][lo:hi] = g["data"][lo:hi][::-1]
    assert ad.read_h5ad(bad).layers[f"{KEY}_forecast"].has_sorted_indices is False
    return {
        "jobs": [
            {"label": "good", "h5ad": good, "expected": tmp / "exp_good"},
            {"label": "tampered", "h5ad": good, "expected": tampered, "strict": False},
            {"label": "bad_encodings", "h5ad": bad, "expected": None},
        ]
    }


def case_nullable(tmp: Path) -> dict:
    """(f) an input whose indices and string columns are nullable-string-array (anndata with
    ``pd.options.future.infer_string``), classified through the CLI: R reads the whole output
    (the input's own nullable strings included) and the new keys pass --strict."""
    from click.testing import CliRunner

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fixtures_rich import write_encoded

    from anndata_rnn.cli import main

    source = write_encoded(tmp / "nullable.h5ad", "nullable strings")
    output = tmp / "nullable_classified.h5ad"
    args = ["classify", str(source), "--series-key", "series", "--time-key", "time",
            "--label", "label", "--hidden", "8", "--epochs", "2", "--device", "cpu", "--quiet",
            "--key-added", KEY, "--output", str(output), "--model-out", str(tmp / "m.h5")]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    with h5py.File(output, "r") as f:
        assert f["obs/_index"].attrs["encoding-type"] == "nullable-string-array"
    return {"jobs": [{"label": "nullable", "h5ad": output, "expected": tmp / "exp_nullable"}]}


CASES = {
    "classify": case_classify,
    "nullable": case_nullable,
    "forecast": case_forecast,
    "embed": case_embed,
    "checker": case_checker,
}


@pytest.fixture(scope="module")
def r_checks(tmp_path_factory):
    """Build every case, export its expected values, then run read_output.R once on all."""
    cases: dict[str, dict] = {}
    for name, build in CASES.items():
        tmp = tmp_path_factory.mktemp(f"r_{name}")
        try:
            case = build(tmp)
        except Missing as exc:
            cases[name] = {"skip": str(exc)}
            continue
        except Exception as exc:  # reported by the case's own test
            cases[name] = {"error": exc}
            continue
        for job in case["jobs"]:
            if job["expected"] is not None and not job["expected"].exists():
                job["exported"] = export_expected(job["h5ad"], job["expected"])
        cases[name] = case

    args: list = []
    jobs = [job for case in cases.values() for job in case.get("jobs", [])]
    for job in jobs:
        if args:
            args.append("--then")
        args += [job["h5ad"], "--key", KEY, "--label", job["label"]]
        if job["expected"] is not None:
            args += ["--expected", job["expected"]]
        if job.get("strict", True):
            args.append("--strict")
    proc = run_r("read_output.R", *args, timeout=600) if jobs else None
    # each job's output ends with its "== RESULT <label>: ..." line
    start, pos = 0, 0
    for line in proc.stdout.splitlines(keepends=True) if proc else []:
        pos += len(line)
        if line.startswith("== RESULT "):
            label = line[len("== RESULT ") :].split(":", 1)[0]
            for job in jobs:
                if job["label"] == label:
                    job["output"] = proc.stdout[start:pos]
            start = pos
    return {"cases": cases, "proc": proc}


def get_case(r_checks, name: str) -> dict:
    case = r_checks["cases"][name]
    if "skip" in case:
        pytest.skip(case["skip"])
    if "error" in case:
        raise case["error"]
    return case


def assert_ok_in_r(r_checks, job: dict) -> str:
    out = job.get("output", "")
    assert f"== RESULT {job['label']}: OK" in out, (
        f"R check of {job['h5ad'].name} failed:\n"
        + out
        + "\n--- stderr ---\n"
        + r_checks["proc"].stderr
    )
    return out


# -------------------------------------------------------------------------------- tests --
def test_classifier_output_reads_in_r(r_checks):
    """(a) classifier outputs -> SingleCellExperiment; predictions, probabilities,
    embeddings and uns/<key> equal Python's."""
    obs_job, var_job = get_case(r_checks, "classify")["jobs"]
    assert set(obs_job["exported"]["obs"]) >= {f"{KEY}_pred", f"{KEY}_conf"}
    assert set(obs_job["exported"]["obsm"]) == {f"{KEY}_proba", f"X_{KEY}"}
    assert set(var_job["exported"]["var"]) >= {f"{KEY}_pred", f"{KEY}_conf"}
    assert set(var_job["exported"]["varm"]) == {f"{KEY}_proba", f"X_{KEY}"}
    for job in (obs_job, var_job):
        out = assert_ok_in_r(r_checks, job)
        assert "class: SingleCellExperiment" in out
        assert f"checked uns/{KEY}" in out
        assert f"{KEY}_pred" in out


def test_forecaster_output_reads_in_r(r_checks):
    """(b) forecasts: layers/<key>_forecast as an assay, varm/<key>_forecast in rowData."""
    obs_job, var_job = get_case(r_checks, "forecast")["jobs"]
    assert obs_job["exported"]["layers"] == [f"{KEY}_forecast"]
    assert "future" in ad.read_h5ad(obs_job["h5ad"]).uns[KEY]
    assert f"{KEY}_forecast" in var_job["exported"]["varm"]
    assert f"layers/{KEY}_forecast" in assert_ok_in_r(r_checks, obs_job)
    assert f"varm/{KEY}_forecast" in assert_ok_in_r(r_checks, var_job)


def test_embedding_output_reads_in_r(r_checks):
    """(c) embeddings as reducedDims / rowData matrices, clusters as factors."""
    obs_job, var_job = get_case(r_checks, "embed")["jobs"]
    assert f"X_{KEY}" in obs_job["exported"]["obsm"]
    assert f"{KEY}_cluster" in obs_job["exported"]["obs"]
    assert f"X_{KEY}" in var_job["exported"]["varm"]
    assert f"{KEY}_cluster" in var_job["exported"]["var"]
    assert f"obs/{KEY}_cluster" in assert_ok_in_r(r_checks, obs_job)
    assert f"var/{KEY}_cluster" in assert_ok_in_r(r_checks, var_job)


def test_nullable_string_input_output_reads_in_r(r_checks):
    """(f) the output of a nullable-string input: R builds the SingleCellExperiment with the
    input's string names and columns, and the predictions equal Python's."""
    (job,) = get_case(r_checks, "nullable")["jobs"]
    assert set(job["exported"]["obs"]) >= {f"{KEY}_pred", f"{KEY}_conf"}
    out = assert_ok_in_r(r_checks, job)
    assert "class: SingleCellExperiment" in out
    assert f"{KEY}_pred" in out


def test_r_checker_detects_mismatches_and_bad_encodings(r_checks):
    """The R side is a real check, naming the element at fault."""
    good, tampered, bad = get_case(r_checks, "checker")["jobs"]
    out = assert_ok_in_r(r_checks, good)
    assert "checked 11 elements" in out, out

    out = tampered.get("output", "")
    assert "== RESULT tampered: FAILED (status 1)" in out, out
    assert f"MISMATCH: obs/{KEY}_pred: 1 of 30 values differ (first at [cell0]:" in out, out
    assert f"MISMATCH: obsm/{KEY}_proba: 1 of 90 values differ (first at [cell4, c1]" in out, out
    assert f"MISMATCH: uns/{KEY}/history/train_loss[0]" in out, out

    out = bad.get("output", "")
    assert "== RESULT bad_encodings: FAILED (status 3)" in out, out
    for element in (
        f"/obs/{KEY}_flag",
        f"/obs/{KEY}_code",
        f"/uns/{KEY}/params/quiet",
        f"/layers/{KEY}_forecast",
    ):
        assert f"STRICT: {element} uses an encoding" in out, out
    assert "unsorted or duplicate column indices inside row" in out, out
    # the exit status is the worst job's
    assert r_checks["proc"].returncode == 3, r_output(r_checks["proc"])


def test_model_file_reads_in_r(r_checks, tmp_path):
    """(d) the model file: format attributes, JSON config, feature names, weights."""
    case = get_case(r_checks, "classify")
    model = case["model"]
    features_out = tmp_path / "features.txt"
    summary_out = tmp_path / "summary.json"
    proc = run_r(
        "read_model.R",
        case["model_path"],
        "--features-out",
        features_out,
        "--summary-out",
        summary_out,
    )
    assert proc.returncode == 0, r_output(proc)
    r_features = features_out.read_text(encoding="utf-8").splitlines()
    assert r_features == [str(f) for f in model.features]
    summary = json.loads(summary_out.read_text(encoding="utf-8"))
    assert summary["format"] == "anndata-rnn-model"
    with h5py.File(case["model_path"], "r") as f:
        assert summary["format_version"] == int(f.attrs["format_version"])
        config = json.loads(f.attrs["config"])
    assert summary["task"] == config["task"] == "classify"
    assert summary["layout"] == "obs-series"
    assert summary["classes"] == [str(c) for c in model.classes]
    assert summary["n_features"] == len(model.features)
    state = model.module.state_dict()
    assert summary["n_params"] == sum(int(t.numel()) for t in state.values())
    assert summary["weights"] == {k: list(t.shape) for k, t in state.items()}


@pytest.mark.parametrize("strings", ["variable-length", "fixed-length"])
def test_inputs_written_by_r(tmp_path, strings):
    """(e) an .h5ad written from R (rhdf5): dense double X, string categoricals, index
    datasets named cell_id / gene_id through the ``_index`` attribute."""
    h5ad = tmp_path / "from_r.h5ad"
    extra = ["--fixed-length-strings"] if strings == "fixed-length" else []
    proc = run_r("write_input.R", h5ad, "--cells", 90, "--genes", 24, *extra)
    assert proc.returncode == 0, r_output(proc)
    with h5py.File(h5ad, "r") as f:
        assert f["obs"].attrs["_index"] == "cell_id"
        assert f["var"].attrs["_index"] == "gene_id"
        assert f["X"].dtype == np.float64

    from anndata_rnn.io import read_h5ad

    adata = read_h5ad(h5ad)
    expected_cells = [f"cell_{i:03d}" for i in range(1, 91)]
    assert list(adata.obs_names) == expected_cells
    assert list(adata.var_names) == [f"ENSG{i:05d}" for i in range(1, 25)]
    assert list(adata.obs["cell_type"].cat.categories) == ["alpha", "beta", "gamma"]

    model = tl().classify(
        adata, label_key="cell_type", layout="profile", chunk_size=6, key_added=KEY, **FAST
    )
    assert list(model.classes) == ["alpha", "beta", "gamma"]
    assert [str(f) for f in model.features] == list(adata.var_names)
    out = tmp_path / "out.h5ad"
    adata.write_h5ad(out)
    back = ad.read_h5ad(out)
    assert list(back.obs_names) == expected_cells
    assert back.obs[f"{KEY}_pred"].notna().all()
    assert set(back.obs[f"{KEY}_pred"].cat.categories) == {"alpha", "beta", "gamma"}
    assert back.obsm[f"{KEY}_proba"].shape == (90, 3)


# ------------------------------------------------------------------- the R package --
#: options the R functions manage themselves: the input and output files
R_MANAGED = {"input", "output", "help"}
#: R function -> anndata-rnn command
R_FUNCTIONS = {
    "rnnClassify": "classify",
    "rnnForecast": "forecast",
    "rnnEmbed": "embed",
    "rnnExplain": "explain",
    "rnnPredict": "predict",
}


def _click_options(command: str) -> dict[str, tuple[str, str]]:
    """R argument name -> (long option, kind) of every option of an anndata-rnn command."""
    import click

    from anndata_rnn.cli import main

    out = {}
    for p in main.commands[command].params:
        if not isinstance(p, click.Option):
            continue
        long = [o for o in p.opts if o.startswith("--")][0]
        name = long[2:].replace("-", "_")
        if name in R_MANAGED:
            continue
        kind = ("pair" if p.secondary_opts else "flag") if p.is_flag else "value"
        out[name] = (long, kind)
    return out


def test_r_functions_mirror_the_cli_options(tmp_path):
    """Every argument of rnnClassify/... (but x and assay) is an option of its command, named
    as the option with underscores, passed as that option, and every option is an argument:
    the installed R package and the click commands cannot drift apart (regenerate with
    ``PYTHONPATH=. python r/generate_rnn_functions.py``). All default to NULL: not passed,
    so the CLI's defaults apply."""
    out = tmp_path / "formals.json"
    code = (
        "suppressPackageStartupMessages(library(anndataRnn)); "
        f"funs <- c({', '.join(repr(f) for f in R_FUNCTIONS)}); "
        "res <- lapply(funs, function(f) { fm <- formals(get(f)); "
        "list(args = names(fm), null = names(fm)[vapply(fm, is.null, logical(1))]) }); "
        "names(res) <- funs; "
        "tab <- lapply(anndataRnn:::.rnn_options, function(t) "
        "list(options = as.list(t$options), kinds = as.list(t$kinds))); "
        "jsonlite::write_json(list(formals = res, table = tab), "
        f"'{out}', auto_unbox = FALSE)"
    )
    proc = subprocess.run(
        [RSCRIPT, "--vanilla", "-e", code], capture_output=True, text=True, env=r_env()
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(out.read_text())
    problems = []
    for fun, command in R_FUNCTIONS.items():
        cli = _click_options(command)
        args = got["formals"][fun]["args"]
        assert args[0] == "x", fun
        r_args = set(args) - {"x", "assay"}
        for name in sorted(r_args - set(cli)):
            problems.append(f"{fun}({name}=): no option --{name.replace('_', '-')} in {command}")
        for name in sorted(set(cli) - r_args):
            problems.append(f"{fun}: no argument {name} for {cli[name][0]} of {command}")
        not_null = set(args) - {"x"} - set(got["formals"][fun]["null"])
        if not_null:
            problems.append(f"{fun}: arguments with an R default: {sorted(not_null)}")
        table = got["table"][command]
        options = {k: v[0] for k, v in table["options"].items()}
        kinds = {k: v[0] for k, v in table["kinds"].items()}
        for name, (long, kind) in cli.items():
            if name in options and (options[name], kinds.get(name)) != (long, kind):
                problems.append(
                    f"{fun}: {name} is passed as {options[name]} ({kinds.get(name)}), "
                    f"the CLI has {long} ({kind})"
                )
        if set(options) != r_args:
            problems.append(f"{fun}: the option table and the arguments differ")
    assert not problems, "\n".join(problems)


def test_mirror_check_sees_a_divergence():
    """The check above is not vacuous: an option renamed on either side is reported."""
    cli = _click_options("classify")
    assert cli["label"] == ("--label", "value")
    assert cli["linear_path"] == ("--linear-path", "pair")
    assert cli["bidirectional"] == ("--bidirectional", "flag")
    assert "input" not in cli and "output" not in cli and "model_out" in cli
    assert _click_options("predict")["model"] == ("--model", "value")


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, na_values=[""], dtype=str)


def test_r_round_trip_equals_python(tmp_path):
    """SingleCellExperiment -> rnnClassify / rnnPredict from R -> the same object with the
    results; the same commands from Python on the .h5ad the package wrote give the same
    predictions, probabilities and embedding. The dgCMatrix, the factor label with NA and
    the integer, logical and string columns with NA reach anndata as what they are."""
    from click.testing import CliRunner

    from anndata_rnn.cli import main

    proc = run_r("round_trip.R", tmp_path, timeout=900)
    assert proc.returncode == 0, r_output(proc)
    assert "OK" in proc.stdout.splitlines()[-1], r_output(proc)

    # what the package wrote, read by anndata
    adata = ad.read_h5ad(tmp_path / "input.h5ad")
    import scipy.sparse as sp

    counts = pd.read_csv(tmp_path / "input_counts.csv", index_col=0)  # genes x cells
    assert sp.issparse(adata.X) and adata.X.format == "csr" and adata.X.has_sorted_indices
    np.testing.assert_array_equal(adata.X.toarray(), counts.to_numpy().T)
    assert list(adata.obs_names) == list(counts.columns)
    assert list(adata.var_names) == list(counts.index)
    obs = pd.read_csv(tmp_path / "input_obs.csv", index_col=0, keep_default_na=False)
    label = adata.obs["cell_type"]
    assert isinstance(label.dtype, pd.CategoricalDtype)
    assert list(label.cat.categories) == ["alpha", "beta", "gamma"]
    assert list(label.isna()) == list(obs["cell_type"] == "NA")
    assert str(adata.obs["batch"].dtype) in ("Int32", "Int64")  # nullable integer
    assert list(adata.obs["batch"].isna()) == list(obs["batch"] == "NA")
    assert list(adata.obs["batch"].dropna().astype(int)) == [
        int(v) for v in obs["batch"] if v != "NA"
    ]
    assert str(adata.obs["qc_pass"].dtype) == "boolean"
    assert list(adata.obs["qc_pass"].isna()) == list(obs["qc_pass"] == "NA")
    assert adata.obs["donor"].isna().sum() == (obs["donor"] == "NA").sum() > 0
    assert str(adata.var["chromosome"].dtype) in ("Int32", "Int64")
    assert adata.var["chromosome"].isna().sum() == 4
    assert adata.obsm["PCA"].shape == (adata.n_obs, 3)

    # the same classify command, from Python, on the same data and seed
    common = ["--layout", "profile", "--chunk-size", "6", "--hidden", "8", "--epochs", "2",
              "--min-steps", "0", "--seed", "0", "--device", "cpu", "--threads", "1", "--quiet"]  # fmt: skip
    out_py = tmp_path / "py_classified.h5ad"
    result = CliRunner().invoke(
        main,
        ["classify", str(tmp_path / "input.h5ad"), "--label", "cell_type", *common,
         "--output", str(out_py), "--model-out", str(tmp_path / "model_py.h5")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    py = ad.read_h5ad(out_py)
    r_obs = _read_csv(tmp_path / "r_classify_obs.csv")
    assert list(r_obs["name"]) == list(py.obs_names)
    assert r_obs["rnn_pred"].notna().all()  # unlabelled cells are predicted too
    assert list(r_obs["rnn_pred"]) == list(py.obs[f"{KEY}_pred"].astype(str))
    assert list(r_obs["rnn_split"]) == list(py.obs[f"{KEY}_split"].astype(str))
    np.testing.assert_allclose(
        r_obs["rnn_conf"].astype(float), py.obs[f"{KEY}_conf"], rtol=1e-6, atol=1e-7
    )
    proba = pd.read_csv(tmp_path / "r_classify_proba.csv", index_col=0)
    np.testing.assert_allclose(proba.to_numpy(), py.obsm[f"{KEY}_proba"], rtol=1e-6, atol=1e-7)
    emb = pd.read_csv(tmp_path / "r_classify_embedding.csv", index_col=0)
    np.testing.assert_allclose(emb.to_numpy(), py.obsm[f"X_{KEY}"], rtol=1e-5, atol=1e-6)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["accuracy"] == pytest.approx(py.uns[KEY]["metrics"]["rnn"]["accuracy"])

    # rnnPredict from R == anndata-rnn predict from Python with R's model
    out_pred = tmp_path / "py_predicted.h5ad"
    result = CliRunner().invoke(
        main,
        ["predict", str(tmp_path / "input.h5ad"), "--model", str(tmp_path / "model_r.h5"),
         "--key-added", "again", "--seed", "0", "--device", "cpu", "--threads", "1", "--quiet",
         "--output", str(out_pred)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    pred = ad.read_h5ad(out_pred)
    r_pred = _read_csv(tmp_path / "r_predict_obs.csv")
    assert list(r_pred["again_pred"]) == list(pred.obs["again_pred"].astype(str))
    np.testing.assert_allclose(
        r_pred["again_conf"].astype(float), pred.obs["again_conf"], rtol=1e-6, atol=1e-7
    )

    # a tool error reaches R as an R error with the tool's one-line message
    result = CliRunner().invoke(
        main,
        ["classify", str(tmp_path / "input.h5ad"), "--label", "no_such_column", *common,
         "--output", str(tmp_path / "e.h5ad"), "--model-out", str(tmp_path / "e.h5")],
    )  # fmt: skip
    assert result.exit_code != 0
    tool_line = [ln for ln in result.output.splitlines() if ln.startswith("Error: ")][-1]
    r_error = (tmp_path / "r_error.txt").read_text().strip()
    assert r_error == "anndata-rnn classify: " + tool_line[len("Error: ") :]


def _synthetic_output(path: Path) -> ad.AnnData:
    """An output-like .h5ad written by anndata: sparse X, CSC layer, NA predictions, nested uns."""
    import scipy.sparse as sp

    rng = np.random.default_rng(3)
    n_obs, n_vars = 30, 7
    x = sp.random(n_obs, n_vars, density=0.4, format="csr", random_state=3, dtype=np.float32)
    pred = pd.Categorical(rng.choice(["a", "b", "c"], n_obs), categories=["a", "b", "c"])
    pred[[2, 5]] = np.nan
    adata = ad.AnnData(
        x,
        obs=pd.DataFrame(
            {f"{KEY}_pred": pred, f"{KEY}_conf": rng.random(n_obs)},
            index=[f"cell{i}" for i in range(n_obs)],
        ),
        var=pd.DataFrame(index=[f"g{i}" for i in range(n_vars)]),
    )
    adata.layers["counts"] = sp.csc_matrix(x)
    adata.obsm[f"{KEY}_proba"] = rng.dirichlet(np.ones(3), n_obs)
    adata.obsm[f"X_{KEY}"] = rng.normal(size=(n_obs, 4)).astype(np.float32)
    adata.varm[f"{KEY}_forecast"] = rng.normal(size=(n_vars, 2))
    adata.uns[KEY] = {
        "classes": np.array(["a", "b", "c"], dtype=object),
        "metrics": {"rnn": {"accuracy": 0.5, "confusion_matrix": np.arange(9).reshape(3, 3)}},
        "history": {"train_loss": np.array([1.5, 1.0, 0.75])},
        "params": {"layout": "obs-series", "lr": 1e-3, "hidden": np.array([8, 4])},
    }
    adata.write_h5ad(path)
    return adata

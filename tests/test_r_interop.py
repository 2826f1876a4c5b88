"""Bioconductor interoperability: R reads what anndata-rnn writes (and anndata-rnn reads R's).

Every case runs the real anndata-rnn Python API on small data, writes the .h5ad / model
file, exports the expected values from Python (reading the written file back with
anndata) and runs real R (``Rscript``, rhdf5 + SingleCellExperiment, installed by
``.ci/install_r.sh``) on it:

- ``tests/r/read_output.R`` builds a SingleCellExperiment from the .h5ad and, in check mode,
  compares predictions, probabilities, embeddings, forecasts, clusters and ``uns[key]``
  with the CSV files exported here; ``--strict`` also fails when an anndata-rnn output uses
  an encoding that trips R readers (bool HDF5 enums, uint8, nullable strings, null, unsorted
  sparse indices).
- ``tests/r/read_model.R`` reads the model file (attributes, JSON config, feature names,
  weights).
- ``tests/r/write_input.R`` writes an .h5ad from R that anndata-rnn must train on.

Skipped only when ``Rscript`` is not installed.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
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
KEY = "rnn"

pytestmark = pytest.mark.skipif(
    RSCRIPT is None, reason="Rscript not installed (run .ci/install_r.sh)"
)

# small, fast training everywhere
FAST = dict(hidden=(8,), max_epochs=2, batch_size=32, patience=2, seed=0, quiet=True)


# ------------------------------------------------------------------------------- helpers --
def run_r(script: str, *args, timeout: int = 240) -> subprocess.CompletedProcess:
    cmd = [RSCRIPT, "--vanilla", str(R_DIR / script), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def r_output(proc: subprocess.CompletedProcess) -> str:
    return f"$ {' '.join(proc.args)}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"


def check_in_r(jobs: list[tuple[Path, Path]], *, key: str = KEY, strict: bool = True) -> str:
    """Run read_output.R in check mode on (h5ad, expected-dir) pairs, in one R process."""
    args: list[str] = []
    for n, (h5ad, expected) in enumerate(jobs):
        if n:
            args.append("--then")
        args += [h5ad, "--key", key, "--expected", expected, "--label", h5ad.name]
        if strict:
            args.append("--strict")
    proc = run_r("read_output.R", *args)
    assert proc.returncode == 0, "R check failed:\n" + r_output(proc)
    for h5ad, _ in jobs:
        assert f"== RESULT {h5ad.name}: OK" in proc.stdout, r_output(proc)
    return proc.stdout


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
    suffixes = ("pred", "conf", "cluster", "split")
    for axis, frame, names in (
        ("obs", adata.obs, adata.obs_names),
        ("var", adata.var, adata.var_names),
    ):
        for col in (f"{key}_{s}" for s in suffixes):
            if col in frame.columns:
                _vector_csv(names, frame[col], out / f"{axis}__{col}.csv")
                exported.setdefault(axis, []).append(col)
    wanted = {f"X_{key}", f"{key}_proba", f"{key}_forecast"}
    for slot, mats, names in (
        ("obsm", adata.obsm, adata.obs_names),
        ("varm", adata.varm, adata.var_names),
    ):
        for name in sorted(wanted & set(mats.keys())):
            _matrix_csv(names, mats[name], out / f"{slot}__{name}.csv")
            exported.setdefault(slot, []).append(name)
    if f"{key}_forecast" in adata.layers:
        _matrix_csv(
            adata.obs_names,
            adata.layers[f"{key}_forecast"],
            out / f"layers__{key}_forecast.csv",
            columns=adata.var_names,
        )
        exported.setdefault("layers", []).append(f"{key}_forecast")
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


def tool_or_skip(name: str):
    """tl.forecast / tl.embed / tl.cluster arrive after tl.classify: skip until they exist."""
    tools = tl()
    try:
        return getattr(tools, name)
    except AttributeError:
        pytest.skip(f"anndata_rnn.tl.{name} is not implemented yet")


# -------------------------------------------------------------------------------- tests --
@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    """One obs-series classifier (krumsiek11), written to .h5ad, and its model file."""
    tmp = tmp_path_factory.mktemp("r_classify")
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
    h5ad = tmp / "classify_obs_series.h5ad"
    adata.write_h5ad(h5ad)
    model_path = tmp / "classifier.h5"
    model.save(model_path)
    return {"tmp": tmp, "h5ad": h5ad, "model": model, "model_path": model_path}


def test_classifier_output_reads_in_r(classifier_run, tmp_path):
    """(a) obs-series (obs/obsm) and var-series (var/varm) classifier outputs -> SCE."""
    obs_h5ad = classifier_run["h5ad"]
    obs_expected = export_expected(obs_h5ad, tmp_path / "exp_obs")
    assert set(obs_expected["obs"]) >= {f"{KEY}_pred", f"{KEY}_conf"}
    assert set(obs_expected["obsm"]) == {f"{KEY}_proba", f"X_{KEY}"}

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
    var_h5ad = tmp_path / "classify_var_series.h5ad"
    genes.write_h5ad(var_h5ad)
    var_expected = export_expected(var_h5ad, tmp_path / "exp_var")
    assert set(var_expected["var"]) >= {f"{KEY}_pred", f"{KEY}_conf"}
    assert set(var_expected["varm"]) == {f"{KEY}_proba", f"X_{KEY}"}

    out = check_in_r([(obs_h5ad, tmp_path / "exp_obs"), (var_h5ad, tmp_path / "exp_var")])
    assert f"checked uns/{KEY}" in out
    assert "class: SingleCellExperiment" in out


def test_forecaster_output_reads_in_r(tmp_path):
    """(b) obs-series forecaster: layers/<key>_forecast becomes an assay."""
    forecast = tool_or_skip("forecast")
    adata = krumsiek_series()
    forecast(
        adata,
        layout="obs-series",
        series_key="series",
        time_key="time",
        horizon=1,
        key_added=KEY,
        **FAST,
    )
    h5ad = tmp_path / "forecast.h5ad"
    adata.write_h5ad(h5ad)
    exported = export_expected(h5ad, tmp_path / "expected")
    assert exported.get("layers") == [f"{KEY}_forecast"] or f"{KEY}_forecast" in exported.get(
        "varm", []
    )
    out = check_in_r([(h5ad, tmp_path / "expected")])
    assert f"{KEY}_forecast" in out


def test_embedding_output_reads_in_r(tmp_path):
    """(c) embedding + clusters: obsm/X_<key> as a reducedDim, obs/<key>_cluster as a factor."""
    embed = tool_or_skip("embed")
    cluster = tool_or_skip("cluster")
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
    cluster(adata, key_added=KEY)
    h5ad = tmp_path / "embed.h5ad"
    adata.write_h5ad(h5ad)
    exported = export_expected(h5ad, tmp_path / "expected")
    assert f"X_{KEY}" in exported["obsm"]
    assert f"{KEY}_cluster" in exported["obs"]
    out = check_in_r([(h5ad, tmp_path / "expected")])
    assert f"X_{KEY}" in out


def test_model_file_reads_in_r(classifier_run, tmp_path):
    """(d) the model file: format attributes, JSON config, feature names, weights."""
    model = classifier_run["model"]
    features_out = tmp_path / "features.txt"
    summary_out = tmp_path / "summary.json"
    proc = run_r(
        "read_model.R",
        classifier_run["model_path"],
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
    with h5py.File(classifier_run["model_path"], "r") as f:
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


def test_r_checker_detects_mismatches_and_bad_encodings(tmp_path):
    """The R side is a real check: exact reading of sparse/categorical/uns data passes, a
    changed expected value fails (status 1), and R-unfriendly encodings in the anndata-rnn
    keys fail --strict (status 3), each naming the element."""
    good = tmp_path / "good.h5ad"
    _synthetic_output(good)
    export_expected(good, tmp_path / "exp_good", assays=("X", "counts"))

    # expected values that disagree with the file in three places
    tampered = tmp_path / "exp_bad"
    shutil.copytree(tmp_path / "exp_good", tampered)
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
    bad = tmp_path / "bad_encodings.h5ad"
    adata = ad.read_h5ad(good)
    adata.obs[f"{KEY}_flag"] = np.arange(adata.n_obs) % 2 == 0  # numpy bool -> HDF5 enum
    adata.obs[f"{KEY}_code"] = np.arange(adata.n_obs, dtype=np.uint8)  # -> R raw
    adata.uns[KEY]["params"]["quiet"] = True
    adata.layers[f"{KEY}_forecast"] = adata.X.copy()
    adata.write_h5ad(bad)
    with h5py.File(bad, "r+") as f:  # reverse the column indices inside the first stored row
        g = f[f"layers/{KEY}_forecast"]
        indptr = g["indptr"][:]
        row = next(i for i in range(len(indptr) - 1) if indptr[i + 1] - indptr[i] > 1)
        lo, hi = indptr[row], indptr[row + 1]
        g["indices"][lo:hi] = g["indices"][lo:hi][::-1]
        g["data"][lo:hi] = g["data"][lo:hi][::-1]
    assert ad.read_h5ad(bad).layers[f"{KEY}_forecast"].has_sorted_indices is False

    args = [
        good,
        "--expected",
        tmp_path / "exp_good",
        "--strict",
        "--label",
        "good",
        "--then",
        good,
        "--expected",
        tampered,
        "--label",
        "tampered",
        "--then",
        bad,
        "--strict",
        "--label",
        "bad_encodings",
    ]
    proc = run_r("read_output.R", *args)
    out = proc.stdout
    assert proc.returncode == 3, r_output(proc)
    assert "== RESULT good: OK" in out, r_output(proc)
    assert "checked 11 elements" in out, r_output(proc)
    assert "== RESULT tampered: FAILED (status 1)" in out, r_output(proc)
    assert f"MISMATCH: obs/{KEY}_pred: 1 of 30 values differ (first at [cell0]:" in out, r_output(
        proc
    )
    assert f"MISMATCH: obsm/{KEY}_proba: 1 of 90 values differ (first at [cell4, c1]" in out, (
        r_output(proc)
    )
    assert f"MISMATCH: uns/{KEY}/history/train_loss[0]" in out, r_output(proc)
    assert "== RESULT bad_encodings: FAILED (status 3)" in out, r_output(proc)
    for element in (
        f"/obs/{KEY}_flag",
        f"/obs/{KEY}_code",
        f"/uns/{KEY}/params/quiet",
        f"/layers/{KEY}_forecast",
    ):
        assert f"STRICT: {element} uses an encoding" in out, r_output(proc)
    assert "unsorted or duplicate column indices inside row" in out, r_output(proc)

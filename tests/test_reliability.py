"""Reliability of every command (classify, predict, inspect, demo, forecast, embed, explain).

* Bad input: exit code 2 (bad input / usage) or 1 (runtime failure), one line on stderr that names
  the problem and the fix, no traceback unless ``--debug``, no output or temporary file left
  behind, and the input files' bytes unchanged.
* Nothing lost: the output .h5ad holds every element of the input unchanged (rich fixture: sparse
  and dense X, layers, categoricals with NaN, nullable integers and booleans, obsm/varm/obsp/varp,
  nested uns, raw); new keys all carry the key_added prefix.
* Ctrl-C (in-process and a real SIGINT) and a full disk leave no output and no temporary file.
* Reproducible: the same seed on the CPU gives bitwise identical outputs and model files; the
  outputs record the package versions, the seed, the device and every parameter.

Data: the tiny synthetic AnnData of :mod:`fixtures_rich` (72 obs × 10 genes), hidden 8, 2 epochs.
CLI calls run in-process (click's CliRunner) except a few through the installed entry point.
"""

from __future__ import annotations

import errno
import inspect
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from click.testing import CliRunner
from fixtures_rich import assert_nothing_lost, rich_adata, sha256

import anndata_rnn as ar
from anndata_rnn.cli import main

torch.set_num_threads(1)

SERIES = "--series-key series --time-key time"
TRAIN = "--hidden 8 --epochs 2 --device cpu --quiet"
APPLY = "--quiet --device cpu"
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")


# ---------------------------------------------------------------------------------------------
# helpers


def invoke(*parts):
    """Run the CLI in-process. Text parts are split on spaces; paths are passed whole."""
    args = []
    for part in parts:
        args += part.split() if isinstance(part, str) else [str(part)]
    return CliRunner().invoke(main, args)


def listing(folder: Path) -> list[str]:
    """Every file under ``folder``, hidden temporary files included."""
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


def hashes(*paths) -> dict[str, str]:
    return {str(p): sha256(p) for p in paths if Path(p).is_file()}


def assert_clean_failure(result, code: int, mentions, *, folder: Path, before: list[str]) -> str:
    """Exit ``code``; one ``Error:`` line holding ``mentions``; nothing written under ``folder``."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    message = lines[0]
    assert message.startswith("Error: "), message
    for words in mentions:
        assert words.lower() in message.lower(), f"{words!r} not in {message!r}"
    assert listing(folder) == before, "an output or temporary file was left behind"
    return message


def expect_failure(folder: Path, inputs, code: int, mentions, *command):
    """Run ``command``; check a clean failure and that the inputs' bytes are unchanged."""
    before, state = listing(folder), hashes(*inputs)
    message = assert_clean_failure(invoke(*command), code, mentions, folder=folder, before=before)
    assert hashes(*inputs) == state, "an input file was modified"
    return message


def h5ad(folder: Path, adata: ad.AnnData, name: str = "input.h5ad") -> Path:
    path = folder / name
    adata.write_h5ad(path)
    return path


def variant(change) -> ad.AnnData:
    adata = rich_adata()
    change(adata)
    return adata


def copy(base: Path, name: str, folder: Path) -> Path:
    return Path(shutil.copyfile(base / name, folder / name))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Shared inputs: the rich h5ad, an obs-series classifier (on X and on X_pca), an output."""
    folder = tmp_path_factory.mktemp("base")
    rich = h5ad(folder, rich_adata(), "rich.h5ad")
    for suffix, extra in (("", ""), ("_rep", "--use-rep X_pca")):
        result = invoke(
            "classify", rich, SERIES, "--label label", extra, TRAIN,
            "--output", folder / f"classified{suffix}.h5ad",
            "--model-out", folder / f"model{suffix}.h5",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    return folder


# ---------------------------------------------------------------------------------------------
# bad input to classify


def _not_hdf5(folder):
    path = folder / "input.h5ad"
    path.write_text("gene\tcell1\nA\t1\n")
    return path


def _damaged(folder, damage):
    full = h5ad(folder, rich_adata(), "full.h5ad")
    data = bytearray(full.read_bytes())
    full.unlink()
    path = folder / "input.h5ad"
    path.write_bytes(bytes(damage(data)))
    return path


def _truncated(folder):
    return _damaged(folder, lambda data: data[: len(data) // 2])


def _zero_block(data):
    """Zeros over HDF5 object headers (in this fixture, at 30 % of the file)."""
    start = int(len(data) * 0.3)
    data[start : start + 2048] = bytes(2048)
    return data


def _broken_structure(folder):
    """A complete HDF5 file whose AnnData structure is broken (the obs index is missing)."""
    path = h5ad(folder, rich_adata())
    with h5py.File(path, "a") as f:
        del f["obs/_index"]
    return path


def _inf(sign):
    def change(adata):
        x = adata.X.toarray()
        x[3, 2] = sign * np.inf
        adata.X = sp.csr_matrix(x)

    return change


def _negative(adata):
    x = adata.X.toarray()
    x[5, 1] = -3
    adata.X = x


def _label_column(make):
    def change(adata):
        adata.obs["lab"] = make(adata)

    return change


def _rare_class(adata):
    lab = adata.obs["label"].astype(str).to_numpy().copy()
    lab[adata.obs["series"] == "s00"] = "rare"
    return lab


def _nan_labels(series):
    def make(adata):
        lab = adata.obs["label"].astype(object).to_numpy().copy()
        lab[adata.obs["series"].isin(series)] = None
        return pd.Categorical(lab)

    return make


def _set_time(value_of):
    def change(adata):
        adata.obs.loc[adata.obs_names[4], "time"] = value_of(adata)

    return change


def _data(change=None, name="input.h5ad"):
    """A builder writing the rich fixture (optionally changed) to the test's folder."""
    return lambda folder: h5ad(folder, variant(change) if change else rich_adata(), name)


def case(build, extra, *mentions, code=2):
    return build, extra, code, mentions


CLASSIFY_CASES = {
    # unreadable inputs
    "not an HDF5 file": case(_not_hdf5, "", "not an HDF5 file", "give a complete .h5ad"),
    "truncated h5ad": case(_truncated, "", "truncated", "give a complete .h5ad"),
    "damaged bytes": case(lambda f: _damaged(f, _zero_block), "", "input.h5ad", "damaged"),
    "damaged structure": case(_broken_structure, "", "could not be read as AnnData", "damaged"),
    "missing file": case(lambda f: f / "absent.h5ad", "", "does not exist"),
    "0 observations": case(
        lambda f: h5ad(f, rich_adata()[:0].copy()), "",
        "empty (0 obs", "give a file with observations and genes",
    ),
    "0 genes": case(
        lambda f: h5ad(f, rich_adata()[:, :0].copy()), "",
        "empty (72 obs × 0 features", "give a file with observations and genes",
    ),
    # labels
    "label key absent": case(
        _data(), "--label nope", "no column 'nope'", "available columns: series, time, label"
    ),
    "single class": case(
        _data(_label_column(lambda a: ["x"] * a.n_obs)), "--label lab",
        "single class", "at least 2 classes",
    ),
    "class with 1 member in training": case(
        _data(_label_column(_rare_class)), "--label lab",
        "'rare' (", "fewer than 2 members", "drop or merge rare classes",
    ),
    "too many NaN labels": case(
        _data(_label_column(_nan_labels([f"s{i:02d}" for i in range(4, 12)]))), "--label lab",
        "missing for 48 of 72", "fill it or subset",
    ),
    "continuous label": case(
        _data(), "--label score", "continuous values", "categorical, string, boolean or integer"
    ),
    # values
    "+inf in X": case(_data(_inf(1)), "", "1 infinite values", "replace them"),
    "-inf in X": case(_data(_inf(-1)), "", "1 infinite values", "replace them"),
    "negative values with --normalize always": case(
        _data(_negative), "--normalize always",
        "negative values", "raw counts", "--layer counts", "--normalize never",
    ),
    # time and series
    "time key absent": case(_data(), "--time-key hours", "no column 'hours'", "available columns"),
    "time key not numeric": case(
        _data(), "--time-key name", "not numeric", "give a column of numeric time points"
    ),
    "time key with NaN": case(
        _data(_set_time(lambda a: np.nan)), "", "1 missing time points", "fill or drop"
    ),
    "duplicate time points": case(
        _data(_set_time(lambda a: a.obs["time"].iloc[3])), "",
        "series 's00' has duplicate time points", "average replicates",
    ),
    "no series of length >= 2": case(
        _data(lambda a: a.obs.__setitem__("series", [f"u{i}" for i in range(a.n_obs)])), "",
        "no series with at least 2 time points", "--series-key / --time-key",
    ),
    "series key absent": case(
        _data(), "--series-key donor", "no column 'donor'", "available columns"
    ),
    "var-series label that is in obs": case(
        _data(), "--layout var-series",
        "var has no column 'label'", "it is a column of obs, not var", "check --layout",
    ),
    "obs-series label that is in var": case(
        _data(), "--label var_label",
        "obs has no column 'var_label'", "it is a column of var", "check --layout",
    ),
    # matrices
    "layer absent": case(
        _data(), "--layer spliced", "no layer 'spliced'", "available layers: counts, sparse_layer"
    ),
    "use_rep absent": case(
        _data(), "--use-rep X_umap", "no representation 'X_umap'", "available: X_pca"
    ),
    "use_rep with NaN": case(
        _data(lambda a: a.obsm["X_pca"].__setitem__((2, 1), np.nan)), "--use-rep X_pca",
        "obsm['X_pca'] contains 1 NaN", "recompute the representation",
    ),
    # hyper-parameters and options
    "hidden size 0": case(_data(), "--hidden 0", "hidden layer sizes must be >= 1"),
    "hidden not integers": case(_data(), "--hidden big", "hidden sizes", "like 128,64"),
    "negative dropout": case(_data(), "--dropout -0.1", "dropout must be in [0, 1)", "-0.1"),
    "fractions summing to 1": case(
        _data(), "--val-fraction 0.5 --test-fraction 0.5", "leaves no training data", "sum < 1"
    ),
    "negative learning rate": case(_data(), "--lr -1", "learning rate must be > 0"),
    "--device cuda without CUDA": case(_data(), "--device cuda", "no CUDA GPU", "--device cpu"),
    "split column with a bad value": case(
        _data(lambda a: a.obs.__setitem__("sp", "holdout")), "--split-key sp",
        "'holdout'", "use only train, val and test",
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CLASSIFY_CASES))
def test_classify_bad_input(name, tmp_path):
    build, extra, code, mentions = CLASSIFY_CASES[name]
    if "cuda" in extra and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    source = build(tmp_path)
    expect_failure(
        tmp_path, [source], code, mentions,
        "classify", source, SERIES, "--label label", TRAIN,
        "--output", tmp_path / "out.h5ad", "--model-out", tmp_path / "model.h5",
        "--metrics-table", tmp_path / "metrics.tsv",
        extra,  # later options win over the defaults before them
    )  # fmt: skip


def test_output_paths_are_checked_before_any_work(base, tmp_path):
    rich = copy(base, "rich.h5ad", tmp_path)
    out, model, nodir = tmp_path / "o.h5ad", tmp_path / "m.h5", tmp_path / "nodir"
    cases = {
        "output is the input": (["--output", rich, "--model-out", model],
                                ["is the input file", "write to a new file"]),
        "model-out is the input": (["--output", out, "--model-out", rich],
                                   ["is the input file", "write to a new file"]),
        "same path twice": (["--output", out, "--model-out", out],
                            ["given twice", "distinct file names"]),
        "output directory missing": (["--output", nodir / "o.h5ad", "--model-out", model],
                                     ["nodir", "does not exist", "create it first"]),
        "model directory missing": (["--output", out, "--model-out", nodir / "m.h5"],
                                    ["nodir", "does not exist", "create it first"]),
    }  # fmt: skip
    for what, (paths, mentions) in cases.items():
        message = expect_failure(
            tmp_path, [rich], 2, mentions, "classify", rich, SERIES, "--label label", TRAIN, *paths
        )
        assert message, what
    # click refuses a directory as a file itself (usage error, exit 2)
    result = invoke("classify", rich, SERIES, "--label label", TRAIN, "--output", out,
                    "--model-out", model, "--metrics-table", tmp_path)  # fmt: skip
    assert result.exit_code == 2 and "is a directory" in result.stderr
    assert "Traceback" not in result.output and not out.exists()


def test_output_directory_not_writable(base, tmp_path, monkeypatch):
    """(Tests run as root, who may write anywhere: os.access is told the directory is locked.)"""
    rich = copy(base, "rich.h5ad", tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access

    def access(path, mode, *args, **kwargs):
        if Path(path).resolve() == locked.resolve() and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    expect_failure(
        tmp_path, [rich], 2, ["locked", "is not writable", "choose another output directory"],
        "classify", rich, SERIES, "--label label", TRAIN,
        "--output", locked / "o.h5ad", "--model-out", tmp_path / "m.h5",
    )  # fmt: skip


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_output_directory_read_only_for_real(base, tmp_path):
    rich = copy(base, "rich.h5ad", tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        expect_failure(
            tmp_path, [rich], 2, ["is not writable"],
            "classify", rich, SERIES, "--label label", TRAIN,
            "--output", locked / "o.h5ad", "--model-out", tmp_path / "m.h5",
        )  # fmt: skip
    finally:
        locked.chmod(0o700)


def test_existing_keys_are_refused_unless_overwrite(base, tmp_path):
    classified = copy(base, "classified.h5ad", tmp_path)
    state = hashes(classified)
    out = tmp_path / "o.h5ad"
    command = ["classify", classified, SERIES, "--label label", TRAIN, "--output", out,
               "--model-out", tmp_path / "m.h5"]  # fmt: skip
    expect_failure(
        tmp_path, [classified], 2,
        ["obs['rnn_pred']", "already exist", "choose another key_added (--key-added)",
         "--overwrite"],
        *command,
    )  # fmt: skip
    expect_failure(
        tmp_path, [classified], 2, ["already exist", "--overwrite"],
        "predict", classified, "--model", base / "model.h5", "--output", out, APPLY,
    )  # fmt: skip
    # another key works and keeps the first results
    result = invoke(*command, "--key-added second")
    assert result.exit_code == 0, result.output
    back = ad.read_h5ad(out)
    assert_nothing_lost(back, ad.read_h5ad(classified))
    assert "second_pred" in back.obs and "second" in back.uns
    # --overwrite replaces them
    out.unlink()
    result = invoke(*command, "--overwrite")
    assert result.exit_code == 0, result.output
    assert hashes(classified) == state


def test_nan_labels_are_dropped_with_a_count(tmp_path):
    source = _data(_label_column(_nan_labels(["s00", "s01"])))(tmp_path)
    out = tmp_path / "o.h5ad"
    result = invoke("classify", source, SERIES, "--label lab --hidden 8 --epochs 2 --device cpu",
                    "--output", out, "--model-out", tmp_path / "m.h5")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "dropped 12 entries with a missing label 'lab'" in result.stderr
    notes = list(ad.read_h5ad(out).uns["rnn"]["notes"])
    assert any("dropped 12 entries" in note for note in notes), notes


def test_series_of_length_one_are_skipped_with_a_count(tmp_path):
    def lonely(adata):
        series = adata.obs["series"].astype(str).to_numpy().copy()
        series[[5, 11]] = ["lonely1", "lonely2"]
        adata.obs["series"] = series

    source = _data(lonely)(tmp_path)
    out = tmp_path / "o.h5ad"
    result = invoke("classify", source, SERIES, "--label label --hidden 8 --epochs 2",
                    "--device cpu --output", out, "--model-out", tmp_path / "m.h5")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "skipped 2 series with a single time point" in result.stderr
    back = ad.read_h5ad(out)
    assert any("skipped 2 series" in note for note in back.uns["rnn"]["notes"])
    assert back.obs["rnn_pred"].isna().sum() == 2  # the skipped observations only


def test_click_usage_errors_exit_2_without_traceback(base):
    rich = base / "rich.h5ad"
    for command in (
        ["classify", rich, "--output o.h5ad --model-out m.h5"],  # --label missing
        ["classify", rich, "--label label --output o.h5ad --model-out m.h5 --layout diagonal"],
        ["classify", rich, "--label label --output o.h5ad --model-out m.h5 --epochs 0"],
        ["predict", rich, "--output o.h5ad"],  # --model missing
    ):
        result = invoke(*command)
        assert result.exit_code == 2, (command, result.output)
        assert "Traceback" not in result.output
        assert result.stderr.strip().splitlines()[-1].startswith("Error: ")


def test_debug_shows_the_traceback(tmp_path):
    source = _not_hdf5(tmp_path)
    command = ["classify", source, SERIES, "--label label", TRAIN, "--output",
               tmp_path / "o.h5ad", "--model-out", tmp_path / "m.h5"]  # fmt: skip
    assert "Traceback" not in invoke(*command).stderr
    result = invoke(*command, "--debug")
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and "InputError" in result.stderr


def test_unexpected_errors_are_one_line_exit_1(base, tmp_path, monkeypatch):
    rich = copy(base, "rich.h5ad", tmp_path)

    def broken(*args, **kwargs):
        raise ZeroDivisionError("simulated bug")

    monkeypatch.setattr(ar.tl.classify, "run", broken)
    expect_failure(
        tmp_path, [rich], 1, ["unexpected ZeroDivisionError", "simulated bug", "rerun with --debug"],
        "classify", rich, SERIES, "--label label", TRAIN,
        "--output", tmp_path / "o.h5ad", "--model-out", tmp_path / "m.h5",
    )  # fmt: skip


def test_training_failure_is_a_runtime_error_exit_1(base, tmp_path, monkeypatch):
    """A NaN loss (forced here) stops with exit 1 and the advice to lower the learning rate."""
    rich = copy(base, "rich.h5ad", tmp_path)

    def nan_loss(self, x, y):  # per item with reduction="none" (the start's held-out losses)
        return (x.sum(-1) if self.reduction == "none" else x.sum()) * np.nan

    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", nan_loss)
    expect_failure(
        tmp_path, [rich], 1, ["training loss became nan", "lower the learning rate (--lr)"],
        "classify", rich, SERIES, "--label label", TRAIN,
        "--output", tmp_path / "o.h5ad", "--model-out", tmp_path / "m.h5",
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# bad input to predict / inspect / demo


def _renamed_genes(adata):
    adata.var_names = [f"other{i}" if i % 2 else name for i, name in enumerate(adata.var_names)]


def _model(name):
    return lambda folder, base: copy(base, name, folder)


def _version_99(folder, base):
    path = copy(base, "model.h5", folder)
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = 99
    return path


def _truncated_model(folder, base):
    path = folder / "model.h5"
    path.write_bytes((base / "model.h5").read_bytes()[:8000])
    return path


def _text_model(folder, base):
    path = folder / "model.h5"
    path.write_text('{"task": "classify"}')
    return path


def _h5ad_as_model(folder, base):
    return copy(base, "rich.h5ad", folder).rename(folder / "model.h5")


def _plain_hdf5_model(folder, base):
    path = folder / "model.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("weights", data=np.zeros(3))
    return path


def predict_case(make_model, change, extra, *mentions):
    return make_model, _data(change, "data.h5ad"), extra, mentions


PREDICT_CASES = {
    "model is an h5ad": predict_case(_h5ad_as_model, None, "", "not a model file", "--model-out"),
    "model is not HDF5": predict_case(
        _text_model, None, "", "not an HDF5 file", "give a model file written by anndata-rnn"
    ),
    "model is another HDF5": predict_case(
        _plain_hdf5_model, None, "", "not an anndata-rnn model"
    ),
    "model of format version 99": predict_case(
        _version_99, None, "",
        "format version 99", "reads version 1", "use the anndata-rnn version that wrote it",
    ),
    "truncated model": predict_case(
        _truncated_model, None, "", "truncated", "model file written by anndata-rnn"
    ),
    "obs-series model, data without the series key": predict_case(
        _model("model.h5"), lambda a: a.obs.drop(columns="series", inplace=True), "",
        "obs has no column 'series'", "available columns",
    ),
    "too little gene overlap": predict_case(
        _model("model.h5"), _renamed_genes, "",
        "only 5 of the model's 10 genes", "min_gene_overlap=0.8", "--gene-symbols",
    ),
    "use_rep with another number of columns": predict_case(
        _model("model_rep.h5"),
        lambda a: a.obsm.__setitem__("X_pca", np.zeros((a.n_obs, 5), np.float32)), "",
        "reads 3 columns of obsm['X_pca']", "has 5", "compute the representation the same way",
    ),
    "use_rep absent": predict_case(
        _model("model_rep.h5"), lambda a: a.obsm.pop("X_pca"), "", "no representation 'X_pca'"
    ),
    "+inf in X": predict_case(_model("model.h5"), _inf(1), "", "infinite values", "replace them"),
    "gene symbols column absent": predict_case(
        _model("model.h5"), None, "--gene-symbols hgnc", "no column 'hgnc'", "available"
    ),
    "min gene overlap out of range": predict_case(
        _model("model.h5"), None, "--min-gene-overlap 1.5", "min_gene_overlap", "(0, 1]"
    ),
    "--device cuda without CUDA": predict_case(
        _model("model.h5"), None, "--device cuda", "no CUDA GPU", "--device cpu"
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(PREDICT_CASES))
def test_predict_bad_input(name, base, tmp_path):
    make_model, make_data, extra, mentions = PREDICT_CASES[name]
    if "cuda" in extra and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    model, data = make_model(tmp_path, base), make_data(tmp_path)
    expect_failure(
        tmp_path, [model, data], 2, mentions,
        "predict", data, "--model", model, "--output", tmp_path / "out.h5ad", APPLY, extra,
    )  # fmt: skip


def test_predict_output_paths(base, tmp_path):
    data, model = copy(base, "rich.h5ad", tmp_path), copy(base, "model.h5", tmp_path)
    for output in (data, model):
        expect_failure(
            tmp_path, [data, model], 2, ["is the input file", "write to a new file"],
            "predict", data, "--model", model, "--output", output, APPLY,
        )  # fmt: skip


def test_predict_layout_guard_and_model_path(base):
    model = ar.Model.load(base / "model.h5")
    adata = rich_adata()
    with pytest.raises(ar.InputError, match="trained on layout 'obs-series', not 'var-series'"):
        ar.tl.predict(adata, model, layout="var-series", device="cpu")
    with pytest.raises(ar.ModelFileError, match="does not exist"):
        ar.tl.predict(adata, str(base / "absent.h5"), device="cpu")
    # the refused calls wrote nothing
    assert list(adata.obs.columns) == list(rich_adata().obs.columns)
    assert "rnn" not in adata.uns


def test_var_series_model_on_data_lacking_the_time_key():
    model = ar.tl.classify(
        rich_adata(), label_key="var_label", layout="var-series", series_key="series",
        time_key="time", hidden="8", max_epochs=2, device="cpu", quiet=True,
    )  # fmt: skip
    other = rich_adata()
    del other.obs["time"]
    with pytest.raises(ar.InputError, match="obs has no column 'time'"):
        ar.tl.predict(other, model, device="cpu")


INSPECT_CASES = {
    "not hdf5": (lambda folder, base: _not_hdf5(folder), ["not an HDF5 file"]),
    "truncated h5ad": (lambda folder, base: _truncated(folder), ["truncated"]),
    "absent": (lambda folder, base: folder / "absent.h5ad", ["does not exist"]),
    "model v99": (_version_99, ["format version 99", "use the anndata-rnn version that wrote it"]),
    "truncated model": (_truncated_model, ["truncated"]),
    "other hdf5": (_plain_hdf5_model, ["neither an .h5ad nor an anndata-rnn model"]),
}


@pytest.mark.parametrize("name", list(INSPECT_CASES))
def test_inspect_bad_input(name, base, tmp_path):
    make, mentions = INSPECT_CASES[name]
    path = make(tmp_path, base)
    expect_failure(tmp_path, [path], 2, mentions, "inspect", path)


def test_inspect_leaves_files_untouched(base, tmp_path):
    for name in ("rich.h5ad", "model.h5", "classified.h5ad"):
        path = copy(base, name, tmp_path)
        state = hashes(path)
        result = invoke("inspect", path)
        assert result.exit_code == 0, result.output
        assert hashes(path) == state


@NO_CUDA
def test_demo_device_cuda_without_cuda(tmp_path):
    out = tmp_path / "demo"
    result = invoke("demo --device cuda --quiet --out", out)
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "no CUDA GPU" in result.stderr and "--device cpu" in result.stderr
    assert not out.exists() or listing(out) == []


# ---------------------------------------------------------------------------------------------
# interruptions and a full disk


def _interrupt_on_second_step(monkeypatch) -> dict:
    """Ctrl-C during the second optimisation step of any training loop."""
    real_step = torch.optim.Adam.step
    calls = {"n": 0}

    def step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    return calls


def _fail_dataset_writes(monkeypatch, at: int, error) -> dict:
    """Raise ``error`` at the ``at``-th HDF5 dataset written (model files and h5ad alike)."""
    real = h5py.Group.create_dataset
    calls = {"n": 0}

    def create_dataset(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= at:
            raise error
        return real(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", create_dataset)
    return calls


def _disk_full():
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_ctrl_c_during_training_leaves_nothing(base, tmp_path, monkeypatch):
    rich = copy(base, "rich.h5ad", tmp_path)
    before, state = listing(tmp_path), hashes(rich)
    calls = _interrupt_on_second_step(monkeypatch)
    result = invoke("classify", rich, SERIES, "--label label", TRAIN, "--output",
                    tmp_path / "o.h5ad", "--model-out", tmp_path / "m.h5",
                    "--metrics-table", tmp_path / "t.tsv")  # fmt: skip
    assert calls["n"] == 2
    assert result.exit_code == 130
    assert result.stderr.strip() == "Interrupted: no output was written."
    assert listing(tmp_path) == before and hashes(rich) == state


def test_ctrl_c_while_writing_leaves_nothing(base, tmp_path, monkeypatch):
    """Ctrl-C in the middle of writing the output h5ad, after part of it was written."""
    rich = copy(base, "rich.h5ad", tmp_path)
    before = listing(tmp_path)
    # the model file holds about 10 datasets: the 25th is in the middle of the h5ad
    calls = _fail_dataset_writes(monkeypatch, 25, KeyboardInterrupt())
    for command in (
        ["classify", rich, SERIES, "--label label", TRAIN, "--model-out", tmp_path / "m.h5"],
        ["predict", rich, "--model", base / "model.h5", APPLY],
    ):
        calls["n"] = 0
        result = invoke(*command, "--output", tmp_path / "o.h5ad")
        assert calls["n"] == 25, command[0]
        assert result.exit_code == 130, result.output
        assert listing(tmp_path) == before, command[0]


@pytest.mark.parametrize("at", [3, 25, 60], ids=["in the model", "in the h5ad", "late"])
def test_disk_full_leaves_no_partial_output(at, base, tmp_path, monkeypatch):
    rich = copy(base, "rich.h5ad", tmp_path)
    calls = _fail_dataset_writes(monkeypatch, at, _disk_full())
    expect_failure(
        tmp_path, [rich], 1, ["No space left on device", "free disk space"],
        "classify", rich, SERIES, "--label label", TRAIN, "--output", tmp_path / "o.h5ad",
        "--model-out", tmp_path / "m.h5", "--metrics-table", tmp_path / "t.tsv",
    )  # fmt: skip
    assert calls["n"] >= at
    calls["n"] = 0
    expect_failure(
        tmp_path, [rich], 1, ["No space left on device"],
        "predict", rich, "--model", base / "model.h5", "--output", tmp_path / "o.h5ad", APPLY,
    )  # fmt: skip


def test_disk_full_in_the_metrics_table(base, tmp_path, monkeypatch):
    rich = copy(base, "rich.h5ad", tmp_path)

    def to_csv(self, path, *args, **kwargs):
        Path(path).write_text("metric\trnn\n")  # part of the table is written
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(pd.DataFrame, "to_csv", to_csv)
    expect_failure(
        tmp_path, [rich], 1, ["No space left on device", "free disk space"],
        "classify", rich, SERIES, "--label label", TRAIN, "--output", tmp_path / "o.h5ad",
        "--model-out", tmp_path / "m.h5", "--metrics-table", tmp_path / "t.tsv",
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# the real entry point, in a subprocess


def _entry_point() -> str:
    beside = Path(sys.executable).parent / "anndata-rnn"  # avoids slow version-manager shims
    found = str(beside) if beside.exists() else shutil.which("anndata-rnn")
    if not found:
        pytest.skip("the anndata-rnn entry point is not installed")
    return found


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def test_entry_point_bad_input_is_one_line_exit_2(tmp_path):
    source = _not_hdf5(tmp_path)
    before, state = listing(tmp_path), hashes(source)
    done = subprocess.run(
        [_entry_point(), "classify", str(source), "--label", "label",
         "--output", str(tmp_path / "o.h5ad"), "--model-out", str(tmp_path / "m.h5")],
        capture_output=True, text=True, timeout=120, env=_env(),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    assert "not an HDF5 file" in lines[0] and "give a complete .h5ad" in lines[0]
    assert done.stdout == ""
    assert listing(tmp_path) == before and hashes(source) == state


@pytest.mark.parametrize(
    "sig, code, last_line",
    [
        (signal.SIGINT, 130, "Interrupted: no output was written."),
        (signal.SIGTERM, 143, "Terminated by SIGTERM: no output was written."),
        (signal.SIGHUP, 129, "Terminated by SIGHUP: no output was written."),
    ],
    ids=["SIGINT", "SIGTERM", "SIGHUP"],
)
def test_entry_point_signal_during_training_leaves_nothing(sig, code, last_line, base, tmp_path):
    """Ctrl-C (SIGINT), and SIGTERM / SIGHUP (what Galaxy, batch schedulers and a closed
    terminal send) while the real command trains: exit 128 + signal, no output, no temp file."""
    rich = copy(base, "rich.h5ad", tmp_path)
    before, state = listing(tmp_path), hashes(rich)
    process = subprocess.Popen(
        [_entry_point(), "classify", str(rich), *SERIES.split(), "--label", "label",
         "--output", str(tmp_path / "o.h5ad"), "--model-out", str(tmp_path / "m.h5"),
         "--metrics-table", str(tmp_path / "t.tsv"), "--hidden", "8", "--epochs", "1000000",
         "--patience", "1000000", "--device", "cpu", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(),
    )  # fmt: skip
    seen = b""
    try:
        # the progress bar on stderr (counting optimizer steps) shows that training has started
        deadline = time.monotonic() + 120
        while b"step" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([process.stderr], [], [], 1.0)
            if ready:
                chunk = os.read(process.stderr.fileno(), 4096)
                if not chunk:
                    break
                seen += chunk
        assert b"step" in seen, seen.decode(errors="replace")
        time.sleep(0.3)
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == code, (seen + stderr).decode(errors="replace")
    assert stderr.decode().strip().splitlines()[-1].endswith(last_line)
    assert b"Traceback" not in stderr
    assert listing(tmp_path) == before and hashes(rich) == state


# ---------------------------------------------------------------------------------------------
# nothing lost


def _keys(adata: ad.AnnData, attr: str) -> set[str]:
    if attr in ("obs", "var"):
        return set(getattr(adata, attr).columns)
    return set(getattr(adata, attr).keys())


def assert_new_keys_use_the_prefix(out: ad.AnnData, inp: ad.AnnData, key: str) -> None:
    for attr in ("obs", "var", "obsm", "varm", "layers", "uns", "obsp", "varp"):
        for name in _keys(out, attr) - _keys(inp, attr):
            assert name == key or name.startswith((f"{key}_", f"X_{key}")), f"{attr}[{name!r}]"


LAYOUT_ARGS = {
    "obs-series sparse X": (f"{SERIES} --label label", True),
    "obs-series dense X": (f"{SERIES} --label label", False),
    "obs-series per-step labels": (f"{SERIES} --label batch_nan", True),
    "obs-series layer": (f"{SERIES} --label label --layer sparse_layer", False),
    "var-series": (f"--layout var-series {SERIES} --label var_label", True),
    "profile": ("--layout profile --chunk-size 3 --label label", True),
}


@pytest.mark.parametrize("name", list(LAYOUT_ARGS))
def test_classify_and_predict_lose_nothing(name, tmp_path):
    args, sparse = LAYOUT_ARGS[name]
    source = h5ad(tmp_path, rich_adata(sparse=sparse))
    inp = ad.read_h5ad(source)
    out, model, predicted = tmp_path / "out.h5ad", tmp_path / "model.h5", tmp_path / "p.h5ad"
    state = hashes(source)
    result = invoke("classify", source, args, TRAIN, "--output", out, "--model-out", model)
    assert result.exit_code == 0, result.output
    assert hashes(source) == state
    back = ad.read_h5ad(out)
    assert_nothing_lost(back, inp)
    assert_new_keys_use_the_prefix(back, inp, "rnn")

    state = hashes(source, model)
    result = invoke("predict", source, "--model", model, "--output", predicted, APPLY,
                    "--key-added again")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert hashes(source, model) == state
    again = ad.read_h5ad(predicted)
    assert_nothing_lost(again, inp)
    assert_new_keys_use_the_prefix(again, inp, "again")
    # the saved model reproduces the training run's outputs exactly
    rows, mats = ("var", "varm") if name == "var-series" else ("obs", "obsm")
    for new, old in (("again_proba", "rnn_proba"), ("X_again", "X_rnn")):
        np.testing.assert_array_equal(getattr(again, mats)[new], getattr(back, mats)[old])
    pd.testing.assert_series_equal(
        getattr(again, rows)["again_pred"], getattr(back, rows)["rnn_pred"], check_names=False
    )
    # predicting into the classified file keeps the training results too
    result = invoke("predict", out, "--model", model, "--output", tmp_path / "p2.h5ad", APPLY,
                    "--key-added again")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert_nothing_lost(ad.read_h5ad(tmp_path / "p2.h5ad"), back)


def test_demo_loses_nothing_and_leaves_the_bundled_data_alone(tmp_path):
    from anndata_rnn.datasets import path as dataset_path

    bundled = dataset_path("spellman1998")
    state = hashes(bundled)
    out = tmp_path / "demo"
    result = invoke("demo --epochs 1 --quiet --device cpu --out", out)
    assert result.exit_code == 0, result.output
    assert hashes(bundled) == state
    inp = ad.read_h5ad(bundled)
    back = ad.read_h5ad(out / "spellman_cdc15_classified.h5ad")
    assert_nothing_lost(back, inp)
    assert_new_keys_use_the_prefix(back, inp, "rnn")
    assert not [p for p in listing(out) if p.startswith(".")], listing(out)
    assert ar.Model.load(out / "model.h5").layout == "var-series"
    uns = back.uns["rnn"]
    assert uns["seed"] == 0 and uns["device"] == "cpu" and "torch" in uns["versions"]


def test_ctrl_c_in_demo_leaves_no_file(tmp_path, monkeypatch):
    out = tmp_path / "demo"
    _interrupt_on_second_step(monkeypatch)
    result = invoke("demo --epochs 1 --quiet --device cpu --out", out)
    assert result.exit_code == 130
    assert not out.exists() or listing(out) == []


# ---------------------------------------------------------------------------------------------
# reproducible runs and recorded provenance


def assert_same_model(a: Path, b: Path) -> None:
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert dict(fa.attrs) == dict(fb.attrs)
        names = []
        fa.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        for name in names:
            assert fa[name].dtype == fb[name].dtype
            np.testing.assert_array_equal(fa[name][()], fb[name][()], err_msg=name)


def assert_same_output(a: Path, b: Path) -> None:
    """Bitwise the same elements (each file holds everything the other holds, unchanged), but
    the wall seconds per phase (``uns[key]["timings"]``), which no two runs share."""
    first, second = ad.read_h5ad(a), ad.read_h5ad(b)
    for adata in (first, second):
        for record in adata.uns.values():
            if isinstance(record, dict):
                assert set(record.pop("timings", {})) <= {
                    "reading", "preprocessing", "baselines", "training", "inference",
                    "attribution", "writing", "other", "total",
                }  # fmt: skip
    assert_nothing_lost(first, second)
    assert_nothing_lost(second, first)


def _three_runs(folder: Path, command: list) -> list[tuple[Path, Path, Path]]:
    """Seeds 0, 0 and 1: (output, model, metrics table) of each run."""
    runs = []
    for run, seed in (("a", 0), ("b", 0), ("c", 1)):
        paths = (folder / f"{run}.h5ad", folder / f"{run}.h5", folder / f"{run}.tsv")
        result = invoke(*command, "--output", paths[0], "--model-out", paths[1],
                        "--metrics-table", paths[2], TRAIN, f"--seed {seed}")  # fmt: skip
        assert result.exit_code == 0, result.output
        runs.append(paths)
    return runs


def _assert_reproducible(runs) -> None:
    (out_a, model_a, table_a), (out_b, model_b, table_b), (_, model_c, _) = runs
    assert_same_output(out_a, out_b)
    assert_same_model(model_a, model_b)
    assert table_a.read_bytes() == table_b.read_bytes()
    with pytest.raises(AssertionError):  # another seed, another network: not a vacuous check
        assert_same_model(model_a, model_c)


@pytest.mark.parametrize("name", ["obs-series sparse X", "var-series", "profile"])
def test_same_seed_gives_bitwise_identical_classify_and_predict(name, tmp_path):
    args, sparse = LAYOUT_ARGS[name]
    source = h5ad(tmp_path, rich_adata(sparse=sparse))
    runs = _three_runs(tmp_path, ["classify", source, args])
    _assert_reproducible(runs)
    for run in ("p1", "p2"):
        result = invoke("predict", source, "--model", runs[0][1], "--output",
                        tmp_path / f"{run}.h5ad", APPLY)  # fmt: skip
        assert result.exit_code == 0, result.output
    assert_same_output(tmp_path / "p1.h5ad", tmp_path / "p2.h5ad")


def _plain(value):
    if isinstance(value, bool | np.bool_):
        return int(value)
    if isinstance(value, tuple | list | np.ndarray):
        return [_plain(v) for v in np.asarray(value).tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def check_recorded_parameters(function, kwargs: dict, params: dict, skip=()) -> None:
    """Every parameter of ``function`` is recorded with the value it was given.

    A parameter left at None may be absent or recorded with the value it resolved to.
    """
    not_recorded = {"adata", "seed", "device", "overwrite", "quiet", "copy", *skip}
    missing, wrong = [], []
    for name, parameter in inspect.signature(function).parameters.items():
        if name in not_recorded:
            continue
        value = kwargs.get(name, parameter.default)
        if name not in params:
            if value is not None:
                missing.append(name)
        elif value is not None:
            if name == "hidden" and isinstance(value, str):  # "8,4" is recorded as [8, 4]
                value = [int(h) for h in value.split(",")]
            if _plain(params[name]) != _plain(value):
                wrong.append((name, value, params[name]))
    assert not missing, f"parameters not recorded in uns: {missing}"
    assert not wrong, f"parameters recorded with another value: {wrong}"


def check_provenance(uns: dict, seed: int) -> None:
    assert uns["seed"] == seed
    assert uns["device"] == "cpu"
    versions = uns["versions"]
    for package in ("anndata-rnn", "torch", "anndata", "numpy", "scanpy", "python"):
        assert versions.get(package) not in (None, "", "unknown"), package
    assert versions["torch"] == torch.__version__


def test_outputs_record_versions_seed_device_and_every_parameter(tmp_path):
    adata = rich_adata()
    kwargs = dict(
        label_key="label", layout="obs-series", series_key="series", time_key="time",
        layer="counts", normalize="always", n_top_genes=6, scale="sequence", hidden=(8, 4),
        cell="gru", bidirectional=True, dropout=0.1, max_epochs=2, batch_size=4, lr=0.01,
        patience=3, class_weights=True, val_fraction=0.2, test_fraction=0.2, seed=7,
        device="cpu", key_added="res", quiet=True,
    )  # fmt: skip
    model = ar.tl.classify(adata, **kwargs)
    check_provenance(adata.uns["res"], 7)
    check_recorded_parameters(ar.tl.classify, kwargs, adata.uns["res"]["params"])
    # the model file records them too
    path = tmp_path / "model.h5"
    model.save(path)
    config = ar.Model.load(path).config
    assert config["seed"] == 7 and config["device"] == "cpu"
    assert config["versions"]["torch"] == torch.__version__
    assert {k: config["architecture"][k] for k in ("hidden", "cell", "dropout", "bidirectional")} == {
        "hidden": [8, 4], "cell": "gru", "dropout": 0.1, "bidirectional": True,
    }  # fmt: skip
    assert config["train"]["lr"] == 0.01 and config["train"]["batch_size"] == 4
    # ... and they survive the round trip through the h5ad
    adata.write_h5ad(tmp_path / "out.h5ad")
    back = ad.read_h5ad(tmp_path / "out.h5ad").uns["res"]
    check_provenance(back, 7)
    check_recorded_parameters(ar.tl.classify, kwargs, back["params"])

    # predict records its own seed, device, versions and parameters
    other = rich_adata()
    ar.tl.predict(other, model, key_added="pred", min_gene_overlap=0.9, batch_size=16, seed=3,
                  device="cpu")  # fmt: skip
    uns = other.uns["pred"]
    check_provenance(uns, 3)
    assert uns["params"]["label_key"] == "label"  # the model's keys
    assert dict(uns["predict_params"]) == {"key_added": "pred", "min_gene_overlap": 0.9,
                                           "batch_size": 16, "chunk_rows": 8192,
                                           "amp": False}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# the contract every command shares, and the other tasks (forecast, embed, explain)

COMMANDS = ["classify", "forecast", "embed", "predict", "explain"]


def _command(name: str) -> None:
    if name not in main.commands:
        pytest.skip(f"the {name} command does not exist yet")


def _quick_args(name: str, base: Path, folder: Path) -> list:
    """Options (besides INPUT and --output) for a quick run of each command."""
    model_out = ["--model-out", folder / "model_out.h5"]
    return {
        "classify": [SERIES, "--label label", TRAIN, *model_out],
        "forecast": [SERIES, TRAIN, *model_out],
        "embed": [SERIES, TRAIN, *model_out],
        "predict": ["--model", base / "model.h5", APPLY],
        "explain": ["--model", base / "model.h5", APPLY, "--n-steps 4"],
    }[name]


CONTRACT_CASES = {
    "input not HDF5": (
        lambda folder, base: (_not_hdf5(folder), folder / "out.h5ad"),
        ["not an HDF5 file", "give a complete .h5ad"],
    ),
    "output is the input": (
        lambda folder, base: 2 * (copy(base, "rich.h5ad", folder),),
        ["is the input file", "write to a new file"],
    ),
    "output directory missing": (
        lambda folder, base: (copy(base, "rich.h5ad", folder), folder / "nodir" / "out.h5ad"),
        ["does not exist", "create it first"],
    ),
    "existing keys": (
        lambda folder, base: (copy(base, "classified.h5ad", folder), folder / "out.h5ad"),
        ["already exist", "--key-added", "--overwrite"],
    ),
    "--device cuda without CUDA": (
        lambda folder, base: (copy(base, "rich.h5ad", folder), folder / "out.h5ad"),
        ["no CUDA GPU", "--device cpu"],
    ),
}


@pytest.mark.parametrize("case_name", list(CONTRACT_CASES))
@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_refuses_bad_input_cleanly(name, case_name, base, tmp_path):
    _command(name)
    make, mentions = CONTRACT_CASES[case_name]
    extra = ""
    if "cuda" in case_name:
        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
        extra = "--device cuda"
    source, output = make(tmp_path, base)
    if name == "explain" and case_name == "existing keys":
        # explain extends the uns entry of the model it explains; its own keys are protected
        explained = tmp_path / "explained.h5ad"
        result = invoke(name, source, "--output", explained, *_quick_args(name, base, tmp_path))
        assert result.exit_code == 0, result.output
        source.unlink()
        source = explained
    expect_failure(
        tmp_path, [source], 2, mentions,
        name, source, "--output", output, *_quick_args(name, base, tmp_path), extra,
    )  # fmt: skip


@pytest.mark.parametrize("name", ["classify", "forecast", "embed"])
def test_every_training_command_survives_ctrl_c_and_a_full_disk(name, base, tmp_path, monkeypatch):
    _command(name)
    rich = copy(base, "rich.h5ad", tmp_path)
    before, state = listing(tmp_path), hashes(rich)
    command = [name, rich, "--output", tmp_path / "out.h5ad", *_quick_args(name, base, tmp_path)]
    with monkeypatch.context() as patch:
        calls = _interrupt_on_second_step(patch)
        result = invoke(*command)
    assert calls["n"] == 2, result.output
    assert result.exit_code == 130, result.output
    assert listing(tmp_path) == before and hashes(rich) == state
    with monkeypatch.context() as patch:
        calls = _fail_dataset_writes(patch, 25, _disk_full())
        expect_failure(
            tmp_path, [rich], 1, ["No space left on device", "free disk space"], *command
        )
    assert calls["n"] >= 25


OTHER_TRAINING = {
    "forecast": SERIES,
    "embed": f"{SERIES} --cluster kmeans --n-clusters 2 --eval-label label",
}


@pytest.mark.parametrize("name", list(OTHER_TRAINING))
def test_other_training_commands_lose_nothing_and_are_reproducible(name, tmp_path):
    _command(name)
    source = h5ad(tmp_path, rich_adata())
    state = hashes(source)
    inp = ad.read_h5ad(source)
    runs = _three_runs(tmp_path, [name, source, OTHER_TRAINING[name]])
    assert hashes(source) == state
    back = ad.read_h5ad(runs[0][0])
    assert_nothing_lost(back, inp)
    assert_new_keys_use_the_prefix(back, inp, "rnn")
    check_provenance(back.uns["rnn"], 0)
    _assert_reproducible(runs)
    # applying the saved model loses nothing, leaves the files alone and is reproducible
    model = runs[0][1]
    state = hashes(source, model)
    for run in ("p1", "p2"):
        result = invoke("predict", source, "--model", model, "--output", tmp_path / f"{run}.h5ad",
                        "--key-added again", APPLY)  # fmt: skip
        assert result.exit_code == 0, result.output
    assert hashes(source, model) == state
    applied = ad.read_h5ad(tmp_path / "p1.h5ad")
    assert_nothing_lost(applied, inp)
    assert_new_keys_use_the_prefix(applied, inp, "again")
    check_provenance(applied.uns["again"], 0)
    assert_same_output(tmp_path / "p1.h5ad", tmp_path / "p2.h5ad")


@pytest.mark.parametrize("name", ["forecast", "embed"])
def test_other_training_tasks_record_every_parameter(name):
    _command(name)
    function = getattr(ar.tl, name)
    kwargs = dict(series_key="series", time_key="time", hidden="8", max_epochs=2, seed=5,
                  device="cpu", quiet=True, key_added="res")  # fmt: skip
    adata = rich_adata()
    function(adata, **kwargs)
    check_provenance(adata.uns["res"], 5)
    check_recorded_parameters(function, kwargs, adata.uns["res"]["params"])


def test_explain_loses_nothing_and_is_reproducible(base, tmp_path):
    _command("explain")
    source, model = copy(base, "rich.h5ad", tmp_path), copy(base, "model.h5", tmp_path)
    state = hashes(source, model)
    inp = ad.read_h5ad(source)
    for run in ("a", "b"):
        result = invoke("explain", source, "--model", model, "--output", tmp_path / f"{run}.h5ad",
                        "--table", tmp_path / f"{run}.tsv", "--n-steps 8 --key-added expl",
                        APPLY)  # fmt: skip
        assert result.exit_code == 0, result.output
    assert hashes(source, model) == state
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    assert_nothing_lost(back, inp)
    assert_new_keys_use_the_prefix(back, inp, "expl")
    assert_same_output(tmp_path / "a.h5ad", tmp_path / "b.h5ad")
    assert (tmp_path / "a.tsv").read_bytes() == (tmp_path / "b.tsv").read_bytes()
    uns = back.uns["expl"]
    check_provenance(uns if "seed" in uns else uns["explain"], 0)
    # explaining the classifier's own output extends its results and loses nothing
    classified = copy(base, "classified.h5ad", tmp_path)
    result = invoke("explain", classified, "--model", model, "--output", tmp_path / "c.h5ad",
                    "--n-steps 4", APPLY)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert_nothing_lost(ad.read_h5ad(tmp_path / "c.h5ad"), ad.read_h5ad(classified))


def test_explain_records_every_parameter(base):
    _command("explain")
    kwargs = dict(n_steps=4, seed=2, device="cpu", quiet=True, key_added="expl",
                  max_per_class=5, min_gene_overlap=0.9, batch_size=8)  # fmt: skip
    adata = rich_adata()
    ar.tl.explain(adata, ar.Model.load(base / "model.h5"), **kwargs)
    uns = adata.uns["expl"]
    recorded = uns["explain"]["params"]
    check_recorded_parameters(ar.tl.explain, kwargs, recorded, skip=("model",))

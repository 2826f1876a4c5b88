"""Inputs that are refused with one clear line, and edge cases that are accepted on purpose.

Refused (exit 2, one ``Error:`` line naming the problem and the fix, no output or temporary file,
input bytes unchanged): duplicated gene names at training and at prediction, repeated obs names
inside a series, values beyond float32's range, inf in a layer, an embed model given to explain,
a split column that leaves a class out of training, cross-validation beside a split column, a
non-boolean gene subset, more k-means clusters than units.

Accepted with a correct result: a gene without any value (filled, with one warning line), NaN in a
sparse X (imputed), a profile chunk size larger than the number of genes (one step), more top
genes asked than there are (all genes), labels missing for a whole series (that series is left
out of training, still predicted).
"""

from __future__ import annotations

import warnings

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from fixtures_rich import rich_adata
from test_reliability import (
    APPLY,
    SERIES,
    TRAIN,
    expect_failure,
    h5ad,
    invoke,
    variant,
)

import anndata_rnn as ar
from anndata_rnn.errors import InputError

TRAINING = ["--output", "out.h5ad", "--model-out", "model.h5"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A classifier and an embedding model trained on the plain fixture."""
    folder = tmp_path_factory.mktemp("refusal_models")
    rich = h5ad(folder, rich_adata(), "rich.h5ad")
    for command, extra in (("classify", "--label label"), ("embed", "")):
        result = invoke(command, rich, SERIES, extra, TRAIN, "--output", folder / f"{command}.h5ad",
                        "--model-out", folder / f"{command}.h5")  # fmt: skip
        assert result.exit_code == 0, result.output
    return folder


def _train(folder, source, *extra, command="classify", label="--label label"):
    return (command, source, SERIES, label if command == "classify" else "", TRAIN,
            "--output", folder / "out.h5ad", "--model-out", folder / "model.h5", *extra)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# duplicated names


def _duplicate_gene(adata):
    names = list(adata.var_names)
    names[7] = names[2]
    adata.var_names = names


def _duplicate_symbol(adata):
    symbols = list(adata.var_names)
    symbols[7] = symbols[2]
    adata.var["symbol"] = symbols


def _repeat_obs_name(adata):
    names = list(adata.obs_names)
    names[3] = names[1]  # two time points of series s00 share a name
    adata.obs_names = names


@pytest.mark.parametrize("command", ["classify", "forecast", "embed"])
def test_duplicated_var_names_are_refused_at_training(command, tmp_path):
    source = h5ad(tmp_path, variant(_duplicate_gene))
    expect_failure(
        tmp_path, [source], 2,
        ["var_names has duplicated gene names", "'gene02' (2×)", "adata.var_names_make_unique()"],
        *_train(tmp_path, source, command=command),
    )  # fmt: skip


def test_duplicated_gene_symbols_are_refused_at_prediction(models, tmp_path):
    source = h5ad(tmp_path, variant(_duplicate_symbol))
    model = models / "classify.h5"
    expect_failure(
        tmp_path, [source, model], 2,
        ["duplicated names for genes the model uses", "'gene02' (2×)", "--gene-symbols"],
        "predict", source, "--model", model, "--output", tmp_path / "out.h5ad", APPLY,
        "--gene-symbols symbol",
    )  # fmt: skip


def test_duplicated_var_names_are_refused_at_prediction(models, tmp_path):
    """Two columns named like one model gene: which one to use would be a guess."""
    source = h5ad(tmp_path, variant(_duplicate_gene))
    model = models / "classify.h5"
    expect_failure(
        tmp_path, [source, model], 2,
        ["duplicated names for genes the model uses", "'gene02' (2×)", "ambiguous",
         "var_names_make_unique()"],
        "predict", source, "--model", model, "--output", tmp_path / "out.h5ad", APPLY,
    )  # fmt: skip
    expect_failure(
        tmp_path, [source, model], 2, ["duplicated names for genes the model uses"],
        "explain", source, "--model", model, "--output", tmp_path / "out.h5ad", APPLY,
        "--n-steps 4",
    )  # fmt: skip


def test_duplicates_among_genes_the_model_does_not_use_are_fine(models, tmp_path):
    def change(adata):
        adata.var_names = [*adata.var_names[:-2], "extra", "extra"]

    source = h5ad(tmp_path, variant(change))
    result = invoke("predict", source, "--model", models / "classify.h5",
                    "--output", tmp_path / "out.h5ad", APPLY)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "2 of the model's 10 genes are missing" in result.stderr


@pytest.mark.parametrize("layout", ["obs-series", "var-series"])
def test_repeated_obs_names_in_a_series_are_refused(layout, tmp_path):
    source = h5ad(tmp_path, variant(_repeat_obs_name))
    label = "--label label" if layout == "obs-series" else "--label var_label"
    expect_failure(
        tmp_path, [source], 2,
        ["obs name 'cell001' appears 2 times in series 's00'", "adata.obs_names_make_unique()"],
        *_train(tmp_path, source, f"--layout {layout}", label=label),
    )  # fmt: skip


def test_the_same_obs_name_in_two_series_is_fine(tmp_path):
    def change(adata):
        names = list(adata.obs_names)
        names[7] = names[1]  # cell001 in s00 and in s01
        adata.obs_names = names

    source = h5ad(tmp_path, variant(change))
    result = invoke(*_train(tmp_path, source))
    assert result.exit_code == 0, result.output


# ---------------------------------------------------------------------------------------------
# values


def _beyond_float32(adata):
    x = adata.X.toarray().astype(np.float64)
    x[2, 3] = 1e39
    x[5, 1] = -2e40
    adata.X = x


def test_values_beyond_float32_are_named_as_such(tmp_path):
    source = h5ad(tmp_path, variant(_beyond_float32))
    message = expect_failure(
        tmp_path, [source], 2,
        ["X has 2 values beyond float32's range", "largest 2e+40", "rescale"],
        *_train(tmp_path, source),
    )  # fmt: skip
    assert "infinite" not in message


def test_values_beyond_float32_raise_no_numpy_warning():
    """The Python API gives the same error and numpy prints nothing on the way."""
    adata = variant(_beyond_float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning (e.g. numpy's overflow) fails the test
        with pytest.raises(InputError, match="beyond float32's range"):
            ar.tl.classify(adata, label_key="label", series_key="series", time_key="time",
                           hidden="8", max_epochs=1, device="cpu", quiet=True)  # fmt: skip


def test_inf_in_a_layer_is_refused(tmp_path):
    def change(adata):
        adata.layers["counts"][4, 2] = np.inf

    source = h5ad(tmp_path, variant(change))
    expect_failure(
        tmp_path, [source], 2, ["layers['counts'] contains 1 infinite values", "replace them"],
        *_train(tmp_path, source, "--layer counts"),
    )  # fmt: skip


def test_a_gene_without_any_value_is_accepted_with_one_warning(tmp_path):
    def change(adata):
        x = adata.X.toarray()
        x[:, 2] = np.nan
        adata.X = x

    source = h5ad(tmp_path, variant(change))
    result = invoke(*_train(tmp_path, source))
    assert result.exit_code == 0, result.output
    assert result.stderr.strip().splitlines() == [
        "1 genes have no value in the training rows (e.g. gene02): they are filled with 0 and "
        "carry no information"
    ]
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    assert out.obs["rnn_conf"].notna().all()
    with h5py.File(tmp_path / "model.h5", "r") as f:
        assert np.isfinite(f["preprocessing/mean"][()]).all()
        assert f["preprocessing/mean"][2] == 0 and f["preprocessing/std"][2] == 1


def test_nan_in_a_sparse_x_is_imputed(tmp_path):
    def change(adata):
        x = adata.X.tolil()
        x[3, 2] = np.nan
        x[40, 5] = np.nan
        adata.X = x.tocsr()

    adata = variant(change)
    assert sp.issparse(adata.X) and np.isnan(adata.X.data).sum() == 2
    source = h5ad(tmp_path, adata)
    result = invoke(*_train(tmp_path, source))
    assert result.exit_code == 0, result.output
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    assert out.obs["rnn_conf"].notna().all()
    assert np.isfinite(out.obsm["X_rnn"]).all()


# ---------------------------------------------------------------------------------------------
# options and models


def test_chunk_size_larger_than_the_genes_is_one_step(tmp_path):
    source = h5ad(tmp_path, rich_adata())
    result = invoke("classify", source, "--layout profile --chunk-size 50 --label label", TRAIN,
                    "--output", tmp_path / "out.h5ad", "--model-out", tmp_path / "model.h5")  # fmt: skip
    assert result.exit_code == 0, result.output
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    assert out.uns["rnn"]["params"]["chunk_size"] == 50
    assert out.obs["rnn_conf"].notna().all()
    model = ar.Model.load(tmp_path / "model.h5")
    # one step of 50 inputs (10 genes, zero padded): the network reads chunk_size features
    assert model.config["n_inputs"] == 50


def test_more_top_genes_than_genes_keeps_all_genes(tmp_path):
    source = h5ad(tmp_path, rich_adata())
    result = invoke(*_train(tmp_path, source, "--n-top-genes 50"))
    assert result.exit_code == 0, result.output
    model = ar.Model.load(tmp_path / "model.h5")
    assert list(model.features) == list(rich_adata().var_names)


def test_an_embed_model_given_to_explain_is_refused(models, tmp_path):
    source = h5ad(tmp_path, rich_adata())
    model = models / "embed.h5"
    expect_failure(
        tmp_path, [source, model], 2, ["explain works on classifiers and forecasters", "'embed'"],
        "explain", source, "--model", model, "--output", tmp_path / "out.h5ad", APPLY,
        "--n-steps 4",
    )  # fmt: skip


def test_a_split_column_leaving_a_class_out_of_training_is_refused(tmp_path):
    def change(adata):
        split = np.where(adata.obs["label"] == "up", "test", "train").astype(object)
        split[adata.obs["series"].isin(["s01", "s03"])] = "val"
        adata.obs["sp"] = split

    source = h5ad(tmp_path, variant(change))
    expect_failure(
        tmp_path, [source], 2,
        ["'up' (0)", "fewer than 2 members in the training split", "drop or merge rare classes"],
        *_train(tmp_path, source, "--split-key sp"),
    )  # fmt: skip


def test_cross_validation_with_a_split_column_is_refused(tmp_path):
    def change(adata):
        adata.obs["sp"] = np.where(adata.obs["series"] == "s00", "test", "train").astype(object)

    source = h5ad(tmp_path, variant(change))
    expect_failure(
        tmp_path, [source], 2, ["a split column (split_key) fixes the split", "not both"],
        *_train(tmp_path, source, "--split-key sp --cv 3"),
    )  # fmt: skip


def test_a_non_boolean_gene_subset_is_refused(tmp_path):
    source = h5ad(tmp_path, rich_adata())
    expect_failure(
        tmp_path, [source], 2, ["var['symbol'] must be boolean"],
        *_train(tmp_path, source, "--gene-subset symbol"),
    )  # fmt: skip


def test_more_clusters_than_units_is_refused(tmp_path):
    source = h5ad(tmp_path, rich_adata())
    expect_failure(
        tmp_path, [source], 2, ["n_clusters must be in 1..12", "got 50"],
        *_train(tmp_path, source, "--cluster kmeans --n-clusters 50", command="embed"),
    )  # fmt: skip


def test_labels_missing_for_a_whole_series_leave_it_out_of_training(tmp_path):
    def change(adata):
        label = adata.obs["label"].astype(object).to_numpy().copy()
        label[adata.obs["series"] == "s00"] = None
        adata.obs["lab"] = pd.Categorical(label)

    source = h5ad(tmp_path, variant(change))
    result = invoke(*_train(tmp_path, source, label="--label lab"), "--quiet")
    assert result.exit_code == 0, result.output
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    assert "s00" not in set(out.obs.loc[out.obs["rnn_split"] == "train", "series"])
    assert out.obs.loc[out.obs["series"] == "s00", "rnn_pred"].notna().all()
    assert set(out.obs["rnn_pred"].dropna()) <= {"up", "down"}

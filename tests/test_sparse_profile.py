"""Profiles of a sparse matrix are encoded from its stored values only (issue 21), bit for bit
what the dense path gives: normalized counts, log-transformed levels, values used as they are,
genes missing from the new data or in another order, sequences that are a subset of the rows,
and the inputs the sparse path hands back to the dense one (non-integer counts)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from anndata_rnn import tl
from anndata_rnn.features import FeatureSource
from anndata_rnn.preprocessing import encode, sparse_profile_values
from anndata_rnn.runs import open_model


def profile_counts(n_cells=120, n_genes=50, seed=0, kind="counts") -> ad.AnnData:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n_cells)
    rates = rng.gamma(1.0, 3.0, (n_cells, n_genes)) * (1 + y[:, None] * (np.arange(n_genes) < 8))
    values = rng.poisson(rates) * (rng.random((n_cells, n_genes)) < 0.35)
    values = values.astype(np.float32)
    if kind == "levels":  # heavy-tailed non-integers: the model log-transforms them
        values = (values * rng.lognormal(2.0, 1.5, values.shape)).astype(np.float32)
    elif kind == "scaled":  # small non-integers: used as they are
        values = (values / 7).astype(np.float32)
    values[:, 0] = np.where(np.arange(n_cells) % 5 == 0, 0, values[:, 0])  # some empty entries
    values[3] = 0  # a cell without counts
    adata = ad.AnnData(sp.csr_matrix(values))
    adata.obs_names = [f"c{i}" for i in range(n_cells)]
    adata.var_names = [f"g{i}" for i in range(n_genes)]
    adata.obs["y"] = pd.Categorical(np.array(["a", "b"])[y])
    return adata


def trained(kind: str):
    adata = profile_counts(kind=kind)
    model = tl.classify(
        adata, label_key="y", layout="profile", chunk_size=8, hidden=(8,), max_epochs=1, quiet=True
    )
    return model


@pytest.fixture(scope="module", params=["counts", "levels", "scaled"])
def model_of(request):
    model = trained(request.param)
    prep = model.preprocessor
    expected = {"counts": (True, False), "levels": (False, True), "scaled": (False, False)}
    assert (prep.normalize, prep.log1p) == expected[request.param]
    return request.param, model


def encoded_both_ways(adata, model):
    """(sparse path, dense path) encodings of every sequence of ``adata``."""
    opened = open_model(
        adata, model, copy=True, seed=0, device="cpu", gene_symbols=None, min_gene_overlap=0.5
    )
    index, prep = opened.index, model.preprocessor
    sparse_source = FeatureSource(adata)
    dense = adata.copy()
    dense.X = adata.X.toarray()
    dense_source = FeatureSource(dense)
    assert sparse_source.read_sparse_rows(np.arange(3)) is not None
    assert dense_source.read_sparse_rows(np.arange(3)) is None
    return encode(index, sparse_source, prep, chunk=17), encode(index, dense_source, prep, chunk=17)


def assert_same(a, b):
    assert a.values.dtype == b.values.dtype == np.float32
    assert np.array_equal(a.values.view(np.int32), b.values.view(np.int32))  # bit for bit
    assert np.array_equal(a.observed, b.observed)
    assert np.array_equal(a.n_missing, b.n_missing)
    assert np.array_equal(a.lengths, b.lengths)


def test_same_bits_as_the_dense_path(model_of):
    kind, model = model_of
    new = profile_counts(n_cells=90, seed=1, kind=kind)
    assert_same(*encoded_both_ways(new, model))


def test_missing_and_reordered_genes(model_of):
    kind, model = model_of
    new = profile_counts(n_cells=60, seed=2, kind=kind)
    rng = np.random.default_rng(0)
    keep = rng.permutation(new.n_vars)[: new.n_vars - 6]  # 6 genes missing, the rest shuffled
    new = new[:, keep].copy()
    new.X = sp.csr_matrix(new.X)
    extra = ad.AnnData(sp.csr_matrix(np.ones((new.n_obs, 2), dtype=np.float32)))
    extra.var_names, extra.obs_names = ["other1", "other2"], new.obs_names
    new = ad.concat([new, extra], axis=1, merge="first")  # genes the model does not know
    new.X = sp.csr_matrix(new.X)
    assert_same(*encoded_both_ways(new, model))


def test_a_subset_of_the_rows(model_of):
    """Sequences that are some of the rows, not in file order (each reads its own row)."""
    kind, model = model_of
    new = profile_counts(n_cells=50, seed=3, kind=kind)
    opened = open_model(
        new, model, copy=True, seed=0, device="cpu", gene_symbols=None, min_gene_overlap=0.5
    )
    ids = np.array([40, 2, 17, 3, 9])
    dense = new.copy()
    dense.X = new.X.toarray()
    a = encode(opened.index, FeatureSource(new), model.preprocessor, ids)
    b = encode(opened.index, FeatureSource(dense), model.preprocessor, ids)
    assert_same(a, b)


def test_non_integer_counts_go_through_the_dense_path():
    """A counts model given non-integer values: the sparse path declines (its totals would not
    be exact), the dense path encodes them, with the same result from either source."""
    model = trained("counts")
    new = profile_counts(n_cells=40, seed=4)
    new.X = sp.csr_matrix(new.X.toarray() * 1.5)  # halves appear
    opened = open_model(
        new, model, copy=True, seed=0, device="cpu", gene_symbols=None, min_gene_overlap=0.5
    )
    rows = np.arange(new.n_obs)
    block = FeatureSource(new).read_sparse_rows(rows)
    assert not np.array_equal(block.data, np.floor(block.data))
    values = sparse_profile_values(
        opened.index, rows, rows, block, model.preprocessor, np.asarray(new.var_names)
    )
    assert values is None
    assert_same(*encoded_both_ways(new, model))


def test_negative_counts_are_still_refused():
    model = trained("counts")
    new = profile_counts(n_cells=30, seed=5)
    x = new.X.toarray()
    x[2, 4] = -3
    new.X = sp.csr_matrix(x)
    opened = open_model(
        new, model, copy=True, seed=0, device="cpu", gene_symbols=None, min_gene_overlap=0.5
    )
    with pytest.raises(Exception, match="negative values"):
        encode(opened.index, FeatureSource(new), model.preprocessor)


def test_predictions_from_sparse_and_dense_files_are_identical(model_of, tmp_path):
    """Through the API: the same cells, stored sparse and dense, get the same outputs."""
    kind, model = model_of
    new = profile_counts(n_cells=70, seed=6, kind=kind)
    dense = new.copy()
    dense.X = new.X.toarray()
    a = tl.predict(new, model, copy=True, quiet=True)
    b = tl.predict(dense, model, copy=True, quiet=True)
    for key in ("rnn_proba", "X_rnn"):
        assert np.array_equal(a.obsm[key], b.obsm[key]), key
    assert (a.obs["rnn_pred"] == b.obs["rnn_pred"]).all()

"""``TaskResult.elements`` is exactly what a tool wrote into the AnnData, for every task.

The command line copies the input file and writes only these elements into the copy
(:func:`anndata_rnn.streaming.write_new_elements`): an element left out would be lost from the
output, one listed but not written would fail. Each case runs a tool on a small AnnData,
compares every element (obs/var columns, obsm/varm/layers and uns keys) before and after, and
checks the changed ones against ``elements``.
"""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
import torch
from fixtures_rich import rich_adata

from anndata_rnn import tl

torch.set_num_threads(1)

FAST = {"hidden": "8", "max_epochs": 2, "device": "cpu", "quiet": True}
OBS_SERIES = {"layout": "obs-series", "series_key": "series", "time_key": "time"}
VAR_SERIES = {"layout": "var-series", "series_key": "series", "time_key": "time"}


def _digest(value) -> str:
    return hashlib.sha256(pickle.dumps(value)).hexdigest()


def element_digests(adata) -> dict[str, str]:
    """Every element a tool may write, by its ``write_new_elements`` path, with a digest of its
    value."""
    found = {}
    for where in ("obs", "var"):
        frame = getattr(adata, where)
        for column in frame.columns:
            found[f"{where}/{column}"] = _digest(frame[column])
    for where in ("obsm", "varm", "layers", "uns"):
        for name, value in getattr(adata, where).items():
            found[f"{where}/{name}"] = _digest(value)
    return found


def run_and_check(tool, adata, *args, **kwargs):
    """Run ``tool`` on ``adata`` (in place) and check its ``elements`` against the changes."""
    before = element_digests(adata)
    result = tool.run(adata, *args, **kwargs)
    after = element_digests(result.adata)
    assert set(before) <= set(after), f"elements removed: {set(before) - set(after)}"
    changed = {path for path, digest in after.items() if before.get(path) != digest}
    assert changed, "the tool wrote nothing"
    assert len(result.elements) == len(set(result.elements)), result.elements
    assert set(result.elements) == changed, (
        f"listed but not written: {sorted(set(result.elements) - changed)}; "
        f"written but not listed: {sorted(changed - set(result.elements))}"
    )
    return result


@pytest.fixture(scope="module")
def trained():
    """A classifier, a forecaster and an embedding of the rich fixture, and their data."""
    data = {}
    for task, tool, kwargs in (
        ("classify", tl.classify, {"label_key": "label"}),
        ("forecast", tl.forecast, {}),
        ("embed", tl.embed, {"cluster": "kmeans", "n_clusters": 2}),
    ):
        adata = rich_adata(sparse=False)
        result = run_and_check(tool, adata, **OBS_SERIES, **kwargs, **FAST)
        data[task] = (adata, result.model)
    return data


def test_training_tasks(trained):
    """(checked in the fixture; this names the cases)"""
    assert set(trained) == {"classify", "forecast", "embed"}


@pytest.mark.parametrize(
    ("tool", "kwargs"),
    [
        (tl.classify, {**OBS_SERIES, "label_key": "label", "cv": 2}),
        (tl.classify, {"layout": "profile", "label_key": "label", "chunk_size": 4}),
        (tl.embed, {**VAR_SERIES, "cluster": "kmeans", "n_clusters": 2}),
        (tl.embed, {"layout": "profile", "chunk_size": 4, "cluster": "kmeans", "n_clusters": 2}),
    ],
    ids=["classify-cv", "classify-profile", "embed-var-series", "embed-profile"],
)
def test_other_layouts_and_cross_validation(tool, kwargs):
    run_and_check(tool, rich_adata(sparse=False), **kwargs, **FAST)


@pytest.mark.parametrize("task", ["classify", "forecast", "embed"])
def test_predict(trained, task):
    _, model = trained[task]
    run_and_check(tl.predict, rich_adata(sparse=False, seed=1), model, device="cpu", quiet=True)


@pytest.mark.parametrize("where", ["obsm", "varm"])
def test_cluster(where):
    adata = rich_adata(sparse=False)
    rep = getattr(adata, where)
    rep["X_emb"] = np.random.default_rng(0).normal(size=(rep.dim_names.size, 3))
    run_and_check(tl.cluster, adata, use_rep="X_emb", n_clusters=2, key_added="cl")


@pytest.mark.parametrize(
    ("task", "kwargs"),
    [
        ("classify", {}),  # added to the training run's record uns["rnn"]
        ("classify", {"key_added": "ex"}),  # a record of its own
        ("forecast", {"target": "gene00", "key_added": "ex"}),
    ],
    ids=["classifier-into-training-record", "classifier-own-key", "forecaster"],
)
def test_explain(trained, task, kwargs):
    adata, model = trained[task]
    run_and_check(tl.explain, adata.copy(), model, n_steps=4, device="cpu", quiet=True, **kwargs)


def test_explain_on_a_representation_writes_into_uns_only():
    """With ``use_rep`` the features are not genes: the importances go into ``uns[key]``, which
    is the one element (not ``uns/key/feature_importance``, a path inside it)."""
    adata = rich_adata(sparse=False)
    model = tl.classify(adata, **OBS_SERIES, label_key="label", use_rep="X_pca", **FAST)
    result = run_and_check(
        tl.explain, adata, model, n_steps=4, device="cpu", quiet=True, key_added="ex"
    )
    assert "feature_importance" in result.record

"""Training from the file (issue 13): X never leaves the file, shuffled batches come from
contiguous blocks in a shuffle buffer, results equal an in-memory run with the same batch order,
the command line writes a copy of the input plus the new elements."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from test_streaming import assert_input_elements_kept, profile_data, run_cli

from anndata_rnn import tl
from anndata_rnn.features import FeatureSource
from anndata_rnn.streaming import LazyEncoded, open_lazy
from anndata_rnn.training import BufferedBlocks

TRAIN_KW = dict(label_key="y", layout="profile", chunk_size=8, hidden=(8,), max_epochs=3, seed=0)


class Recorder:
    """An item that records what it was asked to read ahead."""

    def __init__(self, n):
        self.n, self.prefetched = n, []

    def __len__(self):
        return self.n

    def prefetch(self, positions):
        self.prefetched.append(np.asarray(positions))


@pytest.mark.parametrize(
    ("n", "batch", "block", "buffer"), [(1000, 32, 100, 400), (97, 10, 10, 45), (50, 64, 16, 8)]
)
def test_buffered_blocks_read_ahead_contiguous_blocks_and_cover_every_position(
    n, batch, block, buffer
):
    item = Recorder(n)
    sampler = BufferedBlocks((item,), batch, block, buffer, torch.Generator().manual_seed(0))
    size, per_buffer = sampler.block, sampler.buffer
    assert size == {1000: 128, 97: 10, 50: 64}[n]  # rounded up to whole batches
    assert per_buffer == {1000: 3, 97: 4, 50: 1}[n]  # whole blocks in the buffer (at least one)
    batches = list(sampler)
    assert len(batches) == len(sampler) == -(-n // batch)  # as many batches as full shuffling
    every = np.concatenate(batches)
    assert np.array_equal(np.sort(every), np.arange(n))  # every position once per pass
    # each batch comes from the buffer read ahead just before it; a buffer is at most
    # `per_buffer` whole blocks of consecutive positions
    start = 0
    for ahead in item.prefetched:
        assert np.array_equal(ahead, np.sort(ahead))
        assert len(np.unique(ahead // size)) <= per_buffer
        for b in np.unique(ahead // size):
            assert np.array_equal(
                ahead[ahead // size == b], np.arange(b * size, min(n, (b + 1) * size))
            )
        taken = every[start : start + len(ahead)]
        assert np.array_equal(np.sort(taken), ahead)
        start += len(ahead)
    assert start == n
    assert not np.array_equal(every, np.arange(n))  # shuffled within the buffer
    again = list(
        BufferedBlocks((Recorder(n),), batch, block, buffer, torch.Generator().manual_seed(0))
    )
    assert all(a == b for a, b in zip(batches, again, strict=True))  # seeded


def _with_blocks(monkeypatch):
    """In-memory sources read in the file's batch order too (same batches as from the file)."""
    monkeypatch.setattr(FeatureSource, "on_disk", property(lambda self: True))


def test_training_from_the_file_equals_in_memory_with_the_same_batch_order(tmp_path, monkeypatch):
    import anndata_rnn.streaming as streaming

    monkeypatch.setattr(streaming, "STREAM_BLOCK", 16)  # several blocks and buffers on 150 cells
    path = tmp_path / "in.h5ad"
    profile_data().write_h5ad(path)
    kw = dict(stream=True, quiet=True, batch_size=8, **TRAIN_KW)
    with open_lazy(path) as lazy:
        tl.classify(lazy, **kw)
        assert not isinstance(lazy.X, np.ndarray | sp.spmatrix)  # X never left the file
        from_file = (lazy.obsm["X_rnn"], lazy.obsm["rnn_proba"], lazy.uns)
    in_memory = profile_data()
    _with_blocks(monkeypatch)
    tl.classify(in_memory, **kw)
    assert np.array_equal(from_file[0], in_memory.obsm["X_rnn"])
    assert np.array_equal(from_file[1], in_memory.obsm["rnn_proba"])
    for model in ("rnn", "linear_path", "baseline", "nearest_neighbour"):
        for name, value in in_memory.uns["rnn"]["metrics"][model].items():
            assert np.array_equal(value, from_file[2]["rnn"]["metrics"][model][name]), name
    # and the file's batch order is not the full shuffle of an in-memory run (the training
    # losses differ; the probabilities may not, when both runs keep their logistic start)
    monkeypatch.undo()
    shuffled = profile_data()
    tl.classify(shuffled, **kw)
    assert not np.array_equal(
        shuffled.uns["rnn"]["history"]["train_loss"], in_memory.uns["rnn"]["history"]["train_loss"]
    )


def test_training_from_the_file_reads_buffers_of_contiguous_rows(tmp_path, monkeypatch):
    import anndata_rnn.baselines as baselines
    import anndata_rnn.runs as runs
    import anndata_rnn.streaming as streaming

    monkeypatch.setattr(streaming, "STREAM_BLOCK", 32)
    monkeypatch.setattr(runs, "STREAM_FIT_SEQUENCES", 200)
    monkeypatch.setattr(baselines, "LAZY_BATCH", 256)
    path = tmp_path / "in.h5ad"
    profile_data(n_cells=600).write_h5ad(path)
    reads, slices = [], []
    real_rows, real_item = FeatureSource.read_rows, LazyEncoded.prefetch

    def recording_rows(self, rows):
        reads.append(len(rows))
        return real_rows(self, rows)

    def recording_prefetch(self, positions):
        slices.append(len(positions))
        return real_item(self, positions)

    monkeypatch.setattr(FeatureSource, "read_rows", recording_rows)
    monkeypatch.setattr(LazyEncoded, "prefetch", recording_prefetch)
    with open_lazy(path) as lazy:
        tl.classify(
            lazy, stream=True, chunk_rows=64, quiet=True, batch_size=16,
            **{**TRAIN_KW, "max_epochs": 1},
        )  # fmt: skip
        info = lazy.uns["rnn"]
    assert slices and max(slices) == 64  # the buffer: 2 blocks of 32 training cells
    # preprocessing fit (200), batches, buffers, inference (512) and baseline (256) batches
    assert max(reads) <= 512 < 600  # never all of X
    assert info["params"]["streamed"]
    assert info["params"]["batch_order"] == "blocks of 32 in a shuffle buffer of 64"


def test_cli_classify_profile_keeps_x_in_the_file_and_writes_input_plus_results(
    tmp_path, file_hash
):
    source = tmp_path / "in.h5ad"
    profile_data().write_h5ad(source)
    before = file_hash(source)
    args = ["--label", "y", "--layout", "profile", "--chunk-size", 8, "--hidden", "8",
            "--epochs", 2, "--quiet"]  # fmt: skip
    outs = {}
    for stream in ("auto", "never"):
        outs[stream] = tmp_path / f"{stream}.h5ad"
        result = run_cli(
            "classify", source, *args, "--stream", stream, "--output", outs[stream],
            "--model-out", tmp_path / f"{stream}.h5",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert "obs/rnn_split" in result.output
    assert file_hash(source) == before
    assert_input_elements_kept(source, outs["auto"])
    # small data is not streamed: read from the file or from memory, the same numbers
    auto, never = ad.read_h5ad(outs["auto"]), ad.read_h5ad(outs["never"])
    assert auto.obs.equals(never.obs)
    for key in ("X_rnn", "rnn_proba"):
        assert np.array_equal(auto.obsm[key], never.obsm[key])
    assert not auto.uns["rnn"]["params"]["streamed"]


def test_cli_classify_interrupted_while_writing_leaves_no_output(tmp_path, monkeypatch, file_hash):
    import anndata_rnn.streaming as streaming

    source = tmp_path / "in.h5ad"
    profile_data().write_h5ad(source)
    before = file_hash(source)
    real = streaming.write_elem
    calls = []

    def failing(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(streaming, "write_elem", failing)
    result = run_cli(
        "classify", source, "--label", "y", "--layout", "profile", "--chunk-size", 8,
        "--hidden", "8", "--epochs", 1, "--stream", "always", "--output", tmp_path / "out.h5ad",
        "--model-out", tmp_path / "m.h5", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 130 and "no output was written" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5ad"]
    assert file_hash(source) == before


@pytest.mark.parametrize("dense", [False, True])
def test_rows_read_from_the_file_in_slices_equal_rows_read_in_memory(tmp_path, dense):
    rng = np.random.default_rng(0)
    x = sp.random(9000, 20, density=0.2, format="csr", random_state=0, dtype=np.float32)
    adata = ad.AnnData(x.toarray() if dense else x)
    path = tmp_path / "m.h5ad"
    adata.write_h5ad(path)
    in_memory = FeatureSource(adata)
    with open_lazy(path) as lazy:
        on_disk = FeatureSource(lazy)
        assert on_disk.on_disk and not in_memory.on_disk
        for n in (1, 5, 300, 4000, 8999):  # scattered, mixed and dense rows, across 4096-row slices
            rows = np.sort(rng.choice(9000, n, replace=False))
            assert np.array_equal(on_disk.read_rows(rows), in_memory.read_rows(rows)), n
        rows = np.r_[0:10, 4090:4100, 8990:9000]
        assert np.array_equal(on_disk.read_rows(rows), in_memory.read_rows(rows))


# ---------------------------------------------------------------------------------------------
# embed (profile) streams the same way

EMBED_KW = dict(
    layout="profile", chunk_size=8, hidden=(8,), n_latent=4, max_epochs=3, cluster="kmeans",
    eval_label="y", quiet=True, seed=0,
)  # fmt: skip


def test_streamed_embedding_equals_in_memory_bit_for_bit():
    in_memory, streamed = profile_data(n_cells=300), profile_data(n_cells=300)
    tl.embed(in_memory, stream=False, **EMBED_KW)
    tl.embed(streamed, stream=True, **EMBED_KW)
    assert np.array_equal(in_memory.obsm["X_rnn"], streamed.obsm["X_rnn"])
    assert in_memory.obs["rnn_cluster"].equals(streamed.obs["rnn_cluster"])
    a, b = in_memory.uns["rnn"], streamed.uns["rnn"]
    assert set(a["metrics"]) == {"rnn", "linear_path", "pca", "baseline"}
    assert a["reconstruction"]["warm_start"] == b["reconstruction"]["warm_start"]
    for model in ("rnn", "linear_path", "pca", "baseline"):
        for name, value in a["metrics"][model].items():
            assert np.array_equal(value, b["metrics"][model][name]), (model, name)
    assert not a["params"]["streamed"] and b["params"]["streamed"]
    assert b["params"]["batch_order"] == "random"  # X in memory: the full shuffle


def test_streamed_embedding_baseline_is_fitted_on_a_subset_and_applied_to_every_cell(monkeypatch):
    import anndata_rnn.baselines as baselines

    monkeypatch.setattr(baselines, "LAZY_FIT_SEQUENCES", 100)
    monkeypatch.setattr(baselines, "LAZY_BATCH", 64)
    adata = profile_data(n_cells=300)
    tl.embed(adata, stream=True, **EMBED_KW)
    baseline = adata.uns["rnn"]["metrics"]["baseline"]
    assert baseline["model"].endswith("(fitted on a random 100 of 300)")
    n_train = int((adata.obs["rnn_split"] == "train").sum())  # the PCA the model starts from
    pca = adata.uns["rnn"]["metrics"]["pca"]
    assert pca["model"].endswith(f"(fitted on a random 100 of {n_train})"), pca["model"]
    assert np.isfinite(pca["reconstruction_mse"])
    assert baseline["n"] == 300 and baseline["n_clusters"] == 2  # every cell got a cluster
    assert np.isfinite(
        [baseline["silhouette"], baseline["ari"], baseline["explained_variance"]]
    ).all()


def test_embedding_from_the_file_equals_in_memory_with_the_same_batch_order(tmp_path, monkeypatch):
    import anndata_rnn.streaming as streaming

    monkeypatch.setattr(streaming, "STREAM_BLOCK", 16)
    path = tmp_path / "in.h5ad"
    profile_data(n_cells=300).write_h5ad(path)
    kw = dict(stream=True, chunk_rows=64, batch_size=8, **EMBED_KW)
    with open_lazy(path) as lazy:
        tl.embed(lazy, **kw)
        from_file = (lazy.obsm["X_rnn"], lazy.obs["rnn_cluster"], lazy.uns["rnn"])
    _with_blocks(monkeypatch)
    in_memory = profile_data(n_cells=300)
    tl.embed(in_memory, **kw)
    assert np.array_equal(from_file[0], in_memory.obsm["X_rnn"])
    assert from_file[1].equals(in_memory.obs["rnn_cluster"])
    assert from_file[2]["params"]["batch_order"] == "blocks of 16 in a shuffle buffer of 64"


def test_cli_embed_profile_keeps_x_in_the_file_and_writes_input_plus_results(tmp_path, file_hash):
    source = tmp_path / "in.h5ad"
    profile_data().write_h5ad(source)
    before = file_hash(source)
    outs = {}
    for stream in ("auto", "never"):
        outs[stream] = tmp_path / f"{stream}.h5ad"
        result = run_cli(
            "embed", source, "--layout", "profile", "--chunk-size", 8, "--hidden", "8",
            "--n-latent", 3, "--epochs", 2, "--cluster", "kmeans", "--n-clusters", 2,
            "--stream", stream, "--output", outs[stream], "--model-out", tmp_path / f"{stream}.h5",
            "--quiet",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    assert file_hash(source) == before
    assert_input_elements_kept(source, outs["auto"])
    auto, never = ad.read_h5ad(outs["auto"]), ad.read_h5ad(outs["never"])
    assert auto.obs.equals(never.obs)
    assert np.array_equal(auto.obsm["X_rnn"], never.obsm["X_rnn"])


def test_a_column_stored_matrix_in_the_file_gets_a_warning(tmp_path, caplog):
    x = sp.random(50, 20, density=0.3, format="csr", random_state=0, dtype=np.float32)
    for name, matrix in (("csr", x), ("csc", x.tocsc())):
        ad.AnnData(matrix).write_h5ad(tmp_path / f"{name}.h5ad")
        caplog.clear()
        with open_lazy(tmp_path / f"{name}.h5ad") as lazy, caplog.at_level("WARNING"):
            rows = FeatureSource(lazy).read_rows(np.arange(5, 9))
        assert np.array_equal(rows, x[5:9].toarray())
        assert ("stored by column (CSC)" in caplog.text) == (name == "csc"), name

"""Bounded memory (issue 13): streamed apply equals the in-memory path bit for bit, chunk
boundaries along each layout's axis, the CLI's copy-plus-new-elements output and its atomicity."""

from __future__ import annotations

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

from anndata_rnn import tl
from anndata_rnn.cli import main
from anndata_rnn.model import Model
from anndata_rnn.networks.autoencoder import embed_sequences
from anndata_rnn.networks.classifier import predict_proba
from anndata_rnn.preprocessing import encode
from anndata_rnn.runs import open_model
from anndata_rnn.streaming import scratch_file, sequence_chunks

SERIES_LENGTHS = [5, 12, 3, 30, 8, 9, 4, 6]


def profile_data(n_cells=150, n_genes=70, seed=0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n_cells)
    rates = rng.gamma(1.0, 2.0, (n_cells, n_genes)) * (1 + y[:, None] * (np.arange(n_genes) < 10))
    counts = rng.poisson(rates) * (rng.random((n_cells, n_genes)) < 0.3)
    adata = ad.AnnData(sp.csr_matrix(counts.astype(np.float32)))
    adata.obs_names = [f"c{i}" for i in range(n_cells)]
    adata.var_names = [f"g{i}" for i in range(n_genes)]
    adata.obs["y"] = pd.Categorical(np.array(["a", "b"])[y])
    adata.obsm["X_other"] = rng.normal(size=(n_cells, 3))
    adata.uns["note"] = {"kept": np.arange(3)}
    return adata


def series_data(seed=0) -> ad.AnnData:
    """Series of unequal lengths whose rows are interleaved in the file."""
    rng = np.random.default_rng(seed)
    series = np.repeat(np.arange(len(SERIES_LENGTHS)), SERIES_LENGTHS)
    times = np.concatenate([np.arange(n, dtype=float) for n in SERIES_LENGTHS])
    order = rng.permutation(len(series))
    series, times = series[order], times[order]
    label = series % 2
    x = rng.normal(size=(len(series), 6)) + label[:, None] + np.sin(times)[:, None]
    adata = ad.AnnData(x.astype(np.float32))
    adata.obs_names = [f"o{i}" for i in range(len(series))]
    adata.var_names = [f"g{i}" for i in range(6)]
    adata.obs["series"] = pd.Categorical([f"s{s}" for s in series])
    adata.obs["time"] = times
    adata.obs["y"] = pd.Categorical(np.array(["even", "odd"])[label])
    return adata


@pytest.fixture(scope="module")
def profile_model():
    adata = profile_data()
    model = tl.classify(
        adata, label_key="y", layout="profile", chunk_size=8, hidden=(8,), max_epochs=2, quiet=True
    )
    return adata, model


def opened_on(adata, model, chunk_rows):
    return open_model(
        adata,
        model,
        copy=True,
        seed=0,
        device="cpu",
        gene_symbols=None,
        min_gene_overlap=0.8,
        chunk_rows=chunk_rows,
    )


@pytest.mark.parametrize("chunk_rows", [1, 7, 16, 37, 10**6])
def test_streamed_classifier_equals_in_memory_bit_for_bit(profile_model, chunk_rows):
    adata, model = profile_model
    opened = opened_on(adata, model, chunk_rows)
    enc = encode(opened.index, opened.source, model.preprocessor)
    expected = predict_proba(model.module, enc.values, enc.lengths, "cpu", 16)
    streamed = opened.stream(lambda x, n: predict_proba(model.module, x, n, "cpu", 16), 16)
    for got, want in zip(streamed.outputs, expected, strict=True):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    assert np.array_equal(streamed.n_missing, enc.n_missing)


def test_spilled_embedding_stays_on_disk_and_equals_in_memory(profile_model, tmp_path):
    adata, model = profile_model
    opened = opened_on(adata, model, 37)

    def run(x, n):
        return predict_proba(model.module, x, n, "cpu", 16)

    expected = opened.stream(run, 16).outputs
    with scratch_file(tmp_path) as scratch:
        opened.scratch = scratch
        got = opened.stream(run, 16, spill={1: "embedding"}).outputs
        assert isinstance(got[1], h5py.Dataset) and isinstance(got[0], np.ndarray)
        assert np.array_equal(got[1][:], expected[1]) and np.array_equal(got[0], expected[0])
        assert got[1].dtype == expected[1].dtype
    assert list(tmp_path.iterdir()) == []  # the scratch file is gone


def test_series_chunks_never_cut_a_series_and_end_with_a_partial_chunk():
    adata = series_data()
    from anndata_rnn.sequences import SequenceSpec

    index = SequenceSpec("obs-series", series_key="series", time_key="time").index(adata)
    chunks = list(sequence_chunks(index, np.arange(index.n_sequences), chunk_rows=10))
    assert np.array_equal(np.concatenate(chunks), np.arange(index.n_sequences))
    rows = [int(index.lengths[c].sum()) for c in chunks]
    # a series longer than the chunk is a chunk of its own; every other chunk fits
    assert all(r <= 10 or len(c) == 1 for r, c in zip(rows, chunks, strict=True))
    assert any(r > 10 for r in rows) and len(chunks) > 3
    assert rows[-1] < 10  # the last chunk is partial


@pytest.mark.parametrize("chunk_rows", [4, 10, 25, 10**6])
def test_streamed_series_embedding_equals_in_memory(chunk_rows):
    """Whole series per chunk, batches that straddle chunks (batch 3), per-step latents."""
    adata = series_data()
    model = tl.embed(
        adata, series_key="series", time_key="time", hidden=(8,), n_latent=4, max_epochs=2,
        quiet=True,
    )  # fmt: skip
    opened = opened_on(adata, model, chunk_rows)
    enc = encode(opened.index, opened.source, model.preprocessor)
    expected = embed_sequences(model.module, enc.values, enc.lengths, "cpu", 3, steps=True)

    def run(x, n):
        return embed_sequences(model.module, x, n, "cpu", 3, steps=True)

    streamed = opened.stream(run, 3)
    for got, want in zip(streamed.outputs, expected, strict=True):
        assert np.array_equal(got, want)
    assert np.array_equal(streamed.lengths, enc.lengths)


def test_var_series_reads_the_matrix_whole_and_says_so(caplog):
    from anndata_rnn.sequences import SequenceSpec

    adata = series_data()
    spec = SequenceSpec("var-series", series_key="series", time_key="time")
    index = spec.index(adata)
    chunks = list(sequence_chunks(index, np.arange(index.n_sequences), chunk_rows=2))
    assert len(chunks) == 1 and np.array_equal(chunks[0], np.arange(index.n_sequences))
    model = tl.embed(
        adata, layout="var-series", series_key="series", time_key="time", hidden=(4,),
        n_latent=2, max_epochs=1, quiet=True,
    )  # fmt: skip
    caplog.set_level("INFO", logger="anndata_rnn")
    tl.predict(adata, model, key_added="again", chunk_rows=2, quiet=True)
    assert "reading the whole matrix" in caplog.text
    assert np.array_equal(adata.varm["X_again"], adata.varm["X_rnn"])


def test_progress_bar_on_stderr_unless_quiet(profile_model, capsys):
    adata, model = profile_model
    tl.predict(adata.copy(), model, key_added="p1", chunk_rows=16)
    assert "seq" in capsys.readouterr().err
    tl.predict(adata.copy(), model, key_added="p2", chunk_rows=16, quiet=True)
    assert "seq" not in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# the command line: a copy of the input plus the new elements


def _elements(path):
    """Every dataset (values, dtype, attrs) and group (attrs) of an HDF5 file."""
    out = {}
    with h5py.File(path, "r") as f:

        def visit(name, obj):
            attrs = {k: np.asarray(v).tolist() for k, v in obj.attrs.items()}
            if isinstance(obj, h5py.Dataset):
                data = obj[()]
                if obj.dtype.kind == "O":  # variable-length strings: compare the values
                    data = np.asarray(data).tolist()
                elif obj.shape:
                    data = data.tobytes()
                out[name] = (obj.dtype.str, obj.shape, data, attrs)
            else:
                out[name] = attrs

        f.visititems(visit)
    return out


def assert_input_elements_kept(source, out, grown=("obs",)):
    """Every element of the input file is in the output, unchanged; the groups in ``grown``
    (which gain new columns or matrices) are compared by their members only."""
    original, written = _elements(source), _elements(out)
    for name, value in original.items():
        if name not in grown:
            assert written[name] == value, name
    return original, written


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def saved(profile_model, tmp_path):
    _, model = profile_model
    source = tmp_path / "in.h5ad"
    profile_data().write_h5ad(source)  # the training data without the training's results
    model.save(tmp_path / "m.h5")
    return source, tmp_path / "m.h5"


def test_cli_output_is_the_input_plus_the_in_memory_results(saved, tmp_path, file_hash):
    source, model_path = saved
    before = file_hash(source)
    out = tmp_path / "out.h5ad"
    result = run_cli(
        "predict", source, "--model", model_path, "--output", out, "--chunk-rows", 13,
        "--batch-size", 16, "--threads", 1, "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert file_hash(source) == before
    # every input element is in the output, unchanged (column-order only gains the new columns)
    original, written = assert_input_elements_kept(source, out)
    order = original["obs"]["column-order"]
    assert written["obs"]["column-order"][: len(order)] == order
    new = set(written) - set(original)
    assert {"obs/rnn_pred", "obs/rnn_conf", "obsm/rnn_proba", "obsm/X_rnn", "uns/rnn"} <= {
        "/".join(n.split("/")[:2]) for n in new
    }
    # the new elements equal an in-memory prediction on the whole file
    expected = ad.read_h5ad(source)
    tl.predict(expected, Model.load(model_path), batch_size=16, device="cpu")
    got = ad.read_h5ad(out)
    assert got.obs.equals(expected.obs)
    for key in ("rnn_proba", "X_rnn", "X_other"):
        assert np.array_equal(got.obsm[key], expected.obsm[key])
    assert (got.X != expected.X).nnz == 0
    assert got.uns["rnn"]["gene_overlap"].keys() == expected.uns["rnn"]["gene_overlap"].keys()
    assert np.array_equal(got.uns["note"]["kept"], np.arange(3))


def test_cli_overwrite_replaces_a_column_in_place(saved, tmp_path):
    source, model_path = saved
    first = tmp_path / "first.h5ad"
    assert (
        run_cli("predict", source, "--model", model_path, "--output", first, "--quiet").exit_code
        == 0
    )
    again = tmp_path / "again.h5ad"
    result = run_cli("predict", first, "--model", model_path, "--output", again, "--quiet")
    assert result.exit_code == 2 and "already exist" in result.output
    result = run_cli(
        "predict", first, "--model", model_path, "--output", again, "--overwrite", "--quiet"
    )
    assert result.exit_code == 0, result.output
    a, b = ad.read_h5ad(first), ad.read_h5ad(again)
    assert list(a.obs.columns) == list(b.obs.columns)
    assert a.obs.equals(b.obs) and np.array_equal(a.obsm["X_rnn"], b.obsm["X_rnn"])


def test_interrupted_streamed_write_leaves_no_output(saved, tmp_path, monkeypatch, file_hash):
    import anndata_rnn.streaming as streaming

    source, model_path = saved
    before = file_hash(source)
    calls = []
    real = streaming.write_elem

    def failing(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 3:  # after the copy and two new elements
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(streaming, "write_elem", failing)
    out = tmp_path / "out.h5ad"
    result = run_cli("predict", source, "--model", model_path, "--output", out, "--quiet")
    assert result.exit_code == 130 and "no output was written" in result.output
    assert len(calls) == 3
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5ad", "m.h5"]
    assert file_hash(source) == before


def test_backed_anndata_is_still_refused_without_copy(saved):
    source, model_path = saved
    backed = ad.read_h5ad(source, backed="r")
    with pytest.raises(Exception, match="backed"):
        tl.predict(backed, Model.load(model_path))
    backed.file.close()


# ---------------------------------------------------------------------------------------------
# streamed training (profile): batches encoded from the sparse X when the loop needs them

TRAIN_KW = dict(label_key="y", layout="profile", chunk_size=8, hidden=(8,), max_epochs=3, seed=0)


def test_streamed_training_equals_in_memory_bit_for_bit():
    in_memory, streamed = profile_data(), profile_data()
    tl.classify(in_memory, stream=False, quiet=True, **TRAIN_KW)
    tl.classify(streamed, stream=True, quiet=True, **TRAIN_KW)
    for key in ("X_rnn", "rnn_proba"):
        assert np.array_equal(in_memory.obsm[key], streamed.obsm[key]), key
    assert in_memory.obs["rnn_split"].equals(streamed.obs["rnn_split"])
    a, b = in_memory.uns["rnn"], streamed.uns["rnn"]
    for model in ("rnn", "linear_path", "baseline", "nearest_neighbour"):
        for name, value in a["metrics"][model].items():
            assert np.array_equal(value, b["metrics"][model][name]), (model, name)
    assert not a["params"]["streamed"] and b["params"]["streamed"]


def test_streamed_training_never_encodes_everything_and_subsamples_its_fits(monkeypatch, caplog):
    import anndata_rnn.baselines as baselines
    import anndata_rnn.runs as runs
    from anndata_rnn.streaming import LazyEncoded

    monkeypatch.setattr(runs, "STREAM_FIT_SEQUENCES", 200)
    monkeypatch.setattr(baselines, "LAZY_FIT_SEQUENCES", 300)
    monkeypatch.setattr(baselines, "LAZY_BATCH", 256)
    largest = []
    real = LazyEncoded.__getitem__

    def recording(self, positions):
        values = real(self, positions)
        largest.append(len(values))
        return values

    monkeypatch.setattr(LazyEncoded, "__getitem__", recording)
    adata = profile_data(n_cells=1500)
    with caplog.at_level("INFO", logger="anndata_rnn"):
        tl.classify(adata, stream=True, quiet=True, batch_size=32, **{**TRAIN_KW, "max_epochs": 1})
    info = adata.uns["rnn"]
    n_train = int((adata.obs["rnn_split"] == "train").sum())
    assert max(largest) <= 512 < adata.n_obs  # batches (and predict_in_batches' 512), never all
    assert info["preprocessing"]["fitted_on_sequences"] == 200
    assert "preprocessing fitted on 200 of" in caplog.text
    assert (
        f"fitted on a random 300 of {n_train} training sequences"
        in (info["metrics"]["baseline"]["model"])
    )
    # measured 0.587 on its 300 (in memory on all 1,050 training cells: 0.560; chance 0.5)
    assert info["metrics"]["baseline"]["accuracy"] >= 0.55
    # the 1-NN baseline holds the same bounded subset and scores every test cell
    nearest = info["metrics"]["nearest_neighbour"]
    n_known = n_train + int((adata.obs["rnn_split"] == "val").sum())
    assert f"holding a random 300 of {n_known} sequences" in nearest["model"]
    assert nearest["n"] == int((adata.obs["rnn_split"] == "test").sum())
    assert np.isfinite(adata.obsm["rnn_proba"]).all()


def test_stream_auto_switches_on_above_the_memory_limit(monkeypatch, caplog):
    import anndata_rnn.streaming as streaming

    monkeypatch.setattr(streaming, "STREAM_ABOVE_BYTES", 10_000)  # 150 cells × 70 genes × 4 B
    adata = profile_data()
    with caplog.at_level("INFO", logger="anndata_rnn"):
        tl.classify(adata, quiet=True, **TRAIN_KW)
    assert adata.uns["rnn"]["params"]["streamed"] and adata.uns["rnn"]["params"]["stream"] == "auto"
    assert "streamed training: the encoded sequences would take" in caplog.text
    small = profile_data()
    monkeypatch.setattr(streaming, "STREAM_ABOVE_BYTES", 1 << 30)
    tl.classify(small, quiet=True, **TRAIN_KW)
    assert not small.uns["rnn"]["params"]["streamed"]


def test_cli_stream_always(tmp_path):
    source = tmp_path / "in.h5ad"
    profile_data().write_h5ad(source)
    out = tmp_path / "out.h5ad"
    result = run_cli(
        "classify", source, "--label", "y", "--layout", "profile", "--chunk-size", 8,
        "--hidden", "8", "--epochs", 2, "--stream", "always", "--output", out,
        "--model-out", tmp_path / "m.h5", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert bool(ad.read_h5ad(out).uns["rnn"]["params"]["streamed"])


def test_open_lazy_keeps_x_and_layers_on_disk_and_predicts_from_a_layer(tmp_path):
    from anndata.abc import CSRDataset

    from anndata_rnn.streaming import open_lazy

    adata = profile_data()
    adata.layers["counts"] = adata.X.copy()
    adata.layers["dense"] = adata.X.toarray()
    adata.X = adata.X * 0  # the model reads the layer, not X
    source = tmp_path / "in.h5ad"
    adata.write_h5ad(source)
    with open_lazy(source) as lazy:
        assert isinstance(lazy.X, CSRDataset) and isinstance(lazy.layers["counts"], CSRDataset)
        assert isinstance(lazy.layers["dense"], h5py.Dataset)
        assert lazy.obs.equals(adata.obs) and np.array_equal(
            lazy.obsm["X_other"], adata.obsm["X_other"]
        )
    model = tl.classify(
        adata, layer="counts", quiet=True, copy=False, **{**TRAIN_KW, "max_epochs": 1}
    )
    model.save(tmp_path / "m.h5")
    out = tmp_path / "out.h5ad"
    result = run_cli("predict", source, "--model", tmp_path / "m.h5", "--output", out, "--quiet")
    assert result.exit_code == 0, result.output
    expected = ad.read_h5ad(source)
    tl.predict(expected, Model.load(tmp_path / "m.h5"), device="cpu")
    got = ad.read_h5ad(out)
    assert np.array_equal(got.obsm["rnn_proba"], expected.obsm["rnn_proba"])
    assert np.array_equal(got.layers["dense"], adata.layers["dense"])


@pytest.fixture
def fake_mallopt(monkeypatch):
    """glibc's mallopt recorded instead of called; heap.POLICY restored afterwards."""
    import ctypes
    import sys

    from anndata_rnn import heap

    calls = []

    class FakeLibc:
        def mallopt(self, parameter, value):
            calls.append((parameter, value))
            return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibc())
    monkeypatch.setattr(sys, "platform", "linux")
    for variable in heap.USER_SETTINGS:
        monkeypatch.delenv(variable, raising=False)
    saved = dict(heap.POLICY)
    yield calls
    heap.POLICY.clear()
    heap.POLICY.update(saved)


def test_command_line_keeps_batch_buffers_in_the_heap_until_it_trains_from_streamed_batches(
    fake_mallopt, monkeypatch
):
    from anndata_rnn import heap

    heap.POLICY.clear()
    heap.set_for_streamed_training()  # a Python session: nothing is set
    assert fake_mallopt == []
    # a command starts with the network's per-batch buffers (66 MB for predict's defaults) in
    # the heap: glibc's M_MMAP_THRESHOLD 256 MB, M_TRIM_THRESHOLD 128 MB
    heap.set_for_command_line()
    assert fake_mallopt == [(-3, 256 << 20), (-1, 128 << 20)]
    # training from streamed batches: few-MB arrays get their own mappings (1 MB), glibc's
    # default trim threshold again; once
    heap.set_for_streamed_training()
    heap.set_for_streamed_training()
    assert fake_mallopt[2:] == [(-3, 1 << 20), (-1, 128 * 1024)]
    for variable in heap.USER_SETTINGS:  # the user's own setting wins
        fake_mallopt.clear()
        with monkeypatch.context() as m:
            m.setenv(variable, "65536")
            heap.set_for_command_line()
            heap.set_for_streamed_training()
        assert fake_mallopt == []


def test_a_streamed_training_run_switches_the_heap_policy(fake_mallopt, tmp_path):
    """The command line's classify of a file it streams ends on the streamed-training
    thresholds; the same data in memory keeps the command line's."""
    from anndata_rnn import heap

    path = tmp_path / "cells.h5ad"
    profile_data().write_h5ad(path)
    for stream, expected in (("never", "in memory"), ("always", "streamed training")):
        out = tmp_path / f"out_{stream}.h5ad"
        result = run_cli(
            "classify", path, "--label", "y", "--layout", "profile", "--chunk-size", 8,
            "--hidden", "8", "--epochs", 1, "--stream", stream, "--output", out,
            "--model-out", tmp_path / f"m_{stream}.h5", "--quiet", "--threads", 1,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert heap.POLICY["name"] == expected


# ---------------------------------------------------------------------------------------------
# explain: predictions streamed, only the explained sequences encoded


def test_explain_encodes_only_the_explained_sequences(profile_model, monkeypatch):
    import anndata_rnn.tl._explain as explain_module

    adata, model = profile_model
    sizes = []
    real = explain_module.encode

    def recording(index, *args, **kwargs):
        sizes.append(index.n_sequences)
        return real(index, *args, **kwargs)

    monkeypatch.setattr(explain_module, "encode", recording)
    target = adata.copy()
    tl.explain(target, model, max_per_class=5, n_steps=4, quiet=True)
    assert sizes == [10] and target.n_obs == 150  # 5 per class of 2, not all 150 cells
    assert list(target.uns["rnn"]["explain"]["n_explained"]) == [5, 5]


def test_cli_explain_output_is_the_input_plus_the_new_elements(saved, tmp_path, file_hash):
    source, model_path = saved
    before = file_hash(source)
    out = tmp_path / "explained.h5ad"
    result = run_cli(
        "explain", source, "--model", model_path, "--output", out, "--max-per-class", 5,
        "--n-steps", 4, "--table", tmp_path / "top.tsv", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert file_hash(source) == before
    assert_input_elements_kept(source, out, grown=("var", "varm"))
    expected = ad.read_h5ad(source)
    tl.explain(expected, Model.load(model_path), max_per_class=5, n_steps=4, quiet=True)
    got = ad.read_h5ad(out)
    assert np.array_equal(
        got.varm["rnn_importance"], expected.varm["rnn_importance"], equal_nan=True
    )
    assert np.array_equal(
        got.uns["rnn"]["step_importance"], expected.uns["rnn"]["step_importance"], equal_nan=True
    )

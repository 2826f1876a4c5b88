"""Hostile and careless inputs, as a public Galaxy server receives them (issue: hostile inputs II).

Every case ends as an input error: exit 2, one ``Error:`` line under 1,000 characters, no output
or temporary file left, the input byte-identical and nothing outside the named outputs touched.
The inputs are built by :mod:`hostile_inputs`. Valid files of the same shape still run (the good
fixture trains and predicts in ``trained``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from fixtures_rich import rich_adata
from hostile_inputs import (
    DATA_EDITS,
    MODEL_EDITS,
    SPARSE_DAMAGE,
    damaged_sparse,
    edited_model,
    fill_value_x,
    rich_with,
)
from test_reliability import APPLY, SERIES, TRAIN, copy, h5ad, hashes, invoke, listing

import anndata_rnn as ar
from anndata_rnn import features, preprocessing, streaming
from anndata_rnn.errors import InputError
from anndata_rnn.io import temporary_name

TRAIN_OUT = "--model-out"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The rich fixture, a classifier trained on it (obs-series) and a var-series classifier
    trained on its first series."""
    folder = tmp_path_factory.mktemp("trained")
    rich = h5ad(folder, rich_adata(), "rich.h5ad")
    result = invoke(
        "classify", rich, SERIES, "--label label", TRAIN,
        "--output", folder / "classified.h5ad", TRAIN_OUT, folder / "model.h5",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    one = rich_adata()
    one = one[one.obs["series"] == "s00"].copy()
    h5ad(folder, one, "one_series.h5ad")
    result = invoke(
        "classify", folder / "one_series.h5ad", "--layout var-series --time-key time",
        "--label var_label", TRAIN, "--output", folder / "vs.h5ad", TRAIN_OUT, folder / "vs.h5",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return folder


def expect_input_error(folder: Path, inputs: list, mentions: list[str], *command) -> str:
    """Exit 2, one short ``Error:`` line naming ``mentions``, the inputs unchanged and no file
    added under ``folder``."""
    before, state = listing(folder), hashes(*inputs)
    result = invoke(*command)
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ") and len(lines[0]) < 1000, lines[0][:300]
    for words in mentions:
        assert words in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert listing(folder) == before, "a file was left behind"
    assert hashes(*inputs) == state
    return lines[0]


# ---------------------------------------------------------------------------------------------
# damaged sparse matrices (scipy's C code trusts indptr and indices)

SPARSE_COMMANDS = {
    "classify obs-series": lambda src, out, folder, model: [
        "classify", src, SERIES, "--label label", TRAIN, "--output", out,
        TRAIN_OUT, folder / "m_out.h5"],
    "classify profile": lambda src, out, folder, model: [
        "classify", src, "--layout profile --label label", TRAIN, "--output", out,
        TRAIN_OUT, folder / "m_out.h5"],
    "classify profile streamed": lambda src, out, folder, model: [
        "classify", src, "--layout profile --label label --stream always --chunk-rows 16",
        TRAIN, "--output", out, TRAIN_OUT, folder / "m_out.h5"],
    "predict": lambda src, out, folder, model: [
        "predict", src, "--model", model, APPLY, "--output", out],
}  # fmt: skip


@pytest.mark.parametrize("command", list(SPARSE_COMMANDS))
@pytest.mark.parametrize("kind", list(SPARSE_DAMAGE))
def test_a_damaged_sparse_x_is_an_input_error(kind, command, trained, tmp_path):
    source = damaged_sparse(trained / "rich.h5ad", tmp_path / "damaged.h5ad", kind)
    model = copy(trained, "model.h5", tmp_path)
    args = SPARSE_COMMANDS[command](source, tmp_path / "out.h5ad", tmp_path, model)
    line = expect_input_error(tmp_path, [source, model], ["X is a damaged sparse matrix"], *args)
    assert "rewrite the file" in line


def test_damaged_sparse_checks_accept_what_anndata_writes(tmp_path):
    """The checks pass valid CSR and CSC matrices, in memory and in the file."""
    import anndata as ad
    import scipy.sparse as sp

    adata = rich_adata()
    for matrix in (adata.X, sp.csc_matrix(adata.X)):
        features.check_sparse_structure(matrix, "X")
    path = h5ad(tmp_path, adata, "csr.h5ad")
    with streaming.open_lazy(path) as lazy:
        source = features.FeatureSource(lazy)
        block = source.read_rows(np.arange(lazy.n_obs))
    np.testing.assert_array_equal(block, ad.read_h5ad(path).X.toarray())


# ---------------------------------------------------------------------------------------------
# output keys are names, never HDF5 paths

BAD_KEYS = ["/X", ".", "a/b", "rnn.v2", "x" * 65]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_key_added_must_be_a_plain_name(key, trained, tmp_path):
    rich, model = copy(trained, "rich.h5ad", tmp_path), copy(trained, "model.h5", tmp_path)
    out = tmp_path / "out.h5ad"
    for command in (
        ["classify", rich, SERIES, "--label label", TRAIN, TRAIN_OUT, tmp_path / "m.h5"],
        ["predict", rich, "--model", model, APPLY],
        ["explain", rich, "--model", model, APPLY, "--n-steps 4"],
    ):
        expect_input_error(
            tmp_path, [rich, model], ["--key-added", "plain name"],
            *command, "--output", out, "--key-added", key,
        )  # fmt: skip


def test_an_empty_key_added_is_refused(trained, tmp_path):
    rich = copy(trained, "rich.h5ad", tmp_path)
    expect_input_error(
        tmp_path, [rich], ["--key-added", "empty"],
        "classify", rich, SERIES, "--label label", TRAIN, "--output", tmp_path / "o.h5ad",
        TRAIN_OUT, tmp_path / "m.h5", "--key-added=",
    )  # fmt: skip


@pytest.mark.parametrize("key", ["/X", ".", ""])
def test_the_python_api_refuses_path_keys(key):
    with pytest.raises(InputError, match="key_added"):
        ar.tl.classify(rich_adata(), label_key="label", series_key="series", key_added=key)


# ---------------------------------------------------------------------------------------------
# model files whose config sizes allocations or names paths


@pytest.mark.parametrize("edit", list(MODEL_EDITS))
def test_a_tampered_model_is_refused(edit, trained, tmp_path):
    rich = copy(trained, "rich.h5ad", tmp_path)
    model = edited_model(trained / "model.h5", tmp_path / "tampered.h5", MODEL_EDITS[edit])
    for command in ("predict", "explain"):
        expect_input_error(
            tmp_path, [rich, model], ["tampered.h5", "retrain or restore the file"],
            command, rich, "--model", model, APPLY, "--output", tmp_path / "out.h5ad",
        )  # fmt: skip


def test_downsample_is_capped_by_the_steps_the_batch_has():
    """A window longer than the sequences averages them all, as one window of their length
    does: the same result without padding to the window."""
    import torch

    from anndata_rnn.networks.blocks import downsample

    x, lengths = torch.randn(3, 7, 2), torch.tensor([7, 5, 2])
    for huge in (7, 8, 1_000_000):
        out, new = downsample(x, lengths, huge)
        ref, ref_new = downsample(x, lengths, 7)
        assert out.shape == (3, 1, 2) and torch.equal(out, ref) and torch.equal(new, ref_new)


def _one_long_series(adata):
    adata.obs["time"] = np.arange(adata.n_obs, dtype=float)


def _twelve_steps(adata):
    adata.obs["series"] = np.repeat([f"s{i:02d}" for i in range(6)], 12)
    adata.obs["label"] = np.repeat(["up", "down"] * 3, 12)
    adata.obs["time"] = np.tile(np.arange(12, dtype=float), 6)


@pytest.mark.parametrize(
    "model_name, change, steps",
    [("vs.h5", _one_long_series, 72), ("model.h5", _twelve_steps, 12)],
    ids=["var-series model on one long series", "obs-series model on longer series"],
)
def test_a_model_applied_to_longer_sequences_than_it_was_trained_on_is_refused(
    model_name, change, steps, trained, tmp_path
):
    """A var-series model (6 time points) given obs-series data laid out as one long series,
    and an obs-series model (6 steps) given series of 12 steps, read steps their linear path
    never saw: refused instead of cut without a word."""
    source = rich_with(tmp_path / "longer.h5ad", change)
    model = copy(trained, model_name, tmp_path)
    expect_input_error(
        tmp_path, [source, model], [f"up to {steps} steps", "at most 6"],
        "predict", source, "--model", model, APPLY, "--output", tmp_path / "o.h5ad",
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# data a training run cannot use


@pytest.mark.parametrize(
    "edit, mentions",
    [
        ("time 1e308", ["time points beyond", "hours or days"]),
        ("class name of 10^6 characters", ["longer than 200 characters", "shorten them"]),
    ],
)
def test_unusable_values_are_input_errors(edit, mentions, tmp_path):
    source = rich_with(tmp_path / "edited.h5ad", DATA_EDITS[edit])
    expect_input_error(
        tmp_path, [source], mentions,
        "classify", source, SERIES, "--label label", TRAIN, "--output", tmp_path / "o.h5ad",
        TRAIN_OUT, tmp_path / "m.h5",
    )  # fmt: skip


def test_long_lists_of_names_stay_short_in_messages(tmp_path):
    """5,000 declared classes, a series subset of unknown names: the error names a few, then
    counts the rest."""
    source = rich_with(tmp_path / "many.h5ad", DATA_EDITS["5,000 classes"])
    subset = ",".join(f"missing_series_{i}" for i in range(3000))
    line = expect_input_error(
        tmp_path, [source], ["not found", "and 2,995 more"],
        "classify", source, SERIES, "--label label", TRAIN, "--output", tmp_path / "o.h5ad",
        TRAIN_OUT, tmp_path / "m.h5", "--series-subset", subset,
    )  # fmt: skip
    assert len(line) < 600


# ---------------------------------------------------------------------------------------------
# parameters without bounds

BOUNDS = [
    "--seed -1", f"--seed {2**70}", "--threads 100000", "--hidden 100000", "--hidden " +
    ",".join(["8"] * 9), "--n-top-genes 100000000000000000000", "--chunk-size 100000000",
    "--batch-size 10000000", "--chunk-rows 100000000000",
]  # fmt: skip


@pytest.mark.parametrize("option", BOUNDS)
def test_parameters_have_upper_bounds(option, trained, tmp_path):
    rich = copy(trained, "rich.h5ad", tmp_path)
    expect_input_error(
        tmp_path, [rich], ["Error: "],
        "classify", rich, SERIES, "--label label", TRAIN, "--output", tmp_path / "o.h5ad",
        TRAIN_OUT, tmp_path / "m.h5", option,
    )  # fmt: skip


@pytest.mark.parametrize(
    "command, option",
    [
        ("forecast", "--horizon 100000"),
        ("forecast", "--ar-lags 100000"),
        ("embed", "--n-latent 100000"),
        ("explain", "--n-steps 100000"),
    ],
)
def test_other_commands_bound_their_sizes(command, option, trained, tmp_path):
    rich, model = copy(trained, "rich.h5ad", tmp_path), copy(trained, "model.h5", tmp_path)
    extra = (
        ["--model", model, APPLY] if command == "explain" else [SERIES, TRAIN, TRAIN_OUT,
                                                                  tmp_path / "m.h5"]
    )  # fmt: skip
    expect_input_error(
        tmp_path, [rich, model], ["is not in the range"],
        command, rich, *extra, "--output", tmp_path / "o.h5ad", option,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# output files: never through a link, never a device, temporaries unpredictable


def test_a_link_planted_at_the_old_temporary_name_is_never_followed(trained, tmp_path):
    rich = copy(trained, "rich.h5ad", tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    # the name the tool used to stage its output under, with this process's id
    (tmp_path / f".out.partial-{os.getpid()}.h5ad").symlink_to(victim)
    result = invoke(
        "classify", rich, SERIES, "--label label", TRAIN, "--output", tmp_path / "out.h5ad",
        TRAIN_OUT, tmp_path / "m.h5",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "precious"


def test_temporary_names_are_new_files_with_unpredictable_names(tmp_path):
    target = tmp_path / "out.h5ad"
    first, second = temporary_name(target), temporary_name(target)
    assert first != second and first.parent == second.parent == tmp_path
    for made in (first, second):
        assert made.is_file() and not made.is_symlink() and made.stat().st_size == 0
        assert made.name.startswith(".out.partial-") and made.suffix == ".h5ad"


@pytest.mark.parametrize("which", ["--output", "--model-out", "--metrics-table", "--report"])
def test_an_output_that_is_a_link_is_refused(which, trained, tmp_path):
    rich = copy(trained, "rich.h5ad", tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    link = tmp_path / "link_out"
    link.symlink_to(victim)
    paths = {
        "--output": tmp_path / "o.h5ad", "--model-out": tmp_path / "m.h5",
        "--metrics-table": tmp_path / "t.tsv", "--report": tmp_path / "r.html",
    }  # fmt: skip
    paths[which] = link
    args = [a for option, path in paths.items() for a in (option, path)]
    expect_input_error(
        tmp_path, [rich, victim], ["exists and is a symbolic link"],
        "classify", rich, SERIES, "--label label", TRAIN, *args,
    )  # fmt: skip


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="no /dev/null here")
@pytest.mark.parametrize("device", ["/dev/null", "/dev/full"])
def test_a_device_is_never_replaced(device, trained, tmp_path):
    if not Path(device).exists():
        pytest.skip(f"no {device} here")
    rich = copy(trained, "rich.h5ad", tmp_path)
    mode = os.stat(device).st_mode
    expect_input_error(
        tmp_path, [rich], ["exists and is not a regular file"],
        "classify", rich, SERIES, "--label label", TRAIN, "--output", device,
        TRAIN_OUT, tmp_path / "m.h5",
    )  # fmt: skip
    assert os.stat(device).st_mode == mode


def test_the_output_directory_is_checked_as_the_system_resolves_it(trained, tmp_path):
    rich = copy(trained, "rich.h5ad", tmp_path)
    expect_input_error(
        tmp_path, [rich], ["'nodir/..' does not exist"],
        "classify", rich, SERIES, "--label label", TRAIN, "--output", "nodir/../o.h5ad",
        TRAIN_OUT, tmp_path / "m.h5",
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# allocation bombs: what the file declares never sizes a read


def test_a_fill_value_x_is_read_within_the_memory_budget(tmp_path, monkeypatch):
    """X declares 300 × 50,000 float32 (60 MB) in a file of a tenth of that. With the budgets
    lowered to 2 MB (fit) and 1 MB (one read), profile training from the file and predict read
    at most that many bytes at a time, whatever ``--chunk-rows`` says, and still run."""
    source = fill_value_x(tmp_path / "fill.h5ad", 300, 50_000)
    assert source.stat().st_size < 300 * 50_000 * 4 / 10
    monkeypatch.setattr(preprocessing, "READ_BUDGET_BYTES", 1 << 20)
    monkeypatch.setattr(streaming, "READ_BUDGET_BYTES", 1 << 20)
    from anndata_rnn import runs

    monkeypatch.setattr(runs, "FIT_BUDGET_BYTES", 2 << 20)
    largest = {"fit": 0, "read": 0}
    original = features.FeatureSource.read_rows
    fitting = {"now": False}
    original_fit = preprocessing.Preprocessor.fit

    def fit(self, *args, **kwargs):
        fitting["now"] = True
        try:
            return original_fit(self, *args, **kwargs)
        finally:
            fitting["now"] = False

    def read_rows(self, rows):
        block = original(self, rows)
        which = "fit" if fitting["now"] else "read"
        largest[which] = max(largest[which], block.nbytes)
        return block

    monkeypatch.setattr(features.FeatureSource, "read_rows", read_rows)
    monkeypatch.setattr(preprocessing.Preprocessor, "fit", fit)
    result = invoke(
        "classify", source, "--layout profile --label label --stream always --chunk-rows 8192",
        "--n-top-genes 200", TRAIN, "--output", tmp_path / "o.h5ad", TRAIN_OUT, tmp_path / "m.h5",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert 0 < largest["fit"] <= 2 << 20 and 0 < largest["read"] <= 1 << 20, largest
    largest.update(fit=0, read=0)
    result = invoke(
        "predict", source, "--model", tmp_path / "m.h5", APPLY, "--output", tmp_path / "p.h5ad"
    )
    assert result.exit_code == 0, result.output
    assert 0 < largest["read"] <= 1 << 20, largest


def test_out_of_memory_names_the_options_to_change(trained, tmp_path, monkeypatch):
    """An allocation that fails (here: torch's CPU allocator refusing) is an input error naming
    the options of the command that lower memory, with no output left."""
    import torch

    rich = copy(trained, "rich.h5ad", tmp_path)

    def refuse(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: "
            "you tried to allocate 22548578304 bytes."
        )

    monkeypatch.setattr(torch.nn.LSTM, "forward", refuse)
    line = expect_input_error(
        tmp_path, [rich], ["out of memory (tried to allocate 22.5 GB)", "--batch-size",
                           "--chunk-rows", "--hidden"],
        "classify", rich, SERIES, "--label label", TRAIN, "--output", tmp_path / "o.h5ad",
        TRAIN_OUT, tmp_path / "m.h5",
    )  # fmt: skip
    assert "report it" not in line

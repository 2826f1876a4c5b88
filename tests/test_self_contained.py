"""Input .h5ad files and model files must be self-contained, or every command refuses them.

A hostile file replaces one dataset (the input's ``X/data``, or one weight of a model) with an
external link to another file, a dataset whose raw storage is another file, a virtual dataset
built from another file, a soft link to nowhere, or a dataset with a non-standard filter. Every
command (classify, forecast, embed, predict, explain, inspect) must refuse it with exit 2, one
line naming the object, no output and the input unchanged; the "secret" file's bytes are never
read into an output. The check itself must visit each object once (hard-linked cycles end) and
accept what anndata writes (compression, chunking, soft links that stay inside the file).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from fixtures_rich import rich_adata
from test_reliability import (
    APPLY,
    SERIES,
    TRAIN,
    expect_failure,
    h5ad,
    invoke,
)

from anndata_rnn.errors import InputError, ModelFileError
from anndata_rnn.h5check import check_self_contained

HOSTILE = ["external link", "external storage", "virtual dataset", "dangling soft link"]
MENTIONS = {
    "external link": "is an external link",
    "external storage": "keeps its data in an external file",
    "virtual dataset": "is a virtual dataset",
    "dangling soft link": "which does not exist",
}


def make_hostile(src: Path, dst: Path, kind: str, target: str, secret: Path) -> Path:
    """Copy ``src`` to ``dst`` with dataset ``target`` replaced by a ``kind`` pointing at
    ``secret`` (a file holding the same values, so only the check can tell)."""
    shutil.copyfile(src, dst)
    with h5py.File(dst, "a") as f:
        data = f[target][()]
        parent, name = target.rsplit("/", 1)
        del f[target]
        group = f[parent]
        if kind == "external link":
            with h5py.File(secret, "w") as s:
                s.create_dataset("x", data=data)
            group[name] = h5py.ExternalLink(str(secret), "/x")
        elif kind == "external storage":
            raw = np.ascontiguousarray(data)
            secret.write_bytes(raw.tobytes())
            group.create_dataset(
                name, shape=raw.shape, dtype=raw.dtype, external=[(str(secret), 0, raw.nbytes)]
            )
        elif kind == "virtual dataset":
            with h5py.File(secret, "w") as s:
                s.create_dataset("x", data=data)
            layout = h5py.VirtualLayout(shape=data.shape, dtype=data.dtype)
            layout[...] = h5py.VirtualSource(str(secret), "x", shape=data.shape)
            group.create_virtual_dataset(name, layout)
        elif kind == "dangling soft link":
            group[name] = h5py.SoftLink("/nowhere/x")
        else:  # pragma: no cover - a typo in a test
            raise ValueError(kind)
    return dst


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A valid input and a valid classifier model trained on it."""
    folder = tmp_path_factory.mktemp("good")
    rich = h5ad(folder, rich_adata(), "rich.h5ad")
    result = invoke(
        "classify", rich, SERIES, "--label label", TRAIN,
        "--output", folder / "classified.h5ad", "--model-out", folder / "model.h5",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return folder


def _args(name: str, good: Path, folder: Path, model: Path) -> list:
    model_out = ["--model-out", folder / "model_out.h5"]
    return {
        "classify": [SERIES, "--label label", TRAIN, *model_out],
        "forecast": [SERIES, TRAIN, *model_out],
        "embed": [SERIES, TRAIN, *model_out],
        "predict": ["--model", model, APPLY],
        "explain": ["--model", model, APPLY, "--n-steps 4"],
    }[name]


@pytest.mark.parametrize("kind", HOSTILE)
@pytest.mark.parametrize("name", ["classify", "forecast", "embed", "predict", "explain", "inspect"])
def test_hostile_input_is_refused_by_every_command(name, kind, good, tmp_path):
    source = make_hostile(good / "rich.h5ad", tmp_path / "input.h5ad", kind, "X/data",
                          tmp_path / "secret.bin")  # fmt: skip
    inputs = [source, tmp_path / "secret.bin"]
    if name == "inspect":
        command = ["inspect", source]
    else:
        model = shutil.copyfile(good / "model.h5", tmp_path / "model.h5")
        inputs.append(model)
        command = [name, source, "--output", tmp_path / "out.h5ad",
                   *_args(name, good, tmp_path, Path(model))]  # fmt: skip
    message = expect_failure(tmp_path, inputs, 2, [MENTIONS[kind], "'/X/data'",
                             "input.h5ad", "self-contained"], *command)  # fmt: skip
    assert "secret" not in message or kind != "dangling soft link"


@pytest.mark.parametrize("kind", HOSTILE)
@pytest.mark.parametrize("name", ["predict", "explain", "inspect"])
def test_hostile_model_is_refused_by_every_command(name, kind, good, tmp_path):
    model = make_hostile(good / "model.h5", tmp_path / "model.h5", kind, "weights/head.bias",
                         tmp_path / "secret.bin")  # fmt: skip
    source = shutil.copyfile(good / "rich.h5ad", tmp_path / "input.h5ad")
    inputs = [source, model, tmp_path / "secret.bin"]
    if name == "inspect":
        command = ["inspect", model]
    else:
        command = [name, source, "--output", tmp_path / "out.h5ad",
                   *_args(name, good, tmp_path, model)]  # fmt: skip
    expect_failure(tmp_path, inputs, 2, [MENTIONS[kind], "'/weights/head.bias'",
                   "model file", "self-contained"], *command)  # fmt: skip


def test_python_api_refuses_too(good, tmp_path):
    import anndata_rnn as ar

    model = make_hostile(good / "model.h5", tmp_path / "model.h5", "external storage",
                         "weights/head.bias", tmp_path / "secret.bin")  # fmt: skip
    with pytest.raises(ModelFileError, match="external file"):
        ar.Model.load(model)
    source = make_hostile(good / "rich.h5ad", tmp_path / "input.h5ad", "external link",
                          "X/data", tmp_path / "secret.h5")  # fmt: skip
    with pytest.raises(InputError, match="external link"):
        ar.io.read_h5ad(source)


def test_non_standard_filter_is_refused(good, tmp_path):
    """A filter HDF5 does not build in would load a plugin library: refused."""
    path = tmp_path / "input.h5ad"
    shutil.copyfile(good / "rich.h5ad", path)
    with h5py.File(path, "a") as f:
        data = f["X/data"][()]
        del f["X/data"]
        # a dataset creation property list carrying an optional unknown filter (id 32123):
        # HDF5 writes it (optional filters may be unavailable) and records it in the file
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((len(data),))
        dcpl.set_filter(32123, h5py.h5z.FLAG_OPTIONAL, ())
        space = h5py.h5s.create_simple(data.shape)
        dsid = h5py.h5d.create(f["X"].id, b"data", h5py.h5t.py_create(data.dtype), space, dcpl=dcpl)
        dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, data)
    with pytest.raises(InputError, match=r"'/X/data' uses the non-standard HDF5 filter 32123"):
        check_self_contained(path)


def test_what_anndata_writes_is_accepted(tmp_path):
    """gzip / lzf compression, chunking, shuffle + fletcher32, soft links inside the file and a
    hard-linked cycle are all fine, and the walk ends."""
    adata = rich_adata()
    for i, compression in enumerate(["gzip", "lzf"]):
        path = tmp_path / f"c{i}.h5ad"
        adata.write_h5ad(path, compression=compression)
        check_self_contained(path)
    with h5py.File(tmp_path / "c0.h5ad", "a") as f:
        f.create_dataset("uns/checked", data=np.arange(100.0), chunks=(10,), shuffle=True,
                         fletcher32=True, compression="gzip")  # fmt: skip
        f.create_dataset("uns/scaled", data=np.arange(100), chunks=(10,), scaleoffset=0)
        f.create_dataset("uns/compact", data=np.arange(3))
        f["uns/alias"] = h5py.SoftLink("/obs/time")
        f["uns/relative"] = h5py.SoftLink("nested/a")  # relative to uns
        f["uns/loop"] = f["/"]  # a hard link back to the root: a cycle
    check_self_contained(tmp_path / "c0.h5ad")


def test_soft_links_that_leave_the_file_or_loop_are_refused(tmp_path):
    # root links are listed in name order: "a_via" (soft) is checked before "z" is entered
    leaving = tmp_path / "leaving.h5"
    with h5py.File(leaving, "w") as f:
        f.create_group("z")
        f["z/out"] = h5py.ExternalLink("elsewhere.h5", "/x")
        f["a_via"] = h5py.SoftLink("/z/out/x")
    with pytest.raises(InputError, match=r"'/a_via' is a soft link to '/z/out/x', which leaves"):
        check_self_contained(leaving)
    looping = tmp_path / "looping.h5"
    with h5py.File(looping, "w") as f:
        f["loop_a"] = h5py.SoftLink("/loop_b")
        f["loop_b"] = h5py.SoftLink("/loop_a")
    with pytest.raises(InputError, match="loop of soft links"):
        check_self_contained(looping)


def test_walk_visits_each_object_once(tmp_path, monkeypatch):
    """Many names for one big group: the group's members are checked once, not once per name."""
    import anndata_rnn.h5check as h5check

    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("data")
        for i in range(50):
            g.create_dataset(f"d{i}", data=np.arange(3))
        for i in range(20):
            f[f"alias{i}"] = g
    calls = []
    original = h5check._check_dataset
    monkeypatch.setattr(h5check, "_check_dataset", lambda d, w: (calls.append(w), original(d, w)))
    check_self_contained(path)
    assert len(calls) == 50

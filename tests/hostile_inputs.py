"""Builders of the hostile and careless inputs a public Galaxy server can receive.

Each builder copies a valid file and changes one thing, the way a stranger's upload could:

* a CSR ``X`` whose ``indices`` point outside the matrix, or whose ``indptr`` decreases or does
  not end at the number of stored values (scipy trusts these arrays: unchecked, they crash the
  process or put values into other cells);
* a dense ``X`` that declares far more rows × genes than the file holds (HDF5 fill values: a
  few kB on disk for a matrix of many GB);
* a model file whose config sizes allocations (``downsample``), names an HDF5 path as its
  output key, lists no genes, or holds statistics no training run writes;
* an AnnData with a time point of 1e308, a class name of 10⁶ characters, or 5,000 classes.

Run as a script to write every case into a folder (for probing the command line by hand)::

    python tests/hostile_inputs.py OUTDIR
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from fixtures_rich import rich_adata  # noqa: E402

#: name -> how the CSR ``X`` group is damaged
SPARSE_DAMAGE = {
    "index equal to n_vars": lambda g: _set(g, "indices", 5, g.attrs["shape"][1]),
    "negative index": lambda g: _set(g, "indices", 5, -3),
    "index far outside": lambda g: _set(g, "indices", 5, 10**6),
    "decreasing indptr": lambda g: _set(g, "indptr", 10, int(g["indptr"][12]) + 5),
    "indptr short of nnz": lambda g: _set(g, "indptr", -1, int(g["indptr"][-1]) - 3),
}


def _set(group: h5py.Group, name: str, position: int, value: int) -> None:
    values = group[name][()]
    values[position] = value
    group[name][...] = values


def damaged_sparse(good: Path, dst: Path, kind: str) -> Path:
    """``good`` (with a CSR ``X``) copied to ``dst`` with ``X`` damaged as ``kind``."""
    shutil.copyfile(good, dst)
    with h5py.File(dst, "a") as f:
        SPARSE_DAMAGE[kind](f["X"])
    return dst


def fill_value_x(dst: Path, n_obs: int, n_vars: int, *, seed: int = 0) -> Path:
    """An .h5ad whose dense ``X`` declares ``n_obs × n_vars`` float32 but stores only a few
    chunks: the rest is the HDF5 fill value (1.0). obs holds a two-class ``label``."""
    rng = np.random.default_rng(seed)
    obs = pd.DataFrame(
        {"label": pd.Categorical(rng.choice(["a", "b"], n_obs))},
        index=[f"c{i}" for i in range(n_obs)],
    )
    var = pd.DataFrame(index=[f"g{i}" for i in range(n_vars)])
    ad.AnnData(obs=obs, var=var).write_h5ad(dst)
    with h5py.File(dst, "a") as f:
        if "X" in f:
            del f["X"]
        x = f.create_dataset(
            "X",
            shape=(n_obs, n_vars),
            dtype="float32",
            chunks=(min(n_obs, 64), min(n_vars, 4096)),
            fillvalue=1.0,
            compression="gzip",
        )
        x.attrs["encoding-type"] = "array"
        x.attrs["encoding-version"] = "0.2.0"
        # a few stored chunks with values, so the genes are not all constant
        x[: min(n_obs, 64), : min(n_vars, 4096)] = rng.poisson(
            3.0, (min(n_obs, 64), min(n_vars, 4096))
        ).astype(np.float32)
    return dst


def edited_model(good: Path, dst: Path, edit) -> Path:
    """``good`` model copied to ``dst`` with ``edit(config, file)`` applied to its config."""
    shutil.copyfile(good, dst)
    with h5py.File(dst, "a") as f:
        config = json.loads(f.attrs["config"])
        edit(config, f)
        f.attrs["config"] = json.dumps(config)
    return dst


def _no_genes(config, f):
    del f["features/names"]
    f.create_dataset("features/names", shape=(0,), dtype=h5py.string_dtype())
    for name in ("mean", "std"):
        del f[f"preprocessing/{name}"]
        f.create_dataset(f"preprocessing/{name}", shape=(0,), dtype="float64")


def _extreme_statistics(config, f):
    f["preprocessing/mean"][0] = 1e300


def _extreme_time(config, f):
    config["preprocessing"]["dt_std"] = 1e300


#: name -> edit of a classifier model trained on the rich fixture (obs-series)
MODEL_EDITS = {
    "downsample 1000000": lambda c, f: c["architecture"].update(downsample=1_000_000),
    "key_added /X": lambda c, f: c["keys"].update(key_added="/X"),
    "key_added .": lambda c, f: c["keys"].update(key_added="."),
    "empty key_added": lambda c, f: c["keys"].update(key_added=""),
    "no genes": _no_genes,
    "extreme mean": _extreme_statistics,
    "extreme time gap": _extreme_time,
}


def rich_with(dst: Path, change) -> Path:
    """The rich fixture (obs-series, sparse X) with ``change(adata)`` applied."""
    adata = rich_adata()
    change(adata)
    adata.write_h5ad(dst)
    return dst


def _huge_time(adata):
    adata.obs["time"] = adata.obs["time"].to_numpy() * 0 + np.arange(adata.n_obs) * 1e306


def _long_class_name(adata):
    name = "x" * 1_000_000
    adata.obs["label"] = pd.Categorical(np.where(adata.obs["label"] == "up", name, "down"))


def _many_classes(adata):
    # one class per series would be legitimate; 5,000 declared levels make the error long
    labels = adata.obs["label"].astype(str).to_numpy().copy()
    labels[: adata.n_obs // 2] = "only"
    categories = ["only", *[f"class_{i:04d}" for i in range(5000)]]
    adata.obs["label"] = pd.Categorical(labels, categories=[*categories, "up", "down"])


#: name -> change of the rich fixture
DATA_EDITS = {
    "time 1e308": _huge_time,
    "class name of 10^6 characters": _long_class_name,
    "5,000 classes": _many_classes,
}


def main(folder: str) -> None:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    good = out / "good.h5ad"
    rich_adata().write_h5ad(good)
    for kind in SPARSE_DAMAGE:
        damaged_sparse(good, out / f"sparse {kind}.h5ad", kind)
    fill_value_x(out / "fill value 100000 x 100000.h5ad", 100_000, 100_000)
    for name, change in DATA_EDITS.items():
        rich_with(out / f"{name}.h5ad", change)
    print(f"wrote the hostile inputs into {out} (model edits need a trained model: see tests)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "hostile_inputs")

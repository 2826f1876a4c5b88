"""Small AnnData fixtures for the reliability tests, and checks that nothing was lost.

``rich_adata`` builds an AnnData that exercises every element an .h5ad can hold (sparse or dense
X, layers, obs/var with categoricals holding NaN, nullable integers and booleans, obsm/varm/obsp/
varp, nested uns, raw) and is still a valid input for the obs-series, var-series and profile
layouts: obs ``series`` / ``time`` / ``label`` (constant per series), var ``var_label``.
``assert_nothing_lost(out, inp)`` checks that every element of ``inp`` is in ``out``, unchanged.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

N_SERIES = 12
N_STEPS = 6
N_GENES = 10


def rich_adata(*, sparse: bool = True, seed: int = 0, counts: bool = True) -> ad.AnnData:
    """12 series × 6 time points × 10 genes, with every kind of AnnData element."""
    rng = np.random.default_rng(seed)
    n_obs = N_SERIES * N_STEPS
    series = np.repeat([f"s{i:02d}" for i in range(N_SERIES)], N_STEPS)
    time = np.tile(np.arange(N_STEPS, dtype=np.float64) * 10.0, N_SERIES)
    label = np.repeat(np.array(["up", "down"] * (N_SERIES // 2)), N_STEPS)
    # class "up": expression rises over time in the first genes; "down": falls
    trend = np.where(label == "up", 1.0, -1.0)[:, None] * (time[:, None] / 50.0)
    base = rng.gamma(2.0, 20.0, size=(n_obs, N_GENES))
    signal = base * np.exp(0.8 * trend * (np.arange(N_GENES) < 4))
    counts_matrix = rng.poisson(signal).astype(np.float32)
    counts_matrix[counts_matrix.sum(axis=1) == 0, 0] = 1.0
    if counts:
        x = counts_matrix
    else:
        x = np.log1p(counts_matrix).astype(np.float32)
    if sparse:
        x = sp.csr_matrix(x)

    obs = pd.DataFrame(index=[f"cell{i:03d}" for i in range(n_obs)])
    obs["series"] = pd.Categorical(series)
    obs["time"] = time
    obs["label"] = pd.Categorical(label)
    obs["batch_nan"] = pd.Categorical(
        rng.choice(["a", "b", None], size=n_obs).tolist(), categories=["a", "b"]
    )
    nullable = pd.array(rng.integers(0, 5, size=n_obs), dtype="Int64")
    nullable[::7] = pd.NA
    obs["n_nullable"] = nullable
    obs["flag"] = rng.random(n_obs) > 0.5
    nullable_bool = pd.array(rng.random(n_obs) > 0.5, dtype="boolean")
    nullable_bool[::5] = pd.NA
    obs["flag_nullable"] = nullable_bool
    obs["score"] = rng.normal(size=n_obs)
    obs["name"] = [f"n{i}" for i in range(n_obs)]

    var = pd.DataFrame(index=[f"gene{i:02d}" for i in range(N_GENES)])
    var["var_label"] = pd.Categorical(["cyclic", "flat"] * (N_GENES // 2))
    var["symbol"] = [f"SYM{i}" for i in range(N_GENES)]
    var["highly_variable"] = np.arange(N_GENES) % 3 == 0
    var["var_nullable"] = pd.array([1, None] * (N_GENES // 2), dtype="Int64")
    var["group_nan"] = pd.Categorical(["x", None] * (N_GENES // 2), categories=["x"])

    adata = ad.AnnData(x, obs=obs, var=var)
    adata.layers["counts"] = counts_matrix.copy()
    adata.layers["sparse_layer"] = sp.csc_matrix(counts_matrix)
    adata.obsm["X_pca"] = rng.normal(size=(n_obs, 3)).astype(np.float32)
    adata.obsm["X_sparse"] = sp.csr_matrix(rng.random((n_obs, 4)) > 0.7, dtype=np.float64)
    adata.varm["PCs"] = rng.normal(size=(N_GENES, 3))
    adata.obsp["distances"] = sp.random(n_obs, n_obs, density=0.05, random_state=1, format="csr")
    adata.varp["corr"] = rng.normal(size=(N_GENES, N_GENES))
    adata.uns["nested"] = {
        "a": 1,
        "b": {"c": np.arange(3), "d": "text", "e": {"f": 2.5}},
        "names": np.array(["x", "y"], dtype=object),
    }
    adata.uns["scalar"] = 3.0
    adata.uns["series_colors"] = np.array(["#ff0000"] * N_SERIES, dtype=object)
    raw = ad.AnnData(
        sp.csr_matrix(rng.poisson(5, size=(n_obs, N_GENES + 2)).astype(np.float32)),
        obs=pd.DataFrame(index=obs.index),
        var=pd.DataFrame(
            {"raw_symbol": [f"R{i}" for i in range(N_GENES + 2)]},
            index=[*var.index, "extra0", "extra1"],
        ),
    )
    adata.raw = raw
    return adata


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _assert_matrix_equal(a, b, what: str) -> None:
    assert sp.issparse(a) == sp.issparse(b), f"{what}: sparse/dense changed"
    if sp.issparse(a):
        assert a.format == b.format, f"{what}: sparse format {b.format} -> {a.format}"
        assert a.dtype == b.dtype, f"{what}: dtype {b.dtype} -> {a.dtype}"
        assert a.shape == b.shape, f"{what}: shape changed"
        a, b = a.toarray(), b.toarray()
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b)
        return
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype, f"{what}: dtype {b.dtype} -> {a.dtype}"
    np.testing.assert_array_equal(a, b, err_msg=what)


def _assert_uns_equal(a, b, what: str) -> None:
    if isinstance(b, dict):
        assert isinstance(a, dict), f"{what}: no longer a dict"
        for key, value in b.items():
            assert key in a, f"{what}[{key!r}] lost"
            _assert_uns_equal(a[key], value, f"{what}[{key!r}]")
    elif isinstance(b, np.ndarray | list | tuple):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=what)
    elif isinstance(b, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b)
    else:
        assert a == b or (a != a and b != b), f"{what}: {b!r} -> {a!r}"


def _assert_frame_kept(out: pd.DataFrame, inp: pd.DataFrame, what: str) -> None:
    assert list(out.index) == list(inp.index), f"{what}: index changed"
    for column in inp.columns:
        assert column in out.columns, f"{what}[{column!r}] lost"
        pd.testing.assert_series_equal(out[column], inp[column], obj=f"{what}[{column!r}]")
    # input columns keep their order, new columns come after them
    assert list(out.columns[: len(inp.columns)]) == list(inp.columns), f"{what}: column order"


def assert_nothing_lost(out: ad.AnnData, inp: ad.AnnData) -> None:
    """Every element of ``inp`` is present and unchanged in ``out`` (which may add keys)."""
    assert out.shape == inp.shape
    _assert_matrix_equal(out.X, inp.X, "X")
    _assert_frame_kept(out.obs, inp.obs, "obs")
    _assert_frame_kept(out.var, inp.var, "var")
    for attr in ("layers", "obsm", "varm", "obsp", "varp"):
        mapping_out, mapping_in = getattr(out, attr), getattr(inp, attr)
        for key in mapping_in.keys():
            assert key in mapping_out, f"{attr}[{key!r}] lost"
            _assert_matrix_equal(mapping_out[key], mapping_in[key], f"{attr}[{key!r}]")
    _assert_uns_equal(dict(out.uns), dict(inp.uns), "uns")
    if inp.raw is None:
        assert out.raw is None
    else:
        assert out.raw is not None, "raw lost"
        _assert_matrix_equal(out.raw.X, inp.raw.X, "raw.X")
        _assert_frame_kept(out.raw.var, inp.raw.var, "raw.var")


# ---------------------------------------------------------------------------------------------
# the same data as written by other anndata writers / settings (encodings on disk)

ENCODINGS = [
    "nullable strings",
    "nullable-string categories",
    "uint sparse indices",
    "CSC X",
    "dense X",
]


def write_encoded(path: Path, encoding: str) -> Path:
    """Write :func:`rich_adata` to ``path`` in one of :data:`ENCODINGS`, with the anndata and
    pandas installed here.

    * "nullable strings": what anndata writes with ``pd.options.future.infer_string`` on (the
      pandas 3 default) and ``allow_write_nullable_strings``: obs/var/raw.var indices and string
      columns as ``nullable-string-array``;
    * "nullable-string categories": as above, plus a categorical whose categories are stored as
      a ``nullable-string-array`` (as newer writers do);
    * "uint sparse indices": CSR X with ``uint32`` indices / indptr (R and Rust writers);
    * "CSC X", "dense X": X as ``csc_matrix`` / a dense array.
    """
    import h5py

    if encoding in ("nullable strings", "nullable-string categories"):
        with (
            pd.option_context("future.infer_string", True),
            ad.settings.override(allow_write_nullable_strings=True),
        ):
            adata = rich_adata()
            adata.obs["kind"] = pd.Categorical(
                np.where(np.arange(adata.n_obs) % 3 == 0, "odd", "even"),
                categories=pd.Index(["even", "odd"], dtype="string"),
            )
            adata.write_h5ad(path)
        with h5py.File(path, "r") as f:
            assert f["obs/_index"].attrs["encoding-type"] == "nullable-string-array"
            assert f["var/symbol"].attrs["encoding-type"] == "nullable-string-array"
        if encoding == "nullable-string categories":
            with h5py.File(path, "a") as f:
                group = f["obs/kind"]
                del group["categories"]
                categories = group.create_group("categories")
                categories.attrs["encoding-type"] = "nullable-string-array"
                categories.attrs["encoding-version"] = "0.1.0"
                values = categories.create_dataset(
                    "values", data=np.array(["even", "odd"], dtype=object),
                    dtype=h5py.string_dtype("utf-8"),
                )  # fmt: skip
                mask = categories.create_dataset("mask", data=np.zeros(2, dtype=bool))
                for item, kind in ((values, "string-array"), (mask, "array")):
                    item.attrs["encoding-type"] = kind
                    item.attrs["encoding-version"] = "0.2.0"
        return path
    adata = rich_adata(sparse=encoding != "dense X")
    if encoding == "CSC X":
        adata.X = sp.csc_matrix(adata.X)
    adata.write_h5ad(path)
    if encoding == "uint sparse indices":
        with h5py.File(path, "a") as f:
            for name in ("indices", "indptr"):
                values = f["X"][name][()]
                del f["X"][name]
                f["X"].create_dataset(name, data=values.astype(np.uint32))
    return path


def h5_differences(inp, out) -> list[str]:
    """Every HDF5 object of ``inp`` must be in ``out`` with the same attributes, dtype and
    values; the one change allowed is new columns appended to a dataframe's column order."""
    import h5py

    problems: list[str] = []
    with h5py.File(inp, "r") as a, h5py.File(out, "r") as b:

        def visit(name, obj):
            if name not in b:
                problems.append(f"{name} lost")
                return
            other = b[name]
            for attr, value in obj.attrs.items():
                if attr not in other.attrs:
                    problems.append(f"{name}: attribute {attr} lost")
                    continue
                new = np.asarray(other.attrs[attr])
                old = np.asarray(value)
                if attr == "column-order" and new.ndim == 1 and old.ndim == 1:
                    new = new[: len(old)]  # columns we add come after the input's
                if new.shape != old.shape or not np.array_equal(new, old):
                    problems.append(f"{name}: attribute {attr} {value!r} -> {other.attrs[attr]!r}")
            if isinstance(obj, h5py.Dataset):
                if not isinstance(other, h5py.Dataset) or other.dtype != obj.dtype:
                    problems.append(f"{name}: {obj.dtype} -> {getattr(other, 'dtype', 'group')}")
                elif other.shape != obj.shape or not np.array_equal(
                    other[()], obj[()], equal_nan=obj.dtype.kind == "f"
                ):
                    problems.append(f"{name}: values changed")

        a.visititems(visit)
    return problems


def new_elements(inp, out) -> dict[str, str]:
    """HDF5 paths present in ``out`` but not ``inp``, with their encoding-type."""
    import h5py

    found: dict[str, str] = {}
    with h5py.File(inp, "r") as a, h5py.File(out, "r") as b:

        def visit(name, obj):
            if name not in a:
                found[name] = str(obj.attrs.get("encoding-type", ""))

        b.visititems(visit)
    return found

"""Model files are safe: loading never unpickles, and damaged files give one clean error.

* hostile files carrying pickle payloads (opaque attributes, pickled object arrays) are refused
  without running anything (a marker file the payload would create stays absent);
* a fuzz run of 200 corrupted model files (flipped bytes, truncation, wrong dtypes / shapes /
  attribute types, missing datasets, garbage or hostile JSON) gives ``ModelFileError`` or a model
  that applies cleanly, never another exception, a crash, a hang or a huge allocation. The fuzz
  loop runs in a child process so that a crash or a hang is reported, not suffered.
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from fixtures_rich import rich_adata

import anndata_rnn as ar
from anndata_rnn import ModelFileError
from anndata_rnn.model import FORMAT_NAME, FORMAT_VERSION

torch.set_num_threads(1)

N_FUZZ = 200


class _Payload:
    """Unpickling this object creates ``path`` (it would run code)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny obs-series classifier (hidden 8, 2 epochs) saved to disk, and its data."""
    folder = tmp_path_factory.mktemp("model")
    adata = rich_adata(sparse=False)
    model = ar.tl.classify(
        adata,
        label_key="label",
        series_key="series",
        time_key="time",
        hidden="8",
        max_epochs=2,
        device="cpu",
        quiet=True,
    )
    path = folder / "model.h5"
    model.save(path)
    data = folder / "data.h5ad"
    rich_adata(sparse=False).write_h5ad(data)
    return path, data


def _copy(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    return dst


def _config(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["config"])


# -- sanity ------------------------------------------------------------------------------------


def test_model_round_trip(trained):
    path, _ = trained
    model = ar.Model.load(path)
    assert model.task == "classify" and model.layout == "obs-series"
    assert model.classes == ["down", "up"]
    config = _config(path)
    assert config["format_version"] == FORMAT_VERSION
    # saving the loaded model again gives the same weights
    again = path.with_name("again.h5")
    model.save(again)
    with h5py.File(path, "r") as a, h5py.File(again, "r") as b:
        for name in a["weights"]:
            np.testing.assert_array_equal(a["weights"][name][()], b["weights"][name][()])


def _with_config(src: Path, dst: Path, change) -> Path:
    """A copy of the model file ``src`` whose JSON config ``change(config)`` edited in place."""
    _copy(src, dst)
    with h5py.File(dst, "r+") as f:
        config = json.loads(f.attrs["config"])
        change(config)
        f.attrs["config"] = json.dumps(config)
    return dst


def test_the_layout_is_stored_once(trained):
    config = _config(trained[0])
    assert config["layout"] == "obs-series"
    assert "layout" not in config["keys"] and "layout" not in config["preprocessing"]


def test_a_file_with_the_three_layout_copies_still_loads(trained, tmp_path):
    """Files written before the layout was stored once (0.3.0 development builds and 0.2) hold
    it in ``config["keys"]`` and ``config["preprocessing"]`` too: they load and apply as the
    new file does, a copy that disagrees is refused, and saving the model again stores it once."""
    path, data = trained

    def three_copies(layout):
        def change(config):
            config["keys"]["layout"] = layout
            config["preprocessing"]["layout"] = layout

        return change

    old = _with_config(path, tmp_path / "old.h5", three_copies("obs-series"))
    assert _config(old)["keys"]["layout"] == "obs-series"
    model = ar.Model.load(old)
    assert model.layout == "obs-series" and model.preprocessor.layout == "obs-series"
    adata = anndata.read_h5ad(data)
    from_old = ar.tl.predict(adata, model, device="cpu", quiet=True, copy=True)
    from_new = ar.tl.predict(adata, str(path), device="cpu", quiet=True, copy=True)
    assert from_old.obs.shape[1] > adata.obs.shape[1]
    pd.testing.assert_frame_equal(from_old.obs, from_new.obs)
    assert from_old.obsm.keys() == from_new.obsm.keys()
    for name in set(from_new.obsm) - set(adata.obsm):  # (the fixture's own include sparse ones)
        np.testing.assert_array_equal(from_old.obsm[name], from_new.obsm[name])
    model.save(tmp_path / "again.h5")
    config = _config(tmp_path / "again.h5")
    assert "layout" not in config["keys"] and "layout" not in config["preprocessing"]

    for part in ("keys", "preprocessing"):
        bad = _with_config(
            old, tmp_path / f"bad_{part}.h5", lambda c, p=part: c[p].update(layout="profile")
        )
        with pytest.raises(ModelFileError, match=f"{part}/layout"):
            ar.Model.load(bad)


def test_the_tools_take_a_model_a_path_or_a_pathlike(trained):
    """``tl.predict`` / ``tl.explain`` load a model through ``model.load_model``: a ``str`` or a
    ``pathlib.Path`` of a model file, or the ``Model`` itself; anything else is one clear line."""
    path, data = trained
    adata = anndata.read_h5ad(data)
    outputs = [
        ar.tl.predict(adata, model, device="cpu", quiet=True, copy=True).obs["rnn_pred"]
        for model in (str(path), path, ar.Model.load(path))
    ]
    pd.testing.assert_series_equal(outputs[0], outputs[1])
    pd.testing.assert_series_equal(outputs[0], outputs[2])
    for tool in (ar.tl.predict, ar.tl.explain):
        with pytest.raises(ar.InputError, match=r"^model must be .* not a dict$"):
            tool(adata, {"task": "classify"}, device="cpu", quiet=True, copy=True)
    with pytest.raises(ModelFileError, match="does not exist"):
        ar.tl.predict(adata, path.with_name("absent.h5"), device="cpu", quiet=True, copy=True)


def test_loader_source_never_unpickles():
    """The model module's code imports no pickle and calls no torch.load / np.load / eval."""
    import ast
    import inspect

    import anndata_rnn.model as model_module

    tree = ast.parse(inspect.getsource(model_module))
    imported, called = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
        elif isinstance(node, ast.Call):
            called.add(ast.unparse(node.func))
        elif isinstance(node, ast.keyword) and node.arg == "allow_pickle":
            called.add("allow_pickle")
    assert not imported & {"pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}
    banned = {"torch.load", "np.load", "numpy.load", "eval", "exec", "allow_pickle"}
    assert not called & banned, called & banned


# -- hostile files -----------------------------------------------------------------------------


def _pickle_void(marker: Path) -> np.void:
    return np.void(pickle.dumps(_Payload(str(marker))))


def _hostile_files(folder: Path, good: Path, marker: Path) -> dict[str, Path]:
    """Model-like files whose attributes or datasets carry a pickle payload."""
    payload = _pickle_void(marker)
    files = {}

    # 1. the config attribute is an opaque blob holding a pickle
    path = files["opaque config attr"] = _copy(good, folder / "opaque_config.h5")
    with h5py.File(path, "a") as f:
        del f.attrs["config"]
        f.attrs["config"] = payload

    # 2. format / format_version are pickles
    path = files["opaque format attrs"] = _copy(good, folder / "opaque_format.h5")
    with h5py.File(path, "a") as f:
        f.attrs["format"] = payload
        f.attrs["format_version"] = payload

    # 3. the config text is the pickle's bytes (as a byte string)
    path = files["pickle bytes as config"] = _copy(good, folder / "bytes_config.h5")
    with h5py.File(path, "a") as f:
        f.attrs["config"] = np.bytes_(pickle.dumps(_Payload(str(marker))))

    # 4. pickled object arrays in place of the string and numeric datasets
    blob = np.void(pickle.dumps(np.array([_Payload(str(marker))], dtype=object)))
    for name in ("features/names", "arrays/classes", "preprocessing/mean"):
        stem = name.replace("/", "_")
        path = files[f"pickled object array in {name}"] = _copy(good, folder / f"{stem}.h5")
        with h5py.File(path, "a") as f:
            del f[name]
            f.create_dataset(name, data=blob)
    path = files["pickled object array as weight"] = _copy(good, folder / "weight_pickle.h5")
    with h5py.File(path, "a") as f:
        name = next(iter(f["weights"]))
        del f["weights"][name]
        f["weights"].create_dataset(name, data=np.array([blob] * 4))

    # 5. a file made only of pickles, with a plausible header
    path = files["pickle-only model"] = folder / "only_pickle.h5"
    with h5py.File(path, "w") as f:
        f.attrs["format"] = FORMAT_NAME
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["config"] = payload
        f.create_dataset("model", data=payload)
    return files


def test_hostile_pickle_payloads_are_refused_without_running(trained, tmp_path):
    good, _ = trained
    marker = tmp_path / "PWNED"
    # the payload works: unpickling it does create the marker
    pickle.loads(_pickle_void(marker).tobytes())
    assert marker.exists()
    marker.unlink()

    for what, path in _hostile_files(tmp_path, good, marker).items():
        with pytest.raises(ModelFileError) as info:
            ar.Model.load(path)
        assert str(path.name) in str(info.value), what
        assert len(str(info.value).splitlines()) == 1, what
        assert not marker.exists(), f"{what}: loading ran the pickle payload"


def test_opaque_extra_attribute_is_never_unpickled(trained, tmp_path):
    """An otherwise valid model with a pickle in an extra attribute: loads, runs nothing."""
    good, _ = trained
    marker = tmp_path / "PWNED"
    path = _copy(good, tmp_path / "extra.h5")
    with h5py.File(path, "a") as f:
        f.attrs["extra"] = _pickle_void(marker)
        f["weights"].attrs["extra"] = _pickle_void(marker)
    model = ar.Model.load(path)
    assert model.task == "classify"
    assert not marker.exists()


def test_hostile_files_through_the_cli(trained, tmp_path):
    from click.testing import CliRunner

    from anndata_rnn.cli import main

    good, data = trained
    marker = tmp_path / "PWNED"
    files = _hostile_files(tmp_path, good, marker)
    runner = CliRunner()
    for what, path in list(files.items())[:3]:
        output = tmp_path / "out.h5ad"
        result = runner.invoke(
            main, ["predict", str(data), "--model", str(path), "--output", str(output), "--quiet"]
        )
        assert result.exit_code == 2, (what, result.output)
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: "), what
        assert not output.exists()
        result = runner.invoke(main, ["inspect", str(path)])
        assert result.exit_code == 2, (what, result.output)
        assert not marker.exists(), what


def test_huge_sizes_are_refused_before_allocating(trained, tmp_path):
    """A config or dataset announcing big sizes is refused quickly, without allocating them.

    (hidden 12000 would be a 2.3 GB LSTM: loading must check the file holds those weights before
    building the network.)
    """
    good, _ = trained
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    config = _config(good)
    config["architecture"]["hidden"] = [12_000]
    cases = {}
    path = cases["hidden 12000, small weights"] = _copy(good, tmp_path / "hidden.h5")
    with h5py.File(path, "a") as f:
        f.attrs["config"] = json.dumps(config)
    path = cases["hidden 12000, unallocated weights"] = _copy(good, tmp_path / "unallocated.h5")
    with h5py.File(path, "a") as f:
        f.attrs["config"] = json.dumps(config)
        weights = f["weights"]
        # datasets of the announced shapes, declared but never written: no bytes in the file
        for name, shape in {
            "encoder.layers.0.weight_ih_l0": (48_000, 11),
            "encoder.layers.0.weight_hh_l0": (48_000, 12_000),
            "encoder.layers.0.bias_ih_l0": (48_000,),
            "encoder.layers.0.bias_hh_l0": (48_000,),
            "head.weight": (2, 12_000),
        }.items():
            del weights[name]
            weights.create_dataset(name, shape=shape, dtype="f4", chunks=True)
    path = cases["unallocated 10**9 strings"] = _copy(good, tmp_path / "strings.h5")
    with h5py.File(path, "a") as f:
        del f["features/names"]
        f.create_dataset(
            "features/names", shape=(10**9,), dtype=h5py.string_dtype(), chunks=(1024,)
        )
    for what, path in cases.items():
        start = time.perf_counter()
        with pytest.raises(ModelFileError):
            ar.Model.load(path)
        assert time.perf_counter() - start < 5, f"{what}: took too long"
    # the peak memory of this process did not grow by the announced gigabytes
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_kb
    assert grown_kb < 500_000, f"loading allocated {grown_kb / 1e6:.1f} GB"


# -- fuzz ----------------------------------------------------------------------------------------

HOSTILE_VALUES = [
    None,
    True,
    -1,
    0,
    10**12,
    1.5,
    "nan",
    "",
    "garbage",
    [],
    [1, "a", None],
    {},
    {"nested": {"deeper": [1, 2]}},
    [10**6],
    ["lstm"] * 3,
]


def _json_paths(value, prefix=()):
    """Every path into a JSON tree (dict keys and list positions)."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _json_paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _json_paths(item, (*prefix, i))


def _set_path(tree, path, value):
    if not path:
        return value
    node = tree
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return tree


def _delete_path(tree, path):
    node = tree
    for step in path[:-1]:
        node = node[step]
    del node[path[-1]]
    return tree


def _datasets(f: h5py.File) -> list[str]:
    names = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return sorted(names)


def _mutate(good: Path, path: Path, rng: np.random.Generator) -> str:
    """Write a corrupted copy of ``good`` to ``path``; return what was done."""
    raw = good.read_bytes()
    kind = rng.choice(
        [
            "flip",
            "truncate",
            "zero_block",
            "delete_dataset",
            "wrong_dtype",
            "wrong_shape",
            "dataset_to_group",
            "attr_type",
            "json_garbage",
            "json_value",
            "json_delete",
            "non_finite",
            "extra_weight",
        ]
    )
    if kind == "flip":
        data = bytearray(raw)
        for position in rng.integers(0, len(data), size=rng.integers(1, 32)):
            data[position] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(data))
        return kind
    if kind == "truncate":
        path.write_bytes(raw[: int(rng.integers(0, len(raw)))])
        return kind
    if kind == "zero_block":
        data = bytearray(raw)
        start = int(rng.integers(0, len(data)))
        size = int(rng.integers(16, 4096))
        data[start : start + size] = bytes(len(data[start : start + size]))
        path.write_bytes(bytes(data))
        return kind

    shutil.copyfile(good, path)
    with h5py.File(path, "a") as f:
        names = _datasets(f)
        name = names[int(rng.integers(len(names)))]
        if kind == "delete_dataset":
            del f[name]
        elif kind == "wrong_dtype":
            old = f[name]
            shape = old.shape
            del f[name]
            choice = int(rng.integers(6))
            if choice == 0:
                f.create_dataset(
                    name, data=np.full(shape, "text", dtype=object), dtype=h5py.string_dtype()
                )
            elif choice == 1:
                f.create_dataset(name, data=np.ones(shape, dtype=np.complex64))
            elif choice == 2:
                f.create_dataset(name, data=np.ones(shape, dtype=bool))
            elif choice == 3:
                f.create_dataset(name, data=np.zeros(shape, dtype=[("a", "i4"), ("b", "f8")]))
            elif choice == 4:
                f.create_dataset(
                    name, data=np.array([np.void(b"\x00" * 8)] * max(1, int(np.prod(shape))))
                )
            else:
                f.create_dataset(name, data=np.ones(shape, dtype=np.int8))
        elif kind == "wrong_shape":
            old = f[name][()]
            del f[name]
            choice = int(rng.integers(4))
            if choice == 0:
                new = np.asarray(old).reshape(-1)[:-1] if np.size(old) else np.zeros(3)
            elif choice == 1:
                new = np.asarray(old)[..., None]
            elif choice == 2:
                new = np.asarray(old).reshape(-1)[0] if np.size(old) else np.float32(1)
            else:
                new = np.zeros((0,) * max(1, np.ndim(old)), dtype=np.asarray(old).dtype)
            if new.dtype == object:
                f.create_dataset(name, data=new, dtype=h5py.string_dtype())
            else:
                f.create_dataset(name, data=new)
        elif kind == "dataset_to_group":
            del f[name]
            f.create_group(name).create_dataset("inner", data=np.zeros(3))
        elif kind == "attr_type":
            attr = ["format", "format_version", "config"][int(rng.integers(3))]
            value = [
                np.int64(7),
                np.float64(1.0),
                "1",
                np.arange(3),
                np.void(b"\x80\x04K\x01."),
                np.bytes_(b"\xff\xfe"),
                np.array(["a", "b"], dtype=object),
                np.int64(-1),
                np.int64(2**40),
            ][int(rng.integers(9))]
            del f.attrs[attr]
            if isinstance(value, np.ndarray) and value.dtype == object:
                f.attrs.create(attr, value, dtype=h5py.string_dtype())
            else:
                f.attrs[attr] = value
        else:
            config = json.loads(f.attrs["config"])
            if kind == "json_garbage":
                text = json.dumps(config)
                choice = int(rng.integers(4))
                if choice == 0:
                    text = text[: int(rng.integers(len(text)))]
                elif choice == 1:
                    text = rng.bytes(int(rng.integers(1, 200))).decode("latin-1").replace("\0", "?")
                elif choice == 2:
                    text = "[" * 100_000 + "]" * 100_000
                else:
                    text = json.dumps([config])
                f.attrs["config"] = text
            elif kind == "json_value":
                paths = list(_json_paths(config))[1:]
                where = paths[int(rng.integers(len(paths)))]
                value = HOSTILE_VALUES[int(rng.integers(len(HOSTILE_VALUES)))]
                f.attrs["config"] = json.dumps(_set_path(config, where, value))
                return f"{kind} {'/'.join(map(str, where))}={value!r}"[:120]
            elif kind == "json_delete":
                paths = [p for p in _json_paths(config) if p and isinstance(p[-1], str)]
                where = paths[int(rng.integers(len(paths)))]
                f.attrs["config"] = json.dumps(_delete_path(config, where))
                return f"{kind} {'/'.join(map(str, where))}"
            elif kind == "non_finite":
                weights = sorted(f["weights"])
                target = f"weights/{weights[int(rng.integers(len(weights)))]}"
                values = f[target][()]
                values.reshape(-1)[0] = [np.nan, np.inf, -np.inf][int(rng.integers(3))]
                f[target][...] = values
                return f"{kind} {target}"
            elif kind == "extra_weight":
                f["weights"].create_dataset("injected", data=np.zeros(4, dtype=np.float32))
    return f"{kind} {name}"


CHILD = r"""
import json, signal, sys, faulthandler, warnings
from pathlib import Path
faulthandler.enable()
warnings.simplefilter("ignore")
import torch
torch.set_num_threads(1)
import anndata as ad
import anndata_rnn as ar
from anndata_rnn.errors import AnnDataRNNError, ModelFileError

folder = Path(sys.argv[1])
data = ad.read_h5ad(folder / "data.h5ad")

def alarm(signum, frame):
    raise TimeoutError("hang")

signal.signal(signal.SIGALRM, alarm)
for path in sorted(folder.glob("fuzz_*.h5")):
    signal.alarm(20)
    try:
        try:
            model = ar.Model.load(path)
        except ModelFileError as exc:
            outcome = "refused" if len(str(exc).splitlines()) == 1 else "BAD multi-line message"
        else:
            try:
                ar.tl.predict(data.copy(), model, device="cpu", quiet=True)
                outcome = "loaded, applied"
            except AnnDataRNNError:
                outcome = "loaded, refused at apply"
    except BaseException as exc:
        outcome = f"BAD {type(exc).__name__}: {str(exc)[:200]}"
    signal.alarm(0)
    print(json.dumps({"file": path.name, "outcome": outcome}), flush=True)
"""


def test_fuzz_corrupted_model_files(trained, tmp_path):
    good, data = trained
    rng = np.random.default_rng(20240611)
    done = {}
    for i in range(N_FUZZ):
        path = tmp_path / f"fuzz_{i:03d}.h5"
        done[path.name] = _mutate(good, path, rng)
    shutil.copyfile(data, tmp_path / "data.h5ad")

    start = time.perf_counter()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    elapsed = time.perf_counter() - start
    results = [json.loads(line) for line in child.stdout.splitlines() if line.startswith("{")]
    seen = {r["file"] for r in results}
    crashed = sorted(set(done) - seen)
    assert child.returncode == 0, (
        f"the loader crashed (exit {child.returncode}) on {crashed[:1]} "
        f"({done.get(crashed[0]) if crashed else ''}): {child.stderr[-2000:]}"
    )
    assert not crashed, crashed
    bad = [
        f"{r['file']} ({done[r['file']]}): {r['outcome']}"
        for r in results
        if r["outcome"].startswith("BAD")
    ]
    assert not bad, "\n".join(bad)
    counts = {}
    for r in results:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    print(f"fuzz: {counts} in {elapsed:.1f} s")
    # most corruptions are structural and must be refused at load time
    assert counts.get("refused", 0) >= 0.6 * N_FUZZ, counts

"""The model file: one HDF5 file, weights as datasets, a JSON config; never pickle.

Layout of the file (readable from R with rhdf5)::

    /                 attrs: format="anndata-rnn-model", format_version=1, config=<JSON string>
    /weights/<name>   one float dataset per tensor of the network's state_dict
    /features/names   the input features (genes) in the model's order (strings)
    /preprocessing/mean, /preprocessing/std   training statistics per feature
    /arrays/<name>    task-specific arrays (e.g. class names)

Loading reads attributes and numeric/string datasets only: h5py never unpickles, and every
value is checked (type, shape, dtype) before use, so a hostile file can only be refused.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import h5py
import numpy as np
import torch

from .errors import ModelFileError
from .networks import build_module
from .preprocessing import Preprocessor

FORMAT_NAME = "anndata-rnn-model"
FORMAT_VERSION = 1

_STRING = h5py.string_dtype("utf-8")


class Model:
    """A trained anndata-rnn model: config + fitted preprocessing + network.

    Parameters
    ----------
    config
        JSON-serialisable description (task, layout, keys, architecture, classes, metrics, ...).
    preprocessor
        Preprocessing fitted on the training split.
    module
        The torch network.
    arrays
        Extra task-specific arrays stored beside the weights.
    """

    def __init__(
        self,
        config: dict,
        preprocessor: Preprocessor,
        module: torch.nn.Module,
        arrays: dict[str, np.ndarray] | None = None,
    ):
        self.config = config
        self.preprocessor = preprocessor
        self.module = module
        self.arrays = dict(arrays or {})

    # -- convenience -------------------------------------------------------------------------
    @property
    def task(self) -> str:
        return self.config["task"]

    @property
    def layout(self) -> str:
        return self.config["layout"]

    @property
    def classes(self) -> list[str]:
        return list(self.config.get("classes", []))

    @property
    def features(self) -> np.ndarray:
        return self.preprocessor.features

    def __repr__(self) -> str:
        arch = self.config.get("architecture", {})
        return (
            f"Model(task={self.task!r}, layout={self.layout!r}, cell={arch.get('cell')!r}, "
            f"hidden={arch.get('hidden')}, features={len(self.features)})"
        )

    # -- saving --------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the model to ``path`` (HDF5). Written to a temporary name, then renamed."""
        path = Path(path)
        config = dict(self.config)
        config["format"] = FORMAT_NAME
        config["format_version"] = FORMAT_VERSION
        config["preprocessing"] = self.preprocessor.config()
        text = json.dumps(_plain(config), allow_nan=False)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with h5py.File(tmp, "w") as f:
                f.attrs["format"] = FORMAT_NAME
                f.attrs["format_version"] = FORMAT_VERSION
                f.attrs["config"] = text
                weights = f.create_group("weights")
                for name, tensor in self.module.state_dict().items():
                    weights.create_dataset(name, data=tensor.detach().cpu().numpy())
                arrays = self.preprocessor.arrays()
                f.create_dataset(
                    "features/names",
                    data=np.asarray(arrays["features"], dtype=object),
                    dtype=_STRING,
                )
                f.create_dataset("preprocessing/mean", data=arrays["mean"])
                f.create_dataset("preprocessing/std", data=arrays["std"])
                for name, value in self.arrays.items():
                    value = np.asarray(value)
                    if value.dtype == object:
                        f.create_dataset(f"arrays/{name}", data=value, dtype=_STRING)
                    else:
                        f.create_dataset(f"arrays/{name}", data=value)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike) -> Model:
        """Read a model file; refuses anything that is not a valid anndata-rnn model."""
        path = Path(path)
        if not path.exists():
            raise ModelFileError(f"model file {str(path)!r} does not exist")
        try:
            handle = h5py.File(path, "r")
        except Exception:
            raise ModelFileError(
                f"{str(path)!r} is not an HDF5 file or is truncated: give a model file written "
                "by anndata-rnn (--model-out)"
            ) from None
        try:
            with handle as f:
                return cls._read(f, path)
        except ModelFileError:
            raise
        except Exception as exc:  # any malformed content ends here, with a clean message
            raise ModelFileError(
                f"{str(path)!r} is a damaged anndata-rnn model file ({type(exc).__name__}: "
                f"{str(exc)[:120]}): retrain or restore the file"
            ) from None

    @classmethod
    def _read(cls, f: h5py.File, path: Path) -> Model:
        where = repr(str(path))
        if f.attrs.get("encoding-type", None) is not None or "obs" in f:
            raise ModelFileError(
                f"{where} is an AnnData (.h5ad) file, not a model file: give the file written by "
                "--model-out"
            )
        fmt = _attr_str(f, "format", where)
        if fmt != FORMAT_NAME:
            raise ModelFileError(f"{where} is an HDF5 file but not an anndata-rnn model")
        version = f.attrs.get("format_version")
        if not isinstance(version, int | np.integer):
            raise ModelFileError(f"{where} has no valid format_version attribute")
        if int(version) > FORMAT_VERSION or int(version) < 1:
            raise ModelFileError(
                f"{where} has model format version {int(version)}, this anndata-rnn reads "
                f"version {FORMAT_VERSION}: use the anndata-rnn version that wrote it"
            )
        config = json.loads(_attr_str(f, "config", where))
        if not isinstance(config, dict) or "task" not in config or "preprocessing" not in config:
            raise ModelFileError(f"{where} has an incomplete config (task/preprocessing missing)")
        features = _read_strings(f, "features/names", where)
        # var-series: every gene is one sequence of a single feature, so one mean/std
        n_stats = 1 if config.get("layout") == "var-series" else len(features)
        mean = _read_float(f, "preprocessing/mean", where, (n_stats,))
        std = _read_float(f, "preprocessing/std", where, (n_stats,))
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise ModelFileError(f"{where} has invalid preprocessing statistics")
        preprocessor = Preprocessor.from_stored(
            config["preprocessing"], {"features": features, "mean": mean, "std": std}
        )
        n_inputs = config.get("n_inputs")
        if not isinstance(n_inputs, int) or not 0 < n_inputs < 10_000_000:
            raise ModelFileError(f"{where} has an invalid n_inputs in its config")
        module = build_module(config["task"], n_inputs, config)
        state = {}
        for name, expected in module.state_dict().items():
            value = _read_float(f, f"weights/{name}", where, tuple(expected.shape))
            if not np.isfinite(value).all():
                raise ModelFileError(f"{where}: weight {name!r} holds non-finite values")
            state[name] = torch.from_numpy(np.array(value, dtype=np.float32))
        extra = set(f["weights"].keys()) - set(state)
        if extra:
            raise ModelFileError(f"{where} has unexpected weights: {sorted(extra)[:3]}")
        module.load_state_dict(state)
        module.eval()
        arrays = {}
        if "arrays" in f:
            for name, item in f["arrays"].items():
                if not isinstance(item, h5py.Dataset):
                    raise ModelFileError(f"{where}: arrays/{name} is not a dataset")
                if item.dtype.kind in "OS":
                    arrays[name] = _read_strings(f, f"arrays/{name}", where)
                elif item.dtype.kind in "fiub":
                    arrays[name] = item[()]
                else:
                    raise ModelFileError(
                        f"{where}: arrays/{name} has unsupported type {item.dtype}"
                    )
        return cls(config, preprocessor, module, arrays)


def _attr_str(f: h5py.File, name: str, where: str) -> str:
    value = f.attrs.get(name)
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if not isinstance(value, str):
        raise ModelFileError(f"{where} has no text attribute {name!r}: not an anndata-rnn model")
    return value


def _read_strings(f: h5py.File, name: str, where: str) -> np.ndarray:
    item = f.get(name)
    if not isinstance(item, h5py.Dataset) or item.dtype.kind not in "OS" or item.ndim != 1:
        raise ModelFileError(f"{where} lacks the string dataset {name!r}")
    return np.asarray(item.asstr()[()], dtype=object)


def _read_float(f: h5py.File, name: str, where: str, shape: tuple) -> np.ndarray:
    item = f.get(name)
    if not isinstance(item, h5py.Dataset) or item.dtype.kind not in "fi":
        raise ModelFileError(f"{where} lacks the numeric dataset {name!r}")
    if tuple(item.shape) != tuple(shape):
        raise ModelFileError(
            f"{where}: {name!r} has shape {tuple(item.shape)}, expected {tuple(shape)}"
        )
    return np.asarray(item[()], dtype=np.float64)


def _plain(value):
    """numpy scalars/arrays -> JSON-friendly python values; NaN -> None is not allowed in uns."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value

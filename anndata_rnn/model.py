"""The model file: one HDF5 file, weights as datasets, a JSON config; never pickle.

Layout of the file (readable from R with rhdf5)::

    /                 attrs: format="anndata-rnn-model", format_version=1, config=<JSON string>
                      (the layout once, as config["layout"]: files written before hold copies
                      in config["keys"] and config["preprocessing"], checked equal and dropped)
    /weights/<name>   one float dataset per tensor of the network's state_dict
    /features/names   the input features (genes) in the model's order (strings)
    /preprocessing/mean, /preprocessing/std   training statistics per feature
    /arrays/<name>    task-specific arrays (e.g. class names)

Loading reads attributes and numeric/string datasets only: h5py never unpickles, and every
value is checked (type, shape, dtype) before use, so a hostile file can only be refused. The file
must be self-contained (no external links, external storage, virtual datasets or plugin filters;
see :mod:`.h5check`), so a weight can never hold the bytes of another file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import warnings
from pathlib import Path

import h5py
import numpy as np
import torch

from .errors import InputError, ModelFileError
from .features import FeatureSource
from .h5check import check_self_contained
from .io import atomic_path
from .networks import CELLS, TASK_MODULES, build_module
from .preprocessing import IMPUTATION_CHOICES, SCALE_CHOICES, Preprocessor
from .sequences import LAYOUTS, Layout, check_output_key

FORMAT_NAME = "anndata-rnn-model"
FORMAT_VERSION = 1

_STRING = h5py.string_dtype("utf-8")

log = logging.getLogger("anndata_rnn")


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
    def save(self, path: str | os.PathLike, *, atomic: bool = True) -> None:
        """Write the model to ``path`` (HDF5): to a temporary name, then renamed, unless the
        caller already stages ``path`` (``atomic=False``)."""
        path = Path(path)
        config = dict(self.config)
        config["format"] = FORMAT_NAME
        config["format_version"] = FORMAT_VERSION
        config["preprocessing"] = self.preprocessor.config()
        text = json.dumps(_plain(config), allow_nan=False)
        staged = atomic_path(path) if atomic else contextlib.nullcontext(path)
        with staged as target, h5py.File(target, "w") as f:
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
                # before reading anything: a weight must not come from another file
                check_self_contained(path, error=ModelFileError, what="model file", handle=f)
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
        _check_config(config, where)
        _drop_layout_copies(config)
        features = _read_strings(f, "features/names", where)
        # var-series: every gene is one sequence of a single feature, so one mean/std
        n_stats = 1 if Layout.of(config["layout"]).one_feature else len(features)
        mean = _read_float(f, "preprocessing/mean", where, (n_stats,))
        std = _read_float(f, "preprocessing/std", where, (n_stats,))
        if not (
            len(features)
            and np.isfinite(mean).all()
            and np.isfinite(std).all()
            and (np.abs(mean) <= MAX_STATISTIC).all()
            and ((std >= 1 / MAX_STATISTIC) & (std <= MAX_STATISTIC)).all()
        ):
            raise ModelFileError(
                f"{where} has invalid preprocessing statistics (no genes, or means / standard "
                "deviations that are not finite, zero or beyond 1e15): retrain or restore the file"
            )
        # files written before the imputation setting was stored: forecasters filled causally
        implied = "causal" if config["task"] == "forecast" else "interpolate"
        preprocessor = Preprocessor.from_stored(
            {"imputation": implied, **config["preprocessing"]},
            {"features": features, "mean": mean, "std": std},
            layout=config["layout"],
        )
        n_inputs = config.get("n_inputs")
        if not isinstance(n_inputs, int) or not 0 < n_inputs < 10_000_000:
            raise ModelFileError(f"{where} has an invalid n_inputs in its config")
        # build the network first without memory ("meta" tensors): a config announcing a huge
        # network is refused unless the file really holds weights of those shapes
        with torch.device("meta"):
            skeleton = build_module(config["task"], n_inputs, config)
        for name, expected in skeleton.state_dict().items():
            _numeric_dataset(f, f"weights/{name}", where, tuple(expected.shape))
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
                    _check_stored(item, f"arrays/{name}", where, item.size * item.dtype.itemsize)
                    arrays[name] = item[()]
                else:
                    raise ModelFileError(
                        f"{where}: arrays/{name} has unsupported type {item.dtype}"
                    )
        return cls(config, preprocessor, module, arrays)


def load_model(model: Model | str | os.PathLike) -> Model:
    """The one way the tools and the command line get a :class:`Model`: a ``Model`` as it is,
    a path (``str`` or ``os.PathLike``) read with :meth:`Model.load`.

    Raises
    ------
    ModelFileError
        When the file is missing, not a model file or damaged (one line naming the file).
    InputError
        When ``model`` is neither a ``Model`` nor a path.
    """
    if isinstance(model, Model):
        return model
    if isinstance(model, str | os.PathLike):
        return Model.load(model)
    raise InputError(
        f"model must be an anndata_rnn.Model or the path of a model file, not a "
        f"{type(model).__name__}"
    )


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
    _check_stored(item, name, where, item.size)  # at least one byte per string
    return np.asarray(item.asstr()[()], dtype=object)


def _check_stored(item: h5py.Dataset, name: str, where: str, needed: int) -> None:
    """Refuse datasets whose declared size the file does not hold (no huge phantom arrays)."""
    if needed and item.id.get_storage_size() < needed:
        raise ModelFileError(
            f"{where}: {name!r} is incomplete ({item.id.get_storage_size()} bytes stored for "
            f"shape {tuple(item.shape)}): retrain or restore the file"
        )


def _numeric_dataset(f: h5py.File, name: str, where: str, shape: tuple) -> h5py.Dataset:
    item = f.get(name)
    if not isinstance(item, h5py.Dataset) or item.dtype.kind not in "fi":
        raise ModelFileError(f"{where} lacks the numeric dataset {name!r}")
    if tuple(item.shape) != tuple(shape):
        raise ModelFileError(
            f"{where}: {name!r} has shape {tuple(item.shape)}, expected {tuple(shape)}"
        )
    _check_stored(item, name, where, item.size * item.dtype.itemsize)
    return item


def _read_float(f: h5py.File, name: str, where: str, shape: tuple) -> np.ndarray:
    return np.asarray(_numeric_dataset(f, name, where, shape)[()], dtype=np.float64)


#: largest magnitude of a stored statistic (mean, std, time gap, library size) and of a time
MAX_STATISTIC = 1e15
#: most steps a stored config may ask a model to roll out or hold out
MAX_HORIZON = 1000


def _check_config(config: dict, where: str) -> None:
    """Types and ranges of the config fields that loading and applying a model read."""

    def refuse(field: str, expected: str):
        raise ModelFileError(
            f"{where} has an invalid config field {field!r} (expected {expected}): retrain or "
            "restore the file"
        )

    def integer(value, low: int, high: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high

    def number(value) -> bool:
        return (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        )

    def texts(value) -> bool:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)

    if config["task"] not in TASK_MODULES:
        refuse("task", f"one of {', '.join(TASK_MODULES)}")
    if config.get("layout") not in LAYOUTS:
        refuse("layout", f"one of {', '.join(LAYOUTS)}")
    if not integer(config.get("n_inputs"), 1, 10_000_000):
        refuse("n_inputs", "a positive integer")
    keys = config.get("keys")
    if not isinstance(keys, dict):
        refuse("keys", "a mapping")
    for name in ("label_key", "series_key", "time_key", "order_key", "layer", "use_rep"):
        if not (keys.get(name) is None or isinstance(keys[name], str)):
            refuse(f"keys/{name}", "a text or null")
    if not (keys.get("key_added") is None or _plain_name(keys["key_added"])):
        refuse("keys/key_added", "a plain name (letters, digits, '_', '-')")
    # files written before the layout was stored once: their copies must agree with it
    if keys.get("layout", config["layout"]) != config["layout"]:
        refuse("keys/layout", "the model's layout")
    if not (keys.get("series_subset") is None or texts(keys["series_subset"])):
        refuse("keys/series_subset", "a list of texts or null")
    if not (keys.get("chunk_size") is None or integer(keys["chunk_size"], 1, 10_000_000)):
        refuse("keys/chunk_size", "a positive integer")
    arch = config.get("architecture")
    if not isinstance(arch, dict):
        refuse("architecture", "a mapping")
    hidden = arch.get("hidden")
    if not (isinstance(hidden, list) and 0 < len(hidden) <= 64):
        refuse("architecture/hidden", "a list of layer sizes")
    if not all(integer(h, 1, 1_000_000) for h in hidden):
        refuse("architecture/hidden", "positive layer sizes")
    if arch.get("cell") not in CELLS:
        refuse("architecture/cell", f"one of {', '.join(CELLS)}")
    if not (number(arch.get("dropout")) and 0 <= arch["dropout"] < 1):
        refuse("architecture/dropout", "a number in [0, 1)")
    if not isinstance(arch.get("bidirectional"), bool):
        refuse("architecture/bidirectional", "true or false")
    # optional keys of the linear path and the long-sequence options (absent in older files)
    for name in ("linear_path", "recurrent"):
        if not isinstance(arch.get(name, False), bool):
            refuse(f"architecture/{name}", "true or false")
    if arch.get("ar_form", "dense") not in ("dense", "per_gene"):
        refuse("architecture/ar_form", "dense or per_gene")
    if config["task"] == "forecast":
        if not integer(config.get("n_outputs"), 1, config["n_inputs"]):
            refuse("n_outputs", "a positive integer, at most n_inputs")
        if not integer(config.get("ar_lags", 3), 1, 10_000):
            refuse("ar_lags", "an integer in [1, 10000]")
        if arch.get("ar_form") == "per_gene" and config["n_inputs"] - config["n_outputs"] > 1:
            refuse("architecture/ar_form", "dense with more than one input beyond the genes")
        if not integer(arch.get("ar_rank", 0), 0, config["n_outputs"]):
            refuse("architecture/ar_rank", "an integer in [0, n_outputs]")
    if arch.get("pooling", "last") not in ("last", "mean", "attention"):
        refuse("architecture/pooling", "last, mean or attention")
    if not (arch.get("max_steps") is None or integer(arch["max_steps"], 1, 10_000_000)):
        refuse("architecture/max_steps", "a positive integer")
    # a training run averages windows of ceil(max_steps / 32) steps: never more than max_steps
    if not integer(arch.get("downsample", 1), 1, arch.get("max_steps") or 1_000_000):
        refuse("architecture/downsample", "a positive integer, at most max_steps")
    linear = arch.get("linear_path", False) or not arch.get("recurrent", True)
    if config["task"] == "embed" and linear and arch.get("max_steps") is None:
        refuse("architecture/max_steps", "a positive integer (the autoencoder's linear path)")
    for name in ("linear_c", "linear_lr"):
        if not (number(arch.get(name, 1.0)) and arch.get(name, 1.0) > 0):
            refuse(f"architecture/{name}", "a positive number")
    conv = arch.get("conv") or []
    if not (isinstance(conv, list) and all(integer(c, 1, 100_000) for c in conv)):
        refuse("architecture/conv", "a list of channel sizes")
    if "classes" in config and not texts(config["classes"]):
        refuse("classes", "a list of texts")
    if config.get("label_level", "unit") not in ("unit", "step"):
        refuse("label_level", "unit or step")
    prep = config["preprocessing"]
    if not isinstance(prep, dict):
        refuse("preprocessing", "a mapping")
    checks = {
        "layout": prep.get("layout", config["layout"]) == config["layout"],
        "source_kind": prep.get("source_kind") in ("X", "layer", "rep"),
        "source_name": isinstance(prep.get("source_name"), str),
        "normalize": isinstance(prep.get("normalize"), bool),
        "log1p": isinstance(prep.get("log1p", False), bool),
        "target_sum": number(prep.get("target_sum")) and prep["target_sum"] >= 0,
        "use_time": isinstance(prep.get("use_time"), bool),
        "dt_mean": number(prep.get("dt_mean")),
        "dt_std": number(prep.get("dt_std")) and prep["dt_std"] > 0,
        "scale": prep.get("scale") in SCALE_CHOICES,
        "imputation": prep.get("imputation", "interpolate") in IMPUTATION_CHOICES,
    }
    for name, ok in checks.items():
        if not ok:
            refuse(f"preprocessing/{name}", "the value anndata-rnn writes")
    # statistics a training run can produce: a time gap or library size of 10^300 would turn
    # every standardized value into inf or 0 on the way into the network
    for name in ("dt_mean", "dt_std", "target_sum"):
        if abs(prep[name]) > MAX_STATISTIC:
            refuse(f"preprocessing/{name}", f"a number of magnitude at most {MAX_STATISTIC:g}")
    # fields that size what applying the model allocates (a forecaster's rollout)
    for name, high in (("horizon", MAX_HORIZON), ("holdout_steps", MAX_HORIZON)):
        if not (config.get(name) is None or integer(config[name], 0, high)):
            refuse(name, f"an integer in 0..{high}")
    if not (config.get("ar_lags") is None or integer(config["ar_lags"], 1, MAX_HORIZON)):
        refuse("ar_lags", f"an integer in 1..{MAX_HORIZON}")
    future = config.get("future_times") or []
    if not (
        isinstance(future, list)
        and len(future) <= MAX_HORIZON
        and all(number(t) and abs(t) <= MAX_STATISTIC for t in future)
    ):
        refuse("future_times", f"at most {MAX_HORIZON} finite time points")


def _drop_layout_copies(config: dict) -> None:
    """Remove the copies of the layout that files written before it was stored once hold
    (``config["keys"]["layout"]``, ``config["preprocessing"]["layout"]``; checked equal to
    ``config["layout"]`` by :func:`_check_config`): ``config["layout"]`` is then the only one
    read, and saving the model again writes it once."""
    for part in ("keys", "preprocessing"):
        config[part] = {name: value for name, value in config[part].items() if name != "layout"}


def _plain_name(value) -> bool:
    try:
        check_output_key(value)
    except InputError:
        return False
    return True


def _plain(value):
    """numpy scalars/arrays -> JSON-friendly python values; non-finite floats become strings
    ("nan"), since JSON has no NaN."""
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


def check_gene_overlap(prep: Preprocessor, source: FeatureSource, min_gene_overlap: float) -> dict:
    """Match the data's features to the model's; error below ``min_gene_overlap``, warn on gaps."""
    if Layout.of(prep.layout).one_feature:
        return {"n_model_features": 1, "n_missing": 0, "overlap": 1.0}
    if prep.source_kind == "rep":
        if len(source.feature_names) != len(prep.features):
            raise InputError(
                f"the model reads {len(prep.features)} columns of obsm[{prep.source_name!r}] but "
                f"the data has {len(source.feature_names)}: compute the representation the same "
                "way as for training"
            )
        return {"n_model_features": len(prep.features), "n_missing": 0, "overlap": 1.0}
    missing = prep.missing_features(source.feature_names)
    overlap = 1 - len(missing) / len(prep.features)
    if overlap < min_gene_overlap:
        raise InputError(
            f"only {len(prep.features) - len(missing)} of the model's {len(prep.features)} genes "
            f"({overlap:.0%}) are in the data, below min_gene_overlap={min_gene_overlap:g}: "
            "check that var_names use the same gene identifiers as at training (or give "
            "--gene-symbols COLUMN)"
        )
    if len(missing):
        message = (
            f"{len(missing)} of the model's {len(prep.features)} genes are missing from the data "
            f"(overlap {overlap:.1%}); they are filled with the training mean"
        )
        warnings.warn(message, UserWarning, stacklevel=3)
        log.warning(message)
    else:
        log.info("all %d model genes found in the data", len(prep.features))
    return {
        "n_model_features": len(prep.features),
        "n_missing": len(missing),
        "overlap": overlap,
    }

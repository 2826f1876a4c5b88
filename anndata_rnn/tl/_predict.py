"""Apply a saved model of any task to new data."""

from __future__ import annotations

import importlib
import logging

import numpy as np
from anndata import AnnData

from ..errors import InputError
from ..model import Model
from ..preprocessing import FeatureSource
from ..training import resolve_device, seed_everything
from ._classify import build_sequences
from ._common import check_gene_overlap, check_keys_free, store_uns, target_of, versions

log = logging.getLogger("anndata_rnn")

#: task -> (module in this package, function applying the model, function listing output keys)
APPLIERS = {
    "classify": ("._classify", "apply_classifier", "output_targets"),
    "forecast": ("._forecast", "apply_forecaster", "output_targets"),
    "embed": ("._embed", "apply_embedding", "output_targets"),
}


def predict(
    adata: AnnData,
    model: Model | str,
    *,
    key_added: str | None = None,
    gene_symbols: str | None = None,
    min_gene_overlap: float = 0.8,
    layout: str | None = None,
    series_subset: list[str] | None = None,
    batch_size: int = 512,
    seed: int = 0,
    device: str = "auto",
    overwrite: bool = False,
    quiet: bool = False,
    copy: bool = False,
):
    """Apply a saved model (classifier, forecaster or embedding) to ``adata``.

    Genes are matched by ``var_names`` (or the var column ``gene_symbols``) and put in the model's
    order; genes the data lacks are filled with the training mean, with a warning giving the
    count. Below ``min_gene_overlap`` it stops with an error naming the overlap.

    Parameters
    ----------
    adata
        New data, with the obs/var keys the model was trained with (series, time).
    model
        A :class:`~anndata_rnn.Model` or the path of a model file.
    key_added
        Prefix of the output keys (default: the one used at training).
    gene_symbols
        var column holding the gene identifiers to match instead of ``var_names``.
    min_gene_overlap
        Minimum fraction of the model's genes that must be present.
    layout
        If given, must equal the model's layout (a guard for pipelines).
    series_subset
        Series of the new data to use (default: the training run's subset). Give this when the
        new data names its series differently (e.g. a model trained on Spellman's ``cdc15``
        applied to another experiment's series).
    batch_size, seed, device, overwrite, quiet, copy
        As in :func:`anndata_rnn.tl.classify`.

    Returns
    -------
    ``None``, or the annotated copy with ``copy=True``. Outputs are the keys the training run
    wrote (without the split column); ``uns[key]`` records the gene overlap.
    """
    del quiet  # prediction has no progress bar; kept for a uniform signature
    if isinstance(model, str):
        model = Model.load(model)
    if not 0 < min_gene_overlap <= 1:
        raise InputError(f"min_gene_overlap must be in (0, 1], got {min_gene_overlap}")
    if layout is not None and layout != model.layout:
        raise InputError(
            f"the model was trained on layout {model.layout!r}, not {layout!r}: use a model "
            "trained on this layout"
        )
    if model.task not in APPLIERS:
        raise InputError(f"models of task {model.task!r} cannot be applied with predict")
    target = target_of(adata, copy)
    key = key_added or model.config["keys"].get("key_added", "rnn")
    seed_everything(seed)
    torch_device = resolve_device(device)
    module_name, apply_name, targets_name = APPLIERS[model.task]
    task_module = importlib.import_module(module_name, __package__)
    keys = dict(model.config["keys"])
    if series_subset is not None:
        keys["series_subset"] = list(series_subset)
    targets = [
        t
        for t in getattr(task_module, targets_name)(model.layout, key)
        if not t[1].endswith("_split")
    ]
    check_keys_free(target, targets, overwrite)
    source = FeatureSource(
        target, layer=keys.get("layer"), use_rep=keys.get("use_rep"), gene_symbols=gene_symbols
    )
    overlap = check_gene_overlap(model.preprocessor, source, min_gene_overlap)
    n_features = len(model.features) if model.layout == "profile" else None
    index = build_sequences(target, keys, n_features=n_features)
    for note in index.notes:
        log.info(note)
    result = getattr(task_module, apply_name)(
        target,
        model,
        key=key,
        source=source,
        index=index,
        device=torch_device,
        batch_size=batch_size,
    )
    store_uns(
        target,
        key,
        {
            "task": model.task,
            "layout": model.layout,
            "mode": "predict",
            "classes": np.asarray(model.classes, dtype=object),
            "params": {k: v for k, v in keys.items() if v is not None},
            "predict_params": {
                "key_added": key,
                "gene_symbols": gene_symbols,
                "min_gene_overlap": min_gene_overlap,
                "layout": layout,
                "batch_size": batch_size,
            },
            "gene_overlap": overlap,
            "training_metrics": model.config.get("metrics", {}),
            "seed": seed,
            "device": str(torch_device),
            "versions": versions(),
            "notes": index.notes,
            **result,
        },
    )
    return target if copy else None

"""Apply a saved model of any task to new data."""

from __future__ import annotations

import logging
import os

import h5py
import numpy as np
from anndata import AnnData

from ..classification import apply_classifier
from ..classification import output_targets as classifier_targets
from ..embedding import apply_embedding
from ..embedding import output_targets as embedding_targets
from ..errors import InputError
from ..forecasting import apply_forecaster
from ..forecasting import output_targets as forecaster_targets
from ..io import versions
from ..model import Model, load_model
from ..options import DEFAULTS
from ..runs import TaskResult, check_keys_free, open_model, store_uns, task_api
from ..sequences import check_output_key

log = logging.getLogger("anndata_rnn")

#: the defaults of predict (:mod:`anndata_rnn.options`: the command line has the same)
DEFAULT = DEFAULTS["predict"]

#: task -> (function applying a saved model, function listing the keys it writes)
APPLIERS = {
    "classify": (apply_classifier, classifier_targets),
    "forecast": (apply_forecaster, forecaster_targets),
    "embed": (apply_embedding, embedding_targets),
}
#: what the metrics of a prediction were computed on, per task
TITLES = {
    "classify": "labelled entries of this data",
    "forecast": "sequences of this data (one step ahead)",
}


def model_version(model: Model) -> str:
    """The anndata-rnn version that wrote ``model`` ("unknown" for files that do not say)."""
    stored = model.config.get("versions")
    version = stored.get("anndata-rnn") if isinstance(stored, dict) else None
    return version if isinstance(version, str) and len(version) < 64 else "unknown"


@task_api
def predict(
    adata: AnnData,
    model: Model | str | os.PathLike,
    *,
    key_added: str | None = DEFAULT.key_added,
    gene_symbols: str | None = DEFAULT.gene_symbols,
    min_gene_overlap: float = DEFAULT.min_gene_overlap,
    layout: str | None = DEFAULT.layout,
    series_subset: list[str] | None = DEFAULT.series_subset,
    batch_size: int = DEFAULT.batch_size,
    chunk_rows: int = DEFAULT.chunk_rows,
    scratch: h5py.Group | None = None,
    seed: int = DEFAULT.seed,
    device: str = DEFAULT.device,
    amp: bool = DEFAULT.amp,
    overwrite: bool = DEFAULT.overwrite,
    quiet: bool = DEFAULT.quiet,
    copy: bool = DEFAULT.copy,
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
    chunk_rows
        Obs rows read and encoded at a time: classifiers and embeddings stream their sequences
        chunk by chunk (memory bounded by the chunk, not the data; see README "Large files").
        Forecasters encode every sequence at once.
    scratch
        A writable HDF5 group (e.g. of :func:`anndata_rnn.streaming.scratch_file`) where a
        classifier's embedding is written batch by batch instead of held in memory; for profile
        data ``obsm[f"X_{key}"]`` is then that ``h5py.Dataset`` (valid while the group is open;
        :func:`~anndata_rnn.streaming.write_new_elements` copies it into the output). The
        command line uses one beside the output.
    quiet
        No progress bar (it shows on stderr while sequences stream).
    batch_size, seed, device, amp, overwrite, copy
        As in :func:`anndata_rnn.tl.classify`.

    Returns
    -------
    ``None``, or the annotated copy with ``copy=True``. Outputs are the keys the training run
    wrote (without the split column); ``uns[key]`` records the gene overlap.
    """
    model = load_model(model)
    if layout is not None and layout != model.layout:
        raise InputError(
            f"the model was trained on layout {model.layout!r}, not {layout!r}: use a model "
            "trained on this layout"
        )
    if model.task not in APPLIERS:
        raise InputError(f"models of task {model.task!r} cannot be applied with predict")
    apply, output_targets = APPLIERS[model.task]
    written_by = model_version(model)
    log.info("model written by anndata-rnn %s", written_by)
    key = check_output_key(key_added or model.config["keys"].get("key_added", "rnn"))

    def check_targets(target, model):
        targets = [t for t in output_targets(model.layout, key) if not t[1].endswith("_split")]
        check_keys_free(target, targets, overwrite)

    opened = open_model(
        adata,
        model,
        copy=copy,
        seed=seed,
        device=device,
        gene_symbols=gene_symbols,
        min_gene_overlap=min_gene_overlap,
        series_subset=series_subset,
        check_targets=check_targets,
        chunk_rows=chunk_rows,
        progress=not quiet,
        scratch=scratch,
    )
    result = apply(opened, key, batch_size)
    record = {
        "task": model.task,
        "layout": model.layout,
        "mode": "predict",
        "classes": np.asarray(model.classes, dtype=object),
        "params": {k: v for k, v in opened.spec.keys().items() if v is not None},
        "predict_params": {
            "key_added": key,
            "gene_symbols": gene_symbols,
            "min_gene_overlap": min_gene_overlap,
            "layout": layout,
            "batch_size": batch_size,
            "chunk_rows": chunk_rows,
            "amp": amp,
        },
        "gene_overlap": opened.overlap,
        "training_metrics": model.config.get("metrics", {}),
        "seed": seed,
        "device": str(opened.device),
        "versions": versions(),
        "model_written_by": written_by,
        "notes": opened.index.notes,
        **result,
    }
    store_uns(opened.target, key, record)
    title = TITLES.get(model.task, "this data")
    return TaskResult(opened.target, key, record, copy=copy, title=title, written=result["written"])

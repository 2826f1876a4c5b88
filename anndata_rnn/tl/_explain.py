"""Which genes and which time steps drive a model's predictions (integrated gradients, captum).

Every explained sequence gets an attribution for each input value (step × feature) toward one
output of the network: for a classifier the log-probability of a class, for a forecaster the
forecast of a chosen gene (:mod:`anndata_rnn.attribution`). Attributions are then summed over
steps (per gene) or over genes (per step) and averaged over the explained sequences.

The baseline is the training mean ("mean": 0 in every standardized feature channel) or no
expression ("zero"); the time-gap channel keeps the input's value, so only expression is
attributed. The attributions of a sequence sum to ``f(x) - f(baseline)`` up to the integration
error (captum's convergence delta), which is reported so a user can judge the numbers.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from ..attribution import (
    attribute,
    baseline_values,
    check_settings,
    classifier_jobs,
    explained_only,
    explained_step_times,
    forecaster_inputs,
    forecaster_jobs,
    log_completeness,
    subsample,
    write_importances,
)
from ..errors import InputError
from ..io import versions
from ..model import Model, load_model
from ..networks.classifier import predict_proba
from ..options import DEFAULTS
from ..preprocessing import encode
from ..runs import TaskResult, check_keys_free, open_model, store_uns, task_api
from ..sequences import Layout, check_output_key

log = logging.getLogger("anndata_rnn")

#: the defaults of explain (:mod:`anndata_rnn.options`: the command line has the same)
DEFAULT = DEFAULTS["explain"]
#: sequences per batch of the classifier's predictions (which class each sequence is explained
#: toward)
PREDICT_BATCH = 512


@task_api
def explain(
    adata: AnnData,
    model: Model | str | os.PathLike,
    *,
    target: str | list[str] | None = DEFAULT.target,
    method: str = DEFAULT.method,
    n_steps: int = DEFAULT.n_steps,
    baseline: str = DEFAULT.baseline,
    use_labels: bool = DEFAULT.use_labels,
    max_per_class: int | None = DEFAULT.max_per_class,
    gene_symbols: str | None = DEFAULT.gene_symbols,
    min_gene_overlap: float = DEFAULT.min_gene_overlap,
    batch_size: int = DEFAULT.batch_size,
    seed: int = DEFAULT.seed,
    device: str = DEFAULT.device,
    key_added: str = DEFAULT.key_added,
    overwrite: bool = DEFAULT.overwrite,
    quiet: bool = DEFAULT.quiet,
    copy: bool = DEFAULT.copy,
):
    """Attribute a saved model's predictions on ``adata`` to input genes and time steps.

    Classifiers: each sequence is explained toward its predicted class (or its labelled class
    with ``use_labels``), through the log-probability of that class, so a positive attribution
    pushes toward the class. Forecasters: the forecast of the gene(s) in ``target`` is explained
    for every sequence.

    Parameters
    ----------
    adata
        Data the model can read (the training data or new data with the same keys).
    model
        A :class:`~anndata_rnn.Model` or the path of a model file.
    target
        Classifier: only explain these classes (default: all). Forecaster: the gene(s) whose
        forecast is explained (required).
    method
        ``"integrated_gradients"`` (captum; complete, with a convergence check) or
        ``"input_x_gradient"`` (one gradient, fast, approximate; baseline must be ``"mean"``).
    n_steps
        Integration steps of integrated gradients (more = smaller convergence delta).
    baseline
        ``"mean"``: the training mean of every gene (0 after standardization); ``"zero"``: no
        expression. The time-gap channel always keeps the input's value.
    use_labels
        Classifier: group and explain sequences by their label in this data (the model's label
        column) instead of the predicted class.
    max_per_class
        Explain at most this many sequences per class (a seeded random subset; for speed).
    gene_symbols, min_gene_overlap
        Gene matching, as in :func:`anndata_rnn.tl.predict`.
    batch_size
        Sequences per attribution call (each is expanded ``n_steps`` times).
    seed, device, overwrite, copy
        As in :func:`anndata_rnn.tl.classify`.
    quiet
        No progress bar.
    key_added
        Prefix of the output keys. An existing ``uns[key_added]`` (the training or prediction
        record of this model) is kept and the explanation is added to it.

    Returns
    -------
    ``None``, or the annotated copy with ``copy=True``. Writes (``key`` = ``key_added``):

    ``varm[f"{key}_importance"]``
        genes × classes (forecasters: genes × target genes): mean signed attribution of each
        gene, summed over steps, over the sequences explained toward that class. NaN for genes
        the model does not read (and with ``use_rep``, where features are not genes: stored as
        ``uns[key]["feature_importance"]`` instead).
    ``var[f"{key}_importance"]``
        mean |attribution| of each gene over every explained sequence (overall importance).
    ``obsm[f"{key}_step_importance"]``
        obs-series / var-series: obs × classes, the attribution of each time point (summed over
        the step's features, averaged over the sequences holding that observation).
    ``uns[key]``
        ``classes`` (or ``targets``), ``step_importance`` (steps × classes: mean signed
        attribution of each step), ``step_times`` (median time of each step; chunk number in
        the profile layout), and ``explain``: method, baseline, n_steps, the number of sequences
        explained per class and ``completeness`` (mean |delta|, mean |f(x) - f(baseline)| and
        their ratio ``relative_delta``).
    """
    check_output_key(key_added)
    model = load_model(model)
    check_settings(model, method, baseline, n_steps, batch_size, max_per_class)
    prep = model.preprocessor
    key = key_added
    gene_level = not Layout.of(model.layout).one_feature

    def check_targets(target, model):
        targets = []
        if gene_level:
            targets += [("var", f"{key}_importance"), ("varm", f"{key}_importance")]
        if Layout.of(model.layout).is_time_series:
            targets.append(("obsm", f"{key}_step_importance"))
        check_keys_free(target, targets, overwrite)
        _check_uns(target, key, model, overwrite)

    opened = open_model(
        adata,
        model,
        copy=copy,
        seed=seed,
        device=device,
        gene_symbols=gene_symbols,
        min_gene_overlap=min_gene_overlap,
        check_targets=check_targets,
    )
    out, index, source, overlap = opened.target, opened.index, opened.source, opened.overlap
    torch_device = opened.device
    if model.task == "classify":
        # the predictions stream over the data; only the explained sequences are encoded
        streamed = opened.stream(
            lambda x, n: predict_proba(model.module, x, n, torch_device), PREDICT_BATCH
        )
        columns, jobs, output = classifier_jobs(
            out, model, index, streamed.outputs[0], target, use_labels
        )
        index, jobs = explained_only(index, subsample(jobs, max_per_class, seed))
        enc = encode(index, source, prep)
        values, lengths = torch.from_numpy(enc.values), torch.from_numpy(enc.lengths)
    else:
        if use_labels:
            raise InputError("use_labels applies to classifiers, not to forecasters")
        values, lengths = forecaster_inputs(model, index, source)
        columns, jobs, output = forecaster_jobs(model, index, lengths, target)
        jobs = subsample(jobs, max_per_class, seed)

    n_channels = values.shape[-1]
    n_expression = (
        n_channels - 1 if (prep.use_time and Layout.of(model.layout).is_time_series) else n_channels
    )
    base = baseline_values(values, lengths, prep, baseline, n_expression, model.layout)
    result = attribute(
        output,
        values,
        base,
        lengths,
        jobs,
        n_columns=len(columns),
        n_expression=n_expression,
        index=index,
        method=method,
        n_steps=int(n_steps),
        batch_size=batch_size,
        device=torch_device,
        quiet=quiet,
    )

    written, uns_extra, step_importance = write_importances(
        out, result, prep, source, len(columns), key, model.layout
    )
    n_done = result["count"]
    completeness = log_completeness(result, method, n_steps)
    step_times, step_note = explained_step_times(index, jobs)
    column_key = "classes" if model.task == "classify" else "targets"
    explain_record = {
        "method": method,
        "baseline": baseline,
        "n_steps": int(n_steps),
        "output": output.description,
        "grouped_by": "label" if use_labels else "predicted",
        "target": [target] if isinstance(target, str) else list(target or []),
        "columns": np.asarray(columns, dtype=object),
        "n_explained": n_done.astype(np.int64),
        "max_per_class": max_per_class,
        "params": {
            "target": [target] if isinstance(target, str) else list(target or []),
            "method": method,
            "n_steps": int(n_steps),
            "baseline": baseline,
            "use_labels": bool(use_labels),
            "max_per_class": max_per_class,
            "gene_symbols": gene_symbols,
            "min_gene_overlap": float(min_gene_overlap),
            "batch_size": int(batch_size),
            "seed": seed,
            "device": device,
            "key_added": key_added,
            "overwrite": bool(overwrite),
        },
        "step_times": step_note,
        "completeness": completeness,
        "gene_overlap": overlap,
        "written": written,
        "seed": seed,
        "device": str(torch_device),
        "versions": versions(),
    }
    record = dict(out.uns[key]) if _same_model(out.uns.get(key), model) else {}
    if not record:
        record = {"task": model.task, "layout": model.layout, "mode": "explain"}
    record.update(
        {
            column_key: np.asarray(columns, dtype=object),
            "step_importance": step_importance,
            "step_times": step_times,
            "explain": explain_record,
            **uns_extra,
        }
    )
    store_uns(out, key, record)
    # (an importance stored inside uns[key] is part of that element, not one of its own)
    elements = [path for path in written if not path.startswith("uns/")]
    return TaskResult(out, key, record, copy=copy, written=elements)


def importance_table(adata: AnnData, key: str = "rnn", top: int = 50) -> pd.DataFrame:
    """Top genes per class by signed importance: columns ``class, rank, gene, importance``.

    Reads ``varm[f"{key}_importance"]`` (or ``uns[key]["feature_importance"]`` for models on an
    obsm representation) written by :func:`explain`.
    """
    if top < 1:
        raise InputError(f"top must be >= 1, got {top}")
    if key not in adata.uns or "explain" not in adata.uns[key]:
        raise InputError(f"uns[{key!r}] holds no explanation: run explain first")
    record = adata.uns[key]
    columns = [str(c) for c in record["explain"]["columns"]]
    if f"{key}_importance" in adata.varm:
        matrix = np.asarray(adata.varm[f"{key}_importance"], dtype=np.float64)
        names = np.asarray(adata.var_names, dtype=object)
    elif "feature_importance" in record:
        matrix = np.asarray(record["feature_importance"], dtype=np.float64)
        names = np.asarray(record["features"], dtype=object)
    else:
        raise InputError(
            f"uns[{key!r}] has no gene importance (var-series models attribute time points, "
            "not genes: see uns[key]['step_importance'])"
        )
    rows = []
    for j, column in enumerate(columns):
        scores = matrix[:, j]
        valid = np.flatnonzero(np.isfinite(scores))
        order = valid[np.argsort(-scores[valid], kind="stable")][:top]
        for rank, i in enumerate(order, start=1):
            rows.append((column, rank, str(names[i]), float(scores[i])))
    return pd.DataFrame(rows, columns=["class", "rank", "gene", "importance"])


def _check_uns(adata: AnnData, key: str, model: Model, overwrite: bool) -> None:
    """An existing ``uns[key]`` must describe this model (it is kept and extended)."""
    existing = adata.uns.get(key)
    if existing is None or overwrite:
        return
    if not isinstance(existing, dict):
        raise InputError(
            f"uns[{key!r}] exists and is not a record of anndata-rnn: choose another key_added "
            "(--key-added) or pass --overwrite"
        )
    if "explain" in existing:
        raise InputError(
            f"uns[{key!r}] already holds an explanation: choose another key_added (--key-added) "
            "or pass --overwrite"
        )
    if not _same_model(existing, model):
        raise InputError(
            f"uns[{key!r}] records another model's results: choose another key_added "
            "(--key-added) or pass --overwrite"
        )


def _same_model(record, model: Model) -> bool:
    """Whether ``record`` (an ``uns`` entry) is the training/prediction record of this model."""
    if not isinstance(record, dict) or record.get("task") != model.task:
        return False
    if record.get("layout") != model.layout:
        return False
    if model.task == "classify":
        known = [str(c) for c in np.atleast_1d(record.get("classes", []))]
        return known == [str(c) for c in model.classes]
    return True

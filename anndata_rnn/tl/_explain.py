"""Which genes and which time steps drive a model's predictions (integrated gradients, captum).

Every explained sequence gets an attribution for each input value (step × feature) toward one
output of the network: for a classifier the log-probability of a class, for a forecaster the
forecast of a chosen gene. Attributions are then summed over steps (per gene) or over genes
(per step) and averaged over the explained sequences.

The baseline is the training mean ("mean": 0 in every standardized feature channel) or no
expression ("zero"); the time-gap channel keeps the input's value, so only expression is
attributed. Integrated gradients are complete: the attributions of a sequence sum to
``f(x) - f(baseline)`` up to the integration error (captum's convergence delta), which is
reported so a user can judge the numbers.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from torch import nn
from tqdm.auto import tqdm

from ..errors import InputError
from ..model import Model
from ..preprocessing import FeatureSource
from ..sequences import read_labels
from ..training import resolve_device, seed_everything
from ._classify import build_sequences, run_network
from ._common import check_gene_overlap, check_keys_free, encode, store_uns, target_of, versions

log = logging.getLogger("anndata_rnn")

METHODS = ("integrated_gradients", "input_x_gradient")
BASELINES = ("mean", "zero")
#: elements of one input copy captum may hold at once (bounds memory: 2**24 float32 = 64 MiB)
_ELEMENT_BUDGET = 2**24


def explain(
    adata: AnnData,
    model: Model | str,
    *,
    target: str | list[str] | None = None,
    method: str = "integrated_gradients",
    n_steps: int = 50,
    baseline: str = "mean",
    use_labels: bool = False,
    max_per_class: int | None = None,
    gene_symbols: str | None = None,
    min_gene_overlap: float = 0.8,
    batch_size: int = 32,
    seed: int = 0,
    device: str = "auto",
    key_added: str = "rnn",
    overwrite: bool = False,
    quiet: bool = False,
    copy: bool = False,
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
    if isinstance(model, str):
        model = Model.load(model)
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if baseline not in BASELINES:
        raise InputError(f"baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")
    if method == "input_x_gradient" and baseline != "mean":
        raise InputError("method input_x_gradient works against the mean baseline only")
    if not isinstance(n_steps, int | np.integer) or n_steps < 1:
        raise InputError(f"n_steps must be an integer >= 1, got {n_steps!r}")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    if max_per_class is not None and max_per_class < 1:
        raise InputError(f"max_per_class must be >= 1, got {max_per_class}")
    if not 0 < min_gene_overlap <= 1:
        raise InputError(f"min_gene_overlap must be in (0, 1], got {min_gene_overlap}")
    if model.task not in ("classify", "forecast"):
        raise InputError(
            f"explain works on classifiers and forecasters, not on {model.task!r} models"
        )
    prep = model.preprocessor
    if baseline == "zero" and prep.scale == "sequence":
        raise InputError(
            "baseline 'zero' needs a model with scale='feature' (this one z-scores each sequence,"
            " where no expression has no fixed value): use baseline 'mean'"
        )

    out = target_of(adata, copy)
    key = key_added
    seed_everything(seed)
    torch_device = resolve_device(device)
    keys = model.config["keys"]
    source = FeatureSource(
        out, layer=keys.get("layer"), use_rep=keys.get("use_rep"), gene_symbols=gene_symbols
    )
    overlap = check_gene_overlap(prep, source, min_gene_overlap)
    n_features = len(model.features) if model.layout == "profile" else None
    index = build_sequences(out, keys, n_features=n_features)
    for note in index.notes:
        log.info(note)
    gene_level = model.layout != "var-series"
    targets = []
    if gene_level:
        targets += [("var", f"{key}_importance"), ("varm", f"{key}_importance")]
    if model.layout != "profile":
        targets.append(("obsm", f"{key}_step_importance"))
    check_keys_free(out, targets, overwrite)
    _check_uns(out, key, model, overwrite)

    if model.task == "classify":
        values, lengths, _ = encode(index, source, prep, np.arange(index.n_sequences))
        columns, jobs, output = _classifier_jobs(
            out, model, index, values, lengths, target, use_labels, torch_device
        )
    else:
        if use_labels:
            raise InputError("use_labels applies to classifiers, not to forecasters")
        values, lengths = _forecaster_inputs(model, index, source)
        columns, jobs, output = _forecaster_jobs(model, index, lengths, target)
    jobs = _subsample(jobs, max_per_class, seed)

    n_channels = values.shape[-1]
    n_expression = n_channels - 1 if (prep.use_time and model.layout != "profile") else n_channels
    base = _baseline_values(values, lengths, prep, baseline, n_expression, model.layout)
    result = _attribute(
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

    written = []
    n_done = result["count"]
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = result["gene_sum"] / n_done[None, :]
        overall = result["gene_abs"] / max(int(n_done.sum()), 1)
        step_importance = result["step_sum"] / result["step_count"]
    n_model_features = len(prep.features)
    feature_importance = per_class[:n_model_features] if gene_level else None
    feature_overall = overall[:n_model_features] if gene_level else None
    uns_extra = {}
    if gene_level and prep.source_kind != "rep":
        var_rows = _model_feature_of_var(source.feature_names, prep.features)
        present = var_rows >= 0
        varm = np.full((out.n_vars, len(columns)), np.nan)
        varm[present] = feature_importance[var_rows[present]]
        var_overall = np.full(out.n_vars, np.nan)
        var_overall[present] = feature_overall[var_rows[present]]
        out.varm[f"{key}_importance"] = varm
        out.var[f"{key}_importance"] = var_overall
        written += [f"varm/{key}_importance", f"var/{key}_importance"]
    elif gene_level:  # obsm representation: the features are not genes
        uns_extra["features"] = np.asarray(prep.features, dtype=object)
        uns_extra["feature_importance"] = feature_importance
        uns_extra["feature_overall_importance"] = feature_overall
        written.append(f"uns/{key}/feature_importance")
    if model.layout != "profile":
        with np.errstate(invalid="ignore", divide="ignore"):
            rows = result["row_sum"] / result["row_count"]
        out.obsm[f"{key}_step_importance"] = rows
        written.append(f"obsm/{key}_step_importance")

    completeness = _completeness(result, method)
    if completeness:
        log.info(
            "completeness: mean |sum of attributions - (f(x) - f(baseline))| = %.3g, "
            "%.2g%% of mean |f(x) - f(baseline)| = %.3g; %.0f%% of the sequences within 5%%",
            completeness["mean_abs_delta"],
            100 * completeness["relative_delta"],
            completeness["mean_abs_difference"],
            100 * completeness["fraction_within_5_percent"],
        )
        if completeness["relative_delta"] > 0.05:
            log.warning(
                "integrated gradients did not fully converge (mean |delta| is %.2g of mean "
                "|f(x) - f(baseline)|; %.0f%% of the sequences within 5%%): raise n_steps "
                "(e.g. to %d) for exact attributions",
                completeness["relative_delta"],
                100 * completeness["fraction_within_5_percent"],
                4 * n_steps,
            )
    step_times, step_note = _step_times(index, jobs)
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
    return out if copy else None


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


# ----------------------------------------------------------------------------------------------
# what is explained


class _Output(nn.Module):
    """The scalar explained for each sequence: sum of ``weights`` × the network's outputs."""

    def __init__(self, module: nn.Module, kind: str, description: str):
        super().__init__()
        self.module = module
        self.kind = kind
        self.description = description

    def forward(self, x, lengths, weights):
        if self.kind == "log_proba":
            logits, _ = self.module(x, lengths)
            values = torch.log_softmax(logits, dim=-1)
        else:  # forecast: next-step predictions (batch, steps, genes)
            values = self.module(x, lengths)[0]
        return (values * weights).flatten(1).sum(dim=1)


class _Jobs:
    """Sequences to explain: ``ids`` (n,), the column each is explained for, output weights."""

    def __init__(self, ids: np.ndarray, column: np.ndarray, weights: np.ndarray):
        self.ids, self.column, self.weights = ids, column, weights

    def take(self, chosen: np.ndarray) -> _Jobs:
        return _Jobs(self.ids[chosen], self.column[chosen], self.weights[chosen])


def _classifier_jobs(adata, model, index, values, lengths, target, use_labels, device):
    classes = np.asarray(model.classes, dtype=object)
    wanted = _resolve_targets(target, classes, "class")
    level = model.config.get("label_level", "unit")
    proba, _ = run_network(model.module, values, lengths, device)
    n_classes = len(classes)
    if use_labels:
        label_key = model.config["keys"].get("label_key")
        frame = adata.var if model.layout == "var-series" else adata.obs
        if label_key not in frame.columns:
            where = "var" if model.layout == "var-series" else "obs"
            raise InputError(
                f"use_labels needs the model's label column {label_key!r} in {where}: it is "
                "missing from this data (explain by predicted class instead)"
            )
        labels = read_labels(adata, index, label_key)
        remap = {c: i for i, c in enumerate(classes)}
        codes = np.array([remap.get(str(c), -1) for c in labels.classes])
        labels.codes = np.where(labels.codes >= 0, codes[labels.codes], -1)
        assigned = labels.sequence_targets(index, np.arange(index.n_sequences))
    else:
        assigned = proba.argmax(axis=-1)
    ids, column, weights = [], [], []
    if level == "unit":
        for c in wanted:
            chosen = np.flatnonzero(assigned == c)
            w = np.zeros((len(chosen), n_classes), dtype=np.float32)
            w[:, c] = 1.0
            ids.append(chosen)
            column.append(np.full(len(chosen), c))
            weights.append(w)
    else:  # one label per step: explain all steps of a sequence assigned to the class at once
        valid = index.mask
        for c in wanted:
            hit = (assigned == c) & valid
            chosen = np.flatnonzero(hit.any(axis=1))
            w = np.zeros((len(chosen), index.max_steps, n_classes), dtype=np.float32)
            w[:, :, c] = hit[chosen]
            ids.append(chosen)
            column.append(np.full(len(chosen), c))
            weights.append(w)
    jobs = _Jobs(
        np.concatenate(ids), np.concatenate(column).astype(np.int64), np.concatenate(weights)
    )
    empty = [str(classes[c]) for c, chosen in zip(wanted, ids, strict=True) if not len(chosen)]
    if empty:
        how = "labelled" if use_labels else "predicted"
        log.warning(
            "no sequence is %s as %s: nothing to explain for %s",
            how,
            ", ".join(empty),
            "it" if len(empty) == 1 else "them",
        )
    output = _Output(model.module, "log_proba", "log-probability of the class")
    return [str(c) for c in classes], jobs, output


def _forecaster_inputs(model, index, source) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs of a forecaster's first future step (as :func:`~._forecast.forecast` makes)."""
    from ._forecast import _check_future_after, _future_gaps, encode_forecast, network_inputs

    prep = model.preprocessor
    future_times = model.config.get("future_times") or None
    _check_future_after(index, future_times)
    enc = encode_forecast(index, source, prep)
    _, gaps = _future_gaps(enc, future_times, 1)
    x = network_inputs(enc, prep, np.arange(index.n_sequences), last_gap=gaps[:, 0])
    return torch.from_numpy(x), torch.from_numpy(enc.lengths.astype(np.int64))


def _forecaster_jobs(model, index, lengths, target):
    """Forecasters: the forecast of the step after each sequence's end, for the target gene(s).

    The output is in the gene's expression units (the standardized forecast times its training
    standard deviation), so attributions are too.
    """
    prep = model.preprocessor
    n_outputs = int(model.config["n_outputs"])
    if model.layout == "var-series":
        if target is not None:
            raise InputError(
                "a var-series forecaster forecasts every gene from its own values: leave out "
                "target (every gene's next value is explained)"
            )
        wanted, columns = [0], ["next value"]
    else:
        features = np.asarray(model.features, dtype=object)
        if target is None:
            raise InputError(
                "explaining an obs-series forecaster needs target: the gene(s) whose forecast to "
                f"explain (e.g. {features[0]!r})"
            )
        wanted = _resolve_targets(target, features, "gene")
        columns = [str(features[g]) for g in wanted]
    n = index.n_sequences
    last = lengths.numpy() - 1
    ids, column, weights = [], [], []
    for j, g in enumerate(wanted):
        w = np.zeros((n, index.max_steps, n_outputs), dtype=np.float32)
        w[np.arange(n), last, g] = prep.std[g]
        ids.append(np.arange(n))
        column.append(np.full(n, j))
        weights.append(w)
    jobs = _Jobs(np.concatenate(ids), np.concatenate(column), np.concatenate(weights))
    output = _Output(model.module, "forecast", "forecast of the step after the sequence's end")
    return columns, jobs, output


def _resolve_targets(target, names: np.ndarray, what: str) -> list[int]:
    names = [str(n) for n in names]
    if target is None:
        return list(range(len(names)))
    if isinstance(target, str):
        target = [target] if target in names else [t.strip() for t in target.split(",")]
    lookup = {n: i for i, n in enumerate(names)}
    missing = [t for t in target if str(t) not in lookup]
    if missing:
        shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        raise InputError(f"unknown {what} {', '.join(map(str, missing))}; the model has: {shown}")
    return list(dict.fromkeys(lookup[str(t)] for t in target))


def _subsample(jobs: _Jobs, max_per_class: int | None, seed: int) -> _Jobs:
    if max_per_class is None:
        return jobs
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(jobs.column):
        members = np.flatnonzero(jobs.column == c)
        if len(members) > max_per_class:
            members = np.sort(rng.choice(members, max_per_class, replace=False))
        keep.append(members)
    return jobs.take(np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64))


def _baseline_values(values, lengths, prep, baseline, n_expression, layout) -> torch.Tensor:
    """The reference input: the input with its expression channels at the baseline."""
    base = values.clone()
    valid = (torch.arange(values.shape[1])[None, :] < lengths[:, None])[..., None]
    if baseline == "mean":
        fill = torch.zeros(n_expression)
    else:  # no expression, in standardized units
        fill = torch.as_tensor(-prep.mean / prep.std, dtype=torch.float32)
    if layout == "profile":  # steps are chunks of the model's genes, zero-padded at the end
        n_chunks, size = values.shape[1], values.shape[2]
        flat = torch.zeros(n_chunks * size)
        flat[: len(fill)] = fill
        base[:] = flat.reshape(1, n_chunks, size)
        return base
    base[..., :n_expression] = torch.where(valid, fill[:n_expression], values[..., :n_expression])
    return base


# ----------------------------------------------------------------------------------------------
# attribution


@contextlib.contextmanager
def _gradient_mode(module: nn.Module, device: torch.device):
    """Eval mode, except that cuDNN RNNs need train mode for a backward pass on the GPU.

    The recurrent layers here have no internal dropout, so train mode changes nothing else;
    layers with internal dropout fall back to the non-cuDNN kernels instead.
    """
    module.eval()
    if device.type != "cuda":
        yield
        return
    rnns = [m for m in module.modules() if isinstance(m, nn.RNNBase)]
    if any(m.dropout > 0 for m in rnns):
        with torch.backends.cudnn.flags(enabled=False):
            yield
        return
    for m in rnns:
        m.train()
    try:
        yield
    finally:
        module.eval()


def _attribute(
    output: _Output,
    values: torch.Tensor,
    base: torch.Tensor,
    lengths: torch.Tensor,
    jobs: _Jobs,
    *,
    n_columns: int,
    n_expression: int,
    index,
    method: str,
    n_steps: int,
    batch_size: int,
    device: torch.device,
    quiet: bool = True,
) -> dict:
    """Run captum over the jobs in batches; accumulate per-gene, per-step and per-row sums."""
    from captum.attr import InputXGradient, IntegratedGradients

    layout = index.layout
    n_seq_steps = values.shape[1]
    n_genes = n_seq_steps * values.shape[2] if layout == "profile" else n_expression
    acc = {
        "gene_sum": np.zeros((n_genes, n_columns)),
        "gene_abs": np.zeros(n_genes),
        "step_sum": np.zeros((n_seq_steps, n_columns)),
        "step_count": np.zeros((n_seq_steps, n_columns)),
        "row_sum": np.zeros((index.n_obs, n_columns)),
        "row_count": np.zeros((index.n_obs, n_columns)),
        "count": np.bincount(jobs.column, minlength=n_columns).astype(np.float64),
        "delta": [],
        "difference": [],
    }
    output.to(device)
    ig = IntegratedGradients(output) if method == "integrated_gradients" else None
    ixg = InputXGradient(output) if method == "input_x_gradient" else None
    per_sequence = int(np.prod(values.shape[1:]))
    expansion = n_steps if ig is not None else 1
    chunk = max(1, min(batch_size, _ELEMENT_BUDGET // max(per_sequence * expansion, 1)))
    internal = max(1, _ELEMENT_BUDGET // per_sequence)
    with _gradient_mode(output, device):
        starts = range(0, len(jobs.ids), chunk)
        for start in tqdm(starts, desc="explain", disable=quiet, leave=False, unit="batch"):
            part = slice(start, start + chunk)
            ids = jobs.ids[part]
            x = values[ids].to(device)
            b = base[ids].to(device)
            n = lengths[ids]
            w = torch.from_numpy(jobs.weights[part]).to(device)
            if ig is not None:
                attr, delta = ig.attribute(
                    x,
                    baselines=b,
                    additional_forward_args=(n, w),
                    n_steps=n_steps,
                    internal_batch_size=min(internal, len(ids) * n_steps),
                    return_convergence_delta=True,
                )
                with torch.no_grad():
                    difference = output(x, n, w) - output(b, n, w)
                acc["delta"].append(delta.detach().cpu().numpy())
                acc["difference"].append(difference.detach().cpu().numpy())
            else:
                attr = ixg.attribute(x.requires_grad_(), additional_forward_args=(n, w))
            attr = attr.detach().cpu().numpy().astype(np.float64)[..., :n_expression]
            _accumulate(acc, attr, ids, jobs.column[part], index, layout)
    output.cpu()
    return acc


def _accumulate(acc, attr, ids, column, index, layout) -> None:
    valid = index.mask[ids]
    if layout == "profile":
        genes = attr.reshape(len(ids), -1)
    else:
        genes = attr.sum(axis=1)
    steps = attr.sum(axis=2)
    for j in np.unique(column):
        rows = column == j
        acc["gene_sum"][:, j] += genes[rows].sum(axis=0)
        acc["step_sum"][:, j] += np.where(valid[rows], steps[rows], 0.0).sum(axis=0)
        acc["step_count"][:, j] += valid[rows].sum(axis=0)
    acc["gene_abs"] += np.abs(genes).sum(axis=0)
    if layout != "profile":
        obs_rows = index.steps[ids]
        columns = np.broadcast_to(column[:, None], obs_rows.shape)
        np.add.at(acc["row_sum"], (obs_rows[valid], columns[valid]), steps[valid])
        np.add.at(acc["row_count"], (obs_rows[valid], columns[valid]), 1.0)


def _completeness(result: dict, method: str) -> dict:
    if method != "integrated_gradients" or not result["delta"]:
        return {}
    delta = np.abs(np.concatenate(result["delta"]))
    difference = np.abs(np.concatenate(result["difference"]))
    mean_difference = float(difference.mean())
    with np.errstate(all="ignore"):
        ratio = np.where(difference > 1e-12, delta / difference, np.where(delta > 1e-6, 1.0, 0.0))
    return {
        "mean_abs_delta": float(delta.mean()),
        "max_abs_delta": float(delta.max()),
        "mean_abs_difference": mean_difference,
        "relative_delta": float(delta.mean() / mean_difference) if mean_difference > 0 else 0.0,
        "median_relative_delta": float(np.median(ratio)),
        "fraction_within_5_percent": float(np.mean(ratio <= 0.05)),
    }


# ----------------------------------------------------------------------------------------------
# mapping back


def _model_feature_of_var(var_features: np.ndarray, model_features: np.ndarray) -> np.ndarray:
    """For each var row, the position of its gene among the model's features (-1 if absent)."""
    lookup = {name: i for i, name in enumerate(model_features)}
    return np.array([lookup.get(name, -1) for name in var_features], dtype=np.int64)


def _step_times(index, jobs: _Jobs) -> tuple[np.ndarray, str]:
    """Time of each step when every explained sequence has the same time points.

    Otherwise (series sampled at different times, chunks of a profile) the step position, and a
    note saying so.
    """
    positions = np.arange(index.max_steps, dtype=np.float64)
    if index.layout == "profile":
        return positions, "profile: steps are chunks of genes in the model's order"
    if len(jobs.ids) == 0:
        return positions, "no sequence explained"
    times = index.times[np.unique(jobs.ids)]
    with _quiet_nan_warnings():
        first = np.nanmin(times, axis=0)
        last = np.nanmax(times, axis=0)
    if np.allclose(first, last, equal_nan=True):
        return first, "time of each step"
    return positions, (
        "series have different time points: step_times are step positions; the importance of "
        "each series' time points is in obsm"
    )


@contextlib.contextmanager
def _quiet_nan_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


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
